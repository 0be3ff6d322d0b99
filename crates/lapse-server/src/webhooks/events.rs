//! Webhook event names and which audit events they are (pure).
//!
//! | webhook event   | audit event (`action`, `outcome`)            | `reason`           |
//! |-----------------|----------------------------------------------|--------------------|
//! | `created`       | `create` or `claim`, `ok`                    |                    |
//! | `running`       | `transition`, `running`                      |                    |
//! | `ready`         | `health`, `healthy` (the probe)              |                    |
//! | `failed`        | `transition`, `failed`                       | the event's message|
//! | `expiring_soon` | `expiring_soon` (a `warn_before` mark)       | the event's message|
//! | `expired`       | `expire`                                     | the event's message|
//! | `idle_stopped`  | `idle`                                       | the event's message|
//! | `stopped`       | `transition`, `stopped`                      |                    |
//! | `deleted`       | `transition`, `deleted`                      |                    |
//! | `quota_refused` | `quota_refused` (no environment)             | the refusal        |
//!
//! `ping` is only what `POST /v1/webhooks/{id}/test` sends.

use lapse_core::wire::Event;

/// Every event name a hook may ask for (beside `*`).
pub const EVENT_NAMES: &[&str] = &[
    "created",
    "running",
    "ready",
    "failed",
    "expiring_soon",
    "expired",
    "idle_stopped",
    "stopped",
    "deleted",
    "quota_refused",
];

/// The action of the audit event a pre-expiry warning writes.
pub const EXPIRING_SOON: &str = "expiring_soon";
/// The action of the audit event a quota refusal writes.
pub const QUOTA_REFUSED: &str = "quota_refused";

/// Most event names a hook lists.
pub const MAX_EVENTS: usize = 16;

/// Checks a hook's event list: known names or `*`, at least one, no more than
/// [`MAX_EVENTS`]; returns them sorted without duplicates.
pub fn check_names(names: &[String]) -> Result<Vec<String>, String> {
    if names.is_empty() {
        return Err(format!("name at least one event (or \"*\"); known: {}", EVENT_NAMES.join(", ")));
    }
    if names.len() > MAX_EVENTS {
        return Err(format!("at most {MAX_EVENTS} events"));
    }
    let mut out = Vec::new();
    for n in names {
        if n != "*" && !EVENT_NAMES.contains(&n.as_str()) {
            let shown: String = n.chars().take(64).collect();
            return Err(format!("unknown event {shown:?}; known: *, {}", EVENT_NAMES.join(", ")));
        }
        out.push(n.clone());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Whether a hook listing `wanted` takes `name`.
pub fn wants(wanted: &[String], name: &str) -> bool {
    wanted.iter().any(|w| w == "*" || w == name)
}

/// The webhook event an audit event is, with its reason, if it is one.
pub fn name_of(e: &Event) -> Option<(&'static str, Option<String>)> {
    let reason = || Some(e.message.clone());
    Some(match (e.action.as_str(), e.outcome.as_str()) {
        ("create" | "claim", "ok") => ("created", None),
        ("transition", "running") => ("running", None),
        ("health", "healthy") => ("ready", None),
        ("transition", "failed") => ("failed", reason()),
        (EXPIRING_SOON, _) => ("expiring_soon", reason()),
        ("expire", _) => ("expired", reason()),
        ("idle", _) => ("idle_stopped", reason()),
        ("transition", "stopped") => ("stopped", None),
        ("transition", "deleted") => ("deleted", None),
        (QUOTA_REFUSED, _) => ("quota_refused", reason()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str, outcome: &str) -> Event {
        Event {
            seq: 1,
            at: 0,
            environment_id: Some("e".into()),
            actor: "a".into(),
            action: action.into(),
            outcome: outcome.into(),
            message: "why".into(),
            tenant: None,
        }
    }

    #[test]
    fn audit_events_map_to_webhook_events() {
        for (action, outcome, want) in [
            ("create", "ok", Some("created")),
            ("claim", "ok", Some("created")),
            ("transition", "running", Some("running")),
            ("transition", "provisioning", None),
            ("health", "healthy", Some("ready")),
            ("health", "unhealthy", None),
            ("transition", "failed", Some("failed")),
            ("expiring_soon", "ok", Some("expiring_soon")),
            ("expire", "stopped", Some("expired")),
            ("idle", "stopped", Some("idle_stopped")),
            ("transition", "stopped", Some("stopped")),
            ("transition", "deleted", Some("deleted")),
            ("quota_refused", "refused", Some("quota_refused")),
            ("extend", "ok", None),
            ("webhook_dropped", "dropped", None),
        ] {
            assert_eq!(name_of(&event(action, outcome)).map(|n| n.0), want, "{action} {outcome}");
        }
        assert_eq!(name_of(&event("transition", "failed")).unwrap().1.as_deref(), Some("why"));
        assert_eq!(name_of(&event("transition", "running")).unwrap().1, None);
    }

    #[test]
    fn event_lists_are_checked() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(check_names(&list(&["stopped", "created", "stopped"])).unwrap(), list(&["created", "stopped"]));
        assert!(check_names(&list(&["*"])).is_ok());
        assert!(check_names(&[]).is_err());
        assert!(check_names(&list(&["exploded"])).unwrap_err().contains("unknown event"));
        assert!(check_names(&vec!["created".to_string(); 17]).is_err());
        assert!(wants(&list(&["*"]), "ready") && wants(&list(&["ready"]), "ready") && !wants(&list(&["x"]), "ready"));
    }
}

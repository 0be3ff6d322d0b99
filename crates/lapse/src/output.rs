//! Human output: aligned tables and key/value blocks.

use chrono::{DateTime, Utc};
use lapse_core::wire::{EnvironmentView, EventView, PoolView};

/// Prints rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// "in 29m", "3s ago".
pub fn relative(rfc3339: &str) -> String {
    let Ok(at) = DateTime::parse_from_rfc3339(rfc3339) else {
        return rfc3339.to_owned();
    };
    let delta = at.with_timezone(&Utc) - Utc::now();
    let secs = delta.num_seconds();
    let span = humantime::format_duration(std::time::Duration::from_secs(secs.unsigned_abs())).to_string();
    let short: String = span.split(' ').take(2).collect::<Vec<_>>().join(" ");
    if secs >= 0 { format!("in {short}") } else { format!("{short} ago") }
}

pub fn environments(envs: &[EnvironmentView]) {
    let rows: Vec<Vec<String>> = envs
        .iter()
        .map(|e| {
            vec![
                e.id.clone(),
                e.name.clone().unwrap_or_default(),
                e.owner.clone(),
                e.spec.provider.clone(),
                state(e),
                e.expires_at
                    .as_deref()
                    .filter(|_| e.state.as_str() != "deleted")
                    .map(|t| if expires_soon(e, Utc::now()) { format!("{} (soon)", relative(t)) } else { relative(t) })
                    .unwrap_or_default(),
                endpoints(e),
            ]
        })
        .collect();
    table(&["ID", "NAME", "OWNER", "PROVIDER", "STATE", "EXPIRES", "ENDPOINTS"], &rows);
}

/// How close to its end a lease without `warn_before` shows as ending soon.
pub const SOON_WITHOUT_WARNINGS: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Whether `e`'s lease, still running at `now`, ends within its largest `warn_before` (or
/// [`SOON_WITHOUT_WARNINGS`] without one): `lapse list` marks it `(soon)`.
pub fn expires_soon(e: &EnvironmentView, now: DateTime<Utc>) -> bool {
    if e.expired_at.is_some() || matches!(e.state.as_str(), "deleted" | "deleting" | "failed") {
        return false;
    }
    let Some(at) = e.expires_at.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok()) else {
        return false;
    };
    let window = e.warn_before.iter().max().map_or(SOON_WITHOUT_WARNINGS.as_secs(), |s| *s) as i64;
    let left = (at.with_timezone(&Utc) - now).num_seconds();
    (0..=window).contains(&left)
}

fn state(e: &EnvironmentView) -> String {
    let desired = e.desired_state.as_str();
    let observed = e.state.as_str();
    if desired == observed { observed.to_owned() } else { format!("{observed} -> {desired}") }
}

fn endpoints(e: &EnvironmentView) -> String {
    e.endpoints.iter().map(|p| format!("{}:{}->{}", p.host, p.port, p.container_port)).collect::<Vec<_>>().join(",")
}

pub fn environment(e: &EnvironmentView) {
    let mut rows = vec![
        ("id", e.id.clone()),
        ("name", e.name.clone().unwrap_or_default()),
        ("owner", e.owner.clone()),
        ("provider", e.spec.provider.clone()),
        ("image", e.spec.image.clone().unwrap_or_default()),
        ("cmd", e.spec.cmd.join(" ")),
        ("state", e.state.as_str().to_owned()),
        ("desired", e.desired_state.as_str().to_owned()),
        ("expires", e.expires_at.as_deref().map(|t| format!("{t} ({})", relative(t))).unwrap_or_default()),
        ("on expiry", e.on_expiry.as_str().to_owned()),
        ("endpoints", endpoints(e)),
        ("labels", e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")),
        ("created", e.created_at.clone()),
    ];
    if let Some(reason) = &e.reason {
        rows.push(("reason", reason.clone()));
    }
    if let Some(at) = &e.expired_at {
        rows.push(("expired", at.clone()));
    }
    if let Some(idle) = &e.idle_timeout {
        rows.push(("idle", format!("{idle}, then {}", e.on_idle)));
    }
    if let Some(at) = &e.last_active_at {
        rows.push(("active", format!("{at} ({})", relative(at))));
    }
    if let Some(at) = &e.idled_at {
        rows.push(("idled", at.clone()));
    }
    if let Some(h) = e.health {
        rows.push(("health", format!("{h}{}", if e.ready { " (ready)" } else { "" })));
    }
    for (k, v) in rows.into_iter().filter(|(_, v)| !v.is_empty()) {
        println!("{:<10} {v}", format!("{k}:"));
    }
}

pub fn events(events: &[EventView]) {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.at.clone(),
                e.environment_id.clone().unwrap_or_default(),
                e.actor.clone(),
                e.action.clone(),
                e.outcome.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    table(&["SEQ", "AT", "ENVIRONMENT", "ACTOR", "ACTION", "OUTCOME", "MESSAGE"], &rows);
}

pub fn pools(pools: &[PoolView]) {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.spec.provider.clone(),
                p.spec_hash.clone(),
                format!("{}/{}", p.warm, p.min),
                p.starting.to_string(),
                p.max.to_string(),
                p.version.clone(),
            ]
        })
        .collect();
    table(&["POOL", "PROVIDER", "SPEC HASH", "WARM/MIN", "STARTING", "MAX", "VERSION"], &rows);
}

/// `lapse status --server`.
pub fn server(s: &lapse_core::wire::StatusView) {
    println!("version      {}", s.version);
    println!("controller   {}", s.controller_id);
    println!("store        {}", s.store);
    if let Some(r) = &s.replica {
        println!("replica      {r} (this server)");
    }
    if !s.role.is_empty() {
        let epoch = s.epoch.map(|e| format!(" (epoch {e})")).unwrap_or_default();
        println!("role         {}{epoch}", s.role);
    }
    println!("providers    {}", s.providers.join(", "));
    println!("timers       {}", s.timers);
    println!("backlog      {}", s.backlog);
    if let Some(c) = &s.config {
        println!(
            "config       {}{}",
            c.path,
            c.error.as_deref().map(|e| format!(" (refused: {e})")).unwrap_or_default()
        );
    }
    if let Some(replicas) = &s.replicas {
        println!();
        let rows: Vec<Vec<String>> = replicas
            .iter()
            .map(|r| {
                let me = if s.replica.as_deref() == Some(r.id.as_str()) { " *" } else { "" };
                vec![
                    format!("{}{me}", r.id),
                    r.connections.to_string(),
                    if r.holds.is_empty() { "-".into() } else { r.holds.join(", ") },
                    relative(&r.since),
                ]
            })
            .collect();
        table(&["REPLICA", "CONNECTIONS", "HOLDS", "SINCE"], &rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(expires_in_s: Option<i64>, warn_before: &[i64], now: DateTime<Utc>) -> EnvironmentView {
        let mut e = lapse_core::model::Environment::new("e".into(), "o".into(), Default::default(), 0);
        e.observed = lapse_core::model::ObservedState::Running;
        e.expires_at = expires_in_s.map(|s| now.timestamp_millis() + s * 1000);
        e.warn_before = warn_before.iter().map(|s| s * 1000).collect();
        EnvironmentView::from(&e)
    }

    #[test]
    fn a_lease_ends_soon_within_its_largest_warning_or_15_minutes() {
        let now = Utc::now();
        assert!(expires_soon(&env(Some(10 * 60), &[], now), now));
        assert!(!expires_soon(&env(Some(20 * 60), &[], now), now));
        assert!(expires_soon(&env(Some(20 * 60), &[30 * 60, 60], now), now), "the largest mark counts");
        assert!(!expires_soon(&env(Some(120), &[60], now), now));
        assert!(!expires_soon(&env(None, &[], now), now), "no lease");
        assert!(!expires_soon(&env(Some(-5), &[], now), now), "already over");
    }
}

//! Expiry as the seed's cleanup does it (`internal/cleanup/cleanup.go`): a lab whose
//! `expiresAt` has passed gets a decommission request `RPUSH`ed onto the decommission queue,
//! `{"labId":N,"webuserid":U}` (Go's `json.Marshal` of the seed's map: keys sorted), and the
//! queue's handler deletes it like any other request, so a LabMan watching the queue sees what
//! the seed would make it see.
//!
//! The seed scans its cache keys at start and every 5 minutes; Lapse reads the store every
//! [`super::V2Config::cleanup_every`] (5 s) and pushes at most once per
//! [`super::V2Config::repush_every`] (the seed's 5 minutes) for a lab still alive (the first
//! request rate-limited, or lost with Redis). The store's lease runs
//! [`super::EXPIRY_GRACE`] longer and deletes the lab itself should every push fail.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lapse_core::model::Environment;

use super::apply::is_current;
use super::{EXPIRY_GRACE, LAB_LABEL, SOURCE, SwimV2};
use crate::app::App;

/// Pushes decommissions for expired labs, for ever.
pub async fn run(app: App, swim: Arc<SwimV2>) {
    let mut pushed: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut ticks = tokio::time::interval(swim.config.cleanup_every.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        crate::health::tick("swim_v2:expiry");
        let now = app.cx.clock.now();
        let expired: Vec<Environment> = match app.cx.store.mirrored(SOURCE, now).await {
            Ok(envs) => envs.into_iter().filter(|e| is_current(e) && expired(e, now)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the store for expired SWIM v2 labs failed; retrying");
                continue;
            }
        };
        pushed.retain(|id, _| expired.iter().any(|e| &e.id == id));
        let due: Vec<&Environment> = expired
            .iter()
            .filter(|e| pushed.get(&e.id).is_none_or(|at| at.elapsed() >= swim.config.repush_every))
            .collect();
        if due.is_empty() {
            continue;
        }
        let mut conn = match swim.link.connect(Duration::from_secs(5)).await {
            Ok(c) => c,
            Err(e) => {
                swim.link.down("v2 expiry", &e);
                continue;
            }
        };
        let queue = swim.config.decommission_queue();
        for env in due {
            let request = request(env);
            match redis::cmd("RPUSH").arg(&queue).arg(&request).query_async::<i64>(&mut conn).await {
                Ok(_) => {
                    tracing::info!(server_id = %env.id, webuserid = %env.owner, "pushed decommission request for expired server");
                    pushed.insert(env.id.clone(), tokio::time::Instant::now());
                }
                Err(e) => {
                    swim.link.down("v2 expiry", &e);
                    break;
                }
            }
        }
    }
}

/// Whether the lab's `expiresAt` (its lease less the grace) has passed.
fn expired(e: &Environment, now: lapse_core::Millis) -> bool {
    e.expires_at.is_some_and(|at| at - EXPIRY_GRACE.as_millis() as i64 <= now)
}

/// The seed's decommission request for a lab: `{"labId":N,"webuserid":U}`.
pub fn request(env: &Environment) -> String {
    let lab: i64 = env.labels.get(LAB_LABEL).and_then(|l| l.parse().ok()).unwrap_or_default();
    // A map's keys come out sorted, as Go's `json.Marshal` writes a map.
    serde_json::json!({"webuserid": env.owner, "labId": lab}).to_string()
}

#[cfg(test)]
mod tests {
    use lapse_core::model::Spec;

    use super::*;

    #[test]
    fn the_request_is_the_seeds_bytes() {
        let mut env = Environment::new("a".repeat(32), "550e8400".into(), Spec::default(), 0);
        env.labels.insert(LAB_LABEL.into(), "5".into());
        assert_eq!(request(&env), r#"{"labId":5,"webuserid":"550e8400"}"#);
        env.expires_at = Some(EXPIRY_GRACE.as_millis() as i64 + 1000);
        assert!(!expired(&env, 999) && expired(&env, 1000));
    }
}

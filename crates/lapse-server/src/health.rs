//! Liveness and readiness: a heartbeat per background loop, and what `/readyz` checks.
//!
//! Each background loop calls [`tick`] with its name once per turn (one line in the loop, no
//! other coupling). `/healthz` touches nothing: it answers while the process serves HTTP.
//! `/readyz` ([`readiness`]) answers ready only when the store takes writes and every loop
//! expected on this server ticked recently:
//!
//! | loop | ticks | not ready when |
//! |---|---|---|
//! | `sweep` | every `sweep_interval` (per provider) | no tick for 3 of the longest intervals + 30 s |
//! | `pools` | at least every second | no tick for 30 s |
//! | `probes` | every 250 ms (after reading the probed environments) | no tick for 30 s |
//! | `activity` | every `activity_flush` (5 s) | no tick for 3 flush intervals + 30 s |
//! | `swim:<queue>` | at least every second (`BLMOVE` waits 1 s) | no tick for 60 s (Redis down, a stuck batch) |
//! | `swim_v2:<queue>`, `swim_v2:expiry` | every second; every 5 s | no tick for 60 s |
//! | `reconciler` | at each step it starts | never ticked, or work waiting and no step started for 120 s |
//! | `timers` | when a deadline fires or an earlier one is set | never ticked (it sleeps until its next deadline) |
//! | `lead` (PostgreSQL) | every second | no tick for 30 s |
//!
//! The heartbeats are process-wide (one server per process; a second in-process server's
//! loops tick the same names, which only ever makes readiness more lenient).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use lapse_core::wire::{LoopHealth, ReadyView};
use tokio::time::Instant;

use crate::app::App;

/// Records that loop `name` is alive now.
pub fn tick(name: &str) {
    let mut beats = beats().lock().unwrap_or_else(|p| p.into_inner());
    match beats.get_mut(name) {
        Some(at) => *at = Instant::now(),
        None => {
            beats.insert(name.to_owned(), Instant::now());
        }
    }
}

/// When loop `name` last ticked.
pub fn last_tick(name: &str) -> Option<Instant> {
    beats().lock().unwrap_or_else(|p| p.into_inner()).get(name).copied()
}

fn beats() -> &'static Mutex<HashMap<String, Instant>> {
    static BEATS: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    BEATS.get_or_init(Default::default)
}

/// How a loop is judged.
#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// Ticks at least this often when healthy.
    Within(Duration),
    /// Ticks when there is work: only never having ticked counts against it.
    Started,
    /// Ticks when it starts work: stale when work waits and nothing started for this long.
    WhileBusy(Duration),
}

/// The loops this server runs, and how each is judged. With replicas, one that follows does
/// not run the leader's (pools, queue consumers; see [`crate::lead`]).
pub fn expected(app: &App) -> Vec<(String, Expect)> {
    let sweep = app.cx.config.longest_sweep_interval();
    let leads = app.cx.role.leading();
    let mut loops = vec![
        ("reconciler".to_owned(), Expect::WhileBusy(Duration::from_secs(120))),
        ("timers".to_owned(), Expect::Started),
        ("sweep".to_owned(), Expect::Within(sweep * 3 + Duration::from_secs(30))),
    ];
    if leads {
        loops.push(("pools".to_owned(), Expect::Within(Duration::from_secs(30))));
    }
    loops.push(("probes".to_owned(), Expect::Within(Duration::from_secs(30))));
    loops.push(("activity".to_owned(), Expect::Within(app.cx.config.activity_flush * 3 + Duration::from_secs(30))));
    if app.cx.store.has_replicas() {
        loops.push(("lead".to_owned(), Expect::Within(Duration::from_secs(30))));
    }
    if !leads {
        return loops;
    }
    if let Some(swim) = &app.cx.swim {
        for queue in &swim.queues {
            loops.push((format!("swim:{}", queue.name()), Expect::Within(Duration::from_secs(60))));
        }
    }
    if let Some(v2) = &app.cx.swim_v2 {
        for queue in &v2.link.queues {
            loops.push((format!("swim_v2:{}", queue.name()), Expect::Within(Duration::from_secs(60))));
        }
        loops.push(("swim_v2:expiry".to_owned(), Expect::Within(Duration::from_secs(60))));
    }
    loops
}

/// Whether the server is ready, and what is not.
pub async fn readiness(app: &App) -> ReadyView {
    let now = Instant::now();
    let busy = app.reconciler.backlog() > 0;
    let mut problems = Vec::new();
    let mut loops = Vec::new();
    for (name, expect) in expected(app) {
        let last = last_tick(&name);
        let ago = last.map(|t| now.saturating_duration_since(t));
        let ok = match (&expect, ago) {
            (_, None) => false,
            (Expect::Within(limit), Some(ago)) => ago <= *limit,
            (Expect::Started, Some(_)) => true,
            (Expect::WhileBusy(limit), Some(ago)) => !busy || ago <= *limit,
        };
        if !ok {
            problems.push(match ago {
                None => format!("{name} has not run yet"),
                Some(ago) => format!("{name} last ran {} s ago", ago.as_secs()),
            });
        }
        loops.push(LoopHealth {
            name,
            ok,
            last_tick_ms_ago: ago.map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
        });
    }
    let store_writable = store_writable(app);
    if !store_writable {
        problems.push("the store does not take writes".to_owned());
    }
    ReadyView { ready: problems.is_empty(), store_writable, loops, problems }
}

/// Whether the store takes writes: its last write committed (a failed commit, say on a full
/// disk, clears this until one commits again), and no stop or delete waits in the deferred
/// journal for the store to take it.
pub fn store_writable(app: &App) -> bool {
    app.cx.store.is_writable() && app.cx.deferred.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_are_remembered_per_loop() {
        assert_eq!(last_tick("health-test-loop"), None);
        tick("health-test-loop");
        let first = last_tick("health-test-loop").unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        tick("health-test-loop");
        assert_eq!(last_tick("health-test-loop").unwrap() - first, Duration::from_secs(5));
    }
}

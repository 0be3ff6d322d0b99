//! One timer structure for every deadline: lease expiries and retry back-offs.
//!
//! A timer carries only an environment id and a time. When it fires, the id goes to the
//! reconciler, which reads the environment and decides; so a stale timer (the lease was
//! extended, the retry already happened) costs one read and does nothing. The store is the
//! truth: at start the timers are rebuilt from it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use lapse_core::Millis;
use tokio::sync::Notify;

use crate::clock::Clock;

#[derive(Clone, Debug, Default)]
pub struct Timers {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    deadlines: Mutex<BTreeSet<(Millis, String)>>,
    changed: Notify,
}

impl Timers {
    /// Wakes `id` at `at` (or at once, if `at` is past).
    pub fn schedule(&self, at: Millis, id: &str) {
        let mut deadlines = self.inner.deadlines.lock().unwrap_or_else(|p| p.into_inner());
        let earliest = deadlines.first().map(|(t, _)| *t);
        deadlines.insert((at, id.to_owned()));
        drop(deadlines);
        if earliest.is_none_or(|e| at < e) {
            self.inner.changed.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.inner.deadlines.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns every id due at `now`, earliest first.
    fn take_due(&self, now: Millis) -> Vec<String> {
        let mut deadlines = self.inner.deadlines.lock().unwrap_or_else(|p| p.into_inner());
        let later = deadlines.split_off(&(now + 1, String::new()));
        let due = std::mem::replace(&mut *deadlines, later);
        due.into_iter().map(|(_, id)| id).collect()
    }

    fn earliest(&self) -> Option<Millis> {
        self.inner.deadlines.lock().unwrap_or_else(|p| p.into_inner()).first().map(|(t, _)| *t)
    }

    /// Fires timers for ever: each due id goes to `fire`.
    pub async fn run(&self, clock: Clock, mut fire: impl FnMut(String)) {
        loop {
            crate::health::tick("timers");
            for id in self.take_due(clock.now()) {
                fire(id);
            }
            let changed = self.inner.changed.notified();
            match self.earliest() {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(clock.instant_at(at)) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Deadlines fire in order, on time, with paused time: TTLs of an hour take no real time.
    #[tokio::test(start_paused = true)]
    async fn fires_each_deadline_on_time_in_order() {
        let clock = Clock::new();
        let timers = Timers::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let t0 = clock.now();
        timers.schedule(t0 + 3_600_000, "hour");
        timers.schedule(t0 + 1_000, "second");
        timers.schedule(t0 + 60_000, "minute");
        let runner = timers.clone();
        tokio::spawn(async move { runner.run(clock, move |id| tx.send((id, clock.now())).unwrap()).await });

        let mut fired = Vec::new();
        for _ in 0..3 {
            let (id, at) = rx.recv().await.unwrap();
            fired.push((id, at - t0));
        }
        assert_eq!(
            fired,
            [("second".to_string(), 1_000), ("minute".to_string(), 60_000), ("hour".to_string(), 3_600_000)]
        );
        assert!(timers.is_empty());
    }

    /// A deadline earlier than every other one wakes the sleeping runner.
    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_preempts_the_sleep() {
        let clock = Clock::new();
        let timers = Timers::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let t0 = clock.now();
        timers.schedule(t0 + 600_000, "late");
        let runner = timers.clone();
        tokio::spawn(async move { runner.run(clock, move |id| tx.send((id, clock.now())).unwrap()).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        timers.schedule(t0 + 10_000, "early");
        let (id, at) = rx.recv().await.unwrap();
        assert_eq!((id.as_str(), at - t0), ("early", 10_000));
        // A deadline in the past fires at once.
        timers.schedule(t0, "past");
        let (id, at) = rx.recv().await.unwrap();
        assert_eq!((id.as_str(), at - t0), ("past", 10_000));
    }
}

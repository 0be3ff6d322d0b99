//! Time spent inside a provider's calls to its backend (each SDK `send()`, each HTTP request),
//! counted per operation so the control plane's own share of a create can be told apart from
//! the cloud's: `/metrics` shows it as the histogram `lapse_provider_call_seconds{provider,op}`
//! and `lapse bench` compares it with the wall time of whole creates.
//!
//! **Contract.** Recording is cheap (one uncontended lock and a few additions per call, next
//! to a network round trip) and never fails; the figures only grow. A call is counted when it
//! ends, whatever its outcome (an error answer took the cloud's time too). Only the operation's
//! name is kept, never a request or an answer.
//!
//! Calls may overlap (a launch looks its image and subnet up at once), so the durations' sum
//! can exceed the wall time they took; [`CallTimes::busy`] is the wall time during which at
//! least one call was in flight (`lapse_provider_call_busy_seconds_total{provider}`), the
//! figure to set against a create's wall time. It counts calls bracketed by
//! [`CallTimes::begin`] and [`CallTimes::end`] (or [`CallTimes::time`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the histogram buckets; a last, unbounded bucket follows.
pub const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// The figures of one operation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallTime {
    /// The backend's operation (`RunInstances`, `DescribeInstances`).
    pub op: String,
    /// Calls that ended.
    pub count: u64,
    /// Their total duration.
    pub total: Duration,
    /// Calls per bucket of [`BUCKETS`] (not cumulative), the last one past the last bound.
    pub buckets: [u64; BUCKETS.len() + 1],
}

/// A provider's counters, one [`CallTime`] per operation.
#[derive(Debug, Default)]
pub struct CallTimes {
    by_op: Mutex<BTreeMap<String, CallTime>>,
    busy: Mutex<Busy>,
}

/// Calls in flight, since when, and the wall time with at least one in flight.
#[derive(Debug, Default)]
struct Busy {
    in_flight: usize,
    since: Option<Instant>,
    total: Duration,
}

impl CallTimes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one call of `op` that took `took`.
    pub fn record(&self, op: &str, took: Duration) {
        let bucket = BUCKETS.iter().position(|b| took.as_secs_f64() <= *b).unwrap_or(BUCKETS.len());
        // A poisoned lock only means a panic elsewhere while counting: the figures stay usable.
        let mut by_op = self.by_op.lock().unwrap_or_else(|p| p.into_inner());
        if !by_op.contains_key(op) {
            by_op.insert(op.to_owned(), CallTime { op: op.to_owned(), ..Default::default() });
        }
        let Some(entry) = by_op.get_mut(op) else { return };
        entry.count += 1;
        entry.total += took;
        entry.buckets[bucket] += 1;
    }

    /// A call starts (for [`CallTimes::busy`]); every `begin` is followed by one `end`.
    pub fn begin(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if busy.in_flight == 0 {
            busy.since = Some(Instant::now());
        }
        busy.in_flight += 1;
    }

    /// A call of `op` that [`CallTimes::begin`] started ends after `took`.
    pub fn end(&self, op: &str, took: Duration) {
        self.record(op, took);
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.in_flight = busy.in_flight.saturating_sub(1);
        if busy.in_flight == 0
            && let Some(since) = busy.since.take()
        {
            busy.total += since.elapsed();
        }
    }

    /// The wall time during which at least one call was in flight (so far, including the
    /// calls in flight now).
    pub fn busy(&self) -> Duration {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.total + busy.since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Runs `call` and counts the time it took under `op`.
    pub async fn time<T>(&self, op: &str, call: impl Future<Output = T>) -> T {
        self.begin();
        let started = Instant::now();
        let out = call.await;
        self.end(op, started.elapsed());
        out
    }

    /// Every operation's figures so far, by name.
    pub fn snapshot(&self) -> Vec<CallTime> {
        self.by_op.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}

/// The sum of `times` over every operation (count, total).
pub fn total(times: &[CallTime]) -> (u64, Duration) {
    times.iter().fold((0, Duration::ZERO), |(n, d), t| (n + t.count, d + t.total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_counts_overlapping_calls_once() {
        let times = CallTimes::new();
        times.begin();
        times.begin();
        std::thread::sleep(Duration::from_millis(30));
        times.end("A", Duration::from_millis(30));
        times.end("B", Duration::from_millis(30));
        let busy = times.busy();
        let (_, summed) = total(&times.snapshot());
        assert_eq!(summed, Duration::from_millis(60));
        assert!(busy >= Duration::from_millis(30) && busy < Duration::from_millis(55), "{busy:?}");
        // Idle time between calls is not busy.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(times.busy(), busy);
    }

    #[tokio::test]
    async fn counts_per_operation_into_buckets() {
        let times = CallTimes::new();
        times.record("RunInstances", Duration::from_millis(3));
        times.record("RunInstances", Duration::from_secs(20));
        let answer = times.time("DescribeInstances", async { 7 }).await;
        assert_eq!(answer, 7);
        let snap = times.snapshot();
        assert_eq!(snap.iter().map(|t| t.op.as_str()).collect::<Vec<_>>(), ["DescribeInstances", "RunInstances"]);
        let run = &snap[1];
        assert_eq!(run.count, 2);
        assert_eq!(run.total, Duration::from_millis(20_003));
        assert_eq!(run.buckets[2], 1, "3 ms falls in the 5 ms bucket");
        assert_eq!(run.buckets[BUCKETS.len()], 1, "20 s is past the last bound");
        assert_eq!(total(&snap).0, 3);
    }
}

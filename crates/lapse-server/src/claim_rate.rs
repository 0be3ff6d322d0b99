//! Claims per minute, per pool: what the dashboard and `GET /v1/pools` show as
//! `claims_last_minute`.
//!
//! In memory, per replica (a restart starts from 0): sixty one-second buckets per pool, so the
//! cost is fixed whatever the claim rate, and a pool no longer claimed from costs one entry.

use std::collections::HashMap;
use std::sync::Mutex;

use lapse_core::Millis;

const SECONDS: usize = 60;

/// The claims of the last minute, by pool.
#[derive(Debug, Default)]
pub struct ClaimRate {
    pools: Mutex<HashMap<String, Window>>,
}

#[derive(Debug)]
struct Window {
    /// `(second, claims in it)`, indexed by the second modulo 60.
    buckets: [(i64, u32); SECONDS],
}

impl ClaimRate {
    /// Counts one claim from `pool` at `now`.
    pub fn record(&self, pool: &str, now: Millis) {
        let second = now.div_euclid(1000);
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let window = pools.entry(pool.to_owned()).or_insert(Window { buckets: [(i64::MIN, 0); SECONDS] });
        let bucket = &mut window.buckets[second.rem_euclid(SECONDS as i64) as usize];
        if bucket.0 != second {
            *bucket = (second, 0);
        }
        bucket.1 = bucket.1.saturating_add(1);
    }

    /// Claims from `pool` in the 60 seconds up to `now`.
    pub fn last_minute(&self, pool: &str, now: Millis) -> u32 {
        let second = now.div_euclid(1000);
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.get(pool).map_or(0, |w| {
            w.buckets.iter().filter(|(s, _)| *s > second - SECONDS as i64 && *s <= second).map(|(_, n)| *n).sum()
        })
    }

    /// Forgets a pool (deleted).
    pub fn forget(&self, pool: &str) {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).remove(pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_sixty_seconds_only() {
        let rate = ClaimRate::default();
        let t0: Millis = 1_700_000_000_000;
        for i in 0..5 {
            rate.record("a", t0 + i * 10_000);
        }
        rate.record("b", t0);
        assert_eq!(rate.last_minute("a", t0 + 40_000), 5);
        assert_eq!(rate.last_minute("b", t0 + 40_000), 1);
        assert_eq!(rate.last_minute("a", t0 + 65_000), 4, "the first claim is over a minute old");
        assert_eq!(rate.last_minute("a", t0 + 200_000), 0);
        // The first claim's bucket, reused a minute later, starts again from zero: the four
        // claims still inside the minute and the new one.
        rate.record("a", t0 + 60_000);
        assert_eq!(rate.last_minute("a", t0 + 60_000), 5);
        assert_eq!(rate.last_minute("missing", t0), 0);
        rate.forget("a");
        assert_eq!(rate.last_minute("a", t0 + 60_000), 0);
    }
}

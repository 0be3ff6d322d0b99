//! The control plane's clock: wall-clock milliseconds that advance with tokio's clock, so
//! deadlines can be tested with paused time and never jump with the system clock.

use lapse_core::Millis;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall_at_start: Millis,
    started: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock { wall_at_start: lapse_core::now_millis(), started: Instant::now() }
    }

    pub fn now(&self) -> Millis {
        self.wall_at_start + i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// The tokio instant at which the clock reads `at` (now, if `at` is past).
    pub fn instant_at(&self, at: Millis) -> Instant {
        let ahead = u64::try_from(at - self.now()).unwrap_or(0);
        Instant::now() + std::time::Duration::from_millis(ahead)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

//! Lifecycle webhooks: a signed `POST` to a URL for each lifecycle event a hook asks for.
//!
//! Contract:
//! - **The events table is the outbox.** Every change writes its audit event in the same
//!   transaction as the row ([`lapse_store::NewEvent`]). The worker ([`worker`]) reads the
//!   events after each hook's durable cursor, maps them to webhook events
//!   ([`events::name_of`]), and writes the deliveries and the cursor's advance in one
//!   transaction ([`lapse_store::Store::fan_out`]); then it delivers. A `kill -9` anywhere
//!   loses nothing: an event not yet fanned out is read again, a delivery not yet recorded as
//!   done is sent again. **At least once**, with the delivery's id in `Lapse-Delivery`
//!   (stable across retries) for de-duplication.
//! - **Per environment in order**: a hook's next delivery for an environment waits until the
//!   earlier ones are delivered or failed; different environments go in parallel, at most
//!   [`WebhookPolicy::concurrency`] at once.
//! - **Retries**: a non-`2xx` (a `3xx` too), a timeout or a refused address is retried after
//!   `retry_base` doubling to `retry_cap`, with ±10% jitter, at most `max_attempts` times and
//!   never past 24 h after it was made; then it is `failed` with the last error. A hook's
//!   consecutive failed attempts are shown (`consecutive_failures`).
//! - **Bounded**: at most `max_pending` deliveries pending per hook (the oldest are kept; the
//!   rest dropped with a `webhook_dropped` event and `lapse_webhook_dropped_total`), bodies of
//!   at most [`MAX_BODY_BYTES`] (a larger environment view is cut to its id and state), at most
//!   4 KiB of an answer read, connect and total timeouts.
//! - **Where** a hook may point: [`address`] (public addresses only, checked at registration
//!   and at every connection, unless the operator allows private ones).
//! - Metrics: `lapse_webhook_deliveries_total{outcome="delivered"|"retry"|"failed"}`,
//!   `lapse_webhook_pending`, `lapse_webhook_dropped_total`.
//!
//! Hooks come from the API (`/v1/webhooks`, per tenant: [`api`]) and from the config file's
//! `[[webhooks]]` (read at start, [`declared`]).

use std::time::Duration;

pub mod address;
pub mod api;
pub mod declared;
pub mod deliver;
pub mod events;
pub mod worker;

/// Largest delivery body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How deliveries are made (`--webhook-*` flags, `[webhooks_policy]`).
#[derive(Clone, Debug)]
pub struct WebhookPolicy {
    /// Let hooks reach loopback, private and link-local addresses (tests, trusted networks).
    pub allow_private: bool,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub max_attempts: u32,
    /// Pending deliveries kept per hook.
    pub max_pending: usize,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Total time of one attempt (connecting takes at most 5 s of it).
    pub timeout: Duration,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        WebhookPolicy {
            allow_private: false,
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(600),
            max_attempts: 12,
            max_pending: 1000,
            concurrency: 16,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Longest a delivery is retried after it was made.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What the API and the worker share: the worker's wake-up.
#[derive(Debug, Default)]
pub struct Hub {
    pub wake: tokio::sync::Notify,
}

/// The wait before attempt `attempts + 1` after `attempts` failures, with ±10% jitter.
pub fn retry_wait(policy: &WebhookPolicy, attempts: u32) -> Duration {
    let base = policy.retry_base.as_millis() as u64;
    let cap = policy.retry_cap.as_millis() as u64;
    let exponent = attempts.saturating_sub(1).min(30);
    let wait = base.saturating_mul(1 << exponent).min(cap.max(1));
    let mut byte = [0u8; 2];
    let _ = getrandom::fill(&mut byte);
    let spread = u64::from(u16::from_le_bytes(byte)) % 2001; // 0..=2000 → -10%..+10%
    Duration::from_millis(wait.saturating_mul(9000 + spread) / 10000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_to_the_cap_with_jitter() {
        let p = WebhookPolicy::default();
        for (attempts, nominal) in [(1u32, 5_000u64), (2, 10_000), (3, 20_000), (8, 600_000), (30, 600_000)] {
            for _ in 0..20 {
                let w = retry_wait(&p, attempts).as_millis() as u64;
                assert!(w >= nominal * 9 / 10 && w <= nominal * 11 / 10, "{attempts}: {w} vs {nominal}");
            }
        }
    }
}

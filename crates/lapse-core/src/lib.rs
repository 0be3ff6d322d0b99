//! Lapse's model, with no IO and no async runtime.
//!
//! - [`model`]: the environment, its spec and its states.
//! - [`state`]: which observed-state transitions are allowed, and [`state::plan`], the pure
//!   decision of what the reconciler's next step for one environment is.
//! - [`duration`]: TTLs as users write them (`"30m"`, `"2 hours"`; the CLI's bare number is hours).
//! - [`probe`]: health probes of a spec and the rule of readiness.
//! - [`validate`]: limits on every user-supplied field.
//! - [`wire`]: the JSON shapes of the HTTP API, shared by the server and the CLI.
//!
//! Times are milliseconds since the Unix epoch ([`Millis`]) everywhere inside Lapse; the wire
//! types show them as RFC 3339.

pub mod claim;
pub mod cost;
pub mod duration;
pub mod model;
pub mod probe;
pub mod quota;
pub mod state;
pub mod validate;
pub mod wire;
pub mod workspace;

#[cfg(test)]
mod proptests;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current wall-clock time in [`Millis`].
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// Formats [`Millis`] as RFC 3339 with millisecond precision (UTC).
pub fn format_millis(ms: Millis) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

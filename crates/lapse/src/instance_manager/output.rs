//! The seed's text, word for word (`cmd/main.go`), from Lapse's environment views.

use std::time::Duration;

use lapse_core::model::ObservedState;
use lapse_core::wire::EnvironmentView;

/// The SSH user of the seed's instances (Amazon Linux 2).
pub const USERNAME: &str = "ec2-user";

/// The seed's `utils.FormatDuration`: `45s`, `30m`, `2h`, `2h30m`, `1d`, `1d2h` (seconds and
/// minutes below an hour rounded, as Go's `%.0f`; hours and days truncated).
pub fn go_format_duration(millis: i64) -> String {
    let secs = millis as f64 / 1000.0;
    if millis < 60_000 {
        return format!("{:.0}s", secs);
    }
    if millis < 3_600_000 {
        return format!("{:.0}m", secs / 60.0);
    }
    let hours_total = millis / 3_600_000;
    if millis < 86_400_000 {
        let minutes = (millis / 60_000) % 60;
        return if minutes == 0 { format!("{hours_total}h") } else { format!("{hours_total}h{minutes}m") };
    }
    let (days, hours) = (hours_total / 24, hours_total % 24);
    if hours == 0 { format!("{days}d") } else { format!("{days}d{hours}h") }
}

/// A duration as the seed prints it.
pub fn duration(d: Duration) -> String {
    go_format_duration(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Milliseconds of an RFC 3339 time.
pub fn millis(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}

/// Go's `time.RFC3339` (`2006-01-02T15:04:05Z07:00`), in UTC.
pub fn rfc3339(text: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => t.with_timezone(&chrono::Utc).format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => text.to_owned(),
    }
}

/// The seed's `2006-01-02 15:04:05` (`show`), in UTC.
pub fn plain_time(text: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => t.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => text.to_owned(),
    }
}

/// The EC2 state an environment's state stands for.
pub fn ec2_state(state: ObservedState) -> &'static str {
    match state {
        ObservedState::Pending | ObservedState::Provisioning => "pending",
        ObservedState::Running => "running",
        ObservedState::Stopping => "stopping",
        ObservedState::Stopped => "stopped",
        ObservedState::Deleting => "shutting-down",
        ObservedState::Deleted => "terminated",
        ObservedState::Failed => "failed",
    }
}

/// The instance's id as the seed shows it: the EC2 id, else (not made yet) the environment's.
pub fn instance_id(env: &EnvironmentView) -> &str {
    env.provider_ref.as_deref().unwrap_or(&env.id)
}

/// Its public and private address, from its endpoints (a private-range host is private).
pub fn ips(env: &EnvironmentView) -> (Option<String>, Option<String>) {
    let Some(host) = env.endpoints.first().map(|e| e.host.clone()) else { return (None, None) };
    let private = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        Ok(std::net::IpAddr::V6(v6)) => v6.is_loopback(),
        Err(_) => false,
    };
    if private { (None, Some(host)) } else { (Some(host), None) }
}

/// Time left until its expiry (negative when passed); `None` without one.
pub fn remaining(env: &EnvironmentView, now: i64) -> Option<i64> {
    env.expires_at.as_deref().and_then(millis).map(|at| at - now)
}

/// The lease length the seed would show: expiry minus creation.
pub fn lease(env: &EnvironmentView) -> Option<i64> {
    Some(millis(env.expires_at.as_deref()?)? - millis(&env.created_at)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_go_prints_them() {
        let cases = [
            (30_000, "30s"),
            (59_400, "59s"),
            (90_000, "2m"),
            (30 * 60_000, "30m"),
            (3_600_000, "1h"),
            (9_000_000, "2h30m"),
            (86_400_000, "1d"),
            (93_600_000, "1d2h"),
        ];
        for (ms, want) in cases {
            assert_eq!(go_format_duration(ms), want, "{ms} ms");
        }
    }

    #[test]
    fn times_as_go_prints_them() {
        assert_eq!(rfc3339("2026-12-01T10:00:00.123Z"), "2026-12-01T10:00:00Z");
        assert_eq!(plain_time("2026-12-01T10:00:00+01:00"), "2026-12-01 09:00:00");
    }
}

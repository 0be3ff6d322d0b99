//! Health probes of a spec (`spec.health`) and the pure rules of readiness.
//!
//! A spec may carry `health = { http = { port, path } | tcp = port | cmd = [...], interval,
//! timeout, healthy_after, unhealthy_after }`: exactly one of `http`, `tcp` and `cmd`. The
//! server's prober runs it every `interval` against the environment's **recorded** endpoint
//! for that port (never another address), or `cmd` through the provider's `exec`, each try
//! bounded by `timeout`. [`Streak`] is the whole rule of readiness: an environment starts
//! `starting`, becomes `healthy` after `healthy_after` passes in a row, and `unhealthy` after
//! `unhealthy_after` failures in a row (from either state); it is *ready* only while healthy.
//!
//! Absent, `health` is left out of the spec's JSON, so `Spec::hash` of specs without a probe
//! is what it was before probes existed.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{Health, Spec};
use crate::validate::FieldError;
use crate::wire::DurationInput;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTHY_AFTER: u32 = 1;
pub const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Most passes or failures a threshold may ask for.
pub const MAX_STREAK: u32 = 100;
pub const MAX_PATH: usize = 1024;

/// `spec.health`: how to tell that an environment serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An HTTP `GET` of `path` on `port` (one of `spec.ports`): a status 200 to 399 passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    /// A TCP connect to this port (one of `spec.ports`) passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<u16>,
    /// A command run inside the environment (the provider's `exec`): exit code 0 passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Time between probes (default 5 s; 250 ms to 1 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationInput>,
    /// Longest one probe may take (default 2 s; at most 60 s and at most `interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationInput>,
    /// Passes in a row that make it healthy (ready); default 1, at most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_after: Option<u32>,
    /// Failures in a row that make it unhealthy (not ready; a service is restarted); default
    /// 3, at most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_after: Option<u32>,
}

/// `health.http`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    pub port: u16,
    /// Starts with `/`; printable ASCII without spaces (default `/`).
    #[serde(default = "root")]
    pub path: String,
}

fn root() -> String {
    "/".into()
}

/// What to try, once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Http { port: u16, path: String },
    Tcp(u16),
    Cmd(Vec<String>),
}

/// A validated probe with its defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub target: Target,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
}

fn fail<T>(field: &str, message: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError { field: format!("spec.health.{field}"), message: message.into() })
}

impl HealthCheck {
    /// Checks `spec.health` against its spec and fills in the defaults. Every refusal names
    /// its field (`spec.health.http.port`).
    pub fn resolve(&self, spec: &Spec) -> Result<Probe, FieldError> {
        let chosen =
            usize::from(self.http.is_some()) + usize::from(self.tcp.is_some()) + usize::from(!self.cmd.is_empty());
        if chosen != 1 {
            return Err(FieldError {
                field: "spec.health".into(),
                message: "give exactly one of `http`, `tcp` and `cmd`".into(),
            });
        }
        let exposed = |field: &str, port: u16| {
            if spec.ports.contains(&port) {
                Ok(())
            } else {
                fail(field, format!("port {port} is not one of spec.ports {:?}", spec.ports))
            }
        };
        let target = if let Some(http) = &self.http {
            exposed("http.port", http.port)?;
            let printable = http.path.bytes().all(|b| b.is_ascii_graphic());
            if !http.path.starts_with('/') || http.path.len() > MAX_PATH || !printable {
                return fail(
                    "http.path",
                    format!("must start with '/', be at most {MAX_PATH} characters of printable ASCII without spaces"),
                );
            }
            Target::Http { port: http.port, path: http.path.clone() }
        } else if let Some(port) = self.tcp {
            exposed("tcp", port)?;
            Target::Tcp(port)
        } else {
            crate::validate::command("spec.health.cmd", &self.cmd)?;
            Target::Cmd(self.cmd.clone())
        };
        let interval = bounded("interval", self.interval.as_ref(), DEFAULT_INTERVAL, MIN_INTERVAL, MAX_INTERVAL)?;
        let timeout =
            bounded("timeout", self.timeout.as_ref(), DEFAULT_TIMEOUT.min(interval), MIN_INTERVAL, MAX_TIMEOUT)?;
        if timeout > interval {
            return fail("timeout", "must not be longer than the interval");
        }
        let streak = |field: &str, given: Option<u32>, default: u32| match given.unwrap_or(default) {
            n @ 1..=MAX_STREAK => Ok(n),
            n => fail(field, format!("must be 1 to {MAX_STREAK}, got {n}")),
        };
        Ok(Probe {
            target,
            interval,
            timeout,
            healthy_after: streak("healthy_after", self.healthy_after, DEFAULT_HEALTHY_AFTER)?,
            unhealthy_after: streak("unhealthy_after", self.unhealthy_after, DEFAULT_UNHEALTHY_AFTER)?,
        })
    }
}

fn bounded(
    field: &str,
    given: Option<&DurationInput>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, FieldError> {
    let Some(given) = given else { return Ok(default) };
    let d = given.to_duration(max).or_else(|e| fail(field, e.to_string()))?;
    if d < min {
        return fail(field, format!("must be at least {}", crate::duration::format_duration(min)));
    }
    Ok(d)
}

/// Consecutive outcomes of one environment's probe, and the health they make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Streak {
    pub health: Health,
    passes: u32,
    failures: u32,
}

impl Streak {
    /// A streak that starts from `health` (what the record says) with no outcomes yet.
    pub fn new(health: Health) -> Streak {
        Streak { health, passes: 0, failures: 0 }
    }

    /// Counts one outcome; returns the new health when it changed.
    pub fn observe(&mut self, passed: bool, probe: &Probe) -> Option<Health> {
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
        }
        let next = if self.passes >= probe.healthy_after {
            Health::Healthy
        } else if self.failures >= probe.unhealthy_after {
            Health::Unhealthy
        } else {
            self.health
        };
        (next != self.health).then(|| {
            self.health = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(health: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "provider": "process", "cmd": ["x"], "ports": [8080, 22], "health": health,
        }))
        .unwrap()
    }

    fn refused(health: serde_json::Value) -> String {
        let s = spec(health);
        s.health.as_ref().unwrap().resolve(&s).unwrap_err().field
    }

    #[test]
    fn defaults_fill_in_and_one_target_is_required() {
        let s = spec(serde_json::json!({"http": {"port": 8080}}));
        let p = s.health.as_ref().unwrap().resolve(&s).unwrap();
        assert_eq!(p.target, Target::Http { port: 8080, path: "/".into() });
        assert_eq!(
            (p.interval, p.timeout, p.healthy_after, p.unhealthy_after),
            (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, 1, 3)
        );
        assert_eq!(refused(serde_json::json!({})), "spec.health");
        assert_eq!(refused(serde_json::json!({"tcp": 22, "cmd": ["true"]})), "spec.health");
    }

    #[test]
    fn an_absent_probe_keeps_the_hash_and_a_probe_changes_it() {
        // The spec pinned in `model`'s tests, from before probes existed.
        let mut a: Spec = serde_json::from_str(
            r#"{"provider": "process", "cmd": ["sleep", "1"], "env": {"A": "1"}, "resources": {"vcpu": 2, "mem_mb": 512}}"#,
        )
        .unwrap();
        assert_eq!(a.hash(), "9fc07d35548f796f");
        a.health = Some(HealthCheck { cmd: vec!["true".into()], ..Default::default() });
        assert_ne!(a.hash(), "9fc07d35548f796f");
    }

    #[test]
    fn every_bad_field_is_named() {
        assert_eq!(refused(serde_json::json!({"tcp": 9999})), "spec.health.tcp");
        assert_eq!(refused(serde_json::json!({"http": {"port": 1}})), "spec.health.http.port");
        assert_eq!(refused(serde_json::json!({"http": {"port": 8080, "path": "x"}})), "spec.health.http.path");
        assert_eq!(refused(serde_json::json!({"http": {"port": 8080, "path": "/a b"}})), "spec.health.http.path");
        assert_eq!(refused(serde_json::json!({"tcp": 22, "interval": "10ms"})), "spec.health.interval");
        assert_eq!(refused(serde_json::json!({"tcp": 22, "interval": "2h"})), "spec.health.interval");
        assert_eq!(refused(serde_json::json!({"tcp": 22, "interval": "1s", "timeout": "2s"})), "spec.health.timeout");
        assert_eq!(refused(serde_json::json!({"tcp": 22, "healthy_after": 0})), "spec.health.healthy_after");
        assert_eq!(refused(serde_json::json!({"tcp": 22, "unhealthy_after": 101})), "spec.health.unhealthy_after");
        assert_eq!(refused(serde_json::json!({"cmd": [""]})), "spec.health.cmd");
    }

    #[test]
    fn readiness_needs_passes_in_a_row_and_failures_in_a_row_take_it_away() {
        let s = spec(serde_json::json!({"tcp": 22, "healthy_after": 2, "unhealthy_after": 2}));
        let p = s.health.as_ref().unwrap().resolve(&s).unwrap();
        let mut streak = Streak::new(Health::Starting);
        assert_eq!(streak.observe(true, &p), None);
        assert_eq!(streak.observe(false, &p), None);
        assert_eq!(streak.observe(true, &p), None);
        assert_eq!(streak.observe(true, &p), Some(Health::Healthy));
        assert_eq!(streak.observe(true, &p), None);
        assert_eq!(streak.observe(false, &p), None);
        assert_eq!(streak.observe(false, &p), Some(Health::Unhealthy));
        assert_eq!(streak.observe(false, &p), None);
        assert_eq!(streak.observe(true, &p), None);
        assert_eq!(streak.observe(true, &p), Some(Health::Healthy));
    }
}

//! The `sim` provider: simulated environments in memory, for benchmarks and fault injection.
//! Never a default; `lapse serve --sim SPEC` turns it on.
//!
//! Each operation takes a latency drawn uniformly from its range and fails with its rate
//! (a retryable failure, as a flaky cloud API would). Instances are kept in a map; `exec`
//! echoes its command; [`SimProvider::exit`] makes an instance exit, as a crash would.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lapse_core::model::{Endpoint, Spec};
use lapse_core::validate::FieldError;
use lapse_core::wire::{ExecResult, LogsView};

use crate::{Instance, InstanceStatus, Provider, ProviderError};

const NAME: &str = "sim";

/// Latency range and failure rate of one operation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpProfile {
    pub min: Duration,
    pub max: Duration,
    /// Probability in [0, 1] that the call fails.
    pub failure_rate: f64,
}

/// The simulated behaviour, per operation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SimConfig {
    pub create: OpProfile,
    pub start: OpProfile,
    pub stop: OpProfile,
    pub delete: OpProfile,
}

impl SimConfig {
    /// Parses `op=LATENCY[..LATENCY][@RATE]` items separated by commas, with `op` one of
    /// `create`, `start`, `stop`, `delete`, `all`. `""` or `"0"` is instant and never fails.
    /// Example: `create=20ms..200ms@0.05,delete=10ms`.
    pub fn parse(text: &str) -> Result<SimConfig, String> {
        let mut config = SimConfig::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty() && *i != "0") {
            let (op, value) = item.split_once('=').ok_or_else(|| format!("{item:?} is not op=latency[@rate]"))?;
            let (range, rate) = match value.split_once('@') {
                Some((r, rate)) => (r, rate.parse::<f64>().map_err(|_| format!("{rate:?} is not a rate"))?),
                None => (value, 0.0),
            };
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("rate {rate} is not between 0 and 1"));
            }
            let parse = |t: &str| -> Result<Duration, String> {
                if t == "0" {
                    Ok(Duration::ZERO)
                } else {
                    humantime::parse_duration(t).map_err(|e| format!("{t:?}: {e}"))
                }
            };
            let (min, max) = match range.split_once("..") {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => (parse(range)?, parse(range)?),
            };
            if max < min {
                return Err(format!("{range:?}: the range ends before it starts"));
            }
            let profile = OpProfile { min, max, failure_rate: rate };
            match op {
                "create" => config.create = profile,
                "start" => config.start = profile,
                "stop" => config.stop = profile,
                "delete" => config.delete = profile,
                "all" => config = SimConfig { create: profile, start: profile, stop: profile, delete: profile },
                other => return Err(format!("unknown operation {other:?}; use create, start, stop, delete or all")),
            }
        }
        Ok(config)
    }
}

#[derive(Clone, Debug)]
struct SimInstance {
    running: bool,
    exit_code: Option<i64>,
    ports: Vec<u16>,
    serial: u64,
}

#[derive(Debug)]
pub struct SimProvider {
    config: SimConfig,
    instances: Mutex<HashMap<String, SimInstance>>,
    rng: AtomicU64,
    serial: AtomicU64,
}

impl SimProvider {
    pub fn new(config: SimConfig) -> Self {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
        SimProvider {
            config,
            instances: Mutex::new(HashMap::new()),
            rng: AtomicU64::new(seed),
            serial: AtomicU64::new(0),
        }
    }

    /// A uniform number in [0, 1) (splitmix64; no need for cryptographic quality).
    fn random(&self) -> f64 {
        let mut z = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    async fn act(&self, op: &'static str, profile: OpProfile) -> Result<(), ProviderError> {
        let span = profile.max.saturating_sub(profile.min);
        let wait = profile.min + span.mul_f64(self.random());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if profile.failure_rate > 0.0 && self.random() < profile.failure_rate {
            return Err(ProviderError::Failed { provider: NAME, op, message: "simulated failure".into() });
        }
        Ok(())
    }

    fn instances(&self) -> std::sync::MutexGuard<'_, HashMap<String, SimInstance>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn instance(id: &str, i: &SimInstance) -> Instance {
        Instance {
            environment_id: id.to_owned(),
            provider_ref: format!("sim-{}", i.serial),
            status: if i.running { InstanceStatus::Running } else { InstanceStatus::Stopped },
            exit_code: if i.running { None } else { i.exit_code },
            user_data_path: None,
            addresses: vec![],
            exit_reason: None,
            keep: false,
            endpoints: if i.running {
                i.ports
                    .iter()
                    .map(|p| Endpoint {
                        container_port: *p,
                        protocol: "tcp".into(),
                        host: "127.0.0.1".into(),
                        port: *p,
                    })
                    .collect()
            } else {
                vec![]
            },
        }
    }

    /// Makes an instance stop as if its process exited with `code`. `false` if there is none.
    pub fn exit(&self, environment_id: &str, code: i64) -> bool {
        self.instances()
            .get_mut(environment_id)
            .map(|i| {
                i.running = false;
                i.exit_code = Some(code);
            })
            .is_some()
    }

    /// Removes an instance as if it vanished outside Lapse.
    pub fn vanish(&self, environment_id: &str) -> bool {
        self.instances().remove(environment_id).is_some()
    }

    pub fn len(&self) -> usize {
        self.instances().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Provider for SimProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> crate::Capabilities {
        // In memory: its "resources" are this process's.
        crate::Capabilities {
            exec: true,
            logs: true,
            stop_keeps_disk: true,
            local: true,
            ..crate::Capabilities::default()
        }
    }

    fn validate(&self, _spec: &Spec) -> Result<(), FieldError> {
        Ok(())
    }

    async fn health(&self) -> Result<String, ProviderError> {
        Ok(format!("simulated, {} instances", self.len()))
    }

    async fn ensure_running(
        &self,
        environment_id: &str,
        _placement: &crate::Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError> {
        let existing = self.instances().get(environment_id).cloned();
        match existing {
            Some(i) if i.running => return Ok(Self::instance(environment_id, &i)),
            Some(_) => self.act("start", self.config.start).await?,
            None => self.act("create", self.config.create).await?,
        }
        let mut instances = self.instances();
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let entry = instances.entry(environment_id.to_owned()).or_insert(SimInstance {
            running: false,
            exit_code: None,
            ports: spec.ports.clone(),
            serial,
        });
        entry.running = true;
        Ok(Self::instance(environment_id, entry))
    }

    async fn stop(&self, environment_id: &str, _grace: Duration) -> Result<(), ProviderError> {
        if self.instances().get(environment_id).is_some_and(|i| i.running) {
            self.act("stop", self.config.stop).await?;
            if let Some(i) = self.instances().get_mut(environment_id) {
                i.running = false;
            }
        }
        Ok(())
    }

    async fn delete(&self, environment_id: &str, _grace: Duration) -> Result<(), ProviderError> {
        if self.instances().contains_key(environment_id) {
            self.act("delete", self.config.delete).await?;
            self.instances().remove(environment_id);
        }
        Ok(())
    }

    async fn inspect(&self, environment_id: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(self.instances().get(environment_id).map(|i| Self::instance(environment_id, i)))
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        Ok(self.instances().iter().map(|(id, i)| Self::instance(id, i)).collect())
    }

    async fn exec(
        &self,
        environment_id: &str,
        _spec: &Spec,
        cmd: &[String],
        _timeout: Duration,
    ) -> Result<ExecResult, ProviderError> {
        if !self.instances().get(environment_id).is_some_and(|i| i.running) {
            return Err(ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() });
        }
        Ok(ExecResult {
            exit_code: Some(0),
            stdout: format!("{}\n", cmd.join(" ")),
            stderr: String::new(),
            timed_out: false,
        })
    }

    async fn logs(&self, _environment_id: &str, _tail_lines: usize) -> Result<LogsView, ProviderError> {
        Ok(LogsView { stdout: String::new(), stderr: String::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_profiles() {
        let c = SimConfig::parse("create=20ms..200ms@0.05,delete=10ms").unwrap();
        assert_eq!(
            c.create,
            OpProfile { min: Duration::from_millis(20), max: Duration::from_millis(200), failure_rate: 0.05 }
        );
        assert_eq!(c.delete.min, Duration::from_millis(10));
        assert_eq!(c.start, OpProfile::default());
        assert_eq!(SimConfig::parse("0").unwrap(), SimConfig::default());
        for bad in ["create", "boot=1ms", "create=1ms@2", "create=5ms..1ms", "create=soon"] {
            assert!(SimConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn latency_failures_and_transitions() {
        let sim = SimProvider::new(SimConfig::parse("create=100ms,stop=0@1").unwrap());
        let spec = Spec { provider: NAME.into(), ports: vec![80], ..Default::default() };
        let started = tokio::time::Instant::now();
        let i = sim.ensure_running("a", &Default::default(), &spec).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!((i.status, i.endpoints.len()), (InstanceStatus::Running, 1));
        assert!(sim.stop("a", Duration::ZERO).await.unwrap_err().is_retryable());
        assert!(sim.exit("a", 3));
        let stopped = sim.inspect("a").await.unwrap().unwrap();
        assert_eq!((stopped.status, stopped.exit_code), (InstanceStatus::Stopped, Some(3)));
        sim.delete("a", Duration::ZERO).await.unwrap();
        assert!(sim.is_empty());
        let mut failures = 0;
        let flaky = SimProvider::new(SimConfig::parse("create=0@0.5").unwrap());
        for n in 0..200 {
            if flaky.ensure_running(&n.to_string(), &Default::default(), &spec).await.is_err() {
                failures += 1;
            }
        }
        assert!((60..140).contains(&failures), "{failures} of 200 failed at a rate of 0.5");
    }
}

//! `probed`: a test provider for probes and idle stop. Provisions succeed at once; the
//! endpoint of each port `p` of the spec is `127.0.0.1:<spec.env["PORT_<p>"]>` (a listener the
//! test holds), and `exec` answers with the exit code the test set ([`Probed::set_exit`]).
//! Every call is counted.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lapse_core::model::{Endpoint, Spec};
use lapse_core::validate::FieldError;
use lapse_core::wire::ExecResult;
use lapse_providers::{Instance, InstanceStatus, Placement, Provider, ProviderError};

pub(crate) const NAME: &str = "probed";

#[derive(Debug, Default)]
pub(crate) struct Probed {
    calls: Mutex<Vec<String>>,
    exit: AtomicI64,
}

impl Probed {
    pub fn new() -> Probed {
        Probed::default()
    }

    /// What `exec` answers from now on.
    pub fn set_exit(&self, code: i64) {
        self.exit.store(code, Ordering::SeqCst);
    }

    /// `"<op> <id>"` of every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many calls of `op` concerned `id`.
    pub fn count(&self, op: &str, id: &str) -> usize {
        let want = format!("{op} {id}");
        self.calls().iter().filter(|c| **c == want).count()
    }

    fn record(&self, op: &str, id: &str) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{op} {id}"));
    }
}

/// A spec of this provider whose port `port` is served at `127.0.0.1:<at>`.
pub(crate) fn spec_with_port(port: u16, at: u16) -> Spec {
    Spec {
        provider: NAME.into(),
        ports: vec![port],
        env: [(format!("PORT_{port}"), at.to_string())].into(),
        ..Default::default()
    }
}

#[async_trait]
impl Provider for Probed {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate(&self, _spec: &Spec) -> Result<(), FieldError> {
        Ok(())
    }

    async fn health(&self) -> Result<String, ProviderError> {
        Ok("probed test provider".into())
    }

    async fn ensure_running(
        &self,
        environment_id: &str,
        _placement: &Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError> {
        self.record("ensure_running", environment_id);
        let endpoints = spec
            .ports
            .iter()
            .filter_map(|p| {
                let at = spec.env.get(&format!("PORT_{p}"))?.parse().ok()?;
                Some(Endpoint { container_port: *p, protocol: "tcp".into(), host: "127.0.0.1".into(), port: at })
            })
            .collect();
        Ok(Instance {
            environment_id: environment_id.to_owned(),
            provider_ref: format!("probed-{environment_id}"),
            status: InstanceStatus::Running,
            endpoints,
            exit_code: None,
            user_data_path: None,
            addresses: vec![],
            exit_reason: None,
            keep: false,
        })
    }

    async fn stop(&self, environment_id: &str, _grace: Duration) -> Result<(), ProviderError> {
        self.record("stop", environment_id);
        Ok(())
    }

    async fn delete(&self, environment_id: &str, _grace: Duration) -> Result<(), ProviderError> {
        self.record("delete", environment_id);
        Ok(())
    }

    async fn inspect(&self, _environment_id: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(None)
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        Ok(vec![])
    }

    async fn exec(
        &self,
        environment_id: &str,
        _spec: &Spec,
        _cmd: &[String],
        _timeout: Duration,
    ) -> Result<ExecResult, ProviderError> {
        self.record("exec", environment_id);
        Ok(ExecResult {
            exit_code: Some(self.exit.load(Ordering::SeqCst)),
            stdout: String::new(),
            stderr: String::new(),
            timed_out: false,
        })
    }
}

//! `gated`: a test provider whose provisions block until the test opens its gate, and which
//! records every call it was asked to make, in order.
//!
//! `ensure_running` records the call first and then waits for the gate, so a test can wait
//! for "the provision of X is in flight" ([`Gated::calls`]) and change the world before it
//! finishes. Once open the gate stays open. `stop` and `delete` never block.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use lapse_core::model::Spec;
use lapse_core::validate::FieldError;
use lapse_providers::{Instance, InstanceStatus, Placement, Provider, ProviderError};
use tokio::sync::watch;

pub(crate) const NAME: &str = "gated";

/// One call the provider was asked to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// `ensure_running` of the environment with this spec's command.
    Provision {
        id: String,
        cmd: Vec<String>,
    },
    Stop {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug)]
pub(crate) struct Gated {
    calls: Mutex<Vec<Call>>,
    open: watch::Sender<bool>,
}

impl Gated {
    /// A provider with its gate shut.
    pub fn new() -> Gated {
        Gated { calls: Mutex::new(Vec::new()), open: watch::Sender::new(false) }
    }

    /// Lets every provision waiting at the gate, and every later one, through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Every call so far, in the order they were made.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The calls that concern environment `id`.
    pub fn calls_of(&self, id: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| match c {
                Call::Provision { id: of, .. } | Call::Stop { id: of } | Call::Delete { id: of } => of == id,
            })
            .collect()
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(call);
    }
}

#[async_trait]
impl Provider for Gated {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate(&self, _spec: &Spec) -> Result<(), FieldError> {
        Ok(())
    }

    async fn health(&self) -> Result<String, ProviderError> {
        Ok("gated test provider".into())
    }

    async fn ensure_running(
        &self,
        environment_id: &str,
        _placement: &Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError> {
        self.record(Call::Provision { id: environment_id.to_owned(), cmd: spec.cmd.clone() });
        let mut open = self.open.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = open.wait_for(|open| *open).await;
        Ok(Instance {
            environment_id: environment_id.to_owned(),
            provider_ref: format!("gated-{environment_id}"),
            status: InstanceStatus::Running,
            endpoints: vec![],
            exit_code: None,
            user_data_path: None,
            addresses: vec![],
            exit_reason: None,
            keep: false,
        })
    }

    async fn stop(&self, environment_id: &str, _grace: Duration) -> Result<(), ProviderError> {
        self.record(Call::Stop { id: environment_id.to_owned() });
        Ok(())
    }

    async fn delete(&self, environment_id: &str, _grace: Duration) -> Result<(), ProviderError> {
        self.record(Call::Delete { id: environment_id.to_owned() });
        Ok(())
    }

    async fn inspect(&self, _environment_id: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(None)
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        Ok(vec![])
    }
}

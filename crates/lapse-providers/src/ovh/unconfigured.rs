//! The `ovh` provider when it is asked for (`OVH_APPLICATION_KEY` is set) but cannot run
//! (another variable is missing, the endpoint is unknown): it answers every call with
//! [`ProviderError::Unavailable`] and the reason, and refuses `ovh` specs with it, so
//! `/v1/providers` and a create both say what is wrong. The reason names variables only,
//! never a value.

use std::time::Duration;

use async_trait::async_trait;
use lapse_core::model::Spec;
use lapse_core::validate::FieldError;

use crate::{Instance, Placement, Provider, ProviderError};

#[derive(Debug, Clone)]
pub struct Unconfigured {
    pub reason: String,
}

impl Unconfigured {
    fn error(&self) -> ProviderError {
        ProviderError::Unavailable { provider: "ovh", message: self.reason.clone() }
    }
}

#[async_trait]
impl Provider for Unconfigured {
    fn name(&self) -> &'static str {
        "ovh"
    }

    fn validate(&self, _spec: &Spec) -> Result<(), FieldError> {
        Err(FieldError {
            field: "spec.provider".into(),
            message: format!("the ovh provider is unavailable: {}", self.reason),
        })
    }

    async fn health(&self) -> Result<String, ProviderError> {
        Err(self.error())
    }

    async fn ensure_running(&self, _: &str, _: &Placement, _: &Spec) -> Result<Instance, ProviderError> {
        Err(self.error())
    }

    async fn stop(&self, _: &str, _: Duration) -> Result<(), ProviderError> {
        Err(self.error())
    }

    async fn delete(&self, _: &str, _: Duration) -> Result<(), ProviderError> {
        Err(self.error())
    }

    async fn inspect(&self, _: &str) -> Result<Option<Instance>, ProviderError> {
        Err(self.error())
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        Err(self.error())
    }
}

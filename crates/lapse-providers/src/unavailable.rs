//! A provider that was asked for but cannot run (its credentials or settings are missing):
//! it stays listed, with the reason as its health, refuses specs naming it with the reason,
//! and answers every call with [`ProviderError::Unavailable`]. The reason names settings and
//! variables only, never a value.

use std::time::Duration;

use async_trait::async_trait;
use lapse_core::model::Spec;
use lapse_core::validate::FieldError;

use crate::{Instance, Placement, Provider, ProviderError};

#[derive(Debug, Clone)]
pub struct Unavailable {
    kind: &'static str,
    reason: String,
}

impl Unavailable {
    /// A provider of `kind` that cannot run, and why.
    pub fn new(kind: &'static str, reason: impl Into<String>) -> Self {
        Unavailable { kind, reason: reason.into() }
    }

    fn error(&self) -> ProviderError {
        ProviderError::Unavailable { provider: self.kind, message: self.reason.clone() }
    }
}

#[async_trait]
impl Provider for Unavailable {
    fn name(&self) -> &'static str {
        self.kind
    }

    fn validate(&self, _spec: &Spec) -> Result<(), FieldError> {
        Err(FieldError {
            field: "spec.provider".into(),
            message: format!("the {} provider is unavailable: {}", self.kind, self.reason),
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

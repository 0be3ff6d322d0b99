//! The `aws` provider when it could not start (no credentials, no region): it stays listed,
//! with the reason as its health, validates specs as the real one does, and answers every
//! operation with [`ProviderError::Unavailable`] (retryable: credentials may come later only
//! by a restart, so the reconciler's attempts run out and the environment fails with it).

use std::time::Duration;

use async_trait::async_trait;
use lapse_core::model::Spec;
use lapse_core::validate::FieldError;

use super::check::{self, NAME};
use crate::{Instance, Placement, Provider, ProviderError};

/// Stands in for the `aws` provider that could not connect.
#[derive(Debug, Clone)]
pub struct UnavailableAws {
    reason: String,
}

impl UnavailableAws {
    /// `reason` is what [`super::AwsProvider::connect`] said (it names no credential).
    pub fn new(reason: impl Into<String>) -> Self {
        UnavailableAws { reason: reason.into() }
    }

    fn err(&self) -> ProviderError {
        ProviderError::Unavailable { provider: NAME, message: self.reason.clone() }
    }
}

#[async_trait]
impl Provider for UnavailableAws {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate(&self, spec: &Spec) -> Result<(), FieldError> {
        check::validate(spec)
    }

    async fn health(&self) -> Result<String, ProviderError> {
        Err(self.err())
    }

    async fn ensure_running(&self, _: &str, _: &Placement, _: &Spec) -> Result<Instance, ProviderError> {
        Err(self.err())
    }

    async fn stop(&self, _: &str, _: Duration) -> Result<(), ProviderError> {
        Err(self.err())
    }

    async fn delete(&self, _: &str, _: Duration) -> Result<(), ProviderError> {
        Err(self.err())
    }

    async fn inspect(&self, _: &str) -> Result<Option<Instance>, ProviderError> {
        Err(self.err())
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        Err(self.err())
    }
}

//! The API's side of interactive terminals (`GET /v1/environments/{id}/terminal`, see
//! `http::terminal`): which environment a caller may open one in, and the audit trail.
//!
//! A terminal is opened on the same terms as an `exec`: the caller must see the environment
//! (another tenant's is `404`, like a missing one), it must be running (`409`), and its
//! provider must have terminals (`400 unsupported`). Opening and closing are events
//! (`action = "terminal"`), with the caller as actor.

use std::sync::Arc;

use lapse_core::model::Environment;
use lapse_providers::{Provider, ProviderError};
use lapse_store::NewEvent;

use super::{App, AppError};
use crate::auth::Caller;

impl App {
    /// The running environment `id` of the caller's, and its provider, if that has terminals.
    pub async fn terminal_target(
        &self,
        id: &str,
        caller: &Caller,
    ) -> Result<(Environment, Arc<dyn Provider>), AppError> {
        let env = self.running(id, caller).await?;
        let provider = self.provider_of(&env)?.clone();
        if !provider.capabilities().terminal {
            return Err(AppError::Provider(ProviderError::Unsupported { provider: provider.kind(), op: "terminals" }));
        }
        Ok((env, provider))
    }

    /// Records that a terminal of environment `id` opened or closed (`message` says which).
    pub async fn terminal_event(&self, id: &str, actor: &str, message: String) -> Result<(), AppError> {
        self.cx.store.append_event(NewEvent::new(id, actor, "terminal", "ok", message)).await?;
        Ok(())
    }
}

//! S3 workspaces: the syncer (pulls and periodic pushes) and the reconciler's final push.
//!
//! Contract:
//! - **A pull follows every start.** Each second the syncer reads the running environments
//!   with a `spec.workspace` ([`Store::workspaced`]); one whose directory holds no pull (no
//!   `pull_token` in `workspace_sync`) is pulled ([`sync::pull`]). A failed pull is retried
//!   with back-off (1 s doubling to the sync interval), its error in `last_error`.
//! - **A push runs every `sync_interval`** after the last pull or push, and **before every
//!   stop, expiry, replacement and delete**: the reconciler calls [`final_push`] before the
//!   provider's `stop`/`delete`. A failed final push fails the step: the reconciler retries
//!   it with back-off, the environment stays `stopping`/`deleting` with the error as its
//!   `reason`, and nothing is removed until the push succeeds, or the delete is forced
//!   (`DELETE ...?force=true`: `workspace_sync.force`), or nothing was ever pulled.
//! - **A push deletes objects only after a pull into the same directory** (the token file,
//!   see [`sync`]): a resource made afresh never empties the workspace.
//! - One sync at a time per environment (a lock each, which the final push waits for); at
//!   most [`WorkspaceConfig::concurrency`] syncs at once; the store is written only through
//!   its `workspace_sync` methods. Credentials are the server's AWS chain; a spec's
//!   `endpoint` must be one the server allows (`--workspace-endpoint`), so a spec cannot
//!   make the server sign requests to a host of its choosing.

#[cfg(feature = "s3")]
pub mod sync;
#[cfg(feature = "s3")]
mod syncer;
#[cfg(all(test, feature = "s3", feature = "aws"))]
mod tests;

use lapse_core::model::Spec;
use lapse_core::validate::FieldError;
#[cfg(feature = "s3")]
pub use syncer::{Workspaces, final_push, run};

/// Without the `s3` feature: no workspace is admitted, so there is never anything to push.
#[cfg(not(feature = "s3"))]
#[derive(Debug, Default)]
pub struct Workspaces;

#[cfg(not(feature = "s3"))]
pub async fn final_push(
    _cx: &crate::context::Context,
    _env: &lapse_core::model::Environment,
    _provider: &dyn lapse_providers::Provider,
) -> Result<(), lapse_providers::ProviderError> {
    Ok(())
}
/// Provider kinds that move archives (`get_archive`, `put_archive`).
pub const KINDS: &[&str] = &["process", "docker", "swarm"];

/// The server's workspace settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceConfig {
    /// Endpoints a spec may name (`--workspace-endpoint`), besides none (the AWS chain's).
    pub endpoints: Vec<String>,
    /// Largest workspace, in bytes (`--workspace-max-mb`).
    pub max_bytes: u64,
    /// Most files in a workspace (`--workspace-max-files`).
    pub max_files: usize,
    /// Syncs at once.
    pub concurrency: usize,
}

impl Default for WorkspaceConfig {
    fn default() -> Self {
        WorkspaceConfig { endpoints: Vec::new(), max_bytes: 1024 * 1024 * 1024, max_files: 100_000, concurrency: 8 }
    }
}

impl WorkspaceConfig {
    #[cfg(feature = "s3")]
    fn limits(&self) -> sync::Limits {
        sync::Limits { max_bytes: self.max_bytes, max_files: self.max_files }
    }
}

/// Refuses a spec's workspace this server cannot sync (admission, before anything is stored).
pub fn admit(spec: &Spec, kind: &str, config: &WorkspaceConfig) -> Result<(), FieldError> {
    let Some(ws) = &spec.workspace else { return Ok(()) };
    if cfg!(not(feature = "s3")) {
        return Err(FieldError {
            field: "spec.workspace".into(),
            message: "this server is built without S3 workspaces (the `s3` feature)".into(),
        });
    }
    if !KINDS.contains(&kind) {
        return Err(FieldError {
            field: "spec.workspace".into(),
            message: format!("the {kind} provider cannot sync a workspace (process, docker and swarm can)"),
        });
    }
    if let Some(e) = &ws.endpoint
        && !config.endpoints.iter().any(|allowed| allowed.trim_end_matches('/') == e.trim_end_matches('/'))
    {
        return Err(FieldError {
            field: "spec.workspace.endpoint".into(),
            message: "this server does not allow that endpoint (its operator lists them with --workspace-endpoint)"
                .into(),
        });
    }
    Ok(())
}

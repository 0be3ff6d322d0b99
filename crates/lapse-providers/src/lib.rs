//! The [`Provider`] trait and its backends.
//!
//! A provider turns an environment id and a [`Spec`] into a running resource and back. Every
//! operation is **idempotent and keyed by the environment id**: `ensure_running` on an
//! environment that already runs returns it, `stop` and `delete` on one that is gone succeed.
//! That is what lets the reconciler repeat any step after a crash.
//!
//! Every resource carries the environment id and the control plane's id (container labels,
//! process environment markers), so [`Provider::list`] finds everything this control plane
//! made, whether or not the store knows of it.
//!
//! Backends: [`process`] (always there), [`docker`] (feature `docker`, on by default),
//! `scaleway` (feature `scaleway`, on by default), [`aws`] (EC2, feature `aws`, on by default).
//!
//! **Output is bounded.** `exec` output and `logs` are read into a [`CappedOutput`] (the
//! last [`MAX_OUTPUT_BYTES`] of each stream, with a marker saying how much was cut), never
//! whole into memory, so a command that prints gigabytes keeps the server's memory flat.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapse_core::model::{Endpoint, Spec};
use lapse_core::validate::FieldError;
use lapse_core::wire::{ExecResult, LogsView};

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "ovh")]
pub mod ovh;
pub mod process;
#[cfg(feature = "scaleway")]
pub mod scaleway;
pub mod sim;
#[cfg(feature = "ssh")]
pub mod ssh;

#[cfg(any(feature = "scaleway", feature = "ovh"))]
pub mod answer;
#[cfg(any(feature = "aws", feature = "scaleway", feature = "ovh"))]
pub mod cloud_init;
mod output;
pub use output::CappedOutput;

/// Most output an exec or a logs call returns, per stream.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// Whether a resource runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceStatus {
    Running,
    /// Exists but does not run (a stopped container; a process environment's directory).
    Stopped,
    /// On its way up (a cloud VM being created or started): the sweep leaves it alone.
    Pending,
    /// On its way down (a cloud VM stopping): the sweep leaves it alone.
    Stopping,
    /// Being terminated (a cloud VM shutting down for good): the sweep leaves it alone.
    ShuttingDown,
}

impl InstanceStatus {
    /// A state between two others, which a later look will settle; nothing is corrected on it.
    pub fn is_transitional(self) -> bool {
        matches!(self, InstanceStatus::Pending | InstanceStatus::Stopping | InstanceStatus::ShuttingDown)
    }
}

/// A resource a provider holds for one environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub environment_id: String,
    /// The provider's own id: container id, process id.
    pub provider_ref: String,
    pub status: InstanceStatus,
    pub endpoints: Vec<Endpoint>,
    /// The resource's own addresses (a cloud VM's public and private IPv4 and IPv6), when it
    /// has any; local providers have none.
    pub addresses: Vec<std::net::IpAddr>,
    /// How its command ended, when it is stopped and the provider knows.
    pub exit_code: Option<i64>,
    /// Where the spec's user data is inside the environment (set by `ensure_running`).
    pub user_data_path: Option<String>,
    /// Why its command ended, beyond the exit code, when the provider knows (the OOM killer).
    pub exit_reason: Option<String>,
}

/// Whom an environment belongs to: what a provider needs beyond the spec to place it (the
/// docker provider puts each tenant's containers on a network of their own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The tenant's name; empty for an environment of no tenant.
    pub tenant: String,
    /// When the lease ends, if it does: cloud providers arm a backstop (a shutdown the VM
    /// performs itself at this time plus a grace) so a lease holds while Lapse is down.
    pub expires_at: Option<lapse_core::Millis>,
    /// What the lease's end does (the backstop can only power off; deleting needs the API).
    pub on_expiry: lapse_core::model::OnExpiry,
}

impl Placement {
    pub fn of_tenant(tenant: &str) -> Self {
        Placement { tenant: tenant.to_owned(), ..Default::default() }
    }
}

/// Where `docker` (and, by convention, VM providers) put user data: the path cloud-init's
/// NoCloud data source reads.
pub const NOCLOUD_USER_DATA: &str = "/var/lib/cloud/seed/nocloud/user-data";

/// The variable that names the user-data file inside an environment.
pub const USER_DATA_ENV: &str = "LAPSE_USER_DATA";

/// A provider failure. `Display` says what failed; the backend's text is in `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("{provider} is unavailable: {message}")]
    Unavailable { provider: &'static str, message: String },
    #[error("{provider}: {op} failed: {message}")]
    Failed { provider: &'static str, op: &'static str, message: String },
    /// Retrying cannot help (no such image, no such program).
    #[error("{provider}: {message}")]
    Permanent { provider: &'static str, message: String },
    #[error("{provider} does not support {op}")]
    Unsupported { provider: &'static str, op: &'static str },
    #[error("{provider}: no resource for environment {environment_id}")]
    NotFound { provider: &'static str, environment_id: String },
}

/// Longest failure text an environment's record or event keeps ([`ProviderError::recorded`]).
pub const MAX_RECORDED_ERROR: usize = 1024;

impl ProviderError {
    /// The text to record (the environment's `reason`, its events): at most
    /// [`MAX_RECORDED_ERROR`] characters, marked when cut, whatever a backend answered.
    pub fn recorded(&self) -> String {
        let text = self.to_string();
        match text.char_indices().nth(MAX_RECORDED_ERROR) {
            Some((at, _)) => format!("{}… (cut)", &text[..at]),
            None => text,
        }
    }

    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProviderError::Unavailable { .. } | ProviderError::Failed { .. })
    }
}

/// A backend that runs environments. Object-safe; optional capabilities have defaults that
/// answer [`ProviderError::Unsupported`].
#[async_trait]
pub trait Provider: Send + Sync {
    /// The name specs use (`spec.provider`).
    fn name(&self) -> &'static str;

    /// Refuses a spec this provider cannot honour, before anything is stored.
    fn validate(&self, spec: &Spec) -> Result<(), FieldError>;

    /// Whether this provider boots a guest kernel and root filesystem (`spec.kernel`,
    /// `spec.rootfs`). None of today's does; a VM provider will. See [`check_boot`].
    fn boots_kernel(&self) -> bool {
        false
    }

    /// Whether the backend answers; `Ok` carries what it is (version, socket).
    async fn health(&self) -> Result<String, ProviderError>;

    /// Makes the environment's resource run: creates it if there is none, starts it if it is
    /// stopped, returns it if it runs. `placement` says whose it is.
    async fn ensure_running(
        &self,
        environment_id: &str,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError>;

    /// Stops the resource, waiting up to `grace` before forcing it. Succeeds if it is gone.
    async fn stop(&self, environment_id: &str, grace: Duration) -> Result<(), ProviderError>;

    /// Removes the resource and what belongs to it. Succeeds if it is gone.
    async fn delete(&self, environment_id: &str, grace: Duration) -> Result<(), ProviderError>;

    /// The resource of one environment, if there is one.
    async fn inspect(&self, environment_id: &str) -> Result<Option<Instance>, ProviderError>;

    /// Every resource that carries this control plane's id.
    async fn list(&self) -> Result<Vec<Instance>, ProviderError>;

    /// Runs `cmd` inside the running environment.
    async fn exec(
        &self,
        environment_id: &str,
        spec: &Spec,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, ProviderError> {
        let _ = (environment_id, spec, cmd, timeout);
        Err(ProviderError::Unsupported { provider: self.name(), op: "exec" })
    }

    /// Moves a **running** VM's own lease backstop to `placement.expires_at` (after an
    /// `extend`): cloud providers update what the guest reads (its `lapse:expires-at` tag
    /// where the cloud has tags, the deadline file over SSH). Idempotent; the server calls it
    /// again until it succeeds. The default does nothing: a local environment has no
    /// backstop of its own.
    async fn rearm(&self, environment_id: &str, placement: &Placement) -> Result<(), ProviderError> {
        let _ = (environment_id, placement);
        Ok(())
    }

    /// Removes what no environment needs any more and `list` does not report: processes left
    /// in a stopped environment's cgroup, a tenant's network with no container. The sweep
    /// calls it each round; it returns how many things it removed.
    async fn collect_garbage(&self) -> Result<usize, ProviderError> {
        Ok(0)
    }

    /// The last `tail_lines` lines of what the environment printed.
    async fn logs(&self, environment_id: &str, tail_lines: usize) -> Result<LogsView, ProviderError> {
        let _ = (environment_id, tail_lines);
        Err(ProviderError::Unsupported { provider: self.name(), op: "logs" })
    }
}

/// The providers a control plane has, by name.
#[derive(Clone, Default)]
pub struct ProviderSet {
    providers: BTreeMap<&'static str, Arc<dyn Provider>>,
}

impl std::fmt::Debug for ProviderSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.providers.keys()).finish()
    }
}

impl ProviderSet {
    pub fn insert(&mut self, provider: Arc<dyn Provider>) {
        self.providers.insert(provider.name(), provider);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.providers.values()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.providers.keys().copied().collect()
    }
}

/// Refuses `spec.kernel` and `spec.rootfs` unless the provider boots kernels
/// ([`Provider::boots_kernel`]): a spec asking for a VM image is never run without it.
pub fn check_boot(spec: &Spec, provider: &str, boots_kernel: bool) -> Result<(), FieldError> {
    if boots_kernel {
        return Ok(());
    }
    let field = match (&spec.kernel, &spec.rootfs) {
        (Some(_), _) => "spec.kernel",
        (None, Some(_)) => "spec.rootfs",
        (None, None) => return Ok(()),
    };
    Err(FieldError {
        field: field.into(),
        message: format!(
            "the {provider} provider cannot boot a kernel and root filesystem (no provider on this server boots \
             VMs yet); leave kernel and rootfs out (give an image for docker, a cmd for process)"
        ),
    })
}

/// The providers that make cloud VMs (they take `spec.cloud`; the others run on this host).
pub const CLOUD_PROVIDERS: [&str; 3] = ["aws", "scaleway", "ovh"];

/// Whether the provider named `name` makes cloud VMs.
pub fn is_cloud(name: &str) -> bool {
    CLOUD_PROVIDERS.contains(&name)
}

/// Refuses `spec.cloud` for a provider that runs on this host (process, docker): its fields
/// (instance type, zone, SSH keys, ...) would be ignored, and a spec is never silently trimmed.
pub fn refuse_cloud(spec: &Spec, provider: &str) -> Result<(), FieldError> {
    match &spec.cloud {
        Some(_) => Err(FieldError {
            field: "spec.cloud".into(),
            message: format!(
                "the {provider} provider runs environments on this host and takes no cloud fields; \
                 leave spec.cloud out, or name a cloud provider"
            ),
        }),
        None => Ok(()),
    }
}

/// Checks a spec against what its provider needs, by the provider's name alone (no backend is
/// contacted): what `lapse check` and config files use before a server runs. The built-in
/// providers' [`Provider::boots_kernel`] is `false` for all three, as here.
pub fn validate_spec(spec: &Spec) -> Result<(), FieldError> {
    check_boot(spec, &spec.provider, false)?;
    match spec.provider.as_str() {
        "process" => process::validate(spec),
        #[cfg(feature = "docker")]
        "docker" => docker::validate(spec),
        #[cfg(feature = "ovh")]
        "ovh" => ovh::validate(spec),
        "sim" => Ok(()),
        #[cfg(feature = "aws")]
        "aws" => aws::validate(spec),
        #[cfg(feature = "scaleway")]
        "scaleway" => scaleway::validate(spec),
        other => Err(FieldError {
            field: "spec.provider".into(),
            message: format!("unknown provider {other:?}; known: process, docker, sim, scaleway, aws"),
        }),
    }
}

/// Keeps the last `lines` lines of `text`.
pub(crate) fn last_lines(text: &str, lines: usize) -> String {
    let mut starts = text.trim_end_matches('\n').rmatch_indices('\n').map(|(i, _)| i + 1);
    match starts.nth(lines.saturating_sub(1)) {
        Some(start) if lines > 0 => text[start..].to_owned(),
        _ if lines == 0 => String::new(),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("a\nb\nc", 5), "a\nb\nc");
        assert_eq!(last_lines("a\nb\nc\n", 0), "");
    }

    #[test]
    fn local_providers_refuse_cloud_fields() {
        let cloud = Some(lapse_core::model::CloudSpec { instance_type: Some("t2.nano".into()), ..Default::default() });
        let process =
            Spec { provider: "process".into(), cmd: vec!["true".into()], cloud: cloud.clone(), ..Default::default() };
        assert_eq!(validate_spec(&process).unwrap_err().field, "spec.cloud");
        #[cfg(feature = "docker")]
        {
            let docker = Spec { provider: "docker".into(), image: Some("busybox".into()), cloud, ..Default::default() };
            assert_eq!(validate_spec(&docker).unwrap_err().field, "spec.cloud");
        }
        let plain = Spec { provider: "process".into(), cmd: vec!["true".into()], ..Default::default() };
        assert!(validate_spec(&plain).is_ok());
    }

    #[test]
    fn recorded_failures_are_bounded() {
        let short = ProviderError::Permanent { provider: "x", message: "no".into() };
        assert_eq!(short.recorded(), "x: no");
        let long = ProviderError::Permanent { provider: "x", message: "é".repeat(5000) };
        let kept = long.recorded();
        assert!(kept.ends_with("… (cut)"));
        assert_eq!(kept.chars().count(), MAX_RECORDED_ERROR + "… (cut)".chars().count());
    }
}

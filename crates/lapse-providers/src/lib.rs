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
//! `scaleway` (feature `scaleway`, on by default), [`aws`] (EC2, feature `aws`, on by default),
//! `swarm` (Docker Swarm services, feature `swarm`, on by default).
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

pub use intent::Intent;

#[cfg(feature = "aws")]
pub mod aws;
pub mod configured;
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(any(feature = "docker", feature = "swarm"))]
mod engine;
#[cfg(any(feature = "docker", feature = "swarm"))]
mod engine_archive;
#[cfg(any(feature = "docker", feature = "swarm"))]
mod engine_terminal;
pub mod intent;
#[cfg(feature = "ovh")]
pub mod ovh;
pub mod process;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "scaleway")]
pub mod scaleway;
pub mod sim;
#[cfg(feature = "ssh")]
pub mod ssh;
#[cfg(feature = "swarm")]
pub mod swarm;
pub mod terminal;
pub mod unavailable;

#[cfg(any(feature = "scaleway", feature = "ovh"))]
pub mod answer;
pub mod archive;
pub mod calls;
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
    /// Marked `lapse:keep` by its owner (an EC2 or Scaleway tag, a Docker label `lapse:keep`
    /// or `lapse.keep`): the drift sweep never touches it ([`is_keep_mark`]).
    pub keep: bool,
}

/// The mark that keeps a resource (or an environment's record, as the label `lapse.keep`)
/// out of the drift sweep's corrections: `lapse:keep` or `lapse.keep`.
pub fn is_keep_mark(key: &str) -> bool {
    matches!(key, "lapse:keep" | "lapse.keep")
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
    /// The environment's labels: a cloud provider puts them on the VM as tags
    /// ([`Provider::validate_labels`] refuses those it cannot carry).
    pub labels: BTreeMap<String, String>,
    /// How the environment lives: the swarm provider's restart policy follows it (on-failure
    /// for a service or daemon, none for a lease or job).
    pub lifecycle: lapse_core::model::Lifecycle,
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

/// The variable that names the file pre-expiry warnings are written to inside a `process` or
/// `docker` environment (one JSON line: `{"event":"expiring_soon","expires_at","in_seconds"}`).
pub const NOTICE_ENV: &str = "LAPSE_NOTICE";

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
    /// The name specs use (`spec.provider`): the configured name (`aws-eu`), which is the
    /// kind for a provider configured under its kind's name.
    fn name(&self) -> &'static str;

    /// What backend this is (`process`, `docker`, `aws`, `scaleway`, `ovh`, `sim`): what
    /// behaviour is decided by (a spec's cloud fields, the SWIM mapping). A backend's own
    /// `name()` is its kind; [`configured::Configured`] gives it another name.
    fn kind(&self) -> &'static str {
        self.name()
    }

    /// What this provider can do beyond create, stop and delete (shown by `GET /v1/providers`).
    fn capabilities(&self) -> Capabilities {
        Capabilities { boots_kernel: self.boots_kernel(), cloud: is_cloud(self.kind()), ..Capabilities::default() }
    }

    /// Refuses a spec this provider cannot honour, before anything is stored.
    fn validate(&self, spec: &Spec) -> Result<(), FieldError>;

    /// Refuses labels this provider cannot carry with the resource (a cloud's tag limits), so
    /// none is dropped silently; the field is `labels` or `labels.KEY`. Default: any.
    fn validate_labels(&self, labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
        let _ = labels;
        Ok(())
    }

    /// Time spent inside this provider's calls to its backend, per operation, since it was
    /// made ([`calls::CallTimes`]); empty for a provider that does not count them.
    fn call_times(&self) -> Vec<calls::CallTime> {
        Vec::new()
    }

    /// The wall time with at least one of those calls in flight ([`calls::CallTimes::busy`]);
    /// `None` for a provider that does not count them.
    fn call_busy(&self) -> Option<Duration> {
        None
    }

    /// Whether this provider boots a guest kernel and root filesystem (`spec.kernel`,
    /// `spec.rootfs`). None of today's does; a VM provider will. See [`check_boot`].
    fn boots_kernel(&self) -> bool {
        false
    }

    /// The instance type a cloud environment gets when its spec names none (aws: the seed's
    /// `t2.nano`); prices per instance type use it. `None` for providers without types.
    fn default_instance_type(&self) -> Option<&'static str> {
        None
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

    /// [`Provider::ensure_running`], begun while the reconciler's intent may still be on its
    /// way to the store: the provider may read the backend at once and must wait for
    /// `intent` ([`Intent::wait`]) before it creates or changes anything. The default waits
    /// first; a cloud provider overrides it to hide the store's write under its lookups.
    async fn ensure_running_after(
        &self,
        environment_id: &str,
        placement: &Placement,
        spec: &Spec,
        mut intent: Intent,
    ) -> Result<Instance, ProviderError> {
        intent.wait().await?;
        self.ensure_running(environment_id, placement, spec).await
    }

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

    /// Opens an interactive shell on a pseudo-terminal of `size` inside the running
    /// environment (see [`terminal`]): the spec's `shell` or `/bin/sh`, where and as whom an
    /// `exec` runs. `NotFound` without a running resource.
    async fn open_terminal(
        &self,
        environment_id: &str,
        spec: &Spec,
        size: terminal::TermSize,
    ) -> Result<terminal::Terminal, ProviderError> {
        let _ = (environment_id, spec, size);
        Err(ProviderError::Unsupported { provider: self.name(), op: "terminals" })
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

    /// Removes the resources of several environments the sweep found orphaned (each
    /// re-checked by the caller): one result per id, in order. The default deletes them one
    /// by one; a cloud overrides it to remove many in a few calls (the sweep of a thousand
    /// instances is otherwise a thousand round trips).
    async fn remove_orphans(&self, environment_ids: &[String], grace: Duration) -> Vec<Result<(), ProviderError>> {
        let mut out = Vec::with_capacity(environment_ids.len());
        for id in environment_ids {
            out.push(self.delete(id, grace).await);
        }
        out
    }

    /// Removes what no environment needs any more and `list` does not report: processes left
    /// in a stopped environment's cgroup, a tenant's network with no container. The sweep
    /// calls it each round; it returns how many things it removed.
    async fn collect_garbage(&self) -> Result<usize, ProviderError> {
        Ok(0)
    }

    /// Looks up resources this control plane did not make (see [`ForeignQuery`]); ids that
    /// do not exist are simply absent from the answer. Reads only.
    async fn find_foreign(&self, query: &ForeignQuery) -> Result<Vec<Foreign>, ProviderError> {
        let _ = query;
        Err(ProviderError::Unsupported { provider: self.name(), op: "adopt" })
    }

    /// Marks the resource `provider_ref` as environment `environment_id`'s (the same marks
    /// `ensure_running` puts on what it makes), **held** out of [`Provider::list`] until
    /// [`Provider::finish_adoption`], so the drift sweep cannot take it for an orphan before
    /// its record is written; the answer's endpoints are those of `spec.ports`. `NotFound`
    /// when it does not exist; `Permanent` when it is gone
    /// or belongs to another environment or control plane.
    async fn adopt(
        &self,
        environment_id: &str,
        provider_ref: &str,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError> {
        let _ = (environment_id, provider_ref, placement, spec);
        Err(ProviderError::Unsupported { provider: self.name(), op: "adopt" })
    }

    /// Ends an adoption: `keep` releases the hold (the record is written); otherwise every
    /// mark [`Provider::adopt`] put is removed again (the record could not be written).
    async fn finish_adoption(&self, environment_id: &str, provider_ref: &str, keep: bool) -> Result<(), ProviderError> {
        let _ = (environment_id, provider_ref, keep);
        Err(ProviderError::Unsupported { provider: self.name(), op: "adopt" })
    }

    /// The last `tail_lines` lines of what the environment printed.
    async fn logs(&self, environment_id: &str, tail_lines: usize) -> Result<LogsView, ProviderError> {
        let _ = (environment_id, tail_lines);
        Err(ProviderError::Unsupported { provider: self.name(), op: "logs" })
    }

    /// Sends on `moved` each environment whose instance changed on its own (a container the
    /// engine restarted, which may now have another address: see [`Move`]), until the
    /// provider's event source ends (an error: the server reconnects, then looks at every
    /// running environment once, since what happened meanwhile was not seen) or `moved`
    /// closes (`Ok`). The server inspects each one and records its endpoints. The default
    /// has no event source: it returns `Ok` at once and the server stops watching.
    async fn watch_moves(&self, moved: tokio::sync::mpsc::Sender<Move>) -> Result<(), ProviderError> {
        let _ = moved;
        Ok(())
    }

    /// The directory `dir` (absolute, inside the environment) as a tar stream whose entries
    /// are `<basename of dir>/...`, as the Docker Engine's archive endpoint gives them (S3
    /// workspaces). Symlinks are never followed out of the environment. `NotFound` without a
    /// resource; the stream may fail part way.
    async fn get_archive(
        &self,
        environment_id: &str,
        spec: &Spec,
        dir: &str,
    ) -> Result<archive::ArchiveStream, ProviderError> {
        let _ = (environment_id, spec, dir);
        Err(ProviderError::Unsupported { provider: self.name(), op: "workspaces (get_archive)" })
    }

    /// Extracts the tar stream `tar` into the directory `dest` (absolute, existing) inside
    /// the environment, making the directories its entries name; an entry that would land
    /// outside `dest` (`..`, an absolute path, through a symlink) is refused.
    async fn put_archive(
        &self,
        environment_id: &str,
        spec: &Spec,
        dest: &str,
        tar: archive::ArchiveStream,
    ) -> Result<(), ProviderError> {
        let _ = (environment_id, spec, dest, tar);
        Err(ProviderError::Unsupported { provider: self.name(), op: "workspaces (put_archive)" })
    }
}

pub use lapse_core::wire::Capabilities;

/// An instance that changed on its own, as [`Provider::watch_moves`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub environment_id: String,
    /// Its container died: whatever address it had is no longer its (the engine may give it
    /// to the next container it starts). Otherwise it (re)started: look at it again.
    pub gone: bool,
}

/// A resource another tool made (or this control plane made for another environment), as
/// [`Provider::find_foreign`] reports it: what adopting it needs to know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Foreign {
    /// The provider's own id (an EC2 instance id).
    pub provider_ref: String,
    /// `None` when it is gone for good (a terminated instance).
    pub status: Option<InstanceStatus>,
    /// The environment of *this* control plane it already belongs to, if any.
    pub environment_id: Option<String>,
    pub instance_type: Option<String>,
    pub zone: Option<String>,
    /// When it was launched (ms since the epoch).
    pub launched_at: Option<lapse_core::Millis>,
    /// The lease its maker recorded on it (instance-manager's `Duration` tag), if readable.
    pub lease: Option<Duration>,
    pub key_name: Option<String>,
    pub addresses: Vec<std::net::IpAddr>,
}

/// Which foreign resources [`Provider::find_foreign`] looks for: those with these ids, plus,
/// when `tagged`, every live one the seed's tool marked as its own (aws:
/// `ManagedBy=instance-manager`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForeignQuery {
    pub ids: Vec<String>,
    pub tagged: bool,
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
/// contacted): what `lapse check` and config files use before a server runs. The name is taken
/// as the kind; see [`validate_spec_as`] for a provider configured under another name.
pub fn validate_spec(spec: &Spec) -> Result<(), FieldError> {
    validate_spec_as(spec, &spec.provider)
}

/// Checks a spec as a provider of `kind` would (`[providers.aws-eu] kind = "aws"` validates
/// `provider = "aws-eu"` specs as `aws`). The built-in providers' [`Provider::boots_kernel`] is
/// `false` for all, as here.
pub fn validate_spec_as(spec: &Spec, kind: &str) -> Result<(), FieldError> {
    check_boot(spec, &spec.provider, false)?;
    match kind {
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
        #[cfg(feature = "swarm")]
        "swarm" => swarm::validate(spec),
        other => Err(FieldError {
            field: "spec.provider".into(),
            message: format!(
                "unknown provider {other:?}; known: {} (or a name given by a [providers.NAME] table)",
                BUILT_IN_KINDS.join(", ")
            ),
        }),
    }
}

/// The kinds this build has.
pub const BUILT_IN_KINDS: &[&str] = &[
    "process",
    #[cfg(feature = "docker")]
    "docker",
    "sim",
    #[cfg(feature = "aws")]
    "aws",
    #[cfg(feature = "scaleway")]
    "scaleway",
    #[cfg(feature = "ovh")]
    "ovh",
    #[cfg(feature = "swarm")]
    "swarm",
];

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

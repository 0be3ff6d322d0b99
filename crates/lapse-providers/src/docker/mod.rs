//! The `docker` provider: an environment is a container, through the Docker Engine API
//! (`bollard`). It works with Docker and with Podman's compatible service.
//!
//! - The container is named `<prefix><environment id>` (prefix `lapse-` unless the
//!   operator's [`conventions`] say otherwise); that name, and the labels when a container
//!   was made under another prefix, make `ensure_running` idempotent (a create that already
//!   happened is found, not repeated).
//! - Labels `lapse.environment=<id>` and `lapse.controller=<control plane id>` on every
//!   container, beside the operator's own ([`conventions`]); [`Provider::list`] filters on
//!   the controller label.
//! - `resources.mem_mb` → memory limit, `resources.vcpu` → NanoCPUs, `resources.disk_gb` →
//!   `storage-opt size=<N>G` where the storage driver takes it ([`disk`], probed at start;
//!   refused otherwise).
//! - `spec.ports` are published on the configured address (`127.0.0.1` by default) on ports
//!   the engine picks, or from the configured range ([`ports`]), and reported as endpoints.
//! - The configured restart policy, if any, is the container's.
//! - What a container is made of (the create body) is in `create.rs`.
//! - Hardening defaults on every container: `pids_limit` ([`PIDS_LIMIT`]),
//!   `no-new-privileges`, and the `json-file` log driver with `max-size` 10m and `max-file` 3
//!   (Podman applies `max-size`; it keeps one file).
//! - Each tenant's containers are on a network of their own ([`network`]), label
//!   `lapse.tenant`.
//! - `exec` and `logs` output is read into a [`CappedOutput`]: the tail of each stream, with
//!   a marker when cut.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::CreateExecOptions;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures::StreamExt;
use lapse_core::model::{Endpoint, Spec};
use lapse_core::validate::FieldError;
use lapse_core::wire::{ExecResult, LogsView};

use crate::{
    CappedOutput, Instance, InstanceStatus, MAX_OUTPUT_BYTES, NOCLOUD_USER_DATA, Placement, Provider, ProviderError,
    last_lines,
};

pub mod conventions;
mod create;
pub mod disk;
pub mod network;
pub mod ports;

use conventions::Conventions;
use disk::DiskSupport;

const NAME: &str = "docker";
/// How long the engine may take to answer a health check.
const HEALTH_WAIT: Duration = Duration::from_secs(8);
/// Most tasks a container may have.
pub const PIDS_LIMIT: i64 = 1024;
/// The log driver's options: what the engine keeps of a container's output.
pub const LOG_MAX_SIZE: &str = "10m";
pub const LOG_MAX_FILE: &str = "3";
pub use crate::engine::{LABEL_CONTROLLER, LABEL_ENVIRONMENT};

/// Where the Docker Engine API is looked for when none is configured: `DOCKER_HOST`, then these.
pub const SOCKET_CANDIDATES: &[&str] =
    &["/var/run/docker.sock", "/run/podman/podman.sock", "/run/lapse-test/podman.sock"];

/// Containers through the Docker Engine API.
#[derive(Debug)]
pub struct DockerProvider {
    docker: Docker,
    endpoint: String,
    controller_id: String,
    networks: network::Networks,
    conventions: Conventions,
    /// What [`disk::probe`] found; refused until it has run.
    disk: std::sync::RwLock<DiskSupport>,
    /// Held from a port pick until the container exists (see [`ports`]).
    port_picks: tokio::sync::Mutex<()>,
}

impl DockerProvider {
    /// Connects to `endpoint` (`unix:///path`, `tcp://host:port`, `http://…`). Does not check
    /// that anything answers; [`DockerProvider::detect`] does.
    pub fn connect(endpoint: &str, controller_id: &str) -> Result<Self, ProviderError> {
        let unavailable =
            |e: bollard::errors::Error| ProviderError::Unavailable { provider: NAME, message: e.to_string() };
        let docker = if endpoint.starts_with("unix://") || endpoint.starts_with('/') {
            Docker::connect_with_unix(endpoint, 120, bollard::API_DEFAULT_VERSION).map_err(unavailable)?
        } else {
            let http = endpoint.replacen("tcp://", "http://", 1);
            Docker::connect_with_http(&http, 120, bollard::API_DEFAULT_VERSION).map_err(unavailable)?
        };
        Ok(DockerProvider {
            docker,
            endpoint: endpoint.to_owned(),
            controller_id: controller_id.to_owned(),
            networks: network::Networks::default(),
            conventions: Conventions::default(),
            disk: std::sync::RwLock::new(DiskSupport::Refused("the storage driver has not been probed".into())),
            port_picks: tokio::sync::Mutex::new(()),
        })
    }

    /// This provider under an operator's container conventions.
    pub fn with_conventions(mut self, conventions: Conventions) -> Self {
        self.conventions = conventions;
        self
    }

    /// Probes once whether `disk_gb` can be enforced ([`disk::probe`]) and keeps the answer.
    pub async fn probe_disk(&self) -> DiskSupport {
        let found = disk::probe(&self.docker, &self.controller_id).await;
        *self.disk.write().unwrap_or_else(|p| p.into_inner()) = found.clone();
        found
    }

    /// What the disk probe found.
    pub fn disk_support(&self) -> DiskSupport {
        self.disk.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first Docker Engine API that answers a ping: `configured` if given (and then only
    /// it), else `DOCKER_HOST`, else the usual sockets.
    pub async fn detect(configured: Option<&str>, controller_id: &str) -> Result<Self, ProviderError> {
        let candidates: Vec<String> = match configured {
            Some(c) => vec![c.to_owned()],
            None => std::env::var("DOCKER_HOST")
                .ok()
                .into_iter()
                .chain(SOCKET_CANDIDATES.iter().map(|s| format!("unix://{s}")))
                .collect(),
        };
        let mut last = ProviderError::Unavailable { provider: NAME, message: "no Docker Engine API found".into() };
        for candidate in candidates {
            match Self::connect(&candidate, controller_id) {
                Ok(provider) => match provider.health().await {
                    Ok(_) => return Ok(provider),
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The engine [`DockerProvider::detect`] would have used had it answered: `DOCKER_HOST`,
    /// else the first candidate socket that exists; `None` when nothing says an engine is
    /// here. For an engine that is slow to answer at start (a loaded Podman): the provider is
    /// on, and its calls fail (and are retried) until the engine answers.
    pub fn installed(controller_id: &str) -> Option<Self> {
        let endpoint = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()).or_else(|| {
            SOCKET_CANDIDATES.iter().find(|s| std::path::Path::new(s).exists()).map(|s| format!("unix://{s}"))
        })?;
        Self::connect(&endpoint, controller_id).ok()
    }

    /// The id of the environment's container, `NotFound` without one.
    async fn container_of(&self, environment_id: &str) -> Result<String, ProviderError> {
        match self.find(environment_id).await? {
            Some(c) => Ok(c.id.unwrap_or_else(|| self.container_name(environment_id))),
            None => Err(ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() }),
        }
    }

    fn container_name(&self, id: &str) -> String {
        self.conventions.container_name(id)
    }

    fn instance_from(&self, inspect: &ContainerInspectResponse) -> Option<Instance> {
        let labels = inspect.config.as_ref()?.labels.as_ref()?;
        let environment_id = labels.get(LABEL_ENVIRONMENT)?.clone();
        // A container the engine is restarting (its restart policy) counts as running: the
        // engine, not the sweep, handles that exit.
        let restarting = inspect.state.as_ref().and_then(|s| s.restarting).unwrap_or(false);
        let running = inspect.state.as_ref().and_then(|s| s.running).unwrap_or(false) || restarting;
        let mut endpoints = Vec::new();
        if running && let Some(ports) = inspect.network_settings.as_ref().and_then(|n| n.ports.as_ref()) {
            for (key, bindings) in ports {
                let Some(container_port) = key.split('/').next().and_then(|p| p.parse().ok()) else {
                    continue;
                };
                for b in bindings.iter().flatten() {
                    if let Some(port) = b.host_port.as_deref().and_then(|p| p.parse().ok()) {
                        let host = b
                            .host_ip
                            .clone()
                            .filter(|h| !h.is_empty() && h != "0.0.0.0")
                            .unwrap_or_else(|| "127.0.0.1".into());
                        endpoints.push(Endpoint { container_port, protocol: "tcp".into(), host, port });
                    }
                }
            }
        }
        endpoints.sort_by_key(|e| (e.container_port, e.port));
        Some(Instance {
            environment_id,
            provider_ref: inspect.id.clone().unwrap_or_default(),
            status: if running { InstanceStatus::Running } else { InstanceStatus::Stopped },
            endpoints,
            exit_code: if running { None } else { inspect.state.as_ref().and_then(|s| s.exit_code) },
            user_data_path: None,
            addresses: vec![],
            exit_reason: inspect
                .state
                .as_ref()
                .filter(|s| !running && s.oom_killed == Some(true))
                .map(|_| "killed by the OOM killer".to_owned()),
            keep: labels.keys().any(|k| crate::is_keep_mark(k)),
        })
    }

    async fn inspect_name(&self, name: &str) -> Result<Option<ContainerInspectResponse>, ProviderError> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(classify("inspect", e)),
        }
    }

    /// The environment's container: by its name, else (made under another name prefix) by
    /// its labels.
    async fn find(&self, environment_id: &str) -> Result<Option<ContainerInspectResponse>, ProviderError> {
        if let Some(found) = self.inspect_name(&self.container_name(environment_id)).await? {
            return Ok(Some(found));
        }
        match self.labelled(environment_id).await?.first() {
            Some(id) => self.inspect_name(id).await,
            None => Ok(None),
        }
    }

    /// Ids of the containers carrying this environment's and this control plane's labels.
    async fn labelled(&self, environment_id: &str) -> Result<Vec<String>, ProviderError> {
        let filters = HashMap::from([(
            "label",
            vec![format!("{LABEL_CONTROLLER}={}", self.controller_id), format!("{LABEL_ENVIRONMENT}={environment_id}")],
        )]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let listed = self.docker.list_containers(Some(options)).await.map_err(|e| classify("find", e))?;
        Ok(listed
            .into_iter()
            .filter(|c| {
                c.labels.as_ref().is_some_and(|l| {
                    l.get(LABEL_CONTROLLER) == Some(&self.controller_id)
                        && l.get(LABEL_ENVIRONMENT).map(String::as_str) == Some(environment_id)
                })
            })
            .filter_map(|c| c.id)
            .collect())
    }
}

/// What the docker provider needs of a spec, whatever its engine: an image. (`disk_gb`
/// depends on the engine's storage driver: [`DockerProvider`]'s `validate` checks it.)
pub fn validate(spec: &Spec) -> Result<(), FieldError> {
    if spec.image.is_none() {
        return Err(FieldError { field: "spec.image".into(), message: "the docker provider needs an image".into() });
    }
    crate::refuse_cloud(spec, "docker")?;
    Ok(())
}

use crate::engine::status_of;

fn classify(op: &'static str, e: bollard::errors::Error) -> ProviderError {
    crate::engine::classify(NAME, op, e)
}

#[async_trait]
impl Provider for DockerProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities {
            exec: true,
            logs: true,
            stop_keeps_disk: true,
            terminal: true,
            local: self.endpoint.starts_with("unix://") || self.endpoint.starts_with('/'),
            ..crate::Capabilities::default()
        }
    }

    fn validate(&self, spec: &Spec) -> Result<(), FieldError> {
        validate(spec)?;
        if spec.resources.as_ref().is_some_and(|r| r.disk_gb.is_some())
            && let DiskSupport::Refused(why) = self.disk_support()
        {
            return Err(FieldError {
                field: "spec.resources.disk_gb".into(),
                message: format!("the docker provider cannot limit disk here ({why}); leave disk_gb out"),
            });
        }
        Ok(())
    }

    async fn health(&self) -> Result<String, ProviderError> {
        // Podman under load can take several seconds to answer `version`; an engine that is
        // down refuses the connection at once. Under the wrapper's 10 s health bound.
        let version = tokio::time::timeout(HEALTH_WAIT, self.docker.version())
            .await
            .map_err(|_| ProviderError::Unavailable {
                provider: NAME,
                message: format!("{} did not answer in {} s", self.endpoint, HEALTH_WAIT.as_secs()),
            })?
            .map_err(|e| ProviderError::Unavailable { provider: NAME, message: format!("{}: {e}", self.endpoint) })?;
        let product = version
            .components
            .and_then(|c| c.into_iter().next().map(|c| c.name))
            .unwrap_or_else(|| "Docker Engine".into());
        let disk = match self.disk_support() {
            DiskSupport::Enforced(how) => format!("disk_gb enforced ({how})"),
            DiskSupport::Refused(why) => format!("disk_gb refused ({why})"),
        };
        Ok(format!("{product} {} at {}; {disk}", version.version.unwrap_or_default(), self.endpoint))
    }

    async fn ensure_running(
        &self,
        environment_id: &str,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError> {
        let existing = self.find(environment_id).await?;
        // Its own name, for a container made under another prefix.
        let name = existing
            .as_ref()
            .and_then(|c| c.name.as_deref())
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_else(|| self.container_name(environment_id));
        // Twice at most: a network removed (its last container gone) between its check and
        // the create is made again.
        let mut attempts = 0;
        let _hold = self.networks.hold(&self.controller_id, &placement.tenant).await;
        while existing.is_none() {
            attempts += 1;
            let network = self.networks.ensure(&self.docker, &self.controller_id, &placement.tenant).await?;
            if self.create(environment_id, &name, placement, &network, spec).await? {
                break;
            }
            if attempts >= 2 {
                return Err(ProviderError::Failed {
                    provider: NAME,
                    op: "create",
                    message: format!("the network {network} kept vanishing"),
                });
            }
        }
        let running = existing.as_ref().and_then(|c| c.state.as_ref()).and_then(|s| s.running).unwrap_or(false);
        if !running && let Some(data) = &spec.user_data {
            // Before the start, so cloud-init (or the command) finds it at boot. Overwriting
            // on a repeated attempt is harmless.
            let archive = create::user_data_archive(environment_id, data).map_err(|e| ProviderError::Failed {
                provider: NAME,
                op: "create",
                message: format!("packing user data: {e}"),
            })?;
            let options = UploadToContainerOptionsBuilder::default().path("/").build();
            self.docker
                .upload_to_container(&name, Some(options), bollard::body_full(archive.into()))
                .await
                .map_err(|e| classify("upload user data", e))?;
        }
        if !running {
            match self.docker.start_container(&name, None).await {
                Ok(()) => {}
                Err(e) if status_of(&e) == Some(304) => {}
                Err(e) => {
                    // A network removed under a created container (Podman lets a removal
                    // elsewhere race a create): a container that never ran is removed, so
                    // the next attempt makes both again; a stopped one keeps its disk.
                    let never_ran = existing
                        .as_ref()
                        .and_then(|c| c.state.as_ref())
                        .is_none_or(|s| s.status == Some(bollard::models::ContainerStateStatusEnum::CREATED));
                    if never_ran && e.to_string().contains("network not found") {
                        let options = RemoveContainerOptionsBuilder::default().force(true).build();
                        let removed = self.docker.remove_container(&name, Some(options)).await;
                        tracing::warn!(container = %name, error = %e, removed = removed.is_ok(), "its network vanished before its start");
                    }
                    return Err(classify("start", e));
                }
            }
        }
        let inspect = self.inspect_name(&name).await?.ok_or_else(|| ProviderError::Failed {
            provider: NAME,
            op: "start",
            message: format!("container {name} vanished right after its start"),
        })?;
        let instance = self.instance_from(&inspect).ok_or_else(|| ProviderError::Failed {
            provider: NAME,
            op: "start",
            message: format!("container {name} carries no {LABEL_ENVIRONMENT} label"),
        })?;
        let mut instance = instance;
        instance.user_data_path = spec.user_data.as_ref().map(|_| NOCLOUD_USER_DATA.to_owned());
        if instance.status != InstanceStatus::Running {
            let state = inspect.state.as_ref();
            let code = state.and_then(|s| s.exit_code).unwrap_or_default();
            let error = state.and_then(|s| s.error.clone()).filter(|e| !e.is_empty()).unwrap_or_default();
            return Err(ProviderError::Failed {
                provider: NAME,
                op: "start",
                message: format!("container {name} exited right away (code {code}) {error}").trim_end().to_owned(),
            });
        }
        Ok(instance)
    }

    async fn stop(&self, environment_id: &str, grace: Duration) -> Result<(), ProviderError> {
        let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(seconds).build();
        let name = match self.find(environment_id).await? {
            Some(c) => c.id.unwrap_or_else(|| self.container_name(environment_id)),
            None => return Ok(()),
        };
        match self.docker.stop_container(&name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_of(&e), Some(304 | 404)) => Ok(()),
            Err(e) => Err(classify("stop", e)),
        }
    }

    async fn delete(&self, environment_id: &str, _grace: Duration) -> Result<(), ProviderError> {
        // By label, not only by name: whatever carries this environment's and this control
        // plane's labels goes, whatever it is called.
        let filters = HashMap::from([(
            "label",
            vec![format!("{LABEL_CONTROLLER}={}", self.controller_id), format!("{LABEL_ENVIRONMENT}={environment_id}")],
        )]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let listed = self.docker.list_containers(Some(options)).await.map_err(|e| classify("delete", e))?;
        let ours: Vec<_> = listed
            .into_iter()
            .filter(|c| {
                c.labels.as_ref().is_some_and(|l| {
                    l.get(LABEL_CONTROLLER) == Some(&self.controller_id)
                        && l.get(LABEL_ENVIRONMENT).map(String::as_str) == Some(environment_id)
                })
            })
            .collect();
        let networks: Vec<String> = ours
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get(network::LABEL_TENANT))
            .map(|tenant| network::name_of(&self.controller_id, tenant))
            .collect();
        let mut targets: Vec<String> = ours.into_iter().filter_map(|c| c.id).collect();
        targets.push(self.container_name(environment_id));
        for target in targets {
            let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
            match self.docker.remove_container(&target, Some(options)).await {
                Ok(()) => {}
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => return Err(classify("delete", e)),
            }
        }
        // The tenant's network goes with its last container.
        for name in networks {
            self.networks.remove_if_unused(&self.docker, &name, false).await;
        }
        Ok(())
    }

    async fn collect_garbage(&self) -> Result<usize, ProviderError> {
        self.networks.collect(&self.docker, &self.controller_id).await
    }

    async fn inspect(&self, environment_id: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(self.find(environment_id).await?.and_then(|c| self.instance_from(&c)))
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_CONTROLLER}={}", self.controller_id)])]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers = self.docker.list_containers(Some(options)).await.map_err(|e| classify("list", e))?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels?;
                // Filters are the engine's; check the label ourselves before acting on it.
                if labels.get(LABEL_CONTROLLER) != Some(&self.controller_id) {
                    return None;
                }
                // A Swarm task's container is the swarm provider's (on an engine both use).
                if labels.contains_key("com.docker.swarm.service.id") {
                    return None;
                }
                let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                // A container created and not started yet is on its way (being started by
                // whoever made it): the sweep leaves it alone until it settles.
                let status = match state.as_str() {
                    "running" | "restarting" => InstanceStatus::Running,
                    "created" => InstanceStatus::Pending,
                    _ => InstanceStatus::Stopped,
                };
                Some(Instance {
                    keep: labels.keys().any(|k| crate::is_keep_mark(k)),
                    environment_id: labels.get(LABEL_ENVIRONMENT)?.clone(),
                    provider_ref: c.id.unwrap_or_default(),
                    status,
                    endpoints: vec![],
                    exit_code: None,
                    user_data_path: None,
                    addresses: vec![],
                    exit_reason: None,
                })
            })
            .collect())
    }

    async fn exec(
        &self,
        environment_id: &str,
        _spec: &Spec,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, ProviderError> {
        let name = match self.find(environment_id).await? {
            Some(c) => c.id.unwrap_or_else(|| self.container_name(environment_id)),
            None => return Err(ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() }),
        };
        let config = CreateExecOptions {
            cmd: Some(cmd.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = self.docker.create_exec(&name, config).await.map_err(|e| match status_of(&e) {
            Some(404) => ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() },
            _ => classify("exec", e),
        })?;
        crate::engine::run_exec(&self.docker, NAME, &exec.id, timeout).await
    }

    async fn open_terminal(
        &self,
        environment_id: &str,
        spec: &Spec,
        size: crate::terminal::TermSize,
    ) -> Result<crate::terminal::Terminal, ProviderError> {
        let container = match self.find(environment_id).await? {
            Some(c) => c.id.unwrap_or_else(|| self.container_name(environment_id)),
            None => return Err(ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() }),
        };
        crate::engine_terminal::open(&self.docker, &self.endpoint, NAME, &container, environment_id, spec, size).await
    }

    async fn get_archive(
        &self,
        environment_id: &str,
        _spec: &Spec,
        dir: &str,
    ) -> Result<crate::archive::ArchiveStream, ProviderError> {
        let container = self.container_of(environment_id).await?;
        Ok(crate::engine_archive::get(&self.docker, &container, dir))
    }

    async fn put_archive(
        &self,
        environment_id: &str,
        _spec: &Spec,
        dest: &str,
        tar: crate::archive::ArchiveStream,
    ) -> Result<(), ProviderError> {
        let container = self.container_of(environment_id).await?;
        crate::engine_archive::put(&self.docker, NAME, environment_id, &container, dest, tar).await
    }

    async fn logs(&self, environment_id: &str, tail_lines: usize) -> Result<LogsView, ProviderError> {
        let options = LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&tail_lines.to_string()).build();
        let name = match self.find(environment_id).await? {
            Some(c) => c.id.unwrap_or_else(|| self.container_name(environment_id)),
            None => return Err(ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() }),
        };
        let mut stream = self.docker.logs(&name, Some(options));
        let mut stdout = CappedOutput::new(MAX_OUTPUT_BYTES);
        let mut stderr = CappedOutput::new(MAX_OUTPUT_BYTES);
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => stdout.push(&message),
                Ok(LogOutput::StdErr { message }) => stderr.push(&message),
                Ok(LogOutput::StdIn { .. }) => {}
                Err(e) if status_of(&e) == Some(404) => {
                    return Err(ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() });
                }
                Err(e) => return Err(classify("logs", e)),
            }
        }
        let text = |b: CappedOutput| last_lines(&b.into_text(), tail_lines);
        Ok(LogsView { stdout: text(stdout), stderr: text(stderr) })
    }
}

//! The `swarm` provider: an environment is a Docker Swarm **service with one replica** (the
//! IDE seed's way, Classla's `ide-<id>` services), through the Docker Engine API (`bollard`)
//! of a Swarm manager. Feature `swarm`.
//!
//! - The service is `<prefix><environment id>` (prefix `lapse-`); that name, and its labels,
//!   make `ensure_running` idempotent: a create that already happened (a crash between the
//!   create and the record) is found, not repeated, and a second create of the name is the
//!   engine's 409.
//! - Labels `lapse.environment`, `lapse.controller` and `lapse.tenant` on the service **and
//!   on its task containers**; [`Provider::list`] lists services by the controller label.
//!   `lapse.ports` on the service records `spec.ports`.
//! - `resources.vcpu` → the task's NanoCPUs limit, `resources.mem_mb` → its memory limit;
//!   hardening as the docker provider's: a pids limit ([`PIDS_LIMIT`]), `json-file` logs of
//!   [`LOG_MAX_SIZE`] × [`LOG_MAX_FILE`], `no-new-privileges` (on engines whose API has it:
//!   20.10's does not). `disk_gb` and `user_data` are refused (a service has no storage-opt
//!   and nothing can be copied in before its task starts).
//! - Restart policy from the lifecycle ([`body::restart_policy`]): `on-failure` (at most
//!   [`RESTART_MAX_ATTEMPTS`]) for a service or daemon, `none` for a lease or a job.
//! - Each tenant's services are on an attachable overlay network of their own ([`network`]),
//!   with the service name as alias; DNS round robin (no virtual IP, which needs IPVS).
//! - **Endpoints without published ports.** Each of `spec.ports` is reported at the running
//!   task container's address on `docker_gwbridge`, the bridge every overlay-attached
//!   container has for egress: a host bridge, so the control plane (and its proxy) reach it
//!   while nothing is published on any interface. Measured on the test machine (Engine
//!   20.10, one node): the overlay address itself is not routable from the host (the route
//!   is the default gateway), ingress publishing (the routing mesh) needs IPVS, which the
//!   kernel lacks, and host-mode publishing binds every interface (0.0.0.0), which would
//!   expose the environment beside the proxy. `docker_gwbridge` refuses traffic between its
//!   containers (`enable_icc=false`), so this adds no path between tenants. It holds for a
//!   task on **this** node: on a multi-node swarm the control plane must run on the node (or
//!   join the overlay) to reach a task elsewhere; such a task is reported without endpoints.
//! - `stop` scales to zero replicas (and stops the task's container within the stop's grace:
//!   a running task keeps the grace it was made with); `ensure_running` scales back to one, or
//!   forces a new task when the last one ended. **A service's disk is its image**: a new task starts from the
//!   image, so what the old one wrote is gone (`stop_keeps_disk` is false).
//! - `delete` removes the service, waits for its containers to go, then its tenant's network
//!   if no service names it any more; the sweep's `collect_garbage` removes what is left.
//! - Task states → [`InstanceStatus`] in [`tasks`] (`preparing`, `starting`, `pending`,
//!   `assigned`, ... are `Pending`).
//! - `exec` runs in the running task's container on this node; `logs` is the service logs
//!   API; both are read into a [`CappedOutput`](crate::CappedOutput).
//! - The API version is negotiated once (bollard's default is newer than Engine 20.10's 1.41).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{Service, Task};
use bollard::query_parameters::{ListServicesOptionsBuilder, ListTasksOptionsBuilder};
use lapse_core::model::{Endpoint, Spec};
use lapse_core::validate::FieldError;
use lapse_core::wire::{ExecResult, LogsView};

use crate::{Instance, InstanceStatus, Placement, Provider, ProviderError};

pub mod body;
pub mod network;
mod run;
mod scale;
pub mod tasks;
#[cfg(feature = "swarm-testing")]
pub mod testing;

const NAME: &str = "swarm";
pub use crate::engine::{LABEL_CONTROLLER, LABEL_ENVIRONMENT};
pub const LABEL_TENANT: &str = "lapse.tenant";
/// `spec.ports`, comma-separated, on the service.
pub const LABEL_PORTS: &str = "lapse.ports";
/// The variable naming the swarm manager's Engine API (`unix:///…`, `tcp://…`).
pub const HOST_VAR: &str = "LAPSE_SWARM_HOST";
/// The bridge whose address of a task container the endpoints are.
pub const GATEWAY_BRIDGE: &str = "docker_gwbridge";
pub const PIDS_LIMIT: i64 = 1024;
pub const LOG_MAX_SIZE: &str = "10m";
pub const LOG_MAX_FILE: &str = "3";
/// Swarm's own restarts of a failed service or daemon (the IDE seed's 3).
pub const RESTART_MAX_ATTEMPTS: i64 = 3;

/// How long to wait for tasks, and how often to look.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub poll: Duration,
    /// The longest `ensure_running` waits for a task to run.
    pub start_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { poll: Duration::from_millis(100), start_timeout: Duration::from_secs(120) }
    }
}

/// Services on a Docker Swarm manager.
#[derive(Debug)]
pub struct SwarmProvider {
    docker: Docker,
    negotiated: tokio::sync::OnceCell<()>,
    endpoint: String,
    controller_id: String,
    name_prefix: String,
    networks: network::Networks,
    timing: Timing,
}

impl SwarmProvider {
    /// Connects to `endpoint` (`unix:///path`, `tcp://host:port`, `http://…`). Does not check
    /// that anything answers; [`Provider::health`] does.
    pub fn connect(endpoint: &str, controller_id: &str) -> Result<Self, ProviderError> {
        let unavailable =
            |e: bollard::errors::Error| ProviderError::Unavailable { provider: NAME, message: e.to_string() };
        let docker = if endpoint.starts_with("unix://") || endpoint.starts_with('/') {
            Docker::connect_with_unix(endpoint, 120, bollard::API_DEFAULT_VERSION).map_err(unavailable)?
        } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
            let http = endpoint.replacen("tcp://", "http://", 1);
            Docker::connect_with_http(&http, 120, bollard::API_DEFAULT_VERSION).map_err(unavailable)?
        } else {
            return Err(ProviderError::Unavailable {
                provider: NAME,
                message: format!("{endpoint:?} is not an endpoint: give unix:///path or tcp://host:port"),
            });
        };
        Ok(SwarmProvider {
            docker,
            negotiated: tokio::sync::OnceCell::new(),
            endpoint: endpoint.to_owned(),
            controller_id: controller_id.to_owned(),
            name_prefix: "lapse-".into(),
            networks: network::Networks::default(),
            timing: Timing::default(),
        })
    }

    /// This provider with other waits (tests).
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// The client, its API version agreed with the engine (once, on first use).
    async fn client(&self) -> Result<&Docker, ProviderError> {
        self.negotiated
            .get_or_try_init(|| async {
                // The version lives in the client's shared state: negotiating a clone sets it.
                self.docker.clone().negotiate_version().await.map(|_| ()).map_err(|e| ProviderError::Unavailable {
                    provider: NAME,
                    message: format!("{}: {e}", self.endpoint),
                })
            })
            .await?;
        Ok(&self.docker)
    }

    /// The service name of an environment.
    pub fn service_name(&self, environment_id: &str) -> String {
        format!("{}{environment_id}", self.name_prefix)
    }

    fn ours(&self, labels: Option<&HashMap<String, String>>, environment_id: Option<&str>) -> bool {
        labels.is_some_and(|l| {
            l.get(LABEL_CONTROLLER) == Some(&self.controller_id)
                && environment_id.is_none_or(|id| l.get(LABEL_ENVIRONMENT).map(String::as_str) == Some(id))
        })
    }

    /// The environment's service: by its name, else by its labels.
    async fn find(&self, environment_id: &str) -> Result<Option<Service>, ProviderError> {
        let docker = self.client().await?;
        match docker.inspect_service(&self.service_name(environment_id), None).await {
            Ok(s) if self.ours(s.spec.as_ref().and_then(|s| s.labels.as_ref()), Some(environment_id)) => {
                return Ok(Some(s));
            }
            Ok(_) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(classify("inspect", e)),
        }
        Ok(self.labelled(Some(environment_id)).await?.into_iter().next())
    }

    /// Services carrying this control plane's label (and this environment's, when given).
    async fn labelled(&self, environment_id: Option<&str>) -> Result<Vec<Service>, ProviderError> {
        let docker = self.client().await?;
        let mut labels = vec![format!("{LABEL_CONTROLLER}={}", self.controller_id)];
        labels.extend(environment_id.map(|id| format!("{LABEL_ENVIRONMENT}={id}")));
        let filters = HashMap::from([("label", labels)]);
        let options = ListServicesOptionsBuilder::default().filters(&filters).build();
        let listed = docker.list_services(Some(options)).await.map_err(|e| classify("list", e))?;
        // Filters are the engine's; check the labels ourselves before acting on them.
        Ok(listed
            .into_iter()
            .filter(|s| self.ours(s.spec.as_ref().and_then(|s| s.labels.as_ref()), environment_id))
            .collect())
    }

    /// The tasks of `service` (all: `None` lists every task of the swarm).
    async fn tasks_of_id(&self, service_id: Option<&str>) -> Result<Vec<Task>, ProviderError> {
        let docker = self.client().await?;
        let filters: HashMap<&str, Vec<String>> =
            service_id.map(|id| HashMap::from([("service", vec![id.to_owned()])])).unwrap_or_default();
        let options = ListTasksOptionsBuilder::default().filters(&filters).build();
        docker.list_tasks(Some(options)).await.map_err(|e| classify("tasks", e))
    }

    async fn tasks_of(&self, service: &Service) -> Result<Vec<Task>, ProviderError> {
        match service.id.as_deref() {
            Some(id) => self.tasks_of_id(Some(id)).await,
            None => Ok(Vec::new()),
        }
    }

    async fn observe(&self, service: &Service) -> Result<tasks::Observed, ProviderError> {
        Ok(tasks::observe(service, &self.tasks_of(service).await?))
    }

    /// The instance of `service` in the state `seen`, with endpoints when it runs.
    async fn instance(&self, service: &Service, seen: tasks::Observed) -> Result<Instance, ProviderError> {
        let labels = service.spec.as_ref().and_then(|s| s.labels.clone()).unwrap_or_default();
        let mut endpoints = Vec::new();
        if seen.status == InstanceStatus::Running
            && let Some(container) = &seen.container_id
            && let Some(ports) = labels.get(LABEL_PORTS)
            && let Some(host) = self.gateway_address(container).await?
        {
            for port in ports.split(',').filter_map(|p| p.trim().parse::<u16>().ok()) {
                endpoints.push(Endpoint { container_port: port, protocol: "tcp".into(), host: host.clone(), port });
            }
        }
        Ok(Instance {
            environment_id: labels.get(LABEL_ENVIRONMENT).cloned().unwrap_or_default(),
            provider_ref: service.id.clone().unwrap_or_default(),
            status: seen.status,
            endpoints,
            addresses: vec![],
            exit_code: if seen.status == InstanceStatus::Stopped { seen.exit_code } else { None },
            user_data_path: None,
            exit_reason: seen.exit_reason.filter(|_| seen.status == InstanceStatus::Stopped),
            keep: labels.keys().any(|k| crate::is_keep_mark(k)),
        })
    }

    /// The container's address on [`GATEWAY_BRIDGE`], if it is on this node.
    async fn gateway_address(&self, container_id: &str) -> Result<Option<String>, ProviderError> {
        let docker = self.client().await?;
        let bridge = match docker.inspect_network(GATEWAY_BRIDGE, None).await {
            Ok(n) => n,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(classify("inspect network", e)),
        };
        let address = bridge
            .containers
            .and_then(|c| c.get(container_id).cloned())
            .and_then(|c| c.ipv4_address)
            .and_then(|a| a.split('/').next().map(str::to_owned))
            .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok());
        Ok(address)
    }
}

/// What the swarm provider needs of a spec: an image; no disk size, user data or cloud fields.
pub fn validate(spec: &Spec) -> Result<(), FieldError> {
    let refuse = |field: &str, message: &str| Err(FieldError { field: field.into(), message: message.into() });
    if spec.image.as_deref().is_none_or(str::is_empty) {
        return refuse("spec.image", "the swarm provider needs an image");
    }
    if spec.resources.as_ref().is_some_and(|r| r.disk_gb.is_some()) {
        return refuse(
            "spec.resources.disk_gb",
            "the swarm provider cannot limit disk (a Swarm service takes no storage-opt); leave disk_gb out",
        );
    }
    if spec.user_data.is_some() {
        return refuse(
            "spec.user_data",
            "the swarm provider cannot place user data (nothing is copied into a task before it starts); \
             leave user_data out, or use the docker provider",
        );
    }
    crate::refuse_cloud(spec, NAME)
}

use crate::engine::status_of;

fn classify(op: &'static str, e: bollard::errors::Error) -> ProviderError {
    crate::engine::classify(NAME, op, e)
}

#[async_trait]
impl Provider for SwarmProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities {
            exec: true,
            logs: true,
            stop_keeps_disk: false,
            terminal: true,
            ..crate::Capabilities::default()
        }
    }

    fn validate(&self, spec: &Spec) -> Result<(), FieldError> {
        validate(spec)
    }

    async fn health(&self) -> Result<String, ProviderError> {
        let timeout = |what: &str| ProviderError::Unavailable {
            provider: NAME,
            message: format!("{} did not answer {what} in 3 s", self.endpoint),
        };
        let docker =
            tokio::time::timeout(Duration::from_secs(3), self.client()).await.map_err(|_| timeout("a version"))??;
        let info = tokio::time::timeout(Duration::from_secs(3), docker.info())
            .await
            .map_err(|_| timeout("info"))?
            .map_err(|e| ProviderError::Unavailable { provider: NAME, message: format!("{}: {e}", self.endpoint) })?;
        let swarm = info.swarm.unwrap_or_default();
        let state = swarm.local_node_state.map(|s| s.to_string()).unwrap_or_default();
        if state != "active" || swarm.control_available != Some(true) {
            return Err(ProviderError::Unavailable {
                provider: NAME,
                message: format!(
                    "{} is not a Swarm manager (node state {state:?}); run docker swarm init there",
                    self.endpoint
                ),
            });
        }
        Ok(format!(
            "Docker Engine {} at {}, Swarm manager of {} node(s)",
            info.server_version.unwrap_or_default(),
            self.endpoint,
            swarm.nodes.unwrap_or(0)
        ))
    }

    async fn ensure_running(
        &self,
        environment_id: &str,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError> {
        let docker = self.client().await?;
        let mut service = self.find(environment_id).await?;
        // Twice at most: a network removed (its last service gone) between its check and the
        // create is made again.
        let mut attempts = 0;
        while service.is_none() {
            attempts += 1;
            let network = self.networks.ensure(docker, &self.controller_id, &placement.tenant).await?;
            let made = self.create(environment_id, placement, &network, spec).await?;
            if made == body::Created::Exists {
                service = self.find(environment_id).await?;
                if service.is_none() {
                    return Err(ProviderError::Failed {
                        provider: NAME,
                        op: "create",
                        message: format!(
                            "service {} is taken by something that is not this environment's",
                            self.service_name(environment_id)
                        ),
                    });
                }
            } else if attempts >= 2 {
                return Err(ProviderError::Failed {
                    provider: NAME,
                    op: "create",
                    message: format!("the network {network} kept vanishing"),
                });
            }
        }
        let Some(service) = service else { unreachable!("the loop above ends with a service") };
        let tasks = self.tasks_of(&service).await?;
        let seen = tasks::observe(&service, &tasks);
        if seen.status == InstanceStatus::Running {
            return self.instance(&service, seen).await;
        }
        // Tasks that ended before this start say nothing about it.
        let before: HashSet<String> = tasks
            .iter()
            .filter(|t| tasks::is_terminal(t.status.as_ref().and_then(|s| s.state)))
            .filter_map(|t| t.id.clone())
            .collect();
        if tasks::replicas(&service) == Some(0) {
            self.scale(environment_id, 1, None).await?;
        } else if seen.status == InstanceStatus::Stopped {
            self.force_new_task(environment_id).await?;
        }
        self.wait_running(environment_id, &before).await
    }

    async fn stop(&self, environment_id: &str, grace: Duration) -> Result<(), ProviderError> {
        let Some(service) = self.find(environment_id).await? else { return Ok(()) };
        if tasks::replicas(&service) != Some(0) {
            match self.scale(environment_id, 0, Some(grace)).await {
                Ok(()) => {}
                Err(ProviderError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if let Some(id) = service.id.as_deref() {
            self.hurry(id, grace).await?;
        }
        // Stopped once its task has gone down.
        self.wait_stopped(environment_id, grace + Duration::from_secs(15)).await
    }

    async fn delete(&self, environment_id: &str, grace: Duration) -> Result<(), ProviderError> {
        let docker = self.client().await?;
        // By label, not only by name: whatever carries this environment's and this control
        // plane's labels goes.
        let mut services = self.labelled(Some(environment_id)).await?;
        if let Some(by_name) = self.find(environment_id).await?
            && !services.iter().any(|s| s.id == by_name.id)
        {
            services.push(by_name);
        }
        let mut networks = Vec::new();
        for service in &services {
            let labels = service.spec.as_ref().and_then(|s| s.labels.as_ref());
            if let Some(tenant) = labels.and_then(|l| l.get(LABEL_TENANT)) {
                networks.push(network::name_of(&self.controller_id, tenant));
            }
            let Some(id) = service.id.as_deref() else { continue };
            match docker.delete_service(id).await {
                Ok(()) => {}
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => return Err(classify("delete", e)),
            }
            // Its containers go after it (within the grace); the network once they are gone.
            self.hurry(id, grace).await?;
            self.wait_containers_gone(id, grace + Duration::from_secs(15)).await?;
        }
        networks.dedup();
        for name in networks {
            self.networks.remove_if_unused(docker, &name, false).await;
        }
        Ok(())
    }

    async fn collect_garbage(&self) -> Result<usize, ProviderError> {
        let docker = self.client().await?;
        self.networks.collect(docker, &self.controller_id).await
    }

    async fn inspect(&self, environment_id: &str) -> Result<Option<Instance>, ProviderError> {
        let Some(service) = self.find(environment_id).await? else { return Ok(None) };
        let seen = self.observe(&service).await?;
        Ok(Some(self.instance(&service, seen).await?))
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let services = self.labelled(None).await?;
        if services.is_empty() {
            return Ok(Vec::new());
        }
        // One listing of every task, not one per service.
        let all = self.tasks_of_id(None).await?;
        let mut out = Vec::new();
        for service in &services {
            let seen = tasks::observe(service, &all);
            let mut instance = self.instance(service, tasks::Observed { container_id: None, ..seen }).await?;
            if instance.environment_id.is_empty() {
                continue;
            }
            instance.endpoints.clear();
            out.push(instance);
        }
        Ok(out)
    }

    async fn exec(
        &self,
        environment_id: &str,
        _spec: &Spec,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, ProviderError> {
        self.exec_in(environment_id, cmd, timeout).await
    }

    /// In the running task's container on this node (as `exec`).
    async fn open_terminal(
        &self,
        environment_id: &str,
        spec: &Spec,
        size: crate::terminal::TermSize,
    ) -> Result<crate::terminal::Terminal, ProviderError> {
        let container = self.task_container(environment_id).await?;
        let docker = self.client().await?;
        crate::engine_terminal::open(docker, &self.endpoint, NAME, &container, environment_id, spec, size).await
    }

    /// A task the engine restarts is a new container, and its address on the gateway bridge
    /// is whichever is free then: another environment's old one, maybe.
    async fn watch_moves(&self, moved: tokio::sync::mpsc::Sender<crate::Move>) -> Result<(), ProviderError> {
        let docker = self.client().await?;
        crate::engine::watch_moves(docker, NAME, &self.controller_id, moved).await
    }

    async fn logs(&self, environment_id: &str, tail_lines: usize) -> Result<LogsView, ProviderError> {
        self.logs_of(environment_id, tail_lines).await
    }

    async fn get_archive(
        &self,
        environment_id: &str,
        _spec: &Spec,
        dir: &str,
    ) -> Result<crate::archive::ArchiveStream, ProviderError> {
        let container = self.task_container(environment_id).await?;
        Ok(crate::engine_archive::get(self.client().await?, &container, dir))
    }

    async fn put_archive(
        &self,
        environment_id: &str,
        _spec: &Spec,
        dest: &str,
        tar: crate::archive::ArchiveStream,
    ) -> Result<(), ProviderError> {
        let container = self.task_container(environment_id).await?;
        crate::engine_archive::put(self.client().await?, NAME, environment_id, &container, dest, tar).await
    }
}

//! Changing a service: its replica count (`stop` scales to zero, `ensure_running` back to
//! one), a new task for a service whose task ended (a forced update, as `docker service
//! update --force`), and waiting for the outcome.
//!
//! Every update carries the version the engine last showed; one that lost a race with
//! another update ("update out of sequence") is read again and retried, a few times.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bollard::models::{Service, ServiceSpec};
use bollard::query_parameters::{ListContainersOptionsBuilder, StopContainerOptionsBuilder, UpdateServiceOptions};

use super::tasks::{self, Observed};
use super::{NAME, SwarmProvider, body, classify, status_of};
use crate::{Instance, InstanceStatus, ProviderError};

/// Whether a task's error says the runtime refused the spec (an environment variable with a
/// NUL, a command that does not exist): the same spec fails the same way again.
fn refused_by_runtime(why: &str) -> bool {
    why.contains("OCI runtime create failed")
}

/// Tries an update this often when it races another.
const UPDATE_ATTEMPTS: usize = 4;

impl SwarmProvider {
    /// Applies `change` to the service's current spec and updates it.
    async fn update(&self, environment_id: &str, change: impl Fn(&mut ServiceSpec)) -> Result<(), ProviderError> {
        let docker = self.client().await?;
        let mut last = None;
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(service) = self.find(environment_id).await? else {
                return Err(ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() });
            };
            let (Some(id), Some(version), Some(mut spec)) =
                (service.id.clone(), service.version.as_ref().and_then(|v| v.index), service.spec.clone())
            else {
                return Err(ProviderError::Failed {
                    provider: NAME,
                    op: "update",
                    message: "the engine answered a service without id, version or spec".into(),
                });
            };
            change(&mut spec);
            let version = i32::try_from(version).unwrap_or(i32::MAX);
            let options = UpdateServiceOptions { version, ..Default::default() };
            match docker.update_service(&id, spec, options, None).await {
                Ok(_) => return Ok(()),
                Err(e) if e.to_string().contains("out of sequence") => last = Some(e),
                Err(e) if status_of(&e) == Some(404) => {
                    return Err(ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() });
                }
                Err(e) => return Err(classify("update", e)),
            }
        }
        Err(ProviderError::Failed {
            provider: NAME,
            op: "update",
            message: format!(
                "raced other updates {UPDATE_ATTEMPTS} times: {}",
                last.map(|e| e.to_string()).unwrap_or_default()
            ),
        })
    }

    /// Scales the service to `replicas`, with `grace` as its stop grace when given.
    pub(super) async fn scale(
        &self,
        environment_id: &str,
        replicas: i64,
        grace: Option<Duration>,
    ) -> Result<(), ProviderError> {
        self.update(environment_id, |spec| {
            if let Some(mode) = spec.mode.as_mut().and_then(|m| m.replicated.as_mut()) {
                mode.replicas = Some(replicas);
            }
            if let (Some(grace), Some(container)) =
                (grace, spec.task_template.as_mut().and_then(|t| t.container_spec.as_mut()))
            {
                container.stop_grace_period = Some(body::nanos(grace));
            }
        })
        .await
    }

    /// Makes Swarm start a new task for a service whose task ended.
    pub(super) async fn force_new_task(&self, environment_id: &str) -> Result<(), ProviderError> {
        self.update(environment_id, |spec| {
            if let Some(task) = spec.task_template.as_mut() {
                task.force_update = Some(task.force_update.unwrap_or(0).wrapping_add(1));
            }
        })
        .await
    }

    /// Waits until a task not in `before` runs (the environment's instance), ends, or the
    /// start timeout passes. A task refused for a reason retrying cannot change (no such
    /// image) is a permanent failure; one that exited non-zero is a failure; one that
    /// completed is its stopped instance (a job that was quicker than a look).
    pub(super) async fn wait_running(
        &self,
        environment_id: &str,
        before: &HashSet<String>,
    ) -> Result<Instance, ProviderError> {
        let deadline = Instant::now() + self.timing.start_timeout;
        loop {
            let Some(service) = self.find(environment_id).await? else {
                return Err(ProviderError::Failed {
                    provider: NAME,
                    op: "start",
                    message: format!("service {} vanished while it started", self.service_name(environment_id)),
                });
            };
            let all = self.tasks_of(&service).await?;
            let new: Vec<_> =
                all.iter().filter(|t| t.id.as_ref().is_none_or(|id| !before.contains(id))).cloned().collect();
            let seen = tasks::observe(&service, &new);
            match seen.status {
                InstanceStatus::Running => return self.instance(&service, seen).await,
                InstanceStatus::Stopped if !new.is_empty() => return self.ended_at_start(&service, seen).await,
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::Failed {
                    provider: NAME,
                    op: "start",
                    message: format!(
                        "service {} had no running task after {:?}",
                        self.service_name(environment_id),
                        self.timing.start_timeout
                    ),
                });
            }
            tokio::time::sleep(self.timing.poll).await;
        }
    }

    async fn ended_at_start(&self, service: &Service, seen: Observed) -> Result<Instance, ProviderError> {
        let name = service.spec.as_ref().and_then(|s| s.name.clone()).unwrap_or_default();
        if let Some(why) = seen.rejected.as_ref().or(seen.exit_reason.as_ref().filter(|r| refused_by_runtime(r))) {
            let permanent = refused_by_runtime(why)
                || ["No such image", "invalid", "not found", "manifest unknown", "pull access denied"]
                    .iter()
                    .any(|m| why.contains(m));
            let message = format!("service {name}: the task was refused: {why}");
            return Err(if permanent {
                ProviderError::Permanent { provider: NAME, message }
            } else {
                ProviderError::Failed { provider: NAME, op: "start", message }
            });
        }
        match seen.exit_code {
            Some(0) => self.instance(service, seen).await,
            code => Err(ProviderError::Failed {
                provider: NAME,
                op: "start",
                message: format!(
                    "service {name}: its task exited right away (code {}) {}",
                    code.map_or("unknown".into(), |c| c.to_string()),
                    seen.exit_reason.unwrap_or_default()
                )
                .trim_end()
                .to_owned(),
            }),
        }
    }

    /// Waits, up to `within`, until the service's tasks are down (or it is gone); past that
    /// the engine finishes the stop on its own (the instance is `Stopping` meanwhile).
    pub(super) async fn wait_stopped(&self, environment_id: &str, within: Duration) -> Result<(), ProviderError> {
        let deadline = Instant::now() + within;
        loop {
            let Some(service) = self.find(environment_id).await? else { return Ok(()) };
            if self.observe(&service).await?.status == InstanceStatus::Stopped || Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(self.timing.poll).await;
        }
    }

    /// Stops the service's containers on this node within `grace` (SIGTERM, then SIGKILL),
    /// once Swarm no longer wants them (scaled to zero, or removed): a running task keeps the
    /// stop grace it was made with, so this is what makes a stop's own grace hold. Swarm does
    /// not restart a task it meant to shut down.
    pub(super) async fn hurry(&self, service_id: &str, grace: Duration) -> Result<(), ProviderError> {
        let docker = self.client().await?;
        let filters =
            std::collections::HashMap::from([("label", vec![format!("com.docker.swarm.service.id={service_id}")])]);
        let options = ListContainersOptionsBuilder::default().filters(&filters).build();
        let running = docker.list_containers(Some(options)).await.map_err(|e| classify("list", e))?;
        let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        for id in running.into_iter().filter_map(|c| c.id) {
            let options = StopContainerOptionsBuilder::default().t(seconds).build();
            match docker.stop_container(&id, Some(options)).await {
                Ok(()) => {}
                Err(e) if matches!(status_of(&e), Some(304 | 404)) => {}
                Err(e) => return Err(classify("stop", e)),
            }
        }
        Ok(())
    }

    /// Waits, up to `within`, until no container of the service is left on this node (its
    /// network can go once none is attached).
    pub(super) async fn wait_containers_gone(&self, service_id: &str, within: Duration) -> Result<bool, ProviderError> {
        let docker = self.client().await?;
        let filters =
            std::collections::HashMap::from([("label", vec![format!("com.docker.swarm.service.id={service_id}")])]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let deadline = Instant::now() + within;
        loop {
            let running = docker.list_containers(Some(options.clone())).await.map_err(|e| classify("list", e))?;
            if running.is_empty() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(self.timing.poll).await;
        }
    }
}

//! What a service is made of: the service spec (one replica, labels on the service and its
//! task containers, limits, restart policy, the tenant's network, hardening defaults), and
//! the create call.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecPrivileges, TaskSpecLogDriver,
    TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use lapse_core::model::{Lifecycle, Spec};

use super::{
    LABEL_CONTROLLER, LABEL_ENVIRONMENT, LABEL_PORTS, LABEL_TENANT, LOG_MAX_FILE, LOG_MAX_SIZE, NAME, PIDS_LIMIT,
    RESTART_MAX_ATTEMPTS, SwarmProvider, classify, status_of,
};
use crate::{Placement, ProviderError};

/// The stop grace a service is made with (`stop` sets its own).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// What a create call did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Created {
    /// Made now, or by an earlier attempt that did not see its answer (the name was taken).
    Exists,
    /// The tenant's network went missing on the way: make it again and retry.
    NetworkGone,
}

/// The restart policy of a lifecycle: Swarm restarts a failed service or daemon itself (at
/// most [`RESTART_MAX_ATTEMPTS`] times, as the IDE seed does; past that the control plane's
/// own back-off takes over); a lease or a job is never restarted by Swarm (its exit is
/// recorded, and a job's retries are the control plane's).
pub fn restart_policy(lifecycle: Lifecycle) -> TaskSpecRestartPolicy {
    if lifecycle.restarts() {
        TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
            max_attempts: Some(RESTART_MAX_ATTEMPTS),
            ..Default::default()
        }
    } else {
        TaskSpecRestartPolicy { condition: Some(TaskSpecRestartPolicyConditionEnum::NONE), ..Default::default() }
    }
}

impl SwarmProvider {
    /// The service spec of environment `id`.
    pub(super) fn body(&self, id: &str, placement: &Placement, network: &str, spec: &Spec) -> ServiceSpec {
        let name = self.service_name(id);
        let mut labels = HashMap::from([
            (LABEL_ENVIRONMENT.to_owned(), id.to_owned()),
            (LABEL_CONTROLLER.to_owned(), self.controller_id.clone()),
            (LABEL_TENANT.to_owned(), placement.tenant.clone()),
        ]);
        let container_labels = labels.clone();
        if !spec.ports.is_empty() {
            let ports: Vec<String> = spec.ports.iter().map(u16::to_string).collect();
            labels.insert(LABEL_PORTS.to_owned(), ports.join(","));
        }
        let resources = spec.resources.clone().unwrap_or_default();
        ServiceSpec {
            name: Some(name.clone()),
            labels: Some(labels),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: spec.image.clone(),
                    labels: Some(container_labels),
                    args: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
                    env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    stop_grace_period: Some(nanos(DEFAULT_STOP_GRACE)),
                    // Honoured by engines whose API has it (newer than 20.10's 1.41).
                    privileges: Some(TaskSpecContainerSpecPrivileges {
                        no_new_privileges: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: resources.vcpu.map(|v| (v * 1e9) as i64),
                        memory_bytes: resources.mem_mb.map(|m| (m * 1024 * 1024) as i64),
                        pids: Some(PIDS_LIMIT),
                    }),
                    ..Default::default()
                }),
                restart_policy: Some(restart_policy(placement.lifecycle)),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(network.to_owned()),
                    aliases: Some(vec![name]),
                    ..Default::default()
                }]),
                log_driver: Some(TaskSpecLogDriver {
                    name: Some("json-file".into()),
                    options: Some(HashMap::from([
                        ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                        ("max-file".to_owned(), LOG_MAX_FILE.to_owned()),
                    ])),
                }),
                ..Default::default()
            }),
            // DNS round robin, not a virtual IP: a VIP needs IPVS, which not every kernel
            // has, and one replica gains nothing from it.
            endpoint_spec: Some(EndpointSpec { mode: Some(EndpointSpecModeEnum::DNSRR), ports: None }),
            ..Default::default()
        }
    }

    /// Creates the service; a name already taken is the service an earlier attempt made.
    pub(super) async fn create(
        &self,
        environment_id: &str,
        placement: &Placement,
        network: &str,
        spec: &Spec,
    ) -> Result<Created, ProviderError> {
        let docker = self.client().await?;
        let body = self.body(environment_id, placement, network, spec);
        match docker.create_service(body, None).await {
            Ok(_) => Ok(Created::Exists),
            Err(e) if status_of(&e) == Some(409) => Ok(Created::Exists),
            // Engine 20.10 answers a missing network with a 500 ("network X not found").
            Err(e) if e.to_string().contains("network") && e.to_string().contains("not found") => {
                Ok(Created::NetworkGone)
            }
            // The engine refused the spec (an image reference, an env entry it cannot take):
            // retrying cannot help.
            Err(e) if matches!(status_of(&e), Some(400 | 404)) => Err(ProviderError::Permanent {
                provider: NAME,
                message: format!("the engine refused the service: {e}"),
            }),
            Err(e) => Err(classify("create", e)),
        }
    }
}

/// A duration as the engine's nanoseconds.
pub fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_daemons_restart_on_failure_leases_and_jobs_never() {
        for (lifecycle, condition) in [
            (Lifecycle::Service, TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
            (Lifecycle::Daemon, TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
            (Lifecycle::Lease, TaskSpecRestartPolicyConditionEnum::NONE),
            (Lifecycle::Job, TaskSpecRestartPolicyConditionEnum::NONE),
        ] {
            assert_eq!(restart_policy(lifecycle).condition, Some(condition), "{lifecycle:?}");
        }
        assert_eq!(restart_policy(Lifecycle::Service).max_attempts, Some(RESTART_MAX_ATTEMPTS));
    }
}

//! An overlay network per tenant: each tenant's services share an attachable overlay network
//! of their own, `<controller id>-swarm-<tenant>` (e.g. `lapse-3f2a9c1b0d4e-swarm-acme`;
//! `-swarm-` keeps it apart from the docker provider's bridge network of the same tenant on
//! one engine), labelled `lapse.controller` and `lapse.tenant`, so services of different
//! tenants cannot reach each other while those of one tenant can (by the alias
//! `<service name>`).
//!
//! - Made by `ensure_running` when missing. Swarm keeps network names unique, and this
//!   provider makes its networks one at a time, so two creates for one tenant make one.
//! - Removed after `delete` when no service uses it any more (the engine refuses to remove a
//!   network a service still names, so a create racing the removal either keeps it or finds
//!   it gone and makes it again), and by the sweep's
//!   [`Provider::collect_garbage`](crate::Provider::collect_garbage) when no service uses it
//!   (a network made in the last minute is left alone: its service may be on the way).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{ListNetworksOptionsBuilder, ListServicesOptions};

use super::{LABEL_CONTROLLER, LABEL_TENANT, classify, status_of};
use crate::ProviderError;

/// Tries at removing a network whose last service just went.
const REMOVE_ATTEMPTS: usize = 8;
/// How long a network just made is kept even without services.
const GRACE: Duration = Duration::from_secs(60);

/// The networks one provider made, and when it last made sure of each.
#[derive(Debug, Default)]
pub struct Networks {
    recent: Mutex<HashMap<String, Instant>>,
    /// Held while a network is looked up and made.
    making: tokio::sync::Mutex<()>,
}

/// The overlay network name of a tenant (a name the engine accepts, whatever the tenant is
/// called).
pub fn name_of(controller_id: &str, tenant: &str) -> String {
    let plain = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        return format!("{controller_id}-swarm-{tenant}");
    }
    if tenant.is_empty() {
        return format!("{controller_id}-swarm-untenanted");
    }
    let hash = tenant.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{controller_id}-swarm-t{hash:016x}")
}

impl Networks {
    /// Makes the tenant's overlay network if it is missing; returns its name.
    pub async fn ensure(&self, docker: &Docker, controller_id: &str, tenant: &str) -> Result<String, ProviderError> {
        let name = name_of(controller_id, tenant);
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), Instant::now());
        let _making = self.making.lock().await;
        match docker.inspect_network(&name, None).await {
            Ok(_) => return Ok(name),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(classify("network", e)),
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("overlay".into()),
            scope: Some("swarm".into()),
            attachable: Some(true),
            labels: Some(HashMap::from([
                (LABEL_CONTROLLER.to_owned(), controller_id.to_owned()),
                (LABEL_TENANT.to_owned(), tenant.to_owned()),
            ])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => Ok(name),
            // Made meanwhile (another control plane process on the same swarm).
            Err(e) if docker.inspect_network(&name, None).await.is_ok() => {
                tracing::debug!(network = %name, error = %e, "network made concurrently");
                Ok(name)
            }
            Err(e) => Err(classify("network", e)),
        }
    }

    /// Removes `name` if no service names it; true if it is gone.
    pub async fn remove_if_unused(&self, docker: &Docker, name: &str, respect_grace: bool) -> bool {
        if respect_grace
            && self.recent.lock().unwrap_or_else(|p| p.into_inner()).get(name).is_some_and(|t| t.elapsed() < GRACE)
        {
            return false;
        }
        let _making = self.making.lock().await;
        let id = match docker.inspect_network(name, None).await {
            Ok(n) => n.id.unwrap_or_default(),
            Err(e) if status_of(&e) == Some(404) => return true,
            Err(_) => return false,
        };
        match used_networks(docker).await {
            Ok(used) if used.contains(name) || used.contains(&id) => return false,
            Ok(_) => {}
            Err(_) => return false,
        }
        // The engine refuses while a service names it or a container is still attached (a
        // task's endpoint outlives its container briefly): a few tries, then the sweep's.
        for attempt in 0..REMOVE_ATTEMPTS {
            match docker.remove_network(name).await {
                Ok(()) => {
                    self.recent.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
                    return true;
                }
                Err(e) if status_of(&e) == Some(404) => return true,
                Err(e) if attempt + 1 == REMOVE_ATTEMPTS => {
                    tracing::debug!(network = %name, error = %e, "network not removed yet; the sweep will");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        false
    }

    /// Removes every overlay network of this controller that no service uses.
    pub async fn collect(&self, docker: &Docker, controller_id: &str) -> Result<usize, ProviderError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_CONTROLLER}={controller_id}")])]);
        let options = ListNetworksOptionsBuilder::default().filters(&filters).build();
        let networks = docker.list_networks(Some(options)).await.map_err(|e| classify("list networks", e))?;
        let mut removed = 0;
        for network in networks {
            // Filters are the engine's; check the label (and that it is one of ours) ourselves.
            let ours = network.labels.as_ref().and_then(|l| l.get(LABEL_CONTROLLER)).map(String::as_str)
                == Some(controller_id)
                && network.driver.as_deref() == Some("overlay");
            if let (true, Some(name)) = (ours, network.name)
                && name.starts_with(&format!("{controller_id}-swarm-"))
                && self.remove_if_unused(docker, &name, true).await
            {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The networks (ids and names, as services name them) any service of the swarm uses.
async fn used_networks(docker: &Docker) -> Result<HashSet<String>, ProviderError> {
    let services = docker.list_services(None::<ListServicesOptions>).await.map_err(|e| classify("list services", e))?;
    Ok(services
        .into_iter()
        .filter_map(|s| s.spec)
        .flat_map(|spec| {
            let task = spec.task_template.and_then(|t| t.networks).unwrap_or_default();
            task.into_iter().chain(spec.networks.unwrap_or_default())
        })
        .filter_map(|n| n.target)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name_of("lapse-abc", "acme"), "lapse-abc-swarm-acme");
        assert_eq!(name_of("lapse-abc", ""), "lapse-abc-swarm-untenanted");
        assert!(name_of("lapse-abc", "a b/c").starts_with("lapse-abc-swarm-t"));
        assert_ne!(name_of("lapse-abc", "a b"), name_of("lapse-abc", "a/b"));
        assert_ne!(name_of("lapse-abc", "acme"), name_of("lapse-abc", "other"));
    }
}

//! A network per tenant: each tenant's containers share a bridge network of their own,
//! `<controller id>-<tenant>` (e.g. `lapse-3f2a9c1b0d4e-acme`), labelled like every Lapse
//! resource, so containers of different tenants cannot reach each other while those of one
//! tenant can.
//!
//! - Made by `ensure_running` when missing, with the bridge driver's `isolate` option
//!   (Podman: no traffic between it and other networks; Docker isolates bridge networks
//!   from each other by default and ignores the option).
//! - Removed when its last container goes (`delete`), and by the sweep's
//!   [`Provider::collect_garbage`](crate::Provider::collect_garbage) when it has none (a
//!   network made in the last minute is left alone: its container may be on the way).
//! - "None" counts every container of the tenant in any state (a created or stopped one
//!   names its network but is not attached, and the engine would let the network go), and a
//!   network is never removed while a create for its tenant is on the way in this process
//!   ([`Networks::hold`]): the check and the removal, and the hold's start, are under one
//!   lock, so a create cannot make its container against a network about to vanish.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};

use super::{LABEL_CONTROLLER, classify, status_of};
use crate::ProviderError;

pub const LABEL_TENANT: &str = "lapse.tenant";
/// How long a network just made is kept even without containers.
const GRACE: Duration = Duration::from_secs(60);

/// The networks one provider made, and when it last made sure of each.
#[derive(Debug, Default)]
pub struct Networks {
    recent: Mutex<HashMap<String, Instant>>,
    /// Creates on the way, by network name.
    held: Mutex<HashMap<String, usize>>,
    /// Held by a removal from its check to its end, and by a hold's start.
    removing: tokio::sync::Mutex<()>,
}

/// A create on the way: the network is not removed until this is dropped.
#[derive(Debug)]
pub struct Hold<'a> {
    networks: &'a Networks,
    name: String,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut held = self.networks.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.name);
            }
        }
    }
}

/// The network name of a tenant (a name Docker accepts, whatever the tenant is called).
pub fn name_of(controller_id: &str, tenant: &str) -> String {
    let plain = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        return format!("{controller_id}-{tenant}");
    }
    if tenant.is_empty() {
        return format!("{controller_id}-untenanted");
    }
    let hash = tenant.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{controller_id}-t{hash:016x}")
}

impl Networks {
    /// Keeps the tenant's network from being removed until the hold is dropped; waits for a
    /// removal under way (after which [`Networks::ensure`] makes the network again).
    pub async fn hold(&self, controller_id: &str, tenant: &str) -> Hold<'_> {
        let name = name_of(controller_id, tenant);
        let _removing = self.removing.lock().await;
        *self.held.lock().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default() += 1;
        Hold { networks: self, name }
    }

    /// Makes the tenant's network if it is missing; returns its name.
    pub async fn ensure(&self, docker: &Docker, controller_id: &str, tenant: &str) -> Result<String, ProviderError> {
        let name = name_of(controller_id, tenant);
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), Instant::now());
        match docker.inspect_network(&name, None).await {
            Ok(_) => return Ok(name),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(classify("network", e)),
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            options: Some(HashMap::from([("isolate".to_owned(), "true".to_owned())])),
            labels: Some(HashMap::from([
                (LABEL_CONTROLLER.to_owned(), controller_id.to_owned()),
                (LABEL_TENANT.to_owned(), tenant.to_owned()),
            ])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => Ok(name),
            // Made meanwhile by a concurrent create for the same tenant.
            Err(e) if docker.inspect_network(&name, None).await.is_ok() => {
                tracing::debug!(network = %name, error = %e, "network made concurrently");
                Ok(name)
            }
            Err(e) => Err(classify("network", e)),
        }
    }

    /// Removes `name` if no container uses it; true if it is gone.
    pub async fn remove_if_unused(&self, docker: &Docker, name: &str, respect_grace: bool) -> bool {
        if respect_grace
            && self.recent.lock().unwrap_or_else(|p| p.into_inner()).get(name).is_some_and(|t| t.elapsed() < GRACE)
        {
            return false;
        }
        let _removing = self.removing.lock().await;
        if self.held.lock().unwrap_or_else(|p| p.into_inner()).contains_key(name) {
            return false;
        }
        let network = match docker.inspect_network(name, None).await {
            Ok(n) if n.containers.as_ref().is_none_or(HashMap::is_empty) => n,
            Ok(_) => return false,
            Err(e) if status_of(&e) == Some(404) => return true,
            Err(_) => return false,
        };
        let (Some(controller), Some(tenant)) = (
            network.labels.as_ref().and_then(|l| l.get(LABEL_CONTROLLER)),
            network.labels.as_ref().and_then(|l| l.get(LABEL_TENANT)),
        ) else {
            return false;
        };
        // Created and stopped containers are not attached, yet need the network to start.
        let filters = HashMap::from([(
            "label",
            vec![format!("{LABEL_CONTROLLER}={controller}"), format!("{LABEL_TENANT}={tenant}")],
        )]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        match docker.list_containers(Some(options)).await {
            Ok(containers) if containers.is_empty() => {}
            _ => return false,
        }
        match docker.remove_network(name).await {
            Ok(()) => {
                self.recent.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
                true
            }
            Err(e) => status_of(&e) == Some(404),
        }
    }

    /// Removes every network of this controller that no container uses.
    pub async fn collect(&self, docker: &Docker, controller_id: &str) -> Result<usize, ProviderError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_CONTROLLER}={controller_id}")])]);
        let options = ListNetworksOptionsBuilder::default().filters(&filters).build();
        let networks = docker.list_networks(Some(options)).await.map_err(|e| classify("list networks", e))?;
        let mut removed = 0;
        for network in networks {
            // Filters are the engine's; check the label ourselves before acting on it.
            let ours = network.labels.as_ref().and_then(|l| l.get(LABEL_CONTROLLER)).map(String::as_str)
                == Some(controller_id);
            if let (true, Some(name)) = (ours, network.name)
                && self.remove_if_unused(docker, &name, true).await
            {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name_of("lapse-abc", "acme"), "lapse-abc-acme");
        assert_eq!(name_of("lapse-abc", ""), "lapse-abc-untenanted");
        assert!(name_of("lapse-abc", "a b/c").starts_with("lapse-abc-t"));
        assert_ne!(name_of("lapse-abc", "a b"), name_of("lapse-abc", "a/b"));
    }
}

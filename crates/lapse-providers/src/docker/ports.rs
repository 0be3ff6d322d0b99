//! Host ports from a configured range: each of a spec's ports gets the first port of the
//! range that no container holds and nothing on the host listens on (github.gg's
//! `findAvailablePort(2222)`, which asks `docker ps --filter publish=<port>` port by port).
//!
//! - Held: the public ports of every container the engine lists (running ones report them),
//!   and the ports in the [`LABEL_HOST_PORTS`] label of every container this provider made,
//!   running or not (a stopped one gets its ports back when it starts again).
//! - Picks are serialized by the provider from the pick until the container exists (so it
//!   carries its label): two concurrent creates never pick one port.
//! - A full range is [`ProviderError::Permanent`]: retrying cannot help until a container
//!   goes, and the provision fails with a message naming the range.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener};

use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;

use super::conventions::PortRange;
use super::{NAME, classify};
use crate::ProviderError;

/// The host ports a container was given from the range, comma-separated.
pub const LABEL_HOST_PORTS: &str = "lapse.host_ports";

/// Ports of the range `count` containers ports can take, in order.
pub async fn pick(docker: &Docker, range: PortRange, address: IpAddr, count: usize) -> Result<Vec<u16>, ProviderError> {
    let held = held(docker).await?;
    let mut picked = Vec::with_capacity(count);
    for port in range.first..=range.last {
        if picked.len() == count {
            break;
        }
        if !held.contains(&port) && free_on_host(address, port) {
            picked.push(port);
        }
    }
    if picked.len() < count {
        return Err(ProviderError::Permanent {
            provider: NAME,
            message: format!(
                "no free host port in the range {}-{} on {address} ({count} needed, {} free)",
                range.first,
                range.last,
                picked.len()
            ),
        });
    }
    Ok(picked)
}

/// Every host port a container holds or will hold again.
async fn held(docker: &Docker) -> Result<BTreeSet<u16>, ProviderError> {
    let options = ListContainersOptionsBuilder::default().all(true).build();
    let containers = docker.list_containers(Some(options)).await.map_err(|e| classify("pick a port", e))?;
    let mut held = BTreeSet::new();
    for c in containers {
        held.extend(c.ports.iter().flatten().filter_map(|p| p.public_port));
        if let Some(list) = c.labels.as_ref().and_then(|l| l.get(LABEL_HOST_PORTS)) {
            held.extend(list.split(',').filter_map(|p| p.parse::<u16>().ok()));
        }
    }
    Ok(held)
}

/// Whether nothing on this host listens on `address:port` (best effort: an engine on
/// another host binds there, not here; only "in use" counts as taken).
fn free_on_host(address: IpAddr, port: u16) -> bool {
    match TcpListener::bind(SocketAddr::new(address, port)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AddrInUse,
    }
}

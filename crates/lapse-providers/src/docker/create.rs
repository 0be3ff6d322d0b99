//! What a container is made of: the create body (limits, labels, ports, restart policy,
//! hardening defaults) and the create call, with the host-port pick held until the
//! container exists; and the NoCloud user-data archive.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, PortBinding};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use lapse_core::model::Spec;

use super::{
    DockerProvider, LABEL_CONTROLLER, LABEL_ENVIRONMENT, LOG_MAX_FILE, LOG_MAX_SIZE, NAME, PIDS_LIMIT, classify,
    network, ports, status_of,
};
use crate::{NOCLOUD_USER_DATA, Placement, ProviderError};

impl DockerProvider {
    /// `host_ports`: one per spec port, from the configured range; empty when the engine picks.
    pub(super) fn body(
        &self,
        id: &str,
        placement: &Placement,
        network: &str,
        spec: &Spec,
        host_ports: &[u16],
    ) -> ContainerCreateBody {
        let port_key = |p: &u16| format!("{p}/tcp");
        let host_ip = self.conventions.publish_address.to_string();
        let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let host_port = host_ports.get(i).map(u16::to_string).unwrap_or_default();
                (port_key(p), Some(vec![PortBinding { host_ip: Some(host_ip.clone()), host_port: Some(host_port) }]))
            })
            .collect();
        let resources = spec.resources.clone().unwrap_or_default();
        let mut labels: HashMap<String, String> =
            self.conventions.labels_for(&self.container_name(id)).into_iter().collect();
        labels.extend([
            (LABEL_ENVIRONMENT.to_owned(), id.to_owned()),
            (LABEL_CONTROLLER.to_owned(), self.controller_id.clone()),
            (network::LABEL_TENANT.to_owned(), placement.tenant.clone()),
        ]);
        if !host_ports.is_empty() {
            let list: Vec<String> = host_ports.iter().map(u16::to_string).collect();
            labels.insert(ports::LABEL_HOST_PORTS.to_owned(), list.join(","));
        }
        ContainerCreateBody {
            image: spec.image.clone(),
            cmd: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
            env: Some(
                spec.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .chain(spec.user_data.as_ref().map(|_| format!("{}={NOCLOUD_USER_DATA}", crate::USER_DATA_ENV)))
                    // Pre-expiry warnings land here (the server writes it through the archive API).
                    .chain(std::iter::once(format!("{}=/run/lapse-notice", crate::NOTICE_ENV)))
                    .collect(),
            ),
            labels: Some(labels),
            exposed_ports: Some(spec.ports.iter().map(port_key).collect()),
            host_config: Some(HostConfig {
                memory: resources.mem_mb.map(|m| (m * 1024 * 1024) as i64),
                nano_cpus: resources.vcpu.map(|v| (v * 1e9) as i64),
                port_bindings: Some(port_bindings),
                pids_limit: Some(PIDS_LIMIT),
                security_opt: Some(vec!["no-new-privileges".into()]),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::from([
                        ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                        ("max-file".to_owned(), LOG_MAX_FILE.to_owned()),
                    ])),
                }),
                network_mode: Some(network.to_owned()),
                restart_policy: self.conventions.restart_policy(),
                storage_opt: resources.disk_gb.map(|d| HashMap::from([("size".to_owned(), format!("{d}G"))])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates the container; with a port range, picks its host ports first, holding the
    /// pick until the container (and its port label) exists. `Ok(false)`: a network went
    /// missing on the way (retry once).
    pub(super) async fn create(
        &self,
        environment_id: &str,
        name: &str,
        placement: &Placement,
        network: &str,
        spec: &Spec,
    ) -> Result<bool, ProviderError> {
        let _held = match self.conventions.port_range {
            Some(_) if !spec.ports.is_empty() => Some(self.port_picks.lock().await),
            _ => None,
        };
        let host_ports = match self.conventions.port_range {
            Some(range) if !spec.ports.is_empty() => {
                ports::pick(&self.docker, range, self.conventions.publish_address, spec.ports.len()).await?
            }
            _ => Vec::new(),
        };
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let body = self.body(environment_id, placement, network, spec, &host_ports);
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => Ok(true),
            // Created by an earlier attempt that did not see its answer: use it.
            // (Podman answers 500 "... is already in use".)
            Err(e) if status_of(&e) == Some(409) || e.to_string().contains("already in use") => Ok(true),
            Err(e) if status_of(&e) == Some(404) && e.to_string().contains("network") => Ok(false),
            Err(e) if status_of(&e) == Some(404) => Err(ProviderError::Permanent {
                provider: NAME,
                message: format!("image {:?} not found: {e}", spec.image.as_deref().unwrap_or_default()),
            }),
            Err(e) => Err(classify("create", e)),
        }
    }
}

/// A tar archive, to unpack at `/`, holding the NoCloud seed: `user-data` and a `meta-data`
/// that names the instance.
pub(super) fn user_data_archive(id: &str, user_data: &str) -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    let mut path = String::new();
    for part in NOCLOUD_USER_DATA.trim_start_matches('/').split('/').filter(|p| *p != "user-data") {
        path.push_str(part);
        path.push('/');
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        archive.append_data(&mut header, &path, std::io::empty())?;
    }
    let meta = format!("instance-id: {id}\nlocal-hostname: lapse-{}\n", &id[..id.len().min(12)]);
    for (name, data) in [("user-data", user_data.as_bytes()), ("meta-data", meta.as_bytes())] {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        archive.append_data(&mut header, format!("{path}{name}"), data)?;
    }
    archive.into_inner()
}

//! Whether `resources.disk_gb` can be enforced: the engine limits a container's writable
//! layer with `storage-opt size=<N>G` only on some storage drivers (overlay2 over xfs
//! mounted with `pquota`, btrfs, zfs, devicemapper, windowsfilter).
//!
//! Probed once, when the provider starts ([`probe`]). The engine's `info` first: overlay on
//! anything but xfs, and drivers without quotas (vfs, aufs), cannot, and that settles it in
//! one call (~20 ms). Otherwise (overlay on xfs, where `pquota` cannot be seen; btrfs, zfs,
//! devicemapper, windowsfilter) a container is created (never started) from an image the
//! engine already has, with `size=1G`, and removed again, and the engine's answer decides;
//! it says why when it refuses (measured with Podman 4.3, overlay over ext4, in ~0.55 s:
//! `--storage-opt is supported only for overlay over xfs with 'pquota' mount option`). With
//! no image to probe with, the driver's name decides (btrfs, zfs, devicemapper and
//! windowsfilter do; overlay on xfs is not assumed to). Until the probe has answered,
//! `disk_gb` is refused.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, ListImagesOptions, RemoveContainerOptionsBuilder};

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskSupport {
    /// `storage-opt size` works; what showed it.
    Enforced(String),
    /// It does not (or could not be shown to); why.
    Refused(String),
}

impl DiskSupport {
    pub fn enforced(&self) -> bool {
        matches!(self, DiskSupport::Enforced(_))
    }
}

/// Drivers that take `storage-opt size` whatever their mount.
const SIZED_DRIVERS: &[&str] = &["btrfs", "zfs", "devicemapper", "windowsfilter"];

/// Finds out whether this engine limits a container's disk; see the module doc.
pub async fn probe(docker: &Docker, controller_id: &str) -> DiskSupport {
    let (driver, backing) = match docker.info().await {
        Ok(info) => {
            let backing = info
                .driver_status
                .unwrap_or_default()
                .into_iter()
                .find(|pair| pair.first().is_some_and(|k| k == "Backing Filesystem"))
                .and_then(|pair| pair.get(1).cloned())
                .unwrap_or_default();
            (info.driver.unwrap_or_default(), backing)
        }
        Err(e) => return DiskSupport::Refused(format!("the engine did not say its storage driver: {e}")),
    };
    let overlay = driver.starts_with("overlay");
    if overlay && backing != "xfs" {
        return DiskSupport::Refused(format!(
            "storage driver {driver} on {}: storage-opt size needs overlay over xfs mounted with pquota",
            if backing.is_empty() { "an unknown filesystem" } else { &backing }
        ));
    }
    if !overlay && !SIZED_DRIVERS.contains(&driver.as_str()) {
        return DiskSupport::Refused(format!("storage driver {driver} cannot limit a container's disk"));
    }
    let image = match docker.list_images(None::<ListImagesOptions>).await {
        Ok(images) => images.into_iter().find_map(|i| i.repo_tags.into_iter().find(|t| !t.contains("<none>"))),
        Err(_) => None,
    };
    let Some(image) = image else {
        return if !overlay {
            DiskSupport::Enforced(format!("storage driver {driver} (no image to probe with)"))
        } else {
            DiskSupport::Refused(format!(
                "storage driver {driver} on xfs: no image to probe storage-opt size with (it needs the pquota mount option)"
            ))
        };
    };
    let name = format!("{controller_id}-disk-probe");
    let remove = || async {
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        let _ = docker.remove_container(&name, Some(options)).await;
    };
    remove().await;
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        labels: Some(HashMap::from([(super::LABEL_CONTROLLER.to_owned(), controller_id.to_owned())])),
        host_config: Some(HostConfig {
            storage_opt: Some(HashMap::from([("size".to_owned(), "1G".to_owned())])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    let answer = docker.create_container(Some(options), body).await;
    remove().await;
    match answer {
        Ok(_) => {
            DiskSupport::Enforced(format!("storage driver {driver}: a container of {image} took storage-opt size"))
        }
        Err(e) => {
            DiskSupport::Refused(format!("storage driver {driver} refuses storage-opt size: {}", engine_message(&e)))
        }
    }
}

fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

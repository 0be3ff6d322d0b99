//! The pure choices the OVH provider makes: which flavour, which image, what a status means,
//! and the user data with the expiry backstop. No API call is made here.

use base64::Engine;
use lapse_core::Millis;
use serde::Deserialize;

use crate::InstanceStatus;
use crate::cloud_init::{Backstop, Metadata};

/// `cloud.flavor.Flavor`, the fields the choice reads (`ram` in GB, as OVH gives it).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Flavor {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub vcpus: u64,
    #[serde(default)]
    pub ram: u64,
    #[serde(default)]
    pub available: bool,
    #[serde(default)]
    pub os_type: Option<String>,
}

/// `cloud.image.Image`, the fields the choice reads.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Image {
    pub id: String,
    pub name: String,
}

/// The seed's flavour choice (github.gg `getFlavorForResources`): available, `vcpus >= vcpu`,
/// `ram >= ceil(mem_mb / 1024)`, no Windows (by name or `osType`), smallest `vcpus + ram`
/// first. Disk is not considered (as the seed). Ties keep the API's order.
pub fn flavour_for(flavours: &[Flavor], vcpu: u64, mem_mb: u64) -> Option<&Flavor> {
    let ram_gb = mem_mb.div_ceil(1024);
    let mut fitting: Vec<&Flavor> = flavours
        .iter()
        .filter(|f| f.available && f.vcpus >= vcpu && f.ram >= ram_gb)
        .filter(|f| !f.name.to_lowercase().contains("win") && f.os_type.as_deref() != Some("windows"))
        .collect();
    fitting.sort_by_key(|f| f.vcpus + f.ram);
    fitting.first().copied()
}

/// A flavour named by `cloud.instance_type`: by id, else by name (case-insensitive).
pub fn flavour_named<'a>(flavours: &'a [Flavor], wanted: &str) -> Option<&'a Flavor> {
    flavours.iter().find(|f| f.id == wanted).or_else(|| flavours.iter().find(|f| f.name.eq_ignore_ascii_case(wanted)))
}

/// The image: `spec.image` by id, exact name or name containing it (case-insensitive);
/// without one, the seed's rule: the first whose name contains "ubuntu 22.04", else "ubuntu".
pub fn image_for<'a>(images: &'a [Image], wanted: Option<&str>) -> Option<&'a Image> {
    let has = |needle: &str| images.iter().find(move |i| i.name.to_lowercase().contains(needle));
    match wanted {
        Some(w) => {
            let lower = w.to_lowercase();
            images
                .iter()
                .find(|i| i.id == w)
                .or_else(|| images.iter().find(|i| i.name.to_lowercase() == lower))
                .or_else(|| has(&lower))
        }
        None => has("ubuntu 22.04").or_else(|| has("ubuntu")),
    }
}

/// What an OVH instance status (`cloud.instance.InstanceStatusEnum`: ACTIVE, BUILD, BUILDING,
/// DELETED, DELETING, ERROR, HARD_REBOOT, MIGRATING, PASSWORD, PAUSED, REBOOT, REBUILD, RESCUE,
/// RESCUED, RESCUING, RESIZE, RESIZED, RESUMING, REVERT_RESIZE, SHELVED, SHELVED_OFFLOADED,
/// SHELVING, SHUTOFF, SNAPSHOTTING, SOFT_DELETED, STOPPED, SUSPENDED, UNKNOWN, UNRESCUING,
/// UNSHELVING, VERIFY_RESIZE) means to Lapse.
///
/// The seed maps `ACTIVE` → running, `SHUTOFF` → stopped and everything else to error; Lapse
/// keeps the first two and sorts the rest: states on the way up are `Pending`, on the way
/// down `Stopping`, deletion `ShuttingDown` (the sweep leaves all three alone), and states
/// where the guest does not run (`ERROR`, `SHELVED`, `SUSPENDED`, `PAUSED`, `RESCUE`,
/// `UNKNOWN`, ...) `Stopped`, so the reconciler starts or replaces it.
pub fn status_of(ovh: &str) -> InstanceStatus {
    match ovh {
        "ACTIVE" => InstanceStatus::Running,
        "BUILD" | "BUILDING" | "REBOOT" | "HARD_REBOOT" | "REBUILD" | "RESIZE" | "RESIZED" | "VERIFY_RESIZE"
        | "REVERT_RESIZE" | "MIGRATING" | "PASSWORD" | "RESCUING" | "UNRESCUING" | "UNSHELVING" | "RESUMING"
        | "SNAPSHOTTING" => InstanceStatus::Pending,
        "SHELVING" => InstanceStatus::Stopping,
        "DELETING" | "DELETED" | "SOFT_DELETED" => InstanceStatus::ShuttingDown,
        _ => InstanceStatus::Stopped,
    }
}

/// Minutes after `expires_at` the guest's own shutdown waits, so the control plane's stop
/// (which keeps the disk and runs hooks) normally comes first.
pub const BACKSTOP_GRACE_MINUTES: i64 = 10;

/// The user data sent to OVH (base64): the spec's own user data, then Lapse's part
/// ([`crate::cloud_init`]): the SSH keys, and with an expiry the shared backstop, which powers
/// the guest off at `expires_at` plus [`BACKSTOP_GRACE_MINUTES`] even if the control plane is
/// gone, reading its deadline from `deadline_file` (OVH's metadata has no tags, so `extend`
/// moves it by writing that file over SSH). A guest cannot delete itself (it holds no API
/// credentials), so `on_expiry: delete` also powers off; the control plane deletes. With
/// nothing of Lapse's and no user data, `None`.
pub fn user_data(
    own: Option<&str>,
    expires_at: Option<Millis>,
    ssh_keys: &[String],
    deadline_file: &str,
) -> Option<String> {
    let backstop = expires_at.map(|at| Backstop {
        expires_at: at.div_euclid(1000),
        grace_secs: BACKSTOP_GRACE_MINUTES * 60,
        deadline_file,
        metadata: Metadata::None,
        power_off: "shutdown -P now",
    });
    let text = crate::cloud_init::user_data(backstop.as_ref(), ssh_keys, own)?;
    Some(base64::engine::general_purpose::STANDARD.encode(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flavour(name: &str, vcpus: u64, ram: u64, available: bool) -> Flavor {
        Flavor { id: format!("id-{name}"), name: name.into(), vcpus, ram, available, os_type: Some("linux".into()) }
    }

    #[test]
    fn picks_the_smallest_fitting_linux_flavour() {
        let list = vec![
            flavour("b2-7", 2, 7, true),
            flavour("s1-2", 1, 2, true),
            flavour("win-b2-7", 2, 7, true),
            flavour("d2-4", 2, 4, false),
            flavour("d2-8", 4, 8, true),
            flavour("c2-7", 2, 7, true),
        ];
        assert_eq!(flavour_for(&list, 1, 2048).map(|f| f.name.as_str()), Some("s1-2"));
        // 4097 MiB needs 5 GB; d2-4 is unavailable: b2-7 (9) before c2-7 (same, later) and d2-8.
        assert_eq!(flavour_for(&list, 2, 4097).map(|f| f.name.as_str()), Some("b2-7"));
        assert_eq!(flavour_for(&list, 64, 1024), None);
    }

    #[test]
    fn every_status_of_the_schema_maps() {
        use InstanceStatus::*;
        let expect = [
            ("ACTIVE", Running),
            ("SHUTOFF", Stopped),
            ("STOPPED", Stopped),
            ("BUILD", Pending),
            ("BUILDING", Pending),
            ("REBOOT", Pending),
            ("RESIZED", Pending),
            ("UNSHELVING", Pending),
            ("SHELVING", Stopping),
            ("DELETING", ShuttingDown),
            ("SOFT_DELETED", ShuttingDown),
            ("ERROR", Stopped),
            ("SHELVED_OFFLOADED", Stopped),
            ("UNKNOWN", Stopped),
            ("not-in-the-schema", Stopped),
        ];
        for (ovh, lapse) in expect {
            assert_eq!(status_of(ovh), lapse, "{ovh}");
        }
    }

    #[test]
    fn images_by_the_seed_rule_or_by_name() {
        let list = vec![
            Image { id: "1".into(), name: "Debian 12".into() },
            Image { id: "2".into(), name: "Ubuntu 24.04".into() },
            Image { id: "3".into(), name: "Ubuntu 22.04".into() },
        ];
        assert_eq!(image_for(&list, None).map(|i| i.id.as_str()), Some("3"));
        assert_eq!(image_for(&list, Some("debian 12")).map(|i| i.id.as_str()), Some("1"));
        assert_eq!(image_for(&list, Some("2")).map(|i| i.id.as_str()), Some("2"));
        assert_eq!(image_for(&list, Some("windows")), None);
    }

    #[test]
    fn user_data_carries_the_backstop_beside_the_users_part() {
        let decode =
            |s: String| String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap();
        let file = crate::ssh::DEFAULT_DEADLINE_FILE;
        assert_eq!(user_data(None, None, &[], file), None);
        assert_eq!(decode(user_data(Some("#cloud-config\n"), None, &[], file).unwrap()), "#cloud-config\n");
        let both =
            decode(user_data(Some("#cloud-config\nruncmd: [ls]\n"), Some(1_700_000_000_000), &[], file).unwrap());
        assert!(both.starts_with("Content-Type: multipart/mixed"));
        assert!(both.contains("Content-Type: text/cloud-config"));
        assert!(both.contains("runcmd: [ls]"));
        assert!(both.contains("if [ 1700000000 -gt") && both.contains(&format!("g={}", BACKSTOP_GRACE_MINUTES * 60)));
        assert!(both.contains("shutdown -P now") && !both.contains("169.254"));
        let keyed = decode(user_data(None, None, &["ssh-ed25519 AAAA".into()], file).unwrap());
        assert!(keyed.contains("ssh_authorized_keys"));
        let archive = decode(user_data(Some("#cloud-config-archive\n- a\n"), Some(0), &[], file).unwrap());
        assert!(archive.contains("Content-Type: text/cloud-config-archive"), "{archive}");
        let mime = "Content-Type: multipart/mixed; boundary=\"u\"\nMIME-Version: 1.0\n\n--u\nContent-Type: text/x-shellscript\n\n#!/bin/sh\n--u--\n";
        let nested = decode(user_data(Some(mime), Some(0), &[], file).unwrap());
        assert!(nested.contains("==\nContent-Type: multipart/mixed; boundary=\"u\""), "{nested}");
    }
}

//! What the scaleway provider accepts in a spec, checked before anything is stored: it needs
//! `image` and `cloud.instance_type`, takes `cloud.zone` (shape-checked), `cloud.security_group`,
//! `user_data` and `ports`, and refuses what it would otherwise ignore (a spec is never
//! silently trimmed).

use lapse_core::model::Spec;
use lapse_core::validate::FieldError;

use super::NAME;

/// A Scaleway zone's shape: `fr-par-1`, `nl-ams-2`, `pl-waw-3`.
pub fn valid_zone(zone: &str) -> bool {
    let parts: Vec<&str> = zone.split('-').collect();
    matches!(parts.as_slice(), [a, b, n]
        if a.len() == 2 && a.bytes().all(|c| c.is_ascii_lowercase())
        && b.len() == 3 && b.bytes().all(|c| c.is_ascii_lowercase())
        && !n.is_empty() && n.len() <= 2 && n.bytes().all(|c| c.is_ascii_digit()))
}

/// Refuses a spec this provider cannot honour: it needs `image` and `cloud.instance_type`,
/// takes `cloud.zone`, `cloud.security_group`, `user_data` and `ports`, and refuses what it
/// would otherwise ignore.
pub fn validate(spec: &Spec) -> Result<(), FieldError> {
    let err = |field: &str, message: &str| Err(FieldError { field: field.into(), message: message.into() });
    crate::check_boot(spec, NAME, false)?;
    if spec.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        return err("spec.image", "the scaleway provider needs an image (an image id or label)");
    }
    let Some(cloud) = &spec.cloud else {
        return err("spec.cloud.instance_type", "the scaleway provider needs a commercial type (like DEV1-S)");
    };
    if cloud.instance_type.as_deref().is_none_or(|t| t.trim().is_empty()) {
        return err("spec.cloud.instance_type", "the scaleway provider needs a commercial type (like DEV1-S)");
    }
    if let Some(zone) = &cloud.zone
        && !valid_zone(zone)
    {
        return err("spec.cloud.zone", "not a Scaleway zone (like fr-par-1)");
    }
    let unsupported = "the scaleway provider does not take this field yet; leave it out";
    if cloud.subnet.is_some() {
        return err("spec.cloud.subnet", unsupported);
    }
    // Put in through cloud-init's `ssh_authorized_keys`: one OpenSSH line each.
    let one_line_key = |k: &String| {
        let k = k.trim();
        k.len() <= 16 * 1024
            && !k.contains(['\n', '\r', '\0'])
            && ["ssh-", "ecdsa-", "sk-"].iter().any(|p| k.starts_with(p))
            && k.split_whitespace().count() >= 2
    };
    if cloud.ssh_public_keys.len() > 32 || !cloud.ssh_public_keys.iter().all(one_line_key) {
        return err(
            "spec.cloud.ssh_public_keys",
            "give at most 32 public keys, each one OpenSSH line (`ssh-ed25519 AAAA... comment`)",
        );
    }
    if cloud.disk_type.is_some() {
        return err("spec.cloud.disk_type", unsupported);
    }
    if let Some(r) = &spec.resources {
        if r.disk_gb.is_some() {
            return err("spec.resources.disk_gb", unsupported);
        }
        if r.vcpu.is_some() || r.mem_mb.is_some() {
            return err("spec.resources", "the commercial type (spec.cloud.instance_type) sets vCPU and memory");
        }
    }
    if !spec.cmd.is_empty() {
        return err("spec.cmd", "a Scaleway server runs its image; put commands in spec.user_data");
    }
    if !spec.env.is_empty() {
        return err("spec.env", "a Scaleway server takes no environment variables; use spec.user_data");
    }
    Ok(())
}

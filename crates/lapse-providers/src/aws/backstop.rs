//! The lease backstop a VM carries itself: the shared one ([`crate::cloud_init`]), powering
//! off with `shutdown -h now` at `expires-at` plus [`GRACE_SECS`]. Combined with the
//! launch's `InstanceInitiatedShutdownBehavior` (`terminate` when `on_expiry = delete`, else
//! `stop`), the guest's own shutdown stops or terminates the instance.
//!
//! The guest reads its deadline each minute from the instance's `lapse:expires-at` tag
//! through the instance metadata service (IMDSv2, then v1) when the account exposes tags
//! there, and from the deadline file (seeded from the user data, rewritten over SSH by
//! `rearm`), so `extend` of a running instance moves it either way.

use crate::cloud_init::{self, Backstop, Metadata};

/// Extra time after `expires-at` before the guest shuts itself down: the control plane's own
/// stop comes first when it is up.
pub const GRACE_SECS: i64 = 15 * 60;

/// The whole user data: the user's own (if any), then Lapse's part (the SSH keys, and the
/// backstop for `deadline_unix`, the lease's end in seconds), as MIME multipart.
pub fn user_data(
    deadline_unix: Option<i64>,
    own: Option<&str>,
    ssh_keys: &[String],
    deadline_file: &str,
) -> Option<String> {
    let backstop = deadline_unix.map(|expires_at| Backstop {
        expires_at,
        grace_secs: GRACE_SECS,
        deadline_file,
        metadata: Metadata::AwsImds,
        power_off: "shutdown -h now",
    });
    cloud_init::user_data(backstop.as_ref(), ssh_keys, own)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = crate::ssh::DEFAULT_DEADLINE_FILE;

    #[test]
    fn both_parts_survive() {
        let own = "#!/bin/sh\necho hello\n";
        let all = user_data(Some(1_900_000_000), Some(own), &["ssh-ed25519 AAAA k".into()], FILE).unwrap();
        assert!(all.starts_with("Content-Type: multipart/mixed"));
        assert!(all.contains("text/cloud-config"));
        assert!(all.contains("text/x-shellscript"));
        assert!(all.contains("echo hello"));
        assert!(all.contains("if [ 1900000000 -gt"));
        assert!(all.contains(&format!("g={GRACE_SECS}")));
        assert!(all.contains("tags/instance/lapse:expires-at") && all.contains("shutdown -h now"));
        assert!(all.contains("\"ssh-ed25519 AAAA k\""));
        assert!(all.trim_end().ends_with("--"));
    }

    #[test]
    fn nothing_when_no_lease_no_keys_and_no_user_data() {
        assert_eq!(user_data(None, None, &[], FILE), None);
        assert_eq!(user_data(None, Some(""), &[], FILE), None);
        let own_only = user_data(None, Some("#cloud-config\nruncmd: [ls]\n"), &[], FILE).unwrap();
        assert_eq!(own_only, "#cloud-config\nruncmd: [ls]\n", "without a lease the user's data goes as given");
    }
}

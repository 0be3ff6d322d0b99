//! The lease backstop a VM carries itself: user data that arms a shutdown at `expires-at`
//! plus a grace, so a VM whose control plane is gone still ends. Combined with the launch's
//! `InstanceInitiatedShutdownBehavior` (`terminate` when `on_expiry = delete`, else `stop`),
//! the guest's own `shutdown` stops or terminates the instance.
//!
//! The timer is a cloud-init `bootcmd` (it runs at **every** boot, so a VM started again after
//! `extend` re-arms with the user data of that start). It starts a small loop that checks the
//! deadline each minute: the deadline is read from the instance's `lapse:expires-at` tag
//! through the instance metadata service when tags are exposed there, else the one written
//! into the user data at launch is used.
//!
//! The user's own user data is kept: both are sent as one MIME multipart document
//! (`multipart/mixed`), which cloud-init splits into its parts.

/// Extra time after `expires-at` before the guest shuts itself down: the control plane's own
/// stop comes first when it is up.
pub const GRACE_SECS: i64 = 15 * 60;

/// The cloud-config part that arms the backstop for `deadline_unix` (seconds).
pub fn cloud_config(deadline_unix: i64) -> String {
    let grace = GRACE_SECS;
    format!(
        "#cloud-config\n\
         # Lapse lease backstop: shuts this VM down at expires-at + {grace}s.\n\
         bootcmd:\n\
         \x20 - [sh, -c, 'nohup sh -c \"d={deadline_unix}; while :; do \
         t=$(curl -sf -m 5 http://169.254.169.254/latest/meta-data/tags/instance/lapse:expires-at 2>/dev/null); \
         [ -n \\\"$t\\\" ] && d=$(date -d \\\"$t\\\" +%s 2>/dev/null || echo $d); \
         [ $(date +%s) -ge $((d + {grace})) ] && shutdown -h now; sleep 60; done\" >/dev/null 2>&1 &']\n"
    )
}

/// The whole user data: the backstop, then the user's own (if any), as MIME multipart
/// ([`crate::cloud_init`]).
pub fn user_data(deadline_unix: Option<i64>, own: Option<&str>) -> Option<String> {
    let own = own.filter(|s| !s.is_empty());
    match deadline_unix {
        Some(deadline) => Some(crate::cloud_init::with_backstop("text/cloud-config", &cloud_config(deadline), own)),
        None => own.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_parts_survive() {
        let own = "#!/bin/sh\necho hello\n";
        let all = user_data(Some(1_900_000_000), Some(own)).unwrap();
        assert!(all.starts_with("Content-Type: multipart/mixed"));
        assert!(all.contains("text/cloud-config"));
        assert!(all.contains("text/x-shellscript"));
        assert!(all.contains("echo hello"));
        assert!(all.contains("d=1900000000"));
        assert!(all.contains(&format!("+ {GRACE_SECS}")));
        assert!(all.trim_end().ends_with("--"));
    }

    #[test]
    fn nothing_when_no_lease_and_no_user_data() {
        assert_eq!(user_data(None, None), None);
        assert_eq!(user_data(None, Some("")), None);
        let own_only = user_data(None, Some("#cloud-config\nruncmd: [ls]\n")).unwrap();
        assert_eq!(own_only, "#cloud-config\nruncmd: [ls]\n", "without a lease the user's data goes as given");
    }
}

//! The lease backstop on Scaleway: the shared one ([`crate::cloud_init`]), reading its
//! deadline from the server's `lapse:expires-at=<Unix seconds>` tag through the metadata API
//! (`http://169.254.42.42/conf`) and from the deadline file, and powering off with
//! `shutdown -P` at the lease's end plus the grace; with the SSH keys in the same part.
//!
//! Note: an in-guest power-off leaves a Scaleway server `stopped in place` (the slot is kept),
//! not deleted; the sweep (or `delete`) removes it once Lapse runs again.

use lapse_core::Millis;

use crate::cloud_init::{self, Backstop, Metadata};

/// The tag prefix that carries the lease's end (Unix seconds) for the guest to read.
pub const EXPIRES_TAG: &str = "lapse:expires-at=";

/// The tag for a lease ending at `expires_at`.
pub fn expires_tag(expires_at: Millis) -> String {
    format!("{EXPIRES_TAG}{}", expires_at.div_euclid(1000))
}

/// The user data to upload: the user's own, then Lapse's part (the keys, and the backstop
/// when there is an expiry), as one multipart document. With neither, the user's as given.
pub fn user_data(
    user: Option<&str>,
    expires_at: Option<Millis>,
    grace_secs: u64,
    ssh_keys: &[String],
    deadline_file: &str,
) -> Option<String> {
    let backstop = expires_at.map(|at| Backstop {
        expires_at: at.div_euclid(1000),
        grace_secs: i64::try_from(grace_secs).unwrap_or(i64::MAX),
        deadline_file,
        metadata: Metadata::ScalewayConf,
        power_off: "shutdown -P now",
    });
    cloud_init::user_data(backstop.as_ref(), ssh_keys, user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_expiry_no_keys_keeps_user_data() {
        assert_eq!(user_data(Some("#!/bin/sh\n"), None, 60, &[], "/f").as_deref(), Some("#!/bin/sh\n"));
        assert_eq!(user_data(None, None, 60, &[], "/f"), None);
    }

    #[test]
    fn expiry_arms_the_shared_backstop_and_keeps_the_users_part() {
        let out = user_data(
            Some("#cloud-config\npackages: [git]\n"),
            Some(1_800_000_000_000),
            600,
            &["ssh-ed25519 AAAA lapse".into()],
            "/var/lib/lapse/expires-at",
        )
        .unwrap();
        assert!(out.starts_with("Content-Type: multipart/mixed"));
        assert!(out.contains("if [ 1800000000 -gt"), "{out}");
        assert!(out.contains("g=600") && out.contains("shutdown -P now") && out.contains("169.254.42.42/conf"));
        assert!(out.contains("packages: [git]") && out.contains("\"ssh-ed25519 AAAA lapse\""));
        assert_eq!(expires_tag(1_800_000_000_999), "lapse:expires-at=1800000000");
    }

    /// The guest's reading of `/conf` finds the tag, quoted or not.
    #[test]
    fn the_metadata_tag_is_read_from_conf() {
        let b = Backstop {
            expires_at: 0,
            grace_secs: 0,
            deadline_file: "/f",
            metadata: Metadata::ScalewayConf,
            power_off: "",
        };
        let script = cloud_init::backstop_loop(&b);
        let pipeline = script.lines().find(|l| l.contains("169.254.42.42")).unwrap();
        let parse = pipeline
            .replace("curl -sf -m 5 http://169.254.42.42/conf 2>/dev/null", "cat")
            .replace("m=$(", "")
            .trim_end_matches(')')
            .to_owned();
        for conf in [
            "TAGS=2\nTAGS_0=lapse:environment=e\nTAGS_1=lapse:expires-at=1700000000\n",
            "TAGS_1='lapse:expires-at=1700000000'\n",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&parse)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(conf.as_bytes())?;
                    c.wait_with_output()
                })
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1700000000", "{conf:?} {parse}");
        }
    }
}

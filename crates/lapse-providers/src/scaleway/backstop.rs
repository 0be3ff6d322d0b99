//! The lease backstop: user data that powers the server off by itself at `expires_at` plus a
//! grace period, so a server outlives its lease by at most the grace even when Lapse is down.
//!
//! The result is a cloud-init MIME multipart (`multipart/mixed`): first the backstop, a
//! `text/cloud-config` whose `bootcmd` (run on **every** boot, so a restarted server re-arms it)
//! schedules `shutdown -P` at the deadline, or powers off at once when the deadline has passed;
//! then the user's own user data as its own part, unchanged (its type told by its first line:
//! `#cloud-config`, `#!`, `#include`, `#cloud-boothook`, or a MIME document of its own, which
//! cloud-init reads as a nested part). Without an expiry the user data goes as given.
//!
//! Note: an in-guest power-off leaves a Scaleway server `stopped in place` (the slot is kept),
//! not deleted; the sweep (or `delete`) removes it once Lapse runs again.

use lapse_core::Millis;

const BOUNDARY: &str = "==lapse-backstop-6f1c2a==";

/// The user data to upload: the backstop (when there is an expiry) and the user's.
pub fn user_data(user: Option<&str>, expires_at: Option<Millis>, grace_secs: u64) -> Result<Option<String>, String> {
    let Some(expires_at) = expires_at else { return Ok(user.map(str::to_owned)) };
    let deadline = expires_at.div_euclid(1000).saturating_add(i64::try_from(grace_secs).unwrap_or(i64::MAX));
    let mut out = format!(
        "Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\nMIME-Version: 1.0\n\n--{BOUNDARY}\n\
         Content-Type: text/cloud-config; charset=\"us-ascii\"\nMIME-Version: 1.0\n\
         Content-Disposition: attachment; filename=\"lapse-backstop.cfg\"\n\n{}\n",
        backstop_cloud_config(deadline)
    );
    if let Some(user) = user {
        if user.contains(BOUNDARY) {
            return Err("spec.user_data contains the backstop's MIME boundary".into());
        }
        let trimmed = user.trim_start();
        if trimmed.to_ascii_lowercase().starts_with("content-type:") {
            // A MIME document already: its own headers head the part.
            out.push_str(&format!("--{BOUNDARY}\n{user}\n"));
        } else {
            out.push_str(&format!(
                "--{BOUNDARY}\nContent-Type: {}; charset=\"utf-8\"\nMIME-Version: 1.0\n\
                 Content-Disposition: attachment; filename=\"user-data\"\n\n{user}\n",
                part_type(trimmed)
            ));
        }
    }
    out.push_str(&format!("--{BOUNDARY}--\n"));
    Ok(Some(out))
}

/// The backstop alone: a `bootcmd` that arms `shutdown -P` for `deadline` (Unix seconds).
pub fn backstop_cloud_config(deadline: i64) -> String {
    format!(
        "#cloud-config\n# lapse backstop: power off at the lease's end plus the grace, even if Lapse is down\n\
         bootcmd:\n  - [ sh, -c, 'd={deadline}; n=$(date +%s); m=$(( (d - n + 59) / 60 )); \
         if [ \"$m\" -le 0 ]; then shutdown -P now; else shutdown -P +$m; fi' ]\n"
    )
}

fn part_type(first: &str) -> &'static str {
    if first.starts_with("#cloud-config") {
        "text/cloud-config"
    } else if first.starts_with("#!") {
        "text/x-shellscript"
    } else if first.starts_with("#include") {
        "text/x-include-url"
    } else if first.starts_with("#cloud-boothook") {
        "text/cloud-boothook"
    } else {
        "text/plain"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_expiry_keeps_user_data() {
        assert_eq!(user_data(Some("#!/bin/sh\n"), None, 60).unwrap().as_deref(), Some("#!/bin/sh\n"));
        assert_eq!(user_data(None, None, 60).unwrap(), None);
    }

    #[test]
    fn expiry_arms_a_shutdown_and_keeps_the_users_part() {
        let out = user_data(Some("#cloud-config\npackages: [git]\n"), Some(1_800_000_000_000), 600).unwrap().unwrap();
        assert!(out.starts_with("Content-Type: multipart/mixed"));
        assert!(out.contains("d=1800000600;"), "{out}");
        assert!(out.contains("shutdown -P"));
        assert!(out.contains("Content-Type: text/cloud-config; charset=\"utf-8\""));
        assert!(out.contains("packages: [git]"));
        assert!(out.trim_end().ends_with(&format!("--{BOUNDARY}--")));
    }

    #[test]
    fn a_script_is_a_shellscript_part_and_the_boundary_is_refused() {
        let out = user_data(Some("#!/bin/sh\necho hi\n"), Some(0), 0).unwrap().unwrap();
        assert!(out.contains("text/x-shellscript"));
        assert!(user_data(Some(BOUNDARY), Some(0), 0).is_err());
    }
}

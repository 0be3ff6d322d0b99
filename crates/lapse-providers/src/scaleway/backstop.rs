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

/// The user data to upload: the backstop (when there is an expiry) and the user's, as one
/// multipart document ([`crate::cloud_init`]).
pub fn user_data(user: Option<&str>, expires_at: Option<Millis>, grace_secs: u64) -> Option<String> {
    let Some(expires_at) = expires_at else { return user.map(str::to_owned) };
    let deadline = expires_at.div_euclid(1000).saturating_add(i64::try_from(grace_secs).unwrap_or(i64::MAX));
    Some(crate::cloud_init::with_backstop("text/cloud-config", &backstop_cloud_config(deadline), user))
}

/// The backstop alone: a `bootcmd` that arms `shutdown -P` for `deadline` (Unix seconds).
pub fn backstop_cloud_config(deadline: i64) -> String {
    format!(
        "#cloud-config\n# lapse backstop: power off at the lease's end plus the grace, even if Lapse is down\n\
         bootcmd:\n  - [ sh, -c, 'd={deadline}; n=$(date +%s); m=$(( (d - n + 59) / 60 )); \
         if [ \"$m\" -le 0 ]; then shutdown -P now; else shutdown -P +$m; fi' ]\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_expiry_keeps_user_data() {
        assert_eq!(user_data(Some("#!/bin/sh\n"), None, 60).as_deref(), Some("#!/bin/sh\n"));
        assert_eq!(user_data(None, None, 60), None);
    }

    #[test]
    fn expiry_arms_a_shutdown_and_keeps_the_users_part() {
        let out = user_data(Some("#cloud-config\npackages: [git]\n"), Some(1_800_000_000_000), 600).unwrap();
        assert!(out.starts_with("Content-Type: multipart/mixed"));
        assert!(out.contains("d=1800000600;"), "{out}");
        assert!(out.contains("shutdown -P"));
        assert!(out.contains("packages: [git]"));
    }
}

//! `exec` over SSH into cloud VMs (feature `ssh`, which every cloud feature turns on), with
//! the pure-Rust `russh` client.
//!
//! **Contract.**
//! - **One key pair per environment.** [`KeyStore::ensure`] makes an ed25519 pair the first
//!   time an environment is provisioned and keeps the private key in a `0600` file under the
//!   server's data dir (`<data dir>/ssh/<environment id>.key`), written atomically (temp file,
//!   fsync, hard link into place, fsync of the directory), so it survives a restart and a
//!   `kill -9`, and two racing provisions agree on one key. [`KeyStore::remove`] deletes it
//!   (and the remembered host key) once the environment's VM is deleted.
//! - The public key goes into the VM through cloud-init's `ssh_authorized_keys`
//!   ([`crate::cloud_init::lapse_part`]), beside the spec's own `cloud.ssh_public_keys`.
//! - **The private key never leaves the key file**: no `Debug`, `Display`, error, log line,
//!   event, API answer or user data holds it ([`SshError`] says what failed, never with key
//!   material; [`KeyStore`]'s `Debug` shows its directory only).
//! - **Host keys: trust on first use**, remembered per environment
//!   (`<environment id>.host`); a different key later is refused
//!   ([`SshError::HostKeyChanged`]) and never overwritten.
//! - **Commands are passed word by word**: each `cmd` element is single-quoted for the remote
//!   POSIX shell ([`quote::command_line`]), so spaces, quotes, `;`, `$()` and newlines reach
//!   the program as they were given.
//! - **Bounded in time and memory.** The whole exec (connect, authenticate, run) is bounded
//!   by its timeout; while the VM boots, a refused or unanswered connection (and a refused key,
//!   before cloud-init has written it) is retried within that timeout. A command still running
//!   at the timeout is abandoned (`timed_out`, its output so far). stdout and stderr are kept
//!   in a [`crate::CappedOutput`] each. A server that closes mid-stream is an error that says
//!   so, with no exit code invented.

mod client;
mod keys;
pub mod quote;
#[cfg(feature = "ssh-testing")]
pub mod testing;

pub use client::{Target, exec, run_line, write_deadline};
pub use keys::KeyStore;

use std::path::PathBuf;
use std::time::Duration;

/// Where the lease backstop in the guest reads its deadline (Unix seconds), by default.
pub const DEFAULT_DEADLINE_FILE: &str = "/var/lib/lapse/expires-at";

/// How the cloud providers reach their VMs over SSH.
#[derive(Clone, Debug)]
pub struct SshConfig {
    /// Where the environments' keys are kept; `None`: no key is made and `exec` over SSH is
    /// unavailable (a provider built without a data dir).
    pub key_dir: Option<PathBuf>,
    /// The VMs' SSH port.
    pub port: u16,
    /// The login user; `None`: the cloud's default (`ubuntu` on AWS and OVH images, `root`
    /// on Scaleway's).
    pub user: Option<String>,
    /// The longest one connection attempt (TCP plus handshake) may take.
    pub connect_timeout: Duration,
    /// Between two connection attempts while a VM boots.
    pub retry_pause: Duration,
    /// The file the guest's backstop reads its deadline from (see [`crate::cloud_init`]).
    pub deadline_file: String,
    /// Most bytes kept of each of stdout and stderr.
    pub max_output: usize,
    /// The longest moving a running guest's deadline (`rearm`) may take over SSH.
    pub rearm_timeout: Duration,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            key_dir: None,
            port: 22,
            user: None,
            connect_timeout: Duration::from_secs(10),
            retry_pause: Duration::from_secs(2),
            deadline_file: DEFAULT_DEADLINE_FILE.to_owned(),
            max_output: crate::MAX_OUTPUT_BYTES,
            rearm_timeout: Duration::from_secs(30),
        }
    }
}

impl SshConfig {
    /// Keys under `key_dir`, the rest by default.
    pub fn in_dir(key_dir: impl Into<PathBuf>) -> Self {
        SshConfig { key_dir: Some(key_dir.into()), ..Default::default() }
    }

    /// Keys under `key_dir`, and `LAPSE_SSH_PORT`, `LAPSE_SSH_USER` and
    /// `LAPSE_SSH_DEADLINE_FILE` from a variable reader when set. `Err` names a bad value.
    pub fn from_vars(key_dir: impl Into<PathBuf>, var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut cfg = Self::in_dir(key_dir);
        let get = |k: &str| var(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if let Some(port) = get("LAPSE_SSH_PORT") {
            cfg.port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("LAPSE_SSH_PORT {port:?} is not a port (1-65535)"))?;
        }
        if let Some(user) = get("LAPSE_SSH_USER") {
            if !lapse_core::validate::is_unix_user(&user) {
                return Err(format!("LAPSE_SSH_USER {user:?} is not a user name"));
            }
            cfg.user = Some(user);
        }
        if let Some(file) = get("LAPSE_SSH_DEADLINE_FILE") {
            if !valid_guest_path(&file) {
                return Err(format!("LAPSE_SSH_DEADLINE_FILE {file:?} is not an absolute path of plain characters"));
            }
            cfg.deadline_file = file;
        }
        Ok(cfg)
    }

    /// [`SshConfig::from_vars`] on the process environment.
    pub fn from_env(key_dir: impl Into<PathBuf>) -> Result<Self, String> {
        Self::from_vars(key_dir, |k| std::env::var(k).ok())
    }

    /// This config with a provider's own user and port (its `[providers.NAME]` table's
    /// `ssh_user`, `ssh_port`) over the server-wide ones.
    pub fn with_overrides(mut self, user: Option<&str>, port: Option<u16>) -> Self {
        if let Some(user) = user {
            self.user = Some(user.to_owned());
        }
        if let Some(port) = port {
            self.port = port;
        }
        self
    }

    /// The user to log in as on a cloud whose images default to `default_user`.
    pub fn user_or<'a>(&'a self, default_user: &'a str) -> &'a str {
        self.user.as_deref().unwrap_or(default_user)
    }
}

/// An absolute path that is safe inside a shell script and a YAML scalar unquoted.
pub(crate) fn valid_guest_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 200
        && !path.contains("..")
        && path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'))
}

/// An SSH failure. `Display` says what failed; it never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("no SSH key directory is configured, so exec over SSH is unavailable")]
    NoKeyDir,
    #[error("environment id {0:?} cannot name a key file")]
    BadEnvironmentId(String),
    #[error("no SSH key for environment {0} (its VM was made without one)")]
    NoKey(String),
    #[error("the SSH key store at {path}: {source}")]
    Store { path: PathBuf, source: std::io::Error },
    #[error("the SSH key file {path} is not a key Lapse wrote")]
    BadKeyFile { path: PathBuf },
    #[error("could not make an SSH key")]
    KeyGeneration,
    #[error(
        "the host key of {address} changed since the first connection to this environment ({remembered} then, {offered} now): refused"
    )]
    HostKeyChanged { address: String, remembered: String, offered: String },
    #[error("could not reach {address} within {timeout:?}: {last}")]
    Unreachable { address: String, timeout: Duration, last: String },
    #[error("{address}: the connection closed before the command ended")]
    Closed { address: String },
    #[error("{address}: {message}")]
    Protocol { address: String, message: String },
    #[error("cmd[{index}] holds a NUL byte, which no remote command line can carry")]
    NulInCommand { index: usize },
}

impl SshError {
    /// As a provider error of `provider`: what a later attempt may fix is retryable.
    pub fn into_provider(self, provider: &'static str, op: &'static str) -> crate::ProviderError {
        match self {
            SshError::Unreachable { .. } | SshError::Closed { .. } | SshError::Protocol { .. } => {
                crate::ProviderError::Failed { provider, op, message: self.to_string() }
            }
            SshError::Store { .. } => crate::ProviderError::Unavailable { provider, message: self.to_string() },
            _ => crate::ProviderError::Permanent { provider, message: format!("{op}: {self}") },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        let cfg = SshConfig::from_vars("/d", vars(&[])).unwrap();
        assert_eq!((cfg.port, cfg.user.as_deref(), cfg.deadline_file.as_str()), (22, None, DEFAULT_DEADLINE_FILE));
        let cfg = SshConfig::from_vars(
            "/d",
            vars(&[("LAPSE_SSH_PORT", "2222"), ("LAPSE_SSH_USER", "admin"), ("LAPSE_SSH_DEADLINE_FILE", "/tmp/x")]),
        )
        .unwrap();
        assert_eq!((cfg.port, cfg.user_or("root"), cfg.deadline_file.as_str()), (2222, "admin", "/tmp/x"));
        for bad in [
            &[("LAPSE_SSH_PORT", "0")][..],
            &[("LAPSE_SSH_PORT", "70000")],
            &[("LAPSE_SSH_USER", "root; rm -rf /")],
            &[("LAPSE_SSH_DEADLINE_FILE", "relative")],
            &[("LAPSE_SSH_DEADLINE_FILE", "/x/$(reboot)")],
            &[("LAPSE_SSH_DEADLINE_FILE", "/x/../etc/passwd")],
        ] {
            let owned: &'static [(&'static str, &'static str)] = bad;
            assert!(SshConfig::from_vars("/d", vars(owned)).is_err(), "{bad:?}");
        }
    }
}

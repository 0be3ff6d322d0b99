//! The environments' SSH keys and remembered host keys, one pair of files per environment in
//! one directory: `<id>.key` (the private key, OpenSSH format, mode `0600`) and `<id>.host`
//! (the VM's host key, OpenSSH public format, taken on first use).
//!
//! Files appear whole or not at all: each is written to a temporary name, fsynced, and
//! hard-linked to its final name (which fails if another writer got there first: that
//! writer's file is kept and read), then the directory is fsynced.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey, PublicKey};

use super::SshError;

/// The key directory. Cheap to clone.
#[derive(Clone)]
pub struct KeyStore {
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").field("dir", &self.dir).finish()
    }
}

impl KeyStore {
    /// The store in `dir` (made when the first key is); `None`: no keys at all.
    pub fn new(dir: Option<PathBuf>) -> Self {
        KeyStore { dir }
    }

    /// Whether keys can be kept (a directory is configured).
    pub fn is_enabled(&self) -> bool {
        self.dir.is_some()
    }

    /// The environment's public key (OpenSSH one-line format), making the pair if there is
    /// none yet.
    pub fn ensure(&self, environment_id: &str) -> Result<String, SshError> {
        let path = self.path(environment_id, "key")?;
        if let Some(key) = self.load(environment_id)? {
            return public_line(&key);
        }
        let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|_| SshError::KeyGeneration)?;
        key.set_comment(format!("lapse-{environment_id}"));
        let text = key.to_openssh(LineEnding::LF).map_err(|_| SshError::KeyGeneration)?;
        if !write_new(&path, text.as_bytes())? {
            // Another provision of the same environment wrote first: its key is the one.
            return self
                .load(environment_id)?
                .ok_or(SshError::NoKey(environment_id.to_owned()))
                .and_then(|k| public_line(&k));
        }
        public_line(&key)
    }

    /// [`KeyStore::ensure`] off the runtime's threads: it syncs the new file and its
    /// directory to disk, which would stall every task on the thread meanwhile.
    pub async fn ensure_off_thread(&self, environment_id: &str) -> Result<String, SshError> {
        let (store, id) = (self.clone(), environment_id.to_owned());
        tokio::task::spawn_blocking(move || store.ensure(&id)).await.unwrap_or(Err(SshError::KeyGeneration))
    }

    /// The environment's private key, if it has one.
    pub fn load(&self, environment_id: &str) -> Result<Option<PrivateKey>, SshError> {
        let path = self.path(environment_id, "key")?;
        match std::fs::read_to_string(&path) {
            Ok(text) => PrivateKey::from_openssh(text.as_bytes()).map(Some).map_err(|_| SshError::BadKeyFile { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SshError::Store { path, source }),
        }
    }

    /// The host key remembered for the environment, if any.
    pub fn host_key(&self, environment_id: &str) -> Result<Option<PublicKey>, SshError> {
        let path = self.path(environment_id, "host")?;
        match std::fs::read_to_string(&path) {
            Ok(text) => PublicKey::from_openssh(text.trim()).map(Some).map_err(|_| SshError::BadKeyFile { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SshError::Store { path, source }),
        }
    }

    /// Remembers the host key seen first. `Ok(false)`: another was remembered meanwhile
    /// (the caller compares again).
    pub fn remember_host_key(&self, environment_id: &str, key: &PublicKey) -> Result<bool, SshError> {
        let path = self.path(environment_id, "host")?;
        let line = key.to_openssh().map_err(|_| SshError::BadKeyFile { path: path.clone() })?;
        write_new(&path, format!("{line}\n").as_bytes())
    }

    /// Forgets the environment's keys (its VM is deleted). Succeeds when there are none.
    pub fn remove(&self, environment_id: &str) -> Result<(), SshError> {
        if self.dir.is_none() {
            return Ok(());
        }
        for kind in ["key", "host"] {
            let path = self.path(environment_id, kind)?;
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(SshError::Store { path, source }),
            }
        }
        Ok(())
    }

    /// The file of one environment, refusing an id that is not a plain file name.
    fn path(&self, environment_id: &str, kind: &str) -> Result<PathBuf, SshError> {
        let dir = self.dir.as_ref().ok_or(SshError::NoKeyDir)?;
        let plain = !environment_id.is_empty()
            && environment_id.len() <= 128
            && !environment_id.starts_with('.')
            && environment_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !plain {
            return Err(SshError::BadEnvironmentId(environment_id.to_owned()));
        }
        Ok(dir.join(format!("{environment_id}.{kind}")))
    }
}

fn public_line(key: &PrivateKey) -> Result<String, SshError> {
    key.public_key().to_openssh().map_err(|_| SshError::KeyGeneration)
}

/// Writes `path` whole, unless it exists: `Ok(false)` then, and the existing file is kept.
fn write_new(path: &Path, bytes: &[u8]) -> Result<bool, SshError> {
    let store = |source| SshError::Store { path: path.to_owned(), source };
    // `path` comes from `KeyStore::path`, which always joins a file name to the directory.
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(store)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(store)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}-{}",
        std::process::id(),
        rand::random::<u64>(),
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(store(e)),
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(store)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_kept_private_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(Some(dir.path().join("ssh")));
        let public = store.ensure("env-1").unwrap();
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        assert_eq!(store.ensure("env-1").unwrap(), public, "the same key on a second provision");
        // Another store on the same directory (a restarted server) finds it.
        let again = KeyStore::new(Some(dir.path().join("ssh")));
        assert_eq!(again.ensure("env-1").unwrap(), public);
        let file = dir.path().join("ssh/env-1.key");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let private = std::fs::read_to_string(&file).unwrap();
        assert!(private.contains("BEGIN OPENSSH PRIVATE KEY"));
        assert!(!format!("{store:?}").contains("PRIVATE"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        store.remove("env-1").unwrap();
        assert!(!file.exists());
        store.remove("env-1").unwrap();
        assert!(store.load("env-1").unwrap().is_none());
    }

    #[test]
    fn hostile_ids_name_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(Some(dir.path().to_owned()));
        for bad in ["", "../x", "a/b", ".hidden", "x\0y", &"a".repeat(200)] {
            assert!(matches!(store.ensure(bad), Err(SshError::BadEnvironmentId(_))), "{bad:?}");
        }
        assert!(matches!(KeyStore::new(None).ensure("e"), Err(SshError::NoKeyDir)));
    }

    #[test]
    fn the_first_host_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(Some(dir.path().to_owned()));
        let a = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let b = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        assert!(store.host_key("e").unwrap().is_none());
        assert!(store.remember_host_key("e", a.public_key()).unwrap());
        assert!(!store.remember_host_key("e", b.public_key()).unwrap(), "never overwritten");
        assert_eq!(store.host_key("e").unwrap().as_ref(), Some(a.public_key()));
    }
}

//! What keeps a process environment from the host, the server and other environments.
//!
//! - **Its own uid and gid**, a bare id from a reserved range ([`UID_BASE`], [`UID_SLOTS`]
//!   ids; no passwd entry) with no supplementary groups. An id is taken by creating
//!   `/run/lapse/uids/<uid>` exclusively (host-wide, so two servers never share one) and is
//!   recorded in the environment's directory (`uid`), so it stays the same across restarts;
//!   `delete` gives it back.
//! - **New mount, PID, IPC and UTS namespaces.** In its mount namespace (private
//!   propagation) the server's data dir is covered by an empty tmpfs, and only the
//!   environment's own work dir (`0700`, its uid's) and user-data file (read-only) are bound
//!   back at their usual paths; `/tmp`, `/var/tmp` and `/dev/shm` are fresh tmpfs. So the store
//!   file, other environments' directories and every log are not there to be read or written.
//!   A fresh `/proc` shows only its own PID namespace: the server and other environments'
//!   processes are invisible and cannot be signalled. `no_new_privs` is set, so setuid
//!   programs grant nothing.
//! - Defence in depth on the host side: the provider's directory and each environment's
//!   directory are `0700 root`, logs `0600 root`.
//!
//! User namespaces are not used: a bare uid from the host's range, set by root, gives the
//! same separation without mapping files, and this machine kind runs the server as root.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use serde::{Deserialize, Serialize};

/// The first uid (and gid) environments get.
pub const UID_BASE: u32 = 0x4C41_0000;
/// How many ids the range holds.
pub const UID_SLOTS: u32 = 0x1_0000;
const UID_LOCKS: &str = "/run/lapse/uids";
/// Where an environment's uid is recorded in its directory.
const UID_FILE: &str = "uid";

/// How a supervisor sets up an environment's namespaces (see the module doc).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Jail {
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    /// Directories covered by an empty tmpfs (the server's data dir).
    pub hide: Vec<PathBuf>,
    /// Directories that get a fresh tmpfs of their own (`/tmp`, ...).
    pub private: Vec<PathBuf>,
    /// What the environment sees of the hidden directories: bound back at the same path.
    pub binds: Vec<Bind>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bind {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Directories every environment gets a tmpfs of its own for.
pub const PRIVATE_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

/// Whether this process may isolate environments (it is root), or why not.
pub fn available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the server does not run as root, so it cannot give environments a uid of their own".into());
    }
    Ok(())
}

/// The uid of the environment whose directory is `dir`: the recorded one, or a free one from
/// the range (taken host-wide).
pub fn uid_for(dir: &Path, environment_id: &str) -> io::Result<u32> {
    if let Ok(text) = fs::read_to_string(dir.join(UID_FILE))
        && let Ok(uid) = text.trim().parse::<u32>()
    {
        // After a reboot `/run` is empty: take the lock again (an id someone took meanwhile
        // stays shared, which the namespaces make harmless).
        let _ = take(uid, dir);
        return Ok(uid);
    }
    fs::DirBuilder::new().recursive(true).mode(0o700).create(UID_LOCKS)?;
    let start = environment_id.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % UID_SLOTS;
    for n in 0..UID_SLOTS {
        let uid = UID_BASE + (start + n) % UID_SLOTS;
        if take(uid, dir)? {
            let mut file =
                OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(dir.join(UID_FILE))?;
            file.write_all(uid.to_string().as_bytes())?;
            return Ok(uid);
        }
    }
    Err(io::Error::other("every uid of the environments' range is taken"))
}

/// Takes `uid` for `dir`; true if it is now (or already was) `dir`'s.
fn take(uid: u32, dir: &Path) -> io::Result<bool> {
    let lock = Path::new(UID_LOCKS).join(uid.to_string());
    let owner = dir.to_string_lossy().into_owned();
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&lock) {
        Ok(mut file) => {
            file.write_all(owner.as_bytes())?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let mut held = String::new();
            File::open(&lock)?.read_to_string(&mut held)?;
            if held == owner {
                return Ok(true);
            }
            // Its holder's directory is gone without giving it back (a crash): take it over.
            if !held.is_empty() && !Path::new(&held).exists() {
                fs::write(&lock, owner.as_bytes())?;
                return Ok(true);
            }
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Gives back the uid recorded in `dir`.
pub fn release_uid(dir: &Path) {
    let Ok(text) = fs::read_to_string(dir.join(UID_FILE)) else { return };
    let lock = Path::new(UID_LOCKS).join(text.trim());
    if fs::read_to_string(&lock).is_ok_and(|held| held == dir.to_string_lossy()) {
        let _ = fs::remove_file(lock);
    }
}

/// Makes `path` a directory with exactly `mode`, owned by `uid:gid` when given.
pub fn secure_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(mode).create(path)?;
    if let Some((uid, gid)) = owner {
        nix::unistd::chown(path, Some(uid.into()), Some(gid.into())).map_err(io::Error::from)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Enters new namespaces and builds the environment's view of the filesystem. Runs in the
/// supervisor, single-threaded, before it starts the environment's init (which mounts the
/// fresh `/proc`).
pub fn enter(jail: &Jail) -> Result<(), String> {
    let step = |what: &str, e: nix::Error| format!("{what}: {e}");
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| step("unshare", e))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| step("making mounts private", e))?;
    nix::unistd::sethostname(&jail.hostname).map_err(|e| step("sethostname", e))?;
    // Handles on what is bound back, taken before what holds them is covered.
    let mut kept = Vec::new();
    for bind in &jail.binds {
        let file = File::open(&bind.path).map_err(|e| format!("opening {}: {e}", bind.path.display()))?;
        kept.push((file, bind));
    }
    let tmpfs = |dir: &Path, mode: &str| {
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("mode={mode}").as_str()),
        )
        .map_err(|e| format!("mounting a tmpfs on {}: {e}", dir.display()))
    };
    for dir in &jail.private {
        if dir.is_dir() {
            tmpfs(dir, "1777")?;
        }
    }
    for dir in &jail.hide {
        if dir.is_dir() {
            tmpfs(dir, "0755")?;
        }
    }
    for (file, bind) in &kept {
        let is_dir = file.metadata().map(|m| m.is_dir()).unwrap_or(false);
        if let Some(parent) = bind.path.parent() {
            fs::DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(|e| e.to_string())?;
        }
        if is_dir {
            fs::DirBuilder::new().recursive(true).create(&bind.path).map_err(|e| e.to_string())?;
        } else if !bind.path.exists() {
            File::create(&bind.path).map_err(|e| e.to_string())?;
        }
        let source = format!("/proc/self/fd/{}", file.as_raw_fd());
        mount(Some(source.as_str()), &bind.path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| step(&format!("binding {}", bind.path.display()), e))?;
        if bind.read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
            mount(None::<&str>, &bind.path, None::<&str>, flags, None::<&str>)
                .map_err(|e| step(&format!("making {} read-only", bind.path.display()), e))?;
        }
    }
    Ok(())
}

/// Mounts the fresh `/proc` of the environment's PID namespace (run by its init, the
/// namespace's first process).
pub fn mount_proc() -> Result<(), String> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), flags, None::<&str>).map_err(|e| format!("mounting /proc: {e}"))
}

/// Joins the namespaces of the environment whose supervisor is `leader` (for `exec`). The
/// caller must be single-threaded; children it starts afterwards are in the environment's
/// PID namespace.
pub fn join(leader: i32) -> Result<(), String> {
    let open = |name: &str| {
        File::open(format!("/proc/{leader}/ns/{name}")).map_err(|e| format!("opening the {name} namespace: {e}"))
    };
    // All opened first: once in the mount namespace, the host's /proc is gone.
    let namespaces = [
        (open("ipc")?, CloneFlags::CLONE_NEWIPC),
        (open("uts")?, CloneFlags::CLONE_NEWUTS),
        (open("pid_for_children")?, CloneFlags::CLONE_NEWPID),
        (open("mnt")?, CloneFlags::CLONE_NEWNS),
    ];
    for (file, kind) in &namespaces {
        nix::sched::setns(file, *kind).map_err(|e| format!("setns {kind:?}: {e}"))?;
    }
    Ok(())
}

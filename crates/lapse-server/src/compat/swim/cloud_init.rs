//! Reading a request's `CloudInitFile`: only beneath one directory, only regular files, only
//! so many bytes, and never on the async runtime.
//!
//! The directory is mandatory (`SWIM_CLOUD_INIT_DIR`, default `<data dir>/cloud-init`); a
//! message names a file relative to it (an absolute path is taken only if it lies inside it).
//! As in the seed, the file is optional: a request without one (or with `""`) reads nothing
//! and takes its inline `CloudInitContent`, if any ([`super::request::provision`] bounds it
//! as a file is bounded here).
//! The contract, each refusal a [`CloudInitError`] that dead-letters the message:
//! - **No escape.** A `..` component is refused outright. The file is opened with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` from a descriptor of the directory, so
//!   no symlink anywhere on the path (absolute, or relative climbing out) and no `/proc`
//!   magic link can lead outside; symlinks that stay inside work. Where the kernel lacks
//!   `openat2`, the path is walked component by component with `O_NOFOLLOW` (then no symlink
//!   is followed at all).
//! - **No blocking, no devices.** The file is opened `O_NONBLOCK | O_NOCTTY` (a FIFO cannot
//!   block the open) and `fstat`ed: anything but a regular file is refused unread.
//! - **Bounded.** At most the user-data limit plus one byte is read (more: refused), and not
//!   UTF-8 is refused.
//! - **Off the runtime, with a deadline.** The whole read runs on a blocking thread and is
//!   given up after [`READ_TIMEOUT`] (a hung filesystem stalls that thread, not the server).

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use lapse_core::validate::MAX_USER_DATA;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat, openat2};
use nix::sys::stat::Mode;

/// How long reading one file may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `CloudInitFile` accepted (Linux's `PATH_MAX`).
const MAX_PATH: usize = 4096;
/// How much of a refused path a reason repeats.
const SHOWN_PATH: usize = 200;

/// Why a `CloudInitFile` was not read.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CloudInitError {
    #[error("CloudInitFile is empty")]
    Empty,
    #[error("CloudInitFile is {0} bytes long, over {MAX_PATH}")]
    TooLong(usize),
    #[error("CloudInitFile {0:?} contains a NUL byte")]
    Nul(String),
    #[error("CloudInitFile {0:?} contains `..`: files are named beneath the cloud-init dir")]
    DotDot(String),
    #[error("CloudInitFile {file:?} is outside the cloud-init dir {dir}")]
    Outside { file: String, dir: String },
    #[error("CloudInitFile {0:?} leads outside the cloud-init dir (through a link)")]
    Escapes(String),
    #[error("CloudInitFile {0:?} goes through a symlink, which this kernel cannot follow safely")]
    Symlink(String),
    #[error("CloudInitFile {0:?} does not exist in the cloud-init dir")]
    NotFound(String),
    #[error("CloudInitFile {file:?} is not a regular file (it is a {kind})")]
    NotRegular { file: String, kind: &'static str },
    #[error("CloudInitFile {file:?} is over {limit} bytes")]
    TooLarge { file: String, limit: usize },
    #[error("CloudInitFile {0:?} is not UTF-8")]
    NotUtf8(String),
    #[error("CloudInitFile {0:?}: reading it took over {READ_TIMEOUT:?}")]
    Timeout(String),
    #[error("the cloud-init dir {dir}: {error} (set SWIM_CLOUD_INIT_DIR)")]
    Dir { dir: String, error: String },
    #[error("CloudInitFile {file:?}: {error}")]
    Io { file: String, error: String },
}

/// The directory `CloudInitFile`s are read from.
#[derive(Clone, Debug)]
pub struct CloudInitDir {
    root: PathBuf,
}

impl CloudInitDir {
    pub fn new(root: impl Into<PathBuf>) -> CloudInitDir {
        CloudInitDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads `file` (as the message names it) on a blocking thread, within [`READ_TIMEOUT`].
    pub async fn read(&self, file: &str) -> Result<String, CloudInitError> {
        let relative = self.relative(file)?;
        let (root, name) = (self.root.clone(), shown(file));
        let task = tokio::task::spawn_blocking(move || read_beneath(&root, &relative, &name));
        match tokio::time::timeout(READ_TIMEOUT, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(CloudInitError::Io { file: shown(file), error: join.to_string() }),
            Err(_) => Err(CloudInitError::Timeout(shown(file))),
        }
    }

    /// `file` as a path relative to the directory, checked lexically.
    pub fn relative(&self, file: &str) -> Result<PathBuf, CloudInitError> {
        if file.is_empty() {
            return Err(CloudInitError::Empty);
        }
        if file.len() > MAX_PATH {
            return Err(CloudInitError::TooLong(file.len()));
        }
        if file.contains('\0') {
            return Err(CloudInitError::Nul(shown(file)));
        }
        let path = Path::new(file);
        let outside = || CloudInitError::Outside { file: shown(file), dir: self.root.display().to_string() };
        let relative = if path.is_absolute() {
            let canonical = self.root.canonicalize().ok();
            let inside = path.strip_prefix(&self.root).ok().or_else(|| path.strip_prefix(canonical.as_ref()?).ok());
            inside.ok_or_else(outside)?.to_owned()
        } else {
            path.to_owned()
        };
        let mut clean = PathBuf::new();
        for component in relative.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir => return Err(CloudInitError::DotDot(shown(file))),
                Component::RootDir | Component::Prefix(_) => return Err(outside()),
            }
        }
        if clean.as_os_str().is_empty() {
            return Err(CloudInitError::NotRegular { file: shown(file), kind: "directory" });
        }
        Ok(clean)
    }
}

/// A path as a reason repeats it: at most [`SHOWN_PATH`] bytes.
fn shown(file: &str) -> String {
    let mut end = file.len().min(SHOWN_PATH);
    while !file.is_char_boundary(end) {
        end -= 1;
    }
    if end < file.len() { format!("{}…", &file[..end]) } else { file.to_owned() }
}

fn read_beneath(root: &Path, relative: &Path, file: &str) -> Result<String, CloudInitError> {
    let dir = open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| {
        let error = if e == Errno::ENOENT { "does not exist".to_owned() } else { e.desc().to_owned() };
        CloudInitError::Dir { dir: root.display().to_string(), error }
    })?;
    let fd = open_beneath(&dir, relative).map_err(|e| match e {
        Errno::EXDEV => CloudInitError::Escapes(file.to_owned()),
        Errno::ELOOP => CloudInitError::Symlink(file.to_owned()),
        Errno::ENOENT | Errno::ENOTDIR => CloudInitError::NotFound(file.to_owned()),
        Errno::ENXIO => CloudInitError::NotRegular { file: file.to_owned(), kind: "socket or device" },
        other => CloudInitError::Io { file: file.to_owned(), error: other.desc().to_owned() },
    })?;
    let mut f = File::from(fd);
    let io = |e: std::io::Error| CloudInitError::Io { file: file.to_owned(), error: e.to_string() };
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(CloudInitError::NotRegular { file: file.to_owned(), kind: kind(&meta) });
    }
    let too_large = || CloudInitError::TooLarge { file: file.to_owned(), limit: MAX_USER_DATA };
    if meta.len() > MAX_USER_DATA as u64 {
        return Err(too_large());
    }
    // `/proc`-style files say 0 bytes and may hold more: the read is bounded whatever the size says.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&mut f).take(MAX_USER_DATA as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() > MAX_USER_DATA {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| CloudInitError::NotUtf8(file.to_owned()))
}

const FILE_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_NONBLOCK).union(OFlag::O_NOCTTY).union(OFlag::O_CLOEXEC);

/// Opens `relative` beneath `dir`: `openat2` where the kernel has it, else a walk that follows
/// no symlink.
fn open_beneath(dir: &OwnedFd, relative: &Path) -> Result<OwnedFd, Errno> {
    let how =
        OpenHow::new().flags(FILE_FLAGS).resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(dir, relative, how) {
        Err(Errno::ENOSYS | Errno::EPERM) => open_walking(dir, relative),
        other => other,
    }
}

/// Component-wise `openat` with `O_NOFOLLOW`: each directory opened `O_PATH`, none a symlink.
fn open_walking(dir: &OwnedFd, relative: &Path) -> Result<OwnedFd, Errno> {
    let parts: Vec<&std::ffi::OsStr> = relative.iter().collect();
    let Some((last, dirs)) = parts.split_last() else { return Err(Errno::ENOENT) };
    let mut current: Option<OwnedFd> = None;
    for part in dirs {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let next = openat(current.as_ref().unwrap_or(dir), *part, flags, Mode::empty())?;
        current = Some(next);
    }
    openat(current.as_ref().unwrap_or(dir), *last, FILE_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, CloudInitDir) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cloud-init");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("lab.yml"), "#cloud-config\n").unwrap();
        std::fs::write(tmp.path().join("secret"), "outside").unwrap();
        (tmp, CloudInitDir::new(root))
    }

    #[tokio::test]
    async fn reads_files_beneath_and_refuses_the_rest() {
        let (tmp, d) = dir();
        let root = d.root().to_owned();
        assert_eq!(d.read("lab.yml").await.unwrap(), "#cloud-config\n");
        assert_eq!(d.read("./sub/../lab.yml").await, Err(CloudInitError::DotDot("./sub/../lab.yml".into())));
        let absolute = root.join("lab.yml").display().to_string();
        assert_eq!(d.read(&absolute).await.unwrap(), "#cloud-config\n", "absolute inside");
        let secret = tmp.path().join("secret").display().to_string();
        assert!(matches!(d.read(&secret).await, Err(CloudInitError::Outside { .. })));
        // A symlink inside that stays inside works; one that leads out does not.
        std::os::unix::fs::symlink("../lab.yml", root.join("sub/inside")).unwrap();
        assert_eq!(d.read("sub/inside").await.unwrap(), "#cloud-config\n");
        std::os::unix::fs::symlink(tmp.path().join("secret"), root.join("out")).unwrap();
        assert_eq!(d.read("out").await, Err(CloudInitError::Escapes("out".into())));
        std::os::unix::fs::symlink("../secret", root.join("up")).unwrap();
        assert_eq!(d.read("up").await, Err(CloudInitError::Escapes("up".into())));
        std::os::unix::fs::symlink("/proc/self/environ", root.join("environ")).unwrap();
        assert_eq!(d.read("environ").await, Err(CloudInitError::Escapes("environ".into())));
        assert!(matches!(d.read("sub").await, Err(CloudInitError::NotRegular { kind: "directory", .. })));
        assert_eq!(d.read("missing").await, Err(CloudInitError::NotFound("missing".into())));
        std::fs::write(root.join("big"), vec![b'a'; MAX_USER_DATA + 1]).unwrap();
        assert!(matches!(d.read("big").await, Err(CloudInitError::TooLarge { .. })));
        std::fs::write(root.join("exact"), vec![b'a'; MAX_USER_DATA]).unwrap();
        assert_eq!(d.read("exact").await.unwrap().len(), MAX_USER_DATA);
        std::fs::write(root.join("binary"), [0xff, 0xfe]).unwrap();
        assert_eq!(d.read("binary").await, Err(CloudInitError::NotUtf8("binary".into())));
        nix::unistd::mkfifo(&root.join("fifo"), Mode::S_IRWXU).unwrap();
        assert!(matches!(d.read("fifo").await, Err(CloudInitError::NotRegular { kind: "FIFO", .. })));
        assert_eq!(d.read("").await, Err(CloudInitError::Empty));
        assert!(matches!(d.read("a\0b").await, Err(CloudInitError::Nul(_))));
        assert!(matches!(d.read(&"a/".repeat(3000)).await, Err(CloudInitError::TooLong(6000))));
        assert!(matches!(d.read(".").await, Err(CloudInitError::NotRegular { kind: "directory", .. })));
    }

    #[tokio::test]
    async fn the_walk_without_openat2_follows_no_symlink() {
        let (tmp, d) = dir();
        let root = d.root().to_owned();
        let dirfd = open(&root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).unwrap();
        assert!(open_walking(&dirfd, Path::new("lab.yml")).is_ok());
        std::fs::write(root.join("sub/deep.yml"), "x").unwrap();
        assert!(open_walking(&dirfd, Path::new("sub/deep.yml")).is_ok());
        std::os::unix::fs::symlink(tmp.path(), root.join("link")).unwrap();
        assert_eq!(open_walking(&dirfd, Path::new("link/secret")).unwrap_err(), Errno::ENOTDIR);
        std::os::unix::fs::symlink("lab.yml", root.join("alias")).unwrap();
        assert_eq!(open_walking(&dirfd, Path::new("alias")).unwrap_err(), Errno::ELOOP);
    }

    #[test]
    fn reasons_repeat_at_most_a_little_of_a_path() {
        let long = "é".repeat(300);
        let shown = shown(&long);
        assert!(shown.len() <= SHOWN_PATH + "…".len() && shown.ends_with('…'), "{shown}");
    }
}

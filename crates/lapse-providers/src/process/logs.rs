//! An environment's logs: `stdout.log` and `stderr.log` in its directory, each capped at
//! [`LOG_CAP_BYTES`] with one rotated file (`stdout.log.1`), so a stream never holds more
//! than twice the cap on disk however much the environment prints.
//!
//! The environment's supervisor (see `helper`) writes them: it reads the environment's
//! stdout and stderr from pipes and rotates as it writes. It outlives the server like the
//! environment does, so the cap holds while the server is down, and the environment never
//! holds a descriptor of the log file itself (it cannot seek, truncate or fill it). The files
//! are root's (`0600`) and live in a directory the environment cannot see.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::Mode;

use crate::MAX_OUTPUT_BYTES;

/// Most bytes one log file holds before it is rotated.
pub const LOG_CAP_BYTES: u64 = 10 * 1024 * 1024;

/// A log file that rotates itself at its cap. It works through a handle on its directory,
/// not a path: the supervisor hides the directory from the environment (and so from itself)
/// once the environment's mount namespace is set up.
pub struct RotatingLog {
    dir: Arc<File>,
    name: String,
    file: File,
    len: u64,
    cap: u64,
}

impl RotatingLog {
    /// Opens (appending to) `name` in `dir`.
    pub fn open(dir: Arc<File>, name: &str, cap: u64) -> io::Result<Self> {
        let file = open_append(&dir, name)?;
        let len = file.metadata()?.len();
        Ok(RotatingLog { dir, name: name.to_owned(), file, len, cap: cap.max(1) })
    }

    /// Writes all of `bytes`, rotating whenever the file reaches its cap.
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.len >= self.cap {
                self.rotate()?;
            }
            let room = usize::try_from(self.cap - self.len).unwrap_or(usize::MAX);
            let (now, later) = bytes.split_at(bytes.len().min(room));
            self.file.write_all(now)?;
            self.len += now.len() as u64;
            bytes = later;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let old = format!("{}.1", self.name);
        renameat(self.dir.as_ref(), self.name.as_str(), self.dir.as_ref(), old.as_str()).map_err(io::Error::from)?;
        self.file = open_append(&self.dir, &self.name)?;
        self.len = 0;
        Ok(())
    }
}

fn open_append(dir: &File, name: &str) -> io::Result<File> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_APPEND | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let fd = openat(dir, name, flags, Mode::from_bits_truncate(0o600)).map_err(io::Error::from)?;
    Ok(File::from(fd))
}

/// The rotated file of `path`.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The last [`MAX_OUTPUT_BYTES`] of a log, across its rotated file and the current one.
pub fn read_tail(path: &Path) -> Vec<u8> {
    let mut current = read_last(path, MAX_OUTPUT_BYTES as u64);
    if current.len() >= MAX_OUTPUT_BYTES {
        return current;
    }
    let mut out = read_last(&rotated(path), (MAX_OUTPUT_BYTES - current.len()) as u64);
    out.append(&mut current);
    out
}

fn read_last(path: &Path, max: u64) -> Vec<u8> {
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = file.take(max).read_to_end(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn rotates_at_the_cap_and_reads_across_the_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let handle = Arc::new(File::open(dir.path()).unwrap());
        let mut log = RotatingLog::open(handle.clone(), "stdout.log", 10).unwrap();
        log.write(b"0123456789abcdefghijklmnopqrstuvwxyz").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"uvwxyz");
        assert_eq!(fs::read(rotated(&path)).unwrap(), b"klmnopqrst");
        assert_eq!(read_tail(&path), b"klmnopqrstuvwxyz");
        // Reopened, it goes on from its length.
        let mut log = RotatingLog::open(handle, "stdout.log", 10).unwrap();
        log.write(b"ABCDE").unwrap();
        assert_eq!(fs::read(rotated(&path)).unwrap(), b"uvwxyzABCD");
        assert_eq!(fs::read(&path).unwrap(), b"E");
    }
}

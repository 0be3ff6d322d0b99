//! A process environment's files as tar streams (`get_archive`, `put_archive`).
//!
//! A process environment has no filesystem of its own: an absolute path in it names a path
//! under its working directory `<root>/<id>/work` (its `HOME`), so `/workspace` is
//! `$HOME/workspace`, and nothing outside that directory is ever read or written.
//!
//! **No path escapes it, symlinks included**, even while the environment changes its files:
//! every directory is opened relative to its parent's descriptor with `O_NOFOLLOW |
//! O_DIRECTORY` and every file with `O_NOFOLLOW` (`openat`), so a symlink anywhere on the way
//! (one the environment planted, or swapped in after a check) fails the open instead of being
//! followed. Reading skips symlinks and special files; writing refuses an entry whose path is
//! not plainly relative ([`crate::archive::safe_relative`]) or meets a symlink. Files and
//! directories written are given the environment's uid when it has one of its own.
//! The file work runs on a blocking thread, fed through a small bounded channel: memory holds
//! at most a few chunks.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use tokio::sync::mpsc;

use crate::archive::{ArchiveStream, EntryKind, TarReader, end_marker, header_bytes, pad, safe_relative};

/// Bytes read from a file per chunk.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the file thread and the stream.
const IN_FLIGHT: usize = 4;

fn io(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

fn open_dir_at(parent: impl AsFd, name: &str) -> Result<OwnedFd, Errno> {
    openat(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
}

/// Opens `work` and then each segment of `inside` (an absolute path of the environment),
/// never through a symlink; with `create`, missing directories are made.
fn walk(work: &Path, inside: &str, create: Option<Option<(u32, u32)>>) -> Result<OwnedFd, std::io::Error> {
    let mut fd: OwnedFd = File::open(work)
        .and_then(|f| if f.metadata()?.is_dir() { Ok(f) } else { Err(std::io::Error::other("not a directory")) })?
        .into();
    for segment in inside.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err(std::io::Error::other(format!("refused path segment {segment:?}")));
        }
        fd = match (open_dir_at(&fd, segment), create) {
            (Ok(next), _) => next,
            (Err(Errno::ENOENT), Some(owner)) => {
                match mkdirat(&fd, segment, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io(e)),
                }
                let next = open_dir_at(&fd, segment).map_err(io)?;
                chown(&next, owner)?;
                next
            }
            (Err(Errno::ELOOP | Errno::ENOTDIR), _) => {
                return Err(std::io::Error::other(format!("{segment:?} is a symlink or not a directory: refused")));
            }
            (Err(e), _) => return Err(io(e)),
        };
    }
    Ok(fd)
}

fn chown(fd: &OwnedFd, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    if let Some((uid, gid)) = owner {
        nix::unistd::fchown(fd, Some(uid.into()), Some(gid.into())).map_err(io)?;
    }
    Ok(())
}

/// The tar stream of `dir` (entries `<basename>/...`); an error if it does not exist.
pub(super) fn get(work: PathBuf, dir: String) -> ArchiveStream {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = produce(&work, &dir, &tx) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}

fn produce(work: &Path, dir: &str, tx: &mpsc::Sender<Result<Bytes, std::io::Error>>) -> std::io::Result<()> {
    let closed = || std::io::Error::other("the reader went away");
    let send = |b: Bytes| tx.blocking_send(Ok(b)).map_err(|_| closed());
    let root = walk(work, dir, None)?;
    let base = dir.trim_end_matches('/').rsplit('/').next().unwrap_or("workspace").to_owned();
    send(header_bytes(&base, EntryKind::Dir, 0, 0)?)?;
    let mut stack = vec![(root, base)];
    while let Some((fd, rel)) = stack.pop() {
        let mut listing = nix::dir::Dir::from_fd(fd.try_clone()?).map_err(io)?;
        let mut names = Vec::new();
        for entry in listing.iter() {
            let entry = entry.map_err(io)?;
            let Ok(name) = entry.file_name().to_str() else { continue };
            if name != "." && name != ".." {
                names.push(name.to_owned());
            }
        }
        names.sort();
        for name in names {
            let path = format!("{rel}/{name}");
            let Ok(stat) = fstatat(&fd, name.as_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) else { continue };
            let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
            let mtime = stat.st_mtime.max(0) as u64;
            if kind == SFlag::S_IFDIR {
                // Swapped for a symlink since the stat: the open fails and it is skipped.
                if let Ok(sub) = open_dir_at(&fd, &name) {
                    send(header_bytes(&path, EntryKind::Dir, 0, mtime)?)?;
                    stack.push((sub, path));
                }
            } else if kind == SFlag::S_IFREG {
                let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
                let Ok(file) = openat(&fd, name.as_str(), flags, Mode::empty()) else { continue };
                let mut file = File::from(file);
                let size = file.metadata()?.len();
                if !file.metadata()?.is_file() {
                    continue;
                }
                send(header_bytes(&path, EntryKind::File, size, mtime)?)?;
                // Exactly `size` bytes: a file that grows or shrinks meanwhile is cut or padded.
                let mut left = size;
                let mut buf = vec![0u8; CHUNK];
                while left > 0 {
                    let want = (left as usize).min(CHUNK);
                    let n = match file.read(&mut buf[..want])? {
                        0 => {
                            buf[..want].fill(0);
                            want
                        }
                        n => n,
                    };
                    send(Bytes::copy_from_slice(&buf[..n]))?;
                    left -= n as u64;
                }
                send(pad(size))?;
            }
        }
    }
    send(end_marker())
}

/// What the async side hands the file thread.
enum Op {
    Dir(String),
    File(String, u64),
    Data(Bytes),
}

/// Extracts `tar` into `dest` (which must exist) under `work`.
pub(super) async fn put(
    work: PathBuf,
    dest: String,
    owner: Option<(u32, u32)>,
    tar: ArchiveStream,
) -> Result<(), std::io::Error> {
    let (tx, mut rx) = mpsc::channel::<Op>(IN_FLIGHT);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let root = walk(&work, &dest, None)?;
        let mut current: Option<File> = None;
        while let Some(op) = rx.blocking_recv() {
            match op {
                Op::Dir(rel) => {
                    current = None;
                    walk_at(&root, &rel, owner)?;
                }
                Op::File(rel, _size) => {
                    let (parent, name) = match rel.rsplit_once('/') {
                        Some((parent, name)) => (walk_at(&root, parent, owner)?, name.to_owned()),
                        None => (root.try_clone()?, rel.clone()),
                    };
                    let flags =
                        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                    let fd = openat(&parent, name.as_str(), flags, Mode::from_bits_truncate(0o644)).map_err(|e| {
                        std::io::Error::other(format!("writing {rel:?}: {e} (a symlink or special file is refused)"))
                    })?;
                    chown(&fd, owner)?;
                    current = Some(File::from(fd));
                }
                Op::Data(bytes) => {
                    if let Some(f) = current.as_mut() {
                        f.write_all(&bytes)?;
                    }
                }
            }
        }
        Ok(())
    });
    let fed = feed(tar, &tx).await;
    drop(tx);
    let written = writer.await.map_err(|e| std::io::Error::other(format!("the file thread: {e}")))?;
    fed?;
    written
}

/// Opens (making them) the directories of `rel` under `root`.
fn walk_at(root: &OwnedFd, rel: &str, owner: Option<(u32, u32)>) -> std::io::Result<OwnedFd> {
    let mut fd = root.try_clone()?;
    for segment in rel.split('/') {
        fd = match open_dir_at(&fd, segment) {
            Ok(next) => next,
            Err(Errno::ENOENT) => {
                match mkdirat(&fd, segment, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io(e)),
                }
                let next = open_dir_at(&fd, segment).map_err(io)?;
                chown(&next, owner)?;
                next
            }
            Err(e) => return Err(std::io::Error::other(format!("directory {rel:?}: {e} (a symlink is refused)"))),
        };
    }
    Ok(fd)
}

async fn feed(tar: ArchiveStream, tx: &mpsc::Sender<Op>) -> std::io::Result<()> {
    let closed = || std::io::Error::other("the file thread stopped");
    let mut reader = TarReader::new(tar);
    while let Some(entry) = reader.next_entry().await.map_err(std::io::Error::other)? {
        let rel = safe_relative(&entry.path).map_err(std::io::Error::other)?.to_owned();
        match entry.kind {
            EntryKind::Dir => tx.send(Op::Dir(rel)).await.map_err(|_| closed())?,
            EntryKind::File => {
                tx.send(Op::File(rel, entry.size)).await.map_err(|_| closed())?;
                loop {
                    let chunk = reader.read_body(CHUNK).await.map_err(std::io::Error::other)?;
                    if chunk.is_empty() {
                        break;
                    }
                    tx.send(Op::Data(chunk)).await.map_err(|_| closed())?;
                }
            }
            EntryKind::Other => {
                return Err(std::io::Error::other(format!(
                    "refused archive entry {:?}: not a file or directory",
                    entry.path
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar stream of `(path, body)` files, written as the tar crate writes them (paths
    /// set raw, so hostile ones stay as they are).
    fn tar_of(entries: &[(&str, &[u8])]) -> ArchiveStream {
        let mut data = Vec::new();
        for (path, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            // `set_path` refuses `..`; a hostile archive is written raw.
            let name = &mut h.as_gnu_mut().expect("a GNU header").name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            data.extend_from_slice(h.as_bytes());
            data.extend_from_slice(body);
            data.extend_from_slice(&pad(body.len() as u64));
        }
        data.extend_from_slice(&end_marker());
        futures::stream::iter([Ok(Bytes::from(data))]).boxed()
    }

    async fn collect(stream: ArchiveStream) -> Vec<(String, Vec<u8>)> {
        let mut reader = TarReader::new(stream);
        let mut out = Vec::new();
        while let Some(e) = reader.next_entry().await.unwrap() {
            let mut body = Vec::new();
            loop {
                let chunk = reader.read_body(1 << 16).await.unwrap();
                if chunk.is_empty() {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            out.push((e.path, body));
        }
        out
    }

    #[tokio::test]
    async fn extracts_plain_entries_and_refuses_escapes() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("work");
        std::fs::create_dir(&work).unwrap();
        put(work.clone(), "/".into(), None, tar_of(&[("ws/a/b.txt", b"hi")])).await.unwrap();
        assert_eq!(std::fs::read(work.join("ws/a/b.txt")).unwrap(), b"hi");

        for hostile in ["../escape.txt", "ws/../../escape.txt", "/abs.txt"] {
            let err = put(work.clone(), "/".into(), None, tar_of(&[(hostile, b"bad")])).await.unwrap_err();
            assert!(err.to_string().contains("refused"), "{hostile}: {err}");
        }
        assert!(!root.path().join("escape.txt").exists());
        assert!(!root.path().parent().unwrap().join("escape.txt").exists());

        // A symlink the environment planted, as a directory or as the file itself.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), work.join("ws/link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), work.join("ws/file-link")).unwrap();
        for via in ["ws/link/x.txt", "ws/file-link"] {
            assert!(put(work.clone(), "/".into(), None, tar_of(&[(via, b"bad")])).await.is_err(), "{via}");
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written through a symlink");
        // A destination through a symlink is refused too.
        assert!(put(work.clone(), "/ws/link".into(), None, tar_of(&[("x", b"bad")])).await.is_err());
    }

    #[tokio::test]
    async fn archives_files_but_never_follows_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("work");
        std::fs::create_dir_all(work.join("ws/sub")).unwrap();
        std::fs::write(work.join("ws/sub/a.txt"), b"alpha").unwrap();
        std::fs::write(root.path().join("secret"), b"host secret").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), work.join("ws/leak")).unwrap();
        std::os::unix::fs::symlink("/", work.join("ws/rootdir")).unwrap();
        let entries = collect(get(work.clone(), "/ws".into())).await;
        let paths: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["ws", "ws/sub", "ws/sub/a.txt"], "{paths:?}");
        assert_eq!(entries[2].1, b"alpha");
        // A workspace path through a symlink, or missing, is an error, not an empty archive.
        let mut missing = get(work.clone(), "/nope".into());
        assert!(missing.next().await.unwrap().is_err());
        let mut through = get(work, "/ws/rootdir".into());
        assert!(through.next().await.unwrap().is_err());
    }
}

//! When the file is read: only once it is stable (see the module doc of [`super`]). The loop
//! looks at the file's metadata every poll and reads it only when that stopped moving, or
//! when a new inode sits at the path.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::guard::Refusal;
use super::reload::{self, read_text};
use crate::app::App;

/// Polls at start before giving up on a file that keeps changing.
const START_POLLS: u32 = 20;

/// One version of the file, as its metadata tells it without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of_metadata(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }

    /// The file at `path` (following links); `None` when it cannot be looked at.
    pub(crate) fn of(path: &Path) -> Option<Stamp> {
        std::fs::metadata(path).ok().map(|m| Stamp::of_metadata(&m))
    }

    fn same_inode(&self, other: &Stamp) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }

    /// How long ago the file was last modified (zero if its time is in the future).
    fn age(&self) -> Duration {
        let now_ns = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        Duration::from_nanos(u64::try_from(now_ns - self.mtime_ns).unwrap_or(0))
    }
}

/// The file's text and the stamp it had from before to after the reading; `Ok(None)` when it
/// moved meanwhile (someone is writing it).
pub(crate) fn read_consistent(path: &Path) -> Result<Option<(Stamp, String)>, Refusal> {
    let before = Stamp::of(path);
    let text = read_text(path)?;
    let after = Stamp::of(path);
    Ok(match (before, after) {
        (Some(b), Some(a)) if a == b && a.len == text.len() as u64 => Some((a, text)),
        _ => None,
    })
}

/// At start: the file's text once it is stable. It is at once when it was last modified a
/// poll interval ago or more; otherwise once a poll later finds it unchanged.
pub(crate) async fn read_stable(path: &Path, poll: Duration) -> Result<String, Refusal> {
    for _ in 0..START_POLLS {
        if let Some((stamp, text)) = read_consistent(path)? {
            if stamp.age() >= poll {
                return Ok(text);
            }
            tokio::time::sleep(poll).await;
            if Stamp::of(path) == Some(stamp) {
                return Ok(text);
            }
        } else {
            tokio::time::sleep(poll).await;
        }
        tracing::info!(path = %path.display(), "the config file is being written; waiting until it is stable");
    }
    Err(Refusal::Unstable(START_POLLS))
}

/// Applies the file whenever a new version of it is stable: the same stamp at two polls in a
/// row, or a new inode at the path (renamed into place) read without moving. A version is
/// handled once (applied or refused); touching the file handles it again.
pub async fn watch(app: App, path: PathBuf, poll: Duration) {
    // Start read the file just before this: what it applied is handled. What it refused (it
    // was empty, removed too much, or kept changing) is looked at again once stable, since it
    // may have been completed meanwhile.
    let mut seen = Stamp::of(&path);
    let refused_at_start =
        app.cx.config_status.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|s| s.error.is_some());
    let mut handled = if refused_at_start { None } else { seen };
    loop {
        tokio::time::sleep(poll).await;
        let now = Stamp::of(&path);
        if now == handled {
            seen = now;
            continue;
        }
        let replaced = match (seen, now) {
            (Some(before), Some(after)) => !before.same_inode(&after),
            (None, Some(_)) => true,
            _ => false,
        };
        if now != seen && !replaced {
            tracing::info!(
                path = %path.display(),
                "config file changed; waiting for it to settle (unchanged at the next poll) before reading it"
            );
            seen = now;
            continue;
        }
        seen = now;
        let Some(expected) = now else {
            // Missing (or not to be looked at) at two polls in a row: refused, and said so.
            let Err(refusal) = read_text(&path) else { continue }; // it appeared just now
            handled = None;
            let _ = reload::handle(&app, &path, Err(refusal)).await;
            continue;
        };
        match read_consistent(&path) {
            // Exactly the version that was stable (or is new): a write since makes it wait.
            Ok(Some((stamp, text))) if stamp == expected => {
                if replaced {
                    tracing::info!(path = %path.display(), "config file replaced (a new inode); reading it at once");
                }
                handled = Some(stamp);
                let _ = reload::handle(&app, &path, Ok(text)).await;
            }
            Ok(_) => seen = Stamp::of(&path),
            Err(refusal) => {
                handled = now;
                let _ = reload::handle(&app, &path, Err(refusal)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn at_start_an_old_file_is_read_at_once_and_a_fresh_one_after_a_poll() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lapse.toml");
        std::fs::write(&path, "# old\n").unwrap();
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(an_hour_ago).unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(read_stable(&path, POLL).await.unwrap(), "# old\n");
        assert_eq!(started.elapsed(), Duration::ZERO);

        std::fs::write(&path, "# fresh\n").unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(read_stable(&path, POLL).await.unwrap(), "# fresh\n");
        assert_eq!(started.elapsed(), POLL, "unchanged at the next poll");
    }

    #[tokio::test(start_paused = true)]
    async fn at_start_a_file_that_keeps_changing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lapse.toml");
        std::fs::write(&path, "#").unwrap();
        let writer = tokio::spawn({
            let path = path.clone();
            async move {
                for i in 1.. {
                    std::fs::write(&path, "#".repeat(i)).unwrap();
                    tokio::time::sleep(POLL / 2).await;
                }
            }
        });
        assert_eq!(read_stable(&path, POLL).await, Err(Refusal::Unstable(START_POLLS)));
        writer.abort();
    }

    #[test]
    fn only_regular_utf8_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |path: &Path| match read_text(path) {
            Err(Refusal::Unreadable(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(refused(dir.path()).contains("not a regular file"));
        assert!(refused(&dir.path().join("missing")).contains("No such file"));
        let path = dir.path().join("lapse.toml");
        std::fs::write(&path, b"id = \"\xff\"\n").unwrap();
        assert!(refused(&path).contains("not UTF-8"));
        std::fs::write(&path, vec![b'#'; super::super::MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(refused(&path).contains("larger than"));
        std::fs::write(&path, "# fine\n").unwrap();
        assert_eq!(read_consistent(&path).unwrap().map(|(_, text)| text).as_deref(), Some("# fine\n"));
    }
}

//! A store on a tiny private tmpfs that fills up: a failed commit must not leave the writer
//! inside a transaction (which acknowledged every later write and saved none).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop. Needs root, as the test
/// suite has (`scripts/test` runs as root on these machines).
pub(crate) struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root (the test suite runs as root)");
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the filesystem is full; returns its path.
    pub fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![7u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        // The last partial block: byte by byte until nothing fits.
        while f.write_all(&[7u8; 512]).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn big(id: &str) -> Environment {
    let mut e = sample(id, "ada");
    // Big enough that a commit needs fresh pages.
    e.labels.insert("payload".into(), "x".repeat(16 * 1024));
    e
}

#[tokio::test]
async fn a_failed_commit_rolls_back_and_the_store_recovers_when_space_returns() {
    let fs = Tmpfs::new("3m");
    let db = fs.path().join("lapse.db");
    let store = Store::open(&db).await.unwrap();
    let a = big(&"a".repeat(32));
    store.insert(&a, NewEvent::new(&a.id, "api", "create", "ok", "")).await.unwrap();
    assert!(store.is_writable());

    let filler = fs.fill();
    let mut refused = 0;
    for i in 0..20 {
        let e = big(&format!("{:032x}", 0xb000 + i));
        match store.insert(&e, NewEvent::new(&e.id, "api", "create", "ok", "")).await {
            Ok(()) => {}
            Err(err) => {
                assert!(err.is_unwritable(), "a full disk is `Unwritable`, got {err:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "the disk filled, so some insert failed");
    assert!(!store.is_writable());
    // Reads still work.
    assert!(store.get(&a.id).await.unwrap().is_some());

    std::fs::remove_file(filler).unwrap();
    let c = big(&"c".repeat(32));
    store.insert(&c, NewEvent::new(&c.id, "api", "create", "ok", "")).await.unwrap();
    assert!(store.is_writable(), "a successful commit makes the store writable again");
    let updated = store
        .update::<StoreError>(&a.id, |e| {
            e.desired = DesiredState::Stopped;
            Ok(vec![])
        })
        .await
        .unwrap();
    assert!(updated.is_some());
    let acknowledged: Vec<String> =
        store.list(&ListFilter::default()).await.unwrap().into_iter().map(|e| e.id).collect();
    store.close().await;

    // What was acknowledged is in the file: a fresh open sees it.
    let reopened = Store::open(&db).await.unwrap();
    assert!(reopened.get(&c.id).await.unwrap().is_some(), "the write acknowledged after the failure was saved");
    assert_eq!(reopened.get(&a.id).await.unwrap().unwrap().desired, DesiredState::Stopped);
    let saved: Vec<String> = reopened.list(&ListFilter::default()).await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(saved, acknowledged, "exactly what was acknowledged, and nothing refused");
    reopened.close().await;
}

#[tokio::test]
async fn a_transaction_dropped_without_commit_is_rolled_back_before_the_next() {
    let (_dir, store) = super::sqlite_itself().await;
    let a = sample(&"a".repeat(32), "ada");
    store.insert(&a, NewEvent::new(&a.id, "api", "create", "ok", "")).await.unwrap();
    for _ in 0..3 {
        let refused: Result<_, StoreError> = store
            .update(&a.id, |e| {
                e.owner = "mallory".into();
                Err(StoreError::Refused("no".into()))
            })
            .await;
        assert!(refused.is_err());
    }
    let b = sample(&"b".repeat(32), "bob");
    store.insert(&b, NewEvent::new(&b.id, "api", "create", "ok", "")).await.unwrap();
    let path = _dir.path().join("lapse.db");
    store.close().await;
    let reopened = Store::open(&path).await.unwrap();
    assert_eq!(reopened.get(&a.id).await.unwrap().unwrap().owner, "ada");
    assert!(reopened.get(&b.id).await.unwrap().is_some());
}

//! The one writer: a thread of its own that owns the database's only write connection and
//! commits the operations it is given in batches (group commit).
//!
//! Contract:
//! - **Every write of the store is an operation run here** ([`Committer::run`]), on this
//!   thread's connection (rusqlite, statements prepared once and cached), inside a
//!   transaction no other writer interleaves with. An operation is a closure over the
//!   connection; it reads what it must and writes; it is answered only after the transaction
//!   holding it committed, so an acknowledged write survives a `kill -9`.
//! - **Batches.** The thread takes every operation waiting (up to [`MAX_BATCH`]), runs them in
//!   order in one transaction and commits once: a commit's cost is shared by everyone waiting,
//!   and nobody waits for a time window (a lone operation commits at once). No savepoints: if
//!   an operation fails, the batch is rolled back and its operations are run again one
//!   transaction each, so one failure never undoes another caller's write. An operation must
//!   therefore be safe to run again from the state before it (closures are `FnMut`).
//! - **Bounded.** At most [`QUEUE`] operations wait; beyond that callers wait to enqueue.
//! - **The store knows whether it can write.** A commit that fails for a reason of the disk or
//!   the database (not of the statement) clears [`Committer::is_writable`]; the next commit
//!   that succeeds sets it again.
//! - **Checkpoints run off the writer.** The writer's connection never checkpoints by itself
//!   (`wal_autocheckpoint = 0`); a checkpointer thread of its own connection runs a passive
//!   checkpoint once [`CHECKPOINT_COMMITS`] commits or [`CHECKPOINT_ROWS`] changed rows are in
//!   the WAL, or when the writer has been quiet for [`CHECKPOINT_QUIET`]; the writer truncates
//!   the WAL itself only once it has grown past [`WAL_BOUND`] (readers that never let a passive
//!   checkpoint finish). Not after every commit: the first commit after a checkpoint that
//!   emptied the WAL starts it again, and SQLite syncs a new WAL header (an fsync on the
//!   writer's path, about 0.3 ms here) which a commit into a WAL in use does not need.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::StoreError;

/// At most this many operations share a transaction.
pub(crate) const MAX_BATCH: usize = 512;
/// At most this many operations wait for the writer.
const QUEUE: usize = 8192;
/// The WAL size past which the writer truncates it itself.
const WAL_BOUND: u64 = 256 * 1024 * 1024;
/// A passive checkpoint once this many commits are in the WAL (each commit of one operation
/// writes about a dozen pages: a few megabytes of WAL).
const CHECKPOINT_COMMITS: u64 = 256;
/// ... or once this many rows were changed since the last one (large batches).
const CHECKPOINT_ROWS: u64 = 4096;
/// ... or once the writer has committed nothing for this long (a quiet store is backfilled).
const CHECKPOINT_QUIET: Duration = Duration::from_secs(1);

type Answer = Result<Box<dyn Any + Send>, StoreError>;
type Work = Box<dyn FnMut(&Connection) -> Answer + Send>;

struct Job {
    work: Work,
    reply: oneshot::Sender<Answer>,
}

/// Counters of the writer, for tests and the benchmark.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub commits: AtomicU64,
    pub operations: AtomicU64,
    pub replays: AtomicU64,
}

/// The handle to the writer thread. Cheap to clone; the thread ends when the last handle goes.
#[derive(Clone, Debug)]
pub(crate) struct Committer {
    jobs: mpsc::Sender<Job>,
    writable: Arc<AtomicBool>,
    stats: Arc<CommitStats>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// Opens a connection of the store's database with the settings every connection shares.
pub(crate) fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "normal")?;
    conn.pragma_update(None, "foreign_keys", "on")?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

impl Committer {
    /// Starts the writer (and its checkpointer) on the database at `path`, whose schema is
    /// already migrated.
    pub(crate) fn start(path: &Path) -> Result<Committer, StoreError> {
        let conn = connect(path).map_err(|e| crate::sqlite_error("open", e))?;
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(|e| crate::sqlite_error("open", e))?;
        let checkpointer = Checkpointer::start(path.to_owned())?;
        let (jobs, rx) = mpsc::channel(QUEUE);
        let writable = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(CommitStats::default());
        let thread =
            Writer { conn, rx, writable: writable.clone(), stats: stats.clone(), wal: wal_path(path), checkpointer };
        std::thread::Builder::new()
            .name("lapse-store-writer".into())
            .spawn(move || thread.run())
            .map_err(|e| StoreError::Refused(format!("store: starting the writer thread failed: {e}")))?;
        Ok(Committer { jobs, writable, stats })
    }

    pub(crate) fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Runs `work` in the writer's next transaction; answers once that transaction committed
    /// (or with the error that stopped it: then nothing of `work` was written).
    pub(crate) async fn run<T, F>(&self, op: &'static str, mut work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let work: Work = Box::new(move |conn| work(conn).map(|t| Box::new(t) as Box<dyn Any + Send>));
        self.jobs.send(Job { work, reply }).await.map_err(|_| closed(op))?;
        let value = answer.await.map_err(|_| closed(op))??;
        // The closure above boxes a `T`, and only it answers this job.
        Ok(*value.downcast::<T>().expect("the answer of this job's own closure"))
    }
}

fn closed(op: &'static str) -> StoreError {
    StoreError::Unwritable { op, source: crate::DbError::Closed }
}

fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Runs one job's work; a panic in it is that job's error (the writer goes on).
fn guarded(work: &mut Work, conn: &Connection) -> Answer {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn))) {
        Ok(answer) => answer,
        Err(_) => Err(StoreError::Refused("store: an operation panicked; nothing of it was written".into())),
    }
}

struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    writable: Arc<AtomicBool>,
    stats: Arc<CommitStats>,
    wal: PathBuf,
    checkpointer: Checkpointer,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let changed = self.conn.total_changes();
            self.commit_batch(&mut batch);
            self.after_commit(self.conn.total_changes().saturating_sub(changed));
        }
    }

    /// Runs `batch` in one transaction; on any failure, each of its jobs in its own.
    fn commit_batch(&mut self, batch: &mut Vec<Job>) {
        self.stats.operations.fetch_add(batch.len() as u64, Ordering::Relaxed);
        if batch.len() > 1 {
            match self.together(batch) {
                Ok(answers) => {
                    for (job, answer) in batch.drain(..).zip(answers) {
                        let _ = job.reply.send(answer);
                    }
                    return;
                }
                Err(()) => {
                    self.stats.replays.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for mut job in batch.drain(..) {
            let answer = self.alone(&mut job.work);
            let _ = job.reply.send(answer);
        }
    }

    /// Every job of the batch in one transaction, or `Err` (rolled back) if any failed.
    fn together(&mut self, batch: &mut [Job]) -> Result<Vec<Answer>, ()> {
        if self.begin().is_err() {
            return Err(());
        }
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch.iter_mut() {
            match guarded(&mut job.work, &self.conn) {
                Ok(v) => answers.push(Ok(v)),
                Err(_) => {
                    self.rollback();
                    return Err(());
                }
            }
        }
        match self.commit() {
            Ok(()) => Ok(answers),
            Err(_) => Err(()),
        }
    }

    fn alone(&mut self, work: &mut Work) -> Answer {
        self.begin()?;
        match guarded(work, &self.conn) {
            Ok(v) => {
                self.commit()?;
                Ok(v)
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        let begun = self.conn.prepare_cached("BEGIN IMMEDIATE").and_then(|mut s| s.execute([]));
        begun.map(drop).map_err(|e| self.observe("begin", e))
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        match self.conn.prepare_cached("COMMIT").and_then(|mut s| s.execute([])) {
            Ok(_) => {
                self.writable.store(true, Ordering::Relaxed);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "store: COMMIT failed; rolling back");
                let err = self.observe("commit", e);
                self.rollback();
                Err(err)
            }
        }
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// The error as the store reports it, clearing `writable` when it is the disk's.
    fn observe(&self, op: &'static str, e: rusqlite::Error) -> StoreError {
        let err = crate::sqlite_error(op, e);
        if err.is_unwritable() {
            self.writable.store(false, Ordering::Relaxed);
        }
        err
    }

    fn after_commit(&mut self, rows: u64) {
        self.checkpointer.committed(rows);
        if std::fs::metadata(&self.wal).is_ok_and(|m| m.len() > WAL_BOUND) {
            tracing::info!("store: the WAL passed its bound; truncating it on the writer");
            if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                tracing::warn!(error = %e, "store: truncating the WAL failed");
            }
        }
    }
}

/// A thread that runs passive checkpoints on a connection of its own, when enough is in the WAL
/// or the writer is quiet.
struct Checkpointer {
    shared: Arc<(Mutex<Wake>, Condvar)>,
}

/// What the writer committed since the last checkpoint.
#[derive(Default)]
struct Wake {
    commits: u64,
    rows: u64,
    last: Option<Instant>,
    stopped: bool,
}

impl Wake {
    fn due(&self) -> bool {
        self.commits >= CHECKPOINT_COMMITS || self.rows >= CHECKPOINT_ROWS
    }
}

impl Checkpointer {
    fn start(path: PathBuf) -> Result<Checkpointer, StoreError> {
        let conn = connect(&path).map_err(|e| crate::sqlite_error("open", e))?;
        let shared = Arc::new((Mutex::new(Wake::default()), Condvar::new()));
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("lapse-store-checkpoint".into())
            .spawn(move || {
                let (state, wake) = &*theirs;
                loop {
                    {
                        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                        loop {
                            if s.stopped {
                                return;
                            }
                            match s.last {
                                None => s = wake.wait(s).unwrap_or_else(|p| p.into_inner()),
                                Some(_) if s.due() => break,
                                Some(last) => match CHECKPOINT_QUIET.checked_sub(last.elapsed()) {
                                    Some(left) if !left.is_zero() => {
                                        s = wake.wait_timeout(s, left).unwrap_or_else(|p| p.into_inner()).0;
                                    }
                                    _ => break,
                                },
                            }
                        }
                        *s = Wake::default();
                    }
                    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                        tracing::debug!(error = %e, "store: a passive checkpoint failed");
                    }
                }
            })
            .map_err(|e| StoreError::Refused(format!("store: starting the checkpointer failed: {e}")))?;
        Ok(Checkpointer { shared })
    }

    fn set(&self, f: impl FnOnce(&mut Wake) -> bool) {
        let (state, wake) = &*self.shared;
        let notify = f(&mut state.lock().unwrap_or_else(|p| p.into_inner()));
        if notify {
            wake.notify_one();
        }
    }

    /// A commit of `rows` changed rows: the thread is woken only when that starts its quiet
    /// timer or makes a checkpoint due.
    fn committed(&self, rows: u64) {
        self.set(|s| {
            let first = s.last.is_none();
            s.commits += 1;
            s.rows += rows;
            s.last = Some(Instant::now());
            first || s.due()
        });
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.set(|s| {
            s.stopped = true;
            true
        });
    }
}

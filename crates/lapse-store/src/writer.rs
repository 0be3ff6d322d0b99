//! The one writer connection, and transactions on it that survive a failed commit.
//!
//! Contract:
//! - **A transaction either commits or leaves nothing behind.** Transactions are sqlx's (its
//!   `BEGIN`/`COMMIT` run on the SQLite worker without a prepared statement: the fast path),
//!   but the writer pool checks every connection before handing it out ([`writer_options`]):
//!   a connection whose sqlx transaction depth is not zero (a transaction dropped without
//!   commit, whose queued rollback has not run yet, or one whose `COMMIT` failed) first lets
//!   the queued rollback run, and is closed and replaced if it is still inside a transaction.
//!   Without this, after a `COMMIT` that failed on a full disk sqlx kept counting the
//!   transaction, and every later one was a savepoint inside a transaction that never
//!   committed: writes acknowledged and lost.
//! - **The store knows whether it can write.** Every commit that fails for a reason of the
//!   disk or the database (not of the statement) clears [`Writer::is_writable`]; the next
//!   commit that succeeds sets it again. Nothing else is needed to recover when space returns.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};

/// The writer pool (one connection) and whether its last commit succeeded.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    pool: SqlitePool,
    writable: Arc<AtomicBool>,
}

impl Writer {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        Writer { pool, writable: Arc::new(AtomicBool::new(true)) }
    }

    /// The pool, for single statements outside a transaction.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    /// Records the outcome of a write made outside [`WriteTx`] (a single statement).
    pub(crate) fn observe<T>(&self, result: &Result<T, sqlx::Error>) {
        match result {
            Ok(_) => self.set_writable(true),
            Err(e) if is_unwritable(e) => self.set_writable(false),
            Err(_) => {}
        }
    }

    pub(crate) fn set_writable(&self, writable: bool) {
        self.writable.store(writable, Ordering::Relaxed);
    }

    pub(crate) async fn acquire(&self) -> Result<PoolConnection<Sqlite>, sqlx::Error> {
        self.pool.acquire().await
    }

    /// Starts a write transaction on the writer connection.
    pub(crate) async fn begin(&self) -> Result<WriteTx, sqlx::Error> {
        match self.pool.begin().await {
            Ok(tx) => Ok(WriteTx { tx: Some(tx), writable: self.writable.clone() }),
            Err(e) => {
                if is_unwritable(&e) {
                    self.writable.store(false, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }
}

/// What the writer pool checks before it hands out a connection (see the module doc).
pub(crate) fn writer_options(options: SqlitePoolOptions) -> SqlitePoolOptions {
    options.before_acquire(|conn, _| {
        Box::pin(async move {
            if depth(conn) == 0 {
                return Ok(true);
            }
            // A rollback queued by a dropped transaction runs before the next statement.
            let _ = sqlx::query("SELECT 1").execute(&mut *conn).await;
            let clean = depth(conn) == 0;
            if !clean {
                tracing::warn!("store: the writer connection is still inside a transaction; reopening it");
            }
            Ok(clean)
        })
    })
}

fn depth(conn: &SqliteConnection) -> usize {
    use sqlx::TransactionManager as _;
    <Sqlite as sqlx::Database>::TransactionManager::get_transaction_depth(conn)
}

/// A write transaction. Derefs to the connection, so statements run inside it.
#[derive(Debug)]
pub(crate) struct WriteTx {
    tx: Option<sqlx::Transaction<'static, Sqlite>>,
    writable: Arc<AtomicBool>,
}

impl WriteTx {
    /// Commits; on failure the transaction is rolled back (and its connection replaced if
    /// that fails) before the writer is used again.
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        // `tx` is `Some` until commit takes it.
        let tx = self.tx.take().expect("an open transaction");
        match tx.commit().await {
            Ok(()) => {
                self.writable.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "store: COMMIT failed; rolling back");
                if is_unwritable(&e) {
                    self.writable.store(false, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.tx.as_ref().expect("an open transaction")
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.tx.as_mut().expect("an open transaction")
    }
}

/// Whether an error means the database cannot be written now (the disk, the file, a lock),
/// as opposed to a statement the database refused.
pub(crate) fn is_unwritable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            // SQLite's extended result codes keep the primary code in the low byte.
            let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff;
            // BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL.
            matches!(code, 5 | 6 | 7 | 8 | 10 | 11 | 13 | 14 | 15)
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

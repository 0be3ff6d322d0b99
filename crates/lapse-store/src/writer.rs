//! The one writer connection, and transactions on it that survive a failed commit.
//!
//! Contract:
//! - **A transaction either commits or leaves nothing behind.** [`Writer::begin`] issues
//!   `BEGIN IMMEDIATE` itself (not sqlx's nested-transaction bookkeeping): a `COMMIT` that fails
//!   (a full disk, an I/O error) is followed by a `ROLLBACK`, and the connection is closed so
//!   the next transaction starts on a fresh one. sqlx's own `Transaction` keeps counting a
//!   transaction whose `COMMIT` failed, so every later "transaction" on that connection would
//!   be a savepoint inside a transaction that never commits: writes acknowledged and lost.
//! - A transaction dropped without `commit` is rolled back before the connection is used again
//!   (the pool has one connection, and it returns to the pool only after the rollback).
//! - **The store knows whether it can write.** Every commit that fails for a reason of the
//!   disk or the database (not of the statement) clears [`Writer::is_writable`]; the next
//!   commit that succeeds sets it again. Nothing else is needed to recover when space returns.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::pool::PoolConnection;
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
        let mut conn = self.pool.acquire().await?;
        match sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            Ok(_) => Ok(WriteTx { conn: Some(conn), writable: self.writable.clone() }),
            Err(e) => {
                // A connection that cannot begin (still inside a transaction, or broken) is not
                // reused: the next caller gets a fresh one.
                tracing::warn!(error = %e, "store: BEGIN failed; reopening the writer connection");
                let _ = conn.close().await;
                if is_unwritable(&e) {
                    self.writable.store(false, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }
}

/// A write transaction. Derefs to the connection, so statements run inside it.
#[derive(Debug)]
pub(crate) struct WriteTx {
    conn: Option<PoolConnection<Sqlite>>,
    writable: Arc<AtomicBool>,
}

impl WriteTx {
    /// Commits; on failure rolls back, closes the connection, and returns the error.
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        // `conn` is `Some` until commit or drop takes it.
        let mut conn = self.conn.take().expect("an open transaction has its connection");
        match sqlx::query("COMMIT").execute(&mut *conn).await {
            Ok(_) => {
                self.writable.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "store: COMMIT failed; rolling back and reopening the writer connection");
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                let _ = conn.close().await;
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
        self.conn.as_ref().expect("an open transaction has its connection")
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("an open transaction has its connection")
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        // Roll back before the connection goes back to the pool; if that fails, close it.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
                        tracing::warn!(error = %e, "store: ROLLBACK failed; reopening the writer connection");
                        let _ = conn.close().await;
                    }
                });
            }
            // Without a runtime the connection cannot be used again: closing it rolls back.
            Err(_) => drop(conn.detach()),
        }
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

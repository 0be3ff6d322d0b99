//! Point reads: one environment by its primary key, on the caller's own thread.
//!
//! The reconciler reads the row it steps, and every read-modify-write reads the row it
//! changes; through sqlx each such read is a hop to a connection's worker thread and back,
//! which under a claim load cost more CPU than the writer itself (measured: 38% of the
//! server's CPU in sqlx's worker threads). These reads go to a small set of read-only rusqlite
//! connections instead and run inline: an indexed lookup of one row, tens of microseconds,
//! with no hop.
//!
//! Contract:
//! - **Only primary-key lookups** come here: a bounded, index-only amount of work per call, so
//!   running it on an async worker thread never stalls that thread for long. Scans and lists
//!   stay on the sqlx pool.
//! - **Read-only connections** (`SQLITE_OPEN_READ_ONLY`, `query_only`): nothing here can write.
//!   Each read is its own implicit read transaction, so it sees every commit acknowledged
//!   before it started (WAL).
//! - **Bounded**: at most [`IDLE`] connections are kept; a caller that finds none idle opens
//!   one, which is closed after use if [`IDLE`] are already kept. A connection whose read
//!   failed is dropped, not reused.
//! - **Busy waits are short** ([`BUSY`]): in WAL mode a reader waits only while the WAL index
//!   is rebuilt.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use lapse_core::model::Environment;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _};

use crate::rows::environment_from;
use crate::{ENV_COLUMNS, StoreError, WriteOp as _};

/// Most idle connections kept.
const IDLE: usize = 8;
/// How long a read waits for a busy database.
const BUSY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct PointReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl PointReads {
    pub(crate) fn new(path: &Path) -> PointReads {
        PointReads { path: path.to_owned(), idle: Mutex::new(Vec::new()) }
    }

    /// The environment `id` and its revision.
    pub(crate) fn environment(&self, id: &str) -> Result<Option<(Environment, i64)>, StoreError> {
        static SQL: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| format!("SELECT {ENV_COLUMNS}, rev FROM environments WHERE id = ?1"));
        self.with(|conn| {
            let mut st = conn.prepare_cached(&SQL).op("get")?;
            let row = st
                .query_row([id], |r| Ok(environment_from(r).map(|env| (env, r.get::<_, i64>("rev")))))
                .optional()
                .op("get")?;
            match row {
                None => Ok(None),
                Some(Ok((env, rev))) => Ok(Some((env, rev.op("get")?))),
                Some(Err(e)) => Err(e),
            }
        })
    }

    /// Drops every idle connection (the store is closing).
    pub(crate) fn close(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn with<T>(&self, read: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open()?,
        };
        let out = read(&conn);
        if out.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE {
                idle.push(conn);
            }
        }
        out
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).op("open")?;
        conn.busy_timeout(BUSY).op("open")?;
        conn.pragma_update(None, "query_only", true).op("open")?;
        conn.set_prepared_statement_cache_capacity(8);
        Ok(conn)
    }
}

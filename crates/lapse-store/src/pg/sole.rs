//! The server lock: which processes use a PostgreSQL database as servers.
//!
//! Every `lapse serve` on PostgreSQL holds [`SERVER_LOCK`] in **shared** mode on a
//! connection of its own for as long as it runs ([`PgStore::hold_server_lock`]); replicas
//! share it, and which of them runs the background work is the leader's lock
//! ([`super::lead`]). What must have the database to itself (`lapse migrate`'s copy) takes it
//! **exclusively** ([`PgStore::hold_sole_server`]): refused while any server runs, and a
//! server starting meanwhile is refused ([`PgError::Taken`]).
//!
//! A held lock's connection is checked every [`CHECK_EVERY`]; when it is lost (the database
//! restarted, the network went, the session was terminated), [`HeldLock::lost`] resolves.

use std::time::Duration;

use sqlx::Connection as _;
use tokio::sync::oneshot;

use super::{CONNECT_TIMEOUT, PgError, PgStore};

/// The key of the servers' session advisory lock ("lapse_sv").
pub const SERVER_LOCK: i64 = 0x6c61_7073_655f_7376;

/// How often the lock's connection is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// How a session lock is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Shared,
    Exclusive,
}

/// A held session advisory lock. Dropping it ends the check and closes its connection
/// (releasing the lock).
#[derive(Debug)]
pub struct HeldLock {
    lost: Option<oneshot::Receiver<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl HeldLock {
    /// Resolves with the reason once the lock's connection is lost; never otherwise.
    pub async fn lost(&mut self) -> String {
        match self.lost.take() {
            Some(rx) => rx.await.unwrap_or_else(|_| "the lock's check ended".into()),
            None => std::future::pending().await,
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PgStore {
    /// Takes [`SERVER_LOCK`] shared, as every server does; refused while something holds the
    /// database alone ([`PgStore::hold_sole_server`]).
    pub async fn hold_server_lock(&self) -> Result<HeldLock, PgError> {
        self.hold_session_lock(SERVER_LOCK, "the server lock", Mode::Shared).await?.ok_or(PgError::Taken)
    }

    /// Takes [`SERVER_LOCK`] exclusively: refused while any server runs on the database.
    pub async fn hold_sole_server(&self) -> Result<HeldLock, PgError> {
        self.hold_session_lock(SERVER_LOCK, "the server lock", Mode::Exclusive).await?.ok_or(PgError::Taken)
    }

    /// Takes session advisory lock `key` on a connection of its own, checked every
    /// [`CHECK_EVERY`]; `None` if another session holds it (in a mode that conflicts).
    pub(super) async fn hold_session_lock(
        &self,
        key: i64,
        what: &'static str,
        mode: Mode,
    ) -> Result<Option<HeldLock>, PgError> {
        let options = self.pool.connect_options().as_ref().clone();
        let mut conn = super::connect_one(&options).await?;
        let take = match mode {
            Mode::Shared => "SELECT pg_try_advisory_lock_shared($1)",
            Mode::Exclusive => "SELECT pg_try_advisory_lock($1)",
        };
        let taken: bool = sqlx::query_scalar(take)
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .map_err(|source| PgError::Sql { op: "take a session lock", source })?;
        if !taken {
            let _ = conn.close().await;
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(CHECK_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let checked = tokio::time::timeout(CONNECT_TIMEOUT, conn.ping()).await;
                let reason = match checked {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => format!("{what}'s connection failed: {e}"),
                    Err(_) => format!("{what}'s connection did not answer within 5 s"),
                };
                let _ = tx.send(reason);
                return;
            }
        });
        Ok(Some(HeldLock { lost: Some(rx), task }))
    }
}

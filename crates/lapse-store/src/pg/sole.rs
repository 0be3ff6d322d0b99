//! One server per PostgreSQL database, until replicas divide the background work.
//!
//! Every replica would run the reconciler, the timers, the sweep and the pool maintainer, and
//! two of them would provision one environment twice. So `lapse serve` on PostgreSQL holds
//! a session advisory lock ([`SOLE_LOCK`]) on a connection of its own for as long as it runs:
//! - a second server on the same database is refused at start ([`PgError::Taken`]);
//! - the connection is checked every [`CHECK_EVERY`]; when it is lost (the database restarted,
//!   the network went, the session was terminated), the lock may already be another
//!   server's, so [`SoleReplica::lost`] resolves and the server must stop at once (it exits
//!   with an error; a supervisor restarts it, and it takes the lock again or is refused).

use std::time::Duration;

use sqlx::Connection as _;
use tokio::sync::oneshot;

use super::{CONNECT_TIMEOUT, PgError, PgStore};

/// The key of the sole server's session advisory lock ("lapse_sv").
pub const SOLE_LOCK: i64 = 0x6c61_7073_655f_7376;

/// How often the lock's connection is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The sole server's lock ([`PgStore::hold_sole_replica`]).
pub type SoleReplica = HeldLock;

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
    /// Takes [`SOLE_LOCK`] on a connection of its own, or refuses if another server holds it.
    pub async fn hold_sole_replica(&self) -> Result<SoleReplica, PgError> {
        self.hold_session_lock(SOLE_LOCK, "the server lock").await?.ok_or(PgError::Taken)
    }

    /// Takes session advisory lock `key` on a connection of its own, checked every
    /// [`CHECK_EVERY`]; `None` if another session holds it.
    pub(super) async fn hold_session_lock(&self, key: i64, what: &'static str) -> Result<Option<HeldLock>, PgError> {
        let options = self.pool.connect_options().as_ref().clone();
        let mut conn = super::connect_one(&options).await?;
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
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

//! Leadership among replicas, fencing, and who is connected.
//!
//! Contract:
//! - **One leader.** [`PgStore::try_lead`] takes [`LEADER_LOCK`], a session advisory lock on a
//!   connection of its own, checked every [`super::CHECK_EVERY`] as the server lock is
//!   ([`Lead::lost`]). PostgreSQL releases it when that session ends: a `kill -9` of the
//!   leader frees it at once; a leader cut off from the database keeps it until the server
//!   notices the session is gone.
//! - **Fencing.** Taking the lead increments `meta.leader_epoch` and fences the store with the
//!   new value: from then on every write transaction of this store (all its clones) begins by
//!   reading the epoch `FOR SHARE` and fails with [`StoreError::Unwritable`] (a `503`) if it is
//!   no longer its own. The increment of a newer leader waits for the transactions that hold
//!   the row, and every later one of the old leader fails: nothing the old leader writes
//!   commits after a newer one has its epoch, even before it notices it lost the lock.
//!   [`PgStore::step_down`] lifts the fence (a replica that follows writes unfenced).
//! - **Who is there.** [`PgStore::replicas`] lists the replicas connected now (by their
//!   connections' `application_name`, `lapse <id>`) and which one holds the lead.

use std::sync::atomic::Ordering;

use lapse_core::Millis;
use sqlx::{Postgres, Row as _, Transaction};

use super::{HeldLock, PgError, PgStore};
use crate::{DbError, Op as _, StoreError};

fn sql(op: &'static str) -> impl FnOnce(sqlx::Error) -> PgError {
    move |source| PgError::Sql { op, source }
}

/// The key of the leader's session advisory lock ("lapse_ld").
pub const LEADER_LOCK: i64 = 0x6c61_7073_655f_6c64;

/// The held lead: its fencing epoch, and the lock.
#[derive(Debug)]
pub struct Lead {
    pub epoch: i64,
    lock: HeldLock,
}

impl Lead {
    /// Resolves with the reason once the lock's connection is lost; never otherwise.
    pub async fn lost(&mut self) -> String {
        self.lock.lost().await
    }
}

/// A replica connected to the database now.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Replica {
    pub id: String,
    /// Its open connections.
    pub connections: i64,
    /// Whether it holds [`LEADER_LOCK`].
    pub leader: bool,
    /// The store's locks it holds: `server` ([`super::SERVER_LOCK`]), `leader`
    /// ([`LEADER_LOCK`]), `migrations` ([`super::MIGRATION_LOCK`]).
    pub holds: Vec<String>,
    /// When its oldest open connection was made (ms since the epoch).
    pub since: Millis,
}

/// The name of a store lock's key, as [`Replica::holds`] says it.
fn lock_name(key: i64) -> Option<&'static str> {
    match key {
        super::SERVER_LOCK => Some("server"),
        LEADER_LOCK => Some("leader"),
        super::MIGRATION_LOCK => Some("migrations"),
        _ => None,
    }
}

impl PgStore {
    /// Takes the lead if no replica holds it, and fences this store with the new epoch (see
    /// the module docs); `None` if another replica leads.
    pub async fn try_lead(&self) -> Result<Option<Lead>, PgError> {
        let Some(lock) = self.hold_session_lock(LEADER_LOCK, "the leader lock", super::sole::Mode::Exclusive).await?
        else {
            return Ok(None);
        };
        let epoch: String = sqlx::query_scalar(
            "INSERT INTO meta (key, value) VALUES ('leader_epoch', '1') ON CONFLICT (key) \
             DO UPDATE SET value = (meta.value::bigint + 1)::text RETURNING value",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(sql("take the lead"))?;
        let epoch: i64 = epoch
            .parse()
            .map_err(|_| sql("take the lead")(sqlx::Error::Protocol("meta.leader_epoch is not a number".into())))?;
        self.fence.store(epoch, Ordering::SeqCst);
        Ok(Some(Lead { epoch, lock }))
    }

    /// Lifts the fence: this store's writes no longer depend on leading.
    pub fn step_down(&self) {
        self.fence.store(0, Ordering::SeqCst);
    }

    /// The epoch this store's writes are fenced with, if it is.
    pub fn fenced_epoch(&self) -> Option<i64> {
        Some(self.fence.load(Ordering::SeqCst)).filter(|&e| e > 0)
    }

    /// A write transaction, fenced when this store leads (see the module docs).
    pub(super) async fn begin(&self, op: &'static str) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await.op(op)?;
        if let Some(epoch) = self.fenced_epoch() {
            let now: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'leader_epoch' FOR SHARE")
                .fetch_optional(&mut *tx)
                .await
                .op(op)?;
            if now.as_deref() != Some(epoch.to_string().as_str()) {
                self.writable.store(false, Ordering::Relaxed);
                let why =
                    format!("fenced: epoch {epoch} is no longer the leader's (it is {})", now.unwrap_or_default());
                return Err(StoreError::Unwritable { op, source: DbError::Read(sqlx::Error::Protocol(why)) });
            }
        }
        Ok(tx)
    }

    /// One statement as a write of its own: in a fenced transaction when this store leads.
    pub(super) async fn write_one(
        &self,
        op: &'static str,
        q: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<u64, StoreError> {
        if self.fenced_epoch().is_none() {
            return Ok(q.execute(&self.pool).await.op(op)?.rows_affected());
        }
        let mut tx = self.begin(op).await?;
        let done = q.execute(&mut *tx).await.op(op)?;
        tx.commit().await.op(op)?;
        Ok(done.rows_affected())
    }

    /// The replicas connected now and which one leads (see the module docs).
    pub async fn replicas(&self) -> Result<Vec<Replica>, PgError> {
        // A bigint advisory key is held as classid (high half) and objid (low half), objsubid 1.
        let rows = sqlx::query(
            "SELECT substr(a.application_name, 7) AS id, COUNT(DISTINCT a.pid) AS connections, \
             array_remove(array_agg(DISTINCT (l.classid::bigint << 32) | l.objid::bigint), NULL) AS keys, \
             (EXTRACT(EPOCH FROM MIN(a.backend_start)) * 1000)::bigint AS since \
             FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' \
             AND l.granted AND l.objsubid = 1 \
             WHERE a.datname = current_database() AND a.application_name LIKE 'lapse r-%' \
             GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(sql("list the replicas"))?;
        rows.iter()
            .map(|r| {
                let keys: Vec<i64> = r.try_get("keys")?;
                let mut holds: Vec<String> = keys.into_iter().filter_map(lock_name).map(str::to_owned).collect();
                holds.sort();
                Ok(Replica {
                    id: r.try_get("id")?,
                    connections: r.try_get("connections")?,
                    leader: holds.iter().any(|h| h == "leader"),
                    holds,
                    since: r.try_get("since")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(sql("list the replicas"))
    }
}

//! Warm members, indexed in memory for claims.
//!
//! A claim must find a claimable member fast, whatever the number of members claimed before
//! it. The store keeps, per spec hash, a queue of candidate ids (oldest first) read from the
//! database in one indexed query (`environments_warm`) when the queue is empty, and a claim
//! takes the first candidate that the database still says is claimable (its predicate is
//! checked again on the row, by its primary key, in the claim's own transaction).
//!
//! **The store stays the truth**: a candidate that stopped being claimable (claimed, recycled,
//! its pool's version changed) is skipped; a member that became claimable after the queue was
//! filled is found at the next fill. The queues are touched only on the writer's thread
//! (inside its transactions), so a batch rolled back loses nothing: the members it had taken
//! are still claimable in the database and come back with the next fill. Memory is bounded:
//! at most [`FILL`] ids per spec hash that has members, none for one without.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use lapse_core::model::Environment;
use rusqlite::{Connection, OptionalExtension as _};

use crate::rows::environment_from;
use crate::{ENV_COLUMNS, StoreError, WriteOp};

/// How many candidates one fill reads.
const FILL: usize = 256;

/// Candidate ids per spec hash.
pub(crate) type Candidates = HashMap<String, VecDeque<String>>;

/// What makes a member claimable: running, wanted running, not being replaced, healthy if
/// probed, and of its pool's current spec and version.
const CLAIMABLE: &str = "e.pool IS NOT NULL AND e.observed = 'running' AND e.desired = 'running' \
     AND e.replace_resource = 0 AND (e.health IS NULL OR e.health = 'healthy') AND e.spec_hash = ?1 \
     AND EXISTS (SELECT 1 FROM pools p WHERE p.name = e.pool AND p.spec_hash = e.spec_hash \
     AND p.version = e.pool_version)";

/// The oldest claimable member of `spec_hash`, read in the caller's transaction.
pub(crate) fn next_member(
    conn: &Connection,
    candidates: &Mutex<Candidates>,
    spec_hash: &str,
) -> Result<Option<Environment>, StoreError> {
    static BY_ID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!("SELECT {ENV_COLUMNS} FROM environments e WHERE {CLAIMABLE} AND e.id = ?2")
    });
    static FIRST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!("SELECT e.id FROM environments e WHERE {CLAIMABLE} ORDER BY e.id LIMIT {FILL}")
    });
    // Only the writer's thread locks it.
    let mut candidates = candidates.lock().unwrap_or_else(|p| p.into_inner());
    let mut filled = false;
    loop {
        let next = candidates.get_mut(spec_hash).and_then(VecDeque::pop_front);
        let Some(id) = next else {
            if filled {
                candidates.remove(spec_hash);
                return Ok(None);
            }
            filled = true;
            let mut st = conn.prepare_cached(&FIRST).op("claim")?;
            let ids: VecDeque<String> =
                st.query_map([spec_hash], |r| r.get(0)).and_then(|rows| rows.collect()).op("claim")?;
            if ids.is_empty() {
                candidates.remove(spec_hash);
                return Ok(None);
            }
            candidates.insert(spec_hash.to_owned(), ids);
            continue;
        };
        let mut st = conn.prepare_cached(&BY_ID).op("claim")?;
        let found = st.query_row([spec_hash, id.as_str()], |r| Ok(environment_from(r))).optional().op("claim")?;
        if let Some(env) = found {
            return env.map(Some);
        }
    }
}

//! Stops and deletes that must happen while the store cannot write (a full disk).
//!
//! Contract:
//! - **A full disk never keeps an environment alive.** When the store refuses a write because
//!   it cannot write (see `StoreError::is_unwritable`), a stop or delete asked through the API,
//!   and the stop or delete of an expired lease, is recorded here instead: in memory, and in a
//!   journal file that was preallocated when there was space (`<data dir>/deferred.journal`,
//!   fixed-size slots rewritten in place, so recording needs no new disk blocks), synced before
//!   the caller is answered. The reconciler overlays these intents on the rows it reads and
//!   calls the provider as usual; what the provider did is recorded in the intent.
//! - **They reach the store when it can write again.** A flusher applies each intent to its row
//!   (desired state, expiry, the observed state the provider reached, with their events) and
//!   frees its slot only after that commit. At start, the journal is read back before the
//!   reconciler or the sweep run, so a crash (even `kill -9`) while the disk was full loses no
//!   stop or delete, and the sweep never re-provisions what was deleted.
//! - Bounded: [`SLOTS`] intents at once; past that, the request gets the store's `503`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use lapse_core::Millis;
use lapse_core::model::{DesiredState, Environment, ObservedState};

/// How many intents the journal holds.
pub const SLOTS: usize = 4096;
/// Bytes per slot: one line of text, space-padded, ending in `\n`.
const SLOT_BYTES: usize = 256;
const MAGIC: &str = "lapse-deferred-1";

/// A stop or delete not yet in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub id: String,
    pub desired: DesiredState,
    /// Set when the intent is a lease's expiry.
    pub expired_at: Option<Millis>,
    /// The state the provider reached for it, once it did.
    pub reached: Option<ObservedState>,
    pub at: Millis,
    pub actor: String,
    pub action: String,
}

impl Intent {
    /// `env` as it is with this intent applied: what the reconciler plans from.
    pub fn overlay(&self, env: &mut Environment) {
        let was = env.desired;
        if was != DesiredState::Deleted {
            env.desired = self.desired;
        }
        match self.expired_at {
            // As the expiry step does: an expiry that stops a running one restarts on extend.
            Some(at) if env.expired_at.is_none() => {
                env.expired_at = Some(at);
                env.restart_on_extend = self.desired == DesiredState::Stopped && was == DesiredState::Running;
            }
            Some(_) => {}
            None => env.restart_on_extend = false,
        }
        if let Some(reached) = self.reached {
            env.observed = reached;
            env.endpoints.clear();
        }
    }

    /// Applies the intent to the row about to be written, with the events that record it: the
    /// caller's action, and the transitions to the state the provider reached.
    pub fn apply(&self, e: &mut Environment) -> Vec<lapse_store::NewEvent> {
        use crate::reconciler::transition;
        use lapse_core::state::can_transition;

        let before = e.clone();
        self.overlay(e);
        let mut events = Vec::new();
        if e.desired != before.desired || e.expired_at != before.expired_at {
            let message = format!(
                "desired {} -> {} (asked at {} while the store could not write)",
                before.desired,
                e.desired,
                lapse_core::format_millis(self.at)
            );
            let outcome = if self.expired_at.is_some() { e.desired.as_str() } else { "ok" };
            events.push(lapse_store::NewEvent::new(&e.id, &self.actor, &self.action, outcome, message));
        }
        if e.observed != before.observed {
            let reached = std::mem::replace(&mut e.observed, before.observed);
            let note = "done while the store could not write";
            let via = match reached {
                ObservedState::Stopped => ObservedState::Stopping,
                _ => ObservedState::Deleting,
            };
            if can_transition(e.observed, reached) {
                events.push(transition(e, reached, "reconciler", note));
            } else if can_transition(e.observed, via) && can_transition(via, reached) {
                events.push(transition(e, via, "reconciler", note));
                events.push(transition(e, reached, "reconciler", note));
            }
        }
        events
    }

    fn encode(&self) -> Option<[u8; SLOT_BYTES]> {
        let line = format!(
            "{MAGIC} {} {} {} {} {} {} {}",
            self.id,
            self.desired.as_str(),
            self.expired_at.map_or("-".to_owned(), |t| t.to_string()),
            self.reached.map_or("-", |s| s.as_str()),
            self.at,
            field(&self.actor),
            field(&self.action),
        );
        if line.len() >= SLOT_BYTES {
            return None;
        }
        let mut slot = [b' '; SLOT_BYTES];
        slot[..line.len()].copy_from_slice(line.as_bytes());
        slot[SLOT_BYTES - 1] = b'\n';
        Some(slot)
    }

    fn decode(slot: &[u8]) -> Option<Intent> {
        let text = std::str::from_utf8(slot).ok()?.trim_end();
        let mut parts = text.split(' ');
        if parts.next()? != MAGIC {
            return None;
        }
        let id = parts.next()?.to_owned();
        if !lapse_core::model::is_environment_id(&id) {
            return None;
        }
        let desired = parts.next()?.parse().ok()?;
        let expired_at = match parts.next()? {
            "-" => None,
            t => Some(t.parse().ok()?),
        };
        let reached = match parts.next()? {
            "-" => None,
            s => Some(s.parse().ok()?),
        };
        let at = parts.next()?.parse().ok()?;
        let actor = parts.next()?.to_owned();
        let action = parts.next()?.to_owned();
        Some(Intent { id, desired, expired_at, reached, at, actor, action })
    }
}

/// Actors and actions are short identifiers; keep the line one token each.
fn field(s: &str) -> String {
    let cleaned: String = s.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    if cleaned.is_empty() { "-".into() } else { cleaned }
}

/// The journal and its intents.
#[derive(Debug)]
pub struct Deferred {
    file: File,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Intent and its slot, by environment id.
    intents: BTreeMap<String, (Intent, usize)>,
    free: Vec<usize>,
}

impl Deferred {
    /// Opens the journal at `path`, preallocating it if it is new or short, and reads back
    /// the intents it holds.
    pub fn open(path: &Path) -> io::Result<Deferred> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let want = (SLOTS * SLOT_BYTES) as u64;
        let len = file.metadata()?.len();
        if len < want {
            // Real blocks, not a sparse file: rewriting a slot must need no new space.
            let zeros = vec![0u8; SLOTS * SLOT_BYTES - len as usize];
            file.write_all_at(&zeros, len)?;
            file.sync_all()?;
        }
        let mut all = vec![0u8; SLOTS * SLOT_BYTES];
        file.read_exact_at(&mut all, 0)?;
        let mut state = State::default();
        for slot in (0..SLOTS).rev() {
            let bytes = &all[slot * SLOT_BYTES..(slot + 1) * SLOT_BYTES];
            match bytes[0] {
                0 => state.free.push(slot),
                _ => match Intent::decode(bytes) {
                    Some(intent) => {
                        state.intents.insert(intent.id.clone(), (intent, slot));
                    }
                    None => {
                        tracing::warn!(slot, "deferred journal: an unreadable slot; freeing it");
                        state.free.push(slot);
                    }
                },
            }
        }
        Ok(Deferred { file, state: Mutex::new(state) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `intent` (replacing one for the same environment) and syncs it to disk.
    pub fn record(&self, intent: Intent) -> io::Result<()> {
        let slot_bytes = intent.encode().ok_or_else(|| io::Error::other("intent too long for a journal slot"))?;
        let mut state = self.lock();
        let slot = match state.intents.get(&intent.id) {
            Some((_, slot)) => *slot,
            None => state.free.pop().ok_or_else(|| io::Error::other("the deferred journal is full"))?,
        };
        let written =
            self.file.write_all_at(&slot_bytes, (slot * SLOT_BYTES) as u64).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            if !state.intents.contains_key(&intent.id) {
                state.free.push(slot);
            }
            return Err(e);
        }
        state.intents.insert(intent.id.clone(), (intent, slot));
        Ok(())
    }

    /// Notes that the provider reached `state` for `id`'s intent.
    pub fn reached(&self, id: &str, state: ObservedState) -> io::Result<()> {
        let Some(mut intent) = self.get(id) else { return Ok(()) };
        intent.reached = Some(state);
        self.record(intent)
    }

    pub fn get(&self, id: &str) -> Option<Intent> {
        self.lock().intents.get(id).map(|(i, _)| i.clone())
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().intents.contains_key(id)
    }

    pub fn is_empty(&self) -> bool {
        self.lock().intents.is_empty()
    }

    pub fn len(&self) -> usize {
        self.lock().intents.len()
    }

    pub fn all(&self) -> Vec<Intent> {
        self.lock().intents.values().map(|(i, _)| i.clone()).collect()
    }

    /// Frees `id`'s slot once its intent is in the store, unless the intent changed since
    /// `applied` was read.
    pub fn clear(&self, applied: &Intent) -> io::Result<()> {
        let mut state = self.lock();
        let Some((current, slot)) = state.intents.get(&applied.id) else { return Ok(()) };
        if current != applied {
            return Ok(());
        }
        let slot = *slot;
        self.file.write_all_at(&[0u8; SLOT_BYTES], (slot * SLOT_BYTES) as u64)?;
        state.intents.remove(&applied.id);
        state.free.push(slot);
        Ok(())
    }
}

/// Writes every intent into its row, freeing the slots of those that committed; returns how
/// many are left. Rows that are gone, or already deleted, free their slot too.
pub async fn flush(cx: &crate::context::Context) -> usize {
    for intent in cx.deferred.all() {
        let applied = cx.store.update::<lapse_store::StoreError>(&intent.id, |e| Ok(intent.apply(e))).await;
        match applied {
            Ok(_) => {
                if let Err(e) = cx.deferred.clear(&intent) {
                    tracing::warn!(environment = %intent.id, error = %e, "freeing a deferred journal slot failed");
                }
                tracing::info!(environment = %intent.id, desired = %intent.desired, "deferred change written to the store");
            }
            Err(e) if e.is_unwritable() => break,
            Err(e) => tracing::warn!(environment = %intent.id, error = %e, "writing a deferred change failed"),
        }
    }
    cx.deferred.len()
}

/// Flushes the journal whenever it holds something, every half second, and wakes the
/// reconciler for what it wrote.
pub async fn run(cx: std::sync::Arc<crate::context::Context>, reconciler: crate::reconciler::Reconciler) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if cx.deferred.is_empty() {
            continue;
        }
        let ids: Vec<String> = cx.deferred.all().into_iter().map(|i| i.id).collect();
        let left = flush(&cx).await;
        if left < ids.len() {
            for id in &ids {
                reconciler.enqueue(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(id: &str) -> Intent {
        Intent {
            id: id.to_owned(),
            desired: DesiredState::Deleted,
            expired_at: Some(1234),
            reached: None,
            at: 99,
            actor: "key:abc def".into(),
            action: "delete".into(),
        }
    }

    #[test]
    fn intents_survive_a_reopen_and_cleared_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deferred.journal");
        let d = Deferred::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), (SLOTS * SLOT_BYTES) as u64);
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        d.record(intent(&a)).unwrap();
        d.record(intent(&b)).unwrap();
        d.reached(&a, ObservedState::Deleted).unwrap();
        let applied = d.get(&b).unwrap();
        d.clear(&applied).unwrap();
        drop(d);

        let d = Deferred::open(&path).unwrap();
        assert_eq!(d.len(), 1);
        let got = d.get(&a).unwrap();
        assert_eq!(got.reached, Some(ObservedState::Deleted));
        assert_eq!(got.actor, "key:abcdef");
        assert_eq!(got.expired_at, Some(1234));
        assert!(!d.contains(&b));
        // The file never grows: slots are rewritten in place.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), (SLOTS * SLOT_BYTES) as u64);
    }

    #[test]
    fn a_changed_intent_is_not_cleared_by_an_older_apply() {
        let dir = tempfile::tempdir().unwrap();
        let d = Deferred::open(&dir.path().join("j")).unwrap();
        let a = "a".repeat(32);
        d.record(intent(&a)).unwrap();
        let old = d.get(&a).unwrap();
        d.reached(&a, ObservedState::Deleted).unwrap();
        d.clear(&old).unwrap();
        assert!(d.contains(&a));
    }

    #[test]
    fn garbage_slots_are_freed_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        drop(Deferred::open(&path).unwrap());
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"lapse-deferred-1 ../../etc deleted - - 1 x y", 0).unwrap();
        f.write_all_at(&[0xff; 40], SLOT_BYTES as u64).unwrap();
        let d = Deferred::open(&path).unwrap();
        assert!(d.is_empty());
    }
}

//! One lab per user (the newer SWIM contract): a queue message that provisions or
//! decommissions a user's lab, decided and applied in one transaction with its receipt.
//!
//! A user's **labs** are the environments of one source with that owner whose desired state
//! is not `deleted`; the **current** lab is the newest of those that has not failed (one at
//! most, since a provision replaces the others in the transaction that creates it). The
//! lab an environment is for is one of its labels. Deciding in the transaction that writes
//! (not from a cache read before it) is what keeps two messages for one user, in one batch
//! or in two, from both creating a lab.

use lapse_core::model::{DesiredState, Environment, ObservedState};
use lapse_core::now_millis;
use rusqlite::{Connection, OptionalExtension as _};

use crate::{ENV_COLUMNS, NewEvent, Op, SqliteStore, StoreError, WriteOp};
use crate::{append_events, environment_from, insert_row, write_row};

/// A lab message: its tag, the queue, the source of the labs and the label naming their lab,
/// and the text of the events of the labs it removes.
#[derive(Clone, Debug)]
pub struct LabMessage<'a> {
    pub queue: &'a str,
    pub tag: &'a str,
    pub source: &'a str,
    pub owner: &'a str,
    pub lab_label: &'a str,
    /// The message of the `delete` event of each lab it removes (actor: the source).
    pub removal: String,
}

/// What a lab message asks for.
#[derive(Clone, Debug)]
pub enum LabRequest<'a> {
    /// `lab` for the owner, made as `env` (with its event) unless it is their lab already.
    Provision {
        lab: &'a str,
        env: &'a Environment,
        event: NewEvent,
    },
    Decommission(LabDecommission<'a>),
}

/// What [`Store::apply_lab_messages`] did with a provision.
#[derive(Clone, Debug, PartialEq)]
pub enum LabProvisionOutcome {
    /// The lab was created; the user's other labs (a lab switch, or failed ones) are deleted.
    Created { env: Box<Environment>, replaced: Vec<Environment> },
    /// The user's current lab is already this lab: nothing changed.
    SameLab(Box<Environment>),
    /// Its tag has a receipt: applied before.
    AlreadyApplied,
}

/// What a decommission asks for: the lab it names, and the server id it may carry.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LabDecommission<'a> {
    pub lab: Option<&'a str>,
    pub server_id: Option<&'a str>,
}

/// What [`Store::apply_lab_messages`] did with a decommission.
#[derive(Clone, Debug, PartialEq)]
pub enum LabDecommissionOutcome {
    /// These environments are now to be deleted (perhaps none).
    Deleted(Vec<Environment>),
    /// The message named another lab than the current one, and no server id: ignored.
    Stale { current_lab: String },
    /// The user has no lab and the message no server id of theirs: nothing to do.
    NoLab,
    /// Its tag has a receipt: applied before.
    AlreadyApplied,
}

/// What one lab message did.
#[derive(Clone, Debug, PartialEq)]
pub enum LabOutcome {
    Provision(LabProvisionOutcome),
    Decommission(LabDecommissionOutcome),
}

impl SqliteStore {
    /// [`crate::Store::apply_lab_messages`], on SQLite.
    pub async fn apply_lab_messages(
        &self,
        items: &[(LabMessage<'_>, LabRequest<'_>)],
    ) -> Result<Vec<LabOutcome>, StoreError> {
        let owned: Vec<Owned> = items.iter().map(Owned::from).collect();
        let (outcomes, changed) = self
            .writer
            .run("apply lab", move |conn| {
                let items: Vec<(LabMessage<'_>, LabRequest<'_>)> = owned.iter().map(Owned::borrowed).collect();
                apply(conn, &items)
            })
            .await?;
        for env in &changed {
            self.published(env);
        }
        Ok(outcomes)
    }

    /// [`crate::Store::lab_rows`], on SQLite.
    pub async fn lab_rows(&self, source: &str, owner: &str) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE source = ? AND owner = ? AND observed != 'deleted' \
             ORDER BY created_at DESC, id DESC"
        ))
        .bind(source)
        .bind(owner)
        .fetch_all(&self.reader)
        .await
        .op("lab rows")?;
        rows.iter().map(environment_from).collect()
    }
}

/// The messages' work, in the writer's transaction: their outcomes and the rows changed.
fn apply(
    conn: &Connection,
    items: &[(LabMessage<'_>, LabRequest<'_>)],
) -> Result<(Vec<LabOutcome>, Vec<Environment>), StoreError> {
    let mut seen = std::collections::HashSet::new();
    let mut outcomes = Vec::with_capacity(items.len());
    let mut changed: Vec<Environment> = Vec::new();
    let mut events = Vec::new();
    for (message, request) in items {
        if !seen.insert(message.tag) || has_receipt(conn, message.tag)? {
            outcomes.push(match request {
                LabRequest::Provision { .. } => LabOutcome::Provision(LabProvisionOutcome::AlreadyApplied),
                LabRequest::Decommission(_) => LabOutcome::Decommission(LabDecommissionOutcome::AlreadyApplied),
            });
            continue;
        }
        let labs = labs_of(conn, message.source, message.owner)?;
        let current = current(&labs).cloned();
        let remove = |tx_changed: &mut Vec<Environment>, events: &mut Vec<NewEvent>, env: &Environment| {
            let mut env = env.clone();
            env.desired = DesiredState::Deleted;
            env.restart_on_extend = false;
            env.updated_at = now_millis();
            events.push(NewEvent::new(&env.id, message.source, "delete", "ok", message.removal.clone()));
            tx_changed.push(env.clone());
            env
        };
        let outcome = match request {
            LabRequest::Provision { lab, env, event } => match &current {
                Some(c) if c.labels.get(message.lab_label).map(String::as_str) == Some(*lab) => {
                    LabOutcome::Provision(LabProvisionOutcome::SameLab(Box::new(c.clone())))
                }
                _ => {
                    let mut replaced = Vec::with_capacity(labs.len());
                    for old in &labs {
                        let old = remove(&mut changed, &mut events, old);
                        write_row(conn, &old)?;
                        replaced.push(old);
                    }
                    insert_row(conn, env)?;
                    events.push(event.clone());
                    changed.push((*env).clone());
                    LabOutcome::Provision(LabProvisionOutcome::Created { env: Box::new((*env).clone()), replaced })
                }
            },
            LabRequest::Decommission(asked) => {
                let (targets, fixed) = decommission_targets(&labs, message.lab_label, asked);
                let mut gone = Vec::with_capacity(targets.len());
                for env in &targets {
                    let env = remove(&mut changed, &mut events, env);
                    write_row(conn, &env)?;
                    gone.push(env);
                }
                LabOutcome::Decommission(decommission_outcome(fixed, gone))
            }
        };
        outcomes.push(outcome);
        finish(conn, message)?;
    }
    append_events(conn, &events)?;
    Ok((outcomes, changed))
}

/// A decommission's work among the user's `labs` (newest first): the rows to delete and, when
/// the outcome is not simply their deletion, that outcome. Both backends decide with this.
pub(crate) fn decommission_targets(
    labs: &[Environment],
    lab_label: &str,
    asked: &LabDecommission<'_>,
) -> (Vec<Environment>, Option<LabDecommissionOutcome>) {
    let by_id =
        |id: Option<&str>| -> Vec<Environment> { labs.iter().filter(|e| Some(e.id.as_str()) == id).cloned().collect() };
    let failed = labs.iter().filter(|e| e.observed == ObservedState::Failed);
    match current(labs) {
        None if asked.server_id.is_some() => (by_id(asked.server_id), None),
        None => (failed.cloned().collect(), Some(LabDecommissionOutcome::NoLab)),
        Some(c) => {
            let current_lab = c.labels.get(lab_label).cloned().unwrap_or_default();
            match asked.lab {
                Some(lab) if lab != current_lab => match asked.server_id {
                    Some(_) => (by_id(asked.server_id), None),
                    None => (vec![], Some(LabDecommissionOutcome::Stale { current_lab })),
                },
                _ => (std::iter::once(c.clone()).chain(failed.cloned()).collect(), None),
            }
        }
    }
}

/// A decommission's outcome once the rows of [`decommission_targets`] are deleted (`gone`).
pub(crate) fn decommission_outcome(
    fixed: Option<LabDecommissionOutcome>,
    gone: Vec<Environment>,
) -> LabDecommissionOutcome {
    match fixed {
        Some(LabDecommissionOutcome::NoLab) if !gone.is_empty() => LabDecommissionOutcome::Deleted(gone),
        Some(outcome) => outcome,
        None => LabDecommissionOutcome::Deleted(gone),
    }
}

/// The newest lab that has not failed.
pub(crate) fn current(labs: &[Environment]) -> Option<&Environment> {
    labs.iter().find(|e| e.observed != ObservedState::Failed)
}

fn has_receipt(conn: &Connection, tag: &str) -> Result<bool, StoreError> {
    let known = conn
        .prepare_cached("SELECT 1 FROM queue_receipts WHERE tag = ?1")
        .and_then(|mut st| st.query_row([tag], |_| Ok(())).optional())
        .op("apply lab")?;
    Ok(known.is_some())
}

/// The owner's labs, newest first.
fn labs_of(conn: &Connection, source: &str, owner: &str) -> Result<Vec<Environment>, StoreError> {
    static LABS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE source = ?1 AND owner = ?2 AND desired != 'deleted' \
             AND observed != 'deleted' ORDER BY created_at DESC, id DESC"
        )
    });
    let mut st = conn.prepare_cached(&LABS).op("apply lab")?;
    let rows: Vec<Result<Environment, StoreError>> =
        st.query_map([source, owner], |r| Ok(environment_from(r))).and_then(|rows| rows.collect()).op("apply lab")?;
    rows.into_iter().collect()
}

/// The receipt and the queue's count.
fn finish(conn: &Connection, message: &LabMessage<'_>) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO queue_receipts (tag, queue, at) VALUES (?1, ?2, ?3)")
        .and_then(|mut st| st.execute(rusqlite::params![message.tag, message.queue, now_millis()]))
        .op("apply lab")?;
    conn.prepare_cached(
        "INSERT INTO queue_counters (queue, processed) VALUES (?1, 1) \
         ON CONFLICT (queue) DO UPDATE SET processed = processed + 1",
    )
    .and_then(|mut st| st.execute([message.queue]))
    .op("apply lab")?;
    Ok(())
}

/// A lab message and its request, owned, to be applied on the writer's thread.
struct Owned {
    queue: String,
    tag: String,
    source: String,
    owner: String,
    lab_label: String,
    removal: String,
    request: OwnedRequest,
}

enum OwnedRequest {
    Provision { lab: String, env: Box<Environment>, event: NewEvent },
    Decommission { lab: Option<String>, server_id: Option<String> },
}

impl Owned {
    fn from((m, r): &(LabMessage<'_>, LabRequest<'_>)) -> Owned {
        Owned {
            queue: m.queue.to_owned(),
            tag: m.tag.to_owned(),
            source: m.source.to_owned(),
            owner: m.owner.to_owned(),
            lab_label: m.lab_label.to_owned(),
            removal: m.removal.clone(),
            request: match r {
                LabRequest::Provision { lab, env, event } => OwnedRequest::Provision {
                    lab: (*lab).to_owned(),
                    env: Box::new((*env).clone()),
                    event: event.clone(),
                },
                LabRequest::Decommission(d) => OwnedRequest::Decommission {
                    lab: d.lab.map(str::to_owned),
                    server_id: d.server_id.map(str::to_owned),
                },
            },
        }
    }

    fn borrowed(&self) -> (LabMessage<'_>, LabRequest<'_>) {
        let message = LabMessage {
            queue: &self.queue,
            tag: &self.tag,
            source: &self.source,
            owner: &self.owner,
            lab_label: &self.lab_label,
            removal: self.removal.clone(),
        };
        let request = match &self.request {
            OwnedRequest::Provision { lab, env, event } => LabRequest::Provision { lab, env, event: event.clone() },
            OwnedRequest::Decommission { lab, server_id } => {
                LabRequest::Decommission(LabDecommission { lab: lab.as_deref(), server_id: server_id.as_deref() })
            }
        };
        (message, request)
    }
}

#[cfg(test)]
mod tests {
    use lapse_core::model::Spec;

    use super::*;

    const LAB: &str = "swim.v2.lab_id";

    fn lab(id: char, owner: &str, lab: &str) -> Environment {
        let spec = Spec { provider: "process".into(), cmd: vec!["sleep".into(), "5".into()], ..Default::default() };
        let mut e = Environment::new(id.to_string().repeat(32), owner.to_owned(), spec, now_millis());
        e.source = "swim_v2".into();
        e.labels.insert(LAB.into(), lab.into());
        e
    }

    fn message<'a>(tag: &'a str, owner: &'a str) -> LabMessage<'a> {
        LabMessage { queue: "q", tag, source: "swim_v2", owner, lab_label: LAB, removal: String::new() }
    }

    fn provision<'a>(tag: &'a str, env: &'a Environment) -> (LabMessage<'a>, LabRequest<'a>) {
        let lab = env.labels[LAB].as_str();
        let event = NewEvent::new(&env.id, "swim_v2", "create", "ok", "");
        (message(tag, &env.owner), LabRequest::Provision { lab, env, event })
    }

    fn decommission<'a>(
        tag: &'a str,
        owner: &'a str,
        lab: Option<&'a str>,
        id: Option<&'a str>,
    ) -> (LabMessage<'a>, LabRequest<'a>) {
        (message(tag, owner), LabRequest::Decommission(LabDecommission { lab, server_id: id }))
    }

    fn ids(envs: &[Environment]) -> Vec<&str> {
        envs.iter().map(|e| e.id.as_str()).collect()
    }

    #[tokio::test]
    async fn one_lab_per_user_and_the_stale_rule() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("lapse.db")).await.unwrap();
        let (a, b, c, bob) = (lab('a', "ann", "5"), lab('b', "ann", "5"), lab('c', "ann", "7"), lab('d', "bob", "1"));
        // In one batch: lab 5, its tag again, lab 5 under a new tag, then lab 7 (a switch).
        let got = store
            .apply_lab_messages(&[
                provision("t1", &a),
                provision("t1", &a),
                provision("t2", &b),
                provision("t3", &c),
                provision("t4", &bob),
            ])
            .await
            .unwrap();
        assert!(
            matches!(&got[0], LabOutcome::Provision(LabProvisionOutcome::Created { replaced, .. }) if replaced.is_empty())
        );
        assert_eq!(got[1], LabOutcome::Provision(LabProvisionOutcome::AlreadyApplied));
        assert!(matches!(&got[2], LabOutcome::Provision(LabProvisionOutcome::SameLab(e)) if e.id == a.id));
        let LabOutcome::Provision(LabProvisionOutcome::Created { replaced, .. }) = &got[3] else {
            panic!("a switch creates")
        };
        assert_eq!(ids(replaced), [a.id.as_str()]);
        // Applied before: nothing again.
        let again = store.apply_lab_messages(&[provision("t1", &a)]).await.unwrap();
        assert_eq!(again, [LabOutcome::Provision(LabProvisionOutcome::AlreadyApplied)]);

        let got = store
            .apply_lab_messages(&[
                // Lab 5 is not ann's now: stale.
                decommission("t5", "ann", Some("5"), None),
                // bob's lab is not ann's to delete by its id.
                decommission("t6", "ann", Some("5"), Some(&bob.id)),
                // Unconditional: the current lab; then there is none.
                decommission("t7", "ann", None, None),
                decommission("t8", "ann", None, None),
            ])
            .await
            .unwrap();
        assert_eq!(got[0], LabOutcome::Decommission(LabDecommissionOutcome::Stale { current_lab: "7".into() }));
        assert_eq!(got[1], LabOutcome::Decommission(LabDecommissionOutcome::Deleted(vec![])));
        let LabOutcome::Decommission(LabDecommissionOutcome::Deleted(gone)) = &got[2] else { panic!("deleted") };
        assert_eq!(ids(gone), [c.id.as_str()]);
        assert_eq!(got[3], LabOutcome::Decommission(LabDecommissionOutcome::NoLab));
        assert_eq!(store.get(&bob.id).await.unwrap().unwrap().desired, DesiredState::Running);
        assert_eq!(
            ids(&store.lab_rows("swim_v2", "ann").await.unwrap()),
            [c.id.as_str(), a.id.as_str()],
            "to delete, not yet gone"
        );

        // With a mismatched lab and its own id, the named lab goes.
        let got = store.apply_lab_messages(&[decommission("t9", "bob", Some("9"), Some(&bob.id))]).await.unwrap();
        let LabOutcome::Decommission(LabDecommissionOutcome::Deleted(gone)) = &got[0] else { panic!("deleted") };
        assert_eq!(ids(gone), [bob.id.as_str()]);
    }
}

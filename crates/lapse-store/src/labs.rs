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
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use crate::{ENV_COLUMNS, NewEvent, Op, Store, StoreError};
use crate::{append_events, bind_environment, environment_from_row, write_row};

/// A lab message: its tag, the queue, the source of the labs and the label naming their lab.
#[derive(Clone, Copy, Debug)]
pub struct LabMessage<'a> {
    pub queue: &'a str,
    pub tag: &'a str,
    pub source: &'a str,
    pub owner: &'a str,
    pub lab_label: &'a str,
}

/// What [`Store::apply_lab_provision`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum LabProvisionOutcome {
    /// The lab was created; the user's other labs (a lab switch, or failed ones) are deleted.
    Created { env: Environment, replaced: Vec<Environment> },
    /// The user's current lab is already this lab: nothing changed.
    SameLab(Environment),
    /// Its tag has a receipt: applied before.
    AlreadyApplied,
}

/// What a decommission asks for: the lab it names, and the server id it may carry.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LabDecommission<'a> {
    pub lab: Option<&'a str>,
    pub server_id: Option<&'a str>,
}

/// What [`Store::apply_lab_decommission`] did.
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

impl Store {
    /// Provisions `lab` for the message's owner unless it is their current lab already: in one
    /// transaction, `create` is inserted and every other lab of theirs is set to be deleted
    /// (`replaced` names each one's event), with the receipt.
    pub async fn apply_lab_provision(
        &self,
        message: LabMessage<'_>,
        lab: &str,
        create: (&Environment, NewEvent),
        mut replaced: impl FnMut(&Environment) -> NewEvent,
    ) -> Result<LabProvisionOutcome, StoreError> {
        let mut tx = self.writer.begin().await.op("apply lab")?;
        if has_receipt(&mut tx, message.tag).await? {
            return Ok(LabProvisionOutcome::AlreadyApplied);
        }
        let labs = labs_of(&mut tx, message.source, message.owner).await?;
        let current = current(&labs);
        let outcome = match current {
            Some(env) if env.labels.get(message.lab_label).map(String::as_str) == Some(lab) => {
                LabProvisionOutcome::SameLab(env.clone())
            }
            _ => {
                let (env, event) = create;
                let mut events = vec![event];
                let mut gone = Vec::with_capacity(labs.len());
                for mut old in labs {
                    old.desired = DesiredState::Deleted;
                    old.restart_on_extend = false;
                    old.updated_at = now_millis();
                    events.push(replaced(&old));
                    write_row(&mut tx, &old).await?;
                    gone.push(old);
                }
                let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO environments ({ENV_COLUMNS}) "));
                q.push_values([env], bind_environment);
                q.build().execute(&mut *tx).await.op("apply lab")?;
                append_events(&mut tx, &events).await?;
                LabProvisionOutcome::Created { env: env.clone(), replaced: gone }
            }
        };
        finish(&mut tx, message).await?;
        tx.commit().await.op("apply lab")?;
        if let LabProvisionOutcome::Created { env, replaced } = &outcome {
            for old in replaced {
                self.published(old);
            }
            self.published(env);
        }
        Ok(outcome)
    }

    /// Decommissions the message's owner's lab by the stale rule, with the receipt:
    /// - with no current lab, or with a `lab` other than the current one: the lab whose id is
    ///   `server_id` (if it is one of the owner's), else nothing (`NoLab` / `Stale`);
    /// - otherwise (no `lab`, or the current one): the current lab, whatever `server_id` says.
    ///
    /// Failed labs of the owner go with any decommission that deletes or finds no lab.
    pub async fn apply_lab_decommission(
        &self,
        message: LabMessage<'_>,
        request: LabDecommission<'_>,
        mut deleted: impl FnMut(&Environment) -> NewEvent,
    ) -> Result<LabDecommissionOutcome, StoreError> {
        let mut tx = self.writer.begin().await.op("apply lab")?;
        if has_receipt(&mut tx, message.tag).await? {
            return Ok(LabDecommissionOutcome::AlreadyApplied);
        }
        let labs = labs_of(&mut tx, message.source, message.owner).await?;
        let current = current(&labs).cloned();
        let by_id = |id: Option<&str>| -> Vec<Environment> {
            labs.iter().filter(|e| Some(e.id.as_str()) == id).cloned().collect()
        };
        let failed = labs.iter().filter(|e| e.observed == ObservedState::Failed);
        let (targets, outcome): (Vec<Environment>, Option<LabDecommissionOutcome>) = match &current {
            None if request.server_id.is_some() => (by_id(request.server_id), None),
            None => (failed.cloned().collect(), Some(LabDecommissionOutcome::NoLab)),
            Some(env) => {
                let current_lab = env.labels.get(message.lab_label).cloned().unwrap_or_default();
                match request.lab {
                    Some(lab) if lab != current_lab => match request.server_id {
                        Some(_) => (by_id(request.server_id), None),
                        None => (vec![], Some(LabDecommissionOutcome::Stale { current_lab })),
                    },
                    _ => (std::iter::once(env.clone()).chain(failed.cloned()).collect(), None),
                }
            }
        };
        let mut events = Vec::with_capacity(targets.len());
        let mut changed = Vec::with_capacity(targets.len());
        for mut env in targets {
            env.desired = DesiredState::Deleted;
            env.restart_on_extend = false;
            env.updated_at = now_millis();
            events.push(deleted(&env));
            write_row(&mut tx, &env).await?;
            changed.push(env);
        }
        append_events(&mut tx, &events).await?;
        finish(&mut tx, message).await?;
        tx.commit().await.op("apply lab")?;
        for env in &changed {
            self.published(env);
        }
        Ok(match outcome {
            Some(LabDecommissionOutcome::NoLab) if !changed.is_empty() => LabDecommissionOutcome::Deleted(changed),
            Some(outcome) => outcome,
            None => LabDecommissionOutcome::Deleted(changed),
        })
    }

    /// The environments of `source` and `owner` not yet deleted (observed), newest first:
    /// what one user's state key mirrors.
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
        rows.iter().map(environment_from_row).collect()
    }
}

/// The newest lab that has not failed.
fn current(labs: &[Environment]) -> Option<&Environment> {
    labs.iter().find(|e| e.observed != ObservedState::Failed)
}

async fn has_receipt(conn: &mut SqliteConnection, tag: &str) -> Result<bool, StoreError> {
    let known = sqlx::query("SELECT 1 FROM queue_receipts WHERE tag = ?")
        .bind(tag)
        .fetch_optional(&mut *conn)
        .await
        .op("apply lab")?;
    Ok(known.is_some())
}

/// The owner's labs, newest first.
async fn labs_of(conn: &mut SqliteConnection, source: &str, owner: &str) -> Result<Vec<Environment>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {ENV_COLUMNS} FROM environments WHERE source = ? AND owner = ? AND desired != 'deleted' \
         AND observed != 'deleted' ORDER BY created_at DESC, id DESC"
    ))
    .bind(source)
    .bind(owner)
    .fetch_all(&mut *conn)
    .await
    .op("apply lab")?;
    rows.iter().map(environment_from_row).collect()
}

/// The receipt and the queue's count.
async fn finish(conn: &mut SqliteConnection, message: LabMessage<'_>) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO queue_receipts (tag, queue, at) VALUES (?, ?, ?)")
        .bind(message.tag)
        .bind(message.queue)
        .bind(now_millis())
        .execute(&mut *conn)
        .await
        .op("apply lab")?;
    sqlx::query(
        "INSERT INTO queue_counters (queue, processed) VALUES (?, 1) \
         ON CONFLICT (queue) DO UPDATE SET processed = processed + 1",
    )
    .bind(message.queue)
    .execute(&mut *conn)
    .await
    .op("apply lab")?;
    Ok(())
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
        LabMessage { queue: "q", tag, source: "swim_v2", owner, lab_label: LAB }
    }

    fn event(e: &Environment) -> NewEvent {
        NewEvent::new(&e.id, "swim_v2", "x", "ok", "")
    }

    #[tokio::test]
    async fn one_lab_per_user_and_the_stale_rule() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("lapse.db")).await.unwrap();
        let a = lab('a', "ann", "5");
        let got = store.apply_lab_provision(message("t1", "ann"), "5", (&a, event(&a)), event).await.unwrap();
        assert!(matches!(got, LabProvisionOutcome::Created { ref replaced, .. } if replaced.is_empty()));
        // The same tag again, and the same lab under a new tag: nothing.
        let again = store.apply_lab_provision(message("t1", "ann"), "5", (&a, event(&a)), event).await.unwrap();
        assert_eq!(again, LabProvisionOutcome::AlreadyApplied);
        let b = lab('b', "ann", "5");
        let same = store.apply_lab_provision(message("t2", "ann"), "5", (&b, event(&b)), event).await.unwrap();
        assert!(matches!(same, LabProvisionOutcome::SameLab(ref e) if e.id == a.id));
        // Another lab replaces it.
        let c = lab('c', "ann", "7");
        let LabProvisionOutcome::Created { replaced, .. } =
            store.apply_lab_provision(message("t3", "ann"), "7", (&c, event(&c)), event).await.unwrap()
        else {
            panic!("a switch creates")
        };
        assert_eq!(replaced.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [a.id.as_str()]);
        // A decommission of lab 5 is stale; with lab 5's id it takes that one only.
        let stale = LabDecommission { lab: Some("5"), server_id: None };
        let got = store.apply_lab_decommission(message("t4", "ann"), stale, event).await.unwrap();
        assert_eq!(got, LabDecommissionOutcome::Stale { current_lab: "7".into() });
        // An id of another user's lab is not theirs to delete.
        let bob = lab('d', "bob", "1");
        store.apply_lab_provision(message("t5", "bob"), "1", (&bob, event(&bob)), event).await.unwrap();
        let foreign = LabDecommission { lab: Some("5"), server_id: Some(&bob.id) };
        let got = store.apply_lab_decommission(message("t6", "ann"), foreign, event).await.unwrap();
        assert_eq!(got, LabDecommissionOutcome::Deleted(vec![]));
        // Unconditional: the current lab.
        let got = store.apply_lab_decommission(message("t7", "ann"), LabDecommission::default(), event).await.unwrap();
        let LabDecommissionOutcome::Deleted(gone) = got else { panic!("deleted") };
        assert_eq!(gone.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [c.id.as_str()]);
        let got = store.apply_lab_decommission(message("t8", "ann"), LabDecommission::default(), event).await.unwrap();
        assert_eq!(got, LabDecommissionOutcome::NoLab);
        assert_eq!(store.get(&bob.id).await.unwrap().unwrap().desired, DesiredState::Running);
        assert_eq!(store.lab_rows("swim_v2", "ann").await.unwrap().len(), 2, "a and c: to delete, not yet gone");
    }
}

//! The PostgreSQL ports of the queues, labs and webhooks operations against a real server:
//! the SQLite tests of those operations (src/tests/mod.rs, src/tests/webhooks.rs, the
//! `queues` and `labs` modules' tests) mirrored, and what two replicas (two `PgStore`s on one
//! database) doing the same work at once must come to.

use std::collections::{BTreeMap, HashSet};

use lapse_core::model::{DesiredState, Environment, ObservedState, Spec};
use lapse_core::now_millis;

use super::PgStore;
use super::testdb::TestDb;
use super::write::{append_events, insert_rows};
use crate::rows::environment_from;
use crate::{AppliedCreates, ChangeOutcome, ListFilter, NewEvent, QueuedChange, QueuedCreate};
use crate::{LabDecommission, LabDecommissionOutcome, LabMessage, LabOutcome, LabProvisionOutcome, LabRequest};

fn sample(id: &str, owner: &str) -> Environment {
    let spec = Spec { provider: "process".into(), cmd: vec!["sleep".into(), "5".into()], ..Default::default() };
    let mut e = Environment::new(id.to_owned(), owner.to_owned(), spec, 1);
    e.name = Some("lab".into());
    e.labels = BTreeMap::from([("LabID".to_string(), "7".to_string())]);
    e.expires_at = Some(1_000);
    e
}

/// Inserts rows and events in one transaction (the store's own insert is ported elsewhere).
async fn insert(store: &PgStore, envs: &[Environment], events: &[NewEvent]) {
    let mut tx = store.pool().begin().await.unwrap();
    insert_rows(&mut tx, envs).await.unwrap();
    append_events(&mut tx, events).await.unwrap();
    tx.commit().await.unwrap();
}

async fn get(store: &PgStore, id: &str) -> Option<Environment> {
    let row = sqlx::query(&format!("SELECT {} FROM environments WHERE id = $1", crate::ENV_COLUMNS))
        .bind(id)
        .fetch_optional(store.pool())
        .await
        .unwrap();
    row.map(|r| environment_from(&r).unwrap())
}

/// Environments not deleted (observed), as `list` with no filter counts them.
async fn live(store: &PgStore) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM environments WHERE observed <> 'deleted'")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

async fn count(store: &PgStore, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(store.pool()).await.unwrap()
}

fn item(tag: &str, id: char, owner: &str) -> QueuedCreate {
    let id = id.to_string().repeat(32);
    let mut env = sample(&id, owner);
    env.source = "swim".into();
    QueuedCreate { tag: tag.to_owned(), event: NewEvent::new(&id, "swim", "create", "ok", ""), env }
}

fn delete(e: &mut Environment) -> Vec<NewEvent> {
    e.desired = DesiredState::Deleted;
    vec![NewEvent::new(&e.id, "swim", "delete", "ok", "")]
}

#[tokio::test]
async fn idempotency_keys_apply_a_request_once_whatever_its_tag() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let create = |tag: &str, id: char| item(tag, id, "ann");
    let (a, b, c, d) = (create("t1", 'a'), create("t2", 'b'), create("t3", 'c'), create("t4", 'd'));
    let applied = store.apply_keyed_creates("q", &[(&a, Some("k1")), (&b, Some("k1")), (&c, None)]).await.unwrap();
    assert_eq!(applied, AppliedCreates { fresh: vec!["t1".into(), "t3".into()], duplicate_keys: vec!["t2".into()] });
    let again = store.apply_keyed_creates("q", &[(&d, Some("k1")), (&a, Some("k1"))]).await.unwrap();
    assert_eq!(again, AppliedCreates { fresh: vec![], duplicate_keys: vec!["t4".into()] });
    assert_eq!(live(&store).await, 2);
    assert!(store.receipts(&["t2".into(), "t4".into()]).await.unwrap().is_empty(), "a duplicate leaves no receipt");
    assert_eq!(store.apply_keyed_creates("other", &[(&d, Some("k1"))]).await.unwrap().fresh, ["t4"], "per queue");

    let mut e = sample(&"e".repeat(32), "ann");
    e.source = "api".into();
    insert(&store, &[e.clone()], &[]).await;
    let filter = ListFilter { owner: Some("ann".into()), ..Default::default() };
    let change = |tag| QueuedChange { tag, idempotency_key: Some("d1"), source: Some("swim"), filter: &filter };
    let ChangeOutcome::Applied(changed) = store.apply_queued_change("d", change("t5"), delete).await.unwrap() else {
        panic!("applied")
    };
    assert_eq!(changed.len(), 3, "the three swim environments, not the api one");
    assert!(changed.iter().all(|e| e.source == "swim"));
    assert_eq!(store.apply_queued_change("d", change("t5"), delete).await.unwrap(), ChangeOutcome::AlreadyApplied);
    assert_eq!(store.apply_queued_change("d", change("t6"), delete).await.unwrap(), ChangeOutcome::DuplicateKey);
    assert!(store.receipts(&["t6".into()]).await.unwrap().is_empty());
    assert_eq!(get(&store, &e.id).await.unwrap().desired, DesiredState::Running);
    // A label filter selects by the label's value.
    let by_label = ListFilter { labels: vec![("LabID".into(), "8".into())], ..Default::default() };
    assert_eq!(store.apply_change("d", "t6b", &by_label, delete).await.unwrap().unwrap().len(), 0);

    assert_eq!(store.prune_idempotency_keys("q", 0, 10).await.unwrap(), 0);
    assert_eq!(store.prune_idempotency_keys("other", now_millis() + 1, 10).await.unwrap(), 1);
    store.apply_keyed_creates("q", &[(&create("t7", 'f'), Some("k2"))]).await.unwrap();
    assert_eq!(store.prune_idempotency_keys("q", 0, 1).await.unwrap(), 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM queue_idempotency WHERE queue = 'q'")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(left, ["k2"]);
    store.close().await;
}

const LAB: &str = "swim.v2.lab_id";

fn lab(id: char, owner: &str, lab: &str) -> Environment {
    let mut e = sample(&id.to_string().repeat(32), owner);
    e.created_at = now_millis();
    e.source = "swim_v2".into();
    e.labels.insert(LAB.into(), lab.into());
    e
}

fn message<'a>(tag: &'a str, owner: &'a str) -> LabMessage<'a> {
    LabMessage { queue: "q", tag, source: "swim_v2", owner, lab_label: LAB, removal: String::new() }
}

fn provision<'a>(tag: &'a str, env: &'a Environment) -> (LabMessage<'a>, LabRequest<'a>) {
    let event = NewEvent::new(&env.id, "swim_v2", "create", "ok", "");
    (message(tag, &env.owner), LabRequest::Provision { lab: env.labels[LAB].as_str(), env, event })
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
    let db = TestDb::new().await;
    let store = db.store().await;
    let (a, b, c, bob) = (lab('a', "ann", "5"), lab('b', "ann", "5"), lab('c', "ann", "7"), lab('d', "bob", "1"));
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
    let LabOutcome::Provision(LabProvisionOutcome::Created { replaced, .. }) = &got[3] else { panic!("a switch") };
    assert_eq!(ids(replaced), [a.id.as_str()]);
    assert_eq!(store.queue_counters().await.unwrap()["q"], 4, "four messages applied");
    let again = store.apply_lab_messages(&[provision("t1", &a)]).await.unwrap();
    assert_eq!(again, [LabOutcome::Provision(LabProvisionOutcome::AlreadyApplied)]);

    let got = store
        .apply_lab_messages(&[
            decommission("t5", "ann", Some("5"), None),
            decommission("t6", "ann", Some("5"), Some(&bob.id)),
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
    assert_eq!(get(&store, &bob.id).await.unwrap().desired, DesiredState::Running);
    assert_eq!(ids(&store.lab_rows("swim_v2", "ann").await.unwrap()), [c.id.as_str(), a.id.as_str()]);

    let got = store.apply_lab_messages(&[decommission("t9", "bob", Some("9"), Some(&bob.id))]).await.unwrap();
    let LabOutcome::Decommission(LabDecommissionOutcome::Deleted(gone)) = &got[0] else { panic!("deleted") };
    assert_eq!(ids(gone), [bob.id.as_str()]);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM events WHERE action = 'delete'").await, 3);
    store.close().await;
}

#[tokio::test]
async fn two_replicas_apply_the_same_queued_creates_once() {
    let db = TestDb::new().await;
    let (one, two) = (db.store().await, db.store().await);
    let batch: Vec<QueuedCreate> = (0..40)
        .map(|i| {
            let id = format!("{i:032}");
            QueuedCreate {
                tag: format!("t{i}"),
                event: NewEvent::new(&id, "swim", "create", "ok", ""),
                env: sample(&id, "ann"),
            }
        })
        .collect();
    // Each replica takes the batch in its own order, over several rounds.
    let mut reversed = batch.clone();
    reversed.reverse();
    for round in 0..3 {
        let (a, b) = tokio::join!(one.apply_creates("q", &batch), two.apply_creates("q", &reversed));
        let (a, b) = (a.unwrap(), b.unwrap());
        if round > 0 {
            assert!(a.is_empty() && b.is_empty(), "applied before: {a:?} {b:?}");
        }
        let union: HashSet<&String> = a.iter().chain(&b).collect();
        assert_eq!(union.len(), a.len() + b.len(), "no message applied by both: {a:?} {b:?}");
    }
    assert_eq!(live(&one).await, 40);
    assert_eq!(count(&one, "SELECT COUNT(*) FROM events WHERE action = 'create'").await, 40);
    assert_eq!(one.queue_counters().await.unwrap()["q"], 40);
    assert_eq!(count(&one, "SELECT COUNT(*) FROM queue_receipts").await, 40);

    // One message (one key) under two tags, and one tag twice, at once.
    let filter = ListFilter { owner: Some("ann".into()), ..Default::default() };
    let change = |tag| QueuedChange { tag, idempotency_key: Some("k"), source: None, filter: &filter };
    let (a, b) = tokio::join!(
        one.apply_queued_change("d", change("x1"), delete),
        two.apply_queued_change("d", change("x2"), delete)
    );
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|o| matches!(o, ChangeOutcome::Applied(_)));
    assert_eq!(outcomes[0], ChangeOutcome::DuplicateKey);
    assert!(matches!(&outcomes[1], ChangeOutcome::Applied(c) if c.len() == 40));
    let (a, b) =
        tokio::join!(one.apply_change("d", "x3", &filter, delete), two.apply_change("d", "x3", &filter, delete));
    assert_eq!([a.unwrap().is_some(), b.unwrap().is_some()].iter().filter(|x| **x).count(), 1, "one applies x3");
    assert_eq!(count(&one, "SELECT COUNT(*) FROM events WHERE action = 'delete'").await, 40);
    assert_eq!(one.queue_counters().await.unwrap()["d"], 2);
    one.close().await;
    two.close().await;
}

#[tokio::test]
async fn two_replicas_provisioning_one_user_make_one_lab() {
    let db = TestDb::new().await;
    let (one, two) = (db.store().await, db.store().await);
    for round in 0..5 {
        let owner = format!("user{round}");
        let (a, b) = (lab('a', &owner, "5"), lab('b', &owner, "5"));
        let (a, b) = (Environment { id: format!("a{round}"), ..a }, Environment { id: format!("b{round}"), ..b });
        let (ta, tb) = (format!("ta{round}"), format!("tb{round}"));
        let (pa, pb) = ([provision(&ta, &a)], [provision(&tb, &b)]);
        let (x, y) = tokio::join!(one.apply_lab_messages(&pa), two.apply_lab_messages(&pb));
        let outcomes = [x.unwrap().remove(0), y.unwrap().remove(0)];
        let created = outcomes
            .iter()
            .filter(|o| match o {
                LabOutcome::Provision(LabProvisionOutcome::Created { replaced, .. }) => replaced.is_empty(),
                _ => false,
            })
            .count();
        let same =
            outcomes.iter().filter(|o| matches!(o, LabOutcome::Provision(LabProvisionOutcome::SameLab(_)))).count();
        assert_eq!((created, same), (1, 1), "{outcomes:?}");
        let labs = one.lab_rows("swim_v2", &owner).await.unwrap();
        assert_eq!(labs.len(), 1, "one lab: {:?}", ids(&labs));
        // One message (one tag) consumed by both: applied once.
        let c = Environment { id: format!("c{round}"), ..lab('c', &owner, "6") };
        let tc = format!("tc{round}");
        let same = [provision(&tc, &c)];
        let (x, y) = tokio::join!(one.apply_lab_messages(&same), two.apply_lab_messages(&same));
        let outcomes = [x.unwrap().remove(0), y.unwrap().remove(0)];
        let applied =
            outcomes.iter().filter(|o| matches!(o, LabOutcome::Provision(LabProvisionOutcome::Created { .. })));
        let skipped = outcomes.iter().filter(|o| **o == LabOutcome::Provision(LabProvisionOutcome::AlreadyApplied));
        assert_eq!((applied.count(), skipped.count()), (1, 1), "{outcomes:?}");
        assert_eq!(ids(&one.lab_rows("swim_v2", &owner).await.unwrap())[0], c.id, "the newest lab, the old to delete");
    }
    assert_eq!(one.queue_counters().await.unwrap()["q"], 15, "three messages a round, each applied once");
    one.close().await;
    two.close().await;
}

#[tokio::test]
async fn a_failed_lab_goes_with_a_decommission() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let mut failed = lab('f', "ann", "3");
    failed.observed = ObservedState::Failed;
    insert(&store, &[failed.clone()], &[]).await;
    let got = store.apply_lab_messages(&[decommission("t1", "ann", None, None)]).await.unwrap();
    let LabOutcome::Decommission(LabDecommissionOutcome::Deleted(gone)) = &got[0] else { panic!("{got:?}") };
    assert_eq!(ids(gone), [failed.id.as_str()], "no current lab: the failed ones go");
    assert_eq!(get(&store, &failed.id).await.unwrap().desired, DesiredState::Deleted);
    store.close().await;
}

mod webhooks;

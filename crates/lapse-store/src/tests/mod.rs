use lapse_core::model::{Lifecycle, Pool, Spec};

use super::*;

fn sample(id: &str, owner: &str) -> Environment {
    let spec = Spec { provider: "process".into(), cmd: vec!["sleep".into(), "5".into()], ..Default::default() };
    let mut e = Environment::new(id.to_owned(), owner.to_owned(), spec, 1);
    e.name = Some("lab".into());
    e.labels = BTreeMap::from([("LabID".to_string(), "7".to_string())]);
    e.expires_at = Some(1_000);
    e
}

/// What must outlive a test's store: its directory, or its database (dropped at the end).
pub(crate) enum Held {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Db(#[allow(dead_code)] crate::pg::testdb::TestDb),
}

/// A fresh SQLite store in a temporary directory.
pub(crate) async fn sqlite_store() -> (Held, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("lapse.db")).await.unwrap();
    (Held::Dir(dir), store)
}

/// A fresh PostgreSQL store on a database of its own (`LAPSE_TEST_POSTGRES_URL`).
pub(crate) async fn postgres_store() -> (Held, Store) {
    let db = crate::pg::testdb::TestDb::new().await;
    let store = Store::connect_postgres(&db.url).await.unwrap();
    (Held::Db(db), store)
}

/// A fresh SQLite store itself, for the tests of its writer and of SQLite's own failures.
pub(crate) async fn sqlite_itself() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("lapse.db")).await.unwrap();
    (dir, store)
}

/// `on_both!(name, ...)`: runs `async fn name(store: Store)` as two tests, `name::sqlite`
/// and `name::postgres`, each on a fresh store. The store's contract is one; so are its tests.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (_held, store) = crate::tests::sqlite_store().await;
                super::$name(store).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let (_held, store) = crate::tests::postgres_store().await;
                super::$name(store).await
            }
        }
    )*};
}

on_both!(
    round_trip_and_filters,
    update_is_atomic_and_refusal_writes_nothing,
    concurrent_updates_lose_nothing,
    concurrent_claims_never_share_a_member,
    queue_messages_apply_once_and_changes_are_published,
);

async fn round_trip_and_filters(store: Store) {
    let mut a = sample(&"a".repeat(32), "ada");
    a.job_id = Some("job-a".into());
    let mut b = sample(&"b".repeat(32), "bob");
    b.labels.insert("LabID".into(), "8".into());
    store.insert(&a, NewEvent::new(&a.id, "api", "create", "ok", "")).await.unwrap();
    store.insert(&b, NewEvent::new(&b.id, "api", "create", "ok", "")).await.unwrap();
    assert_eq!(store.get(&a.id).await.unwrap().as_ref(), Some(&a));
    assert_eq!(store.get_by_job("job-a").await.unwrap().as_ref(), Some(&a));
    assert_eq!(store.get("nope").await.unwrap(), None);

    let ids = |v: Vec<Environment>| v.into_iter().map(|e| e.owner).collect::<Vec<_>>();
    let all = ListFilter::default();
    assert_eq!(ids(store.list(&all).await.unwrap()), ["ada", "bob"]);
    let by_owner = ListFilter { owner: Some("bob".into()), ..Default::default() };
    assert_eq!(ids(store.list(&by_owner).await.unwrap()), ["bob"]);
    let by_label = ListFilter { labels: vec![("LabID".into(), "7".into())], ..Default::default() };
    assert_eq!(ids(store.list(&by_label).await.unwrap()), ["ada"]);
    assert_eq!(store.unconverged_ids().await.unwrap().len(), 2);
    assert_eq!(store.pending_expiries().await.unwrap(), vec![(a.id.clone(), 1_000), (b.id.clone(), 1_000)]);
}

async fn update_is_atomic_and_refusal_writes_nothing(store: Store) {
    let a = sample(&"a".repeat(32), "ada");
    store.insert(&a, NewEvent::new(&a.id, "api", "create", "ok", "")).await.unwrap();

    let refused: Result<_, StoreError> = store
        .update(&a.id, |e| {
            e.desired = DesiredState::Deleted;
            Err(StoreError::Corrupt { id: e.id.clone(), column: "test", message: "refused".into() })
        })
        .await;
    assert!(refused.is_err());
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().desired, DesiredState::Running);

    let updated = store
        .update::<StoreError>(&a.id, |e| {
            e.observed = ObservedState::Running;
            Ok(vec![NewEvent::new(&e.id, "reconciler", "transition", "running", "pending -> running")])
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.observed, ObservedState::Running);
    // Every field an update may change is written and read back as it was.
    let changed = store
        .update::<StoreError>(&a.id, |e| {
            e.tenant = "t".into();
            e.job_id = Some("job-1".into());
            e.pool = Some("p".into());
            e.pool_version = Some("2".into());
            e.replace = true;
            e.restarts = 3;
            e.max_retries = 4;
            e.exit_code = Some(7);
            e.finished_at = Some(99);
            e.reason = Some("why".into());
            e.next_attempt_at = Some(5);
            Ok(vec![])
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.get(&a.id).await.unwrap(), Some(changed));
    let filter = EventFilter { target: Some(a.id.clone()), limit: 100, ..Default::default() };
    let events = store.events(&filter).await.unwrap();
    assert_eq!(events.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["create", "transition"]);
    assert!(store.update::<StoreError>("missing", |_| Ok(vec![])).await.unwrap().is_none());
}

async fn concurrent_updates_lose_nothing(store: Store) {
    let a = sample(&"a".repeat(32), "ada");
    store.insert(&a, NewEvent::new(&a.id, "api", "create", "ok", "")).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = store.clone();
        let id = a.id.clone();
        tasks.push(tokio::spawn(async move {
            store
                .update::<StoreError>(&id, |e| {
                    e.attempts += 1;
                    Ok(vec![])
                })
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().attempts, 50);
}

#[tokio::test]
async fn controller_id_is_stable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lapse.db");
    let first = Store::open(&path).await.unwrap().controller_id().await.unwrap();
    let again = Store::open(&path).await.unwrap().controller_id().await.unwrap();
    assert_eq!(first, again);
    assert!(first.starts_with("lapse-"));
}

async fn concurrent_claims_never_share_a_member(store: Store) {
    let spec = sample("x", "x").spec;
    let pool = Pool {
        name: "p".into(),
        spec: spec.clone(),
        min: 5,
        max: 5,
        version: "1".into(),
        lifecycle: Lifecycle::Lease,
        source: "api".into(),
        on_claim: None,
        created_at: 0,
        updated_at: 0,
    };
    store.put_pool(&pool, NewEvent::new("p", "api", "put_pool", "ok", "")).await.unwrap();
    let members: Vec<Environment> = (0..5)
        .map(|i| {
            let mut e = sample(&format!("m{i}"), "pool:p");
            e.pool = Some("p".into());
            e.pool_version = Some("1".into());
            e.observed = ObservedState::Running;
            e
        })
        .collect();
    store.insert_many(&members, &[]).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (store, hash) = (store.clone(), spec.hash());
        tasks.push(tokio::spawn(async move {
            store
                .claim(&hash, None, move |e| {
                    e.owner = format!("claimer-{i}");
                    vec![]
                })
                .await
                .unwrap()
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        if let Some(e) = t.await.unwrap() {
            assert_eq!(e.pool, None);
            claimed.push(e.id);
        }
    }
    claimed.sort();
    assert_eq!(claimed, ["m0", "m1", "m2", "m3", "m4"]);
    assert!(store.pool_members().await.unwrap().is_empty());
    // A member of another version is never handed out.
    let mut old = sample("old", "pool:p");
    (old.pool, old.pool_version, old.observed) = (Some("p".into()), Some("0".into()), ObservedState::Running);
    store.insert(&old, NewEvent::new("old", "pool", "create", "ok", "")).await.unwrap();
    assert!(store.claim(&spec.hash(), None, |_| vec![]).await.unwrap().is_none());
}

async fn queue_messages_apply_once_and_changes_are_published(store: Store) {
    let mut feed = store.subscribe();
    let item = |tag: &str, id: char, owner: &str| QueuedCreate {
        tag: tag.to_owned(),
        env: sample(&id.to_string().repeat(32), owner),
        event: NewEvent::new(&id.to_string().repeat(32), "swim", "create", "ok", ""),
    };
    let batch = vec![item("t1", 'a', "ann"), item("t2", 'b', "ann"), item("t2", 'c', "ann")];
    assert_eq!(store.apply_creates("q", &batch).await.unwrap(), ["t1", "t2"], "a tag twice is one message");
    // The same batch again (a crash before its removal from the processing list): nothing new.
    assert!(store.apply_creates("q", &batch).await.unwrap().is_empty());
    assert_eq!(store.list(&ListFilter::default()).await.unwrap().len(), 2);
    assert_eq!(store.queue_counters().await.unwrap()["q"], 2);
    assert_eq!(feed.try_recv().unwrap().id, "a".repeat(32));
    assert_eq!(feed.try_recv().unwrap().id, "b".repeat(32));
    assert!(feed.try_recv().is_err(), "nothing is published for skipped messages");

    let filter = ListFilter { owner: Some("ann".into()), ..Default::default() };
    let delete = |e: &mut Environment| {
        e.desired = DesiredState::Deleted;
        vec![NewEvent::new(&e.id, "swim", "delete", "ok", "")]
    };
    let changed = store.apply_change("d", "t9", &filter, delete).await.unwrap().unwrap();
    assert_eq!(changed.len(), 2);
    assert!(store.apply_change("d", "t9", &filter, delete).await.unwrap().is_none(), "applied once");
    // A later message with another tag finds nothing left to delete.
    assert_eq!(store.apply_change("d", "t10", &filter, delete).await.unwrap().unwrap().len(), 0);
    assert_eq!(store.queue_counters().await.unwrap()["d"], 2);

    let receipts = store.receipts(&["t1".into(), "t9".into(), "zz".into()]).await.unwrap();
    assert_eq!(receipts.len(), 2);
    let keep = std::collections::HashSet::from(["t1".to_owned()]);
    assert_eq!(store.prune_receipts("q", now_millis() + 1, &keep).await.unwrap(), 1, "t2 goes, t1 is kept");
    assert_eq!(store.receipts(&["t1".into(), "t2".into()]).await.unwrap().len(), 1);
}

mod commit;
mod full_disk;
mod quota_check;
mod versioned;
pub(crate) mod webhooks;

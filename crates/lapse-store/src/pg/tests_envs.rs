//! The environment operations of [`PgStore`] against a real PostgreSQL (a fresh database per
//! test, [`TestDb`]): SQLite's store tests (src/tests) mirrored, and what PostgreSQL makes
//! real beside them: replicas (two `PgStore`s on one database) writing the same rows at once.
//! The claims and quotas are in [`claims`].

use std::collections::BTreeMap;

use lapse_core::model::{DesiredState, Environment, ObservedState, Spec};
use lapse_core::now_millis;

use super::PgStore;
use super::testdb::TestDb;
use crate::{EventFilter, INSERT_CHUNK, ListFilter, NewEvent, StoreError};

mod claims;

pub(super) fn sample(id: &str, owner: &str) -> Environment {
    let spec = Spec { provider: "process".into(), cmd: vec!["sleep".into(), "5".into()], ..Default::default() };
    let mut e = Environment::new(id.to_owned(), owner.to_owned(), spec, 1);
    e.name = Some("lab".into());
    e.labels = BTreeMap::from([("LabID".to_string(), "7".to_string())]);
    e.expires_at = Some(1_000);
    e
}

pub(super) fn created(e: &Environment) -> NewEvent {
    NewEvent::new(&e.id, "api", "create", "ok", "")
}

/// A row's revision and the id of the transaction that wrote it last.
async fn rev(store: &PgStore, id: &str) -> (i64, String) {
    sqlx::query_as("SELECT rev, xmin::text FROM environments WHERE id = $1")
        .bind(id)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn round_trip_and_filters() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let mut a = sample(&"a".repeat(32), "ada");
    a.job_id = Some("job-a".into());
    a.tenant = "acme".into();
    let mut b = sample(&"b".repeat(32), "bob");
    b.labels.insert("LabID".into(), "8".into());
    b.labels.insert("it's".into(), "x' OR '1'='1".into());
    let mut c = sample(&"c".repeat(32), "cy");
    (c.observed, c.desired, c.spec.provider) = (ObservedState::Deleted, DesiredState::Deleted, "docker".into());
    for e in [&a, &b, &c] {
        store.insert(e, created(e)).await.unwrap();
    }
    assert_eq!(store.get(&a.id).await.unwrap().as_ref(), Some(&a), "every column reads back as written");
    assert_eq!(store.get_by_job("job-a").await.unwrap().as_ref(), Some(&a));
    assert_eq!(store.get("nope").await.unwrap(), None);

    let owners = |v: Vec<Environment>| v.into_iter().map(|e| e.owner).collect::<Vec<_>>();
    let list = |f: ListFilter| {
        let store = store.clone();
        async move { owners(store.list(&f).await.unwrap()) }
    };
    assert_eq!(list(ListFilter::default()).await, ["ada", "bob"], "deleted ones are left out");
    assert_eq!(list(ListFilter { owner: Some("bob".into()), ..Default::default() }).await, ["bob"]);
    assert_eq!(list(ListFilter { tenant: Some("acme".into()), ..Default::default() }).await, ["ada"]);
    assert_eq!(list(ListFilter { job_id: Some("job-a".into()), ..Default::default() }).await, ["ada"]);
    assert_eq!(list(ListFilter { state: Some(ObservedState::Deleted), ..Default::default() }).await, ["cy"]);
    let docker =
        ListFilter { provider: Some("docker".into()), state: Some(ObservedState::Deleted), ..Default::default() };
    assert_eq!(list(docker).await, ["cy"]);
    assert!(list(ListFilter { provider: Some("docker".into()), ..Default::default() }).await.is_empty());
    let label = |k: &str, v: &str| ListFilter { labels: vec![(k.into(), v.into())], ..Default::default() };
    assert_eq!(list(label("LabID", "7")).await, ["ada"]);
    assert_eq!(list(label("it's", "x' OR '1'='1")).await, ["bob"], "values are bound, never spliced");
    assert!(list(label("it's", "x")).await.is_empty());
    let both =
        ListFilter { labels: vec![("LabID".into(), "8".into()), ("it's".into(), "x".into())], ..Default::default() };
    assert!(list(both).await.is_empty(), "every label must match");
    // Paging: a cursor and a limit, in id order.
    assert_eq!(list(ListFilter { limit: Some(1), ..Default::default() }).await, ["ada"]);
    assert_eq!(list(ListFilter { after: Some(a.id.clone()), limit: Some(1), ..Default::default() }).await, ["bob"]);
    assert!(list(ListFilter { after: Some(b.id.clone()), ..Default::default() }).await.is_empty());

    assert_eq!(store.unconverged_ids().await.unwrap(), [a.id.clone(), b.id.clone()]);
    assert_eq!(store.pending_expiries().await.unwrap(), vec![(a.id.clone(), 1_000), (b.id.clone(), 1_000)]);
    store.close().await;
}

#[tokio::test]
async fn update_is_atomic_and_refusal_writes_nothing() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let a = sample(&"a".repeat(32), "ada");
    store.insert(&a, created(&a)).await.unwrap();
    let mut feed = store.subscribe();

    let refused: Result<_, StoreError> = store
        .update(&a.id, |e| {
            e.desired = DesiredState::Deleted;
            Err(StoreError::Corrupt { id: e.id.clone(), column: "test", message: "refused".into() })
        })
        .await;
    assert!(matches!(refused, Err(StoreError::Corrupt { column: "test", .. })), "{refused:?}");
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().desired, DesiredState::Running);
    assert_eq!(rev(&store, &a.id).await.0, 0, "nothing written");
    assert!(feed.try_recv().is_err(), "nothing published");

    let updated = store
        .update::<StoreError>(&a.id, |e| {
            e.observed = ObservedState::Running;
            Ok(vec![NewEvent::new(&e.id, "reconciler", "transition", "running", "pending -> running")])
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.observed, ObservedState::Running);
    assert!(updated.updated_at >= a.updated_at);
    assert_eq!(*feed.try_recv().unwrap(), updated, "the committed row is published");
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
            e.warned = vec![1, 2];
            Ok(vec![])
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.get(&a.id).await.unwrap(), Some(changed));
    assert_eq!(rev(&store, &a.id).await.0, 2, "each write bumps the revision");
    let filter = EventFilter { target: Some(a.id.clone()), limit: 100, ..Default::default() };
    let events = store.events(&filter).await.unwrap();
    assert_eq!(events.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["create", "transition"]);
    assert!(store.update::<StoreError>("missing", |_| Ok(vec![])).await.unwrap().is_none());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_on_two_replicas_lose_nothing() {
    let db = TestDb::new().await;
    let (one, two) = (db.store().await, db.store().await);
    let a = sample(&"a".repeat(32), "ada");
    one.insert(&a, created(&a)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        let id = a.id.clone();
        tasks.push(tokio::spawn(async move {
            let mut runs = 0;
            store
                .update::<StoreError>(&id, |e| {
                    runs += 1;
                    e.attempts += 1;
                    Ok(vec![NewEvent::new(&e.id, "t", "bump", "ok", format!("{}", e.attempts))])
                })
                .await
                .unwrap();
            runs
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1, "under the row lock, a change runs once");
    }
    assert_eq!(two.get(&a.id).await.unwrap().unwrap().attempts, 60);
    assert_eq!(rev(&one, &a.id).await.0, 60);
    let filter = EventFilter { action: Some("bump".into()), limit: 100, ..Default::default() };
    let messages: Vec<String> = one.events(&filter).await.unwrap().into_iter().map(|e| e.message).collect();
    let expected: Vec<String> = (1..=60).map(|n| n.to_string()).collect();
    assert_eq!(messages, expected, "events number in the order the row's writes committed");
    one.close().await;
    two.close().await;
}

#[tokio::test]
async fn controller_id_is_stable_across_replicas() {
    let db = TestDb::new().await;
    let (one, two) = (db.store().await, db.store().await);
    let (a, b) = tokio::join!(one.controller_id(), two.controller_id());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "replicas starting together agree");
    assert!(a.starts_with("lapse-") && a.len() == "lapse-".len() + 12, "{a}");
    one.close().await;
    let again = db.store().await;
    assert_eq!(again.controller_id().await.unwrap(), a);
    again.close().await;
    two.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_id_or_live_job_id_is_a_conflict_that_undoes_no_other_insert() {
    let db = TestDb::new().await;
    let (one, two) = (db.store().await, db.store().await);
    let taken = sample("taken", "ada");
    one.insert(&taken, created(&taken)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        tasks.push(tokio::spawn(async move {
            // Every 25th reuses an id.
            let id = if i % 25 == 7 { "taken".to_owned() } else { format!("b{i:03}") };
            let e = sample(&id, "ada");
            store.insert(&e, created(&e)).await.map_err(|e| e.is_conflict())
        }));
    }
    let mut refused = 0;
    for t in tasks {
        if let Err(conflict) = t.await.unwrap() {
            assert!(conflict, "a duplicate id is a conflict");
            refused += 1;
        }
    }
    assert_eq!(refused, 4);
    assert_eq!(one.list(&ListFilter::default()).await.unwrap().len(), 1 + 96, "every other insert was kept");
    let events = one.events(&EventFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(events.len(), 1 + 96, "and only their events");
    assert!(one.is_writable(), "a conflict is not the server's failure");

    // A live environment's job id is taken; a deleted one's is free again.
    let mut holder = sample("holder", "ada");
    holder.job_id = Some("job-1".into());
    one.insert(&holder, created(&holder)).await.unwrap();
    let mut rival = sample("rival", "ada");
    rival.job_id = Some("job-1".into());
    let err = two.insert(&rival, created(&rival)).await.unwrap_err();
    assert!(err.is_conflict() && !err.is_unwritable(), "{err:?}");
    assert_eq!(two.get("rival").await.unwrap(), None);
    one.update::<StoreError>("holder", |e| {
        e.desired = DesiredState::Deleted;
        Ok(vec![])
    })
    .await
    .unwrap();
    assert_eq!(one.get_by_job("job-1").await.unwrap(), None, "a deleted holder is not returned");
    two.insert(&rival, created(&rival)).await.unwrap();
    assert_eq!(one.get_by_job("job-1").await.unwrap().map(|e| e.id), Some("rival".to_owned()));
    one.close().await;
    two.close().await;
}

#[tokio::test]
async fn a_large_insert_many_commits_in_chunks_each_with_its_own_events() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let mut feed = store.subscribe();
    let n = INSERT_CHUNK * 3 + 5;
    let envs: Vec<Environment> = (0..n).map(|i| sample(&format!("m{i:04}"), "pool:p")).collect();
    let mut events: Vec<NewEvent> = envs.iter().map(|e| NewEvent::new(&e.id, "pool", "create", "ok", "")).collect();
    events.push(NewEvent::new("", "pool", "refill", "ok", "no environment's"));
    events.last_mut().unwrap().environment_id = None;
    store.insert_many(&envs, &events).await.unwrap();
    // Transactions by the id that wrote each row and each event.
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, xmin::text FROM environments ORDER BY id").fetch_all(store.pool()).await.unwrap();
    let txs: Vec<&str> = rows.iter().map(|(_, x)| x.as_str()).collect();
    let mut distinct = txs.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{n} rows in chunks of {INSERT_CHUNK}: one transaction per chunk");
    for (i, tx) in txs.iter().enumerate() {
        assert_eq!(*tx, distinct[i / INSERT_CHUNK], "row {i} is in chunk {}", i / INSERT_CHUNK);
    }
    let written: Vec<(Option<String>, String)> =
        sqlx::query_as("SELECT environment_id, xmin::text FROM events ORDER BY seq")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(written.len(), n + 1, "every event once");
    for (env, tx) in &written {
        match env {
            Some(id) => assert_eq!(Some(tx), rows.iter().find(|(r, _)| r == id).map(|(_, x)| x), "{id}"),
            None => assert_eq!(tx, distinct[0], "the loose event commits with the first chunk"),
        }
    }
    let published: Vec<String> = std::iter::from_fn(|| feed.try_recv().ok()).map(|e| e.id.clone()).collect();
    assert_eq!(published, envs.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), "each row once, in order");

    // A duplicate in the third chunk: the two chunks before it stay, nothing after it is written.
    let more: Vec<Environment> = (0..n)
        .map(|i| sample(&if i == INSERT_CHUNK * 2 + 1 { "m0000".to_owned() } else { format!("x{i:04}") }, "pool:p"))
        .collect();
    let events: Vec<NewEvent> = more.iter().map(created).collect();
    assert!(store.insert_many(&more, &events).await.unwrap_err().is_conflict());
    let kept = store.list(&ListFilter { limit: Some(1000), ..Default::default() }).await.unwrap();
    assert_eq!(kept.iter().filter(|e| e.id.starts_with('x')).count(), INSERT_CHUNK * 2);
    let events = store.events(&EventFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(events.len(), n + 1 + INSERT_CHUNK * 2, "the failed chunk's events are not written");
    assert_eq!(std::iter::from_fn(|| feed.try_recv().ok()).count(), INSERT_CHUNK * 2, "nor published");
    store.close().await;
}

#[tokio::test]
async fn reads_for_the_reconciler_the_sweep_and_metrics() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let state = |id: &str, provider: &str, desired, observed| {
        let mut e = sample(id, "ada");
        (e.spec.provider, e.desired, e.observed) = (provider.into(), desired, observed);
        e
    };
    use DesiredState as D;
    use ObservedState as O;
    let mut envs = vec![
        state("e1", "docker", D::Running, O::Running),
        state("e2", "docker", D::Running, O::Pending),
        state("e3", "docker", D::Stopped, O::Stopped),
        state("e4", "docker", D::Deleted, O::Deleted),
        state("e5", "process", D::Running, O::Failed),
        state("e6", "process", D::Deleted, O::Failed),
        state("e7", "process", D::Stopped, O::Running),
    ];
    (envs[0].expires_at, envs[0].expired_at) = (Some(1_000), Some(1_250));
    (envs[1].owner, envs[1].expires_at, envs[1].expired_at) = ("bob".into(), Some(2_000), Some(2_040));
    envs[2].expires_at = None;
    envs[6].source = "config".into();
    let mut config_deleted = state("e8", "process", D::Deleted, O::Stopped);
    config_deleted.source = "config".into();
    envs.push(config_deleted);
    store.insert_many(&envs, &[]).await.unwrap();

    assert_eq!(store.unconverged_ids().await.unwrap(), ["e2", "e6", "e7", "e8"]);
    let expiring: Vec<String> = store.pending_expiries().await.unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(expiring, ["e5", "e7"], "not expired, not deleted, with an expiry");
    let sweep = store.sweep_view("docker").await.unwrap();
    assert_eq!(sweep.keys().collect::<Vec<_>>(), ["e1", "e2", "e3"]);
    assert_eq!((sweep["e2"].desired, sweep["e2"].observed), (D::Running, O::Pending));
    assert_eq!(sweep["e1"].updated_at, envs[0].updated_at);
    let mut counts = store.count_by_provider_and_state().await.unwrap();
    counts.sort();
    let expected: Vec<(String, String, i64)> = [
        ("docker", "deleted", 1),
        ("docker", "pending", 1),
        ("docker", "running", 1),
        ("docker", "stopped", 1),
        ("process", "failed", 2),
        ("process", "running", 1),
        ("process", "stopped", 1),
    ]
    .into_iter()
    .map(|(p, s, n)| (p.to_owned(), s.to_owned(), n))
    .collect();
    assert_eq!(counts, expected);
    assert_eq!(store.expiry_lateness("ada").await.unwrap(), [250]);
    assert_eq!(store.expiry_lateness("bob").await.unwrap(), [40]);
    let declared: Vec<String> = store.config_declared().await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(declared, ["e7"], "config-declared and not deleted");
    store.close().await;
}

#[tokio::test]
async fn events_are_filtered_by_each_field_after_a_cursor_and_limited() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let mut a = sample("a", "ada");
    a.tenant = "acme".into();
    store.insert(&a, NewEvent::new("a", "api", "create", "ok", "")).await.unwrap();
    store.append_event(NewEvent::new("a", "sweep", "remove", "failed", "m1")).await.unwrap();
    store.append_event(NewEvent::of_tenant("other", "api", "create_key", "ok", "m2")).await.unwrap();
    store.append_event(NewEvent::new("gone", "sweep", "remove", "ok", "m3")).await.unwrap();
    let get = |f: EventFilter| {
        let store = store.clone();
        async move { store.events(&EventFilter { limit: 100, ..f }).await.unwrap() }
    };
    let all = get(EventFilter::default()).await;
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "in order");
    assert_eq!(all[1].tenant.as_deref(), Some("acme"), "an environment's event takes its tenant");
    assert_eq!((all[2].tenant.as_deref(), all[3].tenant.as_deref()), (Some("other"), None));
    assert!(all.iter().all(|e| e.at > 0 && e.at <= now_millis()));
    let messages = |v: Vec<lapse_core::wire::Event>| v.into_iter().map(|e| e.message).collect::<Vec<_>>();
    assert_eq!(messages(get(EventFilter { tenant: Some("acme".into()), ..Default::default() }).await), ["", "m1"]);
    assert_eq!(messages(get(EventFilter { target: Some("gone".into()), ..Default::default() }).await), ["m3"]);
    assert_eq!(messages(get(EventFilter { actor: Some("sweep".into()), ..Default::default() }).await), ["m1", "m3"]);
    assert_eq!(messages(get(EventFilter { action: Some("create_key".into()), ..Default::default() }).await), ["m2"]);
    let failed = EventFilter { outcome: Some("failed".into()), actor: Some("sweep".into()), ..Default::default() };
    assert_eq!(messages(get(failed).await), ["m1"]);
    assert_eq!(messages(get(EventFilter { after: Some(all[1].seq), ..Default::default() }).await), ["m2", "m3"]);
    let page = store.events(&EventFilter { after: Some(all[0].seq), limit: 2, ..Default::default() }).await.unwrap();
    assert_eq!(messages(page), ["m1", "m2"]);
    store.close().await;
}

#[tokio::test]
async fn a_server_that_cannot_write_clears_is_writable_until_a_write_succeeds() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let a = sample("a", "ada");
    store.insert(&a, created(&a)).await.unwrap();
    assert!(store.is_writable());
    // A replica whose pool has no connection yet (they are made on first use); then the
    // database turns read-only (as a standby is) for every new session.
    let replica = db.store().await;
    let mut admin = db.conn().await;
    let alter = |on: bool| format!("ALTER DATABASE {} SET default_transaction_read_only = {on}", db.name);
    sqlx::query(&alter(true)).execute(&mut admin).await.unwrap();
    let b = sample("b", "ada");
    let err = replica.insert(&b, created(&b)).await.unwrap_err();
    assert!(err.is_unwritable() && !err.is_conflict(), "{err:?}");
    assert!(!replica.is_writable());
    assert_eq!(replica.get("a").await.unwrap().map(|e| e.id), Some("a".into()), "reads still work");
    assert!(!replica.is_writable(), "a read does not set it");
    let err = replica.update::<StoreError>("a", |_| Ok(vec![])).await.unwrap_err();
    assert!(err.is_unwritable(), "{err:?}");
    assert!(store.is_writable(), "per store: the other replica's sessions are writable");

    // Writable again: the replica's next sessions may write, and its next write sets it.
    sqlx::query(&alter(false)).execute(&mut admin).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db.name)
    .execute(&mut admin)
    .await
    .unwrap();
    let mut tries = 0;
    while replica.insert(&b, created(&b)).await.is_err() {
        tries += 1;
        assert!(tries < 20, "the replica never wrote again");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(replica.is_writable());
    assert!(replica.get("b").await.unwrap().is_some());
    replica.close().await;
    store.close().await;
}

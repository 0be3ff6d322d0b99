//! The writer: concurrent writes share commits, one failure undoes no one else's write, a
//! panicking operation is its own error, and warm claims find members however many were
//! claimed before.

use std::sync::atomic::Ordering;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_commits_and_each_is_answered_after_its_own() {
    let (_dir, store) = super::sqlite_itself().await;
    let before = store.commit_stats().commits.load(Ordering::Relaxed);
    let mut tasks = Vec::new();
    for i in 0..400 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let e = sample(&format!("c{i:03}"), "ada");
            store.insert(&e, NewEvent::new(&e.id, "api", "create", "ok", "")).await.unwrap();
            // Answered: it is there for any reader.
            assert!(store.get(&e.id).await.unwrap().is_some(), "{} acknowledged and not readable", e.id);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let commits = store.commit_stats().commits.load(Ordering::Relaxed) - before;
    assert_eq!(store.count_by_provider_and_state().await.unwrap()[0].2, 400);
    assert!(commits < 400, "400 concurrent inserts took {commits} commits: nothing was batched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_write_in_a_batch_undoes_no_other() {
    let (_dir, store) = super::sqlite_itself().await;
    let taken = sample("taken", "ada");
    store.insert(&taken, NewEvent::new("taken", "api", "create", "ok", "")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Every 50th reuses an id: a unique violation in the middle of some batch.
            let id = if i % 50 == 25 { "taken".to_owned() } else { format!("b{i:03}") };
            let e = sample(&id, "ada");
            store.insert(&e, NewEvent::new(&id, "api", "create", "ok", "")).await.map_err(|e| e.is_conflict())
        }));
    }
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => {}
            Err(conflict) => {
                assert!(conflict, "a duplicate id is a conflict");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 6);
    let all = store.list(&ListFilter::default()).await.unwrap();
    assert_eq!(all.len(), 1 + 294, "every other insert was kept");
    let events = store.events(&EventFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(events.len(), 1 + 294, "and only their events");
}

#[tokio::test]
async fn a_panicking_operation_is_its_own_error_and_the_writer_goes_on() {
    let (_dir, store) = super::sqlite_itself().await;
    let failed = store.writer.run("test", |_| -> Result<(), StoreError> { panic!("boom") }).await;
    assert!(matches!(failed, Err(StoreError::Refused(ref m)) if m.contains("panicked")), "{failed:?}");
    let e = sample("after", "ada");
    store.insert(&e, NewEvent::new("after", "api", "create", "ok", "")).await.unwrap();
    assert!(store.get("after").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_claims_stay_fast_and_exact_after_thousands_were_claimed() {
    let (_dir, store) = super::sqlite_itself().await;
    let spec = sample("x", "y").spec;
    let pool = Pool {
        name: "p".into(),
        spec: spec.clone(),
        min: 3000,
        max: 3000,
        version: "1".into(),
        lifecycle: Default::default(),
        source: "api".into(),
        on_claim: None,
        created_at: 0,
        updated_at: 0,
    };
    store.put_pool(&pool, NewEvent::new("p", "api", "put_pool", "ok", "")).await.unwrap();
    let member = |i: usize, version: &str| {
        let mut e = sample(&format!("m{i:05}"), "pool:p");
        (e.pool, e.pool_version, e.observed) = (Some("p".into()), Some(version.into()), ObservedState::Running);
        e
    };
    // 2,000 of the pool's version, 500 of an old one among them.
    let members: Vec<Environment> = (0..2500).map(|i| member(i, if i % 5 == 0 { "0" } else { "1" })).collect();
    store.insert_many(&members, &[]).await.unwrap();
    let mut tasks = Vec::new();
    for c in 0..50 {
        let (store, hash) = (store.clone(), spec.hash());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(e) = store
                .claim(&hash, None, move |e| {
                    e.owner = format!("c{c}");
                    vec![]
                })
                .await
                .unwrap()
            {
                got.push(e.id);
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    claimed.sort();
    let before = claimed.len();
    claimed.dedup();
    assert_eq!(before, claimed.len(), "a member was claimed twice");
    assert_eq!(claimed.len(), 2000, "every member of the current version, none of the old one");
    // A member that becomes claimable after the candidates were read is found.
    store.insert(&member(9999, "1"), NewEvent::new("m09999", "pool", "create", "ok", "")).await.unwrap();
    let late = store.claim(&spec.hash(), None, |_| vec![]).await.unwrap().expect("the new member");
    assert_eq!(late.id, "m09999");
}

#[tokio::test]
async fn a_large_insert_many_commits_in_chunks_each_with_its_own_events() {
    let (_dir, store) = super::sqlite_itself().await;
    let before = store.commit_stats().commits.load(Ordering::Relaxed);
    let n = INSERT_CHUNK * 3 + 5;
    let envs: Vec<Environment> = (0..n).map(|i| sample(&format!("m{i:04}"), "pool:p")).collect();
    let mut events: Vec<NewEvent> = envs.iter().map(|e| NewEvent::new(&e.id, "pool", "create", "ok", "")).collect();
    events.push(NewEvent::new("", "pool", "refill", "ok", "no environment's"));
    events.last_mut().unwrap().environment_id = None;
    store.insert_many(&envs, &events).await.unwrap();
    let commits = store.commit_stats().commits.load(Ordering::Relaxed) - before;
    assert_eq!(commits, 4, "{n} rows in chunks of {INSERT_CHUNK}: one commit per chunk");
    assert_eq!(store.list(&ListFilter { limit: Some(1000), ..Default::default() }).await.unwrap().len(), n);
    let stored = store.events(&EventFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(stored.len(), n + 1, "every event once");
    for e in &envs {
        assert_eq!(
            stored.iter().filter(|ev| ev.environment_id.as_deref() == Some(e.id.as_str())).count(),
            1,
            "{}",
            e.id
        );
    }

    // A duplicate in the third chunk: the two chunks before it stay, nothing after it is written.
    let more: Vec<Environment> =
        (0..n)
            .map(|i| {
                if i == INSERT_CHUNK * 2 + 1 {
                    sample("m0000", "pool:p")
                } else {
                    sample(&format!("x{i:04}"), "pool:p")
                }
            })
            .collect();
    let events: Vec<NewEvent> = more.iter().map(|e| NewEvent::new(&e.id, "pool", "create", "ok", "")).collect();
    assert!(store.insert_many(&more, &events).await.unwrap_err().is_conflict());
    let kept = store.list(&ListFilter { limit: Some(1000), ..Default::default() }).await.unwrap();
    assert_eq!(kept.iter().filter(|e| e.id.starts_with('x')).count(), INSERT_CHUNK * 2);
}

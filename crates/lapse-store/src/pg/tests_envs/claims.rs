//! Pools, warm claims and quota admission on PostgreSQL, on one replica and on two at once.

use lapse_core::model::{Environment, Health, Lifecycle, ObservedState, Pool, Resources};
use lapse_core::quota::Quota;

use super::{created, sample};
use crate::pg::PgStore;
use crate::pg::testdb::TestDb;
use crate::{EventFilter, NewEvent, StoreError};

fn pool(version: &str) -> Pool {
    Pool {
        name: "p".into(),
        spec: sample("x", "x").spec,
        min: 5,
        max: 8,
        version: version.into(),
        lifecycle: Lifecycle::Lease,
        source: "api".into(),
        on_claim: None,
        created_at: 10,
        updated_at: 10,
    }
}

fn member(id: &str, version: &str) -> Environment {
    let mut e = sample(id, "pool:p");
    (e.pool, e.pool_version, e.observed) = (Some("p".into()), Some(version.into()), ObservedState::Running);
    e
}

/// Pool `p` at version 1 with `n` claimable members `m000`...; the spec hash to claim.
async fn warm(store: &PgStore, n: usize) -> String {
    store.put_pool(&pool("1"), NewEvent::new("p", "api", "put_pool", "ok", "")).await.unwrap();
    let members: Vec<Environment> = (0..n).map(|i| member(&format!("m{i:03}"), "1")).collect();
    store.insert_many(&members, &[]).await.unwrap();
    pool("1").spec.hash()
}

/// Runs `n` claims at once, alternately on `one` and `two`; the claimed ids, sorted.
async fn claim_all(one: &PgStore, two: &PgStore, n: usize, admit: Option<Quota>) -> Vec<Result<String, StoreError>> {
    let hash = pool("1").spec.hash();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (store, hash, admit) =
                (if i % 2 == 0 { one.clone() } else { two.clone() }, hash.clone(), admit.clone());
            tokio::spawn(async move {
                let claimed = store
                    .claim(&hash, admit.as_ref().map(|q| ("acme", q)), move |e| {
                        assert_eq!(e.pool.as_deref(), Some("p"), "the closure sees the pool it leaves");
                        (e.owner, e.tenant) = (format!("claimer-{i}"), "acme".into());
                        vec![NewEvent::new(&e.id, "api", "claim", "ok", "")]
                    })
                    .await?;
                Ok(claimed.map(|e| e.id))
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        if let Some(r) = t.await.unwrap().transpose() {
            out.push(r);
        }
    }
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out
}

#[tokio::test]
async fn pools_round_trip_and_only_a_deleted_pool_is_reported() {
    let db = TestDb::new().await;
    let store = db.store().await;
    assert_eq!(store.get_pool("p").await.unwrap(), None);
    store.put_pool(&pool("1"), NewEvent::new("p", "api", "put_pool", "ok", "")).await.unwrap();
    assert_eq!(store.get_pool("p").await.unwrap(), Some(pool("1")));
    let mut newer = pool("2");
    (newer.created_at, newer.updated_at, newer.min) = (99, 20, 2);
    store.put_pool(&newer, NewEvent::new("p", "api", "put_pool", "ok", "")).await.unwrap();
    let expected = Pool { created_at: 10, ..newer.clone() };
    assert_eq!(store.get_pool("p").await.unwrap(), Some(expected.clone()), "replaced, first created_at kept");
    let other = Pool { name: "a".into(), ..pool("1") };
    store.put_pool(&other, NewEvent::new("a", "api", "put_pool", "ok", "")).await.unwrap();
    assert_eq!(store.list_pools().await.unwrap(), [other, expected], "by name");

    let mut deleted = member("gone", "2");
    (deleted.observed, deleted.desired) = (ObservedState::Deleted, lapse_core::model::DesiredState::Deleted);
    let mut claimed = sample("claimed", "ada");
    claimed.observed = ObservedState::Running;
    store.insert_many(&[member("m1", "2"), member("m0", "1"), deleted, claimed], &[]).await.unwrap();
    let ids: Vec<String> = store.pool_members().await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["m0", "m1"]);
    let states = store.pool_member_states().await.unwrap();
    assert_eq!(states.len(), 2);
    assert_eq!(
        (states[0].id.as_str(), states[0].pool.as_str(), states[0].pool_version.as_deref()),
        ("m0", "p", Some("1"))
    );
    assert_eq!((states[1].observed, states[1].spec_hash.clone()), (ObservedState::Running, pool("1").spec.hash()));

    assert!(store.delete_pool("p", NewEvent::new("p", "api", "delete_pool", "ok", "")).await.unwrap());
    assert!(!store.delete_pool("p", NewEvent::new("p", "api", "delete_pool", "ok", "")).await.unwrap());
    assert_eq!(store.get_pool("p").await.unwrap(), None);
    let events =
        store.events(&EventFilter { target: Some("p".into()), limit: 10, ..Default::default() }).await.unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["put_pool", "put_pool", "delete_pool"], "no event for a pool that was not there");
    store.close().await;
}

#[tokio::test]
async fn concurrent_claims_never_share_a_member_and_only_claimable_ones_are_handed_out() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let hash = warm(&store, 5).await;
    // Never claimable: another version, being replaced, unhealthy, not running, not wanted.
    let mut odd = vec![member("o-old", "0"), member("o-repl", "1"), member("o-sick", "1"), member("o-pend", "1")];
    odd[1].replace = true;
    odd[2].health = Some(Health::Unhealthy);
    odd[3].observed = ObservedState::Pending;
    let mut stopping = member("o-stop", "1");
    stopping.desired = lapse_core::model::DesiredState::Stopped;
    odd.push(stopping);
    let mut healthy = member("m005", "1");
    healthy.health = Some(Health::Healthy);
    odd.push(healthy);
    store.insert_many(&odd, &[]).await.unwrap();
    let mut feed = store.subscribe();

    let claimed = claim_all(&store, &store, 20, None).await;
    let ids: Vec<String> = claimed.into_iter().map(Result::unwrap).collect();
    assert_eq!(ids, ["m000", "m001", "m002", "m003", "m004", "m005"]);
    let published: Vec<_> = std::iter::from_fn(|| feed.try_recv().ok()).collect();
    assert_eq!(published.len(), 6, "each claim's row is published");
    assert!(published.iter().all(|e| e.pool.is_none() && e.pool_version.is_none() && e.owner.starts_with("claimer-")));
    let row = store.get("m003").await.unwrap().unwrap();
    assert_eq!((row.pool, row.tenant.as_str()), (None, "acme"), "the claim is written");
    let left: Vec<String> = store.pool_members().await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(left, ["o-old", "o-pend", "o-repl", "o-sick", "o-stop"]);
    assert!(store.claim(&hash, None, |_| vec![]).await.unwrap().is_none());
    assert!(store.claim("another hash", None, |_| vec![]).await.unwrap().is_none());
    let claims = EventFilter { action: Some("claim".into()), limit: 100, ..Default::default() };
    assert_eq!(store.events(&claims).await.unwrap().len(), 6);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_on_two_replicas_never_share_a_member() {
    let db = TestDb::new().await;
    let (one, two) = (db.store().await, db.store().await);
    warm(&one, 8).await;
    let claimed = claim_all(&one, &two, 16, None).await;
    let ids: Vec<String> = claimed.into_iter().map(Result::unwrap).collect();
    let expected: Vec<String> = (0..8).map(|i| format!("m{i:03}")).collect();
    assert_eq!(ids, expected, "exactly 8 of 16 succeed, each with its own member");
    let owners: std::collections::BTreeSet<String> =
        one.list(&Default::default()).await.unwrap().into_iter().map(|e| e.owner).collect();
    assert_eq!(owners.len(), 8, "each member was written by one claimer: {owners:?}");
    assert!(two.pool_members().await.unwrap().is_empty());
    one.close().await;
    two.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_claims_drain_the_current_version_exactly_and_find_late_members() {
    let db = TestDb::new().await;
    let (one, two) = (db.store().await, db.store().await);
    let hash = warm(&one, 0).await;
    // 240 of the pool's version, 60 of an old one among them.
    let members: Vec<Environment> =
        (0..300).map(|i| member(&format!("m{i:05}"), if i % 5 == 0 { "0" } else { "1" })).collect();
    one.insert_many(&members, &[]).await.unwrap();
    let mut tasks = Vec::new();
    for c in 0..12 {
        let (store, hash) = (if c % 2 == 0 { one.clone() } else { two.clone() }, hash.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(e) = store.claim(&hash, None, |_| vec![]).await.unwrap() {
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
    assert_eq!(claimed.len(), 240, "every member of the current version, none of the old one");
    let late = member("m99999", "1");
    two.insert(&late, created(&late)).await.unwrap();
    assert_eq!(one.claim(&hash, None, |_| vec![]).await.unwrap().map(|e| e.id).as_deref(), Some("m99999"));
    one.close().await;
    two.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_admitted_claims_on_two_replicas_cannot_pass_the_limit() {
    let db = TestDb::new().await;
    let (one, two) = (db.store().await, db.store().await);
    warm(&one, 10).await;
    let three = Quota { environments: Some(3), ..Default::default() };
    let (mut feed_one, mut feed_two) = (one.subscribe(), two.subscribe());
    let outcomes = claim_all(&one, &two, 10, Some(three.clone())).await;
    let won: Vec<&String> = outcomes.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 3, "{outcomes:?}");
    for r in &outcomes {
        if let Err(e) = r {
            assert!(matches!(e, StoreError::Refused(m) if m.contains("environments 3 of 3")), "{e:?}");
        }
    }
    assert_eq!(outcomes.len(), 10, "every claim found a member or was refused");
    assert_eq!(one.pool_members().await.unwrap().len(), 7, "a refused claim leaves its member in the pool");
    let acme = crate::ListFilter { tenant: Some("acme".into()), ..Default::default() };
    assert_eq!(two.list(&acme).await.unwrap().len(), 3);
    // Each replica's feed shows the three claims: its own at once, the other's through the
    // change feed across replicas (`pg::feed`); no refused claim is ever on it.
    let mut won: Vec<String> = won.into_iter().cloned().collect();
    won.sort();
    for feed in [&mut feed_one, &mut feed_two] {
        let mut seen = std::collections::BTreeSet::new();
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while seen.len() < 3 {
            let next = tokio::time::timeout_at(until, feed.recv()).await.expect("3 claims on the feed within 5 s");
            seen.insert(next.unwrap().id.clone());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), won, "the claims committed, and only those");
    }
    let claims = EventFilter { action: Some("claim".into()), limit: 100, ..Default::default() };
    assert_eq!(one.events(&claims).await.unwrap().len(), 3, "no event of a refused claim");
    one.close().await;
    two.close().await;
}

fn with_vcpu(id: &str, vcpu: Option<f64>) -> Environment {
    let mut e = sample(id, "ada");
    e.tenant = "acme".into();
    e.spec.resources = vcpu.map(|v| Resources { vcpu: Some(v), ..Default::default() });
    e
}

#[tokio::test]
async fn an_admitted_update_checks_the_quota_only_where_the_row_starts_to_count_or_grows() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let quota = Quota { environments: Some(3), vcpu: Some(4.0), ..Default::default() };
    let admit = Some(("acme", &quota));
    let mut failed = with_vcpu("f", None);
    failed.observed = ObservedState::Failed;
    store
        .insert_many(&[with_vcpu("a", Some(2.0)), with_vcpu("b", None), with_vcpu("c", None), failed], &[])
        .await
        .unwrap();

    // A change that does not make the row count, or grow, is not checked (the tenant is full).
    let renamed = store.update_admitted::<StoreError>("a", admit, |e| {
        e.name = Some("renamed".into());
        Ok(vec![])
    });
    assert_eq!(renamed.await.unwrap().unwrap().name.as_deref(), Some("renamed"));
    // A failed row started again counts: refused, nothing written.
    let restart = |e: &mut Environment| {
        e.observed = ObservedState::Pending;
        Ok::<_, StoreError>(vec![NewEvent::new(&e.id, "api", "start", "ok", "")])
    };
    let refused = store.update_admitted("f", admit, restart).await;
    assert!(matches!(&refused, Err(StoreError::Refused(m)) if m.contains("environments 3 of 3")), "{refused:?}");
    assert_eq!(store.get("f").await.unwrap().unwrap().observed, ObservedState::Failed);
    // Growing a row is checked without the row's own share: 2 -> 4 fits, then 0 -> 1 does not.
    let grow = |v: f64| {
        move |e: &mut Environment| {
            e.spec.resources = Some(Resources { vcpu: Some(v), ..Default::default() });
            Ok::<_, StoreError>(vec![])
        }
    };
    assert!(store.update_admitted("a", admit, grow(4.0)).await.unwrap().is_some());
    let refused = store.update_admitted("b", admit, grow(1.0)).await;
    assert!(matches!(&refused, Err(StoreError::Refused(m)) if m.starts_with("quota: vcpu 4 of 4")), "{refused:?}");
    // Without a quota nothing is checked.
    assert!(store.update::<StoreError>("f", restart).await.unwrap().is_some());
    let starts = EventFilter { action: Some("start".into()), limit: 10, ..Default::default() };
    assert_eq!(store.events(&starts).await.unwrap().len(), 1, "no event of a refused update");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_restarts_on_two_replicas_cannot_pass_the_limit() {
    let db = TestDb::new().await;
    let (one, two) = (db.store().await, db.store().await);
    let quota = Quota { environments: Some(3), ..Default::default() };
    let mut envs = vec![with_vcpu("a", None), with_vcpu("b", None)];
    for i in 0..6 {
        let mut f = with_vcpu(&format!("f{i}"), None);
        f.observed = ObservedState::Failed;
        envs.push(f);
    }
    one.insert_many(&envs, &[]).await.unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (store, quota) = (if i % 2 == 0 { one.clone() } else { two.clone() }, quota.clone());
            tokio::spawn(async move {
                store
                    .update_admitted::<StoreError>(&format!("f{i}"), Some(("acme", &quota)), |e| {
                        e.observed = ObservedState::Pending;
                        Ok(vec![])
                    })
                    .await
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Some(_)) => admitted += 1,
            Ok(None) => panic!("the row is there"),
            Err(e) => assert!(matches!(&e, StoreError::Refused(_)), "{e:?}"),
        }
    }
    assert_eq!(admitted, 1, "2 held + 1 admitted = the limit of 3");
    let pending = crate::ListFilter { state: Some(ObservedState::Pending), ..Default::default() };
    assert_eq!(one.list(&pending).await.unwrap().len(), 3, "a, b (pending from the start) and one restart");
    one.close().await;
    two.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_claims_commit_together_and_a_claim_postgres_refuses_fails_alone() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let hash = warm(&store, 72).await;
    let claimed = claim_all(&store, &store, 64, None).await;
    let mut ids: Vec<String> = claimed.into_iter().map(Result::unwrap).collect();
    ids.dedup();
    assert_eq!(ids.len(), 64, "64 claims, 64 members, none twice");
    let batches = store.claim_batches();
    assert!((1..64).contains(&batches), "claims that waited were committed together: {batches} batches");

    // One claim of eight writes an event PostgreSQL cannot hold (a NUL byte): its batch fails
    // as a whole, is replayed one claim at a time, and only that claim fails.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, hash) = (store.clone(), hash.clone());
            tokio::spawn(async move {
                store
                    .claim(&hash, None, move |e| {
                        let message = if i == 3 { "bad\0byte" } else { "fine" };
                        vec![NewEvent::new(&e.id, "api", "claim", "ok", message)]
                    })
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert!(outcomes[3].is_err(), "the bad claim fails: {:?}", outcomes[3]);
    let good: Vec<&Environment> = outcomes.iter().filter_map(|o| o.as_ref().ok().and_then(Option::as_ref)).collect();
    assert_eq!(good.len(), 7, "the seven others are claimed: {outcomes:?}");
    let left = store.pool_members().await.unwrap();
    assert_eq!(left.len(), 1, "the bad claim's member stays in the pool");
    let claims = EventFilter { action: Some("claim".into()), limit: 100, ..Default::default() };
    assert_eq!(store.events(&claims).await.unwrap().len(), 64 + 7);
    store.close().await;
}

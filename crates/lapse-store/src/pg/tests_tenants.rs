//! Tenants, keys, quota admission, activity, accrual and workspace sync state on a real
//! PostgreSQL ([`TestDb`]): the SQLite store's tests of these operations
//! (`src/tests/quota_check.rs`) and what PostgreSQL makes real besides, above all several
//! replicas (several [`PgStore`]s on one database) writing at once.

use lapse_core::model::{Environment, Health, ObservedState, Resources, Spec};
use lapse_core::quota::Quota;
use lapse_core::workspace::{Workspace, WorkspaceStatus};

use super::PgStore;
use crate::pg::testdb::TestDb;
use crate::{KeyRecord, KeyScope, NewEvent, StoreError, SyncOutcome, TenantRecord};

fn env(n: u32, tenant: &str, vcpu: f64) -> Environment {
    let spec = Spec {
        provider: "sim".into(),
        resources: Some(Resources { vcpu: Some(vcpu), mem_mb: Some(1024), disk_gb: Some(2) }),
        ..Default::default()
    };
    let mut e = Environment::new(format!("{n:032x}"), "ada".into(), spec, 1);
    e.tenant = tenant.to_owned();
    e
}

fn create(e: &Environment) -> NewEvent {
    NewEvent::new(&e.id, "t", "create", "ok", "")
}

fn record(name: &str) -> TenantRecord {
    TenantRecord {
        name: name.into(),
        tier: "pro".into(),
        quota: serde_json::json!({"vcpu": 8}),
        quota_check: "summed".into(),
        created_at: 1,
    }
}

/// Inserts without a limit.
async fn put(store: &PgStore, e: &Environment) {
    store.insert_admitted(e, create(e), &Quota::default()).await.unwrap();
}

async fn get(store: &PgStore, id: &str) -> Option<Environment> {
    let row = sqlx::query(&format!("SELECT {} FROM environments WHERE id = $1", crate::ENV_COLUMNS))
        .bind(id)
        .fetch_optional(store.pool())
        .await
        .unwrap();
    row.as_ref().map(|r| crate::rows::environment_from(r).unwrap())
}

async fn count(store: &PgStore, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(store.pool()).await.unwrap()
}

#[tokio::test]
async fn two_replicas_admit_exactly_the_quota() {
    let db = TestDb::new().await;
    let (a, b) = (db.store().await, db.store().await);
    let quota = Quota { environments: Some(5), ..Default::default() };
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..20 {
        let (store, quota) = (if n % 2 == 0 { a.clone() } else { b.clone() }, quota.clone());
        tasks.spawn(async move {
            let e = env(n, "acme", 1.0);
            store.insert_admitted(&e, create(&e), &quota).await
        });
    }
    let (mut admitted, mut refused) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(()) => admitted += 1,
            Err(StoreError::Refused(m)) => {
                assert!(m.contains("environments 5 of 5"), "{m}");
                refused += 1;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((admitted, refused), (5, 15));
    assert_eq!(count(&a, "SELECT count(*) FROM environments WHERE tenant = 'acme'").await, 5);
    assert_eq!(count(&a, "SELECT count(*) FROM events WHERE action = 'create'").await, 5);
    assert_eq!(b.usage("acme").await.unwrap().environments, 5);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn usage_counts_what_a_tenant_holds() {
    let db = TestDb::new().await;
    let store = db.store().await;
    put(&store, &env(1, "acme", 1.5)).await;
    put(&store, &env(2, "acme", 2.0)).await;
    let mut member = env(3, "acme", 4.0);
    member.pool = Some("p".into());
    let mut failed = env(4, "acme", 4.0);
    failed.observed = ObservedState::Failed;
    let mut deleting = env(5, "acme", 4.0);
    deleting.desired = lapse_core::model::DesiredState::Deleted;
    for e in [&member, &failed, &deleting, &env(6, "other", 4.0)] {
        put(&store, e).await;
    }
    let used = store.usage("acme").await.unwrap();
    assert_eq!((used.environments, used.vcpu, used.mem_mb, used.disk_gb), (2, 3.5, 2048, 4));
    let none = store.usage("nobody").await.unwrap();
    assert_eq!((none.environments, none.vcpu, none.mem_mb), (0, 0.0, 0));

    // A live job id taken meanwhile: a conflict, and nothing written.
    let mut first = env(7, "acme", 1.0);
    first.job_id = Some("job".into());
    put(&store, &first).await;
    let mut second = env(8, "acme", 1.0);
    second.job_id = Some("job".into());
    let events = count(&store, "SELECT count(*) FROM events").await;
    let taken = store.insert_admitted(&second, create(&second), &Quota::default()).await.unwrap_err();
    assert!(taken.is_conflict(), "{taken:?}");
    assert_eq!(get(&store, &second.id).await, None);
    assert_eq!(count(&store, "SELECT count(*) FROM events").await, events, "no event either");
    store.close().await;
}

#[tokio::test]
async fn two_replicas_creating_one_tenant_create_it_once() {
    let db = TestDb::new().await;
    let (a, b) = (db.store().await, db.store().await);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..10 {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            let t = TenantRecord { tier: format!("tier{n}"), ..record("acme") };
            store.create_tenant(&t, NewEvent::of_tenant("acme", "t", "create_tenant", "ok", "")).await
        });
    }
    let mut created = 0;
    while let Some(r) = tasks.join_next().await {
        created += usize::from(r.unwrap().unwrap());
    }
    assert_eq!(created, 1);
    assert_eq!(b.tenants().await.unwrap().len(), 1);
    assert_eq!(count(&a, "SELECT count(*) FROM events WHERE action = 'create_tenant'").await, 1, "one event");
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn tenants_and_keys_round_trip_and_a_revoked_key_reads_revoked() {
    let db = TestDb::new().await;
    let store = db.store().await;
    for name in ["b", "a", "B"] {
        assert!(
            store
                .create_tenant(&record(name), NewEvent::of_tenant(name, "t", "create_tenant", "ok", ""))
                .await
                .unwrap()
        );
    }
    let again = TenantRecord { tier: "free".into(), ..record("a") };
    assert!(!store.create_tenant(&again, NewEvent::of_tenant("a", "t", "create_tenant", "ok", "")).await.unwrap());
    let names: Vec<String> = store.tenants().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["B", "a", "b"], "byte order, as SQLite's");
    assert_eq!(store.tenant("a").await.unwrap(), Some(record("a")), "the first one stays");
    assert_eq!(store.tenant("A").await.unwrap(), None);
    assert_eq!(count(&store, "SELECT count(*) FROM events WHERE action = 'create_tenant'").await, 3);

    let key = |id: &str, scope: KeyScope| KeyRecord {
        id: id.into(),
        scope,
        hash: format!("hash-{id}"),
        created_at: 5,
        revoked_at: None,
    };
    let ev = || NewEvent::of_tenant("a", "t", "create_key", "ok", "");
    let k1 = key("k1", KeyScope::Tenant("a".into()));
    assert!(store.create_key(&k1, ev()).await.unwrap());
    assert!(!store.create_key(&key("k2", KeyScope::Tenant("nobody".into())), ev()).await.unwrap());
    let metrics = key("m1", KeyScope::Metrics);
    assert!(store.create_key(&metrics, ev()).await.unwrap());
    let taken = store.create_key(&key("k1", KeyScope::Tenant("b".into())), ev()).await.unwrap_err();
    assert!(taken.is_conflict(), "{taken:?}");
    assert_eq!(count(&store, "SELECT count(*) FROM events WHERE action = 'create_key'").await, 2);
    assert_eq!(store.key("k1").await.unwrap(), Some(k1.clone()));
    assert_eq!(store.key("m1").await.unwrap(), Some(metrics));
    assert_eq!(store.key("k2").await.unwrap(), None);

    assert_eq!(store.revoke_key("k1", 100, "admin").await.unwrap(), Some(KeyScope::Tenant("a".into())));
    assert_eq!(store.key("k1").await.unwrap(), Some(KeyRecord { revoked_at: Some(100), ..k1.clone() }));
    assert_eq!(store.revoke_key("k1", 200, "admin").await.unwrap(), Some(KeyScope::Tenant("a".into())));
    assert_eq!(store.key("k1").await.unwrap().unwrap().revoked_at, Some(100), "the first revocation stays");
    assert_eq!(store.revoke_key("m1", 300, "admin").await.unwrap(), Some(KeyScope::Metrics));
    assert_eq!(store.revoke_key("nope", 300, "admin").await.unwrap(), None);
    let revokes: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT actor, message, tenant FROM events WHERE action = 'revoke_key' ORDER BY seq")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let tenant_key = ("admin".to_owned(), "tenant key k1".to_owned(), Some("a".to_owned()));
    let metrics_key = ("admin".to_owned(), "metrics key m1".to_owned(), None);
    assert_eq!(revokes, [tenant_key.clone(), tenant_key, metrics_key]);
    store.close().await;
}

#[tokio::test]
async fn concurrent_revocations_on_two_replicas_keep_one_time() {
    let db = TestDb::new().await;
    let (a, b) = (db.store().await, db.store().await);
    a.create_tenant(&record("t"), NewEvent::of_tenant("t", "t", "create_tenant", "ok", "")).await.unwrap();
    let k = KeyRecord {
        id: "k".into(),
        scope: KeyScope::Tenant("t".into()),
        hash: "h".into(),
        created_at: 1,
        revoked_at: None,
    };
    a.create_key(&k, NewEvent::of_tenant("t", "t", "create_key", "ok", "")).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for at in 1..=10 {
        let store = if at % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move { store.revoke_key("k", at * 10, "admin").await });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap().unwrap(), Some(KeyScope::Tenant("t".into())));
    }
    let revoked = a.key("k").await.unwrap().unwrap().revoked_at;
    assert!(revoked.is_some_and(|t| t % 10 == 0 && (10..=100).contains(&t)), "one of the times: {revoked:?}");
    assert_eq!(b.key("k").await.unwrap().unwrap().revoked_at, revoked, "the same on the other replica");
    assert_eq!(count(&a, "SELECT count(*) FROM events WHERE action = 'revoke_key'").await, 10);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn activity_moves_forward_only_and_touches_nothing_else() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let (a, mut b, mut gone) = (env(1, "", 1.0), env(2, "", 1.0), env(3, "", 1.0));
    b.last_active_at = Some(500);
    gone.observed = ObservedState::Deleted;
    for e in [&a, &b, &gone] {
        put(&store, e).await;
    }
    let events = count(&store, "SELECT count(*) FROM events").await;
    let mut feed = store.subscribe();
    assert_eq!(store.record_activity(&[]).await.unwrap(), 0);
    assert_eq!(store.activity_batches(), 0, "an empty batch writes nothing");
    let batch = [
        (a.id.clone(), 300),
        (a.id.clone(), 400), // the same id twice: the latest time
        (b.id.clone(), 200), // back: not moved
        (gone.id.clone(), 900),
        ("missing".to_owned(), 900),
    ];
    assert_eq!(store.record_activity(&batch).await.unwrap(), 1);
    assert_eq!(store.activity_batches(), 1);
    assert_eq!(get(&store, &a.id).await, Some(Environment { last_active_at: Some(400), ..a.clone() }));
    assert_eq!(get(&store, &b.id).await, Some(b.clone()), "never back");
    assert_eq!(get(&store, &gone.id).await, Some(gone.clone()), "a deleted row is skipped");
    assert_eq!(store.record_activity(&[(b.id.clone(), 600), (a.id.clone(), 400)]).await.unwrap(), 1);
    assert_eq!(get(&store, &b.id).await.unwrap().last_active_at, Some(600));
    let revs: Vec<i64> =
        sqlx::query_scalar("SELECT rev FROM environments ORDER BY id").fetch_all(store.pool()).await.unwrap();
    assert_eq!(revs, [1, 1, 0], "each move bumps the revision");
    assert_eq!(count(&store, "SELECT count(*) FROM events").await, events, "no event");
    assert!(feed.try_recv().is_err(), "nothing published");
    assert_eq!(store.clone().activity_batches(), 2, "clones share the counter");
    store.close().await;
}

#[tokio::test]
async fn concurrent_activity_batches_on_two_replicas_keep_the_latest() {
    let db = TestDb::new().await;
    let (a, b) = (db.store().await, db.store().await);
    // Enough rows that the planner looks the batch's ids up one by one (in the batch's order).
    let all: Vec<Environment> = (0..2_000).map(|n| env(n, "", 1.0)).collect();
    let mut tx = a.pool().begin().await.unwrap();
    super::write::insert_rows(&mut tx, &all).await.unwrap();
    tx.commit().await.unwrap();
    sqlx::query("ANALYZE environments").execute(a.pool()).await.unwrap();
    let envs: Vec<Environment> = all.into_iter().step_by(40).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..20_i64 {
        let store = if round % 2 == 0 { a.clone() } else { b.clone() };
        // Opposite orders, so that row locks taken in the batch's order would cross.
        let mut batch: Vec<(String, i64)> = envs.iter().map(|e| (e.id.clone(), 1_000 + round)).collect();
        if round % 2 == 1 {
            batch.reverse();
        }
        tasks.spawn(async move { store.record_activity(&batch).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().expect("no batch fails (no deadlock)");
    }
    let times: Vec<Option<i64>> =
        sqlx::query_scalar("SELECT last_active_at FROM environments WHERE last_active_at IS NOT NULL")
            .fetch_all(a.pool())
            .await
            .unwrap();
    assert_eq!(times, vec![Some(1_019); 50], "the latest time, whatever order the batches ran in");
    assert_eq!(a.activity_batches() + b.activity_batches(), 20);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn probed_and_idle_deadlines_select_running_rows() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let running = |n: u32| {
        let mut e = env(n, "", 1.0);
        e.observed = ObservedState::Running;
        e
    };
    let mut probed = running(1);
    probed.health = Some(Health::Starting);
    let mut stopped_probe = env(2, "", 1.0);
    stopped_probe.health = Some(Health::Healthy);
    let mut idle = running(3);
    idle.created_at = 100;
    idle.idle_timeout = Some(1_000);
    idle.last_active_at = Some(500);
    let mut fresh = running(4);
    fresh.created_at = 100;
    fresh.idle_timeout = Some(1_000);
    let mut stale = running(5);
    stale.created_at = 100;
    stale.idle_timeout = Some(1_000);
    stale.last_active_at = Some(50);
    let mut member = running(6);
    member.idle_timeout = Some(1_000);
    member.pool = Some("p".into());
    let mut stopping = running(7);
    stopping.idle_timeout = Some(1_000);
    stopping.desired = lapse_core::model::DesiredState::Stopped;
    for e in [&probed, &stopped_probe, &idle, &fresh, &stale, &member, &stopping, &running(8)] {
        put(&store, e).await;
    }
    assert_eq!(store.probed().await.unwrap(), [probed]);
    let mut deadlines = store.idle_deadlines().await.unwrap();
    deadlines.sort();
    assert_eq!(deadlines, [(idle.id, 1_500), (fresh.id, 1_100), (stale.id, 1_100)]);
    store.close().await;
}

#[tokio::test]
async fn workspace_sync_state_round_trips() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let id = "ws";
    assert_eq!(store.workspace_status(id).await.unwrap(), WorkspaceStatus::default());
    store.record_sync_error(id, "denied", 5).await.unwrap();
    let failed = WorkspaceStatus { last_error: Some("denied".into()), last_error_at: Some(5), ..Default::default() };
    assert_eq!(store.workspace_status(id).await.unwrap(), failed);
    store.record_sync(id, SyncOutcome::Pulled { token: "tok" }, 10).await.unwrap();
    let pulled = WorkspaceStatus { pull_token: Some("tok".into()), last_pull_at: Some(10), ..Default::default() };
    assert_eq!(store.workspace_status(id).await.unwrap(), pulled, "a pull clears the error");
    store.record_sync(id, SyncOutcome::Pushed { last: false }, 20).await.unwrap();
    store.record_sync_error(id, "timeout", 25).await.unwrap();
    let status = store.workspace_status(id).await.unwrap();
    assert_eq!((status.pushes, status.last_push_at, status.last_error.as_deref()), (1, Some(20), Some("timeout")));
    assert_eq!(status.pull_token.as_deref(), Some("tok"), "an error keeps the token");
    store.record_sync(id, SyncOutcome::Pushed { last: false }, 30).await.unwrap();
    let pushed = WorkspaceStatus { pushes: 2, last_push_at: Some(30), ..pulled.clone() };
    assert_eq!(store.workspace_status(id).await.unwrap(), pushed);
    store.record_sync(id, SyncOutcome::Pushed { last: true }, 40).await.unwrap();
    let last = WorkspaceStatus { pull_token: None, pushes: 3, last_push_at: Some(40), ..pushed };
    assert_eq!(store.workspace_status(id).await.unwrap(), last, "a final push forgets the token");
    store.record_sync(id, SyncOutcome::Pulled { token: "tok2" }, 50).await.unwrap();
    store.forget_pull(id).await.unwrap();
    assert_eq!(store.workspace_status(id).await.unwrap().pull_token, None);
    store.force_workspace(id).await.unwrap();
    store.force_workspace(id).await.unwrap();
    let forced = store.workspace_status(id).await.unwrap();
    assert!(forced.force && forced.pushes == 3 && forced.last_pull_at == Some(50), "{forced:?}");
    // A first push, a forced row of its own; forget_pull makes no row.
    store.record_sync("other", SyncOutcome::Pushed { last: true }, 60).await.unwrap();
    let other = WorkspaceStatus { pushes: 1, last_push_at: Some(60), ..Default::default() };
    assert_eq!(store.workspace_status("other").await.unwrap(), other);
    store.force_workspace("third").await.unwrap();
    assert_eq!(store.workspace_status("third").await.unwrap(), WorkspaceStatus { force: true, ..Default::default() });
    store.forget_pull("fourth").await.unwrap();
    assert_eq!(count(&store, "SELECT count(*) FROM workspace_sync").await, 3);

    // The syncer's round: running (desired and observed) rows with a workspace.
    let with = |n: u32, workspace: bool| {
        let mut e = env(n, "", 1.0);
        e.observed = ObservedState::Running;
        e.spec.workspace = workspace.then(|| Workspace { bucket: "b".into(), path: "/w".into(), ..Default::default() });
        e
    };
    let mut stopping = with(3, true);
    stopping.desired = lapse_core::model::DesiredState::Stopped;
    let mut pending = with(4, true);
    pending.observed = ObservedState::Pending;
    for e in [&with(1, true), &with(2, false), &stopping, &pending, &with(5, true)] {
        put(&store, e).await;
    }
    let ids: Vec<String> = store.workspaced().await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, [with(1, true).id, with(5, true).id]);
    store.close().await;
}

/// An event at `at` (the store stamps its own events with the clock).
async fn event_at(store: &PgStore, id: &str, at: i64, action: &str, outcome: &str, tenant: &str) {
    sqlx::query(
        "INSERT INTO events (at, environment_id, actor, action, outcome, message, tenant) VALUES ($1, $2, 't', $3, $4, '', $5)",
    )
    .bind(at)
    .bind(id)
    .bind(action)
    .bind(outcome)
    .bind(tenant)
    .execute(store.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn accrual_reads_the_period_and_the_state_before_it() {
    use lapse_core::cost::{Owner, Transition};
    let db = TestDb::new().await;
    let store = db.store().await;
    let (from, to) = (1_000, 2_000);
    let at = |n: u32, tenant: &str, created_at: i64| {
        let mut e = env(n, tenant, 1.0);
        e.created_at = created_at;
        e.updated_at = created_at;
        e
    };
    let mine = at(1, "t", 0);
    let claimed = at(2, "", 0); // a pool member t claimed (the row's tenant left as it was)
    let mut gone = at(3, "t", 0);
    gone.observed = ObservedState::Deleted;
    gone.updated_at = 500;
    let theirs = at(4, "u", 0);
    let later = at(5, "t", 2_000);
    for e in [&mine, &claimed, &gone, &theirs, &later] {
        put(&store, e).await;
    }
    sqlx::query("DELETE FROM events").execute(store.pool()).await.unwrap();
    event_at(&store, &mine.id, 50, "transition", "provisioning", "t").await;
    event_at(&store, &mine.id, 100, "transition", "running", "t").await;
    event_at(&store, &mine.id, 1_500, "transition", "stopped", "t").await;
    event_at(&store, &mine.id, 1_600, "extend", "ok", "t").await;
    event_at(&store, &mine.id, 2_500, "transition", "running", "t").await;
    event_at(&store, &claimed.id, 300, "transition", "provisioning", "").await;
    event_at(&store, &claimed.id, 500, "transition", "running", "").await;
    event_at(&store, &claimed.id, 1_200, "claim", "ok", "t").await;
    event_at(&store, &gone.id, 400, "transition", "deleted", "t").await;
    event_at(&store, &theirs.id, 1_100, "transition", "running", "u").await;

    let got = store.accrual(Some("t"), from, to).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|a| a.env.id.as_str()).collect();
    assert_eq!(ids, [mine.id.as_str(), claimed.id.as_str()]);
    assert_eq!(got[0].env, mine);
    let running = |at| Transition { at, to: ObservedState::Running };
    assert_eq!(got[0].transitions, [running(100), Transition { at: 1_500, to: ObservedState::Stopped }]);
    assert_eq!(got[0].owners, [Owner { from: 100, tenant: "t".into() }]);
    assert_eq!(got[1].transitions, [running(500)]);
    let owners = [Owner { from: 500, tenant: String::new() }, Owner { from: 1_200, tenant: "t".into() }];
    assert_eq!(got[1].owners, owners);

    let all = store.accrual(None, from, to).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|a| a.env.id.as_str()).collect();
    assert_eq!(ids, [mine.id.as_str(), claimed.id.as_str(), theirs.id.as_str()]);
    assert_eq!(all[2].transitions, [running(1_100)]);
    assert!(store.accrual(Some("nobody"), from, to).await.unwrap().is_empty());
    store.close().await;
}

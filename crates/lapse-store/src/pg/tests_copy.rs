//! `lapse migrate`'s copy ([`super::copy`]): a SQLite store with a row in every table, more
//! than one batch of environments and events, copied into a fresh PostgreSQL database and
//! read back through the store; and the refusals and failures, each leaving the destination
//! empty.

use std::collections::BTreeMap;
use std::path::Path;

use lapse_core::model::{Environment, Lifecycle, ObservedState, Pool, Resources, Spec};

use super::copy::{self, CopyError, TABLES};
use crate::pg::testdb::TestDb;
use crate::tests::webhooks::{delivery, hook};
use crate::{EventFilter, KeyRecord, KeyScope, NewEvent, Store, SyncOutcome, TenantRecord};

fn env(n: u32) -> Environment {
    let spec = Spec {
        provider: "sim".into(),
        resources: Some(Resources { vcpu: Some(0.5), mem_mb: Some(256), disk_gb: Some(1) }),
        ..Default::default()
    };
    let mut e = Environment::new(format!("{n:032x}"), format!("owner-{}", n % 7), spec, 1_000 + i64::from(n));
    e.tenant = if n.is_multiple_of(2) { "acme".into() } else { String::new() };
    e.labels.insert("n".into(), n.to_string());
    e.expires_at = Some(10_000_000 + i64::from(n));
    e.name = n.is_multiple_of(3).then(|| format!("env \u{e9}\u{1f680} {n}"));
    e.job_id = n.is_multiple_of(5).then(|| format!("job-{n}"));
    e
}

/// A SQLite store with rows in every table; its path, the environments and the controller id.
async fn filled(dir: &Path) -> (std::path::PathBuf, Vec<Environment>, String) {
    let path = dir.join("lapse.db");
    let store = Store::open(&path).await.unwrap();
    let controller = store.controller_id().await.unwrap();
    let tenant = TenantRecord {
        name: "acme".into(),
        tier: "pro".into(),
        quota: serde_json::json!({"vcpu": 8}),
        quota_check: "summed".into(),
        created_at: 5,
    };
    store.create_tenant(&tenant, NewEvent::of_tenant("acme", "admin", "tenant.create", "ok", "")).await.unwrap();
    let key = KeyRecord {
        id: "k1".into(),
        scope: KeyScope::Tenant("acme".into()),
        hash: "ab".repeat(32),
        created_at: 6,
        revoked_at: None,
    };
    store.create_key(&key, NewEvent::of_tenant("acme", "admin", "key.create", "ok", "")).await.unwrap();
    let metrics = KeyRecord { id: "k2".into(), scope: KeyScope::Metrics, revoked_at: Some(9), ..key };
    store.create_key(&metrics, NewEvent::of_tenant("", "admin", "key.create", "ok", "")).await.unwrap();
    let pool = Pool {
        name: "warm".into(),
        spec: Spec { provider: "sim".into(), ..Default::default() },
        min: 2,
        max: 4,
        version: "v1".into(),
        lifecycle: Lifecycle::default(),
        source: "api".into(),
        on_claim: None,
        created_at: 7,
        updated_at: 8,
    };
    store.put_pool(&pool, NewEvent::new("warm", "admin", "pool.put", "ok", "")).await.unwrap();
    let envs: Vec<Environment> = (0..1_203).map(env).collect();
    let events: Vec<NewEvent> = envs.iter().map(|e| NewEvent::new(&e.id, "t", "create", "ok", "made")).collect();
    store.insert_many(&envs, &events).await.unwrap();
    let id = envs[1].id.clone();
    store
        .update::<crate::StoreError>(&id, |e| {
            e.observed = ObservedState::Running;
            Ok(vec![NewEvent::new(&id, "r", "run", "ok", "")])
        })
        .await
        .unwrap();
    store
        .create_webhook(&hook("h1", Some("acme")), NewEvent::of_tenant("acme", "admin", "hook", "ok", ""))
        .await
        .unwrap();
    store.add_delivery("h1", &delivery("d1", Some(&envs[0].id))).await.unwrap();
    store.record_sync(&envs[2].id, SyncOutcome::Pulled { token: "tok" }, 11).await.unwrap();
    store.close().await;
    // The queue tables, written as the queue consumers write them.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "INSERT INTO queue_receipts (tag, queue, at) VALUES ('m1', 'q', 1), ('m2', 'q', 2);
         INSERT INTO queue_counters (queue, processed) VALUES ('q', 2);
         INSERT INTO queue_idempotency (queue, key, tag, at) VALUES ('q', 'idem', 'm1', 1);",
    )
    .unwrap();
    let envs = {
        let store = Store::open(&path).await.unwrap();
        let mut all = Vec::new();
        for e in &envs {
            all.push(store.get(&e.id).await.unwrap().unwrap());
        }
        store.close().await;
        all
    };
    (path, envs, controller)
}

fn counts_sqlite(path: &Path) -> BTreeMap<String, u64> {
    let conn = rusqlite::Connection::open(path).unwrap();
    TABLES
        .iter()
        .map(|t| ((*t).to_owned(), conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0)).unwrap()))
        .collect()
}

async fn counts_pg(db: &TestDb) -> BTreeMap<String, u64> {
    let store = db.store().await;
    let mut out = BTreeMap::new();
    for t in TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {t}")).fetch_one(store.pool()).await.unwrap();
        out.insert((*t).to_owned(), n as u64);
    }
    out
}

async fn run(path: &Path, db: &TestDb) -> Result<copy::CopyReport, CopyError> {
    let mut seen = Vec::new();
    let got = copy::sqlite_to_postgres(path, &db.url, &mut |p| seen.push((p.table.to_owned(), p.copied))).await;
    if got.is_ok() {
        for t in TABLES {
            assert!(seen.iter().any(|(s, _)| s == t), "progress names {t}");
        }
    }
    got
}

fn all_events() -> EventFilter {
    EventFilter { limit: 10_000, ..Default::default() }
}

#[tokio::test]
async fn a_copy_holds_every_row_and_the_store_reads_it_as_sqlite_did() {
    let dir = tempfile::tempdir().unwrap();
    let (path, envs, controller) = filled(dir.path()).await;
    let db = TestDb::new().await;
    let report = run(&path, &db).await.unwrap();
    let want = counts_sqlite(&path);
    let copied: BTreeMap<String, u64> = report.tables.iter().map(|t| (t.table.clone(), t.rows)).collect();
    assert_eq!(copied, want, "the report counts what SQLite holds");
    assert_eq!(counts_pg(&db).await, want, "PostgreSQL holds as many");
    assert!(want.values().all(|&n| n > 0), "every table had rows: {want:?}");
    assert_eq!(report.controller_id.as_deref(), Some(controller.as_str()));

    let sqlite = Store::open(&path).await.unwrap();
    let pg = Store::connect_postgres(&db.url).await.unwrap();
    assert_eq!(pg.controller_id().await.unwrap(), controller, "the controller keeps its id");
    for e in &envs {
        assert_eq!(pg.get(&e.id).await.unwrap().as_ref(), Some(e), "{}", e.id);
    }
    let (a, b) = (sqlite.events(&all_events()).await.unwrap(), pg.events(&all_events()).await.unwrap());
    assert_eq!(a.len(), 1_203 + 6);
    assert_eq!(a, b, "the audit trail, seq for seq");
    assert_eq!(sqlite.tenants().await.unwrap(), pg.tenants().await.unwrap());
    for k in ["k1", "k2"] {
        assert_eq!(sqlite.key(k).await.unwrap(), pg.key(k).await.unwrap(), "{k}");
    }
    assert_eq!(sqlite.list_pools().await.unwrap(), pg.list_pools().await.unwrap());
    assert_eq!(sqlite.list_webhooks(None, None, 10).await.unwrap(), pg.list_webhooks(None, None, 10).await.unwrap());
    assert_eq!(sqlite.pending_deliveries().await.unwrap(), 1);
    assert_eq!(pg.pending_deliveries().await.unwrap(), 1);
    assert_eq!(sqlite.workspace_status(&envs[2].id).await.unwrap(), pg.workspace_status(&envs[2].id).await.unwrap());
    assert_eq!(sqlite.queue_counters().await.unwrap(), pg.queue_counters().await.unwrap());
    assert_eq!(sqlite.usage("acme").await.unwrap(), pg.usage("acme").await.unwrap());
    // New rows follow the copied numbers.
    let last = pg.last_event_seq().await.unwrap();
    assert_eq!(last, sqlite.last_event_seq().await.unwrap());
    pg.append_event(NewEvent::new("x", "t", "after", "ok", "")).await.unwrap();
    assert_eq!(pg.last_event_seq().await.unwrap(), last + 1);
    pg.add_delivery("h1", &delivery("d2", None)).await.unwrap();
    sqlite.close().await;

    // A second copy into the same database is refused and changes nothing.
    let before = counts_pg(&db).await;
    match run(&path, &db).await {
        Err(CopyError::NotEmpty { table, rows }) => assert_eq!((table.as_str(), rows), ("meta", 1)),
        other => panic!("a full destination: {other:?}"),
    }
    assert_eq!(counts_pg(&db).await, before);
}

async fn assert_empty(db: &TestDb) {
    let counts = counts_pg(db).await;
    assert!(counts.values().all(|&n| n == 0), "the destination holds nothing: {counts:?}");
}

#[tokio::test]
async fn a_bad_row_fails_the_whole_copy_and_the_destination_stays_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (path, envs, _) = filled(dir.path()).await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    // A number where the schema wants one, text PostgreSQL cannot hold: each alone fails.
    conn.execute("UPDATE environments SET attempts = 'many' WHERE id = ?1", [&envs[700].id]).unwrap();
    let db = TestDb::new().await;
    match run(&path, &db).await {
        Err(CopyError::Row { table, column, .. }) => {
            assert_eq!((table.as_str(), column.as_str()), ("environments", "attempts"))
        }
        other => panic!("a text attempts: {other:?}"),
    }
    assert_empty(&db).await;
    conn.execute("UPDATE environments SET attempts = 0 WHERE id = ?1", [&envs[700].id]).unwrap();
    conn.execute("UPDATE events SET message = 'a' || char(0) || 'b' WHERE seq = 900", []).unwrap();
    match run(&path, &db).await {
        Err(CopyError::Row { table, .. }) => assert_eq!(table, "events"),
        other => panic!("a NUL byte: {other:?}"),
    }
    assert_empty(&db).await;
    conn.execute("UPDATE events SET message = 'ab' WHERE seq = 900", []).unwrap();
    run(&path, &db).await.expect("once the rows are fixed, the copy goes through");
}

#[tokio::test]
async fn refusals_name_their_cause_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new().await;
    match run(&dir.path().join("missing.db"), &db).await {
        Err(CopyError::NoSource(p)) => assert!(p.ends_with("missing.db")),
        other => panic!("no source: {other:?}"),
    }
    assert!(!dir.path().join("missing.db").exists(), "the source is never created");
    let (path, _, _) = filled(dir.path()).await;

    // A server on the destination.
    let server = db.store().await;
    let held = server.hold_sole_server().await.unwrap();
    assert!(matches!(run(&path, &db).await, Err(CopyError::Destination(super::PgError::Taken))));
    drop(held);

    // A writer on the source.
    let writer = rusqlite::Connection::open(&path).unwrap();
    writer.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert!(matches!(run(&path, &db).await, Err(CopyError::SourceBusy(_))));
    writer.execute_batch("ROLLBACK").unwrap();

    // A table or a column one side has and the other has not.
    writer.execute_batch("CREATE TABLE extra (x INTEGER)").unwrap();
    match run(&path, &db).await {
        Err(CopyError::Schema(m)) => assert!(m.contains("extra") && m.contains("SQLite"), "{m}"),
        other => panic!("an extra table: {other:?}"),
    }
    writer.execute_batch("DROP TABLE extra; ALTER TABLE pools ADD COLUMN colour TEXT").unwrap();
    match run(&path, &db).await {
        Err(CopyError::Schema(m)) => assert!(m.contains("pools") && m.contains("colour"), "{m}"),
        other => panic!("an extra column: {other:?}"),
    }
    assert_empty(&db).await;
    assert!(matches!(
        copy::sqlite_to_postgres(&path, "postgres://nobody@127.0.0.1:1/x", &mut |_| {}).await,
        Err(CopyError::Destination(super::PgError::Connect { .. }))
    ));
}

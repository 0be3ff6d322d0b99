//! `PgStore::connect` and the PostgreSQL schema against a real server:
//! `LAPSE_TEST_POSTGRES_URL` (set by `scripts/test-env.sh`; a test fails without it). Each
//! test makes its own database through that URL's role and drops it at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sqlx::{PgConnection, Row as _};

use super::*;
use crate::pg::testdb::TestDb;

async fn applied(conn: &mut PgConnection) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(conn)
        .await
        .unwrap()
}

fn known() -> Vec<i64> {
    sqlx::migrate!("./migrations-pg").iter().map(|m| m.version).collect()
}

#[tokio::test]
async fn migrations_apply_on_an_empty_database_and_again() {
    let db = TestDb::new().await;
    let store = PgStore::connect(&db.url).await.unwrap();
    // The schema is usable: an environment row goes in and comes out, booleans as booleans.
    sqlx::query(
        "INSERT INTO environments (id, tenant, owner, labels, spec, provider, lifecycle, desired, observed, \
         endpoints, on_expiry, created_at, updated_at) VALUES ('e1', '', 'o', '{\"a\":\"b\"}', '{}', 'sim', \
         'ephemeral', 'running', 'running', '[]', 'delete', 1, 2)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let row = sqlx::query("SELECT replace_resource, labels::jsonb ->> 'a' AS a FROM environments WHERE id = 'e1'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!((row.get::<bool, _>("replace_resource"), row.get::<String, _>("a")), (false, "b".to_owned()));
    store.close().await;

    // Again: nothing to do, nothing lost.
    let store = PgStore::connect(&db.url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM environments").fetch_one(store.pool()).await.unwrap();
    assert_eq!(n, 1);
    store.close().await;
    assert_eq!(applied(&mut db.conn().await).await, known());
}

#[tokio::test]
async fn concurrent_connects_migrate_once() {
    let db = TestDb::new().await;
    let (a, b, c) = tokio::join!(PgStore::connect(&db.url), PgStore::connect(&db.url), PgStore::connect(&db.url));
    for store in [a, b, c] {
        store.unwrap().close().await;
    }
    let mut conn = db.conn().await;
    assert_eq!(applied(&mut conn).await, known(), "each migration recorded once");
    let locks: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(locks, 0, "the migration lock is released");
}

#[tokio::test]
async fn migrations_wait_for_the_advisory_lock() {
    let db = TestDb::new().await;
    let mut holder = db.conn().await;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK).execute(&mut holder).await.unwrap();
    let url = db.url.clone();
    let connecting = tokio::spawn(async move { PgStore::connect(&url).await });

    // The connect waits on the lock: poll pg_locks until its request shows, not granted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND ((classid::bigint << 32) | objid::bigint) = $1",
        )
        .bind(MIGRATION_LOCK)
        .fetch_one(&mut holder)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "connect never asked for the migration lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let migrated: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&mut holder).await.unwrap();
    assert!(!migrated && !connecting.is_finished(), "nothing migrated while another holds the lock");

    sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut holder).await.unwrap();
    let store = connecting.await.unwrap().expect("connect goes on once the lock is free");
    store.close().await;
    assert_eq!(applied(&mut holder).await, known());
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_alone() {
    let db = TestDb::new().await;
    PgStore::connect(&db.url).await.unwrap().close().await;
    let mut conn = db.conn().await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from a newer lapse', true, '\\x00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let err = PgStore::connect(&db.url).await.unwrap_err();
    assert!(matches!(err, PgError::NewerSchema { applied: 99990101000000, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("newer than this lapse") && text.contains("99990101000000"), "{text}");
    let mut expected = known();
    expected.push(99990101000000);
    assert_eq!(applied(&mut conn).await, expected, "nothing was changed");
}

#[tokio::test]
async fn malformed_urls_are_refused_without_repeating_them() {
    for bad in [
        "",
        "localhost:5432",
        "mysql://u:secret@127.0.0.1/x",
        "postgres://u:secret@[::1/x",
        "postgres://u:secret@h:99999/x",
    ] {
        let err = PgStore::connect(bad).await.unwrap_err();
        assert!(matches!(err, PgError::Url(_)), "{bad}: {err:?}");
        let text = err.to_string();
        assert!(text.starts_with("malformed PostgreSQL URL") && !text.contains("secret"), "{bad}: {text}");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_named_with_its_reason() {
    // A loopback port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let start = Instant::now();
    let err = PgStore::connect(&format!("postgres://u:secret@127.0.0.1:{port}/x")).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2), "a refusal is reported at once: {:?}", start.elapsed());
    let text = err.to_string();
    assert!(matches!(err, PgError::Connect { .. }), "{err:?}");
    assert!(text.contains(&format!("127.0.0.1:{port}")) && !text.contains("secret"), "{text}");
    assert!(text.contains("Connection refused"), "the OS's reason, not a pool's timeout: {text}");
}

#[tokio::test]
async fn a_silent_server_is_given_up_on_within_the_timeout() {
    // Connections are accepted (the kernel's backlog) and never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let start = Instant::now();
    let err = PgStore::connect(&format!("postgres://u:secret@127.0.0.1:{port}/x")).await.unwrap_err();
    let took = start.elapsed();
    assert!(took >= CONNECT_TIMEOUT && took < CONNECT_TIMEOUT + Duration::from_secs(2), "{took:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")) && text.contains("no answer within 5 s"), "{text}");
    drop(silent);
}

/// A pool with spec hash `h{i % 50}` per `i < 50`; 20,000 environments of which every 50th
/// (400) is a warm member of its spec's pool, the rest stopped or deleted and poolless.
async fn fill(store: &PgStore) {
    let pool = store.pool();
    sqlx::query(
        "INSERT INTO pools (name, spec, spec_hash, min, max, version, lifecycle, source, created_at, updated_at) \
         SELECT 'p' || i, '{}', 'h' || i, 0, 10, 'v1', 'ephemeral', 'api', 0, 0 FROM generate_series(0, 49) i",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO environments (id, tenant, owner, labels, spec, provider, lifecycle, desired, observed, \
         endpoints, on_expiry, created_at, updated_at, spec_hash, pool, pool_version) \
         SELECT lpad(i::text, 8, '0'), '', 'o', '{}', '{}', 'sim', 'ephemeral', \
           CASE WHEN i % 50 = 0 OR i % 3 <> 0 THEN 'running' ELSE 'deleted' END, \
           CASE WHEN i % 50 = 0 THEN 'running' WHEN i % 3 = 0 THEN 'deleted' ELSE 'stopped' END, \
           '[]', 'delete', 0, 0, 'h' || (i % 7), CASE WHEN i % 50 = 0 THEN 'p' || (i % 7) END, 'v1' \
         FROM generate_series(0, 19999) i",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE environments, pools").execute(pool).await.unwrap();
}

#[tokio::test]
async fn the_claim_uses_the_partial_index_without_a_sort() {
    let db = TestDb::new().await;
    let store = PgStore::connect(&db.url).await.unwrap();
    fill(&store).await;
    let plan = store.claim_plan("h3").await.unwrap();
    assert!(plan.contains("Index Scan using environments_warm on environments"), "{plan}");
    assert!(plan.contains("LockRows"), "the rows are locked: {plan}");
    assert!(claim_query("e.id").ends_with("FOR UPDATE OF e SKIP LOCKED"));
    // pools (50 rows) may be read whole; environments never.
    assert!(!plan.contains("Sort") && !plan.contains("Seq Scan on environments"), "{plan}");
    store.close().await;
}

#[tokio::test]
async fn concurrent_claims_skip_each_others_members() {
    let db = TestDb::new().await;
    let store = PgStore::connect(&db.url).await.unwrap();
    fill(&store).await;
    let claim = claim_query("e.id");
    let mut first = store.pool().begin().await.unwrap();
    let a: Vec<String> = sqlx::query_scalar(&claim).bind("h3").bind(2_i64).fetch_all(&mut *first).await.unwrap();
    // A second claim while the first holds its rows: not blocked, the next members.
    let mut second = store.pool().begin().await.unwrap();
    let b: Vec<String> = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::query_scalar(&claim).bind("h3").bind(2_i64).fetch_all(&mut *second),
    )
    .await
    .expect("SKIP LOCKED: the second claim does not wait")
    .unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 2);
    assert!(a.iter().all(|id| !b.contains(id)), "{a:?} {b:?}");
    assert!(a[1] < b[0], "in id order: {a:?} {b:?}");
    first.rollback().await.unwrap();
    second.rollback().await.unwrap();
    store.close().await;
}

/// Per table its columns (name, NOT NULL, type class: `int` for SQLite's INTEGER and
/// PostgreSQL's BIGINT or BOOLEAN, `text`), and the index names, of a schema.
type Shape = (BTreeMap<String, BTreeSet<(String, bool, &'static str)>>, BTreeSet<String>);

fn class(declared: &str) -> &'static str {
    match declared.to_ascii_lowercase().as_str() {
        "integer" | "bigint" | "boolean" => "int",
        "text" => "text",
        _ => "other",
    }
}

#[tokio::test]
async fn the_schema_matches_the_sqlite_migrations() {
    // One connection: each connection to `:memory:` is a database of its own.
    let sqlite = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap();
    sqlx::migrate!("./migrations").run(&sqlite).await.unwrap();
    let mut lite: Shape = Default::default();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'",
    )
    .fetch_all(&sqlite)
    .await
    .unwrap();
    for table in tables {
        let cols = sqlx::query(&format!("SELECT name, \"notnull\", pk, type FROM pragma_table_info('{table}')"))
            .fetch_all(&sqlite)
            .await
            .unwrap();
        let cols = cols.iter().map(|c| {
            let not_null = c.get::<i64, _>(1) == 1 || c.get::<i64, _>(2) > 0;
            (c.get::<String, _>(0), not_null, class(c.get::<&str, _>(3)))
        });
        lite.0.insert(table, cols.collect());
    }
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%'")
            .fetch_all(&sqlite)
            .await
            .unwrap();
    lite.1 = indexes.into_iter().collect();

    let db = TestDb::new().await;
    let store = PgStore::connect(&db.url).await.unwrap();
    let mut pg: Shape = Default::default();
    let cols = sqlx::query(
        "SELECT table_name::text, column_name::text, is_nullable = 'NO', data_type::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for c in cols {
        pg.0.entry(c.get(0)).or_default().insert((c.get(1), c.get(2), class(c.get::<&str, _>(3))));
    }
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' AND indexname NOT LIKE '%_pkey' \
         AND indexname NOT LIKE '%_key'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    pg.1 = indexes.into_iter().collect();
    store.close().await;

    assert_eq!(pg.0, lite.0, "the same tables and columns, with the same NOT NULLs and types");
    let mut expected = lite.1.clone();
    expected.insert("environments_warm".into());
    assert_eq!(pg.1, expected, "the same indexes, and the warm claim's");
}

#[tokio::test]
async fn a_row_round_trips_and_events_number_in_order_with_their_tenant() {
    use lapse_core::model::{Environment, Spec};
    let db = TestDb::new().await;
    let store = db.store().await;
    let spec = Spec { provider: "process".into(), cmd: vec!["sleep".into(), "5".into()], ..Default::default() };
    let mut env = Environment::new("01-row".into(), "owner".into(), spec, 1);
    env.tenant = "acme".into();
    env.labels = BTreeMap::from([("LabID".to_string(), "7".to_string())]);
    env.expires_at = Some(1_000);
    env.restart_on_extend = true;
    env.warn_before = vec![60_000, 5_000];
    let mut tx = store.pool().begin().await.unwrap();
    let mut q = sqlx::QueryBuilder::new(format!("INSERT INTO environments ({}) ", crate::ENV_COLUMNS));
    q.push_values([&env], |b, e| push_environment(b, e));
    q.build().execute(&mut *tx).await.unwrap();
    let events: Vec<crate::NewEvent> = (0..1500)
        .map(|i| crate::NewEvent::new("01-row", "t", "create", "ok", format!("n{i}")))
        .chain([crate::NewEvent::of_tenant("other", "t", "key", "ok", "last")])
        .collect();
    append_events(&mut tx, &events).await.unwrap();
    tx.commit().await.unwrap();

    let row =
        sqlx::query(&format!("SELECT {} FROM environments", crate::ENV_COLUMNS)).fetch_one(store.pool()).await.unwrap();
    let back = crate::rows::environment_from(&row).unwrap();
    assert_eq!(back, env, "every column reads back as written (flags as booleans)");
    let written: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT seq, message, tenant FROM events ORDER BY seq").fetch_all(store.pool()).await.unwrap();
    assert_eq!(written.len(), 1501);
    for (i, (_, message, tenant)) in written.iter().take(1500).enumerate() {
        assert_eq!((message.as_str(), tenant.as_deref()), (format!("n{i}").as_str(), Some("acme")));
    }
    assert_eq!((written[1500].1.as_str(), written[1500].2.as_deref()), ("last", Some("other")));
    store.close().await;
}

//! `lapse serve --database`: SQLite at a chosen file; PostgreSQL refused at start (exit code
//! 2, the reason on stderr) when its URL is malformed, its server unreachable, its schema
//! newer than the binary's or another server holds it; and a server on PostgreSQL that
//! serves, keeps its state across a `kill -9`, and stops when it loses the database's server
//! lock. Against `LAPSE_TEST_POSTGRES_URL` (scripts/test-env.sh).

use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::{Server, secs};

fn postgres_url() -> String {
    std::env::var("LAPSE_TEST_POSTGRES_URL")
        .expect("LAPSE_TEST_POSTGRES_URL is unset: run the tests through scripts/test (or source scripts/test-env.sh)")
}

fn psql(url: &str, sql: &str) {
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("running psql");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A fresh database for one test, dropped at the end.
struct Db {
    name: String,
    url: String,
}

impl Db {
    fn new() -> Db {
        let admin = postgres_url();
        let name = format!("lapse_t_{}", uuid_like());
        psql(&admin, &format!("CREATE DATABASE {name}"));
        let (base, _) = admin.rsplit_once('/').expect("the test URL names a database");
        Db { url: format!("{base}/{name}"), name }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        psql(&postgres_url(), &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", std::process::id(), nanos)
}

/// `lapse serve --database VALUE` (or LAPSE_DATABASE) that must exit on its own.
async fn serve(database: &str, via_env: bool) -> (Output, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path()).kill_on_drop(true);
    if via_env {
        cmd.env("LAPSE_DATABASE", database);
    } else {
        cmd.args(["--database", database]);
    }
    let start = Instant::now();
    let out = tokio::time::timeout(secs(30), cmd.output())
        .await
        .expect("the server refuses and exits within 30 s")
        .expect("running lapse serve");
    let took = start.elapsed();
    assert!(!dir.path().join("lapse.db").exists(), "no SQLite store was made for {database:?}");
    (out, took)
}

fn refused(out: &Output, what: &str, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{what}: exit code 2; stderr: {stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("lapse serving"), "{what}: never served");
    for needle in needles {
        assert!(stderr.contains(needle), "{what}: stderr names {needle:?}: {stderr}");
    }
    assert!(!stderr.contains("secret"), "{what}: the password is never printed: {stderr}");
    stderr
}

#[tokio::test]
async fn postgres_refusals_at_start() {
    // Malformed.
    let (out, _) = serve("postgres://u:secret@[::1/lapse", false).await;
    refused(&out, "malformed", &["malformed PostgreSQL URL"]);
    // Another scheme.
    let (out, _) = serve("mysql://u:secret@127.0.0.1/lapse", true).await;
    refused(&out, "mysql", &["\"mysql\"", "sqlite:PATH", "postgres://"]);

    // Unreachable: a loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (out, took) = serve(&format!("postgres://u:secret@127.0.0.1:{port}/lapse"), false).await;
    refused(&out, "unreachable", &["cannot connect to PostgreSQL", &format!("127.0.0.1:{port}"), "Connection refused"]);
    assert!(took < secs(5), "refused within seconds: {took:?}");

    // A wrong password: the server's own reason.
    let (out, _) = serve(&postgres_url().replacen("lapse_test@", "secret@", 1), true).await;
    refused(&out, "wrong password", &["password authentication failed"]);

    // Migrated by a newer lapse: refused, naming the reason.
    let db = Db::new();
    psql(
        &db.url,
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
        installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, \
        execution_time BIGINT NOT NULL)",
    );
    psql(
        &db.url,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from a newer lapse', true, '\\x00', 0)",
    );
    let (out, _) = serve(&db.url, false).await;
    refused(&out, "newer schema", &["newer than this lapse", "99990101000000"]);
}

#[tokio::test]
async fn sqlite_at_a_chosen_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("elsewhere.db");
    let server = Server::start(dir.path(), &["--database", &format!("sqlite:{}", file.display())]).await;
    let (status, _) = server.get("/v1/environments").await;
    assert!(status.is_success(), "{status}");
    assert!(file.exists(), "the store is at the --database file");
    let (_, status) = server.get("/v1/status").await;
    assert_eq!(status["store"], "sqlite");
    assert!(status.get("replicas").is_none() && status.get("replica").is_none(), "{status}");
    assert!(!dir.path().join("lapse.db").exists(), "and not in the data dir");
}

#[tokio::test]
async fn help_never_shows_the_database_url() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["serve", "--help"])
        .env("LAPSE_DATABASE", "postgres://u:secret@127.0.0.1:1/lapse")
        .output()
        .await
        .expect("running lapse serve --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--database") && !help.contains("secret"), "{help}");
}

#[tokio::test]
async fn a_server_on_postgres_serves_one_at_a_time_and_stops_when_its_lock_is_lost() {
    let db = Db::new();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--database", &db.url]).await;
    let made = server.create(crate::harness::process_env(&["sleep", "600"])).await;
    let id = made["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(20)).await;
    assert!(!dir.path().join("lapse.db").exists(), "no SQLite store beside PostgreSQL");

    // `lapse status --server`: the store, this replica, and who holds what.
    let status = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lapse"));
        cmd.args(["--url", &server.url, "status", "--server"]);
        if json {
            cmd.arg("--json");
        }
        cmd.output().expect("running lapse status --server")
    };
    let out = status(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json");
    assert_eq!(got["store"], "postgres");
    let me = got["replica"].as_str().expect("this server's replica id").to_owned();
    let replicas = got["replicas"].as_array().expect("the replicas");
    let mine = replicas.iter().find(|r| r["id"] == me.as_str()).unwrap_or_else(|| panic!("{got}"));
    assert_eq!(mine["holds"], serde_json::json!(["server"]), "{got}");
    assert!(mine["connections"].as_i64().unwrap() >= 2, "the lock's connection and the pool's: {got}");
    let table = String::from_utf8_lossy(&status(false).stdout).into_owned();
    assert!(
        table.contains("store        postgres") && table.contains(&format!("{me} *")) && table.contains("server"),
        "{table}"
    );

    // A second server on the same database (its own data dir) is refused while the first runs.
    let (out, _) = serve(&db.url, false).await;
    refused(&out, "second server", &["another lapse serve is using this PostgreSQL database"]);

    // kill -9: the lock's session ends with the process; a new server takes the database
    // and finds what the first one stored.
    server.restart().await;
    let env = server.wait_state(&id, "running", secs(20)).await;
    assert_eq!(env["id"], id.as_str());
    let (status, _) = server.request(reqwest::Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    assert!(status.is_success(), "{status}");
    server.wait_state(&id, "deleted", secs(20)).await;

    // The lock's session terminated by the database (a restart, an operator): the server stops
    // within a few checks, with an error, rather than run beside a server that took the lock.
    psql(
        &db.url,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = {} \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            lapse_store::pg::SOLE_LOCK & 0xffff_ffff
        ),
    );
    server.wait_exit(secs(15)).await;
    let log = server.log();
    assert!(log.contains("the PostgreSQL server lock is lost"), "the reason is logged: {log}");
}

/// `lapse migrate` with these arguments, to its end.
async fn migrate(args: &[&str]) -> Output {
    let out =
        tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse")).arg("migrate").args(args).kill_on_drop(true).output();
    tokio::time::timeout(secs(60), out).await.expect("lapse migrate ends within 60 s").expect("running lapse migrate")
}

#[tokio::test]
async fn lapse_migrate_moves_a_sqlite_store_to_postgres_and_the_new_server_keeps_its_environments() {
    let db = Db::new();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]).await;
    let made = server.create(crate::harness::process_env(&["sleep", "600"])).await;
    let id = made["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(20)).await;
    let controller = server.controller_id.clone();

    // While the server runs and writes, or before anything: refusals, exit code 2.
    let out = migrate(&["--data-dir", &dir.path().join("nothing").display().to_string(), "--to", &db.url]).await;
    refused(&out, "no store", &["does not exist"]);
    let out = migrate(&["--from", "postgres://u:secret@h/x", "--to", &db.url]).await;
    refused(&out, "--from postgres", &["--from must be a SQLite store"]);
    let data = dir.path().display().to_string();
    let out = migrate(&["--data-dir", &data, "--to", "sqlite:/tmp/x.db"]).await;
    refused(&out, "--to sqlite", &["--to must be a PostgreSQL URL"]);

    // The server stops (kill -9: its process environment goes on running), the copy is made.
    server.kill9().await;
    let out = migrate(&["--data-dir", &data, "--to", &db.url, "--json"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "migrated; stderr: {stderr}");
    assert!(stderr.contains("environments") && stderr.contains("events"), "progress per table: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints the report");
    assert_eq!(report["controller_id"], controller.as_str());
    let rows =
        |t: &str| report["tables"].as_array().unwrap().iter().find(|x| x["table"] == t).unwrap()["rows"].as_u64();
    assert_eq!(rows("environments"), Some(1));
    assert!(rows("events").unwrap() >= 2, "{report}");

    // Again: the destination is not empty.
    let out = migrate(&["--data-dir", &data, "--to", &db.url]).await;
    refused(&out, "a second copy", &["not empty"]);

    // A server on PostgreSQL is the same controller: it finds the environment running and
    // adopts its process, and deleting it stops that process.
    let server = Server::start(dir.path(), &["--database", &db.url]).await;
    assert_eq!(server.controller_id, controller);
    let env = server.wait_state(&id, "running", secs(20)).await;
    assert_eq!(env["id"], id.as_str());
    let (status, _) = server.request(reqwest::Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    assert!(status.is_success(), "{status}");
    server.wait_state(&id, "deleted", secs(20)).await;
    crate::harness::eventually(secs(10), "the adopted process to end", async || {
        crate::harness::processes_of(&controller).is_empty().then_some(())
    })
    .await;
}

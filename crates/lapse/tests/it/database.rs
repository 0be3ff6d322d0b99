//! `lapse serve --database`: SQLite at a chosen file; PostgreSQL refused at start (exit code
//! 2, the reason on stderr) when its URL is malformed, its server unreachable or its schema
//! newer than the binary's; and replicas on PostgreSQL that share the work (see
//! `lapse_server::lead`), survive a `kill -9` of the leader, and take the server lock again
//! when the database ends its session. Against `LAPSE_TEST_POSTGRES_URL` (scripts/test-env.sh).

use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::{Server, secs};

fn postgres_url() -> String {
    std::env::var("LAPSE_TEST_POSTGRES_URL")
        .expect("LAPSE_TEST_POSTGRES_URL is unset: run the tests through scripts/test (or source scripts/test-env.sh)")
}

pub(crate) fn psql(url: &str, sql: &str) {
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("running psql");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A fresh database for one test, dropped at the end.
pub(crate) struct Db {
    name: String,
    pub(crate) url: String,
}

impl Db {
    pub(crate) fn new() -> Db {
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

/// `lapse status --server` of `server`, as JSON.
fn server_status(server: &Server) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["--url", &server.url, "status", "--server", "--json"])
        .output()
        .expect("running lapse status --server");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("--json")
}

/// Waits until `server` says it leads.
async fn wait_lead(server: &Server, within: Duration) -> Duration {
    let start = Instant::now();
    crate::harness::eventually(within, "the server leads", async || {
        (server.get("/v1/status").await.1["role"] == "leader").then_some(())
    })
    .await;
    start.elapsed()
}

/// The parent of process `pid`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

#[tokio::test]
async fn replicas_on_postgres_share_the_work_and_a_kill_moves_only_the_leaders_part() {
    let db = Db::new();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Server::start(dir_a.path(), &["--database", &db.url]).await;
    wait_lead(&a, secs(10)).await;
    let on_a = a.create(crate::harness::process_env(&["sleep", "600"])).await["id"].as_str().unwrap().to_owned();
    a.wait_state(&on_a, "running", secs(20)).await;
    assert!(!dir_a.path().join("lapse.db").exists(), "no SQLite store beside PostgreSQL");
    let replica_a = std::fs::read_to_string(dir_a.path().join("replica-id")).unwrap().trim_end().to_owned();
    assert_eq!(a.env(&on_a).await["placed_on"], replica_a.as_str(), "a process is the replica's that made it");

    // A second server on the same database (its own data dir) serves too, and follows.
    let b = Server::start(dir_b.path(), &["--database", &db.url]).await;
    let (_, status_b) = b.get("/v1/status").await;
    assert_eq!(status_b["role"], "follower", "{status_b}");
    assert_eq!(b.controller_id, a.controller_id, "one control plane");
    let got = server_status(&a);
    assert_eq!(got["store"], "postgres");
    assert_eq!(got["role"], "leader");
    let holds = |id: &str| {
        let replicas = got["replicas"].as_array().expect("the replicas");
        replicas.iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("{id} in {got}"))["holds"].clone()
    };
    assert_eq!(holds(&replica_a), serde_json::json!(["leader", "server"]), "{got}");
    let replica_b = status_b["replica"].as_str().unwrap().to_owned();
    assert_eq!(holds(&replica_b), serde_json::json!(["server"]), "{got}");

    // A process made through the follower runs there: its parent is b, not the leader.
    let on_b = b.create(crate::harness::process_env(&["sleep", "600"])).await["id"].as_str().unwrap().to_owned();
    let env = b.wait_state(&on_b, "running", secs(20)).await;
    assert_eq!(env["placed_on"], replica_b.as_str());
    let (pid, _) = crate::harness::processes_of(&a.controller_id).into_iter().find(|(_, id)| *id == on_b).unwrap();
    assert_eq!(parent_of(pid), b.pid().map(|p| p as i32), "b started it");
    // What one replica writes, the other serves.
    assert_eq!(a.env(&on_b).await["state"], "running");
    // Its exec and logs run on b's host; a says where to send them (409), b runs them.
    let exec = serde_json::json!({"cmd": ["echo", "here"]});
    let (status, body) = a.post(&format!("/v1/environments/{on_b}/exec"), exec.clone()).await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains(&replica_b), "names the replica: {body}");
    let (status, _) = a.get(&format!("/v1/environments/{on_b}/logs")).await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT);
    let (status, body) = b.post(&format!("/v1/environments/{on_b}/exec"), exec).await;
    assert_eq!((status, body["stdout"].as_str()), (reqwest::StatusCode::OK, Some("here\n")), "{body}");

    // kill -9 the leader: b leads within seconds; a's process is left as it is (nobody else
    // runs it again), b's goes on.
    a.kill9().await;
    let took = wait_lead(&b, secs(10)).await;
    assert!(took < secs(6), "b took the lead {took:?} after the kill");
    tokio::time::sleep(secs(3)).await; // a few sweeps (1 s) on b
    let running: Vec<String> = crate::harness::processes_of(&b.controller_id).into_iter().map(|(_, id)| id).collect();
    assert_eq!(running.iter().filter(|id| **id == on_a).count(), 1, "a's process, once: {running:?}");
    assert_eq!(running.iter().filter(|id| **id == on_b).count(), 1, "b's process, once: {running:?}");
    assert_eq!(b.env(&on_a).await["state"], "running", "left as a recorded it");

    // A delete asked of b for a's environment waits for a: when a is back (same data dir,
    // same replica id), a does it.
    for id in [&on_a, &on_b] {
        let (status, _) = b.request(reqwest::Method::DELETE, &format!("/v1/environments/{id}"), None).await;
        assert!(status.is_success(), "{status}");
    }
    b.wait_state(&on_b, "deleted", secs(20)).await;
    assert_eq!(b.env(&on_a).await["state"], "running", "a's, while a is away");
    a.restart().await;
    assert_eq!(a.get("/v1/status").await.1["replica"], replica_a.as_str(), "the same replica again");
    b.wait_state(&on_a, "deleted", secs(20)).await;
    assert!(crate::harness::processes_of(&b.controller_id).is_empty(), "nothing left running");

    // The server lock's sessions ended by the database (a restart, an operator): each server
    // takes the lock again and goes on serving.
    psql(
        &db.url,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = {} \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            lapse_store::pg::SERVER_LOCK & 0xffff_ffff
        ),
    );
    crate::harness::eventually(secs(15), "both take the server lock again", async || {
        (a.log().contains("the PostgreSQL server lock is held again") && b.log().contains("held again")).then_some(())
    })
    .await;
    for server in [&a, &b] {
        let (status, _) = server.get("/v1/environments").await;
        assert!(status.is_success(), "{status}");
    }
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

//! The declarative config file: applied at start, hot-reloaded, invalid edits refused with
//! the last good state kept; and the seed's `/vms` and `/stats`. The guards against a file
//! that would wipe the world by accident, and edits of every declared field, are in
//! [`guards`].

use std::time::Instant;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, secs};
use crate::pools::wait_warm;

mod guards;

async fn by_job(server: &Server, job: &str) -> Option<Value> {
    let (_, list) = server.get(&format!("/v1/environments?job_id={job}")).await;
    list["environments"].as_array().and_then(|a| a.first().cloned())
}

async fn wait_job(server: &Server, job: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + secs(15);
    loop {
        if let Some(env) = by_job(server, job).await
            && pred(&env)
        {
            return env;
        }
        assert!(Instant::now() < deadline, "job {job} not {what}\n{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

const V1: &str = r#"
[[environment]]
id = "web"
tenant = "production"
spec = { provider = "sim", cmd = ["serve", "v1"] }

[[pool]]
name = "warm"
min = 2
spec = { provider = "sim", cmd = ["warm"] }
"#;

const V2: &str = r#"
[[environment]]
id = "web"
tenant = "production"
spec = { provider = "sim", cmd = ["serve", "v2"] }

[[environment]]
id = "worker"
lifecycle = "daemon"
spec = { provider = "sim", cmd = ["work"] }

[[pool]]
name = "warm"
min = 3
spec = { provider = "sim", cmd = ["warm"] }
"#;

const BROKEN: &str = r#"
[[environment]]
id = "web"
spec = { provider = "sim", cmd = ["serve", "v3"] }

[[pool]]
name = "warm"
min = 5
max = 1
spec = { provider = "sim", cmd = ["warm"] }
"#;

/// Drops two of V2's three entries: refused as a mass removal unless the file allows it.
const V3: &str = r#"
allow_mass_removal = true

[[environment]]
id = "worker"
lifecycle = "daemon"
spec = { provider = "sim", cmd = ["work"] }
"#;

#[tokio::test]
async fn a_config_file_is_applied_hot_reloaded_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lapse.toml");
    std::fs::write(&file, V1).unwrap();
    let file_arg = file.to_str().unwrap();
    let mut server = Server::start(dir.path(), &["--sim", "0", "--config-poll", "200ms", "--config", file_arg]).await;
    let web = wait_job(&server, "web", "running", |e| e["state"] == "running").await;
    assert_eq!(
        (web["tenant"].as_str(), web["lifecycle"].as_str(), web["source"].as_str()),
        (Some("production"), Some("service"), Some("config"))
    );
    assert!(web.get("expires_at").is_none(), "a declared service without ttl does not expire");
    wait_warm(&server, "warm", 2).await;
    let (_, status) = server.get("/v1/status").await;
    assert!(status["config"]["applied_at"].is_string() && status["config"].get("error").is_none(), "{status}");

    // An edit: web's spec is replaced in place, a worker appears, the pool grows.
    std::fs::write(&file, V2).unwrap();
    let replaced =
        wait_job(&server, "web", "replaced", |e| e["spec"]["cmd"][1] == "v2" && e["state"] == "running").await;
    assert_eq!(replaced["id"], web["id"], "the same environment, its spec replaced");
    wait_job(&server, "worker", "running", |e| e["state"] == "running").await;
    wait_warm(&server, "warm", 3).await;

    // A broken edit is refused whole; the last good state stays; /v1/status says why.
    std::fs::write(&file, BROKEN).unwrap();
    let deadline = Instant::now() + secs(10);
    let error = loop {
        let (_, status) = server.get("/v1/status").await;
        if let Some(e) = status["config"]["error"].as_str() {
            break e.to_owned();
        }
        assert!(Instant::now() < deadline, "the broken file was not reported: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(error.contains("line 6") && error.contains("max (1) is below min (5)"), "{error}");
    assert_eq!(by_job(&server, "web").await.unwrap()["spec"]["cmd"][1], "v2");
    assert!(by_job(&server, "worker").await.is_some());
    assert_eq!(server.get("/v1/pools/warm").await.1["min"], 3);

    // A pool made through the API survives restarts, and so does the declared state, once.
    let (status, _) = server
        .request(
            Method::PUT,
            "/v1/pools/api-made",
            Some(json!({"spec": {"provider": "sim", "cmd": ["api"]}, "min": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Leaving the file deletes what the file declared; what the API made stays.
    std::fs::write(&file, V3).unwrap();
    server.wait_state(web["id"].as_str().unwrap(), "deleted", secs(15)).await;
    let deadline = Instant::now() + secs(10);
    while server.get("/v1/pools/warm").await.0 != StatusCode::NOT_FOUND {
        assert!(Instant::now() < deadline, "the declared pool was not removed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let worker = by_job(&server, "worker").await.unwrap();

    server.restart().await;
    tokio::time::sleep(secs(2)).await;
    let (_, workers) = server.get("/v1/environments?job_id=worker").await;
    let workers = workers["environments"].as_array().unwrap().clone();
    assert_eq!(workers.len(), 1, "re-applied at start without a duplicate");
    assert_eq!(workers[0]["id"], worker["id"]);
    assert_eq!(server.get("/v1/pools/api-made").await.0, StatusCode::OK, "API changes persist across restarts");
}

#[tokio::test]
async fn a_bad_config_file_stops_the_server_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lapse.toml");
    std::fs::write(&file, BROKEN).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["serve", "--listen", "127.0.0.1:0", "--sim", "0", "--config", file.to_str().unwrap(), "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 6: pool \"warm\": max (1) is below min (5)"), "{stderr}");

    let check =
        tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse")).arg("check").arg(&file).output().await.unwrap();
    assert_eq!(check.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&check.stderr).contains(":6: pool \"warm\""),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    std::fs::write(&file, V2).unwrap();
    let check =
        tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse")).arg("check").arg(&file).output().await.unwrap();
    assert!(check.status.success());
    assert_eq!(String::from_utf8_lossy(&check.stdout), format!("{}: ok (2 environments, 1 pools)\n", file.display()));
}

//! Pre-expiry warnings: events at their marks, the `LAPSE_NOTICE` file in process and docker
//! environments, extend clearing them, a restart not repeating them, and the webhook.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, eventually, secs};
use crate::webhooks::Receiver;

async fn warnings_of(server: &Server, id: &str) -> Vec<Value> {
    server.events_of(id).await.into_iter().filter(|e| e["action"] == "expiring_soon").collect()
}

async fn wait_warnings(server: &Server, id: &str, n: usize) -> Vec<Value> {
    eventually(secs(30), &format!("{n} warning(s) of {id}"), async || {
        let w = warnings_of(server, id).await;
        (w.len() >= n).then_some(w)
    })
    .await
}

async fn notice(server: &Server, id: &str) -> Value {
    eventually(secs(20), "the notice file", async || {
        let (status, out) = server
            .post(&format!("/v1/environments/{id}/exec"), json!({"cmd": ["sh", "-c", "cat \"$LAPSE_NOTICE\""]}))
            .await;
        if status != StatusCode::OK || out["exit_code"] != 0 {
            return None;
        }
        serde_json::from_str::<Value>(out["stdout"].as_str()?.lines().last()?).ok()
    })
    .await
}

#[tokio::test]
async fn warnings_fire_at_their_marks_and_the_process_sees_the_notice() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--webhook-allow-private"]).await;
    let receiver = Receiver::start(0).await;
    let (status, _) =
        server.post("/v1/webhooks", json!({"url": format!("{}/ok", receiver.url), "events": ["expiring_soon"]})).await;
    assert_eq!(status, StatusCode::CREATED);
    let env = server
        .create(json!({"owner": "ada", "spec": {"provider": "process", "cmd": ["sleep", "60"]},
            "ttl": "8s", "warn_before": "6s,3s"}))
        .await;
    assert_eq!(env["warn_before"], json!([6, 3]));
    assert_eq!(env["warned_at"], Value::Null);
    let id = env["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(20)).await;
    let first = wait_warnings(&server, &id, 1).await;
    let line = notice(&server, &id).await;
    assert_eq!(line["event"], "expiring_soon");
    assert_eq!(line["expires_at"], env["expires_at"]);
    assert!(line["in_seconds"].as_i64().unwrap() <= 6, "{line}");
    let shown = server.env(&id).await;
    assert!(shown["warned_at"].is_string(), "{shown}");
    let both = wait_warnings(&server, &id, 2).await;
    assert_eq!(both[0], first[0]);
    assert_eq!(both.len(), 2, "each mark once");
    eventually(secs(20), "both warnings delivered", async || {
        (receiver.events_of(&id) == ["expiring_soon", "expiring_soon"]).then_some(())
    })
    .await;
    server.wait_state(&id, "stopped", secs(20)).await;
    assert_eq!(warnings_of(&server, &id).await.len(), 2);
}

#[tokio::test]
async fn bad_marks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let before = server.count_environments().await;
    for marks in [
        json!("0s"),
        json!(["10m"]),
        json!("1m,x"),
        json!(["1s", "2s", "3s", "4s", "5s", "6s", "7s", "8s", "9s"]),
        json!(-5),
        json!({"a": 1}),
    ] {
        let (status, err) = server
            .post(
                "/v1/environments",
                json!({"owner": "ada", "spec": {"provider": "process", "cmd": ["true"]},
                "ttl": "5m", "warn_before": marks}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{marks}: {err}");
    }
    assert_eq!(server.count_environments().await, before);
}

#[tokio::test]
async fn extending_clears_fired_warnings_and_arms_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let env = server
        .create(json!({"owner": "ada", "spec": {"provider": "process", "cmd": ["sleep", "60"]},
            "ttl": "6s", "warn_before": ["4s"]}))
        .await;
    let id = env["id"].as_str().unwrap().to_owned();
    wait_warnings(&server, &id, 1).await;
    let (status, extended) = server.post(&format!("/v1/environments/{id}/extend"), json!({"by": "4s"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{extended}");
    assert_eq!(extended["warned_at"], Value::Null, "the old lease's warnings are cleared");
    let again = wait_warnings(&server, &id, 2).await;
    assert_eq!(again.len(), 2, "the mark fired again for the new expiry");
}

#[tokio::test]
async fn a_restart_does_not_repeat_a_fired_mark() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]).await;
    let body = |ttl: &str, mark: &str| json!({"owner": "ada", "spec": {"provider": "process", "cmd": ["sleep", "60"]}, "ttl": ttl, "warn_before": mark});
    let id = server.create(body("60s", "58s")).await["id"].as_str().unwrap().to_owned();
    wait_warnings(&server, &id, 1).await;
    server.restart().await;
    // A second environment's mark firing after the restart shows the warnings run again.
    let other = server.create(body("60s", "58s")).await["id"].as_str().unwrap().to_owned();
    wait_warnings(&server, &other, 1).await;
    server.wait_state(&id, "running", secs(20)).await;
    assert_eq!(warnings_of(&server, &id).await.len(), 1, "the fired mark is in the row, not repeated");
}

#[tokio::test]
async fn a_docker_environment_sees_the_notice() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let env = server
        .create(json!({"owner": "ada", "spec": {"provider": "docker", "image": crate::docker::image(),
            "cmd": ["sleep", "60"]}, "ttl": "30s", "warn_before": "25s"}))
        .await;
    let id = env["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(60)).await;
    wait_warnings(&server, &id, 1).await;
    let line = notice(&server, &id).await;
    assert_eq!(line["event"], "expiring_soon");
    assert_eq!(line["expires_at"], env["expires_at"]);
}

#[tokio::test]
async fn a_tiers_warn_before_is_the_default_of_its_tenants_environments() {
    const ADMIN: &str = "admin-key-for-tests-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lapse.toml");
    std::fs::write(&config, "[tiers.warned]\nenvironments = 5\nproviders = [\"sim\"]\nwarn_before = \"9s\"\n").unwrap();
    let config = config.to_str().unwrap().to_owned();
    let server =
        Server::start_with_env(dir.path(), &["--sim", "0", "--config", &config], &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let (status, t) = server.post("/v1/admin/tenants", json!({"name": "acme", "tier": "warned"})).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let (_, k) = server.post("/v1/admin/tenants/acme/keys", json!({})).await;
    let key = k["key"].as_str().unwrap().to_owned();
    let sim = json!({"owner": "ada", "spec": {"provider": "sim"}, "ttl": "10s"});
    let (status, env) = server.request_as(Some(&key), reqwest::Method::POST, "/v1/environments", Some(sim)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    assert_eq!(env["warn_before"], json!([9]), "the tier's default");
    wait_warnings(&server, env["id"].as_str().unwrap(), 1).await;
}

#[tokio::test]
async fn marks_passed_while_the_server_was_down_fire_once_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]).await;
    let env = server
        .create(json!({"owner": "ada", "spec": {"provider": "process", "cmd": ["sleep", "60"]},
            "ttl": "30s", "warn_before": "27s,26s"}))
        .await;
    let id = env["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(20)).await;
    server.kill9().await;
    // Both marks (3 s and 4 s after creation) pass while no server runs.
    let created = chrono::DateTime::parse_from_rfc3339(env["created_at"].as_str().unwrap()).unwrap();
    let past = created.with_timezone(&chrono::Utc) + chrono::Duration::seconds(5) - chrono::Utc::now();
    tokio::time::sleep(past.to_std().unwrap_or_default()).await;
    server.restart().await;
    let fired = wait_warnings(&server, &id, 1).await;
    assert_eq!(fired.len(), 1, "one event for both passed marks");
    let shown = server.env(&id).await;
    assert!(shown["warned_at"].is_string(), "{shown}");
}

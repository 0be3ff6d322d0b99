//! Lifecycles with the `process` provider. The sweep runs hourly here: what is seen comes
//! from the provider's exit notifications.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, processes_of, secs};

fn body(lifecycle: &str, cmd: &[&str]) -> Value {
    json!({"owner": "ada", "lifecycle": lifecycle, "spec": {"provider": "process", "cmd": cmd}})
}

const HOURLY_SWEEP: &[&str] = &["--sweep-interval", "1h"];

#[tokio::test]
async fn a_service_that_exits_is_restarted_with_backoff_and_has_no_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), HOURLY_SWEEP).await;
    let env = server.create(body("service", &["sh", "-c", "sleep 0.3; exit 3"])).await;
    assert!(env.get("expires_at").is_none(), "a service without a ttl does not expire: {env}");
    let id = env["id"].as_str().unwrap().to_owned();
    let restarted = server.wait_for(&id, secs(15), "restarted twice", |e| e["restarts"].as_u64() >= Some(2)).await;
    assert_eq!(restarted["desired_state"], "running");
    assert_eq!(restarted["lifecycle"], "service");
    let events = server.events_of(&id).await;
    let restarts: Vec<&Value> =
        events.iter().filter(|e| e["message"].as_str().unwrap().contains("exited (code 3); restart")).collect();
    assert!(restarts.len() >= 2, "{events:#?}");
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(10)).await;
}

#[tokio::test]
async fn a_daemon_killed_from_outside_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), HOURLY_SWEEP).await;
    let id = server.create(body("daemon", &["sleep", "600"])).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(5)).await;
    let pid = processes_of(&server.controller_id).into_iter().find(|(_, e)| *e == id).unwrap().0;
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    server.wait_for(&id, secs(10), "restarted", |e| e["restarts"] == 1 && e["state"] == "running").await;
    let again = processes_of(&server.controller_id).into_iter().find(|(_, e)| *e == id).unwrap().0;
    assert_ne!(again, pid);
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(10)).await;
}

#[tokio::test]
async fn a_job_records_its_exit_and_is_removed_at_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), HOURLY_SWEEP).await;
    let mut ok = body("job", &["sh", "-c", "echo done"]);
    ok["ttl"] = json!(3);
    let id = server.create(ok).await["id"].as_str().unwrap().to_owned();
    let done = server.wait_for(&id, secs(10), "finished", |e| e["exit_code"] == 0).await;
    assert_eq!((done["state"].as_str(), done["desired_state"].as_str()), (Some("stopped"), Some("stopped")), "{done}");
    assert!(done["finished_at"].is_string() && done["reason"].as_str().unwrap().contains("job finished"), "{done}");
    assert_eq!(done["on_expiry"], "delete", "jobs are removed at their TTL");
    let (_, logs) = server.get(&format!("/v1/environments/{id}/logs")).await;
    assert_eq!(logs["stdout"], "done\n");
    server.wait_state(&id, "deleted", secs(10)).await;
}

#[tokio::test]
async fn a_failing_job_is_retried_then_left_failed_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), HOURLY_SWEEP).await;
    let mut failing = body("job", &["sh", "-c", "exit 4"]);
    failing["max_retries"] = json!(2);
    let id = server.create(failing).await["id"].as_str().unwrap().to_owned();
    let done = server
        .wait_for(&id, secs(15), "given up", |e| e["desired_state"] == "stopped" && e["state"] == "stopped")
        .await;
    assert_eq!((done["exit_code"].as_i64(), done["restarts"].as_u64()), (Some(4), Some(2)), "{done}");
    assert!(done["reason"].as_str().unwrap().contains("job failed (exit code 4) after 2 retries"), "{done}");

    let (status, err) = server
        .post(
            "/v1/environments",
            json!({"owner": "a", "max_retries": 1, "spec": {"provider": "process", "cmd": ["true"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
}

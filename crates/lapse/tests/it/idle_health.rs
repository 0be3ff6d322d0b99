//! Issue 12 items 3 and 4 over HTTP: `POST /v1/environments/{id}/activity`, idle stop with
//! `last_active_at` and `idled_at` in the view, and a process environment whose HTTP port
//! opens late becoming ready only once its probe passes; bad bodies are 400s naming the field.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, secs};

const ADMIN: &str = "admin-key-for-tests-0123456789";

async fn tenant_key(server: &Server, name: &str) -> String {
    let (status, t) = server.post("/v1/admin/tenants", json!({"name": name})).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let (status, k) = server.post(&format!("/v1/admin/tenants/{name}/keys"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{k}");
    k["key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn activity_keeps_an_environment_running_and_idle_stops_it_after_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &["--sim", "0"], &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let acme = tenant_key(&server, "acme").await;
    let other = tenant_key(&server, "other").await;
    let body = json!({"owner": "ada", "spec": {"provider": "sim"}, "ttl": "10m", "idle_timeout": "3s"});
    let (status, env) = server.request_as(Some(&acme), Method::POST, "/v1/environments", Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    assert_eq!((env["idle_timeout"].as_str(), env["on_idle"].as_str()), (Some("3s"), None), "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(10)).await;
    let activity = format!("/v1/environments/{id}/activity");

    // Another tenant's environment and a missing one look alike: 404, and nothing moves.
    for (key, path) in [(&other, activity.clone()), (&acme, format!("/v1/environments/{}/activity", "0".repeat(32)))] {
        let (status, body) = server.request_as(Some(key), Method::POST, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    // Touched every 500 ms for 5 s (longer than the timeout): it keeps running.
    let started = Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < Duration::from_secs(5) {
        let (status, body) = server.request_as(Some(&acme), Method::POST, &activity, None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (_, seen) = server.request_as(Some(&acme), Method::GET, &format!("/v1/environments/{id}"), None).await;
        assert_eq!(
            (seen["state"].as_str(), seen["desired_state"].as_str()),
            (Some("running"), Some("running")),
            "{seen}"
        );
        assert!(seen["last_active_at"].as_str() >= last.as_str(), "last_active_at only moves forward: {seen}");
        last = seen["last_active_at"].clone();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(last.is_string(), "the view shows last_active_at");
    // Quiet: stopped about 3 s after the last touch, saying why.
    let quiet = Instant::now();
    let stopped = server.wait_state(&id, "stopped", secs(15)).await;
    assert!(quiet.elapsed() >= Duration::from_millis(2_000), "stopped {:?} after the last touch", quiet.elapsed());
    assert_eq!(stopped["desired_state"], "stopped");
    assert!(stopped["idled_at"].is_string(), "{stopped}");
    let events = server.events_of(&id).await;
    let idle: Vec<&Value> = events.iter().filter(|e| e["action"] == "idle").collect();
    assert_eq!(idle.len(), 1, "{events:#?}");
    assert!(idle[0]["message"].as_str().unwrap().starts_with("idle: no activity for"), "{}", idle[0]);
    // Not running: activity is a conflict.
    let (status, body) = server.request_as(Some(&acme), Method::POST, &activity, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{body}");
    // A bad timeout is refused by name and makes nothing.
    let before = server.count_environments().await;
    for bad in [json!("1ms"), json!("soon"), json!(0), json!(-5), json!("99999d")] {
        let body = json!({"owner": "ada", "spec": {"provider": "sim"}, "idle_timeout": bad});
        let (status, err) = server.request_as(Some(&acme), Method::POST, "/v1/environments", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {err}");
        assert!(err["error"]["message"].as_str().unwrap().contains("idle_timeout"), "{bad}: {err}");
    }
    let body = json!({"owner": "ada", "spec": {"provider": "sim"}, "on_idle": "explode"});
    let (status, _) = server.request_as(Some(&acme), Method::POST, "/v1/environments", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(server.count_environments().await, before);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_process_environment_whose_port_opens_late_is_ready_only_after_its_probe_passes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let port = free_port();
    let script =
        format!("sleep 2; mkdir -p www; echo ok > www/index.html; exec busybox httpd -f -p 127.0.0.1:{port} -h www");
    let body = json!({
        "owner": "ada", "ttl": "10m",
        "spec": {"provider": "process", "cmd": ["sh", "-c", script], "ports": [port],
                 "health": {"http": {"port": port, "path": "/index.html"}, "interval": "250ms", "timeout": "250ms",
                            "healthy_after": 2, "unhealthy_after": 2}},
    });
    let id = server.create(body).await["id"].as_str().unwrap().to_owned();
    let running = server.wait_state(&id, "running", secs(10)).await;
    let since = Instant::now();
    assert!(matches!(running["health"].as_str(), Some("starting" | "unhealthy")), "{running}");
    assert_eq!(running["ready"], false, "{running}");
    let ready = server.wait_for(&id, secs(20), "ready", |e| e["ready"] == true).await;
    assert!(since.elapsed() >= Duration::from_millis(1_500), "ready {:?} after running: too early", since.elapsed());
    assert_eq!(ready["health"], "healthy");
    assert!(ready["ready_at"].is_string(), "{ready}");
    let events = server.events_of(&id).await;
    let health: Vec<&str> =
        events.iter().filter(|e| e["action"] == "health").map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(health.last(), Some(&"healthy"), "{events:#?}");
    // While the port was closed it was never ready (two failures made it unhealthy first).
    assert_eq!(health, ["unhealthy", "healthy"], "{events:#?}");
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(10)).await;
}

#[tokio::test]
async fn bad_health_bodies_are_400_naming_the_field_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let cases = [
        (json!({}), "spec.health"),
        (json!({"tcp": 22, "cmd": ["true"]}), "spec.health"),
        (json!({"tcp": 9}), "spec.health.tcp"),
        (json!({"http": {"port": 8080, "path": "no-slash"}}), "spec.health.http.path"),
        (json!({"http": {"port": 1}}), "spec.health.http.port"),
        (json!({"tcp": 8080, "interval": "1ms"}), "spec.health.interval"),
        (json!({"tcp": 8080, "timeout": "2m"}), "spec.health.timeout"),
        (json!({"tcp": 8080, "unhealthy_after": 0}), "spec.health.unhealthy_after"),
        (json!({"cmd": ["bad\u{0}arg"]}), "spec.health.cmd"),
    ];
    for (health, field) in cases {
        let body = json!({"owner": "ada", "spec": {"provider": "process", "cmd": ["sleep", "9"], "ports": [8080], "health": health}});
        let (status, err) = server.post("/v1/environments", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{health}: {err}");
        assert!(err["error"]["message"].as_str().unwrap().starts_with(&format!("{field}:")), "{health}: {err}");
    }
    // Unknown keys and wrong types are the JSON decoder's 400s.
    for health in [json!({"tcp": 8080, "bogus": 1}), json!({"tcp": "8080"}), json!({"tcp": 70000})] {
        let body = json!({"owner": "ada", "spec": {"provider": "process", "cmd": ["sleep", "9"], "ports": [8080], "health": health}});
        let (status, err) = server.post("/v1/environments", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{health}: {err}");
    }
    assert_eq!(server.count_environments().await, 0);
}

#[tokio::test]
async fn after_a_crash_the_idle_timer_is_rebuilt_from_the_flushed_activity() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--activity-flush", "200ms"]).await;
    let body = json!({"owner": "ada", "ttl": "10m", "idle_timeout": "5s",
                      "spec": {"provider": "process", "cmd": ["sleep", "600"]}});
    let id = server.create(body).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(10)).await;
    let (status, _) = server.post(&format!("/v1/environments/{id}/activity"), json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let touched = server.env(&id).await["last_active_at"].clone();
    // Flushed within a few flush intervals; then a crash (kill -9) and a restart.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    server.restart().await;
    let after = server.env(&id).await;
    assert_eq!(after["last_active_at"], touched, "the flushed activity survived the crash: {after}");
    assert_eq!(after["state"], "running");
    // Nothing but the rebuilt timer can stop it now: it is converged and nobody touches it.
    let stopped = server.wait_state(&id, "stopped", secs(15)).await;
    assert!(stopped["idled_at"].is_string(), "{stopped}");
}

//! Retries with back-off, then `failed` with the reason.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Server, secs};

#[tokio::test]
async fn an_unreachable_provider_is_retried_with_backoff_then_failed() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: every call fails as "unavailable", which is worth retrying.
    let server = Server::start(dir.path(), &["--docker", "tcp://127.0.0.1:1", "--max-attempts", "3"]).await;
    let (_, providers) = server.get("/v1/providers").await;
    let docker = providers["providers"].as_array().unwrap().iter().find(|p| p["name"] == "docker").cloned().unwrap();
    assert_eq!(docker["available"], false);

    let (status, env) =
        server.post("/v1/environments", json!({"owner": "ada", "spec": {"provider": "docker", "image": "x"}})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = env["id"].as_str().unwrap();
    let failed = server.wait_state(id, "failed", secs(20)).await;
    assert_eq!(failed["attempts"], 3);
    assert!(failed["reason"].as_str().unwrap().contains("gave up after 3"), "{failed}");

    let events = server.events_of(id).await;
    let errors: Vec<_> = events.iter().filter(|e| e["action"] == "provision" && e["outcome"] == "error").collect();
    assert_eq!(errors.len(), 2, "two retried failures before the last: {events:#?}");
    let at = |e: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap()).unwrap().timestamp_millis()
    };
    let failed_at = at(events.iter().find(|e| e["outcome"] == "failed").unwrap());
    // Back-off 200 ms then 400 ms (the test server's base): the attempts are spread, not hammered.
    // Events are stamped when written, after the back-off is counted from, and a slow disk
    // delays the write (seen: 30 ms): hence the slack.
    assert!(at(errors[1]) - at(errors[0]) >= 150, "{events:#?}");
    assert!(failed_at - at(errors[1]) >= 300, "{events:#?}");
    assert!(failed_at - at(errors[0]) >= 500, "{events:#?}");

    // Start after a failure: a fresh round of attempts.
    let (status, restarted) = server.post(&format!("/v1/environments/{id}/start"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{restarted}");
    assert_eq!(restarted["state"], "pending");
    let events = server.events_of(id).await;
    assert!(
        events.iter().any(|e| e["action"] == "transition" && e["outcome"] == "pending" && e["actor"] == "api"),
        "the restart is in the audit trail: {events:#?}"
    );
    server.wait_state(id, "failed", secs(20)).await;
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
}

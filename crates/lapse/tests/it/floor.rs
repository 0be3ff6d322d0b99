//! `POST /v1/bench/floor`, the benchmark's HTTP floor: absent unless the server starts with
//! `LAPSE_BENCH_FLOOR=1`; behind the same authentication and body checks as
//! `POST /v1/environments`, refusing a bad body with the same 4xx; answering 201 with an
//! environment's JSON; never changing the store.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::Server;

const FLOOR: &str = "/v1/bench/floor";
const CREATE: &str = "/v1/environments";
const KEY: &str = "floor-admin-key-0123456789abcdef";

fn claim() -> Value {
    json!({"owner": "bench", "spec": {"provider": "process", "cmd": ["sleep", "60"]}, "ttl": "1h"})
}

/// A request with `content_type` and raw `body`, presenting the server's key.
async fn raw(server: &Server, path: &str, content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().post(format!("{}{path}", server.url)).body(body);
    if let Some(key) = &server.key {
        req = req.bearer_auth(key);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.expect("the server answers");
    let status = resp.status();
    let text = resp.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn the_floor_is_absent_unless_the_variable_is_one() {
    for envs in [vec![], vec![("LAPSE_BENCH_FLOOR", "0")], vec![("LAPSE_BENCH_FLOOR", "yes")]] {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_with_env(dir.path(), &[], &envs).await;
        let (status, body) = server.post(FLOOR, claim()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{envs:?}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{envs:?}: {body}");
        // Exactly as an unknown route answers.
        assert_eq!(server.post("/v1/bench/nothing", claim()).await, (status, body));
    }
}

#[tokio::test]
async fn the_floor_answers_an_environment_and_refuses_what_create_refuses_without_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[], &[("LAPSE_BENCH_FLOOR", "1"), ("LAPSE_ADMIN_KEY", KEY)]).await;
    let events_before = server.count_all_events().await;

    // A claim's body: 201 with an environment's JSON, the same row each time.
    let (status, first) = server.post(FLOOR, claim()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert!(first["id"].as_str().is_some_and(|id| id.len() == 32), "{first}");
    assert_eq!(first["state"], "running", "{first}");
    assert!(first["spec"]["provider"].is_string(), "{first}");
    assert_eq!(server.post(FLOOR, claim()).await, (StatusCode::CREATED, first.clone()));
    // Nothing was stored, so the row is no environment of this server.
    let (status, _) = server.get(&format!("/v1/environments/{}", first["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The same authentication: no key or a wrong one is refused alike.
    for key in [None, Some("not-the-key-0123456789abcdef")] {
        let floor = server.request_as(key, Method::POST, FLOOR, Some(claim())).await;
        let create = server.request_as(key, Method::POST, CREATE, Some(claim())).await;
        assert_eq!(floor.0, StatusCode::UNAUTHORIZED, "{key:?}: {}", floor.1);
        assert_eq!(floor, create, "{key:?}");
    }

    // The same 4xx for each bad body, field by field.
    let mut bad_owner = claim();
    bad_owner["owner"] = json!("");
    let mut bad_ttl = claim();
    bad_ttl["ttl"] = json!("soon");
    let mut unknown_field = claim();
    unknown_field["colour"] = json!("red");
    let mut unknown_provider = claim();
    unknown_provider["spec"]["provider"] = json!("nowhere");
    let mut no_cmd = claim();
    no_cmd["spec"] = json!({"provider": "process"});
    let mut wrong_type = claim();
    wrong_type["ttl"] = json!(["1h"]);
    let mut retries = claim();
    retries["max_retries"] = json!(3);
    let mut bad_label = claim();
    bad_label["labels"] = json!({"": "x"});
    for (what, body) in [
        ("owner", bad_owner),
        ("ttl", bad_ttl),
        ("unknown field", unknown_field),
        ("unknown provider", unknown_provider),
        ("no cmd", no_cmd),
        ("wrong type", wrong_type),
        ("retries of a lease", retries),
        ("label", bad_label),
        ("not an object", json!([1, 2])),
    ] {
        let floor = server.post(FLOOR, body.clone()).await;
        let create = server.post(CREATE, body).await;
        assert!(floor.0.is_client_error(), "{what}: {floor:?}");
        assert_eq!(floor, create, "{what}");
    }
    let big = format!("{{\"owner\": \"{}\"}}", "a".repeat(300 * 1024)).into_bytes();
    for (what, content_type, body) in [
        ("malformed", Some("application/json"), b"{\"owner\": ".to_vec()),
        ("not JSON's type", Some("text/plain"), serde_json::to_vec(&claim()).unwrap()),
        ("no type", None, serde_json::to_vec(&claim()).unwrap()),
        ("too large", Some("application/json"), big),
    ] {
        let floor = raw(&server, FLOOR, content_type, body.clone()).await;
        let create = raw(&server, CREATE, content_type, body).await;
        assert!(floor.0.is_client_error(), "{what}: {floor:?}");
        assert_eq!(floor, create, "{what}");
    }

    // Nothing changed: no environment, no event.
    assert_eq!(server.count_environments().await, 0);
    assert_eq!(server.count_all_events().await, events_before);
}

//! The REST API with the `process` provider: the whole life of an environment, filters,
//! bad input, the OpenAPI document and metrics.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, process_env, processes_of, secs};

fn millis(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().expect("a time")).expect("RFC 3339").timestamp_millis()
}

/// create → running → exec → extend → expire → stopped → extend → running again → delete → gone.
#[tokio::test]
async fn whole_life_with_the_process_provider() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let env = server
        .create(json!({"name": "lab-1", "owner": "ada", "labels": {"LabID": "7"},
            "spec": {"provider": "process", "cmd": ["sh", "-c", "echo up; exec sleep 600"], "env": {"GREETING": "hi"}},
            "ttl": 3, "on_expiry": "stop"}))
        .await;
    let id = env["id"].as_str().unwrap().to_owned();
    let first_expiry = millis(&env["expires_at"]);
    let running = server.wait_state(&id, "running", secs(5)).await;
    assert_eq!(running["desired_state"], "running");
    let pids: Vec<_> = processes_of(&server.controller_id).into_iter().filter(|(_, e)| *e == id).collect();
    assert_eq!(pids.len(), 1, "one process group leads the environment");

    let (status, out) = server
        .post(
            &format!("/v1/environments/{id}/exec"),
            json!({"cmd": ["sh", "-c", "echo $GREETING $((6*7)); echo err >&2; exit 5"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out, json!({"exit_code": 5, "stdout": "hi 42\n", "stderr": "err\n", "timed_out": false}));
    let (status, logs) = server.get(&format!("/v1/environments/{id}/logs?tail=5")).await;
    assert_eq!((status, logs["stdout"].as_str()), (StatusCode::OK, Some("up\n")));

    // Extend before expiry: the lease moves by exactly `by`, nothing restarts.
    let (status, extended) = server.post(&format!("/v1/environments/{id}/extend"), json!({"by": "2s"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "extend answers 202 like every change: {extended}");
    let expiry = millis(&extended["expires_at"]);
    assert_eq!(expiry - first_expiry, 2_000);

    // The lease runs out: stopped within a second of expires_at, and the process is gone.
    let stopped = server.wait_for(&id, secs(10), "stopped by expiry", |e| e["state"] == "stopped").await;
    assert_eq!(stopped["desired_state"], "stopped");
    let lateness = millis(&stopped["expired_at"]) - expiry;
    eprintln!("expiry lateness: {lateness} ms");
    assert!((0..1_000).contains(&lateness), "expired {lateness} ms after expires_at");
    assert!(processes_of(&server.controller_id).iter().all(|(_, e)| *e != id));
    let events = server.events_of(&id).await;
    assert!(events.iter().any(|e| e["action"] == "expire" && e["actor"] == "expiry"), "{events:#?}");

    // A start after expiry is refused; extend starts it again.
    let (status, err) = server.post(&format!("/v1/environments/{id}/start"), json!({})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));
    let (status, extended) = server.post(&format!("/v1/environments/{id}/extend"), json!({"by": "1m"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(extended["desired_state"], "running");
    assert!(extended.get("expired_at").is_none());
    server.wait_state(&id, "running", secs(5)).await;
    let again: Vec<_> = processes_of(&server.controller_id).into_iter().filter(|(_, e)| *e == id).collect();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].0, pids[0].0, "a new process runs");

    // Stopped by its user, an extension does not start it.
    let (status, _) = server.post(&format!("/v1/environments/{id}/stop"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.wait_state(&id, "stopped", secs(5)).await;
    server.post(&format!("/v1/environments/{id}/extend"), json!({"by": "1m"})).await;
    assert_eq!(server.env(&id).await["desired_state"], "stopped");
    let (status, _) = server.post(&format!("/v1/environments/{id}/start"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.wait_state(&id, "running", secs(5)).await;

    // Delete: gone from the provider and from the default list, kept as a record.
    let (status, deleting) = server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    assert_eq!((status, &deleting["desired_state"]), (StatusCode::ACCEPTED, &json!("deleted")));
    server.wait_state(&id, "deleted", secs(5)).await;
    assert!(processes_of(&server.controller_id).iter().all(|(_, e)| *e != id));
    assert!(!dir.path().join("process").join(&id).exists(), "its directory is removed");
    assert_eq!(server.count_environments().await, 0);
    let (_, deleted) = server.get("/v1/environments?state=deleted").await;
    assert_eq!(deleted["environments"].as_array().unwrap().len(), 1);
    let (status, _) = server.post(&format!("/v1/environments/{id}/start"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let actions: Vec<String> = server
        .events_of(&id)
        .await
        .iter()
        .map(|e| format!("{}:{}", e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    for expected in [
        "create:ok",
        "transition:provisioning",
        "transition:running",
        "exec:ok",
        "extend:ok",
        "expire:stopped",
        "transition:stopped",
        "stop:ok",
        "start:ok",
        "delete:ok",
        "transition:deleted",
    ] {
        assert!(actions.contains(&expected.to_string()), "{expected} missing from {actions:?}");
    }

    let (_, metrics) = server.get("/metrics").await;
    let metrics = metrics.as_str().unwrap().to_owned();
    for needle in [
        "lapse_environments{provider=\"process\",state=\"deleted\"} 1",
        "lapse_expiry_lateness_seconds_count 1",
        "lapse_reconcile_steps_total{provider=\"process\",step=\"provision\",outcome=\"ok\"} 3",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
}

#[tokio::test]
async fn on_expiry_delete_removes_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let mut body = process_env(&["sleep", "600"]);
    body["ttl"] = json!("1s");
    body["on_expiry"] = json!("delete");
    let id = server.create(body).await["id"].as_str().unwrap().to_owned();
    let gone = server.wait_state(&id, "deleted", secs(6)).await;
    assert_eq!(gone["desired_state"], "deleted");
    assert!(processes_of(&server.controller_id).iter().all(|(_, e)| *e != id));
    let (status, _) = server.post(&format!("/v1/environments/{id}/extend"), json!({"by": "1m"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn list_filters_by_owner_state_and_label() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let mut a = process_env(&["sleep", "600"]);
    a["labels"] = json!({"LabID": "1", "course": "os"});
    let mut b = process_env(&["sleep", "600"]);
    b["owner"] = json!("bob");
    b["labels"] = json!({"LabID": "2", "course": "os"});
    let a = server.create(a).await["id"].as_str().unwrap().to_owned();
    let b = server.create(b).await["id"].as_str().unwrap().to_owned();
    let ids = |v: Value| -> Vec<String> {
        v["environments"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(server.get("/v1/environments?owner=bob").await.1), vec![b.clone()]);
    assert_eq!(ids(server.get("/v1/environments?label=LabID%3D1").await.1), vec![a.clone()]);
    assert_eq!(ids(server.get("/v1/environments?label=course%3Dos&label=LabID%3D2").await.1), vec![b.clone()]);
    assert_eq!(ids(server.get("/v1/environments?label=course%3Dos&limit=1").await.1).len(), 1);
    server.wait_state(&a, "running", secs(5)).await;
    server.wait_state(&b, "running", secs(5)).await;
    assert_eq!(ids(server.get("/v1/environments?state=running").await.1).len(), 2);
    assert_eq!(ids(server.get("/v1/environments?state=stopped").await.1).len(), 0);
    for id in [&a, &b] {
        server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
        server.wait_state(id, "deleted", secs(5)).await;
    }
}

/// Every kind of bad input: a JSON 4xx with the right status and code, and nothing written.
#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-ttl", "1d"]).await;
    let id = server.create(process_env(&["sleep", "600"])).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(5)).await;
    let environments_before = server.count_environments().await;
    let events_before = server.count_all_events().await;
    let before = server.env(&id).await;
    let docker_up =
        server.get("/v1/providers").await.1["providers"].as_array().unwrap().iter().any(|p| p["name"] == "docker");

    let spec = |extra: Value| {
        let mut body = json!({"owner": "ada", "spec": {"provider": "process", "cmd": ["sleep", "1"]}});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let create = "/v1/environments";
    let env_path = |rest: &str| format!("/v1/environments/{id}{rest}");
    let unknown = "0".repeat(32);
    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    /// Method, path, content type, body, then the status and error code expected.
    type Case<'a> = (Method, String, Option<&'a str>, Vec<u8>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            b"{".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            b"".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            deep.into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            format!("{{\"owner\": \"a\", \"labels\": {}}}", "{\"a\":".repeat(5_000)).into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("text/plain"),
            spec(json!({})).to_string().into_bytes(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            vec![b' '; 300 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            br#"{"spec": {"provider": "process", "cmd": ["x"]}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            spec(json!({"colour": "red"})).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            br#"{"owner": "a", "spec": {"provider": "nope", "cmd": ["x"]}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            spec(json!({"ttl": 0})).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            spec(json!({"ttl": -5})).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            spec(json!({"ttl": "-5m"})).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            spec(json!({"ttl": "soon"})).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            spec(json!({"ttl": 1.5})).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            spec(json!({"ttl": "2d"})).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            spec(json!({"ttl": 99_999_999_999_i64})).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            spec(json!({"on_expiry": "explode"})).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            spec(json!({"owner": "x".repeat(200)})).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            spec(json!({"name": "has spaces"})).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            json!({"owner": "a", "spec": {"provider": "process"}}).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            json!({"owner": "a", "spec": {"provider": "process", "cmd": ["a\u{0}b"]}}).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            json!({"owner": "a", "spec": {"provider": "process", "cmd": ["x"], "resources": {"disk_gb": 1}}})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            json!({"owner": "a", "spec": {"provider": "docker"}}).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            json!({"owner": "a", "spec": {"provider": "process", "cmd": ["x"], "ports": [0]}}).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            create.into(),
            Some("application/json"),
            json!({"owner": "a", "spec": {"provider": "process", "cmd": ["x"], "ports": [70000]}})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (Method::GET, format!("/v1/environments/{unknown}"), None, vec![], StatusCode::NOT_FOUND, "not_found"),
        (Method::GET, "/v1/environments/..%2F..%2Fetc".into(), None, vec![], StatusCode::NOT_FOUND, "not_found"),
        (Method::DELETE, format!("/v1/environments/{unknown}"), None, vec![], StatusCode::NOT_FOUND, "not_found"),
        (
            Method::POST,
            format!("/v1/environments/{unknown}/extend"),
            Some("application/json"),
            br#"{"by": "1m"}"#.to_vec(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            format!("/v1/environments/{unknown}/exec"),
            Some("application/json"),
            br#"{"cmd": ["true"]}"#.to_vec(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            env_path("/extend"),
            Some("application/json"),
            br#"{"by": "1m", "until": "2030-01-01T00:00:00Z"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            env_path("/extend"),
            Some("application/json"),
            br#"{}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            env_path("/extend"),
            Some("application/json"),
            br#"{"until": "2001-01-01T00:00:00Z"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            env_path("/extend"),
            Some("application/json"),
            br#"{"until": "next tuesday"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            env_path("/extend"),
            Some("application/json"),
            br#"{"by": "400d"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            env_path("/exec"),
            Some("application/json"),
            br#"{"cmd": []}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            env_path("/exec"),
            Some("application/json"),
            br#"{"cmd": ["true"], "timeout": "1y"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            env_path("/exec"),
            Some("application/json"),
            br#"{"cmd": ["/no/such/program"]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (Method::GET, env_path("/logs?tail=0"), None, vec![], StatusCode::BAD_REQUEST, "invalid_request"),
        (Method::GET, "/v1/environments?state=bogus".into(), None, vec![], StatusCode::BAD_REQUEST, "invalid_request"),
        (
            Method::GET,
            "/v1/environments?label=novalue".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (Method::GET, "/v1/environments?colour=red".into(), None, vec![], StatusCode::BAD_REQUEST, "invalid_request"),
        (Method::GET, "/v1/environments?limit=0".into(), None, vec![], StatusCode::BAD_REQUEST, "invalid_request"),
        (
            Method::GET,
            "/v1/events?environment=no%20such%2Fid".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (Method::GET, "/v1/events?after=-1".into(), None, vec![], StatusCode::BAD_REQUEST, "invalid_request"),
        (Method::GET, "/v1/nope".into(), None, vec![], StatusCode::NOT_FOUND, "not_found"),
        // Path parameters that are not percent-encoded UTF-8 are the JSON 400 too.
        (Method::GET, "/v1/environments/%FF".into(), None, vec![], StatusCode::BAD_REQUEST, "invalid_path"),
        (Method::POST, "/v1/environments/%C3%28/stop".into(), None, vec![], StatusCode::BAD_REQUEST, "invalid_path"),
        (Method::GET, "/v1/pools/%FE%FF".into(), None, vec![], StatusCode::BAD_REQUEST, "invalid_path"),
        (Method::DELETE, "/v1/admin/keys/%80".into(), None, vec![], StatusCode::BAD_REQUEST, "invalid_path"),
        (Method::GET, "/v1/environments?limit=%FF".into(), None, vec![], StatusCode::BAD_REQUEST, "invalid_request"),
        (
            Method::GET,
            "/v1/environments?cursor=%21%21".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (Method::PUT, "/v1/environments".into(), None, vec![], StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ];
    for (method, path, content_type, body, want_status, want_code) in cases {
        let label = format!("{method} {path} {}", String::from_utf8_lossy(&body[..body.len().min(80)]));
        let (status, answer) = server.raw(method, &path, content_type, body).await;
        assert_eq!(status, want_status, "{label}: {answer}");
        assert_eq!(answer["error"]["code"], want_code, "{label}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{label}: {answer}");
    }
    if docker_up {
        let (_, answer) = server.post(create, json!({"owner": "a", "spec": {"provider": "docker"}})).await;
        assert!(answer["error"]["message"].as_str().unwrap().contains("image"), "{answer}");
    }

    assert_eq!(server.count_environments().await, environments_before, "no environment was written");
    assert_eq!(server.count_all_events().await, events_before, "no event was written");
    let after = server.env(&id).await;
    assert_eq!(after["expires_at"], before["expires_at"]);
    assert_eq!(after["updated_at"], before["updated_at"]);
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(5)).await;
}

/// The OpenAPI document lists every route the server serves, with its methods.
#[tokio::test]
async fn openapi_describes_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let (status, doc) = server.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    let mut described: Vec<String> =
        paths.iter().flat_map(|(p, ops)| ops.as_object().unwrap().keys().map(move |m| format!("{m} {p}"))).collect();
    described.sort();
    let mut expected = vec![
        "delete /v1/environments/{id}",
        "get /healthz",
        "get /readyz",
        "post /v1/admin/keys",
        "get /metrics",
        "get /v1/environments",
        "get /v1/environments/{id}",
        "get /v1/environments/{id}/logs",
        "get /v1/environments/{id}/terminal",
        "get /v1/environments/{id}/workspace",
        "get /v1/environments/watch",
        "get /v1/events",
        "get /v1/openapi.json",
        "get /v1/providers",
        "get /v1/status",
        "get /v1/queues",
        "get /v1/whoami",
        "get /v1/usage",
        "get /v1/admin/tenants",
        "post /v1/admin/tenants",
        "post /v1/admin/tenants/{name}/keys",
        "delete /v1/admin/keys/{id}",
        "post /v1/admin/adopt",
        "post /v1/admin/sweep",
        "post /v1/environments",
        "post /v1/environments/{id}/exec",
        "post /v1/environments/{id}/activity",
        "post /v1/environments/{id}/extend",
        "post /v1/environments/{id}/links",
        "post /v1/environments/{id}/start",
        "post /v1/environments/{id}/stop",
        "get /v1/pools",
        "get /v1/pools/{name}",
        "put /v1/pools/{name}",
        "delete /v1/pools/{name}",
        "post /vms",
        "get /vms/{id}",
        "delete /vms/{id}",
        "get /stats",
        "patch /v1/admin/tenants/{name}",
        "get /v1/github-gg/users/{user}/vm.getMyVm",
        "post /v1/github-gg/users/{user}/vm.provisionMyVm",
        "post /v1/github-gg/users/{user}/vm.startMyVm",
        "post /v1/github-gg/users/{user}/vm.stopMyVm",
        "post /v1/github-gg/users/{user}/vm.destroyMyVm",
        "post /v1/github-gg/users/{user}/vm.executeCode",
        "get /v1/webhooks",
        "post /v1/webhooks",
        "get /v1/webhooks/{id}",
        "delete /v1/webhooks/{id}",
        "get /v1/webhooks/{id}/deliveries",
        "post /v1/webhooks/{id}/test",
    ];
    expected.sort();
    assert_eq!(described, expected);
    for schema in ["CreateEnvironment", "EnvironmentView", "ErrorBody", "ExecResult", "EventList", "Spec"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "schema {schema} missing");
    }
    // Every described route answers something other than 404/405 at its method.
    for line in &described {
        let (method, path) = line.split_once(' ').unwrap();
        let path =
            path.replace("{id}", &"0".repeat(32)).replace("{name}", "no-such-pool").replace("{user}", &"0".repeat(32));
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, answer) = server.raw(method.clone(), &path, Some("application/json"), b"{}".to_vec()).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{line}");
        if status == StatusCode::NOT_FOUND {
            assert!(path.contains(&"0".repeat(32)) || path.contains("no-such-pool"), "{line}: {answer}");
        }
    }
}

/// `GET /v1/environments` pages with a cursor: every environment exactly once, in id order,
/// environments made while paging come on a later page, the last page has no cursor.
#[tokio::test]
async fn lists_page_with_a_stable_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--sim", "0"]).await;
    let sim = || json!({"owner": "pager", "spec": {"provider": "sim", "cmd": ["x"]}, "ttl": "10m"});
    let mut made = Vec::new();
    for _ in 0..7 {
        made.push(server.create(sim()).await["id"].as_str().unwrap().to_owned());
    }
    let http = reqwest::Client::new();
    let page = |path: String| {
        let http = http.clone();
        let url = format!("{}{path}", server.url);
        async move {
            let resp = http.get(url).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let next = resp.headers().get("lapse-next-cursor").map(|v| v.to_str().unwrap().to_owned());
            let link = resp.headers().get("link").map(|v| v.to_str().unwrap().to_owned());
            let body: Value = resp.json().await.unwrap();
            let ids: Vec<String> =
                body["environments"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
            (ids, next, link)
        }
    };
    let (first, cursor, link) = page("/v1/environments?owner=pager&limit=3".into()).await;
    assert_eq!(first, made[..3]);
    let cursor = cursor.expect("a next cursor");
    let link = link.expect("a Link header");
    assert!(
        link.starts_with("</v1/environments?owner=pager&limit=3&cursor=") && link.ends_with(">; rel=\"next\""),
        "{link}"
    );
    // Made while paging: it sorts after everything listed, so it comes on a later page.
    made.push(server.create(sim()).await["id"].as_str().unwrap().to_owned());
    let mut seen = first;
    let mut next = Some(link.trim_start_matches('<').split('>').next().unwrap().to_owned());
    let mut pages = 1;
    while let Some(path) = next {
        let (ids, cursor, link) = page(path).await;
        assert_eq!(cursor.is_some(), link.is_some());
        seen.extend(ids);
        pages += 1;
        next = link.map(|l| l.trim_start_matches('<').split('>').next().unwrap().to_owned());
        assert!(pages < 10, "the pages end");
    }
    assert_eq!(seen, made, "each exactly once, in order");
    assert_eq!(pages, 3, "3 + 3 + 2");
    let (exact, cursor, _) = page(format!("/v1/environments?owner=pager&limit=8&cursor={cursor}")).await;
    assert_eq!(exact, made[3..]);
    assert_eq!(cursor, None, "a page that ends the list has no cursor");
    // The default page is 100; a limit over 1000 is taken as 1000.
    let (all, cursor, _) = page("/v1/environments?limit=5000".into()).await;
    assert_eq!((all.len(), cursor), (8, None));
}

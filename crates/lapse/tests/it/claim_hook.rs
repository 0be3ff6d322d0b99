//! Claims with parameters through `lapse serve`: a pool's `on_claim` hook hands a warm
//! member its per-claim data (variables, files) before the claim is answered; a hook that
//! fails gets the member recycled and the claim falls back; bad hooks and parameters are a
//! 400 that changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, eventually, secs};

fn spec(tag: &str) -> Value {
    json!({"provider": "process", "cmd": ["sleep", "600"], "env": {"POOL": tag}})
}

async fn put_pool(server: &Server, name: &str, body: Value) {
    let (status, answer) = server.request(Method::PUT, &format!("/v1/pools/{name}"), Some(body)).await;
    assert!(status.is_success(), "{status} {answer}");
}

async fn wait_warm(server: &Server, name: &str, n: u64) {
    eventually(secs(30), "the pool warm", async || {
        (server.get(&format!("/v1/pools/{name}")).await.1["warm"].as_u64() >= Some(n)).then_some(())
    })
    .await;
}

async fn exec(server: &Server, id: &str, cmd: &[&str]) -> Value {
    let (status, out) = server.post(&format!("/v1/environments/{id}/exec"), json!({"cmd": cmd})).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    out
}

#[tokio::test]
async fn a_claim_hook_delivers_the_parameters_before_the_claim_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let hook = json!({
        "exec": ["sh", "-c", "printf '%s' \"$S3_BUCKET\" > /tmp/bucket"],
        "ready": ["test", "-s", "/tmp/creds"],
        "timeout": "20s",
    });
    put_pool(&server, "ide", json!({"spec": spec("ide"), "min": 2, "on_claim": hook})).await;
    let (_, pool) = server.get("/v1/pools/ide").await;
    assert_eq!(pool["on_claim"], hook, "the hook is kept and shown: {pool}");
    wait_warm(&server, "ide", 2).await;

    let bucket = "student-42; $(rm -rf /) 'q'";
    let (status, env) = server
        .post(
            "/v1/environments",
            json!({"owner": "ada", "spec": spec("ide"), "ttl": "10m",
                   "params": {"env": {"S3_BUCKET": bucket}, "files": {"/tmp/creds": "key=1\n"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "a warm claim: {env}");
    let id = env["id"].as_str().unwrap();
    assert!(env["labels"].get("lapse.claim").is_none(), "the pending mark is cleared: {env}");
    // Delivered before the answer: no waiting needed.
    assert_eq!(exec(&server, id, &["cat", "/tmp/bucket"]).await["stdout"], bucket, "one word, verbatim");
    assert_eq!(exec(&server, id, &["cat", "/tmp/creds"]).await["stdout"], "key=1\n");
    let actions: Vec<Value> = server.events_of(id).await.iter().map(|e| e["action"].clone()).collect();
    assert!(actions.contains(&json!("claim")) && actions.contains(&json!("claim_hook")), "{actions:?}");
    // The parameters are nowhere in the record: they are the claim's, not the spec's.
    assert!(!server.env(id).await.to_string().contains("student-42"));
}

#[tokio::test]
async fn a_failing_hook_recycles_the_member_and_the_claim_starts_cold() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let hook = json!({"exec": ["sh", "-c", "echo no bucket for you >&2; exit 3"], "timeout": "10s"});
    put_pool(&server, "bad", json!({"spec": spec("bad"), "min": 1, "on_claim": hook})).await;
    wait_warm(&server, "bad", 1).await;
    let warm_before: Vec<String> = server.get("/v1/environments").await.1["environments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["pool"] == "bad")
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(warm_before.len(), 1);

    let (status, env) = server
        .post(
            "/v1/environments",
            json!({"owner": "ada", "spec": spec("bad"), "ttl": "10m", "params": {"env": {"S3_BUCKET": "b"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "no member took it: a cold start: {env}");
    let id = env["id"].as_str().unwrap().to_owned();
    assert!(!warm_before.contains(&id));
    assert_eq!(env["spec"]["env"]["S3_BUCKET"], "b", "a cold start gets the variables in its spec: {env}");
    // The member whose hook failed is recycled, with the hook's own words.
    let recycled = server.wait_state(&warm_before[0], "deleted", secs(30)).await;
    assert!(recycled["labels"].get("lapse.claim").is_none(), "{recycled}");
    let events = server.events_of(&warm_before[0]).await;
    let failed = events.iter().find(|e| e["action"] == "claim_hook").expect("a claim_hook event");
    assert_eq!(failed["outcome"], "error");
    assert!(failed["message"].as_str().unwrap().contains("exit 3: no bucket for you"), "{failed}");
    // Files cannot reach a cold start: refused, nothing made.
    let before = server.count_environments().await;
    let (status, answer) = server
        .post("/v1/environments", json!({"owner": "ada", "spec": spec("cold"), "params": {"files": {"/tmp/x": "y"}}}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["message"].as_str().map(|m| m.contains("params.files")), Some(true), "{answer}");
    assert_eq!(server.count_environments().await, before);
}

#[tokio::test]
async fn bad_hooks_and_parameters_are_a_400_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    for (hook, field) in [
        (json!({}), "on_claim"),
        (json!({"exec": ["true"], "file": "/x"}), "on_claim"),
        (json!({"file": "../etc/passwd"}), "on_claim.file"),
        (json!({"exec": ["true"], "timeout": "1d"}), "on_claim.timeout"),
        (json!({"exec": ["true"], "surprise": 1}), "surprise"),
    ] {
        let (status, answer) = server
            .request(Method::PUT, "/v1/pools/p", Some(json!({"spec": spec("p"), "min": 0, "on_claim": hook})))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{hook} {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(field), "{hook} {answer}");
    }
    assert_eq!(server.get("/v1/pools/p").await.0, StatusCode::NOT_FOUND, "no pool was made");
    for (params, field) in [
        (json!({"env": {"1X": "y"}}), "params.env.1X"),
        (json!({"files": {"relative": "y"}}), "params.files.relative"),
        (json!({"env": {"A": "x".repeat(70_000)}}), "params"),
    ] {
        let (status, answer) =
            server.post("/v1/environments", json!({"owner": "ada", "spec": spec("p"), "params": params})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(field), "{answer}");
    }
    assert_eq!(server.count_environments().await, 0);
}

#[tokio::test]
async fn a_member_whose_hook_a_kill_9_interrupted_is_recycled_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]).await;
    // `ready` never passes: the hook is still running when the server dies.
    let hook = json!({"exec": ["true"], "ready": ["false"], "timeout": "5m"});
    put_pool(&server, "slow", json!({"spec": spec("slow"), "min": 1, "on_claim": hook})).await;
    wait_warm(&server, "slow", 1).await;
    let url = format!("{}/v1/environments", server.url);
    let claim = tokio::spawn(async move {
        let body = json!({"owner": "ada", "spec": spec("slow"), "ttl": "1h", "params": {"env": {"B": "x"}}});
        reqwest::Client::new().post(url).json(&body).send().await
    });
    let pending = eventually(secs(20), "a member marked for its hook", async || {
        let (_, list) = server.get("/v1/environments?label=lapse.claim=pending").await;
        list["environments"].as_array()?.first().map(|e| e["id"].as_str().unwrap().to_owned())
    })
    .await;
    server.kill9().await;
    assert!(claim.await.unwrap().is_err(), "the caller never got an answer");
    server.restart().await;
    let recycled = server.wait_state(&pending, "deleted", secs(30)).await;
    assert_eq!(recycled["owner"], "ada", "it was the caller's, half-assigned, until the restart");
    let events = server.events_of(&pending).await;
    assert!(
        events.iter().any(|e| e["action"] == "claim_hook" && e["message"].as_str().unwrap().contains("server stopped")),
        "{events:?}"
    );
}

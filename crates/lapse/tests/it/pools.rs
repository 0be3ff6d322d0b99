//! Warm pools and claims (the `sim` provider keeps these fast; one docker pool is in docker.rs).

use std::collections::BTreeSet;
use std::time::Instant;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, secs};

pub async fn wait_warm(server: &Server, pool: &str, warm: u64) -> Value {
    let deadline = Instant::now() + secs(30);
    loop {
        let (status, view) = server.get(&format!("/v1/pools/{pool}")).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        if view["warm"] == warm && view["starting"] == 0 {
            return view;
        }
        assert!(Instant::now() < deadline, "pool {pool} not at {warm} warm: {view}\n{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn sim_spec() -> Value {
    json!({"provider": "sim", "cmd": ["serve", "--port", "8080"], "env": {"A": "1", "B": "2"}, "ports": [8080]})
}

/// Five warm members, thirty concurrent claims: five get 201 (running, with endpoints), the
/// rest 202, no member twice; the pool refills; claimed members never return to it.
#[tokio::test]
async fn concurrent_claims_refill_and_never_share() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--sim", "create=20ms..50ms"]).await;
    let (status, pool) =
        server.request(Method::PUT, "/v1/pools/web", Some(json!({"spec": sim_spec(), "min": 5, "max": 8}))).await;
    assert_eq!(status, StatusCode::CREATED, "{pool}");
    let pool = wait_warm(&server, "web", 5).await;

    // The same spec written differently (field order, an empty resources block) matches.
    let same = json!({"ports": [8080], "env": {"B": "2", "A": "1"}, "resources": {}, "cmd": ["serve", "--port", "8080"], "provider": "sim"});
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (url, spec) = (server.url.clone(), if i % 2 == 0 { sim_spec() } else { same.clone() });
        tasks.push(tokio::spawn(async move {
            let body = json!({"owner": format!("user-{i}"), "spec": spec, "ttl": "10m"});
            let resp = reqwest::Client::new().post(format!("{url}/v1/environments")).json(&body).send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        }));
    }
    let mut warm_ids = BTreeSet::new();
    let mut cold = 0;
    for t in tasks {
        let (status, env) = t.await.unwrap();
        match status {
            StatusCode::CREATED => {
                assert_eq!(env["state"], "running", "{env}");
                assert_eq!(env["endpoints"][0]["container_port"], 8080, "{env}");
                assert!(env.get("pool").is_none() && env["owner"].as_str().unwrap().starts_with("user-"), "{env}");
                assert!(warm_ids.insert(env["id"].as_str().unwrap().to_owned()), "a member handed out twice");
            }
            StatusCode::ACCEPTED => cold += 1,
            other => panic!("unexpected {other}: {env}"),
        }
    }
    assert_eq!((warm_ids.len(), cold), (5, 25));

    // Refilled with new members; the claimed ones stay their users'.
    let refilled = wait_warm(&server, "web", 5).await;
    assert_eq!(refilled["spec_hash"], pool["spec_hash"]);
    assert_eq!((pool["claims_last_minute"].as_u64(), refilled["claims_last_minute"].as_u64()), (Some(0), Some(5)));
    let (_, list) = server.get("/v1/pools").await;
    assert_eq!(list["pools"][0]["claims_last_minute"], 5, "{list}");
    let (_, members) = server.get("/v1/environments?owner=pool%3Aweb").await;
    let member_ids: BTreeSet<String> =
        members["environments"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(member_ids.len(), 5);
    assert!(member_ids.is_disjoint(&warm_ids));
    for id in &warm_ids {
        let env = server.env(id).await;
        assert!(env.get("pool").is_none(), "{env}");
        let events = server.events_of(id).await;
        assert!(events.iter().any(|e| e["action"] == "claim"), "{events:#?}");
    }
}

#[tokio::test]
async fn a_new_version_recycles_members_and_deleting_the_pool_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--sim", "0"]).await;
    server.request(Method::PUT, "/v1/pools/p", Some(json!({"spec": sim_spec(), "min": 3, "version": "v1"}))).await;
    wait_warm(&server, "p", 3).await;
    let ids = |v: Value| -> BTreeSet<String> {
        v["environments"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
    };
    let first = ids(server.get("/v1/environments?owner=pool%3Ap").await.1);

    let (status, view) =
        server.request(Method::PUT, "/v1/pools/p", Some(json!({"spec": sim_spec(), "min": 3, "version": "v2"}))).await;
    assert_eq!((status, view["version"].as_str()), (StatusCode::OK, Some("v2")));
    wait_warm(&server, "p", 3).await;
    for id in &first {
        server.wait_state(id, "deleted", secs(10)).await;
        assert!(server.events_of(id).await.iter().any(|e| e["action"] == "recycle"));
    }
    let second = ids(server.get("/v1/environments?owner=pool%3Ap").await.1);
    assert!(first.is_disjoint(&second));

    // min above max is refused; an unknown pool is a 404.
    let (status, _) =
        server.request(Method::PUT, "/v1/pools/p", Some(json!({"spec": sim_spec(), "min": 3, "max": 2}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.get("/v1/pools/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = server.request(Method::DELETE, "/v1/pools/p", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for id in &second {
        server.wait_state(id, "deleted", secs(10)).await;
    }
    let (_, pools) = server.get("/v1/pools").await;
    assert_eq!(pools["pools"], json!([]));
}

/// A member whose process exits on its own is recycled and replaced: the pool never counts
/// a member that cannot be claimed running.
#[tokio::test]
async fn members_that_exit_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let spec = json!({"provider": "process", "cmd": ["sleep", "1"]});
    server.request(Method::PUT, "/v1/pools/short", Some(json!({"spec": spec, "min": 1}))).await;
    let deadline = Instant::now() + secs(20);
    loop {
        let (_, events) = server.get("/v1/events?limit=1000").await;
        let recycled = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "recycle" && e["message"].as_str().unwrap().contains("it stopped"))
            .count();
        if recycled >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "stopped members were not recycled: {events:#}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    server.request(Method::DELETE, "/v1/pools/short", None).await;
}

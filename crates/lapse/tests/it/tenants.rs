//! Tenants and API keys: who may call, and who sees what.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, process_env, secs};

const ADMIN: &str = "admin-key-for-tests-0123456789";

async fn server(dir: &std::path::Path) -> Server {
    Server::start_with_env(dir, &["--sim", "0"], &[("LAPSE_ADMIN_KEY", ADMIN)]).await
}

/// A sim environment (a tenant's tier allows sim, not process, by default).
fn sim_env() -> Value {
    json!({"owner": "ada", "spec": {"provider": "sim"}, "ttl": "10m"})
}

/// Creates a tenant and a key for it; returns the key.
async fn tenant_key(server: &Server, name: &str) -> (String, String) {
    let (status, t) = server.post("/v1/admin/tenants", json!({"name": name})).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    assert_eq!(t["tier"], "free");
    let (status, k) = server.post(&format!("/v1/admin/tenants/{name}/keys"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{k}");
    let key = k["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("lapse_"), "{key}");
    (k["id"].as_str().unwrap().to_owned(), key)
}

#[tokio::test]
async fn keys_are_needed_checked_and_revocable() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let (status, _) = server.request_as(None, Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "/healthz needs no key");
    for key in [None, Some("wrong"), Some("lapse_0123456789abcdef_00"), Some(&ADMIN[1..])] {
        for path in ["/v1/environments", "/v1/events", "/vms", "/stats", "/v1/openapi.json", "/no/such/route"] {
            let (status, body) = server.request_as(key, Method::GET, path, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} with {key:?}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    let (id, key) = tenant_key(&server, "acme").await;
    let (status, me) = server.request_as(Some(&key), Method::GET, "/v1/whoami", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me, json!({"actor": format!("key:{id}"), "tenant": "acme", "admin": false}));
    let (status, me) = server.get("/v1/whoami").await;
    assert_eq!((status, me["admin"].clone()), (StatusCode::OK, json!(true)));

    // Refusals change nothing.
    let (status, _) = server.post("/v1/admin/tenants", json!({"name": "acme"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = server.post("/v1/admin/tenants", json!({"name": "x", "tier": "gold"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.post("/v1/admin/tenants", json!({"name": "bad name"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.post("/v1/admin/tenants", json!({"name": "q", "quota": {"cpus": 1}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.post("/v1/admin/tenants/nobody/keys", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = server.get("/v1/admin/tenants").await;
    assert_eq!(list["tenants"].as_array().unwrap().len(), 1, "{list}");

    // A tenant key cannot administer.
    let (status, _) =
        server.request_as(Some(&key), Method::POST, "/v1/admin/tenants", Some(json!({"name": "z"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server.request_as(Some(&key), Method::DELETE, &format!("/v1/admin/keys/{id}"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Revoked: refused from then on.
    let (status, _) = server.request_as(Some(&key), Method::GET, "/v1/environments", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, revoked) = server.request(Method::DELETE, &format!("/v1/admin/keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    let (status, _) = server.request_as(Some(&key), Method::GET, "/v1/environments", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.request(Method::DELETE, "/v1/admin/keys/0000000000000000", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The admin's actions are in the audit trail, with the tenant they concern.
    let (_, events) = server.get("/v1/events").await;
    let actions: Vec<(&str, &str)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["tenant"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(actions, [("create_tenant", "acme"), ("create_key", "acme"), ("revoke_key", "acme")]);
}

#[tokio::test]
async fn tenants_see_only_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let (a_id, a) = tenant_key(&server, "acme").await;
    let (_, b) = tenant_key(&server, "beta").await;
    let as_a = |m: Method, p: String, body: Option<Value>| {
        let s = &server;
        let a = a.clone();
        async move { s.request_as(Some(&a), m, &p, body).await }
    };
    let (status, env) = as_a(Method::POST, "/v1/environments".into(), Some(sim_env())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    assert_eq!(env["tenant"], "acme");
    let id = env["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(10)).await;

    // Beta: every route answers as if the environment did not exist.
    let missing = "0".repeat(32);
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/environments/{}".to_owned(), None),
        (Method::POST, "/v1/environments/{}/extend".to_owned(), Some(json!({"by": "1h"}))),
        (Method::POST, "/v1/environments/{}/stop".to_owned(), None),
        (Method::POST, "/v1/environments/{}/start".to_owned(), None),
        (Method::POST, "/v1/environments/{}/exec".to_owned(), Some(json!({"cmd": ["true"]}))),
        (Method::GET, "/v1/environments/{}/logs".to_owned(), None),
        (Method::DELETE, "/v1/environments/{}".to_owned(), None),
    ];
    for (method, path, body) in &routes {
        let (theirs, their_body) =
            server.request_as(Some(&b), method.clone(), &path.replace("{}", &id), body.clone()).await;
        let (none, none_body) =
            server.request_as(Some(&b), method.clone(), &path.replace("{}", &missing), body.clone()).await;
        assert_eq!(theirs, StatusCode::NOT_FOUND, "{method} {path}: {their_body}");
        assert_eq!(theirs, none, "{method} {path}");
        assert_eq!(their_body["error"]["code"], none_body["error"]["code"]);
    }
    let (_, list) = server.request_as(Some(&b), Method::GET, "/v1/environments", None).await;
    assert_eq!(list["environments"], json!([]));
    let (_, events) = server.request_as(Some(&b), Method::GET, &format!("/v1/events?environment={id}"), None).await;
    assert_eq!(events["events"], json!([]));
    let (_, events) = server.request_as(Some(&b), Method::GET, "/v1/events", None).await;
    assert!(events["events"].as_array().unwrap().iter().all(|e| e["tenant"] == "beta"), "{events}");
    for path in ["/v1/pools", "/v1/pools/p", "/vms", "/stats", "/metrics", "/v1/status", "/v1/queues"] {
        let (status, _) = server.request_as(Some(&b), Method::GET, path, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    // Nothing changed: it still runs.
    assert_eq!(server.env(&id).await["state"], "running");

    // Acme sees and acts on its own; the trail names the key.
    let (_, list) = as_a(Method::GET, "/v1/environments".into(), None).await;
    assert_eq!(list["environments"].as_array().unwrap().len(), 1);
    let (status, out) =
        as_a(Method::POST, format!("/v1/environments/{id}/exec"), Some(json!({"cmd": ["echo", "hi"]}))).await;
    assert_eq!((status, out["stdout"].clone()), (StatusCode::OK, json!("echo hi\n")), "sim echoes the command");
    let (status, _) = as_a(Method::DELETE, format!("/v1/environments/{id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, events) = as_a(Method::GET, format!("/v1/events?environment={id}"), None).await;
    let events = events["events"].as_array().unwrap().clone();
    for action in ["create", "exec", "delete"] {
        let e = events.iter().find(|e| e["action"] == action).unwrap_or_else(|| panic!("{action}: {events:?}"));
        assert_eq!(e["actor"], format!("key:{a_id}"));
        assert_eq!(e["tenant"], "acme");
    }
    // The admin sees every tenant's.
    let (status, _) = server.get(&format!("/v1/environments/{id}")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn without_an_admin_key_only_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["serve", "--listen", "0.0.0.0:0", "--docker", "off", "--data-dir"])
        .arg(dir.path())
        .env_remove("LAPSE_ADMIN_KEY")
        .output();
    let out = tokio::time::timeout(secs(30), out).await.unwrap().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0") && stderr.contains("LAPSE_ADMIN_KEY"), "{stderr}");
}

#[tokio::test]
async fn quotas_hold_under_concurrency_and_name_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &["--sim", "0"], &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let (status, _) =
        server.post("/v1/admin/tenants", json!({"name": "racer", "tier": "pro", "quota": {"environments": 3}})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, k) = server.post("/v1/admin/tenants/racer/keys", json!({})).await;
    let racer = k["key"].as_str().unwrap().to_owned();
    let body = json!({"owner": "r", "spec": {"provider": "sim"}, "ttl": "10m"});
    let answers = futures::future::join_all(
        (0..50).map(|_| server.request_as(Some(&racer), Method::POST, "/v1/environments", Some(body.clone()))),
    )
    .await;
    let accepted = answers.iter().filter(|(s, _)| s.is_success()).count();
    assert_eq!(accepted, 3, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| !s.is_success()) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["error"]["code"], "quota_exceeded");
        assert!(body["error"]["message"].as_str().unwrap().contains("environments 3 of 3 in use"), "{body}");
    }
    let (_, list) = server.request_as(Some(&racer), Method::GET, "/v1/environments", None).await;
    assert_eq!(list["environments"].as_array().unwrap().len(), 3);

    // Every dimension, with its message; refusals create nothing.
    let (status, _) =
        server.post("/v1/admin/tenants", json!({"name": "small", "quota": {"disk_gb": 10, "max_ttl": "1h"}})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, k) = server.post("/v1/admin/tenants/small/keys", json!({})).await;
    let small = k["key"].as_str().unwrap().to_owned();
    let create = |resources: Value, ttl: &str| {
        let body = json!({"owner": "s", "spec": {"provider": "sim", "resources": resources}, "ttl": ttl});
        let (server, small) = (&server, small.clone());
        async move { server.request_as(Some(&small), Method::POST, "/v1/environments", Some(body)).await }
    };
    for (resources, ttl, words) in [
        (json!({"vcpu": 3}), "30m", "quota: vcpu 0 of 2 in use; this request asks for 3"),
        (json!({"mem_mb": 5000}), "30m", "quota: mem_mb 0 of 4096 in use; this request asks for 5000"),
        (json!({"disk_gb": 11}), "30m", "quota: disk_gb 0 of 10 in use; this request asks for 11"),
        (json!({"vcpu": 1}), "2h", "quota: max_ttl is 1h; this request asks for 2h"),
    ] {
        let (status, body) = create(resources, ttl).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"]["message"], words);
    }
    let (status, first) = create(json!({"vcpu": 2, "mem_mb": 4096, "disk_gb": 10}), "30m").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, body) = create(json!({"vcpu": 0.5}), "30m").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body["error"]["message"].as_str().unwrap().contains("environments 1 of 1 in use"), "{body}");
    // Deleting frees the place.
    let id = first["id"].as_str().unwrap();
    let (status, _) = server.request_as(Some(&small), Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = create(json!({"vcpu": 1}), "30m").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // The admin has no quota.
    for _ in 0..3 {
        let (status, _) = server.post("/v1/environments", json!({"owner": "a", "spec": {"provider": "sim"}})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
}

#[tokio::test]
async fn the_host_guard_refuses_local_environments_and_stops_refills() {
    // Any host uses more than 0% of its memory, and of its data dir's disk.
    for (flag, says) in
        [("--host-memory-limit", "host memory use is"), ("--host-disk-limit", "disk use of the data dir")]
    {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), &[flag, "0", "--sim", "0"]).await;
        let (status, body) = server.post("/v1/environments", process_env(&["sleep", "60"])).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the host's state, not a quota: {body}");
        assert_eq!(body["error"]["code"], "host_capacity", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says) && message.contains("above the 0% limit"), "{message}");
        assert!(message.contains(flag), "names its flag: {message}");
        assert_eq!(server.count_environments().await, 0, "nothing was created");
        // Providers that use no host memory or disk are not held back.
        let (status, _) = server.post("/v1/environments", json!({"owner": "o", "spec": {"provider": "sim"}})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        // A pool of local processes does not refill; one of sim does (in the same pass).
        let (status, _) = server
            .request(
                Method::PUT,
                "/v1/pools/local",
                Some(json!({"spec": {"provider": "process", "cmd": ["sleep", "60"]}, "min": 2})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) =
            server.request(Method::PUT, "/v1/pools/simmed", Some(json!({"spec": {"provider": "sim"}, "min": 2}))).await;
        assert_eq!(status, StatusCode::CREATED);
        let started = std::time::Instant::now();
        while server.get("/v1/pools/simmed").await.1["warm"] != 2 {
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "the sim pool refills");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let (_, local) = server.get("/v1/pools/local").await;
        assert_eq!((local["warm"].as_u64(), local["starting"].as_u64()), (Some(0), Some(0)), "{local}");
        assert!(server.log().contains(&format!("not refilling: {says}")), "{flag}");
    }
}

#[tokio::test]
async fn every_mutating_route_leaves_an_event_with_actor_tenant_and_target() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &["--sim", "0"], &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let (key_id, key) = tenant_key(&server, "acme").await;
    let call = |m: Method, p: String, body: Option<Value>| {
        let (server, key) = (&server, key.clone());
        async move { server.request_as(Some(&key), m, &p, body).await }
    };
    let (_, env) =
        call(Method::POST, "/v1/environments".into(), Some(json!({"owner": "o", "spec": {"provider": "sim"}}))).await;
    let id = env["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(10)).await;
    let steps: Vec<(Method, String, Option<Value>, &str)> = vec![
        (Method::POST, format!("/v1/environments/{id}/extend"), Some(json!({"by": "10m"})), "extend"),
        (Method::POST, format!("/v1/environments/{id}/exec"), Some(json!({"cmd": ["true"]})), "exec"),
        (Method::POST, format!("/v1/environments/{id}/stop"), None, "stop"),
        (Method::POST, format!("/v1/environments/{id}/start"), None, "start"),
        (Method::DELETE, format!("/v1/environments/{id}"), None, "delete"),
    ];
    for (method, path, body, _) in &steps {
        let (status, answer) = call(method.clone(), path.clone(), body.clone()).await;
        assert!(status.is_success(), "{method} {path}: {answer}");
    }
    let actor = format!("key:{key_id}");
    for action in ["create", "extend", "exec", "stop", "start", "delete"] {
        let (_, found) = call(Method::GET, format!("/v1/events?actor={actor}&action={action}"), None).await;
        let found = found["events"].as_array().unwrap().clone();
        assert_eq!(found.len(), 1, "{action}: {found:?}");
        let e = &found[0];
        assert_eq!(
            (e["tenant"].as_str(), e["environment_id"].as_str(), e["outcome"].as_str()),
            (Some("acme"), Some(id.as_str()), Some("ok"))
        );
        assert!(e["at"].is_string());
    }
    // Transitions are events too, of the same tenant.
    let (_, transitions) = call(Method::GET, format!("/v1/events?environment={id}&action=transition"), None).await;
    assert!(transitions["events"].as_array().unwrap().len() >= 2, "{transitions}");
    // Admin routes: pools and the tenant's keys; filterable by actor.
    let (status, _) =
        server.request(Method::PUT, "/v1/pools/p", Some(json!({"spec": {"provider": "sim"}, "min": 0}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = server.request(Method::DELETE, "/v1/pools/p", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, admin) = server.get("/v1/events?actor=admin").await;
    let actions: Vec<&str> =
        admin["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["create_tenant", "create_key", "put_pool", "delete_pool"]);
    let (_, pool) = server.get("/v1/events?target=p").await;
    assert_eq!(pool["events"].as_array().unwrap().len(), 2);
    // A tenant key cannot widen its view with ?tenant=.
    let (_, other) = call(Method::GET, "/v1/events?tenant=other&actor=admin".into(), None).await;
    assert!(other["events"].as_array().unwrap().iter().all(|e| e["tenant"] == "acme"), "{other}");
    let (status, _) = call(Method::GET, "/v1/events?action=".into(), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--rate-limit", "1", "--rate-burst", "3"];
    let server = Server::start_with_env(dir.path(), &args, &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let (_, key) = tenant_key(&server, "acme").await;
    let http = reqwest::Client::new();
    let get = || http.get(format!("{}/v1/environments", server.url)).bearer_auth(&key).send();
    for _ in 0..3 {
        assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    }
    let limited = get().await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Other keys and the admin are not held back by it.
    let (_, other) = tenant_key(&server, "beta").await;
    let (status, _) = server.request_as(Some(&other), Method::GET, "/v1/environments", None).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
    assert_eq!(get().await.unwrap().status(), StatusCode::OK, "allowed again after Retry-After");
}

#[tokio::test]
async fn usage_accrues_while_running_per_environment_and_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lapse.toml");
    // One unit of money per vCPU-second, so that short runs show.
    std::fs::write(&config, "[prices]\nvcpu_hour = 3600.0\n\n[tiers.team]\nenvironments = 2\n").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let args = ["--sim", "0", "--config", config.to_str().unwrap()];
    let server = Server::start_with_env(&data, &args, &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let (status, _) = server
        .post("/v1/admin/tenants", json!({"name": "acme", "tier": "pro", "quota": {"env_hours_per_month": 0.0003}}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, k) = server.post("/v1/admin/tenants/acme/keys", json!({})).await;
    let key = k["key"].as_str().unwrap().to_owned();
    let body = json!({"owner": "o", "spec": {"provider": "sim", "resources": {"vcpu": 2}}, "ttl": "1h"});
    let (status, env) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(body.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = env["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(10)).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, _) = server.request_as(Some(&key), Method::POST, &format!("/v1/environments/{id}/stop"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.wait_state(&id, "stopped", secs(10)).await;
    let (_, admin_env) = server
        .post("/v1/environments", json!({"owner": "a", "spec": {"provider": "sim", "resources": {"vcpu": 1}}}))
        .await;
    server.wait_state(admin_env["id"].as_str().unwrap(), "running", secs(10)).await;

    let (status, usage) = server.request_as(Some(&key), Method::GET, "/v1/usage", None).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    let envs = usage["environments"].as_array().unwrap();
    assert_eq!(envs.len(), 1, "a tenant sees its own only: {usage}");
    let seconds = envs[0]["running_hours"].as_f64().unwrap() * 3600.0;
    assert!((1.4..3.0).contains(&seconds), "ran about 1.5 s: {seconds}");
    assert_eq!(envs[0]["hourly"], 7200.0);
    let cost = envs[0]["cost"].as_f64().unwrap();
    assert!((cost - 2.0 * seconds).abs() < 1e-6, "{cost} for {seconds} s of 2 vCPU");
    assert_eq!(usage["tenants"][0]["tenant"], "acme");
    assert!((usage["tenants"][0]["cost"].as_f64().unwrap() - cost).abs() < 1e-9);
    // Stopped time is not billed: the cost stays.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (_, later) = server.request_as(Some(&key), Method::GET, "/v1/usage", None).await;
    assert!((later["environments"][0]["cost"].as_f64().unwrap() - cost).abs() < 1e-9, "{later}");
    // The admin sees every tenant; a period before anything ran is empty.
    let (_, all) = server.get("/v1/usage").await;
    assert_eq!(all["tenants"].as_array().unwrap().len(), 2, "{all}");
    let (_, none) = server.get("/v1/usage?from=2020-01-01T00:00:00Z&to=2020-02-01T00:00:00Z").await;
    assert_eq!(none["environments"], json!([]));
    let (status, _) = server.get("/v1/usage?from=2021-01-01T00:00:00Z&to=2020-01-01T00:00:00Z").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // 1.5 s is above 0.0003 environment-hours (about 1.1 s): no new environments this month.
    let (status, refused) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(body)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("env_hours_per_month"), "{refused}");

    // A tier from the config file.
    let (status, t) = server.post("/v1/admin/tenants", json!({"name": "crew", "tier": "team"})).await;
    assert_eq!((status, t["tier"].as_str()), (StatusCode::CREATED, Some("team")), "{t}");
    let (_, k) = server.post("/v1/admin/tenants/crew/keys", json!({})).await;
    let crew = k["key"].as_str().unwrap().to_owned();
    let sim = json!({"owner": "c", "spec": {"provider": "sim"}, "ttl": "1h"});
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(server.request_as(Some(&crew), Method::POST, "/v1/environments", Some(sim.clone())).await.0);
    }
    assert_eq!(statuses, [StatusCode::ACCEPTED, StatusCode::ACCEPTED, StatusCode::TOO_MANY_REQUESTS]);
    let (status, unknown) = server.post("/v1/admin/tenants", json!({"name": "x", "tier": "gold"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(unknown["error"]["message"].as_str().unwrap().contains("known: free, pro, team"), "{unknown}");
}

#[tokio::test]
async fn a_claim_from_a_warm_pool_counts_against_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &["--sim", "0"], &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    // The tier's default resources (free: 0.5 vCPU, 512 MB) are part of what a tenant asks.
    let spec = json!({"provider": "sim", "cmd": ["warm"], "resources": {"vcpu": 0.5, "mem_mb": 512}});
    let (status, _) = server.request(Method::PUT, "/v1/pools/warm", Some(json!({"spec": spec, "min": 3}))).await;
    assert_eq!(status, StatusCode::CREATED);
    for _ in 0..100 {
        if server.get("/v1/pools/warm").await.1["warm"] == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, key) = tenant_key(&server, "acme").await;
    let body = json!({"owner": "o", "spec": {"provider": "sim", "cmd": ["warm"]}, "ttl": "10m"});
    let (status, claimed) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "claimed warm: {claimed}");
    assert_eq!(claimed["tenant"], "acme");
    // The free tier holds one environment: a second claim is refused, and no member is taken.
    let (status, refused) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(body)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("environments 1 of 1"), "{refused}");
    let (_, list) = server.request_as(Some(&key), Method::GET, "/v1/environments", None).await;
    assert_eq!(list["environments"].as_array().unwrap().len(), 1);
}

/// A metrics-only key reads `/metrics` and nothing else; tenants' keys still cannot read it;
/// it is made by the admin (API and CLI) and revocable like any key.
#[tokio::test]
async fn a_metrics_key_reads_metrics_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let (_, tenant) = tenant_key(&server, "acme").await;
    let (status, made) = server.post("/v1/admin/keys", json!({"scope": "metrics"})).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!((made["scope"].as_str(), made.get("tenant")), (Some("metrics"), None), "{made}");
    let (id, key) = (made["id"].as_str().unwrap().to_owned(), made["key"].as_str().unwrap().to_owned());

    let (status, text) = server.request_as(Some(&key), Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.as_str().is_some_and(|t| t.contains("# TYPE")), "Prometheus text: {text}");
    let elsewhere = [
        (Method::GET, "/v1/environments", None),
        (Method::POST, "/v1/environments", Some(process_env(&["sleep", "1"]))),
        (Method::GET, "/v1/events", None),
        (Method::GET, "/v1/whoami", None),
        (Method::GET, "/v1/status", None),
        (Method::GET, "/v1/pools", None),
        (Method::GET, "/stats", None),
        (Method::GET, "/v1/admin/tenants", None),
        (Method::POST, "/v1/admin/keys", Some(json!({"scope": "metrics"}))),
    ];
    for (method, path, body) in elsewhere {
        let (status, answer) = server.request_as(Some(&key), method.clone(), path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden");
    }
    let (status, _) = server.request_as(Some(&tenant), Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a tenant's key does not read metrics");
    assert_eq!(server.count_environments().await, 0, "nothing was created");

    for bad in [
        json!({"scope": "metrics", "tenant": "acme"}),
        json!({"scope": "tenant"}),
        json!({"scope": "root"}),
        json!({"scope": "tenant", "tenant": "../x"}),
        json!({}),
    ] {
        let (status, answer) = server.post("/v1/admin/keys", bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
    }
    let (status, answer) = server.post("/v1/admin/keys", json!({"scope": "tenant", "tenant": "nobody"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, made) = server.post("/v1/admin/keys", json!({"scope": "tenant", "tenant": "acme"})).await;
    assert_eq!(
        (status, made["tenant"].as_str(), made["scope"].as_str()),
        (StatusCode::CREATED, Some("acme"), Some("tenant"))
    );
    let (status, who) = server.request_as(made["key"].as_str(), Method::GET, "/v1/whoami", None).await;
    assert_eq!((status, who["tenant"].as_str()), (StatusCode::OK, Some("acme")));

    let (status, revoked) = server.request(Method::DELETE, &format!("/v1/admin/keys/{id}"), None).await;
    assert_eq!((status, revoked["scope"].as_str(), revoked.get("tenant")), (StatusCode::OK, Some("metrics"), None));
    let (status, _) = server.request_as(Some(&key), Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked");

    // The CLI makes one too.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["--url", &server.url, "--key", ADMIN, "admin", "key", "create", "--metrics"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (status, _) = server.request_as(Some(&key), Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.request_as(Some(&key), Method::GET, "/v1/environments", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// A sim environment of `vcpu` vCPUs.
fn sim_of(vcpu: f64) -> Value {
    json!({"owner": "ada", "spec": {"provider": "sim", "resources": {"vcpu": vcpu, "mem_mb": 1024}}, "ttl": "10m"})
}

/// github.gg's tiers (`user-vm-service.ts`: free 2/4096/10, pro 4/8192/50, unlimited
/// 8/16384/100) and its per-request check (`orchestrator.ts`: `requested > max`): a pro
/// tenant checked per request runs three 4-vCPU environments; summed, the 2nd is refused.
#[tokio::test]
async fn quotas_are_checked_per_request_or_summed_as_the_tenant_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    for (name, check) in [("each", Some("per_request")), ("sum", None)] {
        let mut body = json!({"name": name, "tier": "pro"});
        if let Some(c) = check {
            body["quota_check"] = json!(c);
        }
        let (status, t) = server.post("/v1/admin/tenants", body).await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
        assert_eq!(t["quota_check"], check.unwrap_or("summed"));
    }
    let (_, each) = server.post("/v1/admin/tenants/each/keys", json!({})).await;
    let (_, sum) = server.post("/v1/admin/tenants/sum/keys", json!({})).await;
    let (each, sum) = (each["key"].as_str().unwrap().to_owned(), sum["key"].as_str().unwrap().to_owned());
    let create = |key: String, body: Value| {
        let server = &server;
        async move { server.request_as(Some(&key), Method::POST, "/v1/environments", Some(body)).await }
    };
    for n in 0..3 {
        let (status, env) = create(each.clone(), sim_of(4.0)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "per request, environment {n}: {env}");
    }
    let (status, e) = create(each.clone(), sim_of(4.0)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "the count is summed in both modes: {e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("environments 3 of 3"), "{e}");
    let (status, e) = create(each.clone(), sim_of(4.5)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{e}");

    let (status, _) = create(sum.clone(), sim_of(4.0)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, e) = create(sum.clone(), sim_of(4.0)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "summed: the 2nd is over 4 vCPU: {e}");
    assert_eq!(e["error"]["message"], "quota: vcpu 4 of 4 in use; this request asks for 4");

    // The setting changes from the next request on; a bad one changes nothing.
    for bad in [json!({"quota_check": "sometimes"}), json!({"tier": "unlimited"}), json!("x")] {
        let (status, e) = server.request(Method::PATCH, "/v1/admin/tenants/sum", Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {e}");
    }
    let (status, _) =
        server.request(Method::PATCH, "/v1/admin/tenants/nobody", Some(json!({"quota_check": "summed"}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .request_as(Some(&sum), Method::PATCH, "/v1/admin/tenants/sum", Some(json!({"quota_check": "per_request"})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a tenant cannot loosen its own quota");
    let (status, _) = create(sum.clone(), sim_of(4.0)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "still summed");
    let (status, t) =
        server.request(Method::PATCH, "/v1/admin/tenants/sum", Some(json!({"quota_check": "per_request"}))).await;
    assert_eq!((status, t["quota_check"].clone()), (StatusCode::OK, json!("per_request")), "{t}");
    let (status, e) = create(sum.clone(), sim_of(4.0)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{e}");
    let events = server.get("/v1/events?action=update_tenant").await.1;
    assert_eq!(events["events"][0]["message"], "quota checked per_request", "{events}");

    // The tiers' numbers: disk is a dimension; `unlimited` exists.
    let (status, _) = server.post("/v1/admin/tenants", json!({"name": "big", "tier": "unlimited"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, big) = server.post("/v1/admin/tenants/big/keys", json!({})).await;
    let big = big["key"].as_str().unwrap().to_owned();
    let disk = |vcpu: f64, disk: u64| json!({"owner": "ada", "spec": {"provider": "sim", "resources": {"vcpu": vcpu, "mem_mb": 1024, "disk_gb": disk}}, "ttl": "10m"});
    let (status, e) = create(big.clone(), disk(8.0, 101)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{e}");
    assert_eq!(e["error"]["message"], "quota: disk_gb 0 of 100 in use; this request asks for 101");
    let (status, e) = create(big.clone(), disk(8.0, 100)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{e}");
    let (status, e) = create(sum.clone(), disk(1.0, 51)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "pro: 50 GB per environment: {e}");
}

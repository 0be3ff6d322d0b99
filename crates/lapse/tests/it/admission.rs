//! One admission path: what a tenant may use, and every way to get more than its quota, tried
//! as a tenant would (`start` of a failed environment, `extend`, specs without resources), plus
//! tenant namespaces for `/vms`, fail-closed quotas and tenantless environments.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, secs};

const ADMIN: &str = "admin-key-for-tests-0123456789";

/// A tenant (tier `free` unless a quota says more) and a key; returns the key.
async fn tenant(server: &Server, name: &str, quota: Value) -> String {
    let (status, t) = server.post("/v1/admin/tenants", json!({"name": name, "quota": quota})).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let (status, k) = server.post(&format!("/v1/admin/tenants/{name}/keys"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{k}");
    k["key"].as_str().unwrap().to_owned()
}

fn sim(ttl: &str) -> Value {
    json!({"owner": "t", "spec": {"provider": "sim"}, "ttl": ttl})
}

async fn count_as(server: &Server, key: &str) -> usize {
    let (_, list) = server.request_as(Some(key), Method::GET, "/v1/environments", None).await;
    list["environments"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_tenant_uses_only_the_providers_its_tier_allows_and_a_refusal_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &["--sim", "0"], &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let plain = tenant(&server, "plain", json!({})).await;
    let events_before = server.count_all_events().await;
    // `process` runs on the server's own host: not for tenants unless their tier says so.
    let body = json!({"owner": "t", "spec": {"provider": "process", "cmd": ["sleep", "60"]}, "ttl": "5m"});
    let (status, refused) = server.request_as(Some(&plain), Method::POST, "/v1/environments", Some(body)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(refused["error"]["code"], "forbidden");
    assert!(refused["error"]["message"].as_str().unwrap().contains("may not use provider \"process\""), "{refused}");
    assert_eq!(count_as(&server, &plain).await, 0);
    assert_eq!(server.count_all_events().await, events_before, "a refusal writes no event");
    // Other providers are allowed by default.
    let (status, env) = server.request_as(Some(&plain), Method::POST, "/v1/environments", Some(sim("5m"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");

    // A tenant's own override narrows (or widens) the list.
    let narrow = tenant(&server, "narrow", json!({"providers": ["process"]})).await;
    let (status, refused) = server.request_as(Some(&narrow), Method::POST, "/v1/environments", Some(sim("5m"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("its tier allows: process"), "{refused}");
    // The admin may use anything.
    let (status, _) = server.post("/v1/environments", sim("5m")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn specs_without_resources_are_charged_the_tiers_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &["--sim", "0"], &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    // free: 2 vCPU, 4 GB, default 0.5 vCPU and 512 MB per environment; room for 10 environments.
    let key = tenant(&server, "acme", json!({"environments": 10})).await;
    for _ in 0..4 {
        let (status, env) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(sim("5m"))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{env}");
        assert_eq!(env["spec"]["resources"], json!({"vcpu": 0.5, "mem_mb": 512}), "given, so enforced");
    }
    let (status, refused) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(sim("5m"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(refused["error"]["message"], "quota: vcpu 2 of 2 in use; this request asks for 0.5");
}

#[tokio::test]
async fn start_of_a_failed_environment_and_extend_cannot_pass_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    // Every provision fails, after 2 s: failed environments hold no place in the quota, and a
    // started one holds its place while it provisions (long enough for the second start).
    let server = Server::start_with_env(
        dir.path(),
        &["--sim", "create=2s@1.0", "--max-attempts", "1"],
        &[("LAPSE_ADMIN_KEY", ADMIN)],
    )
    .await;
    let key = tenant(&server, "acme", json!({"max_ttl": "1h"})).await;
    let mut failed = Vec::new();
    for _ in 0..2 {
        let (status, env) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(sim("30m"))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{env}");
        let id = env["id"].as_str().unwrap().to_owned();
        server.wait_state(&id, "failed", secs(10)).await;
        failed.push(id);
    }
    // One place (free): starting the first takes it; starting the second must not.
    let (status, body) =
        server.request_as(Some(&key), Method::POST, &format!("/v1/environments/{}/start", failed[0]), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, refused) =
        server.request_as(Some(&key), Method::POST, &format!("/v1/environments/{}/start", failed[1]), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("environments 1 of 1"), "{refused}");
    assert_eq!(server.env(&failed[1]).await["state"], "failed", "a refused start changes nothing");

    // extend: never further ahead than the tier's longest TTL.
    let path = format!("/v1/environments/{}/extend", failed[0]);
    let (status, refused) = server.request_as(Some(&key), Method::POST, &path, Some(json!({"by": "2h"}))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("max_ttl is 1h"), "{refused}");
    let until = (chrono::Utc::now() + chrono::Duration::hours(5)).to_rfc3339();
    let (status, _) = server.request_as(Some(&key), Method::POST, &path, Some(json!({"until": until}))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, ok) = server.request_as(Some(&key), Method::POST, &path, Some(json!({"by": "10m"}))).await;
    assert!(status.is_success(), "{ok}");
    // The admin is held to no quota.
    let (status, _) = server.post(&format!("/v1/environments/{}/extend", failed[0]), json!({"by": "5h"})).await;
    assert!(status.is_success());
}

#[tokio::test]
async fn a_tenant_whose_tier_is_gone_is_refused_not_unlimited() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lapse.toml");
    std::fs::write(&config, "[tiers.team]\nenvironments = 5\n").unwrap();
    let envs = [("LAPSE_ADMIN_KEY", ADMIN), ("LAPSE_CONFIG", config.to_str().unwrap())];
    let mut server = Server::start_with_env(dir.path(), &["--sim", "0"], &envs).await;
    let (status, _) = server.post("/v1/admin/tenants", json!({"name": "crew", "tier": "team"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, k) = server.post("/v1/admin/tenants/crew/keys", json!({})).await;
    let key = k["key"].as_str().unwrap().to_owned();
    let (status, _) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(sim("5m"))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // The operator drops the tier from the file: crew's quota no longer resolves.
    std::fs::write(&config, "").unwrap();
    server.envs.retain(|(k, _)| k != "LAPSE_CONFIG");
    server.restart().await;
    let (status, refused) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(sim("5m"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("tier \"team\" of tenant crew is not configured"));
}

#[tokio::test]
async fn vms_tenants_must_exist_with_keys_and_are_made_on_first_use_without() {
    let dir = tempfile::tempdir().unwrap();
    let spec = json!({"provider": "sim", "cmd": ["x"]});
    let keyed =
        Server::start_with_env(dir.path(), &["--sim", "0", "--vms-provider", "sim"], &[("LAPSE_ADMIN_KEY", ADMIN)])
            .await;
    let (status, refused) = keyed.post("/vms", json!({"job_id": "j1", "tenant": "ghost", "spec": spec})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("tenant ghost does not exist"), "{refused}");
    let (_, tenants) = keyed.get("/v1/admin/tenants").await;
    assert_eq!(tenants["tenants"], json!([]), "nothing was made");
    drop(keyed);

    let dir = tempfile::tempdir().unwrap();
    let open = Server::start(dir.path(), &["--sim", "0", "--vms-provider", "sim"]).await;
    let (status, made) = open.post("/vms", json!({"job_id": "j1", "tenant": "lab", "spec": spec})).await;
    assert!(status.is_success(), "{made}");
    let (_, tenants) = open.get("/v1/admin/tenants").await;
    assert_eq!(tenants["tenants"][0]["name"], "lab");
    assert_eq!(tenants["tenants"][0]["tier"], "free");
    // Operator-made environments of no tenant say so.
    let env = open.create(sim("5m")).await;
    assert_eq!(env["tenant"], Value::Null);
}

#[tokio::test]
async fn a_claimed_member_bills_its_claimer_from_the_claim_and_labels_set_no_price() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lapse.toml");
    // One unit per vCPU-second; a forged instance type would be free.
    std::fs::write(&config, "[prices]\nvcpu_hour = 3600.0\ninstance_types = { \"DEV1-S\" = 0.0 }\n").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let args = ["--sim", "0", "--config", config.to_str().unwrap()];
    let server = Server::start_with_env(&data, &args, &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let spec = json!({"provider": "sim", "resources": {"vcpu": 1, "mem_mb": 512}});
    let (status, _) = server.request(Method::PUT, "/v1/pools/p", Some(json!({"spec": spec, "min": 1}))).await;
    assert_eq!(status, StatusCode::CREATED);
    for _ in 0..100 {
        if server.get("/v1/pools/p").await.1["warm"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Warm, waiting, for about a second: the operator's time.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let key = tenant(&server, "acme", json!({})).await;
    let claim = json!({"owner": "o", "spec": spec, "ttl": "10m"});
    let (status, claimed) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(claim)).await;
    assert_eq!(status, StatusCode::CREATED, "{claimed}");
    let id = claimed["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;

    let (_, usage) = server.request_as(Some(&key), Method::GET, "/v1/usage", None).await;
    let mine: Vec<&Value> = usage["environments"].as_array().unwrap().iter().filter(|e| e["id"] == id).collect();
    assert_eq!(mine.len(), 1, "{usage}");
    let seconds = mine[0]["running_hours"].as_f64().unwrap() * 3600.0;
    assert!((0.7..1.2).contains(&seconds), "acme pays from the claim (about 0.8 s), not the pool's wait: {seconds}");
    let (_, all) = server.get("/v1/usage").await;
    let operator: Vec<&Value> =
        all["environments"].as_array().unwrap().iter().filter(|e| e["id"] == id && e["tenant"] == "").collect();
    assert_eq!(operator.len(), 1, "the pool's wait is the operator's: {all}");
    let waited = operator[0]["running_hours"].as_f64().unwrap() * 3600.0;
    assert!(waited >= 1.1, "warm in the pool for about 1.2 s: {waited}");

    // A tenant cannot price itself: reserved labels are refused, other labels price nothing.
    let forged = json!({"owner": "o", "spec": {"provider": "sim"}, "labels": {"swim.instance_type": "DEV1-S"}});
    let (status, refused) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(forged)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let (status, _) = server.request_as(Some(&key), Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let forged = json!({"owner": "o", "spec": {"provider": "sim"}, "labels": {"instance_type": "DEV1-S"}, "ttl": "5m"});
    let (status, env) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(forged)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    let other = env["id"].as_str().unwrap().to_owned();
    server.wait_state(&other, "running", secs(10)).await;
    let (_, usage) = server.request_as(Some(&key), Method::GET, "/v1/usage", None).await;
    let row = usage["environments"].as_array().unwrap().iter().find(|e| e["id"] == other).cloned().unwrap();
    assert_eq!(row["hourly"], 1800.0, "priced by its (default) resources: {row}");
}

#[tokio::test]
async fn default_is_no_tenants_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &["--sim", "0"], &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let (status, refused) = server.post("/v1/admin/tenants", json!({"name": "default"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("reserved"), "{refused}");
    let (status, _) = server.post("/v1/admin/tenants/default/keys", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.post("/v1/admin/keys", json!({"scope": "tenant", "tenant": "default"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // What the admin makes has no tenant at all.
    let env = server.create(sim("5m")).await;
    assert_eq!(env["tenant"], Value::Null);
}

#[tokio::test]
async fn the_admin_key_can_come_from_a_file_and_stays_out_of_the_servers_environment() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.key");
    std::fs::write(&file, format!("{ADMIN}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start_with_env(&data, &[], &[("LAPSE_ADMIN_KEY_FILE", file.to_str().unwrap())]).await;
    let (status, _) = server.request_as(None, Method::GET, "/v1/environments", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "keys are on");
    let (status, me) = server.request_as(Some(ADMIN), Method::GET, "/v1/whoami", None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["admin"], true);
    let pid = server.pid().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    for (what, bytes) in [("environ", environ), ("cmdline", cmdline)] {
        assert!(!String::from_utf8_lossy(&bytes).contains(ADMIN), "the key is in the server's {what}");
    }
}

#[tokio::test]
async fn vms_and_a_config_reload_racing_on_one_new_job_make_one_environment_and_no_5xx() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lapse.toml");
    std::fs::write(&config, "").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let args = ["--sim", "0", "--vms-provider", "sim", "--config", config.to_str().unwrap(), "--config-poll", "20ms"];
    let server = Server::start(&data, &args).await;
    let spec = json!({"provider": "sim", "cmd": ["x"]});
    for round in 0..5 {
        let job = format!("race-{round}");
        let next = dir.path().join("next.toml");
        std::fs::write(
            &next,
            format!("[[environment]]\nid = \"{job}\"\nspec = {{ provider = \"sim\", cmd = [\"x\"] }}\n"),
        )
        .unwrap();
        std::fs::rename(&next, &config).unwrap();
        let posts = (0..10).map(|_| server.post("/vms", json!({"job_id": job, "tenant": "lab", "spec": spec})));
        for (status, body) in futures::future::join_all(posts).await {
            assert!(status.is_success() || status == StatusCode::CONFLICT, "{status} {body}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (_, stats) = server.get("/stats").await;
        let jobs = stats["jobs"].as_array().unwrap().iter().filter(|j| j["job_id"] == job).count();
        assert_eq!(jobs, 1, "{stats}");
    }
}

//! `lapse serve` with the scaleway provider (turned on by the seed's `SCW_*` variables)
//! against the schema-strict fake of the Instance API v1 (not the real cloud).

#[path = "../../../lapse-providers/tests/scaleway_fake/mod.rs"]
mod scaleway_fake;

use reqwest::Method;
use serde_json::json;

use crate::harness::{Server, eventually, secs};
use crate::redis_server::RedisServer;
use scaleway_fake::{Fake, ORGANIZATION, PROJECT};

const SECRET: &str = "scw-secret-it-8d2e-dont-leak";
const ACCESS: &str = "SCWITACCESSKEY00";

async fn start(dir: &std::path::Path, fake: &Fake) -> Server {
    let envs = [
        ("SCW_ACCESS_KEY", ACCESS),
        ("SCW_SECRET_KEY", SECRET),
        ("SCW_ORGANIZATION_ID", ORGANIZATION),
        ("SCW_PROJECT_ID", PROJECT),
        ("SCW_DEFAULT_ZONE", "fr-par-1"),
        ("SCW_API_URL", fake.url.as_str()),
    ];
    Server::start_with_env(dir, &["--scaleway-poll-interval", "50ms", "--scaleway-backstop-grace", "1m"], &envs).await
}

#[tokio::test]
async fn an_environment_is_a_server_the_sweep_removes_orphans_and_keys_never_show() {
    let fake = Fake::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &fake).await;
    let body = json!({"owner": "ann", "ttl": "30m", "spec": {
        "provider": "scaleway", "image": "ubuntu_jammy", "user_data": "#cloud-config\npackages: [git]\n",
        "cloud": {"instance_type": "DEV1-S", "security_group": "swim-sg"}}});
    let id = server.create(body).await["id"].as_str().unwrap().to_owned();
    let env = server.wait_state(&id, "running", secs(20)).await;
    let servers = fake.servers();
    assert_eq!(servers.len(), 1, "{}", server.log());
    let s = &servers[0];
    assert_eq!((s.body["commercial_type"].as_str(), s.body["image"].as_str()), (Some("DEV1-S"), Some("ubuntu_jammy")));
    assert!(s.tags.contains(&format!("lapse:environment={id}")));
    assert!(s.tags.contains(&format!("lapse:controller={}", server.controller_id)));
    assert!(s.user_data["cloud-init"].contains("packages: [git]"));
    assert_eq!(s.user_data_set_in_state, ["stopped"], "user data before power-on");
    let host = env["endpoints"][0]["host"].as_str().unwrap_or_default();
    assert!(host.parse::<std::net::Ipv6Addr>().is_ok(), "the routed IPv6 is the endpoint: {env}");

    // An orphan with our controller tag is removed by the sweep; someone else's is not.
    let ours = format!("lapse:controller={}", server.controller_id);
    fake.add_server("fr-par-1", &["lapse:environment=0123456789abcdef0123456789abcdef", &ours], "running");
    fake.add_server("fr-par-1", &["webuser:bob"], "running");
    eventually(secs(20), "the orphan removed", async || (fake.servers().len() == 2).then_some(())).await;
    assert!(fake.servers().iter().any(|s| s.tags == ["webuser:bob"]));

    // Delete powers off and deletes.
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(20)).await;
    assert_eq!(fake.servers().len(), 1);
    let log = fake.log();
    assert!(log.iter().all(|r| r.rejected.is_none()), "every request schema-valid: {log:?}");

    // The keys are never in the API, the events or the log.
    let (_, providers) = server.get("/v1/providers").await;
    let (_, env) = server.get(&format!("/v1/environments/{id}")).await;
    let events = server.events_of(&id).await;
    for text in [providers.to_string(), env.to_string(), json!(events).to_string(), server.log()] {
        assert!(!text.contains(SECRET) && !text.contains(ACCESS), "{text}");
    }
}

#[tokio::test]
async fn without_the_other_variables_the_provider_is_unavailable_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[], &[("SCW_SECRET_KEY", SECRET)]).await;
    let body =
        json!({"owner": "ann", "spec": {"provider": "scaleway", "image": "i", "cloud": {"instance_type": "DEV1-S"}}});
    let (status, answer) = server.post("/v1/environments", body).await;
    assert!(status.is_client_error(), "{status} {answer}");
    assert!(answer.to_string().contains("scaleway"), "refused for the provider: {answer}");
    let log = server.log();
    assert!(log.contains("scaleway provider unavailable") && log.contains("SCW_ACCESS_KEY"), "{log}");
    assert!(!log.contains(SECRET));
}

#[tokio::test]
async fn a_bad_spec_is_a_400_and_a_cloud_refusal_fails_with_its_message_leaving_nothing() {
    let fake = Fake::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &fake).await;
    let (status, answer) = server
        .post("/v1/environments", json!({"owner": "ann", "spec": {"provider": "scaleway", "image": "ubuntu_jammy"}}))
        .await;
    assert_eq!(status.as_u16(), 400, "{answer}");
    assert!(answer.to_string().contains("spec.cloud.instance_type"), "{answer}");
    let (status, answer) = server
        .post(
            "/v1/environments",
            json!({"owner": "ann", "spec": {"provider": "scaleway", "image": "i", "cloud": {"instance_type": "DEV1-S", "zone": "xx"}}}),
        )
        .await;
    assert_eq!(status.as_u16(), 400, "{answer}");
    assert!(fake.log().is_empty() || fake.log().iter().all(|r| r.method == "GET"), "nothing made for a bad spec");

    fake.inject("POST", "/servers", 403, "quota exceeded for DEV1-S", 100);
    let body = json!({"owner": "ann", "spec": {"provider": "scaleway", "image": "ubuntu_jammy", "cloud": {"instance_type": "DEV1-S"}}});
    let id = server.create(body).await["id"].as_str().unwrap().to_owned();
    let failed = server.wait_state(&id, "failed", secs(20)).await;
    assert!(failed.to_string().contains("quota exceeded for DEV1-S"), "{failed}");
    assert!(fake.servers().is_empty());
}

#[tokio::test]
async fn with_scw_access_key_the_swim_queues_default_to_scaleway() {
    let fake = Fake::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&dir.path().join("redis")).await;
    let address = redis.address();
    let envs = [
        ("SCW_ACCESS_KEY", ACCESS),
        ("SCW_SECRET_KEY", SECRET),
        ("SCW_ORGANIZATION_ID", ORGANIZATION),
        ("SCW_PROJECT_ID", PROJECT),
        ("SCW_DEFAULT_ZONE", "fr-par-1"),
        ("SCW_API_URL", fake.url.as_str()),
        ("REDIS_CONNECTION_STRING", address.as_str()),
    ];
    // Today's main refuses to start here ("this build has no scaleway provider").
    let data = dir.path().join("lapse");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start_with_env(&data, &[], &envs).await;
    let (status, _) = server.get("/healthz").await;
    assert!(status.is_success(), "{}", server.log());
    let log = server.log();
    assert!(log.contains("scaleway provider on"), "{log}");
    assert!(!log.contains(SECRET) && !log.contains(ACCESS));
}

/// The SWIM README's provision, on a server whose `SCW_*` variables are set: a Scaleway server
/// as SWIM makes it (type, image, security group, user data before power-on with the lease's
/// backstop), `swim:server:<id>` booted with its IPv6, and a decommission deletes it.
#[tokio::test]
async fn swim_provision_makes_a_scaleway_server_and_decommission_removes_it() {
    let fake = Fake::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&dir.path().join("redis")).await;
    let address = redis.address();
    let data = dir.path().join("lapse");
    std::fs::create_dir_all(data.join("cloud-init")).unwrap();
    std::fs::write(data.join("cloud-init/cloud-init.yml"), "#cloud-config\npackages: [git]\n").unwrap();
    let envs = [
        ("SCW_ACCESS_KEY", ACCESS),
        ("SCW_SECRET_KEY", SECRET),
        ("SCW_ORGANIZATION_ID", ORGANIZATION),
        ("SCW_PROJECT_ID", PROJECT),
        ("SCW_DEFAULT_ZONE", "fr-par-1"),
        ("SCW_API_URL", fake.url.as_str()),
        ("REDIS_CONNECTION_STRING", address.as_str()),
        ("SWIM_PROVISION_DEFAULT_INSTANCE_TYPE", "DEV1-S"),
        ("SWIM_PROVISION_DEFAULT_SECURITY_GROUP", "swim-sg"),
        ("SWIM_PROVISION_DEFAULT_IMAGE_ID", "ubuntu_jammy"),
    ];
    let server = Server::start_with_env(&data, &["--docker", "off"], &envs).await;
    let file = data.join("cloud-init/cloud-init.yml").display().to_string();
    let msg = json!({"WebUsername": "test-user", "LabID": 1234, "CloudInitFile": file, "TTLMinutes": 30}).to_string();
    redis.lpush("swim:provision:queue", &[msg]).await;
    let key = eventually(secs(20), "swim:server booted", async || {
        for k in redis.keys("swim:server:*").await {
            let v: serde_json::Value = serde_json::from_str(&redis.get(&k).await?).ok()?;
            if v["state"] == "booted" {
                return Some(v);
            }
        }
        None
    })
    .await;
    assert!(key["ipv6"].as_str().unwrap().parse::<std::net::Ipv6Addr>().is_ok(), "{key}");
    let s = fake.servers().pop().unwrap();
    assert_eq!((s.body["commercial_type"].as_str(), s.body["image"].as_str()), (Some("DEV1-S"), Some("ubuntu_jammy")));
    assert!(s.body["security_group"].is_string());
    assert_eq!(s.user_data_set_in_state, ["stopped"]);
    assert!(s.user_data["cloud-init"].contains("packages: [git]") && s.user_data["cloud-init"].contains("shutdown -P"));
    redis.lpush("swim:decomission:queue", &[r#"{"WebUsername":"test-user"}"#.to_owned()]).await;
    eventually(secs(20), "the server deleted", async || fake.servers().is_empty().then_some(())).await;
    assert!(fake.log().iter().all(|r| r.rejected.is_none()));
    assert!(!server.log().contains(SECRET));
}

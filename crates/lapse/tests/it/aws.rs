//! The aws provider through `lapse serve`, against a real moto server (one per test, on a
//! loopback port; `LAPSE_MOTO_SERVER` comes from `scripts/test-env.sh`). The instance
//! metadata service is turned off, so the SDK's chains never leave loopback.

use lapse_providers::aws::moto::MotoServer;
use lapse_providers::aws::sdk::types::{Filter, InstanceStateName, Tag};
use lapse_providers::aws::{AwsProvider, TAG_ENVIRONMENT, TAG_KEEP};
use lapse_providers::{Placement, Provider};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, eventually, secs};

const SECRET: &str = "it-SECRET-key-never-in-the-api-9f8e7d6c5b4a";
const ACCESS: &str = "AKIDLAPSEITTEST00001";

/// A moto server of this test's own.
pub(crate) async fn moto() -> MotoServer {
    MotoServer::start(ACCESS, SECRET).await.expect("moto starts (LAPSE_MOTO_SERVER)")
}

async fn start_server(dir: &std::path::Path, envs: &[(&'static str, String)]) -> Server {
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with_env(dir, &[], &envs).await
}

/// The EC2 state of environment `env`'s newest instance (terminated ones included).
async fn ec2_state(p: &AwsProvider, env: &str) -> Option<InstanceStateName> {
    let out = p
        .client()
        .describe_instances()
        .filters(Filter::builder().name(format!("tag:{TAG_ENVIRONMENT}")).values(env).build())
        .send()
        .await
        .unwrap();
    let all: Vec<_> = out.reservations().iter().flat_map(|r| r.instances().iter().cloned()).collect();
    all.last().and_then(|i| i.state().and_then(|s| s.name().cloned()))
}

fn no_secret(what: &str, v: &impl std::fmt::Display) {
    let text = v.to_string();
    assert!(!text.contains(SECRET), "the secret key leaked into {what}: {text}");
}

#[tokio::test]
async fn aws_environment_life_expiry_extend_delete_and_no_credentials_shown() {
    let moto = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &moto.envs()).await;
    let ec2 = moto.provider(&server.controller_id).await.unwrap();

    let (status, providers) = server.get("/v1/providers").await;
    assert_eq!(status, StatusCode::OK);
    let aws = providers["providers"].as_array().unwrap().iter().find(|p| p["name"] == "aws").cloned();
    let aws = aws.unwrap_or_else(|| panic!("aws is listed: {providers}"));
    assert_eq!(aws["available"], true, "{aws}");
    no_secret("/v1/providers", &providers);

    // A bad field is a 400 naming it, and nothing is made.
    let (status, refused) = server
        .post(
            "/v1/environments",
            json!({"owner": "ada", "spec": {"provider": "aws", "cloud": {"instance_type": "huge"}}, "ttl": "1h"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused["error"]["message"].to_string().contains("instance_type"), "{refused}");

    let env = server
        .create(json!({"owner": "ada", "ttl": 3, "on_expiry": "stop",
            "spec": {"provider": "aws", "user_data": "#!/bin/sh\necho hi\n",
                     "cloud": {"instance_type": "t3.micro", "zone": "us-east-1a"}}}))
        .await;
    let id = env["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(20)).await;
    assert!(matches!(ec2_state(&ec2, &id).await, Some(InstanceStateName::Running | InstanceStateName::Pending)));

    // Expiry stops the instance (its disk stays); extend starts it again.
    server.wait_state(&id, "stopped", secs(20)).await;
    let stopped = eventually(secs(10), "EC2 stopped", async || {
        let s = ec2_state(&ec2, &id).await;
        matches!(s, Some(InstanceStateName::Stopped | InstanceStateName::Stopping)).then_some(s)
    })
    .await;
    assert!(stopped.is_some());
    let (status, _) = server.post(&format!("/v1/environments/{id}/extend"), json!({"by": "1h"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.wait_state(&id, "running", secs(30)).await;
    assert!(matches!(ec2_state(&ec2, &id).await, Some(InstanceStateName::Running | InstanceStateName::Pending)));

    // Delete terminates.
    let (status, _) = server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.wait_state(&id, "deleted", secs(20)).await;
    assert!(matches!(
        ec2_state(&ec2, &id).await,
        Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
    ));

    // Credentials appear nowhere: not in the environment, its events, the event list or the log.
    no_secret("the environment", &server.env(&id).await);
    no_secret("its events", &Value::Array(server.events_of(&id).await));
    no_secret("/v1/events", &server.get("/v1/events").await.1);
    no_secret("the server log", &server.log());
}

#[tokio::test]
async fn the_sweep_terminates_an_unrecorded_instance_but_never_a_kept_one() {
    let moto = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &moto.envs()).await;
    // Instances with this server's controller tag that no record knows.
    let ec2 = moto.provider(&server.controller_id).await.unwrap();
    let plain = lapse_core::model::Spec { provider: "aws".into(), ..Default::default() };
    let (orphan, kept) = (lapse_core::model::new_environment_id(), lapse_core::model::new_environment_id());
    ec2.ensure_running(&kept, &Placement::default(), &plain).await.unwrap();
    let k = ec2.inspect(&kept).await.unwrap().unwrap();
    let keep = Tag::builder().key(TAG_KEEP).value("true").build();
    ec2.client().create_tags().resources(&k.provider_ref).tags(keep).send().await.unwrap();
    ec2.ensure_running(&orphan, &Placement::default(), &plain).await.unwrap();

    eventually(secs(20), "the orphan terminated", async || {
        matches!(ec2_state(&ec2, &orphan).await, Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown))
            .then_some(())
    })
    .await;
    // The same sweep saw the kept one: it still runs, and has no record.
    assert_eq!(ec2_state(&ec2, &kept).await, Some(InstanceStateName::Running));
    let (status, _) = server.get(&format!("/v1/environments/{kept}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Recorded once the sweep's batch returns, a moment after EC2 reports the termination.
    eventually(secs(20), "the remove_orphan event", async || {
        server.events_of(&orphan).await.iter().any(|e| e["action"] == "remove_orphan").then_some(())
    })
    .await;
}

#[tokio::test]
async fn without_credentials_aws_is_listed_unavailable_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let home = home.path().to_str().unwrap().to_owned();
    let envs = [
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ("AWS_CONFIG_FILE", format!("{home}/none")),
        ("AWS_SHARED_CREDENTIALS_FILE", format!("{home}/none")),
        ("HOME", home.clone()),
    ];
    let server = start_server(dir.path(), &envs).await;
    let (_, providers) = server.get("/v1/providers").await;
    let aws = providers["providers"].as_array().unwrap().iter().find(|p| p["name"] == "aws").cloned();
    let aws = aws.unwrap_or_else(|| panic!("aws is listed: {providers}"));
    assert_eq!(aws["available"], false, "{aws}");
    assert!(aws["detail"].as_str().unwrap().contains("credentials"), "{aws}");
}

//! Providers as configured instances (`[providers.NAME]`), through `lapse serve`: two aws
//! providers side by side on one moto, each in its own region, each listed with its kind and
//! capabilities; a spec names one and its instance is made in that one's region.

use lapse_providers::aws::TAG_ENVIRONMENT;
use lapse_providers::aws::sdk::types::Filter;
use reqwest::StatusCode;
use serde_json::{Value, json};

use lapse_providers::aws::moto::MotoServer;

use crate::aws::moto;
use crate::harness::{Server, secs};

/// The instances of environment `env` in `region` of this moto.
async fn instances_in(moto: &MotoServer, region: &str, env: &str) -> usize {
    let ec2 = lapse_providers::aws::sdk::Client::new(&moto.loader(region).load().await);
    let out = ec2
        .describe_instances()
        .filters(Filter::builder().name(format!("tag:{TAG_ENVIRONMENT}")).values(env).build())
        .send()
        .await
        .unwrap();
    out.reservations().iter().map(|r| r.instances().len()).sum()
}

fn provider<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["providers"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{name}: {list}"))
}

#[tokio::test]
async fn two_aws_providers_side_by_side_each_in_its_region() {
    let moto = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lapse.toml");
    std::fs::write(
        &config,
        format!(
            "[providers.aws-eu]\nkind = \"aws\"\nregion = \"eu-west-1\"\nendpoint_url = \"{0}\"\nsweep_interval = \"7m\"\n\
             concurrency = 3\n\
             [providers.aws-us]\nkind = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{0}\"\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    // Only the credentials come from the variables; no AWS_REGION, so no implicit `aws`.
    let envs: Vec<(&str, String)> =
        moto.envs().into_iter().filter(|(k, _)| *k != "AWS_REGION" && *k != "AWS_ENDPOINT_URL").collect();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_with_env(dir.path(), &["--config", config.to_str().unwrap()], &envs).await;

    let (status, list) = server.get("/v1/providers").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["providers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"aws-eu") && names.contains(&"aws-us") && !names.contains(&"aws"), "{list}");
    let eu = provider(&list, "aws-eu");
    assert_eq!(eu["kind"], "aws", "{eu}");
    assert_eq!(eu["available"], true, "{eu}");
    assert!(eu["detail"].as_str().unwrap().contains("eu-west-1"), "{eu}");
    assert_eq!(eu["capabilities"]["cloud"], true, "{eu}");
    assert_eq!(eu["capabilities"]["lease_backstop"], true, "{eu}");
    assert_eq!(eu["sweep_interval_secs"], 420, "{eu}");
    assert_eq!(eu["concurrency"], 3, "{eu}");
    // Without its own interval, a provider is swept at the server's (the harness gives one).
    assert_eq!(provider(&list, "aws-us")["sweep_interval_secs"], provider(&list, "process")["sweep_interval_secs"]);
    assert_eq!(provider(&list, "process")["kind"], "process");
    assert_eq!(provider(&list, "process")["capabilities"]["exec"], true);

    // A spec names a provider; its instance is made in that provider's region only.
    let mut ids = Vec::new();
    for name in ["aws-eu", "aws-us"] {
        let env = server.create(json!({"owner": "ada", "ttl": "1h", "spec": {"provider": name}})).await;
        ids.push(env["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        server.wait_state(id, "running", secs(30)).await;
    }
    assert_eq!(
        (instances_in(&moto, "eu-west-1", &ids[0]).await, instances_in(&moto, "us-east-1", &ids[0]).await),
        (1, 0)
    );
    assert_eq!(
        (instances_in(&moto, "eu-west-1", &ids[1]).await, instances_in(&moto, "us-east-1", &ids[1]).await),
        (0, 1)
    );
    // A spec that names no provider of this server is a 400 naming the field.
    let (status, refused) =
        server.post("/v1/environments", json!({"owner": "ada", "spec": {"provider": "aws"}, "ttl": "1h"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused.to_string().contains("provider"), "{refused}");
}

#[tokio::test]
async fn a_bad_provider_table_stops_the_start_with_the_table_and_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lapse.toml");
    std::fs::write(&config, "[providers.scw]\nkind = \"scaleway\"\nsecret_key = \"SCW-in-the-file\"\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[providers.scw]") && text.contains("secret_key_env"), "{text}");
    assert!(!text.contains("SCW-in-the-file"), "{text}");
}

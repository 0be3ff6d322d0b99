//! aws labels as tags through `lapse serve` (a 400 for what EC2 could not carry), the call
//! histogram on `/metrics`, and `lapse bench`'s cloud section in a short run, against a moto
//! server of each test's own (`LAPSE_MOTO_SERVER`).

use std::collections::BTreeMap;

use lapse_providers::aws::TAG_ENVIRONMENT;
use lapse_providers::aws::moto::MotoServer;
use lapse_providers::aws::sdk::types::Filter;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, secs};

const SECRET: &str = "it-SECRET-tags-never-in-the-api-1a2b3c4d";
const ACCESS: &str = "AKIDLAPSEITTAGS00001";

/// A moto server of this test's own.
async fn moto() -> MotoServer {
    MotoServer::start(ACCESS, SECRET).await.expect("moto starts (LAPSE_MOTO_SERVER)")
}

#[tokio::test]
async fn labels_become_tags_with_the_seeds_and_what_ec2_cannot_carry_is_a_400() {
    let moto = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let envs = [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_ACCESS_KEY_ID", ACCESS),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let server = Server::start_with_env(dir.path(), &["--aws-seed-tags"], &envs).await;
    let spec = json!({"provider": "aws", "cloud": {"instance_type": "t3.micro"}});

    let too_many: BTreeMap<String, String> = (0..44).map(|i| (format!("l{i}"), "v".to_owned())).collect();
    for (labels, field) in [(json!(too_many), "labels"), (json!({"ManagedBy": "me"}), "labels.ManagedBy")] {
        let (status, body) =
            server.post("/v1/environments", json!({"owner": "ada", "spec": spec, "ttl": "1h", "labels": labels})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(field), "{body}");
    }
    assert_eq!(server.count_environments().await, 0, "a refused create makes nothing");

    let env = server.create(json!({"owner": "ada", "spec": spec, "ttl": "1h", "labels": {"team": "infra"}})).await;
    let id = env["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(30)).await;
    let out = moto
        .ec2()
        .await
        .describe_instances()
        .filters(Filter::builder().name(format!("tag:{TAG_ENVIRONMENT}")).values(&id).build())
        .send()
        .await
        .unwrap();
    let instance = out.reservations()[0].instances()[0].clone();
    let tags: BTreeMap<&str, &str> = instance.tags().iter().filter_map(|t| Some((t.key()?, t.value()?))).collect();
    assert_eq!(tags.get("team"), Some(&"infra"), "{tags:?}");
    assert_eq!(tags.get("ManagedBy"), Some(&"instance-manager"), "{tags:?}");
    assert!(tags.contains_key("Duration"), "{tags:?}");

    let (status, metrics) = server.raw(reqwest::Method::GET, "/metrics", None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().expect("the text exposition").to_owned();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("lapse_provider_call_seconds_count{") && l.contains("op=\"RunInstances\""))
        .unwrap_or_else(|| panic!("the call histogram is on /metrics: {metrics}"));
    assert!(line.contains("provider=\"aws\"") && line.ends_with(" 1"), "{line}");
    // Overlapping calls count once in the busy time, which never exceeds the durations' sum.
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains("provider=\"aws\""))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    let (busy, summed) = (value("lapse_provider_call_busy_seconds_total{"), value("lapse_provider_call_seconds_sum{"));
    assert!(busy > 0.0 && busy <= summed + 1e-6, "busy {busy} s, summed {summed} s: {metrics}");
    assert!(!metrics.contains(SECRET));
}

#[tokio::test]
async fn the_bench_cloud_section_reports_overhead_and_a_sweep() {
    let moto_program = std::env::var("LAPSE_MOTO_SERVER").expect("LAPSE_MOTO_SERVER is set by scripts/test-env.sh");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["--json", "bench", "--cloud-only", "--cloud-creates", "2", "--cloud-sweep", "20"])
        .env("LAPSE_MOTO_SERVER", moto_program)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(secs(240), out).await.expect("the short bench ends").unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let create = &report["aws_create"];
    assert_eq!(create["creates"], 2, "{report}");
    assert!(create["sdk_total_s"].as_f64().unwrap() > 0.0, "{report}");
    // A share of the wall time (two creates are too few to hold it to the 2% goal).
    let overhead = create["overhead_percent"].as_f64().unwrap();
    assert!(overhead.is_finite() && overhead < 100.0, "{report}");
    assert!(create["sdk_calls_per_create"].as_f64().unwrap() >= 4.0, "{report}");
    let sweep = &report["aws_sweep"];
    assert_eq!(sweep["instances"], 20, "{report}");
    assert_eq!(sweep["orphans_removed"], 10, "{report}");
    assert!(sweep["list_pages"].as_u64().unwrap() >= 1, "{report}");
    assert!(sweep["instances_per_second"].as_f64().unwrap() > 0.0, "{report}");
}

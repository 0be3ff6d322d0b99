//! `lapse bench`'s cloud section, against a moto server (EC2 emulated on loopback: the
//! `LAPSE_MOTO_SERVER` program, else `moto_server` on the PATH; skipped with a line when
//! neither starts).
//!
//! - **Control plane vs SDK** (`aws_create`): `creates` aws environments made one after
//!   another through the HTTP API. For each, the wall time from the server accepting it (its
//!   `create` event) to recording it running (its `transition → running` event), both on the
//!   server's clock, against the time the aws provider spent inside EC2 calls meanwhile (the
//!   wall time with at least one in flight, `lapse_provider_call_busy_seconds_total` of
//!   `/metrics`, read before and after: a launch makes some calls at once). The
//!   overhead is the share of the wall time not inside those calls (goal: under 2%); moto's own
//!   time counts as the cloud's.
//! - **Sweep** (`aws_sweep`): `sweep` instances made straight in moto (one RunInstances with
//!   MinCount = MaxCount) with this server's controller tag, half of them recorded in its store
//!   as running environments, half orphans. The server's first sweep runs as it starts; the
//!   figure is from its serving line to its last `remove_orphan` event (the server's clock),
//!   as instances per second, with the DescribeInstances pages its list took.
//!
//! One aws create before the measured ones is not counted (connections, the key pair's
//! import, the first sweep at start), so no background call falls in a measured window.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lapse_core::model::{Environment, ObservedState, Spec};
use lapse_providers::aws::moto::MotoServer;
use lapse_providers::aws::sdk;
use lapse_providers::aws::sdk::types::{ResourceType, Tag, TagSpecification};
use serde_json::{Value, json};

use super::ServerProcess;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEBgADPnDiIQn0qOOAF8KTqypgMP7s21Sj6xqDT34zZI bench@lapse";

/// What `lapse serve` needs to use `moto` through the `aws` provider.
fn server_env(moto: &MotoServer) -> Vec<(&'static str, String)> {
    let mut envs = moto.envs();
    envs.push(("LAPSE_AWS", "on".into()));
    envs
}

/// Calls and seconds inside `provider`'s backend calls, summed over operations (`op` is
/// `None`) or for one, from a `/metrics` text.
pub fn call_totals(metrics: &str, provider: &str, op: Option<&str>) -> (u64, f64) {
    let mut out = (0u64, 0.0f64);
    for line in metrics.lines() {
        let Some((name, rest)) = line.split_once('{') else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let ours = labels.split(',').any(|l| l == format!("provider=\"{provider}\""))
            && op.is_none_or(|op| labels.split(',').any(|l| l == format!("op=\"{op}\"")));
        if !ours {
            continue;
        }
        match name {
            "lapse_provider_call_seconds_count" => out.0 += value.trim().parse::<u64>().unwrap_or(0),
            "lapse_provider_call_seconds_sum" => out.1 += value.trim().parse::<f64>().unwrap_or(0.0),
            _ => {}
        }
    }
    out
}

/// A counter's value (summed over label sets matching `label`) in a `/metrics` text.
pub fn counter(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// The share of `wall` not spent inside the SDK (`sdk`), as a fraction (0.01 = 1%).
pub fn overhead(wall: Duration, sdk: Duration) -> f64 {
    if wall.is_zero() {
        return f64::NAN;
    }
    (wall.as_secs_f64() - sdk.as_secs_f64()) / wall.as_secs_f64()
}

async fn metrics(server: &ServerProcess) -> anyhow::Result<String> {
    let resp = server.http.get(format!("{}/metrics", server.base)).send().await?;
    Ok(resp.text().await?)
}

/// Runs the cloud section into `report`; skipped (with a line) when moto cannot start.
pub async fn run(
    creates: usize,
    sweep_instances: usize,
    say: &dyn Fn(String),
    report: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let moto = match MotoServer::start("AKIDLAPSEBENCH", "lapse-bench-secret").await {
        Ok(m) => m,
        Err(e) => {
            say(format!("cloud: skipped ({e:#})"));
            return Ok(());
        }
    };
    if creates > 0 {
        say(format!("cloud: {creates} aws creates through the API, against moto ..."));
        report.insert("aws_create".into(), create_overhead(&moto, creates).await?);
    }
    if sweep_instances > 0 {
        say(format!("cloud: a sweep over {sweep_instances} aws instances in moto (half orphans) ..."));
        report.insert("aws_sweep".into(), sweep(&moto, sweep_instances).await?);
    }
    Ok(())
}

async fn create_overhead(moto: &MotoServer, n: usize) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start_with(dir.path(), &server_env(moto)).await?;
    let spec = json!({"provider": "aws", "cloud": {"instance_type": "t2.nano", "ssh_public_keys": [KEY]}});
    let body = json!({"owner": "bench", "spec": spec, "ttl": "1h"});
    // One create not counted: the SDK's connections, the key pair's import and the server's
    // first sweep (at start) are behind us, so no background call falls in a measured window.
    let (_, warm) = server.create(body.clone()).await?;
    server.wait_all(std::slice::from_ref(&warm), "running", Duration::from_secs(120)).await?;
    let mut ids = Vec::with_capacity(n);
    let mut sdk_total = Duration::ZERO;
    let mut sdk_calls = 0;
    for _ in 0..n {
        let text = metrics(&server).await?;
        let (calls_before, _) = call_totals(&text, "aws", None);
        let busy_before = counter(&text, "lapse_provider_call_busy_seconds_total", "provider=\"aws\"");
        let (_, id) = server.create(body.clone()).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let env = server.state(&id).await?;
            match env["state"].as_str() {
                Some("running") => break,
                Some("failed") => bail!("aws environment failed: {}", env["reason"]),
                _ if Instant::now() > deadline => bail!("aws environment {id} not running within 2 min"),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let text = metrics(&server).await?;
        let (calls_after, _) = call_totals(&text, "aws", None);
        let busy_after = counter(&text, "lapse_provider_call_busy_seconds_total", "provider=\"aws\"");
        sdk_calls += calls_after - calls_before;
        // Calls may overlap: the wall time with one in flight, not the durations' sum.
        sdk_total += Duration::from_secs_f64((busy_after - busy_before).max(0.0));
        ids.push(id);
    }
    // Wall time per create on the server's clock: accepted → recorded running.
    let store = lapse_store::Store::open(&dir.path().join("lapse.db")).await?;
    let mut wall = Vec::with_capacity(n);
    for id in &ids {
        let filter = lapse_store::EventFilter { target: Some(id.clone()), limit: 100, ..Default::default() };
        let events = store.events(&filter).await?;
        let created = events.iter().find(|e| e.action == "create").map(|e| e.at);
        let running = events.iter().find(|e| e.action == "transition" && e.outcome == "running").map(|e| e.at);
        match (created, running) {
            (Some(c), Some(r)) => wall.push(Duration::from_millis(u64::try_from(r - c).unwrap_or(0))),
            _ => bail!("environment {id} lacks its create or running event"),
        }
    }
    store.close().await;
    ids.push(warm);
    server.delete_all(&ids).await?;
    let wall_total: Duration = wall.iter().sum();
    let per_create_ms = super::summary(wall.iter().map(|d| d.as_secs_f64() * 1000.0).collect());
    Ok(json!({
        "creates": n,
        "wall_ms": per_create_ms,
        "wall_total_s": wall_total.as_secs_f64(),
        "sdk_total_s": sdk_total.as_secs_f64(),
        "sdk_calls_per_create": sdk_calls as f64 / n.max(1) as f64,
        "overhead_percent": overhead(wall_total, sdk_total) * 100.0,
    }))
}

async fn sweep(moto: &MotoServer, n: usize) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let store = lapse_store::Store::open(&dir.path().join("lapse.db")).await?;
    let controller = store.controller_id().await?;
    let client = moto.ec2().await;
    let t = Instant::now();
    let images = client.describe_images().owners("amazon").send().await.context("DescribeImages")?;
    let ami = images.images().iter().find_map(|i| i.image_id()).context("moto has no amazon image")?.to_owned();
    let count = i32::try_from(n).context("too many instances")?;
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let made = client
        .run_instances()
        .image_id(ami)
        .instance_type(sdk::types::InstanceType::T2Nano)
        .min_count(count)
        .max_count(count)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(tag(lapse_providers::aws::TAG_CONTROLLER, &controller))
                .tags(tag(lapse_providers::aws::TAG_TENANT, ""))
                .build(),
        )
        .send()
        .await
        .context("RunInstances")?;
    let instance_ids: Vec<String> =
        made.instances().iter().filter_map(|i| i.instance_id()).map(str::to_owned).collect();
    if instance_ids.len() != n {
        bail!("moto made {} instances, not {n}", instance_ids.len());
    }
    // Each its own environment id: one CreateTags call each, a few at once.
    let env_ids: Vec<String> = (0..n).map(|_| lapse_core::model::new_environment_id()).collect();
    let mut pairs = instance_ids.iter().cloned().zip(env_ids.iter().cloned()).collect::<Vec<_>>().into_iter();
    loop {
        let batch: Vec<_> = pairs.by_ref().take(16).collect();
        if batch.is_empty() {
            break;
        }
        let mut calls = tokio::task::JoinSet::new();
        for (instance, env) in batch {
            let client = client.clone();
            let env_tag = tag(lapse_providers::aws::TAG_ENVIRONMENT, &env);
            calls.spawn(async move { client.create_tags().resources(instance).tags(env_tag).send().await });
        }
        for r in calls.join_all().await {
            r.context("CreateTags")?;
        }
    }
    // Half recorded, running as the store knows them.
    let now = lapse_core::now_millis();
    let recorded: Vec<Environment> = env_ids
        .iter()
        .zip(&instance_ids)
        .take(n / 2)
        .map(|(env, instance)| {
            let spec = Spec { provider: "aws".into(), ..Default::default() };
            let mut e = Environment::new(env.clone(), "bench".into(), spec, now);
            e.observed = ObservedState::Running;
            e.provider_ref = Some(instance.clone());
            e
        })
        .collect();
    store.insert_many(&recorded, &[]).await?;
    store.close().await;
    let setup = t.elapsed().as_secs_f64();

    let orphans = n - n / 2;
    let server = ServerProcess::start_with(dir.path(), &server_env(moto)).await?;
    let (started, serving_at) = (Instant::now(), lapse_core::now_millis());
    let deadline = started + Duration::from_secs(600);
    // Past the deadline the figures so far are reported, marked incomplete.
    let (text, removed) = loop {
        let text = metrics(&server).await?;
        let removed = counter(&text, "lapse_sweep_orphans_removed_total", "provider=\"aws\"") as usize;
        if removed >= orphans || Instant::now() > deadline {
            break (text, removed);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // From the serving line to the last removal, on the server's clock (the poll only says
    // when to look); the sweep starts as the server does, a few milliseconds before that line.
    let store = lapse_store::Store::open(&dir.path().join("lapse.db")).await?;
    let filter = lapse_store::EventFilter {
        action: Some("remove_orphan".into()),
        limit: u32::try_from(n).unwrap_or(u32::MAX),
        ..Default::default()
    };
    let last = store.events(&filter).await?.iter().map(|e| e.at).max();
    store.close().await;
    let seconds = match last {
        Some(at) if at > serving_at => (at - serving_at) as f64 / 1000.0,
        _ => started.elapsed().as_secs_f64(),
    };
    // The list's pages: DescribeInstances calls beyond the one per batch of orphans removed.
    let (describes, _) = call_totals(&text, "aws", Some("DescribeInstances"));
    let (terminates, _) = call_totals(&text, "aws", Some("TerminateInstances"));
    let (sdk_calls, sdk_secs) = call_totals(&text, "aws", None);
    Ok(json!({
        "instances": n,
        "orphans": orphans,
        "orphans_removed": removed,
        "complete": removed >= orphans,
        "recorded_kept": n / 2,
        "seconds": seconds,
        "instances_per_second": n as f64 / seconds,
        "orphans_removed_per_second": removed as f64 / seconds,
        "list_pages": describes.saturating_sub(removed.div_ceil(lapse_providers::aws::ORPHAN_BATCH) as u64),
        "describe_calls": describes,
        "terminate_calls": terminates,
        "sdk_calls": sdk_calls,
        "sdk_seconds": sdk_secs,
        "setup_seconds": setup,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP lapse_provider_call_seconds Time inside provider calls.
# TYPE lapse_provider_call_seconds histogram
lapse_provider_call_seconds_sum{provider="aws",op="RunInstances"} 0.25
lapse_provider_call_seconds_count{provider="aws",op="RunInstances"} 2
lapse_provider_call_seconds_bucket{le="0.5",provider="aws",op="RunInstances"} 2
lapse_provider_call_seconds_sum{provider="aws",op="DescribeInstances"} 0.5
lapse_provider_call_seconds_count{provider="aws",op="DescribeInstances"} 10
lapse_provider_call_seconds_sum{provider="aws-eu",op="DescribeInstances"} 9
lapse_provider_call_seconds_count{provider="aws-eu",op="DescribeInstances"} 9
lapse_sweep_orphans_removed_total{provider="aws"} 500
lapse_sweep_orphans_removed_total{provider="docker"} 3
# EOF
"#;

    #[test]
    fn reads_call_times_and_counters_from_metrics() {
        assert_eq!(call_totals(METRICS, "aws", None), (12, 0.75));
        assert_eq!(call_totals(METRICS, "aws", Some("DescribeInstances")), (10, 0.5));
        assert_eq!(call_totals(METRICS, "gcp", None), (0, 0.0));
        assert_eq!(counter(METRICS, "lapse_sweep_orphans_removed_total", "provider=\"aws\""), 500.0);
        assert_eq!(counter(METRICS, "lapse_sweep_orphans_removed_total", "provider=\"ovh\""), 0.0);
    }

    #[test]
    fn overhead_is_the_share_outside_the_sdk() {
        let ratio = overhead(Duration::from_millis(1000), Duration::from_millis(985));
        assert!((ratio - 0.015).abs() < 1e-9, "{ratio}");
        assert!(overhead(Duration::ZERO, Duration::ZERO).is_nan());
    }
}

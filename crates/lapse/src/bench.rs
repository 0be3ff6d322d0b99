//! `lapse bench`: starts a server in this process (temporary data dir, SQLite) and measures it
//! over HTTP on loopback. Client and server share this process and the machine's cores; the
//! figures are end-to-end as a user sees them, on this machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use lapse_server::ServerConfig;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Environments created to time API create latency (process provider).
    #[arg(long, default_value_t = 400)]
    creates: usize,
    /// Clients sending those creates at once.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Docker environments timed from create to running, one after another (0 to skip).
    #[arg(long, default_value_t = 10)]
    docker: usize,
    /// Image for the docker measurement.
    #[arg(long, env = "LAPSE_TEST_IMAGE", default_value = "localhost/lapse-busybox:latest")]
    image: String,
    /// Leases whose expiry lateness is measured (TTLs spread over 2 to 6 s).
    #[arg(long, default_value_t = 200)]
    leases: usize,
}

struct Bench {
    http: reqwest::Client,
    base: String,
}

impl Bench {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn create(&self, body: Value) -> anyhow::Result<String> {
        let (status, env) = self.call(reqwest::Method::POST, "/v1/environments", Some(body)).await?;
        if status != 202 {
            bail!("create answered {status}: {env}");
        }
        Ok(env["id"].as_str().context("an id")?.to_owned())
    }

    async fn state(&self, id: &str) -> anyhow::Result<Value> {
        Ok(self.call(reqwest::Method::GET, &format!("/v1/environments/{id}"), None).await?.1)
    }

    async fn wait_all(&self, ids: &[String], state: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        for id in ids {
            while self.state(id).await?["state"] != state {
                if Instant::now() > deadline {
                    bail!("{id} not {state} within {within:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    async fn delete_all(&self, ids: &[String]) -> anyhow::Result<()> {
        for id in ids {
            self.call(reqwest::Method::DELETE, &format!("/v1/environments/{id}"), None).await?;
        }
        self.wait_all(ids, "deleted", Duration::from_secs(120)).await
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut samples: Vec<f64>) -> Value {
    samples.sort_by(f64::total_cmp);
    json!({
        "n": samples.len(),
        "p50": percentile(&samples, 50.0),
        "p99": percentile(&samples, 99.0),
        "max": samples.last().copied().unwrap_or(f64::NAN),
    })
}

pub async fn run(args: BenchArgs, json_out: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("a temporary data dir")?;
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().expect("a literal address");
    config.stop_grace = Duration::from_secs(2);
    let server = lapse_server::start(config).await?;
    let bench = Arc::new(Bench { http: reqwest::Client::new(), base: format!("http://{}", server.addr) });
    let mut report = serde_json::Map::new();
    let say = |line: String| {
        if !json_out {
            eprintln!("{line}");
        }
    };

    // 1. API create latency, process provider, `clients` at once.
    say(format!("create latency: {} creates, {} clients ...", args.creates, args.clients));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients.max(1) {
        let (bench, next, total) = (bench.clone(), next.clone(), args.creates);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let body =
                    json!({"owner": "bench", "spec": {"provider": "process", "cmd": ["sleep", "600"]}, "ttl": "10m"});
                let t = Instant::now();
                let id = bench.create(body).await?;
                out.push((id, t.elapsed().as_secs_f64() * 1000.0));
            }
            anyhow::Ok(out)
        }));
    }
    let mut ids = Vec::new();
    let mut latencies = Vec::new();
    for t in tasks {
        for (id, ms) in t.await.context("a client task")?? {
            ids.push(id);
            latencies.push(ms);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut create = summary(latencies);
    create["per_second"] = json!(args.creates as f64 / elapsed);
    say(format!("  create latency ms: {create}"));
    report.insert("process_create_latency_ms".into(), create);
    let t = Instant::now();
    bench.wait_all(&ids, "running", Duration::from_secs(120)).await?;
    say(format!("  all {} running {:.2} s after the last create", ids.len(), t.elapsed().as_secs_f64()));
    bench.delete_all(&ids).await?;

    // 2. Docker: create to running, one at a time.
    let (_, providers) = bench.call(reqwest::Method::GET, "/v1/providers", None).await?;
    let docker_up = providers["providers"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["name"] == "docker" && p["available"] == true));
    if args.docker > 0 && docker_up {
        say(format!("docker create → running: {} containers of {} ...", args.docker, args.image));
        let mut seconds = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..args.docker {
            let t = Instant::now();
            let id = bench.create(json!({"owner": "bench", "spec": {"provider": "docker", "image": args.image, "cmd": ["sleep", "600"]}, "ttl": "10m"})).await?;
            loop {
                let env = bench.state(&id).await?;
                if env["state"] == "running" {
                    break;
                }
                if env["state"] == "failed" {
                    bail!("docker environment failed: {}", env["reason"]);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seconds.push(t.elapsed().as_secs_f64());
            ids.push(id);
        }
        let docker = summary(seconds);
        say(format!("  create → running s: {docker}"));
        report.insert("docker_create_to_running_s".into(), docker);
        bench.delete_all(&ids).await?;
    } else {
        say("docker: skipped (no Docker Engine API answered, or --docker 0)".into());
        report.insert("docker_create_to_running_s".into(), Value::Null);
    }

    // 3. Expiry lateness: how long after expires_at each lease was acted on.
    say(format!("expiry lateness: {} leases with TTLs of 2 to 6 s ...", args.leases));
    let mut ids = Vec::new();
    for i in 0..args.leases {
        let ttl = 2 + (i % 5);
        ids.push(
            bench
                .create(json!({"owner": "bench", "spec": {"provider": "process", "cmd": ["sleep", "600"]}, "ttl": ttl}))
                .await?,
        );
    }
    bench.wait_all(&ids, "stopped", Duration::from_secs(120)).await?;
    let mut lateness = Vec::new();
    for id in &ids {
        let env = bench.state(id).await?;
        let at = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(env[k].as_str().unwrap_or_default()).map(|t| t.timestamp_millis())
        };
        if let (Ok(expires), Ok(expired)) = (at("expires_at"), at("expired_at")) {
            lateness.push((expired - expires) as f64);
        }
    }
    let late = summary(lateness);
    say(format!("  expiry lateness ms: {late}"));
    report.insert("expiry_lateness_ms".into(), late);
    bench.delete_all(&ids).await?;

    server.shutdown().await;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&Value::Object(report))?);
    } else {
        println!("{:<34} {:>10} {:>10} {:>10}", "figure", "p50", "p99", "max");
        for (name, v) in &report {
            if v.is_null() {
                println!("{name:<34} {:>10}", "skipped");
                continue;
            }
            println!(
                "{name:<34} {:>10.2} {:>10.2} {:>10.2}",
                v["p50"].as_f64().unwrap_or(f64::NAN),
                v["p99"].as_f64().unwrap_or(f64::NAN),
                v["max"].as_f64().unwrap_or(f64::NAN)
            );
        }
        if let Some(rate) = report.get("process_create_latency_ms").and_then(|v| v["per_second"].as_f64()) {
            println!("creates per second ({} clients): {rate:.0}", args.clients);
        }
    }
    Ok(())
}

//! `lapse bench`: runs `lapse serve` as a child process (temporary data dir, SQLite) and
//! measures it over HTTP on loopback, printing every figure of one run. The client runs in
//! this process; both share the machine's cores.
//!
//! Sections: `process` create latency; `docker` create → running (when a Docker API answers);
//! expiry lateness of short leases; the write path beside an HTTP floor measured in the same
//! run ([`write_path`]: the floor, warm claims by 200 closed-loop clients and offered at
//! 2,000/s in an open loop, create throughput and pool refill rate with the `sim` provider at
//! zero latency, their ratios to the floor and issue 14's `goals`); and the scale run:
//! many leases with TTLs spread over minutes (server RSS, restart time, expiry lateness); the
//! SWIM Redis queues (requests per second into desired state; lost and duplicated requests
//! across a `kill -9` of the server mid-run); and the cloud section against moto ([`cloud`]:
//! control-plane time per aws create against the time inside EC2 calls, and a sweep over
//! 1,000 instances); and the routing proxy ([`proxy`]: requests per second and the latency
//! it adds against a direct connection to the same backend); warm claims through a pool's
//! claim hook against claims without one ([`claim_hook`]); and the S3 workspace push
//! ([`s3`]: MB/s of a 100 MiB workspace's final push to moto); and, alone, replicas on
//! PostgreSQL ([`replicas`]: one against three, failover after `kill -9` of the leader).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

mod claim_hook;
#[cfg(feature = "aws")]
mod cloud;
mod load;
mod proxy;
mod replicas;
#[cfg(all(feature = "aws", feature = "s3"))]
mod s3;
mod write_path;

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
    /// Short leases whose expiry lateness is measured (TTLs of 2 to 6 s).
    #[arg(long, default_value_t = 200)]
    short_leases: usize,
    /// Warm claims, sent by `claim_clients` clients at once from a pool that holds them all.
    #[arg(long, default_value_t = 2_000)]
    claims: usize,
    /// Clients at once for the warm claims, the HTTP floor and the offered claims.
    #[arg(long, default_value_t = 200)]
    claim_clients: usize,
    /// Requests to the HTTP floor (`POST /v1/bench/floor`), by `claim_clients` clients.
    #[arg(long, default_value_t = 20_000)]
    floor_requests: usize,
    /// Warm claims offered at 2,000/s (open loop) from a pool that holds them all (0 to skip).
    #[arg(long, default_value_t = 10_000)]
    offered_claims: usize,
    /// Run only the write-path figures (HTTP floor, warm claims closed and open loop, sim
    /// creates, pool refill, SWIM ingest) and their goals.
    #[arg(long)]
    write_path_only: bool,
    /// With `--write-path-only`: the bench's server keeps its store here (`postgres://...`,
    /// an empty database: the bench fills it), instead of SQLite in a temporary directory.
    // `--help` never shows the value: it may hold a password.
    #[arg(long, env = "LAPSE_BENCH_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// `sim` creates for the throughput figure.
    #[arg(long, default_value_t = 20_000)]
    sim_creates: usize,
    /// Pool members for the refill figure.
    #[arg(long, default_value_t = 5_000)]
    refill: usize,
    /// Leases of the scale run (0 to skip it).
    #[arg(long, default_value_t = 100_000)]
    leases: usize,
    /// Head start of the scale run's first TTL (creating the leases and the restart happen in it).
    #[arg(long, default_value = "2m", value_parser = |s: &str| lapse_core::duration::parse_duration(s).map_err(|e| e.to_string()))]
    head: Duration,
    /// The scale run's TTLs are spread evenly over this span, after the head start.
    #[arg(long, default_value = "10m", value_parser = |s: &str| lapse_core::duration::parse_duration(s).map_err(|e| e.to_string()))]
    spread: Duration,
    /// SWIM provision requests pushed to Redis for the queue figures (0 to skip; needs
    /// `redis-server` on the PATH).
    #[arg(long, default_value_t = 20_000)]
    swim: usize,
    /// Run only the SWIM queue section.
    #[arg(long)]
    swim_only: bool,
    /// aws environments created through the API against moto, one after another, for the
    /// control-plane overhead figure (0 to skip; needs moto: `LAPSE_MOTO_SERVER` or
    /// `moto_server` on the PATH).
    #[arg(long, default_value_t = 20)]
    cloud_creates: usize,
    /// Instances in moto for the sweep figure, half of them orphans (0 to skip).
    #[arg(long, default_value_t = 1_000)]
    cloud_sweep: usize,
    /// Run only the cloud section.
    #[arg(long)]
    cloud_only: bool,
    /// Requests for each of the proxy's figures (latency one at a time, throughput by
    /// `proxy_clients`), direct and through the proxy (0 to skip).
    #[arg(long, default_value_t = 5_000)]
    proxy_requests: usize,
    /// Clients at once for the proxy's throughput figure.
    #[arg(long, default_value_t = 32)]
    proxy_clients: usize,
    /// Run only the proxy section.
    #[arg(long)]
    proxy_only: bool,
    /// Warm claims from a pool with an `on_claim` exec hook and from one without, for the
    /// hook's cost (0 to skip).
    #[arg(long, default_value_t = 200)]
    hook_claims: usize,
    /// Clients at once for the claim-hook figure.
    #[arg(long, default_value_t = 8)]
    hook_clients: usize,
    /// Run only the claim-hook section.
    #[arg(long)]
    hook_only: bool,
    /// MiB of the workspace the S3 section pushes to moto (0 to skip; needs moto).
    #[arg(long, default_value_t = 100)]
    s3_mb: usize,
    /// Run only the S3 workspace section.
    #[arg(long)]
    s3_only: bool,
    /// Run only the replicas section (needs `--database postgres://...`, an empty database):
    /// creates and claims on one replica against three, and the failover time after a
    /// `kill -9` of the leader.
    #[arg(long)]
    replicas_only: bool,
}

/// A `lapse serve` child process.
struct ServerProcess {
    child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
}

impl ServerProcess {
    async fn start(dir: &std::path::Path) -> anyhow::Result<ServerProcess> {
        Self::start_with(dir, &[]).await
    }

    async fn start_with(dir: &std::path::Path, envs: &[(&str, String)]) -> anyhow::Result<ServerProcess> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log"))?;
        let mut child = tokio::process::Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--sim", "0", "--stop-grace", "2s", "--data-dir"])
            .arg(dir)
            .env("LAPSE_LOG", std::env::var("LAPSE_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting lapse serve")?;
        let stdout = child.stdout.take().context("stdout")?;
        let line = BufReader::new(stdout).lines().next_line().await?.context("lapse serve exited at start")?;
        let base = line.strip_prefix("lapse serving on ").context("the serving line")?.trim().to_owned();
        let http = reqwest::Client::builder().pool_max_idle_per_host(512).build()?;
        Ok(ServerProcess { child, base, http })
    }

    fn rss_mb(&self) -> f64 {
        let Some(pid) = self.child.id() else { return f64::NAN };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }

    async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn create(&self, body: Value) -> anyhow::Result<(u16, String)> {
        let (status, env) = self.call(Method::POST, "/v1/environments", Some(body)).await?;
        if status != 201 && status != 202 {
            bail!("create answered {status}: {env}");
        }
        Ok((status, env["id"].as_str().context("an id")?.to_owned()))
    }

    async fn state(&self, id: &str) -> anyhow::Result<Value> {
        Ok(self.call(Method::GET, &format!("/v1/environments/{id}"), None).await?.1)
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
            self.call(Method::DELETE, &format!("/v1/environments/{id}"), None).await?;
        }
        self.wait_all(ids, "deleted", Duration::from_secs(300)).await
    }

    /// Waits until the reconciler has nothing queued or running.
    async fn wait_idle(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while self.call(Method::GET, "/v1/status", None).await?.1["backlog"] != 0 {
            if Instant::now() > deadline {
                bail!("the reconciler still has work after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn wait_warm(&self, pool: &str, warm: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while self.call(Method::GET, &format!("/v1/pools/{pool}"), None).await?.1["warm"] != warm {
            if Instant::now() > deadline {
                bail!("pool {pool} not at {warm} warm within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
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
    json!({"n": samples.len(), "p50": percentile(&samples, 50.0), "p99": percentile(&samples, 99.0), "max": samples.last().copied().unwrap_or(f64::NAN)})
}

/// Sends `total` requests from `clients` tasks; returns each one's (status, id, ms).
async fn fan_out(
    server: &Arc<ServerProcess>,
    total: usize,
    clients: usize,
    body: impl Fn(usize) -> Value + Send + Sync + 'static,
) -> anyhow::Result<Vec<(u16, String, f64)>> {
    let next = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(body);
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (server, next, body) = (server.clone(), next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                let (status, id) = server.create(body(i)).await?;
                out.push((status, id, t.elapsed().as_secs_f64() * 1000.0));
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.context("a client task")??);
    }
    Ok(all)
}

/// `total` claims of `spec` by `clients` at once: latency of the warm (201) ones, and how many
/// were cold (202).
async fn claims(server: &Arc<ServerProcess>, spec: &Value, total: usize, clients: usize) -> anyhow::Result<Value> {
    let spec = spec.clone();
    let results =
        fan_out(server, total, clients, move |_| json!({"owner": "bench", "spec": spec, "ttl": "1h"})).await?;
    let warm: Vec<f64> = results.iter().filter(|r| r.0 == 201).map(|r| r.2).collect();
    let cold = results.len() - warm.len();
    let mut out = summary(warm);
    out["cold_202"] = json!(cold);
    Ok(out)
}

pub async fn run(args: BenchArgs, json_out: bool) -> anyhow::Result<()> {
    if args.write_path_only {
        let mut report = serde_json::Map::new();
        let say = |line: String| {
            if !json_out {
                eprintln!("{line}");
            }
        };
        write_path::run_alone(&args, json_out, &say, &mut report).await?;
        return print_report(report, json_out);
    }
    if args.swim_only {
        let mut report = serde_json::Map::new();
        swim(&args, json_out, &mut report).await?;
        return print_report(report, json_out);
    }
    if args.cloud_only {
        let mut report = serde_json::Map::new();
        cloud_section(&args, json_out, &mut report).await?;
        return print_report(report, json_out);
    }
    if args.proxy_only {
        let mut report = serde_json::Map::new();
        proxy_section(&args, json_out, &mut report).await?;
        return print_report(report, json_out);
    }
    if args.replicas_only {
        let mut report = serde_json::Map::new();
        let say = |line: String| {
            if !json_out {
                eprintln!("{line}");
            }
        };
        replicas::run(&args, &say, &mut report).await?;
        return print_report(report, json_out);
    }
    if args.s3_only {
        let mut report = serde_json::Map::new();
        s3_section(&args, json_out, &mut report).await?;
        return print_report(report, json_out);
    }
    if args.hook_only {
        let mut report = serde_json::Map::new();
        hook_section(&args, json_out, &mut report).await?;
        return print_report(report, json_out);
    }
    let dir = tempfile::tempdir().context("a temporary data dir")?;
    let mut server = Arc::new(ServerProcess::start_with(dir.path(), &[(write_path::FLOOR_ENV, "1".into())]).await?);
    let mut report = serde_json::Map::new();
    let say = |line: String| {
        if !json_out {
            eprintln!("{line}");
        }
    };
    let process_body =
        |_| json!({"owner": "bench", "spec": {"provider": "process", "cmd": ["sleep", "600"]}, "ttl": "10m"});

    // 1. API create latency with the process provider.
    say(format!("process create latency: {} creates, {} clients ...", args.creates, args.clients));
    let results = fan_out(&server, args.creates, args.clients, process_body).await?;
    let ids: Vec<String> = results.iter().map(|r| r.1.clone()).collect();
    report.insert("process_create_ms".into(), summary(results.iter().map(|r| r.2).collect()));
    server.wait_all(&ids, "running", Duration::from_secs(120)).await?;
    server.delete_all(&ids).await?;

    // 2. Docker: create to running, one at a time.
    let (_, providers) = server.call(Method::GET, "/v1/providers", None).await?;
    let docker_up = providers["providers"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["name"] == "docker" && p["available"] == true));
    if args.docker > 0 && docker_up {
        say(format!("docker create → running: {} containers of {} ...", args.docker, args.image));
        let mut seconds = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..args.docker {
            let t = Instant::now();
            let (_, id) = server.create(json!({"owner": "bench", "spec": {"provider": "docker", "image": args.image, "cmd": ["sleep", "600"]}, "ttl": "10m"})).await?;
            loop {
                let env = server.state(&id).await?;
                match env["state"].as_str() {
                    Some("running") => break,
                    Some("failed") => bail!("docker environment failed: {}", env["reason"]),
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            seconds.push(t.elapsed().as_secs_f64());
            ids.push(id);
        }
        report.insert("docker_create_to_running_s".into(), summary(seconds));
        server.delete_all(&ids).await?;
    } else {
        say("docker: skipped (no Docker Engine API answered, or --docker 0)".into());
    }

    // 3. Expiry lateness of short leases.
    say(format!("expiry lateness: {} leases with TTLs of 2 to 6 s ...", args.short_leases));
    let results = fan_out(
        &server,
        args.short_leases,
        4,
        |i| json!({"owner": "short", "spec": {"provider": "process", "cmd": ["sleep", "600"]}, "ttl": 2 + (i % 5)}),
    )
    .await?;
    let ids: Vec<String> = results.into_iter().map(|r| r.1).collect();
    server.wait_all(&ids, "stopped", Duration::from_secs(120)).await?;
    let store = lapse_store::Store::open(&dir.path().join("lapse.db")).await?;
    report.insert(
        "short_lease_expiry_lateness_ms".into(),
        summary(store.expiry_lateness("short").await?.into_iter().map(|v| v as f64).collect()),
    );
    server.delete_all(&ids).await?;

    // 4-6. The write path beside the HTTP floor: warm claims (closed and open loop), create
    // throughput with the sim provider at zero latency, pool refill ([`write_path`]).
    write_path::measure(&server, &args, &say, &mut report).await?;

    // 7. Scale: many leases, TTLs spread; RSS; kill -9 and restart; expiry lateness.
    if args.leases > 0 {
        let head = args.head;
        say(format!("scale: {} leases, TTLs from {head:?} spread over {:?} ...", args.leases, args.spread));
        let (n, spread_ms) = (args.leases, args.spread.as_millis() as usize);
        let t = Instant::now();
        fan_out(&server, n, 64, move |i| {
            let ttl_s = (head.as_millis() as usize + i * spread_ms / n.max(1)) / 1000;
            json!({"owner": "scale", "spec": {"provider": "sim", "cmd": ["lease"]}, "ttl": ttl_s, "on_expiry": "stop"})
        })
        .await?;
        server.wait_idle(Duration::from_secs(600)).await?;
        say(format!("  created in {:.1} s", t.elapsed().as_secs_f64()));
        report.insert("scale_rss_mb".into(), json!(server.rss_mb()));

        // Restart: serving and timers rebuilt.
        Arc::get_mut(&mut server).context("no client holds the server")?.kill9().await;
        let t = Instant::now();
        server = Arc::new(ServerProcess::start(dir.path()).await?);
        let (_, status) = server.call(Method::GET, "/v1/status", None).await?;
        let restart = t.elapsed().as_secs_f64();
        say(format!("  restarted in {restart:.2} s with {} timers", status["timers"]));
        report.insert("scale_restart_s".into(), json!(restart));
        report.insert("scale_rss_after_restart_mb".into(), json!(server.rss_mb()));

        // Wait for every lease to run out.
        let deadline = Instant::now() + head + args.spread + Duration::from_secs(120);
        loop {
            let expired = store.expiry_lateness("scale").await?.len();
            if expired >= n {
                break;
            }
            if Instant::now() > deadline {
                bail!("only {expired} leases ran out in time");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let lateness = store.expiry_lateness("scale").await?;
        report.insert("scale_expiry_lateness_ms".into(), summary(lateness.into_iter().map(|v| v as f64).collect()));
        report.insert("scale_rss_end_mb".into(), json!(server.rss_mb()));
    }
    store.close().await;
    drop(server);
    if args.swim > 0 {
        swim(&args, json_out, &mut report).await?;
    }
    cloud_section(&args, json_out, &mut report).await?;
    proxy_section(&args, json_out, &mut report).await?;
    s3_section(&args, json_out, &mut report).await?;
    hook_section(&args, json_out, &mut report).await?;
    write_path::finish(&mut report);
    print_report(report, json_out)
}

/// Warm claims with and without a claim hook ([`claim_hook`]).
async fn hook_section(
    args: &BenchArgs,
    json_out: bool,
    report: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let say = |line: String| {
        if !json_out {
            eprintln!("{line}");
        }
    };
    if args.hook_claims > 0 {
        claim_hook::run(args.hook_claims, args.hook_clients, &say, report).await?;
    }
    Ok(())
}

/// The routing proxy's section ([`proxy`]).
async fn proxy_section(
    args: &BenchArgs,
    json_out: bool,
    report: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let say = |line: String| {
        if !json_out {
            eprintln!("{line}");
        }
    };
    if args.proxy_requests > 0 {
        proxy::run(args.proxy_requests, args.proxy_clients, &say, report).await?;
    }
    Ok(())
}

/// The S3 workspace section ([`s3`]), when built with the `aws` (moto) and `s3` features.
async fn s3_section(
    args: &BenchArgs,
    json_out: bool,
    report: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let say = |line: String| {
        if !json_out {
            eprintln!("{line}");
        }
    };
    #[cfg(all(feature = "aws", feature = "s3"))]
    if args.s3_mb > 0 {
        s3::run(args.s3_mb, &say, report).await?;
    }
    #[cfg(not(all(feature = "aws", feature = "s3")))]
    {
        let _ = (args, report);
        say("s3: skipped (built without the aws and s3 features)".into());
    }
    Ok(())
}

/// The cloud section ([`cloud`]), when built with the `aws` feature.
async fn cloud_section(
    args: &BenchArgs,
    json_out: bool,
    report: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let say = |line: String| {
        if !json_out {
            eprintln!("{line}");
        }
    };
    #[cfg(feature = "aws")]
    if args.cloud_creates > 0 || args.cloud_sweep > 0 {
        cloud::run(args.cloud_creates, args.cloud_sweep, &say, report).await?;
    }
    #[cfg(not(feature = "aws"))]
    {
        let _ = (args, report);
        say("cloud: skipped (built without the aws feature)".into());
    }
    Ok(())
}

fn print_report(report: serde_json::Map<String, Value>, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&Value::Object(report))?);
    } else {
        for (name, v) in &report {
            println!("{name:<34} {v}");
        }
    }
    Ok(())
}

/// A `redis-server` child on a free loopback port, without persistence.
struct RedisProcess {
    _child: tokio::process::Child,
    address: String,
}

impl RedisProcess {
    async fn start() -> anyhow::Result<RedisProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = tokio::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (is it installed? `scripts/test` installs it)")?;
        let address = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if let Ok(mut c) = Self::connect(&address).await
                && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
            {
                return Ok(RedisProcess { _child: child, address });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server did not answer on {address}")
    }

    async fn connect(address: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(format!("redis://{address}"))?
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60))),
            )
            .await
    }

    async fn push(&self, messages: &[String]) -> anyhow::Result<()> {
        let mut c = Self::connect(&self.address).await?;
        for chunk in messages.chunks(1000) {
            let _: i64 = redis::cmd("LPUSH").arg("swim:provision:queue").arg(chunk).query_async(&mut c).await?;
        }
        Ok(())
    }
}

async fn processed(server: &ServerProcess) -> anyhow::Result<u64> {
    let (_, view) = server.call(Method::GET, "/v1/queues", None).await?;
    view["queues"][0]["processed"].as_u64().context("a processed count")
}

/// SWIM queues: requests per second from Redis into committed desired state (`sim` provider,
/// zero latency), then the same with the server killed (-9) and restarted mid-run, counting
/// lost and duplicated requests.
async fn swim(args: &BenchArgs, json_out: bool, report: &mut serde_json::Map<String, Value>) -> anyhow::Result<()> {
    let say = |line: String| {
        if !json_out {
            eprintln!("{line}");
        }
    };
    let redis = match RedisProcess::start().await {
        Ok(r) => r,
        Err(e) => {
            say(format!("swim: skipped ({e:#})"));
            return Ok(());
        }
    };
    let dir = tempfile::Builder::new().disable_cleanup(std::env::var_os("LAPSE_BENCH_KEEP").is_some()).tempdir()?;
    let data = dir.path().join("lapse");
    // Cloud-init files are read only beneath the server's cloud-init dir (default: in its data dir).
    std::fs::create_dir_all(data.join("cloud-init"))?;
    let cloud_init = data.join("cloud-init/cloud-init.yml");
    std::fs::write(&cloud_init, "#cloud-config\n")?;
    let envs = [("REDIS_CONNECTION_STRING", redis.address.clone()), ("SWIM_PROVIDER", "sim".to_owned())];
    let mut server = ServerProcess::start_with(&data, &envs).await?;
    let n = args.swim;
    // Request `i` is lab `i + 1`: a LabID is non-zero, as in the seed.
    let message = |user: &str, i: usize| {
        json!({"WebUsername": user, "LabID": i + 1, "CloudInitFile": cloud_init, "TTLMinutes": 60}).to_string()
    };

    say(format!("swim: {n} provision requests from Redis into desired state ..."));
    let batch: Vec<String> = (0..n).map(|i| message("bench", i)).collect();
    let t = Instant::now();
    redis.push(&batch).await?;
    while processed(&server).await? < n as u64 {
        if t.elapsed() > Duration::from_secs(600) {
            bail!("the queue was not drained in 10 min");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = t.elapsed().as_secs_f64();
    report.insert("swim_requests_per_second".into(), json!(n as f64 / seconds));
    server.wait_idle(Duration::from_secs(600)).await?;

    say(format!("swim: {n} more, the server killed (-9) a quarter of the way and restarted ..."));
    let batch: Vec<String> = (0..n).map(|i| message("crash", i)).collect();
    redis.push(&batch).await?;
    let kill_at = (n + n / 4) as u64;
    let t = Instant::now();
    let mut at_kill = 0;
    while at_kill < kill_at {
        at_kill = processed(&server).await?;
        if t.elapsed() > Duration::from_secs(600) {
            bail!("the queue was not consumed in 10 min");
        }
    }
    server.kill9().await;
    let mut c = RedisProcess::connect(&redis.address).await?;
    let in_flight: u64 = redis::cmd("LLEN").arg("swim:provision:queue:processing").query_async(&mut c).await?;
    server = ServerProcess::start_with(&data, &envs).await?;
    while processed(&server).await? < 2 * n as u64 {
        if t.elapsed() > Duration::from_secs(600) {
            bail!("after the restart the queue was not drained in 10 min");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Whatever was in flight at the kill is handled by now; give a late duplicate time to show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let store = lapse_store::Store::open(&data.join("lapse.db")).await?;
    let filter = lapse_store::ListFilter { owner: Some("crash".into()), limit: Some(u32::MAX), ..Default::default() };
    let mut per_lab = vec![0usize; n];
    for env in store.list(&filter).await? {
        let request =
            env.labels.get("swim.lab_id").and_then(|l| l.parse::<usize>().ok()).and_then(|l| l.checked_sub(1));
        if let Some(i) = request.filter(|i| *i < n) {
            per_lab[i] += 1;
        }
    }
    store.close().await;
    let lost = per_lab.iter().filter(|c| **c == 0).count();
    let duplicated: usize = per_lab.iter().map(|c| c.saturating_sub(1)).sum();
    report.insert(
        "swim_kill9_mid_run".into(),
        json!({"requests": n, "killed_after": at_kill - n as u64, "in_processing_list_at_kill": in_flight,
               "lost": lost, "duplicated": duplicated,
               "seconds": t.elapsed().as_secs_f64()}),
    );
    Ok(())
}

//! `lapse bench --replicas-only --database postgres://...`: one replica against three on one
//! PostgreSQL database, and the failover time.
//!
//! - `replicas_1` and `replicas_3`: `sim` creates by 64 closed-loop clients, then warm claims
//!   by `claim_clients` from a pool, the clients spread evenly over the replicas. The three
//!   are the first one plus two started beside it (same database, more rows by then). All
//!   replicas and the client share this machine's cores: the ratio says what a second and
//!   third process cost or give here, not what three machines would.
//! - `failover_ms`: from `kill -9` of the replica that leads to another one's `/v1/status`
//!   saying `leader` (polled every 10 ms), for each of `failovers` kills (the killed one is
//!   started again in between).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::load::{Conn, closed_loop};
use super::write_path::{claim_body, only_claims, poster};
use super::{BenchArgs, ServerProcess, summary};

/// Kills of the leader measured for `failover_ms`.
const FAILOVERS: usize = 3;

/// Runs the section into `report` (see the module docs).
pub async fn run(args: &BenchArgs, say: &impl Fn(String), report: &mut Map<String, Value>) -> anyhow::Result<()> {
    let url = args.database.clone().context("--replicas-only needs --database postgres://... (an empty database)")?;
    if !url.starts_with("postgres") {
        bail!("--replicas-only needs a PostgreSQL --database");
    }
    let envs = [("LAPSE_DATABASE", url)];
    let dirs: Vec<tempfile::TempDir> =
        (0..3).map(|_| tempfile::tempdir()).collect::<Result<_, _>>().context("temporary data dirs")?;
    let mut servers = vec![Arc::new(ServerProcess::start_with(dirs[0].path(), &envs).await?)];
    wait_leader(&[servers[0].as_ref()], Duration::from_secs(30)).await?;
    report.insert("store".into(), json!("postgres"));
    say("replicas: 1 ...".into());
    report.insert("replicas_1".into(), figures(&servers, args, "one", say).await?);
    for dir in &dirs[1..] {
        servers.push(Arc::new(ServerProcess::start_with(dir.path(), &envs).await?));
    }
    say("replicas: 3 ...".into());
    report.insert("replicas_3".into(), figures(&servers, args, "three", say).await?);
    let ratio = |key: &str| {
        let of = |n: &str| report.get(n).and_then(|r| r[key].as_f64());
        of("replicas_3").zip(of("replicas_1")).map(|(three, one)| three / one)
    };
    let ratios = json!({"creates": ratio("creates_per_second"), "claims": ratio("claims_per_second")});
    report.insert("replicas_3_over_1".into(), ratios);

    let mut servers: Vec<ServerProcess> = servers
        .into_iter()
        .map(|s| Arc::try_unwrap(s).map_err(|_| anyhow::anyhow!("a replica is still in use")))
        .collect::<Result<_, _>>()?;
    let mut took = Vec::new();
    for _ in 0..FAILOVERS {
        let lead = wait_leader(&servers.iter().collect::<Vec<_>>(), Duration::from_secs(30)).await?;
        servers[lead].kill9().await;
        let killed = Instant::now();
        let others: Vec<&ServerProcess> =
            servers.iter().enumerate().filter(|(n, _)| *n != lead).map(|(_, s)| s).collect();
        wait_leader(&others, Duration::from_secs(60)).await.context("after a kill -9 of the leader")?;
        let ms = killed.elapsed().as_secs_f64() * 1000.0;
        say(format!("  failover after kill -9 of the leader: {ms:.0} ms"));
        took.push(ms);
        servers[lead] = ServerProcess::start_with(dirs[lead].path(), &envs).await?;
    }
    report.insert("failover_ms".into(), summary(took));
    Ok(())
}

/// Creates and claims with the clients spread over `servers`.
async fn figures(
    servers: &[Arc<ServerProcess>],
    args: &BenchArgs,
    tag: &str,
    say: &impl Fn(String),
) -> anyhow::Result<Value> {
    let spread = |n: usize| -> Vec<String> { (0..n.max(1)).map(|i| servers[i % servers.len()].base.clone()).collect() };
    let open = async |bases: Vec<String>| -> anyhow::Result<Vec<Conn>> {
        let mut conns = Vec::with_capacity(bases.len());
        for base in bases {
            conns.push(Conn::open(&base).await?);
        }
        Ok(conns)
    };
    let creates = args.sim_creates.min(5_000);
    let create = claim_body(&json!({"provider": "sim", "cmd": ["cold", tag]}));
    let run = closed_loop(open(spread(64)).await?, creates, poster("/v1/environments", create)).await?;
    only_claims(&run, "sim creates")?;
    let creates_per_second = run.per_second();
    for s in servers {
        s.wait_idle(Duration::from_secs(600)).await?;
    }
    say(format!("  {creates_per_second:.0} sim creates/s"));

    let claims = args.claims.min(5_000);
    let spec = json!({"provider": "sim", "cmd": ["warm", tag], "ports": [8080]});
    let pool = format!("bench-{tag}");
    servers[0].call(Method::PUT, &format!("/v1/pools/{pool}"), Some(json!({"spec": spec, "min": claims}))).await?;
    servers[0].wait_warm(&pool, claims, Duration::from_secs(600)).await?;
    let run =
        closed_loop(open(spread(args.claim_clients)).await?, claims, poster("/v1/environments", claim_body(&spec)))
            .await?;
    only_claims(&run, "warm claims")?;
    let mut out = summary(run.ms_of(201));
    out["cold_202"] = json!(run.count(202));
    out["claims_per_second"] = json!(run.per_second());
    out["creates_per_second"] = json!(creates_per_second);
    out["replicas"] = json!(servers.len());
    say(format!("  {:.0} claims/s, p99 {} ms", run.per_second(), out["p99"]));
    servers[0].call(Method::DELETE, &format!("/v1/pools/{pool}"), None).await?;
    Ok(out)
}

/// The index of the replica whose `/v1/status` says `leader`, if one does now.
async fn leader(servers: &[&ServerProcess]) -> Option<usize> {
    for (n, s) in servers.iter().enumerate() {
        if let Ok((200, status)) = s.call(Method::GET, "/v1/status", None).await
            && status["role"] == "leader"
        {
            return Some(n);
        }
    }
    None
}

/// Waits until one of `servers` leads; its index.
async fn wait_leader(servers: &[&ServerProcess], within: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(n) = leader(servers).await {
            return Ok(n);
        }
        if Instant::now() > deadline {
            bail!("no replica leads after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

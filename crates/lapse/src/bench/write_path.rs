//! `lapse bench`'s write-path figures (issue 14), each beside an HTTP floor measured in the
//! same run; in the default run and alone with `--write-path-only`.
//!
//! - `http_floor`: `claim_clients` closed-loop clients (one keep-alive connection each, see
//!   [`load`](super::load)) send `floor_requests` warm-claim bodies to `POST /v1/bench/floor`
//!   (present because the bench starts its server with `LAPSE_BENCH_FLOOR=1`): HTTP, auth,
//!   JSON parse and checks, JSON answer, no store. `per_second`, p50, p99, max, and the CPU
//!   seconds the bench and the server used meanwhile (`bench_cpu_s`, `server_cpu_s`: when the
//!   bench uses as much as the server, the client may be the limit, and it says so).
//! - `warm_claims_closed_loop`: the same clients claim `claims` members of a pool that holds
//!   them all, warm before timing: `claims_per_second`, p50, p99 (of the 201s), `cold_202`,
//!   `ratio_to_floor`. The same run is also `warm_claim_ms` (its earlier keys).
//! - `warm_claims_offered_2000`: an open loop offers 2,000 claims/s from `claim_clients`
//!   connections, `offered_claims` in all, from a pool that holds them all; latency from when
//!   each claim was due (queueing is not hidden): p50, p99, max, `achieved_per_second`.
//! - `sim_create_ms` (`per_second_accepted`), `pool_refill_per_second` and
//!   `swim_requests_per_second` as before, each with its ratio to the floor
//!   (`sim_create_ms.ratio_to_floor`, `pool_refill_ratio_to_floor`, `swim_ratio_to_floor`).
//! - `goals`: for each of issue 14's figures, the goal, the measured value and `met`
//!   ([`goals`]); a figure not measured in the run is `null` and not met.
//!
//! Every claim counted must be a warm `201`; cold `202`s are counted and said, and any other
//! answer stops the bench.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::load::{Conn, Run, Schedule, closed_loop, open_loop};
use super::{BenchArgs, ServerProcess, claims, fan_out, summary};

/// The variable the bench's server is started with, for the floor route.
pub const FLOOR_ENV: &str = "LAPSE_BENCH_FLOOR";

/// The open loop's offered rate (issue 14's figure).
pub const OFFERED_PER_SECOND: f64 = 2_000.0;

/// The floor's path on the server.
const FLOOR_PATH: &str = "/v1/bench/floor";

/// The body of a warm claim of `spec` (also the floor's body).
pub(super) fn claim_body(spec: &Value) -> Bytes {
    Bytes::from(json!({"owner": "bench", "spec": spec, "ttl": "1h"}).to_string())
}

/// The warm claims' spec (the floor parses the same body).
fn claim_spec() -> Value {
    json!({"provider": "sim", "cmd": ["warm"], "ports": [8080]})
}

/// A `send` for the drivers: `POST path` with `body` on the connection it is given.
pub(super) fn poster(path: &'static str, body: Bytes) -> impl Fn(Conn, usize) -> PostFuture + Send + Sync + 'static {
    move |mut conn, _| {
        let body = body.clone();
        Box::pin(async move {
            let status = conn.post_json(path, body).await?;
            Ok((conn, status))
        })
    }
}

pub(super) type PostFuture = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<(Conn, u16)>> + Send>>;

/// Stops on an answer that is neither a warm (201) nor a cold (202) claim.
pub(super) fn only_claims(run: &Run, what: &str) -> anyhow::Result<()> {
    if let Some(s) = run.samples.iter().find(|s| s.status != 201 && s.status != 202) {
        bail!(
            "{what}: an answer {} ({} of {} were not 201/202)",
            s.status,
            run.samples.len() - run.count(201) - run.count(202),
            run.samples.len()
        );
    }
    Ok(())
}

/// `http_floor` (see the module doc).
pub async fn http_floor(
    server: &ServerProcess,
    args: &BenchArgs,
    say: &impl Fn(String),
    report: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    let clients = args.claim_clients.max(1);
    say(format!("http floor: {} requests by {clients} clients to {FLOOR_PATH} ...", args.floor_requests));
    let body = claim_body(&claim_spec());
    let mut conns = Conn::open_many(&server.base, clients).await?;
    // One request per connection first: the route exists and every connection is up.
    for conn in &mut conns {
        let status = conn.post_json(FLOOR_PATH, body.clone()).await?;
        if status != 201 {
            bail!("{FLOOR_PATH} answered {status} (is LAPSE_BENCH_FLOOR=1 set on the server?)");
        }
    }
    let cpu_before = (cpu_seconds("self"), server.child.id().and_then(|pid| cpu_seconds(&pid.to_string())));
    let run = closed_loop(conns, args.floor_requests, poster(FLOOR_PATH, body)).await?;
    let cpu_after = (cpu_seconds("self"), server.child.id().and_then(|pid| cpu_seconds(&pid.to_string())));
    if run.count(201) != run.samples.len() {
        bail!(
            "the floor answered {} of {} requests with other than 201",
            run.samples.len() - run.count(201),
            run.samples.len()
        );
    }
    let mut out = summary(run.ms_of(201));
    out["clients"] = json!(clients);
    out["per_second"] = json!(run.per_second());
    // Whether the bench's client could be the limit: its CPU time against the server's.
    let used = |before: Option<f64>, after: Option<f64>| before.zip(after).map(|(b, a)| a - b);
    let (bench_cpu, server_cpu) = (used(cpu_before.0, cpu_after.0), used(cpu_before.1, cpu_after.1));
    out["bench_cpu_s"] = json!(bench_cpu);
    out["server_cpu_s"] = json!(server_cpu);
    say(format!("  {:.0} requests/s", run.per_second()));
    if let (Some(b), Some(s)) = (bench_cpu, server_cpu)
        && b >= s
    {
        say(format!("  the bench used {b:.1} s of CPU, the server {s:.1} s: the client may be the limit"));
    }
    report.insert("http_floor".into(), out);
    Ok(())
}

/// CPU seconds (user and system) the process `pid` (or `self`) has used, from `/proc`.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (which may hold spaces), from the state (field 3) on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // utime and stime are fields 14 and 15; the kernel counts them in USER_HZ (100) ticks.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// `warm_claims_closed_loop` and `warm_claim_ms`, then `warm_claim_burst_ms` (one claim per
/// client at once from a full pool, as before).
pub async fn warm_claims(
    server: &Arc<ServerProcess>,
    args: &BenchArgs,
    say: &impl Fn(String),
    report: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    let clients = args.claim_clients.max(1);
    say(format!("warm claims: {} claims by {clients} clients from a pool of {} ...", args.claims, args.claims));
    let spec = claim_spec();
    server.call(Method::PUT, "/v1/pools/bench", Some(json!({"spec": spec, "min": args.claims}))).await?;
    server.wait_warm("bench", args.claims, Duration::from_secs(600)).await?;
    let conns = Conn::open_many(&server.base, clients).await?;
    let run = closed_loop(conns, args.claims, poster("/v1/environments", claim_body(&spec))).await?;
    only_claims(&run, "warm claims")?;
    let cold = run.count(202);
    if cold > 0 {
        say(format!("  {cold} of {} claims were cold (202): the pool ran dry", run.samples.len()));
    }
    let mut earlier = summary(run.ms_of(201));
    earlier["cold_202"] = json!(cold);
    let mut out = earlier.clone();
    out["clients"] = json!(clients);
    out["claims_per_second"] = json!(run.per_second());
    say(format!("  {:.0} claims/s, p99 {} ms", run.per_second(), out["p99"]));
    report.insert("warm_claim_ms".into(), earlier);
    report.insert("warm_claims_closed_loop".into(), out);
    // One burst: every client claims once, at the same moment, from a full pool.
    server.wait_warm("bench", args.claims, Duration::from_secs(600)).await?;
    report.insert("warm_claim_burst_ms".into(), claims(server, &spec, clients, clients).await?);
    server.call(Method::DELETE, "/v1/pools/bench", None).await?;
    server.wait_idle(Duration::from_secs(600)).await
}

/// `warm_claims_offered_2000` (see the module doc).
pub async fn offered_claims(
    server: &ServerProcess,
    args: &BenchArgs,
    say: &impl Fn(String),
    report: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    let (clients, total) = (args.claim_clients.max(1), args.offered_claims);
    say(format!(
        "offered claims: {total} at {OFFERED_PER_SECOND}/s from {clients} connections, from a pool of {total} ..."
    ));
    let spec = json!({"provider": "sim", "cmd": ["offered"], "ports": [8080]});
    server.call(Method::PUT, "/v1/pools/offered", Some(json!({"spec": spec, "min": total}))).await?;
    server.wait_warm("offered", total, Duration::from_secs(600)).await?;
    let conns = Conn::open_many(&server.base, clients).await?;
    let schedule = Schedule { total, per_second: OFFERED_PER_SECOND };
    let run = open_loop(conns, schedule, poster("/v1/environments", claim_body(&spec))).await?;
    only_claims(&run, "offered claims")?;
    let cold = run.count(202);
    if cold > 0 {
        say(format!("  {cold} of {total} claims were cold (202): the pool ran dry"));
    }
    let mut out = summary(run.ms_of(201));
    out["cold_202"] = json!(cold);
    out["clients"] = json!(clients);
    out["offered_per_second"] = json!(OFFERED_PER_SECOND);
    out["achieved_per_second"] = json!(run.per_second());
    say(format!("  achieved {:.0}/s, p99 {} ms", run.per_second(), out["p99"]));
    report.insert("warm_claims_offered_2000".into(), out);
    server.call(Method::DELETE, "/v1/pools/offered", None).await?;
    server.wait_idle(Duration::from_secs(600)).await
}

/// `sim_create_ms`: create throughput into desired state, `sim` provider at zero latency.
pub async fn sim_creates(
    server: &Arc<ServerProcess>,
    n: usize,
    say: &impl Fn(String),
    report: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    say(format!("create throughput: {n} sim creates by 64 clients ..."));
    let t = Instant::now();
    let results = fan_out(
        server,
        n,
        64,
        |_| json!({"owner": "bench", "spec": {"provider": "sim", "cmd": ["cold"]}, "ttl": "1h"}),
    )
    .await?;
    let accepted = t.elapsed().as_secs_f64();
    server.wait_idle(Duration::from_secs(600)).await?;
    let settled = t.elapsed().as_secs_f64();
    let mut throughput = summary(results.iter().map(|r| r.2).collect());
    throughput["per_second_accepted"] = json!(n as f64 / accepted);
    throughput["per_second_running"] = json!(n as f64 / settled);
    report.insert("sim_create_ms".into(), throughput);
    Ok(())
}

/// `pool_refill_per_second`: a pool of `n` filled from empty.
pub async fn pool_refill(
    server: &ServerProcess,
    n: usize,
    say: &impl Fn(String),
    report: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    say(format!("pool refill: {n} members ..."));
    let t = Instant::now();
    let pool = json!({"spec": {"provider": "sim", "cmd": ["refill"]}, "min": n});
    server.call(Method::PUT, "/v1/pools/refill", Some(pool)).await?;
    server.wait_warm("refill", n, Duration::from_secs(600)).await?;
    report.insert("pool_refill_per_second".into(), json!(n as f64 / t.elapsed().as_secs_f64()));
    server.call(Method::DELETE, "/v1/pools/refill", None).await?;
    server.wait_idle(Duration::from_secs(600)).await
}

/// Adds each figure's ratio to the floor and the `goals` object, from what the run measured.
pub fn finish(report: &mut Map<String, Value>) {
    let floor = report.get("http_floor").and_then(|f| f["per_second"].as_f64()).filter(|f| *f > 0.0);
    let ratio = |v: Option<f64>| json!(v.zip(floor).map(|(v, f)| v / f));
    let claims = report.get("warm_claims_closed_loop").and_then(|c| c["claims_per_second"].as_f64());
    if let Some(c) = report.get_mut("warm_claims_closed_loop") {
        c["ratio_to_floor"] = ratio(claims);
    }
    let sim = report.get("sim_create_ms").and_then(|s| s["per_second_accepted"].as_f64());
    if let Some(s) = report.get_mut("sim_create_ms") {
        s["ratio_to_floor"] = ratio(sim);
    }
    for (figure, key) in
        [("pool_refill_per_second", "pool_refill_ratio_to_floor"), ("swim_requests_per_second", "swim_ratio_to_floor")]
    {
        if let Some(v) = report.get(figure).and_then(Value::as_f64) {
            report.insert(key.into(), ratio(Some(v)));
        }
    }
    let goals = goals(report);
    report.insert("goals".into(), goals);
}

/// Issue 14's goals against the report's figures (call after the ratios are in).
pub fn goals(report: &Map<String, Value>) -> Value {
    let figure = |section: &str, key: Option<&str>| {
        let v = report.get(section)?;
        match key {
            Some(k) => v[k].as_f64(),
            None => v.as_f64(),
        }
    };
    let at_least = |goal: f64, measured: Option<f64>| json!({"goal": format!(">= {goal}"), "measured": measured, "met": measured.is_some_and(|m| m >= goal)});
    let below = |goal: f64, measured: Option<f64>| json!({"goal": format!("< {goal}"), "measured": measured, "met": measured.is_some_and(|m| m < goal)});
    json!({
        "warm_claims_ratio_to_floor": at_least(0.3, figure("warm_claims_closed_loop", Some("ratio_to_floor"))),
        "warm_claims_p99_ms": below(40.0, figure("warm_claims_closed_loop", Some("p99"))),
        "offered_2000_p99_ms": below(10.0, figure("warm_claims_offered_2000", Some("p99"))),
        "sim_creates_per_second": at_least(5_000.0, figure("sim_create_ms", Some("per_second_accepted"))),
        "pool_refill_per_second": at_least(3_000.0, figure("pool_refill_per_second", None)),
        "swim_ingest_per_second": at_least(20_000.0, figure("swim_requests_per_second", None)),
    })
}

/// `--write-path-only`: the floor and the write-path figures, then the SWIM ingest.
pub async fn run_alone(
    args: &BenchArgs,
    json_out: bool,
    say: &impl Fn(String),
    report: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("a temporary data dir")?;
    let mut envs = vec![(FLOOR_ENV, "1".to_owned())];
    if let Some(url) = &args.database {
        envs.push(("LAPSE_DATABASE", url.clone()));
    }
    let backend = if args.database.is_some() { "postgres" } else { "sqlite" };
    report.insert("store".into(), Value::from(backend));
    say(format!("write path on {backend}"));
    let server = Arc::new(ServerProcess::start_with(dir.path(), &envs).await?);
    measure(&server, args, say, report).await?;
    drop(server);
    if args.swim > 0 {
        super::swim(args, json_out, report).await?;
    }
    finish(report);
    Ok(())
}

/// The sections on the bench's server, in order: floor, closed-loop claims, offered claims,
/// sim creates, pool refill.
pub async fn measure(
    server: &Arc<ServerProcess>,
    args: &BenchArgs,
    say: &impl Fn(String),
    report: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    http_floor(server, args, say, report).await?;
    warm_claims(server, args, say, report).await?;
    if args.offered_claims > 0 {
        offered_claims(server, args, say, report).await?;
    }
    sim_creates(server, args.sim_creates, say, report).await?;
    pool_refill(server, args.refill, say, report).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu() {
        let spin: u64 = (0..2_000_000u64).map(|i| i ^ (i >> 3)).sum();
        assert!(spin > 0);
        assert!(cpu_seconds("self").is_some_and(|s| s >= 0.0));
        assert_eq!(cpu_seconds("not-a-pid"), None);
    }

    #[test]
    fn the_goals_read_the_figures_and_the_ratios_divide_by_the_floor() {
        let mut report = Map::new();
        report.insert("http_floor".into(), json!({"per_second": 20_000.0}));
        report.insert("warm_claims_closed_loop".into(), json!({"claims_per_second": 8_000.0, "p99": 45.0}));
        report.insert("warm_claims_offered_2000".into(), json!({"p99": 4.0}));
        report.insert("sim_create_ms".into(), json!({"per_second_accepted": 5_000.0}));
        report.insert("pool_refill_per_second".into(), json!(1_000.0));
        finish(&mut report);
        assert_eq!(report["warm_claims_closed_loop"]["ratio_to_floor"], 0.4);
        assert_eq!(report["sim_create_ms"]["ratio_to_floor"], 0.25);
        assert_eq!(report["pool_refill_ratio_to_floor"], 0.05);
        let goals = &report["goals"];
        assert_eq!(goals["warm_claims_ratio_to_floor"], json!({"goal": ">= 0.3", "measured": 0.4, "met": true}));
        assert_eq!(goals["warm_claims_p99_ms"]["met"], false);
        assert_eq!(goals["offered_2000_p99_ms"]["met"], true);
        assert_eq!(goals["sim_creates_per_second"]["met"], true);
        assert_eq!(goals["pool_refill_per_second"]["met"], false);
        // Not measured in this run (no SWIM section): null, not met.
        assert_eq!(goals["swim_ingest_per_second"], json!({"goal": ">= 20000", "measured": null, "met": false}));
    }
}

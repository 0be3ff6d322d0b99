//! `lapse bench`'s claim-hook section: warm claims end to end (the create's request until its
//! `201`) from two pools of `process` members in one server, one with an `on_claim` hook
//! (`exec`: a command run in the member with the claim's variables, which checks that they
//! arrived) and one without, claimed by the same clients, each pool full and the server idle
//! before its claims start. The hook's cost is the difference; quoted as both pools'
//! latencies and their ratio, measured in the same run.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::{ServerProcess, fan_out, summary};

/// Runs the section into `report`.
pub async fn run(
    claims: usize,
    clients: usize,
    say: &dyn Fn(String),
    report: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    say(format!("claim hooks: {claims} warm claims by {clients} clients, with and without an exec hook ..."));
    let dir = tempfile::tempdir()?;
    let server = Arc::new(ServerProcess::start(dir.path()).await?);
    // Two specs, so each claim finds its own pool.
    let plain = json!({"provider": "process", "cmd": ["sleep", "600"]});
    let hooked = json!({"provider": "process", "cmd": ["sleep", "601"]});
    let hook = json!({"exec": ["sh", "-c", "test -n \"$LAPSE_BENCH_BUCKET\""], "timeout": "30s"});
    // One pool at a time, each full and the server idle before its claims: a pool refilling
    // behind the other's claims would load the machine for one side only.
    server.call(Method::PUT, "/v1/pools/plain", Some(json!({"spec": plain, "min": claims}))).await?;
    server.wait_warm("plain", claims, Duration::from_secs(300)).await?;
    server.wait_idle(Duration::from_secs(300)).await?;

    let run_claims = async |spec: &Value, params: bool| {
        let spec = spec.clone();
        let results = fan_out(&server, claims, clients, move |i| {
            let mut body = json!({"owner": "bench", "spec": spec, "ttl": "1h"});
            if params {
                body["params"] = json!({"env": {"LAPSE_BENCH_BUCKET": format!("bucket-{i}")}});
            }
            body
        })
        .await?;
        let warm: Vec<f64> = results.iter().filter(|r| r.0 == 201).map(|r| r.2).collect();
        let cold = results.len() - warm.len();
        let mut out = summary(warm);
        out["not_warm"] = json!(cold);
        anyhow::Ok((out, results.into_iter().map(|r| r.1).collect::<Vec<_>>()))
    };
    let (without, mut ids) = run_claims(&plain, false).await?;
    server.call(Method::DELETE, "/v1/pools/plain", None).await?;
    server
        .call(Method::PUT, "/v1/pools/hooked", Some(json!({"spec": hooked, "min": claims, "on_claim": hook})))
        .await?;
    server.wait_warm("hooked", claims, Duration::from_secs(300)).await?;
    server.wait_idle(Duration::from_secs(300)).await?;
    let (with, more) = run_claims(&hooked, true).await?;
    server.call(Method::DELETE, "/v1/pools/hooked", None).await?;
    ids.extend(more);
    let ratio = |q: &str| with[q].as_f64().unwrap_or(f64::NAN) / without[q].as_f64().unwrap_or(f64::NAN);
    report.insert(
        "claim_hook_ms".into(),
        json!({
            "claims": claims,
            "clients": clients,
            "with_hook": with,
            "without_hook": without,
            "p50_ratio": ratio("p50"),
            "p99_ratio": ratio("p99"),
        }),
    );
    server.delete_all(&ids).await?;
    Ok(())
}

//! `lapse bench`'s S3 section: the final push of a workspace of `mb` MiB (ten 1 MiB files,
//! the rest in 30 MiB files, so both `PutObject` and multipart uploads are measured) from a
//! `process` environment to a moto server on loopback, through the server's syncer.
//!
//! The environment writes random files once its pull is in; its stop then pushes them all
//! (nothing is in S3 yet). `s3_push_mb_per_s` is the pushed bytes over the push's own time,
//! as the server records it in the `workspace_push` event; `s3_stop_s` is the stop's wall time
//! through the API (the push plus the process's stop).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lapse_providers::aws::moto::{MotoServer, REGION};
use lapse_providers::s3::S3Client;
use reqwest::Method;
use serde_json::{Value, json};

use super::ServerProcess;

pub async fn run(mb: usize, say: &impl Fn(String), report: &mut serde_json::Map<String, Value>) -> anyhow::Result<()> {
    let moto = MotoServer::start("AKIDLAPSEBENCHS3", "bench-s3-secret").await.map_err(anyhow::Error::msg)?;
    let s3 = S3Client::from_sdk_config(&moto.loader(REGION).load().await);
    s3.create_bucket("lapse-bench").await?;
    let dir = tempfile::tempdir().context("a temporary data dir")?;
    let server = ServerProcess::start_with(dir.path(), &moto.envs()).await?;
    let small = mb.min(10);
    let large = mb.saturating_sub(small).div_ceil(30);
    let last = mb.saturating_sub(small).saturating_sub(30 * large.saturating_sub(1));
    let script = format!(
        "while [ ! -f ws/.lapse-sync ]; do sleep 0.1; done; \
         for i in $(seq 1 {small}); do head -c 1048576 /dev/urandom > ws/small-$i; done; \
         for i in $(seq 1 {large}); do n=30; [ $i -eq {large} ] && n={last}; head -c $((n * 1048576)) /dev/urandom > ws/large-$i; done; \
         touch ws/.done; sleep 3600"
    );
    let body = json!({"owner": "bench", "ttl": "1h", "spec": {"provider": "process", "cmd": ["sh", "-c", script],
        "workspace": {"bucket": "lapse-bench", "prefix": "bench", "path": "/ws", "sync_interval": "1h"}}});
    let (_, id) = server.create(body).await?;
    server.wait_all(std::slice::from_ref(&id), "running", Duration::from_secs(60)).await?;
    say(format!("s3 push: writing a {mb} MiB workspace ..."));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, out) = server
            .call(
                Method::POST,
                &format!("/v1/environments/{id}/exec"),
                Some(json!({"cmd": ["sh", "-c", "test -f $HOME/ws/.done && echo yes"]})),
            )
            .await?;
        if out["stdout"] == "yes\n" {
            break;
        }
        if Instant::now() > deadline {
            bail!("the workspace was not written within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    say("s3 push: stopping (the final push) ...".into());
    let started = Instant::now();
    server.call(Method::POST, &format!("/v1/environments/{id}/stop"), Some(json!({}))).await?;
    server.wait_all(std::slice::from_ref(&id), "stopped", Duration::from_secs(600)).await?;
    let stop_s = started.elapsed().as_secs_f64();
    let (_, events) = server.call(Method::GET, &format!("/v1/events?environment={id}&limit=1000"), None).await?;
    let message = events["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["action"] == "workspace_push"))
        .and_then(|e| e["message"].as_str())
        .context("the workspace_push event")?
        .to_owned();
    let (bytes, ms) = parse_push(&message).with_context(|| format!("reading {message:?}"))?;
    let stored: u64 = s3.list("lapse-bench", "bench/", 100_000).await?.iter().map(|o| o.size).sum();
    if stored != bytes {
        bail!("S3 holds {stored} bytes, the push reported {bytes}");
    }
    let mb_per_s = (bytes as f64 / (1024.0 * 1024.0)) / (ms as f64 / 1000.0).max(0.001);
    report.insert(
        "s3_push".into(),
        json!({"mib": bytes as f64 / (1024.0 * 1024.0), "push_ms": ms, "mb_per_s": (mb_per_s * 10.0).round() / 10.0,
            "stop_s": (stop_s * 100.0).round() / 100.0}),
    );
    Ok(())
}

/// `(bytes, ms)` of "final push: N files, B bytes, D deleted in M ms".
fn parse_push(message: &str) -> Option<(u64, u64)> {
    let bytes = message.split(", ").find_map(|p| p.strip_suffix(" bytes"))?.parse().ok()?;
    let ms = message.rsplit(" in ").next()?.strip_suffix(" ms")?.parse().ok()?;
    Some((bytes, ms))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_push_event() {
        assert_eq!(
            super::parse_push("final push: 14 files, 104857600 bytes, 0 deleted in 2345 ms"),
            Some((104857600, 2345))
        );
        assert_eq!(super::parse_push("nonsense"), None);
    }
}

//! `lapse bench`'s proxy section: the routing proxy's throughput and the latency it adds,
//! against a direct connection to the same backend in the same run.
//!
//! The backend is a minimal HTTP/1.1 server inside the bench process (a fixed 2-byte `200` on
//! keep-alive connections), so its own cost is small and equal for both paths. The server
//! gets a `process` environment whose spec port is that backend's port (the process provider
//! records `127.0.0.1:<port>` as its endpoint), so the proxy forwards `/e/<id>/<port>/` to it.
//!
//! - **Latency** (`proxy_latency_ms`): `requests` GETs one after another on one keep-alive
//!   client, direct and proxied, interleaved in rounds so that both see the same machine;
//!   p50/p99 of each, and the difference (`added_p50`, `added_p99`; goal: under 1 ms at p99).
//! - **Throughput** (`proxy_requests_per_s`): `requests` GETs by `clients` clients at once,
//!   direct and proxied.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{ServerProcess, percentile};

pub async fn run(
    requests: usize,
    clients: usize,
    say: &impl Fn(String),
    report: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = backend.local_addr()?.port();
    tokio::spawn(serve_backend(backend));
    let proxy_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = tempfile::tempdir().context("a temporary data dir")?;
    let server =
        ServerProcess::start_with(dir.path(), &[("LAPSE_PROXY_LISTEN", format!("127.0.0.1:{proxy_port}"))]).await?;
    let body = json!({"owner": "bench", "ttl": "1h", "spec": {"provider": "process", "cmd": ["sleep", "3600"], "ports": [port]}});
    let (_, id) = server.create(body).await?;
    server.wait_all(std::slice::from_ref(&id), "running", Duration::from_secs(60)).await?;
    let direct = format!("http://127.0.0.1:{port}/bench");
    let proxied = format!("http://127.0.0.1:{proxy_port}/e/{id}/{port}/bench");
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
    for url in [&direct, &proxied] {
        let status = http.get(url).send().await?.status();
        if !status.is_success() {
            bail!("{url} answered {status}");
        }
    }

    say(format!("proxy latency: {requests} requests each, direct and through the proxy, one at a time ..."));
    let (mut d, mut p) = (Vec::with_capacity(requests), Vec::with_capacity(requests));
    // Warm-up, then rounds of 100 alternating between the two paths.
    for _ in 0..200 {
        get(&http, &direct).await?;
        get(&http, &proxied).await?;
    }
    while d.len() < requests {
        for _ in 0..100.min(requests - d.len()) {
            d.push(get(&http, &direct).await?);
        }
        for _ in 0..100.min(requests - p.len()) {
            p.push(get(&http, &proxied).await?);
        }
    }
    d.sort_by(f64::total_cmp);
    p.sort_by(f64::total_cmp);
    let (d50, d99, p50, p99) = (percentile(&d, 50.0), percentile(&d, 99.0), percentile(&p, 50.0), percentile(&p, 99.0));
    report.insert(
        "proxy_latency_ms".into(),
        json!({"n": requests, "direct_p50": d50, "direct_p99": d99, "proxied_p50": p50, "proxied_p99": p99,
               "added_p50": p50 - d50, "added_p99": p99 - d99}),
    );

    say(format!("proxy throughput: {requests} requests each by {clients} clients, direct and through the proxy ..."));
    let direct_rate = throughput(&http, &direct, requests, clients).await?;
    let proxied_rate = throughput(&http, &proxied, requests, clients).await?;
    report.insert(
        "proxy_requests_per_s".into(),
        json!({"clients": clients, "direct": direct_rate.round(), "proxied": proxied_rate.round()}),
    );
    Ok(())
}

/// One GET; its latency in ms.
async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let resp = http.get(url).send().await?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    resp.bytes().await?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Requests per second of `total` GETs by `clients` at once.
async fn throughput(http: &reqwest::Client, url: &str, total: usize, clients: usize) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (http, url, next) = (http.clone(), url.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                get(&http, &url).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("a client task")??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// The backend: answers every request head with a 2-byte `200`, keep-alive.
async fn serve_backend(listener: tokio::net::TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut filled = 0;
            loop {
                let Ok(n) = stream.read(&mut buf[filled..]).await else { return };
                if n == 0 {
                    return;
                }
                filled += n;
                // Requests without bodies: each head ends at a blank line.
                while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.copy_within(end + 4..filled, 0);
                    filled -= end + 4;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
                if filled == buf.len() {
                    return;
                }
            }
        });
    }
}

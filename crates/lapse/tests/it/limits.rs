//! No connection or request exhausts the server: descriptor limits, connection caps, header
//! and idle timeouts, and the limits on requests without a valid key.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const ADMIN: &str = "limits-admin-key-0123456789";

/// A `lapse serve` started under `prlimit --nofile=N:N` (the harness cannot wrap its child).
struct Limited {
    child: Child,
    url: String,
    addr: String,
}

impl Limited {
    async fn start(dir: &Path, nofile: u32, args: &[&str], admin_key: Option<&str>) -> Limited {
        let log = std::fs::File::create(dir.join("server.log")).expect("server log");
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_lapse"))
            .args(["serve", "--listen", "127.0.0.1:0", "--docker", "off", "--data-dir"])
            .arg(dir)
            .args(args)
            .env("LAPSE_LOG", "info")
            .env_remove("LAPSE_ADMIN_KEY")
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(key) = admin_key {
            cmd.env("LAPSE_ADMIN_KEY", key);
        }
        let mut child = cmd.spawn().expect("spawning prlimit lapse serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let line = tokio::time::timeout(Duration::from_secs(30), BufReader::new(stdout).lines().next_line())
            .await
            .expect("lapse serve printed its address")
            .expect("reading stdout")
            .unwrap_or_else(|| {
                panic!("lapse serve exited: {}", std::fs::read_to_string(dir.join("server.log")).unwrap())
            });
        let url = line.strip_prefix("lapse serving on ").expect("the serving line").trim().to_owned();
        let addr = url.trim_start_matches("http://").to_owned();
        Limited { child, url, addr }
    }

    fn open_descriptors(&self) -> usize {
        let pid = self.child.id().expect("running");
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
    }
}

async fn call(
    url: &str,
    key: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    // A fresh client per call: no pooled connection hides a refused one.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let mut req = http.request(method, format!("{url}{path}"));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: the server does not answer: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// 500 idle connections against a server limited to 256 descriptors: a client with a key (and
/// any client of the single-tenant server) is still answered, at once.
#[tokio::test]
async fn idle_connections_cannot_lock_the_api_out() {
    for keyed in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        // Long timeouts: making room must not wait for them.
        let server = Limited::start(
            dir.path(),
            256,
            &["--http-header-timeout", "120s", "--http-idle-timeout", "120s"],
            keyed.then_some(ADMIN),
        )
        .await;
        let key = if keyed {
            let (status, _) = call(
                &server.url,
                Some(ADMIN),
                reqwest::Method::POST,
                "/v1/admin/tenants",
                Some(json!({"name": "acme"})),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED);
            let (status, created) =
                call(&server.url, Some(ADMIN), reqwest::Method::POST, "/v1/admin/tenants/acme/keys", None).await;
            assert_eq!(status, StatusCode::CREATED, "{created}");
            Some(created["key"].as_str().unwrap().to_owned())
        } else {
            None
        };
        let mut idle = Vec::new();
        for _ in 0..500 {
            idle.push(TcpStream::connect(&server.addr).await.expect("connect"));
        }
        let started = Instant::now();
        let (status, list) = call(&server.url, key.as_deref(), reqwest::Method::GET, "/v1/environments", None).await;
        assert_eq!(status, StatusCode::OK, "keyed {keyed}: {list}");
        assert!(started.elapsed() < Duration::from_secs(10), "answered in {:?}", started.elapsed());
        let (status, _) = call(&server.url, None, reqwest::Method::GET, "/healthz", None).await;
        assert_eq!(status, StatusCode::OK);
        let open = server.open_descriptors();
        eprintln!(
            "keyed {keyed}: answered in {:?} with 500 idle connections, {open} descriptors open",
            started.elapsed()
        );
        assert!(open < 256, "{open} descriptors open");
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
        assert!(log.contains("soft_now=256"), "the limit is logged:\n{log}");
        drop(idle);
    }
}

/// Half a request header, then nothing: the connection is closed at the header timeout. An
/// idle keep-alive connection is closed at the idle timeout.
#[tokio::test]
async fn slow_and_idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        Limited::start(dir.path(), 1024, &["--http-header-timeout", "1s", "--http-idle-timeout", "2s"], None).await;

    let mut slow = TcpStream::connect(&server.addr).await.unwrap();
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\nX-Half").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
        .await
        .expect("the connection is closed within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "no answer, just closed: {:?}", String::from_utf8_lossy(&buf[..n]));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(800) && waited < Duration::from_secs(5), "closed after {waited:?}");

    let mut idle = TcpStream::connect(&server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "answered");
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("the idle connection is closed within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6), "closed after {waited:?}");
}

/// `/readyz` is 200 once every loop ticked and the store takes writes, with no key; a loop
/// that cannot run (the SWIM consumers, with Redis unreachable) makes it 503, naming it.
#[tokio::test]
async fn readyz_names_what_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        crate::harness::Server::start_with_env(dir.path(), &["--sim", "0"], &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let started = Instant::now();
    let ready = loop {
        let (status, body) = server.request_as(None, reqwest::Method::GET, "/readyz", None).await;
        if status == StatusCode::OK {
            break body;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(started.elapsed() < Duration::from_secs(10), "ready within 10 s: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((ready["ready"].as_bool(), ready["store_writable"].as_bool()), (Some(true), Some(true)), "{ready}");
    let names: Vec<&str> = ready["loops"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["reconciler", "timers", "sweep", "pools", "probes", "activity"]);
    let (status, body) = server.request_as(None, reqwest::Method::GET, "/healthz", None).await;
    assert_eq!((status, body), (StatusCode::OK, Value::String("ok\n".into())));

    let dir = tempfile::tempdir().unwrap();
    let server = crate::harness::Server::start_with_env(
        dir.path(),
        &["--redis", "127.0.0.1:1", "--swim-provider", "sim", "--sim", "0"],
        &[],
    )
    .await;
    // Every other loop comes up; the consumers cannot.
    let started = Instant::now();
    let body = loop {
        let (status, body) = server.get("/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let others_ok = body["loops"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["ok"] == true || l["name"].as_str().unwrap().starts_with("swim:"));
        if others_ok {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["ready"], false);
    let problems = body["problems"].to_string();
    assert!(problems.contains("swim:provision has not run yet"), "{problems}");
    assert_eq!(body["store_writable"], true);
}

/// Requests without a valid key are limited per source address (valid keys use none of that
/// allowance); over it, `429 rate_limited` with `Retry-After`, and the address is refused
/// before any key is checked until then. The scheme `Bearer` is case-insensitive.
#[tokio::test]
async fn requests_without_a_valid_key_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--unauthenticated-rate-limit", "1", "--unauthenticated-rate-burst", "5"];
    let server = crate::harness::Server::start_with_env(dir.path(), &args, &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let http = reqwest::Client::new();
    let get = |auth: Option<String>| {
        let (http, url) = (http.clone(), format!("{}/v1/whoami", server.url));
        async move {
            let mut req = http.get(url);
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            let resp = req.send().await.unwrap();
            let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            let status = resp.status();
            (status, retry, resp.json::<Value>().await.unwrap())
        }
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        for _ in 0..5 {
            let (status, _, body) = get(Some(format!("{scheme} {ADMIN}"))).await;
            assert_eq!(status, StatusCode::OK, "{scheme}: valid keys use no allowance: {body}");
        }
    }
    for n in 0..5 {
        let (status, _, body) = get(Some(format!("Bearer wrong-{n}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let (status, retry, body) = get(None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Blocked: even a valid key from this address waits for the Retry-After.
    let (status, _, _) = get(Some(format!("Bearer {ADMIN}"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let started = Instant::now();
    loop {
        let (status, _, _) = get(Some(format!("Bearer {ADMIN}"))).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "unblocked after Retry-After");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // /healthz and /readyz need no key and are never limited.
    let (status, _) = server.request_as(None, reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
}

//! In-process: proxied requests reach the [`super::ActivitySink`], at most once a second per
//! environment (paused time: the clock moves only when the test moves it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapse_core::model::{Lifecycle, ObservedState, OnExpiry, Spec};
use lapse_core::wire::CreateEnvironment;
use lapse_providers::ProviderSet;
use lapse_providers::sim::{SimConfig, SimProvider};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::auth::Caller;
use crate::tests::Harness;

#[derive(Default)]
struct Counted(std::sync::Mutex<Vec<String>>, AtomicUsize);

impl super::ActivitySink for Counted {
    fn touch(&self, environment_id: &str) {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(environment_id.to_owned());
    }
}

/// A backend answering `ok` to every request, closing after each.
async fn backend() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            });
        }
    });
    port
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("the proxy accepts");
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("sending");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("reading");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(start_paused = true)]
async fn proxied_requests_are_reported_as_activity_once_a_second() {
    let mut providers = ProviderSet::default();
    providers.insert(Arc::new(SimProvider::new(SimConfig::default())));
    let h = Harness::start(providers, |_| {}).await;
    let port = backend().await;
    let req = CreateEnvironment {
        name: None,
        owner: "ada".into(),
        labels: Default::default(),
        spec: Spec { provider: "sim".into(), ports: vec![port], ..Default::default() },
        ttl: None,
        on_expiry: OnExpiry::Stop,
        lifecycle: Lifecycle::Lease,
        max_retries: None,
        params: None,
        idle_timeout: None,
        on_idle: Default::default(),
        warn_before: None,
    };
    let id = h.app.create(req, &Caller::Open).await.expect("creating").env.id;
    h.settle().await;
    assert_eq!(h.env(&id).await.observed, ObservedState::Running);

    let sink = Arc::new(Counted::default());
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let config = super::ProxyConfig::new("127.0.0.1:0".parse().expect("an address"));
    let started = super::start(h.app.clone(), config, sink.clone(), stopped).await.expect("the proxy starts");
    for _ in 0..5 {
        let answer = get(started.addr, &format!("/e/{id}/{port}/x")).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    }
    assert_eq!(sink.1.load(Ordering::Relaxed), 1, "five requests within a second: one report");
    let refused = get(started.addr, &format!("/e/{id}/1/x")).await;
    assert!(refused.starts_with("HTTP/1.1 404"), "{refused}");
    tokio::time::advance(Duration::from_millis(1001)).await;
    get(started.addr, &format!("/e/{id}/{port}/y")).await;
    assert_eq!(sink.1.load(Ordering::Relaxed), 2, "a second later: reported again");
    assert_eq!(*sink.0.lock().expect("not poisoned"), [id.clone(), id], "for that environment");
}

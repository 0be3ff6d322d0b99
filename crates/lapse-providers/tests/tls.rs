//! The reqwest clouds speak TLS: an `https://` API address gets a TLS handshake (a ClientHello
//! is the first thing on the wire), not a refusal and not plain HTTP. Checked against a local
//! listener that records the first bytes; no certificate is trusted, so the call then fails,
//! retryably, with no credential in the error.

use std::time::Duration;

use lapse_providers::Provider;
use tokio::io::AsyncReadExt;

const SECRET: &str = "tls-test-SECRET-never-shown-1234";

/// Listens on loopback; the first bytes of the first connection come out of the channel.
async fn first_bytes() -> (u16, tokio::sync::oneshot::Receiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 3];
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut buf)).await;
        let _ = tx.send(buf);
    });
    (port, rx)
}

/// A TLS record of type handshake (22), version 3.x: a ClientHello.
fn is_client_hello(bytes: &[u8]) -> bool {
    bytes.len() == 3 && bytes[0] == 0x16 && bytes[1] == 0x03
}

#[cfg(feature = "scaleway")]
#[tokio::test]
async fn scaleway_speaks_tls_to_an_https_api() {
    use lapse_providers::scaleway::{ScalewayConfig, ScalewayProvider};
    let (port, seen) = first_bytes().await;
    let mut cfg = ScalewayConfig::new("SCWACCESS", SECRET, "org", "proj", "fr-par-1");
    cfg.api_url = format!("https://127.0.0.1:{port}");
    cfg.retries = 0;
    let p = ScalewayProvider::new(cfg, "ctl").expect("https is accepted");
    let e = p.list().await.unwrap_err();
    assert!(is_client_hello(&seen.await.unwrap()), "a TLS handshake went out");
    assert!(e.is_retryable() && !e.to_string().contains(SECRET), "{e}");
}

#[cfg(feature = "ovh")]
#[tokio::test]
async fn ovh_speaks_tls_to_an_https_api() {
    use lapse_providers::ovh::{Credentials, OvhConfig, OvhProvider};
    let (port, seen) = first_bytes().await;
    let credentials =
        Credentials { application_key: "ak".into(), application_secret: SECRET.into(), consumer_key: "ck".into() };
    let cfg = OvhConfig::new(&format!("https://127.0.0.1:{port}/1.0"), credentials, "proj", None);
    let p = OvhProvider::new(cfg, "ctl").expect("https is accepted");
    let e = p.health().await.unwrap_err();
    assert!(is_client_hello(&seen.await.unwrap()), "a TLS handshake went out");
    assert!(!e.to_string().contains(SECRET), "{e}");
}

//! One delivery attempt: a signed `POST`, bounded in time and in what is read back.
//!
//! Headers: `Lapse-Event` (the event name), `Lapse-Delivery` (the delivery's id, the same on
//! every retry: receivers de-duplicate by it), `Lapse-Timestamp` (unix seconds of this
//! attempt) and `Lapse-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! A `2xx` is delivered; anything else (a `3xx` too: **redirects are never followed**), a
//! timeout or a refused address is a failure with its reason. At most [`MAX_RESPONSE_BYTES`]
//! of the answer are read.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::address::{self, CheckedResolver};

/// Most bytes of a receiver's answer read (the rest is dropped with the connection).
pub const MAX_RESPONSE_BYTES: usize = 4096;
/// Longest error text kept on a delivery.
const MAX_ERROR_CHARS: usize = 512;

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered(u16),
    Failed { code: Option<u16>, error: String },
}

/// The HTTP client of every delivery: no proxy, no redirects, checked addresses only.
#[derive(Clone, Debug)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

/// What an attempt sends.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub url: &'a str,
    pub event: &'a str,
    pub delivery_id: &'a str,
    pub secret: &'a str,
    pub body: &'a str,
}

impl Sender {
    pub fn new(allow_private: bool, timeout: Duration) -> Result<Sender, reqwest::Error> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .dns_resolver(CheckedResolver { allow_private })
            .user_agent(concat!("lapse-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender { client, allow_private })
    }

    /// One attempt, signed now.
    pub async fn send(&self, req: Request<'_>) -> Outcome {
        let failed = |code: Option<u16>, error: String| Outcome::Failed {
            code,
            error: error.chars().take(MAX_ERROR_CHARS).collect(),
        };
        let url = match address::parse_url(req.url) {
            Ok(u) => u,
            Err(e) => return failed(None, e.to_string()),
        };
        // An IP literal never reaches the resolver: checked here (a name is checked there).
        if let Err(e) = address::resolve_checked(&url, self.allow_private).await {
            return failed(None, e.to_string());
        }
        let t = chrono::Utc::now().timestamp();
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("lapse-event", req.event)
            .header("lapse-delivery", req.delivery_id)
            .header("lapse-timestamp", t.to_string())
            .header("lapse-signature", signature(req.secret, t, req.body.as_bytes()))
            .body(req.body.to_owned())
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return failed(None, error_text(&e)),
        };
        let code = resp.status().as_u16();
        // Read a little of the answer (some receivers close late otherwise), never more.
        let mut read = 0usize;
        while read < MAX_RESPONSE_BYTES {
            match resp.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
        match code {
            200..=299 => Outcome::Delivered(code),
            300..=399 => failed(Some(code), format!("HTTP {code}: a redirect, which is not followed")),
            _ => failed(Some(code), format!("HTTP {code}")),
        }
    }
}

/// The error with its causes, without repeating itself.
fn error_text(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() { "timed out".to_owned() } else { "request failed".to_owned() };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231-style check: HMAC-SHA256("key", "1.{}") computed independently.
        let sig = signature("key", 1, b"{}");
        assert!(sig.starts_with("t=1,v1="), "{sig}");
        assert_eq!(sig.len(), "t=1,v1=".len() + 64);
        assert_ne!(signature("key", 1, b"{}"), signature("key", 2, b"{}"));
        assert_ne!(signature("key", 1, b"{}"), signature("other", 1, b"{}"));
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"1.{}");
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sig, format!("t=1,v1={hex}"));
    }
}

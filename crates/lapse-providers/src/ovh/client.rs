//! The signed OVH API client: every call is signed the way OVH's own clients sign it, at the
//! API's own time, with a timeout, and its failures sorted into retryable and permanent.
//!
//! **Signature** (the official `ovh` Python package, `ovh/client.py` `raw_call`): headers
//! `X-Ovh-Application` (application key), `X-Ovh-Consumer` (consumer key), `X-Ovh-Timestamp`
//! and `X-Ovh-Signature` = `"$1$" + sha1_hex(secret + "+" + consumer_key + "+" + METHOD + "+"
//! + full_url + "+" + body + "+" + timestamp)`, where `full_url` is the endpoint plus the path
//! and query and `body` the exact JSON sent (empty when there is none).
//!
//! **Time**: the timestamp is the API's clock, not ours. The first call asks `GET /auth/time`
//! (unsigned) and keeps the offset; every later timestamp is local time plus that offset.
//!
//! **Throttling**: a 429 is tried again, up to [`THROTTLE_ATTEMPTS`] in all, after the
//! answer's `Retry-After` (capped at [`crate::answer::MAX_PAUSE`]) or a doubling pause.
//!
//! **Failures**: 429 (after those attempts) and 5xx, a timeout or a broken connection are [`ProviderError::Failed`]
//! (retryable); any other 4xx is [`ProviderError::Permanent`] carrying the API's own
//! `message`. The secrets are never put in an error, a log line or a `Debug` output.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use sha1::{Digest, Sha1};
use tokio::sync::OnceCell;

use crate::ProviderError;

const PROVIDER: &str = "ovh";

/// Attempts of a call the API throttles (429) before its failure is returned.
const THROTTLE_ATTEMPTS: u32 = 3;
/// The first pause after a 429 without `Retry-After`; it doubles.
const THROTTLE_PAUSE: Duration = Duration::from_millis(500);

/// What the client needs to reach and sign for an OVH account.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub application_key: String,
    pub application_secret: String,
    pub consumer_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The application key identifies the app (it is sent in clear on every call); the
        // secret and the consumer key are what sign, so they never show.
        f.debug_struct("Credentials")
            .field("application_key", &self.application_key)
            .field("application_secret", &"<redacted>")
            .field("consumer_key", &"<redacted>")
            .finish()
    }
}

/// The base URL of a named OVH endpoint (as the `ovh` package's `ENDPOINTS`), or the value
/// itself when it is a URL (a fake, a proxy).
pub fn endpoint_url(endpoint: &str) -> Option<String> {
    let url = match endpoint {
        "ovh-eu" => "https://eu.api.ovh.com/1.0",
        "ovh-ca" => "https://ca.api.ovh.com/1.0",
        "ovh-us" => "https://api.us.ovhcloud.com/1.0",
        "kimsufi-eu" => "https://eu.api.kimsufi.com/1.0",
        "kimsufi-ca" => "https://ca.api.kimsufi.com/1.0",
        "soyoustart-eu" => "https://eu.api.soyoustart.com/1.0",
        "soyoustart-ca" => "https://ca.api.soyoustart.com/1.0",
        url if url.starts_with("http://") || url.starts_with("https://") => url.trim_end_matches('/'),
        _ => return None,
    };
    Some(url.to_owned())
}

/// `"$1$" + sha1_hex(secret+consumer+METHOD+url+body+timestamp joined by "+")`.
pub fn signature(secret: &str, consumer_key: &str, method: &str, url: &str, body: &str, timestamp: i64) -> String {
    let text = format!("{secret}+{consumer_key}+{}+{url}+{body}+{timestamp}", method.to_uppercase());
    format!("$1${:x}", Sha1::digest(text.as_bytes()))
}

/// A signed client for one endpoint.
pub struct Client {
    http: reqwest::Client,
    base: String,
    credentials: Credentials,
    /// The API's clock minus ours, in seconds, learnt once from `/auth/time`.
    offset: OnceCell<i64>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).field("credentials", &self.credentials).finish()
    }
}

fn now_secs() -> i64 {
    // A clock before 1970 is a broken host; 0 then makes the API refuse the timestamp clearly.
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Client {
    pub fn new(base: String, credentials: Credentials, timeout: Duration) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).build().map_err(|e| {
            ProviderError::Unavailable { provider: PROVIDER, message: format!("building the HTTP client: {e}") }
        })?;
        Ok(Client { http, base, credentials, offset: OnceCell::new() })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The API's clock minus ours (asked once).
    pub async fn time_offset(&self) -> Result<i64, ProviderError> {
        self.offset
            .get_or_try_init(|| async {
                let url = format!("{}/auth/time", self.base);
                let response = self
                    .http
                    .get(&url)
                    .header("X-Ovh-Application", &self.credentials.application_key)
                    .send()
                    .await
                    .map_err(|e| transport("GET /auth/time", e))?;
                let server: i64 = decode("GET /auth/time", response).await?;
                Ok(server - now_secs())
            })
            .await
            .copied()
    }

    /// Calls `METHOD path` (path and query, after the endpoint) with an optional JSON body.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ProviderError> {
        match self.call_or_gone(method, path_and_query, body).await? {
            Some(value) => Ok(value),
            None => Err(ProviderError::Permanent {
                provider: PROVIDER,
                message: format!("{}: 404 Not Found", path_and_query.split('?').next().unwrap_or(path_and_query)),
            }),
        }
    }

    /// As [`Client::call`], with a 404 answered as `None` (the thing is gone).
    pub async fn call_or_gone<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Option<T>, ProviderError> {
        let op = format!("{method} {}", path_and_query.split('?').next().unwrap_or(path_and_query));
        let url = format!("{}{path_and_query}", self.base);
        let body = match body {
            Some(value) => value.to_string(),
            None => String::new(),
        };
        let mut attempt = 0u32;
        let response = loop {
            let response = self.send_signed(method.clone(), &url, &body, &op).await?;
            // 429: the API did nothing, so any call may be repeated; a 5xx is left to the
            // caller (a create may have happened: the reconciler looks it up by name first).
            if response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS || attempt + 1 >= THROTTLE_ATTEMPTS {
                break response;
            }
            attempt += 1;
            let growing = THROTTLE_PAUSE.saturating_mul(2u32.saturating_pow(attempt - 1));
            let pause = crate::answer::retry_after_of(&response).unwrap_or(growing).min(crate::answer::MAX_PAUSE);
            tracing::debug!(%op, attempt, ?pause, "ovh: throttled, retrying");
            tokio::time::sleep(pause).await;
        };
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        decode(&op, response).await.map(Some)
    }

    /// One signed request, at the API's time.
    async fn send_signed(
        &self,
        method: reqwest::Method,
        url: &str,
        body: &str,
        op: &str,
    ) -> Result<reqwest::Response, ProviderError> {
        let timestamp = now_secs() + self.time_offset().await?;
        let sig = signature(
            &self.credentials.application_secret,
            &self.credentials.consumer_key,
            method.as_str(),
            url,
            body,
            timestamp,
        );
        let mut request = self
            .http
            .request(method, url)
            .header("X-Ovh-Application", &self.credentials.application_key)
            .header("X-Ovh-Consumer", &self.credentials.consumer_key)
            .header("X-Ovh-Timestamp", timestamp.to_string())
            .header("X-Ovh-Signature", sig);
        if !body.is_empty() {
            request = request.header("Content-Type", "application/json").body(body.to_owned());
        }
        request.send().await.map_err(|e| transport(op, e))
    }
}

/// A transport failure: retryable. reqwest's text names the URL (endpoint and project id,
/// no secret: those travel in headers only).
fn transport(op: &str, e: reqwest::Error) -> ProviderError {
    let what = if e.is_timeout() { "timed out" } else { "could not reach the API" };
    ProviderError::Failed { provider: PROVIDER, op: "api call", message: format!("{op}: {what}: {e}") }
}

/// Reads an answer: 2xx is decoded (an empty body decodes as `null`), anything else sorted.
async fn decode<T: DeserializeOwned>(op: &str, response: reqwest::Response) -> Result<T, ProviderError> {
    let status = response.status();
    let bytes = crate::answer::body(response).await.map_err(|e| match e {
        crate::answer::AnswerError::Transport(e) => transport(op, e),
        too_large => {
            ProviderError::Failed { provider: PROVIDER, op: "api call", message: format!("{op}: {too_large}") }
        }
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if status.is_success() {
        let text = if text.trim().is_empty() { "null" } else { &text };
        return serde_json::from_str(text).map_err(|e| ProviderError::Failed {
            provider: PROVIDER,
            op: "api call",
            message: format!("{op}: unexpected answer: {e}"),
        });
    }
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(300).collect());
    let message = format!("{op}: {status}: {message}");
    if status.as_u16() == 429 || status.is_server_error() {
        Err(ProviderError::Failed { provider: PROVIDER, op: "api call", message })
    } else {
        Err(ProviderError::Permanent { provider: PROVIDER, message })
    }
}

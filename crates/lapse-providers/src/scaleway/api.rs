//! The Scaleway Instance API v1 calls the provider makes, and nothing else.
//!
//! Paths, methods and bodies follow the generated SDK (`scaleway/scaleway-sdk-go`,
//! `api/instance/v1/instance_sdk.go` and `server_utils.go`): every request carries
//! `X-Auth-Token: <secret key>`; JSON bodies for creates and actions; `text/plain` for user
//! data. Every call has a timeout; a `429` (and a `5xx`, or no answer) is retried with a
//! growing pause, a few times; any other `4xx` is permanent and carries the API's `message`.
//! A `Retry-After` (in seconds) on a throttled or failed answer is honoured:
//! the pause is the longer of it and the growing one, at most [`MAX_PAUSE`]. Out of stock and
//! quota answers (`quotas_exceeded`, `out_of_stock`, a `4xx`) are not retried here.
//!
//! The secret key lives only in the header: it is never formatted into an error, a log line or
//! `Debug` output (errors carry the method, the path and the API's message).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

pub use crate::answer::{MAX_PAUSE, retry_after};

/// One failed call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The API answered with an error status; `message` is the API's own.
    #[error("{method} {path}: {status}: {message}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
        /// How long the API asked us to wait (`Retry-After`), if it did.
        retry_after: Option<Duration>,
    },
    /// No answer (connection refused, timeout).
    #[error("{method} {path}: {message}")]
    Transport { method: &'static str, path: String, message: String },
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            ApiError::Transport { .. } => None,
        }
    }

    /// Whether a later attempt may succeed (throttling, a server error, no answer).
    pub fn is_retryable(&self) -> bool {
        match self.status() {
            None => true,
            Some(s) => s == 429 || s >= 500,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ApiError::Status { message, .. } | ApiError::Transport { message, .. } => message,
        }
    }
}

/// A server as the API returns it (only the fields the provider reads).
#[derive(Debug, Clone, Deserialize)]
pub struct Server {
    pub id: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub public_ips: Vec<ServerIp>,
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeRef>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerIp {
    pub id: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub family: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VolumeRef {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
}

#[derive(Deserialize)]
struct ServerEnvelope {
    server: Server,
}

#[derive(Deserialize)]
struct ServersPage {
    #[serde(default)]
    total_count: u64,
    #[serde(default)]
    servers: Vec<Server>,
}

#[derive(Deserialize)]
struct SecurityGroupsPage {
    #[serde(default)]
    security_groups: Vec<SecurityGroup>,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
}

/// How calls are made: where, with what key, how long each may take, how often to retry.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    call_timeout: Duration,
    retries: u32,
    retry_pause: Duration,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).field("token", &"<redacted>").finish()
    }
}

enum Body {
    None,
    Json(Value),
    Text(String),
}

impl Api {
    pub fn new(base: &str, token: &str, call_timeout: Duration, retries: u32, retry_pause: Duration) -> Self {
        Api {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            call_timeout,
            retries,
            retry_pause,
        }
    }

    fn zone_path(zone: &str, rest: &str) -> String {
        format!("/instance/v1/zones/{zone}/{rest}")
    }

    /// An id the API gave, before it goes into a path: letters, digits and `-` only (a UUID),
    /// so an odd answer cannot steer a later call elsewhere.
    fn checked<'a>(method: &'static str, id: &'a str) -> Result<&'a str, ApiError> {
        if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            Ok(id)
        } else {
            Err(ApiError::Status {
                method,
                path: String::new(),
                status: 400,
                message: format!("not an id: {id:?}"),
                retry_after: None,
            })
        }
    }

    async fn call(
        &self,
        method: &'static str,
        path: &str,
        query: &[(&str, String)],
        body: Body,
    ) -> Result<Option<Value>, ApiError> {
        let mut attempt = 0;
        loop {
            match self.once(method, path, query, &body).await {
                Err(e) if e.is_retryable() && attempt < self.retries => {
                    attempt += 1;
                    let growing = self.retry_pause.saturating_mul(2u32.saturating_pow(attempt - 1));
                    let asked = match &e {
                        ApiError::Status { retry_after, .. } => retry_after.unwrap_or_default(),
                        ApiError::Transport { .. } => Duration::ZERO,
                    };
                    let pause = growing.max(asked).min(MAX_PAUSE);
                    tracing::debug!(error = %e, attempt, ?pause, "scaleway: retrying");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    async fn once(
        &self,
        method: &'static str,
        path: &str,
        query: &[(&str, String)],
        body: &Body,
    ) -> Result<Option<Value>, ApiError> {
        let transport = |message: String| ApiError::Transport { method, path: path.to_owned(), message };
        let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| transport(e.to_string()))?;
        let mut url =
            reqwest::Url::parse(&format!("{}{path}", self.base)).map_err(|e| transport(format!("bad URL: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let mut req = self.http.request(m, url).header("X-Auth-Token", &self.token).timeout(self.call_timeout);
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(v),
            Body::Text(t) => req.header("Content-Type", "text/plain").body(t.clone()),
        };
        // `without_url`: the error text names the failure, not the address (which holds no
        // secret, but is long and repeated in `path`).
        let resp = req.send().await.map_err(|e| transport(e.without_url().to_string()))?;
        let status = resp.status();
        let retry_after = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| retry_after(v.to_str().ok()?));
        let bytes = crate::answer::body(resp).await.map_err(|e| match e {
            crate::answer::AnswerError::Transport(e) => transport(e.without_url().to_string()),
            too_large => transport(too_large.to_string()),
        })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .ok()
                .and_then(|b| b.message)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned());
            return Err(ApiError::Status {
                method,
                path: path.to_owned(),
                status: status.as_u16(),
                message,
                retry_after,
            });
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes).map(Some).map_err(|e| transport(format!("unreadable answer: {e}")))
    }

    fn decode<T: serde::de::DeserializeOwned>(
        method: &'static str,
        path: &str,
        v: Option<Value>,
    ) -> Result<T, ApiError> {
        serde_json::from_value(v.unwrap_or(Value::Null)).map_err(|e| ApiError::Transport {
            method,
            path: path.to_owned(),
            message: format!("unreadable answer: {e}"),
        })
    }

    /// `GET /servers?tags=...&project=...&page=...&per_page=...`: one page, and the total.
    pub async fn list_servers(
        &self,
        zone: &str,
        project: &str,
        tag: &str,
        page: u32,
        per_page: u32,
    ) -> Result<(Vec<Server>, u64), ApiError> {
        let path = Self::zone_path(zone, "servers");
        let query = [
            ("project", project.to_owned()),
            ("tags", tag.to_owned()),
            ("page", page.to_string()),
            ("per_page", per_page.to_string()),
        ];
        let v = self.call("GET", &path, &query, Body::None).await?;
        let page: ServersPage = Self::decode("GET", &path, v)?;
        Ok((page.servers, page.total_count))
    }

    /// `GET /security_groups?project=...&name=...`.
    pub async fn list_security_groups(
        &self,
        zone: &str,
        project: &str,
        name: &str,
    ) -> Result<Vec<SecurityGroup>, ApiError> {
        let path = Self::zone_path(zone, "security_groups");
        let query = [("project", project.to_owned()), ("name", name.to_owned())];
        let v = self.call("GET", &path, &query, Body::None).await?;
        Ok(Self::decode::<SecurityGroupsPage>("GET", &path, v)?.security_groups)
    }

    /// `POST /servers` with the body the caller built (see `CreateServerRequest`).
    pub async fn create_server(&self, zone: &str, body: Value) -> Result<Server, ApiError> {
        let path = Self::zone_path(zone, "servers");
        let v = self.call("POST", &path, &[], Body::Json(body)).await?;
        Ok(Self::decode::<ServerEnvelope>("POST", &path, v)?.server)
    }

    pub async fn get_server(&self, zone: &str, id: &str) -> Result<Server, ApiError> {
        let id = Self::checked("GET", id)?;
        let path = Self::zone_path(zone, &format!("servers/{id}"));
        let v = self.call("GET", &path, &[], Body::None).await?;
        Ok(Self::decode::<ServerEnvelope>("GET", &path, v)?.server)
    }

    /// `POST /ips {project, type: routed_ipv6, server}`, as SWIM attaches its address.
    pub async fn create_routed_ipv6(&self, zone: &str, project: &str, server: &str) -> Result<(), ApiError> {
        let path = Self::zone_path(zone, "ips");
        let server = Self::checked("POST", server)?;
        let body = serde_json::json!({ "project": project, "type": "routed_ipv6", "server": server });
        self.call("POST", &path, &[], Body::Json(body)).await.map(|_| ())
    }

    /// `PATCH /servers/{id}/user_data/{key}` with the content as `text/plain`.
    pub async fn set_user_data(&self, zone: &str, id: &str, key: &str, content: &str) -> Result<(), ApiError> {
        let id = Self::checked("PATCH", id)?;
        let path = Self::zone_path(zone, &format!("servers/{id}/user_data/{key}"));
        self.call("PATCH", &path, &[], Body::Text(content.to_owned())).await.map(|_| ())
    }

    /// `PATCH /servers/{id} {tags}` (`UpdateServerRequest`): the server's whole tag list.
    pub async fn set_tags(&self, zone: &str, id: &str, tags: &[String]) -> Result<(), ApiError> {
        let id = Self::checked("PATCH", id)?;
        let path = Self::zone_path(zone, &format!("servers/{id}"));
        let body = serde_json::json!({ "tags": tags });
        self.call("PATCH", &path, &[], Body::Json(body)).await.map(|_| ())
    }

    /// `POST /servers/{id}/action {action}` (`poweron`, `poweroff`).
    pub async fn action(&self, zone: &str, id: &str, action: &str) -> Result<(), ApiError> {
        let id = Self::checked("POST", id)?;
        let path = Self::zone_path(zone, &format!("servers/{id}/action"));
        let body = serde_json::json!({ "action": action });
        self.call("POST", &path, &[], Body::Json(body)).await.map(|_| ())
    }

    /// `DELETE /servers/{id}`, `/ips/{id}`, `/volumes/{id}` (`kind` is the collection).
    pub async fn delete(&self, zone: &str, kind: &str, id: &str) -> Result<(), ApiError> {
        let id = Self::checked("DELETE", id)?;
        let path = Self::zone_path(zone, &format!("{kind}/{id}"));
        self.call("DELETE", &path, &[], Body::None).await.map(|_| ())
    }
}

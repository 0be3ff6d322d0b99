//! Forwarding one request to an environment's recorded endpoint, and its response back.
//!
//! - The request goes to `http://<endpoint host>:<endpoint port>` and nowhere else, with the
//!   route's path and the query minus the proxy's own parameters.
//! - **Hop-by-hop headers** (`Connection` and every header it names, `Keep-Alive`,
//!   `Proxy-Connection`, `Proxy-Authorization`, `Proxy-Authenticate`, `TE`, `Trailer`,
//!   `Transfer-Encoding`, `Upgrade`) are dropped both ways; a WebSocket upgrade keeps
//!   `Connection: upgrade` and `Upgrade: websocket`.
//! - **`X-Forwarded-For`** (the peer's address), **`X-Forwarded-Proto`**, **`X-Forwarded-Host`**
//!   and **`X-Forwarded-Prefix`** (the stripped prefix) are set, replacing what the client sent.
//!   `Host` is passed as the client sent it.
//! - **The caller's Lapse credentials never reach the environment**: `X-Lapse-Key`, the
//!   `lapse_session` cookie and the dashboard's `lapse_ui` (other cookies are kept), the `lapse_key`/`lapse_link` query
//!   parameters, and `Authorization` when it carried the Lapse key that was used.
//! - Connections to backends are pooled (keep-alive), made within the connect timeout; the
//!   response must start within the idle timeout of the last byte of the request body; both
//!   bodies are streamed frame by frame (never buffered) through [`IdleBody`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use super::ProxyError;
use super::limits::{IdleBody, Moved, StreamPermit};

/// The name of the proxy's session cookie.
pub const SESSION_COOKIE: &str = "lapse_session";

/// The header a Lapse key may come in besides `Authorization: Bearer`.
pub const KEY_HEADER: &str = "x-lapse-key";

/// Headers that belong to one connection, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The pooled HTTP/1.1 client to backends.
#[derive(Clone, Debug)]
pub struct Forwarder {
    client: Client<HttpConnector, IdleBody<Body>>,
    idle: Duration,
}

/// What to forward, decided by the proxy.
#[derive(Debug)]
pub struct Outbound {
    pub backend: SocketAddr,
    /// Path and query as the backend gets them.
    pub path_and_query: String,
    /// The prefix the route stripped (for `X-Forwarded-Prefix`), if any.
    pub stripped_prefix: Option<String>,
    pub peer: SocketAddr,
    /// Whether `Authorization` held the Lapse key used (then it is not forwarded).
    pub drop_authorization: bool,
}

impl Forwarder {
    pub fn new(connect_timeout: Duration, idle: Duration, max_header_bytes: usize) -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .http1_max_buf_size(max_header_bytes.max(8192))
            .set_host(false)
            .build(connector);
        Forwarder { client, idle }
    }

    /// Forwards `req` as `out` says; the response streams back holding `permit`.
    pub async fn forward(
        &self,
        mut req: Request<Body>,
        out: Outbound,
        permit: StreamPermit,
        on_frame: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Response<Body>, ProxyError> {
        let websocket = super::upgrade::is_websocket(req.headers());
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let uri = format!("http://{}{}", out.backend, out.path_and_query);
        parts.uri = uri.parse().map_err(|_| ProxyError::BadRequest("the path cannot be forwarded".into()))?;
        parts.version = hyper::Version::HTTP_11;
        let original_host = parts.headers.get(header::HOST).cloned();
        clean_request_headers(&mut parts.headers, out.drop_authorization);
        if parts.headers.get(header::HOST).is_none() {
            // HTTP/1.1 needs a Host; the endpoint's is the one left.
            if let Ok(v) = HeaderValue::from_str(&out.backend.to_string()) {
                parts.headers.insert(header::HOST, v);
            }
        }
        set_forwarded(&mut parts.headers, &out, original_host);
        if websocket {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        let moved = Moved::new();
        moved.now();
        let permit = Arc::new(permit);
        let request_body = {
            let on_frame = on_frame.clone();
            IdleBody::new(body, self.idle, moved.clone(), None).on_frame(move || on_frame())
        };
        let sent = self.client.request(Request::from_parts(parts, request_body));
        tokio::pin!(sent);
        // The response must start within the idle timeout of the request's last byte.
        let mut response = loop {
            let deadline = moved.deadline(self.idle);
            tokio::select! {
                answer = &mut sent => break answer.map_err(backend_error)?,
                _ = tokio::time::sleep_until(deadline) => {
                    if moved.deadline(self.idle) <= Instant::now() {
                        return Err(ProxyError::BackendTimeout(self.idle));
                    }
                }
            }
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let backend_upgrade = hyper::upgrade::on(&mut response);
            let (mut parts, _) = response.into_parts();
            clean_response_headers(&mut parts.headers);
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            tokio::spawn(super::upgrade::splice(client_upgrade, backend_upgrade, self.idle, permit, on_frame));
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, body) = response.into_parts();
        clean_response_headers(&mut parts.headers);
        let body = IdleBody::new(body, self.idle, moved, Some(permit)).on_frame(move || on_frame());
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

fn backend_error(e: hyper_util::client::legacy::Error) -> ProxyError {
    use std::error::Error as _;
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.to_string().contains("timed out") || c.is::<super::limits::IdleTimeout>() {
            return ProxyError::BackendTimeout(Duration::ZERO);
        }
        cause = c.source();
    }
    if e.is_connect() {
        ProxyError::BackendUnavailable(
            "the environment's port refused the connection or did not accept it in time".into(),
        )
    } else {
        ProxyError::BackendUnavailable(
            "the environment's port closed the connection or answered something not HTTP".into(),
        )
    }
}

/// The headers named by `Connection`, and the hop-by-hop ones.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Drops hop-by-hop headers and the caller's Lapse credentials.
pub fn clean_request_headers(headers: &mut HeaderMap, drop_authorization: bool) {
    remove_hop_by_hop(headers);
    headers.remove(KEY_HEADER);
    if drop_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    for name in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix", "forwarded"] {
        headers.remove(name);
    }
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        // Neither the proxy's session nor the dashboard's (cookies ignore ports: a browser
        // sends the dashboard's `lapse_ui` to a proxy on the same host).
        .filter(|c| {
            !c.is_empty()
                && c.split_once('=')
                    .is_none_or(|(name, _)| ![SESSION_COOKIE, crate::ui::session::COOKIE].contains(&name.trim()))
        })
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !cookies.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cookies.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

fn clean_response_headers(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
}

fn set_forwarded(headers: &mut HeaderMap, out: &Outbound, host: Option<HeaderValue>) {
    if let Ok(v) = HeaderValue::from_str(&out.peer.ip().to_string()) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = host {
        headers.insert("x-forwarded-host", host);
    }
    if let Some(prefix) = &out.stripped_prefix
        && let Ok(v) = HeaderValue::from_str(prefix)
    {
        headers.insert("x-forwarded-prefix", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("x-lapse-key", "lapse_k"),
            ("authorization", "Bearer lapse_k"),
            ("x-forwarded-for", "6.6.6.6"),
            ("cookie", "a=1; lapse_session=tok; b=2; lapse_ui=dashboard"),
            ("cookie", "lapse_session=other"),
            ("accept", "*/*"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        clean_request_headers(&mut h, true);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["accept", "cookie"]);
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2");
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Basic app-own"));
        h.insert("cookie", HeaderValue::from_static("lapse_session=x"));
        clean_request_headers(&mut h, false);
        assert_eq!(h.get("authorization").unwrap(), "Basic app-own", "not the Lapse key: the app's own");
        assert!(h.get("cookie").is_none());
    }
}

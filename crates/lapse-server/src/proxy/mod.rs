//! The routing proxy: browsers and tools reach an environment's ports through Lapse
//! (`lapse serve --proxy-listen ADDR`).
//!
//! Contract:
//! - **Its own listener, accept loop and connection cap** ([`listen`]), apart from the API's,
//!   and its own stream caps ([`limits`]), so proxied traffic cannot take the API's
//!   connections.
//! - **Routes** ([`route`]): `/e/<id>/<port>/...`, `/<route>/<id>/...` from `spec.routes`, and
//!   `<id>-<route>.<domain>` with `--proxy-domain`. Path tricks are refused with a `400`.
//! - **Only endpoints Lapse recorded are ever connected to**: the environment's
//!   `endpoints[container_port == port]`, for a port in its spec. An environment that does not
//!   exist or is another tenant's is a `404`; a port or route its spec does not expose is a
//!   `404`; an environment that is not running is a `409`. Every refusal is JSON
//!   `{"error": {"code", "message"}}` and forwards nothing.
//! - **Access** ([`access`], [`token`]): the API's keys, a session cookie, a signed link from
//!   `POST /v1/environments/{id}/links` ([`links`]).
//! - **Forwarding** ([`forward`], [`upgrade`]): HTTP/1.1 with streamed bodies (chunked, SSE:
//!   passed on as they come), WebSocket upgrades spliced both ways, hop-by-hop headers dropped,
//!   `X-Forwarded-*` set, the caller's Lapse credentials never forwarded.
//! - **Bounds**: a connect timeout, an idle timeout on both sides (a backend that stalls before
//!   or during its answer, or never reads, is cut: `504`, or the stream ends), concurrent
//!   streams per environment (`429`) and in total (`503`), request heads at most
//!   `max_header_bytes` (`431`).
//! - **Aliases** ([`RouteAlias`], set by `compat::classla`): a route's id may be a short name
//!   the alias resolves (`/code/<8 chars>/`); a name it does not know is a `404`. The alias
//!   may also open the environments it names to requests without credentials (the Classla
//!   adapter's `--classla-open-urls`): every other environment still needs credentials.
//! - **Activity**: every proxied request, request-body frame and WebSocket read is reported to
//!   an [`ActivitySink`] (at most once a second per environment; the sink must not block).
//!   `lapse serve` wires a no-op until idle stop consumes it.

pub mod access;
#[cfg(test)]
mod activity_tests;
pub mod cache;
pub mod forward;
pub mod limits;
pub mod links;
pub mod listen;
pub mod route;
pub mod token;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use lapse_core::model::ObservedState;
use lapse_core::wire::{ErrorBody, ErrorDetail};

use crate::app::App;
use route::{RouteError, Routed, Target};

/// Where proxied activity is reported (idle stop). Called on the request path: it must be
/// cheap and never wait (no store writes, no locks held across awaits).
pub trait ActivitySink: Send + Sync {
    fn touch(&self, environment_id: &str);
}

/// Names the proxy resolves besides environment ids (a seed's short ids, `/code/<8 chars>`),
/// and environments reached without credentials. Called on the request path: it must be
/// cheap and never wait.
pub trait RouteAlias: Send + Sync + std::fmt::Debug {
    /// The environment id `alias` stands for, if any.
    fn resolve(&self, alias: &str) -> Option<String>;
    /// Whether environment `id` is open to requests without credentials.
    fn is_open(&self, environment_id: &str) -> bool;
}

/// The sink that drops every report.
#[derive(Debug, Default)]
pub struct NoActivity;

impl ActivitySink for NoActivity {
    fn touch(&self, _: &str) {}
}

/// The proxy's settings (`lapse serve --proxy-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// Host routing: `<id>-<route>.<domain>`.
    pub domain: Option<String>,
    /// The proxy's address as users reach it (`https://ide.example.com`), for signed links;
    /// default `http://<listen address>`. An `https` URL makes cookies `Secure`.
    pub public_url: Option<String>,
    pub connect_timeout: Duration,
    /// No byte either way for this long ends a stream (and a response must start this long
    /// after the request's last byte).
    pub idle_timeout: Duration,
    /// A request's headers must arrive within this long (also between keep-alive requests).
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_streams: usize,
    pub max_streams_per_environment: usize,
    pub max_header_bytes: usize,
}

impl ProxyConfig {
    pub fn new(listen: SocketAddr) -> ProxyConfig {
        ProxyConfig {
            listen,
            domain: None,
            public_url: None,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_streams: 1024,
            max_streams_per_environment: 64,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// What the links route needs of a running proxy.
#[derive(Debug)]
pub struct LinkIssuer {
    pub signer: Arc<token::Signer>,
    /// `http://127.0.0.1:7071`, no trailing `/`.
    pub base_url: String,
}

/// Why a proxied request was not forwarded (or failed at the backend).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    LinkInvalid(String),
    #[error("the link has expired; ask for a new one")]
    LinkExpired,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotRunning(String),
    #[error(transparent)]
    Limit(#[from] limits::LimitError),
    #[error("too many requests without a valid key from this address")]
    RateLimited(Duration),
    #[error("the request's headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    #[error("the store cannot be read now; retry")]
    StoreUnavailable,
    #[error("{0}")]
    BackendUnavailable(String),
    #[error("the environment did not answer within the proxy's idle timeout")]
    BackendTimeout(Duration),
}

impl ProxyError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::BadRequest(_) | ProxyError::Route(RouteError::BadPath(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            ProxyError::Route(RouteError::NoRoute) => (StatusCode::NOT_FOUND, "not_found"),
            ProxyError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ProxyError::LinkInvalid(_) => (StatusCode::FORBIDDEN, "link_invalid"),
            ProxyError::LinkExpired => (StatusCode::FORBIDDEN, "link_expired"),
            ProxyError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ProxyError::NotRunning(_) => (StatusCode::CONFLICT, "not_running"),
            ProxyError::Limit(limits::LimitError::Environment(_)) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_streams")
            }
            ProxyError::Limit(limits::LimitError::Total(_)) => (StatusCode::SERVICE_UNAVAILABLE, "proxy_busy"),
            ProxyError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ProxyError::HeadersTooLarge(_) => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large"),
            ProxyError::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ProxyError::BackendUnavailable(_) => (StatusCode::BAD_GATEWAY, "backend_unavailable"),
            ProxyError::BackendTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "backend_timeout"),
        }
    }

    /// The JSON answer.
    pub fn into_response(self) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let retry = match &self {
            ProxyError::RateLimited(wait) => Some(wait.as_secs().max(1)),
            ProxyError::Limit(_) => Some(1),
            _ => None,
        };
        let body = ErrorBody { error: ErrorDetail { code: code.to_owned(), message: self.to_string() } };
        // Serializing two strings cannot fail.
        let bytes = serde_json::to_vec(&body).expect("an error body serializes");
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = retry {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A running proxy's shared state.
pub struct Proxy {
    pub app: App,
    pub config: ProxyConfig,
    pub signer: Arc<token::Signer>,
    pub streams: Arc<limits::Streams>,
    pub activity: Arc<limits::Throttle>,
    envs: Arc<cache::EnvCache>,
    forwarder: forward::Forwarder,
    secure_cookies: bool,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("config", &self.config).finish_non_exhaustive()
    }
}

/// A started proxy.
#[derive(Debug)]
pub struct Started {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds the proxy's listener, makes (or reads) the link secret, and serves until `shutdown`.
pub async fn start(
    app: App,
    config: ProxyConfig,
    activity: Arc<dyn ActivitySink>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Started> {
    let signer = Arc::new(token::Signer::load_or_create(&app.cx.config.data_dir)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {} (--proxy-listen)", config.listen))?;
    let addr = listener.local_addr()?;
    let base_url = config.public_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let base_url = base_url.trim_end_matches('/').to_owned();
    let _ = app.cx.proxy_links.set(Arc::new(LinkIssuer { signer: signer.clone(), base_url: base_url.clone() }));
    let proxy = Arc::new(Proxy {
        forwarder: forward::Forwarder::new(config.connect_timeout, config.idle_timeout, config.max_header_bytes),
        streams: limits::Streams::new(config.max_streams, config.max_streams_per_environment),
        activity: Arc::new(limits::Throttle::new(activity)),
        secure_cookies: base_url.starts_with("https://"),
        envs: cache::EnvCache::follow(&app.cx.store),
        signer,
        config,
        app,
    });
    tracing::info!(%addr, %base_url, domain = ?proxy.config.domain, "the proxy is serving");
    let task = tokio::spawn(listen::serve(listener, proxy, shutdown));
    Ok(Started { addr, task })
}

impl Proxy {
    /// Answers one request: forwarded, or a JSON refusal.
    pub async fn handle(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        match self.serve(peer, req.map(Body::new)).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    async fn serve(&self, peer: SocketAddr, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        if req.method() == Method::CONNECT || req.uri().scheme().is_some() || req.uri().authority().is_some() {
            return Err(ProxyError::BadRequest(
                "only origin-form request targets (/path) are proxied, not absolute URLs or CONNECT".into(),
            ));
        }
        let head_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        if head_bytes > self.config.max_header_bytes {
            return Err(ProxyError::HeadersTooLarge(self.config.max_header_bytes));
        }
        let path = req.uri().path().to_owned();
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
        let routed = match (host, &self.config.domain) {
            (Some(host), Some(domain)) => {
                route::parse_host(host, domain, &path).unwrap_or_else(|| route::parse_path(&path))
            }
            _ => route::parse_path(&path),
        }?;
        let mut routed = routed;
        if !lapse_core::model::is_environment_id(&routed.environment_id) {
            let alias = self.app.cx.route_alias.get();
            routed.environment_id = alias.and_then(|a| a.resolve(&routed.environment_id)).ok_or(RouteError::NoRoute)?;
        }
        let (query, key_param, link_param) = route::split_query(req.uri().query());
        let granted =
            access::authorize(self, req.headers(), &routed, key_param.as_deref(), link_param.as_deref(), peer.ip())
                .await?;
        let (backend, strip) = self.backend(&routed, &granted.caller).await?;
        let is_read = matches!(*req.method(), Method::GET | Method::HEAD);
        let needs_slash = routed.rest.is_empty() && !routed.prefix.is_empty();
        if is_read && (granted.session.is_some() || needs_slash) {
            return Ok(self.redirect(&routed, query.as_deref(), granted.session.as_ref()));
        }
        let permit = self.streams.admit(&routed.environment_id)?;
        self.activity.touch(&routed.environment_id);
        let mut path_and_query = routed.forwarded_path(strip);
        if let Some(q) = &query {
            path_and_query = format!("{path_and_query}?{q}");
        }
        let out = forward::Outbound {
            backend,
            path_and_query,
            stripped_prefix: (strip && !routed.prefix.is_empty()).then(|| routed.prefix.clone()),
            peer,
            drop_authorization: granted.drop_authorization,
        };
        let on_frame: Arc<dyn Fn() + Send + Sync> = {
            let (activity, id) = (self.activity.clone(), routed.environment_id.clone());
            Arc::new(move || activity.touch(&id))
        };
        let mut response = self.forwarder.forward(req, out, permit, on_frame).await?;
        if let Some(session) = &granted.session {
            self.add_cookie(&mut response, &routed, session);
        }
        Ok(response)
    }

    /// The recorded endpoint of the request's port, and whether its prefix is stripped.
    async fn backend(&self, routed: &Routed, caller: &crate::auth::Caller) -> Result<(SocketAddr, bool), ProxyError> {
        let id = &routed.environment_id;
        // As `App::get` reads it (another tenant's is not there), from the exact cache.
        let env = self.envs.get(&self.app.cx.store, id).await.map_err(|_| ProxyError::StoreUnavailable)?;
        let Some(mut env) = env.filter(|e| caller.sees(&e.tenant)) else {
            return Err(ProxyError::NotFound(format!("no environment {id}")));
        };
        if let Some(intent) = self.app.cx.deferred.get(id) {
            let mut overlaid = (*env).clone();
            intent.overlay(&mut overlaid);
            env = Arc::new(overlaid);
        }
        let (port, strip) = match &routed.target {
            Target::Port(p) => (*p, true),
            Target::Route(name) => match env.spec.routes.get(name) {
                Some(r) => (r.port(), r.strip_prefix()),
                None => return Err(ProxyError::NotFound(format!("environment {id} has no route {name:?}"))),
            },
        };
        if !env.spec.ports.contains(&port) {
            return Err(ProxyError::NotFound(format!("environment {id} does not expose port {port}")));
        }
        if env.observed != ObservedState::Running {
            return Err(ProxyError::NotRunning(format!(
                "environment {id} is {}, not running",
                serde_json::to_value(env.observed).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            )));
        }
        // Running without endpoints: its container died and is being restarted (`moves`).
        if env.endpoints.is_empty() {
            return Err(ProxyError::BackendUnavailable(format!(
                "environment {id} has no address the proxy can reach right now (its container may be restarting); try again shortly"
            )));
        }
        let endpoint = env
            .endpoints
            .iter()
            .find(|e| e.container_port == port)
            .ok_or_else(|| ProxyError::NotFound(format!("environment {id} has no endpoint for port {port}")))?;
        let ip: std::net::IpAddr = endpoint
            .host
            .parse()
            .map_err(|_| ProxyError::BackendUnavailable(format!("environment {id}'s endpoint is not an IP address")))?;
        Ok((SocketAddr::new(ip, endpoint.port), strip))
    }

    fn redirect(&self, routed: &Routed, query: Option<&str>, session: Option<&token::Token>) -> Response<Body> {
        let mut location = if routed.prefix.is_empty() {
            routed.rest.clone()
        } else {
            format!("{}{}", routed.prefix, if routed.rest.is_empty() { "/" } else { &routed.rest })
        };
        if let Some(q) = query {
            location = format!("{location}?{q}");
        }
        let status = if session.is_some() { StatusCode::SEE_OTHER } else { StatusCode::PERMANENT_REDIRECT };
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        if let Ok(v) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, v);
        }
        if let Some(session) = session {
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            self.add_cookie(&mut response, routed, session);
        }
        response
    }

    fn add_cookie(&self, response: &mut Response<Body>, routed: &Routed, session: &token::Token) {
        let now = self.app.cx.clock.now();
        let max_age = (session.expires_at - now) / 1000;
        let value = access::set_cookie(&self.signer.sign(session), &routed.cookie_path(), max_age, self.secure_cookies);
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
}

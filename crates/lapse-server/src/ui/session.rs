//! Dashboard sessions: signing in with a key, the `lapse_ui` cookie, and CSRF.
//!
//! - `POST /ui/session {"key"}` checks the key exactly as the API does
//!   ([`crate::auth::Auth::caller`], with the same per-address limit on refusals) and sets
//!   `lapse_ui=<token>`: `HttpOnly; SameSite=Strict; Path=/; Max-Age=43200` (and `Secure` when
//!   the request came over TLS or `X-Forwarded-Proto: https`). The token is 256 random bits;
//!   the server keeps only its SHA-256, in memory (a restart signs everyone out), mapped to
//!   the key's id (never the key), a CSRF token and the expiry. At most [`MAX_SESSIONS`]: at
//!   the cap, the expired go, then the one closest to its end. Metrics keys cannot sign in.
//! - `GET /ui/session` says whether sign-in is needed and who is signed in (with the CSRF
//!   token); `DELETE /ui/session` signs out.
//! - The API's authentication layer takes the cookie when no `Authorization` is sent
//!   ([`caller_of_cookie`]): the key is read again from the store on every request, so a
//!   revoked key ends its sessions; every request but `GET`/`HEAD` must carry
//!   `X-Lapse-CSRF: <token>` of that session; an `Origin` header, when sent, must name the
//!   request's `Host`. Otherwise `403`. Requests with a key are unchanged.
//! - With no admin key (single-tenant, loopback only) there is nothing to sign in to: the
//!   cookie is ignored and every caller is [`Caller::Open`].

use std::collections::HashMap;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::{App, AppError};
use crate::auth::{AuthError, Caller};
use crate::http::{ApiError, ApiJson};
use lapse_core::Millis;

/// The cookie's name.
pub const COOKIE: &str = "lapse_ui";
/// The header a state-changing cookie request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-lapse-csrf";
/// How long a session lasts.
pub const SESSION_TTL_SECS: u64 = 12 * 3600;
/// Sessions held at most.
pub const MAX_SESSIONS: usize = 10_000;

/// Who a session stands for: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Admin,
    /// A tenant key, by id.
    Key(String),
}

#[derive(Clone, Debug)]
pub struct Session {
    pub who: Identity,
    pub csrf: String,
    pub expires_at: Millis,
}

/// The sessions, by the SHA-256 of their token.
#[derive(Debug, Default)]
pub struct Sessions {
    map: std::sync::Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// A new session for `who`: its cookie token and the session.
    pub fn create(&self, who: Identity, now: Millis) -> (String, Session) {
        let token = random_hex();
        let session = Session { who, csrf: random_hex(), expires_at: now + (SESSION_TTL_SECS * 1000) as Millis };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires_at > now);
        }
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires_at).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(digest(&token), session.clone());
        (token, session)
    }

    /// The live session of `token`; an expired one is removed.
    pub fn get(&self, token: &str, now: Millis) -> Option<Session> {
        let key = digest(token);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, token: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&digest(token));
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The caller a dashboard cookie stands for, or `None` when the request is not the cookie's
/// to decide (it sent `Authorization`, it has no `lapse_ui` cookie, or the server has no keys).
pub async fn caller_of_cookie(
    app: &App,
    method: &Method,
    headers: &HeaderMap,
    has_authorization: bool,
) -> Option<Result<Caller, AuthError>> {
    if has_authorization || !app.cx.auth.enabled() {
        return None;
    }
    let token = cookie(headers)?;
    Some(check_cookie(app, method, headers, &token).await)
}

async fn check_cookie(app: &App, method: &Method, headers: &HeaderMap, token: &str) -> Result<Caller, AuthError> {
    if !same_origin(headers) {
        return Err(AuthError::Forbidden("the Origin of this request is not this server's: refused"));
    }
    let sessions = &app.cx.ui.sessions;
    let session = sessions.get(token, app.cx.clock.now()).ok_or(AuthError::SessionEnded)?;
    if !matches!(*method, Method::GET | Method::HEAD) {
        let sent = headers.get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        if !constant_time_eq(sent, session.csrf.as_bytes()) {
            return Err(AuthError::Forbidden(
                "a dashboard request that changes something must carry the session's X-Lapse-CSRF token",
            ));
        }
    }
    match current_caller(app, &session.who).await {
        Err(AuthError::Invalid) => {
            sessions.remove(token);
            Err(AuthError::SessionEnded)
        }
        other => other,
    }
}

/// Whether the session of `token` still stands for a valid key (a live stream's re-check).
pub async fn still_valid(app: &App, token: &str) -> bool {
    match app.cx.ui.sessions.get(token, app.cx.clock.now()) {
        Some(session) => current_caller(app, &session.who).await.is_ok(),
        None => false,
    }
}

/// The caller `who` is now, read again from the store.
async fn current_caller(app: &App, who: &Identity) -> Result<Caller, AuthError> {
    match who {
        Identity::Admin => Ok(Caller::Admin),
        Identity::Key(id) => match app.cx.auth.caller_of_key_id(&app.cx.store, id).await? {
            // A key's scope never changes, but should a metrics key appear here it gets nothing.
            Caller::Metrics { .. } => Err(AuthError::Invalid),
            caller => Ok(caller),
        },
    }
}

/// `POST /ui/session`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub key: String,
}

/// What `/ui/session` answers.
#[derive(Debug, Serialize)]
pub struct SessionView {
    /// Whether this server needs a sign-in (it has keys).
    pub required: bool,
    pub signed_in: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The one tenant this session sees; `null` for all.
    pub tenant: Option<String>,
    pub admin: bool,
    /// The token to send in `X-Lapse-CSRF` with every request that changes something.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl SessionView {
    fn signed_out() -> SessionView {
        SessionView {
            required: true,
            signed_in: false,
            actor: None,
            tenant: None,
            admin: false,
            csrf: None,
            expires_at: None,
        }
    }

    fn open() -> SessionView {
        SessionView {
            required: false,
            signed_in: true,
            actor: Some(Caller::Open.actor()),
            tenant: None,
            admin: true,
            csrf: None,
            expires_at: None,
        }
    }

    fn of(caller: &Caller, session: &Session) -> SessionView {
        SessionView {
            required: true,
            signed_in: true,
            actor: Some(caller.actor()),
            tenant: caller.scope().map(str::to_owned),
            admin: caller.is_admin(),
            csrf: Some(session.csrf.clone()),
            expires_at: Some(lapse_core::format_millis(session.expires_at)),
        }
    }
}

/// `POST /ui/session`: sign in with a key.
pub async fn sign_in(State(app): State<App>, req: Request) -> Result<Response, ApiError> {
    let headers = req.headers().clone();
    let peer = req.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    if !same_origin(&headers) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the Origin of this request is not this server's",
        ));
    }
    let auth = &app.cx.auth;
    if !auth.enabled() {
        return Ok(Json(SessionView::open()).into_response());
    }
    if let Some(ip) = peer
        && let Err(wait) = auth.blocked(ip)
    {
        return Err(too_many(wait));
    }
    let ApiJson(body) = ApiJson::<SignIn>::from_request(req, &app).await?;
    let who = match auth.caller(&app.cx.store, Some(&format!("Bearer {}", body.key))).await {
        Ok(Caller::Admin) => Identity::Admin,
        Ok(Caller::Tenant { key_id, .. }) => Identity::Key(key_id),
        Ok(Caller::Metrics { .. }) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a metrics key cannot sign in to the dashboard",
            ));
        }
        Ok(Caller::Open) => return Ok(Json(SessionView::open()).into_response()),
        Err(AuthError::Store(e)) => return Err(AppError::Store(e).into()),
        Err(e) => {
            if let Some(ip) = peer
                && let Err(wait) = auth.refused_from(ip)
            {
                return Err(too_many(wait));
            }
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()));
        }
    };
    let caller = current_caller(&app, &who)
        .await
        .map_err(|_| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the key is not valid"))?;
    let (token, session) = app.cx.ui.sessions.create(who, app.cx.clock.now());
    let mut answer = Json(SessionView::of(&caller, &session)).into_response();
    let secure = if over_tls(&headers) { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_TTL_SECS}{secure}");
    // Hex and fixed ASCII: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        answer.headers_mut().insert(header::SET_COOKIE, value);
    }
    answer.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(answer)
}

/// `GET /ui/session`: who is signed in, with the CSRF token.
pub async fn show(State(app): State<App>, req: Request) -> Result<Response, ApiError> {
    if !app.cx.auth.enabled() {
        return Ok(Json(SessionView::open()).into_response());
    }
    let token = cookie(req.headers());
    drop(req);
    let view = match token {
        Some(token) => match app.cx.ui.sessions.get(&token, app.cx.clock.now()) {
            Some(session) => match current_caller(&app, &session.who).await {
                Ok(caller) => SessionView::of(&caller, &session),
                Err(AuthError::Store(e)) => return Err(AppError::Store(e).into()),
                Err(_) => {
                    app.cx.ui.sessions.remove(&token);
                    SessionView::signed_out()
                }
            },
            None => SessionView::signed_out(),
        },
        None => SessionView::signed_out(),
    };
    let mut answer = Json(view).into_response();
    answer.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(answer)
}

/// `DELETE /ui/session`: sign out (with the session's CSRF token).
pub async fn sign_out(State(app): State<App>, req: Request) -> Result<Response, ApiError> {
    let (method, headers) = (req.method().clone(), req.headers().clone());
    if let Some(token) = cookie(&headers)
        && app.cx.auth.enabled()
    {
        match check_cookie(&app, &method, &headers, &token).await {
            Ok(_) | Err(AuthError::SessionEnded) => app.cx.ui.sessions.remove(&token),
            Err(AuthError::Forbidden(why)) => return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", why)),
            Err(AuthError::Store(e)) => return Err(AppError::Store(e).into()),
            Err(_) => app.cx.ui.sessions.remove(&token),
        }
    }
    let mut answer = Json(SessionView { required: app.cx.auth.enabled(), ..SessionView::signed_out() }).into_response();
    let expired = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&expired) {
        answer.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(answer)
}

fn too_many(wait: std::time::Duration) -> ApiError {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests without a valid key from this address; retry in {seconds} s"),
    )
}

/// The `lapse_ui` cookie's value, from any `Cookie` header.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
}

/// Whether the request has no `Origin`, or one whose host (and port) is its `Host`.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")))
        .filter(|rest| !rest.is_empty() && !rest.contains('/'));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("https")))
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    // The OS's random source failing leaves nothing safe to do.
    getrandom::fill(&mut bytes).expect("the OS random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares without an early exit on content (the length of a CSRF token is public).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn sessions_expire_and_stay_bounded() {
        let sessions = Sessions::default();
        let (token, s) = sessions.create(Identity::Key("k1".into()), 1_000);
        assert_eq!(s.expires_at, 1_000 + 43_200_000);
        assert!(sessions.get(&token, 1_000 + 43_199_999).is_some());
        assert!(sessions.get(&token, 1_000 + 43_200_000).is_none(), "ended at Max-Age");
        assert!(sessions.is_empty(), "an expired session is dropped when seen");
        assert!(sessions.get("not-a-token", 0).is_none());
        let (a, _) = sessions.create(Identity::Admin, 0);
        for i in 1..MAX_SESSIONS + 5 {
            sessions.create(Identity::Key(format!("{i}")), i as Millis);
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions.get(&a, 1).is_none(), "the session closest to its end made room");
    }

    #[test]
    fn cookies_origins_and_tls_are_read_strictly() {
        assert_eq!(cookie(&headers(&[("cookie", "a=1; lapse_ui=abc ; b=2")])), Some("abc".into()));
        assert_eq!(cookie(&headers(&[("cookie", "a=1"), ("cookie", "lapse_ui=x")])), Some("x".into()));
        assert_eq!(cookie(&headers(&[("cookie", "xlapse_ui=abc")])), None);
        assert!(same_origin(&headers(&[("host", "127.0.0.1:7070")])), "no Origin");
        assert!(same_origin(&headers(&[("host", "127.0.0.1:7070"), ("origin", "http://127.0.0.1:7070")])));
        for bad in ["http://evil.test", "null", "http://127.0.0.1:7071", "http://127.0.0.1:7070/x", "127.0.0.1:7070"] {
            assert!(!same_origin(&headers(&[("host", "127.0.0.1:7070"), ("origin", bad)])), "{bad}");
        }
        assert!(!same_origin(&headers(&[("origin", "http://127.0.0.1:7070")])), "no Host");
        assert!(over_tls(&headers(&[("x-forwarded-proto", "https")])));
        assert!(!over_tls(&headers(&[("x-forwarded-proto", "http")])));
        assert!(constant_time_eq(b"ab", b"ab") && !constant_time_eq(b"ab", b"ac") && !constant_time_eq(b"a", b"ab"));
    }
}

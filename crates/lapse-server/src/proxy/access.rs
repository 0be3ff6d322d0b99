//! Who may use a proxied route: the API's keys, a session cookie made from a key or a link,
//! or a signed link.
//!
//! Credentials are looked for in this order; the first one present decides:
//! 1. `?lapse_link=<token>`: a signed link for this environment and this port or route, not
//!    expired (else `403 link_invalid` / `403 link_expired`).
//! 2. `?lapse_key=<key>`: an API key, as the API takes it.
//! 3. `X-Lapse-Key: <key>`, then `Authorization: Bearer <key>` (an `Authorization` that is not
//!    a valid Lapse key is the app's own: it is forwarded, and a cookie may still grant).
//! 4. The `lapse_session` cookie the proxy set from one of the first two.
//!
//! Without an admin key (single-tenant, loopback only) every request is let in, as in the API.
//! An environment a [`super::RouteAlias`] opens is let in without credentials (the Classla
//! adapter's with `--classla-open-urls`, as the seed's Traefik routes had no auth).
//! With keys, a request without credentials is a `401`. A key's caller sees what it sees in
//! the API: another tenant's environment is a `404`, as one that does not exist. Credentials
//! in the query get a session cookie (HttpOnly, SameSite=Lax, Path of the environment's route)
//! and, for `GET`/`HEAD`, a redirect to the same URL without them. A session from a key is
//! checked against the key on every request, so revoking the key ends it; a session from a
//! link ends when the link would. Bad keys count against the per-address limit of requests
//! without a valid key, as in the API.

use hyper::header::{self, HeaderMap};
use lapse_store::KeyScope;

use super::forward::{KEY_HEADER, SESSION_COOKIE};
use super::route::{Routed, Target};
use super::token::{Kind, Principal, Scope, Token, TokenError};
use super::{Proxy, ProxyError};
use crate::auth::{AuthError, Caller};

/// How long a session made from a key lasts.
pub const KEY_SESSION: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// What the credentials allow.
#[derive(Debug)]
pub struct Granted {
    /// Whose view the environment is looked up in.
    pub caller: Caller,
    /// A session cookie to set (the credentials came in the query).
    pub session: Option<Token>,
    /// `Authorization` carried the key used: it is not forwarded.
    pub drop_authorization: bool,
}

/// Decides whether the request may reach `routed`. `Authorization` holding a valid Lapse key
/// is never forwarded, whichever credential granted the request.
pub async fn authorize(
    proxy: &Proxy,
    headers: &HeaderMap,
    routed: &Routed,
    key_param: Option<&str>,
    link_param: Option<&str>,
    peer: std::net::IpAddr,
) -> Result<Granted, ProxyError> {
    let mut granted = decide(proxy, headers, routed, key_param, link_param, peer).await?;
    if !granted.drop_authorization
        && proxy.app.cx.auth.enabled()
        && let Some(token) = bearer(headers)
    {
        granted.drop_authorization = key_caller(proxy, token).await.is_ok();
    }
    Ok(granted)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(crate::auth::bearer_token)
}

async fn decide(
    proxy: &Proxy,
    headers: &HeaderMap,
    routed: &Routed,
    key_param: Option<&str>,
    link_param: Option<&str>,
    peer: std::net::IpAddr,
) -> Result<Granted, ProxyError> {
    let auth = &proxy.app.cx.auth;
    if let Err(wait) = auth.blocked(peer) {
        return Err(ProxyError::RateLimited(wait));
    }
    let now = proxy.app.cx.clock.now();
    let refused = |e: ProxyError| match auth.refused_from(peer) {
        Err(wait) => ProxyError::RateLimited(wait),
        Ok(()) => e,
    };
    if let Some(text) = link_param {
        let token = super::route::query_value(text).unwrap_or_default();
        let token = proxy.signer.verify(&token, now).map_err(|e| refused(link_error(e)))?;
        if token.kind != Kind::Link || token.environment_id != routed.environment_id {
            return Err(refused(ProxyError::LinkInvalid("the link is not for this environment".into())));
        }
        if !opens(&token.scope, &routed.target) {
            return Err(ProxyError::LinkInvalid("the link is for another port or route of this environment".into()));
        }
        let session = Token { kind: Kind::Session, principal: Principal::Link, ..token };
        return Ok(Granted { caller: Caller::Admin, session: Some(session), drop_authorization: false });
    }
    if let Some(text) = key_param {
        let key = super::route::query_value(text).unwrap_or_default();
        let caller = key_caller(proxy, &key).await.map_err(refused)?;
        let expires_at = now.saturating_add(i64::try_from(KEY_SESSION.as_millis()).unwrap_or(i64::MAX));
        let session = Token {
            kind: Kind::Session,
            environment_id: routed.environment_id.clone(),
            scope: Scope::Any,
            expires_at,
            principal: principal_of(&caller),
        };
        return Ok(Granted { caller, session: Some(session), drop_authorization: false });
    }
    if let Some(key) = headers.get(KEY_HEADER) {
        let key = key.to_str().map_err(|_| refused(ProxyError::Unauthorized("the key is not valid".into())))?;
        let caller = key_caller(proxy, key).await.map_err(refused)?;
        return Ok(Granted { caller, session: None, drop_authorization: false });
    }
    let mut failure = None;
    if auth.enabled()
        && let Some(token) = bearer(headers)
    {
        match key_caller(proxy, token).await {
            Ok(caller) => return Ok(Granted { caller, session: None, drop_authorization: true }),
            Err(e @ ProxyError::StoreUnavailable) => return Err(e),
            // Perhaps the app's own token: a session cookie may still let the request in.
            Err(e) => failure = Some(e),
        }
    }
    let mut cookie_failure = None;
    for value in session_cookies(headers) {
        match session_caller(proxy, value, routed, now).await {
            Ok(caller) => return Ok(Granted { caller, session: None, drop_authorization: false }),
            Err(e @ ProxyError::StoreUnavailable) => return Err(e),
            Err(e) => cookie_failure = Some(e),
        }
    }
    if !auth.enabled() {
        return Ok(Granted { caller: Caller::Open, session: None, drop_authorization: false });
    }
    // An environment its alias opens (the Classla adapter's, with `--classla-open-urls`):
    // reached without credentials, and only that one (the route names it).
    if proxy.app.cx.route_alias.get().is_some_and(|a| a.is_open(&routed.environment_id)) {
        return Ok(Granted { caller: Caller::Admin, session: None, drop_authorization: false });
    }
    Err(refused(cookie_failure.or(failure).unwrap_or_else(|| {
        ProxyError::Unauthorized(
            "an API key is needed: send X-Lapse-Key or Authorization: Bearer, open the URL once with ?lapse_key=, or use a signed link"
                .into(),
        )
    })))
}

fn link_error(e: TokenError) -> ProxyError {
    match e {
        TokenError::Expired => ProxyError::LinkExpired,
        TokenError::Invalid => ProxyError::LinkInvalid(e.to_string()),
    }
}

/// Whether a token's scope opens the request's target.
fn opens(scope: &Scope, target: &Target) -> bool {
    match (scope, target) {
        (Scope::Any, _) => true,
        (Scope::Port(a), Target::Port(b)) => a == b,
        (Scope::Route(a), Target::Route(b)) => a == b,
        _ => false,
    }
}

fn principal_of(caller: &Caller) -> Principal {
    match caller {
        Caller::Open => Principal::Open,
        Caller::Admin => Principal::Admin,
        Caller::Tenant { key_id, .. } | Caller::Metrics { key_id } => Principal::Key(key_id.clone()),
    }
}

/// The caller of an API key, as the API decides it.
async fn key_caller(proxy: &Proxy, key: &str) -> Result<Caller, ProxyError> {
    let cx = &proxy.app.cx;
    match cx.auth.caller(&cx.store, Some(&format!("Bearer {key}"))).await {
        Ok(caller) => Ok(caller),
        Err(AuthError::Store(_)) => Err(ProxyError::StoreUnavailable),
        Err(e) => Err(ProxyError::Unauthorized(e.to_string())),
    }
}

/// The caller a session cookie stands for, if it is this server's, for this route, unexpired,
/// and its key still valid.
async fn session_caller(proxy: &Proxy, value: &str, routed: &Routed, now: i64) -> Result<Caller, ProxyError> {
    let expired = || ProxyError::Unauthorized("the session has expired: open the link again, or use a key".into());
    let token = proxy.signer.verify(value, now).map_err(|e| match e {
        TokenError::Expired => expired(),
        TokenError::Invalid => ProxyError::Unauthorized("the session cookie is not valid".into()),
    })?;
    if token.kind != Kind::Session
        || token.environment_id != routed.environment_id
        || !opens(&token.scope, &routed.target)
    {
        return Err(ProxyError::Unauthorized("the session cookie is for another route".into()));
    }
    let keys_on = proxy.app.cx.auth.enabled();
    match token.principal {
        Principal::Open if keys_on => {
            Err(ProxyError::Unauthorized("the session was made before keys were required".into()))
        }
        Principal::Open => Ok(Caller::Open),
        Principal::Admin | Principal::Link => Ok(if keys_on { Caller::Admin } else { Caller::Open }),
        Principal::Key(id) => {
            let key = proxy.app.cx.store.key(&id).await.map_err(|_| ProxyError::StoreUnavailable)?;
            match key {
                Some(k) if k.revoked_at.is_none() => match k.scope {
                    KeyScope::Tenant(tenant) => Ok(Caller::Tenant { tenant, key_id: k.id }),
                    KeyScope::Metrics => Ok(Caller::Metrics { key_id: k.id }),
                },
                _ => Err(ProxyError::Unauthorized("the key this session was made from is revoked".into())),
            }
        }
    }
}

/// The values of every `lapse_session` cookie sent.
fn session_cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(name, _)| name.trim() == SESSION_COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
}

/// The `Set-Cookie` value of a session on `path`.
pub fn set_cookie(signed: &str, path: &str, max_age_secs: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}={signed}; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax{secure}", max_age_secs.max(1))
}

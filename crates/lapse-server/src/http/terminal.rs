//! `GET /v1/environments/{id}/terminal?cols=C&rows=R`: an interactive shell in a running
//! environment over a WebSocket (the dashboard's xterm.js, `lapse shell`).
//!
//! Contract:
//! - **Before the upgrade** the answers are the API's JSON errors, checked in this order:
//!   authentication (the API's own middleware); `403` when an `Origin` header names another
//!   host than `Host` (cross-site WebSocket hijacking: a page elsewhere cannot open a
//!   terminal with the browser's credentials); `400` for unknown query keys or `cols`/`rows`
//!   outside 1..=1000 (default 80×24); `404` for a missing or another tenant's environment;
//!   `409` when it is not running; `400 unsupported` for a provider without terminals; `429
//!   too_many_terminals` over `--terminal-max-per-environment` (4), `503 terminals_busy` over
//!   `--terminal-max` (64); a request that is not a WebSocket upgrade gets axum's status
//!   (400, 405, 426) as JSON. Only then is the shell started (a provider failure is its
//!   usual `409`/`502`/`503`), the opening recorded in the audit trail, and the connection
//!   upgraded.
//! - **On the socket** (see [`session`]): binary frames carry the terminal's bytes both ways;
//!   a text frame `{"type":"resize","cols":C,"rows":R}` resizes it, and any other text frame
//!   is ignored (logged at debug). When the shell exits the server sends a close frame `1000`
//!   with reason `exited <code>` (`exited` when the code is unknown); after
//!   `--terminal-idle` (15 min) without a byte either way, `1001` `idle`; on a failure,
//!   `1011` with a short reason; on a bad client frame (over `--terminal-max-frame`, 64 KiB,
//!   or not WebSocket), `1008`. Every client frame counts as the environment's activity
//!   (idle stop). The closing is recorded in the audit trail too.
//! - **Bounded**: one frame in or out is at most the frame cap; output is read from the
//!   terminal only as fast as the client takes it, and input written only as fast as the
//!   shell reads it, so a client that stops reading holds no growing buffer.

use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lapse_providers::terminal::{MAX_SIDE, TermSize};

use super::{ApiError, ApiPath, only_keys, query_pairs};
use crate::app::{App, AppError};
use crate::auth::Caller;
use crate::proxy::limits::LimitError;

mod session;

/// The terminals' limits (`--terminal-*` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TerminalConfig {
    /// Terminals open at once on one environment.
    pub max_per_environment: usize,
    /// Terminals open at once in all.
    pub max_total: usize,
    /// A terminal with no byte moving either way for this long is closed.
    pub idle: Duration,
    /// The largest WebSocket frame (and message) a client may send.
    pub max_frame_bytes: usize,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        TerminalConfig {
            max_per_environment: 4,
            max_total: 64,
            idle: Duration::from_secs(15 * 60),
            max_frame_bytes: 64 * 1024,
        }
    }
}

pub fn router() -> Router<App> {
    Router::new().route("/v1/environments/{id}/terminal", get(terminal))
}

/// An interactive shell in a running environment, over a WebSocket: binary frames carry the
/// terminal's bytes both ways, a text frame `{"type":"resize","cols":C,"rows":R}` resizes it,
/// and the server closes with `1000` `exited <code>` when the shell exits.
#[utoipa::path(get, path = "/v1/environments/{id}/terminal", tag = "environments",
    params(("id" = String, Path),
        ("cols" = Option<u16>, Query, description = "Columns, 1 to 1000 (default 80)"),
        ("rows" = Option<u16>, Query, description = "Rows, 1 to 1000 (default 24)")),
    responses(
        (status = 101, description = "Switched to the WebSocket"),
        (status = 400, description = "Bad cols or rows, a provider without terminals, or not a WebSocket upgrade", body = lapse_core::wire::ErrorBody),
        (status = 403, description = "The Origin header names another host", body = lapse_core::wire::ErrorBody),
        (status = 404, description = "No such environment of the caller's", body = lapse_core::wire::ErrorBody),
        (status = 409, description = "The environment is not running", body = lapse_core::wire::ErrorBody),
        (status = 429, description = "The environment has its most terminals open", body = lapse_core::wire::ErrorBody),
        (status = 502, description = "The provider failed", body = lapse_core::wire::ErrorBody),
        (status = 503, description = "The server has its most terminals open, or the provider is unavailable", body = lapse_core::wire::ErrorBody),
    ))]
pub async fn terminal(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    let size = size_of(raw.as_deref())?;
    let (env, provider) = app.terminal_target(&id, &caller).await?;
    let config = app.cx.config.terminal;
    let permit = app.cx.terminals.admit(&env.id).map_err(|e| match e {
        LimitError::Environment(n) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_terminals",
            format!("environment {} has {n} terminals open, its limit; close one first", env.id),
        ),
        LimitError::Total(n) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "terminals_busy",
            format!("the server has {n} terminals open, its limit; retry later"),
        ),
    })?;
    let upgrade = upgrade.map_err(|rejection| {
        let status = rejection.status();
        ApiError::new(
            status,
            "websocket_required",
            format!("open the terminal as a WebSocket: {}", rejection.body_text()),
        )
    })?;
    let terminal = provider.open_terminal(&env.id, &env.spec, size).await.map_err(AppError::from)?;
    let actor = caller.actor();
    app.terminal_event(&env.id, &actor, format!("opened ({}x{})", size.cols, size.rows)).await?;
    let session = session::Session { app, environment_id: env.id, actor, terminal, permit, idle: config.idle };
    Ok(upgrade
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
        // Each frame goes out at once; what waits to be written is bounded (and must exceed
        // the write buffer, or tungstenite refuses the config).
        .write_buffer_size(0)
        .max_write_buffer_size(config.max_frame_bytes.max(session::CHUNK_LIMIT) * 4)
        .on_upgrade(move |socket| session.run(socket))
        .into_response())
}

/// Refuses a request whose `Origin` names another host than its `Host` (a browser always
/// sends `Origin` on a WebSocket; a script that is not a browser sends none, or its own).
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest)
        .filter(|rest| !rest.is_empty() && !rest.contains(['/', '@']));
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin_host, host) {
        (Some(origin), Some(host)) if origin.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the Origin header names another site than this server; a terminal opens only from this server's own pages",
        )),
    }
}

/// `cols` and `rows` from the query (default 80×24).
fn size_of(raw: Option<&str>) -> Result<TermSize, ApiError> {
    let pairs = query_pairs(raw)?;
    only_keys(&pairs, &["cols", "rows"])?;
    let side = |key: &str, default: u16| -> Result<u64, ApiError> {
        match pairs.iter().find(|(k, _)| k == key) {
            None => Ok(u64::from(default)),
            Some((_, v)) => super::number(key, v, 1u64, u64::from(MAX_SIDE)),
        }
    };
    let default = TermSize::default();
    let (cols, rows) = (side("cols", default.cols)?, side("rows", default.rows)?);
    TermSize::new(cols, rows).ok_or_else(|| ApiError::bad_request(format!("cols and rows are 1 to {MAX_SIDE}")))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(origin: Option<&str>, host: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        if let Some(v) = host {
            h.insert(header::HOST, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_this_hosts_pages_or_no_browser_may_open_a_terminal() {
        assert!(same_origin(&headers(None, Some("127.0.0.1:7070"))).is_ok());
        assert!(same_origin(&headers(Some("http://127.0.0.1:7070"), Some("127.0.0.1:7070"))).is_ok());
        assert!(same_origin(&headers(Some("https://Lapse.example"), Some("lapse.example"))).is_ok());
        for (origin, host) in [
            (Some("http://evil.example"), Some("127.0.0.1:7070")),
            (Some("http://127.0.0.1:7071"), Some("127.0.0.1:7070")),
            (Some("null"), Some("127.0.0.1:7070")),
            (Some("http://127.0.0.1:7070"), None),
            (Some("http://user@127.0.0.1:7070"), Some("127.0.0.1:7070")),
            (Some("http://127.0.0.1:7070/x"), Some("127.0.0.1:7070")),
        ] {
            let e = same_origin(&headers(origin, host)).unwrap_err();
            assert_eq!(e.parts().0, StatusCode::FORBIDDEN, "{origin:?} {host:?}");
        }
    }

    #[test]
    fn sizes_come_from_the_query() {
        assert_eq!(size_of(None).unwrap(), TermSize { cols: 80, rows: 24 });
        assert_eq!(size_of(Some("cols=120&rows=40")).unwrap(), TermSize { cols: 120, rows: 40 });
        for bad in ["cols=0", "rows=1001", "cols=-1", "cols=abc", "cols=99999999999999999999", "shell=/bin/bash"] {
            assert_eq!(size_of(Some(bad)).unwrap_err().parts().0, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}

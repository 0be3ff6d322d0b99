//! The dashboard: its assets at `/ui` ([`assets`]) and its sign-in ([`session`]).
//!
//! The dashboard is a client of the ordinary `/v1` API (one way in): it signs in with a key
//! (`POST /ui/session`), gets an `HttpOnly` cookie that the API's authentication layer
//! accepts in place of `Authorization` ([`session::caller_of_cookie`]), and a CSRF token that
//! every state-changing cookie request must carry in `X-Lapse-CSRF`. The live fleet comes
//! from `GET /v1/environments/watch` ([`crate::http::watch`]).
//!
//! `/ui` and `/ui/...` are outside the authentication layer: the assets are public (they hold
//! no data), and the session routes check keys themselves, exactly as the API does. A build
//! without the `ui` feature answers `/ui` with a 404 JSON error saying so.

use axum::Router;
use axum::routing::{get, post};

use crate::app::App;

pub mod assets;
pub mod session;

/// What the dashboard keeps in memory: sessions and the live streams' counts.
#[derive(Debug, Default)]
pub struct UiState {
    pub sessions: session::Sessions,
    pub streams: std::sync::Arc<crate::http::watch::Streams>,
}

/// Whether `path` is the dashboard's own (outside the API's authentication layer).
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

pub fn router() -> Router<App> {
    Router::new()
        .route("/ui/session", post(session::sign_in).get(session::show).delete(session::sign_out))
        .route("/ui", get(assets::serve))
        .route("/ui/", get(assets::serve))
        .route("/ui/{*path}", get(assets::serve))
}

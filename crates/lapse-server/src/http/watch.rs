//! `GET /v1/environments/watch`: the store's change feed as Server-Sent Events.
//!
//! Each committed change of an environment the caller may see (a tenant only its own; the
//! admin and the open server everything) is one `event: environment` whose `data:` is the
//! environment's JSON exactly as `GET /v1/environments/{id}` shows it (the deferred journal
//! and unflushed activity overlaid). A subscriber that fell behind the feed gets
//! `event: resync` (re-read the list) and goes on from the present. A comment every
//! [`KEEP_ALIVE`] keeps proxies from closing it; every [`RECHECK`] the caller is checked
//! again (one key read), so a revoked key (or a dashboard session that ended) ends its
//! streams.
//!
//! Streams are bounded: [`MAX_PER_TENANT`] per tenant (`429`) and [`MAX_STREAMS`] in all
//! (`503`). The route answers only clients that accept `text/event-stream` (an
//! `EventSource` does); others get `406`, so a generic client is not left hanging.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use lapse_core::wire::{EnvironmentView, ErrorBody};
use tokio::sync::broadcast::error::RecvError;

use super::ApiError;
use crate::app::App;
use crate::auth::Caller;

/// Streams one tenant (or the operator) may hold at once.
pub const MAX_PER_TENANT: usize = 16;
/// Streams the server holds at once.
pub const MAX_STREAMS: usize = 256;
/// How often a comment is sent on a quiet stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a stream's caller is checked again.
pub const RECHECK: Duration = Duration::from_secs(5);

pub fn router() -> axum::Router<App> {
    axum::Router::new().route("/v1/environments/watch", axum::routing::get(watch))
}

/// Open streams, per tenant (the operator's under `""`).
#[derive(Debug, Default)]
pub struct Streams {
    open: std::sync::Mutex<HashMap<String, usize>>,
}

/// Why a stream was not opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    Tenant,
    Server,
}

impl Streams {
    /// Takes a place for `tenant`'s stream, given back when the guard drops.
    pub fn open(self: &Arc<Self>, tenant: &str) -> Result<StreamGuard, Full> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.values().sum::<usize>() >= MAX_STREAMS {
            return Err(Full::Server);
        }
        let count = open.entry(tenant.to_owned()).or_default();
        if *count >= MAX_PER_TENANT {
            return Err(Full::Tenant);
        }
        *count += 1;
        Ok(StreamGuard { streams: self.clone(), tenant: tenant.to_owned() })
    }

    /// Streams open now, in all.
    pub fn count(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }
}

/// One open stream's place.
#[derive(Debug)]
pub struct StreamGuard {
    streams: Arc<Streams>,
    tenant: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

/// Follow changes of environments as Server-Sent Events (`event: environment` with the
/// environment as `GET /v1/environments/{id}` shows it; `event: resync` after falling behind).
/// Send `Accept: text/event-stream`.
#[utoipa::path(get, path = "/v1/environments/watch", tag = "environments",
    responses(
        (status = 200, description = "A stream of `event: environment` (data: the environment's JSON) and `event: resync`", content_type = "text/event-stream"),
        (status = 406, description = "The client does not accept text/event-stream", body = ErrorBody),
        (status = 429, description = "This tenant holds as many streams as it may", body = ErrorBody),
        (status = 503, description = "The server holds as many streams as it may", body = ErrorBody)))]
pub async fn watch(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Result<impl IntoResponse, ApiError> {
    let accepts = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("text/event-stream")));
    if !accepts {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "this route is a Server-Sent Events stream: send Accept: text/event-stream",
        ));
    }
    let guard = app.cx.ui.streams.open(caller.tenant()).map_err(|full| match full {
        Full::Tenant => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!("at most {MAX_PER_TENANT} watch streams per tenant; close one first"),
        ),
        Full::Server => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!("the server holds its {MAX_STREAMS} watch streams; retry later"),
        ),
    })?;
    let recheck = Recheck::of(&req);
    let changes = app.cx.store.subscribe();
    let stream = events(app, caller, recheck, changes, guard);
    Ok(([(header::CACHE_CONTROL, "no-store")], Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))))
}

/// How to check the caller again: the key or the session it came with.
#[derive(Debug, Clone)]
enum Recheck {
    Authorization(String),
    Cookie(String),
    Nothing,
}

impl Recheck {
    fn of(req: &Request) -> Recheck {
        if let Some(h) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            return Recheck::Authorization(h.to_owned());
        }
        match crate::ui::session::cookie(req.headers()) {
            Some(token) => Recheck::Cookie(token),
            None => Recheck::Nothing,
        }
    }

    /// Whether the caller may still watch.
    async fn still_valid(&self, app: &App) -> bool {
        let auth = &app.cx.auth;
        if !auth.enabled() {
            return true;
        }
        match self {
            Recheck::Authorization(h) => auth.caller(&app.cx.store, Some(h)).await.is_ok(),
            Recheck::Cookie(token) => crate::ui::session::still_valid(app, token).await,
            Recheck::Nothing => false,
        }
    }
}

struct Watch {
    app: App,
    caller: Caller,
    recheck: Recheck,
    changes: tokio::sync::broadcast::Receiver<Arc<lapse_core::model::Environment>>,
    tick: tokio::time::Interval,
    _guard: StreamGuard,
}

fn events(
    app: App,
    caller: Caller,
    recheck: Recheck,
    changes: tokio::sync::broadcast::Receiver<Arc<lapse_core::model::Environment>>,
    guard: StreamGuard,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let state = Watch { app, caller, recheck, changes, tick, _guard: guard };
    futures::stream::unfold(state, |mut w| async move {
        loop {
            tokio::select! {
                change = w.changes.recv() => match change {
                    Ok(env) if w.caller.sees(&env.tenant) => {
                        let event = environment_event(&w.app, &env);
                        return Some((Ok(event), w));
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => return Some((Ok(Event::default().event("resync").data("{}")), w)),
                    Err(RecvError::Closed) => return None,
                },
                _ = w.tick.tick() => {
                    if !w.recheck.still_valid(&w.app).await {
                        return None;
                    }
                }
            }
        }
    })
}

/// The environment as `GET /v1/environments/{id}` shows it.
fn environment_event(app: &App, env: &lapse_core::model::Environment) -> Event {
    let mut env = env.clone();
    if let Some(intent) = app.cx.deferred.get(&env.id) {
        intent.overlay(&mut env);
    }
    app.cx.activity.overlay(&mut env);
    let data = serde_json::to_string(&EnvironmentView::from(&env)).unwrap_or_else(|_| "{}".to_owned());
    Event::default().event("environment").data(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded_per_tenant_and_in_all() {
        let streams = Arc::new(Streams::default());
        let mut held: Vec<StreamGuard> = (0..MAX_PER_TENANT).map(|_| streams.open("a").unwrap()).collect();
        assert_eq!(streams.open("a").unwrap_err(), Full::Tenant);
        held.pop();
        held.push(streams.open("a").expect("a closed stream gives its place back"));
        for i in 0..(MAX_STREAMS / MAX_PER_TENANT) {
            for _ in 0..MAX_PER_TENANT {
                if let Ok(g) = streams.open(&format!("t{i}")) {
                    held.push(g);
                }
            }
        }
        assert_eq!(streams.count(), MAX_STREAMS);
        assert_eq!(streams.open("fresh").unwrap_err(), Full::Server);
        drop(held);
        assert_eq!(streams.count(), 0);
    }
}

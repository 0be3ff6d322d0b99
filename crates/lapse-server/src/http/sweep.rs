//! `POST /v1/admin/sweep` (admin key only): one drift sweep now, or its plan alone.
//!
//! `{"dry_run": true}` plans a sweep of every provider (or of `provider`) and changes
//! nothing: no store write, no provider call but `list` and `inspect`. Without it the same
//! plan is applied, as the periodic sweep would, and each action says whether it was done.
//! Unlike other handlers this one waits on providers (their `list`, and in a real sweep their
//! deletes): it is an operator's tool, bounded by the providers' own call timeouts, and it
//! takes the same per-provider lock as the periodic sweep, so the two never overlap.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use lapse_core::wire::{ErrorBody, SweepRequest, SweepView};

use super::{ApiError, ApiJson};
use crate::app::App;

pub fn router() -> Router<App> {
    Router::new().route("/v1/admin/sweep", post(sweep))
}

/// Run a drift sweep now (`dry_run`: only say what it would do).
#[utoipa::path(post, path = "/v1/admin/sweep", tag = "admin", request_body = SweepRequest,
    responses((status = 200, body = SweepView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn sweep(State(app): State<App>, ApiJson(req): ApiJson<SweepRequest>) -> Result<Json<SweepView>, ApiError> {
    let providers: Vec<_> = match &req.provider {
        Some(name) => match app.cx.providers.get(name) {
            Some(p) => vec![p.clone()],
            None => {
                let known = app.cx.providers.names().join(", ");
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("provider: no provider {name:?}; known: {known}"),
                ));
            }
        },
        None => app.cx.providers.iter().cloned().collect(),
    };
    let mut views = Vec::with_capacity(providers.len());
    for provider in providers {
        let swept = crate::sweep::sweep_now(&app.cx, &app.reconciler, provider.as_ref(), req.dry_run).await;
        views.push(crate::sweep::view(provider.name(), swept));
    }
    Ok(Json(SweepView { dry_run: req.dry_run, providers: views }))
}

//! `POST /v1/bench/floor`: the benchmark's HTTP floor (issue 14), the ceiling a create can
//! reach: HTTP, authentication, body limits, JSON parse and checks, JSON answer, and nothing
//! else.
//!
//! **Present only when the server starts with `LAPSE_BENCH_FLOOR=1` in its environment**;
//! otherwise the route does not exist and answers 404 `not_found` like any unknown route.
//! `lapse bench` sets the variable on the server it starts; nothing else should.
//!
//! It sits in the same router, behind the same middleware, as `POST /v1/environments`
//! (authentication, the body limit and timeout, the JSON error backstop) and parses the body
//! with the same [`CreateEnvironment`] and [`ApiJson`], so a malformed or ill-typed body is
//! refused with the same 4xx. It then runs the checks `App::create` runs before it places an
//! environment (`App::admitted_create`, the same function: name, owner, labels, TTL, idle
//! timeout, retries, claim parameters, the caller's principal, warning marks and admission:
//! spec, provider, labels, host guard, quota). A bad request therefore gets the same 4xx as
//! from the real route. For the operator (no keys, or the admin key; what the bench uses) none
//! of that reads the store; for a tenant's key, admission reads the tenant's row and its
//! accrual, as the real route does.
//!
//! **It never writes the store and never wakes the reconciler**: a request that passes is
//! answered `201` with the JSON of one environment row built when the router is built (a
//! running `sim` environment), through the same [`EnvironmentView`] the real route answers
//! with. The request's own environment is dropped.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use lapse_core::model::{Environment, ObservedState, Spec, new_environment_id};
use lapse_core::wire::{CreateEnvironment, EnvironmentView};

use super::{ApiError, ApiJson};
use crate::app::App;
use crate::auth::Caller;

/// The variable that turns the route on (its value must be `1`).
pub const ENABLE_VAR: &str = "LAPSE_BENCH_FLOOR";

/// The route's path.
pub const PATH: &str = "/v1/bench/floor";

/// The floor route when [`ENABLE_VAR`] is `1` in this process's environment; else no route.
pub fn router() -> Router<App> {
    if std::env::var_os(ENABLE_VAR).is_some_and(|v| v == "1") { enabled() } else { Router::new() }
}

/// The floor route, unconditionally (the switch is [`router`]'s).
pub fn enabled() -> Router<App> {
    let row = Arc::new(answer_row(lapse_core::now_millis()));
    Router::new().route(
        PATH,
        post(
            move |State(app): State<App>,
                  Extension(caller): Extension<Caller>,
                  ApiJson(req): ApiJson<CreateEnvironment>| {
                let row = row.clone();
                async move { floor(app, caller, req, &row).await }
            },
        ),
    )
}

async fn floor(
    app: App,
    caller: Caller,
    req: CreateEnvironment,
    row: &Environment,
) -> Result<impl IntoResponse + use<>, ApiError> {
    // Every check `App::create` makes before it places (the same function).
    app.admitted_create(req, &caller).await?;
    let location = format!("/v1/environments/{}", row.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(EnvironmentView::from(row))))
}

/// The one row every answer shows: a running `sim` environment, as a warm claim answers.
fn answer_row(now: lapse_core::Millis) -> Environment {
    let spec = Spec { provider: "sim".into(), cmd: vec!["warm".into()], ports: vec![8080], ..Spec::default() };
    let mut env = Environment::new(new_environment_id(), "bench".into(), spec, now);
    env.observed = ObservedState::Running;
    env.expires_at = Some(now + 3_600_000);
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_row_is_a_running_environment() {
        let view = serde_json::to_value(EnvironmentView::from(&answer_row(1_000))).unwrap();
        assert_eq!(view["state"], "running");
        assert_eq!(view["spec"]["provider"], "sim");
        assert!(lapse_core::model::is_environment_id(view["id"].as_str().unwrap()));
    }
}

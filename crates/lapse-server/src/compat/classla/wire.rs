//! The seed's wire shapes: its error envelope (`src/middleware/errors.ts`,
//! `errorHandler.ts`), its container views (`src/routes/containers.ts`) and their statuses
//! and URLs (`traefikService.ts` `generateServiceUrls`), made from Lapse's environments.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lapse_core::claim::short_id;
use lapse_core::model::{DesiredState, Environment, ObservedState};
use serde::Serialize;
use serde_json::{Value, json};

use super::config::{ClasslaConfig, LABEL_BUCKET, LABEL_SHUTDOWN};
use crate::app::AppError;

/// A seed error: its code, status and message; answered as
/// `{"error": {code, message, details?}, timestamp, path}`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl SeedError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> SeedError {
        SeedError { status, code, message: message.into(), details: None }
    }
    pub fn not_found(id: &str) -> SeedError {
        SeedError::new(StatusCode::NOT_FOUND, "CONTAINER_NOT_FOUND", format!("Container with ID {id} not found"))
    }
    pub fn invalid_bucket(message: impl Into<String>) -> SeedError {
        SeedError::new(StatusCode::BAD_REQUEST, "INVALID_S3_BUCKET", message)
    }
    pub fn invalid_parameter(message: impl Into<String>) -> SeedError {
        SeedError::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETER", message)
    }
    pub fn auth(message: &str) -> SeedError {
        SeedError::new(StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED", message)
    }
    pub fn resource_limit(message: impl Into<String>) -> SeedError {
        SeedError::new(StatusCode::SERVICE_UNAVAILABLE, "RESOURCE_LIMIT_EXCEEDED", message)
    }
    /// A Lapse failure while starting: its own words, never a 500 (the store or a provider
    /// that cannot answer now is a `503`).
    pub fn start_failed(e: AppError) -> SeedError {
        SeedError::from_app(e, "CONTAINER_START_FAILED", "Failed to start container")
    }
    pub fn stop_failed(e: AppError) -> SeedError {
        SeedError::from_app(e, "CONTAINER_STOP_FAILED", "Failed to stop container")
    }
    fn from_app(e: AppError, code: &'static str, what: &str) -> SeedError {
        match e {
            AppError::HostCapacity(m) | AppError::Quota(m) => SeedError::resource_limit(m),
            AppError::Invalid(f) => SeedError::invalid_parameter(f.to_string()),
            AppError::NotFound(id) => SeedError::not_found(&id),
            AppError::Conflict(m) => SeedError {
                details: Some(json!({"originalError": m.clone()})),
                ..SeedError::new(StatusCode::CONFLICT, code, format!("{what}: {m}"))
            },
            other => {
                let m = other.to_string();
                SeedError {
                    details: Some(json!({"originalError": m.clone()})),
                    ..SeedError::new(StatusCode::SERVICE_UNAVAILABLE, code, format!("{what}: {m}"))
                }
            }
        }
    }
    /// Lapse's store or a provider failing a read: the seed's `INTERNAL_ERROR`, as a `503`.
    pub fn internal(e: AppError) -> SeedError {
        SeedError {
            details: Some(json!({"originalError": e.to_string()})),
            ..SeedError::new(StatusCode::SERVICE_UNAVAILABLE, "INTERNAL_ERROR", "An internal error occurred")
        }
    }

    /// The envelope, for the request's `path`.
    pub fn into_response_at(self, path: &str) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(d) = self.details {
            error["details"] = d;
        }
        let body = json!({"error": error, "timestamp": now_iso(), "path": path});
        (self.status, Json(body)).into_response()
    }
}

/// Errors answered by a handler carry no path: the envelope layer ([`super::envelope`])
/// fills it in from the request.
impl IntoResponse for SeedError {
    fn into_response(self) -> Response {
        let mut response = self.clone().into_response_at("");
        response.extensions_mut().insert(PendingPath);
        response
    }
}

/// Marks an error whose `path` the envelope layer writes.
#[derive(Clone, Copy, Debug)]
pub struct PendingPath;

/// Now as JavaScript's `toISOString()`: `2026-03-01T12:00:00.000Z`.
pub fn now_iso() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Milliseconds as `toISOString()`.
pub fn iso(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// A container's four URLs.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Urls {
    pub vnc: String,
    pub code_server: String,
    pub web_server: String,
    pub terminal: String,
}

pub fn urls(config: &ClasslaConfig, id: &str) -> Urls {
    let base = format!("{}://{}", config.url_scheme(), config.domain);
    Urls {
        vnc: format!("{base}/vnc/{id}"),
        code_server: format!("{base}/code/{id}"),
        web_server: format!("{base}/web/{id}"),
        terminal: format!("{base}/terminal/{id}/"),
    }
}

/// The seed's id of an environment: its short id.
pub fn seed_id(env: &Environment) -> &str {
    short_id(&env.id)
}

/// Whether the seed would still list it: its service exists (wanted running, not gone).
pub fn is_live(env: &Environment) -> bool {
    env.desired == DesiredState::Running
        && !matches!(env.observed, ObservedState::Deleted | ObservedState::Stopped | ObservedState::Deleting)
}

/// The seed's container status of an environment.
pub fn status(env: &Environment) -> &'static str {
    if !is_live(env) {
        return match env.observed {
            ObservedState::Failed => "failed",
            ObservedState::Stopping | ObservedState::Deleting if env.desired != DesiredState::Running => "stopping",
            _ => "stopped",
        };
    }
    match env.observed {
        ObservedState::Running if env.is_ready() => "running",
        ObservedState::Failed => "failed",
        ObservedState::Stopping => "stopping",
        _ => "starting",
    }
}

/// Why it stopped: the API's word (`manual`, `inactivity`) or Lapse's idle stop
/// (`inactivity`); a failure is `error`.
pub fn shutdown_reason(env: &Environment) -> Option<String> {
    if let Some(r) = env.labels.get(LABEL_SHUTDOWN) {
        return Some(r.clone());
    }
    if env.idled_at.is_some() && env.desired != DesiredState::Running {
        return Some("inactivity".into());
    }
    (env.observed == ObservedState::Failed).then(|| "error".into())
}

/// Whether it began pre-warmed: the seed's pre-warmed containers are those made without
/// `S3_BUCKET` (a cold start gets it in its environment; a claimed member through its hook).
pub fn is_pre_warmed(env: &Environment) -> bool {
    !env.spec.env.contains_key("S3_BUCKET")
}

/// One row of `GET /api/containers`.
pub fn list_row(config: &ClasslaConfig, env: &Environment) -> Value {
    let id = seed_id(env);
    let created = iso(env.created_at);
    json!({
        "id": id,
        "serviceName": format!("ide-{id}"),
        "status": status(env),
        "urls": urls(config, id),
        "s3Bucket": env.labels.get(LABEL_BUCKET).cloned().unwrap_or_default(),
        "createdAt": created,
        "startedAt": created,
    })
}

/// `GET /api/containers/:id`.
pub fn detail(config: &ClasslaConfig, env: &Environment, now: i64) -> Value {
    let id = seed_id(env);
    let status = status(env);
    let started = env.ready_at.or((env.observed == ObservedState::Running).then_some(env.created_at));
    let mut body = json!({
        "id": id,
        "serviceName": format!("ide-{id}"),
        "status": status,
        "urls": urls(config, id),
        "s3Bucket": env.labels.get(LABEL_BUCKET).cloned().unwrap_or_default(),
        "createdAt": iso(env.created_at),
        "resourceLimits": {
            "cpuLimit": format!("{} cores", config.cpu_limit),
            "memoryLimit": format!("{} bytes", config.memory_limit),
        },
        "isPreWarmed": is_pre_warmed(env),
    });
    let put = |body: &mut Value, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body[k] = v;
        }
    };
    put(&mut body, "startedAt", started.and_then(iso).map(Value::from));
    put(&mut body, "stoppedAt", (!is_live(env)).then(|| iso(env.updated_at)).flatten().map(Value::from));
    put(&mut body, "lastActivity", env.last_active_at.and_then(iso).map(Value::from));
    if matches!(status, "running" | "starting") {
        put(&mut body, "uptime", started.map(|s| Value::from((now - s).max(0) / 1000)));
    }
    put(&mut body, "shutdownReason", shutdown_reason(env).map(Value::from));
    // The seed's `HealthCheckResult` while its monitor follows the container, else `null`;
    // here from Lapse's state (and its probe, when the spec has one).
    body["health"] = if is_live(env) {
        let health = match status {
            "running" => "healthy",
            "starting" => "starting",
            _ => "unhealthy",
        };
        let ok = health == "healthy";
        json!({
            "status": health,
            "lastCheck": iso(env.updated_at),
            "checks": {"codeServer": ok, "vnc": ok, "webServer": ok},
            "consecutiveFailures": if health == "unhealthy" { 3 } else { 0 },
        })
    } else {
        Value::Null
    };
    body
}

/// `Content-Type: application/json` on a hand-made answer.
pub fn json_type() -> (header::HeaderName, HeaderValue) {
    (header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"))
}

#[cfg(test)]
mod tests {
    use lapse_core::model::Spec;

    use super::*;

    fn env(desired: DesiredState, observed: ObservedState) -> Environment {
        let mut e = Environment::new("0190aaaabbbbccccdddd0000a1b2c3d4".into(), "o".into(), Spec::default(), 0);
        (e.desired, e.observed) = (desired, observed);
        e
    }

    #[test]
    fn statuses_and_shutdown_reasons_are_the_seeds() {
        use DesiredState::{Deleted, Running};
        use ObservedState as O;
        for (desired, observed, want) in [
            (Running, O::Pending, "starting"),
            (Running, O::Provisioning, "starting"),
            (Running, O::Running, "running"),
            (Running, O::Failed, "failed"),
            (Deleted, O::Deleting, "stopping"),
            (Deleted, O::Deleted, "stopped"),
            (Running, O::Stopped, "stopped"),
        ] {
            assert_eq!(status(&env(desired, observed)), want, "{desired:?} {observed:?}");
        }
        let mut idled = env(Deleted, O::Deleted);
        idled.idled_at = Some(5);
        assert_eq!(
            shutdown_reason(&idled).as_deref(),
            Some("inactivity"),
            "Lapse's idle stop is the seed's inactivity"
        );
        idled.labels.insert(LABEL_SHUTDOWN.into(), "manual".into());
        assert_eq!(shutdown_reason(&idled).as_deref(), Some("manual"), "what the API recorded wins");
        assert_eq!(shutdown_reason(&env(Running, O::Failed)).as_deref(), Some("error"));
        assert_eq!(shutdown_reason(&env(Running, O::Running)), None);
        assert_eq!(seed_id(&idled), "a1b2c3d4");
        assert_eq!(iso(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
    }
}

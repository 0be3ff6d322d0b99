//! The application layer: what each API call means, below HTTP.
//!
//! **Handlers never wait on a provider's VM or container.** Each mutating call validates its
//! input, writes desired state and its audit event in one transaction, wakes the reconciler,
//! and returns. Only `exec` and `logs` call a provider directly, because they read from a
//! running environment rather than change what should exist.

use std::sync::Arc;
use std::time::Duration;

use lapse_core::duration::{self, DurationError};
use lapse_core::model::{DesiredState, Environment, Lifecycle, ObservedState, is_environment_id, new_environment_id};
use lapse_core::validate::{self, FieldError};
use lapse_core::wire::{
    CreateEnvironment, DurationInput, ExecRequest, ExecResult, ExtendRequest, LogsView, ProviderView,
};
use lapse_core::{Millis, format_millis};
use lapse_providers::ProviderError;
use lapse_store::{ListFilter, NewEvent, StoreError};

use crate::context::Context;
use crate::reconciler::{Reconciler, transition};

/// Longest an exec may be asked to wait.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong, in the terms of the API. The HTTP layer maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Invalid(#[from] FieldError),
    #[error("no environment {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &str, e: impl ToString) -> AppError {
    AppError::Invalid(FieldError { field: field.to_owned(), message: e.to_string() })
}

#[derive(Clone)]
pub struct App {
    pub cx: Arc<Context>,
    pub reconciler: Reconciler,
}

impl App {
    fn now(&self) -> Millis {
        self.cx.clock.now()
    }

    fn duration(&self, field: &str, input: &DurationInput) -> Result<Duration, AppError> {
        let d = match input {
            DurationInput::Seconds(s) => duration::from_seconds(*s),
            DurationInput::Text(t) => duration::parse_duration(t),
        };
        d.and_then(|d| duration::at_most(d, self.cx.config.max_ttl)).map_err(|e: DurationError| invalid(field, e))
    }

    pub async fn create(&self, req: CreateEnvironment) -> Result<Environment, AppError> {
        if let Some(name) = &req.name {
            validate::name("name", name)?;
        }
        validate::owner(&req.owner)?;
        validate::labels(&req.labels)?;
        validate::spec(&req.spec)?;
        let provider = self.cx.providers.get(&req.spec.provider).ok_or_else(|| {
            invalid(
                "spec.provider",
                format!(
                    "unknown provider {:?}; this server has: {}",
                    req.spec.provider,
                    self.cx.providers.names().join(", ")
                ),
            )
        })?;
        provider.validate(&req.spec)?;
        let ttl = match &req.ttl {
            Some(t) => self.duration("ttl", t)?,
            None => self.cx.config.default_ttl,
        };
        let now = self.now();
        let env = Environment {
            id: new_environment_id(),
            name: req.name,
            tenant: "default".into(),
            owner: req.owner,
            labels: req.labels,
            spec: req.spec,
            lifecycle: Lifecycle::Lease,
            desired: DesiredState::Running,
            observed: ObservedState::Pending,
            reason: None,
            provider_ref: None,
            endpoints: vec![],
            expires_at: Some(now + ttl.as_millis() as i64),
            on_expiry: req.on_expiry,
            expired_at: None,
            restart_on_extend: false,
            attempts: 0,
            next_attempt_at: None,
            created_at: now,
            updated_at: now,
        };
        let message = format!(
            "{} for {}, ttl {}, on expiry {}",
            env.spec.provider,
            env.owner,
            duration::format_duration(ttl),
            env.on_expiry
        );
        self.cx.store.insert(&env, NewEvent::new(&env.id, "api", "create", "ok", message)).await?;
        if let Some(at) = env.expires_at {
            self.cx.timers.schedule(at, &env.id);
        }
        self.reconciler.enqueue(&env.id);
        Ok(env)
    }

    pub async fn get(&self, id: &str) -> Result<Environment, AppError> {
        if !is_environment_id(id) {
            return Err(AppError::NotFound(id.to_owned()));
        }
        self.cx.store.get(id).await?.ok_or_else(|| AppError::NotFound(id.to_owned()))
    }

    pub async fn list(&self, filter: ListFilter) -> Result<Vec<Environment>, AppError> {
        Ok(self.cx.store.list(&filter).await?)
    }

    /// Changes one environment's desired state in a transaction and wakes the reconciler.
    async fn change(
        &self,
        id: &str,
        action: &str,
        change: impl FnOnce(&mut Environment) -> Result<String, AppError>,
    ) -> Result<Environment, AppError> {
        if !is_environment_id(id) {
            return Err(AppError::NotFound(id.to_owned()));
        }
        let env = self
            .cx
            .store
            .update(id, |e| {
                if e.desired == DesiredState::Deleted {
                    return Err(AppError::Conflict(format!("environment {id} is deleted")));
                }
                let message = change(e)?;
                Ok(vec![NewEvent::new(&e.id, "api", action, "ok", message)])
            })
            .await?
            .ok_or_else(|| AppError::NotFound(id.to_owned()))?;
        if let Some(at) = env.expires_at.filter(|_| env.expired_at.is_none()) {
            self.cx.timers.schedule(at, &env.id);
        }
        self.reconciler.enqueue(&env.id);
        Ok(env)
    }

    /// Moves the lease; an environment its expiry stopped runs again.
    pub async fn extend(&self, id: &str, req: ExtendRequest) -> Result<Environment, AppError> {
        let now = self.now();
        let until = match (&req.by, &req.until) {
            (Some(by), None) => Target::By(self.duration("by", by)?),
            (None, Some(until)) => {
                let at = chrono::DateTime::parse_from_rfc3339(until)
                    .map_err(|e| invalid("until", format!("{until:?} is not an RFC 3339 time: {e}")))?
                    .timestamp_millis();
                if at <= now {
                    return Err(invalid("until", format!("{until} is not in the future")));
                }
                let ahead = Duration::from_millis((at - now) as u64);
                self.duration("until", &DurationInput::Seconds(ahead.as_secs().max(1) as i64))?;
                Target::Until(at)
            }
            _ => return Err(invalid("by", "give exactly one of `by` and `until`")),
        };
        self.change(id, "extend", |e| {
            let new_expiry = match until {
                Target::By(d) => e.expires_at.unwrap_or(now).max(now) + d.as_millis() as i64,
                Target::Until(at) => at,
            };
            let restart = e.restart_on_extend && e.expired_at.is_some();
            e.expires_at = Some(new_expiry);
            e.expired_at = None;
            if restart {
                e.desired = DesiredState::Running;
                e.restart_on_extend = false;
            }
            Ok(format!(
                "expires at {}{}",
                format_millis(new_expiry),
                if restart { "; started again (its expiry had stopped it)" } else { "" }
            ))
        })
        .await
    }

    pub async fn stop(&self, id: &str) -> Result<Environment, AppError> {
        self.change(id, "stop", |e| {
            e.desired = DesiredState::Stopped;
            e.restart_on_extend = false;
            Ok("desired stopped".into())
        })
        .await
    }

    pub async fn start(&self, id: &str) -> Result<Environment, AppError> {
        let now = self.now();
        self.change(id, "start", |e| {
            if e.expired_at.is_some() || e.expires_at.is_some_and(|t| t <= now) {
                return Err(AppError::Conflict(format!(
                    "the lease of {} ran out; `extend` it to start it again",
                    e.id
                )));
            }
            e.desired = DesiredState::Running;
            if e.observed == ObservedState::Failed {
                // A fresh round of attempts.
                e.attempts = 0;
                e.next_attempt_at = None;
                e.reason = None;
                transition(e, ObservedState::Pending, "api", "start after failure");
            }
            Ok("desired running".into())
        })
        .await
    }

    pub async fn delete(&self, id: &str) -> Result<Environment, AppError> {
        self.change(id, "delete", |e| {
            e.desired = DesiredState::Deleted;
            e.restart_on_extend = false;
            Ok("desired deleted".into())
        })
        .await
    }

    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResult, AppError> {
        if req.cmd.is_empty() {
            return Err(invalid("cmd", "give the program and its arguments"));
        }
        validate::command("cmd", &req.cmd)?;
        let timeout = match &req.timeout {
            Some(t) => {
                let d = match t {
                    DurationInput::Seconds(s) => duration::from_seconds(*s),
                    DurationInput::Text(t) => duration::parse_duration(t),
                };
                d.and_then(|d| duration::at_most(d, MAX_EXEC_TIMEOUT)).map_err(|e| invalid("timeout", e))?
            }
            None => DEFAULT_EXEC_TIMEOUT,
        };
        let env = self.running(id).await?;
        let provider = self.provider_of(&env)?;
        let result = provider.exec(&env.id, &env.spec, &req.cmd, timeout).await?;
        self.cx
            .store
            .append_event(NewEvent::new(
                &env.id,
                "api",
                "exec",
                "ok",
                format!(
                    "{} -> {}",
                    req.cmd.join(" "),
                    result.exit_code.map_or("timed out".into(), |c| format!("exit {c}"))
                ),
            ))
            .await?;
        Ok(result)
    }

    pub async fn logs(&self, id: &str, tail: usize) -> Result<LogsView, AppError> {
        let env = self.get(id).await?;
        if env.observed == ObservedState::Deleted || env.observed == ObservedState::Pending {
            return Err(AppError::Conflict(format!("environment {id} is {}; it has no logs", env.observed)));
        }
        let provider = self.provider_of(&env)?;
        match provider.logs(&env.id, tail).await {
            Err(ProviderError::NotFound { .. }) => {
                Err(AppError::Conflict(format!("environment {id} has no logs (its resource is gone)")))
            }
            other => Ok(other?),
        }
    }

    async fn running(&self, id: &str) -> Result<Environment, AppError> {
        let env = self.get(id).await?;
        if env.observed != ObservedState::Running {
            return Err(AppError::Conflict(format!("environment {id} is {}, not running", env.observed)));
        }
        Ok(env)
    }

    fn provider_of(&self, env: &Environment) -> Result<&Arc<dyn lapse_providers::Provider>, AppError> {
        self.cx.providers.get(&env.spec.provider).ok_or_else(|| {
            AppError::Conflict(format!("provider {:?} is not configured on this server", env.spec.provider))
        })
    }

    pub async fn providers(&self) -> Vec<ProviderView> {
        let mut out = Vec::new();
        for p in self.cx.providers.iter() {
            let (available, detail) = match p.health().await {
                Ok(detail) => (true, detail),
                Err(e) => (false, e.to_string()),
            };
            out.push(ProviderView { name: p.name().to_owned(), available, detail });
        }
        out
    }
}

#[derive(Clone, Copy)]
enum Target {
    By(Duration),
    Until(Millis),
}

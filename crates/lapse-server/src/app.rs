//! The application layer: what each API call means, below HTTP.
//!
//! **Handlers never wait on a provider's VM or container.** Each mutating call validates its
//! input, writes desired state and its audit event in one transaction, wakes the reconciler,
//! and returns. Only `exec`, `logs` and the providers' health check call a provider directly,
//! because they read rather than change what should exist.

use std::sync::Arc;
use std::time::Duration;

use lapse_core::model::{
    DesiredState, Environment, Lifecycle, NO_TENANT, ObservedState, OnExpiry, Pool, is_environment_id,
    new_environment_id,
};
use lapse_core::validate::{self, FieldError};
use lapse_core::wire::{
    CreateEnvironment, DurationInput, EnvironmentUsage, ExecRequest, ExecResult, ExtendRequest, LogsView, PoolView,
    ProviderView, PutPool, TenantUsage, UsageView,
};
use lapse_core::{Millis, format_millis};
use lapse_providers::ProviderError;
use lapse_store::{ListFilter, NewEvent, StoreError};

use crate::admission::{self, HostGuard, Principal};
use crate::auth::Caller;
use crate::context::Context;
use crate::reconciler::{Reconciler, transition};

mod place;
mod terminal;
mod workspace;

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
    #[error("no pool {0}")]
    NoPool(String),
    #[error("no webhook {0}")]
    NoWebhook(String),
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this (a provider its tier does not allow): `403`.
    #[error("{0}")]
    Forbidden(String),
    /// Over a tenant's quota: `429`.
    #[error("{0}")]
    Quota(String),
    /// The host guard (memory or disk of a local provider's host): `503`.
    #[error("{0}")]
    HostCapacity(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The first millisecond of `now`'s calendar month (UTC).
pub fn month_start(now: Millis) -> Millis {
    use chrono::Datelike;
    chrono::DateTime::from_timestamp_millis(now)
        .and_then(|t| t.date_naive().with_day(1))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(0, |t| t.and_utc().timestamp_millis())
}

/// A quota refusal from inside a store transaction is the caller's `429`; anything else is the
/// store's failure.
fn refused(e: StoreError) -> AppError {
    match e {
        StoreError::Refused(m) => AppError::Quota(m),
        other => AppError::Store(other),
    }
}

fn invalid(field: &str, e: impl ToString) -> AppError {
    AppError::Invalid(FieldError { field: field.to_owned(), message: e.to_string() })
}

#[derive(Clone)]
pub struct App {
    pub cx: Arc<Context>,
    pub reconciler: Reconciler,
    /// Serializes upserts by `job_id` (`POST /vms`, config files), so that two for one new
    /// `job_id` make one.
    pub jobs_lock: Arc<tokio::sync::Mutex<()>>,
}

impl App {
    pub fn new(cx: Arc<Context>, reconciler: Reconciler) -> App {
        App { cx, reconciler, jobs_lock: Default::default() }
    }

    fn now(&self) -> Millis {
        self.cx.clock.now()
    }

    fn duration(&self, field: &str, input: &DurationInput) -> Result<Duration, AppError> {
        input.to_duration(self.cx.config.max_ttl).map_err(|e| invalid(field, e))
    }

    /// Creates an environment: claims a warm pool member with the same spec if there is one
    /// (`claimed` is then true and it already runs), otherwise records a cold one.
    /// A quota refusal also writes a `quota_refused` event (the webhook of that name); the
    /// refusal is answered the same whether or not that write succeeds.
    pub async fn create(&self, req: CreateEnvironment, caller: &Caller) -> Result<Created, AppError> {
        let owner = req.owner.clone();
        let result = self.create_unrecorded(req, caller).await;
        if let Err(AppError::Quota(message)) = &result {
            crate::warnings::record_quota_refusal(self, caller, &owner, message).await;
        }
        result
    }

    async fn create_unrecorded(&self, req: CreateEnvironment, caller: &Caller) -> Result<Created, AppError> {
        let (env, who, params) = self.admitted_create(req, caller).await?;
        match params {
            Some(params) => self.place_with_params(env, &who, &params).await,
            None => self.place(env, &who).await,
        }
    }

    /// Every check of a create before it is placed, in order: the request's fields, the
    /// caller, the warning marks, admission (spec, provider, labels, host guard, quota). The
    /// environment it would make, its principal and its claim's parameters. Also the
    /// benchmark's floor (`http::floor`), which answers without placing.
    pub(crate) async fn admitted_create(
        &self,
        req: CreateEnvironment,
        caller: &Caller,
    ) -> Result<(Environment, Principal, Option<lapse_core::claim::ClaimParams>), AppError> {
        if let Some(name) = &req.name {
            validate::name("name", name)?;
        }
        validate::owner(&req.owner)?;
        validate::labels(&req.labels)?;
        let ttl = match (&req.ttl, req.lifecycle) {
            (Some(t), _) => Some(self.duration("ttl", t)?),
            // Services and daemons are kept running: no expiry unless asked for.
            (None, Lifecycle::Service | Lifecycle::Daemon) => None,
            (None, _) => Some(self.cx.config.default_ttl),
        };
        let idle_timeout = crate::activity::idle_timeout(&self.cx, req.idle_timeout.as_ref())?;
        if req.max_retries.is_some() && req.lifecycle != Lifecycle::Job {
            return Err(invalid("max_retries", "only jobs are retried; set lifecycle to \"job\""));
        }
        let params = req.params.filter(|p| !p.is_empty());
        if let Some(p) = &params {
            lapse_core::claim::validate_params(p)?;
        }
        let who = admission::principal(&self.cx, caller).await?;
        // Labels under these prefixes are the server's (prices, the queues' bookkeeping).
        if who.quota.is_some()
            && let Some(k) =
                req.labels.keys().find(|k| lapse_core::cost::RESERVED_LABEL_PREFIXES.iter().any(|p| k.starts_with(p)))
        {
            return Err(invalid(
                &format!("labels.{k}"),
                "labels starting with swim. or lapse. are set by the server only",
            ));
        }
        let now = self.now();
        let mut env = Environment::new(new_environment_id(), req.owner, req.spec, now);
        env.name = req.name;
        env.labels = req.labels;
        env.expires_at = ttl.map(|t| now + t.as_millis() as i64);
        env.on_expiry = if req.lifecycle == Lifecycle::Job { OnExpiry::Delete } else { req.on_expiry };
        env.lifecycle = req.lifecycle;
        env.max_retries = req.max_retries.unwrap_or(0);
        env.idle_timeout = idle_timeout;
        env.on_idle = req.on_idle;
        env.tenant = who.tenant.clone();
        env.warn_before = crate::warnings::marks(self, req.warn_before.as_ref(), ttl, &who)?;
        admission::admit(&self.cx, &mut env, &who, HostGuard::Check).await?;
        Ok((env, who, params))
    }

    /// The principal of an environment the operator makes in `tenant`'s namespace (`/vms`,
    /// config files). With keys on, the tenant must exist; without them (one operator, as in
    /// the seeds) it is made on first use, with the `free` tier.
    async fn namespace(&self, tenant: &str, actor: &str, make_tenant: bool) -> Result<Principal, AppError> {
        if tenant == NO_TENANT || self.cx.store.tenant(tenant).await?.is_some() {
            return Ok(Principal::operator(tenant, actor));
        }
        if self.cx.auth.enabled() && !make_tenant {
            return Err(invalid(
                "tenant",
                format!("tenant {tenant} does not exist; create it first (POST /v1/admin/tenants)"),
            ));
        }
        validate::tenant("tenant", tenant)?;
        let record = lapse_store::TenantRecord {
            name: tenant.to_owned(),
            tier: "free".into(),
            quota: serde_json::json!({}),
            quota_check: lapse_core::quota::QuotaCheck::default().as_str().to_owned(),
            created_at: self.now(),
        };
        let event = NewEvent::of_tenant(tenant, actor, "create_tenant", "ok", "made on first use (no API keys)");
        self.cx.store.create_tenant(&record, event).await?;
        Ok(Principal::operator(tenant, actor))
    }

    /// Time and cost per environment and per tenant within `[from, to)`, of one tenant or all.
    pub async fn usage(&self, tenant: Option<&str>, from: Millis, to: Millis) -> Result<UsageView, AppError> {
        let prices = &self.cx.config.prices;
        let rows = self.cx.store.accrual(tenant, from, to).await?;
        let mut environments = Vec::new();
        let mut tenants: std::collections::BTreeMap<String, TenantUsage> = Default::default();
        // Each environment accrues to whoever owned it when: a claimed pool member to its
        // claimer from the claim, its time waiting in the pool to the operator ("").
        for row in rows {
            let mut payers: Vec<&str> = row.owners.iter().map(|o| o.tenant.as_str()).collect();
            payers.sort_unstable();
            payers.dedup();
            for payer in payers.into_iter().filter(|p| tenant.is_none_or(|t| t == *p)) {
                let accrued = lapse_core::cost::accrue_owned(&row.transitions, &row.owners, payer, from, to);
                if accrued.running_ms == 0 && accrued.stopped_ms == 0 {
                    continue;
                }
                let env = &row.env;
                let default_type = self.cx.providers.get(&env.spec.provider).and_then(|p| p.default_instance_type());
                let cost = prices.cost(&env.spec, &env.labels, default_type, &accrued);
                let t = tenants.entry(payer.to_owned()).or_insert_with(|| TenantUsage {
                    tenant: payer.to_owned(),
                    environments: 0,
                    running_hours: 0.0,
                    stopped_hours: 0.0,
                    cost: 0.0,
                });
                t.environments += 1;
                t.running_hours += accrued.running_hours();
                t.stopped_hours += accrued.stopped_hours();
                t.cost += cost;
                environments.push(EnvironmentUsage {
                    hourly: prices.hourly(&env.spec, &env.labels, default_type),
                    id: env.id.clone(),
                    tenant: payer.to_owned(),
                    owner: env.owner.clone(),
                    running_hours: accrued.running_hours(),
                    stopped_hours: accrued.stopped_hours(),
                    cost,
                });
            }
        }
        Ok(UsageView {
            from: format_millis(from),
            to: format_millis(to),
            tenants: tenants.into_values().collect(),
            environments,
        })
    }

    /// Creates the environment keyed `job_id`, or replaces its spec (not merged) if it exists:
    /// the seed's upsert, used by `POST /vms` and config files.
    pub async fn upsert_job(&self, mut job: Job, actor: &str) -> Result<Created, AppError> {
        // One upsert at a time: `/vms` and a config reload naming one new `job_id` make one.
        let _serial = self.jobs_lock.lock().await;
        let who = self.namespace(&job.tenant, actor, job.make_tenant).await?;
        let now = self.now();
        let existing = self.cx.store.get_by_job(&job.job_id).await?;
        if let Some(existing) = existing {
            // The replacing spec is admitted as a new one would be.
            let mut probe = existing.clone();
            probe.spec = job.spec.clone();
            probe.tenant = who.tenant.clone();
            admission::admit(&self.cx, &mut probe, &who, HostGuard::Check).await?;
            job.spec = probe.spec;
            let expires_at = job.ttl.map(|t| existing.created_at + t.as_millis() as i64);
            let env = self
                .change(&existing.id, actor, None, "upsert", |e| {
                    let changed = e.spec.hash() != job.spec.hash();
                    let mut notes = Vec::new();
                    if changed {
                        notes.push(format!("spec replaced ({} -> {})", e.spec.hash(), job.spec.hash()));
                        e.spec = job.spec.clone();
                        e.replace = !matches!(e.observed, ObservedState::Pending | ObservedState::Failed);
                    }
                    retry_afresh(e);
                    let on_expiry = if job.lifecycle == Lifecycle::Job { OnExpiry::Delete } else { job.on_expiry };
                    for (field, changed) in [
                        ("tenant", e.tenant != job.tenant),
                        ("name", e.name != job.name),
                        ("lifecycle", e.lifecycle != job.lifecycle),
                        ("on_expiry", e.on_expiry != on_expiry),
                        ("max_retries", e.max_retries != job.max_retries),
                        ("idle_timeout", e.idle_timeout != job.idle_timeout || e.on_idle != job.on_idle),
                        ("warn_before", e.warn_before != job.warn_before),
                        ("labels", e.labels != job.labels),
                        ("seed spec", e.seed_spec != job.seed_spec),
                    ] {
                        if changed {
                            notes.push(format!("{field} changed"));
                        }
                    }
                    e.tenant = job.tenant.clone();
                    e.name = job.name.clone();
                    e.lifecycle = job.lifecycle;
                    e.on_expiry = on_expiry;
                    e.max_retries = job.max_retries;
                    e.idle_timeout = job.idle_timeout;
                    e.on_idle = job.on_idle;
                    e.warn_before = job.warn_before.clone();
                    e.labels = job.labels.clone();
                    e.source = job.source.clone();
                    e.seed_spec = job.seed_spec.clone();
                    if e.expires_at != expires_at {
                        e.expires_at = expires_at;
                        e.expired_at = None;
                    }
                    e.desired = DesiredState::Running;
                    Ok(if notes.is_empty() { "unchanged".into() } else { notes.join("; ") })
                })
                .await?;
            return Ok(Created { env, claimed: false });
        }
        let mut env = Environment::new(new_environment_id(), job.tenant.clone(), job.spec, now);
        env.tenant = job.tenant;
        env.name = job.name;
        env.job_id = Some(job.job_id);
        env.lifecycle = job.lifecycle;
        env.max_retries = job.max_retries;
        env.idle_timeout = job.idle_timeout;
        env.on_idle = job.on_idle;
        env.warn_before = job.warn_before;
        env.labels = job.labels;
        env.expires_at = job.ttl.map(|t| now + t.as_millis() as i64);
        env.on_expiry = if job.lifecycle == Lifecycle::Job { OnExpiry::Delete } else { job.on_expiry };
        env.source = job.source;
        env.seed_spec = job.seed_spec;
        admission::admit(&self.cx, &mut env, &who, HostGuard::Check).await?;
        self.place(env, &who).await
    }

    /// Makes the store hold what a config file declares (see [`crate::declare`]).
    pub async fn apply_declared(&self, declared: &crate::declare::Declared) -> Result<(), AppError> {
        let mut wanted_jobs = std::collections::BTreeSet::new();
        for (decl, ttl) in &declared.environments {
            wanted_jobs.insert(decl.id.clone());
            // No tenant: the operator's own (tenantless), like anything else the operator makes.
            let tenant = decl.tenant.clone().unwrap_or_else(|| NO_TENANT.to_owned());
            // As `create` does: a job is deleted at its TTL, whatever `on_expiry` says.
            let on_expiry = if decl.lifecycle == Lifecycle::Job { OnExpiry::Delete } else { decl.on_expiry };
            let max_retries = decl.max_retries.unwrap_or(0);
            // Checked by `declare::parse`: an unreadable one never gets here.
            let idle_timeout =
                decl.idle_timeout.as_ref().and_then(|d| crate::activity::idle_millis(d, self.cx.config.max_ttl).ok());
            // Checked by `declare::parse` as well.
            let warn_before = match &decl.warn_before {
                Some(w) => crate::warnings::check_marks(w, *ttl, self.cx.config.max_ttl)
                    .map_err(|e| invalid("warn_before", e))?,
                None => Vec::new(),
            };
            let existing = self.cx.store.get_by_job(&decl.id).await?;
            // Every declared field counts: an edit of any of them is applied.
            let unchanged = existing.as_ref().is_some_and(|e| {
                e.source == "config"
                    && e.spec.hash() == decl.spec.hash()
                    && e.lifecycle == decl.lifecycle
                    && e.labels == decl.labels
                    && e.tenant == tenant
                    && e.name == decl.name
                    && e.on_expiry == on_expiry
                    && e.max_retries == max_retries
                    && e.idle_timeout == idle_timeout
                    && e.on_idle == decl.on_idle
                    && e.warn_before == warn_before
                    && e.expires_at == ttl.map(|t| e.created_at + t.as_millis() as i64)
                    && e.seed_spec == decl.seed_spec
                    && e.observed != ObservedState::Failed
            });
            if unchanged {
                continue;
            }
            let job = Job {
                job_id: decl.id.clone(),
                name: decl.name.clone(),
                tenant,
                spec: decl.spec.clone(),
                lifecycle: decl.lifecycle,
                max_retries,
                labels: decl.labels.clone(),
                ttl: *ttl,
                on_expiry,
                idle_timeout,
                on_idle: decl.on_idle,
                warn_before,
                source: "config".into(),
                seed_spec: decl.seed_spec.clone(),
                make_tenant: false,
            };
            self.upsert_job(job, "config").await?;
        }
        // A seed `.exs` file keeps what leaves it (as the seed does), unless told otherwise.
        let gone = if declared.keep_removed { Vec::new() } else { self.cx.store.config_declared().await? };
        for gone in gone {
            if gone.job_id.as_ref().is_none_or(|j| !wanted_jobs.contains(j)) {
                self.delete_by(&gone.id, "config", None).await?;
            }
        }
        let mut wanted_pools = std::collections::BTreeSet::new();
        let existing_pools = self.cx.store.list_pools().await?;
        for decl in &declared.pools {
            wanted_pools.insert(decl.name.clone());
            let max = decl.max.unwrap_or(decl.min);
            let current = existing_pools.iter().find(|p| p.name == decl.name);
            let unchanged = current.is_some_and(|p| {
                p.source == "config"
                    && p.spec.hash() == decl.spec.hash()
                    && (p.min, p.max) == (decl.min, max)
                    && decl.version.as_ref().is_none_or(|v| *v == p.version)
                    && p.lifecycle == decl.lifecycle
            });
            if unchanged {
                continue;
            }
            let req = PutPool {
                spec: decl.spec.clone(),
                min: decl.min,
                max: Some(max),
                version: decl.version.clone(),
                lifecycle: decl.lifecycle,
                on_claim: None,
            };
            self.put_pool_from(&decl.name, req, "config", "config").await?;
        }
        for pool in existing_pools {
            if pool.source == "config" && !wanted_pools.contains(&pool.name) && !declared.keep_removed {
                self.delete_pool(&pool.name, "config").await?;
            }
        }
        Ok(())
    }

    /// Checks a spec for everything but its provider's availability.
    pub fn check_spec(&self, spec: &lapse_core::model::Spec) -> Result<(), AppError> {
        admission::provider_of(&self.cx, spec)?.validate(spec)?;
        Ok(())
    }

    /// The environment keyed `job_id` (not deleted), if any: the seed's `GET /vms/:id`.
    pub async fn get_job(&self, job_id: &str) -> Result<Option<Environment>, AppError> {
        if validate::name("job_id", job_id).is_err() {
            return Ok(None);
        }
        Ok(self.cx.store.get_by_job(job_id).await?.filter(|e| e.desired != DesiredState::Deleted))
    }

    /// Deletes the environment keyed `job_id`; `false` when there is none (the seed's
    /// `DELETE /vms/:id` is idempotent).
    pub async fn delete_job(&self, job_id: &str, actor: &str) -> Result<bool, AppError> {
        let _serial = self.jobs_lock.lock().await;
        match self.get_job(job_id).await? {
            Some(env) => self.delete_by(&env.id, actor, None).await.map(|_| true),
            None => Ok(false),
        }
    }

    pub async fn put_pool(&self, name: &str, req: PutPool, actor: &str) -> Result<(PoolView, bool), AppError> {
        self.put_pool_from(name, req, "api", actor).await
    }

    async fn put_pool_from(
        &self,
        name: &str,
        req: PutPool,
        source: &str,
        actor: &str,
    ) -> Result<(PoolView, bool), AppError> {
        validate::name("name", name)?;
        self.check_spec(&req.spec)?;
        let max = validate::pool_size(req.min, req.max)?;
        if let Some(v) = &req.version {
            validate::name("version", v)?;
        }
        if let Some(hook) = &req.on_claim {
            lapse_core::claim::validate_hook("on_claim", hook)?;
        }
        let existing = self.cx.store.get_pool(name).await?;
        let now = self.now();
        let pool = Pool {
            name: name.to_owned(),
            spec: req.spec,
            min: req.min,
            max,
            version: req.version.or_else(|| existing.as_ref().map(|p| p.version.clone())).unwrap_or_else(|| "1".into()),
            lifecycle: req.lifecycle,
            source: source.to_owned(),
            on_claim: req.on_claim,
            created_at: existing.as_ref().map_or(now, |p| p.created_at),
            updated_at: now,
        };
        let message =
            format!("min {}, max {}, version {}, spec {}", pool.min, pool.max, pool.version, pool.spec.hash());
        self.cx.store.put_pool(&pool, NewEvent::new(name, actor, "put_pool", "ok", message)).await?;
        self.cx.pooled_hashes.write().unwrap_or_else(|p| p.into_inner()).insert(pool.spec.hash());
        self.cx.pool_wake.notify_one();
        Ok((self.pool_view(pool).await?, existing.is_none()))
    }

    pub async fn get_pool(&self, name: &str) -> Result<PoolView, AppError> {
        let pool = self.cx.store.get_pool(name).await?.ok_or_else(|| AppError::NoPool(name.to_owned()))?;
        self.pool_view(pool).await
    }

    pub async fn list_pools(&self) -> Result<Vec<PoolView>, AppError> {
        let members = self.cx.store.pool_members().await?;
        let pools = self.cx.store.list_pools().await?;
        Ok(pools.into_iter().map(|p| self.with_rate(pool_view(p, &members))).collect())
    }

    pub async fn delete_pool(&self, name: &str, actor: &str) -> Result<(), AppError> {
        let event = NewEvent::new(name, actor, "delete_pool", "ok", "members recycled");
        if !self.cx.store.delete_pool(name, event).await? {
            return Err(AppError::NoPool(name.to_owned()));
        }
        self.cx.claim_rate.forget(name);
        self.cx.pool_wake.notify_one();
        Ok(())
    }

    fn with_rate(&self, mut view: PoolView) -> PoolView {
        view.claims_last_minute = self.cx.claim_rate.last_minute(&view.name, self.cx.clock.now());
        view
    }

    async fn pool_view(&self, pool: Pool) -> Result<PoolView, AppError> {
        let members = self.cx.store.pool_members().await?;
        Ok(self.with_rate(pool_view(pool, &members)))
    }

    /// One environment the caller may see; another tenant's answers exactly like one that
    /// does not exist.
    pub async fn get(&self, id: &str, caller: &Caller) -> Result<Environment, AppError> {
        if !is_environment_id(id) {
            return Err(AppError::NotFound(id.to_owned()));
        }
        let mut env = self
            .cx
            .store
            .get(id)
            .await?
            .filter(|e| caller.sees(&e.tenant))
            .ok_or_else(|| AppError::NotFound(id.to_owned()))?;
        if let Some(intent) = self.cx.deferred.get(id) {
            intent.overlay(&mut env);
        }
        self.cx.activity.overlay(&mut env);
        Ok(env)
    }

    /// The environments `filter` selects among those the caller may see.
    pub async fn list(&self, mut filter: ListFilter, caller: &Caller) -> Result<Vec<Environment>, AppError> {
        if let Some(tenant) = caller.scope() {
            filter.tenant = Some(tenant.to_owned());
        }
        let mut envs = self.cx.store.list(&filter).await?;
        for env in &mut envs {
            self.cx.activity.overlay(env);
        }
        if !self.cx.deferred.is_empty() {
            for env in &mut envs {
                if let Some(intent) = self.cx.deferred.get(&env.id) {
                    intent.overlay(env);
                }
            }
        }
        Ok(envs)
    }

    /// Changes one environment's desired state in a transaction and wakes the reconciler.
    /// Applies `change` to one environment in a transaction, records `actor`'s `action` (and
    /// the transition, if `change` moved the observed state), and wakes the reconciler.
    /// `scope`: the only tenant whose environment may be changed (another's is not found).
    async fn change(
        &self,
        id: &str,
        actor: &str,
        scope: Option<&str>,
        action: &str,
        change: impl FnMut(&mut Environment) -> Result<String, AppError>,
    ) -> Result<Environment, AppError> {
        self.change_admitted(id, actor, scope, None, action, change).await
    }

    /// [`App::change`] under a tenant's quota (`Store::update_admitted`): a change that makes
    /// the environment count again (a failed one started) must fit.
    async fn change_admitted(
        &self,
        id: &str,
        actor: &str,
        scope: Option<&str>,
        limits: Option<(&str, &lapse_core::quota::Quota)>,
        action: &str,
        mut change: impl FnMut(&mut Environment) -> Result<String, AppError>,
    ) -> Result<Environment, AppError> {
        if !is_environment_id(id) {
            return Err(AppError::NotFound(id.to_owned()));
        }
        let env = self
            .cx
            .store
            .update_admitted(id, limits, |e| {
                if scope.is_some_and(|t| t != e.tenant) {
                    return Err(AppError::NotFound(id.to_owned()));
                }
                if e.desired == DesiredState::Deleted {
                    return Err(AppError::Conflict(format!("environment {id} is deleted")));
                }
                let before = e.observed;
                let message = change(e)?;
                let mut events = vec![NewEvent::new(&e.id, actor, action, "ok", message)];
                if e.observed != before {
                    let to = std::mem::replace(&mut e.observed, before);
                    events.push(transition(e, to, actor, action));
                }
                Ok(events)
            })
            .await
            .map_err(|e| match e {
                AppError::Store(s) => refused(s),
                other => other,
            })?
            .ok_or_else(|| AppError::NotFound(id.to_owned()))?;
        if let Some(at) = env.expires_at.filter(|_| env.expired_at.is_none()) {
            self.cx.timers.schedule(at, &env.id);
        }
        self.reconciler.enqueue(&env.id);
        Ok(env)
    }

    /// Moves the lease; an environment its expiry stopped runs again.
    pub async fn extend(&self, id: &str, req: ExtendRequest, caller: &Caller) -> Result<Environment, AppError> {
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
        let who = admission::principal(&self.cx, caller).await?;
        self.change_admitted(id, &who.actor, caller.scope(), who.limits(), "extend", |e| {
            let new_expiry = match until {
                Target::By(d) => e.expires_at.unwrap_or(now).max(now) + d.as_millis() as i64,
                Target::Until(at) => at,
            };
            // A tenant's lease never runs further ahead than its tier's longest TTL.
            if let Some(q) = &who.quota {
                q.check_expiry(new_expiry, now).map_err(AppError::Quota)?;
            }
            let restart = e.restart_on_extend && e.expired_at.is_some();
            // Warnings are of the lease: marks fired for the old expiry are cleared.
            if e.expires_at != Some(new_expiry) {
                e.warned.clear();
                e.warned_at = None;
            }
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

    pub async fn stop(&self, id: &str, caller: &Caller) -> Result<Environment, AppError> {
        let (actor, scope) = (caller.actor(), caller.scope());
        let changed = self
            .change(id, &actor, scope, "stop", |e| {
                e.desired = DesiredState::Stopped;
                e.restart_on_extend = false;
                Ok("desired stopped".into())
            })
            .await;
        self.or_deferred(changed, id, &actor, scope, DesiredState::Stopped, "stop").await
    }

    pub async fn start(&self, id: &str, caller: &Caller) -> Result<Environment, AppError> {
        let now = self.now();
        let who = admission::principal(&self.cx, caller).await?;
        self.change_admitted(id, &who.actor, caller.scope(), who.limits(), "start", |e| {
            if e.expired_at.is_some() || e.expires_at.is_some_and(|t| t <= now) {
                return Err(AppError::Conflict(format!(
                    "the lease of {} ran out; `extend` it to start it again",
                    e.id
                )));
            }
            // Admitted again: the tier may have changed since it was made.
            if let Some(q) = &who.quota {
                admission::permitted(q, &who.tenant, &e.spec)?;
            }
            e.desired = DesiredState::Running;
            retry_afresh(e);
            Ok("desired running".into())
        })
        .await
    }

    pub async fn delete(&self, id: &str, caller: &Caller) -> Result<Environment, AppError> {
        self.delete_by(id, &caller.actor(), caller.scope()).await
    }

    async fn delete_by(&self, id: &str, actor: &str, scope: Option<&str>) -> Result<Environment, AppError> {
        let changed = self
            .change(id, actor, scope, "delete", |e| {
                e.desired = DesiredState::Deleted;
                e.restart_on_extend = false;
                Ok("desired deleted".into())
            })
            .await;
        self.or_deferred(changed, id, actor, scope, DesiredState::Deleted, "delete").await
    }

    /// A stop or delete that the store could not write (a full disk) still happens: it is
    /// recorded in the deferred journal, synced, and the reconciler acts on it; the store gets
    /// it when it can write again (see [`crate::deferred`]). Other errors pass through.
    async fn or_deferred(
        &self,
        changed: Result<Environment, AppError>,
        id: &str,
        actor: &str,
        scope: Option<&str>,
        desired: DesiredState,
        action: &str,
    ) -> Result<Environment, AppError> {
        let err = match changed {
            Err(AppError::Store(e)) if e.is_unwritable() => AppError::Store(e),
            other => return other,
        };
        let mut env = self.cx.store.get(id).await?.ok_or_else(|| AppError::NotFound(id.to_owned()))?;
        if scope.is_some_and(|t| t != env.tenant) {
            return Err(AppError::NotFound(id.to_owned()));
        }
        if env.desired == DesiredState::Deleted {
            return Err(AppError::Conflict(format!("environment {id} is deleted")));
        }
        if let Some(earlier) = self.cx.deferred.get(id)
            && earlier.desired == DesiredState::Deleted
        {
            earlier.overlay(&mut env);
            return Ok(env);
        }
        let intent = crate::deferred::Intent {
            id: id.to_owned(),
            desired,
            expired_at: None,
            reached: None,
            at: self.now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
        };
        if let Err(e) = self.cx.deferred.record(intent.clone()) {
            tracing::error!(environment = id, error = %e, "the deferred journal could not record a change");
            return Err(err);
        }
        tracing::warn!(environment = id, %desired, "the store cannot write: {action} recorded in the deferred journal");
        intent.overlay(&mut env);
        self.reconciler.enqueue(id);
        Ok(env)
    }

    pub async fn exec(&self, id: &str, req: ExecRequest, caller: &Caller) -> Result<ExecResult, AppError> {
        if req.cmd.is_empty() {
            return Err(invalid("cmd", "give the program and its arguments"));
        }
        validate::command("cmd", &req.cmd)?;
        let timeout = match &req.timeout {
            Some(t) => t.to_duration(MAX_EXEC_TIMEOUT).map_err(|e| invalid("timeout", e))?,
            None => DEFAULT_EXEC_TIMEOUT,
        };
        let env = self.running(id, caller).await?;
        let provider = self.provider_of(&env)?;
        // An exec through the API is activity (its start, and its end below).
        self.cx.activity.touch(&env.id);
        let result = provider.exec(&env.id, &env.spec, &req.cmd, timeout).await?;
        self.cx.activity.touch(&env.id);
        self.cx
            .store
            .append_event(NewEvent::new(
                &env.id,
                &caller.actor(),
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

    pub async fn logs(&self, id: &str, tail: usize, caller: &Caller) -> Result<LogsView, AppError> {
        let env = self.get(id, caller).await?;
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

    async fn running(&self, id: &str, caller: &Caller) -> Result<Environment, AppError> {
        let env = self.get(id, caller).await?;
        if env.observed != ObservedState::Running {
            return Err(AppError::Conflict(format!("environment {id} is {}, not running", env.observed)));
        }
        Ok(env)
    }

    fn provider_of(&self, env: &Environment) -> Result<&Arc<dyn lapse_providers::Provider>, AppError> {
        if let Some(replica) = self.cx.hosted_elsewhere(env) {
            return Err(AppError::Conflict(format!(
                "environment {} runs on the host of replica {replica} (provider {:?} is local to it); send its exec, \
                 logs and terminal to that replica",
                env.id, env.spec.provider
            )));
        }
        self.cx.providers.get(&env.spec.provider).ok_or_else(|| {
            AppError::Conflict(format!("provider {:?} is not configured on this server", env.spec.provider))
        })
    }

    pub async fn providers(&self) -> Vec<ProviderView> {
        // Asked at once: each health call is bounded, so one slow cloud costs its own deadline
        // and no more.
        let asked = self.cx.providers.iter().map(|p| async move {
            let (available, detail) = match p.health().await {
                Ok(detail) => (true, detail),
                Err(e) => (false, e.to_string()),
            };
            ProviderView {
                name: p.name().to_owned(),
                kind: p.kind().to_owned(),
                available,
                detail,
                capabilities: p.capabilities(),
                sweep_interval_secs: self.cx.config.sweep_interval_of(p.name()).as_secs(),
                concurrency: self.cx.config.concurrency_of(p.name()),
            }
        });
        futures::future::join_all(asked).await
    }
}

/// An environment keyed by the user's `job_id` (seed `/vms`, config files).
#[derive(Clone, Debug)]
pub struct Job {
    pub job_id: String,
    pub name: Option<String>,
    pub tenant: String,
    pub spec: lapse_core::model::Spec,
    pub lifecycle: Lifecycle,
    pub max_retries: u32,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Counted from the environment's creation.
    pub ttl: Option<Duration>,
    pub on_expiry: OnExpiry,
    /// Stop (or delete, `on_idle`) after this long without activity (ms).
    pub idle_timeout: Option<Millis>,
    pub on_idle: lapse_core::model::OnIdle,
    /// Pre-expiry warnings (ms before the lease ends, largest first).
    pub warn_before: Vec<Millis>,
    pub source: String,
    /// The seed's own spec as given (JSON text), kept on the environment; `None` elsewhere.
    pub seed_spec: Option<String>,
    /// Make the tenant on first use even when keys are on (the seed's own listener, where
    /// whoever reaches it is the operator and tenants are free text, as in the seed).
    pub make_tenant: bool,
}

/// A failed environment asked to run again gets a fresh round of attempts.
fn retry_afresh(e: &mut Environment) {
    if e.observed == ObservedState::Failed {
        e.attempts = 0;
        e.next_attempt_at = None;
        e.reason = None;
        e.observed = ObservedState::Pending;
    }
}

/// A created environment, and whether it was claimed warm from a pool.
#[derive(Debug)]
pub struct Created {
    pub env: Environment,
    pub claimed: bool,
}

fn pool_view(pool: Pool, members: &[Environment]) -> PoolView {
    let hash = pool.spec.hash();
    let current = members
        .iter()
        .filter(|m| m.pool.as_deref() == Some(pool.name.as_str()) && m.desired == DesiredState::Running)
        .filter(|m| m.pool_version.as_deref() == Some(pool.version.as_str()) && m.spec.hash() == hash);
    let (mut warm, mut starting) = (0, 0);
    for m in current {
        match m.observed {
            // A member whose probe has not passed yet is still starting: it cannot be claimed.
            ObservedState::Running if m.is_ready() => warm += 1,
            ObservedState::Running => starting += 1,
            ObservedState::Pending | ObservedState::Provisioning => starting += 1,
            _ => {}
        }
    }
    PoolView {
        name: pool.name,
        spec_hash: hash,
        spec: pool.spec,
        min: pool.min,
        max: pool.max,
        version: pool.version,
        lifecycle: pool.lifecycle,
        source: pool.source,
        warm,
        starting,
        claims_last_minute: 0,
        on_claim: pool.on_claim,
    }
}

#[derive(Clone, Copy)]
enum Target {
    By(Duration),
    Until(Millis),
}

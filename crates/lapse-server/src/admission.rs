//! Admission: the one check every environment passes before it is written, on every path
//! that makes one or makes one run again.
//!
//! | path | where | principal |
//! |---|---|---|
//! | REST create | `App::create` | the caller (a tenant key: its tenant and quota) |
//! | `POST /vms`, config file | `App::upsert_job` (new job, or a replaced spec) | the operator, in the job's tenant namespace |
//! | SWIM provision | `swim::consumer` (each message, then one batch transaction) | the operator, tenantless |
//! | pool refill | `pools::maintain` | the operator, tenantless (members are nobody's until claimed) |
//! | sweep adoption | `sweep::adopt` | the operator, tenantless; no host guard (the resource exists) |
//! | `start` of a failed environment | `App::start` (`Store::update_admitted`) | the caller |
//! | `extend` | `App::extend` (`Store::update_admitted`) | the caller |
//!
//! [`admit`] checks, in this order, and writes nothing:
//! 1. every field ([`lapse_core::validate`]) and that the provider exists here;
//! 2. that the principal may use the provider (`403`): a tenant's tier and overrides name its
//!    providers; by default every provider this server has except `process`, which runs on
//!    the server's own host; the operator may use all;
//! 3. for a tenant, the tier's default resources for what the spec leaves out: charged by the
//!    quota, and given to the provider, which enforces them;
//! 4. the provider's own `validate` of the completed spec;
//! 5. the host guard for local providers (unless the resource already exists);
//! 6. for a tenant: its quota, resolved **failing closed** (an unknown tier, an unreadable
//!    override or an unknown quota check refuses), the longest TTL, and environment-hours
//!    this month.
//!
//! A tenant's `quota_check` (`summed`, the default, or `per_request`: see
//! [`lapse_core::quota`]) is part of its [`Quota`], so the in-transaction check below holds
//! it too: per request, each environment's vCPU, memory and disk are held under the limits
//! alone, and only the environment count adds what the tenant holds.
//!
//! The count limits (environments, vCPU, memory, disk) are checked again by the store inside
//! the transaction that writes (`Store::insert_admitted`, `Store::claim`,
//! `Store::update_admitted`), so concurrent requests cannot both pass one.

use lapse_core::Millis;
use lapse_core::model::{Environment, NO_TENANT, Spec};
use lapse_core::quota::{Quota, QuotaCheck};
use lapse_core::validate::{self, FieldError};
use lapse_providers::Provider;

use crate::app::AppError;
use crate::auth::Caller;
use crate::context::Context;

/// For whom an environment is admitted.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The tenant the environment belongs to; [`NO_TENANT`] for the operator's own.
    pub tenant: String,
    pub actor: String,
    /// The limits of a tenant's own request; `None` for the operator (who has none).
    pub quota: Option<Quota>,
}

impl Principal {
    /// The operator (the admin key, the single-tenant server, the queues, the pools, the sweep)
    /// making an environment of `tenant`.
    pub fn operator(tenant: &str, actor: &str) -> Principal {
        Principal { tenant: tenant.to_owned(), actor: actor.to_owned(), quota: None }
    }

    /// `(tenant, quota)` for the store's in-transaction check, for a tenant's request.
    pub fn limits(&self) -> Option<(&str, &Quota)> {
        self.quota.as_ref().map(|q| (self.tenant.as_str(), q))
    }
}

/// What is admitted: a resource to make, or one that exists already (the sweep adopting
/// it), which neither the provider's own checks nor the host guard can refuse any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostGuard {
    Check,
    /// A refill the pool maintainer already held to the host guard (it logs why it waits).
    Checked,
    Existing,
}

/// The principal of a caller's own request: a tenant key is held to its tenant's quota.
pub async fn principal(cx: &Context, caller: &Caller) -> Result<Principal, AppError> {
    let actor = caller.actor();
    let Some(name) = caller.scope() else { return Ok(Principal::operator(NO_TENANT, &actor)) };
    Ok(Principal { tenant: name.to_owned(), actor, quota: Some(quota_of(cx, name).await?) })
}

/// A tenant's quota: its tier with its overrides. Fails closed: a tenant that does not exist,
/// an unknown tier or an override that does not read refuses rather than admitting unlimited.
pub async fn quota_of(cx: &Context, name: &str) -> Result<Quota, AppError> {
    let tenant =
        cx.store.tenant(name).await?.ok_or_else(|| AppError::Quota(format!("tenant {name} does not exist")))?;
    let overrides: lapse_core::wire::QuotaInput = serde_json::from_value(tenant.quota).map_err(|e| {
        tracing::error!(tenant = name, error = %e, "a tenant's quota overrides do not read; refusing its requests");
        AppError::Quota(format!("quota: the overrides of tenant {name} cannot be read; ask the operator"))
    })?;
    let base = cx.config.tier(&tenant.tier).ok_or_else(|| {
        tracing::error!(tenant = name, tier = %tenant.tier, "a tenant's tier is not configured; refusing its requests");
        AppError::Quota(format!("quota: tier {:?} of tenant {name} is not configured; ask the operator", tenant.tier))
    })?;
    let check = QuotaCheck::parse(&tenant.quota_check).ok_or_else(|| {
        tracing::error!(tenant = name, quota_check = %tenant.quota_check, "a tenant's quota check is unknown; refusing its requests");
        AppError::Quota(format!(
            "quota: tenant {name} has an unknown quota check {:?}; ask the operator",
            tenant.quota_check
        ))
    })?;
    Ok(Quota { check, ..base.with(&overrides, cx.config.max_ttl) })
}

/// Checks `env` for `who` and completes it (default resources); see the module doc.
pub async fn admit(cx: &Context, env: &mut Environment, who: &Principal, guard: HostGuard) -> Result<(), AppError> {
    let provider = provider_of(cx, &env.spec)?;
    // With replicas, a local provider's environment is this replica's (see `crate::lead`).
    if env.placed_on.is_none() {
        env.placed_on = cx.placement_for(&env.spec.provider);
    }
    if let Some(q) = &who.quota {
        permitted(q, &who.tenant, &env.spec)?;
        env.spec.resources = Some(q.charged(env.spec.resources.as_ref()));
    }
    if guard != HostGuard::Existing {
        provider.validate(&env.spec)?;
        provider.validate_labels(&env.labels)?;
    }
    if guard == HostGuard::Check
        && let Some(why) = crate::host::refusal(&env.spec.provider, &cx.config)
    {
        return Err(AppError::HostCapacity(why));
    }
    let Some(q) = &who.quota else { return Ok(()) };
    let ttl =
        env.expires_at.map(|at| std::time::Duration::from_millis(u64::try_from(at - env.created_at).unwrap_or(0)));
    q.check_ttl(ttl).map_err(AppError::Quota)?;
    check_hours(cx, q, &who.tenant, cx.clock.now()).await
}

/// The spec's fields checked, and its provider, which must be on this server.
pub fn provider_of<'a>(cx: &'a Context, spec: &Spec) -> Result<&'a std::sync::Arc<dyn Provider>, AppError> {
    validate::spec(spec)?;
    let provider = cx.providers.get(&spec.provider).ok_or_else(|| {
        invalid(
            "spec.provider",
            format!("unknown provider {:?}; this server has: {}", spec.provider, cx.providers.names().join(", ")),
        )
    })?;
    // `kernel`/`rootfs` only for a provider that boots kernels (a capability).
    lapse_providers::check_boot(spec, provider.name(), provider.boots_kernel())?;
    crate::workspace::admit(spec, provider.kind(), &cx.config.workspace)?;
    Ok(provider)
}

/// Whether a tenant may use the spec's provider.
pub fn permitted(q: &Quota, tenant: &str, spec: &Spec) -> Result<(), AppError> {
    if q.permits(&spec.provider) {
        return Ok(());
    }
    let allowed = match &q.providers {
        Some(list) if list.is_empty() => "none".to_owned(),
        Some(list) => list.join(", "),
        None => "every provider but process".to_owned(),
    };
    Err(AppError::Forbidden(format!(
        "tenant {tenant} may not use provider {:?} (its tier allows: {allowed})",
        spec.provider
    )))
}

/// Refuses a tenant that used up its environment-hours this month.
async fn check_hours(cx: &Context, q: &Quota, tenant: &str, now: Millis) -> Result<(), AppError> {
    let Some(limit) = q.env_hours_per_month else { return Ok(()) };
    let from = crate::app::month_start(now);
    let rows = cx.store.accrual(Some(tenant), from, now).await?;
    let used: f64 = rows
        .iter()
        .map(|r| lapse_core::cost::accrue_owned(&r.transitions, &r.owners, tenant, from, now).running_hours())
        .sum();
    if used >= limit {
        return Err(AppError::Quota(format!(
            "quota: env_hours_per_month {used:.2} of {limit} used this month; this request needs more"
        )));
    }
    Ok(())
}

fn invalid(field: &str, e: impl ToString) -> AppError {
    AppError::Invalid(FieldError { field: field.to_owned(), message: e.to_string() })
}

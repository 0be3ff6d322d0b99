//! Adoption: taking over resources this control plane did not make (instance-manager's EC2
//! instances), as environments with their expiry. `POST /v1/admin/adopt` (admin only).
//!
//! **Contract.**
//! - A request names a provider, the resources to adopt by their provider id (each with an
//!   optional expiry, name and labels), and with `discover` also every live resource the
//!   seed's tool tagged as its own ([`lapse_providers::ForeignQuery`]). At most
//!   [`MAX_ADOPT`] ids; a bad field is a 400 naming it (`instances[3].expires_at`) and
//!   nothing is adopted.
//! - **Idempotent**: a resource already adopted (an environment not deleted carries the label
//!   [`LABEL_REF`] with its id) or already this control plane's own (its tags name an
//!   existing environment) is reported `already: true` and not adopted again. Adoptions are
//!   serialized, so two concurrent requests for one resource adopt it once.
//! - A resource that does not exist or is terminated is **skipped with the reason**; the
//!   others are still adopted. `dry_run` reports what would be adopted and changes nothing.
//! - Each adoption: the provider marks the resource as the new environment's, held out of its
//!   `list` ([`Provider::adopt`]); the record is then checked and written through
//!   [`admission::admit`] like every create (the operator's, tenantless; the resource exists,
//!   so no host guard) with its audit event; the hold is released. A record that cannot be
//!   written has the provider's marks removed, so the resource is left as it was.
//! - The expiry is the request's, else the resource's launch time plus the lease its maker
//!   recorded (instance-manager's `Duration` tag), else now plus the server's default TTL.
//!   It is armed like any other, so an adopted resource whose expiry has passed is stopped
//!   (or deleted, per `on_expiry`) at once by expiry.

use std::collections::BTreeMap;

use lapse_core::model::{CloudSpec, DesiredState, Environment, NO_TENANT, ObservedState, OnExpiry, Spec};
use lapse_core::validate::FieldError;
use lapse_core::{Millis, format_millis};
use lapse_providers::{Foreign, ForeignQuery, InstanceStatus, Placement, Provider, ProviderError};
use lapse_store::{ListFilter, NewEvent};
use serde::{Deserialize, Serialize};

use crate::admission::{self, HostGuard, Principal};
use crate::app::{App, AppError};

/// Most resources one request may name.
pub const MAX_ADOPT: usize = 1000;
/// The label holding an adopted environment's provider id (`i-0abc...`).
pub const LABEL_REF: &str = "lapse.adopted-ref";
/// The label marking an adopted environment.
pub const LABEL_ADOPTED: &str = "lapse.adopted";
/// The `source` of an adopted environment.
pub const SOURCE: &str = "import";

/// `POST /v1/admin/adopt`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdoptRequest {
    /// The provider holding the resources (`aws`).
    pub provider: String,
    #[serde(default)]
    pub instances: Vec<AdoptInstance>,
    /// Also every live resource the seed's tool tagged (aws: `ManagedBy=instance-manager`).
    #[serde(default)]
    pub discover: bool,
    /// Report what would be adopted; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Whose the environments are (default `instance-manager`).
    #[serde(default)]
    pub owner: Option<String>,
    /// What their expiry does (default `stop`, as instance-manager's service).
    #[serde(default)]
    pub on_expiry: OnExpiry,
    /// The ports their environments publish (instance-manager's: 22), as `spec.ports`.
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// One resource to adopt.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdoptInstance {
    /// The provider's id (an EC2 instance id).
    pub provider_ref: String,
    /// RFC 3339; default: launch time plus the recorded lease, else now plus the default TTL.
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What a request adopted and skipped.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct AdoptReport {
    pub dry_run: bool,
    pub adopted: Vec<AdoptedView>,
    pub skipped: Vec<SkippedView>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct AdoptedView {
    pub provider_ref: String,
    /// `None` in a dry run.
    #[serde(default)]
    pub environment_id: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    /// `running` or `stopped`.
    pub state: String,
    /// Already adopted (or already this server's own) before this request.
    pub already: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct SkippedView {
    pub provider_ref: String,
    pub reason: String,
}

/// Serializes adoptions (see the module doc).
static ADOPTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn invalid(field: impl Into<String>, message: impl Into<String>) -> AppError {
    AppError::Invalid(FieldError { field: field.into(), message: message.into() })
}

fn parse_time(field: &str, text: &str) -> Result<Millis, AppError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| invalid(field, format!("{text:?} is not an RFC 3339 time: {e}")))
}

/// Whether `s` can be a provider's id: 1 to 64 of letters, digits, `-`, `_`, `.`.
pub fn is_provider_ref(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A checked request: its expiries parsed.
struct Checked<'a> {
    provider: &'a std::sync::Arc<dyn Provider>,
    expiries: Vec<Option<Millis>>,
    owner: String,
}

impl App {
    /// Adopts what `req` names; see the module doc.
    pub async fn adopt(&self, req: AdoptRequest) -> Result<AdoptReport, AppError> {
        let checked = self.check_adopt(&req)?;
        let provider = checked.provider;
        let _serial = ADOPTING.lock().await;
        let query =
            ForeignQuery { ids: req.instances.iter().map(|i| i.provider_ref.clone()).collect(), tagged: req.discover };
        let found: BTreeMap<String, Foreign> = match provider.find_foreign(&query).await {
            Ok(found) => found.into_iter().map(|f| (f.provider_ref.clone(), f)).collect(),
            Err(ProviderError::Unsupported { .. }) => {
                return Err(invalid("provider", format!("the {} provider cannot adopt resources", provider.name())));
            }
            Err(e) => return Err(e.into()),
        };
        let mut report = AdoptReport { dry_run: req.dry_run, ..Default::default() };
        // The named ones first, in their order; then the discovered ones.
        let mut order: Vec<(Option<&AdoptInstance>, Option<Millis>, String)> = Vec::new();
        for (i, at) in req.instances.iter().zip(&checked.expiries) {
            if !order.iter().any(|(_, _, r)| *r == i.provider_ref) {
                order.push((Some(i), *at, i.provider_ref.clone()));
            }
        }
        for r in found.keys() {
            if !order.iter().any(|(_, _, o)| o == r) {
                order.push((None, None, r.clone()));
            }
        }
        for (asked, at, provider_ref) in order {
            let skip = |reason: String| SkippedView { provider_ref: provider_ref.clone(), reason };
            let Some(foreign) = found.get(&provider_ref) else {
                report.skipped.push(skip(format!("no such {} resource", provider.name())));
                continue;
            };
            match self.adopt_one(&req, &checked, asked, at, foreign).await {
                Ok(view) => report.adopted.push(view),
                Err(reason) => report.skipped.push(skip(reason)),
            }
        }
        Ok(report)
    }

    fn check_adopt<'a>(&'a self, req: &AdoptRequest) -> Result<Checked<'a>, AppError> {
        let ports = Spec { provider: req.provider.clone(), ports: req.ports.clone(), ..Default::default() };
        lapse_core::validate::spec(&ports).map_err(|e| invalid(e.field.trim_start_matches("spec."), e.message))?;
        let provider = self
            .cx
            .providers
            .get(&req.provider)
            .ok_or_else(|| invalid("provider", format!("no provider {:?} on this server", req.provider)))?;
        if req.instances.len() > MAX_ADOPT {
            return Err(invalid("instances", format!("at most {MAX_ADOPT} per request")));
        }
        if req.instances.is_empty() && !req.discover {
            return Err(invalid("instances", "name at least one resource, or set discover"));
        }
        let owner = req.owner.clone().unwrap_or_else(|| "instance-manager".into());
        lapse_core::validate::owner(&owner)?;
        let mut expiries = Vec::with_capacity(req.instances.len());
        for (n, i) in req.instances.iter().enumerate() {
            if !is_provider_ref(&i.provider_ref) {
                return Err(invalid(
                    format!("instances[{n}].provider_ref"),
                    "1 to 64 letters, digits, '-', '_', '.' (an EC2 instance id: i-0abc...)",
                ));
            }
            if let Some(name) = &i.name {
                lapse_core::validate::name(&format!("instances[{n}].name"), name)?;
            }
            lapse_core::validate::labels(&i.labels)
                .map_err(|e| invalid(format!("instances[{n}].{}", e.field), e.message))?;
            expiries.push(match &i.expires_at {
                Some(t) => Some(parse_time(&format!("instances[{n}].expires_at"), t)?),
                None => None,
            });
        }
        Ok(Checked { provider, expiries, owner })
    }

    /// Adopts one found resource, or says why not.
    async fn adopt_one(
        &self,
        req: &AdoptRequest,
        checked: &Checked<'_>,
        asked: Option<&AdoptInstance>,
        at: Option<Millis>,
        foreign: &Foreign,
    ) -> Result<AdoptedView, String> {
        let provider = checked.provider;
        let pref = &foreign.provider_ref;
        let Some(status) = foreign.status else { return Err("terminated".into()) };
        if let Some(existing) = self.adopted_as(provider.name(), pref, foreign.environment_id.as_deref()).await? {
            return Ok(view(pref, Some(existing.id.clone()), existing.expires_at, existing.observed.to_string(), true));
        }
        if let Some(e) = &foreign.environment_id {
            return Err(format!("already tagged as environment {e} of this server, whose record is deleted"));
        }
        let now = self.cx.clock.now();
        let expires_at = at
            .or_else(|| Some(foreign.launched_at? + i64::try_from(foreign.lease?.as_millis()).ok()?))
            .unwrap_or(now + self.cx.config.default_ttl.as_millis() as i64);
        let running = matches!(status, InstanceStatus::Running | InstanceStatus::Pending);
        let state = if running { "running" } else { "stopped" };
        if req.dry_run {
            return Ok(view(pref, None, Some(expires_at), state.into(), false));
        }
        let id = lapse_core::model::new_environment_id();
        let env = self.adoptee(&id, req, checked, asked, foreign, expires_at, running, now);
        let placement = Placement {
            tenant: String::new(),
            expires_at: Some(expires_at),
            on_expiry: req.on_expiry,
            ..Default::default()
        };
        let instance = provider.adopt(&id, pref, &placement, &env.spec).await.map_err(|e| match e {
            ProviderError::NotFound { .. } => format!("no such {} resource", provider.name()),
            other => other.recorded(),
        })?;
        let mut env = env;
        env.endpoints = instance.endpoints.clone();
        match self.record_adoption(&mut env, provider.name(), pref).await {
            Ok(()) => {}
            Err(why) => {
                if let Err(e) = provider.finish_adoption(&id, pref, false).await {
                    tracing::error!(resource = %pref, error = %e, "could not remove the marks of a failed adoption");
                }
                return Err(why);
            }
        }
        if let Err(e) = provider.finish_adoption(&id, pref, true).await {
            // The environment exists and expiry reaches it; only the sweep does not see it.
            tracing::warn!(environment = %id, error = %e, "adopted, but the hold on the resource stays");
        }
        self.cx.timers.schedule(expires_at, &id);
        self.reconciler.enqueue(&id);
        Ok(view(pref, Some(id), Some(expires_at), state.into(), false))
    }

    #[allow(clippy::too_many_arguments)]
    fn adoptee(
        &self,
        id: &str,
        req: &AdoptRequest,
        checked: &Checked<'_>,
        asked: Option<&AdoptInstance>,
        foreign: &Foreign,
        expires_at: Millis,
        running: bool,
        now: Millis,
    ) -> Environment {
        let cloud = CloudSpec {
            instance_type: foreign.instance_type.clone(),
            zone: foreign.zone.clone(),
            ..Default::default()
        };
        let mut spec =
            Spec { provider: req.provider.clone(), cloud: Some(cloud), ports: req.ports.clone(), ..Default::default() };
        // What the cloud reports may be outside what a spec may say; the record keeps the rest.
        if checked.provider.validate(&spec).is_err() {
            spec.cloud = None;
        }
        let mut env = Environment::new(id.to_owned(), checked.owner.clone(), spec, now);
        env.tenant = NO_TENANT.into();
        env.name = asked.and_then(|a| a.name.clone());
        env.labels = asked.map(|a| a.labels.clone()).unwrap_or_default();
        env.labels.insert(LABEL_ADOPTED.into(), "true".into());
        env.labels.insert(LABEL_REF.into(), foreign.provider_ref.clone());
        env.desired = if running { DesiredState::Running } else { DesiredState::Stopped };
        env.observed = if running { ObservedState::Running } else { ObservedState::Stopped };
        env.provider_ref = Some(foreign.provider_ref.clone());
        env.expires_at = Some(expires_at);
        env.on_expiry = req.on_expiry;
        env.source = SOURCE.into();
        env.reason = Some("adopted".into());
        env
    }

    async fn record_adoption(&self, env: &mut Environment, provider: &str, pref: &str) -> Result<(), String> {
        let operator = Principal::operator(NO_TENANT, "admin");
        admission::admit(&self.cx, env, &operator, HostGuard::Existing).await.map_err(|e| format!("refused: {e}"))?;
        let event = NewEvent::new(&env.id, "admin", "adopt", "ok", format!("adopted {provider} resource {pref}"));
        self.cx.store.insert(env, event).await.map_err(|e| format!("not recorded: {e}"))
    }

    /// The live environment that already holds `pref`: one adopted before, or the one its
    /// tags name.
    async fn adopted_as(
        &self,
        provider: &str,
        pref: &str,
        tagged: Option<&str>,
    ) -> Result<Option<Environment>, String> {
        let filter = ListFilter {
            provider: Some(provider.to_owned()),
            labels: vec![(LABEL_REF.to_owned(), pref.to_owned())],
            ..Default::default()
        };
        let listed = self.cx.store.list(&filter).await.map_err(|e| format!("store: {e}"))?;
        if let Some(e) =
            listed.into_iter().find(|e| e.observed != ObservedState::Deleted && e.desired != DesiredState::Deleted)
        {
            return Ok(Some(e));
        }
        let Some(tagged) = tagged else { return Ok(None) };
        let found = self.cx.store.get(tagged).await.map_err(|e| format!("store: {e}"))?;
        Ok(found.filter(|e| e.observed != ObservedState::Deleted && e.desired != DesiredState::Deleted))
    }
}

fn view(
    pref: &str,
    environment_id: Option<String>,
    expires_at: Option<Millis>,
    state: String,
    already: bool,
) -> AdoptedView {
    AdoptedView {
        provider_ref: pref.to_owned(),
        environment_id,
        expires_at: expires_at.map(format_millis),
        state,
        already,
    }
}

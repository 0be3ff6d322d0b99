//! The sweep's first half: what it would correct, read and never written.
//!
//! [`plan`] calls the provider's `list` (and `inspect` for the records that disagree with it)
//! and reads the store; it writes nothing and calls nothing else. A dry run prints its
//! [`Plan`]; a real sweep hands the same value to [`super::apply`], so what a dry run shows is
//! what the sweep does (apart from rows that move on between the two, which `apply` drops).
//!
//! **`lapse:keep`** is the sweep's rule, for every provider: a resource the provider reports
//! as kept ([`Instance::keep`]: an EC2 or Scaleway tag, a Docker label `lapse:keep` or
//! `lapse.keep`) or whose record carries the label `lapse.keep` is planned as
//! [`Action::Keep`]: never removed, adopted or corrected.

use std::collections::BTreeMap;

use lapse_core::Millis;
use lapse_core::model::{DesiredState, Environment, ObservedState};
use lapse_providers::{Instance, InstanceStatus, Provider, is_keep_mark};

use super::SweepError;
use crate::context::Context;
use crate::reconciler::Reconciler;

/// Every correction one sweep of one provider would make, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Planned>,
}

/// One planned correction (or a resource left alone on purpose).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub environment_id: String,
    pub provider_ref: Option<String>,
    pub action: Action,
}

/// What the sweep does about one environment or resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A resource under our label with no live record: delete it.
    RemoveOrphan { why: OrphanWhy },
    /// A resource under our label with no record at all, under `--orphans adopt`: record it.
    AdoptOrphan { instance: Box<Instance> },
    /// The record (as read then) says running or stopped and the resource is gone, or has
    /// stopped on its own: corrected by [`super::correct`] by its lifecycle.
    Correct { drift: Drift, seen: Basis, exit_reason: Option<String> },
    /// Marked `lapse:keep`: left alone.
    Keep,
    /// Between two states (pending, stopping, shutting down): left alone until it settles.
    Transitional { status: InstanceStatus },
}

/// Why a resource is an orphan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrphanWhy {
    Unknown,
    Ended,
}

impl OrphanWhy {
    pub fn text(self) -> &'static str {
        match self {
            OrphanWhy::Unknown => "unknown to the store",
            OrphanWhy::Ended => "its environment is failed or deleted",
        }
    }
}

/// How a resource differs from its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drift {
    /// Gone; desired `running` is provisioned again, desired `stopped` marked failed.
    Vanished { desired: DesiredState },
    /// It stopped on its own, with this exit code if the provider knows it.
    Exited(Option<i64>),
}

/// The record a correction was planned on: applied only if the row is still so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Basis {
    pub observed: ObservedState,
    pub updated_at: Millis,
}

impl Action {
    /// The word the API and CLI show.
    pub fn word(&self) -> &'static str {
        match self {
            Action::RemoveOrphan { .. } => "remove_orphan",
            Action::AdoptOrphan { .. } => "adopt_orphan",
            Action::Correct { drift: Drift::Vanished { desired: DesiredState::Running }, .. } => "provision_again",
            Action::Correct { drift: Drift::Vanished { .. }, .. } => "mark_failed",
            Action::Correct { drift: Drift::Exited(_), .. } => "record_exit",
            Action::Keep => "keep",
            Action::Transitional { .. } => "transitional",
        }
    }

    /// Why, in words.
    pub fn detail(&self) -> String {
        match self {
            Action::RemoveOrphan { why } => why.text().to_owned(),
            Action::AdoptOrphan { instance } => {
                let running = instance.status == InstanceStatus::Running;
                format!("unknown to the store; recorded as {}", if running { "running" } else { "stopped" })
            }
            Action::Correct { drift: Drift::Vanished { desired: DesiredState::Running }, .. } => {
                "the resource vanished; provisioned again".into()
            }
            Action::Correct { drift: Drift::Vanished { .. }, .. } => "the resource vanished while stopped".into(),
            Action::Correct { drift: Drift::Exited(code), exit_reason, .. } => {
                let code = code.map_or("unknown".to_owned(), |c| c.to_string());
                match exit_reason {
                    Some(why) => format!("exited on its own (code {code}: {why})"),
                    None => format!("exited on its own (code {code})"),
                }
            }
            Action::Keep => "marked lapse:keep; never touched by the sweep".into(),
            Action::Transitional { status } => format!("{status:?}; left alone until it settles").to_lowercase(),
        }
    }
}

/// Whether a record carries the keep label.
pub fn record_kept(e: &Environment) -> bool {
    e.labels.keys().any(|k| is_keep_mark(k))
}

/// Plans one sweep of `provider`: reads only (`list`, `inspect`, the store).
pub async fn plan(cx: &Context, reconciler: &Reconciler, provider: &dyn Provider) -> Result<Plan, SweepError> {
    // Read the provider first: a record written after this read is not mistaken for missing
    // below, because its row is re-read (here and again before anything is changed).
    let instances: BTreeMap<String, Instance> =
        provider.list().await?.into_iter().map(|i| (i.environment_id.clone(), i)).collect();
    let records = cx.store.sweep_view(provider.name()).await?;
    let mut plan = Plan::default();

    for (id, instance) in &instances {
        if reconciler.is_busy(id) || records.get(id).is_some_and(|r| r.observed != ObservedState::Failed) {
            continue;
        }
        let current = cx.store.get(id).await?;
        let action = match &current {
            Some(e) if !matches!(e.observed, ObservedState::Failed | ObservedState::Deleted) => continue,
            _ if instance.keep || current.as_ref().is_some_and(record_kept) => Action::Keep,
            // One on its way (a container created, not yet started) is adopted once it
            // settles, as what it became.
            None if cx.config.orphans == crate::config::OrphanPolicy::Adopt && instance.status.is_transitional() => {
                continue;
            }
            None if cx.config.orphans == crate::config::OrphanPolicy::Adopt
                && lapse_core::model::is_environment_id(id) =>
            {
                Action::AdoptOrphan { instance: Box::new(instance.clone()) }
            }
            None => Action::RemoveOrphan { why: OrphanWhy::Unknown },
            Some(_) => Action::RemoveOrphan { why: OrphanWhy::Ended },
        };
        plan.actions.push(Planned {
            environment_id: id.clone(),
            provider_ref: Some(instance.provider_ref.clone()),
            action,
        });
    }

    for (id, record) in &records {
        // With replicas: another replica's (see `crate::lead`).
        if !cx.owns_placed(provider.name(), record.placed_on.as_deref()) {
            continue;
        }
        let stable = matches!(record.observed, ObservedState::Running | ObservedState::Stopped);
        let seen = instances.get(id);
        if let Some(i) = seen.filter(|i| stable && i.status.is_transitional()) {
            plan.actions.push(Planned {
                environment_id: id.clone(),
                provider_ref: Some(i.provider_ref.clone()),
                action: Action::Transitional { status: i.status },
            });
            continue;
        }
        let agrees = matches!(
            (record.observed, seen.map(|i| i.status)),
            (ObservedState::Running, Some(InstanceStatus::Running)) | (ObservedState::Stopped, Some(_))
        );
        if !stable || agrees {
            continue;
        }
        if let Some(planned) = plan_one(cx, reconciler, provider, id).await? {
            plan.actions.push(planned);
        }
    }
    Ok(plan)
}

/// Plans the correction of one environment's record from a fresh `inspect`; `None` when the
/// two agree, the row is not `running`/`stopped` of this provider, the reconciler has it, or another
/// replica owns it.
pub async fn plan_one(
    cx: &Context,
    reconciler: &Reconciler,
    provider: &dyn Provider,
    id: &str,
) -> Result<Option<Planned>, SweepError> {
    if reconciler.is_busy(id) {
        return Ok(None);
    }
    let Some(record) = cx.store.get(id).await? else { return Ok(None) };
    if record.spec.provider != provider.name()
        || !cx.owns(&record)
        || !matches!(record.observed, ObservedState::Running | ObservedState::Stopped)
    {
        return Ok(None);
    }
    let instance = provider.inspect(id).await?;
    let provider_ref = instance.as_ref().map(|i| i.provider_ref.clone()).or(record.provider_ref.clone());
    let drift = match (record.observed, instance.as_ref().map(|i| i.status)) {
        (_, None) => Drift::Vanished { desired: record.desired },
        (ObservedState::Running, Some(InstanceStatus::Stopped)) => {
            Drift::Exited(instance.as_ref().and_then(|i| i.exit_code))
        }
        _ => return Ok(None),
    };
    let kept = record_kept(&record) || instance.as_ref().is_some_and(|i| i.keep);
    let action = if kept {
        Action::Keep
    } else {
        Action::Correct {
            drift,
            seen: Basis { observed: record.observed, updated_at: record.updated_at },
            exit_reason: instance.and_then(|i| i.exit_reason),
        }
    };
    Ok(Some(Planned { environment_id: id.to_owned(), provider_ref, action }))
}

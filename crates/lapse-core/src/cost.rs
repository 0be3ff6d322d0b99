//! What environments cost: time spent running (and, if configured, stopped), from the
//! transitions in the audit trail, priced per instance type or per vCPU-hour and GB-hour.
//! Pure: the caller reads the transitions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Millis;
use crate::model::{ObservedState, Spec};

const HOUR_MS: f64 = 3_600_000.0;

/// The config file's `[prices]` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Per vCPU and hour.
    #[serde(default)]
    pub vcpu_hour: f64,
    /// Per GB of memory and hour.
    #[serde(default)]
    pub gb_hour: f64,
    /// Per hour, by instance type (the label [`INSTANCE_TYPE_LABEL`], which only the server
    /// sets: tenants cannot set labels under `swim.` or `lapse.`); wins over the per-resource
    /// prices.
    #[serde(default)]
    pub instance_types: BTreeMap<String, f64>,
    /// Per hour, by provider, on top of the rest (a cloud's own charge, say).
    #[serde(default)]
    pub providers: BTreeMap<String, f64>,
    /// Stopped environments accrue at the same rate (their disk and reservation still cost).
    #[serde(default)]
    pub bill_stopped: bool,
}

/// The label that names an environment's instance type for pricing; set by the server (the
/// SWIM queues), never by a tenant.
pub const INSTANCE_TYPE_LABEL: &str = "swim.instance_type";

/// Label prefixes only the server sets: a tenant's labels may not start with them.
pub const RESERVED_LABEL_PREFIXES: [&str; 2] = ["swim.", "lapse."];

/// A change of observed state at a time (an audit event of action `transition`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transition {
    pub at: Millis,
    pub to: ObservedState,
}

/// Time spent running and stopped within `[from, to)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Accrued {
    pub running_ms: i64,
    pub stopped_ms: i64,
}

impl Accrued {
    pub fn running_hours(&self) -> f64 {
        self.running_ms as f64 / HOUR_MS
    }

    pub fn stopped_hours(&self) -> f64 {
        self.stopped_ms as f64 / HOUR_MS
    }
}

/// Who pays for an environment from a time on: its tenant then (`""` for the operator, who
/// pays for pool members until they are claimed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub from: Millis,
    pub tenant: String,
}

/// [`accrue`] of only the spans within `[from, to)` when `tenant` owned the environment.
pub fn accrue_owned(transitions: &[Transition], owners: &[Owner], tenant: &str, from: Millis, to: Millis) -> Accrued {
    let mut out = Accrued::default();
    for (i, o) in owners.iter().enumerate() {
        if o.tenant != tenant {
            continue;
        }
        let until = owners.get(i + 1).map_or(to, |n| n.from);
        let (start, end) = (from.max(o.from), to.min(until));
        if start < end {
            let part = accrue(transitions, start, end);
            out.running_ms += part.running_ms;
            out.stopped_ms += part.stopped_ms;
        }
    }
    out
}

/// Sums the time between each transition and the next (the last one lasts until `to`) spent
/// `running` or `stopped`, clipped to `[from, to)`. Transitions must be in time order.
pub fn accrue(transitions: &[Transition], from: Millis, to: Millis) -> Accrued {
    let mut out = Accrued::default();
    for (i, t) in transitions.iter().enumerate() {
        let end = transitions.get(i + 1).map_or(to, |n| n.at);
        let span = (end.min(to) - t.at.max(from)).max(0);
        match t.to {
            ObservedState::Running => out.running_ms += span,
            ObservedState::Stopped => out.stopped_ms += span,
            _ => {}
        }
    }
    out
}

impl Prices {
    /// What one hour of an environment costs.
    pub fn hourly(&self, spec: &Spec, labels: &BTreeMap<String, String>) -> f64 {
        let by_provider = self.providers.get(&spec.provider).copied().unwrap_or(0.0);
        if let Some(price) = labels.get(INSTANCE_TYPE_LABEL).and_then(|t| self.instance_types.get(t)) {
            return price + by_provider;
        }
        let r = spec.resources.clone().unwrap_or_default();
        r.vcpu.unwrap_or(0.0) * self.vcpu_hour + r.mem_mb.unwrap_or(0) as f64 / 1024.0 * self.gb_hour + by_provider
    }

    /// What `accrued` time of an environment costs.
    pub fn cost(&self, spec: &Spec, labels: &BTreeMap<String, String>, accrued: &Accrued) -> f64 {
        let hours = accrued.running_hours() + if self.bill_stopped { accrued.stopped_hours() } else { 0.0 };
        hours * self.hourly(spec, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Resources;

    fn t(at: Millis, to: ObservedState) -> Transition {
        Transition { at, to }
    }

    #[test]
    fn accrues_running_and_stopped_time_within_the_period() {
        use ObservedState::*;
        let h = HOUR_MS as i64;
        let trail = [t(0, Provisioning), t(h, Running), t(3 * h, Stopping), t(3 * h, Stopped), t(5 * h, Running)];
        // Still running at 6 h.
        assert_eq!(accrue(&trail, 0, 6 * h), Accrued { running_ms: 3 * h, stopped_ms: 2 * h });
        // Only [2 h, 4 h): one hour running, one stopped.
        assert_eq!(accrue(&trail, 2 * h, 4 * h), Accrued { running_ms: h, stopped_ms: h });
        // Deleted at 5.5 h: nothing after.
        let ended = [t(0, Running), t(h / 2, Deleting), t(h / 2, Deleted)];
        assert_eq!(accrue(&ended, 0, 10 * h).running_ms, h / 2);
        assert_eq!(accrue(&[], 0, h), Accrued::default());
    }

    #[test]
    fn a_claimed_member_accrues_to_its_claimer_from_the_claim() {
        use ObservedState::*;
        let h = HOUR_MS as i64;
        // Warm in a pool from 0 (running at 1 h), claimed by acme at 3 h, deleted at 5 h.
        let trail = [t(0, Provisioning), t(h, Running), t(5 * h, Deleting), t(5 * h, Deleted)];
        let owners = [Owner { from: 0, tenant: String::new() }, Owner { from: 3 * h, tenant: "acme".into() }];
        assert_eq!(accrue_owned(&trail, &owners, "acme", 0, 10 * h).running_ms, 2 * h);
        assert_eq!(accrue_owned(&trail, &owners, "", 0, 10 * h).running_ms, 2 * h, "the pool's wait is the operator's");
        assert_eq!(accrue_owned(&trail, &owners, "acme", 4 * h, 10 * h).running_ms, h);
        assert_eq!(accrue_owned(&trail, &owners, "beta", 0, 10 * h), Accrued::default());
    }

    #[test]
    fn prices_by_instance_type_or_resources() {
        let prices = Prices {
            vcpu_hour: 0.04,
            gb_hour: 0.01,
            instance_types: BTreeMap::from([("DEV1-S".to_owned(), 0.5)]),
            providers: BTreeMap::new(),
            bill_stopped: false,
        };
        let spec = Spec {
            provider: "sim".into(),
            resources: Some(Resources { vcpu: Some(2.0), mem_mb: Some(2048), disk_gb: None }),
            ..Default::default()
        };
        let none = BTreeMap::new();
        assert!((prices.hourly(&spec, &none) - 0.10).abs() < 1e-9);
        let typed = BTreeMap::from([("swim.instance_type".to_owned(), "DEV1-S".to_owned())]);
        assert_eq!(prices.hourly(&spec, &typed), 0.5);
        // A label a tenant could set prices nothing.
        let forged = BTreeMap::from([("instance_type".to_owned(), "DEV1-S".to_owned())]);
        assert!((prices.hourly(&spec, &forged) - 0.10).abs() < 1e-9);
        let by_provider = Prices { providers: BTreeMap::from([("sim".to_owned(), 1.0)]), ..prices.clone() };
        assert!((by_provider.hourly(&spec, &none) - 1.10).abs() < 1e-9);
        let accrued = Accrued { running_ms: 2 * HOUR_MS as i64, stopped_ms: HOUR_MS as i64 };
        assert!((prices.cost(&spec, &none, &accrued) - 0.2).abs() < 1e-9);
        let billed = Prices { bill_stopped: true, ..prices };
        assert!((billed.cost(&spec, &none, &accrued) - 0.3).abs() < 1e-9);
    }
}

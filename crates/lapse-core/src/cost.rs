//! What environments cost: time spent running (and, if configured, stopped), from the
//! transitions in the audit trail, priced per instance type or per vCPU-hour and GB-hour.
//! Pure: the caller reads the transitions.
//!
//! **Cloud prices.** `[prices.NAME]` (any key of `[prices]` that is a table, other than
//! `instance_types` and `providers`) prices provider `NAME`'s environments per hour by instance
//! type: `[prices.aws] "t2.nano" = 0.0058, default = 0.01`. The type is the spec's
//! `cloud.instance_type`, else the provider's default type (the seed's, e.g. `t2.nano` on
//! aws); a type the table lacks costs its `default`; a provider with a table but neither
//! falls back to the per-resource prices. `[prices.providers]` is still added on top.
//! Every price is a finite number, zero or more; anything else (a negative price, `nan`, a
//! key of the wrong shape) is an error naming its key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Millis;
use crate::model::{ObservedState, Spec};

const HOUR_MS: f64 = 3_600_000.0;

/// The config file's `[prices]` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawPrices")]
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
    /// `[prices.NAME]`: provider `NAME`'s hourly prices by instance type.
    #[serde(default)]
    pub clouds: BTreeMap<String, CloudPrices>,
}

/// One provider's hourly prices by instance type (`[prices.NAME]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CloudPrices {
    /// The price of a type not listed (the table's key `default`).
    pub default: Option<f64>,
    pub instance_types: BTreeMap<String, f64>,
}

/// A `[prices]` table that does not hold: the key and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("prices.{key}: {message}")]
pub struct PriceError {
    pub key: String,
    pub message: String,
}

/// `[prices]` as written, before its keys are checked.
#[derive(Deserialize)]
struct RawPrices {
    #[serde(default)]
    vcpu_hour: Option<PriceValue>,
    #[serde(default)]
    gb_hour: Option<PriceValue>,
    #[serde(default)]
    instance_types: BTreeMap<String, PriceValue>,
    #[serde(default)]
    providers: BTreeMap<String, PriceValue>,
    #[serde(default)]
    bill_stopped: bool,
    #[serde(flatten)]
    rest: BTreeMap<String, PriceValue>,
}

/// A value under `[prices]`: a number, or a table of them (any other shape is refused by
/// [`Prices::try_from`], naming the key).
#[derive(Deserialize)]
#[serde(untagged)]
enum PriceValue {
    Number(f64),
    Table(BTreeMap<String, PriceValue>),
    Other(serde::de::IgnoredAny),
}

fn price(key: &str, value: &PriceValue) -> Result<f64, PriceError> {
    let bad = |message: &str| PriceError { key: key.to_owned(), message: message.to_owned() };
    match value {
        PriceValue::Number(n) if n.is_finite() && *n >= 0.0 => Ok(*n),
        PriceValue::Number(_) => Err(bad("a price is a finite number, zero or more")),
        PriceValue::Table(_) | PriceValue::Other(_) => Err(bad("a price is a number")),
    }
}

fn prices_of(prefix: &str, table: &BTreeMap<String, PriceValue>) -> Result<BTreeMap<String, f64>, PriceError> {
    table.iter().map(|(k, v)| Ok((k.clone(), price(&format!("{prefix}.{k}"), v)?))).collect()
}

impl TryFrom<RawPrices> for Prices {
    type Error = PriceError;

    fn try_from(raw: RawPrices) -> Result<Prices, PriceError> {
        let mut clouds = BTreeMap::new();
        for (name, value) in &raw.rest {
            let PriceValue::Table(table) = value else {
                return Err(PriceError {
                    key: name.clone(),
                    message: "unknown key; known: vcpu_hour, gb_hour, instance_types, providers, bill_stopped, \
                              or a table of a provider's prices by instance type"
                        .into(),
                });
            };
            let mut types = prices_of(name, table)?;
            let default = types.remove("default");
            clouds.insert(name.clone(), CloudPrices { default, instance_types: types });
        }
        let optional = |key: &str, v: &Option<PriceValue>| v.as_ref().map_or(Ok(0.0), |v| price(key, v));
        Ok(Prices {
            vcpu_hour: optional("vcpu_hour", &raw.vcpu_hour)?,
            gb_hour: optional("gb_hour", &raw.gb_hour)?,
            instance_types: prices_of("instance_types", &raw.instance_types)?,
            providers: prices_of("providers", &raw.providers)?,
            bill_stopped: raw.bill_stopped,
            clouds,
        })
    }
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
    /// What one hour of an environment costs; `default_type` is its provider's instance type
    /// when the spec names none (the seed's default, e.g. `t2.nano` on aws).
    pub fn hourly(&self, spec: &Spec, labels: &BTreeMap<String, String>, default_type: Option<&str>) -> f64 {
        let by_provider = self.providers.get(&spec.provider).copied().unwrap_or(0.0);
        if let Some(price) = labels.get(INSTANCE_TYPE_LABEL).and_then(|t| self.instance_types.get(t)) {
            return price + by_provider;
        }
        if let Some(cloud) = self.clouds.get(&spec.provider) {
            let kind = spec.cloud.as_ref().and_then(|c| c.instance_type.as_deref()).or(default_type);
            if let Some(price) = kind.and_then(|t| cloud.instance_types.get(t)).or(cloud.default.as_ref()) {
                return price + by_provider;
            }
        }
        let r = spec.resources.clone().unwrap_or_default();
        r.vcpu.unwrap_or(0.0) * self.vcpu_hour + r.mem_mb.unwrap_or(0) as f64 / 1024.0 * self.gb_hour + by_provider
    }

    /// What `accrued` time of an environment costs.
    pub fn cost(
        &self,
        spec: &Spec,
        labels: &BTreeMap<String, String>,
        default_type: Option<&str>,
        accrued: &Accrued,
    ) -> f64 {
        let hours = accrued.running_hours() + if self.bill_stopped { accrued.stopped_hours() } else { 0.0 };
        hours * self.hourly(spec, labels, default_type)
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
            clouds: BTreeMap::new(),
        };
        let spec = Spec {
            provider: "sim".into(),
            resources: Some(Resources { vcpu: Some(2.0), mem_mb: Some(2048), disk_gb: None }),
            ..Default::default()
        };
        let none = BTreeMap::new();
        assert!((prices.hourly(&spec, &none, None) - 0.10).abs() < 1e-9);
        let typed = BTreeMap::from([("swim.instance_type".to_owned(), "DEV1-S".to_owned())]);
        assert_eq!(prices.hourly(&spec, &typed, None), 0.5);
        // A label a tenant could set prices nothing.
        let forged = BTreeMap::from([("instance_type".to_owned(), "DEV1-S".to_owned())]);
        assert!((prices.hourly(&spec, &forged, None) - 0.10).abs() < 1e-9);
        let by_provider = Prices { providers: BTreeMap::from([("sim".to_owned(), 1.0)]), ..prices.clone() };
        assert!((by_provider.hourly(&spec, &none, None) - 1.10).abs() < 1e-9);
        let accrued = Accrued { running_ms: 2 * HOUR_MS as i64, stopped_ms: HOUR_MS as i64 };
        assert!((prices.cost(&spec, &none, None, &accrued) - 0.2).abs() < 1e-9);
        let billed = Prices { bill_stopped: true, ..prices };
        assert!((billed.cost(&spec, &none, None, &accrued) - 0.3).abs() < 1e-9);
    }

    #[test]
    fn cloud_prices_by_instance_type_then_the_default_type_then_the_tables_default() {
        use crate::model::CloudSpec;
        let table = CloudPrices {
            default: Some(0.01),
            instance_types: BTreeMap::from([("t2.nano".to_owned(), 0.0058), ("t2.micro".to_owned(), 0.0116)]),
        };
        let prices =
            Prices { vcpu_hour: 1.0, clouds: BTreeMap::from([("aws".to_owned(), table)]), ..Default::default() };
        let of = |t: Option<&str>| Spec {
            provider: "aws".into(),
            cloud: Some(CloudSpec { instance_type: t.map(str::to_owned), ..Default::default() }),
            ..Default::default()
        };
        let none = BTreeMap::new();
        assert_eq!(prices.hourly(&of(Some("t2.micro")), &none, Some("t2.nano")), 0.0116);
        assert_eq!(prices.hourly(&of(None), &none, Some("t2.nano")), 0.0058, "the provider's default type");
        assert_eq!(prices.hourly(&of(Some("m5.large")), &none, Some("t2.nano")), 0.01, "the table's default");
        let docker = Spec { provider: "docker".into(), ..Default::default() };
        assert_eq!(prices.hourly(&docker, &none, None), 0.0, "no table: per-resource prices");
    }
}

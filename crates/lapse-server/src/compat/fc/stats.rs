//! `GET /stats` in the seed's shape (`lib/pool_manager.ex`, `handle_call(:stats)`):
//!
//! ```json
//! {"summary": {"total_jobs": 1, "total_warm": 1},
//!  "jobs": [{"job_id", "vm_id", "tenant", "status", "spec"}],
//!  "warm_pool": [{"spec_hash", "vm_id", "status", "profile", "for_workloads", "spec"}]}
//! ```
//!
//! - `jobs`: every environment keyed by a `job_id` (from `/vms` or a config file), not
//!   deleted and not an unclaimed pool member. The seed lists only jobs that got a VM; Lapse
//!   lists each from its first moment (`status` `created`), in the seed's vocabulary
//!   ([`super::views::seed_status`]). `spec` is the seed's spec as given.
//! - `warm_pool`: the ready (`warm`) members of every pool, as the seed lists only warm VMs;
//!   members still starting are in `GET /v1/pools`. `total_warm` counts the entries.
//!   `for_workloads` are the jobs a member would serve (same Lapse spec, which is what a claim
//!   matches), sorted; `spec` is the first of those jobs' seed specs (or, with none, Lapse's
//!   spec); `spec_hash` is the seed's hash of that spec ([`super::phash2::spec_hash`]);
//!   `profile` is `"<lifecycle>-<job ids joined by ,>"` or `"<lifecycle>-orphaned"`, with the
//!   spec's `lifecycle` (else the pool's).

use std::collections::BTreeMap;

use lapse_core::model::{DesiredState, Environment, ObservedState};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::phash2::spec_hash;
use super::views::{seed_spec, seed_status};

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Stats {
    pub summary: Summary,
    pub jobs: Vec<JobEntry>,
    pub warm_pool: Vec<WarmEntry>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Summary {
    pub total_jobs: usize,
    pub total_warm: usize,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobEntry {
    pub job_id: String,
    pub vm_id: String,
    pub tenant: String,
    pub status: String,
    #[schema(value_type = Object)]
    pub spec: Value,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WarmEntry {
    /// The seed's hash: uppercase hex of `:erlang.phash2` of the spec.
    pub spec_hash: String,
    pub vm_id: String,
    pub status: String,
    pub profile: String,
    pub for_workloads: Vec<String>,
    #[schema(value_type = Object)]
    pub spec: Value,
}

/// The stats of `environments` (every one not deleted) and `members` (pool members).
pub fn stats(environments: &[Environment], members: &[Environment]) -> Stats {
    let mut jobs: Vec<&Environment> = environments
        .iter()
        .filter(|e| e.job_id.is_some() && e.pool.is_none() && e.desired != DesiredState::Deleted)
        .collect();
    jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    // Jobs by the Lapse spec hash a claim matches.
    let mut by_hash: BTreeMap<String, Vec<&Environment>> = BTreeMap::new();
    for job in &jobs {
        by_hash.entry(job.spec.hash()).or_default().push(job);
    }
    let warm_pool: Vec<WarmEntry> = members
        .iter()
        .filter(|m| m.desired == DesiredState::Running && m.observed == ObservedState::Running)
        .map(|m| {
            let serving = by_hash.get(&m.spec.hash()).map(Vec::as_slice).unwrap_or_default();
            let spec = serving.iter().find(|j| j.seed_spec.is_some()).map_or_else(|| seed_spec(m), |j| seed_spec(j));
            let for_workloads: Vec<String> = serving.iter().filter_map(|j| j.job_id.clone()).collect();
            let lifecycle =
                spec.get("lifecycle").and_then(Value::as_str).map_or_else(|| m.lifecycle.to_string(), str::to_owned);
            let profile = if for_workloads.is_empty() {
                format!("{lifecycle}-orphaned")
            } else {
                format!("{lifecycle}-{}", for_workloads.join(","))
            };
            WarmEntry {
                spec_hash: spec_hash(&spec),
                vm_id: m.id.clone(),
                status: seed_status(m).to_owned(),
                profile,
                for_workloads,
                spec,
            }
        })
        .collect();
    let jobs: Vec<JobEntry> = jobs
        .into_iter()
        .map(|e| JobEntry {
            job_id: e.job_id.clone().unwrap_or_default(),
            vm_id: e.id.clone(),
            tenant: e.tenant.clone(),
            status: seed_status(e).to_owned(),
            spec: seed_spec(e),
        })
        .collect();
    Stats { summary: Summary { total_jobs: jobs.len(), total_warm: warm_pool.len() }, jobs, warm_pool }
}

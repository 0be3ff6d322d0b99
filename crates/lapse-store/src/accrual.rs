//! What usage and cost are computed from: the environments that may have run in a period,
//! each with its transitions and its owners over time (a pool member is the operator's until
//! a tenant claims it).
//!
//! **Bounded by the period.** Only environments alive in `[from, to)` are read, and of their
//! events only those in the period, plus the last transition and the last claim before it
//! (the state and the owner at `from`): a query of one day costs one day's events, whatever
//! the age of the trail.

use std::collections::HashMap;

use lapse_core::Millis;
use lapse_core::cost::{Owner, Transition};
use lapse_core::model::{Environment, ObservedState};
use sqlx::{QueryBuilder, Sqlite};

use crate::{ENV_COLUMNS, Op, SqliteStore, StoreError, environment_from};

/// One environment's accrual inputs.
#[derive(Clone, Debug)]
pub struct Accrual {
    pub env: Environment,
    pub transitions: Vec<Transition>,
    /// Who paid from when, in order; never empty when it has transitions.
    pub owners: Vec<Owner>,
}

impl SqliteStore {
    /// [`crate::Store::accrual`], on SQLite.
    pub async fn accrual(&self, tenant: Option<&str>, from: Millis, to: Millis) -> Result<Vec<Accrual>, StoreError> {
        let selection = |q: &mut QueryBuilder<'_, Sqlite>| {
            q.push("SELECT id FROM environments WHERE created_at < ").push_bind(to);
            q.push(" AND (observed != 'deleted' OR updated_at >= ").push_bind(from).push(")");
            if let Some(t) = tenant {
                q.push(" AND (tenant = ").push_bind(t.to_owned());
                q.push(" OR id IN (SELECT environment_id FROM events WHERE tenant = ").push_bind(t.to_owned());
                q.push(" AND action = 'claim' AND at < ").push_bind(to).push("))");
            }
        };
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {ENV_COLUMNS} FROM environments WHERE id IN ("));
        selection(&mut q);
        q.push(") ORDER BY id");
        let rows = q.build().fetch_all(&self.reader).await.op("accrual")?;
        let envs: Vec<Environment> = rows.iter().map(environment_from).collect::<Result<_, _>>()?;

        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT environment_id, at, action, outcome, tenant FROM events \
             WHERE action IN ('transition', 'claim') AND environment_id IN (",
        );
        selection(&mut q);
        q.push(") AND at < ").push_bind(to);
        q.push(" AND (at >= ").push_bind(from);
        q.push(
            " OR seq IN (SELECT MAX(seq) FROM events WHERE action IN ('transition', 'claim') \
             AND environment_id IN (",
        );
        selection(&mut q);
        q.push(") AND at < ").push_bind(from).push(" GROUP BY environment_id, action)) ORDER BY seq");
        let trail: Vec<TrailRow> = q.build_query_as().fetch_all(&self.reader).await.op("accrual")?;
        Ok(assemble(envs, trail))
    }
}

/// An event of the trail as the accrual reads it: environment, time, action, outcome (the
/// state a transition reached), tenant.
pub(crate) type TrailRow = (Option<String>, Millis, String, String, Option<String>);

/// Each environment with its transitions and owners, from its trail in `seq` order (both
/// backends read the same columns and fold them here).
pub(crate) fn assemble(envs: Vec<Environment>, trail: Vec<TrailRow>) -> Vec<Accrual> {
    let mut by_env: HashMap<String, (Vec<Transition>, Vec<Owner>)> = HashMap::new();
    for (id, at, action, outcome, tenant) in trail {
        let Some(id) = id else { continue };
        let owner = tenant.unwrap_or_default();
        let (transitions, owners) = by_env.entry(id).or_default();
        if owners.last().is_none_or(|o| o.tenant != owner) {
            owners.push(Owner { from: at, tenant: owner });
        }
        if action == "transition"
            && let Ok(state) = outcome.parse::<ObservedState>()
        {
            transitions.push(Transition { at, to: state });
        }
    }
    envs.into_iter()
        .map(|env| {
            let (transitions, owners) = by_env.remove(&env.id).unwrap_or_default();
            Accrual { env, transitions, owners }
        })
        .collect()
}

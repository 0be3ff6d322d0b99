//! Rows of the PostgreSQL store to model types and back.
//!
//! Decoding goes through the same decoder as SQLite's ([`crate::rows`], over [`Cols`]): a
//! column is read the same way whichever backend holds it. PostgreSQL's columns differ from
//! SQLite's in type only where the schema says so (migrations-pg/0001_init.sql): integers
//! are `BIGINT`, SQLite's 0/1 flags are `BOOLEAN`, JSON stays `TEXT`. [`Cols::opt_int`]
//! therefore reads a `BOOLEAN` as 0 or 1, so the shared decoder's `flag` works unchanged.
//!
//! Encoding: [`push_environment`] binds an environment's values in the order of
//! [`crate::ENV_COLUMNS`], with the flag columns as booleans.

use lapse_core::model::Environment;
use sqlx::QueryBuilder;
use sqlx::Row as _;
use sqlx::postgres::{PgRow, Postgres};
use sqlx::query_builder::Separated;

use crate::rows::Cols;
use crate::{ENV_COLUMNS, ListFilter, json};

impl Cols for PgRow {
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, String> {
        self.try_get(column).map_err(|e| e.to_string())
    }

    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, String> {
        match self.try_get::<Option<i64>, _>(column) {
            Ok(v) => Ok(v),
            Err(int_error) => match self.try_get::<Option<bool>, _>(column) {
                Ok(v) => Ok(v.map(i64::from)),
                Err(_) => Err(int_error.to_string()),
            },
        }
    }
}

/// Pushes one environment's values, in the order of [`crate::ENV_COLUMNS`], as one
/// `VALUES` tuple of a [`sqlx::QueryBuilder`]'s `push_values`.
pub(crate) fn push_environment(mut b: Separated<'_, '_, Postgres, &'static str>, e: &Environment) {
    let list = |v: &[i64]| (!v.is_empty()).then(|| json(&v));
    b.push_bind(e.id.clone())
        .push_bind(e.name.clone())
        .push_bind(e.tenant.clone())
        .push_bind(e.owner.clone())
        .push_bind(json(&e.labels))
        .push_bind(json(&e.spec))
        .push_bind(e.spec.provider.clone())
        .push_bind(e.lifecycle.as_str())
        .push_bind(e.desired.as_str())
        .push_bind(e.observed.as_str())
        .push_bind(e.reason.clone())
        .push_bind(e.provider_ref.clone())
        .push_bind(json(&e.endpoints))
        .push_bind(e.expires_at)
        .push_bind(e.on_expiry.as_str())
        .push_bind(e.expired_at)
        .push_bind(e.restart_on_extend)
        .push_bind(i64::from(e.attempts))
        .push_bind(e.next_attempt_at)
        .push_bind(e.created_at)
        .push_bind(e.updated_at)
        .push_bind(e.spec.hash())
        .push_bind(e.pool.clone())
        .push_bind(e.pool_version.clone())
        .push_bind(e.source.clone())
        .push_bind(e.replace)
        .push_bind(i64::from(e.restarts))
        .push_bind(i64::from(e.max_retries))
        .push_bind(e.exit_code)
        .push_bind(e.finished_at)
        .push_bind(e.job_id.clone())
        .push_bind(e.user_data_path.clone())
        .push_bind(e.seed_spec.clone())
        .push_bind(e.idle_timeout)
        .push_bind(e.on_idle.as_str())
        .push_bind(e.last_active_at)
        .push_bind(e.idled_at)
        .push_bind(e.health.map(|h| h.as_str()))
        .push_bind(e.ready_at)
        .push_bind(e.restart_requested)
        .push_bind(list(&e.warn_before))
        .push_bind(list(&e.warned))
        .push_bind(e.warned_at)
        .push_bind(e.placed_on.clone());
}

/// `SELECT` of the environments `filter` selects (as SQLite's `filtered`, without order or
/// limit), to be continued with more conditions.
pub(crate) fn select_filtered(filter: &ListFilter) -> QueryBuilder<'static, Postgres> {
    let mut q = QueryBuilder::new(format!("SELECT {ENV_COLUMNS} FROM environments WHERE true"));
    for (column, value) in [
        ("tenant", &filter.tenant),
        ("owner", &filter.owner),
        ("provider", &filter.provider),
        ("job_id", &filter.job_id),
    ] {
        if let Some(v) = value {
            q.push(format!(" AND {column} = ")).push_bind(v.clone());
        }
    }
    match filter.state {
        Some(state) => q.push(" AND observed = ").push_bind(state.as_str()),
        None => q.push(" AND observed <> 'deleted'"),
    };
    if let Some(after) = &filter.after {
        q.push(" AND id > ").push_bind(after.clone());
    }
    for (k, v) in &filter.labels {
        q.push(" AND labels::jsonb ->> ").push_bind(k.clone()).push(" = ").push_bind(v.clone());
    }
    q
}

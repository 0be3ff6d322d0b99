//! Rows to model types and back, for both connections the store has: the readers' (sqlx) and
//! the writer's (rusqlite). One decoder over [`Cols`], so a column is read the same way
//! whichever connection read it; a value of the wrong type is [`StoreError::Corrupt`], never a
//! panic.

use lapse_core::Millis;
use lapse_core::model::{Environment, Pool};
use rusqlite::types::Value as SqlValue;
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use crate::{StoreError, json};

/// Typed access to a row's columns by name.
pub(crate) trait Cols {
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, String>;
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, String>;
}

impl Cols for SqliteRow {
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, String> {
        self.try_get(column).map_err(|e| e.to_string())
    }
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, String> {
        self.try_get(column).map_err(|e| e.to_string())
    }
}

impl Cols for rusqlite::Row<'_> {
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, String> {
        self.get(column).map_err(|e| e.to_string())
    }
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, String> {
        self.get(column).map_err(|e| e.to_string())
    }
}

/// A row being decoded: every read names the row's id and the column when it fails.
struct Decode<'r, R: Cols> {
    row: &'r R,
    id: String,
}

impl<'r, R: Cols> Decode<'r, R> {
    /// A row whose key (`id`, a pool's `name`) is in `column`: every later error names it.
    fn keyed(row: &'r R, column: &'static str) -> Result<Self, StoreError> {
        let id = row.opt_text(column).ok().flatten().ok_or_else(|| StoreError::Corrupt {
            id: String::new(),
            column,
            message: "unreadable".into(),
        })?;
        Ok(Decode { row, id })
    }

    fn corrupt(&self, column: &'static str, message: String) -> StoreError {
        StoreError::Corrupt { id: self.id.clone(), column, message }
    }
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, StoreError> {
        self.row.opt_text(column).map_err(|m| self.corrupt(column, m))
    }
    fn text(&self, column: &'static str) -> Result<String, StoreError> {
        self.opt_text(column)?.ok_or_else(|| self.corrupt(column, "NULL".into()))
    }
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, StoreError> {
        self.row.opt_int(column).map_err(|m| self.corrupt(column, m))
    }
    fn int(&self, column: &'static str) -> Result<i64, StoreError> {
        self.opt_int(column)?.ok_or_else(|| self.corrupt(column, "NULL".into()))
    }
    fn count(&self, column: &'static str) -> Result<u32, StoreError> {
        Ok(self.int(column)?.try_into().unwrap_or(u32::MAX))
    }
    fn flag(&self, column: &'static str) -> Result<bool, StoreError> {
        Ok(self.int(column)? != 0)
    }
    fn parsed<T: std::str::FromStr>(&self, column: &'static str) -> Result<T, StoreError>
    where
        T::Err: std::fmt::Display,
    {
        let text = self.text(column)?;
        text.parse().map_err(|e: T::Err| self.corrupt(column, e.to_string()))
    }
    fn opt_parsed<T: std::str::FromStr>(&self, column: &'static str) -> Result<Option<T>, StoreError>
    where
        T::Err: std::fmt::Display,
    {
        match self.opt_text(column)? {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|e: T::Err| self.corrupt(column, e.to_string())),
        }
    }
    fn json<T: serde::de::DeserializeOwned>(&self, column: &'static str) -> Result<T, StoreError> {
        let text = self.text(column)?;
        serde_json::from_str(&text).map_err(|e| self.corrupt(column, e.to_string()))
    }
    fn opt_json<T: serde::de::DeserializeOwned>(&self, column: &'static str) -> Result<Option<T>, StoreError> {
        match self.opt_text(column)? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| self.corrupt(column, e.to_string())),
        }
    }
    /// A JSON array column that is `NULL` when empty.
    fn json_list(&self, column: &'static str) -> Result<Vec<Millis>, StoreError> {
        Ok(self.opt_json(column)?.unwrap_or_default())
    }
}

pub(crate) fn environment_from<R: Cols>(row: &R) -> Result<Environment, StoreError> {
    let d = Decode::keyed(row, "id")?;
    Ok(Environment {
        name: d.opt_text("name")?,
        tenant: d.text("tenant")?,
        owner: d.text("owner")?,
        labels: d.json("labels")?,
        spec: d.json("spec")?,
        lifecycle: d.parsed("lifecycle")?,
        desired: d.parsed("desired")?,
        observed: d.parsed("observed")?,
        reason: d.opt_text("reason")?,
        provider_ref: d.opt_text("provider_ref")?,
        endpoints: d.json("endpoints")?,
        expires_at: d.opt_int("expires_at")?,
        on_expiry: d.parsed("on_expiry")?,
        expired_at: d.opt_int("expired_at")?,
        restart_on_extend: d.flag("restart_on_extend")?,
        attempts: d.count("attempts")?,
        next_attempt_at: d.opt_int("next_attempt_at")?,
        created_at: d.int("created_at")?,
        updated_at: d.int("updated_at")?,
        pool: d.opt_text("pool")?,
        pool_version: d.opt_text("pool_version")?,
        source: d.text("source")?,
        replace: d.flag("replace_resource")?,
        restarts: d.count("restarts")?,
        max_retries: d.count("max_retries")?,
        exit_code: d.opt_int("exit_code")?,
        finished_at: d.opt_int("finished_at")?,
        job_id: d.opt_text("job_id")?,
        user_data_path: d.opt_text("user_data_path")?,
        seed_spec: d.opt_text("seed_spec")?,
        idle_timeout: d.opt_int("idle_timeout")?,
        on_idle: d.parsed("on_idle")?,
        last_active_at: d.opt_int("last_active_at")?,
        idled_at: d.opt_int("idled_at")?,
        health: d.opt_parsed("health")?,
        ready_at: d.opt_int("ready_at")?,
        restart_requested: d.flag("restart_requested")?,
        warn_before: d.json_list("warn_before")?,
        warned: d.json_list("warned")?,
        warned_at: d.opt_int("warned_at")?,
        placed_on: d.opt_text("placed_on")?,
        id: d.id.clone(),
    })
}

pub(crate) fn pool_from<R: Cols>(row: &R) -> Result<Pool, StoreError> {
    let d = Decode::keyed(row, "name")?;
    Ok(Pool {
        spec: d.json("spec")?,
        min: d.int("min")?.try_into().unwrap_or(0),
        max: d.int("max")?.try_into().unwrap_or(0),
        version: d.text("version")?,
        lifecycle: d.parsed("lifecycle")?,
        source: d.text("source")?,
        on_claim: d.opt_json("on_claim")?,
        created_at: d.int("created_at")?,
        updated_at: d.int("updated_at")?,
        name: d.id.clone(),
    })
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_owned())
}

fn opt_text(s: Option<&str>) -> SqlValue {
    s.map_or(SqlValue::Null, text)
}

fn opt_int(v: Option<i64>) -> SqlValue {
    v.map_or(SqlValue::Null, SqlValue::Integer)
}

/// An environment's values, in the order of [`crate::ENV_COLUMNS`].
pub(crate) type Values = [SqlValue; 44];

/// An environment's values, in the order of [`crate::ENV_COLUMNS`].
pub(crate) fn environment_values(e: &Environment) -> Values {
    [
        text(&e.id),
        opt_text(e.name.as_deref()),
        text(&e.tenant),
        text(&e.owner),
        SqlValue::Text(json(&e.labels)),
        SqlValue::Text(json(&e.spec)),
        text(&e.spec.provider),
        text(e.lifecycle.as_str()),
        text(e.desired.as_str()),
        text(e.observed.as_str()),
        opt_text(e.reason.as_deref()),
        opt_text(e.provider_ref.as_deref()),
        SqlValue::Text(json(&e.endpoints)),
        opt_int(e.expires_at),
        text(e.on_expiry.as_str()),
        opt_int(e.expired_at),
        SqlValue::Integer(e.restart_on_extend.into()),
        SqlValue::Integer(e.attempts.into()),
        opt_int(e.next_attempt_at),
        SqlValue::Integer(e.created_at),
        SqlValue::Integer(e.updated_at),
        SqlValue::Text(e.spec.hash()),
        opt_text(e.pool.as_deref()),
        opt_text(e.pool_version.as_deref()),
        text(&e.source),
        SqlValue::Integer(e.replace.into()),
        SqlValue::Integer(e.restarts.into()),
        SqlValue::Integer(e.max_retries.into()),
        opt_int(e.exit_code),
        opt_int(e.finished_at),
        opt_text(e.job_id.as_deref()),
        opt_text(e.user_data_path.as_deref()),
        opt_text(e.seed_spec.as_deref()),
        opt_int(e.idle_timeout),
        text(e.on_idle.as_str()),
        opt_int(e.last_active_at),
        opt_int(e.idled_at),
        opt_text(e.health.map(|h| h.as_str())),
        opt_int(e.ready_at),
        SqlValue::Integer(e.restart_requested.into()),
        (!e.warn_before.is_empty()).then(|| json(&e.warn_before)).map_or(SqlValue::Null, SqlValue::Text),
        (!e.warned.is_empty()).then(|| json(&e.warned)).map_or(SqlValue::Null, SqlValue::Text),
        opt_int(e.warned_at),
        opt_text(e.placed_on.as_deref()),
    ]
}

//! `lapse migrate`: a SQLite store copied into an empty PostgreSQL database, then verified.
//!
//! Contract of [`sqlite_to_postgres`]:
//! - **The source** is an existing SQLite store file (never created). It is brought to this
//!   binary's schema first (as `lapse serve` would), then read inside one `BEGIN IMMEDIATE`
//!   transaction: nothing writes it while it is copied, so the copy is one consistent
//!   snapshot. Stop the server first: one that writes at the start is
//!   [`CopyError::SourceBusy`]; one that tries to write later waits for the copy, then fails.
//! - **The destination** is migrated by [`PgStore::connect`]'s rules, held with
//!   [`super::SERVER_LOCK`] for the whole copy (a database a server is using is refused, and no
//!   server can start on it meanwhile), and must be empty: every table without a row
//!   ([`CopyError::NotEmpty`]).
//! - **Every table of the schema**, [`TABLES`], in an order its foreign keys allow, every
//!   column typed as PostgreSQL's schema types it (`BIGINT`, `TEXT`, `BOOLEAN` from SQLite's
//!   0/1). The two stores must have the same tables and the same columns
//!   ([`CopyError::Schema`]): a table or column added to one migration directory and not the
//!   other is a refusal, never a silent loss. A value of the wrong type, or text PostgreSQL
//!   cannot hold (a NUL byte), is [`CopyError::Row`], naming the table, row and column.
//! - **One PostgreSQL transaction.** Rows go in batches of [`BATCH`]; the identities
//!   (`events.seq`, `webhook_deliveries.ord`) are moved past the copied numbers, so new rows
//!   follow them. Before the commit every table is read back and compared with what was read
//!   from the source, by row count and an order-independent digest (the sum of each row's
//!   SHA-256); any difference rolls everything back ([`CopyError::Mismatch`]). An error, a
//!   crash or a `kill -9` at any point leaves the destination as it was: empty.
//! - **Bounded memory**: rows stream from both sides, one batch held at a time.
//! - `meta` is copied too, so the controller's id (the label on every provider resource the
//!   store's environments hold) stays the same, and the sweep on PostgreSQL knows them.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use sha2::{Digest as _, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection as _, Postgres, QueryBuilder, Row as _};

use super::{PgError, PgStore};

/// The tables copied, parents before the rows that refer to them.
pub const TABLES: &[&str] = &[
    "meta",
    "tenants",
    "api_keys",
    "pools",
    "environments",
    "events",
    "queue_receipts",
    "queue_counters",
    "queue_idempotency",
    "workspace_sync",
    "webhooks",
    "webhook_deliveries",
];

/// Identity columns, moved past the copied numbers after the copy.
const IDENTITIES: &[(&str, &str)] = &[("events", "seq"), ("webhook_deliveries", "ord")];

/// Rows per `INSERT` (50 columns × 500 rows stays far below PostgreSQL's 65,535 binds).
pub const BATCH: usize = 500;

/// How long the source may be busy before the copy gives up on it.
const SOURCE_BUSY: Duration = Duration::from_secs(2);

/// One table, copied and verified.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableCopied {
    pub table: String,
    pub rows: u64,
    /// The digest both sides agreed on (hex).
    pub digest: String,
}

/// What [`sqlite_to_postgres`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CopyReport {
    pub tables: Vec<TableCopied>,
    /// The controller id the copy carries (`meta.controller_id`), if the source had one.
    pub controller_id: Option<String>,
    pub took_ms: u64,
}

/// Progress of one table: `copied` of `total` rows.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub table: &'a str,
    pub copied: u64,
    pub total: u64,
}

/// Why a copy was refused or failed; the destination holds nothing of it.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Destination(#[from] PgError),
    #[error("the SQLite store {0} does not exist")]
    NoSource(String),
    #[error("the SQLite store is being written (is a lapse serve running on it? stop it first): {0}")]
    SourceBusy(String),
    #[error("the SQLite store, {op}: {source}")]
    Source {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the PostgreSQL database is not empty: {table} holds {rows} row(s); lapse migrate copies into an empty \
         database only"
    )]
    NotEmpty { table: String, rows: i64 },
    #[error("the two stores' schemas differ: {0}")]
    Schema(String),
    #[error("{table}, row {row} (in the order read), column {column}: {detail}")]
    Row { table: String, row: u64, column: String, detail: String },
    #[error(
        "the copy of {table} differs from its source ({source_rows} row(s), digest {source_digest}; the copy: \
         {copied_rows}, {copied_digest}); nothing was kept"
    )]
    Mismatch { table: String, source_rows: u64, source_digest: String, copied_rows: u64, copied_digest: String },
    #[error("PostgreSQL, {op}: {source}")]
    Sql {
        op: String,
        #[source]
        source: sqlx::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Text,
    Bool,
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Val {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(Option<bool>),
}

/// Rows folded into a count and an order-independent digest.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    rows: u64,
    sum: u128,
}

impl Tally {
    fn add(&mut self, row: &[Val]) {
        let mut h = Sha256::new();
        for v in row {
            match v {
                Val::Int(x) => {
                    h.update([b'i', x.is_some() as u8]);
                    h.update(x.unwrap_or(0).to_le_bytes());
                }
                Val::Bool(x) => h.update([b'b', x.is_some() as u8, x.unwrap_or(false) as u8]),
                Val::Text(x) => {
                    let s = x.as_deref().unwrap_or("");
                    h.update([b't', x.is_some() as u8]);
                    h.update((s.len() as u64).to_le_bytes());
                    h.update(s.as_bytes());
                }
            }
        }
        let first: [u8; 16] = h.finalize()[..16].try_into().expect("a SHA-256 has 32 bytes");
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(first));
        self.rows += 1;
    }

    fn digest(&self) -> String {
        format!("{:032x}", self.sum)
    }
}

fn sql(op: impl Into<String>) -> impl FnOnce(sqlx::Error) -> CopyError {
    let op = op.into();
    move |source| CopyError::Sql { op, source }
}

/// Copies the SQLite store at `source` into the empty PostgreSQL database at `url` (see the
/// module docs); `progress` hears of every batch.
pub async fn sqlite_to_postgres(
    source: &Path,
    url: &str,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<CopyReport, CopyError> {
    let started = Instant::now();
    if !source.is_file() {
        return Err(CopyError::NoSource(source.display().to_string()));
    }
    let mut src = open_source(source).await?;
    let dst = PgStore::connect(url).await?;
    let _held = dst.hold_sole_server().await?;
    let columns = schema(&mut src, &dst).await?;

    if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut src).await {
        return Err(busy_or(e, "begin"));
    }
    let mut tx = dst.pool.begin().await.map_err(sql("begin"))?;
    for table in TABLES {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut *tx)
            .await
            .map_err(sql(format!("count {table}")))?;
        if rows > 0 {
            return Err(CopyError::NotEmpty { table: (*table).to_owned(), rows });
        }
    }
    let mut tables = Vec::with_capacity(TABLES.len());
    for (table, cols) in TABLES.iter().zip(&columns) {
        let read = copy_table(&mut src, &mut tx, table, cols, progress).await?;
        let written = tally_pg(&mut tx, table, cols).await?;
        if read != written {
            return Err(CopyError::Mismatch {
                table: (*table).to_owned(),
                source_rows: read.rows,
                source_digest: read.digest(),
                copied_rows: written.rows,
                copied_digest: written.digest(),
            });
        }
        tables.push(TableCopied { table: (*table).to_owned(), rows: read.rows, digest: read.digest() });
    }
    for (table, column) in IDENTITIES {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), \
             COALESCE((SELECT MAX({column}) FROM {table}), 1), EXISTS (SELECT 1 FROM {table}))"
        ))
        .execute(&mut *tx)
        .await
        .map_err(sql(format!("move {table}.{column} past the copy")))?;
    }
    let controller_id: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'controller_id'")
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql("read the controller id"))?;
    tx.commit().await.map_err(sql("commit"))?;
    let _ = sqlx::query("ROLLBACK").execute(&mut src).await;
    let _ = src.close().await;
    Ok(CopyReport { tables, controller_id, took_ms: started.elapsed().as_millis() as u64 })
}

async fn open_source(path: &Path) -> Result<SqliteConnection, CopyError> {
    let options = SqliteConnectOptions::new().filename(path).create_if_missing(false).busy_timeout(SOURCE_BUSY);
    let mut conn =
        SqliteConnection::connect_with(&options).await.map_err(|source| CopyError::Source { op: "open", source })?;
    // Brought to this binary's schema, as `lapse serve` would on start.
    if let Err(e) = sqlx::migrate!("./migrations").run(&mut conn).await {
        return Err(match e {
            sqlx::migrate::MigrateError::Execute(e) => busy_or(e, "migrate"),
            other => CopyError::Schema(format!("the SQLite store's migrations: {other}")),
        });
    }
    Ok(conn)
}

fn busy_or(e: sqlx::Error, op: &'static str) -> CopyError {
    // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with any extended code on top.
    let code = e.as_database_error().and_then(|d| d.code()).and_then(|c| c.parse::<i32>().ok());
    let busy = code.is_some_and(|c| matches!(c & 0xff, 5 | 6));
    if busy { CopyError::SourceBusy(e.to_string()) } else { CopyError::Source { op, source: e } }
}

/// Each table's columns as PostgreSQL types them, after checking both stores hold exactly
/// [`TABLES`] with the same columns.
async fn schema(src: &mut SqliteConnection, dst: &PgStore) -> Result<Vec<Vec<Column>>, CopyError> {
    let wanted: BTreeSet<&str> = TABLES.iter().copied().collect();
    let pg_tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() \
         AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&dst.pool)
    .await
    .map_err(sql("list tables"))?;
    let sqlite_tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut *src)
    .await
    .map_err(|source| CopyError::Source { op: "list tables", source })?;
    for (side, have) in [("PostgreSQL", &pg_tables), ("SQLite", &sqlite_tables)] {
        let have: BTreeSet<&str> = have.iter().map(String::as_str).collect();
        if have != wanted {
            return Err(CopyError::Schema(format!(
                "{side} has tables {:?}, lapse migrate copies {:?}",
                have.iter().collect::<Vec<_>>(),
                wanted.iter().collect::<Vec<_>>()
            )));
        }
    }
    let mut out = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let pg: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&dst.pool)
        .await
        .map_err(sql(format!("columns of {table}")))?;
        let lite: BTreeSet<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
            .bind(table)
            .fetch_all(&mut *src)
            .await
            .map_err(|source| CopyError::Source { op: "list columns", source })?
            .into_iter()
            .collect();
        let names: BTreeSet<String> = pg.iter().map(|(n, _)| n.clone()).collect();
        if names != lite {
            return Err(CopyError::Schema(format!(
                "{table}: PostgreSQL's columns {:?}, SQLite's {:?}",
                names.iter().collect::<Vec<_>>(),
                lite.iter().collect::<Vec<_>>()
            )));
        }
        let mut cols = Vec::with_capacity(pg.len());
        for (name, ty) in pg {
            let kind = match ty.as_str() {
                "bigint" => Kind::Int,
                "text" => Kind::Text,
                "boolean" => Kind::Bool,
                other => {
                    return Err(CopyError::Schema(format!("{table}.{name} is {other}, which the copy does not know")));
                }
            };
            cols.push(Column { name, kind });
        }
        out.push(cols);
    }
    Ok(out)
}

fn column_list(cols: &[Column]) -> String {
    cols.iter().map(|c| format!("\"{}\"", c.name)).collect::<Vec<_>>().join(", ")
}

/// Streams one table from SQLite into the transaction; returns the tally of what was read.
async fn copy_table(
    src: &mut SqliteConnection,
    tx: &mut sqlx::Transaction<'_, Postgres>,
    table: &str,
    cols: &[Column],
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<Tally, CopyError> {
    let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&mut *src)
        .await
        .map_err(|source| CopyError::Source { op: "count rows", source })?;
    let total = total.max(0) as u64;
    progress(Progress { table, copied: 0, total });
    let list = column_list(cols);
    let select = format!("SELECT {list} FROM {table}");
    let mut rows = sqlx::query(&select).fetch(&mut *src);
    let mut tally = Tally::default();
    let mut batch: Vec<Vec<Val>> = Vec::with_capacity(BATCH);
    loop {
        let next = rows.try_next().await.map_err(|source| CopyError::Source { op: "read rows", source })?;
        if let Some(row) = &next {
            let mut vals = Vec::with_capacity(cols.len());
            for (i, c) in cols.iter().enumerate() {
                let bad = |e: sqlx::Error| CopyError::Row {
                    table: table.to_owned(),
                    row: tally.rows + 1,
                    column: c.name.clone(),
                    detail: e.to_string(),
                };
                vals.push(match c.kind {
                    Kind::Int => Val::Int(row.try_get(i).map_err(bad)?),
                    Kind::Text => Val::Text(row.try_get(i).map_err(bad)?),
                    Kind::Bool => Val::Bool(row.try_get::<Option<i64>, _>(i).map_err(bad)?.map(|b| b != 0)),
                });
            }
            tally.add(&vals);
            batch.push(vals);
        }
        if batch.len() == BATCH || (next.is_none() && !batch.is_empty()) {
            let first = tally.rows - batch.len() as u64 + 1;
            insert(tx, table, &list, std::mem::take(&mut batch), first).await?;
            progress(Progress { table, copied: tally.rows, total });
        }
        if next.is_none() {
            return Ok(tally);
        }
    }
}

async fn insert(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    table: &str,
    list: &str,
    batch: Vec<Vec<Val>>,
    first: u64,
) -> Result<(), CopyError> {
    let mut q: QueryBuilder<'_, Postgres> = QueryBuilder::new(format!("INSERT INTO {table} ({list}) "));
    q.push_values(batch, |mut b, row| {
        for v in row {
            match v {
                Val::Int(x) => b.push_bind(x),
                Val::Text(x) => b.push_bind(x),
                Val::Bool(x) => b.push_bind(x),
            };
        }
    });
    q.build().execute(&mut **tx).await.map_err(|e| CopyError::Row {
        table: table.to_owned(),
        row: first,
        column: "(the batch from this row)".to_owned(),
        detail: e.to_string(),
    })?;
    Ok(())
}

/// The tally of a table as the transaction now holds it.
async fn tally_pg(tx: &mut sqlx::Transaction<'_, Postgres>, table: &str, cols: &[Column]) -> Result<Tally, CopyError> {
    let select = format!("SELECT {} FROM {table}", column_list(cols));
    let mut rows = sqlx::query(&select).fetch(&mut **tx);
    let mut tally = Tally::default();
    while let Some(row) = rows.try_next().await.map_err(sql(format!("read back {table}")))? {
        let mut vals = Vec::with_capacity(cols.len());
        for (i, c) in cols.iter().enumerate() {
            let read = sql(format!("read back {table}.{}", c.name));
            vals.push(match c.kind {
                Kind::Int => Val::Int(row.try_get(i).map_err(read)?),
                Kind::Text => Val::Text(row.try_get(i).map_err(read)?),
                Kind::Bool => Val::Bool(row.try_get(i).map_err(read)?),
            });
        }
        tally.add(&vals);
    }
    Ok(tally)
}

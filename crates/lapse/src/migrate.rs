//! `lapse migrate`: a SQLite store copied into an empty PostgreSQL database, and the copy
//! verified ([`lapse_store::pg::copy`] holds the contract). Progress goes to stderr, one line
//! per table and at most one a second within a large one; the report goes to stdout (`--json`
//! for scripts). Exit codes: 0 copied and verified; 2 refused before anything was written
//! (no source, a server still on either side, a destination that is not empty or not
//! reachable, schemas that differ); 1 a copy that failed or did not verify (rolled back).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lapse_store::pg::copy::{self, CopyError, Progress};

use crate::database::Database;

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The SQLite store to copy: a path or sqlite:PATH (default: DATA_DIR/lapse.db). Stop the
    /// server that uses it first.
    #[arg(long)]
    from: Option<String>,
    /// The data directory whose lapse.db is copied when --from is not given.
    #[arg(long, env = "LAPSE_DATA_DIR", default_value = "./.lapse")]
    data_dir: PathBuf,
    /// The PostgreSQL database to copy into, empty (a new one is migrated first):
    /// postgres://USER:PASSWORD@HOST:PORT/DATABASE. Then serve with --database and this URL.
    #[arg(long, env = "LAPSE_MIGRATE_TO")]
    to: String,
}

pub async fn run(args: MigrateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let source = match args.from.as_deref().map(Database::parse).transpose() {
        Ok(None) => args.data_dir.join("lapse.db"),
        Ok(Some(Database::Sqlite(path))) => path,
        Ok(Some(Database::Postgres(_))) => {
            eprintln!("error: --from must be a SQLite store (a path or sqlite:PATH); the copy goes to --to");
            return Ok(ExitCode::from(2));
        }
        Err(e) => {
            eprintln!("error: --from: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if !matches!(Database::parse(&args.to), Ok(Database::Postgres(_))) {
        eprintln!("error: --to must be a PostgreSQL URL: postgres://USER:PASSWORD@HOST:PORT/DATABASE");
        return Ok(ExitCode::from(2));
    }
    eprintln!("copying {} into PostgreSQL", source.display());
    let mut last = Instant::now();
    let mut report = |p: Progress<'_>| {
        if p.copied == p.total || last.elapsed() >= Duration::from_secs(1) {
            eprintln!("  {:<20} {:>10} / {} rows", p.table, p.copied, p.total);
            last = Instant::now();
        }
    };
    match copy::sqlite_to_postgres(&source, &args.to, &mut report).await {
        Ok(done) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                let rows: u64 = done.tables.iter().map(|t| t.rows).sum();
                println!(
                    "copied and verified {rows} rows in {} tables in {:.1} s; controller id {}",
                    done.tables.len(),
                    done.took_ms as f64 / 1000.0,
                    done.controller_id.as_deref().unwrap_or("(none yet)")
                );
                println!("serve it with: lapse serve --database <the same URL>");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            let refused = matches!(
                e,
                CopyError::Destination(_)
                    | CopyError::NoSource(_)
                    | CopyError::SourceBusy(_)
                    | CopyError::NotEmpty { .. }
                    | CopyError::Schema(_)
            );
            Ok(ExitCode::from(if refused { 2 } else { 1 }))
        }
    }
}

//! `lapse serve --database` (`LAPSE_DATABASE`): which store the server keeps its state in.
//!
//! - unset: SQLite at `DATA_DIR/lapse.db`, as before;
//! - `sqlite:PATH`, `sqlite://PATH` or a plain path: SQLite at that file;
//! - `postgres://...` or `postgresql://...`: PostgreSQL. The server connects and migrates
//!   (under the database's migration lock, so replicas never migrate concurrently); any
//!   number of replicas may share the database. An unreachable server, a malformed URL, a
//!   newer schema or a database that `lapse migrate` is filling is refused at once.
//!
//! Every refusal, [`DatabaseRefused`] or the PostgreSQL store's own
//! ([`lapse_store::pg::PgError`]), is reported by `lapse serve` with exit code 2.

use std::path::PathBuf;

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// The embedded SQLite store at this file.
    Sqlite(PathBuf),
    /// A PostgreSQL server (the URL as given: it may hold a password, never print it).
    Postgres(String),
}

/// Why the server refuses to start with the `--database` it was given (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum DatabaseRefused {
    #[error("--database is empty")]
    Empty,
    #[error("--database: {scheme:?} is not a database this lapse knows: use sqlite:PATH, a path, or postgres://...")]
    UnknownScheme { scheme: String },
}

impl Database {
    /// Reads a `--database` value (see the module docs).
    pub fn parse(text: &str) -> Result<Database, DatabaseRefused> {
        if text.trim().is_empty() {
            return Err(DatabaseRefused::Empty);
        }
        if let Some(rest) = text.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(DatabaseRefused::Empty);
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        match text.split_once("://") {
            Some(("postgres" | "postgresql", _)) => Ok(Database::Postgres(text.to_owned())),
            // The scheme only: what follows may be a password.
            Some((scheme, _)) => Err(DatabaseRefused::UnknownScheme { scheme: scheme.chars().take(32).collect() }),
            None => Ok(Database::Sqlite(PathBuf::from(text))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_name_their_store() {
        let sqlite = |p: &str| Ok::<_, String>(Database::Sqlite(PathBuf::from(p)));
        let parse = |t: &str| Database::parse(t).map_err(|e| e.to_string());
        assert_eq!(parse("sqlite:/var/lib/lapse/x.db"), sqlite("/var/lib/lapse/x.db"));
        assert_eq!(parse("sqlite:///var/lib/lapse/x.db"), sqlite("/var/lib/lapse/x.db"));
        assert_eq!(parse("sqlite:rel.db"), sqlite("rel.db"));
        assert_eq!(parse("./a:b.db"), sqlite("./a:b.db"));
        assert_eq!(parse("/srv/lapse.db"), sqlite("/srv/lapse.db"));
        assert_eq!(parse("postgres://u:p@h/d"), Ok(Database::Postgres("postgres://u:p@h/d".into())));
        assert_eq!(parse("postgresql://h/d"), Ok(Database::Postgres("postgresql://h/d".into())));
        for bad in ["", "  ", "sqlite:", "sqlite://"] {
            assert_eq!(parse(bad), Err("--database is empty".into()), "{bad:?}");
        }
        let err = parse("mysql://root:hunter2@db/x").unwrap_err();
        assert!(err.contains("\"mysql\"") && err.contains("postgres://") && !err.contains("hunter2"), "{err}");
    }
}

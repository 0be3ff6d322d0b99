//! Handling one reading of the file: check it, guard it, apply it, and record the outcome for
//! `GET /v1/status` and the log.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::Path;

use lapse_core::wire::ConfigStatus;

use super::guard::{self, Refusal};
use super::parse::ConfigError;
use super::{FileOptions, MAX_FILE_BYTES, parse_file, watch};
use crate::app::App;

/// Reads and applies the file at start, once it is stable, and records the outcome.
///
/// `Err` (with every error) only when the server must not start: the file cannot be read, does
/// not parse or validate, or could not be written to the store. A file refused as empty, as a
/// mass removal, or because it kept changing is `Ok`: the store's state stays in force, and
/// `GET /v1/status` and the log say why.
pub async fn reload(app: &App, path: &Path) -> Result<(), Vec<ConfigError>> {
    let reading = watch::read_stable(path, app.cx.config.config_poll).await;
    match handle(app, path, reading).await {
        Err(refusal) if refusal.stops_start() => Err(refusal.errors()),
        Err(refusal) => {
            tracing::warn!(
                path = %path.display(),
                reason = %refusal,
                "starting with the state the store holds; the config file is applied once it is acceptable"
            );
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// Checks and applies one reading of the file and records the outcome.
pub(crate) async fn handle(app: &App, path: &Path, reading: Result<String, Refusal>) -> Result<(), Refusal> {
    let outcome = match reading {
        Ok(text) => check_and_apply(app, path, &text).await,
        Err(refusal) => Err(refusal),
    };
    record(app, path, &outcome);
    outcome
}

async fn check_and_apply(app: &App, path: &Path, text: &str) -> Result<(), Refusal> {
    let config = &app.cx.config;
    let allowed = config.config_allow_removal;
    if guard::is_empty(text) && !allowed {
        return Err(Refusal::Empty);
    }
    let options = FileOptions {
        max_ttl: config.max_ttl,
        vms_provider: config.vms_provider.clone(),
        delete_removed: config.config_delete_removed,
    };
    let declared = parse_file(path, text, &options).map_err(Refusal::Invalid)?;
    if !super::is_exs(path) && declared.providers != config.provider_tables {
        tracing::warn!(
            file = %path.display(),
            "the config file's [providers] tables changed: they are read at start only; restart to apply them"
        );
    }
    let held = held(app).await.map_err(|e| Refusal::Apply(e.to_string()))?;
    // A file that keeps what leaves it removes nothing.
    guard::check_removal(&held, &declared, allowed || declared.allow_mass_removal || declared.keep_removed)?;
    app.apply_declared(&declared).await.map_err(|e| Refusal::Apply(e.to_string()))
}

/// The environments and pools the config holds now (those a file declared, not deleted).
async fn held(app: &App) -> Result<BTreeSet<String>, lapse_store::StoreError> {
    let mut held: BTreeSet<String> = app
        .cx
        .store
        .config_declared()
        .await?
        .iter()
        .map(|e| guard::environment(e.job_id.as_deref().unwrap_or(&e.id)))
        .collect();
    held.extend(app.cx.store.list_pools().await?.iter().filter(|p| p.source == "config").map(|p| guard::pool(&p.name)));
    Ok(held)
}

fn record(app: &App, path: &Path, outcome: &Result<(), Refusal>) {
    let mut status = app.cx.config_status.lock().unwrap_or_else(|p| p.into_inner());
    let previous = status.take().unwrap_or_default();
    *status = Some(match outcome {
        Ok(()) => {
            tracing::info!(path = %path.display(), "config applied");
            ConfigStatus {
                path: path.display().to_string(),
                applied_at: Some(lapse_core::format_millis(app.cx.clock.now())),
                error: None,
            }
        }
        Err(refusal) => {
            tracing::error!(path = %path.display(), reason = %refusal, "config refused; the last good state stays in force");
            ConfigStatus {
                path: path.display().to_string(),
                applied_at: previous.applied_at,
                error: Some(refusal.to_string()),
            }
        }
    });
}

/// The file's text: at most [`MAX_FILE_BYTES`], UTF-8.
pub(crate) fn read_text(path: &Path) -> Result<String, Refusal> {
    let unreadable = |e: std::io::Error| Refusal::Unreadable(format!("{}: {e}", path.display()));
    // A FIFO or device at the path would block the reading (or never end): regular files only.
    if !std::fs::metadata(path).map_err(unreadable)?.is_file() {
        return Err(Refusal::Unreadable(format!("{} is not a regular file", path.display())));
    }
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Refusal::Unreadable(format!("{} is larger than {MAX_FILE_BYTES} bytes", path.display())));
    }
    String::from_utf8(bytes).map_err(|e| Refusal::Unreadable(format!("{} is not UTF-8 text: {e}", path.display())))
}

//! Small files of the data dir made once and kept (the proxy's secret, the replica id).
//!
//! Contract: [`write_new`] leaves either no file or the whole file at `path`, never a part:
//! the bytes go to a temporary file beside it (mode `mode`), are synced, and are renamed into
//! place; the directory is synced so the rename survives a power loss.

use std::io::Write as _;
use std::path::Path;

/// Writes `bytes` to `dir/name` atomically (see the module docs).
pub fn write_new(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), (&'static str, std::io::Error)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = dir.join(format!("{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(|e| ("creating", e))?;
    file.write_all(bytes).map_err(|e| ("writing", e))?;
    file.sync_all().map_err(|e| ("syncing", e))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(|e| ("renaming into place", e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// This server's replica id on PostgreSQL: `dir/replica-id`, made at the first start (see
/// [`crate::lead`]: the environments its local providers hold stay its own across restarts).
pub fn replica_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("replica-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim_end();
            if !lapse_store::pg::is_replica_id(id) {
                anyhow::bail!(
                    "{} holds {:?}, not a replica id (r- and 12 hex digits); remove it only if no environment \
                     on a local provider was made by this server",
                    path.display(),
                    id.chars().take(40).collect::<String>()
                );
            }
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = lapse_store::pg::new_replica_id();
            write_new(dir, "replica-id", format!("{id}\n").as_bytes(), 0o644)
                .map_err(|(action, e)| anyhow::anyhow!("{action} {}: {e}", path.display()))?;
            tracing::info!(replica = %id, path = %path.display(), "made this server's replica id");
            Ok(id)
        }
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = replica_id(dir.path()).unwrap();
        assert!(lapse_store::pg::is_replica_id(&first), "{first}");
        assert_eq!(replica_id(dir.path()).unwrap(), first, "read back, not made again");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("replica-id")], "no temporary file left");
    }

    #[test]
    fn a_damaged_replica_id_is_a_clear_error_not_a_new_id() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("replica-id"), "r-12").unwrap();
        let e = replica_id(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a replica id") && e.contains("r-12"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.path().join("replica-id")).unwrap(), "r-12", "left as it was");
    }
}

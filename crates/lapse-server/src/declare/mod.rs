//! Declarative desired state: a TOML file of environments and pools, or the seed fc_ex_cp's
//! `desired_vms.exs` ([`exs`], chosen by the `.exs` extension) (`lapse serve --config FILE`,
//! checked by `lapse check FILE`). Both go through the same guards, reload and status.
//!
//! ```toml
//! allow_mass_removal = false  # optional, top level: true lets this file remove most entries
//!
//! [[environment]]          # the seed's {vm_id, tenant, spec}
//! id = "web-api"           # the key: re-applying updates, removing from the file deletes
//! name = "Web API"         # optional: the environment's name
//! tenant = "production"    # default: the id
//! lifecycle = "service"    # service (default) | daemon | job | lease
//! ttl = "2h"               # optional; counted from creation, so re-applying never extends it
//! on_expiry = "stop"       # stop (default) | delete; a job is always deleted at its TTL
//! max_retries = 3          # lifecycle "job" only: retries of a non-zero exit
//! idle_timeout = "30m"     # optional: stop (or delete, on_idle) after this long without activity
//! on_idle = "stop"         # stop (default) | delete
//! spec = { provider = "process", cmd = ["/app/bin/server"], env = { MIX_ENV = "prod" } }
//! warm_pool = { min = 2, max = 5 }   # optional: a pool of this spec named after the id
//!
//! [[pool]]
//! name = "python"
//! min = 3
//! max = 10                 # default: min
//! version = "1"            # changing it recycles older members
//! spec = { provider = "docker", image = "localhost/python:3.12", cmd = ["sleep", "infinity"] }
//!
//! [auth]                   # optional: the bootstrap admin key (read at start only)
//! admin_key = "…"
//!
//! [prices]                 # optional: for usage and cost (read at start only)
//! vcpu_hour = 0.02
//! gb_hour = 0.005
//! bill_stopped = false
//! instance_types = { "DEV1-S" = 0.01 }
//!
//! [tiers.team]             # optional: quota tiers beside (or replacing) free and pro
//! environments = 10
//! vcpu = 16
//! mem_mb = 32768
//!
//! [redis]                  # optional: consume the SWIM queues (read at start only)
//! url = "localhost:6379"
//! prefix = "swim:"
//! provider = "docker"
//! default_image = "localhost/lab:1"
//! ```
//!
//! The file and the API write the same desired state. Applying is idempotent: unchanged
//! entries write nothing; an edit of any declared field (`spec`, `lifecycle`, `labels`, `ttl`,
//! `tenant`, `name`, `on_expiry`, `max_retries`; a pool's `spec`, `min`, `max`, `version`,
//! `lifecycle`) is applied. Entries the file declared before and no longer does are deleted
//! (environments) or removed (pools); what the API made is never touched. A seed `.exs` file
//! keeps what leaves it, as the seed does (so its removal guard has nothing to guard), unless
//! the server runs with `--config-delete-removed`.
//!
//! **A reading of the file is applied whole or not at all, and only when it is safe.** It is
//! refused, with the last good state kept in force and the reason in `GET /v1/status`
//! (`config.error`) and the log, when:
//! - it does not parse or validate (every error with its line; [`parse`] is the pure check);
//! - it is **empty** (nothing but blanks and comments), unless the server runs with
//!   `--config-allow-removal`;
//! - it would **remove most declared entries**: more than half of the environments and pools
//!   the config currently holds, and at least one, unless the file says
//!   `allow_mass_removal = true` at its top or the server runs with `--config-allow-removal`.
//!   (Top-level keys come before every table in TOML, so a file cut short keeps the flag only
//!   if the operator wrote it; remove it again after the intended change.)
//!
//! **A change is read only once the file is stable** ([`watch`]): its device, inode, size and
//! modification time the same at two polls in a row (`--config-poll`, default 1 s), or a new
//! inode at the path (a file renamed into place, as editors and config management do, or a
//! symlink swapped), which is read at once. A reading is used only if the file's size and
//! modification time did not move while it was read. So a file caught half-written is never
//! applied in its half state unless its writer stalls for a whole poll interval; write the new
//! file beside it and rename it over the old one to be safe against that too.
//!
//! **At start** ([`reload`]) the file is read once it is stable (at once if it was last
//! modified a poll interval ago or more). A file that does not parse or validate stops the
//! server from starting: nothing says which state is meant, and its `[auth]` table may hold
//! the admin key. A file refused as empty, as a mass removal, or because it kept changing does
//! not: the server starts with the state the store holds (the last good one), and the status
//! says why. On a first start with an empty file the server starts with nothing declared and
//! `config.error` saying the file is empty; the file is applied once it has content.

pub mod exs;
mod guard;
mod parse;
mod reload;
mod watch;

#[cfg(test)]
mod exs_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use guard::Refusal;
pub use parse::{AuthSection, ConfigError, Declared, EnvDecl, PoolDecl, StartTables, parse, start_tables};
pub use reload::reload;
pub use watch::watch;

/// The largest config file read, in bytes; a larger one is refused.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Whether `path` is a seed `.exs` file (else TOML).
pub fn is_exs(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("exs"))
}

/// How a config file is read beside its text.
#[derive(Clone, Debug)]
pub struct FileOptions {
    /// The longest `ttl` an entry may give (the server's `--max-ttl`).
    pub max_ttl: std::time::Duration,
    /// The provider of a seed spec that names none (the server's `--vms-provider`).
    pub vms_provider: String,
    /// Delete what leaves a seed `.exs` file (`--config-delete-removed`); TOML always does.
    pub delete_removed: bool,
}

/// Parses the file at `path` by its kind: a seed `.exs` file or TOML.
pub fn parse_file(path: &std::path::Path, text: &str, options: &FileOptions) -> Result<Declared, Vec<ConfigError>> {
    if is_exs(path) {
        let mut declared = exs::parse(text, &options.vms_provider)?;
        declared.keep_removed = !options.delete_removed;
        Ok(declared)
    } else {
        parse(text, options.max_ttl)
    }
}

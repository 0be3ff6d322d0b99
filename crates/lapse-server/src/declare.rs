//! Declarative desired state: a TOML file of environments and pools
//! (`lapse serve --config FILE`, checked by `lapse check FILE`).
//!
//! ```toml
//! [[environment]]          # the seed's {vm_id, tenant, spec}
//! id = "web-api"           # the key: re-applying updates, removing from the file deletes
//! tenant = "production"    # default: the id
//! lifecycle = "service"    # service (default) | daemon | job | lease
//! ttl = "2h"               # optional; counted from creation, so re-applying never extends it
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
//! entries write nothing. Entries the file declared before and no longer does are deleted
//! (environments) or removed (pools); what the API made is never touched. A file that does
//! not parse or validate is refused whole, with every error and its line, and the last good
//! state stays in force.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lapse_core::model::{Lifecycle, OnExpiry, Spec};
use lapse_core::validate;
use lapse_core::wire::{ConfigStatus, DurationInput, WarmPool};
use serde::Deserialize;
use toml::Spanned;

use crate::app::App;

/// One error in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based; 0 when the error concerns no line.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 { f.write_str(&self.message) } else { write!(f, "line {}: {}", self.line, self.message) }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default, rename = "environment")]
    environments: Vec<Spanned<EnvDecl>>,
    #[serde(default, rename = "pool")]
    pools: Vec<Spanned<PoolDecl>>,
    /// The SWIM Redis queues (see [`crate::swim`]); read at start only.
    #[serde(default)]
    redis: Option<crate::swim::RedisSection>,
    /// Keys (see [`crate::auth`]); read at start only.
    #[serde(default)]
    auth: Option<AuthSection>,
    /// Prices for usage and cost; read at start only.
    #[serde(default)]
    prices: Option<lapse_core::cost::Prices>,
    /// Quota tiers by name (adding to, or replacing, `free` and `pro`); read at start only.
    #[serde(default)]
    tiers: BTreeMap<String, lapse_core::wire::QuotaInput>,
}

/// The config file's `[auth]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// The bootstrap admin key (at least 16 characters).
    pub admin_key: Option<String>,
}

/// The tables of a config file that are read once, at start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StartTables {
    pub redis: Option<crate::swim::RedisSection>,
    pub auth: Option<AuthSection>,
    pub prices: Option<lapse_core::cost::Prices>,
    pub tiers: BTreeMap<String, lapse_core::wire::QuotaInput>,
}

fn service() -> Lifecycle {
    Lifecycle::Service
}

/// A declared environment.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnvDecl {
    pub id: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default = "service")]
    pub lifecycle: Lifecycle,
    #[serde(default)]
    pub ttl: Option<DurationInput>,
    #[serde(default)]
    pub on_expiry: OnExpiry,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub spec: Spec,
    #[serde(default)]
    pub warm_pool: Option<WarmPool>,
}

/// A declared pool.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolDecl {
    pub name: String,
    pub spec: Spec,
    pub min: u32,
    #[serde(default)]
    pub max: Option<u32>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub lifecycle: Lifecycle,
}

/// A file that parsed and validated: what it declares, with TTLs resolved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Declared {
    pub environments: Vec<(EnvDecl, Option<Duration>)>,
    pub pools: Vec<PoolDecl>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// Parses and validates a config file; every error comes with its line.
pub fn parse(text: &str, max_ttl: Duration) -> Result<Declared, Vec<ConfigError>> {
    let file: ConfigFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(text, s.start));
        vec![ConfigError { line, message: e.message().trim().to_owned() }]
    })?;
    let mut errors = Vec::new();
    let mut declared = Declared::default();
    let mut ids = BTreeSet::new();
    let mut pool_names = BTreeSet::new();
    let mut check = |line: usize, result: Result<(), String>| {
        if let Err(message) = result {
            errors.push(ConfigError { line, message });
        }
    };
    let field = |r: Result<(), validate::FieldError>, what: &str| r.map_err(|e| format!("{what}: {e}"));

    for item in &file.environments {
        let line = line_of(text, item.span().start);
        let env = item.get_ref();
        let what = format!("environment {:?}", env.id);
        check(line, field(validate::name("id", &env.id), &what));
        if let Some(t) = &env.tenant {
            check(line, field(validate::name("tenant", t), &what));
        }
        check(line, field(validate::labels(&env.labels), &what));
        check(line, field(validate::spec(&env.spec).and_then(|()| lapse_providers::validate_spec(&env.spec)), &what));
        if !ids.insert(env.id.clone()) {
            check(line, Err(format!("{what} is declared twice")));
        }
        if env.max_retries.is_some() && env.lifecycle != Lifecycle::Job {
            check(line, Err(format!("{what}: max_retries is for lifecycle \"job\"")));
        }
        let ttl = match &env.ttl {
            Some(t) => match t.to_duration(max_ttl) {
                Ok(d) => Some(d),
                Err(e) => {
                    check(line, Err(format!("{what}: ttl: {e}")));
                    None
                }
            },
            None => None,
        };
        if let Some(w) = env.warm_pool {
            check(line, pool_size(w.min, w.max, &format!("{what}: warm_pool")));
            declared.pools.push(PoolDecl {
                name: env.id.clone(),
                spec: env.spec.clone(),
                min: w.min,
                max: w.max,
                version: None,
                lifecycle: env.lifecycle,
            });
            pool_names.insert(env.id.clone());
        }
        declared.environments.push((env.clone(), ttl));
    }
    for item in &file.pools {
        let line = line_of(text, item.span().start);
        let pool = item.get_ref();
        let what = format!("pool {:?}", pool.name);
        check(line, field(validate::name("name", &pool.name), &what));
        check(line, field(validate::spec(&pool.spec).and_then(|()| lapse_providers::validate_spec(&pool.spec)), &what));
        check(line, pool_size(pool.min, pool.max, &what));
        if let Some(v) = &pool.version {
            check(line, field(validate::name("version", v), &what));
        }
        if !pool_names.insert(pool.name.clone()) {
            check(line, Err(format!("{what} is declared twice (an environment's warm_pool takes its id as name)")));
        }
        declared.pools.push(pool.clone());
    }
    if errors.is_empty() { Ok(declared) } else { Err(errors) }
}

fn pool_size(min: u32, max: Option<u32>, what: &str) -> Result<(), String> {
    validate::pool_size(min, max).map(drop).map_err(|e| format!("{what}: {}", e.message))
}

/// The file's `[redis]` and `[auth]` tables (read once, at start).
pub fn start_tables(path: &Path) -> anyhow::Result<StartTables> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: ConfigFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(&text, s.start));
        anyhow::anyhow!("config file {} refused: line {line}: {}", path.display(), e.message().trim())
    })?;
    for name in file.tiers.keys() {
        validate::name("tier", name).map_err(|e| anyhow::anyhow!("config file {}: [tiers] {e}", path.display()))?;
    }
    Ok(StartTables { redis: file.redis, auth: file.auth, prices: file.prices, tiers: file.tiers })
}

/// Reads, checks and applies the file; records the outcome for `/v1/status`.
pub async fn reload(app: &App, path: &Path) -> Result<(), Vec<ConfigError>> {
    let outcome = match std::fs::read_to_string(path) {
        Err(e) => Err(vec![ConfigError { line: 0, message: format!("cannot read {}: {e}", path.display()) }]),
        Ok(text) => match parse(&text, app.cx.config.max_ttl) {
            Err(errors) => Err(errors),
            Ok(declared) => {
                app.apply_declared(&declared).await.map_err(|e| vec![ConfigError { line: 0, message: e.to_string() }])
            }
        },
    };
    let mut status = app.cx.config_status.lock().unwrap_or_else(|p| p.into_inner());
    let previous = status.take().unwrap_or_default();
    *status = Some(match &outcome {
        Ok(()) => {
            tracing::info!(path = %path.display(), "config applied");
            ConfigStatus {
                path: path.display().to_string(),
                applied_at: Some(lapse_core::format_millis(app.cx.clock.now())),
                error: None,
            }
        }
        Err(errors) => {
            let text = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            tracing::error!(path = %path.display(), errors = %text, "config refused; the last good state stays in force");
            ConfigStatus { path: path.display().to_string(), applied_at: previous.applied_at, error: Some(text) }
        }
    });
    outcome
}

/// Re-applies the file whenever its content changes.
pub async fn watch(app: App, path: PathBuf, poll: Duration) {
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::time::sleep(poll).await;
        let now = std::fs::read(&path).ok();
        if now != last {
            last = now;
            let _ = reload(&app, &path).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

    #[test]
    fn a_good_file() {
        let text = r#"
[[environment]]
id = "web-api"
tenant = "production"
ttl = "2h"
spec = { provider = "process", cmd = ["sleep", "600"] }
warm_pool = { min = 2, max = 5 }

[[pool]]
name = "boxes"
min = 3
spec = { provider = "docker", image = "localhost/busybox" }
"#;
        let d = parse(text, MAX).unwrap();
        assert_eq!(d.environments.len(), 1);
        assert_eq!(d.environments[0].0.lifecycle, Lifecycle::Service);
        assert_eq!(d.environments[0].1, Some(Duration::from_secs(7200)));
        let names: Vec<_> = d.pools.iter().map(|p| (p.name.as_str(), p.min, p.max)).collect();
        assert_eq!(names, [("web-api", 2, Some(5)), ("boxes", 3, None)]);
    }

    #[test]
    fn every_error_with_its_line() {
        let text = r#"[[environment]]
id = "a"
spec = { provider = "nope", cmd = ["x"] }

[[environment]]
id = "a"
ttl = "soon"
spec = { provider = "docker" }

[[pool]]
name = "p"
min = 5
max = 2
spec = { provider = "process", cmd = ["x"] }
"#;
        let errors = parse(text, MAX).unwrap_err();
        let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(got.iter().any(|e| e.starts_with("line 1: ") && e.contains("unknown provider \"nope\"")), "{got:#?}");
        assert!(got.iter().any(|e| e.starts_with("line 5: ") && e.contains("declared twice")), "{got:#?}");
        assert!(got.iter().any(|e| e.starts_with("line 5: ") && e.contains("ttl")), "{got:#?}");
        assert!(got.iter().any(|e| e.starts_with("line 5: ") && e.contains("needs an image")), "{got:#?}");
        assert!(got.iter().any(|e| e.starts_with("line 10: ") && e.contains("max (2) is below min (5)")), "{got:#?}");
    }

    #[test]
    fn syntax_and_unknown_fields() {
        let errors = parse(
            "[[environment]]\nid = \"a\"\nspec = { provider = \"process\", cmd = [\"x\"] }\ncolour = \"red\"\n",
            MAX,
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("colour"), "{errors:?}");
        let errors = parse("[[environment]\nid = ", MAX).unwrap_err();
        assert_eq!(errors[0].line, 1, "{errors:?}");
        assert_eq!(parse("", MAX), Ok(Declared::default()));
    }

    #[test]
    fn a_redis_table_configures_the_swim_queues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lapse.toml");
        let text = "[redis]\nurl = \"10.0.0.5:6379\"\nprefix = \"vmmanager:\"\nprovider = \"docker\"\n\
                    default_image = \"lab:1\"\nprovision_concurrency = 3\n";
        std::fs::write(&path, text).unwrap();
        assert_eq!(parse(text, MAX), Ok(Declared::default()), "the environments part ignores it");
        let cfg = start_tables(&path).unwrap().redis.unwrap().into_config();
        assert_eq!(cfg.provision_queue(), "vmmanager:provision:queue");
        assert_eq!((cfg.provider.as_str(), cfg.provision_concurrency, cfg.control_concurrency), ("docker", 3, 5));
        assert_eq!(cfg.default_image.as_deref(), Some("lab:1"));
        std::fs::write(&path, "[redis]\nport = 1\n").unwrap();
        assert!(start_tables(&path).unwrap_err().to_string().contains("port"));
        std::fs::write(&path, "[auth]\nadmin_key = \"0123456789abcdef\"\n").unwrap();
        let tables = start_tables(&path).unwrap();
        assert_eq!(tables.auth.unwrap().admin_key.as_deref(), Some("0123456789abcdef"));
        assert_eq!(tables.redis, None);
    }
}

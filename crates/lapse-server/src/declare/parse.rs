//! The file's format and its pure check: [`parse`] (environments and pools, with every error
//! and its line) and [`start_tables`] (the tables read once, at start).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use lapse_core::model::{Lifecycle, OnExpiry, OnIdle, Spec};
use lapse_core::validate;
use lapse_core::wire::{DurationInput, WarmPool};
use serde::Deserialize;
use toml::Spanned;

/// One error in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based; 0 when the error concerns no line (the file could not be read, or applying it
    /// failed). Every error [`parse`] returns has a line.
    pub line: usize,
    /// 1-based, in characters; 0 when not known (TOML's errors give the line only).
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => f.write_str(&self.message),
            (line, 0) => write!(f, "line {line}: {}", self.message),
            (line, column) => write!(f, "line {line}, column {column}: {}", self.message),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// Lets this reading remove most declared entries (see [`super::guard`]).
    #[serde(default)]
    allow_mass_removal: bool,
    #[serde(default, rename = "environment")]
    environments: Vec<Spanned<EnvDecl>>,
    #[serde(default, rename = "pool")]
    pools: Vec<Spanned<PoolDecl>>,
    /// The SWIM Redis queues (see [`crate::compat::swim`]); read at start only.
    #[serde(default)]
    redis: Option<crate::compat::swim::RedisSection>,
    /// Keys (see [`crate::auth`]); read at start only.
    #[serde(default)]
    auth: Option<AuthSection>,
    /// Prices for usage and cost; read at start only.
    #[serde(default)]
    prices: Option<lapse_core::cost::Prices>,
    /// Quota tiers by name (adding to, or replacing, `free` and `pro`); read at start only.
    #[serde(default)]
    tiers: BTreeMap<String, lapse_core::wire::QuotaInput>,
    /// Providers by name (see [`crate::providers::table`]); read at start only.
    #[serde(default)]
    providers: BTreeMap<String, crate::providers::ProviderTable>,
    /// Lifecycle webhooks (see [`crate::webhooks::declared`]); read at start only.
    #[serde(default)]
    webhooks: Vec<crate::webhooks::declared::WebhookDecl>,
    #[serde(default)]
    webhooks_policy: Option<crate::webhooks::declared::PolicySection>,
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
    pub redis: Option<crate::compat::swim::RedisSection>,
    pub auth: Option<AuthSection>,
    pub prices: Option<lapse_core::cost::Prices>,
    pub tiers: BTreeMap<String, lapse_core::wire::QuotaInput>,
    pub providers: BTreeMap<String, crate::providers::ProviderTable>,
    pub webhooks: Vec<crate::webhooks::declared::WebhookDecl>,
    pub webhooks_policy: Option<crate::webhooks::declared::PolicySection>,
}

fn service() -> Lifecycle {
    Lifecycle::Service
}

/// A declared environment.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnvDecl {
    pub id: String,
    /// The environment's name (not a key: several may share one).
    #[serde(default)]
    pub name: Option<String>,
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
    /// Stop (or delete, `on_idle`) after this long without activity.
    #[serde(default)]
    pub idle_timeout: Option<DurationInput>,
    #[serde(default)]
    pub on_idle: OnIdle,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub spec: Spec,
    #[serde(default)]
    pub warm_pool: Option<WarmPool>,
    /// Pre-expiry warnings (`["15m", "2m"]` or `"15m,2m"`), each below the `ttl`.
    #[serde(default)]
    pub warn_before: Option<lapse_core::wire::WarnBefore>,
    /// The seed's spec as written in a `.exs` file (JSON text); never read from TOML.
    #[serde(skip)]
    pub seed_spec: Option<String>,
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
    /// The `[[pool]]`s and the environments' `warm_pool`s (named after their environment),
    /// the latter first.
    pub pools: Vec<PoolDecl>,
    /// The file's top-level `allow_mass_removal`.
    pub allow_mass_removal: bool,
    /// Environments the file no longer declares are kept, not deleted (a seed `.exs` file,
    /// as the seed keeps them, unless the server runs with `--config-delete-removed`).
    pub keep_removed: bool,
    /// The file's `[providers]` tables (applied at start only: a change is logged).
    pub providers: BTreeMap<String, crate::providers::ProviderTable>,
}

/// The 1-based line of byte `offset` (clamped to the text).
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
}

/// A TOML error at its line: its span's start, else the first line (an error of the
/// document as a whole, such as a missing top-level field, is one of its beginning).
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map_or(1, |s| line_of(text, s.start));
    ConfigError { line, column: 0, message: e.message().trim().to_owned() }
}

/// Parses and validates a config file; every error comes with its line. Pure (it reads and
/// writes nothing) and total: no text makes it panic. `max_ttl` bounds the entries' `ttl`s
/// (the server's `--max-ttl`).
pub fn parse(text: &str, max_ttl: Duration) -> Result<Declared, Vec<ConfigError>> {
    let file: ConfigFile = toml::from_str(text).map_err(|e| vec![syntax_error(text, &e)])?;
    let mut errors = Vec::new();
    let mut declared = Declared {
        allow_mass_removal: file.allow_mass_removal,
        providers: file.providers.clone(),
        ..Declared::default()
    };
    let mut ids = BTreeSet::new();
    let mut pool_names = BTreeSet::new();
    let mut check = |line: usize, result: Result<(), String>| {
        if let Err(message) = result {
            errors.push(ConfigError { line, column: 0, message });
        }
    };
    let field = |r: Result<(), validate::FieldError>, what: &str| r.map_err(|e| format!("{what}: {e}"));
    // A spec naming a provider of the file's `[providers]` is checked as its kind.
    let kinds = crate::providers::table::kinds(&file.providers);
    let provider_check = |spec: &lapse_core::model::Spec| {
        let kind = kinds.get(&spec.provider).copied().unwrap_or(spec.provider.as_str());
        validate::spec(spec).and_then(|()| lapse_providers::validate_spec_as(spec, kind))
    };

    for item in &file.environments {
        let line = line_of(text, item.span().start);
        let env = item.get_ref();
        let what = format!("environment {:?}", env.id);
        check(line, field(validate::name("id", &env.id), &what));
        if let Some(n) = &env.name {
            check(line, field(validate::name("name", n), &what));
        }
        if let Some(t) = &env.tenant {
            check(line, field(validate::tenant("tenant", t), &what));
        }
        check(line, field(validate::labels(&env.labels), &what));
        check(line, field(provider_check(&env.spec), &what));
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
        if let Some(idle) = &env.idle_timeout
            && let Err(e) = crate::activity::idle_millis(idle, max_ttl)
        {
            check(line, Err(format!("{what}: idle_timeout: {e}")));
        }
        if let Some(w) = &env.warn_before
            && let Err(e) = crate::warnings::check_marks(w, ttl, max_ttl)
        {
            check(line, Err(format!("{what}: warn_before: {e}")));
        }
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
        check(line, field(provider_check(&pool.spec), &what));
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

/// The file's `[redis]` and `[auth]` tables (read once, at start); a seed `.exs` file has none.
pub fn start_tables(path: &Path) -> anyhow::Result<StartTables> {
    if super::is_exs(path) {
        return Ok(StartTables::default());
    }
    let text = super::reload::read_text(path).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
    let file: ConfigFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config file {} refused: {}", path.display(), syntax_error(&text, &e)))?;
    for name in file.tiers.keys() {
        validate::name("tier", name).map_err(|e| anyhow::anyhow!("config file {}: [tiers] {e}", path.display()))?;
    }
    Ok(StartTables {
        redis: file.redis,
        auth: file.auth,
        prices: file.prices,
        tiers: file.tiers,
        providers: file.providers,
        webhooks: file.webhooks,
        webhooks_policy: file.webhooks_policy,
    })
}

#[cfg(test)]
mod price_tests {
    /// `[prices]` as the server reads it at start: the error, if any.
    fn check(toml_text: &str) -> Result<lapse_core::cost::Prices, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("lapse.toml");
        std::fs::write(&path, toml_text).map_err(|e| e.to_string())?;
        super::start_tables(&path).map(|t| t.prices.unwrap_or_default()).map_err(|e| e.to_string())
    }

    #[test]
    fn prices_per_provider_and_instance_type_with_a_default() {
        let prices = check("[prices]\nvcpu_hour = 1\n[prices.aws]\n\"t2.nano\" = 0.0058\ndefault = 0.01\n").unwrap();
        let aws = &prices.clouds["aws"];
        assert_eq!((aws.instance_types["t2.nano"], aws.default), (0.0058, Some(0.01)));
        assert_eq!(prices.vcpu_hour, 1.0);
    }

    #[test]
    fn a_bad_price_is_an_error_naming_its_key() {
        for (text, key) in [
            ("[prices.aws]\n\"t2.nano\" = -1\n", "prices.aws.t2.nano"),
            ("[prices.aws]\n\"t2.nano\" = nan\n", "prices.aws.t2.nano"),
            ("[prices.aws]\ndefault = inf\n", "prices.aws.default"),
            ("[prices.aws]\n\"t2.nano\" = \"cheap\"\n", "prices.aws.t2.nano"),
            ("[prices.aws.deep]\nx = 1\n", "prices.aws.deep"),
            ("[prices]\ntypo = 1\n", "prices.typo"),
            ("[prices]\nvcpu_hour = -0.5\n", "prices.vcpu_hour"),
            ("[prices.instance_types]\n\"DEV1-S\" = nan\n", "prices.instance_types.DEV1-S"),
        ] {
            let err = check(text).unwrap_err();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }
}

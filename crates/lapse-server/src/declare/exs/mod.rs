//! The seed fc_ex_cp's `config/desired_vms.exs` (ndrean/microvm-control-planner@2ff3827,
//! read by `lib/desiredStateStore.ex` with `Code.eval_string`): a list of `{vm_id, tenant,
//! spec}` tuples whose specs are atom-keyed maps.
//!
//! ```elixir
//! [
//!   {"web-app-1", "web-app-1",
//!    %{cmd: ["/app/bin/server"], env: %{MIX_ENV: "prod"}, resources: %{vcpu: 2, mem_mb: 512},
//!      lifecycle: "service", warm_pool: %{min: 1, max: 3}}},
//! ]
//! ```
//!
//! **No code is evaluated.** [`parse_terms`] reads the literal subset of Elixir such files use:
//! lists, tuples, maps (`%{key: v}` and `%{"k" => v}`), double-quoted strings (escapes, no
//! `#{}` interpolation), integers (`1_000`, `0x1F`), floats, atoms (`:service`,
//! `:"quoted"`), `true`/`false`/`nil`, and `#` comments. Anything else (a variable, a call, a
//! sigil, interpolation) is an error at its line and column. Input is bounded: the file by
//! [`super::MAX_FILE_BYTES`], nesting by [`MAX_DEPTH`].
//!
//! Each spec becomes JSON as the seed stores it (`Jason.encode!`: atoms are strings, `nil` is
//! `null`; a tuple cannot be encoded and is an error) and is then read as `POST /vms` reads
//! one ([`crate::compat::fc::request::map_spec`]), except that `resources` are only what the
//! file gives (the seed's 2 vCPU / 512 MiB defaults are applied by `/vms` only where the
//! provider enforces them, which a file check cannot know). An entry's `warm_pool` is a pool
//! named after its id, as in TOML. Entries that leave the file are kept (the seed never
//! deletes them), unless the server runs with `--config-delete-removed`.

use serde_json::{Map, Value};

use lapse_core::model::OnExpiry;
use lapse_core::validate;

use super::parse::{ConfigError, Declared, EnvDecl, PoolDecl};

mod term;

pub use term::{Kind, MAX_DEPTH, Term, parse_terms};

/// Parses a `desired_vms.exs` file into what it declares, with `default_provider` for specs
/// that name none and every error at its line and column.
pub fn parse(text: &str, default_provider: &str) -> Result<Declared, Vec<ConfigError>> {
    let top = parse_terms(text).map_err(|e| vec![e])?;
    let Kind::List(entries) = top.kind else {
        return Err(vec![at(&top, "the file must be a list of {vm_id, tenant, spec} tuples")]);
    };
    let mut declared = Declared::default();
    let mut errors = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for entry in &entries {
        match entry_decl(entry, default_provider).and_then(|decl| check(entry, decl, &mut ids)) {
            Ok(decl) => {
                if let Some(w) = decl.warm_pool {
                    declared.pools.push(PoolDecl {
                        name: decl.id.clone(),
                        spec: decl.spec.clone(),
                        min: w.min,
                        max: w.max,
                        version: None,
                        lifecycle: decl.lifecycle,
                    });
                }
                declared.environments.push((decl, None));
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(declared) } else { Err(errors) }
}

/// The checks a TOML entry gets (names, the spec against its provider, the pool's size).
fn check(entry: &Term, decl: EnvDecl, ids: &mut std::collections::BTreeSet<String>) -> Result<EnvDecl, ConfigError> {
    let what = format!("vm {:?}", decl.id);
    let fail = |e: validate::FieldError| at(entry, format!("{what}: {e}"));
    validate::name("vm_id", &decl.id).map_err(fail)?;
    if let Some(t) = &decl.tenant {
        validate::tenant("tenant", t).map_err(fail)?;
    }
    validate::spec(&decl.spec).and_then(|()| lapse_providers::validate_spec(&decl.spec)).map_err(fail)?;
    if let Some(w) = decl.warm_pool {
        validate::pool_size(w.min, w.max).map_err(|e| at(entry, format!("{what}: warm_pool: {}", e.message)))?;
    }
    if !ids.insert(decl.id.clone()) {
        return Err(at(entry, format!("{what} is declared twice")));
    }
    Ok(decl)
}

fn at(term: &Term, message: impl Into<String>) -> ConfigError {
    ConfigError { line: term.line, column: term.column, message: message.into() }
}

fn entry_decl(entry: &Term, default_provider: &str) -> Result<EnvDecl, ConfigError> {
    let shape = "each entry must be a {vm_id, tenant, spec} tuple";
    let Kind::Tuple(parts) = &entry.kind else {
        return Err(at(entry, shape));
    };
    let [id, tenant, spec] = parts.as_slice() else {
        return Err(at(entry, shape));
    };
    let text = |t: &Term, what: &str| match &t.kind {
        Kind::String(s) => Ok(s.clone()),
        _ => Err(at(t, format!("{what} must be a string"))),
    };
    let id_text = text(id, "vm_id")?;
    let tenant_text = text(tenant, "tenant")?;
    let what = format!("vm {id_text:?}");
    let Value::Object(seed) = to_json(spec)? else {
        return Err(at(spec, format!("{what}: the spec must be a map")));
    };
    let mut mapped =
        crate::compat::fc::request::map_spec(&seed, default_provider).map_err(|e| at(spec, format!("{what}: {e}")))?;
    if !mapped.resources_given {
        mapped.spec.resources = None;
    }
    Ok(EnvDecl {
        id: id_text,
        name: None,
        tenant: Some(tenant_text),
        lifecycle: mapped.lifecycle,
        ttl: None,
        on_expiry: OnExpiry::Stop,
        max_retries: None,
        idle_timeout: None,
        on_idle: Default::default(),
        labels: Default::default(),
        spec: mapped.spec,
        warm_pool: mapped.warm_pool,
        warn_before: None,
        seed_spec: Some(mapped.seed_spec),
    })
}

/// A term as `Jason.encode!` writes it (and `Jason.decode!` reads it back).
pub fn to_json(term: &Term) -> Result<Value, ConfigError> {
    Ok(match &term.kind {
        Kind::Integer(n) => {
            if let Ok(i) = i64::try_from(*n) {
                Value::from(i)
            } else if let Ok(u) = u64::try_from(*n) {
                Value::from(u)
            } else {
                return Err(at(term, "an integer beyond 64 bits"));
            }
        }
        Kind::Float(f) => {
            serde_json::Number::from_f64(*f).map(Value::Number).ok_or_else(|| at(term, "not a finite number"))?
        }
        Kind::String(s) => Value::String(s.clone()),
        Kind::Atom(a) => match a.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "nil" => Value::Null,
            other => Value::String(other.to_owned()),
        },
        Kind::List(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Kind::Tuple(_) => {
            return Err(at(term, "a tuple inside a spec cannot be stored (the seed's Jason.encode! fails on it)"));
        }
        Kind::Map(pairs) => {
            let mut out = Map::new();
            for (k, v) in pairs {
                let key = match &k.kind {
                    Kind::String(s) | Kind::Atom(s) => s.clone(),
                    _ => return Err(at(k, "a map key must be an atom or a string")),
                };
                out.insert(key, to_json(v)?);
            }
            Value::Object(out)
        }
    })
}

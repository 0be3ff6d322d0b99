//! Reading a `POST /vms` body and a seed spec as the seed reads them (`lib/router.ex`,
//! `lib/vm.ex`, `lib/reconciler.ex`), and mapping the spec onto Lapse's.
//!
//! The id is `job_id`, else `vm_id`, else `tenant`, else a generated `vm-<16 hex>`; as in
//! Elixir's `||`, a `null` or `false` value counts as absent, and any other value that is not
//! a non-empty string is the seed's `400 {"error": "missing job_id (or vm_id/tenant)"}`. The
//! tenant defaults to the id; the spec to `{}`.
//!
//! The seed's spec is kept verbatim (it is what `/vms` and `/stats` show, and what
//! `spec_hash` hashes), at most [`MAX_SEED_SPEC_BYTES`] of JSON. Lapse's spec takes from it:
//!
//! | seed key | Lapse | when absent |
//! |---|---|---|
//! | `cmd` (list of strings) | `cmd` | none |
//! | `env` (object of scalars) | `env`, each value's string form (`4000` → `"4000"`, `true` → `"true"`, `null` → `""`) | none |
//! | `resources.vcpu`, `resources.mem_mb` | `resources` | `vcpu` 2, `mem_mb` 512 (`lib/vm.ex`), where the provider enforces resources |
//! | `lifecycle` (`service`, `daemon`, `job`, Lapse's `lease`) | `lifecycle` | `service` |
//! | `warm_pool.min`, `warm_pool.max` | a pool of the spec | no pool (`min` 0 too) |
//! | `kernel`, `rootfs` | `kernel`, `rootfs`: refused unless the provider boots kernels | none |
//! | Lapse's own `provider`, `image`, `ports`, `resources.disk_gb` | the same | `--vms-provider` |
//!
//! Every other key (the seed README's `"role"`) is kept in the seed's spec only. A known key
//! of the wrong type is a `400` naming it; the seed would take it and fail later, or crash.

use std::collections::BTreeMap;

use lapse_core::model::{Lifecycle, Resources, Spec};
use lapse_core::validate::FieldError;
use lapse_core::wire::WarmPool;
use serde_json::{Map, Value};

/// The largest seed spec kept, as JSON text.
pub const MAX_SEED_SPEC_BYTES: usize = 64 * 1024;

/// The seed's defaults for a VM's size (`lib/vm.ex`).
pub const DEFAULT_VCPU: f64 = 2.0;
pub const DEFAULT_MEM_MB: u64 = 512;

/// The seed's answer to a body without a usable id.
pub const MISSING_ID: &str = "missing job_id (or vm_id/tenant)";

/// A `POST /vms` body, read.
#[derive(Clone, Debug, PartialEq)]
pub struct VmBody {
    pub job_id: String,
    pub tenant: String,
    pub spec: Map<String, Value>,
}

/// Why a body was refused; each is the seed's `400 {"error": "..."}`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BodyError {
    #[error("{MISSING_ID}")]
    MissingId,
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("spec must be a JSON object")]
    SpecNotAnObject,
}

/// Reads a decoded body as the seed's router does.
pub fn read_body(body: &Value) -> Result<VmBody, BodyError> {
    let Value::Object(fields) = body else {
        return Err(BodyError::NotAnObject);
    };
    // Elixir's `||`: nil and false are falsy, everything else (even "" or 0) is taken.
    let truthy = |key: &str| fields.get(key).filter(|v| !matches!(v, Value::Null | Value::Bool(false)));
    let job_id = match truthy("job_id").or_else(|| truthy("vm_id")).or_else(|| truthy("tenant")) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(BodyError::MissingId),
        None => generated_id(),
    };
    let tenant = match truthy("tenant") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(BodyError::MissingId),
        None => job_id.clone(),
    };
    let spec = match truthy("spec") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(BodyError::SpecNotAnObject),
    };
    Ok(VmBody { job_id, tenant, spec })
}

/// The seed's `vm-<16 lowercase hex>` (8 random bytes).
pub fn generated_id() -> String {
    // The tail of a UUIDv7's hex is its random part.
    let id = lapse_core::model::new_environment_id();
    format!("vm-{}", &id[id.len() - 16..])
}

/// A seed spec mapped onto Lapse's.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapped {
    pub spec: Spec,
    pub lifecycle: Lifecycle,
    /// `Some` when `warm_pool.min > 0`.
    pub warm_pool: Option<WarmPool>,
    /// Whether the seed spec named `resources` (else the seed's defaults were filled in).
    pub resources_given: bool,
    /// The seed spec as JSON text, as given.
    pub seed_spec: String,
}

fn bad(field: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: format!("spec.{field}"), message: message.into() }
}

fn string(spec: &Map<String, Value>, key: &str) -> Result<Option<String>, FieldError> {
    match spec.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(key, "must be a string")),
    }
}

/// Maps a seed spec onto Lapse's; `default_provider` when it names none.
pub fn map_spec(seed: &Map<String, Value>, default_provider: &str) -> Result<Mapped, FieldError> {
    let seed_spec = Value::Object(seed.clone()).to_string();
    if seed_spec.len() > MAX_SEED_SPEC_BYTES {
        return Err(FieldError {
            field: "spec".into(),
            message: format!("is {} bytes of JSON; at most {MAX_SEED_SPEC_BYTES}", seed_spec.len()),
        });
    }
    let cmd = match seed.get("cmd") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| bad("cmd", "must be a list of strings")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("cmd", "must be a list of strings")),
    };
    let env = match seed.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(vars)) => vars
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    scalar_text(v)
                        .ok_or_else(|| bad(&format!("env.{k}"), "must be a string, number, boolean or null"))?,
                ))
            })
            .collect::<Result<_, FieldError>>()?,
        Some(_) => return Err(bad("env", "must be an object")),
    };
    let (resources, resources_given) = match seed.get("resources") {
        None | Some(Value::Null) => (resources(&Map::new())?, false),
        Some(Value::Object(r)) => (resources(r)?, true),
        Some(_) => return Err(bad("resources", "must be an object")),
    };
    let lifecycle = match string(seed, "lifecycle")?.as_deref() {
        None => Lifecycle::Service,
        Some(text) => text.parse().map_err(|_| bad("lifecycle", "must be \"service\", \"daemon\" or \"job\""))?,
    };
    let warm_pool = match seed.get("warm_pool") {
        None | Some(Value::Null) => None,
        Some(Value::Object(w)) => {
            let count = |key: &str| match w.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| bad(&format!("warm_pool.{key}"), "must be a whole number")),
            };
            let (min, max) = (count("min")?.unwrap_or(0), count("max")?);
            (min > 0).then_some(WarmPool { min, max })
        }
        Some(_) => return Err(bad("warm_pool", "must be an object")),
    };
    let ports = match seed.get("ports") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| bad("ports", "must be a list of TCP ports"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("ports", "must be a list of TCP ports")),
    };
    let spec = Spec {
        provider: string(seed, "provider")?.unwrap_or_else(|| default_provider.to_owned()),
        image: string(seed, "image")?,
        cmd,
        env,
        resources: Some(resources),
        ports,
        user_data: None,
        kernel: string(seed, "kernel")?,
        rootfs: string(seed, "rootfs")?,
        cloud: None,
        ..Default::default()
    };
    Ok(Mapped { spec, lifecycle, warm_pool, resources_given, seed_spec })
}

/// The string form an environment variable gets of a JSON scalar.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// `resources` with the seed's defaults for what it leaves out.
fn resources(r: &Map<String, Value>) -> Result<Resources, FieldError> {
    let given = |key: &str| r.get(key).filter(|v| !v.is_null());
    let whole = |key: &str| {
        given(key)
            .map(|v| v.as_u64().ok_or_else(|| bad(&format!("resources.{key}"), "must be a whole number")))
            .transpose()
    };
    let vcpu = given("vcpu")
        .map(|v| v.as_f64().ok_or_else(|| bad("resources.vcpu", "must be a number")))
        .transpose()?
        .unwrap_or(DEFAULT_VCPU);
    Ok(Resources {
        vcpu: Some(vcpu),
        mem_mb: Some(whole("mem_mb")?.unwrap_or(DEFAULT_MEM_MB)),
        disk_gb: whole("disk_gb")?,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(body: Value, expect: Result<(&str, &str, Value), BodyError>) {
        let got = read_body(&body).map(|b| (b.job_id, b.tenant, Value::Object(b.spec)));
        let expect = expect.map(|(id, tenant, spec)| (id.to_owned(), tenant.to_owned(), spec));
        assert_eq!(got, expect, "{body}");
    }

    #[test]
    fn the_id_is_job_id_else_vm_id_else_tenant_and_nil_or_false_count_as_absent() {
        check(json!({"job_id": "a", "vm_id": "b", "tenant": "c"}), Ok(("a", "c", json!({}))));
        check(json!({"vm_id": "b", "tenant": "c"}), Ok(("b", "c", json!({}))));
        check(json!({"tenant": "c", "spec": {"x": 1}}), Ok(("c", "c", json!({"x": 1}))));
        check(json!({"job_id": null, "vm_id": false, "tenant": "c", "spec": false}), Ok(("c", "c", json!({}))));
        check(json!({"job_id": 0}), Err(BodyError::MissingId));
        check(json!({"job_id": ""}), Err(BodyError::MissingId));
        check(json!({"job_id": "a", "tenant": 1}), Err(BodyError::MissingId));
        check(json!({"job_id": "a", "spec": []}), Err(BodyError::SpecNotAnObject));
        check(json!("a"), Err(BodyError::NotAnObject));
        let generated = read_body(&json!({})).unwrap();
        assert_eq!(generated.tenant, generated.job_id);
        assert!(generated.job_id.starts_with("vm-") && generated.job_id.len() == 19, "{}", generated.job_id);
    }

    #[test]
    fn a_seed_spec_maps_onto_lapses_and_is_kept_verbatim() {
        let seed = json!({"cmd": ["a"], "env": {"PORT": 4000, "ON": true, "NONE": null, "S": "s", "F": 1.5},
            "role": "api", "lifecycle": "daemon", "warm_pool": {"min": 0, "max": 3}, "kernel": "vmlinux"});
        let Value::Object(seed) = seed else { unreachable!("an object literal") };
        let mapped = map_spec(&seed, "process").unwrap();
        assert_eq!(mapped.spec.provider, "process");
        let env: Vec<(&str, &str)> = mapped.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(env, [("F", "1.5"), ("NONE", ""), ("ON", "true"), ("PORT", "4000"), ("S", "s")]);
        assert_eq!(mapped.lifecycle, Lifecycle::Daemon);
        assert_eq!(mapped.warm_pool, None, "min 0 is no warm pool, as the seed");
        assert_eq!(mapped.spec.kernel.as_deref(), Some("vmlinux"));
        assert!(!mapped.resources_given);
        let r = mapped.spec.resources.unwrap();
        assert_eq!((r.vcpu, r.mem_mb), (Some(DEFAULT_VCPU), Some(DEFAULT_MEM_MB)));
        assert_eq!(serde_json::from_str::<Value>(&mapped.seed_spec).unwrap(), Value::Object(seed));
        for (bad, field) in [
            (json!({"env": {"A": [1]}}), "spec.env.A"),
            (json!({"resources": {"vcpu": "two"}}), "spec.resources.vcpu"),
            (json!({"resources": {"mem_mb": -1}}), "spec.resources.mem_mb"),
            (json!({"warm_pool": {"min": "1"}}), "spec.warm_pool.min"),
            (json!({"ports": [70000]}), "spec.ports"),
            (json!({"provider": 1}), "spec.provider"),
            (json!({"big": "x".repeat(MAX_SEED_SPEC_BYTES)}), "spec"),
        ] {
            let Value::Object(bad) = bad else { unreachable!("an object literal") };
            assert_eq!(map_spec(&bad, "sim").unwrap_err().field, field);
        }
    }
}

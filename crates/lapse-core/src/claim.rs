//! Claims with parameters: per-claim data a create hands a warm pool member
//! ([`ClaimParams`]: environment variables and files), and the hook the pool declares to
//! deliver it ([`ClaimHook`]).
//!
//! A member is made before anyone claims it, so what is per-claim (a student's bucket and its
//! credentials) cannot be in its spec. The claim takes the member in one store transaction,
//! then the server runs the pool's hook inside it through the provider's `exec`:
//!
//! 1. each of `params.files` is written (parent directories made), then
//! 2. `file`: the parameters as JSON (`{"env": {...}, "files": [paths]}`) are written to that
//!    path, or `exec`: the command runs with `params.env` added to its environment, or
//!    `http` ([`HttpHook`]): `params.env` (or the part its `body` maps) is `POST`ed as one JSON
//!    object of strings to a port and path of the member, whose answer must be `2xx` (and, with
//!    `accept`, hold a field equal to one of the values given);
//! 3. `ready` (if given) is run until it exits 0, or for `http`, its `ready` is `GET` until it
//!    answers `2xx` (and, with `field`, that JSON field equals `value`), all within `timeout`.
//!
//! Every exec step is a plain argv ([`delivery`]): a value reaches the program as one
//! argument, never through a shell's parsing. An `http` hook reaches only the endpoint Lapse
//! recorded for that port of the member (as the proxy and the probes do), never a host or
//! port from the parameters. A hook that fails or times out gets the member recycled and the
//! claim tries the next member, then a cold start: never a half-assigned environment.
//!
//! [`expand_env`]: a spec's variable may name its environment, for values that differ per
//! member of one pool (`CONTAINER_ID=${LAPSE_SHORT_ID}`): the spec (and its hash) keeps the
//! placeholder; the provider gets the value.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validate::FieldError;
use crate::wire::DurationInput;

/// Most files one claim may hand over.
pub const MAX_FILES: usize = 16;
/// Most bytes of all of a claim's file contents and variable values together.
pub const MAX_PARAM_BYTES: usize = 64 * 1024;
/// Most variables one claim may hand over.
pub const MAX_VARS: usize = 64;
/// The hook's whole time when the pool gives none.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a hook may be given.
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(600);
/// Between two runs of `ready`.
pub const READY_PAUSE: Duration = Duration::from_millis(250);

/// What a create hands the warm member it claims.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimParams {
    /// Variables for the hook's command (`exec`) or the JSON file (`file`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Files to write inside the environment: absolute path → content (text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

impl ClaimParams {
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.files.is_empty()
    }
}

/// How a pool's members take a claim's parameters: exactly one of `exec`, `file` and `http`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimHook {
    /// A command run inside the member with the parameters' `env` added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<String>,
    /// A path inside the member the parameters are written to, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An HTTP endpoint of the member the parameters are `POST`ed to, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHook>,
    /// A command run until it exits 0 (the member has taken the parameters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready: Vec<String>,
    /// The whole hook's time (default 30 s, at most 10 min).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationInput>,
}

impl ClaimHook {
    /// The hook's whole time, once [`validate_hook`] accepted it.
    pub fn timeout(&self) -> Duration {
        self.timeout.as_ref().and_then(|t| t.to_duration(MAX_HOOK_TIMEOUT).ok()).unwrap_or(DEFAULT_HOOK_TIMEOUT)
    }
}

/// Most bytes of an http hook's answer read (to check `accept` or `ready.field`).
pub const MAX_HTTP_ANSWER: usize = 64 * 1024;

/// An `http` claim hook: `POST http://<member's endpoint of port><path>` with a JSON object
/// of strings, then (with `ready`) `GET` until ready.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHook {
    /// A port of the member's spec (its recorded endpoint is what is reached).
    pub port: u16,
    /// The path `POST`ed to: `/assign-s3-bucket`.
    pub path: String,
    /// The JSON keys sent, each taken from the variable of `params.env` it names (a variable
    /// not given leaves its key out); without it, `params.env` is sent as it is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub body: BTreeMap<String, String>,
    /// The answer must be a JSON object whose `field` is one of `values`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<JsonAccept>,
    /// `GET` until the member says it took them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<HttpReady>,
}

/// A string field of a JSON answer and the values that pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonAccept {
    pub field: String,
    pub values: Vec<String>,
}

/// An http readiness check: `GET path` (on `port`, default the hook's) until it answers `2xx`
/// and, with `field`, that top-level JSON field is the string `value`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpReady {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A path an http hook may ask for: origin-form, plain characters, no `.`/`..` segment, no
/// `//`, at most 256 bytes (a query is allowed after `?`).
pub fn is_hook_path(path: &str) -> bool {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"/._-~%=&+".contains(&b);
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    path.starts_with('/')
        && path.len() <= 256
        && !route.contains("//")
        && route.split('/').all(|part| part != ".." && part != "." && !part.to_ascii_lowercase().contains("%2"))
        && route.bytes().all(plain)
        && query.bytes().all(plain)
}

fn is_json_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn validate_http(field: &str, http: &HttpHook) -> Result<(), FieldError> {
    if http.port == 0 {
        return fail(format!("{field}.port"), "a port is 1-65535");
    }
    if !is_hook_path(&http.path) {
        return fail(format!("{field}.path"), format!("{:?} is not a plain absolute path", http.path));
    }
    if http.body.len() > MAX_VARS {
        return fail(format!("{field}.body"), format!("at most {MAX_VARS} keys"));
    }
    for (key, var) in &http.body {
        if !is_json_key(key) || !is_var_name(var) {
            return fail(format!("{field}.body.{key}"), "a key of letters, digits, _-. and a variable name");
        }
    }
    if let Some(accept) = &http.accept
        && (!is_json_key(&accept.field) || accept.values.is_empty() || accept.values.len() > 16)
    {
        return fail(format!("{field}.accept"), "a field name and 1-16 values");
    }
    if let Some(ready) = &http.ready {
        if ready.port == Some(0) {
            return fail(format!("{field}.ready.port"), "a port is 1-65535");
        }
        if !is_hook_path(&ready.path) {
            return fail(format!("{field}.ready.path"), format!("{:?} is not a plain absolute path", ready.path));
        }
        match (&ready.field, &ready.value) {
            (Some(f), Some(_)) if is_json_key(f) => {}
            (None, None) => {}
            _ => return fail(format!("{field}.ready"), "give field and value together (a plain field name)"),
        }
    }
    Ok(())
}

/// The JSON object an http hook `POST`s for `params`.
pub fn http_body(http: &HttpHook, params: &ClaimParams) -> serde_json::Value {
    let object: serde_json::Map<String, serde_json::Value> = if http.body.is_empty() {
        params.env.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect()
    } else {
        http.body
            .iter()
            .filter_map(|(key, var)| params.env.get(var).map(|v| (key.clone(), serde_json::Value::String(v.clone()))))
            .collect()
    };
    serde_json::Value::Object(object)
}

/// Whether a JSON answer's top-level `field` is one of `values`.
pub fn json_field_is(answer: &[u8], field: &str, values: &[String]) -> bool {
    serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v.get(field).and_then(|f| f.as_str()).map(|f| values.iter().any(|v| v == f)))
        .unwrap_or(false)
}

/// The placeholder of an environment's id in a spec's variable.
pub const ID_PLACEHOLDER: &str = "${LAPSE_ENVIRONMENT_ID}";
/// The placeholder of its short id ([`short_id`]).
pub const SHORT_ID_PLACEHOLDER: &str = "${LAPSE_SHORT_ID}";

/// An environment's short id: the last 8 characters of its id (the random end of a UUIDv7,
/// 32 bits), lowercase hex, so `[a-z0-9]{8}`.
pub fn short_id(environment_id: &str) -> &str {
    environment_id.get(environment_id.len().saturating_sub(8)..).unwrap_or(environment_id)
}

/// `env` with the placeholders in its values replaced for environment `id`; `None` when no
/// value holds one (the common case: nothing is copied).
pub fn expand_env(env: &BTreeMap<String, String>, id: &str) -> Option<BTreeMap<String, String>> {
    if !env.values().any(|v| v.contains(ID_PLACEHOLDER) || v.contains(SHORT_ID_PLACEHOLDER)) {
        return None;
    }
    let short = short_id(id);
    Some(
        env.iter()
            .map(|(k, v)| (k.clone(), v.replace(ID_PLACEHOLDER, id).replace(SHORT_ID_PLACEHOLDER, short)))
            .collect(),
    )
}

fn fail<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError { field: field.into(), message: message.into() })
}

/// A path inside an environment a hook may write: absolute, plain characters, no `..`.
pub fn is_guest_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 1024
        && path.split('/').all(|part| part != ".." && part != ".")
        && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+@".contains(&b))
}

fn is_var_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks a pool's hook; the field names start with `field` (`on_claim`).
pub fn validate_hook(field: &str, hook: &ClaimHook) -> Result<(), FieldError> {
    let kinds =
        usize::from(!hook.exec.is_empty()) + usize::from(hook.file.is_some()) + usize::from(hook.http.is_some());
    match kinds {
        0 => return fail(field, "give exec (a command), file (a path) or http (a port and path)"),
        1 => {}
        _ => return fail(field, "give one of exec, file and http, not several"),
    }
    if let Some(http) = &hook.http {
        validate_http(&format!("{field}.http"), http)?;
        if !hook.ready.is_empty() {
            return fail(format!("{field}.ready"), "an http hook's readiness is http.ready (a GET), not a command");
        }
    }
    crate::validate::command(&format!("{field}.exec"), &hook.exec)?;
    if hook.exec.first().is_some_and(|p| p.contains('=')) {
        return fail(format!("{field}.exec"), "the program's name cannot hold '='");
    }
    crate::validate::command(&format!("{field}.ready"), &hook.ready)?;
    if let Some(path) = hook.file.as_deref().filter(|p| !is_guest_path(p)) {
        return fail(format!("{field}.file"), format!("{path:?} is not an absolute path of plain characters"));
    }
    if let Some(t) = &hook.timeout {
        t.to_duration(MAX_HOOK_TIMEOUT).or_else(|e| fail(format!("{field}.timeout"), e.to_string()))?;
    }
    Ok(())
}

/// Checks a create's parameters (bounded in number and size, names and paths plain).
pub fn validate_params(params: &ClaimParams) -> Result<(), FieldError> {
    if params.env.len() > MAX_VARS {
        return fail("params.env", format!("at most {MAX_VARS} variables"));
    }
    if params.files.len() > MAX_FILES {
        return fail("params.files", format!("at most {MAX_FILES} files"));
    }
    for (name, value) in &params.env {
        if !is_var_name(name) {
            return fail(format!("params.env.{name}"), "a variable name is letters, digits and _, not first a digit");
        }
        if value.contains('\0') {
            return fail(format!("params.env.{name}"), "a value cannot hold a NUL byte");
        }
    }
    for (path, content) in &params.files {
        if !is_guest_path(path) {
            return fail(format!("params.files.{path}"), "not an absolute path of plain characters");
        }
        if content.contains('\0') {
            return fail(format!("params.files.{path}"), "a file's text cannot hold a NUL byte");
        }
    }
    let bytes: usize = params.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + params.files.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if bytes > MAX_PARAM_BYTES {
        return fail("params", format!("{bytes} bytes; at most {MAX_PARAM_BYTES} in all"));
    }
    Ok(())
}

/// `sh -c` script writing `$2` to the path `$1`, making its directory: the values are
/// arguments, never part of the script.
const WRITE_FILE: &str = "mkdir -p -- \"$(dirname -- \"$1\")\" && printf '%s' \"$2\" > \"$1\"";

fn write_file(path: &str, content: &str) -> Vec<String> {
    ["sh", "-c", WRITE_FILE, "lapse-claim", path, content].map(str::to_owned).to_vec()
}

/// The commands that deliver `params` through `hook`, in order (before `ready`).
pub fn delivery(hook: &ClaimHook, params: &ClaimParams) -> Vec<Vec<String>> {
    let mut steps: Vec<Vec<String>> = params.files.iter().map(|(path, content)| write_file(path, content)).collect();
    if let Some(path) = &hook.file {
        let json = serde_json::json!({"env": params.env, "files": params.files.keys().collect::<Vec<_>>()});
        steps.push(write_file(path, &json.to_string()));
    }
    if !hook.exec.is_empty() {
        let mut argv = vec!["env".to_owned()];
        argv.extend(params.env.iter().map(|(k, v)| format!("{k}={v}")));
        // `env` reads words with `=` as variables up to the first without: the program
        // (refused by `validate_hook` if it holds one).
        argv.extend(hook.exec.iter().cloned());
        steps.push(argv);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ClaimParams {
        ClaimParams {
            env: [("S3_BUCKET".to_owned(), "b; rm -rf /".to_owned())].into(),
            files: [("/run/claim/creds".to_owned(), "key=$(id)\n'x'".to_owned())].into(),
        }
    }

    #[test]
    fn exec_gets_the_variables_as_words_after_the_files() {
        let hook = ClaimHook { exec: vec!["/bin/assign".into()], ..Default::default() };
        let steps = delivery(&hook, &params());
        assert_eq!(steps.len(), 2);
        assert_eq!(&steps[0][..4], ["sh", "-c", WRITE_FILE, "lapse-claim"]);
        assert_eq!(&steps[0][4..], ["/run/claim/creds", "key=$(id)\n'x'"], "the content is one argument");
        assert_eq!(steps[1], ["env", "S3_BUCKET=b; rm -rf /", "/bin/assign"]);
    }

    #[test]
    fn file_gets_the_parameters_as_json() {
        let hook = ClaimHook { file: Some("/run/lapse/claim.json".into()), ..Default::default() };
        let steps = delivery(&hook, &params());
        let json: serde_json::Value = serde_json::from_str(&steps[1][5]).unwrap();
        assert_eq!(json["env"]["S3_BUCKET"], "b; rm -rf /");
        assert_eq!(json["files"][0], "/run/claim/creds");
        assert_eq!(steps[1][4], "/run/lapse/claim.json");
    }

    #[test]
    fn bad_hooks_and_params_name_the_field() {
        let cases = [
            (ClaimHook::default(), "on_claim"),
            (ClaimHook { exec: vec!["a".into()], file: Some("/x".into()), ..Default::default() }, "on_claim"),
            (ClaimHook { file: Some("relative/x".into()), ..Default::default() }, "on_claim.file"),
            (ClaimHook { exec: vec!["A=1".into()], ..Default::default() }, "on_claim.exec"),
            (ClaimHook { file: Some("/a/../etc/passwd".into()), ..Default::default() }, "on_claim.file"),
            (
                ClaimHook {
                    exec: vec!["a".into()],
                    timeout: Some(DurationInput::Text("2h".into())),
                    ..Default::default()
                },
                "on_claim.timeout",
            ),
        ];
        for (hook, field) in cases {
            assert_eq!(validate_hook("on_claim", &hook).unwrap_err().field, field, "{hook:?}");
        }
        let mut p = params();
        p.env.insert("1BAD".into(), "x".into());
        assert_eq!(validate_params(&p).unwrap_err().field, "params.env.1BAD");
        let mut p = params();
        p.files.insert("/x/$(id)".into(), "x".into());
        assert!(validate_params(&p).unwrap_err().field.starts_with("params.files."));
        let big = ClaimParams { env: [("A".to_owned(), "x".repeat(MAX_PARAM_BYTES))].into(), ..Default::default() };
        assert_eq!(validate_params(&big).unwrap_err().field, "params");
        assert!(validate_params(&params()).is_ok());
    }

    #[test]
    fn http_hooks_are_checked_and_map_their_body() {
        let good = HttpHook {
            port: 3000,
            path: "/assign-s3-bucket".into(),
            body: [("bucket".to_owned(), "S3_BUCKET".to_owned()), ("bucketId".to_owned(), "S3_BUCKET_ID".to_owned())]
                .into(),
            accept: Some(JsonAccept { field: "status".into(), values: vec!["success".into()] }),
            ready: Some(HttpReady {
                port: None,
                path: "/sync-status".into(),
                field: Some("status".into()),
                value: Some("ready".into()),
            }),
        };
        let hook = ClaimHook { http: Some(good.clone()), ..Default::default() };
        assert!(validate_hook("on_claim", &hook).is_ok());
        let bad = |f: fn(&mut HttpHook)| {
            let mut h = good.clone();
            f(&mut h);
            validate_hook("on_claim", &ClaimHook { http: Some(h), ..Default::default() }).unwrap_err().field
        };
        assert_eq!(bad(|h| h.port = 0), "on_claim.http.port");
        assert_eq!(bad(|h| h.path = "http://evil/x".into()), "on_claim.http.path");
        assert_eq!(bad(|h| h.path = "/a/../b".into()), "on_claim.http.path");
        assert_eq!(bad(|h| h.path = "/a/%2e%2e/b".into()), "on_claim.http.path");
        assert_eq!(bad(|h| h.path = "/a b".into()), "on_claim.http.path");
        assert_eq!(bad(|h| h.path = "//host/x".into()), "on_claim.http.path");
        assert_eq!(bad(|h| h.ready.as_mut().unwrap().value = None), "on_claim.http.ready");
        assert_eq!(
            bad(|h| {
                h.body.insert("k".into(), "1BAD".into());
            }),
            "on_claim.http.body.k"
        );
        let both = ClaimHook { http: Some(good.clone()), exec: vec!["x".into()], ..Default::default() };
        assert_eq!(validate_hook("on_claim", &both).unwrap_err().field, "on_claim");
        let ready = ClaimHook { http: Some(good.clone()), ready: vec!["true".into()], ..Default::default() };
        assert_eq!(validate_hook("on_claim", &ready).unwrap_err().field, "on_claim.ready");

        let params = ClaimParams {
            env: [("S3_BUCKET".to_owned(), "b\"x".to_owned()), ("VNC_PASSWORD".to_owned(), "p".to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(http_body(&good, &params), serde_json::json!({"bucket": "b\"x"}), "only mapped, given keys");
        let plain = HttpHook { body: BTreeMap::new(), ..good };
        assert_eq!(http_body(&plain, &params), serde_json::json!({"S3_BUCKET": "b\"x", "VNC_PASSWORD": "p"}));
        assert!(json_field_is(br#"{"status":"success"}"#, "status", &["success".into()]));
        assert!(!json_field_is(br#"{"status":"error"}"#, "status", &["success".into()]));
        assert!(!json_field_is(b"not json", "status", &["success".into()]));
    }

    #[test]
    fn placeholders_expand_per_environment() {
        let id = "0190aaaabbbbccccdddd0000a1b2c3d4";
        assert_eq!(short_id(id), "a1b2c3d4");
        let env: BTreeMap<String, String> = [
            ("CODE_BASE_PATH".to_owned(), "/code/${LAPSE_SHORT_ID}".to_owned()),
            ("A".to_owned(), "${LAPSE_ENVIRONMENT_ID}".to_owned()),
        ]
        .into();
        let out = expand_env(&env, id).unwrap();
        assert_eq!(out["CODE_BASE_PATH"], "/code/a1b2c3d4");
        assert_eq!(out["A"], id);
        assert_eq!(expand_env(&[("A".to_owned(), "plain".to_owned())].into(), id), None);
    }
}

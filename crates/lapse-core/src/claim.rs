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
//!    path, or `exec`: the command runs with `params.env` added to its environment;
//! 3. `ready` (if given) is run until it exits 0, all within `timeout`.
//!
//! Every step is a plain argv ([`delivery`]): a value reaches the program as one argument,
//! never through a shell's parsing. A hook that fails or times out gets the member recycled
//! and the claim tries the next member, then a cold start: never a half-assigned environment.

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

/// How a pool's members take a claim's parameters: exactly one of `exec` and `file`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimHook {
    /// A command run inside the member with the parameters' `env` added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<String>,
    /// A path inside the member the parameters are written to, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
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
    match (hook.exec.is_empty(), &hook.file) {
        (true, None) => return fail(field, "give exec (a command) or file (a path)"),
        (false, Some(_)) => return fail(field, "give exec or file, not both"),
        _ => {}
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
}

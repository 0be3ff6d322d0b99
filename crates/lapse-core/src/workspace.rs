//! S3 workspaces of a spec (`spec.workspace`): what is synced, validated, and the exclude rule.
//!
//! `workspace = { bucket, prefix, region, endpoint, path, sync_interval, exclude }` names an S3
//! location and a directory inside the environment. The server pulls the location into the
//! directory once the environment runs (the directory made to hold every object), pushes the
//! directory to it every `sync_interval` and before a stop, expiry or delete (the location made
//! to match the directory: changed files uploaded, objects of removed files deleted), skipping
//! the `exclude` patterns both ways. This is rclone's `sync`, as the Classla seed runs it.
//!
//! Credentials are never in the spec (a spec is stored and shown): the server's own AWS chain
//! signs every request. Absent, `workspace` is left out of the spec's JSON, so `Spec::hash` of
//! specs without one is what it was before.
//!
//! Exclude patterns are rclone's globs: `*` any characters but `/`, `**` any characters, `?`
//! one character but `/`; a pattern starting with `/` is anchored at the workspace's root,
//! any other matches at every depth (`.git/**` excludes `a/.git/config` too). A pattern
//! ending in `/**` also excludes the directory itself.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validate::FieldError;
use crate::wire::DurationInput;

/// The seed's excludes (its rclone command line), used when `exclude` is not given.
pub const DEFAULT_EXCLUDES: &[&str] = &[".git/**", "node_modules/**", "__pycache__/**", ".vscode/**", ".idea/**"];
/// The seed's push interval.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(15);
pub const MIN_SYNC_INTERVAL: Duration = Duration::from_secs(5);
pub const MAX_SYNC_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_REGION: &str = "us-east-1";
pub const MAX_EXCLUDES: usize = 64;
pub const MAX_PATTERN: usize = 256;
pub const MAX_PREFIX: usize = 512;
pub const MAX_PATH: usize = 1024;
pub const MAX_ENDPOINT: usize = 512;
/// The file a pull writes into the directory (never pushed, never pulled): a push deletes
/// objects only while it holds the token of the last pull, so a directory that was never
/// pulled (a resource made afresh) cannot empty the workspace.
pub const TOKEN_FILE: &str = ".lapse-sync";

/// `spec.workspace`: an S3 location synced with a directory of the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Workspace {
    /// The bucket (S3's naming rules: 3 to 63 of `a-z 0-9 . -`).
    pub bucket: String,
    /// Keys under this prefix (`course/ada`; no `..` segment, no leading `/`); empty for the
    /// whole bucket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// The bucket's region (default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// An S3-compatible endpoint (`http(s)://host[:port]`) instead of AWS's; it must be one
    /// the server allows (`--workspace-endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The directory inside the environment (absolute, not `/`).
    pub path: String,
    /// Time between pushes (default 15 s; 5 s to 1 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval: Option<DurationInput>,
    /// Patterns never pushed nor pulled; absent, the seed's ([`DEFAULT_EXCLUDES`]); `[]`
    /// excludes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<String>>,
}

fn fail<T>(field: &str, message: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError { field: format!("spec.workspace.{field}"), message: message.into() })
}

impl Workspace {
    /// Checks every field; each refusal names its field (`spec.workspace.bucket`).
    pub fn validate(&self) -> Result<(), FieldError> {
        bucket(&self.bucket)?;
        prefix(&self.prefix)?;
        if let Some(r) = &self.region
            && (r.is_empty()
                || r.len() > 32
                || !r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        {
            return fail("region", "a region is 1 to 32 of a-z, 0-9 and '-' (us-east-1)");
        }
        if let Some(e) = &self.endpoint {
            endpoint(e)?;
        }
        path(&self.path)?;
        self.interval()?;
        if let Some(patterns) = &self.exclude {
            if patterns.len() > MAX_EXCLUDES {
                return fail("exclude", format!("at most {MAX_EXCLUDES} patterns"));
            }
            for p in patterns {
                if p.is_empty() || p.len() > MAX_PATTERN || p.chars().any(char::is_control) {
                    return fail(
                        "exclude",
                        format!("a pattern is 1 to {MAX_PATTERN} characters, no control characters"),
                    );
                }
            }
        }
        Ok(())
    }

    /// The push interval, default filled in.
    pub fn interval(&self) -> Result<Duration, FieldError> {
        let Some(i) = &self.sync_interval else { return Ok(DEFAULT_SYNC_INTERVAL) };
        let d = i.to_duration(MAX_SYNC_INTERVAL).or_else(|e| fail("sync_interval", e.to_string()))?;
        if d < MIN_SYNC_INTERVAL {
            return fail("sync_interval", "at least 5 s");
        }
        Ok(d)
    }

    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }

    /// The key prefix objects are under: empty, or the prefix ending in `/`.
    pub fn key_prefix(&self) -> String {
        let p = self.prefix.trim_end_matches('/');
        if p.is_empty() { String::new() } else { format!("{p}/") }
    }

    /// The patterns in force (the defaults when `exclude` is absent).
    pub fn excludes(&self) -> Excludes {
        match &self.exclude {
            Some(p) => Excludes(p.clone()),
            None => Excludes(DEFAULT_EXCLUDES.iter().map(|s| (*s).to_owned()).collect()),
        }
    }
}

/// The sync state of an environment's workspace, as the store keeps it (times in ms).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkspaceStatus {
    /// Set by a successful pull, which wrote it into the directory ([`TOKEN_FILE`]).
    pub pull_token: Option<String>,
    pub last_pull_at: Option<crate::Millis>,
    pub last_push_at: Option<crate::Millis>,
    pub last_error: Option<String>,
    pub last_error_at: Option<crate::Millis>,
    pub pushes: u64,
    /// A forced delete: the final push is skipped.
    pub force: bool,
}

/// `GET /v1/environments/{id}/workspace`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceView {
    /// The directory holds a successful pull: pushes run (every `sync_interval`, and before a
    /// stop, expiry or delete).
    pub pulled: bool,
    pub last_pull_at: Option<String>,
    pub last_push_at: Option<String>,
    /// The last failure, cleared by the next success.
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Successful pushes so far.
    pub pushes: u64,
    /// A forced delete: the final push is skipped.
    pub force: bool,
}

impl From<&WorkspaceStatus> for WorkspaceView {
    fn from(s: &WorkspaceStatus) -> Self {
        let at = |t: Option<crate::Millis>| t.map(crate::format_millis);
        WorkspaceView {
            pulled: s.pull_token.is_some(),
            last_pull_at: at(s.last_pull_at),
            last_push_at: at(s.last_push_at),
            last_error: s.last_error.clone(),
            last_error_at: at(s.last_error_at),
            pushes: s.pushes,
            force: s.force,
        }
    }
}

/// S3's bucket naming rules (general purpose buckets).
fn bucket(b: &str) -> Result<(), FieldError> {
    let rule = "a bucket name is 3 to 63 of a-z, 0-9, '.' and '-', starting and ending with a letter or digit";
    let bytes = b.as_bytes();
    if !(3..=63).contains(&b.len())
        || !bytes.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[b.len() - 1].is_ascii_alphanumeric()
    {
        return fail("bucket", rule);
    }
    if b.contains("..") || b.contains(".-") || b.contains("-.") {
        return fail("bucket", "a bucket name has no '..', '.-' or '-.'");
    }
    if b.parse::<std::net::Ipv4Addr>().is_ok() {
        return fail("bucket", "a bucket name is not an IP address");
    }
    if b.starts_with("xn--") || b.starts_with("sthree-") || b.ends_with("-s3alias") || b.ends_with("--ol-s3") {
        return fail("bucket", "the prefixes xn-- and sthree- and the suffixes -s3alias and --ol-s3 are reserved");
    }
    Ok(())
}

fn prefix(p: &str) -> Result<(), FieldError> {
    if p.len() > MAX_PREFIX {
        return fail("prefix", format!("at most {MAX_PREFIX} bytes"));
    }
    if p.chars().any(|c| c.is_control() || c == '\\') {
        return fail("prefix", "no control characters or backslashes");
    }
    if p.starts_with('/') {
        return fail("prefix", "a prefix does not start with '/'");
    }
    let trimmed = p.trim_end_matches('/');
    if !trimmed.is_empty() && trimmed.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return fail("prefix", "no empty, '.' or '..' segments");
    }
    Ok(())
}

fn endpoint(e: &str) -> Result<(), FieldError> {
    let rest = e.strip_prefix("https://").or_else(|| e.strip_prefix("http://"));
    let Some(rest) = rest else { return fail("endpoint", "an endpoint is an http:// or https:// URL") };
    let host = rest.trim_end_matches('/');
    if e.len() > MAX_ENDPOINT
        || host.is_empty()
        || host.contains(['/', '?', '#', '@'])
        || !host.bytes().all(|b| b.is_ascii_graphic())
    {
        return fail("endpoint", "an endpoint is a scheme and host[:port] only (http://127.0.0.1:9000)");
    }
    Ok(())
}

fn path(p: &str) -> Result<(), FieldError> {
    if !p.starts_with('/') || p.len() > MAX_PATH || p.contains('\0') {
        return fail("path", format!("an absolute path of at most {MAX_PATH} bytes"));
    }
    let segments: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() {
        return fail("path", "not the root directory");
    }
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return fail("path", "no '.' or '..' segments");
    }
    Ok(())
}

/// The exclude patterns of a workspace ([`Workspace::excludes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Excludes(pub Vec<String>);

impl Excludes {
    /// Whether `rel` (a `/`-separated path relative to the workspace, no leading `/`) is
    /// excluded; `is_dir` for a directory (matched by `dir/**` itself).
    pub fn matches(&self, rel: &str, is_dir: bool) -> bool {
        self.0.iter().any(|p| pattern_matches(p, rel, is_dir))
    }
}

fn pattern_matches(pattern: &str, rel: &str, is_dir: bool) -> bool {
    let (anchored, pattern) = match pattern.strip_prefix('/') {
        Some(p) => (true, p),
        None => (false, pattern),
    };
    let candidates = |rel: &str| -> bool {
        if anchored {
            return glob(pattern.as_bytes(), rel.as_bytes());
        }
        // At every depth: the path itself and each suffix that starts a segment.
        std::iter::once(0)
            .chain(rel.match_indices('/').map(|(i, _)| i + 1))
            .any(|start| glob(pattern.as_bytes(), &rel.as_bytes()[start..]))
    };
    if candidates(rel) {
        return true;
    }
    // `dir/**` excludes `dir` itself.
    is_dir && pattern.ends_with("/**") && candidates(&format!("{rel}/x"))
}

/// `*` (not `/`), `**` (anything), `?` (one byte, not `/`), anything else literally.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => {
            let end = s.iter().position(|c| *c == b'/').unwrap_or(s.len());
            (0..=end).any(|i| glob(rest, &s[i..]))
        }
        [b'?', rest @ ..] => matches!(s, [c, tail @ ..] if *c != b'/' && glob(rest, tail)),
        [c, rest @ ..] => matches!(s, [d, tail @ ..] if d == c && glob(rest, tail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> Workspace {
        Workspace { bucket: "student-42".into(), path: "/workspace".into(), ..Default::default() }
    }

    fn check(f: impl FnOnce(&mut Workspace), field: Option<&str>) {
        let mut w = ws();
        f(&mut w);
        match (w.validate(), field) {
            (Ok(()), None) => {}
            (Err(e), Some(f)) => assert_eq!(e.field, format!("spec.workspace.{f}"), "{e}"),
            (got, want) => panic!("{w:?}: got {got:?}, want refusal of {want:?}"),
        }
    }

    #[test]
    fn fields_are_validated() {
        check(|_| {}, None);
        for bad in ["ab", "UPPER", "-lead", "trail-", "a..b", "192.168.0.1", "xn--abc", "a_b", "a b", &"x".repeat(64)] {
            check(|w| w.bucket = bad.into(), Some("bucket"));
        }
        check(|w| w.bucket = "my.bucket-1".into(), None);
        for bad in ["../x", "a/../b", "/abs", "a//b", "a\\b", "a/./b", "a\n"] {
            check(|w| w.prefix = bad.into(), Some("prefix"));
        }
        check(|w| w.prefix = "course/ada/".into(), None);
        for bad in ["relative", "/", "//", "/a/../etc", "/a/./b", "/a\0"] {
            check(|w| w.path = bad.into(), Some("path"));
        }
        for bad in ["ftp://x", "http://", "http://h/path", "http://u@h", "http://h h"] {
            check(|w| w.endpoint = Some(bad.into()), Some("endpoint"));
        }
        check(|w| w.endpoint = Some("http://127.0.0.1:9000".into()), None);
        check(|w| w.sync_interval = Some(DurationInput::Seconds(4)), Some("sync_interval"));
        check(|w| w.sync_interval = Some(DurationInput::Text("2h".into())), Some("sync_interval"));
        check(|w| w.sync_interval = Some(DurationInput::Text("1m".into())), None);
        check(|w| w.exclude = Some(vec!["x".into(); MAX_EXCLUDES + 1]), Some("exclude"));
        check(|w| w.exclude = Some(vec![String::new()]), Some("exclude"));
        check(|w| w.region = Some("US".into()), Some("region"));
    }

    #[test]
    fn defaults_are_the_seeds() {
        let w = ws();
        assert_eq!(w.interval().unwrap(), Duration::from_secs(15));
        assert_eq!(w.region(), "us-east-1");
        assert_eq!(w.key_prefix(), "");
        assert_eq!(Workspace { prefix: "a/b/".into(), ..ws() }.key_prefix(), "a/b/");
        let ex = w.excludes();
        for (path, dir, excluded) in [
            (".git", true, true),
            (".git/config", false, true),
            ("src/.git/HEAD", false, true),
            ("node_modules/x/y.js", false, true),
            ("a/__pycache__/m.pyc", false, true),
            (".vscode/settings.json", false, true),
            (".idea", true, true),
            ("main.py", false, false),
            (".gitignore", false, false),
            ("my.git/x", false, false),
        ] {
            assert_eq!(ex.matches(path, dir), excluded, "{path}");
        }
    }

    #[test]
    fn globs() {
        let ex = Excludes(vec!["*.log".into(), "/build/**".into(), "a?c".into()]);
        assert!(ex.matches("x.log", false));
        assert!(ex.matches("d/x.log", false));
        assert!(!ex.matches("x.log.txt", false));
        assert!(ex.matches("build/out", false));
        assert!(ex.matches("build", true));
        assert!(!ex.matches("sub/build/out", false));
        assert!(ex.matches("abc", false));
        assert!(!ex.matches("a/c", false));
    }
}

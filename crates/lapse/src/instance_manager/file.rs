//! instance-manager's `instances.json` (`pkg/storage/file.go`, `pkg/models/instance.go`):
//! `{"instances": {"<id>": {"instance": {"id", "instance_type", "provider", "public_ip"?,
//! "private_ip"?, "state", "launch_time", "duration" (nanoseconds), "availability_zone",
//! "key_name", "username", "expires_at"}, "created_at", "updated_at"}}, "updated_at"}`,
//! times as Go's `time.Time` (RFC 3339, nanoseconds, any offset).
//!
//! **Hostile files are refused whole, with the line and the field**: more than
//! [`MAX_FILE_BYTES`], not JSON, a time that is not RFC 3339, an id that is not an instance
//! id, more than [`MAX_INSTANCES`] entries. Unknown fields are ignored, as Go's decoder does.
//! A zero time (`0001-01-01T00:00:00Z`, Go's unset value) means "not recorded".

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

use serde::{Deserialize, Deserializer};

/// Largest file read (the seed's files hold a few instances; 16 MiB is thousands).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Most instances one file may list.
pub const MAX_INSTANCES: usize = 10_000;

/// One instance the file records, as the import needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedEntry {
    pub id: String,
    /// RFC 3339; `None` when the file records none.
    pub expires_at: Option<String>,
    pub state: String,
    pub key_name: String,
    pub instance_type: String,
    pub availability_zone: String,
}

/// Why a file cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: larger than {MAX_FILE_BYTES} bytes; not an instance-manager file")]
    TooLarge { path: String },
    #[error("{path}:{line}:{column}: {message}")]
    Bad { path: String, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
struct StorageRecord {
    #[serde(default)]
    instances: Option<BTreeMap<String, Option<InstanceRecord>>>,
}

#[derive(Deserialize)]
struct InstanceRecord {
    #[serde(default)]
    instance: Option<Instance>,
}

#[derive(Deserialize)]
struct Instance {
    id: String,
    #[serde(default)]
    instance_type: String,
    #[serde(default)]
    state: String,
    #[serde(default, deserialize_with = "launch_time")]
    launch_time: Option<i64>,
    /// Nanoseconds (Go's `time.Duration`).
    #[serde(default)]
    duration: i64,
    #[serde(default)]
    availability_zone: String,
    #[serde(default)]
    key_name: String,
    #[serde(default, deserialize_with = "expires_at")]
    expires_at: Option<i64>,
}

fn launch_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    go_time(d, "launch_time")
}

fn expires_at<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    go_time(d, "expires_at")
}

/// A Go `time.Time` as milliseconds; `None` for Go's zero time.
fn go_time<'de, D: Deserializer<'de>>(d: D, field: &str) -> Result<Option<i64>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    let Some(text) = text else { return Ok(None) };
    let shown: String = text.chars().take(64).collect();
    let t = chrono::DateTime::parse_from_rfc3339(&text)
        .map_err(|e| serde::de::Error::custom(format!("{field}: {shown:?} is not an RFC 3339 time ({e})")))?;
    if t.timestamp() <= -62_135_596_800 {
        return Ok(None);
    }
    Ok(Some(t.timestamp_millis()))
}

/// Reads and checks the file at `path`.
pub fn read(path: &Path) -> Result<Vec<SeedEntry>, FileError> {
    let shown = path.display().to_string();
    let read_error = |source| FileError::Read { path: shown.clone(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(FileError::TooLarge { path: shown });
    }
    parse(&shown, &bytes)
}

/// Checks a file's bytes (`path` names it in errors).
pub fn parse(path: &str, bytes: &[u8]) -> Result<Vec<SeedEntry>, FileError> {
    let record: StorageRecord = serde_json::from_slice(bytes).map_err(|e| FileError::Bad {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    })?;
    let invalid = |message: String| FileError::Invalid { path: path.to_owned(), message };
    let instances = record.instances.unwrap_or_default();
    if instances.len() > MAX_INSTANCES {
        return Err(invalid(format!("{} instances; at most {MAX_INSTANCES} per file", instances.len())));
    }
    let mut out = Vec::with_capacity(instances.len());
    for (key, entry) in instances {
        let shown_key: String = key.chars().take(64).collect();
        let Some(i) = entry.and_then(|e| e.instance) else {
            return Err(invalid(format!("instances.{shown_key:?}: no \"instance\" object")));
        };
        if !lapse_server::adopt::is_provider_ref(&i.id) || !i.id.starts_with("i-") {
            let id: String = i.id.chars().take(64).collect();
            return Err(invalid(format!(
                "instances.{shown_key:?}.instance.id: {id:?} is not an EC2 instance id (i-...)"
            )));
        }
        // Go's own `ExpiresAt = LaunchTime + Duration`, when the expiry itself is unset.
        let expires = i.expires_at.or_else(|| Some(i.launch_time? + i.duration.checked_div(1_000_000)?));
        out.push(SeedEntry {
            id: i.id,
            expires_at: expires.map(lapse_core::format_millis),
            state: i.state,
            key_name: i.key_name,
            instance_type: i.instance_type,
            availability_zone: i.availability_zone,
        });
    }
    Ok(out)
}

/// serde_json's message without its trailing " at line L column C" (the error says it).
fn strip_position(text: &str) -> String {
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text.to_owned(),
    }
}

/// The seed's default file: `~/.instance-manager/instances.json`, else
/// `/tmp/instance-manager.json` without a home.
pub fn default_path() -> std::path::PathBuf {
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Path::new(&home).join(".instance-manager").join("instances.json"),
        None => "/tmp/instance-manager.json".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as the seed's `FileStorage.saveData` writes it.
    const SEED_FILE: &str = r#"{
  "instances": {
    "i-0123456789abcdef0": {
      "instance": {
        "id": "i-0123456789abcdef0",
        "instance_type": "t2.micro",
        "provider": "",
        "public_ip": "54.1.2.3",
        "state": "running",
        "launch_time": "2026-12-01T10:00:00.123456789-05:00",
        "duration": 7200000000000,
        "availability_zone": "us-east-1a",
        "key_name": "instance-manager-0011223344556677",
        "username": "ec2-user",
        "expires_at": "2026-12-01T12:00:00.123456789-05:00"
      },
      "created_at": "2026-12-01T10:00:01Z",
      "updated_at": "2026-12-01T10:00:01Z"
    }
  },
  "updated_at": "2026-12-01T10:00:01Z"
}"#;

    #[test]
    fn reads_the_seeds_format() {
        let entries = parse("f", SEED_FILE.as_bytes()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "i-0123456789abcdef0");
        assert_eq!(entries[0].expires_at.as_deref(), Some("2026-12-01T17:00:00.123Z"));
        assert_eq!(entries[0].instance_type, "t2.micro");
        assert_eq!(entries[0].key_name, "instance-manager-0011223344556677");
    }

    #[test]
    fn zero_expiry_falls_back_to_launch_plus_duration() {
        let text = SEED_FILE.replace("2026-12-01T12:00:00.123456789-05:00", "0001-01-01T00:00:00Z");
        let entries = parse("f", text.as_bytes()).unwrap();
        assert_eq!(entries[0].expires_at.as_deref(), Some("2026-12-01T17:00:00.123Z"));
    }

    #[test]
    fn hostile_files_name_the_line_and_field() {
        let bad_date = SEED_FILE.replace("2026-12-01T12:00:00.123456789-05:00", "next tuesday");
        let e = parse("f", bad_date.as_bytes()).unwrap_err().to_string();
        // The line is where the parser noticed: the end of the object holding the field.
        assert!(e.starts_with("f:16:"), "{e}");
        assert!(e.contains("expires_at: \"next tuesday\" is not an RFC 3339 time"), "{e}");

        let e = parse("f", b"{\"instances\": {,}}").unwrap_err().to_string();
        assert!(e.starts_with("f:1:"), "{e}");

        let e = parse("f", b"[1,2]").unwrap_err().to_string();
        assert!(e.contains("f:1:"), "{e}");

        let bad_id = SEED_FILE.replace("\"id\": \"i-0123456789abcdef0\"", "\"id\": \"../../etc\"");
        let e = parse("f", bad_id.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("instance.id") && e.contains("not an EC2 instance id"), "{e}");

        let e = parse("f", br#"{"instances": {"x": {}}}"#).unwrap_err().to_string();
        assert!(e.contains("no \"instance\" object"), "{e}");

        let e = parse("f", br#"{"instances": {"i-1": {"instance": {"id": 5}}}}"#).unwrap_err().to_string();
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn empty_and_huge_files() {
        assert!(parse("f", b"{}").unwrap().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.json");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        assert!(matches!(read(&path), Err(FileError::TooLarge { .. })));
    }
}

//! The SWIM queue messages and what each one means, without IO (the cloud-init file is read
//! by [`super::cloud_init`]).
//!
//! A message is bytes from a hostile producer: [`parse_bytes`] checks its size **before**
//! anything else, then that it is UTF-8, then parses the JSON; each refusal says why, and none
//! can panic (property-tested below and fuzzed in `fuzz/`).

use std::collections::BTreeMap;
use std::time::Duration;

use lapse_core::model::{Resources, Spec};
use lapse_core::validate;
use serde::Deserialize;

use super::SwimConfig;

/// The label that holds a SWIM environment's `LabID`.
pub const LAB_LABEL: &str = "swim.lab_id";
/// The label that holds the `CloudInitFile` path the request named.
pub const CLOUD_INIT_LABEL: &str = "swim.cloud_init_file";
pub const SECURITY_GROUP_LABEL: &str = "swim.security_group";
pub const INSTANCE_TYPE_LABEL: &str = "swim.instance_type";
pub const IMAGE_LABEL: &str = "swim.image";

/// A lab id: the seed sends numbers; strings of name characters are taken too.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum LabId {
    Number(i64),
    Text(String),
}

impl LabId {
    /// The label value, refused if it cannot be one.
    pub fn text(&self) -> Result<String, String> {
        match self {
            LabId::Number(n) => Ok(n.to_string()),
            LabId::Text(s) => {
                validate::name("LabID", s).map_err(|e| format!("LabID {}", e.message))?;
                Ok(s.clone())
            }
        }
    }
}

/// `swim:provision:queue`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ProvisionRequest {
    #[serde(rename = "WebUsername")]
    pub web_username: String,
    #[serde(rename = "LabID")]
    pub lab_id: LabId,
    #[serde(rename = "CloudInitFile")]
    pub cloud_init_file: String,
    /// Minutes; fractions are taken (the seed sends whole minutes).
    #[serde(rename = "TTLMinutes")]
    pub ttl_minutes: f64,
    #[serde(rename = "SecurityGroupName", default)]
    pub security_group: Option<String>,
    #[serde(rename = "ImageID", default)]
    pub image_id: Option<String>,
    #[serde(rename = "InstanceType", default)]
    pub instance_type: Option<String>,
    /// The producer's key: two messages with the same one are applied once.
    #[serde(rename = "IdempotencyKey", default)]
    pub idempotency_key: Option<String>,
}

/// `swim:decomission:queue`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct DecommissionRequest {
    #[serde(rename = "WebUsername")]
    pub web_username: String,
    #[serde(rename = "LabID", default)]
    pub lab_id: Option<LabId>,
    /// The producer's key: two messages with the same one are applied once.
    #[serde(rename = "IdempotencyKey", default)]
    pub idempotency_key: Option<String>,
}

/// Why a queue entry is not a request at all.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MessageError {
    #[error("the message is {length} bytes, over this server's limit of {limit} (SWIM_MAX_MESSAGE_BYTES)")]
    TooLarge { length: u64, limit: usize },
    #[error("the message is not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("not a valid request: {0}")]
    Malformed(String),
}

/// Parses a queue entry: refused unless at most `limit` bytes (checked first), UTF-8 and a
/// JSON request of type `T`.
pub fn parse_bytes<T: serde::de::DeserializeOwned>(raw: &[u8], limit: usize) -> Result<T, MessageError> {
    if raw.len() > limit {
        return Err(MessageError::TooLarge { length: raw.len() as u64, limit });
    }
    let text = std::str::from_utf8(raw).map_err(|e| MessageError::NotUtf8 { offset: e.valid_up_to() })?;
    serde_json::from_str(text).map_err(|e| MessageError::Malformed(e.to_string()))
}

/// Parses a message, with serde's words for what is wrong (`missing field `TTLMinutes``).
pub fn parse<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, String> {
    serde_json::from_str(raw).map_err(|e| MessageError::Malformed(e.to_string()).to_string())
}

/// The longest `IdempotencyKey`.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Checks an `IdempotencyKey`: 1 to 128 ASCII letters, digits and `.`, `_`, `-`, `:` (a UUID,
/// a ULID, a hash, `lab-7:ann:2024-05-01`).
pub fn idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(format!("IdempotencyKey must be 1 to {MAX_IDEMPOTENCY_KEY} characters, not {}", key.len()));
    }
    if let Some(c) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))) {
        return Err(format!("IdempotencyKey may hold only letters, digits and . _ - :, not {c:?}"));
    }
    Ok(())
}

/// What a provision request asks for, checked: the environment's owner, labels, spec and TTL.
#[derive(Clone, Debug, PartialEq)]
pub struct Provision {
    pub owner: String,
    pub lab: String,
    pub labels: BTreeMap<String, String>,
    pub spec: Spec,
    pub ttl: Duration,
    pub idempotency_key: Option<String>,
}

/// Scaleway's instance types (vCPU, memory in MiB), for providers that take resources.
const INSTANCE_TYPES: &[(&str, f64, u64)] = &[
    ("STARDUST1-S", 1.0, 1024),
    ("DEV1-S", 2.0, 2048),
    ("DEV1-M", 3.0, 4096),
    ("DEV1-L", 4.0, 8192),
    ("DEV1-XL", 4.0, 12288),
    ("PLAY2-PICO", 1.0, 2048),
    ("PLAY2-NANO", 2.0, 4096),
    ("PLAY2-MICRO", 4.0, 8192),
    ("PRO2-XXS", 2.0, 8192),
    ("PRO2-XS", 4.0, 16384),
    ("PRO2-S", 8.0, 32768),
    ("GP1-XS", 4.0, 16384),
    ("GP1-S", 8.0, 32768),
];

/// The resources of an instance type, case-insensitively.
pub fn instance_type(name: &str) -> Result<Resources, String> {
    INSTANCE_TYPES
        .iter()
        .find(|(n, ..)| n.eq_ignore_ascii_case(name))
        .map(|(_, vcpu, mem)| Resources { vcpu: Some(*vcpu), mem_mb: Some(*mem), disk_gb: None })
        .ok_or_else(|| {
            let known: Vec<&str> = INSTANCE_TYPES.iter().map(|(n, ..)| *n).collect();
            format!("unknown InstanceType {name:?}; known: {}", known.join(", "))
        })
}

/// Checks a provision request and turns it into what to create, with `user_data` the
/// cloud-init file's text. Request values win over the configured defaults.
pub fn provision(
    req: &ProvisionRequest,
    cfg: &SwimConfig,
    user_data: String,
    max_ttl: Duration,
) -> Result<Provision, String> {
    validate::owner(&req.web_username).map_err(|e| format!("WebUsername {}", e.message))?;
    let lab = req.lab_id.text()?;
    if let Some(key) = &req.idempotency_key {
        idempotency_key(key)?;
    }
    let minutes = req.ttl_minutes;
    if !(minutes.is_finite() && minutes > 0.0) {
        return Err(format!("TTLMinutes must be above 0, not {minutes}"));
    }
    let ttl = Duration::from_secs_f64(minutes.min(1e9) * 60.0);
    if ttl > max_ttl {
        return Err(format!(
            "TTLMinutes {minutes} is above this server's longest TTL ({} minutes)",
            max_ttl.as_secs() / 60
        ));
    }
    let image = req.image_id.clone().or_else(|| cfg.default_image.clone());
    let instance = req.instance_type.clone().or_else(|| cfg.default_instance_type.clone());
    let security_group = req.security_group.clone().or_else(|| cfg.default_security_group.clone());
    let mut spec = Spec { provider: cfg.provider.clone(), user_data: Some(user_data), ..Default::default() };
    if let Some(name) = &instance {
        spec.resources = Some(instance_type(name)?);
    }
    if let Some(cmd) = &cfg.default_cmd {
        spec.cmd = vec!["/bin/sh".into(), "-c".into(), cmd.clone()];
    }
    // Local processes have no image: the request's is kept as a label only.
    if spec.provider != "process" {
        spec.image = image.clone();
    }
    let mut labels = BTreeMap::from([
        (LAB_LABEL.to_owned(), lab.clone()),
        (CLOUD_INIT_LABEL.to_owned(), req.cloud_init_file.clone()),
    ]);
    for (key, value) in [(SECURITY_GROUP_LABEL, security_group), (INSTANCE_TYPE_LABEL, instance), (IMAGE_LABEL, image)]
    {
        if let Some(value) = value {
            labels.insert(key.to_owned(), value);
        }
    }
    validate::labels(&labels).map_err(|e| format!("{}: {}", e.field, e.message))?;
    let idempotency_key = req.idempotency_key.clone();
    Ok(Provision { owner: req.web_username.clone(), lab, labels, spec, ttl, idempotency_key })
}

/// What a decommission request asks for, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Decommission {
    /// Whose environments (only those SWIM made).
    pub owner: String,
    /// Only those of this `LabID`, if given.
    pub lab: Option<String>,
    pub idempotency_key: Option<String>,
}

/// Checks a decommission request: the owner, and the lab label to match if one is given.
pub fn decommission(req: &DecommissionRequest) -> Result<Decommission, String> {
    validate::owner(&req.web_username).map_err(|e| format!("WebUsername {}", e.message))?;
    let lab = req.lab_id.as_ref().map(LabId::text).transpose()?;
    if let Some(key) = &req.idempotency_key {
        idempotency_key(key)?;
    }
    Ok(Decommission { owner: req.web_username.clone(), lab, idempotency_key: req.idempotency_key.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SwimConfig {
        let mut cfg = SwimConfig::new("redis://127.0.0.1:6379");
        cfg.provider = "docker".into();
        cfg.default_image = Some("localhost/lab:1".into());
        cfg.default_instance_type = Some("DEV1-S".into());
        cfg.default_security_group = Some("labs".into());
        cfg
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn the_seed_request_with_defaults_and_overrides() {
        let req: ProvisionRequest =
            parse(r#"{"WebUsername":"test-user","LabID":1234,"CloudInitFile":"./cloud-init.yml","TTLMinutes":30}"#)
                .unwrap();
        let p = provision(&req, &cfg(), "#cloud-config\n".into(), DAY).unwrap();
        assert_eq!(p.owner, "test-user");
        assert_eq!(p.lab, "1234");
        assert_eq!(p.ttl, Duration::from_secs(1800));
        assert_eq!(p.spec.image.as_deref(), Some("localhost/lab:1"));
        assert_eq!(p.spec.resources.as_ref().unwrap().vcpu, Some(2.0));
        assert_eq!(p.spec.user_data.as_deref(), Some("#cloud-config\n"));
        assert_eq!(p.labels[SECURITY_GROUP_LABEL], "labs");
        assert_eq!(p.labels[CLOUD_INIT_LABEL], "./cloud-init.yml");

        let req: ProvisionRequest = parse(
            r#"{"WebUsername":"u","LabID":"lab-7","CloudInitFile":"c","TTLMinutes":1,
                "ImageID":"other:2","InstanceType":"dev1-l","SecurityGroupName":"sg2","Extra":true}"#,
        )
        .unwrap();
        let p = provision(&req, &cfg(), String::new(), DAY).unwrap();
        assert_eq!(p.spec.image.as_deref(), Some("other:2"), "the request wins");
        assert_eq!(p.spec.resources.unwrap().mem_mb, Some(8192));
        assert_eq!(p.labels[SECURITY_GROUP_LABEL], "sg2");
        assert_eq!(p.lab, "lab-7");
    }

    #[test]
    fn refusals_say_why() {
        let missing = parse::<ProvisionRequest>(r#"{"WebUsername":"u","LabID":1,"CloudInitFile":"c"}"#).unwrap_err();
        assert!(missing.contains("missing field `TTLMinutes`"), "{missing}");
        assert!(parse::<ProvisionRequest>("{not json").unwrap_err().starts_with("not a valid request"));
        let req = |extra: &str| -> ProvisionRequest {
            parse(&format!(r#"{{"WebUsername":"u","LabID":1,"CloudInitFile":"c","TTLMinutes":5{extra}}}"#)).unwrap()
        };
        assert!(
            provision(&req(r#","InstanceType":"HUGE"}"#.trim_end_matches('}')), &cfg(), String::new(), DAY)
                .unwrap_err()
                .contains("unknown InstanceType")
        );
        let mut r = req("");
        r.ttl_minutes = -1.0;
        assert!(provision(&r, &cfg(), String::new(), DAY).unwrap_err().contains("TTLMinutes"));
        r.ttl_minutes = 60.0 * 48.0;
        assert!(provision(&r, &cfg(), String::new(), DAY).unwrap_err().contains("longest TTL"));
        r.ttl_minutes = 5.0;
        r.web_username = " ".into();
        assert!(provision(&r, &cfg(), String::new(), DAY).unwrap_err().contains("WebUsername"));
        let d: DecommissionRequest = parse(r#"{"WebUsername":"u","LabID":null}"#).unwrap();
        assert_eq!(decommission(&d).unwrap(), Decommission { owner: "u".into(), lab: None, idempotency_key: None });
        let d: DecommissionRequest = parse(r#"{"WebUsername":"u","LabID":12,"IdempotencyKey":"k-1"}"#).unwrap();
        let expected = Decommission { owner: "u".into(), lab: Some("12".into()), idempotency_key: Some("k-1".into()) };
        assert_eq!(decommission(&d).unwrap(), expected);
        assert!(parse::<DecommissionRequest>(r#"{"LabID":12}"#).unwrap_err().contains("WebUsername"));
    }

    #[test]
    fn entries_are_checked_for_size_then_utf8_then_json() {
        let good = br#"{"WebUsername":"u","LabID":1,"CloudInitFile":"c","TTLMinutes":5}"#;
        assert!(parse_bytes::<ProvisionRequest>(good, good.len()).is_ok());
        assert_eq!(
            parse_bytes::<ProvisionRequest>(good, good.len() - 1),
            Err(MessageError::TooLarge { length: good.len() as u64, limit: good.len() - 1 })
        );
        // Size comes first: an over-size entry is never decoded.
        assert!(matches!(parse_bytes::<ProvisionRequest>(&[0xff; 10], 5), Err(MessageError::TooLarge { .. })));
        assert_eq!(parse_bytes::<ProvisionRequest>(b"{\"a\xff", 100), Err(MessageError::NotUtf8 { offset: 3 }));
        let malformed = parse_bytes::<DecommissionRequest>(b"[]", 100).unwrap_err().to_string();
        assert!(malformed.starts_with("not a valid request"), "{malformed}");
    }

    #[test]
    fn idempotency_keys_are_short_and_plain() {
        for good in ["a", "0f8e-11:lab.7_x", &"k".repeat(MAX_IDEMPOTENCY_KEY)] {
            assert_eq!(idempotency_key(good), Ok(()), "{good}");
        }
        for bad in ["", &"k".repeat(MAX_IDEMPOTENCY_KEY + 1), "a b", "é", "a/b", "a\u{0}"] {
            assert!(idempotency_key(bad).is_err(), "{bad:?}");
        }
        let req: ProvisionRequest =
            parse(r#"{"WebUsername":"u","LabID":1,"CloudInitFile":"c","TTLMinutes":5,"IdempotencyKey":"x y"}"#)
                .unwrap();
        assert!(provision(&req, &cfg(), String::new(), DAY).unwrap_err().contains("IdempotencyKey"));
    }
}

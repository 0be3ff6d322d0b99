//! The SWIM queue messages and what each one means, without IO (the cloud-init file is read
//! by [`super::cloud_init`]).
//!
//! A message is bytes from a hostile producer: [`parse_bytes`] checks its size **before**
//! anything else, then that it is UTF-8, then decodes the JSON as the seed's Go code does
//! (`go_json`: keys case-insensitive, the last duplicate wins, `LabID`/`TTLMinutes` Go
//! `int`s); each refusal says why, and none can panic (property-tested in `props.rs`).
//!
//! [`provision`] then checks what the seed's `UnmarshalAndValidate` checks (`WebUsername`,
//! `LabID`, `TTLMinutes` non-zero, in its words: `missing required fields: [...]`), applies
//! the `SWIM_PROVISION_DEFAULT_*` values where the request leaves a field empty, and what
//! Lapse adds: a positive TTL within the server's longest, an owner Lapse can hold, a known
//! instance type ([`instance_types`]), `CloudInitContent` bounded like a file. The seed also
//! requires a `ServerType`, `SecurityGroupName` and `ImageID` after defaults; Lapse does not,
//! since a local provider has no use for a security group and `process` none for an image.

use std::collections::BTreeMap;
use std::time::Duration;

use lapse_core::model::{Resources, Spec};
use lapse_core::validate::{self, MAX_USER_DATA};
use serde::Deserialize;

use super::SwimConfig;

mod go_json;
pub mod instance_types;

use go_json::{GoStruct, Kind};

/// The label that holds a SWIM environment's `LabID`.
pub const LAB_LABEL: &str = "swim.lab_id";
/// The label that holds the `CloudInitFile` path the request named.
pub const CLOUD_INIT_LABEL: &str = "swim.cloud_init_file";
pub const SECURITY_GROUP_LABEL: &str = "swim.security_group";
pub const INSTANCE_TYPE_LABEL: &str = "swim.instance_type";
pub const IMAGE_LABEL: &str = "swim.image";

/// The label that records that the instance type's size is not enforced (the provider
/// cannot enforce resources on this host): `unenforced`.
pub const RESOURCES_LABEL: &str = "swim.resources";

/// The seed's `ProvisionRequest` (`internal/connector/scaleway/request.go`), then Lapse's two
/// additions: the README's `InstanceType` (read only when `ServerType` is empty) and the
/// producer's `IdempotencyKey`.
static PROVISION_STRUCT: GoStruct = GoStruct {
    name: "ProvisionRequest",
    fields: &[
        ("ServerType", Kind::Str),
        ("SecurityGroupName", Kind::Str),
        ("ImageID", Kind::Str),
        ("WebUsername", Kind::Str),
        ("LabID", Kind::Int),
        ("CloudInitFile", Kind::Str),
        ("CloudInitContent", Kind::Str),
        ("TTLMinutes", Kind::Int),
        ("InstanceType", Kind::Str),
        ("IdempotencyKey", Kind::Str),
    ],
};

/// The seed's `DecommissionRequest` (`internal/decommissioner/decommissioner.go`), `LabID`
/// being a `*int`, and the `IdempotencyKey`.
static DECOMMISSION_STRUCT: GoStruct = GoStruct {
    name: "DecommissionRequest",
    fields: &[("WebUsername", Kind::Str), ("LabID", Kind::IntPtr), ("IdempotencyKey", Kind::Str)],
};

/// `swim:provision:queue`, as Go decodes it (`go_json`): `""` and `0` are Go's zero values,
/// which the seed takes for "not given".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProvisionRequest {
    pub server_type: String,
    pub security_group_name: String,
    pub image_id: String,
    pub web_username: String,
    pub lab_id: i64,
    pub cloud_init_file: String,
    pub cloud_init_content: String,
    pub ttl_minutes: i64,
    /// The README's name for `ServerType`; `ServerType` wins when both are given.
    pub instance_type: String,
    /// The producer's key: two messages with the same one are applied once.
    pub idempotency_key: String,
}

impl<'de> Deserialize<'de> for ProvisionRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = PROVISION_STRUCT.decode(d)?;
        Ok(ProvisionRequest {
            server_type: f[0].text().to_owned(),
            security_group_name: f[1].text().to_owned(),
            image_id: f[2].text().to_owned(),
            web_username: f[3].text().to_owned(),
            lab_id: f[4].int().unwrap_or(0),
            cloud_init_file: f[5].text().to_owned(),
            cloud_init_content: f[6].text().to_owned(),
            ttl_minutes: f[7].int().unwrap_or(0),
            instance_type: f[8].text().to_owned(),
            idempotency_key: f[9].text().to_owned(),
        })
    }
}

/// `swim:decomission:queue`, as Go decodes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecommissionRequest {
    pub web_username: String,
    /// `None` when absent or `null`: every lab of the user.
    pub lab_id: Option<i64>,
    pub idempotency_key: String,
}

impl<'de> Deserialize<'de> for DecommissionRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = DECOMMISSION_STRUCT.decode(d)?;
        Ok(DecommissionRequest {
            web_username: f[0].text().to_owned(),
            lab_id: f[1].int(),
            idempotency_key: f[2].text().to_owned(),
        })
    }
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
pub fn idempotency_key_check(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(format!("IdempotencyKey must be 1 to {MAX_IDEMPOTENCY_KEY} characters, not {}", key.len()));
    }
    if let Some(c) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))) {
        return Err(format!("IdempotencyKey may hold only letters, digits and . _ - :, not {c:?}"));
    }
    Ok(())
}

/// What a provision request asks for, checked: the environment's owner, name, labels, spec
/// and TTL, and the cloud-init file still to read.
#[derive(Clone, Debug, PartialEq)]
pub struct Provision {
    pub owner: String,
    /// `lab<LabID>-<8 random a-z>`, the seed's server name.
    pub name: String,
    pub lab: i64,
    pub labels: BTreeMap<String, String>,
    /// `user_data` is `CloudInitContent` when no file is named.
    pub spec: Spec,
    /// The instance type, when the request or the default names one.
    pub instance_type: Option<String>,
    pub ttl: Duration,
    /// The `CloudInitFile` to read into `spec.user_data`, if the request names one.
    pub cloud_init_file: Option<String>,
    pub idempotency_key: Option<String>,
}

/// The resources of an instance type (see [`instance_types`]).
pub fn instance_type(name: &str) -> Result<Resources, String> {
    instance_types::resources(name)
}

/// The first value that is not Go's zero value `""`.
fn first_set<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> Option<String> {
    values.into_iter().flatten().find(|v| !v.is_empty()).map(str::to_owned)
}

/// Checks a provision request as the seed's `UnmarshalAndValidate` does, then as Lapse must,
/// and turns it into what to create. Request values win over the configured defaults
/// (`ServerType`, then `InstanceType`, then the default type). Reads no file.
pub fn provision(req: &ProvisionRequest, cfg: &SwimConfig, max_ttl: Duration) -> Result<Provision, String> {
    // The seed's required fields, in its order and words. Its other three (`ServerType`,
    // `SecurityGroupName`, `ImageID`) mean nothing to a local provider and are optional here.
    let missing: Vec<&str> = [
        ("WebUsername", req.web_username.is_empty()),
        ("LabID", req.lab_id == 0),
        ("TTLMinutes", req.ttl_minutes == 0),
    ]
    .into_iter()
    .filter_map(|(name, missing)| missing.then_some(name))
    .collect();
    if !missing.is_empty() {
        return Err(format!("missing required fields: [{}]", missing.join(" ")));
    }
    validate::owner(&req.web_username).map_err(|e| format!("WebUsername {}", e.message))?;
    let idempotency_key = first_set([Some(req.idempotency_key.as_str())]);
    if let Some(key) = &idempotency_key {
        idempotency_key_check(key)?;
    }
    let minutes = req.ttl_minutes;
    if minutes < 0 {
        return Err(format!("TTLMinutes must be above 0, not {minutes}"));
    }
    let ttl_ms = u128::from(minutes.unsigned_abs()) * 60_000;
    if ttl_ms > max_ttl.as_millis() {
        return Err(format!(
            "TTLMinutes {minutes} is above this server's longest TTL ({} minutes)",
            max_ttl.as_secs() / 60
        ));
    }
    let ttl = Duration::from_millis(ttl_ms as u64);
    let cloud_init_file = first_set([Some(req.cloud_init_file.as_str())]);
    let content = first_set([Some(req.cloud_init_content.as_str())]).filter(|_| cloud_init_file.is_none());
    if let Some(content) = &content {
        if content.len() > MAX_USER_DATA {
            return Err(format!("CloudInitContent is {} bytes, over {MAX_USER_DATA}", content.len()));
        }
        if content.contains('\0') {
            return Err("CloudInitContent contains a NUL byte".to_owned());
        }
    }
    let image = first_set([Some(req.image_id.as_str()), cfg.default_image.as_deref()]);
    // Scaleway's names are upper-case; the label holds that form (prices are keyed by it).
    let instance = first_set([
        Some(req.server_type.as_str()),
        Some(req.instance_type.as_str()),
        cfg.default_instance_type.as_deref(),
    ])
    .map(|t| t.to_ascii_uppercase());
    let security_group = first_set([Some(req.security_group_name.as_str()), cfg.default_security_group.as_deref()]);
    let mut spec = Spec { provider: cfg.provider.clone(), user_data: content, ..Default::default() };
    if lapse_providers::is_cloud(cfg.kind()) {
        // A cloud server, as the seed makes it: the commercial type and the security group go
        // to the cloud, which checks them; no local command.
        spec.cloud = Some(lapse_core::model::CloudSpec {
            instance_type: instance.clone(),
            security_group: security_group.clone(),
            ..Default::default()
        });
    } else {
        if let Some(name) = &instance {
            spec.resources = Some(instance_type(name)?);
        }
        if let Some(cmd) = cfg.default_cmd.as_deref().filter(|c| !c.is_empty()) {
            spec.cmd = vec!["/bin/sh".into(), "-c".into(), cmd.to_owned()];
        }
    }
    // Local processes have no image: the request's is kept as a label only.
    if cfg.kind() != "process" {
        spec.image = image.clone();
    }
    let mut labels = BTreeMap::from([(LAB_LABEL.to_owned(), req.lab_id.to_string())]);
    for (key, value) in [
        (CLOUD_INIT_LABEL, cloud_init_file.clone()),
        (SECURITY_GROUP_LABEL, security_group),
        (INSTANCE_TYPE_LABEL, instance.clone()),
        (IMAGE_LABEL, image),
    ] {
        if let Some(value) = value {
            labels.insert(key.to_owned(), value);
        }
    }
    validate::labels(&labels).map_err(|e| format!("{}: {}", e.field, e.message))?;
    Ok(Provision {
        owner: req.web_username.clone(),
        name: server_name(req.lab_id),
        lab: req.lab_id,
        labels,
        spec,
        instance_type: instance,
        ttl,
        cloud_init_file,
        idempotency_key,
    })
}

/// The seed's `generateServerName`: `lab<LabID>-` and 8 random lower-case letters (a valid
/// Lapse name: at most 32 characters of `[a-z0-9-]`).
pub fn server_name(lab: i64) -> String {
    let mut bytes = [0u8; 8];
    // The OS random source does not fail on Linux once booted; a failure leaves zeros ("aaaaaaaa").
    let _ = getrandom::fill(&mut bytes);
    let letters: String = bytes.iter().map(|b| char::from(b'a' + b % 26)).collect();
    format!("lab{lab}-{letters}")
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

/// Checks a decommission request: the owner, and the lab label to match if one is given
/// (`LabID: 0` is a lab no provision can have, so it matches nothing, as in the seed).
pub fn decommission(req: &DecommissionRequest) -> Result<Decommission, String> {
    if req.web_username.is_empty() {
        return Err("WebUsername is required in decommission request".to_owned());
    }
    validate::owner(&req.web_username).map_err(|e| format!("WebUsername {}", e.message))?;
    let idempotency_key = first_set([Some(req.idempotency_key.as_str())]);
    if let Some(key) = &idempotency_key {
        idempotency_key_check(key)?;
    }
    Ok(Decommission { owner: req.web_username.clone(), lab: req.lab_id.map(|n| n.to_string()), idempotency_key })
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

    fn checked(json: &str) -> Result<Provision, String> {
        provision(&parse::<ProvisionRequest>(json)?, &cfg(), DAY)
    }

    #[test]
    fn the_seed_request_with_defaults_and_overrides() {
        let p =
            checked(r#"{"WebUsername":"test-user","LabID":1234,"CloudInitFile":"./cloud-init.yml","TTLMinutes":30}"#)
                .unwrap();
        assert_eq!(p.owner, "test-user");
        assert_eq!(p.lab, 1234);
        assert_eq!(p.labels[LAB_LABEL], "1234");
        assert_eq!(p.ttl, Duration::from_secs(1800));
        assert_eq!(p.spec.image.as_deref(), Some("localhost/lab:1"));
        assert_eq!(p.spec.resources.as_ref().unwrap().vcpu, Some(2.0));
        assert_eq!(p.cloud_init_file.as_deref(), Some("./cloud-init.yml"));
        assert_eq!(p.spec.user_data, None, "the file is read later");
        assert_eq!(p.labels[SECURITY_GROUP_LABEL], "labs");
        assert_eq!(p.labels[CLOUD_INIT_LABEL], "./cloud-init.yml");
        let (lab, letters) = p.name.split_once('-').unwrap();
        assert_eq!(lab, "lab1234");
        assert!(letters.len() == 8 && letters.bytes().all(|b| b.is_ascii_lowercase()), "{}", p.name);
        assert!(validate::name("name", &p.name).is_ok());

        let p = checked(
            r##"{"webusername":"u","LABID":-7,"ttlminutes":1,"imageid":"other:2","ServerType":"dev1-l",
                "InstanceType":"GP1-S","securityGroupName":"sg2","CloudInitContent":"#cloud-config\n","Extra":true}"##,
        )
        .unwrap();
        assert_eq!(p.spec.image.as_deref(), Some("other:2"), "the request wins");
        assert_eq!(p.spec.resources.unwrap().mem_mb, Some(8192), "ServerType wins over InstanceType");
        assert_eq!(p.instance_type.as_deref(), Some("DEV1-L"), "in Scaleway's case");
        assert_eq!(p.labels[SECURITY_GROUP_LABEL], "sg2");
        assert_eq!((p.lab, p.name.starts_with("lab-7-")), (-7, true), "a negative LabID is non-zero");
        assert_eq!(p.spec.user_data.as_deref(), Some("#cloud-config\n"), "inline content");
        assert_eq!(p.cloud_init_file, None);
        assert!(!p.labels.contains_key(CLOUD_INIT_LABEL));
        // The README's InstanceType when there is no ServerType; "" is Go's "not given".
        let p = checked(
            r#"{"WebUsername":"u","LabID":1,"TTLMinutes":1,"ServerType":"","InstanceType":"GP1-XS","ImageID":""}"#,
        )
        .unwrap();
        assert_eq!(p.instance_type.as_deref(), Some("GP1-XS"));
        assert_eq!(p.spec.image.as_deref(), Some("localhost/lab:1"));
        // A file wins over inline content, as in the seed.
        let p = checked(r#"{"WebUsername":"u","LabID":1,"TTLMinutes":1,"CloudInitFile":"f","CloudInitContent":"x"}"#)
            .unwrap();
        assert_eq!((p.cloud_init_file.as_deref(), p.spec.user_data), (Some("f"), None));
    }

    #[test]
    fn refusals_say_why() {
        for (json, words) in [
            (r#"{"WebUsername":"u","LabID":1,"CloudInitFile":"c"}"#, "missing required fields: [TTLMinutes]"),
            (r#"{"LabID":0,"TTLMinutes":5}"#, "missing required fields: [WebUsername LabID]"),
            ("null", "missing required fields: [WebUsername LabID TTLMinutes]"),
            (
                r#"{"WebUsername":"u","LabID":"5","TTLMinutes":5}"#,
                "LabID must be a JSON integer (a Go int), not the string \"5\"",
            ),
            (
                r#"{"WebUsername":"u","LabID":5,"TTLMinutes":1.5}"#,
                "TTLMinutes must be a JSON integer (a Go int), not 1.5",
            ),
            (r#"{"WebUsername":"u","LabID":5,"TTLMinutes":5,"ServerType":"HUGE"}"#, "unknown ServerType \"HUGE\""),
            (r#"{"WebUsername":"u","LabID":5,"TTLMinutes":-3}"#, "TTLMinutes must be above 0, not -3"),
            (r#"{"WebUsername":"u","LabID":5,"TTLMinutes":2880}"#, "longest TTL"),
            (r#"{"WebUsername":"u","LabID":5,"TTLMinutes":9223372036854775807}"#, "longest TTL"),
            (r#"{"WebUsername":" ","LabID":5,"TTLMinutes":5}"#, "WebUsername"),
            (r#"{"WebUsername":"u","LabID":5,"TTLMinutes":5,"CloudInitContent":"a\u0000"}"#, "NUL"),
            ("{not json", "not a valid request"),
        ] {
            let e = checked(json).unwrap_err();
            assert!(e.contains(words), "{json}: {e}");
        }
        let big = format!(
            r#"{{"WebUsername":"u","LabID":5,"TTLMinutes":5,"CloudInitContent":"{}"}}"#,
            "#".repeat(MAX_USER_DATA + 1)
        );
        assert!(checked(&big).unwrap_err().contains("CloudInitContent is 65537 bytes, over 65536"));
    }

    #[test]
    fn decommissions_as_the_seed_reads_them() {
        let d = |json: &str| parse::<DecommissionRequest>(json).and_then(|r| decommission(&r));
        assert_eq!(
            d(r#"{"WebUsername":"u","LabID":null}"#).unwrap(),
            Decommission { owner: "u".into(), lab: None, idempotency_key: None }
        );
        let expected = Decommission { owner: "u".into(), lab: Some("12".into()), idempotency_key: Some("k-1".into()) };
        assert_eq!(d(r#"{"webusername":"u","labid":12,"IdempotencyKey":"k-1"}"#).unwrap(), expected);
        assert_eq!(d(r#"{"WebUsername":"u","LabID":12,"LabID":null}"#).unwrap().lab, None, "null nils the pointer");
        assert_eq!(d(r#"{"WebUsername":"u","LabID":0}"#).unwrap().lab.as_deref(), Some("0"));
        assert_eq!(d(r#"{"LabID":12}"#).unwrap_err(), "WebUsername is required in decommission request");
        assert!(d(r#"{"WebUsername":"u","LabID":"12"}"#).unwrap_err().contains("not the string"));
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
            assert_eq!(idempotency_key_check(good), Ok(()), "{good}");
        }
        for bad in [&"k".repeat(MAX_IDEMPOTENCY_KEY + 1), "a b", "é", "a/b", "a\u{0}"] {
            assert!(idempotency_key_check(bad).is_err(), "{bad:?}");
        }
        let e = checked(r#"{"WebUsername":"u","LabID":1,"TTLMinutes":5,"IdempotencyKey":"x y"}"#).unwrap_err();
        assert!(e.contains("IdempotencyKey"), "{e}");
        let p = checked(r#"{"WebUsername":"u","LabID":1,"TTLMinutes":5,"IdempotencyKey":""}"#).unwrap();
        assert_eq!(p.idempotency_key, None, "an empty key is no key (Go's zero value)");
    }
}

//! The SWIM queue messages and what each one means, without IO but for reading the
//! cloud-init file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
}

/// `swim:decomission:queue`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct DecommissionRequest {
    #[serde(rename = "WebUsername")]
    pub web_username: String,
    #[serde(rename = "LabID", default)]
    pub lab_id: Option<LabId>,
}

/// Parses a message, with serde's words for what is wrong (`missing field `TTLMinutes``).
pub fn parse<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, String> {
    serde_json::from_str(raw).map_err(|e| format!("not a valid request: {e}"))
}

/// What a provision request asks for, checked: the environment's owner, labels, spec and TTL.
#[derive(Clone, Debug, PartialEq)]
pub struct Provision {
    pub owner: String,
    pub lab: String,
    pub labels: BTreeMap<String, String>,
    pub spec: Spec,
    pub ttl: Duration,
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

/// Where `CloudInitFile` points: relative paths are taken from `dir` (the server's working
/// directory when none is configured); with a configured dir, the file must be inside it.
pub fn cloud_init_path(file: &str, dir: Option<&Path>) -> Result<PathBuf, String> {
    if file.is_empty() || file.contains('\0') {
        return Err("CloudInitFile is empty".into());
    }
    let Some(dir) = dir else { return Ok(PathBuf::from(file)) };
    let joined = dir.join(file);
    let resolved = joined.canonicalize().map_err(|e| format!("CloudInitFile {file}: {e}"))?;
    let root = dir.canonicalize().map_err(|e| format!("the cloud-init dir {}: {e}", dir.display()))?;
    if !resolved.starts_with(&root) {
        return Err(format!("CloudInitFile {file} is outside the cloud-init dir {}", dir.display()));
    }
    Ok(resolved)
}

/// Reads the cloud-init file, refusing what cannot be user data.
pub fn read_cloud_init(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("CloudInitFile {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("CloudInitFile {} is not a file", path.display()));
    }
    if meta.len() > validate::MAX_USER_DATA as u64 {
        return Err(format!("CloudInitFile {} is over {} bytes", path.display(), validate::MAX_USER_DATA));
    }
    std::fs::read_to_string(path).map_err(|e| format!("CloudInitFile {}: {e}", path.display()))
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
    Ok(Provision { owner: req.web_username.clone(), lab, labels, spec, ttl })
}

/// Checks a decommission request: the owner, and the lab label to match if one is given.
pub fn decommission(req: &DecommissionRequest) -> Result<(String, Option<String>), String> {
    validate::owner(&req.web_username).map_err(|e| format!("WebUsername {}", e.message))?;
    let lab = req.lab_id.as_ref().map(LabId::text).transpose()?;
    Ok((req.web_username.clone(), lab))
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
        assert_eq!(decommission(&d).unwrap(), ("u".to_owned(), None));
        let d: DecommissionRequest = parse(r#"{"WebUsername":"u","LabID":12}"#).unwrap();
        assert_eq!(decommission(&d).unwrap(), ("u".to_owned(), Some("12".to_owned())));
        assert!(parse::<DecommissionRequest>(r#"{"LabID":12}"#).unwrap_err().contains("WebUsername"));
    }

    #[test]
    fn cloud_init_files_stay_inside_their_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lab.yml"), "#cloud-config\n").unwrap();
        let inside = cloud_init_path("lab.yml", Some(dir.path())).unwrap();
        assert_eq!(read_cloud_init(&inside).unwrap(), "#cloud-config\n");
        assert!(cloud_init_path("../../etc/passwd", Some(dir.path())).unwrap_err().contains("outside"));
        assert!(cloud_init_path("missing.yml", Some(dir.path())).is_err());
        assert!(read_cloud_init(dir.path()).unwrap_err().contains("not a file"));
    }
}

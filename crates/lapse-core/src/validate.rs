//! Limits on every field a user sends. A request that breaks one is refused whole.

use std::collections::BTreeMap;

use crate::model::{Resources, Spec};

/// A refused field: `field` is a dotted path (`spec.env.PATH`), `message` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn fail<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError { field: field.into(), message: message.into() })
}

pub const MAX_NAME: usize = 63;
pub const MAX_OWNER: usize = 128;
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY: usize = 63;
pub const MAX_LABEL_VALUE: usize = 255;
pub const MAX_IMAGE: usize = 512;
pub const MAX_CMD_ARGS: usize = 256;
pub const MAX_CMD_BYTES: usize = 64 * 1024;
pub const MAX_ENV_VARS: usize = 256;
pub const MAX_ENV_BYTES: usize = 64 * 1024;
pub const MAX_PORTS: usize = 32;
pub const MAX_VCPU: f64 = 256.0;
pub const MAX_MEM_MB: u64 = 4 * 1024 * 1024;
pub const MAX_DISK_GB: u64 = 64 * 1024;
pub const MAX_USER_DATA: usize = 64 * 1024;
/// Longest `spec.shell`.
pub const MAX_SHELL: usize = 4096;
/// Longest cloud field (instance type, zone, subnet, security group, disk type).
pub const MAX_CLOUD_FIELD: usize = 255;
pub const MAX_SSH_KEYS: usize = 16;
pub const MAX_SSH_KEY: usize = 16 * 1024;

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A human name: letters, digits, `.`, `_`, `-`.
pub fn name(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > MAX_NAME {
        return fail(field, format!("must be 1 to {MAX_NAME} characters"));
    }
    if !value.chars().all(is_name_char) {
        return fail(field, "may hold only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Tenant names that no tenant may have: `default` was what environments of no tenant were
/// filed under, so a tenant of that name would see them.
pub const RESERVED_TENANTS: [&str; 1] = ["default"];

/// A tenant's name: a [`name`] that is not reserved.
pub fn tenant(field: &str, value: &str) -> Result<(), FieldError> {
    name(field, value)?;
    if RESERVED_TENANTS.contains(&value) {
        return fail(field, format!("{value:?} is reserved; choose another name"));
    }
    Ok(())
}

pub fn owner(value: &str) -> Result<(), FieldError> {
    if value.trim().is_empty() || value.len() > MAX_OWNER {
        return fail("owner", format!("must be 1 to {MAX_OWNER} characters, not blank"));
    }
    if has_control(value) {
        return fail("owner", "must not hold control characters");
    }
    Ok(())
}

pub fn labels(labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if labels.len() > MAX_LABELS {
        return fail("labels", format!("at most {MAX_LABELS} labels"));
    }
    for (k, v) in labels {
        let field = format!("labels.{k}");
        if k.is_empty() || k.len() > MAX_LABEL_KEY || !k.chars().all(|c| is_name_char(c) || c == '/') {
            return fail(field, format!("keys are 1 to {MAX_LABEL_KEY} letters, digits, '.', '_', '-', '/'"));
        }
        if v.len() > MAX_LABEL_VALUE || has_control(v) {
            return fail(field, format!("values are at most {MAX_LABEL_VALUE} characters, no control characters"));
        }
    }
    Ok(())
}

/// A `label=k=v` filter, split into its key and value.
pub fn label_selector(selector: &str) -> Result<(String, String), FieldError> {
    match selector.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => fail("label", format!("{selector:?} is not of the form key=value")),
    }
}

/// An OpenSSH one-line public key: `TYPE BASE64 [comment]` of a type EC2 imports.
pub fn is_openssh_key(s: &str) -> bool {
    use base64::Engine;
    let mut words = s.split_whitespace();
    let (Some(kind), Some(body)) = (words.next(), words.next()) else { return false };
    let known = matches!(
        kind,
        "ssh-rsa" | "ssh-ed25519" | "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521"
    );
    if !known || s.len() > 16 * 1024 || s.contains('\n') {
        return false;
    }
    // The blob starts with its own type, length-prefixed: `ssh-ed25519 AAAA...` names itself.
    let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(body) else { return false };
    let Some(len) = blob.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize) else { return false };
    blob.get(4..4 + len) == Some(kind.as_bytes()) && blob.len() > 4 + len
}

/// A Unix login name as SSH takes it: up to 32 of `a-z`, `0-9`, `_`, `-`, `.`, starting with
/// a letter or `_` (so it cannot be read as an option or hold shell or YAML syntax).
pub fn is_unix_user(user: &str) -> bool {
    user.len() <= 32
        && user.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && user.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

/// What holds for every spec, whatever its provider. Providers add their own checks.
pub fn spec(spec: &Spec) -> Result<(), FieldError> {
    let provider = &spec.provider;
    if provider.is_empty()
        || provider.len() > 32
        || !provider.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return fail("spec.provider", "must be a provider name such as \"process\" or \"docker\"");
    }
    if let Some(image) = &spec.image
        && (image.is_empty() || image.len() > MAX_IMAGE || image.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return fail("spec.image", format!("must be 1 to {MAX_IMAGE} characters without spaces"));
    }
    command("spec.cmd", &spec.cmd)?;
    if spec.env.len() > MAX_ENV_VARS {
        return fail("spec.env", format!("at most {MAX_ENV_VARS} variables"));
    }
    let mut env_bytes = 0;
    for (k, v) in &spec.env {
        let valid_key = k.len() <= 255
            && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return fail(format!("spec.env.{k}"), "names are letters, digits and '_', not starting with a digit");
        }
        if v.contains('\0') {
            return fail(format!("spec.env.{k}"), "must not hold NUL");
        }
        env_bytes += k.len() + v.len();
    }
    if env_bytes > MAX_ENV_BYTES {
        return fail("spec.env", format!("at most {MAX_ENV_BYTES} bytes in all"));
    }
    if let Some(r) = &spec.resources {
        resources(r)?;
    }
    if let Some(data) = &spec.user_data
        && (data.len() > MAX_USER_DATA || data.contains('\0'))
    {
        return fail("spec.user_data", format!("at most {MAX_USER_DATA} bytes, no NUL"));
    }
    if let Some(shell) = &spec.shell
        && (!shell.starts_with('/') || shell.len() > MAX_SHELL || shell.chars().any(char::is_control))
    {
        return fail("spec.shell", format!("an absolute path of at most {MAX_SHELL} bytes, such as \"/bin/bash\""));
    }
    if spec.ports.len() > MAX_PORTS {
        return fail("spec.ports", format!("at most {MAX_PORTS} ports"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &spec.ports {
        if *p == 0 {
            return fail("spec.ports", "ports are 1 to 65535");
        }
        if !seen.insert(p) {
            return fail("spec.ports", format!("port {p} is listed twice"));
        }
    }
    if let Some(c) = &spec.cloud {
        cloud(c)?;
    }
    if let Some(h) = &spec.health {
        h.resolve(spec)?;
    }
    if let Some(w) = &spec.workspace {
        w.validate()?;
    }
    routes(spec)?;
    Ok(())
}

/// Most named routes a spec may have.
pub const MAX_ROUTES: usize = 16;

/// Route names the proxy keeps for itself (`/e/<id>/<port>`) or that would read as the API's.
pub const RESERVED_ROUTES: &[&str] = &["e", "v1", "api"];

/// A route name: `[a-z][a-z0-9-]{0,31}`, not reserved.
pub fn is_route_name(name: &str) -> bool {
    name.len() <= 32
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !RESERVED_ROUTES.contains(&name)
}

/// Named routes: valid names, each to one of the spec's ports.
fn routes(spec: &Spec) -> Result<(), FieldError> {
    if spec.routes.len() > MAX_ROUTES {
        return fail("spec.routes", format!("at most {MAX_ROUTES} routes"));
    }
    for (name, route) in &spec.routes {
        if !is_route_name(name) {
            return fail(
                format!("spec.routes.{name}"),
                "route names are 1 to 32 of a-z, 0-9 and '-', starting with a letter, and not e, v1 or api",
            );
        }
        if !spec.ports.contains(&route.port()) {
            return fail(format!("spec.routes.{name}"), format!("port {} is not in spec.ports", route.port()));
        }
    }
    Ok(())
}

/// The shape of a cloud spec's fields; each cloud provider checks their meaning.
fn cloud(c: &crate::model::CloudSpec) -> Result<(), FieldError> {
    for (field, value) in [
        ("spec.cloud.instance_type", &c.instance_type),
        ("spec.cloud.zone", &c.zone),
        ("spec.cloud.subnet", &c.subnet),
        ("spec.cloud.security_group", &c.security_group),
        ("spec.cloud.disk_type", &c.disk_type),
    ] {
        if let Some(v) = value
            && (v.is_empty() || v.len() > MAX_CLOUD_FIELD || v.chars().any(|ch| ch.is_whitespace() || ch.is_control()))
        {
            return fail(field, format!("must be 1 to {MAX_CLOUD_FIELD} characters without spaces"));
        }
    }
    if c.ssh_public_keys.len() > MAX_SSH_KEYS {
        return fail("spec.cloud.ssh_public_keys", format!("at most {MAX_SSH_KEYS} keys"));
    }
    for (i, key) in c.ssh_public_keys.iter().enumerate() {
        let mut parts = key.split_whitespace();
        let shaped = key.len() <= MAX_SSH_KEY
            && !key.chars().any(|ch| ch.is_control())
            && parts
                .next()
                .is_some_and(|kind| kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
            && parts.next().is_some_and(|body| {
                !body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
            });
        if !shaped {
            return fail(
                format!("spec.cloud.ssh_public_keys.{i}"),
                "must be one OpenSSH public key line (\"ssh-ed25519 AAAA... comment\")",
            );
        }
    }
    Ok(())
}

/// Most members a pool may hold.
pub const MAX_POOL: u32 = 10_000;

/// A pool's `min` and `max` (default `min`); returns `max`.
pub fn pool_size(min: u32, max: Option<u32>) -> Result<u32, FieldError> {
    let max = max.unwrap_or(min);
    if min > MAX_POOL || max > MAX_POOL {
        return fail("min", format!("pools hold at most {MAX_POOL} members"));
    }
    if max < min {
        return fail("max", format!("max ({max}) is below min ({min})"));
    }
    Ok(max)
}

/// A command line: bounded in count and size, no NUL bytes.
pub fn command(field: &str, cmd: &[String]) -> Result<(), FieldError> {
    if cmd.len() > MAX_CMD_ARGS {
        return fail(field, format!("at most {MAX_CMD_ARGS} arguments"));
    }
    if cmd.iter().map(String::len).sum::<usize>() > MAX_CMD_BYTES {
        return fail(field, format!("at most {MAX_CMD_BYTES} bytes in all"));
    }
    if cmd.iter().any(|a| a.contains('\0')) {
        return fail(field, "arguments must not hold NUL");
    }
    if cmd.first().is_some_and(|p| p.is_empty()) {
        return fail(field, "the program must not be empty");
    }
    Ok(())
}

fn resources(r: &Resources) -> Result<(), FieldError> {
    if let Some(v) = r.vcpu
        && !(v.is_finite() && v > 0.0 && v <= MAX_VCPU)
    {
        return fail("spec.resources.vcpu", format!("must be above 0 and at most {MAX_VCPU}"));
    }
    if let Some(m) = r.mem_mb
        && !(4..=MAX_MEM_MB).contains(&m)
    {
        return fail("spec.resources.mem_mb", format!("must be 4 to {MAX_MEM_MB}"));
    }
    if let Some(d) = r.disk_gb
        && !(1..=MAX_DISK_GB).contains(&d)
    {
        return fail("spec.resources.disk_gb", format!("must be 1 to {MAX_DISK_GB}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(f: impl FnOnce(&mut Spec)) -> Result<(), FieldError> {
        let mut s = Spec { provider: "process".into(), cmd: vec!["sleep".into(), "1".into()], ..Default::default() };
        f(&mut s);
        spec(&s)
    }

    #[test]
    fn specs() {
        let refused = |f: fn(&mut Spec), field: &str| {
            let err = spec_with(f).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        };
        assert_eq!(spec_with(|_| {}), Ok(()));
        refused(|s| s.provider = "".into(), "spec.provider");
        refused(|s| s.provider = "Docker!".into(), "spec.provider");
        refused(|s| s.image = Some("has space".into()), "spec.image");
        refused(|s| s.image = Some("x".repeat(MAX_IMAGE + 1)), "spec.image");
        refused(|s| s.cmd = vec!["a\0b".into()], "spec.cmd");
        refused(|s| s.shell = Some("bash".into()), "spec.shell");
        refused(|s| s.shell = Some("/bin/ba\nsh".into()), "spec.shell");
        refused(|s| s.shell = Some(format!("/{}", "x".repeat(MAX_SHELL))), "spec.shell");
        assert_eq!(spec_with(|s| s.shell = Some("/bin/bash".into())), Ok(()));
        refused(|s| s.cmd = vec!["".into()], "spec.cmd");
        refused(|s| s.cmd = vec!["x".into(); MAX_CMD_ARGS + 1], "spec.cmd");
        refused(
            |s| {
                s.env.insert("1BAD".into(), "v".into());
            },
            "spec.env.1BAD",
        );
        refused(|s| s.resources = Some(Resources { vcpu: Some(0.0), ..Default::default() }), "spec.resources.vcpu");
        refused(
            |s| s.resources = Some(Resources { vcpu: Some(f64::NAN), ..Default::default() }),
            "spec.resources.vcpu",
        );
        refused(|s| s.resources = Some(Resources { mem_mb: Some(1), ..Default::default() }), "spec.resources.mem_mb");
        refused(|s| s.ports = vec![0], "spec.ports");
        refused(|s| s.ports = vec![80, 80], "spec.ports");
        let route = |name: &str, port: u16| {
            let name = name.to_owned();
            move |s: &mut Spec| {
                s.ports = vec![8080];
                s.routes.insert(name, crate::model::Route::Port(port));
            }
        };
        assert_eq!(spec_with(route("code", 8080)), Ok(()));
        assert_eq!(spec_with(route("a-1", 8080)), Ok(()));
        for bad in ["e", "v1", "api", "Code", "1code", "-x", "", "co_de", "c.d", &"x".repeat(33)] {
            assert_eq!(spec_with(route(bad, 8080)).unwrap_err().field, format!("spec.routes.{bad}"), "{bad:?}");
        }
        assert!(spec_with(route("code", 9090)).unwrap_err().message.contains("not in spec.ports"));
    }

    #[test]
    fn names_owners_labels() {
        assert!(name("name", "lab-1.a_b").is_ok());
        assert!(name("name", "").is_err());
        assert!(name("name", "no spaces").is_err());
        assert!(name("name", &"x".repeat(64)).is_err());
        assert!(owner("ada").is_ok());
        assert!(owner("  ").is_err());
        assert!(owner("a\nb").is_err());
        let mut l = BTreeMap::from([("lab/id".to_string(), "42".to_string())]);
        assert!(labels(&l).is_ok());
        l.insert("bad key".into(), "v".into());
        assert_eq!(labels(&l).unwrap_err().field, "labels.bad key");
        assert_eq!(label_selector("LabID=7"), Ok(("LabID".into(), "7".into())));
        assert_eq!(label_selector("k=a=b"), Ok(("k".into(), "a=b".into())));
        assert!(label_selector("novalue").is_err());
    }

    #[test]
    fn cloud_fields_have_a_shape() {
        use crate::model::CloudSpec;
        let with = |c: CloudSpec| spec_with(|s| s.cloud = Some(c));
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq2 me@host".to_owned();
        assert!(
            with(CloudSpec {
                instance_type: Some("t2.nano".into()),
                zone: Some("us-east-1a".into()),
                ssh_public_keys: vec![key.clone()],
                ..Default::default()
            })
            .is_ok()
        );
        let refused = |c: CloudSpec, field: &str| {
            let e = with(c).unwrap_err();
            assert_eq!(e.field, field, "{e:?}");
        };
        refused(CloudSpec { instance_type: Some(String::new()), ..Default::default() }, "spec.cloud.instance_type");
        refused(CloudSpec { zone: Some("us east".into()), ..Default::default() }, "spec.cloud.zone");
        refused(CloudSpec { subnet: Some("x".repeat(256)), ..Default::default() }, "spec.cloud.subnet");
        refused(
            CloudSpec { ssh_public_keys: vec!["not a key".into()], ..Default::default() },
            "spec.cloud.ssh_public_keys.0",
        );
        refused(
            CloudSpec { ssh_public_keys: vec![key.clone(), "ssh-rsa AAAA\nrm -rf /".into()], ..Default::default() },
            "spec.cloud.ssh_public_keys.1",
        );
        refused(CloudSpec { ssh_public_keys: vec![key; 17], ..Default::default() }, "spec.cloud.ssh_public_keys");
    }
}

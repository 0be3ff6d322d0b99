//! What the `aws` provider refuses before anything is created, and how it reads EC2's
//! answers: instance states, errors (retryable or permanent), addresses.

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Instance as Ec2Instance, InstanceStateName};
use lapse_core::model::{Endpoint, Spec};
use lapse_core::validate::FieldError;

use crate::{InstanceStatus, ProviderError};

pub(crate) const NAME: &str = "aws";

fn field(field: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

/// `t2.nano`, `m5d.2xlarge`, `c7gn.metal`: a family of letters and digits, a dot, a size.
pub fn is_instance_type(s: &str) -> bool {
    let Some((family, size)) = s.split_once('.') else { return false };
    let ok = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    family.as_bytes().first().is_some_and(u8::is_ascii_lowercase) && ok(family, 16) && ok(size, 16)
}

/// `us-east-1a`, `eu-west-3c`, `us-gov-west-1a`, `us-east-1-bos-1a` (a Local Zone): at least
/// three dash-separated parts, lower-case letters and digits, ending in a digit and a letter.
pub fn is_zone(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let last = s.as_bytes();
    parts.len() >= 3
        && s.len() <= 64
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        && last.len() >= 2
        && last[last.len() - 1].is_ascii_lowercase()
        && last[last.len() - 2].is_ascii_digit()
}

pub use lapse_core::validate::is_openssh_key;

/// Refuses what EC2 would refuse, naming the field.
pub fn validate(spec: &Spec) -> Result<(), FieldError> {
    crate::check_boot(spec, NAME, false)?;
    if let Some(image) = &spec.image
        && !(image.starts_with("ami-") && image.len() <= 32 && image[4..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(field("spec.image", "an AWS image is an AMI id (ami- and hex digits, e.g. ami-0abcdef1234567890)"));
    }
    if !spec.cmd.is_empty() {
        return Err(field("spec.cmd", "the aws provider runs a VM, not a command; give user_data (cloud-init)"));
    }
    if !spec.env.is_empty() {
        return Err(field("spec.env", "the aws provider passes no environment variables; use user_data"));
    }
    if let Some(user_data) = &spec.user_data
        && user_data.len() > 12 * 1024
    {
        // EC2 takes 16 KiB after base64; the backstop needs room too.
        return Err(field("spec.user_data", "at most 12 KiB of user data on aws"));
    }
    if let Some(disk) = spec.resources.as_ref().and_then(|r| r.disk_gb)
        && !(1..=16384).contains(&disk)
    {
        return Err(field("spec.resources.disk_gb", "an EBS root volume is 1 to 16384 GiB"));
    }
    let Some(cloud) = &spec.cloud else { return Ok(()) };
    if let Some(t) = &cloud.instance_type
        && !is_instance_type(t)
    {
        return Err(field("spec.cloud.instance_type", format!("{t:?} is not an EC2 instance type (e.g. t2.nano)")));
    }
    if let Some(z) = &cloud.zone
        && !is_zone(z)
    {
        return Err(field("spec.cloud.zone", format!("{z:?} is not an availability zone (e.g. us-east-1a)")));
    }
    if let Some(s) = &cloud.subnet
        && !(s.starts_with("subnet-") && s.len() <= 40)
    {
        return Err(field("spec.cloud.subnet", "a subnet is a subnet id (subnet-...)"));
    }
    if let Some(d) = &cloud.disk_type
        && !matches!(d.as_str(), "gp2" | "gp3" | "io1" | "io2" | "st1" | "sc1" | "standard")
    {
        return Err(field("spec.cloud.disk_type", "an EBS volume type: gp2, gp3, io1, io2, st1, sc1, standard"));
    }
    if cloud.ssh_public_keys.len() > 1 {
        return Err(field(
            "spec.cloud.ssh_public_keys",
            "EC2 takes one key pair; give one key (put more in user_data)",
        ));
    }
    if let Some(k) = cloud.ssh_public_keys.first()
        && !is_openssh_key(k)
    {
        return Err(field("spec.cloud.ssh_public_keys", "not an OpenSSH public key (ssh-ed25519 AAAA... comment)"));
    }
    Ok(())
}

/// EC2's limit of tags on one resource.
pub const MAX_TAGS: usize = 50;

/// Refuses labels EC2 could not carry as tags beside the provider's own, naming the label:
/// at most [`MAX_TAGS`] tags in all (Lapse's four `lapse:*`, `Name`, and with `seed_tags`
/// `ManagedBy` and `Duration`); keys of 1 to 128 characters, values of 256 at most; no key
/// under `aws:` (EC2's, in any case) or `lapse:` (the provider's); and, with `seed_tags`, no
/// `ManagedBy` or `Duration` label (instance-manager's). A `Name` label is taken as the
/// instance's name.
pub fn validate_labels(labels: &std::collections::BTreeMap<String, String>, seed_tags: bool) -> Result<(), FieldError> {
    let seed_keys: &[&str] = if seed_tags { &["ManagedBy", "Duration"] } else { &[] };
    for (k, v) in labels {
        let at = format!("labels.{k}");
        if k.is_empty() || k.chars().count() > 128 {
            return Err(field(&at, "an EC2 tag key is 1 to 128 characters"));
        }
        if v.chars().count() > 256 {
            return Err(field(&at, "an EC2 tag value is at most 256 characters"));
        }
        if k.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("aws:")) {
            return Err(field(&at, "EC2 keeps tag keys starting with aws: for itself"));
        }
        if k.starts_with("lapse:") {
            return Err(field(&at, "tag keys starting with lapse: are the provider's own"));
        }
        if seed_keys.contains(&k.as_str()) {
            return Err(field(&at, format!("{k} is instance-manager's tag, set by the provider (--aws-seed-tags)")));
        }
    }
    let own = 5 + seed_keys.len();
    let extra = labels.keys().filter(|k| k.as_str() != "Name").count();
    if own + extra > MAX_TAGS {
        return Err(field(
            "labels",
            format!(
                "EC2 takes {MAX_TAGS} tags per instance and the provider sets {own}: at most {} labels",
                MAX_TAGS - own
            ),
        ));
    }
    Ok(())
}

/// EC2's state as Lapse's; `None` for `terminated` (gone).
pub fn status(state: Option<&InstanceStateName>) -> Option<InstanceStatus> {
    match state? {
        InstanceStateName::Pending => Some(InstanceStatus::Pending),
        InstanceStateName::Running => Some(InstanceStatus::Running),
        InstanceStateName::Stopping => Some(InstanceStatus::Stopping),
        InstanceStateName::Stopped => Some(InstanceStatus::Stopped),
        InstanceStateName::ShuttingDown => Some(InstanceStatus::ShuttingDown),
        _ => None,
    }
}

/// The instance's value for tag `key`.
pub fn tag<'a>(i: &'a Ec2Instance, key: &str) -> Option<&'a str> {
    i.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// Public IPv4, private IPv4, then IPv6 addresses.
pub fn addresses(i: &Ec2Instance) -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = Vec::new();
    let ipv6 = i.network_interfaces().iter().flat_map(|n| n.ipv6_addresses()).filter_map(|a| a.ipv6_address());
    for text in [i.public_ip_address(), i.private_ip_address()].into_iter().flatten().chain(ipv6) {
        if let Ok(ip) = text.parse()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// `spec.ports` on the public address, else the private one.
pub fn endpoints(i: &Ec2Instance, ports: &[u16]) -> Vec<Endpoint> {
    let Some(host) = i.public_ip_address().or(i.private_ip_address()) else { return Vec::new() };
    ports
        .iter()
        .map(|&p| Endpoint { container_port: p, protocol: "tcp".into(), host: host.to_owned(), port: p })
        .collect()
}

/// An SDK failure as a provider error: no answer, throttling and EC2's own faults are
/// retryable; anything EC2 refused (capacity, quota, a bad parameter) is permanent, with
/// EC2's code and message. Credentials never appear: only the error code and message are kept.
pub fn error<E, R>(op: &'static str, e: SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (code, message) = match &e {
        SdkError::ServiceError(s) => {
            (s.err().code().unwrap_or("Unknown").to_owned(), s.err().message().unwrap_or_default().to_owned())
        }
        SdkError::TimeoutError(_) => {
            return ProviderError::Failed { provider: NAME, op, message: "timed out".into() };
        }
        SdkError::DispatchFailure(d) => {
            let why = if d.is_timeout() { "timed out" } else { "could not reach EC2" };
            return ProviderError::Failed { provider: NAME, op, message: why.into() };
        }
        _ => return ProviderError::Failed { provider: NAME, op, message: "no usable answer from EC2".into() },
    };
    classify(op, &code, &message)
}

/// By EC2's error code.
pub fn classify(op: &'static str, code: &str, message: &str) -> ProviderError {
    let retryable = code.contains("Throttl")
        || matches!(code, "RequestLimitExceeded" | "InternalError" | "ServiceUnavailable" | "Unavailable")
        || code == "IncorrectInstanceState"
        || code.starts_with("InvalidInstanceID.NotFound");
    let text = format!("{op}: {code}: {message}");
    if code.starts_with("AuthFailure") || code.contains("Credential") || code == "UnauthorizedOperation" {
        ProviderError::Unavailable { provider: NAME, message: text }
    } else if retryable {
        ProviderError::Failed { provider: NAME, op, message: format!("{code}: {message}") }
    } else {
        ProviderError::Permanent { provider: NAME, message: text }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        for ok in ["t2.nano", "m5d.2xlarge", "c7gn.metal", "u-6tb1.metal"] {
            assert!(is_instance_type(ok), "{ok}");
        }
        for bad in ["", "t2", ".nano", "T2.NANO", "t2.nano;rm", "t2..nano"] {
            assert!(!is_instance_type(bad), "{bad}");
        }
        for ok in ["us-east-1a", "eu-west-3c", "us-gov-west-1a", "us-east-1-bos-1a"] {
            assert!(is_zone(ok), "{ok}");
        }
        for bad in ["", "us-east-1", "useast1a", "us-east-a", "US-EAST-1A", "us--1a"] {
            assert!(!is_zone(bad), "{bad}");
        }
        assert!(is_openssh_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEBgADPnDiIQn0qOOAF8KTqypgMP7s21Sj6xqDT34zZI me@host"
        ));
        assert!(!is_openssh_key("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIEBgADPnDiIQn0qOOAF8KTqypgMP7s21Sj6xqDT34zZI"));
        assert!(!is_openssh_key("-----BEGIN RSA PUBLIC KEY-----"));
        assert!(!is_openssh_key("ssh-ed25519 !!!notbase64"));
    }

    #[test]
    fn labels_within_ec2s_tag_limits() {
        let of = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let refused = |pairs: &[(&str, &str)], seed| validate_labels(&of(pairs), seed).map_err(|e| e.field);
        assert_eq!(refused(&[("team", "infra"), ("Name", "web")], false), Ok(()));
        assert_eq!(refused(&[("ManagedBy", "me")], false), Ok(()));
        assert_eq!(refused(&[("ManagedBy", "me")], true), Err("labels.ManagedBy".into()));
        assert_eq!(refused(&[("Duration", "1h")], true), Err("labels.Duration".into()));
        assert_eq!(refused(&[("AWS:x", "v")], false), Err("labels.AWS:x".into()));
        assert_eq!(refused(&[("lapse:keep", "v")], false), Err("labels.lapse:keep".into()));
        let long_key = "k".repeat(129);
        assert_eq!(refused(&[(&long_key, "v")], false), Err(format!("labels.{long_key}")));
        let long_value = "é".repeat(257);
        assert_eq!(refused(&[("k", &long_value)], false), Err("labels.k".into()));
        assert_eq!(refused(&[("k", &"é".repeat(256))], false), Ok(()));
        let keys: Vec<String> = (0..46).map(|i| format!("l{i}")).collect();
        let many: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
        assert_eq!(refused(&many[..45], false), Ok(()), "50 tags in all");
        assert_eq!(refused(&many, false), Err("labels".into()));
        assert_eq!(refused(&many[..43], true), Ok(()));
        assert_eq!(refused(&many[..44], true), Err("labels".into()));
    }

    #[test]
    fn errors_classified() {
        assert!(classify("run", "RequestLimitExceeded", "slow down").is_retryable());
        assert!(!classify("run", "InsufficientInstanceCapacity", "none left").is_retryable());
        // Throttling backs off; capacity and quota refusals end the provision with EC2's text.
        assert!(classify("describe", "Throttling", "Rate exceeded").is_retryable());
        let vcpu = classify("run", "VcpuLimitExceeded", "You have requested more vCPU capacity");
        assert!(matches!(vcpu, ProviderError::Permanent { .. }), "{vcpu:?}");
        assert!(vcpu.recorded().contains("You have requested more vCPU capacity"), "{vcpu}");
        assert!(!classify("run", "InvalidParameterValue", "bad").is_retryable());
        assert!(matches!(classify("run", "AuthFailure", "x"), ProviderError::Unavailable { .. }));
        assert!(classify("run", "InstanceLimitExceeded", "quota").to_string().contains("quota"));
    }
}

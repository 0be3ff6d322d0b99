//! Creating an instance: the AMI, subnet and key pair choices (as instance-manager makes
//! them), the tags, the backstop, and the idempotency token. Key pairs are [`super::keys`]'.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, InstanceType, Placement as Ec2Placement, ResourceType,
    ShutdownBehavior, Tag, TagSpecification, VolumeType,
};
use base64::Engine;
use lapse_core::model::{OnExpiry, Spec};
use sha2::{Digest, Sha256};

use super::check::{self, NAME};
use super::{AwsProvider, TAG_CONTROLLER, TAG_ENVIRONMENT, TAG_EXPIRES, TAG_TENANT, keys};
use crate::{Placement, ProviderError};

/// instance-manager's default size.
pub const DEFAULT_INSTANCE_TYPE: &str = "t2.nano";
/// instance-manager's AMI: the newest of these owned by amazon.
pub const DEFAULT_AMI_NAME: &str = "amzn2-ami-hvm-*-x86_64-gp2";

fn permanent(message: impl Into<String>) -> ProviderError {
    ProviderError::Permanent { provider: NAME, message: message.into() }
}

/// The `ClientToken` of the `generation`th instance of an environment (64 characters at
/// most): the same environment asks again with the same token, so EC2 makes one instance
/// however often the call is repeated. The generation counts the environment's terminated
/// instances, so a replacement after a delete is a new instance.
pub fn client_token(controller: &str, environment_id: &str, generation: usize) -> String {
    let digest = Sha256::digest(format!("{controller}\n{environment_id}\n{generation}").as_bytes());
    format!("lapse-{}", hex(&digest[..24]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3339 in UTC, whole seconds.
pub fn rfc3339(millis: i64) -> String {
    chrono_free_rfc3339(millis.div_euclid(1000))
}

/// Civil date from unix seconds (Howard Hinnant's algorithm), without a date crate.
fn chrono_free_rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// instance-manager's `ManagedBy` and `Name` value (its `pkg/aws/provider.go`).
pub const SEED_MANAGED_BY: &str = "instance-manager";

/// The tags of the instance and its volumes, each key once: Lapse's four (`lapse:expires-at`
/// when the lease ends), `Name` (`lapse-<id>`), with seed tags instance-manager's `Name`,
/// `ManagedBy` and `Duration` (the lease from `since_ms`, so that its reader's launch time
/// plus `Duration` is the lease's end), then the user's labels (a `Name` label is the name).
/// [`super::validate_labels`] has refused labels that would clash or pass EC2's limits.
pub fn tags(controller: &str, environment_id: &str, placement: &Placement, seed: Option<i64>) -> Vec<Tag> {
    let mut tags: Vec<(String, String)> = vec![
        (TAG_ENVIRONMENT.into(), environment_id.to_owned()),
        (TAG_CONTROLLER.into(), controller.to_owned()),
        (TAG_TENANT.into(), placement.tenant.clone()),
    ];
    if let Some(at) = placement.expires_at {
        tags.push((TAG_EXPIRES.into(), rfc3339(at)));
    }
    match seed {
        None => tags.push(("Name".into(), format!("lapse-{environment_id}"))),
        Some(since_ms) => {
            tags.push(("Name".into(), SEED_MANAGED_BY.into()));
            tags.push(("ManagedBy".into(), SEED_MANAGED_BY.into()));
            if let Some(at) = placement.expires_at {
                tags.push(("Duration".into(), go_duration((at - since_ms).div_euclid(1000))));
            }
        }
    }
    for (k, v) in &placement.labels {
        match tags.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => tags.push((k.clone(), v.clone())),
        }
    }
    tags.into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

/// A whole number of seconds as Go's `time.Duration.String()` writes it (`1h0m0s`, `2m30s`,
/// `45s`, `0s`), which instance-manager parses back with `time.ParseDuration`. A lease
/// already over is `0s`.
pub fn go_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// The subnet instance-manager would pick: the AZ's default subnet, else any available one
/// in the AZ, else any available one in the region; `None` lets EC2 choose.
async fn subnet(client: &Client, zone: Option<&str>) -> Result<Option<String>, ProviderError> {
    let f = |name: &str, value: &str| Filter::builder().name(name).values(value).build();
    let mut tries: Vec<Vec<Filter>> = Vec::new();
    if let Some(zone) = zone {
        tries.push(vec![f("availability-zone", zone), f("default-for-az", "true")]);
        tries.push(vec![f("availability-zone", zone), f("state", "available")]);
    }
    tries.push(vec![f("state", "available")]);
    for filters in tries {
        let out = client
            .describe_subnets()
            .set_filters(Some(filters))
            .send()
            .await
            .map_err(|e| check::error("DescribeSubnets", e))?;
        if let Some(id) = out.subnets().iter().find_map(|s| s.subnet_id()) {
            return Ok(Some(id.to_owned()));
        }
    }
    Ok(None)
}

/// The AMI and its root device name: the spec's, or the newest default owned by amazon.
async fn image(client: &Client, wanted: Option<&str>) -> Result<(String, String), ProviderError> {
    let request = match wanted {
        Some(id) => client.describe_images().image_ids(id),
        None => client
            .describe_images()
            .owners("amazon")
            .filters(Filter::builder().name("name").values(DEFAULT_AMI_NAME).build()),
    };
    let out = match request.send().await {
        Ok(out) => out,
        Err(e) => match check::error("DescribeImages", e) {
            ProviderError::Permanent { message, .. } => {
                return Err(permanent(format!("spec.image: {message}")));
            }
            other => return Err(other),
        },
    };
    let newest = out.images().iter().max_by(|a, b| a.creation_date().cmp(&b.creation_date()));
    match newest.and_then(|i| i.image_id().map(|id| (id, i.root_device_name()))) {
        Some((id, root)) => Ok((id.to_owned(), root.unwrap_or("/dev/xvda").to_owned())),
        None => Err(permanent(match wanted {
            Some(id) => format!("spec.image: no AMI {id} in this region"),
            None => format!("spec.image: no {DEFAULT_AMI_NAME} AMI owned by amazon in this region; give spec.image"),
        })),
    }
}

impl AwsProvider {
    /// RunInstances for a new environment (the caller found none).
    pub(super) async fn launch(
        &self,
        environment_id: &str,
        placement: &Placement,
        spec: &Spec,
        generation: usize,
        intent: &mut crate::Intent,
    ) -> Result<String, ProviderError> {
        let client = &self.client;
        let cloud = spec.cloud.clone().unwrap_or_default();
        // The lookups and, once the intent is written, the environment's own key (written to
        // disk) at once: the local work hides under the cloud's answers. The key pair is
        // imported only once they succeeded, so a refused image or zone leaves nothing in the
        // cloud.
        let subnet = async {
            match &cloud.subnet {
                Some(s) => Ok(Some(s.clone())),
                None => subnet(client, cloud.zone.as_deref()).await,
            }
        };
        let user_data = async {
            intent.wait().await?;
            self.user_data(environment_id, placement, spec).await
        };
        let ((ami, root_device), subnet, user_data) =
            tokio::try_join!(image(client, spec.image.as_deref()), subnet, user_data)?;
        let key = match cloud.ssh_public_keys.first() {
            Some(k) => Some(keys::ensure(client, k).await?),
            None => None,
        };
        let shutdown = match placement.on_expiry {
            OnExpiry::Delete => ShutdownBehavior::Terminate,
            OnExpiry::Stop => ShutdownBehavior::Stop,
        };
        let tags = tags(&self.controller_id, environment_id, placement, self.seed_since(lapse_core::now_millis()));
        let spec_of =
            |kind: ResourceType| TagSpecification::builder().resource_type(kind).set_tags(Some(tags.clone())).build();
        // The root volume is the AMI's unless the spec sizes or types it.
        let disk_gb = spec.resources.as_ref().and_then(|r| r.disk_gb);
        let root = (disk_gb.is_some() || cloud.disk_type.is_some()).then(|| {
            let mut ebs = EbsBlockDevice::builder().delete_on_termination(true);
            if let Some(gb) = disk_gb {
                // Checked by `validate`: 1..=16384 fits an i32.
                ebs = ebs.volume_size(i32::try_from(gb).unwrap_or(i32::MAX));
            }
            if let Some(t) = &cloud.disk_type {
                ebs = ebs.volume_type(VolumeType::from(t.as_str()));
            }
            BlockDeviceMapping::builder().device_name(root_device).ebs(ebs.build()).build()
        });
        let mut run = client
            .run_instances()
            .image_id(ami)
            .instance_type(InstanceType::from(cloud.instance_type.as_deref().unwrap_or(DEFAULT_INSTANCE_TYPE)))
            .min_count(1)
            .max_count(1)
            .client_token(client_token(&self.controller_id, environment_id, generation))
            .instance_initiated_shutdown_behavior(shutdown)
            .set_block_device_mappings(root.map(|r| vec![r]))
            .tag_specifications(spec_of(ResourceType::Instance))
            .tag_specifications(spec_of(ResourceType::Volume))
            .set_subnet_id(subnet)
            .set_key_name(key.as_ref().map(|(name, _)| name.clone()))
            .set_user_data(user_data.map(|u| base64::engine::general_purpose::STANDARD.encode(u)));
        if let Some(zone) = &cloud.zone {
            run = run.placement(Ec2Placement::builder().availability_zone(zone).build());
        }
        if let Some(group) = &cloud.security_group {
            run = if group.starts_with("sg-") { run.security_group_ids(group) } else { run.security_groups(group) };
        }
        match run.send().await {
            Ok(out) => out.instances().first().and_then(|i| i.instance_id()).map(str::to_owned).ok_or_else(|| {
                ProviderError::Failed {
                    provider: NAME,
                    op: "RunInstances",
                    message: "no instance in the answer".into(),
                }
            }),
            Err(e) => {
                let err = check::error("RunInstances", e);
                let Some((name, imported)) = &key else { return Err(err) };
                if err.to_string().contains("InvalidKeyPair.NotFound") {
                    // Removed after this create imported or found it (another create failed
                    // meanwhile, see `keys`): the next attempt imports it again.
                    return Err(ProviderError::Failed {
                        provider: NAME,
                        op: "RunInstances",
                        message: format!("key pair {name} was removed meanwhile; retrying"),
                    });
                }
                if !err.is_retryable() {
                    keys::release(client, name, *imported).await;
                }
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_names() {
        let t = client_token("ctl", "env", 0);
        assert!(t.len() <= 64);
        assert_eq!(t, client_token("ctl", "env", 0));
        assert_ne!(t, client_token("ctl", "env", 1));
        assert_ne!(t, client_token("ctl2", "env", 0));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_547_200_000), "2025-12-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn go_durations_as_instance_manager_parses_them() {
        for (secs, text) in [(0, "0s"), (45, "45s"), (90, "1m30s"), (3600, "1h0m0s"), (9000, "2h30m0s"), (-5, "0s")] {
            assert_eq!(go_duration(secs), text);
        }
    }

    fn tag_map(tags: &[Tag]) -> std::collections::BTreeMap<String, String> {
        tags.iter().map(|t| (t.key().unwrap_or("").to_owned(), t.value().unwrap_or("").to_owned())).collect()
    }

    #[test]
    fn tags_carry_labels_and_the_seeds_when_asked() {
        let labels = [("team".to_owned(), "infra".to_owned()), ("Name".to_owned(), "mine".to_owned())];
        let placement = Placement {
            tenant: "acme".into(),
            expires_at: Some(7_200_000),
            labels: labels.into_iter().collect(),
            ..Default::default()
        };
        let plain = tag_map(&tags("ctl", "env", &placement, None));
        assert_eq!(plain["team"], "infra");
        assert_eq!(plain["Name"], "mine", "the user's Name label names the instance");
        assert_eq!(plain["lapse:expires-at"], "1970-01-01T02:00:00Z");
        assert!(!plain.contains_key("ManagedBy"));
        let seed = tag_map(&tags("ctl", "env", &Placement { labels: Default::default(), ..placement }, Some(0)));
        assert_eq!(seed["ManagedBy"], "instance-manager");
        assert_eq!(seed["Name"], "instance-manager");
        assert_eq!(seed["Duration"], "2h0m0s");
        assert_eq!(seed.len(), 7);
    }
}

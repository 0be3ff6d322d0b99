//! Adopting EC2 instances this control plane did not launch (instance-manager's, or any
//! instance by id): [`Provider::find_foreign`], [`Provider::adopt`],
//! [`Provider::finish_adoption`] for [`AwsProvider`].
//!
//! **Contract.**
//! - `find_foreign` describes the given ids with an `instance-id` *filter* (an unknown id is
//!   absent, never an error for the whole batch), in batches of [`BATCH`], and with `tagged`
//!   every instance tagged `ManagedBy=instance-manager` that is not terminated. It reads the
//!   seed's `Duration` tag (a Go duration, `1h0m0s`) as the lease.
//! - `adopt` tags the instance and its volumes with Lapse's tags (`lapse:environment`,
//!   `lapse:controller`, `lapse:tenant`, `lapse:expires-at`) plus [`TAG_ADOPTING`], which
//!   keeps it out of [`Provider::list`] (the sweep) until `finish_adoption(keep = true)`
//!   removes it. The seed's own tags (`Name`, `ManagedBy`, `Duration`) stay. An instance that
//!   is terminated or shutting down, or already carries another environment's or another
//!   controller's tags, is refused (`Permanent`); one that does not exist is `NotFound`.
//! - `finish_adoption(keep = false)` removes every tag `adopt` put, so a failed record
//!   leaves the instance as it was.

use aws_sdk_ec2::types::{Filter, Instance as Ec2Instance, InstanceStateName, Tag};

use super::check::{self, NAME};
use super::{AwsProvider, TAG_CONTROLLER, TAG_ENVIRONMENT, TAG_EXPIRES, TAG_TENANT, launch, state};
use crate::{Foreign, ForeignQuery, Instance, Placement, ProviderError};

/// Marks an instance being adopted: [`Provider::list`](crate::Provider::list) leaves it out.
pub const TAG_ADOPTING: &str = "lapse:adopting";
/// instance-manager's tag on every instance it made.
pub const SEED_TAG: (&str, &str) = ("ManagedBy", "instance-manager");
/// instance-manager's tag holding the lease as a Go duration string.
pub const SEED_DURATION_TAG: &str = "Duration";
/// Most ids described in one call.
pub const BATCH: usize = 200;

impl AwsProvider {
    pub(super) async fn foreign(&self, query: &ForeignQuery) -> Result<Vec<Foreign>, ProviderError> {
        let mut found: Vec<Ec2Instance> = Vec::new();
        for chunk in query.ids.chunks(BATCH) {
            let by_id = Filter::builder().name("instance-id").set_values(Some(chunk.to_vec())).build();
            found.extend(self.describe_any(vec![by_id]).await?);
        }
        if query.tagged {
            let tag = Filter::builder().name(format!("tag:{}", SEED_TAG.0)).values(SEED_TAG.1).build();
            let live = Filter::builder()
                .name("instance-state-name")
                .set_values(Some(["pending", "running", "stopping", "stopped"].map(String::from).to_vec()))
                .build();
            found.extend(self.describe_any(vec![tag, live]).await?);
        }
        let mut out: Vec<Foreign> = Vec::new();
        for i in &found {
            let Some(id) = i.instance_id() else { continue };
            if out.iter().any(|f| f.provider_ref == id) {
                continue;
            }
            out.push(self.to_foreign(i, id));
        }
        Ok(out)
    }

    fn to_foreign(&self, i: &Ec2Instance, id: &str) -> Foreign {
        let ours = check::tag(i, TAG_CONTROLLER) == Some(self.controller_id.as_str());
        Foreign {
            provider_ref: id.to_owned(),
            status: check::status(state(i)),
            environment_id: check::tag(i, TAG_ENVIRONMENT).filter(|_| ours).map(str::to_owned),
            instance_type: i.instance_type().map(|t| t.as_str().to_owned()),
            zone: i.placement().and_then(|p| p.availability_zone()).map(str::to_owned),
            launched_at: i.launch_time().map(|t| t.secs() * 1000 + i64::from(t.subsec_nanos() / 1_000_000)),
            lease: check::tag(i, SEED_DURATION_TAG).and_then(|d| lapse_core::duration::parse_duration(d).ok()),
            key_name: i.key_name().map(str::to_owned),
            addresses: check::addresses(i),
        }
    }

    /// Every instance matching `filters`, whoever made it.
    async fn describe_any(&self, filters: Vec<Filter>) -> Result<Vec<Ec2Instance>, ProviderError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10_000 {
            let page = self
                .client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| check::error("DescribeInstances", e))?;
            out.extend(page.reservations().iter().flat_map(|r| r.instances().iter().cloned()));
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    pub(super) async fn adopt_instance(
        &self,
        environment_id: &str,
        provider_ref: &str,
        placement: &Placement,
        ports: &[u16],
    ) -> Result<Instance, ProviderError> {
        let by_id = Filter::builder().name("instance-id").values(provider_ref).build();
        let found = self.describe_any(vec![by_id]).await?;
        let Some(i) = found.iter().find(|i| i.instance_id() == Some(provider_ref)) else {
            return Err(ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() });
        };
        let refuse = |message: String| Err(ProviderError::Permanent { provider: NAME, message });
        if matches!(state(i), None | Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)) {
            return refuse(format!("instance {provider_ref} is terminated or shutting down"));
        }
        match (check::tag(i, TAG_CONTROLLER), check::tag(i, TAG_ENVIRONMENT)) {
            (Some(c), _) if c != self.controller_id => {
                return refuse(format!("instance {provider_ref} belongs to another Lapse control plane"));
            }
            (_, Some(e)) if e != environment_id => {
                return refuse(format!("instance {provider_ref} already belongs to environment {e}"));
            }
            _ => {}
        }
        let mut resources = vec![provider_ref.to_owned()];
        resources.extend(
            i.block_device_mappings().iter().filter_map(|b| b.ebs().and_then(|e| e.volume_id())).map(str::to_owned),
        );
        let mut tags = vec![
            (TAG_ENVIRONMENT, environment_id.to_owned()),
            (TAG_CONTROLLER, self.controller_id.clone()),
            (TAG_TENANT, placement.tenant.clone()),
            (TAG_ADOPTING, "true".to_owned()),
        ];
        if let Some(at) = placement.expires_at {
            tags.push((TAG_EXPIRES, launch::rfc3339(at)));
        }
        let tags: Vec<Tag> = tags.into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
        self.client
            .create_tags()
            .set_resources(Some(resources))
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| check::error("CreateTags", e))?;
        Ok(Instance {
            environment_id: environment_id.to_owned(),
            provider_ref: provider_ref.to_owned(),
            status: check::status(state(i)).unwrap_or(crate::InstanceStatus::Stopped),
            endpoints: check::endpoints(i, ports),
            addresses: check::addresses(i),
            exit_code: None,
            user_data_path: None,
            exit_reason: None,
            keep: check::tag(i, super::TAG_KEEP).is_some(),
        })
    }

    pub(super) async fn end_adoption(&self, provider_ref: &str, keep: bool) -> Result<(), ProviderError> {
        let mut resources = vec![provider_ref.to_owned()];
        if !keep {
            let by_id = Filter::builder().name("instance-id").values(provider_ref).build();
            for i in self.describe_any(vec![by_id]).await? {
                resources.extend(
                    i.block_device_mappings()
                        .iter()
                        .filter_map(|b| b.ebs().and_then(|e| e.volume_id()))
                        .map(str::to_owned),
                );
            }
        }
        let keys: &[&str] = if keep {
            &[TAG_ADOPTING]
        } else {
            &[TAG_ADOPTING, TAG_ENVIRONMENT, TAG_CONTROLLER, TAG_TENANT, TAG_EXPIRES]
        };
        let tags: Vec<Tag> = keys.iter().map(|k| Tag::builder().key(*k).build()).collect();
        self.client
            .delete_tags()
            .set_resources(Some(resources))
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| check::error("DeleteTags", e))?;
        Ok(())
    }
}

/// Whether an instance is held by an adoption in progress (left out of `list`).
pub(super) fn is_adopting(i: &Ec2Instance) -> bool {
    check::tag(i, TAG_ADOPTING).is_some()
}

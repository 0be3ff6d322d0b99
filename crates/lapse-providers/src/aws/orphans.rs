//! The sweep's batch removal ([`Provider::remove_orphans`](crate::Provider::remove_orphans)):
//! the instances of many orphaned environments found in one `DescribeInstances` per
//! [`FILTER_VALUES`] environments (filtered by this controller's tag as every lookup is) and
//! terminated in one `TerminateInstances` per [`TERMINATE_IDS`] instances, instead of two
//! calls per environment. A batch EC2 refuses because one instance vanished meanwhile
//! (`InvalidInstanceID.NotFound`) is retried one instance at a time, so one gone instance
//! cannot keep the others alive. Each environment's SSH key is forgotten once its instances
//! are gone, as `delete` does.

use aws_sdk_ec2::types::{Filter, InstanceStateName};

use super::{AwsProvider, TAG_ENVIRONMENT, check, state};
use crate::ProviderError;

/// Environment ids per `tag:` filter of one `DescribeInstances` (EC2's limit is 200 values).
pub const FILTER_VALUES: usize = 200;

/// Instance ids per `TerminateInstances` call.
pub const TERMINATE_IDS: usize = 500;

impl AwsProvider {
    /// One result per environment id, in order.
    pub(super) async fn remove_many(&self, environment_ids: &[String]) -> Vec<Result<(), ProviderError>> {
        let mut results = Vec::with_capacity(environment_ids.len());
        for chunk in environment_ids.chunks(FILTER_VALUES) {
            let outcome = self.remove_chunk(chunk).await;
            for id in chunk {
                results.push(outcome.clone().and_then(|()| {
                    self.keys.remove(id).map_err(|e| e.into_provider(super::NAME, "forget the SSH key"))
                }));
            }
        }
        results
    }

    async fn remove_chunk(&self, environment_ids: &[String]) -> Result<(), ProviderError> {
        let filter =
            Filter::builder().name(format!("tag:{TAG_ENVIRONMENT}")).set_values(Some(environment_ids.to_vec()));
        let found = self.describe(vec![filter.build()]).await?;
        let live: Vec<String> = found
            .iter()
            .filter(|i| !matches!(state(i), Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)))
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        for part in live.chunks(TERMINATE_IDS) {
            match self.terminate(part).await {
                Err(ProviderError::Failed { message, .. }) if is_not_found(&message) && part.len() > 1 => {
                    for one in part {
                        match self.terminate(std::slice::from_ref(one)).await {
                            Err(ProviderError::Failed { message, .. }) if is_not_found(&message) => {}
                            other => other?,
                        }
                    }
                }
                Err(ProviderError::Failed { message, .. }) if is_not_found(&message) => {}
                other => other?,
            }
        }
        Ok(())
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), ProviderError> {
        self.client
            .terminate_instances()
            .set_instance_ids(Some(instance_ids.to_vec()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| check::error("TerminateInstances", e))
    }
}

fn is_not_found(message: &str) -> bool {
    message.starts_with("InvalidInstanceID.NotFound")
}

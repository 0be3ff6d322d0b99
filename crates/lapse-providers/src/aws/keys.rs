//! Key pairs: one per public key, shared by every environment that gives that key.
//!
//! **Contract.**
//! - The name is `lapse-<sha256 of the key's type and body, 16 hex>` ([`key_pair_name`]), so
//!   the same key always gives the same name and different keys (in practice) never do.
//! - [`ensure`] is idempotent and race-free: environments importing the same key at once all
//!   succeed and one key pair results. `InvalidKeyPair.Duplicate` is success once the existing
//!   pair is confirmed to hold the same key (`DescribeKeyPairs` with its public key; a pair of
//!   that name holding another key is refused, naming `spec.cloud.ssh_public_keys`, and never
//!   replaced). A pair removed between the two calls is imported again.
//! - [`release`] removes a pair after a failed create only when that create imported it and
//!   no instance (pending, running, stopping or stopped) has it. A create of another
//!   environment that loses the remaining race (its pair removed between its import and its
//!   RunInstances) gets `InvalidKeyPair.NotFound`, which the launch turns into a retryable
//!   failure: the next attempt imports the pair again. Nothing else ever deletes a pair: an
//!   environment's delete leaves it, since others may share it and it holds a public key only.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::Filter;
use sha2::{Digest, Sha256};

use super::check::{self, NAME};
use crate::ProviderError;

/// The key pair's name for a public key: by the hash of the key's type and body (the comment
/// does not count), so the same key is imported once.
pub fn key_pair_name(public_key: &str) -> String {
    let digest = Sha256::digest(canonical(public_key).as_bytes());
    format!("lapse-{}", digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// `TYPE BODY`, without the comment or extra spaces.
fn canonical(public_key: &str) -> String {
    public_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn refused(message: impl Into<String>) -> ProviderError {
    ProviderError::Permanent { provider: NAME, message: format!("spec.cloud.ssh_public_keys: {}", message.into()) }
}

/// Imports the key pair unless it exists; the name, and whether this call made it.
pub(super) async fn ensure(client: &Client, public_key: &str) -> Result<(String, bool), ProviderError> {
    let name = key_pair_name(public_key);
    // Twice at most: a pair removed between a Duplicate answer and the look-up is imported again.
    for _ in 0..2 {
        let imported = client
            .import_key_pair()
            .key_name(&name)
            .public_key_material(Blob::new(public_key.trim().as_bytes()))
            .send()
            .await;
        let message = match imported {
            Ok(_) => return Ok((name, true)),
            Err(e) => match check::error("ImportKeyPair", e) {
                ProviderError::Permanent { message, .. } => message,
                other => return Err(other),
            },
        };
        if !message.contains("InvalidKeyPair.Duplicate") {
            return Err(refused(message));
        }
        match existing(client, &name).await? {
            Some(Some(key)) if canonical(&key) != canonical(public_key) => {
                return Err(refused(format!("key pair {name} exists in this region with another key; remove it")));
            }
            Some(_) => return Ok((name, false)),
            None => continue,
        }
    }
    Err(ProviderError::Failed {
        provider: NAME,
        op: "ImportKeyPair",
        message: format!("key pair {name} was removed while it was imported; retrying later"),
    })
}

/// The pair's public key: `None` when there is no such pair, `Some(None)` when EC2 does not
/// give its key.
async fn existing(client: &Client, name: &str) -> Result<Option<Option<String>>, ProviderError> {
    let described = client.describe_key_pairs().key_names(name).include_public_key(true).send().await;
    match described {
        Ok(out) => {
            Ok(out.key_pairs().iter().find(|k| k.key_name() == Some(name)).map(|k| k.public_key().map(str::to_owned)))
        }
        Err(e) => match check::error("DescribeKeyPairs", e) {
            ProviderError::Permanent { message, .. } if message.contains("InvalidKeyPair.NotFound") => Ok(None),
            other => Err(other),
        },
    }
}

/// After a failed create: removes the pair if this create imported it and no instance has it.
/// Failures are logged, never returned: the create's own error is what matters.
pub(super) async fn release(client: &Client, name: &str, imported: bool) {
    if !imported {
        return;
    }
    let live = Filter::builder()
        .name("instance-state-name")
        .set_values(Some(["pending", "running", "stopping", "stopped"].map(String::from).to_vec()))
        .build();
    let users = client
        .describe_instances()
        .filters(Filter::builder().name("key-name").values(name).build())
        .filters(live)
        .send()
        .await;
    match users {
        Ok(out) if out.reservations().iter().all(|r| r.instances().is_empty()) => {}
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(key = %name, error = %check::error("DescribeInstances", e), "not removing the key pair of a failed create: its users are unknown");
            return;
        }
    }
    if let Err(e) = client.delete_key_pair().key_name(name).send().await {
        tracing::warn!(key = %name, error = %check::error("DeleteKeyPair", e), "could not remove the key pair of a failed create");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_the_keys_hash_without_its_comment() {
        assert_eq!(key_pair_name("ssh-ed25519 AAAA a@b"), key_pair_name("ssh-ed25519  AAAA other\n"));
        assert_ne!(key_pair_name("ssh-ed25519 AAAA"), key_pair_name("ssh-ed25519 AAAB"));
        assert_eq!(key_pair_name("ssh-ed25519 AAAA").len(), "lapse-".len() + 16);
    }
}

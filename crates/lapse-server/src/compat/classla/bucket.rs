//! The seed's bucket check before a start (`s3ValidationService.ts` `validateBucket`): the
//! name's format, then — unless the credentials are the seed's dummy ones — `HeadBucket`
//! through a [`BucketCheck`]. A failure is `400 INVALID_S3_BUCKET` with the seed's words.
//!
//! [`S3Check`] asks S3 through the AWS SDK's client (the request's keys when it gives them,
//! else the server's chain). A build without the `s3` feature uses [`NoCheck`], which lets
//! every well-formed bucket through (and says so in the log once).

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

/// Why `HeadBucket` refused, in the AWS SDK's error names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadBucketError {
    /// `NotFound`, `NoSuchBucket`.
    NotFound,
    /// `Forbidden`, `AccessDenied`.
    AccessDenied,
    /// `InvalidAccessKeyId`, `SignatureDoesNotMatch`.
    BadCredentials,
    /// Anything else, with its text.
    Other(String),
}

/// `HeadBucket` on `bucket` in `region` with the credentials given (or the server's own).
#[async_trait]
pub trait BucketCheck: Send + Sync {
    async fn head_bucket(
        &self,
        bucket: &str,
        region: &str,
        access_key_id: Option<&str>,
        secret_access_key: Option<&str>,
    ) -> Result<(), HeadBucketError>;
}

/// No S3 client configured: every bucket passes.
#[derive(Debug, Default)]
pub struct NoCheck {
    warned: AtomicBool,
}

#[async_trait]
impl BucketCheck for NoCheck {
    async fn head_bucket(
        &self,
        bucket: &str,
        _: &str,
        _: Option<&str>,
        _: Option<&str>,
    ) -> Result<(), HeadBucketError> {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(%bucket, "no S3 client is configured for the Classla adapter: buckets are not checked with HeadBucket");
        }
        Ok(())
    }
}

/// `HeadBucket` through the AWS SDK's S3 client: with the request's keys when it gives them,
/// else the server's own chain; `AWS_ENDPOINT_URL` names an S3-compatible endpoint.
#[cfg(feature = "s3")]
#[derive(Debug, Default)]
pub struct S3Check;

#[cfg(feature = "s3")]
#[async_trait]
impl BucketCheck for S3Check {
    async fn head_bucket(
        &self,
        bucket: &str,
        region: &str,
        access_key_id: Option<&str>,
        secret_access_key: Option<&str>,
    ) -> Result<(), HeadBucketError> {
        use lapse_providers::s3::{S3Client, S3Error};
        let client = match (access_key_id, secret_access_key) {
            (Some(key), Some(secret)) => S3Client::with_keys(region, key, secret).await,
            _ => S3Client::from_env(region, None).await,
        };
        match client.head_bucket(bucket).await {
            Ok(()) => Ok(()),
            Err(S3Error::NoSuchBucket { .. }) => Err(HeadBucketError::NotFound),
            Err(S3Error::Failed { message, .. }) => Err(refusal(&message)),
        }
    }
}

/// Sorts an S3 refusal's text into the seed's cases.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
fn refusal(message: &str) -> HeadBucketError {
    if ["InvalidAccessKeyId", "SignatureDoesNotMatch"].iter().any(|c| message.contains(c)) {
        HeadBucketError::BadCredentials
    } else if ["AccessDenied", "Forbidden", "403"].iter().any(|c| message.contains(c)) {
        HeadBucketError::AccessDenied
    } else {
        HeadBucketError::Other(message.to_owned())
    }
}

/// The seed's bucket name rule: `/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/`.
pub fn is_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (3..=63).contains(&b.len())
        && edge(b[0])
        && edge(b[b.len() - 1])
        && b.iter().all(|&c| edge(c) || c == b'.' || c == b'-')
}

/// The seed's dummy credentials: an id `dummy-key` or holding `dummy`, or a secret
/// `dummy-secret` or holding `dummy`.
pub fn is_dummy(access_key_id: Option<&str>, secret_access_key: Option<&str>) -> bool {
    access_key_id.is_some_and(|k| k.contains("dummy")) || secret_access_key.is_some_and(|s| s.contains("dummy"))
}

/// The seed's check: `Err` is the message of its `400 INVALID_S3_BUCKET`.
/// `request_credentials` are the request's (both given); else the server's are used.
pub async fn validate(
    check: &dyn BucketCheck,
    bucket: &str,
    region: &str,
    request_credentials: Option<(&str, &str)>,
    server_credentials: Option<(&str, &str)>,
) -> Result<(), String> {
    if !is_bucket_name(bucket) {
        return Err(
            "Invalid bucket name format. Bucket names must be 3-63 characters long, start and end with a lowercase \
                    letter or number, and contain only lowercase letters, numbers, hyphens, and periods."
                .into(),
        );
    }
    let credentials = request_credentials.or(server_credentials);
    if let Some((key, secret)) = credentials
        && is_dummy(Some(key), Some(secret))
    {
        return Ok(());
    }
    let (key, secret) = credentials.map_or((None, None), |(k, s)| (Some(k), Some(s)));
    check.head_bucket(bucket, region, key, secret).await.map_err(|e| match e {
        HeadBucketError::NotFound => format!("S3 bucket '{bucket}' does not exist"),
        HeadBucketError::AccessDenied => format!(
            "Access denied to S3 bucket '{bucket}'. Verify that the credentials have the necessary permissions \
             (s3:HeadBucket, s3:GetBucketLocation, s3:GetObject, s3:PutObject)."
        ),
        HeadBucketError::BadCredentials => {
            "Invalid AWS credentials. Please check your AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.".into()
        }
        HeadBucketError::Other(text) => format!("Failed to validate S3 bucket: {text}"),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Answers what it was given and remembers what it was asked.
    struct Fake(HeadBucketError, Mutex<Vec<String>>);

    #[async_trait]
    impl BucketCheck for Fake {
        async fn head_bucket(
            &self,
            bucket: &str,
            region: &str,
            key: Option<&str>,
            _: Option<&str>,
        ) -> Result<(), HeadBucketError> {
            self.1.lock().unwrap().push(format!("{bucket} {region} {key:?}"));
            Err(self.0.clone())
        }
    }

    #[tokio::test]
    async fn checks_as_the_seed() {
        let fake = Fake(HeadBucketError::NotFound, Mutex::default());
        let err = validate(&fake, "Bad_Name", "us-east-1", None, None).await.unwrap_err();
        assert!(err.starts_with("Invalid bucket name format"), "{err}");
        assert!(fake.1.lock().unwrap().is_empty(), "a bad name is never sent");
        assert_eq!(validate(&fake, "student-1", "eu-west-1", Some(("dummy-key", "x")), None).await, Ok(()));
        assert_eq!(validate(&fake, "student-1", "eu-west-1", None, Some(("k", "dummy-secret"))).await, Ok(()));
        assert!(fake.1.lock().unwrap().is_empty(), "dummy credentials skip HeadBucket");
        let err = validate(&fake, "student-1", "eu-west-1", Some(("AKIA", "s")), None).await.unwrap_err();
        assert_eq!(err, "S3 bucket 'student-1' does not exist");
        assert_eq!(fake.1.lock().unwrap().as_slice(), ["student-1 eu-west-1 Some(\"AKIA\")"]);
        let denied = Fake(HeadBucketError::AccessDenied, Mutex::default());
        assert!(
            validate(&denied, "b-1", "r", None, None)
                .await
                .unwrap_err()
                .starts_with("Access denied to S3 bucket 'b-1'")
        );
        for (name, ok) in
            [("abc", true), ("a.b-c", true), ("ab", false), ("-ab", false), ("abc.", false), ("ABC", false)]
        {
            assert_eq!(is_bucket_name(name), ok, "{name}");
        }
        assert!(is_bucket_name(&"a".repeat(63)) && !is_bucket_name(&"a".repeat(64)));
    }
}

//! An S3 client for workspaces (feature `s3`), over the official SDK's `aws-sdk-s3`.
//!
//! Credentials come from the server's standard AWS chain (`AWS_ACCESS_KEY_ID`, profiles, ...;
//! `AWS_ENDPOINT_URL` honoured), never from a spec. A workspace's own `endpoint` (an
//! S3-compatible service, moto in tests) is used with path-style addressing. Every call has a
//! deadline ([`CALL_TIMEOUT`]); bodies move in bounded pieces: [`S3Client::get`] hands out an
//! object chunk by chunk, and a large file goes up as a multipart upload ([`Multipart`]) of
//! [`PART_SIZE`] parts, so no whole workspace (nor a whole large file) is ever in memory.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

pub use aws_sdk_s3 as sdk;

/// Longest one S3 call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Size of each part of a multipart upload (S3's minimum is 5 MiB); files up to this size go
/// up in one `PutObject`.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// An S3 failure; `Display` says which call on which bucket, and S3's code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3Error {
    #[error("S3 bucket {bucket:?} does not exist")]
    NoSuchBucket { bucket: String },
    #[error("S3 {op} on {bucket:?} failed: {message}")]
    Failed { op: &'static str, bucket: String, message: String },
}

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// When it was written, seconds since the epoch.
    pub last_modified: i64,
}

/// The server's AWS configuration (environment, profiles, `AWS_ENDPOINT_URL`, the default
/// credentials chain, which caches what it fetches), loaded on first use and shared.
async fn server_config() -> &'static SdkConfig {
    static CONFIG: tokio::sync::OnceCell<SdkConfig> = tokio::sync::OnceCell::const_new();
    CONFIG.get_or_init(|| aws_config::defaults(BehaviorVersion::latest()).load()).await
}

/// A client of one region and endpoint.
#[derive(Clone, Debug)]
pub struct S3Client {
    inner: aws_sdk_s3::Client,
}

impl S3Client {
    /// A client from the server's AWS chain, for `region`, at `endpoint` when given (path
    /// style; else the chain's `AWS_ENDPOINT_URL`, else AWS). The chain is read once per
    /// process ([`server_config`]); a client costs no file or network IO.
    pub async fn from_env(region: &str, endpoint: Option<&str>) -> S3Client {
        let mut config = server_config().await.to_builder().region(Region::new(region.to_owned()));
        if let Some(url) = endpoint {
            config = config.endpoint_url(url);
        }
        S3Client::from_sdk_config(&config.build())
    }

    /// A client signing with these keys (a caller's own, as the Classla API takes them), in
    /// `region`; the endpoint as the environment names it (`AWS_ENDPOINT_URL`).
    pub async fn with_keys(region: &str, access_key_id: &str, secret_access_key: &str) -> S3Client {
        let keys = aws_sdk_s3::config::Credentials::new(access_key_id, secret_access_key, None, None, "request");
        let config = server_config()
            .await
            .to_builder()
            .region(Region::new(region.to_owned()))
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(keys));
        S3Client::from_sdk_config(&config.build())
    }

    /// A client of an SDK configuration (tests: moto's loader). Path-style addressing when the
    /// configuration names an endpoint.
    pub fn from_sdk_config(config: &SdkConfig) -> S3Client {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build();
        let s3 = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(config.endpoint_url().is_some())
            .timeout_config(timeouts)
            .build();
        S3Client { inner: aws_sdk_s3::Client::from_conf(s3) }
    }

    /// Whether the bucket exists and these credentials reach it.
    pub async fn head_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        self.inner.head_bucket().bucket(bucket).send().await.map_err(|e| error("HeadBucket", bucket, e))?;
        Ok(())
    }

    /// Makes the bucket (tests and the benchmark; the server never makes buckets).
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        self.inner.create_bucket().bucket(bucket).send().await.map_err(|e| error("CreateBucket", bucket, e))?;
        Ok(())
    }

    /// Every object under `prefix`, paged; refused past `max_objects`.
    pub async fn list(&self, bucket: &str, prefix: &str, max_objects: usize) -> Result<Vec<ObjectInfo>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self.inner.list_objects_v2().bucket(bucket).prefix(prefix);
            if let Some(t) = &token {
                req = req.continuation_token(t);
            }
            let page = req.send().await.map_err(|e| error("ListObjectsV2", bucket, e))?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                out.push(ObjectInfo {
                    key: key.to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: o.last_modified().map_or(0, |t| t.secs()),
                });
                if out.len() > max_objects {
                    return Err(S3Error::Failed {
                        op: "ListObjectsV2",
                        bucket: bucket.into(),
                        message: format!("more than {max_objects} objects under {prefix:?}"),
                    });
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// An object's body, to be read chunk by chunk.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<ObjectBody, S3Error> {
        let out =
            self.inner.get_object().bucket(bucket).key(key).send().await.map_err(|e| error("GetObject", bucket, e))?;
        Ok(ObjectBody { body: out.body, bucket: bucket.to_owned() })
    }

    /// Writes a whole (small) object.
    pub async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<(), S3Error> {
        self.inner
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| error("PutObject", bucket, e))?;
        Ok(())
    }

    /// Starts a multipart upload of `key`.
    pub async fn start_multipart(&self, bucket: &str, key: &str) -> Result<Multipart, S3Error> {
        let out = self
            .inner
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| error("CreateMultipartUpload", bucket, e))?;
        let upload_id = out.upload_id().unwrap_or_default().to_owned();
        Ok(Multipart { client: self.clone(), bucket: bucket.into(), key: key.into(), upload_id, parts: Vec::new() })
    }

    /// Removes objects (one call each; a missing one is no error).
    pub async fn delete(&self, bucket: &str, keys: &[String]) -> Result<(), S3Error> {
        for key in keys {
            self.inner
                .delete_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| error("DeleteObject", bucket, e))?;
        }
        Ok(())
    }
}

/// An object's body being read.
pub struct ObjectBody {
    body: ByteStream,
    bucket: String,
}

impl ObjectBody {
    /// The next chunk; `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, S3Error> {
        self.body.try_next().await.map_err(|e| S3Error::Failed {
            op: "GetObject",
            bucket: self.bucket.clone(),
            message: format!("reading the body: {e}"),
        })
    }
}

/// A multipart upload in progress: [`Multipart::part`] each piece, then
/// [`Multipart::complete`], or [`Multipart::abort`] on failure.
pub struct Multipart {
    client: S3Client,
    bucket: String,
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
}

impl Multipart {
    pub async fn part(&mut self, body: Bytes) -> Result<(), S3Error> {
        let number = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        let out = self
            .client
            .inner
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| error("UploadPart", &self.bucket, e))?;
        self.parts.push(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag).build());
        Ok(())
    }

    /// Completes the upload. A `200` whose body the SDK cannot read as a result (moto names its
    /// root `CompleteMultipartUploadResponse` for some requests; S3 itself sends `<Error>` for a
    /// failure, which stays one) is confirmed with `HeadObject`: the object must be there with
    /// the multipart ETag of as many parts as were sent.
    pub async fn complete(self) -> Result<(), S3Error> {
        let parts = self.parts.len();
        let done = CompletedMultipartUpload::builder().set_parts(Some(self.parts)).build();
        let sent = self
            .client
            .inner
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(done)
            .send()
            .await;
        let e = match sent {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let unreadable_success = matches!(&e, SdkError::ServiceError(s)
            if s.raw().status().as_u16() == 200 && s.err().code().is_none());
        if unreadable_success {
            let suffix = format!("-{parts}");
            let head = self.client.inner.head_object().bucket(&self.bucket).key(&self.key).send().await;
            if head.is_ok_and(|h| h.e_tag().is_some_and(|t| t.trim_matches('"').ends_with(&suffix))) {
                return Ok(());
            }
        }
        Err(error("CompleteMultipartUpload", &self.bucket, e))
    }

    /// Drops the parts sent so far (best effort: a bucket lifecycle rule collects the rest).
    pub async fn abort(self) {
        let _ = self
            .client
            .inner
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
    }
}

fn error<E: ProvideErrorMetadata + std::fmt::Debug>(
    op: &'static str,
    bucket: &str,
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> S3Error {
    let message = match &e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            if matches!(err.code(), Some("NoSuchBucket" | "NotFound")) && op != "GetObject" {
                return S3Error::NoSuchBucket { bucket: bucket.into() };
            }
            let status = s.raw().status().as_u16();
            match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message} (HTTP {status})"),
                (Some(code), None) => format!("{code} (HTTP {status})"),
                // No S3 error document: what the answer said is all there is.
                (None, _) => {
                    let body = s.raw().body().bytes().map(String::from_utf8_lossy).unwrap_or_default();
                    format!("HTTP {status} without an S3 error: {:?}", body.chars().take(200).collect::<String>())
                }
            }
        }
        SdkError::TimeoutError(_) => format!("no answer within {CALL_TIMEOUT:?}"),
        SdkError::DispatchFailure(d) => format!("could not reach S3: {d:?}"),
        other => format!("{other}"),
    };
    // Bounded: a service's text reaches records and events.
    let message = message.chars().take(512).collect();
    S3Error::Failed { op, bucket: bucket.into(), message }
}

//! The Classla adapter's bucket check through its route: `POST /api/containers/start` with
//! real credentials asks the [`BucketCheck`] (a test one here; the S3 client is wired at
//! merge) with the request's bucket, region and key, and its refusal is the seed's `400
//! INVALID_S3_BUCKET` that makes nothing; dummy credentials skip it; a bucket it accepts
//! starts cold (no queue).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use lapse_providers::ProviderSet;
use tower::ServiceExt;

use super::Harness;
use super::probed::{self, Probed};
use crate::compat::classla::bucket::{BucketCheck, HeadBucketError};
use crate::compat::classla::{self, ClasslaConfig};

/// Refuses `missing-bucket` as not found, accepts the rest; remembers what it was asked.
#[derive(Default)]
struct Buckets(Mutex<Vec<String>>);

#[async_trait]
impl BucketCheck for Buckets {
    async fn head_bucket(
        &self,
        bucket: &str,
        region: &str,
        key: Option<&str>,
        secret: Option<&str>,
    ) -> Result<(), HeadBucketError> {
        self.0.lock().unwrap().push(format!("{bucket} {region} {key:?} {secret:?}"));
        if bucket == "missing-bucket" { Err(HeadBucketError::NotFound) } else { Ok(()) }
    }
}

async fn start(router: &axum::Router, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    let req = Request::post("/api/containers/start")
        .header("authorization", "Bearer k")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(start_paused = true)]
async fn head_bucket_is_asked_with_the_requests_credentials_and_its_refusal_is_a_400() {
    let mut providers = ProviderSet::default();
    providers.insert(Arc::new(Probed::new()));
    let h = Harness::start(providers, |_| {}).await;
    let vars = [
        ("API_KEY", "k"),
        ("DOMAIN", "ide.example.com"),
        ("PRE_WARMED_QUEUE_SIZE", "0"),
        ("MAX_MEMORY_PERCENT", "101"),
    ];
    let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned());
    let config = ClasslaConfig::from_env(get, probed::NAME, "http://management:3001".into(), false).unwrap();
    let buckets = Arc::new(Buckets::default());
    let router = classla::start(&h.app, config, buckets.clone()).await.unwrap();

    let real = serde_json::json!({"s3Bucket": "missing-bucket", "s3Region": "eu-west-3",
                                  "awsAccessKeyId": "AKIAREAL", "awsSecretAccessKey": "s3cr3t"});
    let (status, body) = start(&router, real).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_S3_BUCKET");
    assert_eq!(body["error"]["message"], "S3 bucket 'missing-bucket' does not exist");
    assert_eq!(body["path"], "/api/containers/start");
    assert_eq!(buckets.0.lock().unwrap().as_slice(), [r#"missing-bucket eu-west-3 Some("AKIAREAL") Some("s3cr3t")"#]);
    let made = h.cx().store.list(&Default::default()).await.unwrap();
    assert!(made.is_empty(), "a refused bucket makes nothing: {made:?}");

    let dummy =
        serde_json::json!({"s3Bucket": "missing-bucket", "awsAccessKeyId": "dummy-key", "awsSecretAccessKey": "x"});
    let (status, body) = start(&router, dummy).await;
    assert_eq!(status, StatusCode::CREATED, "dummy credentials skip HeadBucket: {body}");
    assert_eq!(buckets.0.lock().unwrap().len(), 1);
    assert_eq!((body["isPreWarmed"].as_bool(), body["status"].as_str()), (Some(false), Some("starting")));
    let id = body["id"].as_str().unwrap();
    assert_eq!(body["urls"]["codeServer"], format!("https://ide.example.com/code/{id}"), "https for a domain");

    let (status, body) = start(&router, serde_json::json!({"s3Bucket": "present-bucket"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        buckets.0.lock().unwrap()[1],
        "present-bucket us-east-1 None None",
        "AWS_REGION's default, the server's credentials (none)"
    );
}

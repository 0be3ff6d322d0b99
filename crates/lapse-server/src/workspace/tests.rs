//! Against a real moto S3: the S3 client's contract, and [`super::sync::push`] with a provider
//! whose archive is hostile:
//! entries with `..` or absolute paths refuse the whole push, and nothing is deleted.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapse_core::model::Spec;
use lapse_core::validate::FieldError;
use lapse_core::workspace::Workspace;
use lapse_providers::archive::{ArchiveStream, end_marker, pad};
use lapse_providers::aws::moto::{MotoServer, REGION};
use lapse_providers::s3::S3Client;
use lapse_providers::sim::{SimConfig, SimProvider};
use lapse_providers::{Instance, Placement, Provider, ProviderError};

use super::sync::{Limits, SyncError, push};

/// The sim provider, whose archive is the given raw tar entries.
struct Hostile {
    sim: SimProvider,
    entries: Vec<(String, Vec<u8>)>,
}

fn raw_tar(entries: &[(String, Vec<u8>)]) -> ArchiveStream {
    let mut data = Vec::new();
    for (path, body) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        // Written raw: `set_path` would refuse what a hostile engine may send.
        let name = &mut h.as_gnu_mut().expect("a GNU header").name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        data.extend_from_slice(h.as_bytes());
        data.extend_from_slice(body);
        data.extend_from_slice(&pad(body.len() as u64));
    }
    data.extend_from_slice(&end_marker());
    futures::stream::iter([Ok(Bytes::from(data))]).boxed()
}

#[async_trait]
impl Provider for Hostile {
    fn name(&self) -> &'static str {
        self.sim.name()
    }
    fn validate(&self, spec: &Spec) -> Result<(), FieldError> {
        self.sim.validate(spec)
    }
    async fn health(&self) -> Result<String, ProviderError> {
        self.sim.health().await
    }
    async fn ensure_running(&self, id: &str, p: &Placement, spec: &Spec) -> Result<Instance, ProviderError> {
        self.sim.ensure_running(id, p, spec).await
    }
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), ProviderError> {
        self.sim.stop(id, grace).await
    }
    async fn delete(&self, id: &str, grace: Duration) -> Result<(), ProviderError> {
        self.sim.delete(id, grace).await
    }
    async fn inspect(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        self.sim.inspect(id).await
    }
    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        self.sim.list().await
    }
    async fn get_archive(&self, _id: &str, _spec: &Spec, _dir: &str) -> Result<ArchiveStream, ProviderError> {
        Ok(raw_tar(&self.entries))
    }
}

#[tokio::test]
async fn a_hostile_archive_refuses_the_push_and_deletes_nothing() {
    let moto = MotoServer::start("AKIDLAPSEUNIT0000001", "unit-secret").await.expect("moto starts (LAPSE_MOTO_SERVER)");
    let s3 = S3Client::from_sdk_config(&moto.loader(REGION).load().await);
    s3.create_bucket("hostile-push").await.unwrap();
    s3.put("hostile-push", "p/keep.txt", Bytes::from_static(b"keep")).await.unwrap();
    let ws = Workspace { bucket: "hostile-push".into(), prefix: "p".into(), path: "/ws".into(), ..Default::default() };
    let spec = Spec { provider: "sim".into(), workspace: Some(ws.clone()), ..Default::default() };
    let limits = Limits { max_bytes: 1 << 20, max_files: 100 };
    let token = "t0k3n";
    for hostile in ["ws/../../etc/passwd", "ws//abs", "ws/a/../../b", "ws/\\..\\x"] {
        let provider = Hostile {
            sim: SimProvider::new(SimConfig::default()),
            entries: vec![("ws/.lapse-sync".into(), token.as_bytes().to_vec()), (hostile.into(), b"bad".to_vec())],
        };
        let got = push(&provider, "e", &spec, &ws, &s3, limits, Some(token)).await;
        assert!(matches!(got, Err(SyncError::Archive(_))), "{hostile}: {got:?}");
        let keys: Vec<String> = s3.list("hostile-push", "", 100).await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, ["p/keep.txt"], "{hostile}: nothing written, nothing deleted");
    }
    // The same archive without the hostile entry, token held: the push makes the prefix
    // match the directory.
    let provider = Hostile {
        sim: SimProvider::new(SimConfig::default()),
        entries: vec![("ws/.lapse-sync".into(), token.as_bytes().to_vec()), ("ws/new.txt".into(), b"new".to_vec())],
    };
    let stats = push(&provider, "e", &spec, &ws, &s3, limits, Some(token)).await.unwrap();
    assert_eq!((stats.files, stats.deleted), (1, 1));
    let keys: Vec<String> = s3.list("hostile-push", "", 100).await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["p/new.txt"]);
}

/// The S3 client's contract, which other parts use (`head_bucket`): missing buckets are
/// `NoSuchBucket`, a large object goes up in parts and comes back whole, listing is paged.
#[tokio::test]
async fn the_s3_client_against_moto() {
    use lapse_providers::s3::{PART_SIZE, S3Error};
    let moto = MotoServer::start("AKIDLAPSEUNIT0000002", "unit-secret").await.expect("moto starts (LAPSE_MOTO_SERVER)");
    let s3 = S3Client::from_sdk_config(&moto.loader(REGION).load().await);
    assert_eq!(s3.head_bucket("absent").await, Err(S3Error::NoSuchBucket { bucket: "absent".into() }));
    assert!(matches!(s3.list("absent", "", 10).await, Err(S3Error::NoSuchBucket { .. })));
    s3.create_bucket("client").await.unwrap();
    s3.head_bucket("client").await.unwrap();

    let big: Vec<u8> = (0..PART_SIZE * 2 + 12345).map(|i| (i % 251) as u8).collect();
    let mut upload = s3.start_multipart("client", "big.bin").await.unwrap();
    for part in big.chunks(PART_SIZE) {
        upload.part(Bytes::copy_from_slice(part)).await.unwrap();
    }
    upload.complete().await.unwrap();
    let mut body = s3.get("client", "big.bin").await.unwrap();
    let mut back = Vec::new();
    while let Some(chunk) = body.next_chunk().await.unwrap() {
        back.extend_from_slice(&chunk);
    }
    assert!(back == big, "the object comes back whole ({} of {} bytes)", back.len(), big.len());

    for i in 0..1005 {
        s3.put("client", &format!("many/{i:04}"), Bytes::from_static(b"x")).await.unwrap();
    }
    assert_eq!(s3.list("client", "many/", 2000).await.unwrap().len(), 1005, "listing follows pages of 1000");
    assert!(s3.list("client", "many/", 1000).await.is_err(), "refused past max_objects");
    s3.delete("client", &["many/0000".into(), "never-there".into()]).await.unwrap();
    assert_eq!(s3.list("client", "many/", 2000).await.unwrap().len(), 1004);
}

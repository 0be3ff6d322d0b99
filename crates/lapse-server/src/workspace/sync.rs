//! One pull and one push: S3 objects into an environment's directory and back, as tar
//! streams through the provider ([`Provider::put_archive`], [`Provider::get_archive`]).
//!
//! - **Pull** lists the prefix, then streams every object (skipping excludes, directory
//!   markers and keys that are not plain relative paths) into the directory, followed by
//!   the token file ([`TOKEN_FILE`]). Files already there and not in the workspace are left.
//! - **Push** reads the directory's archive entry by entry and uploads each file that is
//!   new, of another size, or not older than its object (`PutObject` up to [`PART_SIZE`],
//!   a multipart upload beyond), then deletes the objects of files no longer present, but
//!   only when the archive held the token of the last pull; without it (a resource made
//!   afresh, a directory never pulled) nothing is deleted.
//!
//! Both refuse a workspace above the size or file limits before writing anything (a pull) or
//! deleting anything (a push); a push refuses an archive with an entry that is not a plain
//! relative path (`..`, absolute) and deletes nothing then. Memory holds at most one part.

use std::collections::{HashMap, HashSet};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use lapse_core::model::Spec;
use lapse_core::workspace::{TOKEN_FILE, Workspace};
use lapse_providers::archive::{self, ArchiveError, EntryKind, TarReader};
use lapse_providers::s3::{ObjectInfo, PART_SIZE, S3Client, S3Error};
use lapse_providers::{Provider, ProviderError};
use tokio::sync::mpsc;

/// Caps on one workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_files: usize,
}

/// What one pull or push moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
    pub deleted: u64,
    pub skipped: u64,
    /// A push found the last pull's token in the directory (it may delete objects).
    pub token_found: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("the workspace is above its limit: {0}")]
    TooLarge(String),
    #[error("the sync did not finish within {0:?}")]
    TimedOut(std::time::Duration),
}

/// Bytes read from an archive per call while uploading.
const READ_CHUNK: usize = 1024 * 1024;

/// The directory's path as an archive entry prefix (no leading `/`).
fn root_of(ws: &Workspace) -> String {
    ws.path.trim_matches('/').to_owned()
}

/// The relative path of a key under the workspace's prefix, when it is one a pull writes.
fn relative<'k>(ws: &Workspace, prefix: &str, key: &'k str) -> Option<&'k str> {
    let rel = key.strip_prefix(prefix)?;
    if rel.ends_with('/') || rel == TOKEN_FILE {
        return None;
    }
    let rel = archive::safe_relative(rel).ok()?;
    (!ws.excludes().matches(rel, false)).then_some(rel)
}

/// Pulls the workspace into the environment; returns what moved and the token written.
pub async fn pull(
    provider: &dyn Provider,
    environment_id: &str,
    spec: &Spec,
    ws: &Workspace,
    s3: &S3Client,
    limits: Limits,
) -> Result<(Stats, String), SyncError> {
    let prefix = ws.key_prefix();
    let objects = s3.list(&ws.bucket, &prefix, limits.max_files).await?;
    let mut stats = Stats::default();
    let mut chosen: Vec<(String, ObjectInfo)> = Vec::new();
    for o in objects {
        match relative(ws, &prefix, &o.key) {
            Some(rel) => {
                stats.files += 1;
                stats.bytes += o.size;
                chosen.push((rel.to_owned(), o));
            }
            None => stats.skipped += 1,
        }
    }
    if stats.bytes > limits.max_bytes {
        return Err(SyncError::TooLarge(format!("{} bytes, at most {}", stats.bytes, limits.max_bytes)));
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let root = root_of(ws);
    let bucket = ws.bucket.clone();
    let client = s3.clone();
    let token_body = token.clone();
    let producer = tokio::spawn(async move {
        if let Err(e) = produce(&client, &bucket, &root, chosen, &token_body, &tx).await {
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed();
    let written = provider.put_archive(environment_id, spec, "/", stream).await;
    producer.abort();
    written?;
    Ok((stats, token))
}

async fn produce(
    s3: &S3Client,
    bucket: &str,
    root: &str,
    objects: Vec<(String, ObjectInfo)>,
    token: &str,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), SyncError> {
    let closed = || SyncError::Archive(ArchiveError::Io(std::io::Error::other("the environment stopped reading")));
    let send = |b: Bytes| async move { tx.send(Ok(b)).await.map_err(|_| closed()) };
    send(archive::header_bytes(root, EntryKind::Dir, 0, 0).map_err(ArchiveError::Io)?).await?;
    for (rel, o) in objects {
        let path = format!("{root}/{rel}");
        let mtime = o.last_modified.max(0) as u64;
        send(archive::header_bytes(&path, EntryKind::File, o.size, mtime).map_err(ArchiveError::Io)?).await?;
        let mut body = s3.get(bucket, &o.key).await?;
        let mut left = o.size;
        while let Some(chunk) = body.next_chunk().await? {
            if chunk.len() as u64 > left {
                return Err(SyncError::S3(S3Error::Failed {
                    op: "GetObject",
                    bucket: bucket.into(),
                    message: format!("{} is longer than listed (changed during the pull)", o.key),
                }));
            }
            left -= chunk.len() as u64;
            send(chunk).await?;
        }
        if left > 0 {
            return Err(SyncError::S3(S3Error::Failed {
                op: "GetObject",
                bucket: bucket.into(),
                message: format!("{} is shorter than listed (changed during the pull)", o.key),
            }));
        }
        send(archive::pad(o.size)).await?;
    }
    let token_path = format!("{root}/{TOKEN_FILE}");
    send(archive::header_bytes(&token_path, EntryKind::File, token.len() as u64, 0).map_err(ArchiveError::Io)?).await?;
    send(Bytes::copy_from_slice(token.as_bytes())).await?;
    send(archive::pad(token.len() as u64)).await?;
    send(archive::end_marker()).await
}

/// Pushes the environment's directory to the workspace. `token` is the last pull's: objects
/// of files no longer present are deleted only when the directory holds it.
pub async fn push(
    provider: &dyn Provider,
    environment_id: &str,
    spec: &Spec,
    ws: &Workspace,
    s3: &S3Client,
    limits: Limits,
    token: Option<&str>,
) -> Result<Stats, SyncError> {
    let prefix = ws.key_prefix();
    let excludes = ws.excludes();
    let remote: HashMap<String, ObjectInfo> =
        s3.list(&ws.bucket, &prefix, limits.max_files).await?.into_iter().map(|o| (o.key.clone(), o)).collect();
    let stream = provider.get_archive(environment_id, spec, &ws.path).await?;
    let mut reader = TarReader::new(stream);
    let mut stats = Stats::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut token_found = false;
    while let Some(entry) = reader.next_entry().await? {
        // Entries are `<basename>/<rel>`; the directory itself is `<basename>`.
        let Some((_, rel)) = entry.path.split_once('/') else { continue };
        let rel = archive::safe_relative(rel)?.to_owned();
        if entry.kind != EntryKind::File {
            continue;
        }
        if rel == TOKEN_FILE {
            let body = read_whole(&mut reader, 256).await?;
            token_found = token.is_some_and(|t| body.as_ref() == t.as_bytes());
            continue;
        }
        if excludes.matches(&rel, false) {
            stats.skipped += 1;
            continue;
        }
        stats.files += 1;
        stats.bytes += entry.size;
        if stats.files > limits.max_files as u64 || stats.bytes > limits.max_bytes {
            return Err(SyncError::TooLarge(format!(
                "{} files and {} bytes so far, at most {} files and {} bytes",
                stats.files, stats.bytes, limits.max_files, limits.max_bytes
            )));
        }
        let key = format!("{prefix}{rel}");
        let unchanged =
            remote.get(&key).is_some_and(|o| o.size == entry.size && (entry.mtime as i64) < o.last_modified);
        seen.insert(key.clone());
        if unchanged {
            continue;
        }
        upload(s3, &ws.bucket, &key, entry.size, &mut reader).await?;
    }
    stats.token_found = token_found;
    if token.is_some() && token_found {
        let gone: Vec<String> =
            remote.keys().filter(|k| !seen.contains(*k) && relative(ws, &prefix, k).is_some()).cloned().collect();
        stats.deleted = gone.len() as u64;
        s3.delete(&ws.bucket, &gone).await?;
    }
    Ok(stats)
}

/// The whole body of a small entry (at most `max` bytes; more is an error).
async fn read_whole(reader: &mut TarReader, max: usize) -> Result<Bytes, SyncError> {
    let mut out = BytesMut::new();
    loop {
        let chunk = reader.read_body(READ_CHUNK).await?;
        if chunk.is_empty() {
            return Ok(out.freeze());
        }
        if out.len() + chunk.len() > max {
            return Err(SyncError::Archive(ArchiveError::Malformed("the token file is too large".into())));
        }
        out.extend_from_slice(&chunk);
    }
}

/// Uploads the current entry's body (`size` bytes) as `key`.
async fn upload(s3: &S3Client, bucket: &str, key: &str, size: u64, reader: &mut TarReader) -> Result<(), SyncError> {
    if size <= PART_SIZE as u64 {
        let body = read_whole(reader, PART_SIZE).await?;
        s3.put(bucket, key, body).await?;
        return Ok(());
    }
    let mut upload = s3.start_multipart(bucket, key).await?;
    let sent: Result<(), SyncError> = async {
        let mut part = BytesMut::with_capacity(PART_SIZE);
        loop {
            let chunk = reader.read_body(READ_CHUNK).await?;
            if chunk.is_empty() {
                break;
            }
            part.extend_from_slice(&chunk);
            if part.len() >= PART_SIZE {
                let full = part.split_to(PART_SIZE).freeze();
                upload.part(full).await?;
            }
        }
        if !part.is_empty() {
            upload.part(part.freeze()).await?;
        }
        Ok(())
    }
    .await;
    match sent {
        Ok(()) => Ok(upload.complete().await?),
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    }
}

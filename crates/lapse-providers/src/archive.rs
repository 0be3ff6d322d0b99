//! Tar streams in and out of environments ([`crate::Provider::get_archive`],
//! [`crate::Provider::put_archive`]): a reader and a writer that never hold more than one
//! chunk of an entry, and the one rule of which entry paths are acceptable.
//!
//! The reader ([`TarReader`]) reads ustar, GNU (long names) and PAX (`path`, `size`) headers
//! from any byte stream, one entry at a time, its body in chunks; it refuses (never guesses)
//! a malformed header. [`safe_relative`] is the check every consumer applies to an entry's
//! path: relative, no `.`/`..`/empty segment, no NUL or backslash, valid UTF-8, bounded.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;

/// A tar stream.
pub type ArchiveStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Longest entry path accepted (bytes).
pub const MAX_ENTRY_PATH: usize = 4096;
/// Largest PAX or GNU long-name record read.
const MAX_EXTENSION: u64 = 64 * 1024;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// Symlinks, hard links, devices, FIFOs: never followed nor written.
    Other,
}

/// One entry's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    /// The path as the archive gives it (leading `./` removed, trailing `/` removed).
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading the archive: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed tar archive: {0}")]
    Malformed(String),
    #[error("refused archive entry {path:?}: {why}")]
    Refused { path: String, why: &'static str },
}

/// Checks an entry path (after any root component is removed): relative, only normal
/// segments. Returns the path without a trailing `/`.
pub fn safe_relative(path: &str) -> Result<&str, ArchiveError> {
    let refuse = |why| ArchiveError::Refused { path: path.chars().take(200).collect(), why };
    let p = path.trim_end_matches('/');
    if p.len() > MAX_ENTRY_PATH {
        return Err(refuse("path too long"));
    }
    if p.starts_with('/') {
        return Err(refuse("absolute path"));
    }
    if p.contains(['\0', '\\']) || p.chars().any(char::is_control) {
        return Err(refuse("NUL, backslash or control character"));
    }
    if p.is_empty() || p.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(refuse("empty, '.' or '..' segment"));
    }
    Ok(p)
}

/// Reads a tar stream entry by entry.
pub struct TarReader {
    stream: ArchiveStream,
    buf: BytesMut,
    /// Bytes of the current entry's body not yet read, and its padding.
    body_left: u64,
    pad_left: u64,
    done: bool,
}

impl TarReader {
    pub fn new(stream: ArchiveStream) -> Self {
        TarReader { stream, buf: BytesMut::new(), body_left: 0, pad_left: 0, done: false }
    }

    /// Fills the buffer to at least `n` bytes; false at the stream's end.
    async fn fill(&mut self, n: usize) -> Result<bool, ArchiveError> {
        while self.buf.len() < n {
            match self.stream.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn skip(&mut self, mut n: u64) -> Result<(), ArchiveError> {
        while n > 0 {
            if self.buf.is_empty() && !self.fill(1).await? {
                return Err(ArchiveError::Malformed("archive ends inside an entry".into()));
            }
            let take = (self.buf.len() as u64).min(n) as usize;
            let _ = self.buf.split_to(take);
            n -= take as u64;
        }
        Ok(())
    }

    async fn read_exact_small(&mut self, n: u64) -> Result<Vec<u8>, ArchiveError> {
        let size = usize::try_from(n).map_err(|_| ArchiveError::Malformed("record too large".into()))?;
        if !self.fill(size).await? {
            return Err(ArchiveError::Malformed("archive ends inside a record".into()));
        }
        let data = self.buf.split_to(size).to_vec();
        self.skip(padding(n)).await?;
        Ok(data)
    }

    /// The next entry's header (the previous entry's unread body is skipped); `None` at the
    /// archive's end.
    pub async fn next_entry(&mut self) -> Result<Option<EntryHeader>, ArchiveError> {
        self.skip(self.body_left + self.pad_left).await?;
        self.body_left = 0;
        self.pad_left = 0;
        let mut long_path: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            if self.done || !self.fill(512).await? {
                self.done = true;
                if !self.buf.is_empty() {
                    return Err(ArchiveError::Malformed("archive ends inside a header".into()));
                }
                return Ok(None);
            }
            let block = self.buf.split_to(512);
            if block.iter().all(|b| *b == 0) {
                // The end-of-archive marker; what follows is ignored.
                self.done = true;
                return Ok(None);
            }
            let header = tar::Header::from_byte_slice(&block);
            let sum = header.cksum().map_err(|e| ArchiveError::Malformed(format!("checksum field: {e}")))?;
            let computed: u32 =
                block.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u32::from(*b) }).sum();
            if sum != computed {
                return Err(ArchiveError::Malformed("header checksum mismatch".into()));
            }
            let size = header.entry_size().map_err(|e| ArchiveError::Malformed(format!("size field: {e}")))?;
            let kind = header.entry_type();
            if kind.is_gnu_longname() || kind.is_pax_local_extensions() {
                if size > MAX_EXTENSION {
                    return Err(ArchiveError::Malformed("extension record too large".into()));
                }
                let data = self.read_exact_small(size).await?;
                if kind.is_gnu_longname() {
                    let name = data.split(|b| *b == 0).next().unwrap_or_default();
                    long_path = Some(utf8(name)?);
                } else {
                    for (key, value) in pax_records(&data)? {
                        match key.as_str() {
                            "path" => long_path = Some(utf8(&value)?),
                            "size" => {
                                pax_size = Some(
                                    utf8(&value)?.parse().map_err(|_| ArchiveError::Malformed("PAX size".into()))?,
                                )
                            }
                            _ => {}
                        }
                    }
                }
                continue;
            }
            if kind.is_pax_global_extensions() || kind.is_gnu_longlink() {
                self.skip(size + padding(size)).await?;
                continue;
            }
            let size = pax_size.unwrap_or(size);
            let path = match long_path.take() {
                Some(p) => p,
                None => utf8(&header.path_bytes())?,
            };
            let entry_kind = if kind.is_file() || kind == tar::EntryType::Continuous {
                EntryKind::File
            } else if kind.is_dir() {
                EntryKind::Dir
            } else {
                EntryKind::Other
            };
            // Links and devices carry no body in their size; whatever they declare is skipped.
            self.body_left = size;
            self.pad_left = padding(size);
            let mtime = header.mtime().unwrap_or(0);
            let path = path.strip_prefix("./").unwrap_or(&path).trim_end_matches('/').to_owned();
            return Ok(Some(EntryHeader { path, kind: entry_kind, size, mtime }));
        }
    }

    /// Up to `max` bytes of the current entry's body; empty once it is all read.
    pub async fn read_body(&mut self, max: usize) -> Result<Bytes, ArchiveError> {
        if self.body_left == 0 {
            return Ok(Bytes::new());
        }
        if self.buf.is_empty() && !self.fill(1).await? {
            return Err(ArchiveError::Malformed("archive ends inside an entry".into()));
        }
        let take = (self.buf.len() as u64).min(self.body_left).min(max as u64) as usize;
        self.body_left -= take as u64;
        Ok(self.buf.split_to(take).freeze())
    }
}

fn utf8(b: &[u8]) -> Result<String, ArchiveError> {
    String::from_utf8(b.to_vec()).map_err(|_| ArchiveError::Malformed("an entry path is not UTF-8".into()))
}

fn padding(size: u64) -> u64 {
    (512 - size % 512) % 512
}

/// PAX records: `<len> <key>=<value>\n`.
fn pax_records(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ArchiveError> {
    let bad = || ArchiveError::Malformed("PAX record".into());
    let mut out = Vec::new();
    while !data.is_empty() {
        let space = data.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..space]).map_err(|_| bad())?.parse().map_err(|_| bad())?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        out.push((utf8(&record[..eq])?, record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// The header block(s) of an entry (a GNU long-name record first when the path needs it);
/// the body follows, then [`pad`] of its size.
pub fn header_bytes(path: &str, kind: EntryKind, size: u64, mtime: u64) -> std::io::Result<Bytes> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(if kind == EntryKind::Dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
    header.set_size(if kind == EntryKind::Dir { 0 } else { size });
    header.set_mode(if kind == EntryKind::Dir { 0o755 } else { 0o644 });
    header.set_mtime(mtime);
    let mut builder = tar::Builder::new(Vec::new());
    // With an empty body the builder writes the header (and any long-name record) alone.
    builder.append_data(&mut header, path, std::io::empty())?;
    let bytes = Bytes::from(builder.get_ref().clone());
    Ok(bytes)
}

/// The zero padding after a body of `size` bytes.
pub fn pad(size: u64) -> Bytes {
    Bytes::from(vec![0u8; padding(size) as usize])
}

/// The end-of-archive marker.
pub fn end_marker() -> Bytes {
    Bytes::from(vec![0u8; 1024])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(data: Vec<u8>, chunk: usize) -> ArchiveStream {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            data.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        futures::stream::iter(chunks).boxed()
    }

    async fn read_all(data: Vec<u8>, chunk: usize) -> Result<Vec<(EntryHeader, Vec<u8>)>, ArchiveError> {
        let mut r = TarReader::new(stream_of(data, chunk));
        let mut out = Vec::new();
        while let Some(h) = r.next_entry().await? {
            let mut body = Vec::new();
            loop {
                let b = r.read_body(7).await?;
                if b.is_empty() {
                    break;
                }
                body.extend_from_slice(&b);
            }
            out.push((h, body));
        }
        Ok(out)
    }

    #[tokio::test]
    async fn written_entries_read_back_in_any_chunking() {
        let long = format!("ws/{}/f.txt", "d".repeat(150));
        let mut data = Vec::new();
        for (path, body) in [("ws/a.txt", &b"hello"[..]), (long.as_str(), &b"x"[..])] {
            data.extend_from_slice(&header_bytes(path, EntryKind::File, body.len() as u64, 7).unwrap());
            data.extend_from_slice(body);
            data.extend_from_slice(&pad(body.len() as u64));
        }
        data.extend_from_slice(&header_bytes("ws/dir", EntryKind::Dir, 0, 7).unwrap());
        data.extend_from_slice(&end_marker());
        for chunk in [1, 100, 512, 10_000] {
            let entries = read_all(data.clone(), chunk).await.unwrap();
            assert_eq!(entries.len(), 3);
            assert_eq!(entries[0].0.path, "ws/a.txt");
            assert_eq!(entries[0].1, b"hello");
            assert_eq!(entries[0].0.mtime, 7);
            assert_eq!(entries[1].0.path, long);
            assert_eq!(entries[2].0.kind, EntryKind::Dir);
        }
    }

    #[tokio::test]
    async fn pax_and_truncation_and_bad_checksums() {
        // A PAX path record, as Go's archive/tar (the Docker Engine) writes long names.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_pax_extensions([("path", "ws/pax-name.txt".as_bytes())]).unwrap();
        b.append_data(&mut h, "short", &b"hi"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let entries = read_all(data.clone(), 3).await.unwrap();
        assert_eq!(entries[0].0.path, "ws/pax-name.txt");
        assert_eq!(entries[0].1, b"hi");
        // Cut inside a body: an error, not a short file.
        assert!(read_all(data[..data.len() - 1024 - 300].to_vec(), 64).await.is_err());
        let mut corrupt = data.clone();
        corrupt[0] ^= 1;
        assert!(matches!(read_all(corrupt, 64).await, Err(ArchiveError::Malformed(_))));
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in ["../x", "a/../../etc/passwd", "/etc/passwd", "a//b", "a/./b", "", "a\\..\\b", "a\0b", "."] {
            assert!(safe_relative(bad).is_err(), "{bad:?}");
        }
        assert_eq!(safe_relative("a/b/").unwrap(), "a/b");
        assert_eq!(safe_relative(".git/config").unwrap(), ".git/config");
    }
}

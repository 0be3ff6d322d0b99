//! The elements of a processing list and the records of a dead-letter list, as bytes.
//!
//! A processing list holds `#lapse:<tag> <message>`, or `#lapse:<tag>!<length> <prefix>` for a
//! message over the size limit, which the script that took it cut to its first
//! [`DEAD_LETTER_PREFIX`] bytes (it is refused anyway, and must not cross the wire whole
//! again). `<tag>` is the consumer's (`<uuid>:<n>`), ASCII without spaces. The message is
//! whatever bytes the producer pushed.

use serde_json::json;

/// Marks a tagged element.
pub(super) const TAG_MARK: &[u8] = b"#lapse:";
/// How much of a refused message its dead letter keeps.
pub(super) const DEAD_LETTER_PREFIX: usize = 4096;
/// The longest tag a tagged element may carry (ours are about 40 bytes).
const MAX_TAG: usize = 100;

/// A tagged message in a processing list.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    /// The processing list's element, exactly (what `LREM` needs).
    pub raw: Vec<u8>,
    pub tag: String,
    /// Where the message starts in `raw`.
    start: usize,
    /// The message's length when `raw` holds only its first bytes.
    pub cut_from: Option<u64>,
}

impl Entry {
    /// A processing list's element, if it is tagged; the element back if it is not.
    pub fn parse(raw: Vec<u8>) -> Result<Entry, Vec<u8>> {
        match Self::head(&raw) {
            Some((tag, start, cut_from)) => Ok(Entry { raw, tag, start, cut_from }),
            None => Err(raw),
        }
    }

    /// The tag, where the message starts and the length it was cut from.
    fn head(raw: &[u8]) -> Option<(String, usize, Option<u64>)> {
        let rest = raw.strip_prefix(TAG_MARK)?;
        let space = rest.iter().take(MAX_TAG + 24).position(|b| *b == b' ')?;
        let head = std::str::from_utf8(&rest[..space]).ok()?;
        let (tag, cut_from) = match head.split_once('!') {
            Some((tag, length)) => (tag, Some(length.parse::<u64>().ok()?)),
            None => (head, None),
        };
        if tag.is_empty() || tag.len() > MAX_TAG || !tag.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        Some((tag.to_owned(), TAG_MARK.len() + space + 1, cut_from))
    }

    /// The message (or its first bytes, if it was cut).
    pub fn message(&self) -> &[u8] {
        &self.raw[self.start..]
    }

    /// The message's length as the producer pushed it.
    pub fn length(&self) -> u64 {
        self.cut_from.unwrap_or(self.message().len() as u64)
    }
}

/// The dead-letter record of a refused message: `{message, length, truncated, reason, queue,
/// at}`, `message` being at most [`DEAD_LETTER_PREFIX`] bytes of it, decoded lossily.
pub(super) fn dead_letter(entry: &Entry, reason: &str, queue: &str, at: &str) -> String {
    let message = entry.message();
    let kept = &message[..message.len().min(DEAD_LETTER_PREFIX)];
    let truncated = (kept.len() as u64) < entry.length();
    json!({
        "message": String::from_utf8_lossy(kept),
        "length": entry.length(),
        "truncated": truncated,
        "reason": reason,
        "queue": queue,
        "at": at,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_elements_parse_and_others_do_not() {
        let e = Entry::parse(b"#lapse:ab12:3 {\"x\": 1} tail".to_vec()).unwrap();
        assert_eq!((e.tag.as_str(), e.message(), e.cut_from), ("ab12:3", &b"{\"x\": 1} tail"[..], None));
        let e = Entry::parse(b"#lapse:ab12:4!10485760 \xff\xfe".to_vec()).unwrap();
        assert_eq!((e.tag.as_str(), e.message(), e.length()), ("ab12:4", &b"\xff\xfe"[..], 10_485_760));
        assert_eq!(Entry::parse(b"#lapse:t \xff".to_vec()).unwrap().message(), b"\xff");
        for bad in [&b"{\"x\":1}"[..], b"#lapse:", b"#lapse:nospace", b"#lapse: m", b"#lapse:t!x m", b"#lapse:\xff m"] {
            assert_eq!(Entry::parse(bad.to_vec()), Err(bad.to_vec()), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn dead_letters_keep_a_bounded_prefix_and_the_length() {
        let mut raw = b"#lapse:t:1 ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 10_000));
        let v: serde_json::Value =
            serde_json::from_str(&dead_letter(&Entry::parse(raw).unwrap(), "r", "q", "now")).unwrap();
        assert_eq!(v["message"].as_str().unwrap().len(), DEAD_LETTER_PREFIX);
        assert_eq!((v["length"].as_u64(), v["truncated"].as_bool()), (Some(10_000), Some(true)));
        let cut = Entry::parse(b"#lapse:t:2!99999999 \xffab".to_vec()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&dead_letter(&cut, "too big", "q", "now")).unwrap();
        assert_eq!(v["message"], "\u{fffd}ab");
        assert_eq!((v["length"].as_u64(), v["truncated"].as_bool()), (Some(99_999_999), Some(true)));
        assert_eq!(
            (v["reason"].as_str(), v["queue"].as_str(), v["at"].as_str()),
            (Some("too big"), Some("q"), Some("now"))
        );
    }
}

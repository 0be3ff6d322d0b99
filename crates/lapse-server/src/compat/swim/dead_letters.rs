//! The newest dead letters, as `GET /v1/queues` shows them: read from the dead-letter list,
//! bounded, and never trusted (anyone with the Redis password can write to the list).

/// How many of the newest dead letters `GET /v1/queues` shows per queue.
pub(super) const RECENT: isize = 5;

/// One dead-letter list element as the API shows it. The list is ours, but anyone with the
/// Redis password can write to it: an element that is too long or not our record is shown as
/// such, never trusted.
pub(super) fn view(raw: &[u8]) -> lapse_core::wire::DeadLetterView {
    const MAX: usize = 16 * 1024;
    let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    let parsed = (raw.len() <= MAX).then(|| serde_json::from_slice::<serde_json::Value>(raw).ok()).flatten();
    match parsed {
        Some(v) if v.get("reason").is_some_and(serde_json::Value::is_string) => lapse_core::wire::DeadLetterView {
            reason: cut(v["reason"].as_str().unwrap_or_default(), 1024),
            at: cut(v["at"].as_str().unwrap_or_default(), 64),
            message: cut(v["message"].as_str().unwrap_or_default(), super::entry::DEAD_LETTER_PREFIX),
            length: v["length"].as_u64().unwrap_or(raw.len() as u64),
            truncated: v["truncated"].as_bool().unwrap_or(false),
        },
        _ => lapse_core::wire::DeadLetterView {
            reason: "not a dead-letter record of Lapse".into(),
            at: String::new(),
            message: cut(&String::from_utf8_lossy(&raw[..raw.len().min(256)]), 256),
            length: raw.len() as u64,
            truncated: raw.len() > 256,
        },
    }
}

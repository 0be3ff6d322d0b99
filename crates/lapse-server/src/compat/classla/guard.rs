//! The seed's key check and rate limit (`src/middleware/auth.ts`, `rateLimit.ts`).
//!
//! - **Keys**: `Authorization: Bearer <key>` or the bare `<key>`; `API_KEY` is a comma-separated
//!   list; each is compared by its SHA-256, as the seed does. No header: `401
//!   AUTHENTICATION_FAILED` "Missing Authorization header"; a wrong key: "Invalid API key".
//! - **Rate limit**: 100 requests a minute per key in a fixed window from its first request;
//!   every answer carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
//!   (ISO time); over it, `429 RATE_LIMIT_EXCEEDED` with `Retry-After` (seconds) and the
//!   seed's `retryAfter` and `resetTime` in the error. Only valid keys have a window, so the
//!   table is bounded by the keys configured.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::wire::{SeedError, iso};

/// Requests a key may make per window.
pub const RATE_LIMIT: u32 = 100;
/// The window.
pub const WINDOW_MS: i64 = 60_000;

/// The configured keys (their SHA-256) and the windows of those used.
#[derive(Debug)]
pub struct Guard {
    keys: HashSet<[u8; 32]>,
    windows: Mutex<HashMap<[u8; 32], (u32, i64)>>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Where a request stands in its key's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub remaining: u32,
    pub reset_at: i64,
    pub over: bool,
}

impl Guard {
    pub fn new(keys: &[String]) -> Guard {
        Guard { keys: keys.iter().map(|k| digest(k)).collect(), windows: Mutex::default() }
    }

    /// The key's hash if the header holds a configured key.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<[u8; 32], SeedError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(SeedError::auth("Missing Authorization header"));
        };
        // A header that is not text is no key of ours.
        let text = value.to_str().map_err(|_| SeedError::auth("Invalid API key"))?;
        let key = text.strip_prefix("Bearer ").unwrap_or(text);
        let hash = digest(key);
        if self.keys.contains(&hash) { Ok(hash) } else { Err(SeedError::auth("Invalid API key")) }
    }

    /// Counts one request of `key` at `now` (ms).
    pub fn count(&self, key: [u8; 32], now: i64) -> Window {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let entry = windows.entry(key).or_insert((0, now + WINDOW_MS));
        if now > entry.1 {
            *entry = (0, now + WINDOW_MS);
        }
        entry.0 = entry.0.saturating_add(1);
        Window { remaining: RATE_LIMIT.saturating_sub(entry.0), reset_at: entry.1, over: entry.0 > RATE_LIMIT }
    }
}

/// Writes the window's headers on `response`.
pub fn add_headers(response: &mut Response, window: Window) {
    let h = response.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(RATE_LIMIT));
    h.insert("x-ratelimit-remaining", HeaderValue::from(window.remaining));
    if let Some(reset) = iso(window.reset_at).and_then(|t| HeaderValue::from_str(&t).ok()) {
        h.insert("x-ratelimit-reset", reset);
    }
}

/// The seed's `429`.
pub fn over_limit(window: Window, now: i64, path: &str) -> Response {
    let retry_after = ((window.reset_at - now).max(0) + 999) / 1000;
    let body = serde_json::json!({
        "error": {
            "code": "RATE_LIMIT_EXCEEDED",
            "message": "Too many requests. Please try again later.",
            "retryAfter": retry_after,
            "resetTime": iso(window.reset_at),
        },
        "timestamp": super::wire::now_iso(),
        "path": path,
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    add_headers(&mut response, Window { remaining: 0, ..window });
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_bare_or_bearer_and_a_fixed_window() {
        let guard = Guard::new(&["k1".into(), "k2".into()]);
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(guard.authenticate(&with("k1")).is_ok());
        assert!(guard.authenticate(&with("Bearer k2")).is_ok());
        assert_eq!(guard.authenticate(&with("bearer k2")).unwrap_err().message, "Invalid API key");
        assert_eq!(guard.authenticate(&HeaderMap::new()).unwrap_err().message, "Missing Authorization header");
        let key = guard.authenticate(&with("k1")).unwrap();
        for i in 1..=100 {
            let w = guard.count(key, 1_000);
            assert_eq!((w.remaining, w.over, w.reset_at), (100 - i, false, 61_000));
        }
        assert!(guard.count(key, 61_000).over, "the 101st in the window");
        let w = guard.count(key, 61_001);
        assert_eq!((w.remaining, w.over, w.reset_at), (99, false, 121_001), "a new window after the reset");
    }
}

//! Cloud API answers, bounded: a provider's answer is as hostile as any input. A body is read
//! in chunks and refused past [`MAX_ANSWER_BYTES`], so a broken or hostile endpoint cannot make
//! the server hold an unbounded answer. (What a failure's text may put in a record is bounded
//! once, by [`crate::ProviderError::recorded`].)

/// Refuses an API address that would send credentials in the clear: `https://` anywhere,
/// plain `http://` only to a loopback host (a local fake or a proxy on this machine).
pub fn check_transport(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("{url:?} is not an http(s) URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!("{url} is plain http to another machine: the credentials would travel unencrypted; use https"))
    }
}

/// Largest answer body read from a cloud API (a page of a list is far smaller).
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// The longest pause between two attempts of a cloud call, whatever `Retry-After` asks.
pub const MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(60);

/// A `Retry-After` value in whole seconds (the form the clouds send; an HTTP date is ignored,
/// and the caller's growing pause applies).
pub fn retry_after(value: &str) -> Option<std::time::Duration> {
    value.trim().parse::<u64>().ok().map(std::time::Duration::from_secs)
}

/// The `Retry-After` of an answer, if it has a usable one.
pub fn retry_after_of(resp: &reqwest::Response) -> Option<std::time::Duration> {
    resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| retry_after(v.to_str().ok()?))
}

/// Why an answer's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
    #[error("the answer is over {MAX_ANSWER_BYTES} bytes; refused")]
    TooLarge,
}

/// The whole body of `resp`, at most [`MAX_ANSWER_BYTES`].
pub async fn body(mut resp: reqwest::Response) -> Result<Vec<u8>, AnswerError> {
    if resp.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        return Err(AnswerError::TooLarge);
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(AnswerError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::check_transport;

    #[test]
    fn credentials_travel_encrypted_or_stay_on_this_machine() {
        for ok in ["https://api.example.test", "http://127.0.0.1:9/x", "http://[::1]:80", "http://localhost:5"] {
            assert!(check_transport(ok).is_ok(), "{ok}");
        }
        for bad in ["http://10.0.0.1/api", "http://127.0.0.1.evil.test/", "http://u@example.test", "ftp://x", "x"] {
            assert!(check_transport(bad).is_err(), "{bad}");
        }
    }
}

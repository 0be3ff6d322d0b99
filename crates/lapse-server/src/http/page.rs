//! Cursors of paged lists (`GET /v1/environments`).
//!
//! A cursor is opaque to clients: `base64url("env:" + last id of the page)`. Environment ids
//! are UUIDv7 hex and the list is in id order, so a page's cursor stays valid while others
//! create environments: new ones sort after every existing id and appear on a later page;
//! nothing is skipped or shown twice. The next page's cursor is in the `Lapse-Next-Cursor`
//! header and in `Link: <…>; rel="next"`; the last page has neither.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lapse_core::model::is_environment_id;

use super::ApiError;

/// The response header with the next page's cursor.
pub const NEXT_CURSOR: &str = "lapse-next-cursor";
/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page; a larger `limit` is taken as this (the cursor says there is more).
pub const MAX_LIMIT: u32 = 1000;

const PREFIX: &str = "env:";

/// The cursor of a page that ended with `last_id`.
pub fn encode(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PREFIX}{last_id}"))
}

/// The id a cursor stands for; a cursor this server did not make is a `400`.
pub fn decode(cursor: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("cursor: not a cursor this server gave (take it from Lapse-Next-Cursor)");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    match text.strip_prefix(PREFIX) {
        Some(id) if is_environment_id(id) => Ok(id.to_owned()),
        _ => Err(bad()),
    }
}

/// The `Link` header of the next page: this request's query with `cursor` replaced.
pub fn next_link(path: &str, pairs: &[(String, String)], cursor: &str) -> String {
    let mut query: Vec<(&str, &str)> =
        pairs.iter().filter(|(k, _)| k != "cursor").map(|(k, v)| (k.as_str(), v.as_str())).collect();
    query.push(("cursor", cursor));
    // Pairs of strings always encode.
    let qs = serde_urlencoded::to_string(&query).unwrap_or_default();
    format!("<{path}?{qs}>; rel=\"next\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        let id = lapse_core::model::new_environment_id();
        assert_eq!(decode(&encode(&id)).unwrap(), id);
        for bad in
            ["", "!!", "ZW52Og", &URL_SAFE_NO_PAD.encode("env:../x"), &URL_SAFE_NO_PAD.encode(format!("pool:{id}"))]
        {
            assert!(decode(bad).is_err(), "{bad}");
        }
        let pairs = vec![("owner".to_owned(), "a b".to_owned()), ("cursor".to_owned(), "old".to_owned())];
        assert_eq!(
            next_link("/v1/environments", &pairs, "NEW"),
            "</v1/environments?owner=a+b&cursor=NEW>; rel=\"next\""
        );
    }
}

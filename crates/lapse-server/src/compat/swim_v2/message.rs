//! The newer contract's queue messages, read as the seed's Go code reads them
//! (`encoding/json` into `struct { WebUserID string "json:\"webuserid\""; LabID int
//! "json:\"labId\"" }`, and the decommissioner's `LabID *int`, `ServerID string`):
//!
//! - keys match **case-insensitively** (Go's folding: ASCII case, `ſ` for `s`, `K` (Kelvin)
//!   for `k`); when a key appears twice, in any case, the last one wins; unknown keys are
//!   ignored;
//! - `webuserid` and `serverId` must be strings, `labId` an integer literal within 64 bits
//!   (`5.0`, `1e2`, `"5"` are errors, as Go's `int` makes them); `null` leaves a field unset;
//! - a top-level `null` is an empty message; any other non-object is an error, as is
//!   trailing data.
//!
//! Where Lapse is stricter, on purpose: bytes that are not UTF-8 are refused (Go replaces
//! them with U+FFFD), and `webuserid` must be an owner Lapse accepts (1 to 128 characters, not
//! blank, no control characters), since it names the lab's owner and its key.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// A provision request: `{"webuserid", "labId"}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Provision {
    pub webuserid: String,
    pub lab: i64,
}

/// A decommission request: `{"webuserid", "labId"?, "serverId"?}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Decommission {
    pub webuserid: String,
    pub lab: Option<i64>,
    /// `None` when absent or empty (the seed tests `!= ""`).
    pub server_id: Option<String>,
}

/// Why a message is refused (the reason of its dead letter).
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum MessageError {
    #[error("message of {length} bytes is over the limit of {limit}")]
    TooLarge { length: u64, limit: usize },
    #[error("message is not UTF-8")]
    NotUtf8,
    #[error("message is not valid JSON: {0}")]
    Json(String),
    #[error("missing required fields: {0:?}")]
    Missing(Vec<&'static str>),
    #[error("webuserid {0}")]
    Owner(String),
}

/// Parses a provision message.
pub fn provision(raw: &[u8]) -> Result<Provision, MessageError> {
    let fields = fields(raw)?;
    let mut missing = Vec::new();
    if fields.webuserid.as_deref().unwrap_or_default().is_empty() {
        missing.push("webuserid");
    }
    if fields.lab.unwrap_or(0) == 0 {
        missing.push("labId");
    }
    if !missing.is_empty() {
        return Err(MessageError::Missing(missing));
    }
    let webuserid = owner(fields.webuserid.unwrap_or_default())?;
    Ok(Provision { webuserid, lab: fields.lab.unwrap_or_default() })
}

/// Parses a decommission message.
pub fn decommission(raw: &[u8]) -> Result<Decommission, MessageError> {
    let fields = fields(raw)?;
    if fields.webuserid.as_deref().unwrap_or_default().is_empty() {
        return Err(MessageError::Missing(vec!["webuserid"]));
    }
    let webuserid = owner(fields.webuserid.unwrap_or_default())?;
    Ok(Decommission { webuserid, lab: fields.lab, server_id: fields.server_id.filter(|s| !s.is_empty()) })
}

fn owner(webuserid: String) -> Result<String, MessageError> {
    lapse_core::validate::owner(&webuserid).map_err(|e| MessageError::Owner(e.message.to_string()))?;
    Ok(webuserid)
}

/// The fields either message may carry, as Go leaves them.
#[derive(Debug, Default)]
struct Fields {
    webuserid: Option<String>,
    lab: Option<i64>,
    server_id: Option<String>,
}

fn fields(raw: &[u8]) -> Result<Fields, MessageError> {
    let text = std::str::from_utf8(raw).map_err(|_| MessageError::NotUtf8)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = de.deserialize_any(FieldsVisitor).map_err(|e| MessageError::Json(e.to_string()))?;
    de.end().map_err(|e| MessageError::Json(e.to_string()))?;
    Ok(fields)
}

/// Go's key match: equal under its case folding.
fn matches(key: &str, field: &str) -> bool {
    let fold = |c: char| match c {
        'ſ' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    key.chars().map(fold).eq(field.chars().map(fold))
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Fields, E> {
        Ok(Fields::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut out = Fields::default();
        while let Some(key) = map.next_key::<String>()? {
            let value: Value = map.next_value()?;
            if matches(&key, "webuserid") {
                out.webuserid = string(&key, value, out.webuserid.take())?;
            } else if matches(&key, "serverId") {
                out.server_id = string(&key, value, out.server_id.take())?;
            } else if matches(&key, "labId") {
                out.lab = match value {
                    Value::Null => out.lab,
                    Value::Number(n) if n.is_i64() => n.as_i64(),
                    other => return Err(de::Error::custom(format!("{key} must be an integer, not {other}"))),
                };
            }
        }
        Ok(out)
    }
}

fn string<E: de::Error>(key: &str, value: Value, before: Option<String>) -> Result<Option<String>, E> {
    match value {
        Value::Null => Ok(before),
        Value::String(s) => Ok(Some(s)),
        other => Err(E::custom(format!("{key} must be a string, not {}", kind(&other)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy;

    use super::*;

    fn check_provision(raw: &str, expect: Result<(&str, i64), &str>) {
        let got = provision(raw.as_bytes()).map(|p| (p.webuserid, p.lab)).map_err(|e| e.to_string());
        let expect = expect.map(|(u, l)| (u.to_owned(), l)).map_err(str::to_owned);
        match (&got, &expect) {
            (Err(g), Err(e)) => assert!(g.contains(e.as_str()), "{raw}: {g:?} does not say {e:?}"),
            _ => assert_eq!(got, expect, "{raw}"),
        }
    }

    #[test]
    fn provisions_are_read_as_go_reads_them() {
        check_provision(r#"{"webuserid":"550e8400","labId":5}"#, Ok(("550e8400", 5)));
        check_provision(r#"{"WebUserID":"u","LABID":-3,"extra":[1]}"#, Ok(("u", -3)));
        check_provision(r#"{"webuſerid":"u","labId":1}"#, Ok(("u", 1)));
        check_provision(r#"{"webuserid":"a","WEBUSERID":"b","labId":1,"labid":2}"#, Ok(("b", 2)));
        check_provision(r#"{"webuserid":"u","labId":1,"labId":null}"#, Ok(("u", 1)));
        check_provision(r#"{"webuserid":"u"}"#, Err("missing required fields: [\"labId\"]"));
        check_provision(r#"{"labId":0}"#, Err("[\"webuserid\", \"labId\"]"));
        check_provision("null", Err("missing required fields"));
        check_provision(r#"{"webuserid":"u","labId":5.0}"#, Err("labId must be an integer"));
        check_provision(r#"{"webuserid":"u","labId":1e2}"#, Err("labId must be an integer"));
        check_provision(r#"{"webuserid":"u","labId":"5"}"#, Err("labId must be an integer"));
        check_provision(r#"{"webuserid":"u","labId":9223372036854775808}"#, Err("labId must be an integer"));
        check_provision(r#"{"webuserid":7,"labId":1}"#, Err("webuserid must be a string, not a number"));
        check_provision(r#"{"webuserid":"u","labId":1} x"#, Err("not valid JSON"));
        check_provision(r#"[{"webuserid":"u","labId":1}]"#, Err("not valid JSON"));
        check_provision(r#"{"webuserid":"  ","labId":1}"#, Err("webuserid must be 1 to"));
        check_provision("{\"webuserid\":\"a\\u0000\",\"labId\":1}", Err("control characters"));
        assert_eq!(provision(b"{\"webuserid\":\"\xff\",\"labId\":1}"), Err(MessageError::NotUtf8));
    }

    #[test]
    fn decommissions_are_read_as_go_reads_them() {
        let d = decommission(br#"{"webuserid":"u"}"#).unwrap();
        assert_eq!((d.lab, d.server_id), (None, None));
        let d = decommission(br#"{"WEBUSERID":"u","labid":0,"serverid":""}"#).unwrap();
        assert_eq!((d.lab, d.server_id), (Some(0), None), "labId 0 is given (a *int), serverId \"\" is not");
        let d = decommission(br#"{"webuserid":"u","labId":5,"serverId":"abc"}"#).unwrap();
        assert_eq!((d.lab, d.server_id.as_deref()), (Some(5), Some("abc")));
        assert_eq!(decommission(br#"{"labId":5}"#), Err(MessageError::Missing(vec!["webuserid"])));
        assert!(decommission(br#"{"webuserid":"u","serverId":5}"#).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::prop_oneof![
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            "[{}\\[\\]\":,0-9a-zA-Z\\\\ .eE+-]{0,120}".prop_map(String::into_bytes),
            ("(webuserid|WEBUSERID|labId|labid|serverId|x)", "(null|true|-1|0|1e400|\"\"|\"x\"|\\[\\]|\\{\\}|1\\.5|9223372036854775808)")
                .prop_map(|(k, v)| format!(r#"{{"webuserid":"u","labId":1,"{k}":{v}}}"#).into_bytes()),
        ]) {
            let _ = provision(&raw);
            let _ = decommission(&raw);
        }

        #[test]
        fn valid_messages_round_trip(user in "[a-zA-Z0-9-]{1,64}", lab in proptest::prelude::any::<i64>(), server in proptest::option::of("[a-f0-9]{32}")) {
            let raw = serde_json::json!({"webuserid": user, "labId": lab, "serverId": server}).to_string();
            let d = decommission(raw.as_bytes()).unwrap();
            proptest::prop_assert_eq!((&d.webuserid, d.lab, &d.server_id), (&user, Some(lab), &server));
            match provision(raw.as_bytes()) {
                Ok(p) => proptest::prop_assert_eq!((p.webuserid, p.lab), (user, lab)),
                Err(e) => proptest::prop_assert!(lab == 0 && e == MessageError::Missing(vec!["labId"])),
            }
        }
    }
}

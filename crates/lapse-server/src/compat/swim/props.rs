//! Property tests of the queue-message parsers: arbitrary bytes never panic them, and valid
//! messages come out as the requests they describe.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;

use super::SwimConfig;
use super::entry::{DEAD_LETTER_PREFIX, Entry, dead_letter};
use super::request::{self, DecommissionRequest, MessageError, ProvisionRequest};

const LIMIT: usize = 1 << 20;
const DAY: Duration = Duration::from_secs(86_400);

fn cfg() -> SwimConfig {
    let mut cfg = SwimConfig::new("127.0.0.1:6379");
    cfg.provider = "docker".into();
    cfg.default_image = Some("localhost/lab:1".into());
    cfg
}

/// Bytes that are often almost a request: JSON-ish text, sometimes with a field of the seed's.
fn hostile() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        "[{}\\[\\]\":,0-9a-zA-Z\\\\ .eE+-]{0,200}".prop_map(String::into_bytes),
        (
            "(WebUsername|webusername|LabID|labid|CloudInitFile|CloudInitContent|TTLMinutes|ttlminutes|IdempotencyKey|InstanceType|ServerType)",
            "(null|true|-1|0|1e400|\"\"|\"x\"|\\[\\]|\\{\\}|1\\.5|\"\\\\u0000\")"
        )
            .prop_map(|(k, v)| format!(r#"{{"WebUsername":"u","LabID":1,"{k}":{v}}}"#).into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(raw in hostile(), limit in 0usize..600) {
        for limit in [limit, LIMIT] {
            match request::parse_bytes::<ProvisionRequest>(&raw, limit) {
                Ok(req) => { let _ = request::provision(&req, &cfg(), DAY); }
                Err(MessageError::TooLarge { length, .. }) => prop_assert!(length as usize > limit),
                Err(_) => prop_assert!(raw.len() <= limit),
            }
            if let Ok(req) = request::parse_bytes::<DecommissionRequest>(&raw, limit) {
                let _ = request::decommission(&req);
            }
        }
        // As a processing-list element, tagged or not, and as a dead letter.
        let mut tagged = b"#lapse:t:1 ".to_vec();
        tagged.extend_from_slice(&raw);
        for element in [raw.clone(), tagged] {
            if let Ok(entry) = Entry::parse(element) {
                let record: serde_json::Value = serde_json::from_str(&dead_letter(&entry, "r", "q", "t")).unwrap();
                prop_assert!(record["message"].as_str().unwrap().len() <= DEAD_LETTER_PREFIX * 3);
            }
        }
    }

    #[test]
    fn valid_provisions_round_trip(
        user in "[a-z][a-z0-9._-]{0,30}",
        lab in any::<i64>().prop_filter("LabID is non-zero", |l| *l != 0),
        file in proptest::option::of("[a-z0-9_./-]{1,40}"),
        content in proptest::option::of("#cloud-config\n[a-z: \n]{0,100}"),
        minutes in 1u32..1440,
        key in proptest::option::of("[A-Za-z0-9._:-]{1,128}"),
        instance in proptest::option::of(prop_oneof![Just("DEV1-S"), Just("dev1-l"), Just("GP1-XS"), Just("POP2-2C-8G")]),
        lower in any::<bool>(),
    ) {
        // Keys in the seed's case or lower case: Go reads both.
        let k = |name: &str| if lower { name.to_lowercase() } else { name.to_owned() };
        let mut message = json!({k("WebUsername"): user, k("LabID"): lab, k("TTLMinutes"): minutes});
        if let Some(file) = &file { message[k("CloudInitFile")] = json!(file); }
        if let Some(content) = &content { message[k("CloudInitContent")] = json!(content); }
        if let Some(key) = &key { message["IdempotencyKey"] = json!(key); }
        if let Some(instance) = instance { message[k("ServerType")] = json!(instance); }
        let raw = message.to_string();
        let req: ProvisionRequest = request::parse_bytes(raw.as_bytes(), LIMIT).unwrap();
        prop_assert_eq!(&req.web_username, &user);
        prop_assert_eq!(req.lab_id, lab);
        let p = request::provision(&req, &cfg(), DAY).unwrap();
        prop_assert_eq!(&p.owner, &user);
        prop_assert_eq!(p.ttl, Duration::from_secs(u64::from(minutes) * 60));
        prop_assert_eq!(&p.idempotency_key, &key);
        prop_assert_eq!(&p.labels[request::LAB_LABEL], &lab.to_string());
        let prefix = format!("lab{lab}-");
        prop_assert!(p.name.starts_with(&prefix) && p.name.len() == prefix.len() + 8, "{}", p.name);
        prop_assert_eq!(&p.cloud_init_file, &file);
        // The file wins; inline content is used only without one.
        let inline = if file.is_none() { content.clone() } else { None };
        prop_assert_eq!(&p.spec.user_data, &inline);
        prop_assert_eq!(p.spec.resources.is_some(), instance.is_some());
        // One byte under its own length, the same message is refused unparsed.
        let too_small = request::parse_bytes::<ProvisionRequest>(raw.as_bytes(), raw.len() - 1);
        prop_assert!(matches!(too_small, Err(MessageError::TooLarge { .. })), "{:?}", too_small);
    }

    #[test]
    fn valid_decommissions_round_trip(
        user in "[a-z][a-z0-9._-]{0,30}",
        lab in proptest::option::of(any::<i64>()),
        key in proptest::option::of("[A-Za-z0-9._:-]{1,128}"),
    ) {
        let mut message = json!({"webUsername": user});
        if let Some(lab) = lab { message["labID"] = json!(lab); }
        if let Some(key) = &key { message["IdempotencyKey"] = json!(key); }
        let req: DecommissionRequest = request::parse_bytes(message.to_string().as_bytes(), LIMIT).unwrap();
        let d = request::decommission(&req).unwrap();
        prop_assert_eq!(d.owner, user);
        prop_assert_eq!(d.lab, lab.map(|l| l.to_string()));
        prop_assert_eq!(d.idempotency_key, key);
    }
}

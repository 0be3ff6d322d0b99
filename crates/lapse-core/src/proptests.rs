//! Property tests of the REST request parser: the create body as the server reads it
//! (`serde_json` into [`CreateEnvironment`], then the field checks).

use proptest::prelude::*;

use crate::duration;
use crate::validate;
use crate::wire::{CreateEnvironment, DurationInput};

/// What the server does with a create body before admission: parse, then check each field.
fn read(bytes: &[u8]) -> Result<CreateEnvironment, String> {
    let req: CreateEnvironment = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    validate::owner(&req.owner).map_err(|e| e.to_string())?;
    validate::labels(&req.labels).map_err(|e| e.to_string())?;
    if let Some(name) = &req.name {
        validate::name("name", name).map_err(|e| e.to_string())?;
    }
    validate::spec(&req.spec).map_err(|e| e.to_string())?;
    if let Some(ttl) = &req.ttl {
        ttl.to_duration(std::time::Duration::from_secs(30 * 86_400)).map_err(|e| e.to_string())?;
    }
    Ok(req)
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9._-]{0,20}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = read(&bytes);
    }

    #[test]
    fn near_json_never_panics(text in r#"\{("[a-z_]{1,8}":(\{\}|\[\]|"[^"]{0,12}"|-?[0-9]{1,20}(\.[0-9]+)?|null|true),?){0,6}\}"#) {
        let _ = read(text.as_bytes());
    }

    #[test]
    fn valid_bodies_read_as_written(
        owner in name(),
        cmd in proptest::collection::vec("[a-z]{1,8}", 1..4),
        labels in proptest::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{0,12}", 0..5),
        minutes in 1u64..10_000,
        vcpu in 1u32..8,
        mem_mb in 16u64..8192,
    ) {
        let body = serde_json::json!({
            "owner": owner, "labels": labels, "ttl": format!("{minutes}m"),
            "spec": {"provider": "sim", "cmd": cmd, "resources": {"vcpu": vcpu, "mem_mb": mem_mb}},
        });
        let req = read(body.to_string().as_bytes()).unwrap();
        prop_assert_eq!(&req.owner, &owner);
        prop_assert_eq!(&req.labels, &labels);
        prop_assert_eq!(&req.spec.cmd, &cmd);
        let r = req.spec.resources.clone().unwrap();
        prop_assert_eq!((r.vcpu, r.mem_mb), (Some(f64::from(vcpu)), Some(mem_mb)));
        let ttl = match req.ttl { Some(DurationInput::Text(t)) => duration::parse_duration(&t).unwrap(), other => panic!("{other:?}") };
        prop_assert_eq!(ttl.as_secs(), minutes * 60);
    }

    #[test]
    fn a_control_character_in_a_label_is_refused(k in "[a-z]{1,8}", c in 0u8..32) {
        let v = format!("a{}b", c as char);
        let body = serde_json::json!({"owner": "o", "labels": {k: v}, "spec": {"provider": "sim"}});
        prop_assert!(read(body.to_string().as_bytes()).is_err());
    }
}

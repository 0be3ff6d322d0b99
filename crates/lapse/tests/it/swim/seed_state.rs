//! `swim:server:<id>` as the seed writes it (alex-sviridov/swim@27f4120,
//! `internal/redis/client.go` `ServerState`; the states of `provisioner.go`,
//! `decommissioner.go`, `cleanup.go`), every write seen through `redis-cli MONITOR`.

use serde_json::{Value, json};

use super::monitor::Monitor;
use super::{DECOMMISSION, PROVISION, eventually, provision, server_state, setup_with, swim_envs};
use crate::harness::secs;

/// The seed's fields, in the order Go marshals its struct.
const SEED_FIELDS: [&str; 8] = ["id", "name", "ipv6", "state", "provisioned_at", "deletion_at", "webusername", "labid"];

/// Milliseconds of an RFC 3339 time.
pub fn millis(v: &Value) -> i64 {
    let text = v.as_str().unwrap_or_else(|| panic!("{v} is not a string"));
    chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}")).timestamp_millis()
}

/// Whether `text` is a UTC time as Go's `time.Time` marshals it: RFC 3339, `Z`, a fraction
/// only if not zero and then without trailing zeros.
fn is_go_time(text: &str) -> bool {
    let Some(body) = text.strip_suffix('Z') else { return false };
    let fraction_ok = match body.split_once('.') {
        Some((_, f)) => (1..=9).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) && !f.ends_with('0'),
        None => true,
    };
    fraction_ok && body.len() >= 19 && chrono::DateTime::parse_from_rfc3339(text).is_ok()
}

/// The id of the only SWIM environment, once there is one.
async fn the_lab(s: &super::Setup) -> String {
    eventually(secs(20), "the lab", async || {
        swim_envs(&s.server).await.first().and_then(|e| e["id"].as_str().map(str::to_owned))
    })
    .await
}

/// Checks a raw value: the seed's eight fields first, in its order, with its types, then
/// `lapse` and nothing else.
fn check_seed_shape(raw: &str) -> Value {
    assert!(raw.starts_with(r#"{"id":"#), "{raw}");
    let mut at = 0;
    for field in SEED_FIELDS.iter().chain(&["lapse"]) {
        let found =
            raw[at..].find(&format!("\"{field}\":")).unwrap_or_else(|| panic!("{field} after byte {at}: {raw}"));
        at += found + field.len() + 3;
    }
    let v: Value = serde_json::from_str(raw).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), SEED_FIELDS.len() + 1, "only the seed's fields and lapse: {raw}");
    for field in ["id", "name", "ipv6", "state", "webusername"] {
        assert!(v[field].is_string(), "{field}: {raw}");
    }
    assert!(v["labid"].is_i64(), "labid is a JSON integer: {raw}");
    for field in ["provisioned_at", "deletion_at"] {
        let text = v[field].as_str().unwrap();
        assert!(is_go_time(text), "{field} {text} is not as Go marshals a UTC time");
    }
    assert!(v["lapse"].is_object(), "{raw}");
    v
}

#[tokio::test]
async fn a_lab_boots_as_the_seeds_states_say_and_a_decommission_removes_its_key() {
    // Creates and deletes take a while, so every state is written and seen.
    let s = setup_with("sim", &["--sim", "create=1500ms,delete=1500ms"], &[]).await;
    let monitor = Monitor::start(s.redis.port, None).await;
    s.redis.lpush(PROVISION, &[provision("ann", 7, &s.cloud_init, 30)]).await;
    let id = the_lab(&s).await;
    let key = format!("swim:server:{id}");
    s.server.wait_state(&id, "running", secs(20)).await;
    let raw = eventually(secs(10), "the booted value", async || {
        s.redis.get(&key).await.filter(|v| v.contains(r#""state":"booted""#))
    })
    .await;
    let v = check_seed_shape(&raw);
    let env = s.server.env(&id).await;
    assert_eq!((&v["id"], &v["name"], &v["ipv6"]), (&json!(id), &env["name"], &json!("")));
    let name = v["name"].as_str().unwrap();
    let letters = name.strip_prefix("lab7-").unwrap_or_else(|| panic!("{name}"));
    assert!(letters.len() == 8 && letters.bytes().all(|b| b.is_ascii_lowercase()), "{name}");
    assert_eq!((&v["webusername"], &v["labid"]), (&json!("ann"), &json!(7)));
    assert_eq!(millis(&v["deletion_at"]) - millis(&v["provisioned_at"]), 30 * 60_000, "TTLMinutes after creation");
    assert_eq!(millis(&v["deletion_at"]), millis(&env["expires_at"]));
    assert_eq!((&v["lapse"]["state"], &v["lapse"]["provider"]), (&json!("running"), &json!("sim")));

    // While it boots, Scaleway's state_detail words; then booted, where the seed stops.
    let booting = monitor.states(&key);
    assert_eq!(booting.last().map(String::as_str), Some("booted"), "{booting:?}");
    assert!(booting.contains(&"provisioning node".to_owned()), "{booting:?}");
    assert!(
        booting.iter().all(|s| ["allocating node", "provisioning node", "booted"].contains(&s.as_str())),
        "{booting:?}"
    );

    s.redis.lpush(DECOMMISSION, &[json!({"WebUsername": "ann", "LabID": 7}).to_string()]).await;
    s.server.wait_state(&id, "deleted", secs(20)).await;
    eventually(secs(5), "the key removed", async || server_state(&s.redis, &id).await.is_none().then_some(())).await;
    let states = monitor.states(&key);
    assert_eq!(states[booting.len() - 1..], ["booted", "decommissioning", "(removed)"], "{states:?}");
}

#[tokio::test]
async fn a_failed_provision_is_deleted_error() {
    // Every create fails.
    let s = setup_with("sim", &["--sim", "create=1ms@1.0", "--max-attempts", "2"], &[]).await;
    let monitor = Monitor::start(s.redis.port, None).await;
    s.redis.lpush(PROVISION, &[provision("gil", 5, &s.cloud_init, 30)]).await;
    let id = the_lab(&s).await;
    let env = s.server.wait_state(&id, "failed", secs(20)).await;
    let raw = eventually(secs(5), "the error state", async || {
        s.redis.get(&format!("swim:server:{id}")).await.filter(|v| v.contains("deleted-error"))
    })
    .await;
    let v = check_seed_shape(&raw);
    assert_eq!(v["state"], "deleted-error");
    assert_eq!(v["lapse"]["error"], env["reason"]);
    assert!(v["lapse"]["error"].as_str().unwrap().contains("sim"), "{v}");
    assert_eq!((&v["webusername"], &v["labid"]), (&json!("gil"), &json!(5)));
    assert!(s.redis.ttl(&format!("swim:server:{id}")).await > 86_000);
    let states = monitor.states(&format!("swim:server:{id}"));
    assert_eq!(states.last().map(String::as_str), Some("deleted-error"), "{states:?}");
    assert!(!states.contains(&"booted".to_owned()), "{states:?}");
}

#[tokio::test]
async fn an_expired_lab_is_shutting_down_then_its_key_goes() {
    // TTLMinutes is a whole number of minutes, as in the seed: this test waits one.
    let s = setup_with("sim", &["--sim", "delete=2s"], &[]).await;
    let monitor = Monitor::start(s.redis.port, None).await;
    s.redis.lpush(PROVISION, &[provision("cy", 9, &s.cloud_init, 1)]).await;
    let id = the_lab(&s).await;
    let key = format!("swim:server:{id}");
    let value = eventually(secs(10), "the booted value", async || {
        server_state(&s.redis, &id).await.filter(|v| v["state"] == "booted")
    })
    .await;
    assert_eq!(millis(&value["deletion_at"]) - millis(&value["provisioned_at"]), 60_000);
    let env = s.server.wait_state(&id, "deleted", secs(90)).await;
    assert!(env["expired_at"].is_string(), "the lease ran out: {env}");
    eventually(secs(5), "the key removed", async || server_state(&s.redis, &id).await.is_none().then_some(())).await;
    let states = monitor.states(&key);
    let booted = states.iter().position(|s| s == "booted").unwrap_or_else(|| panic!("{states:?}"));
    assert_eq!(states[booted..], ["booted", "shutting down", "(removed)"], "{states:?}");
    let shutting: Vec<Value> = monitor
        .writes(&key)
        .into_iter()
        .filter_map(|w| match w {
            super::monitor::Write::Set(v) if v["state"] == "shutting down" => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(shutting[0]["lapse"]["desired_state"], "deleted");
    assert!(shutting[0]["lapse"]["expired_at"].is_string(), "{}", shutting[0]);
}

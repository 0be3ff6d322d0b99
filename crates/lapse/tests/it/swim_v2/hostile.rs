//! The v2 queues against hostile messages: each is dead-lettered with its reason, takes no
//! rate-limit key and changes nothing; the server stays up and the next good message is
//! applied.

use serde_json::Value;

use super::{DECOMMISSION, PROVISION, drained, labs, provision, rpush, setup, state_of};
use crate::harness::secs;

#[tokio::test]
async fn hostile_messages_are_dead_lettered_with_reasons_and_change_nothing() {
    let s = setup("0", &[("SWIM_MAX_MESSAGE_BYTES", "4096")]).await;
    let big = format!(r#"{{"webuserid":"ann","labId":1,"pad":"{}"}}"#, "x".repeat(1 << 20));
    let provisions: Vec<(&[u8], &str)> = vec![
        (b"\xff\xfe{", "not UTF-8"),
        (b"not json", "not valid JSON"),
        (br#"[{"webuserid":"ann","labId":1}]"#, "not valid JSON"),
        (br#"{"webuserid":"ann","labId":1} trailing"#, "not valid JSON"),
        (br#"{"webuserid":7,"labId":1}"#, "webuserid must be a string"),
        (br#"{"webuserid":"ann","labId":"1"}"#, "labId must be an integer"),
        (br#"{"webuserid":"ann","labId":1.5}"#, "labId must be an integer"),
        (br#"{"webuserid":"ann","labId":99999999999999999999}"#, "labId must be an integer"),
        (br#"{"webuserid":"ann"}"#, "missing required fields: [\"labId\"]"),
        (br#"{"webuserid":"ann","labId":0}"#, "missing required fields: [\"labId\"]"),
        (br#"{"webuserid":"","labId":1}"#, "missing required fields: [\"webuserid\"]"),
        (b"null", "missing required fields"),
        (b"{\"webuserid\":\"a\\u0000b\",\"labId\":1}", "control characters"),
        (big.as_bytes(), "over the limit of 4096"),
    ];
    let decommissions: Vec<(&[u8], &str)> = vec![
        (br#"{"labId":1}"#, "missing required fields: [\"webuserid\"]"),
        (br#"{"webuserid":"ann","serverId":42}"#, "serverId must be a string"),
        (br#"{"webuserid":"ann","labId":true}"#, "labId must be an integer"),
    ];
    let messages: Vec<&[u8]> = provisions.iter().map(|(m, _)| *m).collect();
    rpush(&s.redis, PROVISION, &messages).await;
    let messages: Vec<&[u8]> = decommissions.iter().map(|(m, _)| *m).collect();
    rpush(&s.redis, DECOMMISSION, &messages).await;
    drained(&s.redis, PROVISION).await;
    drained(&s.redis, DECOMMISSION).await;
    for (queue, sent) in [(PROVISION, &provisions), (DECOMMISSION, &decommissions)] {
        let dead = s.redis.lrange(&format!("{queue}:dead")).await;
        assert_eq!(dead.len(), sent.len(), "{dead:#?}");
        // Newest first.
        for (record, (message, reason)) in dead.iter().rev().zip(sent.iter()) {
            let record: Value = serde_json::from_str(record).unwrap();
            let got = record["reason"].as_str().unwrap();
            assert!(got.contains(reason), "{:?}: {got:?} does not say {reason:?}", String::from_utf8_lossy(message));
            assert_eq!(record["queue"], queue);
            assert_eq!(record["length"], message.len());
        }
    }
    assert!(labs(&s.server).await.is_empty());
    assert!(s.redis.keys("vmmanager:ratelimit:*").await.is_empty(), "no refused message takes a rate-limit key");
    assert!(s.redis.keys("vmmanager:servers:*").await.is_empty());
    let (status, _) = s.server.get("/healthz").await;
    assert_eq!(status, 200);

    // The next good one, from the same user, is applied at once.
    rpush(&s.redis, PROVISION, &[&provision("ann", 1)]).await;
    super::eventually(secs(20), "ann's lab", async || state_of(&s.redis, "ann").await).await;
}

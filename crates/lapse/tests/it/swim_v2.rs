//! SWIM's newer contract (`vmmanager:*`, alex-sviridov/swim@670feb4) against a real
//! `redis-server`, written from the seed's Go code: `internal/redis/client.go` (the state's
//! JSON, `SET NX`), `internal/provisioner` (one lab per user), `internal/decommissioner` (the
//! stale rule), `internal/cleanup` (expiry), `internal/config/constants.go` (keys, TTLs).
//! LabMan `RPUSH`es, as the seed's `INTERFACE.md` says.

use serde_json::{Value, json};

use crate::harness::{Server, eventually, secs};
use crate::redis_server::RedisServer;

mod hostile;

const PROVISION: &str = "vmmanager:provision";
const DECOMMISSION: &str = "vmmanager:decommission";

struct Setup {
    _dir: tempfile::TempDir,
    redis: RedisServer,
    server: Server,
}

/// A Redis and a server serving the v2 contract with the `sim` provider (`sim` is its
/// profile), with these variables too (later ones override earlier ones).
async fn setup(sim: &str, envs: &[(&str, &str)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&dir.path().join("redis")).await;
    let address = redis.address();
    let mut all: Vec<(&str, &str)> =
        vec![("REDIS_CONNECTION_STRING", &address), ("SWIM_PROVIDER", "sim"), ("SWIM_CONTRACTS", "v2")];
    all.extend_from_slice(envs);
    std::fs::create_dir_all(dir.path().join("lapse")).unwrap();
    let server = Server::start_with_env(&dir.path().join("lapse"), &["--sim", sim, "--docker", "off"], &all).await;
    Setup { _dir: dir, redis, server }
}

async fn rpush(redis: &RedisServer, key: &str, messages: &[&[u8]]) {
    let mut c = redis.conn().await.unwrap();
    let _: i64 = redis::cmd("RPUSH").arg(key).arg(messages).query_async(&mut c).await.unwrap();
}

async fn pttl(redis: &RedisServer, key: &str) -> i64 {
    let mut c = redis.conn().await.unwrap();
    redis::cmd("PTTL").arg(key).query_async(&mut c).await.unwrap()
}

fn provision(user: &str, lab: i64) -> Vec<u8> {
    json!({"webuserid": user, "labId": lab}).to_string().into_bytes()
}

async fn state_of(redis: &RedisServer, user: &str) -> Option<Value> {
    redis.get(&format!("vmmanager:servers:{user}")).await.map(|v| serde_json::from_str(&v).unwrap())
}

/// The environments of the v2 contract not yet deleted.
async fn labs(server: &Server) -> Vec<Value> {
    let (status, list) = server.get("/v1/environments?limit=1000").await;
    assert_eq!(status, 200, "{list}");
    list["environments"].as_array().unwrap().iter().filter(|e| e["source"] == "swim_v2").cloned().collect()
}

/// Waits until `queue` and its processing list are empty: every message pushed is handled.
async fn drained(redis: &RedisServer, queue: &str) {
    eventually(secs(20), "the queue to drain", async || {
        let mut c = redis.conn().await.unwrap();
        let (queued, taken): (u64, u64) =
            redis::pipe().llen(queue).llen(format!("{queue}:processing")).query_async(&mut c).await.unwrap();
        (queued + taken == 0).then_some(())
    })
    .await;
}

/// Waits until the user's rate-limit key for `operation` is gone.
async fn unlimited(redis: &RedisServer, user: &str, operation: &str) {
    let key = format!("vmmanager:ratelimit:{user}:{operation}");
    eventually(secs(20), "the rate limit to pass", async || redis.get(&key).await.is_none().then_some(())).await;
}

#[tokio::test]
async fn a_provision_writes_the_seeds_state_from_provisioning_to_available() {
    let s = setup("create=1500ms", &[("SSH_USERNAME", "labuser")]).await;
    let user = "550e8400-e29b-41d4-a716-446655440000";
    let pushed = chrono::Utc::now();
    rpush(&s.redis, PROVISION, &[&provision(user, 5)]).await;
    // Every distinct value the key takes, until the lab is available.
    let mut seen: Vec<Value> = Vec::new();
    eventually(secs(20), "an available lab", async || {
        let state = state_of(&s.redis, user).await?;
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        (state["available"] == true).then_some(())
    })
    .await;
    let statuses: Vec<(&str, bool)> =
        seen.iter().map(|v| (v["status"].as_str().unwrap(), v["available"].as_bool().unwrap())).collect();
    assert_eq!(statuses.first(), Some(&("provisioning", false)), "{seen:#?}");
    assert_eq!(statuses.last(), Some(&("running", true)), "{seen:#?}");
    assert!(statuses.iter().all(|(s, a)| *a == (*s == "running")), "available exactly when running: {seen:#?}");

    let lab = labs(&s.server).await.pop().expect("one lab");
    let state = seen.last().unwrap();
    let fields: Vec<&str> = state.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected =
        ["user", "address", "status", "available", "cloudStatus", "serverId", "expiresAt", "webUserId", "labId"];
    expected.sort();
    assert_eq!(fields, expected, "exactly the seed's ServerState fields");
    assert_eq!(state["user"], "labuser");
    assert!(state["address"].is_string());
    assert_eq!(state["cloudStatus"], "running");
    assert_eq!(state["serverId"], lab["id"]);
    assert_eq!(state["webUserId"], user);
    assert_eq!(state["labId"], json!(5), "an integer");
    assert_eq!(lab["owner"], user);
    // DEFAULT_TTL_MINUTES: 30 by default.
    let expires = chrono::DateTime::parse_from_rfc3339(state["expiresAt"].as_str().unwrap()).unwrap();
    let minutes = (expires.with_timezone(&chrono::Utc) - pushed).num_seconds() as f64 / 60.0;
    assert!((29.5..=30.5).contains(&minutes), "expires in {minutes} min");
    // The seed's ServerCacheTTL (24 h), and its per-user rate-limit key (15 s).
    let ttl = s.redis.ttl(&format!("vmmanager:servers:{user}")).await;
    assert!((86_000..=86_400).contains(&ttl), "ttl {ttl}");
    let limit = pttl(&s.redis, &format!("vmmanager:ratelimit:{user}:provision")).await;
    assert!((1..=15_000).contains(&limit), "rate limit pttl {limit}");
    // SWIM_CONTRACTS=v2: the older contract is off; its queue is not read, its keys not written.
    s.redis.lpush("swim:provision:queue", &[json!({"WebUsername": "x", "LabID": 1}).to_string()]).await;
    drained(&s.redis, PROVISION).await;
    assert_eq!(s.redis.lrange("swim:provision:queue").await.len(), 1);
    assert_eq!(s.redis.keys("swim:*").await, ["swim:provision:queue"]);
}

#[tokio::test]
async fn one_lab_per_user_the_same_lab_is_a_no_op_and_another_lab_switches() {
    let s = setup("0", &[("PROVISION_RATE_LIMIT_SECONDS", "1")]).await;
    rpush(&s.redis, PROVISION, &[&provision("ann", 5)]).await;
    let first = eventually(secs(20), "lab 5 available", async || {
        state_of(&s.redis, "ann").await.filter(|v| v["available"] == true)
    })
    .await;
    let limit = pttl(&s.redis, "vmmanager:ratelimit:ann:provision").await;
    assert!((1..=1000).contains(&limit), "PROVISION_RATE_LIMIT_SECONDS=1: pttl {limit}");

    // The same lab again: nothing changes.
    unlimited(&s.redis, "ann", "provision").await;
    rpush(&s.redis, PROVISION, &[&provision("ann", 5)]).await;
    drained(&s.redis, PROVISION).await;
    assert!(s.redis.lrange(&format!("{PROVISION}:dead")).await.is_empty());
    assert_eq!(state_of(&s.redis, "ann").await.unwrap(), first);
    assert_eq!(labs(&s.server).await.len(), 1);

    // Another lab: the old one goes, the new one takes the key.
    unlimited(&s.redis, "ann", "provision").await;
    rpush(&s.redis, PROVISION, &[&provision("ann", 7)]).await;
    let second = eventually(secs(20), "lab 7 available", async || {
        state_of(&s.redis, "ann").await.filter(|v| v["labId"] == 7 && v["available"] == true)
    })
    .await;
    assert_ne!(second["serverId"], first["serverId"]);
    let old = first["serverId"].as_str().unwrap();
    s.server.wait_state(old, "deleted", secs(20)).await;
    let left = labs(&s.server).await;
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0]["id"], second["serverId"]);
}

#[tokio::test]
async fn a_stale_decommission_is_ignored_and_one_with_a_server_id_is_honoured() {
    let s = setup("0", &[("PROVISION_RATE_LIMIT_SECONDS", "1"), ("DECOMMISSION_RATE_LIMIT_SECONDS", "1")]).await;
    rpush(&s.redis, PROVISION, &[&provision("ann", 7), &provision("bob", 1)]).await;
    let ann =
        eventually(secs(20), "ann's lab", async || state_of(&s.redis, "ann").await.filter(|v| v["available"] == true))
            .await;
    let bob =
        eventually(secs(20), "bob's lab", async || state_of(&s.redis, "bob").await.filter(|v| v["available"] == true))
            .await;

    // Lab 5 is not ann's lab now: ignored, her lab 7 stays.
    rpush(&s.redis, DECOMMISSION, &[br#"{"webuserid":"ann","labId":5}"#]).await;
    drained(&s.redis, DECOMMISSION).await;
    assert_eq!(state_of(&s.redis, "ann").await.unwrap(), ann);
    // With a serverId, the stale rule gives way; bob's lab is not ann's to delete by its id.
    unlimited(&s.redis, "ann", "decommission").await;
    let foreign = json!({"webuserid": "ann", "labId": 5, "serverId": bob["serverId"]}).to_string();
    rpush(&s.redis, DECOMMISSION, &[foreign.as_bytes()]).await;
    drained(&s.redis, DECOMMISSION).await;
    assert_eq!(state_of(&s.redis, "bob").await.unwrap(), bob);
    assert_eq!(state_of(&s.redis, "ann").await.unwrap(), ann);
    unlimited(&s.redis, "ann", "decommission").await;
    let honoured = json!({"webuserid": "ann", "labId": 5, "serverId": ann["serverId"]}).to_string();
    rpush(&s.redis, DECOMMISSION, &[honoured.as_bytes()]).await;
    s.server.wait_state(ann["serverId"].as_str().unwrap(), "deleted", secs(20)).await;
    eventually(secs(10), "ann's key deleted", async || state_of(&s.redis, "ann").await.is_none().then_some(())).await;

    // bob's own lab, named: decommissioned.
    rpush(&s.redis, DECOMMISSION, &[br#"{"webuserid":"bob","labId":1}"#]).await;
    s.server.wait_state(bob["serverId"].as_str().unwrap(), "deleted", secs(20)).await;
    eventually(secs(10), "bob's key deleted", async || state_of(&s.redis, "bob").await.is_none().then_some(())).await;
    assert!(labs(&s.server).await.is_empty());
}

#[tokio::test]
async fn rate_limit_keys_have_the_seeds_ttls_and_a_limited_message_is_dead_lettered() {
    let s = setup("0", &[]).await;
    rpush(&s.redis, PROVISION, &[&provision("ann", 5), &provision("ann", 7)]).await;
    drained(&s.redis, PROVISION).await;
    let dead = s.redis.lrange(&format!("{PROVISION}:dead")).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let record: Value = serde_json::from_str(&dead[0]).unwrap();
    assert_eq!(record["reason"], "rate limited");
    assert_eq!(record["message"], r#"{"labId":7,"webuserid":"ann"}"#);
    let limit = pttl(&s.redis, "vmmanager:ratelimit:ann:provision").await;
    assert!((1..=15_000).contains(&limit), "the seed's 15 s: pttl {limit}");
    let only = labs(&s.server).await;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["labels"]["swim.v2.lab_id"], "5", "the first one is applied, the limited one is not");

    // Decommissions have their own key: the first goes through, the second is limited.
    rpush(&s.redis, DECOMMISSION, &[br#"{"webuserid":"ann"}"#, br#"{"webuserid":"ann","labId":5}"#]).await;
    drained(&s.redis, DECOMMISSION).await;
    let dead = s.redis.lrange(&format!("{DECOMMISSION}:dead")).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(serde_json::from_str::<Value>(&dead[0]).unwrap()["reason"], "rate limited");
    let limit = pttl(&s.redis, "vmmanager:ratelimit:ann:decommission").await;
    assert!((1..=15_000).contains(&limit), "pttl {limit}");
    s.server.wait_state(only[0]["id"].as_str().unwrap(), "deleted", secs(20)).await;
    // Other users are not limited by ann's keys.
    rpush(&s.redis, PROVISION, &[&provision("bob", 5)]).await;
    eventually(secs(20), "bob's lab", async || state_of(&s.redis, "bob").await).await;
}

#[tokio::test]
async fn expiry_pushes_the_seeds_decommission_and_the_lab_goes() {
    // DEFAULT_TTL_MINUTES=0: expired as soon as made.
    let s = setup("0", &[("DEFAULT_TTL_MINUTES", "0")]).await;
    // ann's decommission key is held, so the pushed request is refused and kept, bytes and all.
    let mut c = s.redis.conn().await.unwrap();
    let () = redis::cmd("SET")
        .arg("vmmanager:ratelimit:ann:decommission")
        .arg("x")
        .arg("EX")
        .arg(600)
        .query_async(&mut c)
        .await
        .unwrap();
    rpush(&s.redis, PROVISION, &[&provision("ann", 5), &provision("bob", 3)]).await;
    let dead = eventually(secs(30), "ann's pushed decommission", async || {
        let dead = s.redis.lrange(&format!("{DECOMMISSION}:dead")).await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    let record: Value = serde_json::from_str(&dead[0]).unwrap();
    assert_eq!(record["message"], r#"{"labId":5,"webuserid":"ann"}"#, "the seed's cleanup request, byte for byte");
    assert_eq!(record["reason"], "rate limited");
    // bob's went through the decommission queue: his lab and key are gone.
    eventually(secs(30), "bob's lab gone", async || state_of(&s.redis, "bob").await.is_none().then_some(())).await;
    let left = labs(&s.server).await;
    assert!(left.iter().all(|e| e["owner"] == "ann" || e["desired_state"] == "deleted"), "{left:#?}");
    assert!(s.redis.get("vmmanager:ratelimit:bob:decommission").await.is_some(), "handled as a decommission");
    let ann = state_of(&s.redis, "ann").await.expect("ann's lab waits for the next push");
    assert_eq!(ann["status"], "running");
}

#[tokio::test]
async fn a_failed_provision_deletes_the_key_and_the_lab_can_be_asked_again() {
    // Every create fails.
    let s = setup("create=0@1", &[("PROVISION_RATE_LIMIT_SECONDS", "1")]).await;
    rpush(&s.redis, PROVISION, &[&provision("ann", 5)]).await;
    let id =
        eventually(secs(20), "the lab", async || labs(&s.server).await.pop()).await["id"].as_str().unwrap().to_owned();
    s.server.wait_state(&id, "failed", secs(30)).await;
    eventually(secs(10), "the key deleted", async || state_of(&s.redis, "ann").await.is_none().then_some(())).await;
    // No lab is left, so the same lab is provisioned again (the seed deleted its key).
    unlimited(&s.redis, "ann", "provision").await;
    rpush(&s.redis, PROVISION, &[&provision("ann", 5)]).await;
    let again = eventually(secs(20), "a second attempt", async || {
        let (_, list) = s.server.get("/v1/environments?limit=1000").await;
        let ids: Vec<String> = list["environments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["source"] == "swim_v2" && e["id"] != id.as_str())
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        ids.into_iter().next()
    })
    .await;
    s.server.wait_state(&again, "failed", secs(30)).await;
    s.server.wait_for(&id, secs(20), "the first failed lab deleted", |e| e["desired_state"] == "deleted").await;
}

#[tokio::test]
async fn both_contracts_side_by_side_on_one_redis() {
    let s = setup("0", &[("SWIM_CONTRACTS", "v1,v2")]).await;
    // The older contract: LPUSH, its own keys and field names.
    let file = s.server.dir.join("cloud-init/ci.yml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "#cloud-config\n").unwrap();
    let v1 = json!({"WebUsername": "ann", "LabID": 5, "CloudInitFile": file.display().to_string(), "TTLMinutes": 30});
    s.redis.lpush("swim:provision:queue", &[v1.to_string()]).await;
    rpush(&s.redis, PROVISION, &[&provision("ann", 5)]).await;
    let v2 =
        eventually(secs(20), "the v2 key", async || state_of(&s.redis, "ann").await.filter(|v| v["available"] == true))
            .await;
    let v1_keys = eventually(secs(20), "the v1 key", async || {
        let keys = s.redis.keys("swim:server:*").await;
        (!keys.is_empty()).then_some(keys)
    })
    .await;
    assert_eq!(v1_keys.len(), 1);
    assert_ne!(v1_keys[0], format!("swim:server:{}", v2["serverId"].as_str().unwrap()));
    let (_, list) = s.server.get("/v1/environments?limit=1000").await;
    let sources: Vec<&str> =
        list["environments"].as_array().unwrap().iter().map(|e| e["source"].as_str().unwrap()).collect();
    assert_eq!(sources.iter().filter(|s| **s == "swim").count(), 1, "{sources:?}");
    assert_eq!(sources.iter().filter(|s| **s == "swim_v2").count(), 1, "{sources:?}");

    // A v1 decommission of ann does not touch her v2 lab, nor a v2 one her v1 lab.
    s.redis.lpush("swim:decomission:queue", &[json!({"WebUsername": "ann"}).to_string()]).await;
    eventually(secs(20), "the v1 key deleted", async || s.redis.keys("swim:server:*").await.is_empty().then_some(()))
        .await;
    assert_eq!(state_of(&s.redis, "ann").await.unwrap(), v2);
    assert_eq!(labs(&s.server).await.len(), 1);
    rpush(&s.redis, DECOMMISSION, &[br#"{"webuserid":"ann"}"#]).await;
    eventually(secs(20), "the v2 key deleted", async || state_of(&s.redis, "ann").await.is_none().then_some(())).await;

    // Both contracts' queues are shown together, and both pumps count for readiness.
    let (_, queues) = s.server.get("/v1/queues").await;
    let names: Vec<&str> = queues["queues"].as_array().unwrap().iter().map(|q| q["key"].as_str().unwrap()).collect();
    for key in ["swim:provision:queue", "swim:decomission:queue", "vmmanager:provision", "vmmanager:decommission"] {
        assert!(names.contains(&key), "{key} in {queues}");
    }
    assert_eq!(queues["connected"], true, "{queues}");
    let (status, ready) = s.server.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let loops = ready.to_string();
    for name in ["swim:provision", "swim_v2:provision", "swim_v2:decommission", "swim_v2:expiry"] {
        assert!(loops.contains(name), "{name} in {ready}");
    }
}

#[tokio::test]
async fn a_crash_between_commit_and_removal_applies_each_message_once() {
    let mut s = setup("0", &[("LAPSE_FAULT", "swim-crash-after-commit")]).await;
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let messages: Vec<Vec<u8>> = users.iter().map(|u| provision(u, 3)).collect();
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    rpush(&s.redis, PROVISION, &refs).await;
    // The server commits its first batch, then kills itself before removing it.
    s.server.wait_exit(secs(20)).await;
    let left = s.redis.lrange(&format!("{PROVISION}:processing")).await;
    assert!(!left.is_empty(), "the crash left the batch in the processing list");
    // Each handled message took its user's rate-limit key; handled again, it passes its own.
    s.server.envs.retain(|(k, _)| k != "LAPSE_FAULT");
    s.server.restart().await;
    let all = eventually(secs(20), "20 labs", async || {
        let all = labs(&s.server).await;
        (all.len() >= 20).then_some(all)
    })
    .await;
    assert_eq!(all.len(), 20, "a message was applied twice: {all:#?}");
    drained(&s.redis, PROVISION).await;
    let dead = s.redis.lrange(&format!("{PROVISION}:dead")).await;
    assert!(dead.is_empty(), "none refused as rate limited by itself: {dead:?}");
    for user in &users {
        eventually(secs(10), "every user's key", async || state_of(&s.redis, user).await).await;
    }
}

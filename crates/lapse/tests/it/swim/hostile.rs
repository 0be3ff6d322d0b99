//! The SWIM queues against hostile messages and files: each refusal is dead-lettered with its
//! reason and the next good message is applied.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{DECOMMISSION, PROVISION, Setup, eventually, labs, provision, setup, swim_envs};
use crate::harness::secs;

/// The dead-letter records of `queue`, by their `message`, once there are `n`.
pub(super) async fn dead_letters(s: &Setup, queue: &str, n: usize) -> BTreeMap<String, Value> {
    let dead = eventually(secs(20), &format!("{n} dead letters in {queue}"), async || {
        let dead = s.redis.lrange(&format!("{queue}:dead")).await;
        (dead.len() >= n).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), n, "{dead:?}");
    dead.iter()
        .map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            (v["message"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// Waits until the queue and its processing list are empty.
async fn drained(s: &Setup, queue: &str) {
    eventually(secs(20), "the queue to drain", async || {
        let waiting = s.redis.lrange(queue).await.len() + s.redis.lrange(&format!("{queue}:processing")).await.len();
        (waiting == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn non_utf8_over_size_and_malformed_messages_are_dead_lettered_and_the_next_is_applied() {
    let s = setup("process", &[]).await;
    let ci = &s.cloud_init;
    let big = format!(r#"{{"WebUsername":"big","LabID":1,"CloudInitFile":"{}"}}"#, "x".repeat(10 << 20));
    let messages: Vec<Vec<u8>> = vec![
        b"{\"WebUsername\":\"\xff\xfe\",\"LabID\":1}".to_vec(),
        provision("ida", 1, ci, 30).into_bytes(),
        big.clone().into_bytes(),
        provision("ida", 2, ci, 30).into_bytes(),
        b"{\"WebUsername\":".to_vec(),
        provision("ida", 3, ci, 30).into_bytes(),
    ];
    // LPUSH puts the last at the head; the consumer takes from the tail: push in reverse.
    s.redis.lpush_bytes(PROVISION, &messages.iter().rev().cloned().collect::<Vec<_>>()).await;

    let envs = eventually(secs(20), "the three good labs", async || {
        let envs = swim_envs(&s.server).await;
        (envs.len() >= 3).then_some(envs)
    })
    .await;
    let mut labs: Vec<&str> = envs.iter().map(|e| e["labels"]["swim.lab_id"].as_str().unwrap()).collect();
    labs.sort();
    assert_eq!(labs, ["1", "2", "3"]);
    let dead = dead_letters(&s, PROVISION, 3).await;
    let (utf8, malformed) = (&dead["{\"WebUsername\":\"\u{fffd}\u{fffd}\",\"LabID\":1}"], &dead["{\"WebUsername\":"]);
    assert!(utf8["reason"].as_str().unwrap().contains("not UTF-8"), "{utf8}");
    assert!(malformed["reason"].as_str().unwrap().contains("not a valid request"), "{malformed}");
    // The 10 MiB message: refused unparsed, its dead letter 4 KiB of it and its length.
    let over = dead.values().find(|v| v["length"] == big.len()).expect("the big message's dead letter");
    assert!(over["reason"].as_str().unwrap().contains("over this server's limit of 1048576"), "{over}");
    assert_eq!(over["truncated"], true);
    assert_eq!(over["message"].as_str().unwrap(), &big[..4096]);
    assert!(s.redis.lrange("swim:provision:queue:dead").await.iter().all(|d| d.len() < 5000));

    // The decommission queue too: the bad one refused, the next applied.
    s.redis.lpush_bytes(DECOMMISSION, &[b"\xc3\x28".to_vec()]).await;
    s.redis.lpush(DECOMMISSION, &[json!({"WebUsername": "ida", "LabID": 1}).to_string()]).await;
    let decommissioned = dead_letters(&s, DECOMMISSION, 1).await;
    assert!(decommissioned.values().next().unwrap()["reason"].as_str().unwrap().contains("not UTF-8"));
    let lab1 = envs.iter().find(|e| e["labels"]["swim.lab_id"] == "1").unwrap()["id"].as_str().unwrap();
    s.server.wait_state(lab1, "deleted", secs(20)).await;
    drained(&s, PROVISION).await;
    let (_, queues) = s.server.get("/v1/queues").await;
    assert_eq!((&queues["connected"], &queues["error"]), (&json!(true), &Value::Null), "{queues}");
    assert!(!s.server.log().contains("lost Redis"), "a bad message is not a lost connection");
}

#[tokio::test]
async fn a_queue_key_of_the_wrong_type_is_reported_as_such_not_as_a_lost_redis() {
    let s = setup("process", &[]).await;
    s.redis.set(DECOMMISSION, "not a list").await;
    eventually(secs(20), "the refusal logged", async || s.server.log().contains("a queue round failed").then_some(()))
        .await;
    let log = s.server.log();
    assert!(log.contains("Redis refused a command") && log.contains("WRONGTYPE"), "{log}");
    assert!(!log.contains("lost Redis"), "{log}");
    let (_, queues) = s.server.get("/v1/queues").await;
    assert_eq!(queues["connected"], true, "{queues}");
    assert!(queues["error"].as_str().unwrap().contains("WRONGTYPE"), "{queues}");
    // The other queue serves meanwhile, and this one once the key is a list again.
    s.redis.lpush(PROVISION, &[provision("jo", 1, &s.cloud_init, 30)]).await;
    eventually(secs(20), "the lab", async || (swim_envs(&s.server).await.len() == 1).then_some(())).await;
    s.redis.del(DECOMMISSION).await;
    s.redis.lpush(DECOMMISSION, &[json!({"WebUsername": "jo"}).to_string()]).await;
    eventually(secs(20), "the lab deleted", async || {
        (swim_envs(&s.server).await.iter().all(|e| e["desired_state"] == "deleted")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn cloud_init_files_are_read_only_beneath_their_dir() {
    let s = setup("process", &[]).await;
    let root = std::path::Path::new(&s.cloud_init).parent().unwrap().to_owned();
    let outside = s.dir.path().join("secret.yml");
    std::fs::write(&outside, "#cloud-config\nsecret\n").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out.yml")).unwrap();
    std::os::unix::fs::symlink("../../secret.yml", root.join("up.yml")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", root.join("zero.yml")).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", root.join("environ.yml")).unwrap();
    nix::unistd::mkfifo(&root.join("fifo.yml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::write(root.join("big.yml"), vec![b'#'; 64 * 1024 + 1]).unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::os::unix::fs::symlink("../cloud-init.yml", root.join("sub/inside.yml")).unwrap();
    let cases = [
        ("../secret.yml", "contains `..`"),
        (outside.to_str().unwrap(), "outside the cloud-init dir"),
        ("/etc/passwd", "outside the cloud-init dir"),
        ("out.yml", "leads outside the cloud-init dir"),
        ("up.yml", "leads outside the cloud-init dir"),
        ("zero.yml", "leads outside the cloud-init dir"),
        ("environ.yml", "leads outside the cloud-init dir"),
        ("fifo.yml", "not a regular file (it is a FIFO)"),
        ("big.yml", "is over 65536 bytes"),
        ("sub", "not a regular file (it is a directory)"),
    ];
    let bad: Vec<String> =
        cases.iter().enumerate().map(|(i, (file, _))| provision("kim", i as i64 + 1, file, 5)).collect();
    s.redis.lpush(PROVISION, &bad).await;
    // Good ones after them: by absolute path, and by a symlink that stays inside.
    s.redis
        .lpush(PROVISION, &[provision("kim", 100, &s.cloud_init, 5), provision("kim", 101, "sub/inside.yml", 5)])
        .await;
    let dead = dead_letters(&s, PROVISION, cases.len()).await;
    for (message, (file, words)) in bad.iter().zip(cases) {
        let reason = dead[message.as_str()]["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains(words) && reason.contains(file), "{file}: {reason}");
    }
    let envs = eventually(secs(20), "the two good labs", async || {
        let envs = swim_envs(&s.server).await;
        (envs.len() == 2).then_some(envs)
    })
    .await;
    for env in &envs {
        let path =
            s.server.wait_state(env["id"].as_str().unwrap(), "running", secs(15)).await["user_data_path"].clone();
        assert_eq!(std::fs::read_to_string(path.as_str().unwrap()).unwrap(), "#cloud-config\npackages: [git]\n");
    }
}

#[tokio::test]
async fn the_dead_letter_list_keeps_only_the_newest() {
    let s = setup("process", &[("SWIM_DEAD_LETTER_MAX", "3")]).await;
    let bad: Vec<String> = (0..5).map(|i| format!("{{\"bad\": {i}")).collect();
    s.redis.lpush(PROVISION, &bad).await;
    s.redis.lpush(PROVISION, &[provision("lee", 1, &s.cloud_init, 5)]).await;
    eventually(secs(20), "the good lab", async || (swim_envs(&s.server).await.len() == 1).then_some(())).await;
    eventually(secs(20), "five refused", async || {
        let (_, q) = s.server.get("/v1/queues").await;
        (q["queues"][0]["dead_lettered_since_start"] == 5).then_some(())
    })
    .await;
    let dead = s.redis.lrange("swim:provision:queue:dead").await;
    assert_eq!(dead.len(), 3, "{dead:?}");
}

#[tokio::test]
async fn a_decommission_deletes_only_environments_swim_made() {
    let s = setup("process", &[]).await;
    // Made by the API, with the owner and labels a SWIM lab would have.
    let api = s
        .server
        .create(json!({"owner": "max", "labels": {"swim.lab_id": "3"}, "spec": {"provider": "process", "cmd": ["sleep", "300"]}}))
        .await;
    let api = api["id"].as_str().unwrap().to_owned();
    s.redis.lpush(PROVISION, &[provision("max", 3, &s.cloud_init, 30)]).await;
    let lab = eventually(secs(20), "the lab", async || {
        swim_envs(&s.server).await.first().and_then(|e| e["id"].as_str().map(str::to_owned))
    })
    .await;
    s.redis.lpush(DECOMMISSION, &[json!({"WebUsername": "max", "LabID": 3}).to_string()]).await;
    s.server.wait_state(&lab, "deleted", secs(15)).await;
    s.redis.lpush(DECOMMISSION, &[json!({"WebUsername": "max"}).to_string()]).await;
    drained(&s, DECOMMISSION).await;
    let env = s.server.env(&api).await;
    assert_eq!((&env["desired_state"], &env["state"]), (&json!("running"), &json!("running")), "{env}");
}

#[tokio::test]
async fn an_idempotency_key_applies_a_request_once_even_replayed_by_hand() {
    let mut s = setup("sim", &[]).await;
    let keyed = |lab: i64, key: &str| {
        json!({"WebUsername": "nia", "LabID": lab, "CloudInitFile": s.cloud_init, "TTLMinutes": 30, "IdempotencyKey": key})
            .to_string()
    };
    s.redis.lpush(PROVISION, &[keyed(1, "req-1")]).await;
    eventually(secs(20), "lab 1", async || (labs(&s.server).await.get("1") == Some(&1)).then_some(())).await;
    // The same request again, and a request without a key twice.
    let unkeyed = provision("nia", 2, &s.cloud_init, 30);
    s.redis.lpush(PROVISION, &[keyed(1, "req-1"), unkeyed.clone(), unkeyed.clone()]).await;
    drained(&s, PROVISION).await;
    eventually(secs(20), "lab 2 twice", async || (labs(&s.server).await.get("2") == Some(&2)).then_some(())).await;
    assert_eq!(labs(&s.server).await.get("1"), Some(&1), "the key stops the second");

    // What a Redis restored from an older snapshot does: the request back in the queue and in
    // the processing list, untagged, read again at the next start.
    s.redis.lpush("swim:provision:queue:processing", &[keyed(1, "req-1")]).await;
    s.redis.lpush(PROVISION, &[keyed(1, "req-1"), keyed(3, "req-3")]).await;
    s.server.restart().await;
    eventually(secs(20), "lab 3", async || (labs(&s.server).await.get("3") == Some(&1)).then_some(())).await;
    drained(&s, PROVISION).await;
    assert_eq!(labs(&s.server).await.get("1"), Some(&1), "replayed by hand: still once");

    // Decommissions too: replayed, a keyed one does not delete the lab made since.
    let lab3 = swim_envs(&s.server).await.into_iter().find(|e| e["labels"]["swim.lab_id"] == "3").unwrap();
    let decommission = json!({"WebUsername": "nia", "LabID": 3, "IdempotencyKey": "del-3"}).to_string();
    s.redis.lpush(DECOMMISSION, std::slice::from_ref(&decommission)).await;
    s.server.wait_state(lab3["id"].as_str().unwrap(), "deleted", secs(20)).await;
    s.redis.lpush(PROVISION, &[keyed(3, "req-3-again")]).await;
    eventually(secs(20), "the new lab 3", async || (labs(&s.server).await.get("3") == Some(&1)).then_some(())).await;
    s.redis.lpush(DECOMMISSION, &[decommission]).await;
    drained(&s, DECOMMISSION).await;
    let live: Vec<Value> = swim_envs(&s.server)
        .await
        .into_iter()
        .filter(|e| e["labels"]["swim.lab_id"] == "3" && e["desired_state"] != "deleted")
        .collect();
    assert_eq!(live.len(), 1, "the replayed decommission was not applied again");
    assert_ne!(live[0]["id"], lab3["id"]);
    // A key that is not one is refused.
    s.redis.lpush(PROVISION, &[keyed(4, "not a key!")]).await;
    let dead = dead_letters(&s, PROVISION, 1).await;
    assert!(dead.values().next().unwrap()["reason"].as_str().unwrap().contains("IdempotencyKey"), "{dead:?}");
}

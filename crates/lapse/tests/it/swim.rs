//! The SWIM Redis queues against a real `redis-server`: the consumer's guarantees here, the
//! seed's contract in [`seed_state`] (the `swim:server:<id>` values and their states) and
//! [`seed_readme`] (the seed README's `redis-cli` commands and the Go decoding of requests),
//! hostile input in [`hostile`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Server, eventually, secs};
use crate::redis_server::RedisServer;

mod hostile;
mod monitor;
mod seed_docker;
mod seed_readme;
mod seed_state;

const PROVISION: &str = "swim:provision:queue";
const DECOMMISSION: &str = "swim:decomission:queue";

pub(crate) struct Setup {
    dir: tempfile::TempDir,
    redis: RedisServer,
    pub(crate) server: Server,
    cloud_init: String,
}

/// A Redis and a server consuming it; `provider` serves the requests.
async fn setup(provider: &str, envs: &[(&str, &str)]) -> Setup {
    setup_with(provider, &[], envs).await
}

/// [`setup`], with more arguments for the server (later ones override earlier ones).
pub(crate) async fn setup_with(provider: &str, more: &[&str], envs: &[(&str, &str)]) -> Setup {
    setup_full(provider, more, envs, None).await
}

/// [`setup_with`], Redis requiring `password` if one is given (the server gets it as
/// `REDIS_PASSWORD`; the harness's own Redis calls then fail, so such a test uses `redis-cli`).
async fn setup_full(provider: &str, more: &[&str], envs: &[(&str, &str)], password: Option<&str>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&dir.path().join("redis")).await;
    if let Some(password) = password {
        let mut c = redis.conn().await.unwrap();
        let () = redis::cmd("CONFIG").arg("SET").arg("requirepass").arg(password).query_async(&mut c).await.unwrap();
    }
    let data = dir.path().join("lapse");
    // The default cloud-init dir; the tests name the file by its absolute path, inside it.
    std::fs::create_dir_all(data.join("cloud-init")).unwrap();
    let cloud_init = data.join("cloud-init/cloud-init.yml");
    std::fs::write(&cloud_init, "#cloud-config\npackages: [git]\n").unwrap();
    let address = redis.address();
    let mut all: Vec<(&str, &str)> = vec![
        ("REDIS_CONNECTION_STRING", &address),
        ("SWIM_PROVIDER", provider),
        ("SWIM_PROVISION_DEFAULT_CMD", "sleep 300"),
    ];
    if let Some(password) = password {
        all.push(("REDIS_PASSWORD", password));
    }
    all.extend_from_slice(envs);
    let mut args: Vec<&str> = match provider {
        "sim" => vec!["--sim", "0", "--docker", "off"],
        "docker" => vec![],
        _ => vec!["--docker", "off"],
    };
    args.extend_from_slice(more);
    let server = Server::start_with_env(&data, &args, &all).await;
    Setup { redis, server, cloud_init: cloud_init.display().to_string(), dir }
}

fn provision(user: &str, lab: i64, file: &str, ttl_minutes: i64) -> String {
    json!({"WebUsername": user, "LabID": lab, "CloudInitFile": file, "TTLMinutes": ttl_minutes}).to_string()
}

async fn swim_envs(server: &Server) -> Vec<Value> {
    // Every page: the list gives at most 1,000 at a time and the next page's cursor.
    let http = reqwest::Client::new();
    let (mut all, mut cursor) = (Vec::new(), String::new());
    loop {
        let mut req = http.get(format!("{}/v1/environments?limit=1000{cursor}", server.url));
        if let Some(key) = &server.key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.expect("the server answers");
        let next = resp.headers().get("lapse-next-cursor").map(|c| format!("&cursor={}", c.to_str().unwrap()));
        let list: Value = resp.json().await.expect("a list");
        all.extend(list["environments"].as_array().unwrap().iter().filter(|e| e["source"] == "swim").cloned());
        match next {
            Some(next) => cursor = next,
            None => return all,
        }
    }
}

async fn server_state(redis: &RedisServer, id: &str) -> Option<Value> {
    redis.get(&format!("swim:server:{id}")).await.map(|v| serde_json::from_str(&v).unwrap())
}

#[tokio::test]
async fn provision_runs_with_user_data_and_decommission_deletes_only_matches() {
    let s = setup("process", &[]).await;
    let ci = &s.cloud_init;
    s.redis
        .lpush(PROVISION, &[provision("ann", 1, ci, 30), provision("ann", 2, ci, 30), provision("bob", 1, ci, 30)])
        .await;
    let envs = eventually(secs(20), "three running labs", async || {
        let envs = swim_envs(&s.server).await;
        (envs.len() == 3 && envs.iter().all(|e| e["state"] == "running")).then_some(envs)
    })
    .await;
    let by_lab: BTreeMap<(String, String), Value> = envs
        .iter()
        .map(|e| {
            ((e["owner"].as_str().unwrap().into(), e["labels"]["swim.lab_id"].as_str().unwrap().into()), e.clone())
        })
        .collect();
    let ann1 = &by_lab[&("ann".to_owned(), "1".to_owned())];
    let id = ann1["id"].as_str().unwrap();
    assert_eq!(ann1["on_expiry"], "delete");

    // The cache key, with the seed's fields and a 24 h TTL.
    let state = eventually(secs(5), "the booted state key", async || {
        server_state(&s.redis, id).await.filter(|v| v["state"] == "booted")
    })
    .await;
    assert_eq!(state["id"], id);
    assert_eq!(state["webusername"], "ann");
    assert_eq!(state["labid"], 1);
    assert_eq!(state["name"], ann1["name"]);
    assert_eq!(seed_state::millis(&state["deletion_at"]), seed_state::millis(&ann1["expires_at"]));
    assert!(state["provisioned_at"].is_string() && state["ipv6"] == "");
    assert_eq!(state["lapse"]["cloud_init_file"], ci.as_str());
    let ttl = s.redis.ttl(&format!("swim:server:{id}")).await;
    assert!((86_000..=86_400).contains(&ttl), "ttl {ttl}");

    // The cloud-init file is inside the environment, and its path is recorded.
    let path = ann1["user_data_path"].as_str().expect("user_data_path recorded");
    assert_eq!(state["lapse"]["user_data_path"], path);
    let (status, out) = s
        .server
        .post(&format!("/v1/environments/{id}/exec"), json!({"cmd": ["/bin/sh", "-c", "cat \"$LAPSE_USER_DATA\""]}))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["stdout"], "#cloud-config\npackages: [git]\n");
    assert_eq!(std::fs::read_to_string(path).unwrap(), "#cloud-config\npackages: [git]\n");

    // By user and lab: only ann's lab 1 goes, and its key with it.
    s.redis.lpush(DECOMMISSION, &[json!({"WebUsername": "ann", "LabID": 1}).to_string()]).await;
    s.server.wait_state(id, "deleted", secs(15)).await;
    eventually(secs(5), "the deleted lab's key to go", async || {
        server_state(&s.redis, id).await.is_none().then_some(())
    })
    .await;
    for (owner, lab) in [("ann", "2"), ("bob", "1")] {
        let other = &by_lab[&(owner.to_owned(), lab.to_owned())];
        assert_eq!(s.server.env(other["id"].as_str().unwrap()).await["state"], "running");
    }
    // By user: all of ann's go, bob's stays.
    s.redis.lpush(DECOMMISSION, &[json!({"WebUsername": "ann"}).to_string()]).await;
    let ann2 = by_lab[&("ann".to_owned(), "2".to_owned())]["id"].as_str().unwrap().to_owned();
    s.server.wait_state(&ann2, "deleted", secs(15)).await;
    let bob = by_lab[&("bob".to_owned(), "1".to_owned())]["id"].as_str().unwrap().to_owned();
    assert_eq!(s.server.env(&bob).await["state"], "running");
    eventually(secs(5), "only bob's key to stay", async || {
        (s.redis.keys("swim:server:*").await == vec![format!("swim:server:{bob}")]).then_some(())
    })
    .await;

    let (_, queues) = s.server.get("/v1/queues").await;
    assert_eq!(queues["connected"], true, "{queues}");
    assert_eq!(queues["queues"][0]["name"], "provision");
    assert_eq!(queues["queues"][0]["processed"], 3);
    assert_eq!(queues["queues"][0]["depth"], 0);
    assert_eq!(queues["queues"][0]["in_flight"], 0);
    assert_eq!(queues["queues"][1]["processed"], 2);
    assert_eq!(queues["queues"][0]["concurrency"], 2);
    assert_eq!(queues["queues"][1]["concurrency"], 5);
    // The audit trail names the queue.
    let events = s.server.events_of(id).await;
    assert!(events.iter().any(|e| e["actor"] == "swim" && e["action"] == "create"), "{events:?}");
    assert!(events.iter().any(|e| e["actor"] == "swim" && e["action"] == "delete"), "{events:?}");
}

#[tokio::test]
async fn refused_messages_go_to_the_dead_letter_list_and_the_consumer_carries_on() {
    let s = setup("process", &[]).await;
    let ci = &s.cloud_init;
    let bad = vec![
        "{not json".to_owned(),
        json!({"WebUsername": "dee", "LabID": 1, "CloudInitFile": ci}).to_string(),
        json!({"WebUsername": "dee", "LabID": 1, "CloudInitFile": ci, "TTLMinutes": 5, "InstanceType": "HUGE"})
            .to_string(),
        provision("dee", 1, "/nonexistent/cloud-init.yml", 5),
        provision("dee", 1, ci, -3),
    ];
    s.redis.lpush(PROVISION, &bad).await;
    s.redis.lpush(DECOMMISSION, &["[]".to_owned()]).await;
    s.redis.lpush(PROVISION, &[provision("dee", 2, ci, 5)]).await;
    let envs = eventually(secs(10), "the valid request applied", async || {
        let envs = swim_envs(&s.server).await;
        (!envs.is_empty()).then_some(envs)
    })
    .await;
    assert_eq!(envs.len(), 1);
    assert_eq!(envs[0]["labels"]["swim.lab_id"], "2");
    let dead = eventually(secs(5), "five dead letters", async || {
        let dead = s.redis.lrange("swim:provision:queue:dead").await;
        (dead.len() == 5).then_some(dead)
    })
    .await;
    // Handlers run concurrently, so dead letters come in any order: match them by message.
    let reasons: BTreeMap<String, String> = dead
        .iter()
        .map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            assert_eq!(v["queue"], PROVISION);
            assert!(v["at"].is_string());
            (v["message"].as_str().unwrap().to_owned(), v["reason"].as_str().unwrap().to_owned())
        })
        .collect();
    let expected = [
        "not a valid request",
        "missing required fields: [TTLMinutes]",
        "unknown ServerType \"HUGE\"",
        "/nonexistent/cloud-init.yml",
        "TTLMinutes must be above 0",
    ];
    for (message, words) in bad.iter().zip(expected) {
        let reason = reasons.get(message).unwrap_or_else(|| panic!("{message} not dead-lettered: {reasons:?}"));
        assert!(reason.contains(words), "{message}: {reason}");
    }
    let dead = eventually(secs(5), "the decommission dead letter", async || {
        let dead = s.redis.lrange("swim:decomission:queue:dead").await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert!(dead[0].contains("not a valid request"), "{dead:?}");
    assert!(s.redis.lrange("swim:provision:queue:processing").await.is_empty());
    let (_, queues) = s.server.get("/v1/queues").await;
    assert_eq!(queues["queues"][0]["dead_lettered"], 5);
    // The API shows the newest dead letters with their reasons, as the list keeps them.
    let recent = queues["queues"][0]["recent_dead_letters"].as_array().unwrap().clone();
    assert_eq!(recent.len(), 5, "{queues}");
    for d in &recent {
        let message = d["message"].as_str().unwrap();
        assert_eq!(d["reason"].as_str(), reasons.get(message).map(String::as_str), "{d}");
        assert!(d["at"].as_str().is_some_and(|a| !a.is_empty()), "{d}");
    }
    // An element someone else wrote into the list is shown as such, not trusted.
    s.redis.lpush("swim:provision:queue:dead", &["<b>not ours</b>".to_owned()]).await;
    let (_, queues) = s.server.get("/v1/queues").await;
    let newest = &queues["queues"][0]["recent_dead_letters"][0];
    assert_eq!(
        (newest["reason"].as_str(), newest["message"].as_str()),
        (Some("not a dead-letter record of Lapse"), Some("<b>not ours</b>")),
        "{newest}"
    );
    let metrics = s.server.get("/metrics").await.1.as_str().unwrap().to_owned();
    assert!(
        metrics.contains(r#"lapse_queue_messages_total{queue="swim:provision:queue",outcome="dead"} 5"#),
        "{metrics}"
    );
    assert_eq!(queues["queues"][0]["processed"], 1);
}

/// Each lab id of the swim environments, with how many environments it has.
async fn labs(server: &Server) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in swim_envs(server).await {
        *out.entry(e["labels"]["swim.lab_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn a_crash_between_commit_and_removal_applies_each_message_once() {
    let mut s = setup("sim", &[("LAPSE_FAULT", "swim-crash-after-commit")]).await;
    let messages: Vec<String> = (1..=40).map(|i| provision("eve", i, &s.cloud_init, 30)).collect();
    s.redis.lpush(PROVISION, &messages).await;
    // The server commits its first batch, then kills itself before removing it.
    s.server.wait_exit(secs(20)).await;
    let left = s.redis.lrange("swim:provision:queue:processing").await;
    assert!(!left.is_empty(), "the crash left the batch in the processing list");
    // A message moved by BLMOVE but not tagged yet when a consumer died.
    s.redis.lpush("swim:provision:queue:processing", &[provision("eve", 100, &s.cloud_init, 30)]).await;

    s.server.envs.retain(|(k, _)| k != "LAPSE_FAULT");
    s.server.restart().await;
    let labs = eventually(secs(20), "all 41 labs", async || {
        let labs = labs(&s.server).await;
        (labs.len() == 41).then_some(labs)
    })
    .await;
    assert!(labs.values().all(|n| *n == 1), "a message was applied twice: {labs:?}");
    eventually(secs(5), "empty processing list", async || {
        s.redis.lrange("swim:provision:queue:processing").await.is_empty().then_some(())
    })
    .await;
    let log = s.server.log();
    assert!(log.contains("were not applied again"), "the restart recognised the applied batch");
    let (_, queues) = s.server.get("/v1/queues").await;
    assert_eq!(queues["queues"][0]["processed"], 41, "each message is counted once");
}

#[tokio::test]
async fn the_consumer_resumes_after_redis_restarts_under_load() {
    let mut s = setup("sim", &[]).await;
    let first: Vec<String> = (1..=2000).map(|i| provision("fay", i, &s.cloud_init, 30)).collect();
    s.redis.lpush(PROVISION, &first).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.redis.kill9().await;
    // Without Redis the rest of the server serves, and says Redis is gone.
    let (status, queues) = s.server.get("/v1/queues").await;
    assert_eq!((status.as_u16(), &queues["connected"]), (200, &json!(false)), "{queues}");
    assert!(queues["error"].is_string(), "{queues}");
    let api = s.server.create(json!({"owner": "api", "spec": {"provider": "sim"}, "ttl": "1h"})).await;
    s.server.wait_state(api["id"].as_str().unwrap(), "running", secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.redis.spawn().await;
    let second: Vec<String> = (2001..=2500).map(|i| provision("fay", i, &s.cloud_init, 30)).collect();
    s.redis.lpush(PROVISION, &second).await;
    let labs = eventually(secs(60), "all 2,500 labs", async || {
        let labs = labs(&s.server).await;
        (labs.len() == 2500).then_some(labs)
    })
    .await;
    assert!(labs.values().all(|n| *n == 1), "a message was applied twice: {labs:?}");
    // The state keys come back too: every lab has one.
    eventually(secs(30), "2,500 state keys", async || {
        (s.redis.keys("swim:server:*").await.len() == 2500).then_some(())
    })
    .await;
    assert!(s.server.log().contains("lost Redis"), "the consumer saw Redis go");
    let (_, queues) = s.server.get("/v1/queues").await;
    assert_eq!(queues["connected"], true);
    assert_eq!(queues["queues"][0]["in_flight"], 0);
}

//! Three replicas on one PostgreSQL database (`lapse_server::lead`), with AWS (a real moto
//! server) as the provider: under a create, expire and claim load, each replica is killed
//! with `kill -9` in turn and started again. After each kill another replica leads within
//! 5 s; at the end every acknowledged create is in the store at its desired state, each
//! environment has exactly one EC2 instance, and no lease ran out more than 6 s late.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lapse_providers::aws::TAG_ENVIRONMENT;
use lapse_providers::aws::sdk::types::{Filter, InstanceStateName};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::database::Db;
use crate::harness::{Server, eventually, secs};

/// The lease of the load's short environments.
const LEASE_S: i64 = 8;

fn pooled() -> Value {
    json!({"provider": "aws", "cloud": {"instance_type": "t3.micro", "zone": "us-east-1a"}})
}

fn leased() -> Value {
    json!({"provider": "aws", "cloud": {"instance_type": "t3.small", "zone": "us-east-1a"}})
}

/// Which of `servers` leads now, if one says so.
async fn leader(servers: &[&Server]) -> Option<usize> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    for (n, s) in servers.iter().enumerate() {
        let Ok(resp) = http.get(format!("{}/v1/status", s.url)).send().await else { continue };
        if resp.json::<Value>().await.is_ok_and(|v| v["role"] == "leader") {
            return Some(n);
        }
    }
    None
}

/// Creates, round robin over `urls`, for `run`: short leases (deleted at expiry) and claims of
/// the pool's spec. Returns what was acknowledged (201 or 202): id, and whether it is leased.
async fn load(urls: Vec<String>, run: Duration) -> Vec<(String, bool)> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let until = Instant::now() + run;
    let mut acked = Vec::new();
    let mut n = 0usize;
    while Instant::now() < until {
        n += 1;
        let is_leased = n.is_multiple_of(2);
        let body = if is_leased {
            json!({"owner": "load", "spec": leased(), "ttl": LEASE_S, "on_expiry": "delete"})
        } else {
            json!({"owner": "load", "spec": pooled(), "ttl": "10m"})
        };
        let url = &urls[n % urls.len()];
        // A refused connection (the replica just killed) or a 503 is not acknowledged.
        if let Ok(resp) = http.post(format!("{url}/v1/environments")).json(&body).send().await
            && matches!(resp.status(), StatusCode::CREATED | StatusCode::ACCEPTED)
            && let Ok(env) = resp.json::<Value>().await
        {
            acked.push((env["id"].as_str().expect("an id").to_owned(), is_leased));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acked
}

fn millis(at: &Value) -> i64 {
    let text = at.as_str().unwrap_or_else(|| panic!("a time: {at}"));
    chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}")).timestamp_millis()
}

#[tokio::test]
async fn three_replicas_survive_each_being_killed_in_turn_under_load() {
    let moto = crate::aws::moto().await;
    let db = Db::new();
    let mut envs = moto.envs();
    envs.push(("LAPSE_DATABASE", db.url.clone()));
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers = Vec::new();
    for dir in &dirs {
        servers.push(Server::start_with_env(dir.path(), &[], &envs).await);
    }
    let ec2 = moto.provider(&servers[0].controller_id).await.unwrap();
    eventually(secs(10), "a replica leads", async || leader(&servers.iter().collect::<Vec<_>>()).await).await;
    let (status, pool) =
        servers[1].request(Method::PUT, "/v1/pools/warm", Some(json!({"spec": pooled(), "min": 2}))).await;
    assert_eq!(status, StatusCode::CREATED, "{pool}");
    eventually(secs(30), "the pool is warm", async || {
        (servers[2].get("/v1/pools/warm").await.1["warm"].as_u64() >= Some(2)).then_some(())
    })
    .await;

    let mut acked = Vec::new();
    for victim in 0..servers.len() {
        let urls = servers.iter().map(|s| s.url.clone()).collect();
        let running = tokio::spawn(load(urls, secs(3)));
        tokio::time::sleep(secs(1)).await;
        servers[victim].kill9().await;
        let killed = Instant::now();
        let others: Vec<&Server> = servers.iter().enumerate().filter(|(n, _)| *n != victim).map(|(_, s)| s).collect();
        eventually(secs(10), "another replica leads", async || leader(&others).await).await;
        let took = killed.elapsed();
        assert!(took < secs(5), "after killing replica {victim}, another led {took:?} later");
        acked.extend(running.await.unwrap());
        servers[victim].restart().await;
    }
    assert!(acked.len() >= 20, "the load was acknowledged: {}", acked.len());

    // Every acknowledged create is there and reaches its desired state.
    let watcher = &servers[0];
    let mut views = BTreeMap::new();
    for (id, is_leased) in &acked {
        let want = if *is_leased { "deleted" } else { "running" };
        views.insert(id.clone(), watcher.wait_state(id, want, secs(60)).await);
    }
    // Leases ran out on time (the timer's step records when).
    let mut late: Vec<(i64, &String)> = views
        .iter()
        .filter(|(_, env)| env["state"] == "deleted")
        .map(|(id, env)| (millis(&env["expired_at"]) - millis(&env["expires_at"]), id))
        .collect();
    late.sort();
    if let Some((worst, id)) = late.last()
        && *worst > 6_000
    {
        let events = watcher.events_of(id).await;
        panic!("{id} expired {worst} ms late (all: {late:?}): {}\nevents: {events:#?}", views[*id]);
    }
    for (id, env) in &views {
        // One EC2 instance per environment, ever; terminated once the environment is deleted.
        let out = ec2
            .client()
            .describe_instances()
            .filters(Filter::builder().name(format!("tag:{TAG_ENVIRONMENT}")).values(id).build())
            .send()
            .await
            .unwrap();
        let states: Vec<_> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| i.state().and_then(|s| s.name().cloned()))
            .collect();
        assert_eq!(states.len(), 1, "{id}: one instance, not {states:?}");
        let terminated = matches!(states[0], Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown));
        assert_eq!(terminated, env["state"] == "deleted", "{id}: {states:?} for {env}");
    }
}

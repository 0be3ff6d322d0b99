//! Crashes: `kill -9` of the server at awkward moments loses no record and leaks nothing.

use std::collections::BTreeSet;
use std::time::Instant;

use bollard::query_parameters::ListContainersOptionsBuilder;
use reqwest::Method;

use crate::docker::{docker, docker_env};
use crate::harness::{Server, process_env, processes_of, secs};

async fn containers_of(controller: &str) -> Vec<(String, bool)> {
    let filters = std::collections::HashMap::from([("label", vec![format!("lapse.controller={controller}")])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    docker()
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            (c.labels.unwrap()["lapse.environment"].clone(), c.state.map(|s| s.to_string()) == Some("running".into()))
        })
        .collect()
}

async fn wait_all(server: &Server, ids: &[String], state: &str) {
    let deadline = Instant::now() + secs(120);
    for id in ids {
        let left = deadline.saturating_duration_since(Instant::now());
        server.wait_state(id, state, left).await;
    }
}

#[tokio::test]
async fn kill_9_while_provisioning_and_deleting_loses_and_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--concurrency", "docker=2"]).await;
    let mut docker_ids = Vec::new();
    let mut process_ids = Vec::new();
    for _ in 0..8 {
        docker_ids.push(server.create(docker_env(&["sleep", "600"])).await["id"].as_str().unwrap().to_owned());
        process_ids.push(server.create(process_env(&["sleep", "600"])).await["id"].as_str().unwrap().to_owned());
    }
    // Some are running, some provisioning, some not begun.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.kill9().await;
    server.restart().await;

    let all: Vec<String> = docker_ids.iter().chain(&process_ids).cloned().collect();
    wait_all(&server, &all, "running").await;
    // Give the sweep a turn: it must find nothing to correct.
    tokio::time::sleep(secs(2)).await;
    let containers = containers_of(&server.controller_id).await;
    let container_ids: Vec<&String> = containers.iter().map(|(id, _)| id).collect();
    assert_eq!(
        container_ids.iter().copied().cloned().collect::<BTreeSet<_>>(),
        docker_ids.iter().cloned().collect(),
        "one container per docker environment"
    );
    assert_eq!(containers.len(), docker_ids.len(), "no duplicates: {containers:?}");
    assert!(containers.iter().all(|(_, running)| *running));
    let processes = processes_of(&server.controller_id);
    assert_eq!(
        processes.iter().map(|(_, id)| id.clone()).collect::<BTreeSet<_>>(),
        process_ids.iter().cloned().collect(),
        "one process per process environment"
    );
    assert_eq!(processes.len(), process_ids.len(), "no duplicates: {processes:?}");

    // Now crash in the middle of deleting everything.
    for id in &all {
        server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    server.kill9().await;
    server.restart().await;
    wait_all(&server, &all, "deleted").await;
    assert_eq!(containers_of(&server.controller_id).await, vec![], "no container left");
    assert_eq!(processes_of(&server.controller_id), vec![], "no process left");
}

#[tokio::test]
async fn processes_outlive_a_crash_and_are_readopted_or_reported_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]).await;
    let keep = server.create(process_env(&["sleep", "600"])).await["id"].as_str().unwrap().to_owned();
    let lose = server.create(process_env(&["sleep", "600"])).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&keep, "running", secs(5)).await;
    server.wait_state(&lose, "running", secs(5)).await;
    let before = processes_of(&server.controller_id);
    let pid_of = |list: &[(i32, String)], id: &str| list.iter().find(|(_, e)| e == id).map(|(p, _)| *p);
    let keep_pid = pid_of(&before, &keep).unwrap();

    server.kill9().await;
    // While the server is down, one environment's process dies.
    let lose_pid = pid_of(&before, &lose).unwrap();
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(lose_pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    server.restart().await;

    let gone = server.wait_for(&lose, secs(10), "reported stopped", |e| e["state"] == "stopped").await;
    assert!(gone["reason"].as_str().unwrap().contains("exited"), "{gone}");
    tokio::time::sleep(secs(2)).await;
    let after = processes_of(&server.controller_id);
    assert_eq!(pid_of(&after, &keep), Some(keep_pid), "the same process, re-adopted, not a new one");
    assert_eq!(server.env(&keep).await["state"], "running");
    for id in [&keep, &lose] {
        server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
        server.wait_state(id, "deleted", secs(10)).await;
    }
    assert_eq!(processes_of(&server.controller_id), vec![]);
}

/// The writer answers a write only after the batch holding it committed: a `kill -9` in the
/// middle of hundreds of concurrent creates and claims loses none that were answered.
#[tokio::test]
async fn kill_9_under_concurrent_writes_loses_no_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--sim", "0"]).await;
    let spec = serde_json::json!({"provider": "sim", "cmd": ["warm"]});
    let (status, _) =
        server.request(Method::PUT, "/v1/pools/crash", Some(serde_json::json!({"spec": spec, "min": 300}))).await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    crate::pools::wait_warm(&server, "crash", 300).await;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let http = reqwest::Client::new();
    let mut clients = Vec::new();
    for c in 0..64 {
        let (http, url, acked, spec) = (http.clone(), server.url.clone(), acked.clone(), spec.clone());
        clients.push(tokio::spawn(async move {
            for i in 0.. {
                // Claims of the pool's spec and cold creates of another, side by side.
                let spec = if (c + i) % 2 == 0 {
                    spec.clone()
                } else {
                    serde_json::json!({"provider": "sim", "cmd": ["cold"]})
                };
                let body = serde_json::json!({"owner": format!("c{c}"), "spec": spec, "ttl": "1h"});
                let Ok(resp) = http.post(format!("{url}/v1/environments")).json(&body).send().await else { return };
                if !resp.status().is_success() {
                    return;
                }
                let Ok(env) = resp.json::<serde_json::Value>().await else { return };
                acked.lock().unwrap().push(env["id"].as_str().unwrap().to_owned());
            }
        }));
    }
    // Let the load run until a few hundred writes are answered (however busy the machine),
    // then crash in the middle of it.
    crate::harness::eventually(secs(60), "300 answered writes", async || {
        (acked.lock().unwrap().len() > 300).then_some(())
    })
    .await;
    server.kill9().await;
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 300, "the load was light: {} writes answered", acked.len());
    server.restart().await;
    let mut missing = Vec::new();
    for id in &acked {
        let (status, env) = server.get(&format!("/v1/environments/{id}")).await;
        if status != reqwest::StatusCode::OK || env["owner"].as_str().is_none_or(|o| !o.starts_with('c')) {
            missing.push((id.clone(), status, env));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} answered writes lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

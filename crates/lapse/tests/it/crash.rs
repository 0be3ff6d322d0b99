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

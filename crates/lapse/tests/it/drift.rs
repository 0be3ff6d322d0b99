//! Drift between the store and providers, corrected by the sweep; one server per data dir.

use std::collections::HashMap;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::docker::{docker, image};
use crate::harness::{Server, process_env, secs};

#[tokio::test]
async fn a_stopped_environment_whose_resource_vanished_is_marked_failed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let id = server.create(process_env(&["sleep", "600"])).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(5)).await;
    server.post(&format!("/v1/environments/{id}/stop"), json!({})).await;
    server.wait_state(&id, "stopped", secs(5)).await;
    std::fs::remove_dir_all(dir.path().join("process").join(&id)).unwrap();
    let failed = server.wait_state(&id, "failed", secs(10)).await;
    assert!(failed["reason"].as_str().unwrap().contains("vanished"), "{failed}");
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(5)).await;
}

#[tokio::test]
async fn with_orphans_adopt_an_unknown_labelled_container_becomes_an_environment() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--orphans", "adopt"]).await;
    let id = lapse_core::model::new_environment_id();
    let name = format!("adoptee-{id}");
    let body = ContainerCreateBody {
        image: Some(image()),
        cmd: Some(vec!["sleep".into(), "600".into()]),
        labels: Some(HashMap::from([
            ("lapse.environment".to_owned(), id.clone()),
            ("lapse.controller".to_owned(), server.controller_id.clone()),
        ])),
        ..Default::default()
    };
    let docker = docker();
    docker.create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body).await.unwrap();
    docker.start_container(&name, None).await.unwrap();

    let deadline = std::time::Instant::now() + secs(15);
    let adopted = loop {
        let (status, env) = server.get(&format!("/v1/environments/{id}")).await;
        if status == StatusCode::OK {
            break env;
        }
        assert!(std::time::Instant::now() < deadline, "not adopted\n{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!((adopted["owner"].as_str(), adopted["state"].as_str()), (Some("adopted"), Some("running")), "{adopted}");
    assert!(adopted["expires_at"].is_string(), "an adopted environment has a lease like any other");
    // Now tracked: deleting it through the API removes the container.
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(20)).await;
    assert!(docker.inspect_container(&name, None).await.is_err());
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Server::start(dir.path(), &[]).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another `lapse serve` is using the data dir"));
}

//! `POST /v1/admin/sweep` and `lapse sweep [--dry-run]` on docker: the dry run lists the
//! orphan and the kept container and changes nothing; the real sweep then removes the orphan
//! and leaves the kept one; bad requests are 4xx JSON errors.

use std::collections::HashMap;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::docker::{docker, image};
use crate::harness::{Server, remove_containers_of};

async fn lapse(server: &Server, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .arg("--url")
        .arg(&server.url)
        .args(args)
        .output()
        .await
        .expect("running lapse")
}

/// A running container under this server's labels that no record knows.
async fn labelled_container(server: &Server, id: &str, extra: &[(&str, &str)]) -> String {
    let name = format!("sweep-it-{id}");
    let mut labels = HashMap::from([
        ("lapse.environment".to_owned(), id.to_owned()),
        ("lapse.controller".to_owned(), server.controller_id.clone()),
    ]);
    labels.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let body = ContainerCreateBody {
        image: Some(image()),
        cmd: Some(vec!["sleep".into(), "600".into()]),
        labels: Some(labels),
        ..Default::default()
    };
    let docker = docker();
    docker.create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body).await.unwrap();
    docker.start_container(&name, None).await.unwrap();
    name
}

fn action_of<'a>(view: &'a Value, id: &str) -> &'a Value {
    let docker = view["providers"].as_array().unwrap().iter().find(|p| p["provider"] == "docker").unwrap();
    docker["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["environment_id"] == id)
        .unwrap_or_else(|| panic!("{id} in {view}"))
}

#[tokio::test]
async fn a_dry_run_lists_the_orphan_and_changes_nothing_then_the_sweep_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    // The periodic sweep of docker runs once at start and not again during the test.
    let server = Server::start(dir.path(), &["--sweep-interval-of", "docker=1h"]).await;
    let (orphan, kept) = (lapse_core::model::new_environment_id(), lapse_core::model::new_environment_id());
    let orphan_name = labelled_container(&server, &orphan, &[]).await;
    let kept_name = labelled_container(&server, &kept, &[("lapse:keep", "true")]).await;
    let events_before = server.count_all_events().await;

    let (status, plan) = server.post("/v1/admin/sweep", json!({"dry_run": true, "provider": "docker"})).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(plan["dry_run"], true);
    assert_eq!(action_of(&plan, &orphan)["action"], "remove_orphan", "{plan}");
    assert_eq!(action_of(&plan, &kept)["action"], "keep", "{plan}");
    assert!(action_of(&plan, &orphan).get("done").is_none(), "a dry run does nothing: {plan}");
    let docker = docker();
    let running = async |name: &str| {
        docker.inspect_container(name, None).await.ok().and_then(|c| c.state?.running).unwrap_or(false)
    };
    assert!(running(&orphan_name).await, "the dry run left the orphan running");
    assert_eq!(server.count_all_events().await, events_before, "the dry run wrote no event");

    // The CLI's dry run shows the same, per provider.
    let out = lapse(&server, &["sweep", "--dry-run", "--provider", "docker"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("docker: would make 1 correction(s)") && text.contains("remove_orphan"), "{text}");
    assert!(text.contains(&orphan) && text.contains("keep"), "{text}");
    assert!(running(&orphan_name).await);

    // The real sweep, from the CLI: the orphan goes, the kept one stays.
    let out = lapse(&server, &["sweep", "--provider", "docker", "--json"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["dry_run"], false);
    assert_eq!(action_of(&done, &orphan)["done"], true, "{done}");
    assert!(docker.inspect_container(&orphan_name, None).await.is_err(), "the orphan is removed");
    assert!(running(&kept_name).await, "the kept container is untouched");
    let events = server.events_of(&orphan).await;
    assert!(events.iter().any(|e| e["action"] == "remove_orphan"), "{events:?}");
    remove_containers_of(&server.controller_id);
}

#[tokio::test]
async fn a_bad_sweep_request_is_a_json_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let (status, body) = server.post("/v1/admin/sweep", json!({"provider": "nope"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("nope"), "{body}");
    let (status, body) = server.post("/v1/admin/sweep", json!({"dry_run": "yes"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server.post("/v1/admin/sweep", json!({"dryrun": true})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Without a body field: a real sweep of every provider.
    let (status, body) = server.post("/v1/admin/sweep", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["providers"].as_array().unwrap().iter().any(|p| p["provider"] == "process"), "{body}");
}

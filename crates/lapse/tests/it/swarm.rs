//! The swarm provider through `lapse serve`, against a real one-node Swarm (the private
//! dockerd `scripts/test-env.sh` starts; `LAPSE_SWARM_HOST` names it): an environment's
//! life (limits, labels, endpoint, exec, logs, stop to zero replicas, start, delete) and the
//! sweep removing an orphan service but not a kept one.

use std::time::Instant;

use bollard::Docker;
use lapse_providers::swarm::SwarmProvider;
use lapse_providers::swarm::testing::{Cleanup, engine, host};
use lapse_providers::{Placement, Provider};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::docker::image;
use crate::harness::{Server, eventually, secs};

async fn replicas(docker: &Docker, id: &str) -> Option<i64> {
    let service = docker.inspect_service(&format!("lapse-{id}"), None).await.ok()?;
    service.spec?.mode?.replicated?.replicas
}

async fn fetch(host: &str, port: u64, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connect = tokio::net::TcpStream::connect((host, port as u16));
    let mut s = tokio::time::timeout(secs(2), connect).await.ok()?.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.contains("served").then_some(body)
}

#[tokio::test]
async fn swarm_service_life_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--swarm-endpoint", &host()]).await;
    let _cleanup = Cleanup(server.controller_id.clone());
    let (_, providers) = server.get("/v1/providers").await;
    let view = providers["providers"].as_array().unwrap().iter().find(|p| p["name"] == "swarm").cloned();
    assert_eq!(view.as_ref().map(|p| p["available"].clone()), Some(json!(true)), "swarm provider up: {providers}");

    let started = Instant::now();
    let env = server
        .create(json!({"owner": "ada", "lifecycle": "service", "spec": {"provider": "swarm", "image": image(),
            "cmd": ["sh", "-c", "echo served > /tmp/index.html; echo up; exec httpd -f -p 8080 -h /tmp"],
            "resources": {"vcpu": 0.5, "mem_mb": 64}, "ports": [8080]}, "ttl": "10m"}))
        .await;
    let id = env["id"].as_str().unwrap().to_owned();
    let running = server.wait_state(&id, "running", secs(60)).await;
    eprintln!("swarm: create to running through the API in {:?}", started.elapsed());

    let docker = engine().await;
    let service = docker.inspect_service(&format!("lapse-{id}"), None).await.unwrap();
    assert_eq!(running["provider_ref"].as_str(), service.id.as_deref(), "{running}");
    let spec = service.spec.unwrap();
    let labels = spec.labels.unwrap();
    assert_eq!(labels.get("lapse.environment"), Some(&id));
    assert_eq!(labels.get("lapse.controller"), Some(&server.controller_id));
    let task = spec.task_template.unwrap();
    let limits = task.resources.unwrap().limits.unwrap();
    assert_eq!((limits.nano_cpus, limits.memory_bytes), (Some(500_000_000), Some(64 * 1024 * 1024)));
    let restart = task.restart_policy.unwrap();
    assert_eq!(
        restart.condition.map(|c| c.to_string()).as_deref(),
        Some("on-failure"),
        "a service restarts on failure"
    );

    let endpoints = running["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{running}");
    let (host, port) = (endpoints[0]["host"].as_str().unwrap().to_owned(), endpoints[0]["port"].as_u64().unwrap());
    assert_eq!((endpoints[0]["container_port"].as_u64(), port), (Some(8080), 8080));
    eventually(secs(30), "the endpoint to answer", async || fetch(&host, port, "/index.html").await).await;

    let (status, out) =
        server.post(&format!("/v1/environments/{id}/exec"), json!({"cmd": ["sh", "-c", "echo hi; exit 4"]})).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!((out["exit_code"].as_i64(), out["stdout"].as_str()), (Some(4), Some("hi\n")));
    let logs: Value = eventually(secs(30), "the logs", async || {
        let (status, logs) = server.get(&format!("/v1/environments/{id}/logs")).await;
        (status == StatusCode::OK && logs["stdout"].as_str().is_some_and(|s| s.contains("up"))).then_some(logs)
    })
    .await;
    assert!(logs["stdout"].as_str().unwrap().contains("up"), "{logs}");

    // Stop scales to zero; start back to one.
    let (status, _) = server.post(&format!("/v1/environments/{id}/stop"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let stopped = server.wait_state(&id, "stopped", secs(60)).await;
    assert_eq!(stopped["endpoints"], json!([]));
    assert_eq!(replicas(&docker, &id).await, Some(0));
    server.post(&format!("/v1/environments/{id}/start"), json!({})).await;
    let again = server.wait_state(&id, "running", secs(60)).await;
    assert_eq!(replicas(&docker, &id).await, Some(1));
    let host = again["endpoints"][0]["host"].as_str().unwrap().to_owned();
    eventually(secs(30), "the restarted endpoint to answer", async || fetch(&host, 8080, "/index.html").await).await;

    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(60)).await;
    assert!(docker.inspect_service(&format!("lapse-{id}"), None).await.is_err(), "the service is removed");
}

#[tokio::test]
async fn the_sweep_removes_an_orphan_service_and_keeps_a_kept_one() {
    let dir = tempfile::tempdir().unwrap();
    // The periodic sweep of swarm runs once at start and not again during the test.
    let server = Server::start(dir.path(), &["--swarm-endpoint", &host(), "--sweep-interval-of", "swarm=1h"]).await;
    let _cleanup = Cleanup(server.controller_id.clone());
    // Services under this server's labels that no record knows (a crash after the create).
    let ours = SwarmProvider::connect(&host(), &server.controller_id).unwrap();
    let (orphan, kept) = (lapse_core::model::new_environment_id(), lapse_core::model::new_environment_id());
    let spec = lapse_core::model::Spec {
        provider: "swarm".into(),
        image: Some(image()),
        cmd: vec!["sleep".into(), "600".into()],
        ..Default::default()
    };
    for id in [&orphan, &kept] {
        ours.ensure_running(id, &Placement::of_tenant(""), &spec).await.unwrap();
    }
    let marked = std::process::Command::new("docker")
        .env("DOCKER_HOST", host())
        .args(["service", "update", "-d", "--label-add", "lapse.keep=true", &format!("lapse-{kept}")])
        .output()
        .unwrap();
    assert!(marked.status.success(), "{}", String::from_utf8_lossy(&marked.stderr));

    let (status, plan) = server.post("/v1/admin/sweep", json!({"dry_run": true, "provider": "swarm"})).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    let action = |view: &Value, id: &str| {
        let swarm = view["providers"].as_array().unwrap().iter().find(|p| p["provider"] == "swarm").cloned().unwrap();
        swarm["actions"].as_array().unwrap().iter().find(|a| a["environment_id"] == id).cloned().unwrap_or_default()
    };
    assert_eq!(action(&plan, &orphan)["action"], "remove_orphan", "{plan}");
    assert_eq!(action(&plan, &kept)["action"], "keep", "{plan}");
    let docker = engine().await;
    assert_eq!(replicas(&docker, &orphan).await, Some(1), "the dry run changed nothing");

    let (status, done) = server.post("/v1/admin/sweep", json!({"provider": "swarm"})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(action(&done, &orphan)["done"], true, "{done}");
    assert!(docker.inspect_service(&format!("lapse-{orphan}"), None).await.is_err(), "the orphan is removed");
    assert_eq!(replicas(&docker, &kept).await, Some(1), "the kept service is untouched");
}

#[tokio::test]
async fn what_swarm_cannot_run_is_a_400_or_a_failed_environment_with_the_engines_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--swarm-endpoint", &host()]).await;
    let _cleanup = Cleanup(server.controller_id.clone());
    for (spec, field) in [
        (json!({"provider": "swarm", "cmd": ["true"]}), "spec.image"),
        (json!({"provider": "swarm", "image": image(), "resources": {"disk_gb": 5}}), "spec.resources.disk_gb"),
        (json!({"provider": "swarm", "image": image(), "user_data": "#cloud-config\n"}), "spec.user_data"),
    ] {
        let (status, body) = server.post("/v1/environments", json!({"owner": "ada", "spec": spec})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["message"].as_str().unwrap_or_default().contains(field), "{body}");
    }
    assert_eq!(server.count_environments().await, 0, "a refused create changes nothing");

    // An image the engine does not have: failed for good, with the engine's words.
    let env = server
        .create(
            json!({"owner": "ada", "spec": {"provider": "swarm", "image": "localhost/no-such-image:1"}, "ttl": "10m"}),
        )
        .await;
    let failed = server.wait_state(env["id"].as_str().unwrap(), "failed", secs(60)).await;
    assert!(failed["reason"].as_str().unwrap_or_default().contains("No such image"), "{failed}");
}

/// The running task container of environment `id` and its address on the gateway bridge.
async fn task_container(docker: &Docker, id: &str) -> Option<(String, String)> {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let label = format!("lapse.environment={id}");
    let filters = std::collections::HashMap::from([("label", vec![label.as_str()]), ("status", vec!["running"])]);
    let listed =
        docker.list_containers(Some(ListContainersOptionsBuilder::new().filters(&filters).build())).await.ok()?;
    let container = listed.into_iter().next()?.id?;
    let bridge = docker.inspect_network(lapse_providers::swarm::GATEWAY_BRIDGE, None).await.ok()?;
    let address = bridge.containers?.get(&container)?.ipv4_address.clone()?;
    Some((container, address.split('/').next()?.to_owned()))
}

#[tokio::test]
async fn a_task_the_engine_restarts_is_recorded_at_its_new_address() {
    let dir = tempfile::tempdir().unwrap();
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let server = Server::start(dir.path(), &["--swarm-endpoint", &host(), "--proxy-listen", &listen]).await;
    let _cleanup = Cleanup(server.controller_id.clone());
    let served = |name: &str| {
        json!({"owner": "ada", "lifecycle": "service", "ttl": "10m", "spec": {"provider": "swarm", "image": image(),
            "cmd": ["sh", "-c", format!("echo served {name} > /tmp/index.html; exec httpd -f -p 8080 -h /tmp")],
            "ports": [8080]}})
    };
    let http = reqwest::Client::new();
    let proxied = async |id: &str| {
        let resp = http.get(format!("http://{listen}/e/{id}/8080/index.html")).send().await.ok()?;
        Some((resp.status(), resp.text().await.ok()?))
    };
    let a = server.create(served("A")).await["id"].as_str().unwrap().to_owned();
    let before = server.wait_state(&a, "running", secs(60)).await;
    let old = before["endpoints"][0]["host"].as_str().unwrap().to_owned();
    eventually(secs(30), "A answers through the proxy", async || {
        proxied(&a).await.filter(|(s, body)| *s == StatusCode::OK && body.contains("served A"))
    })
    .await;

    // The engine restarts A's task after its restart delay (5 s), as a new container; B,
    // made meanwhile, takes the address A's dead container freed.
    let docker = engine().await;
    let (container, _) = task_container(&docker, &a).await.expect("A's task container");
    docker.kill_container(&container, None::<bollard::query_parameters::KillContainerOptions>).await.unwrap();
    let b = server.create(served("B")).await["id"].as_str().unwrap().to_owned();
    let b_running = server.wait_state(&b, "running", secs(60)).await;
    eprintln!("A was at {old}; B is at {}", b_running["endpoints"][0]["host"]);

    // Until A is back, the proxy answers for A with A's page or an error: never B's.
    let (_, now) = eventually(secs(60), "A recorded at its new container's address", async || {
        if let Some((_, body)) = proxied(&a).await {
            assert!(!body.contains("served B"), "A's request reached B's container: {body}");
        }
        let (restarted, address) = task_container(&docker, &a).await?;
        let recorded = server.env(&a).await["endpoints"][0]["host"].as_str().map(str::to_owned)?;
        (restarted != container && recorded == address).then_some((restarted, address))
    })
    .await;
    eventually(secs(30), "A answers from its new container", async || {
        let (status, body) = proxied(&a).await?;
        assert!(!body.contains("served B"), "A's request reached B's container: {body}");
        (status == StatusCode::OK && body.contains("served A")).then_some(())
    })
    .await;
    let events = server.events_of(&a).await;
    let moved: Vec<_> = events.iter().filter(|e| e["action"] == "endpoints").collect();
    assert!(!moved.is_empty(), "the move is an event: {events:?}");
    assert!(moved.iter().any(|e| e["message"].as_str().is_some_and(|d| d.contains(&now))), "{moved:?}");
}

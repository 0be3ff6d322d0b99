//! The docker provider through the API, against Podman's Docker Engine API.

use std::collections::HashMap;
use std::time::Instant;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, secs};

/// Removes every container labelled with this controller id when dropped.
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        crate::harness::remove_containers_of(&self.0);
    }
}

pub fn image() -> String {
    std::env::var("LAPSE_TEST_IMAGE").expect("LAPSE_TEST_IMAGE is set by scripts/test (a local busybox image)")
}

pub fn docker() -> Docker {
    let host = std::env::var("DOCKER_HOST").expect("DOCKER_HOST is set by scripts/test (Podman's socket)");
    Docker::connect_with_unix(&host, 60, bollard::API_DEFAULT_VERSION).expect("connecting to the Docker API")
}

pub fn docker_env(cmd: &[&str]) -> Value {
    json!({"owner": "ada", "spec": {"provider": "docker", "image": image(), "cmd": cmd}, "ttl": "10m"})
}

async fn fetch(host: &str, port: u64, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((host, port as u16)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    Some(body)
}

async fn fetch_eventually(endpoint: &Value, path: &str, want: &str) {
    let host = endpoint["host"].as_str().unwrap();
    let port = endpoint["port"].as_u64().unwrap();
    for _ in 0..100 {
        if fetch(host, port, path).await.is_some_and(|b| b.contains(want)) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{host}:{port}{path} never answered {want:?}");
}

#[tokio::test]
async fn container_life_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let (_, providers) = server.get("/v1/providers").await;
    let docker_view = providers["providers"].as_array().unwrap().iter().find(|p| p["name"] == "docker").cloned();
    assert_eq!(
        docker_view.as_ref().map(|p| p["available"].clone()),
        Some(json!(true)),
        "docker provider up: {providers}"
    );

    let started = Instant::now();
    let env = server
        .create(json!({"owner": "ada", "spec": {"provider": "docker", "image": image(),
            "cmd": ["sh", "-c", "echo served > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"],
            "resources": {"vcpu": 0.5, "mem_mb": 64}, "ports": [8080]}, "ttl": "10m"}))
        .await;
    let id = env["id"].as_str().unwrap().to_owned();
    let running = server.wait_state(&id, "running", secs(30)).await;
    eprintln!("docker: create to running in {:?}", started.elapsed());

    let docker = docker();
    let inspect = docker.inspect_container(&format!("lapse-{id}"), None).await.unwrap();
    let host_config = inspect.host_config.unwrap();
    assert_eq!(host_config.memory, Some(64 * 1024 * 1024));
    assert_eq!(host_config.nano_cpus, Some(500_000_000));
    let labels = inspect.config.unwrap().labels.unwrap();
    assert_eq!(labels.get("lapse.environment"), Some(&id));
    assert_eq!(labels.get("lapse.controller"), Some(&server.controller_id));

    let (status, out) = server
        .post(&format!("/v1/environments/{id}/exec"), json!({"cmd": ["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!((out["exit_code"].as_i64(), out["stdout"].as_str().map(str::trim)), (Some(0), Some("67108864")));

    let endpoints = running["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{running}");
    assert_eq!(
        (endpoints[0]["container_port"].as_u64(), endpoints[0]["host"].as_str()),
        (Some(8080), Some("127.0.0.1"))
    );
    fetch_eventually(&endpoints[0], "/index.html", "served").await;

    let (status, _) = server.post(&format!("/v1/environments/{id}/stop"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let stopped = server.wait_state(&id, "stopped", secs(30)).await;
    assert_eq!(stopped["endpoints"], json!([]));
    let inspect = docker.inspect_container(&format!("lapse-{id}"), None).await.unwrap();
    assert_eq!(inspect.state.unwrap().running, Some(false));
    let (status, answer) = server.post(&format!("/v1/environments/{id}/exec"), json!({"cmd": ["true"]})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");

    server.post(&format!("/v1/environments/{id}/start"), json!({})).await;
    let again = server.wait_state(&id, "running", secs(30)).await;
    fetch_eventually(&again["endpoints"][0], "/index.html", "served").await;
    let (status, logs) = server.get(&format!("/v1/environments/{id}/logs")).await;
    assert_eq!(status, StatusCode::OK, "{logs}");

    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(30)).await;
    assert!(docker.inspect_container(&format!("lapse-{id}"), None).await.is_err(), "the container is removed");
}

#[tokio::test]
async fn the_sweep_removes_our_unknown_containers_and_leaves_others_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let docker = docker();
    let make = |controller: String, name: String, env_id: String| {
        let docker = docker.clone();
        async move {
            let body = ContainerCreateBody {
                image: Some(image()),
                cmd: Some(vec!["sleep".into(), "600".into()]),
                labels: Some(HashMap::from([
                    ("lapse.environment".to_owned(), env_id),
                    ("lapse.controller".to_owned(), controller),
                ])),
                ..Default::default()
            };
            docker
                .create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body)
                .await
                .unwrap();
            docker.start_container(&name, None).await.unwrap();
        }
    };
    let orphan_id = lapse_core::model::new_environment_id();
    let orphan = format!("orphan-{orphan_id}");
    let foreign = format!("foreign-{}", lapse_core::model::new_environment_id());
    make(server.controller_id.clone(), orphan.clone(), orphan_id.clone()).await;
    // Another control plane's container; removed even if this test fails.
    let other = format!("someone-else-{}", &lapse_core::model::new_environment_id()[20..]);
    let _cleanup = RemoveOnDrop(other.clone());
    make(other.clone(), foreign.clone(), lapse_core::model::new_environment_id()).await;

    let deadline = Instant::now() + secs(15);
    while docker.inspect_container(&orphan, None).await.is_ok() {
        assert!(Instant::now() < deadline, "the orphan was not removed\n{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    loop {
        let (_, events) = server.get("/v1/events?limit=1000").await;
        if events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "remove_orphan" && e["environment_id"] == orphan_id.as_str())
        {
            break;
        }
        assert!(Instant::now() < deadline, "no remove_orphan event: {events:#}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(secs(2)).await;
    assert!(docker.inspect_container(&foreign, None).await.is_ok(), "another control plane's container is left alone");
    docker
        .remove_container(&foreign, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_container_removed_behind_our_back_is_provisioned_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let id = server.create(docker_env(&["sleep", "600"])).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(30)).await;
    let docker = docker();
    let name = format!("lapse-{id}");
    let first = docker.inspect_container(&name, None).await.unwrap().id;
    docker.remove_container(&name, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await.unwrap();

    let deadline = Instant::now() + secs(20);
    loop {
        if let Ok(c) = docker.inspect_container(&name, None).await
            && c.id != first
            && server.env(&id).await["state"] == "running"
        {
            break;
        }
        assert!(Instant::now() < deadline, "not provisioned again\n{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let events = server.events_of(&id).await;
    assert!(
        events.iter().any(|e| e["actor"] == "sweep" && e["message"].as_str().unwrap().contains("vanished")),
        "{events:#?}"
    );
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(30)).await;
}

#[tokio::test]
async fn a_missing_image_fails_with_its_reason_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let mut body = docker_env(&["true"]);
    body["spec"]["image"] = json!("localhost/lapse-no-such-image:1");
    let id = server.create(body).await["id"].as_str().unwrap().to_owned();
    let failed = server.wait_state(&id, "failed", secs(20)).await;
    assert!(failed["reason"].as_str().unwrap().contains("not found"), "{failed}");
    assert_eq!(failed["attempts"], 1, "a permanent error is not retried");
    assert!(docker().inspect_container(&format!("lapse-{id}"), None).await.is_err());
    // Deleting a failed environment ends it.
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(10)).await;
}

#[tokio::test]
async fn a_docker_warm_pool_hands_out_a_running_container() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let spec = json!({"provider": "docker", "image": image(), "cmd": ["sleep", "600"]});
    let (status, _) = server.request(Method::PUT, "/v1/pools/box", Some(json!({"spec": spec, "min": 2}))).await;
    assert_eq!(status, StatusCode::CREATED);
    crate::pools::wait_warm(&server, "box", 2).await;
    let started = Instant::now();
    let (status, env) = server.post("/v1/environments", json!({"owner": "ada", "spec": spec, "ttl": "10m"})).await;
    eprintln!("docker warm claim answered in {:?}", started.elapsed());
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    let inspect = docker().inspect_container(&format!("lapse-{id}"), None).await.unwrap();
    assert_eq!(inspect.state.unwrap().running, Some(true), "the container already runs");
    crate::pools::wait_warm(&server, "box", 2).await;
    server.request(Method::DELETE, "/v1/pools/box", None).await;
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(30)).await;
}

#[tokio::test]
async fn user_data_is_in_the_container_where_cloud_init_looks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let _cleanup = RemoveOnDrop(server.controller_id.clone());
    let mut body = docker_env(&["sleep", "600"]);
    body["spec"]["user_data"] = json!("#cloud-config\nruncmd: [echo hi]\n");
    let env = server.create(body).await;
    let id = env["id"].as_str().unwrap();
    let env = server.wait_state(id, "running", secs(60)).await;
    assert_eq!(env["user_data_path"], "/var/lib/cloud/seed/nocloud/user-data");
    let (status, out) = server
        .post(
            &format!("/v1/environments/{id}/exec"),
            json!({"cmd": ["sh", "-c", "cat \"$LAPSE_USER_DATA\"; cat /var/lib/cloud/seed/nocloud/meta-data"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let stdout = out["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("#cloud-config\nruncmd: [echo hi]\n"), "{stdout}");
    assert!(stdout.contains(&format!("instance-id: {id}")), "{stdout}");
}

/// Tenants' containers are on networks of their own: one of tenant B cannot reach one of
/// tenant A, two of A reach each other. Each container carries the hardening defaults, and
/// a tenant's network goes with its last container.
#[tokio::test]
async fn tenants_containers_cannot_reach_each_other() {
    const ADMIN: &str = "admin-key-for-docker-tests-0123";
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[], &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let _cleanup = RemoveOnDrop(server.controller_id.clone());
    let mut keys = HashMap::new();
    for (tenant, tier) in [("alpha", "pro"), ("beta", "free")] {
        let (status, t) = server.post("/v1/admin/tenants", json!({"name": tenant, "tier": tier})).await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
        let (_, k) = server.post(&format!("/v1/admin/tenants/{tenant}/keys"), json!({})).await;
        keys.insert(tenant, k["key"].as_str().unwrap().to_owned());
    }
    let create = async |tenant: &str, cmd: &[&str]| {
        let (status, env) =
            server.request_as(Some(&keys[tenant]), Method::POST, "/v1/environments", Some(docker_env(cmd))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{env}");
        env["id"].as_str().unwrap().to_owned()
    };
    let web = create("alpha", &["sh", "-c", "echo hi > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]).await;
    let friend = create("alpha", &["sleep", "600"]).await;
    let stranger = create("beta", &["sleep", "600"]).await;
    for id in [&web, &friend, &stranger] {
        server.wait_state(id, "running", secs(60)).await;
    }
    let inspect = docker().inspect_container(&format!("lapse-{web}"), None).await.unwrap();
    let host = inspect.host_config.clone().unwrap();
    assert_eq!(host.pids_limit, Some(1024));
    assert_eq!(host.security_opt, Some(vec!["no-new-privileges".to_owned()]));
    let network = format!("{}-alpha", server.controller_id);
    let networks = inspect.network_settings.unwrap().networks.unwrap();
    let ip = networks[&network].ip_address.clone().unwrap();
    let probe = format!(
        "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080 | grep -q hi && echo reached || echo blocked"
    );
    let try_from = async |tenant: &str, id: &str| {
        let (status, out) = server
            .request_as(
                Some(&keys[tenant]),
                Method::POST,
                &format!("/v1/environments/{id}/exec"),
                Some(json!({"cmd": ["sh", "-c", probe]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{out}");
        out["stdout"].as_str().unwrap().trim().to_owned()
    };
    assert_eq!(try_from("alpha", &friend).await, "reached");
    assert_eq!(try_from("beta", &stranger).await, "blocked");
    for (tenant, id) in [("alpha", &web), ("alpha", &friend), ("beta", &stranger)] {
        server.request_as(Some(&keys[tenant]), Method::DELETE, &format!("/v1/environments/{id}"), None).await;
        server.wait_state(id, "deleted", secs(30)).await;
    }
    assert!(docker().inspect_network(&network, None).await.is_err(), "{network} went with its last container");
}

/// Two consecutive ports nothing listens on.
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
        if first < 65535 && std::net::TcpListener::bind(("0.0.0.0", first + 1)).is_ok() {
            return first;
        }
    }
    panic!("no two consecutive free ports");
}

/// github.gg's conventions (`docker-provider.ts`: `--name gh-gg-… --label gh.gg/managed=true
/// --label gh.gg/vm-name=<name> -p <first free from 2222>:22 --restart unless-stopped`), as
/// the operator's flags, seen through the engine's API.
#[tokio::test]
async fn containers_carry_the_operators_labels_names_ports_and_restart_policy() {
    let dir = tempfile::tempdir().unwrap();
    let first = free_port_pair();
    let range = format!("{first}-{}", first + 1);
    let server = Server::start(
        dir.path(),
        &[
            "--docker-label",
            "gh.gg/managed=true",
            "--docker-name-label",
            "gh.gg/vm-name",
            "--docker-name-prefix",
            "gh-gg-",
            "--docker-publish-address",
            "0.0.0.0",
            "--docker-port-range",
            &range,
            "--docker-restart",
            "unless-stopped",
        ],
    )
    .await;
    let web = |n: u32| {
        json!({"owner": "ada", "spec": {"provider": "docker", "image": image(),
            "cmd": ["sh", "-c", format!("echo served{n} > /tmp/index.html; exec httpd -f -p 8080 -h /tmp")], "ports": [8080]}, "ttl": "10m"})
    };
    // Two at once: each gets its own port of the range.
    let (a, b) = tokio::join!(server.create(web(1)), server.create(web(2)));
    let ids = [a["id"].as_str().unwrap().to_owned(), b["id"].as_str().unwrap().to_owned()];
    let mut ports = Vec::new();
    for id in &ids {
        let running = server.wait_state(id, "running", secs(60)).await;
        ports.push(running["endpoints"][0]["port"].as_u64().unwrap() as u16);
    }
    ports.sort();
    assert_eq!(ports, [first, first + 1], "the range's first free ports, never one twice");

    let docker = docker();
    let filters = HashMap::from([("label", vec!["gh.gg/managed=true".to_owned()])]);
    let options =
        bollard::query_parameters::ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let listed = docker.list_containers(Some(options)).await.unwrap();
    let mut names: Vec<String> = listed
        .iter()
        .flat_map(|c| c.names.clone().unwrap_or_default())
        .map(|n| n.trim_start_matches('/').to_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = ids.iter().map(|id| format!("gh-gg-{id}")).collect();
    want.sort();
    assert_eq!(names, want, "docker ps --filter label=gh.gg/managed=true");
    for id in &ids {
        let inspect = docker.inspect_container(&format!("gh-gg-{id}"), None).await.unwrap();
        let labels = inspect.config.unwrap().labels.unwrap();
        assert_eq!(labels.get("gh.gg/vm-name"), Some(&format!("gh-gg-{id}")));
        assert_eq!(labels.get("lapse.environment"), Some(id), "Lapse's own labels stay");
        let host = inspect.host_config.unwrap();
        assert_eq!(host.restart_policy.unwrap().name, Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED));
        let binding = &host.port_bindings.unwrap()["8080/tcp"].clone().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("0.0.0.0"), "published on the configured address");
        assert!(ports.contains(&binding.host_port.as_deref().unwrap().parse().unwrap()));
    }
    let running = server.env(&ids[0]).await;
    fetch_eventually(&running["endpoints"][0], "/index.html", "served1").await;

    // The range is full: a clear failure, and nothing made.
    let third = server.create(web(3)).await["id"].as_str().unwrap().to_owned();
    let failed = server.wait_state(&third, "failed", secs(30)).await;
    assert!(
        failed["reason"].as_str().unwrap().contains(&format!("no free host port in the range {range}")),
        "{failed}"
    );
    assert!(docker.inspect_container(&format!("gh-gg-{third}"), None).await.is_err());

    // A stopped container keeps its port; a deleted one frees it for the next.
    server.post(&format!("/v1/environments/{}/stop", ids[0]), json!({})).await;
    server.wait_state(&ids[0], "stopped", secs(30)).await;
    let fourth = server.create(web(4)).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&fourth, "failed", secs(30)).await;
    let port_of_first = running["endpoints"][0]["port"].as_u64().unwrap();
    server.request(Method::DELETE, &format!("/v1/environments/{}", ids[0]), None).await;
    server.wait_state(&ids[0], "deleted", secs(30)).await;
    let fifth = server.create(web(5)).await["id"].as_str().unwrap().to_owned();
    let running = server.wait_state(&fifth, "running", secs(60)).await;
    assert_eq!(running["endpoints"][0]["port"].as_u64(), Some(port_of_first));
    fetch_eventually(&running["endpoints"][0], "/index.html", "served5").await;
}

/// Conventions that do not read stop `lapse serve` with the reason.
#[tokio::test]
async fn bad_docker_conventions_refuse_to_start() {
    for (flag, value, why) in [
        ("--docker-label", "lapse.controller=x", "labels starting with lapse. are Lapse's own"),
        ("--docker-port-range", "3000-2000", "give FIRST-LAST"),
        ("--docker-restart", "sometimes", "one of no, unless-stopped"),
        ("--docker-restart", "always", "use unless-stopped"),
        ("--docker-name-prefix", "/x", "1-30 of"),
        ("--docker-publish-address", "everywhere", "is not an IP address"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args([flag, value])
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{flag} {value}: {stderr}");
    }
}

/// `disk_gb` on docker: enforced with `storage-opt size` where the probed storage driver
/// takes it, refused with a 400 naming the reason where it does not (Podman over ext4 here).
#[tokio::test]
async fn disk_gb_is_enforced_or_refused_as_the_storage_driver_allows() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let (_, providers) = server.get("/v1/providers").await;
    let detail = providers["providers"].as_array().unwrap().iter().find(|p| p["name"] == "docker").unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    eprintln!("docker provider: {detail}");
    let mut body = docker_env(&["sleep", "600"]);
    body["spec"]["resources"] = json!({"disk_gb": 2});
    if detail.contains("disk_gb enforced") {
        let id = server.create(body).await["id"].as_str().unwrap().to_owned();
        server.wait_state(&id, "running", secs(60)).await;
        let inspect = docker().inspect_container(&format!("lapse-{id}"), None).await.unwrap();
        assert_eq!(inspect.host_config.unwrap().storage_opt.unwrap().get("size").map(String::as_str), Some("2G"));
    } else {
        assert!(detail.contains("disk_gb refused (storage driver"), "{detail}");
        let (status, e) = server.post("/v1/environments", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("spec.resources.disk_gb: the docker provider cannot limit disk here"), "{message}");
        assert!(message.contains("storage-opt"), "the engine's reason: {message}");
        assert_eq!(server.count_environments().await, 0, "nothing made");
    }
}

/// Under a restart policy the engine restarts a command that exits, and Lapse leaves that
/// to it: the environment stays running (a stop is still a stop).
#[tokio::test]
async fn an_exit_under_a_restart_policy_is_the_engines_to_handle() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--docker-restart", "on-failure", "--sweep-interval", "100ms"]).await;
    let id = server.create(docker_env(&["sh", "-c", "sleep 0.3; exit 1"])).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(60)).await;
    let docker = docker();
    let name = format!("lapse-{id}");
    // The podman CLI: between an exit and its restart Podman's API reports a state
    // (`stopped`) that bollard does not parse.
    let restart_count = || {
        let out =
            std::process::Command::new("podman").args(["inspect", "--format", "{{.RestartCount}}", &name]).output();
        out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().ok()).unwrap_or_default()
    };
    let mut restarts = 0;
    for _ in 0..100 {
        restarts = restart_count();
        if restarts >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(restarts >= 3, "the engine restarted it {restarts} times");
    let env = server.env(&id).await;
    assert_eq!((env["state"].clone(), env["desired_state"].clone()), (json!("running"), json!("running")), "{env}");
    server.post(&format!("/v1/environments/{id}/stop"), json!({})).await;
    server.wait_state(&id, "stopped", secs(30)).await;
    let stopped_at = restart_count();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let inspect = docker.inspect_container(&name, None).await.unwrap();
    assert_eq!(inspect.state.unwrap().running, Some(false), "a stop is not undone by the policy");
    assert_eq!(restart_count(), stopped_at);
}

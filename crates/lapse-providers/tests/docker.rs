//! The docker provider against a real Docker Engine API (Podman's, in the test command).
//! Needs `DOCKER_HOST` and `LAPSE_TEST_IMAGE`, which `scripts/test` provides.

use std::time::Duration;

use lapse_core::model::{Resources, Spec};
use lapse_providers::docker::DockerProvider;
use lapse_providers::{InstanceStatus, Placement, Provider};

fn image() -> String {
    std::env::var("LAPSE_TEST_IMAGE").expect("LAPSE_TEST_IMAGE is set by scripts/test (a local busybox image)")
}

/// The provider, once the engine answers: detection gives up on an engine silent for 3 s, and
/// Podman under the whole suite's load can be (the server keeps such a provider on; a test
/// asks again, for up to 30 s).
async fn provider(controller: &str) -> DockerProvider {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match DockerProvider::detect(None, controller).await {
            Ok(p) => return p,
            Err(e) if std::time::Instant::now() < deadline => eprintln!("the engine is slow to answer: {e}"),
            Err(e) => panic!("a Docker Engine API answers (scripts/test starts Podman's): {e:?}"),
        }
    }
}

fn new_id() -> String {
    lapse_core::model::new_environment_id()
}

#[tokio::test]
async fn container_life_with_limits_ports_exec_and_logs() {
    let p = provider(&format!("test-{}", &new_id()[..8])).await;
    let id = new_id();
    let spec = Spec {
        provider: "docker".into(),
        image: Some(image()),
        cmd: vec!["sh".into(), "-c".into(), "echo hello-logs; echo err-logs >&2; exec httpd -f -p 8080 -h /tmp".into()],
        resources: Some(Resources { vcpu: Some(0.5), mem_mb: Some(64), disk_gb: None }),
        ports: vec![8080],
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let inst = p.ensure_running(&id, &Placement::of_tenant("acme"), &spec).await.unwrap();
    eprintln!("docker create+start took {:?}", started.elapsed());
    assert_eq!(inst.status, InstanceStatus::Running);
    assert_eq!(inst.endpoints.len(), 1, "{inst:?}");
    let ep = &inst.endpoints[0];
    assert_eq!((ep.container_port, ep.host.as_str()), (8080, "127.0.0.1"));
    assert_ne!(ep.port, 0);

    // Idempotent.
    let again = p.ensure_running(&id, &Placement::of_tenant("acme"), &spec).await.unwrap();
    assert_eq!(again.provider_ref, inst.provider_ref);

    // The memory limit is what the container's cgroup says.
    let out = p
        .exec(
            &id,
            &spec,
            &[
                "sh".into(),
                "-c".into(),
                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; exit 7"
                    .into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(7));
    assert_eq!(out.stdout.trim(), (64 * 1024 * 1024).to_string());

    // The published port answers on loopback.
    p.exec(&id, &spec, &["sh".into(), "-c".into(), "echo served > /tmp/index.html".into()], Duration::from_secs(10))
        .await
        .unwrap();
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(mut s) = tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await.unwrap();
            s.read_to_string(&mut body).await.unwrap();
            if body.contains("served") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.contains("served"), "{body}");

    let logs = p.logs(&id, 10).await.unwrap();
    assert_eq!((logs.stdout.trim(), logs.stderr.trim()), ("hello-logs", "err-logs"));

    let listed = p.list().await.unwrap();
    assert_eq!(listed.iter().filter(|i| i.environment_id == id).count(), 1);
    // Another control plane sees none of it.
    assert!(provider("someone-else").await.list().await.unwrap().iter().all(|i| i.environment_id != id));

    p.stop(&id, Duration::from_secs(1)).await.unwrap();
    assert_eq!(p.inspect(&id).await.unwrap().unwrap().status, InstanceStatus::Stopped);
    let restarted = p.ensure_running(&id, &Placement::of_tenant("acme"), &spec).await.unwrap();
    assert_eq!(restarted.status, InstanceStatus::Running);
    assert_eq!(restarted.provider_ref, inst.provider_ref);

    p.delete(&id, Duration::from_secs(1)).await.unwrap();
    assert_eq!(p.inspect(&id).await.unwrap(), None);
    p.delete(&id, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_missing_image_is_permanent() {
    let p = provider("test-missing-image").await;
    let spec =
        Spec { provider: "docker".into(), image: Some("localhost/no-such-image:1".into()), ..Default::default() };
    let err = p.ensure_running(&new_id(), &Placement::default(), &spec).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}

fn sleeper() -> Spec {
    Spec {
        provider: "docker".into(),
        image: Some(image()),
        cmd: vec!["sleep".into(), "600".into()],
        ..Default::default()
    }
}

fn cmd(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// What the engine recorded of a container's hardening, as `docker inspect` shows it.
#[tokio::test]
async fn containers_get_hardening_defaults() {
    let controller = format!("test-{}", &new_id()[20..]);
    let p = provider(&controller).await;
    let id = new_id();
    p.ensure_running(&id, &Placement::of_tenant("acme"), &sleeper()).await.unwrap();
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let inspect = docker.inspect_container(&format!("lapse-{id}"), None).await.unwrap();
    let host = inspect.host_config.unwrap();
    eprintln!(
        "engine recorded: pids_limit {:?}, security_opt {:?}, log_config {:?}, network {:?}",
        host.pids_limit, host.security_opt, host.log_config, host.network_mode
    );
    assert_eq!(host.pids_limit, Some(lapse_providers::docker::PIDS_LIMIT));
    assert!(host.security_opt.unwrap_or_default().iter().any(|o| o.starts_with("no-new-privileges")));
    // Docker shows the log options back; Podman's compatible inspect does not, its own does
    // (it applies max-size and keeps one file).
    let log = host.log_config.unwrap();
    if log.config.as_ref().is_some_and(|c| c.contains_key("max-size")) {
        assert_eq!(log.config.unwrap()["max-size"], "10m");
    } else {
        let out = std::process::Command::new("podman")
            .args(["inspect", "--format", "{{.HostConfig.LogConfig.Size}}", &format!("lapse-{id}")])
            .output()
            .expect("podman, when the engine is Podman");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10MB");
    }
    let networks = inspect.network_settings.unwrap().networks.unwrap_or_default();
    assert_eq!(networks.keys().collect::<Vec<_>>(), vec![&format!("{controller}-acme")], "on the tenant's network");
    // Inside, the pids limit holds too.
    let out = p
        .exec(
            &id,
            &sleeper(),
            &cmd("cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), lapse_providers::docker::PIDS_LIMIT.to_string());
    p.delete(&id, Duration::from_secs(1)).await.unwrap();
    assert!(
        docker.inspect_network(&format!("{controller}-acme"), None).await.is_err(),
        "the network went with its last container"
    );
}

/// Two containers of one tenant reach each other; one of another tenant reaches neither.
#[tokio::test]
async fn tenants_networks_are_isolated() {
    let controller = format!("test-{}", &new_id()[20..]);
    let p = provider(&controller).await;
    let (a1, a2, b1) = (new_id(), new_id(), new_id());
    let server = Spec { cmd: cmd("echo hi > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"), ..sleeper() };
    p.ensure_running(&a1, &Placement::of_tenant("alpha"), &server).await.unwrap();
    p.ensure_running(&a2, &Placement::of_tenant("alpha"), &sleeper()).await.unwrap();
    p.ensure_running(&b1, &Placement::of_tenant("beta"), &sleeper()).await.unwrap();
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let inspect = docker.inspect_container(&format!("lapse-{a1}"), None).await.unwrap();
    let networks = inspect.network_settings.unwrap().networks.unwrap();
    let ip = networks[&format!("{controller}-alpha")].ip_address.clone().unwrap();
    let probe = format!(
        "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080 | grep -q hi && echo reached || echo blocked"
    );
    let same = p.exec(&a2, &sleeper(), &cmd(&probe), Duration::from_secs(20)).await.unwrap();
    assert_eq!(same.stdout.lines().last(), Some("reached"), "{same:?}");
    let other = p.exec(&b1, &sleeper(), &cmd(&probe), Duration::from_secs(20)).await.unwrap();
    assert_eq!(other.stdout.lines().last(), Some("blocked"), "{other:?}");
    for id in [&a1, &a2] {
        p.delete(id, Duration::from_secs(1)).await.unwrap();
    }
    assert!(docker.inspect_network(&format!("{controller}-alpha"), None).await.is_err());
    // The sweep's collection removes a network left without containers (its grace over).
    p.delete(&b1, Duration::from_secs(1)).await.unwrap();
    assert!(docker.inspect_network(&format!("{controller}-beta"), None).await.is_err());
}

/// A tenant's network stays while any of its containers exists, running or not: a stopped
/// environment starts again after a sibling's delete, and creates racing deletes in one
/// tenant all start (a created, not yet started, container is not attached to its network).
#[tokio::test]
async fn a_tenants_network_outlives_deletes_while_a_container_still_needs_it() {
    let controller = format!("test-{}", &new_id()[20..]);
    let p = std::sync::Arc::new(provider(&controller).await);
    let tenant = Placement::of_tenant("gamma");
    let (kept, gone) = (new_id(), new_id());
    p.ensure_running(&kept, &tenant, &sleeper()).await.unwrap();
    p.ensure_running(&gone, &tenant, &sleeper()).await.unwrap();
    p.stop(&kept, Duration::from_secs(0)).await.unwrap();
    p.delete(&gone, Duration::from_secs(1)).await.unwrap();
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    assert!(docker.inspect_network(&format!("{controller}-gamma"), None).await.is_ok(), "the stopped one needs it");
    let again = p.ensure_running(&kept, &tenant, &sleeper()).await.unwrap();
    assert_eq!(again.status, InstanceStatus::Running);

    // Each round deletes one environment while another of the tenant is being made.
    let mut previous = kept;
    for _ in 0..6 {
        let next = new_id();
        let (p1, p2, tenant2) = (p.clone(), p.clone(), tenant.clone());
        let old = previous.clone();
        let delete = tokio::spawn(async move { p1.delete(&old, Duration::from_secs(0)).await });
        let id = next.clone();
        let create = tokio::spawn(async move { p2.ensure_running(&id, &tenant2, &sleeper()).await });
        delete.await.unwrap().unwrap();
        let made = create.await.unwrap().unwrap_or_else(|e| panic!("a create racing a delete failed: {e}"));
        assert_eq!(made.status, InstanceStatus::Running);
        previous = next;
    }
    p.delete(&previous, Duration::from_secs(0)).await.unwrap();
    assert!(docker.inspect_network(&format!("{controller}-gamma"), None).await.is_err(), "gone with the last");
}

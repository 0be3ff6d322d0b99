//! The swarm provider against a real Docker Engine in Swarm mode (a private dockerd that
//! `scripts/test-env.sh` starts and makes a one-node manager). Needs `LAPSE_SWARM_HOST` and
//! `LAPSE_TEST_IMAGE`, which the test command sets.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::TaskSpecRestartPolicyConditionEnum;
use bollard::query_parameters::{ListContainersOptionsBuilder, ListServicesOptionsBuilder};
use lapse_core::model::{Lifecycle, Resources, Spec};
use lapse_providers::swarm::SwarmProvider;
use lapse_providers::swarm::testing::{Cleanup, engine, host};
use lapse_providers::{InstanceStatus, Placement, Provider, ProviderError};

fn image() -> String {
    std::env::var("LAPSE_TEST_IMAGE").expect("LAPSE_TEST_IMAGE is set by scripts/test (a local busybox image)")
}

async fn provider() -> (SwarmProvider, Cleanup) {
    let controller = format!("test-{}", &new_id()[20..]);
    let p = SwarmProvider::connect(&host(), &controller).expect("a swarm endpoint");
    p.health().await.expect("the engine is a Swarm manager (scripts/test-env.sh makes it one)");
    (p, Cleanup(controller))
}

fn new_id() -> String {
    lapse_core::model::new_environment_id()
}

fn spec_sh(cmd: &str) -> Spec {
    Spec {
        provider: "swarm".into(),
        image: Some(image()),
        cmd: vec!["sh".into(), "-c".into(), cmd.into()],
        ..Default::default()
    }
}

fn sh(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.into()]
}

async fn http_get(host: &str, port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect((host, port))).await.ok()?.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    Some(body)
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn service_life_with_limits_labels_endpoints_exec_logs_stop_start_delete() {
    let (p, _cleanup) = provider().await;
    let docker = engine().await;
    let id = new_id();
    let spec = Spec {
        resources: Some(Resources { vcpu: Some(0.5), mem_mb: Some(64), disk_gb: None }),
        ports: vec![8080],
        ..spec_sh("echo hello-logs; echo err-logs >&2; echo served > /tmp/index.html; exec httpd -f -p 8080 -h /tmp")
    };
    let started = std::time::Instant::now();
    let up = p.ensure_running(&id, &Placement::of_tenant("acme"), &spec).await.unwrap();
    eprintln!("swarm: create to running in {:?}", started.elapsed());
    assert_eq!((up.status, up.environment_id.as_str()), (InstanceStatus::Running, id.as_str()));

    // What the engine holds: one replica, the limits, the labels, no restart, no published port.
    let service = docker.inspect_service(&format!("lapse-{id}"), None).await.unwrap();
    assert_eq!(service.id.as_deref(), Some(up.provider_ref.as_str()));
    let s = service.spec.clone().unwrap();
    assert_eq!(s.mode.unwrap().replicated.unwrap().replicas, Some(1));
    let labels = s.labels.unwrap();
    assert_eq!(labels.get("lapse.environment"), Some(&id));
    assert_eq!(labels.get("lapse.tenant").map(String::as_str), Some("acme"));
    let task = s.task_template.unwrap();
    let limits = task.resources.unwrap().limits.unwrap();
    assert_eq!((limits.nano_cpus, limits.memory_bytes), (Some(500_000_000), Some(64 * 1024 * 1024)));
    assert_eq!(task.restart_policy.unwrap().condition, Some(TaskSpecRestartPolicyConditionEnum::NONE), "a lease");
    assert!(service.endpoint.and_then(|e| e.ports).unwrap_or_default().is_empty(), "nothing published");
    let filters = HashMap::from([("label", vec![format!("lapse.environment={id}")])]);
    let containers =
        docker.list_containers(Some(ListContainersOptionsBuilder::default().filters(&filters).build())).await.unwrap();
    assert_eq!(containers.len(), 1, "one task container, labelled: {containers:?}");
    let container_labels = containers[0].labels.clone().unwrap();
    assert_eq!(container_labels.get("lapse.controller"), labels.get("lapse.controller"));

    // The memory limit is what the task's cgroup says; exec returns the command's exit code.
    let out = p
        .exec(
            &id,
            &spec,
            &sh("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; exit 7"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!((out.exit_code, out.stdout.trim()), (Some(7), "67108864"));

    // The endpoint answers from this host, without a published port.
    assert_eq!(up.endpoints.len(), 1, "{up:?}");
    let ep = up.endpoints[0].clone();
    assert_eq!((ep.container_port, ep.port), (8080, 8080));
    assert!(ep.host.starts_with("172."), "the task's docker_gwbridge address: {ep:?}");
    eventually("the service to answer", async || {
        http_get(&ep.host, ep.port, "/index.html").await.filter(|b| b.contains("served"))
    })
    .await;

    let logs = eventually("both streams in the logs", async || {
        p.logs(&id, 50).await.ok().filter(|l| l.stdout.contains("hello-logs") && l.stderr.contains("err-logs"))
    })
    .await;
    assert!(!logs.stdout.contains("err-logs"), "{logs:?}");

    // Idempotent: the same service.
    let again = p.ensure_running(&id, &Placement::of_tenant("acme"), &spec).await.unwrap();
    assert_eq!(again.provider_ref, up.provider_ref);

    // Stop scales to zero; start scales back to one (a new task from the image).
    let stopping = std::time::Instant::now();
    p.stop(&id, Duration::from_secs(2)).await.unwrap();
    eprintln!("swarm: stop (scale to 0, task down) in {:?}", stopping.elapsed());
    let service = docker.inspect_service(&format!("lapse-{id}"), None).await.unwrap();
    assert_eq!(service.spec.unwrap().mode.unwrap().replicated.unwrap().replicas, Some(0));
    assert_eq!(p.inspect(&id).await.unwrap().map(|i| i.status), Some(InstanceStatus::Stopped));
    assert!(matches!(
        p.exec(&id, &spec, &sh("true"), Duration::from_secs(5)).await,
        Err(ProviderError::NotFound { .. })
    ));
    let starting = std::time::Instant::now();
    let back = p.ensure_running(&id, &Placement::of_tenant("acme"), &spec).await.unwrap();
    eprintln!("swarm: start (scale to 1, task running) in {:?}", starting.elapsed());
    assert_eq!((back.status, back.provider_ref.as_str()), (InstanceStatus::Running, up.provider_ref.as_str()));
    let service = docker.inspect_service(&format!("lapse-{id}"), None).await.unwrap();
    assert_eq!(service.spec.unwrap().mode.unwrap().replicated.unwrap().replicas, Some(1));
    let ep = back.endpoints[0].clone();
    eventually("the restarted service to answer", async || {
        http_get(&ep.host, ep.port, "/index.html").await.filter(|b| b.contains("served"))
    })
    .await;

    // Listed by the controller label.
    let listed = p.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|i| (i.environment_id.as_str(), i.status)).collect::<Vec<_>>(),
        [(id.as_str(), InstanceStatus::Running)]
    );

    let deleting = std::time::Instant::now();
    p.delete(&id, Duration::from_secs(2)).await.unwrap();
    eprintln!("swarm: delete (service, containers and network gone) in {:?}", deleting.elapsed());
    assert!(docker.inspect_service(&format!("lapse-{id}"), None).await.is_err(), "the service is removed");
    assert_eq!(p.inspect(&id).await.unwrap(), None);
    p.delete(&id, Duration::from_secs(2)).await.expect("deleting what is gone succeeds");
    p.stop(&id, Duration::from_secs(2)).await.expect("stopping what is gone succeeds");
}

#[tokio::test]
async fn creates_racing_and_repeated_after_a_crash_make_one_service() {
    let (p, cleanup) = provider().await;
    let docker = engine().await;
    let id = new_id();
    let spec = spec_sh("exec sleep 600");
    let placement = Placement::of_tenant("acme");
    // Two at once (a retry overlapping the first attempt), then one more (the reconciler
    // after a crash between the create and the record): one service, the same each time.
    let (a, b) = tokio::join!(p.ensure_running(&id, &placement, &spec), p.ensure_running(&id, &placement, &spec));
    let (a, b) = (a.unwrap(), b.unwrap());
    let restarted = SwarmProvider::connect(&host(), &cleanup.0).unwrap();
    let c = restarted.ensure_running(&id, &placement, &spec).await.unwrap();
    assert_eq!((a.provider_ref.as_str(), b.provider_ref.as_str()), (c.provider_ref.as_str(), c.provider_ref.as_str()));
    let filters = HashMap::from([("label", vec![format!("lapse.environment={id}")])]);
    let services =
        docker.list_services(Some(ListServicesOptionsBuilder::default().filters(&filters).build())).await.unwrap();
    assert_eq!(services.len(), 1, "{services:?}");
}

#[tokio::test]
async fn tenants_get_overlay_networks_of_their_own_removed_with_their_last_service() {
    let (p, cleanup) = provider().await;
    let docker = engine().await;
    let (a1, a2, b1) = (new_id(), new_id(), new_id());
    let spec = spec_sh("exec sleep 600");
    let (alpha, beta) = (Placement::of_tenant("alpha"), Placement::of_tenant("beta"));
    let (ra, ra2, rb) = tokio::join!(
        p.ensure_running(&a1, &alpha, &spec),
        p.ensure_running(&a2, &alpha, &spec),
        p.ensure_running(&b1, &beta, &spec),
    );
    let (_, _, rb) = (ra.unwrap(), ra2.unwrap(), rb.unwrap());
    let network_of = async |id: &str| {
        let s = docker.inspect_service(&format!("lapse-{id}"), None).await.unwrap();
        let target = s.spec.unwrap().task_template.unwrap().networks.unwrap()[0].target.clone().unwrap();
        docker.inspect_network(&target, None).await.unwrap()
    };
    let (na1, na2, nb1) = (network_of(&a1).await, network_of(&a2).await, network_of(&b1).await);
    assert_eq!(na1.id, na2.id, "one network per tenant");
    assert_ne!(na1.id, nb1.id, "tenants' networks differ");
    for (n, tenant) in [(&na1, "alpha"), (&nb1, "beta")] {
        assert_eq!((n.driver.as_deref(), n.attachable), (Some("overlay"), Some(true)));
        let labels = n.labels.clone().unwrap();
        assert_eq!(labels.get("lapse.tenant").map(String::as_str), Some(tenant));
        assert_eq!(labels.get("lapse.controller"), Some(&cleanup.0));
    }

    // A tenant's services reach each other by name; another tenant's cannot.
    let reach = |target: &str| sh(&format!("nslookup lapse-{target} >/dev/null 2>&1 && echo yes || echo no"));
    let same = p.exec(&a1, &spec, &reach(&a2), Duration::from_secs(20)).await.unwrap();
    let other = p.exec(&a1, &spec, &reach(&b1), Duration::from_secs(20)).await.unwrap();
    assert_eq!((same.stdout.trim(), other.stdout.trim()), ("yes", "no"), "{same:?} {other:?}");
    // Nor through the gateway bridge the endpoints are on (it refuses container to container).
    let served = Spec { ports: vec![8080], ..spec_sh("exec httpd -f -p 8080 -h /") };
    let web = new_id();
    let up = p.ensure_running(&web, &Placement::of_tenant("beta"), &served).await.unwrap();
    let ep = up.endpoints[0].clone();
    eventually("beta's service to answer the host", async || http_get(&ep.host, ep.port, "/").await).await;
    let probe = sh(&format!("wget -q -T 2 -O- http://{}:{}/ >/dev/null 2>&1; echo $?", ep.host, ep.port));
    let across = p.exec(&a1, &spec, &probe, Duration::from_secs(20)).await.unwrap();
    assert_ne!(across.stdout.trim(), "0", "alpha reached beta's gateway address: {across:?}");
    drop(rb);

    // The network goes with the tenant's last service, not before.
    let network = na1.name.clone().unwrap();
    p.delete(&a1, Duration::from_secs(1)).await.unwrap();
    assert!(docker.inspect_network(&network, None).await.is_ok(), "alpha still has a service");
    p.delete(&a2, Duration::from_secs(1)).await.unwrap();
    assert!(docker.inspect_network(&network, None).await.is_err(), "alpha's network is removed with its last service");
    assert!(docker.inspect_network(nb1.name.as_deref().unwrap(), None).await.is_ok(), "beta's is not");
}

#[tokio::test]
async fn restart_policy_follows_the_lifecycle_and_an_exit_is_reported() {
    let (p, _cleanup) = provider().await;
    let docker = engine().await;
    let (lease, service) = (new_id(), new_id());
    let exits = spec_sh("sleep 1; exit 3");
    let daemon = Placement { lifecycle: Lifecycle::Service, ..Placement::of_tenant("acme") };
    p.ensure_running(&lease, &Placement::of_tenant("acme"), &exits).await.unwrap();
    p.ensure_running(&service, &daemon, &spec_sh("exec sleep 600")).await.unwrap();
    let policy = docker
        .inspect_service(&format!("lapse-{service}"), None)
        .await
        .unwrap()
        .spec
        .unwrap()
        .task_template
        .unwrap()
        .restart_policy
        .unwrap();
    assert_eq!(
        (policy.condition, policy.max_attempts),
        (Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE), Some(3))
    );

    // The lease's task exits; nothing restarts it; its exit code is reported.
    let ended = eventually("the lease's exit", async || {
        p.inspect(&lease).await.unwrap().filter(|i| i.status == InstanceStatus::Stopped)
    })
    .await;
    assert_eq!(ended.exit_code, Some(3), "{ended:?}");
    // Started again: a new task.
    let again = p.ensure_running(&lease, &Placement::of_tenant("acme"), &exits).await.unwrap();
    assert_eq!(again.status, InstanceStatus::Running);
}

#[tokio::test]
async fn what_the_engine_refuses_is_a_permanent_error_and_bad_specs_are_refused_before() {
    let (p, _cleanup) = provider().await;
    let missing = Spec { image: Some("localhost/no-such-image:1".into()), ..spec_sh("true") };
    let err = p.ensure_running(&new_id(), &Placement::of_tenant("acme"), &missing).await.unwrap_err();
    assert!(matches!(err, ProviderError::Permanent { .. }) && err.to_string().contains("No such image"), "{err}");
    let invalid = Spec { image: Some("Not A/Reference::".into()), ..spec_sh("true") };
    let err = p.ensure_running(&new_id(), &Placement::of_tenant("acme"), &invalid).await.unwrap_err();
    assert!(matches!(err, ProviderError::Permanent { .. }), "{err}");
    for env in [("", "x"), ("A\0B", "1")] {
        let bad_env = Spec { env: [(env.0.to_owned(), env.1.to_owned())].into_iter().collect(), ..spec_sh("sleep 60") };
        let err = p.ensure_running(&new_id(), &Placement::of_tenant("acme"), &bad_env).await.unwrap_err();
        assert!(matches!(err, ProviderError::Permanent { .. }), "{env:?}: {err}");
    }

    for (bad, field) in [
        (Spec { image: None, ..spec_sh("true") }, "spec.image"),
        (
            Spec { resources: Some(Resources { disk_gb: Some(5), ..Default::default() }), ..spec_sh("true") },
            "spec.resources.disk_gb",
        ),
        (Spec { user_data: Some("#cloud-config\n".into()), ..spec_sh("true") }, "spec.user_data"),
    ] {
        assert_eq!(p.validate(&bad).unwrap_err().field, field);
    }
}

#[tokio::test]
async fn an_engine_that_is_not_a_manager_or_not_there_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    // A socket nobody serves.
    let socket = dir.path().join("docker.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(_listener);
    match SwarmProvider::connect(&format!("unix://{}", socket.display()), "test-x") {
        Ok(p) => assert!(matches!(p.health().await, Err(ProviderError::Unavailable { .. }))),
        Err(e) => assert!(matches!(e, ProviderError::Unavailable { .. }), "{e}"),
    }
    assert!(matches!(
        SwarmProvider::connect("unix:///nonexistent/docker.sock", "test-x"),
        Err(ProviderError::Unavailable { .. })
    ));
    assert!(SwarmProvider::connect("ftp://x", "test-x").is_err());
    // An engine that answers but is no Swarm manager (Podman's, which the docker tests use).
    let podman = std::env::var("DOCKER_HOST").expect("DOCKER_HOST is set by scripts/test (Podman's socket)");
    let err = SwarmProvider::connect(&podman, "test-x").unwrap().health().await.unwrap_err();
    assert!(err.to_string().contains("not a Swarm manager"), "{err}");
}

//! The docker provider against a real Docker Engine API (Podman's, in the test command).
//! Needs `DOCKER_HOST` and `LAPSE_TEST_IMAGE`, which `scripts/test` provides.

use std::time::Duration;

use lapse_core::model::{Resources, Spec};
use lapse_providers::docker::DockerProvider;
use lapse_providers::{InstanceStatus, Provider};

fn image() -> String {
    std::env::var("LAPSE_TEST_IMAGE").expect("LAPSE_TEST_IMAGE is set by scripts/test (a local busybox image)")
}

async fn provider(controller: &str) -> DockerProvider {
    DockerProvider::detect(None, controller).await.expect("a Docker Engine API answers (scripts/test starts Podman's)")
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
    let inst = p.ensure_running(&id, &spec).await.unwrap();
    eprintln!("docker create+start took {:?}", started.elapsed());
    assert_eq!(inst.status, InstanceStatus::Running);
    assert_eq!(inst.endpoints.len(), 1, "{inst:?}");
    let ep = &inst.endpoints[0];
    assert_eq!((ep.container_port, ep.host.as_str()), (8080, "127.0.0.1"));
    assert_ne!(ep.port, 0);

    // Idempotent.
    let again = p.ensure_running(&id, &spec).await.unwrap();
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
    let restarted = p.ensure_running(&id, &spec).await.unwrap();
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
    let err = p.ensure_running(&new_id(), &spec).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}

//! A SWIM lab on the `docker` provider: the instance type is the container's limits, the
//! inline cloud-init is inside it, and a decommission removes it.

use serde_json::json;

use super::{DECOMMISSION, PROVISION, eventually, server_state, setup_with, swim_envs};
use crate::harness::secs;

#[tokio::test]
async fn a_docker_lab_gets_its_instance_types_limits_and_its_inline_cloud_init() {
    let image = crate::docker::image();
    let s = setup_with("docker", &[], &[("SWIM_PROVISION_DEFAULT_IMAGE_ID", &image)]).await;
    let content = "#cloud-config\nruncmd: [echo docker]\n";
    // STARDUST1-S: 1 vCPU, 1 GiB (small enough for any test machine).
    let message = json!({"WebUsername": "dk", "LabID": 4, "TTLMinutes": 30, "ServerType": "STARDUST1-S", "CloudInitContent": content});
    s.redis.lpush(PROVISION, &[message.to_string()]).await;
    let id = eventually(secs(20), "the lab", async || {
        swim_envs(&s.server).await.first().and_then(|e| e["id"].as_str().map(str::to_owned))
    })
    .await;
    let env = s.server.wait_state(&id, "running", secs(60)).await;
    assert_eq!(env["spec"]["image"], image.as_str());
    let inspect = crate::docker::docker().inspect_container(&format!("lapse-{id}"), None).await.unwrap();
    let host = inspect.host_config.unwrap();
    assert_eq!((host.memory, host.nano_cpus), (Some(1024 * 1024 * 1024), Some(1_000_000_000)));
    let (status, out) = s
        .server
        .post(&format!("/v1/environments/{id}/exec"), json!({"cmd": ["cat", "/var/lib/cloud/seed/nocloud/user-data"]}))
        .await;
    assert_eq!((status.as_u16(), out["stdout"].as_str()), (200, Some(content)), "{out}");
    let key = eventually(secs(10), "the booted key", async || {
        server_state(&s.redis, &id).await.filter(|v| v["state"] == "booted")
    })
    .await;
    assert_eq!(
        (&key["lapse"]["instance_type"], &key["lapse"]["resources_enforced"]),
        (&json!("STARDUST1-S"), &json!(true))
    );
    assert_eq!(key["ipv6"], "", "docker publishes on 127.0.0.1");

    s.redis.lpush(DECOMMISSION, &[json!({"WebUsername": "dk", "LabID": 4}).to_string()]).await;
    s.server.wait_state(&id, "deleted", secs(60)).await;
    assert!(crate::docker::docker().inspect_container(&format!("lapse-{id}"), None).await.is_err(), "removed");
}

//! The seed fc_ex_cp's surface (ndrean/microvm-control-planner@2ff3827), written from its
//! code: `lib/router.ex` (the bodies `POST /vms` takes, its answers, `GET`/`DELETE
//! /vms/:id`), `lib/vm.ex` (`VM.info`), `lib/pool_manager.ex` (`/stats`), `lib/spec_hash.ex`
//! (`spec_hash`), and its deployment (`--seed-listen`, `config/desired_vms.exs`).

mod exs;

use std::time::Instant;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, secs};
use crate::pools::wait_warm;

/// The seed's message of a `202` (`lib/router.ex`).
const ACCEPTED: &str = "VM scheduled, reconciler will provision when warm VM is ready";

/// `VM.info`'s keys (`lib/vm.ex`, `handle_call(:info)`).
const INFO_KEYS: [&str; 12] =
    ["api_sock", "backend", "config", "id", "ip", "metrics_path", "pid", "port", "specs", "status", "tap", "tenant"];

async fn sim_server(dir: &std::path::Path) -> Server {
    Server::start(dir, &["--sim", "0", "--vms-provider", "sim"]).await
}

fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v.as_object().expect("an object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

fn accepted(job_id: &str) -> Value {
    json!({"job_id": job_id, "status": "accepted", "message": ACCEPTED})
}

/// Polls `GET /vms/:id` until its status is `status`.
async fn wait_status(server: &Server, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + secs(30);
    loop {
        let (code, info) = server.get(&format!("/vms/{id}")).await;
        if code == StatusCode::OK && info["status"] == status {
            return info;
        }
        assert!(Instant::now() < deadline, "{id} not {status}: {code} {info}\n{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_body_the_seed_accepts_is_accepted_and_what_it_refuses_is_its_400() {
    let dir = tempfile::tempdir().unwrap();
    let server = sim_server(dir.path()).await;
    let spec = json!({"cmd": ["/app/bin/server"], "env": {"MIX_ENV": "prod"}});

    // The four bodies `lib/router.ex` lists, and one without a spec.
    let (status, body) = server.post("/vms", json!({"spec": spec})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let generated = body["job_id"].as_str().unwrap().to_owned();
    assert!(
        generated.len() == 19
            && generated.starts_with("vm-")
            && generated[3..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "vm-<16 lowercase hex>: {generated}"
    );
    assert_eq!(body, accepted(&generated));
    for (body, id, tenant) in [
        (json!({"job_id": "job_1", "spec": spec}), "job_1", "job_1"),
        (json!({"vm_id": "job_2", "tenant": "job_2", "spec": spec}), "job_2", "job_2"),
        (json!({"vm_id": "job_3", "tenant": "team", "spec": spec}), "job_3", "team"),
        (json!({"tenant": "job_4", "spec": spec}), "job_4", "job_4"),
        (json!({"job_id": "job_5"}), "job_5", "job_5"),
        (json!({"job_id": "job_6", "vm_id": "ignored", "spec": null}), "job_6", "job_6"),
    ] {
        let (status, answer) = server.post("/vms", body.clone()).await;
        assert_eq!((status, answer), (StatusCode::ACCEPTED, accepted(id)), "{body}");
        let (status, info) = server.get(&format!("/vms/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{info}");
        assert_eq!(info["tenant"], tenant, "{body}");
    }
    let (_, info) = server.get("/vms/job_5").await;
    assert_eq!(info["specs"], json!({}), "no spec is the seed's %{{}}");

    // Unknown keys (the README's "role") kept as given; env values of any scalar type.
    let seed_spec = json!({"cmd": ["/app/bin/server"], "role": "api", "env": {"PORT": 4000, "DEBUG": true, "NAME": "x"},
        "resources": {"vcpu": 1, "mem_mb": 256, "gpu": "none"}});
    let (status, answer) = server.post("/vms", json!({"job_id": "with-role", "spec": seed_spec})).await;
    assert_eq!((status, answer), (StatusCode::ACCEPTED, accepted("with-role")));
    let (_, info) = server.get("/vms/with-role").await;
    assert_eq!(info["specs"], seed_spec, "the seed's spec, verbatim");
    assert_eq!(
        info["config"],
        json!({"vcpus": 1.0, "memory_mb": 256, "kernel_path": null, "rootfs_path": null, "boot_args": null})
    );
    let (_, list) = server.get("/v1/environments?job_id=with-role").await;
    let env = &list["environments"][0];
    assert_eq!(
        env["spec"]["env"],
        json!({"DEBUG": "true", "NAME": "x", "PORT": "4000"}),
        "Lapse's spec has the strings"
    );
    assert!(env["spec"].get("role").is_none());
    // The seed's defaults (lib/vm.ex): 2 vCPU, 512 MiB.
    let (_, info) = server.get("/vms/job_1").await;
    assert_eq!((info["config"]["vcpus"].clone(), info["config"]["memory_mb"].clone()), (json!(2.0), json!(512)));

    // What the seed refuses, as it refuses it.
    for body in [
        json!({"job_id": 5, "spec": spec}),
        json!({"job_id": ""}),
        json!({"tenant": ["x"]}),
        json!({"job_id": "a", "tenant": ""}),
    ] {
        let (status, answer) = server.post("/vms", body.clone()).await;
        assert_eq!(
            (status, answer),
            (StatusCode::BAD_REQUEST, json!({"error": "missing job_id (or vm_id/tenant)"})),
            "{body}"
        );
    }
    // rootfs and kernel: kept, and refused with a clear error by a provider that cannot boot them.
    let (status, answer) = server
        .post(
            "/vms",
            json!({"job_id": "vm-image", "spec": {"rootfs": "rootfs-web.ext4", "kernel": "vmlinux", "cmd": ["x"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("cannot boot a kernel and root filesystem"), "{answer}");
    // What Lapse refuses besides, in the seed's shape, changing nothing.
    for body in [
        json!({"job_id": "bad-env", "spec": {"env": {"A": {"nested": 1}}}}),
        json!({"job_id": "bad-cmd", "spec": {"cmd": "not a list"}}),
        json!({"job_id": "bad-life", "spec": {"lifecycle": "forever"}}),
        json!({"job_id": "bad-spec", "spec": "x"}),
        json!({"job_id": "bad name with spaces"}),
        json!([1, 2]),
    ] {
        let (status, answer) = server.post("/vms", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let (status, answer) = server.raw(Method::POST, "/vms", Some("application/json"), b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error"].is_string(), "{answer}");
    for id in ["vm-image", "bad-env", "bad-cmd", "bad-life", "bad-spec"] {
        assert_eq!(server.get(&format!("/vms/{id}")).await.0, StatusCode::NOT_FOUND, "{id} was not made");
    }
    let (_, stats) = server.get("/stats").await;
    assert_eq!(stats["summary"]["total_jobs"], 8, "{stats:#}");
}

#[tokio::test]
async fn get_and_delete_by_id_answer_as_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let server = sim_server(dir.path()).await;
    let (status, body) = server.raw(Method::GET, "/vms/nobody", None, vec![]).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, Value::String(String::new())), "404 with an empty body");
    let (status, _) = server.post("/vms", json!({"job_id": "web", "tenant": "prod", "spec": {"cmd": ["x"]}})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let info = wait_status(&server, "web", "running").await;
    assert_eq!(keys(&info), INFO_KEYS);
    assert_eq!(info["tenant"], "prod");
    assert_eq!(info["backend"], "sim");
    for absent in ["tap", "api_sock", "metrics_path", "pid"] {
        assert_eq!(info[absent], Value::Null, "{absent}");
    }
    assert_eq!(keys(&info["config"]), ["boot_args", "kernel_path", "memory_mb", "rootfs_path", "vcpus"]);
    for _ in 0..2 {
        let (status, body) = server.raw(Method::DELETE, "/vms/web", None, vec![]).await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::String(String::new())), "204, idempotent");
    }
    let (status, body) = server.raw(Method::DELETE, "/vms/never-was", None, vec![]).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::String(String::new())), "an unknown id too");
    assert_eq!(server.get("/vms/web").await.0, StatusCode::NOT_FOUND);
}

/// The spec of the test vector `5F845FB` (`erlang:phash2/1` on OTP 25, see `compat/fc/phash2.rs`).
fn hashed_spec() -> Value {
    json!({"cmd": ["/app/bin/server"], "env": {"PORT": 4000, "MIX_ENV": "prod"}, "resources": {"vcpu": 2, "mem_mb": 512},
        "lifecycle": "service", "role": "api", "warm_pool": {"min": 1, "max": 3}})
}

#[tokio::test]
async fn a_warm_claim_and_an_upsert_of_a_running_job_are_201_and_stats_has_the_seed_shape() {
    let dir = tempfile::tempdir().unwrap();
    let server = sim_server(dir.path()).await;
    let spec = hashed_spec();
    let (status, first) = server.post("/vms", json!({"job_id": "web-app-1", "spec": spec})).await;
    assert_eq!((status, first), (StatusCode::ACCEPTED, accepted("web-app-1")));
    let pool = server.get("/v1/pools").await.1["pools"][0]["name"].as_str().unwrap().to_owned();
    wait_warm(&server, &pool, 1).await;

    let (status, claimed) = server.post("/vms", json!({"job_id": "web-app-2", "tenant": "web", "spec": spec})).await;
    assert_eq!(status, StatusCode::CREATED, "a warm VM was claimed: {claimed}");
    assert_eq!(keys(&claimed), INFO_KEYS);
    assert_eq!((claimed["status"].as_str(), claimed["tenant"].as_str()), (Some("running"), Some("web")));
    assert_eq!(claimed["specs"], spec);

    // The seed's `attach` of a job that already runs: 201 with its info.
    wait_status(&server, "web-app-1", "running").await;
    let (status, again) = server.post("/vms", json!({"job_id": "web-app-1", "spec": spec})).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["status"], "running");

    wait_warm(&server, &pool, 1).await;
    let (status, stats) = server.get("/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys(&stats), ["jobs", "summary", "warm_pool"]);
    assert_eq!(stats["summary"], json!({"total_jobs": 2, "total_warm": 1}), "{stats:#}");
    let jobs = stats["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    for (job, (id, tenant)) in jobs.iter().zip([("web-app-1", "web-app-1"), ("web-app-2", "web")]) {
        assert_eq!(keys(job), ["job_id", "spec", "status", "tenant", "vm_id"]);
        assert_eq!(
            (job["job_id"].as_str(), job["tenant"].as_str(), job["status"].as_str()),
            (Some(id), Some(tenant), Some("running"))
        );
        assert_eq!(job["spec"], spec);
    }
    let warm = &stats["warm_pool"].as_array().unwrap()[0];
    assert_eq!(keys(warm), ["for_workloads", "profile", "spec", "spec_hash", "status", "vm_id"]);
    assert_eq!(warm["spec_hash"], "5F845FB", "uppercase hex of :erlang.phash2 of the spec");
    assert_eq!(warm["status"], "warm");
    assert_eq!(warm["for_workloads"], json!(["web-app-1", "web-app-2"]));
    assert_eq!(warm["profile"], "service-web-app-1,web-app-2");
    assert_eq!(warm["spec"], spec);

    // With its jobs gone the warm VM serves nobody.
    for id in ["web-app-1", "web-app-2"] {
        assert_eq!(server.request(Method::DELETE, &format!("/vms/{id}"), None).await.0, StatusCode::NO_CONTENT);
    }
    let (_, stats) = server.get("/stats").await;
    assert_eq!(stats["summary"]["total_jobs"], 0);
    let warm = &stats["warm_pool"][0];
    assert_eq!(warm["profile"], "service-orphaned", "{stats:#}");
    assert_eq!(warm["for_workloads"], json!([]));
    let hash = warm["spec_hash"].as_str().unwrap();
    assert!(
        (1..=7).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
        "{hash}"
    );
}

/// An upsert of a running job with a new spec answers 201 as the seed does, and (unlike the
/// seed, whose running VM keeps the old spec while its store holds the new one) applies it.
#[tokio::test]
async fn an_upsert_of_a_running_job_with_a_new_spec_answers_201_and_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = sim_server(dir.path()).await;
    let (status, _) = server.post("/vms", json!({"job_id": "api", "spec": {"cmd": ["/app/v1"]}})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let before = wait_status(&server, "api", "running").await;
    let (status, info) = server.post("/vms", json!({"job_id": "api", "spec": {"cmd": ["/app/v2"], "role": "x"}})).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(
        (info["id"].clone(), info["specs"].clone()),
        (before["id"].clone(), json!({"cmd": ["/app/v2"], "role": "x"}))
    );
    let deadline = Instant::now() + secs(30);
    loop {
        let (_, list) = server.get("/v1/environments?job_id=api").await;
        let env = &list["environments"][0];
        if env["spec"]["cmd"] == json!(["/app/v2"]) && env["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the new spec runs: {list}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The seed's deployment: its routes on their own port without keys, `/v1` keeping them.
#[tokio::test]
async fn seed_listen_serves_the_seed_without_keys_while_the_main_listener_keeps_them() {
    const ADMIN: &str = "admin-key-for-fc-tests-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &["--sim", "0", "--vms-provider", "sim", "--seed-listen", "127.0.0.1:0"],
        &[("LAPSE_ADMIN_KEY", ADMIN)],
    )
    .await;
    let log = server.log();
    let seed_addr = log
        .lines()
        .find(|l| l.contains("serving the seed's"))
        .and_then(|l| l.split("seed_addr=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the seed listener's address in the log:\n{log}"))
        .to_owned();
    let seed = format!("http://{seed_addr}");
    let http = reqwest::Client::new();

    let answer =
        http.post(format!("{seed}/vms")).json(&json!({"job_id": "open", "spec": {"cmd": ["x"]}})).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    assert_eq!(answer.json::<Value>().await.unwrap(), accepted("open"));
    let answer = http.get(format!("{seed}/stats")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.json::<Value>().await.unwrap()["summary"]["total_jobs"], 1);
    let answer = http.get(format!("{seed}/vms/open")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    // Only the seed's routes are there: the rest is its `404 not found`.
    for path in ["/v1/environments", "/v1/status", "/metrics"] {
        let answer = http.get(format!("{seed}{path}")).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(answer.text().await.unwrap(), "not found");
    }
    // The main listener keeps its keys, for /v1 and for the seed's routes alike.
    for (method, path) in [
        (Method::GET, "/v1/environments"),
        (Method::GET, "/vms/open"),
        (Method::GET, "/stats"),
        (Method::DELETE, "/vms/open"),
    ] {
        let (status, body) = server.request_as(None, method, path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
    let (status, info) = server.get("/vms/open").await;
    assert_eq!(status, StatusCode::OK, "with the admin key: {info}");
    // A tenant's key does not reach them: they are the admin's on the main listener.
    let (status, _) = server.post("/v1/admin/tenants", json!({"name": "acme"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, key) = server.post("/v1/admin/tenants/acme/keys", json!({})).await;
    let key = key["key"].as_str().unwrap();
    for (method, path) in
        [(Method::GET, "/vms/open"), (Method::DELETE, "/vms/open"), (Method::POST, "/vms"), (Method::GET, "/stats")]
    {
        let (status, body) = server.request_as(Some(key), method, path, Some(json!({}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    let answer = http.delete(format!("{seed}/vms/open")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
}

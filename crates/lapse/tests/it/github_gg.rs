//! github.gg's `vm.*` procedures (lantos1618/github.gg@2745f5a, `src/lib/trpc/routes/vm.ts`
//! and `src/lib/vm/user-vm-service.ts`), as its client calls them.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::docker::image;
use crate::harness::{Server, secs};

const ADMIN: &str = "admin-key-for-tests-0123456789";

fn vm(user: &str, procedure: &str) -> String {
    format!("/v1/github-gg/users/{user}/vm.{procedure}")
}

fn sim_input(vcpus: f64) -> Value {
    json!({"vcpus": vcpus, "memoryMb": 2048, "diskGb": 20, "spec": {"provider": "sim"}})
}

/// `getOrCreateUserVm`: one VM per user, the existing one whatever the size asked, and two
/// concurrent calls make one.
#[tokio::test]
async fn provision_my_vm_gets_or_creates_one_vm_per_user_race_free() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &["--sim", "0"], &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    // Checked per request, as the seed's orchestrator does.
    for name in ["gg", "other"] {
        let body = json!({"name": name, "tier": "pro", "quota_check": "per_request"});
        let (status, t) = server.post("/v1/admin/tenants", body).await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
    }
    let key = |name: &str| {
        let server = &server;
        let name = name.to_owned();
        async move {
            server.post(&format!("/v1/admin/tenants/{name}/keys"), json!({})).await.1["key"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (gg, other) = (key("gg").await, key("other").await);
    let (status, none) = server.request_as(Some(&gg), Method::GET, &vm("u1", "getMyVm"), None).await;
    assert_eq!((status, none), (StatusCode::OK, Value::Null), "no VM yet");

    let calls = (0..8).map(|n| {
        let (server, gg) = (&server, gg.clone());
        async move {
            server
                .request_as(Some(&gg), Method::POST, &vm("u1", "provisionMyVm"), Some(sim_input(1.0 + (n % 4) as f64)))
                .await
        }
    });
    let answers = futures::future::join_all(calls).await;
    let created: Vec<_> = answers.iter().filter(|(s, _)| *s == StatusCode::CREATED).collect();
    assert_eq!(created.len(), 1, "one call made it: {answers:?}");
    let id = created[0].1["id"].clone();
    for (status, v) in &answers {
        assert!(*status == StatusCode::OK || *status == StatusCode::CREATED, "{v}");
        assert_eq!(v["id"], id, "every call got the one VM");
        assert_eq!(v["vcpus"], created[0].1["vcpus"], "whatever the size asked");
    }
    let view = &created[0].1;
    assert_eq!(view["userId"], "u1");
    assert_eq!(view["environmentId"], id);
    assert_eq!((view["memoryMb"].clone(), view["diskGb"].clone()), (json!(2048), json!(20)));
    assert!(["pending", "provisioning", "running"].contains(&view["status"].as_str().unwrap()), "{view}");
    let (_, listed) = server.request_as(Some(&gg), Method::GET, "/v1/environments?owner=u1", None).await;
    assert_eq!(listed["environments"].as_array().unwrap().len(), 1, "{listed}");

    // Another user, another VM; another tenant does not see this one.
    let (status, v2) =
        server.request_as(Some(&gg), Method::POST, &vm("u2", "provisionMyVm"), Some(sim_input(1.0))).await;
    assert_eq!(status, StatusCode::CREATED, "{v2}");
    assert_ne!(v2["id"], id);
    let (status, seen) = server.request_as(Some(&other), Method::GET, &vm("u1", "getMyVm"), None).await;
    assert_eq!((status, seen), (StatusCode::OK, Value::Null));
    let (status, _) = server.request_as(Some(&other), Method::POST, &vm("u1", "destroyMyVm"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The seed's bounds; a refusal makes nothing.
    for bad in [
        json!({"vcpus": 17}),
        json!({"vcpus": 0}),
        json!({"memoryMb": 512}),
        json!({"diskGb": 5}),
        json!({"diskGb": 501}),
        json!([1]),
    ] {
        let (status, e) =
            server.request_as(Some(&gg), Method::POST, &vm("u3", "provisionMyVm"), Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert_eq!(e["error"]["code"], "invalid_request");
    }
    let (status, e) =
        server.request_as(Some(&gg), Method::POST, &vm("bad%07user", "provisionMyVm"), Some(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    // A pro tenant asking more than its tier per environment.
    let (status, e) = server
        .request_as(
            Some(&gg),
            Method::POST,
            &vm("u3", "provisionMyVm"),
            Some(json!({"vcpus": 6, "spec": {"provider": "sim"}})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{e}");
    let (_, all) = server.get("/v1/environments").await;
    assert_eq!(all["environments"].as_array().unwrap().len(), 2, "{all}");

    // Destroyed: `{success: true}`, and a next provision makes a new one.
    let (status, done) = server.request_as(Some(&gg), Method::POST, &vm("u1", "destroyMyVm"), None).await;
    assert_eq!((status, done), (StatusCode::OK, json!({"success": true})));
    let (status, gone) = server.request_as(Some(&gg), Method::GET, &vm("u1", "getMyVm"), None).await;
    assert_eq!((status, gone), (StatusCode::OK, Value::Null));
    let (status, again) =
        server.request_as(Some(&gg), Method::POST, &vm("u1", "provisionMyVm"), Some(sim_input(1.0))).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_ne!(again["id"], id);
}

/// No input: the tier's size (the seed's `getResourcesForTier`).
#[tokio::test]
async fn provision_without_input_gets_the_tiers_size() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &["--sim", "0"], &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let (status, _) = server.post("/v1/admin/tenants", json!({"name": "big", "tier": "unlimited"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let key = server.post("/v1/admin/tenants/big/keys", json!({})).await.1["key"].as_str().unwrap().to_owned();
    // No body at all: the default spec is docker's; the sim provider is named by the
    // operator-free route only through an input, so this asks for the default image.
    let (status, v) = server.request_as(Some(&key), Method::POST, &vm("u1", "provisionMyVm"), None).await;
    if status == StatusCode::CREATED {
        assert_eq!(
            (v["vcpus"].clone(), v["memoryMb"].clone(), v["diskGb"].clone()),
            (json!(8.0), json!(16384), json!(100)),
            "{v}"
        );
    } else {
        // No docker here: refused as an unknown provider, and nothing made.
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        let (_, all) = server.get("/v1/environments").await;
        assert!(all["environments"].as_array().unwrap().is_empty());
    }
}

/// `executeCode`: `{code}` → `{stdout, stderr, exitCode}`; a provisioning VM and a stopped
/// one get the seed's answers (and the stopped one a start); the disk that Podman's storage
/// driver cannot limit is recorded as not enforced.
#[tokio::test]
async fn execute_code_answers_in_the_seeds_shape_and_starts_a_stopped_vm() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--sim", "create=3s"]).await;
    // Provisioning (the sim takes 3 s to create).
    let (status, v) = server.post(&vm("slow", "provisionMyVm"), sim_input(1.0)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, r) = server.post(&vm("slow", "executeCode"), json!({"code": "echo hi"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r, json!({"stdout": "", "stderr": "VM is still provisioning, please wait...", "exitCode": 1}));
    let (status, e) = server.post(&vm("slow", "executeCode"), json!({"code": ""})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let (status, e) = server.post(&vm("nobody", "executeCode"), json!({"code": "true"})).await;
    assert_eq!((status, e["error"]["message"].clone()), (StatusCode::NOT_FOUND, json!("VM not found")));

    // A docker VM.
    let input = json!({"spec": {"provider": "docker", "image": image(), "cmd": ["sleep", "3600"]}});
    let (status, v) = server.post(&vm("ada", "provisionMyVm"), input).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!((v["vcpus"].clone(), v["memoryMb"].clone(), v["diskGb"].clone()), (json!(2.0), json!(4096), json!(50)));
    let (_, providers) = server.get("/v1/providers").await;
    let docker = providers["providers"].as_array().unwrap().iter().find(|p| p["name"] == "docker").unwrap().clone();
    let enforced = docker["detail"].as_str().unwrap().contains("disk_gb enforced");
    assert_eq!(v["diskEnforced"], json!(enforced), "{docker}");
    let env = server.wait_state(&id, "running", secs(60)).await;
    assert_eq!(env["labels"]["gh.gg/disk-gb"], "50");
    assert_eq!(env["labels"]["gh.gg/disk-enforced"], enforced.to_string());
    if !enforced {
        assert!(env["spec"]["resources"].get("disk_gb").is_none_or(Value::is_null), "not given to the provider: {env}");
        let events = server.events_of(&id).await;
        let note = events.iter().find(|e| e["action"] == "disk_not_enforced").expect("an event says so");
        assert!(note["message"].as_str().unwrap().starts_with("diskGb 50 recorded, not enforced"), "{note}");
    }

    let (status, r) = server.post(&vm("ada", "executeCode"), json!({"code": "echo out; echo err >&2; exit 3"})).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r, json!({"stdout": "out\n", "stderr": "err\n", "exitCode": 3}));

    let (status, stopped) = server.post(&vm("ada", "stopMyVm"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{stopped}");
    server.wait_state(&id, "stopped", secs(60)).await;
    let (_, mine) = server.get(&vm("ada", "getMyVm")).await;
    assert_eq!(mine["status"], "stopped");
    let (status, r) = server.post(&vm("ada", "executeCode"), json!({"code": "echo hi"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        r,
        json!({"stdout": "", "stderr": "VM is starting, please try again in a few seconds...", "exitCode": 1})
    );
    server.wait_state(&id, "running", secs(60)).await;
    let (_, r) = server.post(&vm("ada", "executeCode"), json!({"code": "echo again"})).await;
    assert_eq!(r, json!({"stdout": "again\n", "stderr": "", "exitCode": 0}));
    let (status, done) = server.post(&vm("ada", "destroyMyVm"), json!({})).await;
    assert_eq!((status, done), (StatusCode::OK, json!({"success": true})));
    server.wait_state(&id, "deleted", secs(60)).await;
}

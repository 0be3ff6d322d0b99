//! S3 workspaces through `lapse serve`, against a real moto server (S3 on loopback) and the
//! real process and docker (Podman) providers: a file written in one environment is in the
//! next one on the same workspace, excludes and symlinks are not pushed, a delete waits for
//! its final push (or is forced), and hostile specs and keys are refused.

use lapse_providers::aws::moto::{MotoServer, REGION};
use lapse_providers::s3::S3Client;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, eventually, secs};

async fn moto() -> MotoServer {
    MotoServer::start("AKIDLAPSEWORKSPACE01", "it-workspace-secret").await.expect("moto starts (LAPSE_MOTO_SERVER)")
}

async fn s3_of(moto: &MotoServer) -> S3Client {
    S3Client::from_sdk_config(&moto.loader(REGION).load().await)
}

async fn server_for(dir: &std::path::Path, moto: &MotoServer) -> Server {
    let envs = moto.envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with_env(dir, &["--workspace-endpoint", moto.endpoint()], &envs).await
}

/// The body of an S3 object, `None` if there is none.
async fn object(s3: &S3Client, bucket: &str, key: &str) -> Option<String> {
    let mut body = s3.get(bucket, key).await.ok()?;
    let mut out = Vec::new();
    while let Some(chunk) = body.next_chunk().await.unwrap() {
        out.extend_from_slice(&chunk);
    }
    Some(String::from_utf8(out).unwrap())
}

async fn keys(s3: &S3Client, bucket: &str) -> Vec<String> {
    s3.list(bucket, "", 10_000).await.unwrap().into_iter().map(|o| o.key).collect()
}

fn workspace(bucket: &str, path: &str) -> Value {
    json!({"bucket": bucket, "prefix": "course/ada", "path": path, "sync_interval": "1h"})
}

fn process_ws(bucket: &str, script: &str) -> Value {
    json!({"owner": "ada", "ttl": "10m", "spec": {"provider": "process", "cmd": ["sh", "-c", script],
        "workspace": workspace(bucket, "/workspace")}})
}

async fn workspace_of(server: &Server, id: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/environments/{id}/workspace")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn wait_pulled(server: &Server, id: &str) {
    eventually(secs(60), "the workspace pulled", async || {
        let ws = workspace_of(server, id).await;
        (ws["pulled"] == true).then_some(())
    })
    .await;
}

async fn exec(server: &Server, id: &str, script: &str) -> Value {
    let (status, out) = server.post(&format!("/v1/environments/{id}/exec"), json!({"cmd": ["sh", "-c", script]})).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    out
}

#[tokio::test]
async fn process_workspace_is_pulled_pushed_and_found_by_the_next_environment() {
    let moto = moto().await;
    let s3 = s3_of(&moto).await;
    s3.create_bucket("ws-round-trip").await.unwrap();
    s3.put("ws-round-trip", "course/ada/notes/old.txt", "from s3\n".into()).await.unwrap();
    s3.put("ws-round-trip", "other/secret.txt", "not ours\n".into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = server_for(dir.path(), &moto).await;

    // The first environment writes a file, an excluded directory and symlinks out of its
    // directory, once the pull is in.
    let script = "while [ ! -f workspace/.lapse-sync ]; do sleep 0.1; done; \
                  echo hello > workspace/new.txt; mkdir -p workspace/.git workspace/node_modules/m; \
                  echo x > workspace/.git/config; echo y > workspace/node_modules/m/i.js; \
                  ln -s /etc/passwd workspace/leak; ln -s / workspace/root; \
                  cp workspace/notes/old.txt workspace/copied.txt; touch workspace/done; sleep 1000";
    let a = server.create(process_ws("ws-round-trip", script)).await;
    let a = a["id"].as_str().unwrap().to_owned();
    server.wait_state(&a, "running", secs(30)).await;
    wait_pulled(&server, &a).await;
    eventually(secs(30), "the script done", async || {
        (exec(&server, &a, "test -f $HOME/workspace/done && echo yes").await["stdout"] == "yes\n").then_some(())
    })
    .await;
    // Only the prefix was pulled.
    assert_eq!(exec(&server, &a, "test -e $HOME/workspace/other && echo yes || echo no").await["stdout"], "no\n");

    // A delete pushes first.
    let (status, _) = server.request(Method::DELETE, &format!("/v1/environments/{a}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.wait_state(&a, "deleted", secs(60)).await;
    assert_eq!(object(&s3, "ws-round-trip", "course/ada/new.txt").await.as_deref(), Some("hello\n"));
    assert_eq!(object(&s3, "ws-round-trip", "course/ada/copied.txt").await.as_deref(), Some("from s3\n"));
    let all = keys(&s3, "ws-round-trip").await;
    for never in
        ["course/ada/.git/config", "course/ada/node_modules/m/i.js", "course/ada/.lapse-sync", "course/ada/leak"]
    {
        assert!(!all.iter().any(|k| k == never), "{never} was pushed: {all:?}");
    }
    assert!(!all.iter().any(|k| k.starts_with("course/ada/root")), "a symlink was followed: {all:?}");
    assert!(all.iter().any(|k| k == "other/secret.txt"), "outside the prefix untouched: {all:?}");
    let events = server.events_of(&a).await;
    assert!(events.iter().any(|e| e["action"] == "workspace_push"), "{events:?}");

    // The next environment on the workspace finds the file; a file it removes is removed
    // from the workspace at its stop.
    let b = server.create(process_ws("ws-round-trip", "sleep 1000")).await;
    let b = b["id"].as_str().unwrap().to_owned();
    server.wait_state(&b, "running", secs(30)).await;
    wait_pulled(&server, &b).await;
    assert_eq!(exec(&server, &b, "cat $HOME/workspace/new.txt").await["stdout"], "hello\n");
    exec(&server, &b, "rm $HOME/workspace/copied.txt").await;
    let (status, _) = server.post(&format!("/v1/environments/{b}/stop"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.wait_state(&b, "stopped", secs(60)).await;
    assert_eq!(object(&s3, "ws-round-trip", "course/ada/copied.txt").await, None);
    assert_eq!(object(&s3, "ws-round-trip", "course/ada/new.txt").await.as_deref(), Some("hello\n"));
    let ws = workspace_of(&server, &b).await;
    assert_eq!(ws["pulled"], false, "a stopped environment's directory is pulled again at its start: {ws}");
    assert!(ws["last_push_at"].is_string(), "{ws}");
}

#[tokio::test]
async fn a_delete_waits_for_its_final_push_and_force_skips_it() {
    let moto = moto().await;
    let s3 = s3_of(&moto).await;
    let sdk = lapse_providers::s3::sdk::Client::new(&moto.loader(REGION).load().await);
    s3.create_bucket("ws-wait").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = server_for(dir.path(), &moto).await;
    let script =
        "while [ ! -f workspace/.lapse-sync ]; do sleep 0.1; done; echo precious > workspace/work.txt; sleep 1000";
    let id = server.create(process_ws("ws-wait", script)).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(30)).await;
    wait_pulled(&server, &id).await;
    eventually(secs(30), "the file written", async || {
        (exec(&server, &id, "cat $HOME/workspace/work.txt").await["stdout"] == "precious\n").then_some(())
    })
    .await;

    // The bucket goes away: the final push fails, and the environment is not deleted.
    sdk.delete_bucket().bucket("ws-wait").send().await.unwrap();
    let (status, _) = server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let waiting = server
        .wait_for(&id, secs(30), "waiting on its final push", |e| {
            e["reason"].as_str().is_some_and(|r| r.contains("final push"))
        })
        .await;
    assert_eq!(waiting["state"], "deleting", "{waiting}");
    // Several retries later it still waits, and its process (and files) are still there.
    eventually(secs(30), "retried final pushes", async || {
        let failures = server.events_of(&id).await.iter().filter(|e| e["outcome"] == "error").count();
        (failures >= 3).then_some(())
    })
    .await;
    assert_eq!(server.env(&id).await["state"], "deleting");
    let alive = crate::harness::processes_of(&server.controller_id);
    assert!(alive.iter().any(|(_, e)| *e == id), "the environment's process still runs: {alive:?}");
    let ws = workspace_of(&server, &id).await;
    assert!(ws["last_error"].as_str().is_some_and(|e| e.contains("ws-wait")), "{ws}");

    // The bucket is back: the push goes through, then the delete.
    s3.create_bucket("ws-wait").await.unwrap();
    server.wait_state(&id, "deleted", secs(60)).await;
    assert_eq!(object(&s3, "ws-wait", "course/ada/work.txt").await.as_deref(), Some("precious\n"));

    // Forced: an environment whose push cannot succeed is deleted anyway.
    let id = server.create(process_ws("ws-wait", "sleep 1000")).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(30)).await;
    wait_pulled(&server, &id).await;
    sdk.delete_object().bucket("ws-wait").key("course/ada/work.txt").send().await.unwrap();
    sdk.delete_bucket().bucket("ws-wait").send().await.unwrap();
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server
        .wait_for(&id, secs(30), "waiting on its final push", |e| {
            e["reason"].as_str().is_some_and(|r| r.contains("final push"))
        })
        .await;
    let (status, bad) = server.request(Method::DELETE, &format!("/v1/environments/{id}?force=maybe"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    // `lapse delete --force`: the CLI's way to it.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["--url", &server.url, "delete", "--force", &id])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.wait_state(&id, "deleted", secs(30)).await;
    assert_eq!(workspace_of(&server, &id).await["force"], true);
}

#[tokio::test]
async fn hostile_workspaces_are_refused_and_hostile_keys_are_not_pulled() {
    let moto = moto().await;
    let s3 = s3_of(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_for(dir.path(), &moto).await;
    let before = server.count_environments().await;
    for (ws, field) in [
        (json!({"bucket": "UPPER", "path": "/w"}), "spec.workspace.bucket"),
        (json!({"bucket": "a..b", "path": "/w"}), "spec.workspace.bucket"),
        (json!({"bucket": "192.168.1.1", "path": "/w"}), "spec.workspace.bucket"),
        (json!({"bucket": "okbucket", "prefix": "../up", "path": "/w"}), "spec.workspace.prefix"),
        (json!({"bucket": "okbucket", "prefix": "a/../../b", "path": "/w"}), "spec.workspace.prefix"),
        (json!({"bucket": "okbucket", "path": "relative"}), "spec.workspace.path"),
        (json!({"bucket": "okbucket", "path": "/a/../../etc"}), "spec.workspace.path"),
        (json!({"bucket": "okbucket", "path": "/w", "sync_interval": 1}), "spec.workspace.sync_interval"),
        (json!({"bucket": "okbucket", "path": "/w", "endpoint": "http://169.254.169.254"}), "spec.workspace.endpoint"),
        (json!({"bucket": "okbucket", "path": "/w", "endpoint": "file:///etc"}), "spec.workspace.endpoint"),
    ] {
        let body = json!({"owner": "ada", "spec": {"provider": "process", "cmd": ["true"], "workspace": ws}});
        let (status, answer) = server.post("/v1/environments", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{ws}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(field), "{ws}: {answer}");
    }
    assert_eq!(server.count_environments().await, before, "nothing was made");

    // Keys that are not plain relative paths are never written (nor anything outside).
    s3.create_bucket("ws-hostile").await.unwrap();
    s3.put("ws-hostile", "course/ada/ok.txt", "fine\n".into()).await.unwrap();
    for key in ["course/ada/../escape.txt", "course/ada//double.txt", "course/ada/a/../../up.txt"] {
        // The SDK may refuse or normalise some of these; what reaches S3 is what is tested.
        let _ = s3.put("ws-hostile", key, "bad\n".into()).await;
    }
    let stored = keys(&s3, "ws-hostile").await;
    assert!(stored.iter().any(|k| k.contains("..") || k.contains("//")), "a hostile key is in the bucket: {stored:?}");
    let id = server.create(process_ws("ws-hostile", "sleep 1000")).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(30)).await;
    wait_pulled(&server, &id).await;
    assert_eq!(exec(&server, &id, "cat $HOME/workspace/ok.txt").await["stdout"], "fine\n");
    let found = exec(&server, &id, "find $HOME -name '*.txt' | sort").await;
    let found = found["stdout"].as_str().unwrap();
    assert!(!found.contains("escape") && !found.contains("up.txt"), "{found}");
    assert!(!dir.path().join("escape.txt").exists());
    let (status, _) = server.request(Method::DELETE, &format!("/v1/environments/{id}?force=true"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // A workspace above the server's limits is not pulled, with a clear error.
    let dir = tempfile::tempdir().unwrap();
    let envs = moto.envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let small = Server::start_with_env(dir.path(), &["--workspace-max-files", "1"], &envs).await;
    s3.put("ws-hostile", "course/ada/second.txt", "two\n".into()).await.unwrap();
    let id = small.create(process_ws("ws-hostile", "sleep 1000")).await["id"].as_str().unwrap().to_owned();
    small.wait_state(&id, "running", secs(30)).await;
    let ws = eventually(secs(30), "the pull refused", async || {
        let ws = workspace_of(&small, &id).await;
        ws["last_error"].is_string().then_some(ws)
    })
    .await;
    assert!(ws["last_error"].as_str().unwrap().contains("more than 1 objects"), "{ws}");
    assert_eq!(ws["pulled"], false, "{ws}");
    assert_eq!(exec(&small, &id, "test -e $HOME/workspace && echo yes || echo no").await["stdout"], "no\n");
}

#[tokio::test]
async fn docker_workspace_round_trip_through_the_engine_archive() {
    let moto = moto().await;
    let s3 = s3_of(&moto).await;
    s3.create_bucket("ws-docker").await.unwrap();
    s3.put("ws-docker", "course/ada/seed.txt", "seeded\n".into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = server_for(dir.path(), &moto).await;
    let body = |script: &str| {
        json!({"owner": "ada", "ttl": "10m", "spec": {"provider": "docker", "image": crate::docker::image(),
            "cmd": ["sh", "-c", script], "workspace": workspace("ws-docker", "/home/ide/workspace")}})
    };
    let script = "while [ ! -f /home/ide/workspace/.lapse-sync ]; do sleep 0.1; done; \
                  cat /home/ide/workspace/seed.txt > /home/ide/workspace/copy.txt; \
                  echo docker > /home/ide/workspace/made.txt; \
                  mkdir -p /home/ide/workspace/.idea; echo z > /home/ide/workspace/.idea/x; sleep 1000";
    let a = server.create(body(script)).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&a, "running", secs(60)).await;
    wait_pulled(&server, &a).await;
    eventually(secs(30), "the script done", async || {
        (exec(&server, &a, "cat /home/ide/workspace/copy.txt").await["stdout"] == "seeded\n").then_some(())
    })
    .await;
    let (status, _) = server.request(Method::DELETE, &format!("/v1/environments/{a}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.wait_state(&a, "deleted", secs(60)).await;
    assert_eq!(object(&s3, "ws-docker", "course/ada/copy.txt").await.as_deref(), Some("seeded\n"));
    assert_eq!(object(&s3, "ws-docker", "course/ada/made.txt").await.as_deref(), Some("docker\n"));
    assert_eq!(object(&s3, "ws-docker", "course/ada/.idea/x").await, None, "excluded");

    let b = server.create(body("sleep 1000")).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&b, "running", secs(60)).await;
    wait_pulled(&server, &b).await;
    assert_eq!(exec(&server, &b, "cat /home/ide/workspace/made.txt").await["stdout"], "docker\n");
    server.request(Method::DELETE, &format!("/v1/environments/{b}"), None).await;
    server.wait_state(&b, "deleted", secs(60)).await;
}

#[tokio::test]
async fn a_warm_member_claimed_with_a_workspace_pulls_it() {
    let moto = moto().await;
    let s3 = s3_of(&moto).await;
    s3.create_bucket("ws-claim").await.unwrap();
    s3.put("ws-claim", "course/ada/hello.txt", "claimed\n".into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = server_for(dir.path(), &moto).await;
    let spec = json!({"provider": "process", "cmd": ["sleep", "1000"]});
    let (status, pool) = server.request(Method::PUT, "/v1/pools/ide", Some(json!({"spec": spec, "min": 1}))).await;
    assert!(status.is_success(), "{pool}");
    eventually(secs(30), "a warm member", async || (server.get("/v1/pools/ide").await.1["warm"] == 1).then_some(()))
        .await;

    // The same spec with a workspace claims the member (201) and gets the workspace.
    let mut with_ws = spec.clone();
    with_ws["workspace"] = workspace("ws-claim", "/workspace");
    let (status, env) = server.post("/v1/environments", json!({"owner": "ada", "ttl": "10m", "spec": with_ws})).await;
    assert_eq!(status, StatusCode::CREATED, "claimed: {env}");
    let id = env["id"].as_str().unwrap().to_owned();
    assert_eq!(env["spec"]["workspace"]["bucket"], "ws-claim", "{env}");
    wait_pulled(&server, &id).await;
    assert_eq!(exec(&server, &id, "cat $HOME/workspace/hello.txt").await["stdout"], "claimed\n");
    // A member never pulls a workspace it was not given.
    let members = server.get("/v1/environments?state=running").await.1;
    for m in members["environments"].as_array().unwrap() {
        if m["id"] != id.as_str() {
            assert!(m["spec"]["workspace"].is_null(), "{m}");
        }
    }
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(60)).await;
}

#[tokio::test]
async fn swarm_workspace_round_trip_through_the_task_container() {
    use lapse_providers::swarm::testing::{Cleanup, host};
    let moto = moto().await;
    let s3 = s3_of(&moto).await;
    s3.create_bucket("ws-swarm").await.unwrap();
    s3.put("ws-swarm", "course/ada/seed.txt", "seeded\n".into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let envs = moto.envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let swarm = host();
    let server = Server::start_with_env(
        dir.path(),
        &["--swarm-endpoint", &swarm, "--workspace-endpoint", moto.endpoint()],
        &envs,
    )
    .await;
    let _cleanup = Cleanup(server.controller_id.clone());
    let body = |script: &str| {
        json!({"owner": "ada", "ttl": "10m", "spec": {"provider": "swarm", "image": crate::docker::image(),
            "cmd": ["sh", "-c", script], "workspace": workspace("ws-swarm", "/workspace")}})
    };
    let script = "while [ ! -f /workspace/.lapse-sync ]; do sleep 0.1; done; \
                  cat /workspace/seed.txt > /workspace/copy.txt; sleep 1000";
    let a = server.create(body(script)).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&a, "running", secs(60)).await;
    wait_pulled(&server, &a).await;
    eventually(secs(30), "the script done", async || {
        (exec(&server, &a, "cat /workspace/copy.txt").await["stdout"] == "seeded\n").then_some(())
    })
    .await;
    // A stop scales the service to zero: the push happens before, from the task's container.
    let (status, _) = server.post(&format!("/v1/environments/{a}/stop"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.wait_state(&a, "stopped", secs(60)).await;
    assert_eq!(object(&s3, "ws-swarm", "course/ada/copy.txt").await.as_deref(), Some("seeded\n"));
    server.request(Method::DELETE, &format!("/v1/environments/{a}"), None).await;
    server.wait_state(&a, "deleted", secs(60)).await;
}

#[tokio::test]
async fn a_directory_that_lost_its_pull_never_empties_the_workspace() {
    let moto = moto().await;
    let s3 = s3_of(&moto).await;
    s3.create_bucket("ws-token").await.unwrap();
    s3.put("ws-token", "course/ada/keep.txt", "kept\n".into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = server_for(dir.path(), &moto).await;
    let mut body = process_ws("ws-token", "sleep 1000");
    body["spec"]["workspace"]["sync_interval"] = json!("5s");
    let id = server.create(body).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(30)).await;
    wait_pulled(&server, &id).await;
    // As if the resource were made afresh: the directory is emptied, its token with it.
    exec(
        &server,
        &id,
        "rm -rf $HOME/workspace/keep.txt $HOME/workspace/.lapse-sync; echo new > $HOME/workspace/new.txt",
    )
    .await;
    // The next periodic push uploads what is there but deletes nothing, then the workspace
    // is pulled into the directory again.
    eventually(secs(30), "pulled again", async || {
        let out = exec(&server, &id, "cat $HOME/workspace/keep.txt 2>/dev/null").await;
        (out["stdout"] == "kept\n").then_some(())
    })
    .await;
    assert_eq!(object(&s3, "ws-token", "course/ada/keep.txt").await.as_deref(), Some("kept\n"));
    assert_eq!(object(&s3, "ws-token", "course/ada/new.txt").await.as_deref(), Some("new\n"));
    let (status, _) = server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.wait_state(&id, "deleted", secs(60)).await;
    assert_eq!(object(&s3, "ws-token", "course/ada/keep.txt").await.as_deref(), Some("kept\n"));
}

#[tokio::test]
async fn an_expiry_pushes_before_it_stops() {
    let moto = moto().await;
    let s3 = s3_of(&moto).await;
    s3.create_bucket("ws-expiry").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = server_for(dir.path(), &moto).await;
    let mut body = process_ws(
        "ws-expiry",
        "while [ ! -f workspace/.lapse-sync ]; do sleep 0.1; done; echo late > workspace/last.txt; sleep 1000",
    );
    body["ttl"] = json!("6s");
    let id = server.create(body).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(30)).await;
    wait_pulled(&server, &id).await;
    let stopped = server.wait_state(&id, "stopped", secs(60)).await;
    assert!(stopped["expired_at"].is_string(), "stopped by its expiry: {stopped}");
    assert_eq!(object(&s3, "ws-expiry", "course/ada/last.txt").await.as_deref(), Some("late\n"));
}

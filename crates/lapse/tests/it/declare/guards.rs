//! The config file cannot wipe the world by accident: a file caught half-written is not
//! applied, an emptied file or one that drops most entries is refused (unless allowed), a file
//! renamed into place is applied at once, and edits of every declared field take effect.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{by_job, wait_job};
use crate::harness::{Server, secs};

/// The watcher's poll in these tests.
const POLL: &str = "300ms";

const SETTLING: &str = "waiting for it to settle";

fn env_table(id: &str) -> String {
    format!("[[environment]]\nid = \"{id}\"\nspec = {{ provider = \"sim\", cmd = [\"serve\", \"{id}\"] }}\n\n")
}

fn declaring(ids: &[&str]) -> String {
    ids.iter().map(|id| env_table(id)).collect()
}

async fn start(dir: &Path, file: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--sim", "0", "--config-poll", POLL, "--config", file.to_str().unwrap()];
    args.extend(extra);
    Server::start(dir, &args).await
}

async fn running(server: &Server, ids: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for id in ids {
        let env = wait_job(server, id, "running", |e| e["state"] == "running").await;
        found.push(env["id"].as_str().unwrap().to_owned());
    }
    found
}

async fn config_status(server: &Server) -> Value {
    server.get("/v1/status").await.1["config"].clone()
}

/// Waits until `/v1/status` reports a refusal, and returns its reason.
async fn refusal(server: &Server) -> String {
    let deadline = Instant::now() + secs(10);
    loop {
        if let Some(e) = config_status(server).await["error"].as_str() {
            return e.to_owned();
        }
        assert!(Instant::now() < deadline, "no refusal reported\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The environment `id` is still there, desired running, and nothing asked to delete it. (It
/// may be provisioning a moment after a restart: the sim provider forgets its resources, so
/// the first sweep provisions them again.)
async fn untouched(server: &Server, id: &str) {
    let env = server.wait_for(id, secs(10), "running", |e| e["state"] == "running").await;
    assert_eq!((env["desired_state"].as_str(), env["state"].as_str()), (Some("running"), Some("running")), "{env}");
    let deletes: Vec<Value> = server.events_of(id).await.into_iter().filter(|e| e["action"] == "delete").collect();
    assert!(deletes.is_empty(), "{id} was asked to be deleted: {deletes:?}");
}

fn count(server: &Server, needle: &str) -> usize {
    server.log().matches(needle).count()
}

/// A file cut between two `[[environment]]` tables parses, and would delete the second half;
/// the watcher sees it, but it is not applied before it is complete.
#[tokio::test]
async fn a_half_written_file_is_never_applied_in_its_half_state() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lapse.toml");
    std::fs::write(&file, declaring(&["a", "b", "c"])).unwrap();
    let server = start(dir.path(), &file, &[]).await;
    let ids = running(&server, &["a", "b", "c"]).await;

    let full = declaring(&["a", "b", "c", "d"]);
    let cut = full.find("[[environment]]\nid = \"c\"").unwrap();
    let (settling, applied) = (count(&server, SETTLING), config_status(&server).await["applied_at"].clone());
    std::fs::write(&file, &full[..cut]).unwrap();
    // Let the watcher poll and see the half (or, without the stability rule, apply it).
    let deadline = Instant::now() + secs(10);
    while count(&server, SETTLING) == settling && config_status(&server).await["applied_at"] == applied {
        assert!(Instant::now() < deadline, "the watcher never looked at the half file\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(&full.as_bytes()[cut..]).unwrap();

    running(&server, &["d"]).await;
    for (name, id) in ["a", "b", "c"].iter().zip(&ids) {
        assert_eq!(by_job(&server, name).await.unwrap()["id"].as_str(), Some(id.as_str()), "{name} is the same one");
        untouched(&server, id).await;
    }
}

/// An emptied file is refused at reload and at start (the store's state stays); the operator
/// may allow it with `--config-allow-removal`.
#[tokio::test]
async fn an_emptied_file_is_refused_unless_the_server_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lapse.toml");
    std::fs::write(&file, declaring(&["a", "b"])).unwrap();
    let mut server = start(dir.path(), &file, &[]).await;
    let ids = running(&server, &["a", "b"]).await;

    std::fs::write(&file, "").unwrap();
    let reason = refusal(&server).await;
    assert!(reason.contains("the file is empty") && reason.contains("--config-allow-removal"), "{reason}");
    assert!(server.log().contains("config refused"), "the log says so too");
    for id in &ids {
        untouched(&server, id).await;
    }

    // At start: the server starts anyway, with the store's (last good) state.
    server.restart().await;
    let reason = refusal(&server).await;
    assert!(reason.contains("the file is empty"), "{reason}");
    for id in &ids {
        untouched(&server, id).await;
    }

    server.kill9().await;
    drop(server);
    let server = start(dir.path(), &file, &["--config-allow-removal"]).await;
    for id in &ids {
        server.wait_state(id, "deleted", secs(15)).await;
    }
    let status = config_status(&server).await;
    assert!(status.get("error").is_none() && status["applied_at"].is_string(), "{status}");
}

/// A first start with an empty file: the server starts with nothing declared and says the file
/// is empty; the file is applied once it has content.
#[tokio::test]
async fn a_first_start_with_an_empty_file_serves_and_waits_for_content() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lapse.toml");
    std::fs::write(&file, "# to be written\n").unwrap();
    let server = start(dir.path(), &file, &[]).await;
    let reason = refusal(&server).await;
    assert!(reason.contains("the file is empty"), "{reason}");
    assert_eq!(server.count_environments().await, 0);

    std::fs::write(&file, declaring(&["a"])).unwrap();
    running(&server, &["a"]).await;
    let deadline = Instant::now() + secs(10);
    while config_status(&server).await.get("error").is_some() {
        assert!(Instant::now() < deadline, "the refusal stayed after the file was applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Dropping 3 of 4 environments is refused, with the reason; `allow_mass_removal = true` at
/// the top of the file lets it through.
#[tokio::test]
async fn a_file_that_drops_most_environments_is_refused_unless_it_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lapse.toml");
    std::fs::write(&file, declaring(&["a", "b", "c", "d"])).unwrap();
    let server = start(dir.path(), &file, &[]).await;
    let ids = running(&server, &["a", "b", "c", "d"]).await;

    std::fs::write(&file, declaring(&["a"])).unwrap();
    let reason = refusal(&server).await;
    assert!(
        reason.contains("would remove 3 of the 4")
            && reason.contains(r#"environment "b""#)
            && reason.contains("allow_mass_removal = true"),
        "{reason}"
    );
    assert!(server.log().contains("would remove 3 of the 4"), "the log says so too");
    for id in &ids {
        untouched(&server, id).await;
    }

    std::fs::write(&file, format!("allow_mass_removal = true\n\n{}", declaring(&["a"]))).unwrap();
    for id in &ids[1..] {
        server.wait_state(id, "deleted", secs(15)).await;
    }
    untouched(&server, &ids[0]).await;
    assert!(config_status(&server).await.get("error").is_none());
}

/// A new file renamed over the old one (a new inode) is read at the first poll that sees it,
/// without waiting for it to settle.
#[tokio::test]
async fn a_file_renamed_into_place_is_applied_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lapse.toml");
    std::fs::write(&file, declaring(&["a"])).unwrap();
    let server = start(dir.path(), &file, &[]).await;
    running(&server, &["a"]).await;

    let settling = count(&server, SETTLING);
    let next = dir.path().join("lapse.toml.new");
    std::fs::write(&next, declaring(&["a", "b"])).unwrap();
    std::fs::rename(&next, &file).unwrap();
    running(&server, &["b"]).await;
    assert_eq!(count(&server, SETTLING), settling, "read at once, not after settling\n{}", server.log());
    assert!(server.log().contains("config file replaced (a new inode)"), "{}", server.log());
}

const EDITED: &str = r#"
[[environment]]
id = "svc"
lifecycle = "lease"
ttl = "1h"
name = "NAME"
tenant = "TENANT"
on_expiry = "ON_EXPIRY"
spec = { provider = "sim", cmd = ["serve"] }

[[environment]]
id = "job"
lifecycle = "job"
max_retries = RETRIES
spec = { provider = "process", cmd = ["sh", "-c", "exit 3"] }
"#;

fn edited(name: &str, tenant: &str, on_expiry: &str, retries: u32) -> String {
    EDITED
        .replace("NAME", name)
        .replace("TENANT", tenant)
        .replace("ON_EXPIRY", on_expiry)
        .replace("RETRIES", &retries.to_string())
}

/// Each of `tenant`, `name`, `on_expiry` and `max_retries`, edited alone, takes effect on
/// the same environment.
#[tokio::test]
async fn edits_to_tenant_name_on_expiry_and_max_retries_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lapse.toml");
    std::fs::write(&file, edited("first", "one", "stop", 0)).unwrap();
    let server = start(dir.path(), &file, &[]).await;
    let svc = wait_job(&server, "svc", "running", |e| e["state"] == "running").await;
    assert_eq!(
        (svc["name"].as_str(), svc["tenant"].as_str(), svc["on_expiry"].as_str()),
        (Some("first"), Some("one"), Some("stop"))
    );
    let failed = |e: &Value| e["state"] == "stopped" && e["reason"].as_str().is_some_and(|r| r.contains("job failed"));
    let job = wait_job(&server, "job", "failed once", failed).await;
    assert!(job["reason"].as_str().unwrap().contains("after 0 retries"), "{job}");

    let same = |e: &Value, name: &str, tenant: &str, on_expiry: &str| {
        e["id"] == svc["id"] && e["name"] == name && e["tenant"] == tenant && e["on_expiry"] == on_expiry
    };
    std::fs::write(&file, edited("first", "two", "stop", 0)).unwrap();
    wait_job(&server, "svc", "moved to tenant two", |e| same(e, "first", "two", "stop")).await;
    std::fs::write(&file, edited("second", "two", "stop", 0)).unwrap();
    wait_job(&server, "svc", "renamed", |e| same(e, "second", "two", "stop")).await;
    std::fs::write(&file, edited("second", "two", "delete", 0)).unwrap();
    wait_job(&server, "svc", "deleted on expiry", |e| same(e, "second", "two", "delete")).await;

    // More retries: the job runs again and is retried twice before it is given up.
    std::fs::write(&file, edited("second", "two", "delete", 2)).unwrap();
    let retried = wait_job(&server, "job", "retried twice", |e| {
        failed(e) && e["reason"].as_str().is_some_and(|r| r.contains("after 2 retries"))
    })
    .await;
    assert_eq!((retried["id"].as_str(), retried["restarts"].as_u64()), (job["id"].as_str(), Some(2)), "{retried}");
    assert_eq!(by_job(&server, "svc").await.unwrap()["state"], "running");
}

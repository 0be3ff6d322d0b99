//! The data dir's disk fills up: nothing acknowledged is lost, creates get `503`, stops,
//! deletes and expiries still reach the provider (the environment that filled the disk
//! included), and everything is written once space returns, even across a `kill -9`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, process_env, processes_of, secs};

/// A private tmpfs, unmounted on drop (the suite runs as root).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mounting a tmpfs needs root (the test suite runs as root)");
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Fills the filesystem with a file of our own; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let block = vec![7u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[7u8; 512]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

fn sim_env() -> Value {
    let labels: serde_json::Map<String, Value> = (0..30).map(|i| (format!("pad{i}"), json!("x".repeat(250)))).collect();
    json!({"owner": "ada", "spec": {"provider": "sim"}, "ttl": "10m", "labels": labels})
}

/// Creates sim environments until one is refused for the store; returns that answer.
async fn until_refused(server: &Server, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = server.post("/v1/environments", sim_env()).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return body;
        }
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert!(started.elapsed() < within, "the store kept accepting writes on a full disk");
    }
}

fn alive(server: &Server, id: &str) -> bool {
    processes_of(&server.controller_id).iter().any(|(_, e)| e == id)
}

async fn wait_gone(server: &Server, id: &str, within: Duration, what: &str) {
    let started = Instant::now();
    while alive(server, id) {
        assert!(started.elapsed() < within, "{what}: the process of {id} still runs\nlog:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CPU time (user + system) of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn a_full_disk_refuses_writes_yet_stops_deletes_and_expiries_happen_and_nothing_is_lost() {
    let logs = tempfile::tempdir().unwrap();
    let fs = Tmpfs::new("24m");
    let mut server = Server::start_in(logs.path(), fs.path(), &["--sim", "create=1ms"]).await;

    // `expiring` runs out while the disk is full; `filler` fills it from inside.
    let mut body = process_env(&["sleep", "600"]);
    body["ttl"] = json!("8s");
    body["on_expiry"] = json!("delete");
    let expiring = server.create(body).await["id"].as_str().unwrap().to_owned();
    let stopped = server.create(process_env(&["sleep", "600"])).await["id"].as_str().unwrap().to_owned();
    for id in [&expiring, &stopped] {
        server.wait_state(id, "running", secs(20)).await;
    }
    let acknowledged = server.create(sim_env()).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&acknowledged, "running", secs(10)).await;
    let filler = server
        .create(process_env(&[
            "sh",
            "-c",
            "until [ -e \"$HOME/go\" ]; do sleep 0.05; done; dd if=/dev/zero of=$HOME/fill bs=64k 2>/dev/null; sleep 600",
        ]))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    server.wait_state(&filler, "running", secs(20)).await;
    // It fills the disk only once its running state is recorded (else that write would fail).
    let (status, out) = server
        .post(&format!("/v1/environments/{filler}/exec"), json!({"cmd": ["sh", "-c", "touch \"$HOME/go\""]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let our_filler = fs.fill();

    // Full: a create is refused with the store's own code, and nothing is acknowledged.
    let refused = until_refused(&server, secs(20)).await;
    assert_eq!(refused["error"]["code"], "store_unavailable", "{refused}");

    let (status, ready) = server.request(Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["store_writable"], false);

    // Idle on a full disk, the server does not spin.
    let pid = server.pid().unwrap();
    let before = cpu_ticks(pid);
    tokio::time::sleep(secs(2)).await;
    let used = cpu_ticks(pid) - before;
    assert!(used < 60, "the server used {used} ticks (of 200 in 2 s) idle on a full disk");

    // Stop and delete still reach the provider, the environment that filled the disk included.
    let (status, body) = server.request(Method::DELETE, &format!("/v1/environments/{filler}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["desired_state"], "deleted");
    let (status, body) = server.post(&format!("/v1/environments/{stopped}/stop"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_gone(&server, &filler, secs(20), "delete on a full disk").await;
    wait_gone(&server, &stopped, secs(20), "stop on a full disk").await;
    // And so does an expiry.
    wait_gone(&server, &expiring, secs(30), "expiry on a full disk").await;

    // The disk is still full (ours); kill -9 now: the journal keeps what the store could not.
    std::fs::OpenOptions::new().append(true).open(&our_filler).unwrap().write_all(&[0; 4096]).ok();
    server.kill9().await;
    std::fs::remove_file(&our_filler).unwrap();
    server.restart().await;

    // Written when space returned, and nothing came back to life.
    server.wait_state(&filler, "deleted", secs(20)).await;
    server.wait_state(&expiring, "deleted", secs(20)).await;
    let env = server.wait_state(&stopped, "stopped", secs(20)).await;
    assert_eq!(env["desired_state"], "stopped");
    let events = server.events_of(&filler).await;
    assert!(events.iter().any(|e| e["action"] == "delete"), "{events:?}");
    let events = server.events_of(&expiring).await;
    assert!(events.iter().any(|e| e["action"] == "expire"), "{events:?}");
    tokio::time::sleep(secs(3)).await;
    for id in [&expiring, &filler, &stopped] {
        assert!(!alive(&server, id), "{id} was started again");
    }
    // What was acknowledged before the disk filled is still there.
    server.wait_state(&acknowledged, "running", secs(10)).await;

    // Recovery needs no restart: fill again, refuse, free, accept.
    let our_filler = fs.fill();
    let refused = until_refused(&server, secs(20)).await;
    assert_eq!(refused["error"]["code"], "store_unavailable");
    std::fs::remove_file(&our_filler).unwrap();
    let started = Instant::now();
    loop {
        let (status, body) = server.post("/v1/environments", sim_env()).await;
        if status == StatusCode::ACCEPTED {
            let id = body["id"].as_str().unwrap().to_owned();
            server.wait_state(&id, "running", secs(10)).await;
            break;
        }
        assert!(started.elapsed() < secs(10), "the store did not recover once space returned: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

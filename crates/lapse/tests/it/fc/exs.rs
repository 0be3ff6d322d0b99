//! The seed's `config/desired_vms.exs` (`desired_vms.exs` beside this file is the seed's own,
//! verbatim): read by `lapse check` and `lapse serve --config` as the TOML file is, and its
//! removed entries kept as the seed keeps them unless `--config-delete-removed`.

use std::path::Path;
use std::time::Instant;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, secs};

const SEED_FILE: &str = include_str!("desired_vms.exs");

/// The seed's file without its `rootfs:` and `kernel:` lines (no provider here boots a kernel).
fn without_kernel() -> String {
    SEED_FILE
        .lines()
        .filter(|l| !l.trim_start().starts_with("rootfs:") && !l.trim_start().starts_with("kernel:"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn lapse_check(file: &Path) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse")).arg("check").arg(file).output().await.unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `GET /vms/:id` until `pred` holds for its status code.
async fn wait_vm(server: &Server, id: &str, pred: impl Fn(StatusCode) -> bool) -> Value {
    let deadline = Instant::now() + secs(30);
    loop {
        let (status, info) = server.get(&format!("/vms/{id}")).await;
        if pred(status) {
            return info;
        }
        assert!(Instant::now() < deadline, "{id}: still {status} {info}\n{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Replaces the file as config management does: written beside it, renamed into place.
fn replace(file: &Path, text: &str) {
    let next = file.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, file).unwrap();
}

#[tokio::test]
async fn lapse_check_reads_the_seeds_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("desired_vms.exs");
    std::fs::write(&file, SEED_FILE).unwrap();
    let (code, _, stderr) = lapse_check(&file).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:6:3: vm \"web-app-1\": spec.kernel: the process provider cannot boot a kernel",
            file.display()
        )),
        "the entry's line and column, and why: {stderr}"
    );
    std::fs::write(&file, without_kernel()).unwrap();
    let (code, stdout, stderr) = lapse_check(&file).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, format!("{}: ok (1 environments, 1 pools)\n", file.display()));
    std::fs::write(&file, "[{\"x\", \"t\", %{cmd: File.read!(\"/etc/passwd\")}}]").unwrap();
    let (code, _, stderr) = lapse_check(&file).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains(":1:20: \"File\" is not a literal"), "no code is evaluated: {stderr}");
}

#[tokio::test]
async fn serve_applies_the_seeds_file_and_keeps_what_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("desired_vms.exs");
    std::fs::write(&file, without_kernel()).unwrap();
    let config = file.to_str().unwrap();
    let args = ["--sim", "0", "--vms-provider", "sim", "--config", config, "--config-poll", "50ms"];
    let server = Server::start(dir.path(), &args).await;
    let info = wait_vm(&server, "web-app-1", |s| s == StatusCode::OK).await;
    assert_eq!(info["tenant"], "web-app-1");
    assert_eq!(info["specs"]["env"]["MIX_ENV"], "prod");
    assert_eq!(info["specs"]["warm_pool"], json!({"min": 1, "max": 3}));
    let (_, status) = server.get("/v1/status").await;
    assert_eq!(status["config"]["error"], Value::Null, "{status}");
    assert!(status["config"]["applied_at"].is_string(), "{status}");
    let (status, pool) = server.get("/v1/pools/web-app-1").await;
    assert_eq!((status, pool["min"].clone(), pool["max"].clone()), (StatusCode::OK, json!(1), json!(3)), "{pool}");

    // An entry leaves the file and another comes: the new one is made, the old one kept.
    replace(&file, "[\n  {\"worker\", \"jobs\", %{cmd: [\"/bin/worker\"], lifecycle: :daemon}}\n]\n");
    let worker = wait_vm(&server, "worker", |s| s == StatusCode::OK).await;
    assert_eq!((worker["tenant"].as_str(), worker["specs"]["lifecycle"].as_str()), (Some("jobs"), Some("daemon")));
    assert_eq!(server.get("/vms/web-app-1").await.0, StatusCode::OK, "the seed keeps what leaves its file");
    assert_eq!(server.get("/v1/pools/web-app-1").await.0, StatusCode::OK, "and its warm pool");
    let (_, stats) = server.get("/stats").await;
    let jobs: Vec<&str> = stats["jobs"].as_array().unwrap().iter().filter_map(|j| j["job_id"].as_str()).collect();
    assert_eq!(jobs, ["web-app-1", "worker"], "{stats:#}");

    // A broken edit is refused whole, with its line and column in the status.
    replace(&file, "[\n  {\"worker\", \"jobs\", %{cmd: [\"/bin/worker\"], lifecycle: :daemon}\n]\n");
    let deadline = Instant::now() + secs(30);
    loop {
        let (_, status) = server.get("/v1/status").await;
        if let Some(error) = status["config"]["error"].as_str() {
            assert!(error.contains("line 3, column 1"), "{error}");
            break;
        }
        assert!(Instant::now() < deadline, "the broken file is reported: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(server.get("/vms/worker").await.0, StatusCode::OK, "the last good state stays");
}

#[tokio::test]
async fn config_delete_removed_deletes_what_leaves_a_seed_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("desired_vms.exs");
    std::fs::write(&file, "[{\"a\", \"t\", %{cmd: [\"x\"]}}, {\"b\", \"t\", %{cmd: [\"y\"]}}]").unwrap();
    let config = file.to_str().unwrap();
    let args =
        ["--sim", "0", "--vms-provider", "sim", "--config", config, "--config-poll", "50ms", "--config-delete-removed"];
    let server = Server::start(dir.path(), &args).await;
    wait_vm(&server, "a", |s| s == StatusCode::OK).await;
    replace(&file, "[{\"b\", \"t\", %{cmd: [\"y\"]}}]");
    wait_vm(&server, "a", |s| s == StatusCode::NOT_FOUND).await;
    assert_eq!(server.get("/vms/b").await.0, StatusCode::OK);
}

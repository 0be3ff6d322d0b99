//! The CLI against a live server: tables, `--json`, exit codes, errors.

use std::process::Output;

use serde_json::Value;

use crate::harness::{Server, secs};

async fn lapse(server: &Server, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .arg("--url")
        .arg(&server.url)
        .args(args)
        .output()
        .await
        .expect("running lapse")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn verbs_tables_json_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;

    let out = lapse(
        &server,
        &[
            "create",
            "--json",
            "--wait",
            "--ttl",
            "10m",
            "--label",
            "LabID=9",
            "--",
            "sh",
            "-c",
            "echo hello; exec sleep 600",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let env: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(env["state"], "running");
    let id = env["id"].as_str().unwrap().to_owned();

    let out = lapse(&server, &["list"]).await;
    let table = text(&out.stdout);
    assert!(table.starts_with("ID") && table.contains(&id) && table.contains("running"), "{table}");

    let out = lapse(&server, &["status", &id]).await;
    assert!(text(&out.stdout).contains("labels:    LabID=9"), "{}", text(&out.stdout));

    let out = lapse(&server, &["exec", &id, "--", "sh", "-c", "echo out; exit 3"]).await;
    assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(3), "out\n"));

    let out = lapse(&server, &["extend", &id, "--by", "1h"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = lapse(&server, &["logs", &id]).await;
    assert_eq!(text(&out.stdout), "hello\n");

    let out = lapse(&server, &["status", &"0".repeat(32)]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no environment") && text(&out.stderr).contains("404"), "{}", text(&out.stderr));
    let out = lapse(&server, &["create", "-p", "nope", "--", "true"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown provider"), "{}", text(&out.stderr));
    let out = lapse(&server, &["create", "--ttl", "0", "--", "true"]).await;
    assert!(text(&out.stderr).contains("ttl: must be positive"), "{}", text(&out.stderr));

    let out = lapse(&server, &["events", "--json", "--environment", &id]).await;
    let events: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(events["events"].as_array().unwrap().len() >= 4);

    let out = lapse(&server, &["delete", &id]).await;
    assert!(out.status.success());
    server.wait_state(&id, "deleted", secs(5)).await;

    let help =
        text(&tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse")).arg("--help").output().await.unwrap().stdout);
    for verb in ["serve", "create", "list", "status", "extend", "stop", "start", "delete", "exec", "logs", "events"] {
        assert!(help.contains(verb), "--help lists {verb}");
    }
    // Nothing answers at this URL: a clear message, not a panic.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["--url", "http://127.0.0.1:1", "list"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot reach the Lapse server"), "{}", text(&out.stderr));
}

/// `lapse list` follows the server's pages to the end (more than one page of 1,000), and
/// `--limit` stops early.
#[tokio::test]
async fn list_follows_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(Server::start(dir.path(), &["--sim", "0"]).await);
    let body = serde_json::json!({"owner": "many", "spec": {"provider": "sim", "cmd": ["x"]}, "ttl": "10m"});
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (server, body) = (server.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..126 {
                server.create(body.clone()).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let out = lapse(&server, &["list", "--json", "--owner", "many"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = list["environments"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1008, "every page");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
    let out = lapse(&server, &["list", "--json", "--owner", "many", "--limit", "1003"]).await;
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["environments"].as_array().unwrap().len(), 1003);
    let out = lapse(&server, &["list", "--owner", "many", "--limit", "2"]).await;
    assert_eq!(text(&out.stdout).lines().count(), 3, "a header and two rows: {}", text(&out.stdout));
}

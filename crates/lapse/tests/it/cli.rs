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
    assert_eq!(out.status.code(), Some(2), "refused before anything is sent");
    assert!(text(&out.stderr).contains("must be positive"), "{}", text(&out.stderr));

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

/// Seconds until `env`'s expiry.
fn left(env: &Value) -> i64 {
    let at = chrono::DateTime::parse_from_rfc3339(env["expires_at"].as_str().expect("an expiry")).unwrap();
    (at.timestamp_millis() - chrono::Utc::now().timestamp_millis()) / 1000
}

/// The CLI's durations are instance-manager's (`internal/utils/validators.go` `ParseDuration`):
/// a bare number is hours, `30m`, `2h30m`, "30 minutes" and "2 hours" work in any case, and no
/// input silently means seconds; the API refuses a bare number in a string.
#[tokio::test]
async fn durations_follow_instance_manager() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--sim", "0"]).await;
    let create = |ttl: &'static str| {
        let url = server.url.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
                .args(["--url", &url, "create", "--json", "-p", "sim", "-d", ttl, "--", "x"])
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "{ttl}: {}", text(&out.stderr));
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        }
    };
    for (ttl, secs) in [
        ("2", 2 * 3600),
        ("30m", 1800),
        ("30M", 1800),
        ("2h30m", 9000),
        ("30 minutes", 1800),
        ("2 Hours", 7200),
        ("1.5h", 5400),
    ] {
        let env = create(ttl).await;
        let got = left(&env);
        assert!((secs - 5..=secs).contains(&got), "-d {ttl:?}: {got} s left, want about {secs}");
    }

    // `extend -d 2` adds two hours to the current expiry.
    let env = create("30m").await;
    let id = env["id"].as_str().unwrap();
    let out = lapse(&server, &["extend", "--json", id, "-d", "2"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = left(&serde_json::from_slice(&out.stdout).unwrap());
    assert!((9000 - 5..=9000).contains(&got), "30m + 2h: {got} s left");

    // Refused before anything is sent, with a message that says how to write it.
    for bad in ["0", "-2", "2 parsecs", "soon"] {
        let out = lapse(&server, &["create", "-p", "sim", "-d", bad, "--", "x"]).await;
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out.stderr));
    }
    let out = lapse(&server, &["exec", id, "--timeout", "30", "--", "x"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("\"30s\""), "{}", text(&out.stderr));

    // The API: a JSON number is seconds; a string needs its unit.
    let (status, body) = server
        .post(
            "/v1/environments",
            serde_json::json!({"owner": "o", "spec": {"provider": "sim", "cmd": ["x"]}, "ttl": "2"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("has no unit"), "{body}");
    let (status, body) = server
        .post(
            "/v1/environments",
            serde_json::json!({"owner": "o", "spec": {"provider": "sim", "cmd": ["x"]}, "ttl": 120}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let got = left(&body);
    assert!((115..=120).contains(&got), "a JSON number is seconds: {got}");
}

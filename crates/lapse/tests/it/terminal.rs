//! The interactive terminal (`GET /v1/environments/{id}/terminal`): a PTY over a WebSocket,
//! in process and docker environments, and every refusal before the upgrade.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{Server, process_env, secs};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const ADMIN: &str = "admin-key-for-tests-0123456789";

/// The route's request with `key` (the server's own when `None`) and extra headers.
fn request(server: &Server, id: &str, query: &str, key: Option<&str>, headers: &[(&str, &str)]) -> reqwest::Request {
    let mut req = reqwest::Client::new().get(format!("{}/v1/environments/{id}/terminal{query}", server.url));
    if let Some(key) = key.or(server.key.as_deref()) {
        req = req.bearer_auth(key);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.build().unwrap()
}

/// Opens the terminal as a WebSocket, if the server upgrades.
async fn try_open(server: &Server, id: &str, key: Option<&str>) -> Option<Ws> {
    let url = format!("{}/v1/environments/{id}/terminal", server.url.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    if let Some(key) = key.or(server.key.as_deref()) {
        req.headers_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.ok().map(|(ws, _)| ws)
}

/// Opens the terminal as a WebSocket, asserting the upgrade.
async fn open(server: &Server, id: &str, query: &str, key: Option<&str>) -> Ws {
    let url = format!("{}/v1/environments/{id}/terminal{query}", server.url.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    if let Some(key) = key.or(server.key.as_deref()) {
        req.headers_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    let (ws, response) = tokio_tungstenite::connect_async(req).await.expect("the terminal upgrades");
    assert_eq!(response.status(), 101);
    ws
}

/// A plain (not upgraded) request's answer: the API's JSON errors.
async fn refused(
    server: &Server,
    id: &str,
    query: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut with_upgrade = vec![
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    with_upgrade.extend_from_slice(headers);
    let resp = reqwest::Client::new().execute(request(server, id, query, key, &with_upgrade)).await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn type_in(ws: &mut Ws, text: &str) {
    ws.send(Message::Binary(text.as_bytes().to_vec().into())).await.expect("sent");
}

async fn control(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.expect("sent");
}

/// Reads the terminal until `found` finds something in what it printed (since this call).
async fn read_until<T>(ws: &mut Ws, what: &str, mut found: impl FnMut(&str) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => seen.extend_from_slice(&bytes),
            Ok(Some(Ok(Message::Close(frame)))) => {
                panic!("closed ({frame:?}) before {what}: {}", String::from_utf8_lossy(&seen))
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no {what} ({other:?}): {}", String::from_utf8_lossy(&seen)),
        }
        if let Some(t) = found(&String::from_utf8_lossy(&seen)) {
            return t;
        }
    }
}

async fn read_text(ws: &mut Ws, want: &str) {
    read_until(ws, want, |s| s.contains(want).then_some(())).await
}

/// The number printed between `start` and `end` (what was typed holds no digits there).
fn number_between(text: &str, start: &str, end: &str) -> Option<u64> {
    text.match_indices(start).find_map(|(i, _)| {
        let rest = &text[i + start.len()..];
        let digits = &rest[..rest.find(end)?];
        digits.parse().ok()
    })
}

/// The close frame the server sends (code, reason), skipping output before it.
async fn close_of(ws: &mut Ws) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                eprintln!("before the close: {}", String::from_utf8_lossy(&seen));
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Ok(Some(Ok(Message::Close(None)))) => return (1005, String::new()),
            Ok(Some(Ok(Message::Binary(bytes)))) => seen.extend_from_slice(&bytes),
            Ok(Some(Ok(_))) => {}
            other => panic!("no close frame: {other:?}"),
        }
    }
}

/// The shell's life: output, its size and a resize, its uid, hostile text frames, its exit code.
async fn a_whole_session(server: &Server, id: &str, check_uid: impl Fn(u64)) {
    let mut ws = open(server, id, "?cols=100&rows=30", None).await;
    type_in(&mut ws, "echo hi-$((6*7))\r").await;
    read_text(&mut ws, "hi-42").await;
    type_in(&mut ws, "echo size=$(stty size)=\r").await;
    read_text(&mut ws, "size=30 100=").await;
    control(&mut ws, r#"{"type":"resize","cols":120,"rows":40}"#).await;
    type_in(&mut ws, "echo size=$(stty size)=\r").await;
    read_text(&mut ws, "size=40 120=").await;
    type_in(&mut ws, "echo uid=$(id -u)=\r").await;
    let uid = read_until(&mut ws, "the uid", |s| number_between(s, "uid=", "=")).await;
    check_uid(uid);
    // Hostile or meaningless text frames are ignored; the terminal goes on.
    for junk in [
        "not json",
        "{}",
        r#"{"type":"resize","cols":0,"rows":30}"#,
        r#"{"type":"resize","cols":100000,"rows":30}"#,
        r#"{"type":"resize","cols":"80","rows":null}"#,
        r#"{"type":"exec","cmd":["touch","/tmp/pwned"]}"#,
        &"[".repeat(10_000),
    ] {
        control(&mut ws, junk).await;
    }
    type_in(&mut ws, "echo size=$(stty size)= alive-$((1+1))\r").await;
    read_text(&mut ws, "size=40 120= alive-2").await;
    type_in(&mut ws, "exit 3\r").await;
    assert_eq!(close_of(&mut ws).await, (1000, "exited 3".to_owned()));
    let events = crate::harness::eventually(secs(10), "the terminal's events", async || {
        let events = server.events_of(id).await;
        let messages: Vec<String> = events
            .iter()
            .filter(|e| e["action"] == "terminal")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect();
        (messages.len() == 2).then_some(messages)
    })
    .await;
    assert!(events.contains(&"opened (100x30)".to_owned()), "{events:?}");
    assert!(events.contains(&"closed: exited 3".to_owned()), "{events:?}");
}

#[tokio::test]
async fn a_process_shell_runs_as_the_environment_resizes_and_ends_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let env = server.create(process_env(&["sleep", "600"])).await;
    let id = env["id"].as_str().unwrap();
    server.wait_state(id, "running", secs(20)).await;
    let server_uid = nix::unistd::getuid().as_raw();
    a_whole_session(&server, id, |uid| {
        assert_ne!(uid, u64::from(server_uid), "the shell runs as the environment's uid, not the server's");
        assert!(uid >= u64::from(lapse_providers::process::isolation::UID_BASE), "{uid}");
    })
    .await;
    // Still running: a terminal's end is not the environment's.
    assert_eq!(server.env(id).await["state"], "running");
}

#[tokio::test]
async fn a_docker_shell_runs_in_the_container_resizes_and_ends_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let env = server.create(crate::docker::docker_env(&["sleep", "600"])).await;
    let id = env["id"].as_str().unwrap();
    server.wait_state(id, "running", secs(60)).await;
    a_whole_session(&server, id, |uid| assert_eq!(uid, 0, "the container's own user")).await;
    assert_eq!(server.env(id).await["state"], "running");

    // Output that looks like the engine's multiplexed header (a byte 1, then a 4 GiB length)
    // is the program's own: it reaches the client as printed, nothing waits for 4 GiB.
    let mut ws = open(&server, id, "", None).await;
    type_in(&mut ws, "printf '\\001\\000\\000\\000\\377\\377\\377\\377'; echo forged-$((6*7))\r").await;
    let seen =
        read_until(&mut ws, "the output after a forged header", |s| s.contains("forged-42").then(|| s.to_owned()))
            .await;
    assert!(seen.contains("\u{1}\0\0\0"), "the bytes pass as printed: {seen:?}");
}

#[tokio::test]
async fn terminals_are_refused_before_the_upgrade_with_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &["--sim", "0", "--terminal-max-per-environment", "1", "--terminal-idle", "2s"],
        &[("LAPSE_ADMIN_KEY", ADMIN)],
    )
    .await;
    let mut keys = Vec::new();
    for name in ["acme", "other"] {
        let quota = json!({"providers": ["process", "sim"], "environments": 10});
        let (status, t) = server.post("/v1/admin/tenants", json!({"name": name, "quota": quota})).await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
        let (status, k) = server.post(&format!("/v1/admin/tenants/{name}/keys"), json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{k}");
        keys.push(k["key"].as_str().unwrap().to_owned());
    }
    let (acme, other) = (keys[0].as_str(), keys[1].as_str());
    let (status, env) =
        server.request_as(Some(acme), Method::POST, "/v1/environments", Some(process_env(&["sleep", "600"]))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(20)).await;

    let check = |(status, body): (StatusCode, Value), want: StatusCode, code: &str| {
        assert_eq!(status, want, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    };
    // Another tenant's environment is a missing one; so is an unknown id.
    check(refused(&server, &id, "", Some(other), &[]).await, StatusCode::NOT_FOUND, "not_found");
    let unknown = lapse_core::model::new_environment_id();
    check(refused(&server, &unknown, "", Some(acme), &[]).await, StatusCode::NOT_FOUND, "not_found");
    check(refused(&server, "../../etc", "", Some(acme), &[]).await, StatusCode::NOT_FOUND, "not_found");
    // No key at all.
    let (status, _) = reqwest::Client::new()
        .execute(reqwest::Client::new().get(format!("{}/v1/environments/{id}/terminal", server.url)).build().unwrap())
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A page of another site cannot open it with the caller's credentials.
    let host = server.url.trim_start_matches("http://").to_owned();
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        check(refused(&server, &id, "", Some(acme), &[("origin", origin)]).await, StatusCode::FORBIDDEN, "forbidden");
    }
    // Bad sizes and keys.
    for query in ["?cols=0", "?rows=1001", "?cols=x", "?cols=80&shell=/bin/bash"] {
        check(refused(&server, &id, query, Some(acme), &[]).await, StatusCode::BAD_REQUEST, "invalid_request");
    }
    // Not a WebSocket at all.
    let resp = reqwest::Client::new().execute(request(&server, &id, "", Some(acme), &[])).await.unwrap();
    assert_eq!(resp.status().as_u16() / 100, 4, "{resp:?}");
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "websocket_required");
    // A provider without terminals.
    let (status, sim) = server
        .request_as(
            Some(acme),
            Method::POST,
            "/v1/environments",
            Some(json!({"owner": "ada", "spec": {"provider": "sim"}})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sim}");
    let sim = sim["id"].as_str().unwrap().to_owned();
    server.wait_state(&sim, "running", secs(20)).await;
    check(refused(&server, &sim, "", Some(acme), &[]).await, StatusCode::BAD_REQUEST, "unsupported");

    // The same origin (as a browser on this server's page sends it) opens it; one at a time.
    let origin = format!("http://{host}");
    let mut first = open(&server, &id, "", Some(acme)).await;
    check(
        refused(&server, &id, "", Some(acme), &[("origin", &origin)]).await,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_terminals",
    );
    type_in(&mut first, "echo one-$((2+2))\r").await;
    read_text(&mut first, "one-4").await;
    // Left alone, it closes after the idle timeout; then the next one may open.
    assert_eq!(close_of(&mut first).await, (1001, "idle".to_owned()));
    let mut again = crate::harness::eventually(secs(10), "a terminal after the first closed", async || {
        try_open(&server, &id, Some(acme)).await
    })
    .await;
    type_in(&mut again, "exit\r").await;
    assert_eq!(close_of(&mut again).await, (1000, "exited 0".to_owned()));

    // A stopped environment has no terminal.
    let (status, _) = server.request_as(Some(acme), Method::POST, &format!("/v1/environments/{id}/stop"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.wait_state(&id, "stopped", secs(20)).await;
    check(refused(&server, &id, "", Some(acme), &[]).await, StatusCode::CONFLICT, "conflict");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[tokio::test]
async fn a_frame_over_the_cap_closes_the_terminal_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--terminal-max-frame", "4096"]).await;
    let env = server.create(process_env(&["sleep", "600"])).await;
    let id = env["id"].as_str().unwrap();
    server.wait_state(id, "running", secs(20)).await;
    let mut ws = open(&server, id, "", None).await;
    // The server stops reading at the cap: the client sees a close frame (1008) or, with
    // its frame still unread, a reset; either way this terminal is over.
    let _ = ws.send(Message::Binary(vec![b'x'; 100_000].into())).await;
    let ended = tokio::time::timeout(secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the terminal ends");
    assert!(ended.is_none_or(|code| code == 1008), "{ended:?}");
    // Still serving, and a new terminal works.
    let mut ws = open(&server, id, "", None).await;
    type_in(&mut ws, "echo ok-$((3*3))\r").await;
    read_text(&mut ws, "ok-9").await;
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn lapse_shell_attaches_and_exits_with_the_shells_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let env = server.create(process_env(&["sleep", "600"])).await;
    let id = env["id"].as_str().unwrap();
    server.wait_state(id, "running", secs(20)).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["shell", id, "--url", &server.url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"echo hi-$((6*7))\rexit 3\r").await.unwrap();
    }
    let out = tokio::time::timeout(secs(30), child.wait_with_output()).await.expect("lapse shell ends").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("hi-42"), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    // An unknown environment is the server's 404, said plainly.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["shell", &lapse_core::model::new_environment_id(), "--url", &server.url])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_client_that_does_not_read_does_not_grow_the_servers_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let env = server.create(process_env(&["sleep", "600"])).await;
    let id = env["id"].as_str().unwrap();
    server.wait_state(id, "running", secs(20)).await;
    let pid = server.pid().unwrap();
    let mut ws = open(&server, id, "", None).await;
    type_in(&mut ws, "echo go-$((1+1)); yes 0123456789abcdefghijklmnopqrstuvwxyz\r").await;
    read_text(&mut ws, "go-2").await;
    let before = rss_kib(pid);
    // The shell prints without end; the client reads nothing for a while.
    tokio::time::sleep(secs(4)).await;
    let after = rss_kib(pid);
    eprintln!("server RSS while the client does not read: {before} KiB -> {after} KiB");
    assert!(after < before + 32 * 1024, "the server grew from {before} KiB to {after} KiB");
    // Reading again, the output flows (it was held back, not lost or cut off).
    read_text(&mut ws, "0123456789abcdefghijklmnopqrstuvwxyz\r\n0123456789").await;
    drop(ws);
    // The client left: the shell is hung up (and `yes` with it), the permit freed.
    let mut again =
        crate::harness::eventually(secs(10), "a new terminal", async || try_open(&server, id, None).await).await;
    type_in(&mut again, "echo left-$((2+3)) $(ps -e -o comm | grep -c '^yes$')\r").await;
    read_text(&mut again, "left-5 0").await;
}

#[tokio::test]
async fn typing_in_a_terminal_keeps_an_idle_timeout_environment_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let mut body = process_env(&["sleep", "600"]);
    body["idle_timeout"] = json!("3s");
    let env = server.create(body).await;
    let id = env["id"].as_str().unwrap();
    server.wait_state(id, "running", secs(20)).await;
    let mut ws = open(&server, id, "", None).await;
    // Twice the idle timeout of typing, a frame a second: still running.
    for n in 0..6 {
        type_in(&mut ws, &format!("echo tick-{n}-$((n=1))\r")).await;
        read_text(&mut ws, &format!("tick-{n}-1")).await;
        tokio::time::sleep(secs(1)).await;
    }
    assert_eq!(server.env(id).await["state"], "running");
    // Nobody typing: the idle stop comes, and ends the terminal with the environment.
    server.wait_state(id, "stopped", secs(20)).await;
    let ended = tokio::time::timeout(secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the terminal outlived its environment");
}

#[tokio::test]
async fn a_swarm_shell_runs_in_the_task_container_and_ends_with_its_exit_code() {
    use lapse_providers::swarm::testing::{Cleanup, host};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--swarm-endpoint", &host()]).await;
    let _cleanup = Cleanup(server.controller_id.clone());
    let env = server
        .create(json!({"owner": "ada", "spec": {"provider": "swarm", "image": crate::docker::image(),
            "cmd": ["sleep", "600"]}, "ttl": "10m"}))
        .await;
    let id = env["id"].as_str().unwrap();
    server.wait_state(id, "running", secs(60)).await;
    a_whole_session(&server, id, |uid| assert_eq!(uid, 0, "the container's own user")).await;
}

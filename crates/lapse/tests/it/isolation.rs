//! A tenant's process environment tries to escape: each attempt is a shell command run in
//! it through the API (`exec`), as an attacker would, and each must fail. Also: output a
//! command prints cannot grow the server, and logs stay capped while the server is down.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, eventually, process_env, secs};

/// Runs `script` with `sh -c` in the environment; returns (exit code, stdout, stderr).
async fn attack(server: &Server, id: &str, script: &str) -> (i64, String, String) {
    let (status, out) = server
        .post(&format!("/v1/environments/{id}/exec"), json!({"cmd": ["sh", "-c", script], "timeout": "30s"}))
        .await;
    assert!(status.is_success(), "{status}: {out}");
    let text = |k: &str| out[k].as_str().unwrap_or_default().to_owned();
    (out["exit_code"].as_i64().unwrap_or(-1), text("stdout"), text("stderr"))
}

async fn running(server: &Server, cmd: &[&str]) -> String {
    let id = server.create(process_env(cmd)).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(10)).await;
    id
}

/// The host pid of an environment's command (a child of its supervisor, or deeper).
fn host_pid_of(server: &Server, id: &str, program: &str) -> i32 {
    let leader = crate::harness::processes_of(&server.controller_id)
        .into_iter()
        .find(|(_, e)| e == id)
        .map(|(pid, _)| pid)
        .expect("the environment's leader");
    let cgroup =
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/lapse/{}/{id}/cgroup.procs", server.controller_id))
            .expect("the environment's cgroup");
    cgroup
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter(|pid| *pid != leader)
        .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == program))
        .expect("the command in the cgroup")
}

fn server_pid(server: &Server) -> i32 {
    // The server is the `lapse serve` whose data dir is ours.
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("serve") && c.contains(&*server.dir.to_string_lossy())
            })
        })
        .expect("the server's pid")
}

#[tokio::test]
async fn an_environment_cannot_reach_the_server_the_store_or_another_environment() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let data = std::fs::canonicalize(dir.path()).unwrap();
    let victim = running(&server, &["sh", "-c", "echo victim-secret > secret; echo victim-log; exec sleep 600"]).await;
    let attacker = running(&server, &["sleep", "600"]).await;
    let server_pid = server_pid(&server);
    let victim_pid = host_pid_of(&server, &victim, "sleep");
    let db = data.join("lapse.db");
    let victim_dir = data.join("process").join(&victim);

    // It runs as a uid of its own, without groups, and sees only its own processes.
    let (_, id_out, _) = attack(&server, &attacker, "id -u; id -G; ls /proc | grep -c '^[0-9]'").await;
    let lines: Vec<&str> = id_out.lines().collect();
    assert_ne!(lines[0], "0", "not root: {id_out}");
    assert_eq!(lines[0], lines[1], "no supplementary groups: {id_out}");
    assert!(lines[2].parse::<u32>().unwrap() < 10, "a handful of its own processes: {id_out}");

    let attempts = [
        ("read the server's environ", format!("cat /proc/{server_pid}/environ")),
        ("read the server's cmdline", format!("cat /proc/{server_pid}/cmdline")),
        ("read the store file", format!("cat {}", db.display())),
        ("read another environment's files", format!("cat {}/work/secret", victim_dir.display())),
        ("read another environment's logs", format!("cat {}/stdout.log", victim_dir.display())),
        ("signal the server", format!("kill -9 {server_pid}")),
        ("signal another environment's process", format!("kill -9 {victim_pid}")),
        ("write into the data dir", format!("echo pwned > {}/pwned", data.display())),
        ("write into the process dir", format!("echo pwned > {}/process/pwned", data.display())),
    ];
    for (what, script) in &attempts {
        let (code, stdout, stderr) = attack(&server, &attacker, script).await;
        assert_ne!(code, 0, "{what} succeeded: {stdout} {stderr}");
        assert!(
            !stdout.contains("victim") && !stdout.contains("LAPSE") && !stdout.contains("serve"),
            "{what}: {stdout}"
        );
    }
    // Nothing it tried had an effect.
    assert!(!data.join("pwned").exists() && !data.join("process/pwned").exists());
    assert!(Path::new(&format!("/proc/{victim_pid}")).exists(), "the other environment's process lives");
    assert_eq!(server.get("/healthz").await.0, 200, "the server lives");
    assert_eq!(server.env(&victim).await["state"], "running");
    // And the host side agrees: the store and the environment directories are root's alone.
    use std::os::unix::fs::MetadataExt;
    for path in [data.join("process"), victim_dir.clone()] {
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o077, 0, "{} is private", path.display());
    }
    assert_eq!(std::fs::metadata(victim_dir.join("stdout.log")).unwrap().uid(), 0, "logs are root's");
    // The victim still reads its own file.
    let (code, out, _) = attack(&server, &victim, "cat secret").await;
    assert_eq!((code, out.as_str()), (0, "victim-secret\n"));
    for id in [&victim, &attacker] {
        server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
        server.wait_state(id, "deleted", secs(10)).await;
    }
}

/// The peak resident memory of a process, in kB.
fn vm_hwm_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_command_printing_a_gigabyte_leaves_the_server_flat() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let id = running(&server, &["sleep", "600"]).await;
    let pid = server_pid(&server);
    let before = vm_hwm_kb(pid);
    let (status, out) = server
        .post(
            &format!("/v1/environments/{id}/exec"),
            json!({"cmd": ["sh", "-c", "head -c 1000000000 /dev/zero; echo done"], "timeout": "120s"}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let after = vm_hwm_kb(pid);
    eprintln!("server peak RSS: {before} kB before, {after} kB after an exec printing 1 GB");
    let stdout = out["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("[lapse: output truncated: "), "{}", &stdout[..80]);
    assert!(stdout.ends_with("done\n"));
    assert!(after < 150 * 1024, "peak RSS {after} kB");
    assert!(after < before + 64 * 1024, "grew from {before} kB to {after} kB");
}

#[tokio::test]
async fn logs_stay_capped_while_the_server_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]).await;
    let id = running(
        &server,
        &["sh", "-c", "sleep 1; head -c 1000000000 /dev/zero; echo; echo tail; touch done; exec sleep 600"],
    )
    .await;
    server.kill9().await;
    let env_dir = std::fs::canonicalize(dir.path()).unwrap().join("process").join(&id);
    let started = std::time::Instant::now();
    while !env_dir.join("work/done").exists() {
        assert!(started.elapsed() < secs(120), "the writer did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let size = |n: &str| std::fs::metadata(env_dir.join(n)).map_or(0, |m| m.len());
    let on_disk = size("stdout.log") + size("stdout.log.1");
    eprintln!("1 GB printed while the server was down left {on_disk} bytes of stdout log");
    assert!(on_disk <= 2 * 10 * 1024 * 1024, "{on_disk}");
    server.restart().await;
    let env: Value = server.wait_state(&id, "running", secs(10)).await;
    assert_eq!(env["state"], "running", "re-adopted");
    let (_, logs) = server.get(&format!("/v1/environments/{id}/logs?tail=1")).await;
    assert_eq!(logs["stdout"], "tail\n");
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(10)).await;
}

#[tokio::test]
async fn the_oom_killer_takes_the_command_not_its_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    // What the command forks inherits its score; the supervisor and init keep theirs.
    let id = running(&server, &["sh", "-c", "sleep 1; cat /proc/self/oom_score_adj; exec sleep 600"]).await;
    let logs: Value = eventually(secs(20), "the command's score in its log", async || {
        let (_, logs) = server.get(&format!("/v1/environments/{id}/logs")).await;
        logs["stdout"].as_str().is_some_and(|s| !s.is_empty()).then_some(logs)
    })
    .await;
    assert_eq!(logs["stdout"], "1000\n", "{logs}");
    let (status, out) = server
        .post(
            &format!("/v1/environments/{id}/exec"),
            json!({"cmd": ["sh", "-c", "sleep 0.2; cat /proc/self/oom_score_adj"]}),
        )
        .await;
    assert_eq!((status, out["stdout"].as_str()), (StatusCode::OK, Some("1000\n")), "{out}");
    let leader = crate::harness::processes_of(&server.controller_id)
        .into_iter()
        .find(|(_, e)| *e == id)
        .map(|(pid, _)| pid)
        .expect("the environment's leader");
    let score = std::fs::read_to_string(format!("/proc/{leader}/oom_score_adj")).unwrap();
    assert_ne!(score.trim(), "1000", "the supervisor is not the OOM killer's first choice");
    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
}

#[tokio::test]
async fn an_environment_over_its_memory_is_stopped_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let mut body = process_env(&["sh", "-c", "sleep 0.5; head -c 100000000 /dev/zero | tail > /dev/null"]);
    body["spec"]["resources"] = json!({"mem_mb": 32});
    let id = server.create(body).await["id"].as_str().unwrap().to_owned();
    let env = server.wait_state(&id, "stopped", secs(20)).await;
    let reason = env["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("OOM killer"), "{env}");
    assert_eq!(env["exit_code"], 137, "{env}");
}

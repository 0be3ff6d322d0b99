//! A `lapse serve` child process and a small JSON client for it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub dir: PathBuf,
    /// The data dir, when it is not `dir` (where the log always goes).
    pub data_dir: Option<PathBuf>,
    pub controller_id: String,
    args: Vec<String>,
    /// Variables the server is started with (changed ones apply at the next restart).
    pub envs: Vec<(String, String)>,
    /// The key every request presents: `LAPSE_ADMIN_KEY` if the server was given one.
    pub key: Option<String>,
    http: reqwest::Client,
}

/// Test defaults: fast sweep and short grace.
pub const FAST: &[&str] =
    &["--sweep-interval", "1s", "--stop-grace", "2s", "--retry-base", "200ms", "--retry-cap", "1s"];

impl Server {
    /// Starts a server on a free loopback port with its state in `dir`.
    pub async fn start(dir: &Path, args: &[&str]) -> Server {
        Self::start_with_env(dir, args, &[]).await
    }

    /// Starts a server as [`Server::start`] does, with these variables set.
    pub async fn start_with_env(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Server {
        Self::launch(dir, None, args, envs).await
    }

    /// Starts a server whose data dir is `data_dir`, its log in `dir`.
    pub async fn start_in(dir: &Path, data_dir: &Path, args: &[&str]) -> Server {
        Self::launch(dir, Some(data_dir), args, &[]).await
    }

    async fn launch(dir: &Path, data_dir: Option<&Path>, args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut all: Vec<String> = FAST.iter().map(|s| s.to_string()).collect();
        all.extend(args.iter().map(|s| s.to_string()));
        let mut server = Server {
            child: None,
            url: String::new(),
            dir: dir.to_owned(),
            data_dir: data_dir.map(Path::to_owned),
            controller_id: String::new(),
            args: all,
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            key: envs.iter().find(|(k, _)| *k == "LAPSE_ADMIN_KEY").map(|(_, v)| v.to_string()).or_else(|| {
                let (_, path) = envs.iter().find(|(k, _)| *k == "LAPSE_ADMIN_KEY_FILE")?;
                Some(std::fs::read_to_string(path).ok()?.trim_end().to_owned())
            }),
            http: reqwest::Client::new(),
        };
        server.spawn().await;
        server
    }

    /// The server process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("server log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lapse"))
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data_dir.as_ref().unwrap_or(&self.dir))
            .args(&self.args)
            .env("LAPSE_LOG", "info,lapse_server=debug")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawning lapse serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("lapse serve printed its address within 30 s")
            .expect("reading stdout")
            .unwrap_or_else(|| panic!("lapse serve exited; log:\n{}", self.log()));
        self.url = line.strip_prefix("lapse serving on ").expect("the serving line").trim().to_owned();
        self.child = Some(child);
        let status = self.get("/v1/status").await;
        self.controller_id = status.1["controller_id"].as_str().expect("controller id").to_owned();
    }

    /// Waits for the server to exit on its own (a fault it was told to have).
    pub async fn wait_exit(&mut self, within: Duration) {
        if let Some(mut child) = self.child.take() {
            tokio::time::timeout(within, child.wait())
                .await
                .unwrap_or_else(|_| panic!("the server did not exit within {within:?}; log:\n{}", self.log()))
                .expect("reaped");
        }
    }

    /// `kill -9`: no shutdown path runs.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("kill -9");
            child.wait().await.expect("reaped");
        }
    }

    /// Starts the server again on the same data dir (a new port).
    pub async fn restart(&mut self) {
        self.kill9().await;
        self.spawn().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The log's last `n` lines: what a failure message shows (CI keeps a failure's tail).
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.request_as(self.key.as_deref(), method, path, body).await
    }

    /// A request presenting `key` (none when `None`).
    pub async fn request_as(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("the server answers");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.url, path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.expect("the server answers");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, Some(body)).await
    }

    /// Creates an environment, asserting 202, and returns it.
    pub async fn create(&self, body: Value) -> Value {
        let (status, env) = self.post("/v1/environments", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{env}");
        assert_eq!(env["state"], "pending");
        env
    }

    pub async fn env(&self, id: &str) -> Value {
        let (status, env) = self.get(&format!("/v1/environments/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{env}");
        env
    }

    /// Polls until `pred` holds for the environment, or panics after `within`.
    pub async fn wait_for(&self, id: &str, within: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let env = self.env(id).await;
            if pred(&env) {
                return env;
            }
            if started.elapsed() > within {
                panic!(
                    "environment {id} not {what} within {within:?}: {env}\nlog (last lines):\n{}",
                    self.log_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_state(&self, id: &str, state: &str, within: Duration) -> Value {
        self.wait_for(id, within, state, |e| e["state"] == state).await
    }

    pub async fn events_of(&self, id: &str) -> Vec<Value> {
        let (_, list) = self.get(&format!("/v1/events?environment={id}&limit=1000")).await;
        list["events"].as_array().cloned().unwrap_or_default()
    }

    pub async fn count_all_events(&self) -> usize {
        let (_, list) = self.get("/v1/events?limit=1000").await;
        list["events"].as_array().map_or(0, Vec::len)
    }

    pub async fn count_environments(&self) -> usize {
        let (_, list) = self.get("/v1/environments").await;
        list["environments"].as_array().map_or(0, Vec::len)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        // Remove what this server's environments left behind, so failed tests leak nothing.
        kill_processes_of(&self.controller_id);
        remove_containers_of(&self.controller_id);
    }
}

/// A process-provider environment body.
pub fn process_env(cmd: &[&str]) -> Value {
    json!({"owner": "ada", "spec": {"provider": "process", "cmd": cmd}, "ttl": "10m"})
}

/// Ids of live process groups marked with `controller` (read from /proc like the provider).
pub fn processes_of(controller: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        if fields.first() == Some(&"Z") || fields.get(2).and_then(|p| p.parse::<i32>().ok()) != Some(pid) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<String> = environ.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        if vars.iter().any(|v| v == &format!("LAPSE_CONTROLLER={controller}"))
            && let Some(id) = vars.iter().find_map(|v| v.strip_prefix("LAPSE_ENVIRONMENT_ID="))
        {
            found.push((pid, id.to_owned()));
        }
    }
    found
}

pub fn kill_processes_of(controller: &str) {
    if controller.is_empty() {
        return;
    }
    for (pid, _) in processes_of(controller) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Removes (with the podman CLI, synchronously: this runs in `Drop`) every container labelled
/// with `controller`.
pub fn remove_containers_of(controller: &str) {
    if controller.is_empty() {
        return;
    }
    let filter = format!("label=lapse.controller={controller}");
    let Ok(out) = std::process::Command::new("podman").args(["ps", "-aq", "--filter", &filter]).output() else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
    if !ids.is_empty() {
        let _ = std::process::Command::new("podman").args(["rm", "-f"]).args(&ids).output();
    }
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Polls `f` every 20 ms until it gives a value; fails the test after `within`.
pub async fn eventually<T>(within: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

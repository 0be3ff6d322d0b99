//! The `process` provider: an environment is a local process group, like Nomad's `raw_exec`.
//!
//! - `spec.cmd` runs with a clean environment (`PATH`, `HOME`, `spec.env`) in its own process
//!   group (it leads it), with its working directory `<root>/<id>/work` and its output in
//!   `<root>/<id>/stdout.log` and `stderr.log`.
//! - It carries `LAPSE_ENVIRONMENT_ID` and `LAPSE_CONTROLLER` in its environment. Those markers,
//!   read back from `/proc/<pid>/environ`, are how a server that restarted (even after
//!   `kill -9`) finds the processes it started and re-adopts them: processes outlive the
//!   server, the markers outlive the `pid` file.
//! - Stop = SIGTERM to the group, SIGKILL after the grace period. Start = run `cmd` again.
//! - Resources are not enforced, so a spec that asks for them is refused.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lapse_core::model::{Endpoint, Spec};
use lapse_core::validate::FieldError;
use lapse_core::wire::{ExecResult, LogsView};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::{Instance, InstanceStatus, MAX_OUTPUT_BYTES, Provider, ProviderError, last_lines, tail_text};

const NAME: &str = "process";
const ENV_MARKER: &str = "LAPSE_ENVIRONMENT_ID";
const CONTROLLER_MARKER: &str = "LAPSE_CONTROLLER";
/// Present from just before a spawn until its `pid` file is written.
const SPAWNING: &str = "spawning";
/// The user-data file in an environment's directory (its path is in `LAPSE_USER_DATA`).
const USER_DATA_FILE: &str = "user-data";

/// Runs environments as local process groups under `root`.
#[derive(Clone, Debug)]
pub struct ProcessProvider {
    root: PathBuf,
    controller_id: String,
    exits: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// A live process group that leads an environment.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Leader {
    environment_id: String,
    pid: i32,
}

impl ProcessProvider {
    /// Keeps environments' directories under `root` (created if needed).
    pub fn new(root: impl Into<PathBuf>, controller_id: impl Into<String>) -> std::io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(ProcessProvider { root, controller_id: controller_id.into(), exits: None })
    }

    /// Sends the environment id on `exits` whenever a process this provider started exits,
    /// so the control plane learns of it at once rather than at the next sweep.
    pub fn with_exit_notifier(mut self, exits: tokio::sync::mpsc::UnboundedSender<String>) -> Self {
        self.exits = Some(exits);
        self
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The live leader of `id`'s group, if any.
    ///
    /// The `pid` file names the process spawned last. Only when a spawn may have been cut
    /// short by a crash (its `spawning` marker is still there) is `/proc` scanned, since the
    /// process may then run without a `pid` file.
    fn find(&self, id: &str) -> Option<Leader> {
        let dir = self.dir(id);
        if dir.join(SPAWNING).exists() {
            return self.scan().into_iter().find(|l| l.environment_id == id);
        }
        // `pid starttime`: the start time tells our process from a later one that reused the
        // pid, without reading its environment (which reads empty while it execs).
        let text = fs::read_to_string(dir.join("pid")).ok()?;
        let mut parts = text.split_whitespace();
        let pid: i32 = parts.next()?.parse().ok()?;
        let started: u64 = parts.next()?.parse().ok()?;
        let stat = Stat::of(pid)?;
        (stat.is_live_leader(pid) && stat.start_time == started).then(|| Leader { environment_id: id.to_owned(), pid })
    }

    /// Every live group leader in `/proc` that carries this controller's marker.
    fn scan(&self) -> Vec<Leader> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| self.leader_at(pid))
            .collect()
    }

    /// The environment led by `pid`, if `pid` is a live (not zombie) group leader of ours.
    fn leader_at(&self, pid: i32) -> Option<Leader> {
        if !Stat::of(pid)?.is_live_leader(pid) {
            return None;
        }
        let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
        let mut environment_id = None;
        let mut ours = false;
        for var in environ.split(|b| *b == 0) {
            let var = String::from_utf8_lossy(var);
            if let Some(v) = var.strip_prefix(ENV_MARKER).and_then(|r| r.strip_prefix('=')) {
                environment_id = Some(v.to_owned());
            } else if let Some(v) = var.strip_prefix(CONTROLLER_MARKER).and_then(|r| r.strip_prefix('=')) {
                ours = v == self.controller_id;
            }
        }
        Some(Leader { environment_id: environment_id.filter(|_| ours)?, pid })
    }

    /// Every environment directory (stopped) and live leader (running) of this controller.
    fn list_now(&self) -> Vec<Instance> {
        let mut found: BTreeMap<String, Instance> = BTreeMap::new();
        if let Ok(entries) = fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                if let Some(id) = entry.file_name().to_str().filter(|n| lapse_core::model::is_environment_id(n)) {
                    found.insert(
                        id.to_owned(),
                        Instance {
                            environment_id: id.to_owned(),
                            provider_ref: String::new(),
                            status: InstanceStatus::Stopped,
                            endpoints: vec![],
                            exit_code: read_exit_code(&entry.path()),
                            user_data_path: None,
                        },
                    );
                }
            }
        }
        for leader in self.scan() {
            found.insert(leader.environment_id.clone(), Self::instance(&leader.environment_id, leader.pid, &[]));
        }
        found.into_values().collect()
    }

    fn instance(id: &str, pid: i32, spec_ports: &[u16]) -> Instance {
        Instance {
            environment_id: id.to_owned(),
            provider_ref: pid.to_string(),
            status: InstanceStatus::Running,
            endpoints: endpoints(spec_ports),
            exit_code: None,
            user_data_path: None,
        }
    }

    fn spawn(&self, id: &str, spec: &Spec) -> Result<i32, ProviderError> {
        let dir = self.dir(id);
        let work = dir.join("work");
        fs::create_dir_all(&work).map_err(|e| failed("create", &e))?;
        let log = |name: &str| fs::OpenOptions::new().create(true).append(true).open(dir.join(name));
        let stdout = log("stdout.log").map_err(|e| failed("create", &e))?;
        let stderr = log("stderr.log").map_err(|e| failed("create", &e))?;
        let (program, args) = spec
            .cmd
            .split_first()
            .ok_or_else(|| ProviderError::Permanent { provider: NAME, message: "spec.cmd is empty".into() })?;
        let mut command = clean_command(&work, spec, program, args);
        if let Some(data) = &spec.user_data {
            fs::write(dir.join(USER_DATA_FILE), data).map_err(|e| failed("create", &e))?;
        }
        command
            .env(ENV_MARKER, id)
            .env(CONTROLLER_MARKER, &self.controller_id)
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false);
        fs::write(dir.join(SPAWNING), b"").map_err(|e| failed("create", &e))?;
        // A stale status would be taken for this run's.
        let _ = fs::remove_file(dir.join("exit_status"));
        let spawned = command.spawn();
        if spawned.is_err() {
            let _ = fs::remove_file(dir.join(SPAWNING));
        }
        let mut child = spawned.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                ProviderError::Permanent { provider: NAME, message: format!("cannot run {program:?}: {e}") }
            }
            _ => failed("create", &e),
        })?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).ok_or_else(|| ProviderError::Failed {
            provider: NAME,
            op: "create",
            message: "the process exited before its id was read".into(),
        })?;
        // Spawn returns after the exec, so the process and its start time are there to read.
        let started = Stat::of(pid).map_or(0, |s| s.start_time);
        fs::write(dir.join("pid"), format!("{pid} {started}")).map_err(|e| failed("create", &e))?;
        fs::remove_file(dir.join(SPAWNING)).map_err(|e| failed("create", &e))?;
        // Reap the child when it exits, and keep its status for whoever asks later.
        let status_file = dir.join("exit_status");
        let (exits, id) = (self.exits.clone(), id.to_owned());
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                let code = status.code().map_or_else(|| "signal".to_owned(), |c| c.to_string());
                if status_file.parent().is_some_and(Path::exists) {
                    let _ = fs::write(status_file, code);
                }
                if let Some(exits) = exits {
                    let _ = exits.send(id);
                }
            }
        });
        Ok(pid)
    }

    async fn kill_group(&self, leader: &Leader, grace: Duration) -> Result<(), ProviderError> {
        let group = Pid::from_raw(leader.pid);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !alive(leader.pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // Whatever is left of the group, leader or not, goes now.
        let _ = killpg(group, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(leader.pid) {
            if Instant::now() > deadline {
                return Err(ProviderError::Failed {
                    provider: NAME,
                    op: "stop",
                    message: format!("process group {} survived SIGKILL", leader.pid),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// `program args` in `work` with a clean environment: `PATH`, `HOME` (= `work`), the spec's
/// variables and `LAPSE_USER_DATA` if it has user data; nothing of the server's own (which
/// may hold secrets); no stdin.
fn clean_command(work: &Path, spec: &Spec, program: &str, args: &[String]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))
        .env("HOME", work)
        .envs(&spec.env)
        .current_dir(work)
        .stdin(Stdio::null());
    if spec.user_data.is_some()
        && let Some(dir) = work.parent()
    {
        command.env(crate::USER_DATA_ENV, dir.join(USER_DATA_FILE));
    }
    command
}

/// Runs blocking filesystem work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
) -> Result<T, ProviderError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ProviderError::Failed {
        provider: NAME,
        op: "io",
        message: e.to_string(),
    })?
}

/// What the process provider needs of a spec.
pub fn validate(spec: &Spec) -> Result<(), FieldError> {
    let refuse = |field: &str, message: &str| Err(FieldError { field: field.into(), message: message.into() });
    if spec.cmd.is_empty() {
        return refuse("spec.cmd", "the process provider needs a command to run");
    }
    if spec.image.is_some() {
        return refuse("spec.image", "the process provider runs spec.cmd on the host and takes no image");
    }
    if spec.resources.is_some() {
        return refuse("spec.resources", "the process provider cannot enforce resources; leave them out or use docker");
    }
    Ok(())
}

fn failed(op: &'static str, e: &std::io::Error) -> ProviderError {
    ProviderError::Failed { provider: NAME, op, message: e.to_string() }
}

fn alive(pid: i32) -> bool {
    Stat::of(pid).is_some_and(|s| s.is_live_leader(pid))
}

/// What `/proc/<pid>/stat` says of a process.
struct Stat {
    state: char,
    pgrp: i32,
    /// Clock ticks after boot at which it started.
    start_time: u64,
}

impl Stat {
    fn of(pid: i32) -> Option<Stat> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses and may hold anything.
        let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
        Some(Stat {
            state: fields.first()?.chars().next()?,
            pgrp: fields.get(2)?.parse().ok()?,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }

    /// Alive (not a zombie) and leading its own process group.
    fn is_live_leader(&self, pid: i32) -> bool {
        !matches!(self.state, 'Z' | 'X') && self.pgrp == pid
    }
}

fn endpoints(ports: &[u16]) -> Vec<Endpoint> {
    ports
        .iter()
        .map(|p| Endpoint { container_port: *p, protocol: "tcp".into(), host: "127.0.0.1".into(), port: *p })
        .collect()
}

#[async_trait]
impl Provider for ProcessProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate(&self, spec: &Spec) -> Result<(), FieldError> {
        validate(spec)
    }

    async fn health(&self) -> Result<String, ProviderError> {
        Ok(format!("local processes under {}", self.root.display()))
    }

    async fn ensure_running(&self, environment_id: &str, spec: &Spec) -> Result<Instance, ProviderError> {
        // Directory and file creation and `/proc` reads block: keep them off the runtime's
        // worker threads, which serve the API.
        let (this, id, spec) = (self.clone(), environment_id.to_owned(), spec.clone());
        blocking(move || {
            let pid = match this.find(&id) {
                Some(leader) => leader.pid,
                None => this.spawn(&id, &spec)?,
            };
            let mut instance = Self::instance(&id, pid, &spec.ports);
            instance.user_data_path =
                spec.user_data.as_ref().map(|_| this.dir(&id).join(USER_DATA_FILE).to_string_lossy().into_owned());
            Ok(instance)
        })
        .await
    }

    async fn stop(&self, environment_id: &str, grace: Duration) -> Result<(), ProviderError> {
        let (this, id) = (self.clone(), environment_id.to_owned());
        match blocking(move || Ok(this.find(&id))).await? {
            Some(leader) => self.kill_group(&leader, grace).await,
            None => Ok(()),
        }
    }

    async fn delete(&self, environment_id: &str, grace: Duration) -> Result<(), ProviderError> {
        self.stop(environment_id, grace).await?;
        let dir = self.dir(environment_id);
        blocking(move || {
            // The reaper of a process just killed may still write its exit status here.
            let mut tries = 0;
            loop {
                match fs::remove_dir_all(&dir) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && tries < 20 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(failed("delete", &e)),
                }
            }
        })
        .await
    }

    async fn inspect(&self, environment_id: &str) -> Result<Option<Instance>, ProviderError> {
        if let Some(leader) = self.find(environment_id) {
            return Ok(Some(Self::instance(environment_id, leader.pid, &[])));
        }
        Ok(self.dir(environment_id).is_dir().then(|| Instance {
            environment_id: environment_id.to_owned(),
            provider_ref: String::new(),
            status: InstanceStatus::Stopped,
            endpoints: vec![],
            exit_code: read_exit_code(&self.dir(environment_id)),
            user_data_path: None,
        }))
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let this = self.clone();
        blocking(move || Ok(this.list_now())).await
    }

    async fn exec(
        &self,
        environment_id: &str,
        spec: &Spec,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, ProviderError> {
        let Some((program, args)) = cmd.split_first() else {
            return Err(ProviderError::Permanent { provider: NAME, message: "exec needs a command".into() });
        };
        let work = self.dir(environment_id).join("work");
        // No markers: an exec is not the environment's leader.
        let mut command = clean_command(&work, spec, program, args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
        let child = command.spawn().map_err(|e| ProviderError::Permanent {
            provider: NAME,
            message: format!("cannot run {program:?}: {e}"),
        })?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => Ok(ExecResult {
                exit_code: out.status.code().map(i64::from),
                stdout: tail_text(&out.stdout, MAX_OUTPUT_BYTES),
                stderr: tail_text(&out.stderr, MAX_OUTPUT_BYTES),
                timed_out: false,
            }),
            Ok(Err(e)) => Err(failed("exec", &e)),
            Err(_) => {
                if let Some(pid) = pid {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                Ok(ExecResult { exit_code: None, stdout: String::new(), stderr: String::new(), timed_out: true })
            }
        }
    }

    async fn logs(&self, environment_id: &str, tail_lines: usize) -> Result<LogsView, ProviderError> {
        let dir = self.dir(environment_id);
        if !dir.is_dir() {
            return Err(ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() });
        }
        let read = |name: &str| last_lines(&tail_text(&read_tail(&dir.join(name)), MAX_OUTPUT_BYTES), tail_lines);
        Ok(LogsView { stdout: read("stdout.log"), stderr: read("stderr.log") })
    }
}

/// The exit code its reaper recorded, if this server started the process and it exited.
fn read_exit_code(dir: &Path) -> Option<i64> {
    fs::read_to_string(dir.join("exit_status")).ok()?.trim().parse().ok()
}

/// The last [`MAX_OUTPUT_BYTES`] of a file, or nothing.
fn read_tail(path: &Path) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX_OUTPUT_BYTES as u64)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cmd: &[&str]) -> Spec {
        Spec { provider: NAME.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[tokio::test]
    async fn run_find_exec_logs_stop_delete() {
        let dir = tempfile::tempdir().unwrap();
        let p = ProcessProvider::new(dir.path(), "ctl-test-1").unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let s = spec(&["sh", "-c", "echo started; echo oops >&2; exec sleep 30"]);
        let first = p.ensure_running(id, &s).await.unwrap();
        // Idempotent: the same process comes back.
        let again = p.ensure_running(id, &s).await.unwrap();
        assert_eq!(first.provider_ref, again.provider_ref);

        // Another controller's provider does not see it.
        let other = ProcessProvider::new(dir.path(), "ctl-test-2").unwrap();
        assert!(other.scan().iter().all(|l| l.environment_id != id));
        assert_eq!(p.list().await.unwrap().iter().filter(|i| i.status == InstanceStatus::Running).count(), 1);

        let out = p
            .exec(
                id,
                &s,
                &["sh".into(), "-c".into(), "pwd; echo $LAPSE_ENVIRONMENT_ID; exit 3".into()],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(3));
        assert!(out.stdout.ends_with("/work\n\n"), "{out:?}");

        tokio::time::sleep(Duration::from_millis(100)).await;
        let logs = p.logs(id, 10).await.unwrap();
        assert_eq!((logs.stdout.as_str(), logs.stderr.as_str()), ("started\n", "oops\n"));

        let timed = p.exec(id, &s, &["sleep".into(), "10".into()], Duration::from_millis(200)).await.unwrap();
        assert!(timed.timed_out && timed.exit_code.is_none());

        p.stop(id, Duration::from_secs(2)).await.unwrap();
        assert!(p.find(id).is_none());
        assert_eq!(p.inspect(id).await.unwrap().unwrap().status, InstanceStatus::Stopped);
        p.delete(id, Duration::from_secs(1)).await.unwrap();
        assert_eq!(p.inspect(id).await.unwrap(), None);
        p.delete(id, Duration::from_secs(1)).await.unwrap();
    }

    /// A crash between the spawn and the `pid` file: the marker makes `find` scan `/proc`, so
    /// the process is found (and not spawned twice).
    #[tokio::test]
    async fn a_spawn_cut_short_is_found_by_its_markers() {
        let dir = tempfile::tempdir().unwrap();
        let p = ProcessProvider::new(dir.path(), "ctl-test-5").unwrap();
        let id = "3123456789abcdef0123456789abcdef";
        let first = p.ensure_running(id, &spec(&["sleep", "30"])).await.unwrap();
        fs::remove_file(dir.path().join(id).join("pid")).unwrap();
        assert_eq!(p.find(id), None, "without the marker, no pid file means no process");
        fs::write(dir.path().join(id).join(SPAWNING), b"").unwrap();
        let again = p.ensure_running(id, &spec(&["sleep", "30"])).await.unwrap();
        assert_eq!(again.provider_ref, first.provider_ref);
        p.delete(id, Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn a_process_that_ignores_sigterm_is_killed_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let p = ProcessProvider::new(dir.path(), "ctl-test-3").unwrap();
        let id = "1123456789abcdef0123456789abcdef";
        p.ensure_running(id, &spec(&["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        p.stop(id, Duration::from_millis(300)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(p.find(id).is_none());
    }

    #[tokio::test]
    async fn a_missing_program_is_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let p = ProcessProvider::new(dir.path(), "ctl-test-4").unwrap();
        let err = p.ensure_running("2123456789abcdef0123456789abcdef", &spec(&["/no/such/program"])).await.unwrap_err();
        assert!(!err.is_retryable(), "{err}");
    }
}

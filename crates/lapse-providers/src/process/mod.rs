//! The `process` provider: an environment is a local process tree, like Nomad's `raw_exec`,
//! made safe to hand to a tenant.
//!
//! Layout: `<root>/<id>/` (`0700 root`) holds `pid`, `uid`, `exit_status`, the logs and
//! `user-data`; `<root>/<id>/work` (`0700`, the environment's uid) is its working directory
//! and `HOME`. `spec.cmd` runs with a clean environment (`PATH`, `HOME`, `spec.env`,
//! `LAPSE_USER_DATA` if it has user data), nothing of the server's own.
//!
//! With a helper program (the server's own binary, [`ProcessProvider::with_helper`]):
//! - **A supervisor leads each environment** ([`helper`]): it joins the environment's
//!   cgroup first, pumps its output into capped, rotated logs ([`logs`], 10 MiB per stream
//!   and one rotated file), records how the command ended, and outlives the server.
//! - **Isolation** (on when the server runs as root; [`ProcessProvider::with_isolation`]):
//!   a uid of its own, new mount, PID, IPC and UTS namespaces, a fresh `/proc`, the data dir
//!   hidden ([`isolation`]).
//! - **Resources are enforced** by a cgroup per environment ([`cgroup`]): `vcpu`, `mem_mb`
//!   (swap included) and a pids limit. `disk_gb` cannot be enforced on a shared filesystem and
//!   is refused. A spec with resources is refused only where no cgroup is writable.
//! - **Stop** = SIGTERM to the leader's group and to every task in the cgroup, then, after the
//!   grace period, freeze the cgroup and SIGKILL all of it: children that left the group or
//!   called `setsid` go too. A stopped environment runs nothing: whatever outlived its leader
//!   is killed when the leader's exit is seen, and by [`Provider::collect_garbage`].
//! - **Re-adoption**: processes outlive the server. A restarted server (even after `kill -9`)
//!   finds each leader by its `pid` file (pid and start time) and cgroup; `list` also reports
//!   cgroups whose environment directory is gone, so the sweep removes them as orphans.
//!
//! Without a helper program (a library user that has none): the command itself leads a
//! process group, writes its logs directly, nothing is isolated and resources are refused.

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

use crate::{Instance, InstanceStatus, MAX_OUTPUT_BYTES, Placement, Provider, ProviderError, last_lines};

mod archive;
pub mod cgroup;
pub mod helper;
pub mod isolation;
pub mod logs;
mod spawn;
mod terminal;

use cgroup::{Cgroups, EnvCgroup, Limits};
use helper::{ExecJob, ExitRecord, Launch, Program};
use spawn::{CONTROLLER_MARKER, ENV_MARKER, Leader, Stat, alive};

const NAME: &str = "process";
/// Present from just before a spawn until its `pid` file is written.
const SPAWNING: &str = "spawning";
/// The user-data file in an environment's directory (its path is in `LAPSE_USER_DATA`).
const USER_DATA_FILE: &str = "user-data";

/// Runs environments as local process trees under `root`.
#[derive(Clone, Debug)]
pub struct ProcessProvider {
    root: PathBuf,
    controller_id: String,
    exits: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// The program that runs the helper roles (see [`helper`]).
    helper: Option<PathBuf>,
    /// The cgroups, or why there are none.
    cgroups: Result<Cgroups, String>,
    isolate: bool,
}

impl ProcessProvider {
    /// Keeps environments' directories under `root` (created if needed).
    pub fn new(root: impl Into<PathBuf>, controller_id: impl Into<String>) -> std::io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(ProcessProvider {
            root,
            controller_id: controller_id.into(),
            exits: None,
            helper: None,
            cgroups: Err("no helper program is configured".into()),
            isolate: false,
        })
    }

    /// Runs environments through `program` (the server's own binary, which calls
    /// [`helper::run_if_helper`] first thing): supervised, capped logs, cgroups where
    /// writable, and isolation when the server runs as root.
    pub fn with_helper(mut self, program: impl Into<PathBuf>) -> Self {
        self.helper = Some(program.into());
        self.cgroups = Cgroups::detect(&self.controller_id);
        self.isolate = isolation::available().is_ok() && self.cgroups.is_ok();
        if self.isolate {
            // Only root traverses the provider's directory; environments see theirs through
            // their mount namespace.
            let _ = isolation::secure_dir(&self.root, 0o700, None);
        }
        self
    }

    /// Turns isolation off (or on, where it is available).
    pub fn with_isolation(mut self, on: bool) -> Self {
        self.isolate = on && self.helper.is_some() && isolation::available().is_ok() && self.cgroups.is_ok();
        self
    }

    /// Sends the environment id on `exits` whenever a process this provider started exits,
    /// so the control plane learns of it at once rather than at the next sweep.
    pub fn with_exit_notifier(mut self, exits: tokio::sync::mpsc::UnboundedSender<String>) -> Self {
        self.exits = Some(exits);
        self
    }

    /// Whether environments are isolated (see [`isolation`]).
    pub fn isolated(&self) -> bool {
        self.isolate
    }

    /// The cgroup of an environment, when cgroups are on.
    pub fn cgroup_of(&self, id: &str) -> Option<EnvCgroup> {
        self.cgroups.as_ref().ok().map(|c| c.of(id))
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The live leader of `id`, if any.
    fn find(&self, id: &str) -> Option<Leader> {
        let dir = self.dir(id);
        if dir.join(SPAWNING).exists() {
            return spawn::scan(&self.controller_id).into_iter().find(|l| l.environment_id == id);
        }
        let (pid, started) = spawn::parse_pid_file(&fs::read_to_string(dir.join("pid")).ok()?)?;
        let stat = Stat::of(pid)?;
        let in_cgroup = self.cgroup_of(id).is_none_or(|c| c.contains(pid));
        (stat.is_live_leader(pid) && stat.start_time == started && in_cgroup)
            .then(|| Leader { environment_id: id.to_owned(), pid })
    }

    /// Every environment directory (stopped), cgroup and live leader (running) of this
    /// controller. A cgroup with processes but no leader is reported running, so that the
    /// sweep removes it when no record wants it.
    fn list_now(&self) -> Vec<Instance> {
        let mut found: BTreeMap<String, Instance> = BTreeMap::new();
        if let Ok(entries) = fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                if let Some(id) = entry.file_name().to_str().filter(|n| lapse_core::model::is_environment_id(n)) {
                    found.insert(id.to_owned(), stopped(id, read_exit(&entry.path())));
                }
            }
        }
        if let Ok(cgroups) = &self.cgroups {
            for id in cgroups.environments() {
                if let std::collections::btree_map::Entry::Vacant(slot) = found.entry(id) {
                    let cgroup = cgroups.of(slot.key());
                    // Without its directory and with nothing in it, a cgroup holds nothing:
                    // it is not the environment's resource (that vanished), just a husk.
                    if cgroup.tasks().is_empty() {
                        let _ = cgroup.remove();
                        continue;
                    }
                    // Processes run that no environment directory accounts for: an orphan.
                    let mut instance = stopped(slot.key(), None);
                    instance.status = InstanceStatus::Running;
                    slot.insert(instance);
                }
            }
        }
        for leader in spawn::scan(&self.controller_id) {
            found.insert(leader.environment_id.clone(), running(&leader.environment_id, leader.pid, &[]));
        }
        found.into_values().collect()
    }

    /// The clean environment of the command and of `exec`s.
    fn command_env(&self, id: &str, spec: &Spec) -> BTreeMap<String, String> {
        let work = self.dir(id).join("work");
        let mut env = BTreeMap::from([
            ("PATH".to_owned(), std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())),
            ("HOME".to_owned(), work.to_string_lossy().into_owned()),
            // Pre-expiry warnings land here (the server writes it through `put_archive`).
            (crate::NOTICE_ENV.to_owned(), work.join(".lapse/notice").to_string_lossy().into_owned()),
        ]);
        env.extend(spec.env.clone());
        if spec.user_data.is_some() {
            env.insert(crate::USER_DATA_ENV.into(), self.dir(id).join(USER_DATA_FILE).to_string_lossy().into_owned());
        }
        env
    }

    /// The working directory of an environment, where its absolute paths are.
    fn workspace_root(&self, id: &str) -> Result<PathBuf, ProviderError> {
        let work = self.dir(id).join("work");
        if !work.is_dir() {
            return Err(ProviderError::NotFound { provider: NAME, environment_id: id.to_owned() });
        }
        Ok(work)
    }

    fn user_of(&self, id: &str) -> Option<(u32, u32)> {
        if !self.isolate {
            return None;
        }
        let uid: u32 = fs::read_to_string(self.dir(id).join("uid")).ok()?.trim().parse().ok()?;
        Some((uid, uid))
    }

    /// Directories, uid, cgroup and user data of a spawn, and the supervisor's job.
    fn prepare(&self, id: &str, spec: &Spec) -> Result<Launch, ProviderError> {
        let dir = self.dir(id);
        let work = dir.join("work");
        let io = |e: std::io::Error| failed("create", &e);
        isolation::secure_dir(&dir, 0o700, None).map_err(io)?;
        let user = if self.isolate {
            let uid = isolation::uid_for(&dir, id).map_err(io)?;
            Some((uid, uid))
        } else {
            None
        };
        isolation::secure_dir(&work, 0o700, user).map_err(io)?;
        if let Some(data) = &spec.user_data {
            let path = dir.join(USER_DATA_FILE);
            fs::write(&path, data).map_err(io)?;
            if let Some((_, gid)) = user {
                nix::unistd::chown(&path, None, Some(gid.into())).map_err(|e| io(e.into()))?;
            }
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).map_err(io)?;
        }
        let cgroup = self.cgroup_of(id);
        if let Some(cgroup) = &cgroup {
            let resources = spec.resources.clone().unwrap_or_default();
            cgroup.create(Limits { vcpu: resources.vcpu, mem_mb: resources.mem_mb }).map_err(io)?;
        }
        let jail = user.map(|(uid, gid)| isolation::Jail {
            uid,
            gid,
            hostname: format!("lapse-{}", &id[..id.len().min(12)]),
            hide: self.hidden_dirs(),
            private: isolation::PRIVATE_DIRS.iter().map(PathBuf::from).collect(),
            binds: std::iter::once(isolation::Bind { path: work.clone(), read_only: false })
                .chain(
                    spec.user_data
                        .as_ref()
                        .map(|_| isolation::Bind { path: dir.join(USER_DATA_FILE), read_only: true }),
                )
                .collect(),
        });
        fs::write(dir.join(SPAWNING), b"").map_err(io)?;
        // A stale status would be taken for this run's.
        let _ = fs::remove_file(dir.join(helper::EXIT_STATUS_FILE));
        Ok(Launch {
            command: Program { argv: spec.cmd.clone(), env: self.command_env(id, spec), cwd: work, user },
            dir,
            cgroup,
            log_cap: logs::LOG_CAP_BYTES,
            jail,
        })
    }

    /// What environments must not see: the server's data dir (the provider root's parent,
    /// unless that is `/`) and the provider root.
    fn hidden_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.root.clone()];
        if let Some(parent) = self.root.parent().filter(|p| p.parent().is_some()) {
            dirs.insert(0, parent.to_owned());
        }
        dirs
    }

    async fn spawn(&self, id: &str, spec: &Spec) -> Result<i32, ProviderError> {
        let (this, owned_id, owned_spec) = (self.clone(), id.to_owned(), spec.clone());
        let launch = blocking(move || this.prepare(&owned_id, &owned_spec)).await?;
        let dir = launch.dir.clone();
        let result = match &self.helper {
            Some(helper) => {
                let mut command = tokio::process::Command::new(helper);
                command
                    .args([helper::HELPER_ARG, "supervise"])
                    .env_clear()
                    .env(ENV_MARKER, id)
                    .env(CONTROLLER_MARKER, &self.controller_id)
                    .current_dir(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .kill_on_drop(false);
                spawn::start_helper(command, &launch, "create").await
            }
            None => self.spawn_direct(&launch),
        };
        let child = match result {
            Ok(child) => child,
            Err(e) => {
                let _ = fs::remove_file(dir.join(SPAWNING));
                return Err(e);
            }
        };
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).ok_or_else(|| ProviderError::Failed {
            provider: NAME,
            op: "create",
            message: "the process exited before its id was read".into(),
        })?;
        let started = Stat::of(pid).map_or(0, |s| s.start_time);
        fs::write(dir.join("pid"), format!("{pid} {started}")).map_err(|e| failed("create", &e))?;
        fs::remove_file(dir.join(SPAWNING)).map_err(|e| failed("create", &e))?;
        self.reap(id, child, pid, started);
        Ok(pid)
    }

    /// Without a helper: the command leads its own group and writes its logs directly.
    fn spawn_direct(&self, launch: &Launch) -> Result<tokio::process::Child, ProviderError> {
        let log = |name: &str| fs::OpenOptions::new().create(true).append(true).open(launch.dir.join(name));
        let stdout = log("stdout.log").map_err(|e| failed("create", &e))?;
        let stderr = log("stderr.log").map_err(|e| failed("create", &e))?;
        let (program, args) = launch
            .command
            .argv
            .split_first()
            .ok_or_else(|| ProviderError::Permanent { provider: NAME, message: "spec.cmd is empty".into() })?;
        tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .envs(&launch.command.env)
            .env(ENV_MARKER, launch.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
            .env(CONTROLLER_MARKER, &self.controller_id)
            .current_dir(&launch.command.cwd)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    ProviderError::Permanent { provider: NAME, message: format!("cannot run {program:?}: {e}") }
                }
                _ => failed("create", &e),
            })
    }

    /// Reaps the leader when it exits: records its status if it could not (killed), kills
    /// what it left in its cgroup, and tells the control plane.
    fn reap(&self, id: &str, mut child: tokio::process::Child, pid: i32, started: u64) {
        let (this, id) = (self.clone(), id.to_owned());
        tokio::spawn(async move {
            let Ok(status) = child.wait().await else { return };
            let this2 = this.clone();
            let id2 = id.clone();
            let _ = blocking(move || {
                let dir = this2.dir(&id2);
                if !dir.is_dir() {
                    return Ok(());
                }
                if !dir.join(helper::EXIT_STATUS_FILE).exists()
                    && let Ok(handle) = fs::File::open(&dir)
                {
                    use std::os::unix::process::ExitStatusExt;
                    let record = match (status.code(), status.signal()) {
                        (Some(code), _) => ExitRecord { code: Some(i64::from(code)), reason: None },
                        (None, signal) => ExitRecord {
                            code: None,
                            reason: signal.map(|s| format!("its supervisor was killed by signal {s}")),
                        },
                    };
                    helper::write_exit_record(&handle, &record);
                }
                // Unless a new run already took the environment over.
                let current = fs::read_to_string(dir.join("pid")).ok().and_then(|t| spawn::parse_pid_file(&t));
                if current == Some((pid, started))
                    && !dir.join(SPAWNING).exists()
                    && let Some(cgroup) = this2.cgroup_of(&id2)
                {
                    let _ = cgroup.kill_all(Duration::from_secs(5));
                }
                Ok(())
            })
            .await;
            if let Some(exits) = &this.exits {
                let _ = exits.send(id);
            }
        });
    }

    async fn kill(&self, id: &str, leader: Option<Leader>, grace: Duration) -> Result<(), ProviderError> {
        let cgroup = self.cgroup_of(id);
        if let Some(leader) = &leader {
            let _ = killpg(Pid::from_raw(leader.pid), Signal::SIGTERM);
            if let Some(cgroup) = &cgroup {
                cgroup.signal_all(Signal::SIGTERM);
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && alive(leader.pid) {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            // Whatever is left of the group, leader or not, goes now.
            let _ = killpg(Pid::from_raw(leader.pid), Signal::SIGKILL);
        }
        if let Some(cgroup) = cgroup {
            blocking(move || cgroup.kill_all(Duration::from_secs(10)).map_err(|e| failed("stop", &e))).await?;
        }
        if let Some(leader) = &leader {
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
        }
        Ok(())
    }

    /// What the exec helper needs to run `command` inside environment `id` (its cgroup, and
    /// the leader whose namespaces to join when isolated).
    fn exec_job(&self, id: &str, command: Program) -> Result<ExecJob, ProviderError> {
        let leader = if self.isolate {
            let leader = self.find(id).ok_or_else(|| ProviderError::Failed {
                provider: NAME,
                op: "exec",
                message: "the environment is not running".into(),
            })?;
            let started = Stat::of(leader.pid).map_or(0, |s| s.start_time);
            Some((leader.pid, started))
        } else {
            None
        };
        Ok(ExecJob { command, cgroup: self.cgroup_of(id), leader, tty: false })
    }

    /// The command that runs an `exec`: through the exec helper (the environment's cgroup,
    /// namespaces and uid), or directly without one.
    async fn exec_command(
        &self,
        id: &str,
        spec: &Spec,
        cmd: &[String],
    ) -> Result<tokio::process::Child, ProviderError> {
        let command = Program {
            argv: cmd.to_vec(),
            env: self.command_env(id, spec),
            cwd: self.dir(id).join("work"),
            user: self.user_of(id),
        };
        let Some(helper) = &self.helper else {
            let Some((program, args)) = cmd.split_first() else {
                return Err(ProviderError::Permanent { provider: NAME, message: "exec needs a command".into() });
            };
            return tokio::process::Command::new(program)
                .args(args)
                .env_clear()
                .envs(&command.env)
                .current_dir(&command.cwd)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| ProviderError::Permanent {
                    provider: NAME,
                    message: format!("cannot run {program:?}: {e}"),
                });
        };
        let job = self.exec_job(id, command)?;
        let mut process = tokio::process::Command::new(helper);
        process
            .args([helper::HELPER_ARG, "exec"])
            .env_clear()
            .current_dir("/")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        spawn::start_helper(process, &job, "exec").await
    }
}

fn stopped(id: &str, exit: Option<ExitRecord>) -> Instance {
    let exit = exit.unwrap_or_default();
    Instance {
        environment_id: id.to_owned(),
        provider_ref: String::new(),
        status: InstanceStatus::Stopped,
        endpoints: vec![],
        exit_code: exit.code,
        user_data_path: None,
        addresses: vec![],
        exit_reason: exit.reason,
        keep: false,
    }
}

fn running(id: &str, pid: i32, spec_ports: &[u16]) -> Instance {
    Instance {
        environment_id: id.to_owned(),
        provider_ref: pid.to_string(),
        status: InstanceStatus::Running,
        endpoints: endpoints(spec_ports),
        exit_code: None,
        user_data_path: None,
        addresses: vec![],
        exit_reason: None,
        keep: false,
    }
}

fn read_exit(dir: &Path) -> Option<ExitRecord> {
    helper::read_exit_record(dir)
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

/// What the process provider needs of a spec, by the spec alone (see also the provider's
/// own check, which knows whether cgroups are writable here).
pub fn validate(spec: &Spec) -> Result<(), FieldError> {
    let refuse = |field: &str, message: &str| Err(FieldError { field: field.into(), message: message.into() });
    if spec.cmd.is_empty() {
        return refuse("spec.cmd", "the process provider needs a command to run");
    }
    if spec.image.is_some() {
        return refuse("spec.image", "the process provider runs spec.cmd on the host and takes no image");
    }
    crate::refuse_cloud(spec, NAME)?;
    if spec.resources.as_ref().is_some_and(|r| r.disk_gb.is_some()) {
        return refuse(
            "spec.resources.disk_gb",
            "the process provider cannot limit disk (its environments share the host's filesystem); leave disk_gb out or use docker",
        );
    }
    Ok(())
}

fn failed(op: &'static str, e: &std::io::Error) -> ProviderError {
    ProviderError::Failed { provider: NAME, op, message: e.to_string() }
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

    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities {
            exec: true,
            logs: true,
            stop_keeps_disk: true,
            terminal: self.helper.is_some(),
            local: true,
            ..crate::Capabilities::default()
        }
    }

    fn validate(&self, spec: &Spec) -> Result<(), FieldError> {
        validate(spec)?;
        if spec.resources.as_ref().is_some_and(|r| r.vcpu.is_some() || r.mem_mb.is_some())
            && let Err(why) = &self.cgroups
        {
            return Err(FieldError {
                field: "spec.resources".into(),
                message: format!(
                    "the process provider cannot enforce resources here: {why}; leave them out or use docker"
                ),
            });
        }
        Ok(())
    }

    async fn health(&self) -> Result<String, ProviderError> {
        let cgroups = match &self.cgroups {
            Ok(c) => c.describe(),
            Err(why) => format!("no cgroups ({why})"),
        };
        let isolation = if self.isolate { "isolated (own uid, namespaces)" } else { "NOT isolated" };
        Ok(format!("local processes under {}; {isolation}; {cgroups}", self.root.display()))
    }

    async fn ensure_running(
        &self,
        environment_id: &str,
        _placement: &Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError> {
        let (this, id) = (self.clone(), environment_id.to_owned());
        let pid = match blocking(move || Ok(this.find(&id))).await? {
            Some(leader) => leader.pid,
            None => {
                // Whatever a former run left in the cgroup goes before the new one starts.
                if let Some(cgroup) = self.cgroup_of(environment_id) {
                    blocking(move || cgroup.kill_all(Duration::from_secs(10)).map_err(|e| failed("create", &e)))
                        .await?;
                }
                self.spawn(environment_id, spec).await?
            }
        };
        let mut instance = running(environment_id, pid, &spec.ports);
        instance.user_data_path = spec
            .user_data
            .as_ref()
            .map(|_| self.dir(environment_id).join(USER_DATA_FILE).to_string_lossy().into_owned());
        Ok(instance)
    }

    async fn stop(&self, environment_id: &str, grace: Duration) -> Result<(), ProviderError> {
        let (this, id) = (self.clone(), environment_id.to_owned());
        let leader = blocking(move || Ok(this.find(&id))).await?;
        self.kill(environment_id, leader, grace).await
    }

    async fn delete(&self, environment_id: &str, grace: Duration) -> Result<(), ProviderError> {
        self.stop(environment_id, grace).await?;
        let (dir, cgroup) = (self.dir(environment_id), self.cgroup_of(environment_id));
        blocking(move || {
            if let Some(cgroup) = cgroup {
                cgroup.remove().map_err(|e| failed("delete", &e))?;
            }
            isolation::release_uid(&dir);
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
        let (this, id) = (self.clone(), environment_id.to_owned());
        blocking(move || {
            if let Some(leader) = this.find(&id) {
                return Ok(Some(running(&id, leader.pid, &[])));
            }
            let dir = this.dir(&id);
            Ok(dir.is_dir().then(|| stopped(&id, read_exit(&dir))))
        })
        .await
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let this = self.clone();
        blocking(move || Ok(this.list_now())).await
    }

    async fn collect_garbage(&self) -> Result<usize, ProviderError> {
        let this = self.clone();
        blocking(move || {
            let Ok(cgroups) = &this.cgroups else { return Ok(0) };
            let mut killed = 0;
            for id in cgroups.environments() {
                let dir = this.dir(&id);
                // Spawning, or without a directory (an orphan the sweep removes by `list`).
                if !dir.is_dir() || dir.join(SPAWNING).exists() || this.find(&id).is_some() {
                    continue;
                }
                let cgroup = cgroups.of(&id);
                let left = cgroup.tasks().len();
                if left > 0 {
                    cgroup.kill_all(Duration::from_secs(10)).map_err(|e| failed("collect", &e))?;
                    tracing::warn!(environment = %id, processes = left, "killed processes that outlived their environment's leader");
                    killed += left;
                }
            }
            Ok(killed)
        })
        .await
    }

    async fn exec(
        &self,
        environment_id: &str,
        spec: &Spec,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, ProviderError> {
        if cmd.is_empty() {
            return Err(ProviderError::Permanent { provider: NAME, message: "exec needs a command".into() });
        }
        let child = self.exec_command(environment_id, spec, cmd).await?;
        let out = spawn::capture(child, timeout).await?;
        Ok(ExecResult { exit_code: out.exit_code, stdout: out.stdout, stderr: out.stderr, timed_out: out.timed_out })
    }

    async fn open_terminal(
        &self,
        environment_id: &str,
        spec: &Spec,
        size: crate::terminal::TermSize,
    ) -> Result<crate::terminal::Terminal, ProviderError> {
        self.terminal(environment_id, spec, size).await
    }

    async fn get_archive(
        &self,
        environment_id: &str,
        _spec: &Spec,
        dir: &str,
    ) -> Result<crate::archive::ArchiveStream, ProviderError> {
        let work = self.workspace_root(environment_id)?;
        Ok(archive::get(work, dir.to_owned()))
    }

    async fn put_archive(
        &self,
        environment_id: &str,
        _spec: &Spec,
        dest: &str,
        tar: crate::archive::ArchiveStream,
    ) -> Result<(), ProviderError> {
        let work = self.workspace_root(environment_id)?;
        let owner = self.user_of(environment_id);
        archive::put(work, dest.to_owned(), owner, tar).await.map_err(|e| ProviderError::Failed {
            provider: NAME,
            op: "put_archive",
            message: e.to_string(),
        })
    }

    async fn logs(&self, environment_id: &str, tail_lines: usize) -> Result<LogsView, ProviderError> {
        let dir = self.dir(environment_id);
        if !dir.is_dir() {
            return Err(ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() });
        }
        blocking(move || {
            let read = |name: &str| {
                let bytes = logs::read_tail(&dir.join(name));
                last_lines(&String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(MAX_OUTPUT_BYTES)..]), tail_lines)
            };
            Ok(LogsView { stdout: read("stdout.log"), stderr: read("stderr.log") })
        })
        .await
    }
}

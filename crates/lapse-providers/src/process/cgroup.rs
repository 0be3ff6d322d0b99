//! One cgroup per process environment: its limits, its membership, and how everything in it
//! is killed.
//!
//! - **Where**: cgroup v2 when `/sys/fs/cgroup` is the unified hierarchy with the `cpu`,
//!   `memory` and `pids` controllers; else the v1 hierarchies `cpu`, `cpuacct`, `memory`,
//!   `pids` and `freezer` (each where mounted). An environment's cgroup is
//!   `<hierarchy>/lapse/<controller id>/<environment id>` in each: the environment id names
//!   it, so a restarted server finds it (and the sweep finds one whose environment is gone).
//! - **Limits**: `vcpu` → `cpu.cfs_quota_us` over a 100 ms `cpu.cfs_period_us` (v2:
//!   `cpu.max`); `mem_mb` → `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes` (swap
//!   included, where swap accounting is on; v2: `memory.max`, `memory.swap.max = 0`); always
//!   `pids.max` ([`PIDS_MAX`]).
//! - **Kill**: freeze (so nothing forks meanwhile), SIGKILL every task, thaw, wait until the
//!   cgroup is empty (v2: `cgroup.kill` where the kernel has it). Children that left the
//!   process group or called `setsid` are in the cgroup all the same.
//!
//! Everything here is blocking file I/O on cgroupfs; callers run it off the async runtime.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Tasks (processes and threads) an environment may have at once.
pub const PIDS_MAX: u64 = 1024;
/// `cpu.cfs_period_us`: the quota is a share of this.
const CPU_PERIOD_US: u64 = 100_000;
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Limits to write into an environment's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub vcpu: Option<f64>,
    pub mem_mb: Option<u64>,
}

/// The cgroup hierarchies this provider uses, with its own subtree in each.
#[derive(Clone, Debug)]
pub struct Cgroups {
    v2: bool,
    /// `(controller, <mount>/lapse/<controller id>)`; for v2 one entry, `unified`.
    bases: Vec<(&'static str, PathBuf)>,
}

/// One environment's cgroup (a directory per hierarchy).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EnvCgroup {
    v2: bool,
    dirs: Vec<(String, PathBuf)>,
}

impl Cgroups {
    /// Finds writable hierarchies and makes this controller's subtree in each, or says why
    /// there is none.
    pub fn detect(controller_id: &str) -> Result<Cgroups, String> {
        Self::detect_at(Path::new(CGROUP_ROOT), controller_id)
    }

    fn detect_at(root: &Path, controller_id: &str) -> Result<Cgroups, String> {
        let sub = Path::new("lapse").join(controller_id);
        let unified = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| unified.split_whitespace().any(|x| x == c);
        let cgroups = if has("memory") && has("cpu") && has("pids") {
            // Controllers must be enabled for children at every level down to ours.
            let mut dir = root.to_owned();
            for part in sub.iter() {
                fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory +pids")
                    .map_err(|e| format!("cannot enable cgroup v2 controllers under {}: {e}", dir.display()))?;
                dir = dir.join(part);
                fs::create_dir_all(&dir).map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))?;
            }
            fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory +pids")
                .map_err(|e| format!("cannot enable cgroup v2 controllers under {}: {e}", dir.display()))?;
            Cgroups { v2: true, bases: vec![("unified", dir)] }
        } else {
            let mut bases = Vec::new();
            for controller in ["cpu", "cpuacct", "memory", "pids", "freezer"] {
                let mount = root.join(controller);
                if !mount.join("cgroup.procs").exists() {
                    continue;
                }
                let base = mount.join(&sub);
                fs::create_dir_all(&base).map_err(|e| format!("cannot create cgroup {}: {e}", base.display()))?;
                bases.push((controller, base));
            }
            for needed in ["cpu", "memory", "pids"] {
                if !bases.iter().any(|(c, _)| *c == needed) {
                    return Err(format!("no writable cgroup v2 hierarchy and no cgroup v1 `{needed}` controller"));
                }
            }
            Cgroups { v2: false, bases }
        };
        Ok(cgroups)
    }

    pub fn describe(&self) -> String {
        if self.v2 { "cgroup v2".into() } else { "cgroup v1".into() }
    }

    /// The cgroup of `id` (which may not exist yet).
    pub fn of(&self, id: &str) -> EnvCgroup {
        EnvCgroup { v2: self.v2, dirs: self.bases.iter().map(|(c, base)| ((*c).to_owned(), base.join(id))).collect() }
    }

    /// The environment ids that have a cgroup here.
    pub fn environments(&self) -> Vec<String> {
        let Some((_, base)) = self.bases.first() else { return Vec::new() };
        let Ok(entries) = fs::read_dir(base) else { return Vec::new() };
        entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| {
                e.file_name().to_str().filter(|n| lapse_core::model::is_environment_id(n)).map(str::to_owned)
            })
            .collect()
    }
}

impl EnvCgroup {
    /// Makes the cgroup (or keeps it) and writes the limits.
    pub fn create(&self, limits: Limits) -> io::Result<()> {
        for (_, dir) in &self.dirs {
            fs::create_dir_all(dir)?;
        }
        let quota = limits.vcpu.map(|v| ((v * CPU_PERIOD_US as f64) as u64).max(1_000));
        let memory = limits.mem_mb.map(|m| m.saturating_mul(1024 * 1024));
        if self.v2 {
            let dir = &self.dirs[0].1;
            let cpu = quota.map_or_else(|| format!("max {CPU_PERIOD_US}"), |q| format!("{q} {CPU_PERIOD_US}"));
            fs::write(dir.join("cpu.max"), cpu)?;
            fs::write(dir.join("memory.max"), memory.map_or_else(|| "max".to_owned(), |m| m.to_string()))?;
            if dir.join("memory.swap.max").exists() {
                fs::write(dir.join("memory.swap.max"), if memory.is_some() { "0" } else { "max" })?;
            }
            fs::write(dir.join("pids.max"), PIDS_MAX.to_string())?;
            return Ok(());
        }
        if let Some(dir) = self.dir("cpu") {
            fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
            fs::write(dir.join("cpu.cfs_quota_us"), quota.map_or_else(|| "-1".to_owned(), |q| q.to_string()))?;
        }
        if let Some(dir) = self.dir("memory") {
            let value = memory.map_or_else(|| "-1".to_owned(), |m| m.to_string());
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            // memsw may never be below the memory limit: raise it first when raising.
            if memsw.exists() {
                let _ = fs::write(&memsw, "-1");
            }
            fs::write(dir.join("memory.limit_in_bytes"), &value)?;
            if memsw.exists() {
                fs::write(&memsw, &value)?;
            }
        }
        if let Some(dir) = self.dir("pids") {
            fs::write(dir.join("pids.max"), PIDS_MAX.to_string())?;
        }
        Ok(())
    }

    /// Moves the calling process into it.
    pub fn join_self(&self) -> io::Result<()> {
        let me = std::process::id().to_string();
        for (_, dir) in &self.dirs {
            fs::write(dir.join("cgroup.procs"), &me)?;
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.dirs.first().is_some_and(|(_, d)| d.is_dir())
    }

    /// The processes in it (host pids).
    pub fn tasks(&self) -> Vec<i32> {
        let dir = self.dir("pids").or_else(|| self.dirs.first().map(|(_, d)| d.as_path()));
        let Some(text) = dir.and_then(|d| fs::read_to_string(d.join("cgroup.procs")).ok()) else {
            return Vec::new();
        };
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Sends `signal` to every process in it.
    pub fn signal_all(&self, signal: Signal) {
        for pid in self.tasks() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Kills every process in it and waits until it is empty.
    pub fn kill_all(&self, within: Duration) -> io::Result<()> {
        if !self.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + within;
        if self.v2 {
            let dir = &self.dirs[0].1;
            if fs::write(dir.join("cgroup.kill"), "1").is_err() {
                let _ = fs::write(dir.join("cgroup.freeze"), "1");
                self.signal_all(Signal::SIGKILL);
                let _ = fs::write(dir.join("cgroup.freeze"), "0");
            }
        } else if let Some(freezer) = self.dir("freezer") {
            let state = freezer.join("freezer.state");
            fs::write(&state, "FROZEN")?;
            // Freezing is asynchronous (a task that forks meanwhile still lands in the cgroup),
            // and can stall on a task in the kernel: kill after a moment whatever the state.
            let frozen_by = Instant::now() + Duration::from_millis(500);
            while fs::read_to_string(&state).is_ok_and(|s| s.trim() != "FROZEN") && Instant::now() < frozen_by {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.signal_all(Signal::SIGKILL);
            fs::write(&state, "THAWED")?;
        }
        loop {
            let left = self.tasks();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("{} process(es) survived SIGKILL: {left:?}", left.len())));
            }
            // Without a freezer (or for tasks that forked between reads), kill again.
            self.signal_all(Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes the (empty) cgroup. Succeeds if it is gone.
    pub fn remove(&self) -> io::Result<()> {
        for (_, dir) in &self.dirs {
            let mut tries = 0;
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // Busy for a moment after its last task exits.
                    Err(_) if tries < 100 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// How many times the OOM killer killed a task in it.
    pub fn oom_kills(&self) -> u64 {
        let (file, dir) = if self.v2 {
            ("memory.events", self.dirs.first().map(|(_, d)| d.as_path()))
        } else {
            ("memory.oom_control", self.dir("memory"))
        };
        let text = dir.and_then(|d| fs::read_to_string(d.join(file)).ok()).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }

    /// The memory limit in bytes, if one is set.
    pub fn memory_limit(&self) -> Option<u64> {
        let (file, dir) = if self.v2 {
            ("memory.max", self.dirs.first().map(|(_, d)| d.as_path()))
        } else {
            ("memory.limit_in_bytes", self.dir("memory"))
        };
        let value: u64 = fs::read_to_string(dir?.join(file)).ok()?.trim().parse().ok()?;
        (value < u64::MAX / 4).then_some(value)
    }

    /// CPU time its tasks used, in nanoseconds.
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        if self.v2 {
            let text = fs::read_to_string(self.dirs.first()?.1.join("cpu.stat")).ok()?;
            let usec: u64 = text.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse().ok()?;
            return Some(usec * 1000);
        }
        fs::read_to_string(self.dir("cpuacct")?.join("cpuacct.usage")).ok()?.trim().parse().ok()
    }

    /// Whether `pid` is in this cgroup (by `/proc/<pid>/cgroup`).
    pub fn contains(&self, pid: i32) -> bool {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return false };
        let Some((_, dir)) = self.dirs.first() else { return false };
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else { return false };
        let suffix = format!("/{name}");
        text.lines().any(|l| l.ends_with(&suffix))
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs.iter().find(|(c, _)| *c == controller).map(|(_, d)| d.as_path())
    }
}

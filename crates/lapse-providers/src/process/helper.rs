//! The helper processes: the server's own binary re-executed as `<exe> __lapse-process
//! <role>` (see [`run_if_helper`]). They are small, single-threaded where namespaces are
//! entered, take their job as one JSON line on a socket that is their stdin, and answer on
//! the same socket `ok` or `error <permanent|failed> <message>` once the program runs.
//!
//! - **`supervise`** — an environment's leader, started by the server in its own process
//!   group, carrying the `LAPSE_ENVIRONMENT_ID`/`LAPSE_CONTROLLER` markers (only it: the
//!   environment's own processes do not). It joins the environment's cgroup before anything
//!   else, opens the logs, enters the namespaces ([`isolation::enter`]), starts `init` (or,
//!   unisolated, the command itself) with its stdout and stderr on pipes, and pumps them into
//!   capped, rotated logs (`logs`). It outlives the server (like the environment), so logs
//!   stay capped while the server is down. When the command ends it writes `exit_status`
//!   (code, and why: a signal, the OOM killer) and exits with the same code. It is exempt
//!   from the OOM killer, so that it can say the command was killed by it.
//! - **`init`** — the first process of the environment's PID namespace: mounts `/proc`, sets
//!   `no_new_privs`, runs the command as the environment's uid and gid (no supplementary
//!   groups), reaps orphans, and exits with the command's code (128 + signal if killed). When
//!   it exits the kernel kills whatever is left in the namespace. The command (and what an
//!   `exec` runs) is the OOM killer's first choice (`oom_score_adj` 1000); the supervisor and
//!   init ask to be exempt (-1000), which needs `CAP_SYS_RESOURCE`, so on a host without it
//!   they are still never chosen before the command.
//! - **`exec`** — runs one command inside a running environment: joins its cgroup and
//!   namespaces ([`isolation::join`]) and its uid, with stdout and stderr going to the server.
//!   For a terminal (`ExecJob::tty`) its stdout is a pseudo-terminal's slave, which it gives
//!   the command as stdin, stdout, stderr and controlling terminal of a session the command
//!   leads (see `terminal`).
//!
//! Why a re-executed binary and not a thread of the server: namespaces can only be entered
//! (`unshare(CLONE_NEWNS)`, `setns`) by a single-threaded process, and the leader must
//! outlive the server.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitStatus, waitpid};
use serde::{Deserialize, Serialize};

use super::cgroup::EnvCgroup;
use super::isolation::{self, Jail};
use super::logs::RotatingLog;

/// The first argument that makes the binary a helper.
pub const HELPER_ARG: &str = "__lapse-process";
/// The file in an environment's directory that says how its command ended.
pub const EXIT_STATUS_FILE: &str = "exit_status";

/// What a supervisor runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Launch {
    pub command: Program,
    /// The environment's directory (logs, exit status); the supervisor's working directory.
    pub dir: PathBuf,
    /// The cgroup to join first.
    pub cgroup: Option<EnvCgroup>,
    pub log_cap: u64,
    pub jail: Option<Jail>,
}

/// A program, its environment and where it runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Program {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    /// `(uid, gid)` to run as.
    pub user: Option<(u32, u32)>,
}

/// What an exec helper runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecJob {
    pub command: Program,
    pub cgroup: Option<EnvCgroup>,
    /// The supervisor whose namespaces to join, and its start time (against pid reuse).
    pub leader: Option<(i32, u64)>,
    /// A terminal: the helper's stdout is a pseudo-terminal's slave, which becomes the
    /// command's stdin, stdout, stderr and controlling terminal (a session of its own).
    #[serde(default)]
    pub tty: bool,
}

/// How an environment's command ended, as its supervisor records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub code: Option<i64>,
    pub reason: Option<String>,
}

/// Runs the helper role named on the command line and exits, if the command line names one;
/// returns otherwise. The binary's `main` calls it first, before anything starts a thread.
pub fn run_if_helper() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(HELPER_ARG) {
        return;
    }
    let code = match args.get(2).map(String::as_str) {
        Some("supervise") => supervise(),
        Some("init") => init(),
        Some("exec") => exec(),
        other => {
            eprintln!("lapse: unknown helper role {other:?}");
            2
        }
    };
    std::process::exit(code);
}

/// The control socket (stdin): one job line in, one answer line out.
struct Control {
    reader: BufReader<File>,
}

impl Control {
    fn open() -> std::io::Result<Control> {
        // A new handle on fd 0 (the socket), so that it can be written too.
        let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
        Ok(Control { reader: BufReader::new(File::from(fd)) })
    }

    fn job<T: for<'de> Deserialize<'de>>(&mut self) -> Result<T, String> {
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(|e| format!("reading the job: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("bad job: {e}"))
    }

    fn answer(&mut self, answer: &str) {
        let _ = self.reader.get_mut().write_all(format!("{answer}\n").as_bytes());
    }

    /// Opens the socket and reads the job; a job that does not read is answered here, and
    /// the helper's exit code returned.
    fn with_job<T: for<'de> Deserialize<'de>>() -> Result<(Control, T), i32> {
        let Ok(mut control) = Control::open() else { return Err(125) };
        match control.job() {
            Ok(job) => Ok((control, job)),
            Err(e) => {
                control.answer(&format!("error failed {e}"));
                Err(125)
            }
        }
    }

    /// Answers whether the command started, and closes the socket.
    fn started(mut self, spawned: Result<std::process::Child, String>) -> Option<std::process::Child> {
        match spawned {
            Ok(child) => {
                self.answer("ok");
                Some(child)
            }
            Err(e) => {
                self.answer(&e);
                None
            }
        }
    }
}

fn block_signals() {
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT] {
        mask.add(s);
    }
    let _ = mask.thread_block();
}

fn join_cgroup(cgroup: Option<&EnvCgroup>) -> Result<(), String> {
    cgroup.map_or(Ok(()), |c| c.join_self().map_err(|e| format!("joining the environment's cgroup: {e}")))
}

/// `error permanent …` for what retrying cannot fix (no such program), else `error failed …`.
fn spawn_error(argv0: &str, e: &std::io::Error) -> String {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => "permanent",
        _ => "failed",
    };
    format!("error {kind} cannot run {argv0:?}: {e}")
}

fn command_of(program: &Program) -> Result<Command, String> {
    let (argv0, args) = program.argv.split_first().ok_or("empty command")?;
    let mut command = Command::new(argv0);
    command.args(args).env_clear().envs(&program.env).current_dir(&program.cwd).stdin(Stdio::null());
    if let Some((uid, gid)) = program.user {
        // As root, std also drops every supplementary group (setgroups(0)) before setuid.
        command.uid(uid).gid(gid);
    }
    Ok(command)
}

/// Makes `pid` the OOM killer's first choice (`oom_score_adj` 1000; what it forks inherits
/// it). Exempting the supervisor and init (-1000) needs `CAP_SYS_RESOURCE`, which not every
/// host grants (this one does not); raising a score needs no privilege, so the command is
/// always the one taken, never the supervisor that records why it died.
fn prefer_for_oom(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "1000");
}

/// The shell's convention: the exit code, or 128 + the signal that killed it.
fn code_of(status: ExitStatus) -> (i64, Option<String>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (i64::from(code), None),
        (None, Some(signal)) => {
            let name = Signal::try_from(signal).map_or_else(|_| signal.to_string(), |s| s.as_str().to_owned());
            (128 + i64::from(signal), Some(format!("killed by {name}")))
        }
        (None, None) => (255, None),
    }
}

fn supervise() -> i32 {
    let (mut control, launch): (Control, Launch) = match Control::with_job() {
        Ok(job) => job,
        Err(code) => return code,
    };
    match start_supervised(&launch) {
        Ok(started) => {
            control.answer("ok");
            drop(control);
            finish_supervised(started, launch.cgroup.as_ref(), launch.jail.is_some())
        }
        Err(e) => {
            control.answer(&e);
            125
        }
    }
}

struct Supervised {
    child: std::process::Child,
    dir: Arc<File>,
    stdout: RotatingLog,
    stderr: RotatingLog,
}

fn start_supervised(launch: &Launch) -> Result<Supervised, String> {
    let failed = |what: &str, e: &dyn std::fmt::Display| format!("error failed {what}: {e}");
    join_cgroup(launch.cgroup.as_ref()).map_err(|e| format!("error failed {e}"))?;
    block_signals();
    let dir = Arc::new(File::open(&launch.dir).map_err(|e| failed("opening the environment's directory", &e))?);
    let stdout = RotatingLog::open(dir.clone(), "stdout.log", launch.log_cap).map_err(|e| failed("stdout.log", &e))?;
    let stderr = RotatingLog::open(dir.clone(), "stderr.log", launch.log_cap).map_err(|e| failed("stderr.log", &e))?;
    let argv0 = launch.command.argv.first().cloned().unwrap_or_default();
    let child = match &launch.jail {
        Some(jail) => {
            isolation::enter(jail).map_err(|e| format!("error failed isolating the environment: {e}"))?;
            let (ours, theirs) = UnixStream::pair().map_err(|e| failed("socketpair", &e))?;
            let child = Command::new("/proc/self/exe")
                .args([HELPER_ARG, "init"])
                .env_clear()
                .current_dir("/")
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| failed("starting the environment's init", &e))?;
            let mut reader = BufReader::new(ours);
            let job = serde_json::to_string(&launch.command).map_err(|e| failed("encoding", &e))?;
            reader.get_mut().write_all(format!("{job}\n").as_bytes()).map_err(|e| failed("to init", &e))?;
            let mut answer = String::new();
            let _ = reader.read_line(&mut answer);
            if answer.trim() != "ok" {
                let answer = answer.trim();
                return Err(if answer.is_empty() {
                    "error failed the environment's init died".into()
                } else {
                    answer.to_owned()
                });
            }
            child
        }
        None => command_of(&launch.command)
            .map_err(|e| format!("error permanent {e}"))?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(&argv0, &e))?,
    };
    // The command inherited the default; only the supervisor is exempt.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    if launch.jail.is_none() {
        prefer_for_oom(child.id());
    }
    Ok(Supervised { child, dir, stdout, stderr })
}

/// Pumps the command's output into its logs until it ends (single-threaded: a process that
/// made a PID namespace cannot start threads), then records how it ended.
fn finish_supervised(started: Supervised, cgroup: Option<&EnvCgroup>, jailed: bool) -> i32 {
    use nix::poll::{PollFd, PollFlags, poll};
    let Supervised { mut child, dir, stdout, stderr } = started;
    let mut streams: Vec<(Box<dyn ReadFd>, RotatingLog)> = Vec::new();
    if let Some(pipe) = child.stdout.take() {
        streams.push((Box::new(pipe), stdout));
    }
    if let Some(pipe) = child.stderr.take() {
        streams.push((Box::new(pipe), stderr));
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut status = None;
    let mut drain_until = None;
    // Unisolated leftovers may hold the pipes open after the command ends: drain briefly.
    let drain = if jailed { Duration::from_secs(2) } else { Duration::from_millis(200) };
    while !streams.is_empty() {
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = streams.iter().map(|(p, _)| PollFd::new(p.fd(), PollFlags::POLLIN)).collect();
            if poll(&mut fds, 100u16).is_err() {
                continue;
            }
            fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect()
        };
        let mut closed = Vec::new();
        for (i, is_ready) in ready.into_iter().enumerate() {
            if !is_ready {
                continue;
            }
            let (pipe, log) = &mut streams[i];
            match pipe.read(&mut buf) {
                Ok(0) => closed.push(i),
                // A full disk drops output rather than blocking the environment.
                Ok(n) => {
                    let _ = log.write(&buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            streams.remove(i);
        }
        if status.is_none()
            && let Ok(Some(s)) = child.try_wait()
        {
            status = Some(s);
            drain_until = Some(std::time::Instant::now() + drain);
        }
        if drain_until.is_some_and(|t| std::time::Instant::now() > t) {
            break;
        }
    }
    let status = match status {
        Some(s) => s,
        None => loop {
            match child.wait() {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return 125,
            }
        },
    };
    let (code, mut reason) = code_of(status);
    if jailed && reason.is_none() && code > 128 {
        // init reports the command's signal as 128 + n.
        let n = code - 128;
        reason = Some(
            Signal::try_from(n as i32)
                .map_or_else(|_| format!("killed by signal {n}"), |s| format!("killed by {}", s.as_str())),
        );
    }
    if let Some(cgroup) = cgroup
        && cgroup.oom_kills() > 0
    {
        let limit =
            cgroup.memory_limit().map_or(String::new(), |b| format!(" (memory limit {} MiB)", b / (1024 * 1024)));
        reason = Some(format!("killed by the OOM killer{limit}"));
    }
    write_exit_record(&dir, &ExitRecord { code: Some(code), reason });
    (code & 0xff) as i32
}

/// A pipe to read from and poll.
trait ReadFd: Read {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_>;
}

impl<T: Read + AsFd> ReadFd for T {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.as_fd()
    }
}

/// Writes `exit_status` atomically, through a handle on the directory.
pub fn write_exit_record(dir: &File, record: &ExitRecord) {
    use nix::fcntl::{OFlag, openat, renameat};
    let Ok(text) = serde_json::to_vec(record) else { return };
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let tmp = format!("{EXIT_STATUS_FILE}.tmp");
    if let Ok(fd) = openat(dir, tmp.as_str(), flags, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        let mut file = File::from(fd);
        if file.write_all(&text).is_ok() {
            let _ = renameat(dir, tmp.as_str(), dir, EXIT_STATUS_FILE);
        }
    }
}

/// Reads `exit_status` (JSON, or a bare code as older servers wrote it).
pub fn read_exit_record(dir: &Path) -> Option<ExitRecord> {
    let text = std::fs::read_to_string(dir.join(EXIT_STATUS_FILE)).ok()?;
    serde_json::from_str(&text).ok().or_else(|| Some(ExitRecord { code: text.trim().parse().ok(), reason: None }))
}

fn init() -> i32 {
    block_signals();
    let (mut control, program): (Control, Program) = match Control::with_job() {
        Ok(job) => job,
        Err(code) => return code,
    };
    if let Err(e) =
        isolation::mount_proc().and_then(|()| nix::sys::prctl::set_no_new_privs().map_err(|e| e.to_string()))
    {
        control.answer(&format!("error failed {e}"));
        return 125;
    }
    let argv0 = program.argv.first().cloned().unwrap_or_default();
    let spawned = match command_of(&program) {
        Ok(mut c) => c.spawn().map_err(|e| spawn_error(&argv0, &e)),
        Err(e) => Err(format!("error permanent {e}")),
    };
    let Some(child) = control.started(spawned) else { return 127 };
    // The command, not init (the whole binary, re-executed, often the bigger), is the one
    // the OOM killer takes when the environment outgrows its memory.
    prefer_for_oom(child.id());
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    let main = nix::unistd::Pid::from_raw(child.id() as i32);
    // Reap everything (orphans come to the namespace's first process); end with the command.
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => return code,
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == main => return 128 + signal as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 255,
        }
    }
}

fn exec() -> i32 {
    // Before joining the environment (whose `/proc` would not show this process): what it
    // runs inherits the score of the environment's own commands.
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    let (mut control, job): (Control, ExecJob) = match Control::with_job() {
        Ok(job) => job,
        Err(code) => return code,
    };
    let prepared = join_cgroup(job.cgroup.as_ref()).and_then(|()| match job.leader {
        Some((pid, started)) => {
            if super::spawn::Stat::of(pid).map(|s| s.start_time) != Some(started) {
                return Err("the environment is not running".into());
            }
            isolation::join(pid)?;
            nix::sys::prctl::set_no_new_privs().map_err(|e| e.to_string())
        }
        None => Ok(()),
    });
    if let Err(e) = prepared {
        control.answer(&format!("error failed {e}"));
        return 125;
    }
    let argv0 = job.command.argv.first().cloned().unwrap_or_default();
    let spawned = command_of(&job.command).map_err(|e| format!("error permanent {e}")).and_then(|mut c| {
        if job.tty {
            attach_terminal(&mut c)?;
        } else {
            c.stdout(Stdio::inherit()).stderr(Stdio::inherit());
            close_inherited(&mut c);
        }
        c.spawn().map_err(|e| spawn_error(&argv0, &e))
    });
    let Some(mut child) = control.started(spawned) else { return 127 };
    match child.wait() {
        Ok(status) => (code_of(status).0 & 0xff) as i32,
        Err(_) => 125,
    }
}

/// Marks every descriptor above 2 close-on-exec in the command, so none the server inherited
/// from its own parent without that flag reaches what `exec` runs.
fn close_inherited(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before `exec` and makes one
    // async-signal-safe system call; it allocates nothing. This helper runs no other thread.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            // Kernels before 5.11 lack the flag; std's own descriptors are close-on-exec anyway.
            let _ = nix::libc::close_range(3, u32::MAX, nix::libc::CLOSE_RANGE_CLOEXEC as i32);
            Ok(())
        });
    }
}

/// Gives the terminal on stdout (a pseudo-terminal's slave) to the command as its stdin,
/// stdout and stderr, and makes the command the leader of a new session with that terminal
/// as its controlling terminal. The shell itself must lead the session: it lives in the
/// environment's PID namespace, where this helper's process group does not exist (a shell
/// that gives the terminal back to the group it started in would fail on exit).
fn attach_terminal(command: &mut Command) -> Result<(), String> {
    let failed = |e: &dyn std::fmt::Display| format!("error failed the terminal: {e}");
    let tty = std::io::stdout().as_fd().try_clone_to_owned().map_err(|e| failed(&e))?;
    let copy = || tty.try_clone().map_err(|e| failed(&e));
    command.stdin(Stdio::from(copy()?)).stdout(Stdio::from(copy()?)).stderr(Stdio::from(tty));
    // SAFETY: the closure runs in the forked child before `exec`; it makes three system
    // calls (`setsid`, `ioctl(TIOCSCTTY)` on fd 0, the terminal std just put there, and
    // `close_range` marking every descriptor above 2 close-on-exec, so none the server
    // inherited from its own parent reaches the shell), which are async-signal-safe, and
    // allocates nothing. This helper runs no other thread.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(std::os::fd::BorrowedFd::borrow_raw(0))?;
            // Kernels before 5.11 lack the flag; std's own descriptors are close-on-exec anyway.
            let _ = nix::libc::close_range(3, u32::MAX, nix::libc::CLOSE_RANGE_CLOEXEC as i32);
            Ok(())
        });
    }
    Ok(())
}

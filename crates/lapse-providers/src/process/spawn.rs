//! Starting helpers and finding leaders: the server's side of `helper`.
//!
//! An environment runs while its **leader** lives: the supervisor (or, without a helper
//! program, the command itself), a process-group leader whose pid and start time are in the
//! `pid` file. The start time tells it from a later process that reused the pid. Only when a
//! spawn may have been cut short by a crash (the `spawning` marker is still there) is `/proc`
//! scanned for the leader's markers.

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use super::NAME;
use crate::{CappedOutput, ProviderError};

pub const ENV_MARKER: &str = "LAPSE_ENVIRONMENT_ID";
pub const CONTROLLER_MARKER: &str = "LAPSE_CONTROLLER";

/// A live process group that leads an environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub environment_id: String,
    pub pid: i32,
}

/// What `/proc/<pid>/stat` says of a process.
pub struct Stat {
    pub state: char,
    pub pgrp: i32,
    /// Clock ticks after boot at which it started.
    pub start_time: u64,
}

impl Stat {
    pub fn of(pid: i32) -> Option<Stat> {
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
    pub fn is_live_leader(&self, pid: i32) -> bool {
        !matches!(self.state, 'Z' | 'X') && self.pgrp == pid
    }
}

pub fn alive(pid: i32) -> bool {
    Stat::of(pid).is_some_and(|s| s.is_live_leader(pid))
}

/// `(pid, start time)` from a `pid` file's text.
pub fn parse_pid_file(text: &str) -> Option<(i32, u64)> {
    let mut parts = text.split_whitespace();
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Every live group leader in `/proc` that carries `controller`'s markers.
pub fn scan(controller: &str) -> Vec<Leader> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| leader_at(pid, controller))
        .collect()
}

/// The environment led by `pid`, if `pid` is a live (not zombie) group leader of ours.
fn leader_at(pid: i32, controller: &str) -> Option<Leader> {
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
            ours = v == controller;
        }
    }
    Some(Leader { environment_id: environment_id.filter(|_| ours)?, pid })
}

/// Starts `helper <role>` with `job` on its control socket and waits for its answer. The
/// command must have its stdio and process group set; its stdin becomes the socket.
pub async fn start_helper(
    mut command: tokio::process::Command,
    job: &impl Serialize,
    op: &'static str,
) -> Result<tokio::process::Child, ProviderError> {
    let failed = |message: String| ProviderError::Failed { provider: NAME, op, message };
    let (ours, theirs) = StdUnixStream::pair().map_err(|e| failed(format!("socketpair: {e}")))?;
    command.stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)));
    let mut child = command.spawn().map_err(|e| failed(format!("starting the process helper: {e}")))?;
    // Our copy of the helper's end: the helper's exit must read as the socket's end.
    drop(command);
    let mut line = serde_json::to_vec(job).map_err(|e| failed(e.to_string()))?;
    line.push(b'\n');
    let answer = tokio::task::spawn_blocking(move || {
        let mut ours = ours;
        ours.set_read_timeout(Some(Duration::from_secs(30)))?;
        ours.write_all(&line)?;
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&ours), &mut answer)?;
        Ok::<_, std::io::Error>(answer)
    })
    .await
    .map_err(|e| failed(e.to_string()))?
    .map_err(|e| failed(format!("talking to the process helper: {e}")))?;
    let answer = answer.trim();
    if answer == "ok" {
        return Ok(child);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    Err(match answer.strip_prefix("error ").and_then(|r| r.split_once(' ')) {
        Some(("permanent", message)) => ProviderError::Permanent { provider: NAME, message: message.to_owned() },
        Some((_, message)) => failed(message.to_owned()),
        None => failed(format!("the process helper exited without starting the command {answer:?}")),
    })
}

/// How a command run by `exec` ended, with its output (the tail of each stream, capped).
pub struct Captured {
    pub exit_code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// Streams a child's stdout and stderr into capped buffers until it exits or `timeout`
/// passes (then its whole process group is killed). Memory stays within the caps however
/// much it prints.
pub async fn capture(mut child: tokio::process::Child, timeout: Duration) -> Result<Captured, ProviderError> {
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    type Shared = std::sync::Arc<std::sync::Mutex<CappedOutput>>;
    let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>, out: Shared| async move {
        if let Some(mut pipe) = pipe {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                out.lock().unwrap_or_else(|p| p.into_inner()).push(&buf[..n]);
            }
        }
    };
    let outs: [Shared; 2] = Default::default();
    let readers = [
        tokio::spawn(read(child.stdout.take().map(|p| Box::new(p) as Box<_>), outs[0].clone())),
        tokio::spawn(read(child.stderr.take().map(|p| Box::new(p) as Box<_>), outs[1].clone())),
    ];
    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => (status.ok(), false),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.start_kill();
            (None, true)
        }
    };
    // Output still in the pipes is read; descendants that keep them open are not waited for.
    for reader in readers {
        let abort = reader.abort_handle();
        if tokio::time::timeout(Duration::from_millis(500), reader).await.is_err() {
            abort.abort();
        }
    }
    let take = |out: &Shared| {
        std::mem::replace(&mut *out.lock().unwrap_or_else(|p| p.into_inner()), CappedOutput::new(0)).into_text()
    };
    let (stdout, stderr) = (take(&outs[0]), take(&outs[1]));
    let exit_code = status.filter(|_| !timed_out).map(|s| {
        use std::os::unix::process::ExitStatusExt;
        s.code().map_or_else(|| 128 + i64::from(s.signal().unwrap_or(0)), i64::from)
    });
    Ok(Captured { exit_code, stdout, stderr, timed_out })
}

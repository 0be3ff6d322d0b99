//! A process environment's terminal: the shell runs through the `exec` helper (the
//! environment's cgroup, namespaces, uid, `no_new_privs` and OOM score, exactly as an `exec`)
//! with a pseudo-terminal's slave as its stdin, stdout and stderr and as its controlling
//! terminal.
//!
//! - The **master stays in the server**, opened `O_CLOEXEC | O_NOCTTY` (as is the slave), so no
//!   other child of the server inherits either; the slave reaches the helper only as its
//!   stdout and stderr, and the server's copy is closed once the helper runs.
//! - The **shell leads a session of its own** with the slave as its controlling terminal
//!   (`setsid` and `TIOCSCTTY` between the helper's fork and exec), inside the environment's
//!   PID namespace. So when the server closes the master (a dropped [`Terminal`], which also
//!   kills the helper), the kernel hangs the terminal up and the shell gets `SIGHUP`.
//! - Resize is `TIOCSWINSZ` on the master (the kernel sends `SIGWINCH` to the foreground
//!   job). Reading the master after every slave is closed fails with `EIO`: that is the end
//!   of the output.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Poll, ready};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapse_core::model::Spec;
use rustix::pty::OpenptFlags;
use tokio::io::unix::AsyncFd;

use super::helper::{self, Program};
use super::{NAME, ProcessProvider, spawn};
use crate::ProviderError;
use crate::terminal::{CHUNK_BYTES, Resize, TERM, TermSize, Terminal, shell_of};

impl ProcessProvider {
    /// Opens a shell on a new pseudo-terminal inside the running environment `id`.
    pub(super) async fn terminal(&self, id: &str, spec: &Spec, size: TermSize) -> Result<Terminal, ProviderError> {
        let Some(program) = &self.helper else {
            return Err(ProviderError::Unsupported { provider: NAME, op: "terminals without a helper program" });
        };
        let mut env = self.command_env(id, spec);
        env.insert("TERM".into(), TERM.into());
        let command = Program { argv: shell_of(spec), env, cwd: self.dir(id).join("work"), user: self.user_of(id) };
        let mut job = self.exec_job(id, command)?;
        job.tty = true;
        let (master, slave) = open_pty(size).map_err(|e| failed(&e))?;
        let copy = slave.try_clone().map_err(|e| failed(&e))?;
        let mut process = tokio::process::Command::new(program);
        process
            .args([helper::HELPER_ARG, "exec"])
            .env_clear()
            .current_dir("/")
            .stdout(Stdio::from(copy))
            .stderr(Stdio::from(slave))
            .process_group(0)
            .kill_on_drop(true);
        // `start_helper` drops the command, and with it the server's copies of the slave.
        let mut child = spawn::start_helper(process, &job, "terminal").await?;
        // SAFETY: `register` needs a descriptor that stays open and the same for the life of
        // the `AsyncFd`: an `OwnedFd` it owns (and closes only when dropped) is exactly that.
        #[allow(unsafe_code)]
        let registered = unsafe { AsyncFd::register(master) };
        let master = Arc::new(registered.map_err(|e| failed(&e.into()))?);
        let exited = Box::pin(async move {
            let status = child.wait().await.ok()?;
            use std::os::unix::process::ExitStatusExt;
            Some(status.code().map_or_else(|| 128 + i64::from(status.signal().unwrap_or(0)), i64::from))
        });
        Ok(Terminal {
            output: output(master.clone()),
            input: Box::pin(Writer(master.clone())),
            resizer: Box::new(Resizer(master)),
            exited,
        })
    }
}

/// A new pseudo-terminal of `size`: the master (non-blocking) and the slave.
fn open_pty(size: TermSize) -> io::Result<(OwnedFd, File)> {
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    // std opens with O_CLOEXEC.
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits())
        .open(std::ffi::OsStr::from_bytes(name.as_bytes()))?;
    set_size(&master, size)?;
    rustix::io::ioctl_fionbio(&master, true)?;
    Ok((master, slave))
}

fn set_size(master: &OwnedFd, size: TermSize) -> io::Result<()> {
    let winsize = rustix::termios::Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    Ok(rustix::termios::tcsetwinsize(master, winsize)?)
}

type Master = Arc<AsyncFd<OwnedFd>>;

/// What the terminal prints, a chunk per read, until every slave is closed (`EIO`).
fn output(master: Master) -> futures::stream::BoxStream<'static, Result<Bytes, io::Error>> {
    futures::stream::unfold(Some(master), |master| async move {
        let master = master?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let mut guard = match master.readable().await {
                Ok(guard) => guard,
                Err(e) => return Some((Err(e), None)),
            };
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut buf[..])?)) {
                Ok(Ok(0)) => return None,
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Some((Ok(Bytes::from(buf)), Some(master)));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => return None,
                Ok(Err(e)) => return Some((Err(e), None)),
                Err(_would_block) => continue,
            }
        }
    })
    .boxed()
}

/// What is typed, written to the master.
struct Writer(Master);

impl tokio::io::AsyncWrite for Writer {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), buf)?)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct Resizer(Master);

#[async_trait]
impl Resize for Resizer {
    async fn resize(&self, size: TermSize) -> Result<(), ProviderError> {
        set_size(self.0.get_ref(), size).map_err(|e| failed(&e))
    }
}

fn failed(e: &io::Error) -> ProviderError {
    ProviderError::Failed { provider: NAME, op: "terminal", message: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_are_close_on_exec_and_the_size_is_set() {
        let (master, slave) = open_pty(TermSize { cols: 123, rows: 45 }).unwrap();
        for fd in [&master, &OwnedFd::from(slave)] {
            let flags = rustix::io::fcntl_getfd(fd).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        }
        let size = rustix::termios::tcgetwinsize(&master).unwrap();
        assert_eq!((size.ws_col, size.ws_row), (123, 45));
    }
}

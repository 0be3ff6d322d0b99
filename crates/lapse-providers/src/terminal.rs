//! Interactive terminals: a shell attached to a pseudo-terminal inside a running environment
//! ([`Provider::open_terminal`](crate::Provider::open_terminal)).
//!
//! Contract:
//! - **What runs**: the spec's `shell` if it has one, else [`DEFAULT_SHELL`], with
//!   `TERM=`[`TERM`], in the environment's working directory, exactly where and as whom an
//!   `exec` runs (process: the environment's uid, cgroup and namespaces; docker and swarm: an
//!   exec in the container with a TTY).
//! - **A [`Terminal`] is a byte stream both ways**: [`Terminal::output`] yields what the
//!   terminal prints, in chunks of at most [`CHUNK_BYTES`] (read only as fast as the caller
//!   takes them, so a caller that stops reading stops the shell's output, never grows
//!   memory); [`Terminal::input`] takes what is typed. [`Terminal::resizer`] sets the window
//!   size (`TIOCSWINSZ` or the engine's resize).
//! - **It ends when the shell exits**: [`Terminal::exited`] resolves then, with the exit code
//!   when it is known (the shell's convention: 128 + a signal). Output written just before the
//!   exit may still be read from `output` after that.
//! - **Dropping a `Terminal` hangs it up**: the process provider closes the PTY master (the
//!   kernel sends `SIGHUP` to the terminal's session) and kills the helper that leads that
//!   session; docker closes the exec's stdin. Background processes the shell left behind run
//!   on inside the environment like those of an `exec`, and end with it.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use lapse_core::model::Spec;
use tokio::io::AsyncWrite;

use crate::ProviderError;

/// What a shell gets in `TERM`.
pub const TERM: &str = "xterm-256color";
/// The shell of a spec without `shell`.
pub const DEFAULT_SHELL: &str = "/bin/sh";
/// Largest chunk [`Terminal::output`] yields.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Largest window side, in columns or rows.
pub const MAX_SIDE: u16 = 1000;

/// A terminal window's size in character cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermSize {
    pub cols: u16,
    pub rows: u16,
}

impl Default for TermSize {
    fn default() -> Self {
        TermSize { cols: 80, rows: 24 }
    }
}

impl TermSize {
    /// A size with both sides in `1..=`[`MAX_SIDE`], or `None`.
    pub fn new(cols: u64, rows: u64) -> Option<TermSize> {
        let side = |n: u64| u16::try_from(n).ok().filter(|n| (1..=MAX_SIDE).contains(n));
        Some(TermSize { cols: side(cols)?, rows: side(rows)? })
    }
}

/// The program a terminal of `spec` runs (its argv).
pub fn shell_of(spec: &Spec) -> Vec<String> {
    vec![spec.shell.clone().unwrap_or_else(|| DEFAULT_SHELL.to_owned())]
}

/// Sets a terminal's window size.
#[async_trait]
pub trait Resize: Send + Sync {
    async fn resize(&self, size: TermSize) -> Result<(), ProviderError>;
}

/// A shell on a pseudo-terminal (see the module doc).
pub struct Terminal {
    /// What the terminal prints; ends (or fails) once nothing can print to it any more.
    pub output: BoxStream<'static, Result<Bytes, std::io::Error>>,
    /// What is typed into it.
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
    pub resizer: Box<dyn Resize>,
    /// Resolves when the shell has exited, with its exit code when known.
    pub exited: BoxFuture<'static, Option<i64>>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Terminal")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_one_to_a_thousand_on_each_side() {
        assert_eq!(TermSize::new(80, 24), Some(TermSize { cols: 80, rows: 24 }));
        assert_eq!(TermSize::new(1000, 1), Some(TermSize { cols: 1000, rows: 1 }));
        for (cols, rows) in [(0, 24), (80, 0), (1001, 24), (80, 1001), (u64::MAX, 24), (65_616, 24)] {
            assert_eq!(TermSize::new(cols, rows), None, "{cols}x{rows}");
        }
    }

    #[test]
    fn the_shell_is_the_specs_or_sh() {
        let mut spec = Spec { provider: "process".into(), ..Default::default() };
        assert_eq!(shell_of(&spec), vec!["/bin/sh".to_owned()]);
        spec.shell = Some("/bin/bash".into());
        assert_eq!(shell_of(&spec), vec!["/bin/bash".to_owned()]);
    }
}

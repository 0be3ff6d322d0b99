//! One terminal's WebSocket after the upgrade: three loops in one task, the first to end
//! deciding how the session ends.
//!
//! - **to the client**: each chunk the terminal prints becomes a binary frame; the next chunk
//!   is read only once the frame is written out (backpressure).
//! - **from the client**: binary frames are typed into the terminal (written only as fast as
//!   the shell reads); text frames are controls (`{"type":"resize","cols","rows"}`), anything
//!   else in one is ignored; every frame is activity of the environment.
//! - **the shell's exit**: once it exits, what it printed just before is still forwarded (up
//!   to [`DRAIN`]), then the close frame `1000 exited <code>` goes out.
//!
//! An idle watchdog ends the session when no byte moved either way for the idle timeout.
//! Whatever ends it, the terminal is dropped (the shell hung up), the closing recorded in the
//! audit trail, and the permit released.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use futures::{SinkExt, StreamExt};
use lapse_providers::terminal::{TermSize, Terminal};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::app::App;
use crate::proxy::limits::StreamPermit;

/// Largest chunk of output in one frame.
pub const CHUNK_LIMIT: usize = lapse_providers::terminal::CHUNK_BYTES;
/// How long output is still forwarded after the shell exited.
const DRAIN: Duration = Duration::from_millis(300);
/// How long the exit code is waited for once the output ended.
const EXIT_WAIT: Duration = Duration::from_secs(3);
/// How long the client's answer to the close frame is waited for.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Longest close reason sent (the protocol allows 123 bytes).
const MAX_REASON: usize = 120;

pub struct Session {
    pub app: App,
    pub environment_id: String,
    pub actor: String,
    pub terminal: Terminal,
    pub permit: StreamPermit,
    pub idle: Duration,
}

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The terminal's output ended (every writer of it closed): the shell is gone or going.
    OutputEnded,
    Exited(Option<i64>),
    ClientLeft,
    /// The client sent what the protocol or the frame cap refuses.
    BadFrame(String),
    Idle,
    Failed(String),
}

/// A control message in a text frame.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Control {
    Resize { cols: u64, rows: u64 },
}

impl Session {
    pub async fn run(self, socket: WebSocket) {
        let Session { app, environment_id, actor, terminal, permit, idle } = self;
        let Terminal { mut output, mut input, resizer, mut exited } = terminal;
        let (mut sink, mut stream) = socket.split();
        let start = Instant::now();
        let last = AtomicU64::new(0);
        let moved = || last.store(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let end = {
            let to_client = async {
                while let Some(chunk) = output.next().await {
                    match chunk {
                        Ok(bytes) => {
                            moved();
                            if sink.send(Message::Binary(bytes)).await.is_err() {
                                return End::ClientLeft;
                            }
                        }
                        Err(e) => return End::Failed(format!("reading the terminal: {e}")),
                    }
                }
                End::OutputEnded
            };
            let from_client = async {
                while let Some(message) = stream.next().await {
                    let message = match message {
                        Ok(m) => m,
                        Err(e) => return End::BadFrame(e.to_string()),
                    };
                    moved();
                    app.cx.activity.touch(&environment_id);
                    match message {
                        Message::Binary(bytes) => {
                            if input.write_all(&bytes).await.is_err() {
                                return End::OutputEnded;
                            }
                        }
                        Message::Text(text) => match control(&text) {
                            Some(size) => {
                                if let Err(e) = resizer.resize(size).await {
                                    tracing::debug!(environment = %environment_id, error = %e, "a terminal resize failed");
                                }
                            }
                            None => {
                                tracing::debug!(environment = %environment_id, "ignored a text frame that is no control")
                            }
                        },
                        Message::Close(_) => return End::ClientLeft,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
                End::ClientLeft
            };
            let watchdog = async {
                loop {
                    let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                    if Instant::now() >= deadline {
                        return End::Idle;
                    }
                    tokio::time::sleep_until(deadline).await;
                }
            };
            tokio::pin!(to_client, from_client, watchdog);
            enum First {
                Output(End),
                Other(End),
                Exited(Option<i64>),
            }
            let first = tokio::select! {
                end = &mut to_client => First::Output(end),
                end = &mut from_client => First::Other(end),
                end = &mut watchdog => First::Other(end),
                code = &mut exited => First::Exited(code),
            };
            match first {
                First::Output(End::OutputEnded) | First::Other(End::OutputEnded) => {
                    End::Exited(tokio::time::timeout(EXIT_WAIT, &mut exited).await.ok().flatten())
                }
                First::Exited(code) => {
                    // What the shell printed last is still in the terminal.
                    let _ = tokio::time::timeout(DRAIN, &mut to_client).await;
                    End::Exited(code)
                }
                First::Output(end) | First::Other(end) => end,
            }
        };
        let close = match &end {
            End::Exited(Some(code)) => Some((close_code::NORMAL, format!("exited {code}"))),
            End::Exited(None) | End::OutputEnded => Some((close_code::NORMAL, "exited".to_owned())),
            End::Idle => Some((close_code::AWAY, "idle".to_owned())),
            End::Failed(why) => Some((close_code::ERROR, why.clone())),
            End::BadFrame(why) => Some((close_code::POLICY, why.clone())),
            End::ClientLeft => None,
        };
        if let Some((code, reason)) = close {
            let frame = CloseFrame { code, reason: cut(&reason).into() };
            if sink.send(Message::Close(Some(frame))).await.is_ok() {
                // The client answers with its own close; then the connection ends.
                let _ = tokio::time::timeout(CLOSE_WAIT, async { while stream.next().await.is_some() {} }).await;
            }
        }
        // The shell is hung up before the closing is recorded.
        drop((output, input, resizer, exited));
        let how = match &end {
            End::Exited(Some(code)) => format!("closed: exited {code}"),
            End::Exited(None) | End::OutputEnded => "closed: exited".to_owned(),
            End::ClientLeft => "closed by the client".to_owned(),
            End::Idle => format!("closed: idle for {} s", idle.as_secs()),
            End::BadFrame(why) => format!("closed: bad frame from the client ({})", cut(why)),
            End::Failed(why) => format!("closed: {}", cut(why)),
        };
        if let Err(e) = app.terminal_event(&environment_id, &actor, how).await {
            tracing::warn!(environment = %environment_id, error = %e, "recording a terminal's end failed");
        }
        drop(permit);
    }
}

/// The size a control text frame asks for; `None` for anything else.
fn control(text: &str) -> Option<TermSize> {
    match serde_json::from_str::<Control>(text).ok()? {
        Control::Resize { cols, rows } => TermSize::new(cols, rows),
    }
}

/// `text` cut to [`MAX_REASON`] bytes at a character boundary.
fn cut(text: &str) -> &str {
    let mut end = text.len().min(MAX_REASON);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_resize_of_a_sane_size_is_a_control() {
        assert_eq!(control(r#"{"type":"resize","cols":100,"rows":30}"#), Some(TermSize { cols: 100, rows: 30 }));
        for ignored in [
            "",
            "ls\r",
            "{}",
            r#"{"type":"resize"}"#,
            r#"{"type":"resize","cols":0,"rows":30}"#,
            r#"{"type":"resize","cols":100,"rows":1001}"#,
            r#"{"type":"resize","cols":-5,"rows":30}"#,
            r#"{"type":"resize","cols":1e99,"rows":30}"#,
            r#"{"type":"exec","cmd":"rm -rf /"}"#,
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        ] {
            assert_eq!(control(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn reasons_fit_a_close_frame() {
        assert_eq!(cut("exited 3"), "exited 3");
        let long = "é".repeat(100);
        assert!(cut(&long).len() <= MAX_REASON);
        assert!(long.starts_with(cut(&long)));
    }
}

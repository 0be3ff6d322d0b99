//! `lapse shell ID`: the local terminal attached to an environment's interactive terminal
//! (`GET /v1/environments/{id}/terminal`, a WebSocket).
//!
//! - When stdin is a terminal it is put in raw mode (every key goes to the remote shell,
//!   Ctrl-C included), and the mode is restored on every way out: the remote shell's exit, the
//!   connection's end, an error, `SIGTERM`/`SIGHUP`/`SIGQUIT` to this process, or a panic
//!   (the guard's `Drop`). Window size changes (`SIGWINCH`) are sent as resize frames.
//! - When stdin is not a terminal (a pipe), it is sent as it is, and the output still read
//!   until the remote shell exits.
//! - The exit code is the remote shell's (from the close frame's `exited <code>`); 1 when the
//!   terminal ended otherwise.
//!
//! The process ends with `std::process::exit` once the terminal is restored: a read of stdin
//! may still be blocked in tokio's blocking pool, which a runtime shutdown would wait for.

use std::io::Write;
use std::os::fd::AsFd;

use anyhow::{Context as _, bail};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;

/// Attaches to environment `id`'s terminal at `base` and exits with the remote shell's code.
pub async fn run(base: &str, key: Option<&str>, id: &str) -> anyhow::Result<std::process::ExitCode> {
    let (cols, rows) = window_size().unwrap_or((80, 24));
    let Some(rest) = base.trim_end_matches('/').strip_prefix("http://") else {
        bail!("lapse shell speaks plain http only (ws://); {base:?} is not an http:// URL");
    };
    let url = format!("ws://{rest}/v1/environments/{id}/terminal?cols={cols}&rows={rows}");
    let mut req = url.into_client_request().context("building the terminal's request")?;
    if let Some(key) = key {
        req.headers_mut().insert("authorization", format!("Bearer {key}").parse().context("the key")?);
    }
    let ws = match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            let message = serde_json::from_slice::<lapse_core::wire::ErrorBody>(body)
                .map_or_else(|_| String::from_utf8_lossy(body).into_owned(), |e| e.error.message);
            bail!("{message} ({})", resp.status().as_u16());
        }
        Err(e) => bail!("cannot open the terminal at {base}: {e}"),
    };
    let raw = RawMode::enable();
    let code = session(ws).await;
    drop(raw);
    let _ = std::io::stdout().flush();
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1)
        }
    }
}

async fn session(
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> anyhow::Result<i32> {
    let (mut sink, mut stream) = ws.split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = std::io::stdout();
    let mut winch = signal(SignalKind::window_change()).context("SIGWINCH")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP")?;
    let mut quit = signal(SignalKind::quit()).context("SIGQUIT")?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut stdin_open = true;
    loop {
        tokio::select! {
            read = stdin.read(&mut buf), if stdin_open => match read {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => sink.send(Message::Binary(buf[..n].to_vec().into())).await.context("sending")?,
            },
            _ = winch.recv() => {
                if let Some((cols, rows)) = window_size() {
                    let resize = format!(r#"{{"type":"resize","cols":{cols},"rows":{rows}}}"#);
                    sink.send(Message::Text(resize.into())).await.context("sending")?;
                }
            }
            _ = term.recv() => return Ok(143),
            _ = hup.recv() => return Ok(129),
            _ = quit.recv() => return Ok(131),
            message = stream.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    stdout.write_all(&bytes).context("writing to stdout")?;
                    stdout.flush().context("writing to stdout")?;
                }
                Some(Ok(Message::Close(frame))) => {
                    let reason = frame.as_ref().map(|f| f.reason.to_string()).unwrap_or_default();
                    return Ok(exit_code(&reason).unwrap_or_else(|| {
                        eprintln!("\r\nlapse: the terminal closed: {reason}");
                        1
                    }));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("the terminal's connection failed: {e}"),
                None => bail!("the terminal's connection ended"),
            },
        }
    }
}

/// `N` from a close reason `exited N`.
fn exit_code(reason: &str) -> Option<i32> {
    reason.strip_prefix("exited ")?.parse().ok().map(|c: i64| (c & 0xff) as i32)
}

/// The local terminal's size (columns, rows), when stdout is one.
fn window_size() -> Option<(u16, u16)> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout().as_fd()).ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col.min(1000), size.ws_row.min(1000)))
}

/// Stdin in raw mode while it lives; the former mode back when it is dropped.
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enable() -> RawMode {
        let stdin = std::io::stdin();
        let Ok(saved) = rustix::termios::tcgetattr(stdin.as_fd()) else { return RawMode(None) };
        let mut raw = saved.clone();
        raw.make_raw();
        match rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw) {
            Ok(()) => RawMode(Some(saved)),
            Err(_) => RawMode(None),
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = rustix::termios::tcsetattr(std::io::stdin().as_fd(), rustix::termios::OptionalActions::Now, saved);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_exit_code_is_the_close_reasons() {
        assert_eq!(super::exit_code("exited 3"), Some(3));
        assert_eq!(super::exit_code("exited 256"), Some(0));
        assert_eq!(super::exit_code("exited"), None);
        assert_eq!(super::exit_code("idle"), None);
    }
}

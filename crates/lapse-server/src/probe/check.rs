//! One probe attempt: an HTTP `GET`, a TCP connect, or a command through the provider's
//! `exec`, bounded by the probe's timeout.
//!
//! **Only recorded endpoints are reached.** The address of a port is the environment's
//! `endpoints` entry for it (container port → host:port, as its provider recorded it); a port
//! without one fails the probe and nothing is connected to. The HTTP exchange is hand-made and
//! bounded: one request with `Connection: close`, and only the status line is read (at most
//! [`MAX_STATUS_LINE`] bytes).

use lapse_core::model::Environment;
use lapse_core::probe::{Probe, Target};
use lapse_providers::Provider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes read looking for the HTTP status line.
pub const MAX_STATUS_LINE: usize = 1024;

/// Runs one attempt of `probe` on `env`: `Ok` if it passed, else why not.
pub async fn attempt(provider: Option<&dyn Provider>, env: &Environment, probe: &Probe) -> Result<(), String> {
    match tokio::time::timeout(probe.timeout, run(provider, env, probe)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("no answer within {}", lapse_core::duration::format_duration(probe.timeout))),
    }
}

async fn run(provider: Option<&dyn Provider>, env: &Environment, probe: &Probe) -> Result<(), String> {
    match &probe.target {
        Target::Tcp(port) => {
            let (host, hport) = endpoint(env, *port)?;
            TcpStream::connect((host, hport)).await.map(drop).map_err(|e| format!("tcp {host}:{hport}: {e}"))
        }
        Target::Http { port, path } => {
            let (host, hport) = endpoint(env, *port)?;
            let status = http_status(host, hport, path).await?;
            if (200..400).contains(&status) { Ok(()) } else { Err(format!("GET {path} answered {status}")) }
        }
        Target::Cmd(cmd) => {
            let Some(provider) = provider else {
                return Err(format!("provider {:?} is not configured on this server", env.spec.provider));
            };
            // The exec's own deadline is the probe's; the outer timeout catches a provider
            // that overruns it.
            let result =
                provider.exec(&env.id, &env.spec, cmd, probe.timeout).await.map_err(|e| format!("exec: {e}"))?;
            match result.exit_code {
                Some(0) => Ok(()),
                Some(code) => Err(format!("{} exited {code}", cmd.join(" "))),
                None => Err(format!("{} timed out", cmd.join(" "))),
            }
        }
    }
}

/// The recorded address of container port `port`.
fn endpoint(env: &Environment, port: u16) -> Result<(&str, u16), String> {
    env.endpoints
        .iter()
        .find(|e| e.container_port == port)
        .map(|e| (e.host.as_str(), e.port))
        .ok_or_else(|| format!("no endpoint recorded for port {port}"))
}

/// The status code of `GET path` at `host:port`.
async fn http_status(host: &str, port: u16, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect((host, port)).await.map_err(|e| format!("http {host}:{port}: {e}"))?;
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    // `path` is validated printable ASCII without spaces, so it cannot end the request line.
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: lapse-probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("http {authority}: {e}"))?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        if buf.len() >= MAX_STATUS_LINE {
            return Err(format!("http {authority}: no status line in {MAX_STATUS_LINE} bytes"));
        }
        let n = stream.read(&mut chunk).await.map_err(|e| format!("http {authority}: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_status(&buf).ok_or_else(|| format!("http {authority}: not an HTTP answer"))
}

/// The code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
fn parse_status(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.trim_end().splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 302 Found\r\nLocation: /\r\n"), Some(302));
        assert_eq!(parse_status(b"HTTP/1.1 503\r\n"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}

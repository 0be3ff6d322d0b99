//! A terminal in a container through the Docker Engine API (docker, and swarm's task
//! container): an exec of the shell with `Tty` and stdin attached, started attached (the
//! engine's hijacked connection carries the terminal's bytes both ways), resized with
//! `/exec/{id}/resize`. The exec runs as the container's user in its working directory, with
//! `TERM` set. It has ended when the attached stream ends; its exit code is then the exec's
//! (`/exec/{id}/json`). Dropping the terminal closes the connection, hence the shell's stdin.
//!
//! The start is hijacked here, not through bollard's `start_exec`: bollard decodes the stream
//! as multiplexed whenever a chunk starts with byte 0, 1 or 2, so a program that prints such a
//! byte garbles the terminal, and one that prints a forged header makes the reader wait for
//! (and buffer) up to 4 GiB. A TTY exec's stream is raw bytes: they are passed on as they
//! come, in chunks of at most [`CHUNK_BYTES`], read only as fast as they are taken.

use std::io;

use async_trait::async_trait;
use bollard::Docker;
use bollard::exec::{CreateExecOptions, ResizeExecOptions};
use bytes::Bytes;
use futures::StreamExt;
use lapse_core::model::Spec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::ProviderError;
use crate::engine::{classify, status_of};
use crate::terminal::{CHUNK_BYTES, Resize, TERM, TermSize, Terminal, shell_of};

/// Opens a shell of `spec` on a TTY of `size` in the running container `container`, through
/// the engine at `endpoint` (`unix:///path`, `/path`, `tcp://host:port`, `http://host:port`).
pub(crate) async fn open(
    docker: &Docker,
    endpoint: &str,
    provider: &'static str,
    container: &str,
    environment_id: &str,
    spec: &Spec,
    size: TermSize,
) -> Result<Terminal, ProviderError> {
    let config = CreateExecOptions {
        cmd: Some(shell_of(spec)),
        env: Some(vec![format!("TERM={TERM}")]),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(true),
        ..Default::default()
    };
    let exec = docker.create_exec(container, config).await.map_err(|e| match status_of(&e) {
        Some(404 | 409) => ProviderError::NotFound { provider, environment_id: environment_id.to_owned() },
        _ => classify(provider, "terminal", e),
    })?;
    let (read, input) = hijack(endpoint, &exec.id).await.map_err(|e| ProviderError::Failed {
        provider,
        op: "terminal",
        message: format!("starting the exec: {e}"),
    })?;
    let resizer = EngineResize { docker: docker.clone(), exec_id: exec.id.clone(), provider };
    // The exec's TTY exists once it started; a failed first resize leaves the engine's size.
    if let Err(e) = resizer.resize(size).await {
        tracing::debug!(error = %e, "resizing a new terminal failed");
    }
    let (ended, on_end) = tokio::sync::oneshot::channel::<()>();
    let bytes = futures::stream::unfold(Some(read), |read| async move {
        let mut read = read?;
        let mut chunk = vec![0u8; CHUNK_BYTES];
        match read.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok(Bytes::from(chunk)), Some(read)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    // Dropped when the stream ends (or the terminal is dropped): the shell is done.
    let tail = futures::stream::once(async move { drop(ended) }).filter_map(|()| async { None::<io::Result<Bytes>> });
    let (docker, exec_id) = (docker.clone(), exec.id);
    let exited = Box::pin(async move {
        let _ = on_end.await;
        exit_code(&docker, &exec_id).await
    });
    Ok(Terminal { output: bytes.chain(tail).boxed(), input: Box::pin(input), resizer: Box::new(resizer), exited })
}

/// The exec's exit code once the engine has it (it may lag the stream's end a little).
async fn exit_code(docker: &Docker, exec_id: &str) -> Option<i64> {
    for _ in 0..50 {
        match docker.inspect_exec(exec_id).await {
            Ok(inspect) if inspect.running != Some(true) => return inspect.exit_code,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            Err(_) => return None,
        }
    }
    None
}

struct EngineResize {
    docker: Docker,
    exec_id: String,
    provider: &'static str,
}

#[async_trait]
impl Resize for EngineResize {
    async fn resize(&self, size: TermSize) -> Result<(), ProviderError> {
        let options = ResizeExecOptions { height: size.rows, width: size.cols };
        self.docker.resize_exec(&self.exec_id, options).await.map_err(|e| classify(self.provider, "terminal", e))
    }
}

/// `POST /exec/{id}/start` with `Upgrade: tcp`: the engine answers 101 and the connection
/// then carries the TTY's bytes both ways.
async fn hijack(
    endpoint: &str,
    exec_id: &str,
) -> Result<(impl AsyncRead + Send + Unpin + 'static, impl AsyncWrite + Send + 'static), String> {
    use http_body_util::Full;
    use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
    use hyper_util::rt::TokioIo;

    let connect = async {
        if let Some(path) = endpoint.strip_prefix("unix://").or(endpoint.starts_with('/').then_some(endpoint)) {
            let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| format!("{path}: {e}"))?;
            Ok::<_, String>(hijack_on(TokioIo::new(stream), exec_id).await?)
        } else {
            let address = endpoint.trim_start_matches("tcp://").trim_start_matches("http://").trim_end_matches('/');
            let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("{address}: {e}"))?;
            Ok(hijack_on(TokioIo::new(stream), exec_id).await?)
        }
    };
    let upgraded = tokio::time::timeout(std::time::Duration::from_secs(30), connect)
        .await
        .map_err(|_| "the engine did not answer in 30 s".to_owned())??;
    return Ok(tokio::io::split(TokioIo::new(upgraded)));

    async fn hijack_on<T>(io: T, exec_id: &str) -> Result<hyper::upgrade::Upgraded, String>
    where
        T: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "the engine's exec connection ended");
            }
        });
        let request = hyper::Request::post(format!("/exec/{exec_id}/start"))
            .header(HOST, "docker")
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "tcp")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(br#"{"Detach":false,"Tty":true}"#)))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            return Err(format!("the engine answered {} instead of switching protocols", response.status()));
        }
        hyper::upgrade::on(response).await.map_err(|e| e.to_string())
    }
}

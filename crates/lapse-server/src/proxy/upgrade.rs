//! WebSocket upgrades: the client's `Upgrade: websocket` request is forwarded, and once the
//! backend answers `101 Switching Protocols` both upgraded connections are spliced, bytes
//! (and so frames) passed through both ways as they come.
//!
//! The splice holds its stream permit until it ends, reports activity for every read (at
//! most once a second per environment, by the throttle), and ends when either side closes or
//! when no byte has moved either way for the idle timeout. Only `websocket` upgrades are
//! forwarded; any other `Upgrade` is dropped as a hop-by-hop header.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{self, HeaderMap};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::limits::{Moved, StreamPermit};

/// Whether the request asks to become a WebSocket.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")));
    let connection = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    upgrade && connection
}

/// Splices the two upgraded connections until one closes or both stay silent for `idle`.
pub async fn splice(
    client: OnUpgrade,
    backend: OnUpgrade,
    idle: Duration,
    permit: Arc<StreamPermit>,
    on_frame: Arc<dyn Fn() + Send + Sync>,
) {
    let _permit = permit;
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "a WebSocket upgrade did not complete");
            return;
        }
    };
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (backend_read, backend_write) = tokio::io::split(TokioIo::new(backend));
    let moved = Moved::new();
    moved.now();
    let up = pump(client_read, backend_write, moved.clone(), on_frame.clone());
    let down = pump(backend_read, client_write, moved.clone(), on_frame);
    tokio::pin!(up, down);
    // When one side closes, the other gets a moment to pass on what it still has.
    let grace = idle.min(CLOSE_GRACE);
    loop {
        let deadline = moved.deadline(idle);
        tokio::select! {
            _ = &mut up => {
                let _ = tokio::time::timeout(grace, &mut down).await;
                return;
            }
            _ = &mut down => {
                let _ = tokio::time::timeout(grace, &mut up).await;
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {
                if moved.deadline(idle) <= tokio::time::Instant::now() {
                    tracing::debug!(?idle, "closing a WebSocket idle on both sides");
                    return;
                }
            }
        }
    }
}

/// How long the second direction may go on once the first has closed.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Copies `from` to `to` until `from` ends or either fails; then shuts `to` down.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    moved: Arc<Moved>,
    on_frame: Arc<dyn Fn() + Send + Sync>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        moved.now();
        on_frame();
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            break;
        }
        moved.now();
    }
    let _ = to.shutdown().await;
}

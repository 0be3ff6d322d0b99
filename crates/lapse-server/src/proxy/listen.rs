//! The proxy's own accept loop, apart from the API's: its own connection cap, so proxied
//! traffic cannot take the API's connections, and its own tasks.
//!
//! - At most `max_connections` client connections at once; at the cap new ones wait in the
//!   kernel's listen backlog (a WebSocket, once upgraded, leaves the cap and is held by the
//!   stream caps instead).
//! - A connection must send a request's headers within the header timeout, also between
//!   keep-alive requests (hyper's header read timeout), so idle or slow sockets are closed.
//! - Request heads are limited to `max_header_bytes` of hyper's buffer.
//! - At shutdown the loop stops accepting and open connections are closed gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1::Builder;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::Proxy;

/// Serves the proxy on `listener` until `shutdown` turns `true`.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    let limits = &proxy.config;
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Room above the head limit, so an oversized head still gets the JSON 431 of
        // `Proxy::serve` rather than hyper's bare one.
        .max_buf_size(limits.max_header_bytes.max(8192) + 16 * 1024);
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            // The semaphore is never closed.
            p = slots.clone().acquire_owned() => p.expect("connection semaphore open"),
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "the proxy failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (proxy, builder, mut shutdown) = (proxy.clone(), builder.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, std::convert::Infallible>(proxy.handle(peer, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
            tokio::pin!(conn);
            let stopping = tokio::select! {
                result = conn.as_mut() => {
                    log_end(peer, result);
                    false
                }
                _ = shutdown.wait_for(|s| *s) => true,
            };
            if stopping {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            }
            drop(permit);
        });
    }
}

fn log_end(peer: SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "a proxy connection ended with an error");
    }
}

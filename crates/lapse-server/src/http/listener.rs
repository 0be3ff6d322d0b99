//! The HTTP listener: an accept loop that serves the router with bounds no client can exceed.
//!
//! Contract:
//! - **At most `max_connections` connections are served at once** (and never more than the
//!   file-descriptor limit leaves room for, see [`effective_max_connections`]). At the cap, the
//!   connection that has been idle longest (no request in flight: never sent one, or between
//!   keep-alive requests) is closed to make room for the new one; if every connection has a
//!   request in flight, new connections wait in the kernel's listen backlog until one ends.
//!   So idle sockets cannot lock a client with a real request out.
//! - **Header timeout**: a connection must deliver a request's headers within
//!   `header_timeout` of connecting, or of the first byte after an idle spell; else it is
//!   closed (slowloris).
//! - **Idle timeout**: a keep-alive connection with no request for `idle_timeout` is closed.
//! - A request in flight is never cut by these timers (an `exec` may run for minutes); its
//!   body has its own deadline (see [`super::ApiJson`]).
//! - Accept errors (`EMFILE` and the like) never stop the loop: it waits a moment and goes on.
//! - Each request carries [`axum::extract::ConnectInfo`] with the peer's address.
//! - At shutdown the loop stops accepting, idle connections close at once, requests in flight
//!   get [`SHUTDOWN_GRACE`] to finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1::Builder;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

/// How long requests in flight may take to finish once a shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// File descriptors kept free of connections for the store, providers and Redis.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// Bounds of the listener (`lapse serve --max-connections`, `--http-header-timeout`,
/// `--http-idle-timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns `(soft before, soft now)`.
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (now, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok((soft, now))
}

/// The connection cap under a descriptor limit of `fd_limit`: `wanted`, but leaving a quarter
/// of the descriptors (at least [`RESERVED_DESCRIPTORS`]) for everything else; at least 1.
pub fn effective_max_connections(wanted: usize, fd_limit: u64) -> usize {
    let reserve = RESERVED_DESCRIPTORS.max(fd_limit / 4);
    let room = usize::try_from(fd_limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
    wanted.min(room).max(1)
}

/// Serves `router` on `listener` until `shutdown` turns `true`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry::default());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // HTTP/1.1 only, as before. Timeouts are the watchdog's (below): hyper's own header timer
    // would also cut keep-alive idles short.
    let mut builder = Builder::new();
    builder.header_read_timeout(None).max_buf_size(256 * 1024);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors or a connection reset before it was taken: wait, go on.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                registry.evict_idlest();
                tokio::select! {
                    // The semaphore is never closed.
                    p = slots.clone().acquire_owned() => p.expect("connection semaphore open"),
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = registry.add();
        let (router, builder, registry, shutdown) =
            (router.clone(), builder.clone(), registry.clone(), shutdown.clone());
        tokio::spawn(async move {
            serve_one(stream, peer, router, &builder, &conn, limits, shutdown).await;
            registry.remove(conn.id);
            drop(permit);
        });
    }
    // Every connection holds a slot until it ends: wait for all of them, within the grace.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all)).await.is_err() {
        tracing::warn!("requests still in flight at the end of the shutdown grace are dropped");
    }
    Ok(())
}

async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: &Builder,
    conn: &Arc<Conn>,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = {
        let conn = conn.clone();
        tower::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
            let guard = conn.begin();
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                let answer = router.oneshot(req).await;
                drop(guard);
                answer
            }
        })
    };
    let io = TokioIo::new(Watched { inner: stream, conn: conn.clone() });
    // Upgrades on: the terminal is a WebSocket; an upgraded connection leaves this loop.
    let serving = builder.serve_connection(io, TowerToHyperService::new(service)).with_upgrades();
    tokio::pin!(serving);
    let mut shutting_down = false;
    loop {
        let check = conn.deadline(limits).unwrap_or_else(|| Instant::now() + limits.header_timeout);
        tokio::select! {
            result = serving.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(check) => {
                if conn.deadline(limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(%peer, "closing a connection past its header or idle timeout");
                    return;
                }
            }
            _ = conn.evict.notified() => {
                tracing::debug!(%peer, "closing an idle connection to make room (--max-connections)");
                return;
            }
            _ = shutdown.wait_for(|s| *s), if !shutting_down => {
                shutting_down = true;
                serving.as_mut().graceful_shutdown();
            }
        }
    }
}

const FRESH: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// One connection's state, shared by its task, its service and its socket.
#[derive(Debug)]
struct Conn {
    id: u64,
    epoch: Instant,
    /// `FRESH` (connected, or bytes of a request arriving after an idle spell: the header
    /// timeout runs), `BUSY` (requests in flight), `IDLE` (between requests).
    phase: AtomicU8,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when the phase began.
    since: AtomicU64,
    evict: Notify,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// When the connection is to be closed unless something happens; `None` while busy.
    fn deadline(&self, limits: ConnectionLimits) -> Option<Instant> {
        let timeout = match self.phase.load(Ordering::Acquire) {
            FRESH => limits.header_timeout,
            IDLE => limits.idle_timeout,
            _ => return None,
        };
        Some(self.epoch + Duration::from_millis(self.since.load(Ordering::Acquire)) + timeout)
    }

    /// A request began; the returned guard ends it.
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.phase.store(BUSY, Ordering::Release);
        RequestGuard(self.clone())
    }

    /// Bytes arrived: after an idle spell they start a request, and its header timeout.
    fn read_some(&self) {
        if self.phase.load(Ordering::Acquire) == IDLE {
            self.since.store(self.now_ms(), Ordering::Release);
            let _ = self.phase.compare_exchange(IDLE, FRESH, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// How long it has had no request in flight, if it has none.
    fn idle_for(&self) -> Option<u64> {
        (self.in_flight.load(Ordering::Acquire) == 0)
            .then(|| self.now_ms().saturating_sub(self.since.load(Ordering::Acquire)))
    }
}

struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.since.store(self.0.now_ms(), Ordering::Release);
            self.0.phase.store(IDLE, Ordering::Release);
        }
    }
}

/// The connections being served.
#[derive(Debug, Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
}

impl Registry {
    fn add(&self) -> Arc<Conn> {
        let epoch = Instant::now();
        let conn = Arc::new(Conn {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            epoch,
            phase: AtomicU8::new(FRESH),
            in_flight: AtomicUsize::new(0),
            since: AtomicU64::new(0),
            evict: Notify::new(),
        });
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(conn.id, conn.clone());
        conn
    }

    fn remove(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Closes the connection with no request in flight that has waited longest.
    fn evict_idlest(&self) {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let idlest = conns.values().filter_map(|c| Some((c.idle_for()?, c))).max_by_key(|(idle, c)| (*idle, !c.id));
        if let Some((_, conn)) = idlest {
            // `notify_one` keeps the permit if the task is not waiting at this instant.
            conn.evict.notify_one();
        }
    }
}

/// The socket, noting when bytes arrive.
struct Watched {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_free() {
        assert_eq!(effective_max_connections(1024, 256), 192);
        assert_eq!(effective_max_connections(1024, 20_000), 1024);
        assert_eq!(effective_max_connections(100, 20_000), 100);
        assert_eq!(effective_max_connections(1024, 10), 1, "always at least one");
    }

    #[tokio::test(start_paused = true)]
    async fn timers_follow_the_phases() {
        let limits = ConnectionLimits {
            max_connections: 2,
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
        };
        let registry = Registry::default();
        let conn = registry.add();
        assert_eq!(conn.deadline(limits), Some(conn.epoch + Duration::from_secs(2)), "fresh: header timeout");
        let guard = conn.begin();
        assert_eq!(conn.deadline(limits), None, "busy: no timer");
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(guard);
        assert_eq!(conn.deadline(limits), Some(conn.epoch + Duration::from_secs(35)), "idle: idle timeout");
        tokio::time::advance(Duration::from_secs(1)).await;
        conn.read_some();
        assert_eq!(conn.deadline(limits), Some(conn.epoch + Duration::from_secs(33)), "bytes: header timeout");
        let busy = registry.add();
        let _g = busy.begin();
        let other = registry.add();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(conn.idle_for(), Some(1000));
        assert_eq!(busy.idle_for(), None);
        assert_eq!(other.idle_for(), Some(1000));
    }
}

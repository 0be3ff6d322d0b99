//! Bounds of the proxy: concurrent streams (in total and per environment), bodies that stop
//! moving, and the rate at which activity is reported.
//!
//! - A **stream** is a proxied request from its start until its response body ends, or a
//!   WebSocket until it closes. Over the per-environment cap the answer is `429
//!   too_many_streams`, over the total cap `503 proxy_busy` (JSON, nothing forwarded).
//! - An [`IdleBody`] ends with an error when no frame moves for the idle timeout, so a backend
//!   that stalls mid-response (or a client that stalls mid-upload) frees its stream.
//! - [`Throttle`] passes at most one activity report per environment per second to the
//!   [`super::ActivitySink`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Why a stream was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("this environment has {0} proxied streams open, its limit; retry when one ends")]
    Environment(usize),
    #[error("the proxy has {0} streams open, its limit; retry later")]
    Total(usize),
}

/// Streams open, in total and per environment.
#[derive(Debug)]
pub struct Streams {
    max_total: usize,
    max_per_environment: usize,
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_environment: HashMap<String, usize>,
}

/// One admitted stream; dropping it ends it.
#[derive(Debug)]
pub struct StreamPermit {
    streams: Arc<Streams>,
    environment_id: String,
}

impl Streams {
    pub fn new(max_total: usize, max_per_environment: usize) -> Arc<Streams> {
        Arc::new(Streams {
            max_total: max_total.max(1),
            max_per_environment: max_per_environment.max(1),
            open: Mutex::default(),
        })
    }

    /// Admits a stream to `environment_id`, or says which cap it is over.
    pub fn admit(self: &Arc<Self>, environment_id: &str) -> Result<StreamPermit, LimitError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.max_total {
            return Err(LimitError::Total(self.max_total));
        }
        let count = open.per_environment.get(environment_id).copied().unwrap_or(0);
        if count >= self.max_per_environment {
            return Err(LimitError::Environment(self.max_per_environment));
        }
        open.total += 1;
        open.per_environment.insert(environment_id.to_owned(), count + 1);
        Ok(StreamPermit { streams: self.clone(), environment_id: environment_id.to_owned() })
    }

    /// Streams open now (total).
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_environment.get_mut(&self.environment_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_environment.remove(&self.environment_id);
            }
        }
    }
}

/// Reports activity to a sink, at most once per environment per [`Throttle::EVERY`].
pub struct Throttle {
    sink: Arc<dyn super::ActivitySink>,
    last: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Throttle")
    }
}

impl Throttle {
    pub const EVERY: Duration = Duration::from_secs(1);
    /// Environments remembered before the stale ones are dropped.
    const MAX_REMEMBERED: usize = 10_000;

    pub fn new(sink: Arc<dyn super::ActivitySink>) -> Throttle {
        Throttle { sink, last: Mutex::default() }
    }

    /// Activity on `environment_id`: passed on unless one was passed within the last second.
    pub fn touch(&self, environment_id: &str) {
        let now = Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.get(environment_id).is_some_and(|at| now.duration_since(*at) < Self::EVERY) {
                return;
            }
            if last.len() >= Self::MAX_REMEMBERED {
                last.retain(|_, at| now.duration_since(*at) < Self::EVERY);
            }
            last.insert(environment_id.to_owned(), now);
        }
        self.sink.touch(environment_id);
    }
}

/// When bytes last moved on a stream, shared by its two directions.
#[derive(Debug)]
pub struct Moved {
    epoch: Instant,
    at_ms: AtomicU64,
}

impl Moved {
    pub fn new() -> Arc<Moved> {
        Arc::new(Moved { epoch: Instant::now(), at_ms: AtomicU64::new(0) })
    }

    pub fn now(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.at_ms.store(ms, Ordering::Relaxed);
    }

    /// When the idle timeout `idle` runs out unless bytes move.
    pub fn deadline(&self, idle: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.at_ms.load(Ordering::Relaxed)) + idle
    }
}

/// The stream stopped moving for the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no data moved for {0:?}: the stream is closed")]
pub struct IdleTimeout(pub Duration);

/// A body that fails when no frame arrives within `idle` (measured from when bytes last
/// moved either way, see [`Moved`]), notes each frame, and holds the stream's permit until it
/// ends.
pub struct IdleBody<B> {
    inner: B,
    idle: Duration,
    moved: Arc<Moved>,
    sleep: Pin<Box<Sleep>>,
    on_frame: Option<Box<dyn Fn() + Send + Sync>>,
    _permit: Option<Arc<StreamPermit>>,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: Duration, moved: Arc<Moved>, permit: Option<Arc<StreamPermit>>) -> Self {
        let sleep = Box::pin(tokio::time::sleep_until(moved.deadline(idle)));
        IdleBody { inner, idle, moved, sleep, on_frame: None, _permit: permit }
    }

    /// Calls `f` for every frame (activity reports).
    pub fn on_frame(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_frame = Some(Box::new(f));
        self
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.moved.now();
                if let Some(f) = &this.on_frame {
                    f();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                let deadline = this.moved.deadline(this.idle);
                if deadline <= Instant::now() {
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout(this.idle)))));
                }
                if this.sleep.deadline() != deadline {
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => continue,
                    Poll::Pending => return Poll::Pending,
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_environment_and_in_total() {
        let streams = Streams::new(3, 2);
        let a1 = streams.admit("a").unwrap();
        let _a2 = streams.admit("a").unwrap();
        assert_eq!(streams.admit("a").unwrap_err(), LimitError::Environment(2));
        let _b1 = streams.admit("b").unwrap();
        assert_eq!(streams.admit("c").unwrap_err(), LimitError::Total(3));
        drop(a1);
        assert_eq!(streams.open(), 2);
        let _c = streams.admit("c").unwrap();
        assert_eq!(streams.admit("a").unwrap_err(), LimitError::Total(3));
    }

    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);
    impl crate::proxy::ActivitySink for Count {
        fn touch(&self, _: &str) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn activity_is_reported_at_most_once_a_second_per_environment() {
        let sink = Arc::new(Count::default());
        let throttle = Throttle::new(sink.clone());
        for _ in 0..100 {
            throttle.touch("a");
        }
        throttle.touch("b");
        assert_eq!(sink.0.load(Ordering::Relaxed), 2);
        tokio::time::advance(Duration::from_millis(1001)).await;
        throttle.touch("a");
        assert_eq!(sink.0.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_moving_fails_after_the_idle_timeout() {
        use http_body_util::BodyExt as _;
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        let moved = Moved::new();
        moved.now();
        let mut body = IdleBody::new(http_body_util::StreamBody::new(rx), Duration::from_secs(5), moved, None);
        tx.try_send(Ok(Frame::data(Bytes::from_static(b"x")))).unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("no data moved"), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}

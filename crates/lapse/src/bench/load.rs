//! The write-path sections' load: a lean HTTP/1.1 client and two drivers.
//!
//! - [`Conn`]: one keep-alive connection (hyper's HTTP/1.1 client, `TCP_NODELAY`), one per
//!   client task, so the bench's own overhead per request is a write and a read, no pool or
//!   lock shared between clients (`reqwest` through one shared client was the limit).
//! - [`closed_loop`]: each client sends its next request when its previous answer is in;
//!   latency is from send to answer.
//! - [`open_loop`]: a schedule offers a fixed rate: request `i` is **due** at
//!   `start + i / rate`. A free client takes the next request, waits until it is due and sends
//!   it; when every client is busy, requests wait, and **their latency counts from when they
//!   were due, not from when they were sent**, so queueing in the server (or in the bench) is
//!   not hidden (no coordinated omission).
//!
//! Both drivers take the client as a value and a `send` that hands it back, so they can be
//! tested without a network (see the tests: paused time).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

/// One keep-alive HTTP/1.1 connection to the server.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    /// Connects to `base` (`http://host:port`).
    pub async fn open(base: &str) -> anyhow::Result<Conn> {
        let host = base.strip_prefix("http://").context("an http:// base address")?.trim_end_matches('/').to_owned();
        let stream = tokio::net::TcpStream::connect(&host).await.with_context(|| format!("connecting to {host}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        // The connection's I/O; it ends when the sender is dropped or the server closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { sender, host })
    }

    /// Opens `n` connections.
    pub async fn open_many(base: &str, n: usize) -> anyhow::Result<Vec<Conn>> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(Conn::open(base).await?);
        }
        Ok(all)
    }

    /// `POST path` with a JSON body; the answer's status (its body is read and dropped, so
    /// the connection stays usable).
    pub async fn post_json(&mut self, path: &str, body: Bytes) -> anyhow::Result<u16> {
        self.sender.ready().await.context("the connection closed")?;
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await?;
        Ok(status)
    }
}

/// One request's outcome.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub status: u16,
    /// Closed loop: from send to answer. Open loop: from when it was due to answer.
    pub ms: f64,
}

/// A driver's run: every request's outcome, and the seconds from start to the last answer.
#[derive(Debug)]
pub struct Run {
    pub samples: Vec<Sample>,
    pub seconds: f64,
}

impl Run {
    /// Answers per second over the run.
    pub fn per_second(&self) -> f64 {
        self.samples.len() as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// How many answered `status`.
    pub fn count(&self, status: u16) -> usize {
        self.samples.iter().filter(|s| s.status == status).count()
    }

    /// The latencies of the answers with `status`.
    pub fn ms_of(&self, status: u16) -> Vec<f64> {
        self.samples.iter().filter(|s| s.status == status).map(|s| s.ms).collect()
    }
}

/// The open loop's offer: `total` requests at `per_second`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub total: usize,
    pub per_second: f64,
}

impl Schedule {
    /// When request `i` is due.
    pub fn due(&self, start: Instant, i: usize) -> Instant {
        // Whole nanoseconds, rounded: a float's truncation would make a due time early.
        start + Duration::from_nanos((i as f64 * 1e9 / self.per_second).round() as u64)
    }
}

/// `total` requests by one task per client, each sending its next when its last is answered.
pub async fn closed_loop<C, F, Fut>(clients: Vec<C>, total: usize, send: F) -> anyhow::Result<Run>
where
    C: Send + 'static,
    F: Fn(C, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<(C, u16)>> + Send,
{
    drive(clients, total, None, send).await
}

/// The requests of `schedule`, by one task per client, each counted from when it was due.
pub async fn open_loop<C, F, Fut>(clients: Vec<C>, schedule: Schedule, send: F) -> anyhow::Result<Run>
where
    C: Send + 'static,
    F: Fn(C, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<(C, u16)>> + Send,
{
    drive(clients, schedule.total, Some(schedule), send).await
}

async fn drive<C, F, Fut>(clients: Vec<C>, total: usize, schedule: Option<Schedule>, send: F) -> anyhow::Result<Run>
where
    C: Send + 'static,
    F: Fn(C, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<(C, u16)>> + Send,
{
    anyhow::ensure!(!clients.is_empty(), "no clients");
    let next = Arc::new(AtomicUsize::new(0));
    let send = Arc::new(send);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients.len());
    for client in clients {
        let (next, send) = (next.clone(), send.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut out = Vec::new();
            let mut last = start;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let from = match schedule {
                    Some(s) => {
                        let due = s.due(start, i);
                        tokio::time::sleep_until(due).await;
                        due
                    }
                    None => Instant::now(),
                };
                let (c, status) = send(client, i).await?;
                client = c;
                last = Instant::now();
                out.push(Sample { status, ms: (last - from).as_micros() as f64 / 1000.0 });
            }
            anyhow::Ok((out, last))
        }));
    }
    let mut samples = Vec::with_capacity(total);
    let mut end = start;
    for t in tasks {
        let (out, last) = t.await.context("a client task")??;
        samples.extend(out);
        end = end.max(last);
    }
    Ok(Run { samples, seconds: (end - start).as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Answer = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<((), u16)>> + Send>>;

    /// A client that takes `ms` per request and answers 201.
    fn slow(ms: u64) -> impl Fn((), usize) -> Answer {
        move |(), _| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(((), 201))
            })
        }
    }

    fn latencies(run: &Run) -> Vec<f64> {
        let mut ms: Vec<f64> = run.samples.iter().map(|s| s.ms).collect();
        ms.sort_by(f64::total_cmp);
        ms
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_sent_late_counts_from_when_it_was_due() {
        // Due every 100 ms, 250 ms each, one client: request 1 is due at 100 but sent at 250
        // and answered at 500 (400 ms); request 2 is due at 200, answered at 750 (550 ms).
        let run = open_loop(vec![()], Schedule { total: 3, per_second: 10.0 }, slow(250)).await.unwrap();
        assert_eq!(latencies(&run), vec![250.0, 400.0, 550.0]);
        assert_eq!(run.seconds, 0.75);
        assert_eq!(run.count(201), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_sent_when_due_counts_its_own_time_only() {
        // Due every 100 ms, 50 ms each: never late, the clients wait for the schedule.
        let run = open_loop(vec![(), ()], Schedule { total: 4, per_second: 10.0 }, slow(50)).await.unwrap();
        assert_eq!(latencies(&run), vec![50.0; 4]);
        assert_eq!(run.seconds, 0.35);
    }

    #[tokio::test(start_paused = true)]
    async fn the_closed_loop_counts_from_the_send() {
        // Two clients, 100 ms each, six requests: three rounds, each 100 ms, 300 ms in all.
        let run = closed_loop(vec![(), ()], 6, slow(100)).await.unwrap();
        assert_eq!(latencies(&run), vec![100.0; 6]);
        assert_eq!(run.seconds, 0.3);
        assert_eq!(run.per_second(), 20.0);
    }
}

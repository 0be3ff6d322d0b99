//! The `http` kind of claim hook ([`lapse_core::claim::HttpHook`]): one `POST` of the claim's
//! parameters as a JSON object to a port and path of the member (connecting is tried again
//! while the member does not listen yet; once a request was sent it is never repeated), then
//! a `GET` readiness check repeated until it passes, all within the hook's deadline.
//!
//! **Only recorded endpoints are reached**, as the proxy and the probes do: the address is the
//! member's `endpoints` entry for the port (container port → host:port, as its provider
//! recorded it); a port without one fails the hook and nothing is connected to. Each exchange
//! is one HTTP/1.1 request with `Connection: close`; at most
//! [`MAX_HTTP_ANSWER`](lapse_core::claim::MAX_HTTP_ANSWER) bytes of an answer are read.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, header};
use lapse_core::claim::{ClaimParams, HttpHook, MAX_HTTP_ANSWER, READY_PAUSE, http_body, json_field_is};
use lapse_core::model::Environment;
use tokio::net::TcpStream;

/// Delivers `params` to `env` through `hook`, by `deadline`.
pub async fn deliver(
    env: &Environment,
    hook: &HttpHook,
    params: &ClaimParams,
    deadline: Instant,
) -> Result<(), String> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let body = http_body(hook, params).to_string();
    let what = format!("on_claim.http POST :{}{}", hook.port, hook.path);
    let (status, answer) = loop {
        let sent = exchange(env, hook.port, Method::POST, &hook.path, Some(body.clone()));
        match tokio::time::timeout(left(), sent).await {
            Err(_) => return Err(format!("{what}: no answer in time")),
            Ok(Ok(answer)) => break answer,
            // Nothing was sent: a member that just started may not listen yet (the seed probes
            // it before assigning), so connecting is tried again until the deadline.
            Ok(Err(e)) if e.starts_with(NOT_CONNECTED) && left() > READY_PAUSE => {
                tokio::time::sleep(READY_PAUSE).await;
            }
            Ok(Err(e)) => return Err(format!("{what}: {e}")),
        }
    };
    if !status.is_success() {
        return Err(format!("{what}: answered {status}: {}", excerpt(&answer)));
    }
    if let Some(accept) = &hook.accept
        && !json_field_is(&answer, &accept.field, &accept.values)
    {
        return Err(format!(
            "{what}: the answer's {:?} is not one of {:?}: {}",
            accept.field,
            accept.values,
            excerpt(&answer)
        ));
    }
    let Some(ready) = &hook.ready else { return Ok(()) };
    let port = ready.port.unwrap_or(hook.port);
    let mut last = String::from("not asked");
    while !left().is_zero() {
        match tokio::time::timeout(left(), exchange(env, port, Method::GET, &ready.path, None)).await {
            Ok(Ok((status, answer))) if status.is_success() => match (&ready.field, &ready.value) {
                (Some(field), Some(value)) if !json_field_is(&answer, field, std::slice::from_ref(value)) => {
                    last = format!("{field:?} is not {value:?}: {}", excerpt(&answer));
                }
                _ => return Ok(()),
            },
            Ok(Ok((status, _))) => last = format!("answered {status}"),
            Ok(Err(e)) => last = e,
            Err(_) => last = "no answer in time".into(),
        }
        tokio::time::sleep(READY_PAUSE.min(left())).await;
    }
    Err(format!("on_claim.http.ready GET :{port}{} did not pass in time: {last}", ready.path))
}

/// How a failure to connect (nothing sent) starts.
const NOT_CONNECTED: &str = "connecting to ";

/// One request to the recorded endpoint of container port `port`: its status and (bounded)
/// body.
async fn exchange(
    env: &Environment,
    port: u16,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(StatusCode, Bytes), String> {
    let endpoint = env
        .endpoints
        .iter()
        .find(|e| e.container_port == port)
        .ok_or_else(|| format!("no endpoint recorded for port {port}"))?;
    let ip: std::net::IpAddr =
        endpoint.host.parse().map_err(|_| format!("the endpoint of port {port} is not an IP address"))?;
    let addr = std::net::SocketAddr::new(ip, endpoint.port);
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("{NOT_CONNECTED}{addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let conn = tokio::spawn(conn);
    let authority = addr.to_string();
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, authority)
        .header(header::USER_AGENT, "lapse-claim-hook")
        .header(header::CONNECTION, "close");
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("the request cannot be made: {e}"))?;
    let answer = async {
        let response = sender.send_request(request).await.map_err(|e| format!("{addr}: {e}"))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_HTTP_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("{addr}: reading the answer (at most {MAX_HTTP_ANSWER} bytes): {e}"))?
            .to_bytes();
        Ok((status, bytes))
    }
    .await;
    conn.abort();
    answer
}

fn excerpt(answer: &[u8]) -> String {
    String::from_utf8_lossy(&answer[..answer.len().min(200)]).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use lapse_core::claim::{HttpReady, JsonAccept};
    use lapse_core::model::{Endpoint, Spec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A loopback server answering `POST` with `post` and `GET` with `get`, `ready_after`
    /// GETs later; what it received is kept.
    async fn member(
        post: &'static str,
        get: &'static str,
        ready_after: usize,
    ) -> (Environment, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        serve(listener, post, get, ready_after, seen.clone());
        (env_at(port), seen)
    }

    fn env_at(port: u16) -> Environment {
        let mut env = Environment::new("e".into(), "o".into(), Spec::default(), 0);
        env.endpoints = vec![Endpoint { container_port: 3000, protocol: "tcp".into(), host: "127.0.0.1".into(), port }];
        env
    }

    fn serve(
        listener: tokio::net::TcpListener,
        post: &'static str,
        get: &'static str,
        ready_after: usize,
        kept: Arc<Mutex<Vec<String>>>,
    ) {
        tokio::spawn(async move {
            let mut gets = 0;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                // Headers and a small body arrive in one or two reads on loopback.
                loop {
                    let m = s.read(&mut buf[n..]).await.unwrap();
                    n += m;
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let done = text.find("\r\n\r\n").is_some_and(|at| {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        n >= at + 4 + len
                    });
                    if m == 0 || done {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let answer = if text.starts_with("POST") {
                    post
                } else {
                    gets += 1;
                    if gets > ready_after { get } else { r#"{"status":"pending"}"# }
                };
                kept.lock().unwrap().push(text);
                let reply =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}", answer.len());
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
    }

    #[tokio::test]
    async fn a_member_that_listens_late_still_gets_its_parameters_once() {
        // A port nobody listens on for now (refused), served 600 ms later.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            serve(listener, r#"{"status":"success"}"#, r#"{"status":"ready"}"#, 0, kept);
        });
        deliver(&env_at(port), &hook(), &params(), soon(10)).await.unwrap();
        let posts = seen.lock().unwrap().iter().filter(|r| r.starts_with("POST")).count();
        assert_eq!(posts, 1, "sent once, after it listened");
        // Never listening: the hook fails at its deadline, naming the refusal.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = deliver(&env_at(port), &hook(), &params(), soon(1)).await.unwrap_err();
        assert!(err.contains("connecting to"), "{err}");
    }

    fn hook() -> HttpHook {
        HttpHook {
            port: 3000,
            path: "/assign-s3-bucket".into(),
            body: [("bucket".to_owned(), "S3_BUCKET".to_owned())].into(),
            accept: Some(JsonAccept {
                field: "status".into(),
                values: vec!["success".into(), "already_assigned".into()],
            }),
            ready: Some(HttpReady {
                port: None,
                path: "/sync-status".into(),
                field: Some("status".into()),
                value: Some("ready".into()),
            }),
        }
    }

    fn params() -> ClaimParams {
        ClaimParams { env: [("S3_BUCKET".to_owned(), "student-1".to_owned())].into(), ..Default::default() }
    }

    fn soon(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn posts_the_mapped_body_then_waits_until_ready() {
        let (env, seen) = member(r#"{"status":"success"}"#, r#"{"status":"ready"}"#, 2).await;
        deliver(&env, &hook(), &params(), soon(10)).await.unwrap();
        let seen = seen.lock().unwrap();
        assert!(seen[0].starts_with("POST /assign-s3-bucket HTTP/1.1"), "{}", seen[0]);
        assert!(seen[0].to_ascii_lowercase().contains("content-type: application/json"));
        assert!(seen[0].ends_with(r#"{"bucket":"student-1"}"#), "{}", seen[0]);
        assert_eq!(seen.len(), 4, "the POST, two pending GETs, the ready one");
        assert!(seen[3].starts_with("GET /sync-status HTTP/1.1"));
    }

    #[tokio::test]
    async fn a_refused_answer_or_a_readiness_that_never_comes_fails() {
        let (env, _) = member(r#"{"status":"error","error":"nope"}"#, r#"{"status":"ready"}"#, 0).await;
        let err = deliver(&env, &hook(), &params(), soon(10)).await.unwrap_err();
        assert!(err.contains(r#"the answer's "status" is not one of"#) && err.contains("nope"), "{err}");
        let (env, _) = member(r#"{"status":"already_assigned"}"#, r#"{"status":"ready"}"#, usize::MAX).await;
        let err = deliver(&env, &hook(), &params(), soon(1)).await.unwrap_err();
        assert!(err.contains("did not pass in time") && err.contains("pending"), "{err}");
        let (mut env, seen) = member(r#"{"status":"success"}"#, "", 0).await;
        env.endpoints.clear();
        let err = deliver(&env, &hook(), &params(), soon(1)).await.unwrap_err();
        assert!(err.contains("no endpoint recorded for port 3000"), "{err}");
        assert!(seen.lock().unwrap().is_empty(), "nothing is connected to without a recorded endpoint");
    }
}

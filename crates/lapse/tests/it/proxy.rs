//! The routing proxy (`--proxy-listen`) through `lapse serve`: a process environment running
//! a small Python HTTP + WebSocket server (`proxy_backend.py`), and a docker one (busybox
//! `httpd`).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Server, eventually, secs};

const ADMIN: &str = "admin-key-for-proxy-tests-0123";
const BACKEND: &str = include_str!("proxy_backend.py");

/// A loopback port free now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Proxied {
    server: Server,
    /// `http://127.0.0.1:PORT`
    proxy: String,
    http: reqwest::Client,
}

async fn start(dir: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> Proxied {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut all = vec!["--proxy-listen", &listen];
    all.extend_from_slice(args);
    let server = Server::start_with_env(dir, &all, envs).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    Proxied { server, proxy: format!("http://{listen}"), http }
}

/// A process environment serving `proxy_backend.py` on `port`, with named routes.
fn backend(port: u16) -> Value {
    json!({"owner": "ada", "ttl": "10m", "spec": {
        "provider": "process",
        "cmd": ["/usr/bin/python3", "-c", BACKEND, port.to_string()],
        "ports": [port],
        "routes": {"code": port, "keep": {"port": port, "strip_prefix": false}},
    }})
}

impl Proxied {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.proxy))
    }

    /// Starts the backend, waits for it to run and answer through the proxy; its id.
    async fn running_backend(&self, key: Option<&str>) -> (String, u16) {
        let port = free_port();
        let (status, env) = self.server.request_as(key, Method::POST, "/v1/environments", Some(backend(port))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{env}");
        let id = env["id"].as_str().unwrap().to_owned();
        self.server.wait_state(&id, "running", secs(30)).await;
        let key = key.or(self.server.key.as_deref()).map(str::to_owned);
        eventually(secs(30), "the backend answers through the proxy", async || {
            let mut req = self.get(&format!("/e/{id}/{port}/ready"));
            if let Some(k) = &key {
                req = req.header("x-lapse-key", k);
            }
            (req.send().await.ok()?.status() == StatusCode::OK).then_some(())
        })
        .await;
        (id, port)
    }
}

async fn json_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The proxy's JSON refusal: the status and its code.
async fn refusal(resp: reqwest::Response) -> (StatusCode, String) {
    let (status, body) = json_of(resp).await;
    (status, body["error"]["code"].as_str().unwrap_or_else(|| panic!("not a JSON error: {body}")).to_owned())
}

/// A raw request line and headers to `addr`, the answer's head and what follows it.
async fn raw(addr: &str, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok() || !out.is_empty(), "an answer to {request:?}");
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens a WebSocket at `path`, sends each message as a text frame and returns the echoes.
async fn websocket(addr: &str, path: &str, extra: &str, messages: &[&str]) -> Vec<String> {
    let mut s = open_websocket(addr, path, extra).await;
    let mut echoes = Vec::new();
    for (opcode, message) in messages.iter().map(|m| (0x81u8, *m)).chain([(0x88u8, "")]) {
        let echo = frame(&mut s, opcode, message).await;
        if opcode == 0x81 {
            echoes.push(echo);
        }
    }
    echoes
}

/// Sends one masked frame and reads the echo's payload.
async fn frame(s: &mut tokio::net::TcpStream, opcode: u8, message: &str) -> String {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![opcode, 0x80 | message.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(message.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).await.unwrap();
    let mut head = [0u8; 2];
    tokio::time::timeout(secs(10), s.read_exact(&mut head)).await.expect("an echo").unwrap();
    assert_eq!(head[0], opcode, "the frame's opcode comes back");
    let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
    s.read_exact(&mut payload).await.unwrap();
    String::from_utf8(payload).unwrap()
}

/// A WebSocket at `path`, upgraded.
async fn open_websocket(addr: &str, path: &str, extra: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(secs(10), s.read_exact(&mut byte)).await.expect("the upgrade answer").unwrap();
        answer.push(byte[0]);
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{answer}");
    s
}

#[tokio::test]
async fn http_streams_and_websockets_reach_a_process_environment() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &["--proxy-domain", "ide.test"], &[]).await;
    let (id, port) = p.running_backend(None).await;
    let addr = p.proxy.trim_start_matches("http://").to_owned();

    // Host routing: `<id>-<route>.<domain>` and `<id>-<port>.<domain>`, the whole path forwarded.
    for host in [format!("{id}-code.ide.test"), format!("{id}-{port}.IDE.test:8443")] {
        let answer = raw(&addr, &format!("GET /x/y?z=1 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains(r#""path": "/x/y?z=1""#), "{host}: {answer}");
    }
    let answer = raw(&addr, &format!("GET / HTTP/1.1\r\nHost: {id}-web.ide.test\r\nConnection: close\r\n\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "no route web: {answer}");

    // GET: the path after the route, the query, X-Forwarded-*, and no Lapse credentials.
    let resp = p
        .get(&format!("/e/{id}/{port}/a/b?x=1&lapse_key=secret&y=2"))
        .header("x-lapse-key", "anything")
        .header("cookie", "app=1; lapse_session=s3cr3t")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    // A key in the query (any key, on a server without keys) makes a session and redirects.
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], format!("/e/{id}/{port}/a/b?x=1&y=2"));
    let (status, seen) = json_of(
        p.get(&format!("/e/{id}/{port}/a/b?x=1&y=2"))
            .header("x-lapse-key", "anything")
            .header("cookie", "app=1; lapse_session=s3cr3t")
            .header("x-forwarded-for", "6.6.6.6")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "dropped")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["path"], "/a/b?x=1&y=2");
    let headers = &seen["headers"];
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "replaced, not appended to the client's");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], addr);
    assert_eq!(headers["x-forwarded-prefix"], format!("/e/{id}/{port}"));
    assert_eq!(headers["cookie"], "app=1", "the app's cookies pass, the proxy's session does not");
    for gone in ["x-lapse-key", "x-hop", "authorization"] {
        assert!(headers.get(gone).is_none(), "{gone} was forwarded: {headers}");
    }

    // Named routes: stripped by default, kept when the route says so; a bare prefix redirects.
    let (_, seen) = json_of(p.get(&format!("/code/{id}/static/x.js")).send().await.unwrap()).await;
    assert_eq!(seen["path"], "/static/x.js");
    let (_, seen) = json_of(p.get(&format!("/keep/{id}/static/x.js")).send().await.unwrap()).await;
    assert_eq!(seen["path"], format!("/keep/{id}/static/x.js"));
    let resp = p.get(&format!("/code/{id}")).send().await.unwrap();
    assert_eq!(
        (resp.status(), resp.headers()["location"].to_str().unwrap()),
        (StatusCode::PERMANENT_REDIRECT, &*format!("/code/{id}/"))
    );

    // POST bodies go through both ways, large ones too.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let resp = p.http.post(format!("{}/e/{id}/{port}/echo", p.proxy)).body(body.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), body.as_slice());

    // A streamed response arrives in parts: the first before the backend writes the second.
    let mut stream = p.get(&format!("/e/{id}/{port}/stream")).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let first = tokio::time::timeout(secs(10), stream.chunk()).await.expect("part 1 before the end").unwrap().unwrap();
    assert_eq!(first.as_ref(), b"part1");
    let resp = p.get(&format!("/e/{id}/{port}/release")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let second = tokio::time::timeout(secs(10), stream.chunk()).await.unwrap().unwrap().unwrap();
    assert_eq!(second.as_ref(), b"part2");
    assert!(stream.chunk().await.unwrap().is_none());

    // A WebSocket echo, through /e and through a named route.
    let echoes = websocket(&addr, &format!("/e/{id}/{port}/ws"), "", &["hello", "world"]).await;
    assert_eq!(echoes, ["hello", "world"]);
    let echoes = websocket(&addr, &format!("/code/{id}/ws"), "", &["through a route"]).await;
    assert_eq!(echoes, ["through a route"]);

    // Refusals: JSON, nothing forwarded.
    let other = free_port();
    let unknown = "0192f0a1b2c3d4e5f60718293a4b5c6d";
    // Sent as raw request lines: an HTTP client would normalize the dot segments away.
    for (path, want) in [
        (format!("/e/{id}/{other}/"), (StatusCode::NOT_FOUND, "not_found")),
        (format!("/web/{id}/"), (StatusCode::NOT_FOUND, "not_found")),
        (format!("/e/{unknown}/{port}/"), (StatusCode::NOT_FOUND, "not_found")),
        ("/v1/environments".to_owned(), (StatusCode::NOT_FOUND, "not_found")),
        ("/".to_owned(), (StatusCode::NOT_FOUND, "not_found")),
        (format!("/e/{id}/{port}/../{other}/"), (StatusCode::BAD_REQUEST, "invalid_request")),
        (format!("/e/{id}/{port}/%2e%2e/%2e%2e/e/{id}/{other}/"), (StatusCode::BAD_REQUEST, "invalid_request")),
        (format!("/e/{id}/{port}/a%2f..%2f..%2fx"), (StatusCode::BAD_REQUEST, "invalid_request")),
        (format!("/e/{id}/{port}//127.0.0.1:{other}/"), (StatusCode::BAD_REQUEST, "invalid_request")),
        (format!("/code/{id}/..%5c..%5cx"), (StatusCode::BAD_REQUEST, "invalid_request")),
    ] {
        let answer = raw(&addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")).await;
        let status = format!("HTTP/1.1 {}", want.0.as_u16());
        assert!(answer.starts_with(&status) && answer.contains(want.1), "{path}: {answer}");
        assert!(!answer.contains("\"path\""), "nothing was forwarded: {answer}");
    }
    // Absolute-form targets and CONNECT never pick a host.
    for line in [
        format!("GET http://127.0.0.1:{other}/e/{id}/{port}/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    ] {
        let answer = raw(&addr, &line).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{line:?}: {answer}");
        assert!(answer.contains("invalid_request"), "{answer}");
    }

    // Stopped: 409 while it is not running.
    let (status, _) = p.server.post(&format!("/v1/environments/{id}/stop"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    p.server.wait_state(&id, "stopped", secs(30)).await;
    let got = refusal(p.get(&format!("/e/{id}/{port}/")).send().await.unwrap()).await;
    assert_eq!((got.0, got.1.as_str()), (StatusCode::CONFLICT, "not_running"));
}

/// Creates a tenant allowed to run process environments, and a key for it.
async fn tenant(server: &Server, name: &str) -> (String, String) {
    let body = json!({"name": name, "tier": "pro", "quota": {"providers": ["process"]}});
    let (status, t) = server.post("/v1/admin/tenants", body).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let (status, k) = server.post(&format!("/v1/admin/tenants/{name}/keys"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{k}");
    (k["id"].as_str().unwrap().to_owned(), k["key"].as_str().unwrap().to_owned())
}

fn cookie_of(resp: &reqwest::Response) -> String {
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn keys_cookies_and_signed_links_guard_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &[], &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let (key_id, acme) = tenant(&p.server, "acme").await;
    let (_, other) = tenant(&p.server, "other").await;
    let (id, port) = p.running_backend(Some(&acme)).await;
    let path = format!("/e/{id}/{port}/who");

    // No credentials: 401; another tenant's key: 404 as for a missing environment.
    let got = refusal(p.get(&path).send().await.unwrap()).await;
    assert_eq!((got.0, got.1.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let got = refusal(p.get(&path).header("x-lapse-key", &other).send().await.unwrap()).await;
    assert_eq!((got.0, got.1.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let got = refusal(p.get(&path).bearer_auth(&other).send().await.unwrap()).await;
    assert_eq!(got.0, StatusCode::NOT_FOUND);
    let got = refusal(p.get(&path).header("x-lapse-key", "lapse_0123456789abcdef_00").send().await.unwrap()).await;
    assert_eq!(got.0, StatusCode::UNAUTHORIZED);

    // The owner's key and the admin key get through; the key is not forwarded.
    for key in [&acme, ADMIN] {
        let (status, seen) = json_of(p.get(&path).bearer_auth(key).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{seen}");
        assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    }
    // A Lapse key in Authorization is never forwarded, whichever credential granted.
    let (status, seen) =
        json_of(p.get(&path).header("x-lapse-key", &acme).bearer_auth(ADMIN).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    // An Authorization that is not a Lapse key is the app's own: forwarded when a cookie
    // grants the request.
    let resp = p.get(&format!("{path}?lapse_key={acme}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], path);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in ["HttpOnly", "SameSite=Lax", &format!("Path=/e/{id}"), "Max-Age="] {
        assert!(set.contains(part), "{part} in {set}");
    }
    assert!(!set.contains(&acme), "the cookie is a session, not the key: {set}");
    let cookie = cookie_of(&resp);
    let (status, seen) = json_of(
        p.get(&path).header("cookie", &cookie).header("authorization", "Basic YXBwOm93bg==").send().await.unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["headers"]["authorization"], "Basic YXBwOm93bg==");
    assert!(seen["headers"].get("cookie").is_none(), "{seen}");
    // A session is for its environment only, and ends with its key.
    let other_port = free_port();
    let got = refusal(
        p.get(&format!("/e/0192f0a1b2c3d4e5f60718293a4b5c6d/{other_port}/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.0, StatusCode::UNAUTHORIZED);
    let (status, _) = p.server.request(Method::DELETE, &format!("/v1/admin/keys/{key_id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let got = refusal(p.get(&path).header("cookie", &cookie).send().await.unwrap()).await;
    assert_eq!(got.0, StatusCode::UNAUTHORIZED, "a revoked key's session ends");

    // Signed links: made by whoever sees the environment, for one port or route.
    let (status, body) = p
        .server
        .request_as(Some(&other), Method::POST, &format!("/v1/environments/{id}/links"), Some(json!({"port": port})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    for bad in [
        json!({}),
        json!({"port": port, "route": "code"}),
        json!({"port": other_port}),
        json!({"route": "nope"}),
        json!({"port": port, "ttl": "25h"}),
        json!({"port": port, "ttl": 0}),
        json!({"port": port, "extra": 1}),
    ] {
        let (status, body) = p.server.post(&format!("/v1/environments/{id}/links"), bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, link) =
        p.server.post(&format!("/v1/environments/{id}/links"), json!({"route": "code", "ttl": "10m"})).await;
    assert_eq!(status, StatusCode::CREATED, "{link}");
    let url = link["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("{}/code/{id}/?lapse_link=", p.proxy)), "{url}");
    let expires = chrono::DateTime::parse_from_rfc3339(link["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!((590..=601).contains(&left), "{left}");
    let resp = p.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], format!("/code/{id}/"));
    let cookie = cookie_of(&resp);
    assert!(resp.headers()["set-cookie"].to_str().unwrap().contains(&format!("Path=/code/{id}")));
    let (status, seen) =
        json_of(p.get(&format!("/code/{id}/inside")).header("cookie", &cookie).send().await.unwrap()).await;
    assert_eq!((status, seen["path"].as_str()), (StatusCode::OK, Some("/inside")));
    // The link and its session open that route only.
    let got =
        refusal(p.get(&format!("/e/{id}/{port}/?{}", url.split_once('?').unwrap().1)).send().await.unwrap()).await;
    assert_eq!((got.0, got.1.as_str()), (StatusCode::FORBIDDEN, "link_invalid"));
    let got = refusal(p.get(&path).header("cookie", &cookie).send().await.unwrap()).await;
    assert_eq!(got.0, StatusCode::UNAUTHORIZED);
    // Tampered: any change of the token is refused.
    let (head, mac) = url.rsplit_once('.').unwrap();
    let flipped = match mac.strip_prefix('0') {
        Some(rest) => format!("1{rest}"),
        None => format!("0{}", &mac[1..]),
    };
    for bad in [format!("{head}.{flipped}"), url.replace(".r-code.", ".any."), format!("{url}0")] {
        let got = refusal(p.http.get(&bad).send().await.unwrap()).await;
        assert_eq!((got.0, got.1.as_str()), (StatusCode::FORBIDDEN, "link_invalid"), "{bad}");
    }
    let longer = url.replace(
        &format!(".{}.", expires.timestamp_millis()),
        &format!(".{}.", expires.timestamp_millis() + 3_600_000),
    );
    assert_ne!(longer, url);
    let got = refusal(p.http.get(&longer).send().await.unwrap()).await;
    assert_eq!((got.0, got.1.as_str()), (StatusCode::FORBIDDEN, "link_invalid"), "a later expiry is a forgery");
    // An expiring link works, then is refused.
    let (_, short) = p.server.post(&format!("/v1/environments/{id}/links"), json!({"port": port, "ttl": 1})).await;
    let short = short["url"].as_str().unwrap().to_owned();
    assert_eq!(p.http.get(&short).send().await.unwrap().status(), StatusCode::SEE_OTHER);
    eventually(secs(5), "the link expires", async || {
        let resp = p.http.get(&short).send().await.ok()?;
        (resp.status() == StatusCode::FORBIDDEN).then_some(())
    })
    .await;
    let got = refusal(p.http.get(&short).send().await.unwrap()).await;
    assert_eq!(got.1, "link_expired");
    let events = p.server.events_of(&id).await;
    assert!(events.iter().any(|e| e["action"] == "link_created"), "{events:?}");
}

#[tokio::test]
async fn a_stalled_backend_cannot_hold_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &["--proxy-idle-timeout", "3s", "--proxy-max-streams-per-environment", "2"], &[]).await;
    let (id, port) = p.running_backend(None).await;
    let stall = format!("/e/{id}/{port}/stall");
    // Two requests the backend never answers (one with a body it never reads) take the
    // environment's two streams; a third is refused meanwhile.
    let started = std::time::Instant::now();
    let first = tokio::spawn(p.get(&stall).send());
    let body = vec![7u8; 8 << 20];
    // Its own client: a connection cut mid-upload is not one to reuse.
    let second = tokio::spawn(reqwest::Client::new().post(format!("{}{stall}", p.proxy)).body(body).send());
    // Setup, not an assertion: give both a moment to be admitted (nothing else may race them
    // for the two streams).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let got = refusal(p.get(&format!("/e/{id}/{port}/probe")).send().await.unwrap()).await;
    assert_eq!((got.0, got.1.as_str()), (StatusCode::TOO_MANY_REQUESTS, "too_many_streams"));
    // Both are cut after the idle timeout, and their streams come back.
    let first = tokio::time::timeout(secs(20), first).await.expect("cut").unwrap().unwrap();
    assert_eq!(refusal(first).await, (StatusCode::GATEWAY_TIMEOUT, "backend_timeout".to_owned()));
    let second = tokio::time::timeout(secs(20), second).await.expect("cut").unwrap();
    if let Ok(resp) = second {
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT, "the upload was admitted, then cut");
    }
    assert!(started.elapsed() >= secs(3), "not before the idle timeout: {:?}", started.elapsed());
    let resp = p.get(&format!("/e/{id}/{port}/probe")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the streams are free again");
    // A response that stops halfway is cut too: the stream's second part never comes.
    let mut stream = p.get(&format!("/e/{id}/{port}/stream")).send().await.unwrap();
    assert_eq!(stream.chunk().await.unwrap().unwrap().as_ref(), b"part1");
    let rest = tokio::time::timeout(secs(20), stream.chunk()).await.expect("cut within the idle timeout");
    assert!(rest.is_err(), "the stalled stream ends with an error, not a clean end: {rest:?}");
    let _ = p.get(&format!("/e/{id}/{port}/release")).send().await;
    // A WebSocket silent both ways for the idle timeout is closed; one in use is not.
    let addr = p.proxy.trim_start_matches("http://").to_owned();
    let mut ws = open_websocket(&addr, &format!("/e/{id}/{port}/ws"), "").await;
    // In use for longer than the idle timeout, a frame a second: kept.
    for i in 0..5 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(frame(&mut ws, 0x81, &format!("keep {i}")).await, format!("keep {i}"));
    }
    let quiet = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(secs(20), ws.read(&mut byte)).await.expect("closed by the proxy");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(quiet.elapsed() >= std::time::Duration::from_millis(2500), "{:?}", quiet.elapsed());
    // Oversized heads are refused, as JSON while they fit the buffer.
    let got =
        refusal(p.get(&format!("/e/{id}/{port}/")).header("x-big", "x".repeat(70_000)).send().await.unwrap()).await;
    assert_eq!(got.0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test]
async fn a_docker_environment_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &[], &[]).await;
    let _cleanup = RemoveOnDrop(p.server.controller_id.clone());
    let body = json!({"owner": "ada", "ttl": "10m", "spec": {
        "provider": "docker", "image": crate::docker::image(), "ports": [8080], "routes": {"web": 8080},
        "cmd": ["sh", "-c", "mkdir -p /tmp/w/sub && echo hello-from-docker > /tmp/w/sub/index.html && exec httpd -f -p 8080 -h /tmp/w"],
    }});
    let env = p.server.create(body).await;
    let id = env["id"].as_str().unwrap().to_owned();
    let env = p.server.wait_state(&id, "running", secs(60)).await;
    let host_port = env["endpoints"][0]["port"].as_u64().unwrap();
    assert_ne!(host_port, 8080, "published on another host port: the proxy maps it");
    let text = eventually(secs(30), "busybox httpd answers through the proxy", async || {
        let resp = p.get(&format!("/web/{id}/sub/index.html")).send().await.ok()?;
        (resp.status() == StatusCode::OK).then_some(resp.text().await.ok()?)
    })
    .await;
    assert_eq!(text.trim(), "hello-from-docker");
    let resp = p.get(&format!("/e/{id}/8080/sub/index.html")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap().trim(), "hello-from-docker");
    let got = refusal(p.get(&format!("/e/{id}/{host_port}/")).send().await.unwrap()).await;
    assert_eq!(got.0, StatusCode::NOT_FOUND, "the host port is not the environment's port");
}

/// Removes this server's containers when dropped.
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        crate::harness::remove_containers_of(&self.0);
    }
}

#[tokio::test]
async fn idle_stop_waits_while_a_websocket_is_in_use_and_fires_after() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &["--activity-flush", "1s"], &[]).await;
    let port = free_port();
    let mut body = backend(port);
    body["idle_timeout"] = json!("3s");
    let (status, env) = p.server.post("/v1/environments", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    p.server.wait_state(&id, "running", secs(30)).await;
    let addr = p.proxy.trim_start_matches("http://").to_owned();
    eventually(secs(30), "the backend answers through the proxy", async || {
        (p.get(&format!("/e/{id}/{port}/ready")).send().await.ok()?.status() == StatusCode::OK).then_some(())
    })
    .await;
    let mut ws = open_websocket(&addr, &format!("/code/{id}/ws"), "").await;
    // Only WebSocket frames through the proxy, one a second, for twice the idle timeout.
    for i in 0..6 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(frame(&mut ws, 0x81, &format!("still here {i}")).await, format!("still here {i}"));
        assert_eq!(p.server.env(&id).await["state"], "running", "in use through the proxy: not idle");
    }
    drop(ws);
    let quiet = std::time::Instant::now();
    let stopped = p.server.wait_state(&id, "stopped", secs(30)).await;
    assert!(quiet.elapsed() >= std::time::Duration::from_millis(2000), "not before the timeout: {:?}", quiet.elapsed());
    assert!(stopped["idled_at"].is_string(), "{stopped}");
    let events = p.server.events_of(&id).await;
    assert!(events.iter().any(|e| e["action"] == "idle"), "{events:?}");
}

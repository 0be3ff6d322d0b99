//! The Classla API (`--classla-listen`) through `lapse serve`, with the seed's own request and
//! response bodies (`src/routes/containers.ts`, `health.ts`, the middleware): a warm claim
//! whose bucket reaches the member through the `http` claim hook, the `urls` working through
//! the proxy without a key, reuse, inactivity; a failing hook recycling its member; keys,
//! rate limits, paging, 404s, the memory threshold and hostile input (the seed's envelope,
//! never a 5xx). The containers are docker ones (Podman) of the local busybox image, serving
//! the IDE's ports: 8080 and 6080 (`httpd`), 3000 (a small `nc` server answering the seed's
//! `assign-s3-bucket` and `sync-status`).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, eventually, secs};

const ADMIN: &str = "admin-key-for-classla-tests-0123";

/// The member's port 3000: `assign-s3-bucket` keeps the body and answers `ASSIGN`;
/// `sync-status` says `ready` once a bucket was assigned.
const HANDLER: &str = r#"#!/bin/sh
read -r method path version
len=0
while read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
  case "$line" in [Cc]ontent-[Ll]ength:*) len=${line#*: };; esac
done
body=""
[ "$len" -gt 0 ] 2>/dev/null && body=$(head -c "$len")
case "$path" in
  /assign-s3-bucket) printf '%s' "$body" > /tmp/assigned; out='ASSIGN';;
  /sync-status) if [ -f /tmp/assigned ]; then out='{"status":"ready"}'; else out='{"status":"syncing"}'; fi;;
  *) out='{"web":true}';;
esac
printf 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "${#out}" "$out"
"#;

fn cmd(assign_answer: &str) -> String {
    let handler = HANDLER.replace("ASSIGN", assign_answer);
    let script = format!(
        "mkdir -p /www && echo code-server > /www/index.html && httpd -p 8080 -h /www && httpd -p 6080 -h /www && \
         cat > /tmp/h <<'EOF'\n{handler}EOF\nchmod +x /tmp/h && exec nc -ll -p 3000 -e /tmp/h"
    );
    serde_json::to_string(&["sh", "-c", &script]).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Classla {
    server: Server,
    api: String,
    proxy: String,
    http: reqwest::Client,
}

async fn start(dir: &std::path::Path, assign_answer: &str, envs: &[(&str, &str)]) -> Classla {
    start_with(dir, assign_answer, envs, &[]).await
}

async fn start_with(dir: &std::path::Path, assign_answer: &str, envs: &[(&str, &str)], extra: &[&str]) -> Classla {
    let (api_port, proxy_port) = (free_port(), free_port());
    let api = format!("127.0.0.1:{api_port}");
    let proxy = format!("127.0.0.1:{proxy_port}");
    let cmd = cmd(assign_answer);
    let image = crate::docker::image();
    let mut all: Vec<(&str, &str)> = vec![
        ("LAPSE_ADMIN_KEY", ADMIN),
        ("API_KEY", "key-one, key-two"),
        ("DOMAIN", "localhost"),
        ("IDE_CONTAINER_IMAGE", &image),
        ("CONTAINER_CPU_LIMIT", "1"),
        ("CONTAINER_MEMORY_LIMIT", "67108864"),
        ("PRE_WARMED_QUEUE_SIZE", "1"),
    ];
    all.extend_from_slice(envs);
    let mut args = vec![
        "--classla-listen",
        &api,
        "--proxy-listen",
        &proxy,
        "--classla-open-urls",
        "--classla-provider",
        "docker",
        "--classla-cmd",
        &cmd,
    ];
    args.extend_from_slice(extra);
    let server = Server::start_with_env(dir, &args, &all).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    Classla { server, api: format!("http://{api}"), proxy: format!("http://{proxy}"), http }
}

/// An answer: status, the rate-limit headers, the body.
struct Answer {
    status: StatusCode,
    limit: Option<(String, String, String)>,
    body: Value,
}

impl Classla {
    async fn call(&self, method: Method, path: &str, auth: Option<&str>, body: Option<Value>) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.api));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::answer(req.send().await.expect("the Classla API answers")).await
    }

    async fn raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
        let req = self.http.post(format!("{}{path}", self.api)).header("authorization", "key-one");
        Self::answer(req.header("content-type", content_type).body(body).send().await.unwrap()).await
    }

    async fn answer(resp: reqwest::Response) -> Answer {
        let status = resp.status();
        let h = |k: &str| resp.headers().get(k).map(|v| v.to_str().unwrap().to_owned());
        let limit = match (h("x-ratelimit-limit"), h("x-ratelimit-remaining"), h("x-ratelimit-reset")) {
            (Some(a), Some(b), Some(c)) => Some((a, b, c)),
            _ => None,
        };
        let text = resp.text().await.unwrap();
        Answer { status, limit, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
    }

    /// `GET /health` once the engine answers it (a loaded machine's Podman can take more
    /// than the provider's health timeout now and then).
    async fn healthy(&self) -> Answer {
        eventually(secs(30), "a 200 from /api/health", async || {
            let a = self.call(Method::GET, "/api/health", None, None).await;
            assert!(a.status == StatusCode::OK || a.status == StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
            assert_eq!(a.body["docker"]["connected"], a.status == StatusCode::OK, "{}", a.body);
            (a.status == StatusCode::OK).then_some(a)
        })
        .await
    }

    async fn wait_warm(&self, n: u64) {
        eventually(secs(60), "the pre-warmed queue", async || {
            (self.server.get("/v1/pools/classla").await.1["warm"].as_u64() >= Some(n)).then_some(())
        })
        .await;
    }

    async fn exec(&self, container: &str, cmd: &[&str]) -> String {
        let id = self.full_id(container).await;
        let (status, out) = self.server.post(&format!("/v1/environments/{id}/exec"), json!({"cmd": cmd})).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        out["stdout"].as_str().unwrap().to_owned()
    }

    async fn full_id(&self, container: &str) -> String {
        let (_, list) = self.server.get("/v1/environments?limit=1000").await;
        let all = list["environments"].as_array().unwrap().clone();
        let (_, deleted) = self.server.get("/v1/environments?state=deleted&limit=1000").await;
        let all = all.into_iter().chain(deleted["environments"].as_array().cloned().unwrap_or_default());
        all.map(|e| e["id"].as_str().unwrap().to_owned())
            .find(|id| id.ends_with(container))
            .expect("the container's environment")
    }
}

/// The seed's error envelope: `{"error": {code, message}, timestamp, path}`.
fn assert_envelope(a: &Answer, status: StatusCode, code: &str, path: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.body["error"]["code"], code, "{}", a.body);
    assert!(a.body["error"]["message"].is_string(), "{}", a.body);
    assert_eq!(a.body["path"], path, "{}", a.body);
    let ts = a.body["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.len() == 24, "toISOString: {ts}");
}

#[tokio::test]
async fn a_warm_claim_gets_its_bucket_through_the_hook_and_its_urls_work() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), r#"{"status":"success"}"#, &[]).await;
    c.wait_warm(1).await;
    let health = c.healthy().await;
    assert_eq!(
        (health.body["status"].as_str(), health.body["docker"]["connected"].as_bool()),
        (Some("ok"), Some(true))
    );
    assert_eq!(health.body["queue"], json!({"preWarmed": 1, "withS3Bucket": 0, "targetSize": 1}));
    assert!(health.body["resources"]["memory"]["total"].as_u64().unwrap() > 0, "{}", health.body);

    // The seed's backend: a bare key, its body.
    let body = json!({"s3Bucket": "student-42", "s3BucketId": "b-42", "awsAccessKeyId": "dummy-key",
                      "awsSecretAccessKey": "dummy-secret", "userId": "u1"});
    let at = std::time::Instant::now();
    let started = c.call(Method::POST, "/api/containers/start", Some("key-two"), Some(body.clone())).await;
    eprintln!("classla: a warm claim with the http hook answered in {:?}", at.elapsed());
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    let id = started.body["id"].as_str().unwrap().to_owned();
    assert!(id.len() == 8 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{id}");
    assert_eq!(
        started.body,
        json!({"id": id, "serviceName": format!("ide-{id}"), "status": "running",
               "urls": {"vnc": format!("http://localhost/vnc/{id}"), "codeServer": format!("http://localhost/code/{id}"),
                        "webServer": format!("http://localhost/web/{id}"), "terminal": format!("http://localhost/terminal/{id}/")},
               "message": "Container is ready. Services are available.", "isPreWarmed": true})
    );
    let (limit, remaining, reset) = started.limit.clone().expect("rate-limit headers");
    assert_eq!((limit.as_str(), remaining.as_str()), ("100", "99"));
    assert!(reset.ends_with('Z'), "{reset}");

    // The hook posted the seed's assignment body to the member's :3000, before the answer.
    let assigned: Value = serde_json::from_str(&c.exec(&id, &["cat", "/tmp/assigned"]).await).unwrap();
    assert_eq!(
        assigned,
        json!({"bucket": "student-42", "bucketId": "b-42", "region": "us-east-1",
               "accessKeyId": "dummy-key", "secretAccessKey": "dummy-secret"})
    );
    assert_eq!(c.exec(&id, &["sh", "-c", "echo $CONTAINER_ID"]).await.trim(), id, "each member its own id");
    assert_eq!(c.exec(&id, &["sh", "-c", "echo $CODE_BASE_PATH"]).await.trim(), format!("/code/{id}"));
    assert_eq!(c.exec(&id, &["sh", "-c", "echo $INACTIVITY_TIMEOUT_SECONDS"]).await.trim(), "600");

    // The URLs through the proxy, without a key (--classla-open-urls).
    let get = |path: String| c.http.get(format!("{}{path}", c.proxy)).send();
    let code = get(format!("/code/{id}/")).await.unwrap();
    assert_eq!(code.status(), StatusCode::OK);
    assert_eq!(code.text().await.unwrap().trim(), "code-server");
    assert_eq!(get(format!("/vnc/{id}/")).await.unwrap().status(), StatusCode::OK);
    assert_eq!(get(format!("/web/{id}/anything")).await.unwrap().text().await.unwrap(), r#"{"web":true}"#);
    assert_eq!(get(format!("/terminal/{id}/")).await.unwrap().status(), StatusCode::OK);
    assert_eq!(get("/code/zzzzzzzz/".into()).await.unwrap().status(), StatusCode::NOT_FOUND, "an unknown id");
    // Open only for the adapter's: another environment still needs a key.
    let full = c.full_id(&id).await;
    assert_eq!(get(format!("/e/{full}/8080/")).await.unwrap().status(), StatusCode::OK, "the same one by its full id");

    // Reuse by bucket.
    let at = std::time::Instant::now();
    let again = c.call(Method::POST, "/containers/start", Some("Bearer key-one"), Some(body)).await;
    eprintln!("classla: a reuse answered in {:?}", at.elapsed());
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!((again.body["id"].as_str(), again.body["isReused"].as_bool()), (Some(id.as_str()), Some(true)));
    assert_eq!(again.body["message"], "Container is already running. Reusing existing instance.");
    assert_eq!(again.body["isPreWarmed"], false);

    let detail = c.call(Method::GET, &format!("/api/containers/{id}"), Some("key-one"), None).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    assert_eq!(
        (detail.body["status"].as_str(), detail.body["s3Bucket"].as_str()),
        (Some("running"), Some("student-42"))
    );
    assert_eq!(detail.body["resourceLimits"], json!({"cpuLimit": "1 cores", "memoryLimit": "67108864 bytes"}));
    assert_eq!(detail.body["isPreWarmed"], true);
    assert_eq!(detail.body["health"]["status"], "healthy", "{}", detail.body);
    assert_eq!(detail.body["health"]["checks"], json!({"codeServer": true, "vnc": true, "webServer": true}));
    assert!(detail.body["uptime"].is_u64() && detail.body.get("shutdownReason").is_none(), "{}", detail.body);

    // The queue refills; the list shows both, the new member without a bucket.
    c.wait_warm(1).await;
    let list = c.call(Method::GET, "/api/containers", Some("key-one"), None).await;
    let rows = list.body["containers"].as_array().unwrap();
    assert_eq!((list.body["total"].as_u64(), list.body["offset"].as_u64()), (Some(2), Some(0)), "{}", list.body);
    assert!(rows.iter().any(|r| r["id"] == id.as_str() && r["s3Bucket"] == "student-42"), "{}", list.body);
    assert!(rows.iter().any(|r| r["id"] != id.as_str() && r["s3Bucket"] == ""), "{}", list.body);
    let page = c.call(Method::GET, "/api/containers?limit=1&offset=1", Some("key-one"), None).await;
    assert_eq!(
        (page.body["total"].as_u64(), page.body["limit"].as_u64(), page.body["offset"].as_u64()),
        (Some(1), Some(1), Some(1))
    );

    // The container's own inactivity call: no key.
    let shut = c
        .call(Method::POST, &format!("/api/containers/{id}/inactivity-shutdown"), None, Some(json!({"reason": "idle"})))
        .await;
    assert_eq!(shut.status, StatusCode::OK, "{}", shut.body);
    assert_eq!(shut.body["message"], format!("Container {id} inactivity shutdown recorded"));
    assert_eq!(
        (shut.body["status"].as_str(), shut.body["shutdownReason"].as_str()),
        (Some("stopped"), Some("inactivity"))
    );
    c.server.wait_state(&full, "deleted", secs(30)).await;
    let detail = c.call(Method::GET, &format!("/api/containers/{id}"), Some("key-one"), None).await;
    assert_eq!(
        (detail.body["status"].as_str(), detail.body["shutdownReason"].as_str()),
        (Some("stopped"), Some("inactivity")),
        "{}",
        detail.body
    );
    assert!(detail.body["stoppedAt"].is_string() && detail.body.get("uptime").is_none(), "{}", detail.body);
    assert_eq!(detail.body["health"], Value::Null, "no longer followed, as the seed's monitor forgets it");
    assert_eq!(get(format!("/code/{id}/")).await.unwrap().status(), StatusCode::CONFLICT, "gone: not running");
}

#[tokio::test]
async fn a_failing_hook_recycles_the_member_and_the_start_is_cold() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), r#"{"status":"error","error":"bucket unreachable"}"#, &[]).await;
    c.wait_warm(1).await;
    let (_, envs) = c.server.get("/v1/environments").await;
    let member = envs["environments"][0]["id"].as_str().unwrap().to_owned();
    let body = json!({"s3Bucket": "student-7", "awsAccessKeyId": "dummy-key", "awsSecretAccessKey": "dummy-secret", "vncPassword": "pw"});
    let at = std::time::Instant::now();
    let started = c.call(Method::POST, "/api/containers/start", Some("key-one"), Some(body)).await;
    eprintln!("classla: a failing hook, then a cold start, answered in {:?}", at.elapsed());
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    assert_eq!(
        (started.body["isPreWarmed"].as_bool(), started.body["status"].as_str()),
        (Some(false), Some("starting"))
    );
    assert_eq!(started.body["message"], "Container is starting. Services will be available shortly.");
    let id = started.body["id"].as_str().unwrap().to_owned();
    assert!(!member.ends_with(&id), "not the member whose hook failed");
    let recycled = c.server.wait_state(&member, "deleted", secs(30)).await;
    assert!(recycled["labels"].get("lapse.claim").is_none(), "{recycled}");
    let events = c.server.events_of(&member).await;
    let failed = events.iter().find(|e| e["action"] == "claim_hook").expect("a claim_hook event");
    assert!(failed["message"].as_str().unwrap().contains("bucket unreachable"), "{failed}");
    // The cold start has the bucket in its environment, as the seed's cold container.
    let full = c.full_id(&id).await;
    let env = c.server.wait_state(&full, "running", secs(60)).await;
    assert_eq!(env["spec"]["env"]["S3_BUCKET"], "student-7");
    assert_eq!(env["spec"]["env"]["VNC_PASSWORD"], "pw");
    assert_eq!(c.exec(&id, &["sh", "-c", "echo $CONTAINER_ID"]).await.trim(), id);

    let deleted = c.call(Method::DELETE, &format!("/api/containers/{id}"), Some("key-one"), None).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    assert_eq!(deleted.body["message"], format!("Container {id} stopped successfully"));
    assert_eq!((deleted.body["id"].as_str(), deleted.body["status"].as_str()), (Some(id.as_str()), Some("stopped")));
    c.server.wait_state(&full, "deleted", secs(30)).await;
    let detail = c.call(Method::GET, &format!("/api/containers/{id}"), Some("key-one"), None).await;
    assert_eq!(
        (detail.body["status"].as_str(), detail.body["shutdownReason"].as_str()),
        (Some("stopped"), Some("manual"))
    );
    assert_eq!(detail.body["isPreWarmed"], false);
    let again = c.call(Method::DELETE, &format!("/api/containers/{id}"), Some("key-one"), None).await;
    assert_eq!(again.status, StatusCode::OK, "a container already gone is tolerated: {}", again.body);
}

#[tokio::test]
async fn keys_limits_paging_and_hostile_input_get_the_seeds_envelope() {
    let dir = tempfile::tempdir().unwrap();
    // No queue, and a memory threshold every host is at: a cold start is refused.
    let c = start(dir.path(), "{}", &[("PRE_WARMED_QUEUE_SIZE", "0"), ("MAX_MEMORY_PERCENT", "0")]).await;
    let root = c.call(Method::GET, "/", None, None).await;
    assert_eq!(root.body, json!({"name": "IDE Orchestration API", "version": "1.0.0", "status": "running"}));
    // The seed's CORS: a preflight needs no key; an answer names the caller's origin.
    let pre =
        c.http.request(Method::OPTIONS, format!("{}/api/containers/start", c.api)).header("origin", "https://app.test");
    let pre = pre.header("access-control-request-method", "POST").send().await.unwrap();
    assert_eq!(pre.status(), StatusCode::NO_CONTENT);
    let h = |r: &reqwest::Response, k: &str| r.headers().get(k).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h(&pre, "access-control-allow-origin").as_deref(), Some("https://app.test"));
    assert_eq!(h(&pre, "access-control-allow-headers").as_deref(), Some("Content-Type,Authorization"));
    assert_eq!(h(&pre, "access-control-allow-credentials").as_deref(), Some("true"));
    let cross =
        c.http.get(format!("{}/api/containers", c.api)).header("origin", "https://app.test").send().await.unwrap();
    assert_eq!(cross.status(), StatusCode::UNAUTHORIZED, "the preflight is open, the route is not");
    assert_eq!(h(&cross, "access-control-allow-origin").as_deref(), Some("https://app.test"));

    let a = c.call(Method::GET, "/api/containers", None, None).await;
    assert_envelope(&a, StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED", "/api/containers");
    assert_eq!(a.body["error"]["message"], "Missing Authorization header");
    let a = c.call(Method::GET, "/containers", Some("Bearer nope"), None).await;
    assert_envelope(&a, StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED", "/containers");
    assert_eq!(a.body["error"]["message"], "Invalid API key");
    for auth in ["key-one", "Bearer key-one", "key-two"] {
        let a = c.call(Method::GET, "/api/containers", Some(auth), None).await;
        assert_eq!(a.status, StatusCode::OK, "{auth}: {}", a.body);
        assert_eq!(a.body, json!({"containers": [], "total": 0, "limit": 0, "offset": 0}));
    }
    let a = c.call(Method::GET, "/api/containers/x/y", None, None).await;
    assert_envelope(&a, StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED", "/api/containers/x/y");
    let a = c.call(Method::GET, "/api/containers/x/y", Some("key-one"), None).await;
    assert_envelope(&a, StatusCode::NOT_FOUND, "NOT_FOUND", "/api/containers/x/y");
    assert!(a.limit.is_some(), "counted, as behind the seed's limiter");
    let a = c.call(Method::GET, "/nowhere", None, None).await;
    assert_envelope(&a, StatusCode::NOT_FOUND, "NOT_FOUND", "/nowhere");
    assert_eq!(a.body["error"]["message"], "The requested resource was not found");
    let a = c.call(Method::PUT, "/api/containers/start", Some("key-one"), None).await;
    assert_envelope(&a, StatusCode::NOT_FOUND, "NOT_FOUND", "/api/containers/start");
    for path in ["/api/containers/abcd1234", "/containers/start"] {
        let a = c.call(Method::GET, path, Some("key-one"), None).await;
        assert_envelope(&a, StatusCode::NOT_FOUND, "CONTAINER_NOT_FOUND", path);
    }
    let a = c.call(Method::DELETE, "/api/containers/abcd1234", Some("key-one"), None).await;
    assert_envelope(&a, StatusCode::NOT_FOUND, "CONTAINER_NOT_FOUND", "/api/containers/abcd1234");
    assert_eq!(a.body["error"]["message"], "Container with ID abcd1234 not found");
    let a = c.call(Method::POST, "/containers/abcd1234/inactivity-shutdown", None, None).await;
    assert_envelope(&a, StatusCode::NOT_FOUND, "CONTAINER_NOT_FOUND", "/containers/abcd1234/inactivity-shutdown");

    // Paging.
    for (query, message) in [
        ("limit=0", "limit must be a positive integer"),
        ("limit=abc", "limit must be a positive integer"),
        ("offset=-1", "offset must be a non-negative integer"),
        ("offset=x", "offset must be a non-negative integer"),
    ] {
        let a = c.call(Method::GET, &format!("/api/containers?{query}"), Some("key-one"), None).await;
        assert_envelope(&a, StatusCode::BAD_REQUEST, "INVALID_PARAMETER", "/api/containers");
        assert_eq!(a.body["error"]["message"], message, "{query}");
    }
    let a = c.call(Method::GET, "/api/containers?limit=5&offset=2&status=running", Some("key-one"), None).await;
    assert_eq!(a.body, json!({"containers": [], "total": 0, "limit": 5, "offset": 2}));

    // Bodies.
    let start = "/api/containers/start";
    for body in [json!({}), json!({"s3Bucket": 5}), json!({"s3Bucket": ""}), json!(["s3Bucket"])] {
        let a = c.call(Method::POST, start, Some("key-one"), Some(body.clone())).await;
        assert_envelope(&a, StatusCode::BAD_REQUEST, "INVALID_S3_BUCKET", start);
        assert_eq!(a.body["error"]["message"], "s3Bucket is required and must be a string", "{body}");
    }
    let a = c.call(Method::POST, start, Some("key-one"), Some(json!({"s3Bucket": "Not_A_Bucket"}))).await;
    assert_envelope(&a, StatusCode::BAD_REQUEST, "INVALID_S3_BUCKET", start);
    assert!(a.body["error"]["message"].as_str().unwrap().starts_with("Invalid bucket name format"));
    let a = c.call(Method::POST, start, Some("key-one"), Some(json!({"s3Bucket": "ok-bucket", "s3Region": 7}))).await;
    assert_envelope(&a, StatusCode::BAD_REQUEST, "INVALID_PARAMETER", start);
    let a = c.raw(start, "application/json", b"{not json".to_vec()).await;
    assert_envelope(&a, StatusCode::BAD_REQUEST, "INVALID_PARAMETER", start);
    let a =
        c.raw(start, "application/json", format!("{{\"s3Bucket\":\"{}\"}}", "a".repeat(200_000)).into_bytes()).await;
    assert_envelope(&a, StatusCode::PAYLOAD_TOO_LARGE, "INVALID_PARAMETER", start);
    let a = c.raw(start, "text/plain", b"s3Bucket=ok-bucket".to_vec()).await;
    assert_envelope(&a, StatusCode::BAD_REQUEST, "INVALID_S3_BUCKET", start);
    // A form is read as the seed's urlencoded parser does; then the memory threshold.
    let a = c
        .raw(
            start,
            "application/x-www-form-urlencoded",
            b"s3Bucket=ok-bucket&awsAccessKeyId=dummy-key&awsSecretAccessKey=dummy-secret".to_vec(),
        )
        .await;
    assert_envelope(&a, StatusCode::SERVICE_UNAVAILABLE, "RESOURCE_LIMIT_EXCEEDED", start);
    assert!(a.body["error"]["message"].as_str().unwrap().contains("exceeds threshold of 0%"), "{}", a.body);
    assert_eq!(c.server.count_environments().await, 0, "nothing was made");

    // 100 a minute per key: the 101st is refused, another key is not.
    let mut last = None;
    for _ in 0..120 {
        let a = c.call(Method::GET, "/api/containers", Some("key-two"), None).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            last = Some(a);
            break;
        }
    }
    let over = last.expect("a 429 within 120 requests");
    assert_envelope(&over, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_EXCEEDED", "/api/containers");
    assert_eq!(over.limit.as_ref().map(|l| (l.0.as_str(), l.1.as_str())), Some(("100", "0")));
    assert!(over.body["error"]["retryAfter"].as_u64().is_some_and(|s| s <= 60), "{}", over.body);
    let other = c.call(Method::GET, "/api/containers", Some("key-one"), None).await;
    assert_eq!(other.status, StatusCode::OK);
    let health = c.healthy().await;
    assert_eq!(health.body["queue"]["targetSize"], 0, "open, and not limited: {}", health.body);

    // --classla-open-urls opens the adapter's containers only: any other environment's
    // routes still need a key.
    let port = free_port();
    let other = c
        .server
        .create(json!({"owner": "ada", "ttl": "10m", "spec": {"provider": "process",
        "cmd": ["/usr/bin/python3", "-m", "http.server", port.to_string(), "--bind", "127.0.0.1"], "ports": [port]}}))
        .await;
    let other = other["id"].as_str().unwrap().to_owned();
    c.server.wait_state(&other, "running", secs(30)).await;
    let short = &other[other.len() - 8..];
    for (path, want) in [
        (format!("/e/{other}/{port}/"), StatusCode::UNAUTHORIZED),
        (format!("/e/{short}/{port}/"), StatusCode::NOT_FOUND),
    ] {
        let answer = c.http.get(format!("{}{path}", c.proxy)).send().await.unwrap();
        assert_eq!(answer.status(), want, "{path}: its short id is no alias either");
    }
    let a = c.call(Method::POST, &format!("/api/containers/{short}/inactivity-shutdown"), None, None).await;
    assert_envelope(
        &a,
        StatusCode::NOT_FOUND,
        "CONTAINER_NOT_FOUND",
        &format!("/api/containers/{short}/inactivity-shutdown"),
    );
    assert_eq!(
        c.server.env(&other).await["desired_state"],
        "running",
        "the open route cannot stop another environment"
    );
}

#[tokio::test]
async fn lapse_idle_stop_is_the_seeds_inactivity() {
    let dir = tempfile::tempdir().unwrap();
    // Nobody uses the IDE: Lapse's own idle stop (no proxied request, no exec) removes it.
    let c = start(dir.path(), r#"{"status":"already_assigned"}"#, &[("INACTIVITY_TIMEOUT_SECONDS", "3")]).await;
    c.wait_warm(1).await;
    let body = json!({"s3Bucket": "idle-bucket", "awsAccessKeyId": "dummy-key", "awsSecretAccessKey": "dummy-secret"});
    let started = c.call(Method::POST, "/api/containers/start", Some("key-one"), Some(body)).await;
    assert_eq!(
        (started.status, started.body["isPreWarmed"].as_bool()),
        (StatusCode::CREATED, Some(true)),
        "{}",
        started.body
    );
    let id = started.body["id"].as_str().unwrap().to_owned();
    let full = c.full_id(&id).await;
    let env = c.server.env(&full).await;
    assert_eq!((env["idle_timeout"].as_str(), env["on_idle"].as_str()), (Some("3s"), Some("delete")), "{env}");
    c.server.wait_state(&full, "deleted", secs(30)).await;
    let detail = c.call(Method::GET, &format!("/api/containers/{id}"), Some("key-one"), None).await;
    assert_eq!(
        (detail.body["status"].as_str(), detail.body["shutdownReason"].as_str()),
        (Some("stopped"), Some("inactivity")),
        "{}",
        detail.body
    );
    let list = c.call(Method::GET, "/api/containers?status=running", Some("key-one"), None).await;
    assert!(list.body["containers"].as_array().unwrap().iter().all(|r| r["id"] != id.as_str()), "{}", list.body);
}

#[tokio::test]
async fn health_is_503_when_the_engine_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    // An engine socket that takes connections and never answers.
    let socket = dir.path().join("silent-engine.sock");
    let _silent = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let nowhere = format!("unix://{}", socket.display());
    let c = start_with(dir.path(), "{}", &[("PRE_WARMED_QUEUE_SIZE", "0")], &["--docker", &nowhere]).await;
    let a = c.call(Method::GET, "/api/health", None, None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!((a.body["status"].as_str(), a.body["docker"]["connected"].as_bool()), (Some("degraded"), Some(false)));
    assert!(a.body["docker"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", a.body);
    assert_eq!(a.body["queue"], json!({"preWarmed": 0, "withS3Bucket": 0, "targetSize": 0}));
    assert!(a.body["resources"]["disk"]["total"].as_u64().unwrap() > 0, "{}", a.body);
}

#[tokio::test]
async fn the_bucket_is_checked_with_head_bucket_against_s3() {
    let moto = lapse_providers::aws::moto::MotoServer::start("AKIDCLASSLACHECK01", "classla-check-secret")
        .await
        .expect("moto starts (LAPSE_MOTO_SERVER)");
    let loader = moto.loader(lapse_providers::aws::moto::REGION);
    let s3 = lapse_providers::s3::S3Client::from_sdk_config(&loader.load().await);
    s3.create_bucket("student-real").await.unwrap();
    let envs = moto.envs();
    let mut with: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // No queue and a memory threshold every host is at: a start that passes the check is the
    // seed's 503, and nothing runs.
    with.extend([("PRE_WARMED_QUEUE_SIZE", "0"), ("MAX_MEMORY_PERCENT", "0")]);
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "{}", &with).await;
    let start = |bucket: &str| {
        json!({"s3Bucket": bucket, "s3Region": "us-east-1", "awsAccessKeyId": "AKIDCLASSLACHECK01",
               "awsSecretAccessKey": "classla-check-secret"})
    };
    let missing = c.call(Method::POST, "/api/containers/start", Some("key-one"), Some(start("student-gone"))).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.body);
    assert_eq!(missing.body["error"]["code"], "INVALID_S3_BUCKET", "{}", missing.body);
    assert!(missing.body["error"]["message"].as_str().unwrap().contains("does not exist"), "{}", missing.body);
    let found = c.call(Method::POST, "/api/containers/start", Some("key-one"), Some(start("student-real"))).await;
    assert_eq!(found.status, StatusCode::SERVICE_UNAVAILABLE, "{}", found.body);
    assert_eq!(found.body["error"]["code"], "RESOURCE_LIMIT_EXCEEDED", "{}", found.body);
    // Without the request's keys, the server's own chain is used.
    let body = json!({"s3Bucket": "student-gone"});
    let own = c.call(Method::POST, "/api/containers/start", Some("key-one"), Some(body)).await;
    assert_eq!(own.body["error"]["code"], "INVALID_S3_BUCKET", "{}", own.body);
    assert_eq!(c.server.count_environments().await, 0, "nothing was made");
}

//! Lifecycle webhooks end to end: a receiver on loopback (under `--webhook-allow-private`)
//! checks signatures, order, retries, redirects and loss across `kill -9`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::{Server, eventually, process_env, secs};

const SECRET: &str = "test-secret-0123456789abcdef";
const FAST_RETRY: &[&str] =
    &["--webhook-allow-private", "--webhook-retry-base", "100ms", "--webhook-retry-cap", "300ms"];

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// A loopback receiver: `/ok` answers 200 once `fail_first` requests have failed with 500;
/// `/redirect` answers 302 to `/ok`.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
    pub fail_first: Arc<AtomicUsize>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let fail = Arc::new(AtomicUsize::new(fail_first));
        let (g, f) = (got.clone(), fail.clone());
        let record = move |path: &'static str| {
            let (g, f) = (g.clone(), f.clone());
            move |headers: HeaderMap, body: Bytes| {
                let (g, f) = (g.clone(), f.clone());
                async move {
                    use axum::response::IntoResponse;
                    g.lock().unwrap().push(Received {
                        path: path.to_owned(),
                        headers,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                    if path == "/redirect" {
                        return (AxStatus::FOUND, [("location", "/ok")]).into_response();
                    }
                    let failing = f.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                    if failing { AxStatus::INTERNAL_SERVER_ERROR.into_response() } else { AxStatus::OK.into_response() }
                }
            }
        };
        let app = Router::new()
            .route("/ok", axum::routing::post(record("/ok")))
            .route("/redirect", axum::routing::post(record("/redirect")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, got, fail_first: fail }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The events received for environment `id`, in arrival order, de-duplicated by delivery.
    pub fn events_of(&self, id: &str) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.received()
            .iter()
            .filter(|r| r.path == "/ok" && r.json()["environment"]["id"] == id)
            .filter(|r| seen.insert(r.header("lapse-delivery").to_owned()))
            .map(|r| r.json()["event"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

/// Checks `Lapse-Signature` the way a receiver would.
pub fn verify(secret: &str, r: &Received) -> bool {
    let sig = r.header("lapse-signature");
    let Some((t, v1)) = sig.strip_prefix("t=").and_then(|s| s.split_once(",v1=")) else { return false };
    if t != r.header("lapse-timestamp") {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", r.body).as_bytes());
    let want: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    want == v1
}

async fn hook(server: &Server, url: &str, events: Value) -> Value {
    let (status, made) = server.post("/v1/webhooks", json!({"url": url, "events": events, "secret": SECRET})).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["secret"], SECRET, "the secret is shown once, when made");
    made
}

async fn deliveries(server: &Server, hook_id: &str) -> Vec<Value> {
    let (status, list) = server.get(&format!("/v1/webhooks/{hook_id}/deliveries")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["deliveries"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn deliveries_are_signed_and_in_order_per_environment() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY).await;
    let receiver = Receiver::start(0).await;
    let made = hook(&server, &format!("{}/ok", receiver.url), json!(["*"])).await;
    let (_, listed) = server.get("/v1/webhooks").await;
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 1);
    assert!(listed["webhooks"][0].get("secret").is_none(), "never the secret in a list: {listed}");

    let a = server.create(process_env(&["sleep", "60"])).await["id"].as_str().unwrap().to_owned();
    let b = server.create(process_env(&["sleep", "60"])).await["id"].as_str().unwrap().to_owned();
    for id in [&a, &b] {
        server.wait_state(id, "running", secs(20)).await;
        let (status, _) = server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    for id in [&a, &b] {
        let events = eventually(secs(20), "created, running, deleted delivered", async || {
            let e = receiver.events_of(id);
            e.contains(&"deleted".to_owned()).then_some(e)
        })
        .await;
        assert_eq!(events, ["created", "running", "deleted"], "in the order they happened");
    }
    for r in receiver.received() {
        assert!(verify(SECRET, &r), "signature checks: {r:?}");
        assert_eq!(r.header("lapse-event"), r.json()["event"]);
        assert_eq!(r.header("lapse-delivery"), r.json()["id"]);
        assert_eq!(r.header("content-type"), "application/json");
        assert!(!verify("another-secret-0123456789", &r));
    }
    let list = deliveries(&server, made["id"].as_str().unwrap()).await;
    assert_eq!(list.len(), 6, "{list:#?}");
    assert!(list.iter().all(|d| d["status"] == "delivered" && d["response_code"] == 200 && d["attempts"] == 1));
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_the_same_delivery_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY).await;
    let receiver = Receiver::start(3).await;
    let made = hook(&server, &format!("{}/ok", receiver.url), json!(["created"])).await;
    let id = made["id"].as_str().unwrap();
    let (status, ping) = server.post(&format!("/v1/webhooks/{id}/test"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ping}");
    let done = eventually(secs(20), "the ping delivered after three 500s", async || {
        deliveries(&server, id).await.into_iter().find(|d| d["status"] == "delivered")
    })
    .await;
    assert_eq!(done["attempts"], 4, "{done}");
    assert_eq!(done["id"], ping["id"]);
    let got = receiver.received();
    assert_eq!(got.len(), 4);
    assert!(
        got.iter().all(|r| r.header("lapse-delivery") == ping["id"] && verify(SECRET, r)),
        "one id for every retry"
    );
    let (_, shown) = server.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(shown["consecutive_failures"], 0, "a success resets them: {shown}");
    let (_, metrics) = server.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for line in [
        "lapse_webhook_deliveries_total{outcome=\"retry\"} 3",
        "lapse_webhook_deliveries_total{outcome=\"delivered\"} 1",
        "lapse_webhook_pending 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}

#[tokio::test]
async fn a_quota_refusal_is_an_event_and_a_webhook_with_its_reason() {
    const ADMIN: &str = "admin-key-for-tests-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let mut args = FAST_RETRY.to_vec();
    args.extend(["--sim", "0"]);
    let server = Server::start_with_env(dir.path(), &args, &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    server.post("/v1/admin/tenants", json!({"name": "tight", "quota": {"environments": 1}})).await;
    let (_, k) = server.post("/v1/admin/tenants/tight/keys", json!({})).await;
    let key = k["key"].as_str().unwrap().to_owned();
    let receiver = Receiver::start(0).await;
    let body = json!({"url": format!("{}/ok", receiver.url), "events": ["quota_refused"]});
    let (status, _) = server.request_as(Some(&key), Method::POST, "/v1/webhooks", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let sim = json!({"owner": "ada", "spec": {"provider": "sim"}, "ttl": "10m"});
    let (status, _) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(sim.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, refused) = server.request_as(Some(&key), Method::POST, "/v1/environments", Some(sim)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "the refusal is unchanged: {refused}");
    let got = eventually(secs(20), "the quota_refused delivery", async || {
        receiver.received().into_iter().find(|r| r.json()["event"] == "quota_refused")
    })
    .await;
    let delivered = got.json();
    assert_eq!(delivered["tenant"], "tight");
    assert_eq!(delivered["environment"], Value::Null);
    assert!(delivered["reason"].as_str().unwrap().contains("quota"), "{delivered}");
    assert!(verify_any(&got), "signed");
}

/// A delivery's signature has the right shape (its secret was generated, not known here).
fn verify_any(r: &Received) -> bool {
    let sig = r.header("lapse-signature");
    sig.starts_with(&format!("t={},v1=", r.header("lapse-timestamp"))) && sig.len() > 70
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_fails_after_its_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = FAST_RETRY.to_vec();
    args.extend(["--webhook-max-attempts", "2"]);
    let server = Server::start(dir.path(), &args).await;
    let receiver = Receiver::start(0).await;
    let made = hook(&server, &format!("{}/redirect", receiver.url), json!(["*"])).await;
    let id = made["id"].as_str().unwrap();
    server.post(&format!("/v1/webhooks/{id}/test"), json!({})).await;
    let failed = eventually(secs(20), "the ping failed", async || {
        deliveries(&server, id).await.into_iter().find(|d| d["status"] == "failed")
    })
    .await;
    assert_eq!((failed["attempts"].clone(), failed["response_code"].clone()), (json!(2), json!(302)), "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("redirect"), "{failed}");
    assert!(receiver.received().iter().all(|r| r.path == "/redirect"), "the redirect's target was never called");
    let (_, shown) = server.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(shown["consecutive_failures"], 2, "{shown}");
}

#[tokio::test]
async fn a_loopback_or_private_url_is_refused_without_the_allowance() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let receiver = Receiver::start(0).await;
    for url in [
        format!("{}/ok", receiver.url),
        "http://localhost:9/".into(),
        "http://[::1]/".into(),
        "http://[::ffff:127.0.0.1]/".into(),
        "http://10.0.0.1/".into(),
        "http://169.254.169.254/latest/meta-data".into(),
        "http://100.64.1.1/".into(),
        "http://0.0.0.0/".into(),
    ] {
        let (status, err) = server.post("/v1/webhooks", json!({"url": url, "events": ["*"]})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {err}");
        assert_eq!(err["error"]["code"], "invalid_request", "{err}");
    }
    let (_, listed) = server.get("/v1/webhooks").await;
    assert_eq!(listed, json!({"webhooks": []}), "nothing was registered");
}

#[tokio::test]
async fn hostile_input_is_a_400_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY).await;
    let events_before = server.count_all_events().await;
    for body in [
        json!({"url": "ftp://example.com/", "events": ["*"]}),
        json!({"url": "http://user:pw@127.0.0.1/", "events": ["*"]}),
        json!({"url": "http://127.0.0.1/", "events": ["exploded"]}),
        json!({"url": "http://127.0.0.1/", "events": []}),
        json!({"url": "http://127.0.0.1/", "events": ["*"], "secret": "short"}),
        json!({"url": "http://127.0.0.1/", "events": ["*"], "secret": "x".repeat(300)}),
        json!({"url": "http://127.0.0.1/", "events": ["*"], "surprise": 1}),
        json!({"url": 5, "events": ["*"]}),
        json!({"url": format!("http://127.0.0.1/{}", "a".repeat(5000)), "events": ["*"]}),
        json!({"events": ["*"]}),
    ] {
        let (status, err) = server.post("/v1/webhooks", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert!(err["error"]["code"].is_string(), "{err}");
    }
    let (status, _) = server.raw(Method::POST, "/v1/webhooks", Some("application/json"), b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for path in ["/v1/webhooks/nope", "/v1/webhooks/0123456789abcdef0123456789abcdef/deliveries"] {
        let (status, err) = server.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {err}");
    }
    let (status, _) = server.get("/v1/webhooks?cursor=forged").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.get("/v1/webhooks?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, listed) = server.get("/v1/webhooks").await;
    assert_eq!(listed, json!({"webhooks": []}));
    assert_eq!(server.count_all_events().await, events_before, "no event either");
}

#[tokio::test]
async fn a_tenant_cannot_see_or_delete_another_tenants_webhook() {
    const ADMIN: &str = "admin-key-for-tests-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let mut args = FAST_RETRY.to_vec();
    args.extend(["--sim", "0"]);
    let server = Server::start_with_env(dir.path(), &args, &[("LAPSE_ADMIN_KEY", ADMIN)]).await;
    let mut keys = Vec::new();
    for name in ["acme", "rival"] {
        server.post("/v1/admin/tenants", json!({"name": name})).await;
        let (_, k) = server.post(&format!("/v1/admin/tenants/{name}/keys"), json!({})).await;
        keys.push(k["key"].as_str().unwrap().to_owned());
    }
    let receiver = Receiver::start(0).await;
    let url = format!("{}/ok", receiver.url);
    let (status, made) = server
        .request_as(Some(&keys[0]), Method::POST, "/v1/webhooks", Some(json!({"url": url, "events": ["*"]})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["tenant"], "acme");
    assert!(made["secret"].as_str().unwrap().len() >= 32, "a secret is generated: {made}");
    let id = made["id"].as_str().unwrap();
    for (method, path) in [
        (Method::GET, format!("/v1/webhooks/{id}")),
        (Method::GET, format!("/v1/webhooks/{id}/deliveries")),
        (Method::POST, format!("/v1/webhooks/{id}/test")),
        (Method::DELETE, format!("/v1/webhooks/{id}")),
    ] {
        let (status, err) = server.request_as(Some(&keys[1]), method.clone(), &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {err}");
    }
    let (_, theirs) = server.request_as(Some(&keys[1]), Method::GET, "/v1/webhooks", None).await;
    assert_eq!(theirs, json!({"webhooks": []}));
    let (_, all) = server.get("/v1/webhooks").await;
    assert_eq!(all["webhooks"].as_array().unwrap().len(), 1, "the admin sees every hook");

    // The tenant's hook gets its own environments' events, not the other tenant's.
    let sim = json!({"owner": "ada", "spec": {"provider": "sim"}, "ttl": "10m"});
    let (_, mine) = server.request_as(Some(&keys[0]), Method::POST, "/v1/environments", Some(sim.clone())).await;
    let (_, other) = server.request_as(Some(&keys[1]), Method::POST, "/v1/environments", Some(sim)).await;
    let mine = mine["id"].as_str().unwrap().to_owned();
    eventually(secs(20), "acme's environment reported", async || {
        receiver.events_of(&mine).contains(&"running".to_owned()).then_some(())
    })
    .await;
    server.wait_state(other["id"].as_str().unwrap(), "running", secs(20)).await;
    assert!(receiver.events_of(other["id"].as_str().unwrap()).is_empty(), "never another tenant's events");

    let (status, _) = server.request_as(Some(&keys[0]), Method::DELETE, &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn no_delivery_is_lost_across_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY).await;
    // The receiver fails everything at first, so deliveries are pending when the server dies.
    let receiver = Receiver::start(usize::MAX).await;
    let made = hook(&server, &format!("{}/ok", receiver.url), json!(["created", "running"])).await;
    let hook_id = made["id"].as_str().unwrap().to_owned();
    let id = server.create(process_env(&["sleep", "60"])).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(20)).await;
    eventually(secs(20), "both deliveries made (pending)", async || {
        (deliveries(&server, &hook_id).await.len() == 2).then_some(())
    })
    .await;
    server.kill9().await;
    // A change the server had not yet fanned out when it died: created just before the kill.
    server.restart().await;
    let second = server.create(process_env(&["sleep", "60"])).await["id"].as_str().unwrap().to_owned();
    server.kill9().await;
    receiver.fail_first.store(0, Ordering::SeqCst);
    server.restart().await;
    for env in [&id, &second] {
        eventually(secs(30), "created and running delivered after the restarts", async || {
            let e = receiver.events_of(env);
            (e == ["created", "running"]).then_some(())
        })
        .await;
    }
}

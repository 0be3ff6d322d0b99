//! The dashboard's server side: its assets and headers at `/ui`, signing in with a key (the
//! `lapse_ui` cookie), the cookie on the `/v1` API (CSRF token, same origin, a revoked key
//! ends it), and the watch stream (`GET /v1/environments/watch`: each tenant its own,
//! bounded). The pages themselves are tested in Chromium by `scripts/test-ui.sh`.

use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::harness::{Server, process_env, secs};

const ADMIN: &str = "admin-key-for-the-ui-tests-0123456789";

async fn server(dir: &std::path::Path) -> Server {
    Server::start_with_env(dir, &["--docker", "off", "--rate-limit", "0"], &[("LAPSE_ADMIN_KEY", ADMIN)]).await
}

async fn tenant_key(server: &Server, name: &str) -> String {
    let (status, t) =
        server.post("/v1/admin/tenants", json!({"name": name, "quota": {"providers": ["process"]}})).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let (status, k) = server.post(&format!("/v1/admin/tenants/{name}/keys"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{k}");
    k["key"].as_str().unwrap().to_owned()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Signs in with `key`: the cookie's value, the CSRF token and the whole `Set-Cookie`.
async fn sign_in(server: &Server, key: &str) -> (String, String, String) {
    let resp = http().post(format!("{}/ui/session", server.url)).json(&json!({"key": key})).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let set = resp.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    let value = set.strip_prefix("lapse_ui=").unwrap().split(';').next().unwrap().to_owned();
    (value, body["csrf"].as_str().unwrap().to_owned(), set)
}

/// A request with the dashboard cookie and these headers.
async fn with_cookie(
    server: &Server,
    cookie: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut req =
        http().request(method.clone(), format!("{}{path}", server.url)).header("cookie", format!("lapse_ui={cookie}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if method == Method::POST {
        req = req.json(&json!({}));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn the_dashboard_is_served_with_its_security_headers_and_a_spa_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let client = http();
    for path in ["/ui", "/ui/", "/ui/fleet/anything"] {
        let resp = client.get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}: no key is needed for the page");
        let h = resp.headers().clone();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8", "{path}");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache", "{path}");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self';"), "{csp}");
        assert!(csp.contains("connect-src 'self' ws: wss:") && !csp.contains("script-src 'self' 'unsafe"), "{csp}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "same-origin");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        let html = resp.text().await.unwrap();
        assert!(html.contains("<main id=\"main\""), "{html}");
        assert!(!html.contains("<script>") && !html.contains("<script type=\"module\">"), "no inline script: {html}");
    }
    let html = client.get(format!("{}/ui/", server.url)).send().await.unwrap().text().await.unwrap();
    let script = html.split("src=\"").nth(1).and_then(|s| s.split('"').next()).expect("a script src");
    assert!(script.starts_with("/ui/assets/"), "{script}");
    let resp = client.get(format!("{}{script}", server.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
    assert!(!resp.text().await.unwrap().contains("innerHTML"), "the dashboard never writes HTML from data");
    let resp = client.get(format!("{}/ui/assets/missing-0000.js", server.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "a missing asset is not index.html");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let resp = client.get(format!("{}/ui/../v1/environments", server.url)).send().await.unwrap();
    assert_ne!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _) = server.request_as(None, Method::GET, "/v1/environments", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the API still needs a key");
}

#[tokio::test]
async fn signing_in_sets_a_strict_cookie_that_the_api_takes_in_place_of_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let (a, b) = (tenant_key(&server, "a").await, tenant_key(&server, "b").await);
    let mine =
        server.request_as(Some(&a), Method::POST, "/v1/environments", Some(process_env(&["sleep", "600"]))).await;
    let theirs =
        server.request_as(Some(&b), Method::POST, "/v1/environments", Some(process_env(&["sleep", "600"]))).await;
    let (mine, theirs) = (mine.1["id"].as_str().unwrap().to_owned(), theirs.1["id"].as_str().unwrap().to_owned());

    let (cookie, csrf, set) = sign_in(&server, &a).await;
    assert_eq!(cookie.len(), 64, "256 random bits: {set}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert!(!set.contains(&a) && csrf.len() == 64, "the cookie is not the key");
    let (status, me) = with_cookie(&server, &cookie, Method::GET, "/ui/session", &[]).await;
    assert_eq!(
        (status, &me["tenant"], &me["signed_in"], &me["csrf"]),
        (StatusCode::OK, &json!("a"), &json!(true), &json!(csrf))
    );

    let (status, list) = with_cookie(&server, &cookie, Method::GET, "/v1/environments", &[]).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["environments"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![mine.as_str()], "a tenant's session sees its own only");
    let (status, _) = with_cookie(&server, &cookie, Method::GET, &format!("/v1/environments/{theirs}"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant's environment looks missing");
    let (status, _) = with_cookie(&server, &cookie, Method::GET, "/v1/admin/tenants", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a tenant's session is no admin");

    // Behind a TLS proxy the cookie is Secure.
    let resp = http()
        .post(format!("{}/ui/session", server.url))
        .header("x-forwarded-proto", "https")
        .json(&json!({"key": ADMIN}))
        .send()
        .await
        .unwrap();
    assert!(resp.headers()[header::SET_COOKIE].to_str().unwrap().contains("; Secure"));

    // Bad sign-ins: a JSON error, no cookie.
    let (status, metrics) = server.post("/v1/admin/keys", json!({"scope": "metrics"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let cases = [
        (json!({"key": "lapse_0000000000000000_".to_owned() + &"0".repeat(64)}), StatusCode::UNAUTHORIZED),
        (json!({"key": "nope"}), StatusCode::UNAUTHORIZED),
        (json!({"key": metrics["key"]}), StatusCode::FORBIDDEN),
        (json!({"key": a, "extra": 1}), StatusCode::BAD_REQUEST),
        (json!({}), StatusCode::BAD_REQUEST),
    ];
    for (body, expect) in cases {
        let resp = http().post(format!("{}/ui/session", server.url)).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), expect, "{body}");
        assert!(resp.headers().get(header::SET_COOKIE).is_none(), "{body}");
        let err: Value = resp.json().await.unwrap();
        assert!(err["error"]["code"].is_string(), "{err}");
    }
    let resp = http()
        .post(format!("{}/ui/session", server.url))
        .header("origin", "http://evil.example")
        .json(&json!({"key": a}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "a sign-in from another site");
}

#[tokio::test]
async fn cookie_requests_that_change_things_need_the_csrf_token_and_this_origin() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let a = tenant_key(&server, "a").await;
    let (_, env) =
        server.request_as(Some(&a), Method::POST, "/v1/environments", Some(process_env(&["sleep", "600"]))).await;
    let id = env["id"].as_str().unwrap().to_owned();
    let (cookie, csrf, _) = sign_in(&server, &a).await;
    let stop = format!("/v1/environments/{id}/stop");
    let host = server.url.strip_prefix("http://").unwrap().to_owned();
    let own_origin = server.url.clone();

    for (headers, why) in [
        (vec![], "no token"),
        (vec![("x-lapse-csrf", "0".repeat(64))], "a wrong token"),
        (vec![("x-lapse-csrf", csrf.clone()), ("origin", "http://evil.example".to_owned())], "another origin"),
        (vec![("x-lapse-csrf", csrf.clone()), ("origin", "null".to_owned())], "an opaque origin"),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = with_cookie(&server, &cookie, Method::POST, &stop, &headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{why}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{why}");
    }
    assert_eq!(server.env(&id).await["desired_state"], "running", "a refused request changed nothing");
    let (status, _) =
        with_cookie(&server, &cookie, Method::GET, "/v1/environments", &[("origin", "http://evil.example")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another origin cannot read either (nor open a WebSocket)");

    let (status, body) = with_cookie(
        &server,
        &cookie,
        Method::POST,
        &stop,
        &[("x-lapse-csrf", &csrf), ("origin", &own_origin), ("host", &host)],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(server.env(&id).await["desired_state"], "stopped");
    // A key is unchanged: no token needed, and a cookie beside it is not looked at.
    let resp = http()
        .post(format!("{}/v1/environments/{id}/start", server.url))
        .bearer_auth(&a)
        .header("cookie", "lapse_ui=garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn revoking_the_key_or_signing_out_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let (status, k) = {
        server.post("/v1/admin/tenants", json!({"name": "a", "quota": {"providers": ["process"]}})).await;
        server.post("/v1/admin/tenants/a/keys", json!({})).await
    };
    assert_eq!(status, StatusCode::CREATED);
    let key = k["key"].as_str().unwrap();
    let (first, _, _) = sign_in(&server, key).await;
    let (second, csrf, _) = sign_in(&server, key).await;
    assert_ne!(first, second, "each sign-in is its own session");

    let (status, _) = with_cookie(&server, &second, Method::DELETE, "/ui/session", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "signing out needs the token too");
    let (status, _) = with_cookie(&server, &second, Method::DELETE, "/ui/session", &[("x-lapse-csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = with_cookie(&server, &second, Method::GET, "/v1/environments", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("session"), "{body}");

    let (status, _) = with_cookie(&server, &first, Method::GET, "/v1/environments", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        server.request(Method::DELETE, &format!("/v1/admin/keys/{}", k["id"].as_str().unwrap()), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = with_cookie(&server, &first, Method::GET, "/v1/environments", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a revoked key ends its sessions");
    let (_, me) = with_cookie(&server, &first, Method::GET, "/ui/session", &[]).await;
    assert_eq!(me["signed_in"], false);
    for garbage in ["", "x", &"f".repeat(64), "lapse_ui=;;"] {
        let (status, body) = with_cookie(&server, garbage, Method::GET, "/v1/environments", &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{garbage:?}: {body}");
    }
}

/// Reads the next `event:` of an SSE response (comments skipped), within `within`.
async fn next_event(resp: &mut reqwest::Response, buf: &mut String, within: Duration) -> Option<(String, Value)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if data.is_empty() {
                continue;
            }
            return Some((event, serde_json::from_str(&data).expect("data is JSON")));
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk()).await.ok()?.ok()??;
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

async fn watch(server: &Server, key: Option<&str>, cookie: Option<&str>) -> reqwest::Response {
    let mut req = http().get(format!("{}/v1/environments/watch", server.url)).header("accept", "text/event-stream");
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(c) = cookie {
        req = req.header("cookie", format!("lapse_ui={c}"));
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn the_watch_stream_shows_each_caller_what_it_may_see_and_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let (a, b) = (tenant_key(&server, "a").await, tenant_key(&server, "b").await);
    let (cookie, _, _) = sign_in(&server, &a).await;
    let mut of_a = watch(&server, Some(&a), None).await;
    assert_eq!(of_a.status(), StatusCode::OK);
    assert_eq!(of_a.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut of_a_cookie = watch(&server, None, Some(&cookie)).await;
    assert_eq!(of_a_cookie.status(), StatusCode::OK);
    let mut of_admin = watch(&server, Some(ADMIN), None).await;

    let (_, theirs) =
        server.request_as(Some(&b), Method::POST, "/v1/environments", Some(process_env(&["sleep", "600"]))).await;
    let (_, mine) =
        server.request_as(Some(&a), Method::POST, "/v1/environments", Some(process_env(&["sleep", "600"]))).await;
    let (theirs, mine) = (theirs["id"].as_str().unwrap(), mine["id"].as_str().unwrap());
    server.wait_state(mine, "running", secs(20)).await;
    let shown = server.env(mine).await;

    for (name, resp) in [("key", &mut of_a), ("cookie", &mut of_a_cookie)] {
        let mut buf = String::new();
        let mut last = None;
        while let Some((event, env)) = next_event(resp, &mut buf, secs(3)).await {
            assert_eq!(event, "environment", "{name}");
            assert_eq!(env["id"], mine, "{name}: tenant a sees only its own, never {theirs}");
            last = Some(env);
            if last.as_ref().is_some_and(|e| e["state"] == "running") {
                break;
            }
        }
        let mut last = last.unwrap_or_else(|| panic!("{name}: no event for {mine}"));
        let mut expect = shown.clone();
        // Activity and timestamps move; the shape and everything else are GET's.
        for v in [&mut last, &mut expect] {
            v.as_object_mut().unwrap().remove("updated_at");
            v.as_object_mut().unwrap().remove("last_active_at");
        }
        assert_eq!(last, expect, "{name}: the event is the environment as GET shows it");
    }
    let mut buf = String::new();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        let (_, env) = next_event(&mut of_admin, &mut buf, secs(10)).await.expect("the admin's events");
        seen.insert(env["id"].as_str().unwrap().to_owned());
    }
    assert!(seen.contains(mine) && seen.contains(theirs), "the admin sees every tenant's");

    // Not an event-stream client: 406, not a hanging request.
    let (status, body) = server.get("/v1/environments/watch").await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE, "{body}");
    let (status, _) = server.request_as(None, Method::GET, "/v1/environments/watch", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // At most 16 per tenant (a holds 2 already).
    let mut held = vec![];
    for _ in 0..14 {
        let resp = watch(&server, Some(&a), None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        held.push(resp);
    }
    let over = watch(&server, Some(&a), None).await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = over.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams");
    assert_eq!(watch(&server, Some(&b), None).await.status(), StatusCode::OK, "another tenant has its own allowance");
    held.pop();
    drop(of_a);
    let again = eventually_ok(&server, &a).await;
    assert_eq!(again, StatusCode::OK, "a closed stream gives its place back");
}

async fn eventually_ok(server: &Server, key: &str) -> StatusCode {
    crate::harness::eventually(secs(5), "a stream's place to come back", async || {
        let resp = watch(server, Some(key), None).await;
        (resp.status() == StatusCode::OK).then_some(resp.status())
    })
    .await
}

#[tokio::test]
async fn without_keys_the_dashboard_needs_no_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--docker", "off"]).await;
    let (status, me) = server.get("/ui/session").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((&me["required"], &me["signed_in"], &me["admin"]), (&json!(false), &json!(true), &json!(true)));
    let resp = watch(&server, None, None).await;
    assert_eq!(resp.status(), StatusCode::OK, "the open server's stream needs no key");
}

#[tokio::test]
async fn revoking_a_key_ends_its_watch_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    server.post("/v1/admin/tenants", json!({"name": "a", "quota": {"providers": ["process"]}})).await;
    let (_, k) = server.post("/v1/admin/tenants/a/keys", json!({})).await;
    let key = k["key"].as_str().unwrap();
    let (cookie, _, _) = sign_in(&server, key).await;
    let mut by_key = watch(&server, Some(key), None).await;
    let mut by_cookie = watch(&server, None, Some(&cookie)).await;
    assert_eq!((by_key.status(), by_cookie.status()), (StatusCode::OK, StatusCode::OK));
    let (status, _) =
        server.request(Method::DELETE, &format!("/v1/admin/keys/{}", k["id"].as_str().unwrap()), None).await;
    assert_eq!(status, StatusCode::OK);
    for (name, resp) in [("key", &mut by_key), ("cookie", &mut by_cookie)] {
        // Comments may come first; the stream must end within a re-check (5 s) or so.
        let ended = tokio::time::timeout(secs(15), async { while let Ok(Some(_)) = resp.chunk().await {} }).await;
        assert!(ended.is_ok(), "{name}: the stream of a revoked key ended");
    }
}

//! A local stand-in for the OVH API, for tests (feature `ovh-fake`). No OVH emulator exists.
//!
//! It follows OVH's published schema, `https://eu.api.ovh.com/1.0/cloud.json`, as kept in
//! UrielCh/api-ovh-node@edbd42e `code/gen/models/ovh-api/cloud.ts`, for the operations the
//! provider uses: their paths and methods, the body of `cloud.ProjectInstanceCreation`
//! (required `flavorId`, `name`, `region`; optional `autobackup`, `groupId`, `imageId`,
//! `monthlyBilling`, `networks`, `sshKeyId`, `userData`, `volumeId`) and of
//! `cloud.ProjectSshkeyCreation` (required `name`, `publicKey`; optional `region`), and the
//! answer shapes `cloud.instance.Instance` (lists) and `cloud.instance.InstanceDetail` (one
//! instance: flavour, image and key as objects). It refuses anything else the way OVH does:
//! an undescribed path (404), an undescribed method (405), a missing required or an
//! undescribed body field (400). Query parameters are not checked.
//!
//! **Every signed request's signature is checked** (the `ovh` package's algorithm, see
//! [`super::client`]): wrong application key 403, wrong consumer key 403, a timestamp more
//! than 60 s from the fake's clock 400, a wrong signature 400 `INVALID_SIGNATURE`. The fake's
//! clock runs `clock_offset` seconds ahead of the host's, so a client that does not use
//! `/auth/time` is refused.
//!
//! Instances go `BUILD` → `ACTIVE` after `build_looks` reads, `stop` → `SHUTOFF`, `start` →
//! `ACTIVE`, `DELETE` removes them. Knobs: `lose_next_create` (create, then answer 503),
//! `fail_next` (answer the next calls 429 with `Retry-After: 1`), `error_next_build` (the next instance goes to `ERROR`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::client::{Credentials, signature};

/// What the fake holds; tests read and change it through [`Fake::state`].
#[derive(Debug, Default)]
pub struct FakeState {
    pub flavours: Vec<Value>,
    pub images: Vec<Value>,
    pub ssh_keys: Vec<Value>,
    pub instances: BTreeMap<String, Value>,
    /// Reads of an instance in `BUILD` before it is `ACTIVE`.
    pub build_looks: u32,
    looks: BTreeMap<String, u32>,
    pub lose_next_create: bool,
    /// The next instance made goes to `ERROR` instead of `ACTIVE`.
    pub error_next_build: bool,
    pub fail_next: u32,
    /// The IPv4 every instance made from now on reports (default: `192.0.2.<n>`, a
    /// documentation address); a test with an sshd on loopback sets `127.0.0.1`.
    pub address: Option<String>,
    /// Every request seen: `METHOD path?query` and its body.
    pub requests: Vec<(String, String)>,
    /// Requests refused for their signature or credentials.
    pub refused: u32,
    /// Requests refused as the schema does not describe them (path, method, body fields).
    pub undescribed: u32,
    next_id: u64,
}

/// A running fake.
#[derive(Clone, Debug)]
pub struct Fake {
    pub url: String,
    pub project: String,
    pub credentials: Credentials,
    state: Arc<Mutex<FakeState>>,
}

#[derive(Clone)]
struct Shared {
    base: String,
    project: String,
    credentials: Credentials,
    clock_offset: i64,
    state: Arc<Mutex<FakeState>>,
}

/// The flavour list of the schema's `cloud.flavor.Flavor` shape, with OVH's real names.
pub fn sample_flavours(region: &str) -> Vec<Value> {
    let f = |id: &str, name: &str, vcpus: u64, ram: u64, disk: u64, os: &str, available: bool| {
        json!({"id": id, "name": name, "region": region, "vcpus": vcpus, "ram": ram, "disk": disk,
               "osType": os, "type": "ovh.ssd.eg", "available": available, "inboundBandwidth": 250,
               "outboundBandwidth": 250, "quota": 10, "planCodes": {"hourly": format!("{name}.consumption")}})
    };
    vec![
        f("f-b2-7", "b2-7", 2, 7, 50, "linux", true),
        f("f-d2-2", "d2-2", 1, 2, 25, "linux", true),
        f("f-win-d2-2", "win-d2-2", 1, 2, 25, "windows", true),
        f("f-d2-4", "d2-4", 2, 4, 50, "linux", false),
        f("f-d2-8", "d2-8", 4, 8, 50, "linux", true),
        f("f-s1-2", "s1-2", 1, 2, 10, "linux", true),
        f("f-b2-15", "b2-15", 4, 15, 100, "linux", true),
    ]
}

impl Fake {
    /// Starts a fake on a loopback port for `project` and `credentials`.
    pub async fn start(project: &str, credentials: Credentials) -> std::io::Result<Fake> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/1.0", listener.local_addr()?);
        let state = Arc::new(Mutex::new(FakeState {
            flavours: sample_flavours("GRA9"),
            images: vec![
                json!({"id": "img-deb", "name": "Debian 12", "region": "GRA9", "type": "linux", "visibility": "public", "status": "active"}),
                json!({"id": "img-u24", "name": "Ubuntu 24.04", "region": "GRA9", "type": "linux", "visibility": "public", "status": "active"}),
                json!({"id": "img-u22", "name": "Ubuntu 22.04", "region": "GRA9", "type": "linux", "visibility": "public", "status": "active"}),
            ],
            build_looks: 1,
            ..Default::default()
        }));
        let shared = Shared {
            base: url.clone(),
            project: project.to_owned(),
            credentials: credentials.clone(),
            clock_offset: 7200,
            state: state.clone(),
        };
        let app = Router::new().fallback(handle).with_state(shared);
        tokio::spawn(async move {
            // The fake lives as long as the test's runtime; an accept error ends it.
            let _ = axum::serve(listener, app).await;
        });
        Ok(Fake { url, project: project.to_owned(), credentials, state })
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock has failed already.
        self.state.lock().expect("fake state lock")
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"errorCode": code, "httpCode": status.to_string(), "message": message.into()});
    (status, axum::Json(body)).into_response()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The schema's operations the provider uses: (method, path template, required body
/// fields, allowed body fields).
const OPERATIONS: &[(&str, &str, &[&str], &[&str])] = &[
    ("GET", "/auth/time", &[], &[]),
    ("GET", "/cloud/project/{serviceName}", &[], &[]),
    ("GET", "/cloud/project/{serviceName}/flavor", &[], &[]),
    ("GET", "/cloud/project/{serviceName}/image", &[], &[]),
    ("GET", "/cloud/project/{serviceName}/sshkey", &[], &[]),
    ("POST", "/cloud/project/{serviceName}/sshkey", &["name", "publicKey"], &["name", "publicKey", "region"]),
    ("GET", "/cloud/project/{serviceName}/instance", &[], &[]),
    (
        "POST",
        "/cloud/project/{serviceName}/instance",
        &["flavorId", "name", "region"],
        &[
            "autobackup",
            "flavorId",
            "groupId",
            "imageId",
            "monthlyBilling",
            "name",
            "networks",
            "region",
            "sshKeyId",
            "userData",
            "volumeId",
        ],
    ),
    ("GET", "/cloud/project/{serviceName}/instance/{instanceId}", &[], &[]),
    ("DELETE", "/cloud/project/{serviceName}/instance/{instanceId}", &[], &[]),
    ("POST", "/cloud/project/{serviceName}/instance/{instanceId}/start", &[], &[]),
    ("POST", "/cloud/project/{serviceName}/instance/{instanceId}/stop", &[], &[]),
    ("POST", "/cloud/project/{serviceName}/instance/{instanceId}/unshelve", &[], &[]),
];

fn matches(template: &str, path: &str) -> Option<Vec<String>> {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    if t.len() != p.len() {
        return None;
    }
    let mut vars = Vec::new();
    for (t, p) in t.iter().zip(&p) {
        if t.starts_with('{') {
            if p.is_empty() {
                return None;
            }
            vars.push((*p).to_owned());
        } else if t != p {
            return None;
        }
    }
    Some(vars)
}

async fn handle(State(s): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let Some(path) = uri.path().strip_prefix("/1.0") else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "Got an invalid (or empty) URL");
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let mut st = s.state.lock().expect("fake state lock");
    st.requests.push((format!("{method} {path}{query}"), body_text.clone()));

    let described: Vec<_> = OPERATIONS.iter().filter_map(|op| matches(op.1, path).map(|v| (op, v))).collect();
    if described.is_empty() {
        st.undescribed += 1;
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "Got an invalid (or empty) URL");
    }
    let Some((op, vars)) = described.into_iter().find(|(op, _)| op.0 == method.as_str()) else {
        st.undescribed += 1;
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("Received not described method '{method}' on path '{path}'"),
        );
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if header("X-Ovh-Application") != s.credentials.application_key {
        st.refused += 1;
        return error(StatusCode::FORBIDDEN, "INVALID_CREDENTIAL", "Invalid application key");
    }
    if op.1 == "/auth/time" {
        return axum::Json(now() + s.clock_offset).into_response();
    }
    if header("X-Ovh-Consumer") != s.credentials.consumer_key {
        st.refused += 1;
        return error(StatusCode::FORBIDDEN, "INVALID_CREDENTIAL", "This credential does not exist");
    }
    let timestamp: i64 = header("X-Ovh-Timestamp").parse().unwrap_or(0);
    if (timestamp - (now() + s.clock_offset)).abs() > 60 {
        st.refused += 1;
        return error(StatusCode::BAD_REQUEST, "QUERY_TIME_OUT", "Query out of time");
    }
    let url = format!("{}{path}{query}", s.base);
    let expected = signature(
        &s.credentials.application_secret,
        &s.credentials.consumer_key,
        method.as_str(),
        &url,
        &body_text,
        timestamp,
    );
    if header("X-Ovh-Signature") != expected {
        st.refused += 1;
        return error(StatusCode::BAD_REQUEST, "INVALID_SIGNATURE", "Invalid signature");
    }
    if vars.first().is_some_and(|p| *p != s.project) {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", format!("This service does not exist: {}", vars[0]));
    }
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                st.undescribed += 1;
                return error(StatusCode::BAD_REQUEST, "INVALID_BODY", "Body is not a JSON object");
            }
        }
    };
    if let Value::Object(fields) = &input {
        if let Some(extra) = fields.keys().find(|k| !op.3.contains(&k.as_str())) {
            st.undescribed += 1;
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER",
                format!("Received not described parameters: ({extra}) while calling {path}"),
            );
        }
        if let Some(missing) = op.2.iter().find(|k| !fields.contains_key(**k)) {
            st.undescribed += 1;
            return error(StatusCode::BAD_REQUEST, "MISSING_PARAMETER", format!("Missing parameter: {missing}"));
        }
    }
    if st.fail_next > 0 {
        st.fail_next -= 1;
        let mut throttled = error(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", "Too many requests, retry later");
        throttled.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        return throttled;
    }
    let region = uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("region="))).map(str::to_owned);
    answer(&mut st, method.as_str(), op.1, &vars, input, region)
}

fn answer(
    st: &mut FakeState,
    method: &str,
    template: &str,
    vars: &[String],
    input: Value,
    region: Option<String>,
) -> Response {
    let in_region = |v: &Value| region.as_deref().is_none_or(|r| v["region"] == r);
    let instance_id = vars.get(1).cloned().unwrap_or_default();
    match (method, template.trim_start_matches("/cloud/project/{serviceName}")) {
        ("GET", "") => {
            axum::Json(json!({"project_id": vars[0], "status": "ok", "description": "fake"})).into_response()
        }
        ("GET", "/flavor") => {
            axum::Json(st.flavours.iter().filter(|v| in_region(v)).cloned().collect::<Vec<_>>()).into_response()
        }
        ("GET", "/image") => {
            axum::Json(st.images.iter().filter(|v| in_region(v)).cloned().collect::<Vec<_>>()).into_response()
        }
        ("GET", "/sshkey") => axum::Json(st.ssh_keys.clone()).into_response(),
        ("POST", "/sshkey") => {
            st.next_id += 1;
            let key = json!({"id": format!("key-{}", st.next_id), "name": input["name"], "publicKey": input["publicKey"],
                             "regions": [input.get("region").cloned().unwrap_or(Value::Null)]});
            st.ssh_keys.push(key.clone());
            axum::Json(key).into_response()
        }
        ("GET", "/instance") => {
            axum::Json(st.instances.values().filter(|v| in_region(v)).cloned().collect::<Vec<_>>()).into_response()
        }
        ("POST", "/instance") => {
            if !st.flavours.iter().any(|f| f["id"] == input["flavorId"]) {
                return error(StatusCode::BAD_REQUEST, "INVALID_FLAVOR", "Flavor not found");
            }
            st.next_id += 1;
            let id = format!("0000-inst-{}", st.next_id);
            let n = st.next_id;
            let ip = st.address.clone().unwrap_or_else(|| format!("192.0.2.{}", n % 250 + 1));
            // `cloud.instance.Instance` (the list's shape); answers use `detail` of it.
            let instance = json!({
                "id": id, "name": input["name"], "status": "BUILD", "region": input["region"],
                "flavorId": input["flavorId"], "imageId": input.get("imageId").cloned().unwrap_or(Value::Null),
                "sshKeyId": input.get("sshKeyId").cloned().unwrap_or(Value::Null),
                "monthlyBilling": Value::Null, "created": "2026-12-01T00:00:00Z", "planCode": "fake.consumption",
                "operationIds": [], "currentMonthOutgoingTraffic": Value::Null,
                "ipAddresses": [{"ip": ip, "type": "public", "version": 4,
                                 "networkId": "net-public", "gatewayIp": Value::Null}],
            });
            let mut instance = instance;
            if std::mem::take(&mut st.error_next_build) {
                instance["status"] = json!("ERROR");
            }
            st.instances.insert(id, instance.clone());
            if st.lose_next_create {
                st.lose_next_create = false;
                return error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "connection lost");
            }
            axum::Json(detail(st, &instance)).into_response()
        }
        (_, rest) => {
            let looks_needed = st.build_looks;
            let mut looked = st.looks.get(&instance_id).copied().unwrap_or(0);
            let Some(instance) = st.instances.get_mut(&instance_id) else {
                return error(StatusCode::NOT_FOUND, "NOT_FOUND", format!("Instance {instance_id} not found"));
            };
            match (method, rest) {
                ("GET", _) => {
                    if instance["status"] == "BUILD" {
                        looked += 1;
                        if looked > looks_needed {
                            instance["status"] = json!("ACTIVE");
                        }
                    }
                    let instance = instance.clone();
                    st.looks.insert(instance_id, looked);
                    axum::Json(detail(st, &instance)).into_response()
                }
                ("POST", r) if r.ends_with("/start") || r.ends_with("/unshelve") => {
                    instance["status"] = json!("ACTIVE");
                    StatusCode::OK.into_response()
                }
                ("POST", _) => {
                    instance["status"] = json!("SHUTOFF");
                    StatusCode::OK.into_response()
                }
                _ => {
                    st.instances.remove(&instance_id);
                    StatusCode::OK.into_response()
                }
            }
        }
    }
}

/// `cloud.instance.InstanceDetail` of a stored `cloud.instance.Instance`: the flavour, image
/// and SSH key as objects in place of their ids.
fn detail(st: &FakeState, instance: &Value) -> Value {
    let mut out = instance.clone();
    let find = |list: &[Value], id: &Value| list.iter().find(|v| v["id"] == *id).cloned().unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut out {
        let flavour = fields.remove("flavorId").unwrap_or(Value::Null);
        let image = fields.remove("imageId").unwrap_or(Value::Null);
        let key = fields.remove("sshKeyId").unwrap_or(Value::Null);
        fields.insert("flavor".into(), find(&st.flavours, &flavour));
        fields.insert("image".into(), find(&st.images, &image));
        fields.insert("sshKey".into(), find(&st.ssh_keys, &key));
        fields.insert("rescuePassword".into(), Value::Null);
    }
    out
}

impl Fake {
    /// The bodies of every `POST /cloud/project/{p}/instance` the fake was sent.
    pub fn create_bodies(&self) -> Vec<Value> {
        let line = format!("POST /cloud/project/{}/instance", self.project);
        let st = self.state();
        st.requests.iter().filter(|(l, _)| *l == line).filter_map(|(_, body)| serde_json::from_str(body).ok()).collect()
    }
}

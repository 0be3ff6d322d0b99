//! A local fake of the Scaleway Instance API v1, strict to its published schema.
//!
//! Source of the schema: the generated Go SDK, `scaleway/scaleway-sdk-go`
//! (commit 2c5cd81b052874a3bb1492a538cda3e701ed9502), `api/instance/v1/instance_sdk.go`
//! (`ListServersRequest`, `CreateServerRequest`, `ServerActionRequest`, `CreateIPRequest`,
//! `ListSecurityGroupsRequest`, the `ServerState`, `ServerAction` and `IPType` enums, the
//! paths and methods of each call) and `server_utils.go` (`SetServerUserData`: `PATCH
//! .../user_data/{key}` with a raw body); the error shape from `scw/errors.go`
//! (`{"message","type",...}`). Only the calls the provider needs are served.
//!
//! Every request is checked, and one the schema does not define is **rejected** with the
//! API's error shape: an unknown path or method, a missing or wrong `X-Auth-Token`, a query
//! parameter or body field the request type lacks, a missing required field, a value outside
//! an enum. Every request is recorded with whether it passed, so a test asserts that all of
//! the provider's requests were schema-valid.
//!
//! Servers change state as the real API describes: `poweron` makes `starting`, the next read
//! `running`; `poweroff` makes `stopping`, the next read `stopped`. Deleting a server that is
//! not stopped is refused ("instance should be powered off"), as is `poweroff` on a stopped
//! one ("server should be running", the text SWIM matches). Faults can be injected.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const PROJECT: &str = "11111111-2222-4333-8444-555555555555";
pub const ORGANIZATION: &str = "99999999-2222-4333-8444-555555555555";

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: String,
    pub status: u16,
    /// Why the schema check refused it, if it did.
    pub rejected: Option<String>,
    /// When it arrived.
    pub at: std::time::Instant,
}

#[derive(Clone, Debug)]
pub struct FakeServer {
    pub id: String,
    pub zone: String,
    pub body: Value,
    pub state: String,
    pub tags: Vec<String>,
    pub user_data: BTreeMap<String, String>,
    pub ips: Vec<Value>,
    pub volume: String,
    /// The `state` when the user data was last set, per key.
    pub user_data_set_in_state: Vec<String>,
}

struct Fault {
    method: String,
    path_contains: String,
    status: u16,
    message: String,
    times: usize,
    /// Seconds to send in `Retry-After` with the fault's answer.
    retry_after: Option<u64>,
}

#[derive(Default)]
pub struct World {
    pub token: String,
    pub servers: Vec<FakeServer>,
    pub ips: BTreeMap<String, String>,
    pub volumes: BTreeMap<String, String>,
    pub security_groups: Vec<Value>,
    pub log: Vec<Recorded>,
    /// When set, every server created gets a public IPv4 of this address (a test points it
    /// at a local sshd with `127.0.0.1`).
    pub public_ipv4: Option<String>,
    faults: Vec<Fault>,
    /// The `Retry-After` of the answer being made (set by a throttling fault).
    retry_after: Option<u64>,
    next: u64,
}

#[derive(Clone)]
pub struct Fake {
    pub url: String,
    pub world: Arc<Mutex<World>>,
}

impl Fake {
    pub async fn start(token: &str) -> Fake {
        let world = Arc::new(Mutex::new(World { token: token.to_owned(), ..Default::default() }));
        {
            let mut w = world.lock().unwrap();
            for name in ["default", "swim-sg", "swim-sg-2"] {
                let id = w.id();
                w.security_groups
                    .push(json!({"id": id, "name": name, "project": PROJECT, "organization": ORGANIZATION,
                    "zone": "fr-par-1", "tags": [], "stateful": true, "state": "available"}));
            }
        }
        let w = world.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let w = w.clone();
            async move { handle(&w, method, uri, headers, body) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake { url, world }
    }

    /// Servers created from now on get a public IPv4 `address`.
    pub fn give_public_ipv4(&self, address: &str) {
        self.world.lock().unwrap().public_ipv4 = Some(address.to_owned());
    }

    /// Makes the next `times` requests matching `method` and `path_contains` fail.
    pub fn inject(&self, method: &str, path_contains: &str, status: u16, message: &str, times: usize) {
        self.world.lock().unwrap().faults.push(Fault {
            method: method.into(),
            path_contains: path_contains.into(),
            status,
            message: message.into(),
            times,
            retry_after: None,
        });
    }

    /// Makes the next `times` requests matching `method` and `path_contains` answer `429`
    /// with `Retry-After: <retry_after_secs>`, as the API does when it throttles.
    pub fn throttle(&self, method: &str, path_contains: &str, times: usize, retry_after_secs: u64) {
        self.world.lock().unwrap().faults.push(Fault {
            method: method.into(),
            path_contains: path_contains.into(),
            status: 429,
            message: "rate limit exceeded".into(),
            times,
            retry_after: Some(retry_after_secs),
        });
    }

    pub fn log(&self) -> Vec<Recorded> {
        self.world.lock().unwrap().log.clone()
    }

    pub fn servers(&self) -> Vec<FakeServer> {
        self.world.lock().unwrap().servers.clone()
    }

    /// A server made by someone else, or by Lapse with these tags (an orphan).
    pub fn add_server(&self, zone: &str, tags: &[&str], state: &str) -> String {
        let mut w = self.world.lock().unwrap();
        let id = w.id();
        let volume = w.id();
        w.volumes.insert(volume.clone(), zone.into());
        w.servers.push(FakeServer {
            id: id.clone(),
            zone: zone.into(),
            body: json!({"name": "other", "commercial_type": "DEV1-S"}),
            state: state.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            user_data: BTreeMap::new(),
            ips: vec![],
            volume,
            user_data_set_in_state: vec![],
        });
        id
    }
}

impl World {
    fn id(&mut self) -> String {
        self.next += 1;
        format!("{:08x}-0000-4000-8000-{:012x}", self.next, self.next)
    }
}

fn error(status: u16, kind: &str, message: &str) -> (u16, Value) {
    (status, json!({"message": message, "type": kind}))
}

fn invalid(field: &str, why: &str) -> (u16, Value) {
    (400, json!({"message": "Validation Error", "type": "invalid_arguments", "fields": {field: [why]}}))
}

fn handle(world: &Arc<Mutex<World>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut w = world.lock().unwrap();
    let query = uri.query().unwrap_or("").to_owned();
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = String::from_utf8_lossy(&body).into_owned();
    let (status, answer, rejected) =
        route(&mut w, &method, uri.path(), &query, &headers, content_type.as_deref(), &text);
    let retry_after = w.retry_after.take();
    w.log.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query,
        content_type,
        body: text,
        status,
        rejected,
        at: std::time::Instant::now(),
    });
    let code = StatusCode::from_u16(status).unwrap();
    let mut response = match answer {
        Value::Null => code.into_response(),
        v => (code, axum::Json(v)).into_response(),
    };
    if let Some(secs) = retry_after {
        response.headers_mut().insert("retry-after", secs.to_string().parse().unwrap());
    }
    response
}

type Answer = (u16, Value, Option<String>);

fn reject((status, v): (u16, Value)) -> Answer {
    let why = v.to_string();
    (status, v, Some(why))
}

fn ok(status: u16, v: Value) -> Answer {
    (status, v, None)
}

fn route(
    w: &mut World,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    content_type: Option<&str>,
    body: &str,
) -> Answer {
    if headers.get("x-auth-token").and_then(|v| v.to_str().ok()) != Some(w.token.as_str()) {
        return reject((
            401,
            json!({"message": "authentication is denied", "method": "api_key", "reason": "invalid_argument", "type": "denied_authentication"}),
        ));
    }
    let Some(rest) = path.strip_prefix("/instance/v1/zones/") else {
        return reject(error(404, "not_found", "unknown path"));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let zone = parts[0].to_owned();
    let known_zones =
        ["fr-par-1", "fr-par-2", "fr-par-3", "nl-ams-1", "nl-ams-2", "nl-ams-3", "pl-waw-1", "pl-waw-2", "pl-waw-3"];
    if !known_zones.contains(&zone.as_str()) {
        return reject(invalid("zone", "unknown zone"));
    }
    let fault =
        w.faults.iter_mut().find(|f| f.times > 0 && f.method == method.as_str() && path.contains(&f.path_contains));
    if let Some(f) = fault {
        f.times -= 1;
        let (status, message, retry_after) = (f.status, f.message.clone(), f.retry_after);
        w.retry_after = retry_after;
        let kind = if status == 429 { "too_many_requests" } else { "invalid_request_error" };
        return ok(status, json!({"message": message, "type": kind}));
    }
    let q: Vec<(String, String)> = url_pairs(query);
    let m = method.as_str();
    match (m, &parts[1..]) {
        ("GET", ["servers"]) => list_servers(w, &zone, &q),
        ("POST", ["servers"]) => no_query(&q).unwrap_or_else(|| create_server(w, &zone, body)),
        ("GET", ["servers", id]) => with_server(w, &zone, id, |s| {
            settle(s);
            ok(200, json!({"server": server_json(s)}))
        }),
        ("DELETE", ["servers", id]) => {
            let Some(i) = w.servers.iter().position(|s| s.zone == zone && s.id == *id) else {
                return reject(error(404, "unknown_resource", "instance_server not found"));
            };
            if !matches!(w.servers[i].state.as_str(), "stopped" | "stopped in place") {
                return ok(400, json!({"message": "instance should be powered off.", "type": "invalid_request_error"}));
            }
            w.servers.remove(i);
            ok(204, Value::Null)
        }
        ("POST", ["servers", id, "action"]) => {
            let v = match json_object(body, &["action", "name", "volumes", "disable_ipv6"], &["action"]) {
                Ok(v) => v,
                Err(e) => return reject(e),
            };
            let action = v["action"].as_str().unwrap_or("").to_owned();
            let actions = ["poweron", "backup", "stop_in_place", "poweroff", "terminate", "reboot", "enable_routed_ip"];
            if !actions.contains(&action.as_str()) {
                return reject(invalid("action", "not one of the enum's values"));
            }
            with_server(w, &zone, id, |s| match (action.as_str(), s.state.as_str()) {
                ("poweron", "stopped" | "stopped in place") => {
                    s.state = "starting".into();
                    ok(202, json!({"task": {"id": "t", "description": "server_poweron", "status": "pending"}}))
                }
                ("poweron", _) => {
                    ok(400, json!({"message": "server should be stopped", "type": "invalid_request_error"}))
                }
                ("poweroff", "running" | "starting") => {
                    s.state = "stopping".into();
                    ok(202, json!({"task": {"id": "t", "description": "server_poweroff", "status": "pending"}}))
                }
                ("poweroff", _) => {
                    ok(400, json!({"message": "server should be running", "type": "invalid_request_error"}))
                }
                _ => ok(400, json!({"message": "action not served by the fake", "type": "invalid_request_error"})),
            })
        }
        ("PATCH", ["servers", id]) => {
            // `UpdateServerRequest`'s body fields.
            let allowed = [
                "name",
                "boot_type",
                "tags",
                "volumes",
                "dynamic_ip_required",
                "routed_ip_enabled",
                "public_ips",
                "enable_ipv6",
                "protected",
                "security_group",
                "placement_group",
                "private_nics",
                "commercial_type",
                "admin_password_encryption_ssh_key_id",
            ];
            let v = match json_object(body, &allowed, &[]) {
                Ok(v) => v,
                Err(e) => return reject(e),
            };
            let tags: Option<Vec<String>> = match v.get("tags") {
                None => None,
                Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                    Some(a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                }
                Some(_) => return reject(invalid("tags", "an array of strings")),
            };
            with_server(w, &zone, id, move |s| {
                if let Some(tags) = tags {
                    s.tags = tags;
                }
                ok(200, json!({"server": server_json(s)}))
            })
        }
        ("PATCH", ["servers", id, "user_data", key]) => {
            if content_type != Some("text/plain") {
                return reject(invalid("content-type", "user data is sent as text/plain"));
            }
            let (key, body) = (key.to_string(), body.to_owned());
            with_server(w, &zone, id, move |s| {
                s.user_data_set_in_state.push(s.state.clone());
                s.user_data.insert(key, body);
                ok(204, Value::Null)
            })
        }
        ("GET", ["security_groups"]) => {
            let allowed = ["name", "organization", "project", "tags", "project_default", "per_page", "page"];
            if let Some(e) = unknown_query(&q, &allowed) {
                return reject(e);
            }
            let name = q.iter().find(|(k, _)| k == "name").map(|(_, v)| v.clone());
            let groups: Vec<Value> = w
                .security_groups
                .iter()
                .filter(|g| name.as_ref().is_none_or(|n| g["name"].as_str().unwrap_or("").contains(n.as_str())))
                .cloned()
                .collect();
            ok(200, json!({"total_count": groups.len(), "security_groups": groups}))
        }
        ("POST", ["ips"]) => {
            let v = match json_object(body, &["organization", "project", "tags", "server", "type"], &[]) {
                Ok(v) => v,
                Err(e) => return reject(e),
            };
            if v.get("project").is_none() == v.get("organization").is_none() {
                return reject(invalid("project", "exactly one of project and organization"));
            }
            let kind = v.get("type").and_then(Value::as_str).unwrap_or("unknown_iptype").to_owned();
            if !["unknown_iptype", "ipv4", "routed_ipv4", "routed_ipv6"].contains(&kind.as_str()) {
                return reject(invalid("type", "not one of the enum's values"));
            }
            let id = w.id();
            let n = w.next;
            let address =
                if kind == "routed_ipv6" { format!("2001:bc8:1640:{n:x}::1") } else { format!("51.15.0.{}", n % 250) };
            let family = if kind == "routed_ipv6" { "inet6" } else { "inet" };
            let ip = json!({"id": id, "address": address, "family": family, "provisioning_mode": "slaac", "dynamic": false,
                "tags": [], "state": "attached", "gateway": null, "netmask": "64", "ipam_id": ""});
            w.ips.insert(id.clone(), zone.clone());
            if let Some(server) = v.get("server").and_then(Value::as_str) {
                let Some(s) = w.servers.iter_mut().find(|s| s.zone == zone && s.id == server) else {
                    return ok(404, json!({"message": "instance_server not found", "type": "unknown_resource"}));
                };
                s.ips.push(ip.clone());
            }
            ok(201, json!({"ip": {"id": id, "address": address, "type": kind, "project": PROJECT, "zone": zone}}))
        }
        ("DELETE", ["ips", id]) => {
            if w.ips.remove(*id).is_none() {
                return ok(404, json!({"message": "instance_ip not found", "type": "unknown_resource"}));
            }
            for s in w.servers.iter_mut() {
                s.ips.retain(|ip| ip["id"] != *id);
            }
            ok(204, Value::Null)
        }
        ("DELETE", ["volumes", id]) => {
            if w.servers.iter().any(|s| s.volume == *id) {
                return ok(400, json!({"message": "volume is attached to a server", "type": "invalid_request_error"}));
            }
            match w.volumes.remove(*id) {
                Some(_) => ok(204, Value::Null),
                None => ok(404, json!({"message": "instance_volume not found", "type": "unknown_resource"})),
            }
        }
        _ => reject(error(404, "not_found", &format!("no route {m} {path}"))),
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

fn no_query(q: &[(String, String)]) -> Option<Answer> {
    unknown_query(q, &[]).map(reject)
}

fn unknown_query(q: &[(String, String)], allowed: &[&str]) -> Option<(u16, Value)> {
    q.iter().find(|(k, _)| !allowed.contains(&k.as_str())).map(|(k, _)| invalid(k, "unknown query parameter"))
}

fn json_object(
    body: &str,
    allowed: &[&str],
    required: &[&str],
) -> Result<serde_json::Map<String, Value>, (u16, Value)> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(body) else {
        return Err(invalid("body", "a JSON object"));
    };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(k, "unknown field"));
    }
    if let Some(k) = required.iter().find(|k| map.get(**k).is_none_or(|v| v.is_null() || v == "")) {
        return Err(invalid(k, "required"));
    }
    Ok(map)
}

fn with_server(w: &mut World, zone: &str, id: &str, f: impl FnOnce(&mut FakeServer) -> Answer) -> Answer {
    match w.servers.iter_mut().find(|s| s.zone == zone && s.id == id) {
        Some(s) => f(s),
        None => ok(
            404,
            json!({"message": "instance_server not found", "type": "unknown_resource", "resource": "instance_server", "resource_id": id}),
        ),
    }
}

fn settle(s: &mut FakeServer) {
    match s.state.as_str() {
        "starting" => s.state = "running".into(),
        "stopping" => s.state = "stopped".into(),
        _ => {}
    }
}

fn server_json(s: &FakeServer) -> Value {
    let detail = match s.state.as_str() {
        "running" => "booted",
        "starting" => "provisioning node",
        _ => "",
    };
    json!({
        "id": s.id, "name": s.body["name"], "organization": ORGANIZATION, "project": PROJECT,
        "commercial_type": s.body["commercial_type"], "image": {"id": s.body["image"], "name": "ubuntu"},
        "tags": s.tags, "state": s.state, "state_detail": detail, "public_ips": s.ips,
        "public_ip": s.ips.first(), "dynamic_ip_required": false, "routed_ip_enabled": true,
        "volumes": {"0": {"id": s.volume, "volume_type": "l_ssd", "boot": false, "zone": s.zone}},
        "security_group": {"id": s.body.get("security_group"), "name": ""}, "zone": s.zone,
        "allowed_actions": [], "arch": "x86_64", "private_nics": [], "maintenances": [], "protected": false,
    })
}

fn list_servers(w: &mut World, zone: &str, q: &[(String, String)]) -> Answer {
    let allowed = [
        "per_page",
        "page",
        "organization",
        "project",
        "name",
        "private_ip",
        "without_ip",
        "with_ip",
        "commercial_type",
        "state",
        "tags",
        "private_network",
        "order",
        "private_networks",
        "private_nic_mac_address",
        "servers",
    ];
    if let Some(e) = unknown_query(q, &allowed) {
        return reject(e);
    }
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let per_page: usize = match get("per_page").map(|v| v.parse::<usize>()) {
        None => 50,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        _ => return reject(invalid("per_page", "between 1 and 100")),
    };
    let page: usize = match get("page").map(|v| v.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        _ => return reject(invalid("page", "at least 1")),
    };
    let tags: Vec<String> = get("tags").map(|t| t.split(',').map(str::to_owned).collect()).unwrap_or_default();
    let matching: Vec<Value> = w
        .servers
        .iter_mut()
        .filter(|s| s.zone == zone && tags.iter().all(|t| s.tags.contains(t)))
        .map(|s| {
            settle(s);
            server_json(s)
        })
        .collect();
    let total = matching.len();
    let page_items: Vec<Value> = matching.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    ok(200, json!({"total_count": total, "servers": page_items}))
}

fn create_server(w: &mut World, zone: &str, body: &str) -> Answer {
    let allowed = [
        "name",
        "dynamic_ip_required",
        "routed_ip_enabled",
        "commercial_type",
        "image",
        "volumes",
        "enable_ipv6",
        "public_ip",
        "public_ips",
        "boot_type",
        "organization",
        "project",
        "tags",
        "security_group",
        "placement_group",
        "admin_password_encryption_ssh_key_id",
        "protected",
    ];
    let v = match json_object(body, &allowed, &["name", "commercial_type"]) {
        Ok(v) => v,
        Err(e) => return reject(e),
    };
    if v.get("project").is_none() == v.get("organization").is_none() {
        return reject(invalid("project", "exactly one of project and organization"));
    }
    if v.get("image").is_none() && v.get("volumes").is_none() {
        return reject(invalid("image", "an image or volumes is required"));
    }
    let tags: Vec<String> = match v.get("tags") {
        None => vec![],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            a.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        Some(_) => return reject(invalid("tags", "an array of strings")),
    };
    if let Some(b) = v.get("dynamic_ip_required")
        && !b.is_boolean()
    {
        return reject(invalid("dynamic_ip_required", "a boolean"));
    }
    if let Some(sg) = v.get("security_group").and_then(Value::as_str)
        && !w.security_groups.iter().any(|g| g["id"] == sg)
    {
        return ok(404, json!({"message": "instance_security_group not found", "type": "unknown_resource"}));
    }
    let id = w.id();
    let volume = w.id();
    w.volumes.insert(volume.clone(), zone.into());
    let mut ips = vec![];
    if let Some(address) = w.public_ipv4.clone() {
        let ip_id = w.id();
        w.ips.insert(ip_id.clone(), zone.into());
        ips.push(
            json!({"id": ip_id, "address": address, "family": "inet", "provisioning_mode": "dhcp", "dynamic": false,
            "tags": [], "state": "attached", "gateway": null, "netmask": "32", "ipam_id": ""}),
        );
    }
    let s = FakeServer {
        id,
        zone: zone.into(),
        body: Value::Object(v),
        state: "stopped".into(),
        tags,
        user_data: BTreeMap::new(),
        ips,
        volume,
        user_data_set_in_state: vec![],
    };
    let answer = json!({"server": server_json(&s)});
    w.servers.push(s);
    ok(201, answer)
}

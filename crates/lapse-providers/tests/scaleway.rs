//! The scaleway provider against a local fake of the Instance API v1 that follows the
//! published schema (see `scaleway_fake`). Not the real cloud.
#![cfg(feature = "scaleway")]

mod scaleway_fake;

use std::time::Duration;

use lapse_core::model::{CloudSpec, Spec};
use lapse_providers::scaleway::{ScalewayConfig, ScalewayProvider, USER_DATA_KEY, controller_tag, environment_tag};
use lapse_providers::{InstanceStatus, Placement, Provider, ProviderError};
use scaleway_fake::{Fake, ORGANIZATION, PROJECT};

const SECRET: &str = "scw-secret-5f3a9c1e-dont-leak";
const CONTROLLER: &str = "ctl0000000000000000000000000000a";

fn config(fake: &Fake) -> ScalewayConfig {
    let mut cfg = ScalewayConfig::new("SCWACCESSKEY0000", SECRET, ORGANIZATION, PROJECT, "fr-par-1");
    cfg.api_url = fake.url.clone();
    cfg.poll_interval = Duration::from_millis(5);
    cfg.settle_timeout = Duration::from_secs(5);
    cfg.retry_pause = Duration::from_millis(5);
    cfg.page_size = 2;
    cfg
}

async fn setup() -> (Fake, ScalewayProvider) {
    let fake = Fake::start(SECRET).await;
    let p = ScalewayProvider::new(config(&fake), CONTROLLER).unwrap();
    (fake, p)
}

fn spec() -> Spec {
    Spec {
        provider: "scaleway".into(),
        image: Some("ubuntu_jammy".into()),
        user_data: Some("#cloud-config\npackages: [git]\n".into()),
        cloud: Some(CloudSpec {
            instance_type: Some("DEV1-S".into()),
            security_group: Some("swim-sg".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn placement() -> Placement {
    Placement { tenant: "acme".into(), expires_at: Some(1_800_000_000_000), ..Default::default() }
}

fn assert_schema_valid(fake: &Fake) {
    let log = fake.log();
    assert!(!log.is_empty());
    for r in &log {
        assert_eq!(r.rejected, None, "a request the schema does not define: {r:?}");
        assert!(!r.path.contains(SECRET) && !r.query.contains(SECRET) && !r.body.contains(SECRET));
    }
}

fn steps(fake: &Fake) -> Vec<String> {
    fake.log()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path.rsplit_once("/zones/fr-par-1/").map_or("?", |x| x.1)))
        .collect()
}

#[tokio::test]
async fn create_follows_swims_steps_with_user_data_before_power_on() {
    let (fake, p) = setup().await;
    let inst = p.ensure_running("env1", &placement(), &spec()).await.unwrap();
    assert_eq!(inst.status, InstanceStatus::Running);
    let servers = fake.servers();
    assert_eq!(servers.len(), 1);
    let s = &servers[0];
    assert_eq!(s.body["commercial_type"], "DEV1-S");
    assert_eq!(s.body["image"], "ubuntu_jammy");
    assert_eq!(s.body["dynamic_ip_required"], false);
    assert_eq!(s.body["project"], PROJECT);
    let sg = fake.world.lock().unwrap().security_groups.iter().find(|g| g["name"] == "swim-sg").unwrap()["id"].clone();
    assert_eq!(s.body["security_group"], sg, "the security group found by name in the project");
    assert!(s.tags.contains(&environment_tag("env1")) && s.tags.contains(&controller_tag(CONTROLLER)));
    // User data under `cloud-init`, set while the server was still off, with the backstop.
    let data = &s.user_data[USER_DATA_KEY];
    assert!(
        data.contains("packages: [git]")
            && data.contains("shutdown -P")
            && data.contains("if [ 1800000000 -gt")
            && data.contains("g=600"),
        "{data}"
    );
    assert_eq!(s.user_data_set_in_state, ["stopped"]);
    // The routed IPv6 is the first address and an endpoint host (what SWIM's `ipv6` shows).
    let v6 = inst.addresses[0];
    assert!(v6.is_ipv6(), "{:?}", inst.addresses);
    assert_eq!(inst.endpoints[0].host, v6.to_string());
    let order = steps(&fake);
    let pos = |needle: &str| {
        order.iter().position(|s| s.starts_with(needle)).unwrap_or_else(|| panic!("{needle} in {order:?}"))
    };
    assert!(pos("GET security_groups") < pos("POST servers"));
    assert!(pos("POST servers") < pos("POST ips"));
    assert!(pos("POST ips") < pos("PATCH servers/"));
    assert!(pos("PATCH servers/") < pos("POST servers/"), "user data before power-on: {order:?}");
    assert_schema_valid(&fake);
}

#[tokio::test]
async fn a_retry_after_a_crash_finds_the_server_and_makes_no_second() {
    let (fake, p) = setup().await;
    p.ensure_running("env1", &placement(), &spec()).await.unwrap();
    // A new process (the record was never written): the lookup by tag finds it.
    let again = ScalewayProvider::new(config(&fake), CONTROLLER).unwrap();
    let inst = again.ensure_running("env1", &placement(), &spec()).await.unwrap();
    assert_eq!(inst.status, InstanceStatus::Running);
    assert_eq!(fake.servers().len(), 1);
    // A crash right after the create (off, no IPv6, no user data): the retry finishes it.
    fake.add_server("fr-par-1", &[&environment_tag("env2"), &controller_tag(CONTROLLER)], "stopped");
    let inst = again.ensure_running("env2", &placement(), &spec()).await.unwrap();
    assert_eq!(inst.status, InstanceStatus::Running);
    assert_eq!(fake.servers().len(), 2);
    let s = fake.servers().into_iter().find(|s| s.tags.contains(&environment_tag("env2"))).unwrap();
    assert!(s.user_data.contains_key(USER_DATA_KEY) && !s.ips.is_empty());
    assert_schema_valid(&fake);
}

#[tokio::test]
async fn stop_powers_off_start_powers_on_delete_removes_server_ips_and_volumes() {
    let (fake, p) = setup().await;
    p.ensure_running("env1", &placement(), &spec()).await.unwrap();
    p.stop("env1", Duration::from_secs(1)).await.unwrap();
    assert_eq!(p.inspect("env1").await.unwrap().unwrap().status, InstanceStatus::Stopped);
    assert_eq!(p.ensure_running("env1", &placement(), &spec()).await.unwrap().status, InstanceStatus::Running);
    p.delete("env1", Duration::from_secs(1)).await.unwrap();
    assert!(fake.servers().is_empty());
    {
        let w = fake.world.lock().unwrap();
        assert!(w.ips.is_empty() && w.volumes.is_empty(), "ips {:?} volumes {:?}", w.ips, w.volumes);
        let actions: Vec<String> =
            w.log.iter().filter(|r| r.path.ends_with("/action")).map(|r| r.body.clone()).collect();
        assert!(actions.last().unwrap().contains("poweroff"), "delete powers off first: {actions:?}");
    }
    p.delete("env1", Duration::from_secs(1)).await.unwrap();
    p.stop("env1", Duration::from_secs(1)).await.unwrap();
    assert_eq!(p.inspect("env1").await.unwrap(), None);
    assert_schema_valid(&fake);
}

#[tokio::test]
async fn list_pages_by_the_controller_tag_only() {
    let (fake, p) = setup().await;
    for env in ["a", "b", "c"] {
        fake.add_server("fr-par-1", &[&environment_tag(env), &controller_tag(CONTROLLER)], "running");
    }
    fake.add_server("fr-par-1", &[&environment_tag("x"), &controller_tag("someone-else")], "running");
    fake.add_server("fr-par-1", &["webuser:ann"], "running");
    let mut envs: Vec<String> = p.list().await.unwrap().into_iter().map(|i| i.environment_id).collect();
    envs.sort();
    assert_eq!(envs, ["a", "b", "c"]);
    let pages = fake.log().iter().filter(|r| r.query.contains("page=")).count();
    assert!(pages >= 2, "page size 2 over 3 servers takes two pages");
    assert_schema_valid(&fake);
}

#[tokio::test]
async fn throttling_is_retried() {
    let (fake, p) = setup().await;
    fake.inject("POST", "/servers", 429, "rate limit exceeded", 2);
    assert_eq!(p.ensure_running("env1", &placement(), &spec()).await.unwrap().status, InstanceStatus::Running);
    assert_eq!(fake.servers().len(), 1);
}

#[tokio::test]
async fn throttling_waits_as_long_as_retry_after_says_then_succeeds() {
    let (fake, p) = setup().await;
    // The growing pause is 5 ms here; the API asks for a second, twice.
    fake.throttle("POST", "/servers", 2, 1);
    assert_eq!(p.ensure_running("env1", &placement(), &spec()).await.unwrap().status, InstanceStatus::Running);
    assert_eq!(fake.servers().len(), 1, "one server, made by the third attempt");
    let creates: Vec<_> =
        fake.log().into_iter().filter(|r| r.method == "POST" && r.path.ends_with("/servers")).collect();
    assert_eq!(creates.iter().map(|r| r.status).collect::<Vec<_>>(), [429, 429, 201]);
    for pair in creates.windows(2) {
        let waited = pair[1].at - pair[0].at;
        assert!(waited >= Duration::from_millis(950), "waited {waited:?} after a Retry-After of 1 s");
    }
    assert_schema_valid(&fake);
}

#[tokio::test]
async fn a_server_tagged_lapse_keep_is_listed_as_kept() {
    let (fake, p) = setup().await;
    fake.add_server("fr-par-1", &[&environment_tag("k"), &controller_tag(CONTROLLER), "lapse:keep"], "running");
    fake.add_server("fr-par-1", &[&environment_tag("o"), &controller_tag(CONTROLLER)], "running");
    let mut listed: Vec<(String, bool)> =
        p.list().await.unwrap().into_iter().map(|i| (i.environment_id, i.keep)).collect();
    listed.sort();
    assert_eq!(listed, [("k".to_owned(), true), ("o".to_owned(), false)]);
}

#[test]
fn retry_after_is_read_in_seconds_and_bounded_by_the_pause_cap() {
    use lapse_providers::scaleway::{MAX_PAUSE, retry_after};
    assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
    assert_eq!(retry_after(" 0 "), Some(Duration::ZERO));
    assert_eq!(retry_after("soon"), None);
    assert_eq!(retry_after("-1"), None);
    assert!(MAX_PAUSE <= Duration::from_secs(60));
}

#[tokio::test]
async fn a_refusal_is_permanent_with_the_apis_message_and_leaves_nothing() {
    let (fake, p) = setup().await;
    fake.inject("POST", "/servers", 403, "quota exceeded: DEV1-S", 1);
    let err = p.ensure_running("env1", &placement(), &spec()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Permanent { .. }) && !err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("quota exceeded: DEV1-S"), "{err}");
    assert!(fake.servers().is_empty());
    // No such security group: permanent, before anything is made.
    let mut s = spec();
    s.cloud.as_mut().unwrap().security_group = Some("nope".into());
    let err = p.ensure_running("env2", &placement(), &s).await.unwrap_err();
    assert!(err.to_string().contains("security group \"nope\" not found"), "{err}");
    assert!(fake.servers().is_empty());
}

#[tokio::test]
async fn a_half_made_server_is_removed() {
    let (fake, p) = setup().await;
    fake.inject("POST", "/action", 400, "insufficient capacity in fr-par-1", 1);
    let err = p.ensure_running("env1", &placement(), &spec()).await.unwrap_err();
    assert!(err.to_string().contains("insufficient capacity"), "{err}");
    assert!(fake.servers().is_empty());
    let w = fake.world.lock().unwrap();
    assert!(w.ips.is_empty() && w.volumes.is_empty());
}

#[tokio::test]
async fn credentials_never_appear_in_errors_or_debug() {
    let fake = Fake::start("another-token").await;
    let p = ScalewayProvider::new(config(&fake), CONTROLLER).unwrap();
    let err = p.health().await.unwrap_err();
    assert!(err.to_string().contains("authentication is denied"), "{err}");
    let err = p.ensure_running("env1", &placement(), &spec()).await.unwrap_err();
    for text in [err.to_string(), format!("{err:?}"), format!("{p:?}"), format!("{:?}", config(&fake))] {
        assert!(!text.contains(SECRET) && !text.contains("SCWACCESSKEY0000"), "{text}");
    }
    // The server saw the key only in the header.
    assert!(fake.log().iter().all(|r| !r.body.contains(SECRET) && !r.query.contains(SECRET)));
}

#[tokio::test]
async fn validate_names_the_field() {
    let (_fake, p) = setup().await;
    assert!(p.validate(&spec()).is_ok());
    let mut s = spec();
    s.cloud = None;
    assert_eq!(p.validate(&s).unwrap_err().field, "spec.cloud.instance_type");
    let mut s = spec();
    s.image = None;
    assert_eq!(p.validate(&s).unwrap_err().field, "spec.image");
    let mut s = spec();
    s.cloud.as_mut().unwrap().zone = Some("mars-1".into());
    assert_eq!(p.validate(&s).unwrap_err().field, "spec.cloud.zone");
    let mut s = spec();
    s.cmd = vec!["sleep".into()];
    assert_eq!(p.validate(&s).unwrap_err().field, "spec.cmd");
    assert_eq!(lapse_providers::validate_spec(&spec()), Ok(()));
}

#[test]
fn config_from_the_seeds_variables() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    };
    assert!(ScalewayConfig::from_vars(vars(&[])).unwrap().is_none(), "off without SCW_SECRET_KEY");
    let err = ScalewayConfig::from_vars(vars(&[("SCW_SECRET_KEY", SECRET)])).unwrap_err();
    assert!(err.contains("SCW_ACCESS_KEY") && err.contains("SCW_DEFAULT_ZONE") && !err.contains(SECRET), "{err}");
    let all: &'static [(&'static str, &'static str)] = &[
        ("SCW_SECRET_KEY", SECRET),
        ("SCW_ACCESS_KEY", "AK"),
        ("SCW_ORGANIZATION_ID", ORGANIZATION),
        ("SCW_PROJECT_ID", PROJECT),
        ("SCW_DEFAULT_ZONE", "nl-ams-1"),
        ("SCW_API_URL", "http://127.0.0.1:9"),
    ];
    let cfg = ScalewayConfig::from_vars(vars(all)).unwrap().unwrap();
    assert_eq!((cfg.default_zone.as_str(), cfg.api_url.as_str()), ("nl-ams-1", "http://127.0.0.1:9"));
    // The real API is https (TLS is built in); plain http to another machine would send the
    // secret key in the clear: unavailable, with the reason.
    let real = ScalewayConfig::new("AK", SECRET, ORGANIZATION, PROJECT, "fr-par-1");
    assert!(ScalewayProvider::new(real.clone(), CONTROLLER).is_ok());
    let clear = ScalewayConfig { api_url: "http://192.0.2.7:8080".into(), ..real };
    let err = ScalewayProvider::new(clear, CONTROLLER).unwrap_err();
    assert!(matches!(err, ProviderError::Unavailable { .. }) && !err.to_string().contains(SECRET), "{err}");
    assert!(err.to_string().contains("unencrypted"), "{err}");
}

#[tokio::test]
async fn the_fake_rejects_what_the_schema_does_not_define() {
    let fake = Fake::start(SECRET).await;
    let http = reqwest::Client::new();
    let servers = format!("{}/instance/v1/zones/fr-par-1/servers", fake.url);
    let no_token = http.get(&servers).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let unknown_field =
        serde_json::json!({"name": "a", "commercial_type": "DEV1-S", "image": "i", "project": PROJECT, "colour": 1});
    let r = http.post(&servers).header("X-Auth-Token", SECRET).json(&unknown_field).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let missing = serde_json::json!({"name": "a", "image": "i", "project": PROJECT});
    let r = http.post(&servers).header("X-Auth-Token", SECRET).json(&missing).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["type"], "invalid_arguments");
    let r = http.get(format!("{servers}?colour=red")).header("X-Auth-Token", SECRET).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = http.put(&servers).header("X-Auth-Token", SECRET).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(fake.log().iter().filter(|r| r.rejected.is_some()).count(), 5);
}

/// The SSH key in the user data the fake received, as cloud-init would install it.
fn authorized_keys_in(user_data: &str) -> Vec<String> {
    let after = user_data.split("ssh_authorized_keys:\n").nth(1).unwrap_or_default();
    after
        .lines()
        .take_while(|l| l.starts_with("  - "))
        .map(|l| serde_json::from_str::<String>(l.trim_start_matches("  - ")).unwrap())
        .collect()
}

/// A Scaleway server whose address is a local sshd: the key goes in through the user data,
/// `exec` runs there, `rearm` moves the tag and the deadline file, `delete` forgets the key.
#[tokio::test]
async fn exec_and_rearm_over_ssh_on_a_server_at_a_local_sshd() {
    use lapse_providers::ssh::SshConfig;
    use lapse_providers::ssh::testing::TestSshd;
    let sshd = TestSshd::start();
    let fake = Fake::start(SECRET).await;
    fake.give_public_ipv4("127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let deadline_file = format!("{}/guest/expires-at", dir.path().display());
    let mut ssh = SshConfig::in_dir(dir.path().join("keys"));
    ssh.port = sshd.port;
    ssh.user = Some(sshd.user.clone());
    ssh.retry_pause = Duration::from_millis(50);
    ssh.deadline_file = deadline_file.clone();
    let p = ScalewayProvider::new(config(&fake), CONTROLLER).unwrap().with_ssh(ssh.clone());
    let mut spec = spec();
    spec.cloud.as_mut().unwrap().ssh_public_keys = vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUser user@laptop".into()];
    p.ensure_running("env1", &placement(), &spec).await.unwrap();

    let data = fake.servers()[0].user_data[USER_DATA_KEY].clone();
    let keys = authorized_keys_in(&data);
    assert_eq!(keys.len(), 2, "Lapse's key and the user's: {data}");
    assert!(keys[0].starts_with("ssh-ed25519 ") && keys[1].ends_with("user@laptop"));
    assert!(data.contains(&deadline_file) && data.contains("169.254.42.42/conf"), "the shared backstop: {data}");
    let private = std::fs::read_to_string(dir.path().join("keys/env1.key")).unwrap();
    let body: String = private.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!data.contains(&body[..40]), "the private key is not in the user data");
    assert!(fake.servers()[0].tags.contains(&"lapse:expires-at=1800000000".to_owned()));
    // cloud-init's part, played by the test: the key in the user data lets Lapse in.
    sshd.authorize(&keys[0]);

    let cmd: Vec<String> =
        ["sh", "-c", "echo \"$0 $1\"; echo e >&2; exit 7", "a b", "$(x);'"].map(String::from).to_vec();
    let r = p.exec("env1", &spec, &cmd, Duration::from_secs(20)).await.unwrap();
    assert_eq!((r.stdout.as_str(), r.stderr.as_str(), r.exit_code), ("a b $(x);'\n", "e\n", Some(7)));

    // A provider made again on the same directory (a restarted server) uses the same key.
    let again = ScalewayProvider::new(config(&fake), CONTROLLER).unwrap().with_ssh(ssh.clone());
    let r = again.exec("env1", &spec, &["true".into()], Duration::from_secs(20)).await.unwrap();
    assert_eq!(r.exit_code, Some(0));

    // Extend of the running server: the tag and the guest's file move.
    let later = Placement { expires_at: Some(1_900_000_000_000), ..placement() };
    again.rearm("env1", &later).await.unwrap();
    let tags = fake.servers()[0].tags.clone();
    assert!(tags.contains(&"lapse:expires-at=1900000000".to_owned()), "{tags:?}");
    assert!(!tags.contains(&"lapse:expires-at=1800000000".to_owned()), "{tags:?}");
    assert!(tags.contains(&environment_tag("env1")) && tags.contains(&controller_tag(CONTROLLER)));
    assert_eq!(std::fs::read_to_string(&deadline_file).unwrap(), "1900000000\n");
    assert_schema_valid(&fake);

    again.delete("env1", Duration::ZERO).await.unwrap();
    assert!(!dir.path().join("keys/env1.key").exists(), "the key goes with the environment");
    assert!(!dir.path().join("keys/env1.host").exists());
}

/// A rearm that cannot reach the guest fails retryably (the server retries it) after the tag
/// moved, and says why without key material.
#[tokio::test]
async fn a_rearm_that_cannot_reach_the_guest_is_retryable() {
    use lapse_providers::ssh::SshConfig;
    let fake = Fake::start(SECRET).await;
    fake.give_public_ipv4("127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let mut ssh = SshConfig::in_dir(dir.path());
    ssh.port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    ssh.retry_pause = Duration::from_millis(50);
    ssh.connect_timeout = Duration::from_millis(200);
    ssh.rearm_timeout = Duration::from_secs(1);
    let p = ScalewayProvider::new(config(&fake), CONTROLLER).unwrap().with_ssh(ssh);
    p.ensure_running("env1", &placement(), &spec()).await.unwrap();
    let later = Placement { expires_at: Some(1_900_000_000_000), ..placement() };
    let err = tokio::time::timeout(Duration::from_secs(10), p.rearm("env1", &later)).await.unwrap().unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(fake.servers()[0].tags.contains(&"lapse:expires-at=1900000000".to_owned()));
    assert!(!err.to_string().contains("PRIVATE KEY"));
}

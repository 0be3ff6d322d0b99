//! The `ovh` provider against the schema-following fake (`lapse_providers::ovh::fake`): the
//! signature on every request, the seed's flavour and image choice, the lifecycle, an
//! idempotent create after a lost answer, orphans by `list`, and failures sorted.

use std::time::Duration;

use lapse_core::model::{CloudSpec, OnExpiry, Resources, Spec};
use lapse_providers::ovh::client::signature;
use lapse_providers::ovh::fake::Fake;
use lapse_providers::ovh::{Credentials, OvhConfig, OvhProvider};
use lapse_providers::{InstanceStatus, Placement, Provider, ProviderError};
use serde_json::Value;

const SECRET: &str = "s3cr3t-application-secret";
const CONSUMER: &str = "c0nsumer-key-of-the-user";

fn credentials() -> Credentials {
    Credentials {
        application_key: "app-key-1".into(),
        application_secret: SECRET.into(),
        consumer_key: CONSUMER.into(),
    }
}

async fn fake() -> Fake {
    Fake::start("proj-1", credentials()).await.unwrap()
}

fn provider_with(fake: &Fake, controller: &str, credentials: Credentials) -> OvhProvider {
    let mut config = OvhConfig::new(&fake.url, credentials, &fake.project, None);
    config.poll_interval = Duration::from_millis(10);
    config.poll_timeout = Duration::from_secs(5);
    config.call_timeout = Duration::from_secs(5);
    OvhProvider::new(config, controller).unwrap()
}

fn provider(fake: &Fake) -> OvhProvider {
    provider_with(fake, "ctl1", credentials())
}

fn vm(vcpu: f64, mem_mb: u64) -> Spec {
    Spec {
        provider: "ovh".into(),
        resources: Some(Resources { vcpu: Some(vcpu), mem_mb: Some(mem_mb), disk_gb: None }),
        ..Default::default()
    }
}

/// The bodies of the `POST .../instance` calls the fake saw.
fn creates(fake: &Fake) -> Vec<Value> {
    fake.create_bodies()
}

#[test]
fn signatures_match_the_official_ovh_python_package() {
    // Made with `ovh` 1.2.0 (`Client.raw_call`, endpoint ovh-eu, application secret
    // "SECRETxyz", consumer key "CK456", time 1700000000).
    let base = "https://eu.api.ovh.com/1.0";
    let check = |method: &str, path: &str, body: &str, expect: &str| {
        let url = format!("{base}{path}");
        assert_eq!(signature("SECRETxyz", "CK456", method, &url, body, 1_700_000_000), expect, "{method} {path}");
    };
    check("GET", "/cloud/project/p1/flavor?region=GRA9", "", "$1$8a7b1478f86d1d13038d973b93a6fd6693329962");
    check(
        "POST",
        "/cloud/project/p1/instance",
        r#"{"name":"lapse-x","flavorId":"f","region":"GRA9","monthlyBilling":false}"#,
        "$1$7e04c2a50d216bd67faaad0611c12b996bde9355",
    );
    check("DELETE", "/cloud/project/p1/instance/i-1", "", "$1$1a4e63aa18f1d0ce82ec8b055ec47277f2d727f0");
}

#[tokio::test]
async fn every_request_is_signed_at_server_time_and_a_wrong_secret_is_refused() {
    let fake = fake().await;
    let p = provider(&fake);
    p.health().await.unwrap();
    p.ensure_running("env-a", &Placement::default(), &vm(1.0, 1024)).await.unwrap();
    {
        let st = fake.state();
        assert!(st.requests.len() >= 5, "{:?}", st.requests);
        // The fake's clock is 2 h ahead: without /auth/time every call would be refused.
        assert_eq!(st.refused, 0);
        assert_eq!(st.undescribed, 0, "every request is one the schema describes");
    }

    let wrong = Credentials { application_secret: "not-the-secret".into(), ..credentials() };
    let bad = provider_with(&fake, "ctl1", wrong);
    let err = bad.health().await.unwrap_err();
    assert!(matches!(err, ProviderError::Permanent { .. }), "{err:?}");
    assert!(err.to_string().contains("Invalid signature"), "{err}");
    assert_eq!(fake.state().refused, 1);
    let wrong_consumer = Credentials { consumer_key: "someone-else".into(), ..credentials() };
    let err = provider_with(&fake, "ctl1", wrong_consumer).list().await.unwrap_err();
    assert!(err.to_string().contains("credential does not exist"), "{err}");

    // No secret in an error or a Debug.
    for text in [err.to_string(), format!("{err:?}"), format!("{p:?}"), format!("{bad:?}")] {
        assert!(!text.contains(SECRET) && !text.contains(CONSUMER) && !text.contains("not-the-secret"), "{text}");
    }
}

#[tokio::test]
async fn flavour_and_image_are_the_seeds_choice() {
    let fake = fake().await;
    let p = provider(&fake);
    // 1 vCPU, 1 GB: d2-2 and s1-2 tie at 3 (d2-2 first in the API's order); win-d2-2 is out.
    p.ensure_running("small", &Placement::default(), &vm(1.0, 1024)).await.unwrap();
    // 2 vCPU, 4096 MiB: d2-4 is unavailable, so b2-7 (2+7) before d2-8 (4+8).
    p.ensure_running("mid", &Placement::default(), &vm(2.0, 4096)).await.unwrap();
    // Named: by flavour name.
    let named = Spec {
        cloud: Some(CloudSpec { instance_type: Some("b2-15".into()), zone: Some("GRA9".into()), ..Default::default() }),
        image: Some("debian 12".into()),
        ..vm(1.0, 1024)
    };
    p.ensure_running("named", &Placement::default(), &named).await.unwrap();
    let made = creates(&fake);
    let pick = |i: usize, key: &str| made[i][key].as_str().unwrap().to_owned();
    assert_eq!([pick(0, "flavorId"), pick(1, "flavorId"), pick(2, "flavorId")], ["f-d2-2", "f-b2-7", "f-b2-15"]);
    assert_eq!([pick(0, "imageId"), pick(2, "imageId")], ["img-u22", "img-deb"]);
    assert_eq!(pick(0, "name"), "lapse-ctl1-small");
    assert_eq!(pick(0, "region"), "GRA9");
    assert_eq!(made[0]["monthlyBilling"], Value::Bool(false));

    let none = p.ensure_running("huge", &Placement::default(), &vm(64.0, 1024)).await.unwrap_err();
    assert!(matches!(none, ProviderError::Permanent { .. }) && none.to_string().contains("no available flavour"));
    let unknown =
        Spec { cloud: Some(CloudSpec { instance_type: Some("x9-999".into()), ..Default::default() }), ..vm(1.0, 1024) };
    let err = p.ensure_running("unknown", &Placement::default(), &unknown).await.unwrap_err();
    assert!(err.to_string().contains("no flavour \"x9-999\""), "{err}");
    assert_eq!(creates(&fake).len(), 3, "nothing made for a refused spec");
}

#[tokio::test]
async fn create_poll_stop_start_delete() {
    let fake = fake().await;
    fake.state().build_looks = 3;
    let p = provider(&fake);
    let placement = Placement {
        tenant: "acme".into(),
        expires_at: Some(1_800_000_000_000),
        on_expiry: OnExpiry::Stop,
        ..Default::default()
    };
    let spec = Spec { user_data: Some("#cloud-config\npackages: [htop]\n".into()), ..vm(1.0, 1024) };
    let up = p.ensure_running("env-1", &placement, &spec).await.unwrap();
    assert_eq!(up.status, InstanceStatus::Running);
    assert_eq!(up.environment_id, "env-1");
    assert!(!up.addresses.is_empty());
    // The user data carries the user's part and the backstop.
    let data = creates(&fake)[0]["userData"].as_str().unwrap().to_owned();
    let text = String::from_utf8(base64_decode(&data)).unwrap();
    assert!(text.contains("packages: [htop]") && text.contains("shutdown -P"), "{text}");
    assert!(text.contains("echo 1800000000 >") && text.contains("expires-at + 600s"), "{text}");

    // Again: the same instance, nothing new made.
    assert_eq!(p.ensure_running("env-1", &placement, &spec).await.unwrap().provider_ref, up.provider_ref);
    p.stop("env-1", Duration::from_secs(1)).await.unwrap();
    assert_eq!(p.inspect("env-1").await.unwrap().unwrap().status, InstanceStatus::Stopped);
    p.stop("env-1", Duration::from_secs(1)).await.unwrap();
    let again = p.ensure_running("env-1", &placement, &spec).await.unwrap();
    assert_eq!((again.status, again.provider_ref.clone()), (InstanceStatus::Running, up.provider_ref.clone()));
    p.delete("env-1", Duration::from_secs(1)).await.unwrap();
    assert!(p.inspect("env-1").await.unwrap().is_none());
    p.delete("env-1", Duration::from_secs(1)).await.unwrap();
    p.stop("env-1", Duration::from_secs(1)).await.unwrap();
    assert_eq!(creates(&fake).len(), 1);
    let lines: Vec<String> = fake.state().requests.iter().map(|(l, _)| l.clone()).collect();
    assert!(lines.iter().any(|l| l.ends_with("/stop")) && lines.iter().any(|l| l.ends_with("/start")), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("DELETE ")), "{lines:?}");
    let (undescribed, refused) = {
        let st = fake.state();
        (st.undescribed, st.refused)
    };
    assert_eq!((undescribed, refused), (0, 0), "every request described and signed");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_leaves_exactly_one_instance() {
    let fake = fake().await;
    fake.state().lose_next_create = true;
    let p = provider(&fake);
    let err = p.ensure_running("env-lost", &Placement::default(), &vm(1.0, 1024)).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let ok = p.ensure_running("env-lost", &Placement::default(), &vm(1.0, 1024)).await.unwrap();
    assert_eq!(ok.status, InstanceStatus::Running);
    assert_eq!(fake.state().instances.len(), 1);
    assert_eq!(creates(&fake).len(), 1);
}

#[tokio::test]
async fn list_finds_this_controllers_orphans_only() {
    let fake = fake().await;
    let mine = provider(&fake);
    let theirs = provider_with(&fake, "ctl2", credentials());
    mine.ensure_running("orphan-1", &Placement::default(), &vm(1.0, 1024)).await.unwrap();
    theirs.ensure_running("other", &Placement::default(), &vm(1.0, 1024)).await.unwrap();
    fake.state()
        .instances
        .insert("x".into(), serde_json::json!({"id": "x", "name": "web-prod", "status": "ACTIVE", "region": "GRA9"}));
    let listed = mine.list().await.unwrap();
    assert_eq!(listed.iter().map(|i| i.environment_id.as_str()).collect::<Vec<_>>(), ["orphan-1"]);
}

#[tokio::test]
async fn failures_are_sorted_and_a_half_made_instance_is_removed() {
    let fake = fake().await;
    let p = provider(&fake);
    // One 429 is waited out (its Retry-After: 1 s) and the call tried again.
    p.list().await.unwrap(); // the API's time asked once, before counting
    fake.state().fail_next = 1;
    let started = std::time::Instant::now();
    let seen = fake.state().requests.len();
    assert!(p.list().await.is_ok());
    assert!(started.elapsed() >= Duration::from_millis(950), "the Retry-After was honoured: {:?}", started.elapsed());
    assert_eq!(fake.state().requests.len() - seen, 2, "one throttled call, one that went through");
    // Throttled on every attempt: a retryable failure with the API's status.
    fake.state().fail_next = 3;
    let err = p.list().await.unwrap_err();
    assert!(err.is_retryable() && err.to_string().contains("429"), "{err}");
    assert_eq!(fake.state().fail_next, 0, "three attempts in all");

    fake.state().error_next_build = true;
    let err = p.ensure_running("env-err", &Placement::default(), &vm(1.0, 1024)).await.unwrap_err();
    assert!(err.is_retryable() && err.to_string().contains("ERROR"), "{err}");
    assert!(fake.state().instances.is_empty(), "the ERROR instance is removed");

    // A timeout: an instance that never leaves BUILD is removed too.
    let mut config = OvhConfig::new(&fake.url, credentials(), &fake.project, None);
    config.poll_interval = Duration::from_millis(5);
    config.poll_timeout = Duration::from_millis(50);
    fake.state().build_looks = u32::MAX;
    let slow = OvhProvider::new(config, "ctl1").unwrap();
    let err = slow.ensure_running("env-slow", &Placement::default(), &vm(1.0, 1024)).await.unwrap_err();
    assert!(err.to_string().contains("BUILD"), "{err}");
    assert!(fake.state().instances.is_empty());
    assert_eq!(fake.state().undescribed, 0);
}

#[tokio::test]
async fn an_ssh_key_is_imported_once_and_reused() {
    let fake = fake().await;
    let p = provider(&fake);
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests me@host";
    let spec =
        Spec { cloud: Some(CloudSpec { ssh_public_keys: vec![key.into()], ..Default::default() }), ..vm(1.0, 1024) };
    p.ensure_running("k1", &Placement::default(), &spec).await.unwrap();
    p.ensure_running("k2", &Placement::default(), &spec).await.unwrap();
    let st = fake.state();
    assert_eq!(st.ssh_keys.len(), 1);
    let key_id = st.ssh_keys[0]["id"].clone();
    drop(st);
    let made = creates(&fake);
    assert!(made.iter().all(|b| b["sshKeyId"] == key_id), "{made:?}");
    assert_eq!(fake.state().undescribed, 0, "the key import is a described call");
}

#[tokio::test]
async fn the_fake_refuses_what_the_schema_does_not_describe() {
    let fake = fake().await;
    let c = lapse_providers::ovh::client::Client::new(fake.url.clone(), credentials(), Duration::from_secs(5)).unwrap();
    let get = |path: &'static str| c.call::<Value>(reqwest::Method::GET, path, None);
    assert!(get("/cloud/project/proj-1/nothing").await.unwrap_err().to_string().contains("404"));
    let put = c.call::<Value>(reqwest::Method::PUT, "/cloud/project/proj-1/instance", None).await.unwrap_err();
    assert!(put.to_string().contains("not described method"), "{put}");
    let missing = serde_json::json!({"flavorId": "f-d2-2", "region": "GRA9"});
    let err =
        c.call::<Value>(reqwest::Method::POST, "/cloud/project/proj-1/instance", Some(&missing)).await.unwrap_err();
    assert!(err.to_string().contains("Missing parameter: name"), "{err}");
    let extra = serde_json::json!({"flavorId": "f-d2-2", "region": "GRA9", "name": "n", "tags": ["x"]});
    let err = c.call::<Value>(reqwest::Method::POST, "/cloud/project/proj-1/instance", Some(&extra)).await.unwrap_err();
    assert!(err.to_string().contains("not described parameters: (tags)"), "{err}");
    assert!(fake.state().instances.is_empty());
    assert_eq!(fake.state().undescribed, 4);
}

#[test]
fn specs_the_provider_cannot_honour_are_refused() {
    let field = |spec: Spec| lapse_providers::validate_spec(&spec).unwrap_err().field;
    assert_eq!(field(Spec { cmd: vec!["true".into()], ..vm(1.0, 1024) }), "spec.cmd");
    assert_eq!(field(Spec { ports: vec![80], ..vm(1.0, 1024) }), "spec.ports");
    let subnet = CloudSpec { subnet: Some("s".into()), ..Default::default() };
    assert_eq!(field(Spec { cloud: Some(subnet), ..vm(1.0, 1024) }), "spec.cloud.subnet");
    assert!(lapse_providers::validate_spec(&vm(1.0, 1024)).is_ok());
}

#[tokio::test]
async fn a_create_is_these_calls_with_the_seeds_key_when_no_key_is_given() {
    let fake = fake().await;
    fake.state()
        .ssh_keys
        .push(serde_json::json!({"id": "key-seed", "name": "firecracker-host", "publicKey": "ssh-ed25519 AAAA x"}));
    let p = provider(&fake);
    p.ensure_running("calls", &Placement::default(), &vm(1.0, 1024)).await.unwrap();
    let lines: Vec<String> = fake.state().requests.iter().map(|(l, _)| l.clone()).collect();
    assert_eq!(creates(&fake).len(), 1);
    let instance = fake.state().instances.keys().next().unwrap().clone();
    let project = "/cloud/project/proj-1";
    assert_eq!(
        lines,
        [
            "GET /auth/time".to_owned(),
            format!("GET {project}/instance"),
            format!("GET {project}/flavor?region=GRA9"),
            format!("GET {project}/image?region=GRA9"),
            format!("GET {project}/sshkey"),
            format!("POST {project}/instance"),
            format!("GET {project}/instance/{instance}"),
            format!("GET {project}/instance/{instance}"),
        ]
    );
    assert_eq!(creates(&fake)[0]["sshKeyId"], "key-seed");
}

#[tokio::test]
async fn a_timestamp_in_local_time_is_refused_by_the_fake() {
    // The fake's clock runs 2 h ahead, as a drifted host's would be behind: the signature is
    // right but the time is not, so only a client that asks /auth/time gets in.
    let fake = fake().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let url = format!("{}/cloud/project/proj-1/instance", fake.url);
    let response = reqwest::Client::new()
        .get(&url)
        .header("X-Ovh-Application", "app-key-1")
        .header("X-Ovh-Consumer", CONSUMER)
        .header("X-Ovh-Timestamp", now.to_string())
        .header("X-Ovh-Signature", signature(SECRET, CONSUMER, "GET", &url, "", now))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("Query out of time"));
    assert_eq!(fake.state().refused, 1);
}

#[tokio::test]
async fn instances_mid_transition_are_retried_not_forced() {
    let fake = fake().await;
    let p = provider(&fake);
    let put = |status: &str| {
        let name = "lapse-ctl1-busy";
        fake.state().instances.insert(
            "i-busy".into(),
            serde_json::json!({"id": "i-busy", "name": name, "status": status, "region": "GRA9"}),
        );
    };
    put("REBOOT");
    let err = p.stop("busy", Duration::from_secs(1)).await.unwrap_err();
    assert!(err.is_retryable() && err.to_string().contains("REBOOT"), "{err}");
    assert_eq!(p.inspect("busy").await.unwrap().unwrap().status, InstanceStatus::Pending);
    put("DELETING");
    assert_eq!(p.inspect("busy").await.unwrap().unwrap().status, InstanceStatus::ShuttingDown);
    let err = p.ensure_running("busy", &Placement::default(), &vm(1.0, 1024)).await.unwrap_err();
    assert!(err.is_retryable() && err.to_string().contains("DELETING"), "{err}");
    assert!(creates(&fake).is_empty(), "no second instance beside one being deleted");
    put("SHUTOFF");
    assert_eq!(
        p.ensure_running("busy", &Placement::default(), &vm(1.0, 1024)).await.unwrap().status,
        InstanceStatus::Running
    );
    assert!(creates(&fake).is_empty(), "a stopped instance is started, not replaced");
}

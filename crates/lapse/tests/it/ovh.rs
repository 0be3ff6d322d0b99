//! The ovh provider through `lapse serve`, against the schema-following OVH API fake
//! (`lapse_providers::ovh::fake`, run inside the test): an environment runs, stops at its
//! expiry, is deleted; orphans are swept; a half-configured provider says why; the
//! credentials never appear in the API, the events or the log.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use lapse_providers::ovh::Credentials;
use lapse_providers::ovh::fake::Fake;

use crate::harness::{Server, eventually, secs};

const SECRET: &str = "it-ovh-application-secret-9d1c";
const CONSUMER: &str = "it-ovh-consumer-key-77ab";

async fn fake() -> Fake {
    let credentials = Credentials {
        application_key: "it-app-key".into(),
        application_secret: SECRET.into(),
        consumer_key: CONSUMER.into(),
    };
    Fake::start("it-project", credentials).await.unwrap()
}

async fn server_for(dir: &std::path::Path, fake: &Fake) -> Server {
    let envs = [
        ("OVH_ENDPOINT", fake.url.as_str()),
        ("OVH_APPLICATION_KEY", "it-app-key"),
        ("OVH_APPLICATION_SECRET", SECRET),
        ("OVH_CONSUMER_KEY", CONSUMER),
        ("OVH_PROJECT_ID", "it-project"),
        ("OVH_POLL_INTERVAL", "20ms"),
    ];
    Server::start_with_env(dir, &[], &envs).await
}

fn instance_named(fake: &Fake, name: &str) -> Option<Value> {
    fake.state().instances.values().find(|i| i["name"] == name).cloned()
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains(SECRET) && !text.contains(CONSUMER), "a credential in {what}: {text}");
}

#[tokio::test]
async fn an_ovh_environment_runs_stops_at_expiry_and_is_deleted() {
    let fake = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_for(dir.path(), &fake).await;
    let (_, providers) = server.get("/v1/providers").await;
    let ovh = providers["providers"].as_array().unwrap().iter().find(|p| p["name"] == "ovh").cloned();
    assert_eq!(ovh.as_ref().map(|p| p["available"].clone()), Some(json!(true)), "{providers}");

    let env = server
        .create(json!({"owner": "ada", "spec": {"provider": "ovh", "resources": {"vcpu": 2, "mem_mb": 4096},
            "user_data": "#cloud-config\npackages: [git]\n"}, "ttl": "4s"}))
        .await;
    let id = env["id"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let running = server.wait_state(&id, "running", secs(30)).await;
    eprintln!("ovh (fake, 20 ms polls): create to running in {:?}", started.elapsed());
    let name = format!("lapse-{}-{id}", server.controller_id);
    let made = instance_named(&fake, &name).expect("the instance is named after the controller and environment");
    assert_eq!(made["flavorId"], "f-b2-7", "the seed's flavour choice");
    let bodies = fake.create_bodies();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["monthlyBilling"], false);
    assert!(bodies[0]["userData"].as_str().is_some_and(|d| !d.is_empty()), "user data with the backstop: {bodies:?}");
    assert_eq!(fake.state().refused, 0, "every request was signed right");

    let stopped = server.wait_state(&id, "stopped", secs(30)).await;
    eprintln!("ovh (fake): create to stopped at the 4 s expiry in {:?}", started.elapsed());
    assert_eq!(instance_named(&fake, &name).unwrap()["status"], "SHUTOFF");

    server.request(Method::DELETE, &format!("/v1/environments/{id}"), None).await;
    server.wait_state(&id, "deleted", secs(30)).await;
    assert!(instance_named(&fake, &name).is_none(), "the instance is deleted");
    assert_eq!(fake.state().instances.len(), 0);
    assert_eq!(fake.state().undescribed, 0, "every request the server made is one the schema describes");
    assert_eq!(fake.state().refused, 0);

    let (_, events) = server.get("/v1/events").await;
    for (what, text) in [
        ("/v1/providers", providers.to_string()),
        ("the running environment", running.to_string()),
        ("the stopped environment", stopped.to_string()),
        ("/v1/events", events.to_string()),
        ("the server log", server.log()),
    ] {
        assert_no_secret(what, &text);
    }
}

#[tokio::test]
async fn the_sweep_removes_this_controllers_orphan_instances_only() {
    let fake = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = server_for(dir.path(), &fake).await;
    let orphan = format!("lapse-{}-ghost", server.controller_id);
    {
        let mut st = fake.state();
        for (id, name) in [("i-ghost", orphan.as_str()), ("i-web", "web-prod"), ("i-other", "lapse-othercontroller-x")]
        {
            st.instances.insert(id.into(), json!({"id": id, "name": name, "status": "ACTIVE", "region": "GRA9"}));
        }
    }
    eventually(secs(30), "the orphan is removed", async || instance_named(&fake, &orphan).is_none().then_some(()))
        .await;
    assert!(instance_named(&fake, "web-prod").is_some());
    assert!(instance_named(&fake, "lapse-othercontroller-x").is_some());
}

#[tokio::test]
async fn a_half_configured_ovh_provider_is_unavailable_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let envs = [("OVH_APPLICATION_KEY", "it-app-key"), ("OVH_CONSUMER_KEY", CONSUMER)];
    let server = Server::start_with_env(dir.path(), &[], &envs).await;
    let (_, providers) = server.get("/v1/providers").await;
    let ovh = providers["providers"].as_array().unwrap().iter().find(|p| p["name"] == "ovh").cloned().unwrap();
    assert_eq!(ovh["available"], false, "{ovh}");
    let detail = ovh["detail"].as_str().unwrap();
    assert!(detail.contains("OVH_APPLICATION_SECRET") && detail.contains("OVH_PROJECT_ID"), "{detail}");
    let (status, answer) =
        server.post("/v1/environments", json!({"owner": "ada", "spec": {"provider": "ovh"}, "ttl": "1m"})).await;
    assert!(status.is_client_error() && status != StatusCode::NOT_FOUND, "{status} {answer}");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("unavailable")), "{answer}");
    assert_eq!(server.count_environments().await, 0);
    assert_no_secret("/v1/providers", &providers.to_string());
    assert_no_secret("the server log", &server.log());
}

#[tokio::test]
async fn exec_and_extend_reach_an_ovh_vm_over_ssh_through_the_api() {
    let sshd = lapse_providers::ssh::testing::TestSshd::start();
    let fake = fake().await;
    fake.state().address = Some("127.0.0.1".into());
    let dir = tempfile::tempdir().unwrap();
    let deadline = dir.path().join("expires-at");
    // The table's own SSH user and port (not LAPSE_SSH_*): how this provider's VMs are reached.
    let config = dir.path().join("lapse.toml");
    std::fs::write(
        &config,
        format!(
            "[providers.ovh-gra]\nkind = \"ovh\"\nendpoint = \"{}\"\nproject_id = \"it-project\"\n\
             application_key = \"it-app-key\"\nssh_user = \"{}\"\nssh_port = {}\n",
            fake.url, sshd.user, sshd.port
        ),
    )
    .unwrap();
    let envs = [
        ("OVH_APPLICATION_SECRET", SECRET),
        ("OVH_CONSUMER_KEY", CONSUMER),
        ("OVH_POLL_INTERVAL", "20ms"),
        ("LAPSE_SSH_DEADLINE_FILE", deadline.to_str().unwrap()),
    ];
    let server = Server::start_with_env(dir.path(), &["--config", config.to_str().unwrap()], &envs).await;
    let env = server.create(json!({"owner": "ada", "spec": {"provider": "ovh-gra"}, "ttl": "1h"})).await;
    let id = env["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", secs(30)).await;
    // The environment's own key, made by the server under its data dir (and put in the VM's
    // cloud-init): the guest's sshd is told to let it in.
    let keys = lapse_providers::ssh::KeyStore::new(Some(dir.path().join("ssh")));
    sshd.authorize(&keys.ensure(&id).unwrap());

    // A hostile argument reaches the program as one word; the exit code and both streams return.
    let (status, out) = server
        .post(
            &format!("/v1/environments/{id}/exec"),
            json!({"cmd": ["sh", "-c", "printf '%s' \"$1\"; echo err >&2; exit 4", "sh", "a b; $(rm -rf /) 'q'"],
                   "timeout": "20s"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        (out["stdout"].as_str(), out["stderr"].as_str(), out["exit_code"].as_i64()),
        (Some("a b; $(rm -rf /) 'q'"), Some("err\n"), Some(4)),
        "{out}"
    );

    // Extend moves the running VM's backstop: the deadline file holds the new expiry.
    let (status, extended) = server.post(&format!("/v1/environments/{id}/extend"), json!({"by": "2h"})).await;
    assert!(status.is_success(), "{status} {extended}");
    let want = chrono::DateTime::parse_from_rfc3339(extended["expires_at"].as_str().unwrap()).unwrap().timestamp();
    let armed = eventually(secs(30), "the deadline file written over SSH", async || {
        std::fs::read_to_string(&deadline).ok().and_then(|t| t.trim().parse::<i64>().ok())
    })
    .await;
    assert_eq!(armed, want, "the deadline file holds the extended expiry in Unix seconds");
    let logged = server.log();
    assert_no_secret("the server log", &logged);
    assert!(!logged.contains("PRIVATE KEY"), "no private key in the log");
}

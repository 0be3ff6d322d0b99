//! instance-manager's CLI (bdanp/instance-manager) on `lapse`, and `lapse import
//! instance-manager`, against `lapse serve` with the aws provider on a real moto server
//! (`LAPSE_MOTO_SERVER`, from `scripts/test-env.sh`).

use std::process::Output;

use lapse_providers::aws::moto::MotoServer;
use lapse_providers::aws::sdk::types::{InstanceStateName, InstanceType, ResourceType, Tag, TagSpecification};
use lapse_providers::aws::{AwsProvider, TAG_ADOPTING, TAG_CONTROLLER, TAG_ENVIRONMENT};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, eventually, secs};

const SECRET: &str = "im-SECRET-key-never-shown-0a1b2c3d4e5f6789";
const ACCESS: &str = "AKIDLAPSEIMTEST00001";
const PUBLIC_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f test@lapse";

/// A moto server of this test's own.
async fn moto() -> MotoServer {
    MotoServer::start(ACCESS, SECRET).await.expect("moto starts (LAPSE_MOTO_SERVER)")
}

async fn start_server(dir: &std::path::Path, moto: &MotoServer) -> Server {
    let envs = moto.envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with_env(dir, &[], &envs).await
}

/// Runs `program` (lapse, or a symlink named instance-manager) against the server.
async fn run_as(program: &std::path::Path, server: &Server, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(program)
        .arg("--url")
        .arg(&server.url)
        .args(args)
        .env("HOME", &server.dir)
        .output()
        .await
        .expect("running lapse");
    for stream in [&out.stdout, &out.stderr] {
        assert!(!text(stream).contains(SECRET), "the secret key leaked: {}", text(stream));
    }
    out
}

async fn lapse(server: &Server, args: &[&str]) -> Output {
    run_as(std::path::Path::new(env!("CARGO_BIN_EXE_lapse")), server, args).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The value after `label` on its line (`  Instance ID: i-...`).
fn field(stdout: &str, label: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {label:?} in:\n{stdout}"))
}

async fn ec2_instance(p: &AwsProvider, id: &str) -> lapse_providers::aws::sdk::types::Instance {
    let out = p.client().describe_instances().instance_ids(id).send().await.unwrap();
    out.reservations()[0].instances()[0].clone()
}

async fn ec2_state(p: &AwsProvider, id: &str) -> InstanceStateName {
    ec2_instance(p, id).await.state().and_then(|s| s.name().cloned()).unwrap()
}

fn tag<'a>(i: &'a lapse_providers::aws::sdk::types::Instance, key: &str) -> Option<&'a str> {
    i.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

fn secs_of(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap_or_else(|e| panic!("{rfc3339}: {e}")).timestamp()
}

#[tokio::test]
async fn instance_manager_readme_commands_work_against_lapse_serve() {
    let moto = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &moto).await;
    let ec2 = moto.provider("the-test").await.unwrap();
    let key = dir.path().join("id_ed25519.pub");
    std::fs::write(&key, format!("{PUBLIC_KEY}\n")).unwrap();
    let key = key.to_str().unwrap();
    let seed_bin = dir.path().join("instance-manager");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_lapse"), &seed_bin).unwrap();

    // The README's "custom configuration" create: a key pair and an instance of that type in that zone.
    let out = lapse(
        &server,
        &[
            "create",
            "--provider",
            "aws",
            "--instance-type",
            "t2.micro",
            "--duration",
            "2h",
            "--public-key",
            key,
            "--availability-zone",
            "us-east-1a",
        ],
    )
    .await;
    let stdout = ok(&out);
    assert!(
        stdout.starts_with("Creating instance with configuration:\n  Instance Type: t2.micro\n  Duration: 2h\n"),
        "{stdout}"
    );
    assert!(stdout.contains("  Availability Zone: us-east-1a\n\nCreating instance...\n"), "{stdout}");
    assert!(stdout.contains("\nInstance created successfully!\n"), "{stdout}");
    let id = field(&stdout, "Instance ID:");
    assert!(id.starts_with("i-"), "{stdout}");
    assert!(stdout.contains(&format!("Use 'instance-manager status --instance-id {id}' to check status")), "{stdout}");
    let expires = field(&stdout, "Expires at:");
    let lease = secs_of(&expires) - chrono::Utc::now().timestamp();
    assert!((7000..=7200).contains(&lease), "a 2h lease, got {lease}s ({stdout})");
    assert!(!text(&out.stderr).is_empty(), "progress is shown while waiting");
    let made = ec2_instance(&ec2, &id).await;
    assert_eq!(made.instance_type(), Some(&InstanceType::T2Micro));
    assert_eq!(made.placement().and_then(|p| p.availability_zone()), Some("us-east-1a"));
    let key_name = made.key_name().expect("the instance has the imported key pair").to_owned();
    let pairs = ec2.client().describe_key_pairs().key_names(&key_name).send().await.unwrap();
    assert_eq!(pairs.key_pairs().len(), 1);

    // status, with the seed's flag and its lines.
    let stdout = ok(&lapse(&server, &["status", "--instance-id", &id]).await);
    assert!(
        stdout.starts_with(&format!("Instance Status:\n  ID: {id}\n  State: running\n  Ready: true\n")),
        "{stdout}"
    );
    let stdout = ok(&lapse(&server, &["status", "-i", &id, "--json"]).await);
    let view: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(view["provider_ref"], id.as_str());

    // list, as instance-manager (a symlink): the seed's lines; as lapse: Lapse's table.
    let stdout = ok(&run_as(&seed_bin, &server, &["list"]).await);
    assert!(
        stdout.starts_with(&format!("Managed Instances:\n\nInstance ID: {id}\n  Type: t2.micro\n  State: running\n")),
        "{stdout}"
    );
    assert!(stdout.contains("  Duration: 2h\n") && stdout.contains("  Availability Zone: us-east-1a\n"), "{stdout}");
    assert!(stdout.contains("  Time Remaining: 1h59m") || stdout.contains("  Time Remaining: 2h"), "{stdout}");
    let table = ok(&lapse(&server, &["list"]).await);
    assert!(!table.contains("Managed Instances:"), "{table}");

    // extend moves the expiry by the duration, counted from the current one (as the seed).
    let stdout = ok(&lapse(&server, &["extend", "--instance-id", &id, "--duration", "1h"]).await);
    assert!(stdout.starts_with(&format!("Instance TTL extended successfully!\n  Instance ID: {id}\n")), "{stdout}");
    let (before, after) = (field(&stdout, "Previous expiry:"), field(&stdout, "New expiry:"));
    assert_eq!(secs_of(&after) - secs_of(&before), 3600, "{stdout}");
    assert_eq!(secs_of(&before), secs_of(&expires));
    assert!(stdout.contains("  Extended by: 1h\n"), "{stdout}");
    // A bare number is hours, as the seed's ParseDuration.
    let stdout = ok(&lapse(&server, &["extend", "-i", &id, "-d", "2"]).await);
    assert_eq!(secs_of(&field(&stdout, "New expiry:")) - secs_of(&after), 7200, "{stdout}");

    // show and sync.
    let stdout = ok(&lapse(&server, &["show", "--instance-id", &id]).await);
    assert!(
        stdout.starts_with(&format!(
            "=== Instance Communication Details ===\n\n🆔 Instance ID: {id}\n💻 Instance Type: t2.micro\n"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("🔑 Key Name: {key_name}\n")) && stdout.contains("👤 Username: ec2-user\n"),
        "{stdout}"
    );
    let stdout = ok(&lapse(&server, &["show"]).await);
    assert!(stdout.starts_with("=== All Stored Instances (1 total) ===\n\nInstance 1:\n"), "{stdout}");
    let stdout = ok(&lapse(&server, &["sync"]).await);
    assert!(
        stdout.contains(&format!("Instance {id} synced: PublicIP="))
            && stdout.ends_with("Sync completed for all instances.\n"),
        "{stdout}"
    );

    // The seed's short flags, and terminate.
    let out =
        lapse(&server, &["create", "-P", "aws", "-t", "t2.nano", "-d", "30m", "-k", key, "-z", "us-east-1b"]).await;
    let stdout = ok(&out);
    let second = field(&stdout, "Instance ID:");
    assert!(stdout.contains("  Duration: 30m\n"), "{stdout}");
    assert_eq!(ec2_instance(&ec2, &second).await.placement().and_then(|p| p.availability_zone()), Some("us-east-1b"));
    let stdout = ok(&lapse(&server, &["terminate", "--instance-id", &second]).await);
    assert_eq!(
        stdout,
        format!("Terminating instance {second}...\nInstance {second} has been terminated and removed from storage.\n")
    );
    eventually(secs(30), "the second instance terminated", async || {
        matches!(ec2_state(&ec2, &second).await, InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            .then_some(())
    })
    .await;

    // stop, as the seed's: terminates.
    let stdout = ok(&lapse(&server, &["stop", "--instance-id", &id]).await);
    assert_eq!(stdout, format!("Stopping instance {id}...\nInstance {id} has been stopped.\n"));
    eventually(secs(30), "the instance terminated", async || {
        matches!(ec2_state(&ec2, &id).await, InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            .then_some(())
    })
    .await;
    let stdout = ok(&run_as(&seed_bin, &server, &["list"]).await);
    assert_eq!(stdout, "No managed instances found.\n");

    // The seed's refusals: exit 1, nothing made.
    let before = server.count_environments().await;
    for (args, why) in [
        (vec!["create", "-t", "huge.type", "-k", key], "invalid instance type"),
        (vec!["create", "-t", "t2.micro", "-k", "/no/such/key.pub"], "invalid public key"),
        (vec!["create", "-t", "t2.micro", "-k", key, "-z", "useast"], "invalid availability zone"),
        (vec!["create", "-t", "t2.micro"], "public-key"),
        (vec!["status", "-i", "i-0000000000000dead"], "not found"),
    ] {
        let out = lapse(&server, &args).await;
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(text(&out.stderr).contains(why), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(server.count_environments().await, before);
}

/// Launches an instance as instance-manager did: its tags, and `Duration`.
async fn seed_instance(ec2: &AwsProvider, duration: &str, tagged: bool) -> String {
    let images = ec2.client().describe_images().owners("amazon").send().await.unwrap();
    let image = images.images().iter().find_map(|i| i.image_id()).expect("moto has amazon images").to_owned();
    let mut tags = vec![Tag::builder().key("Name").value("instance-manager").build()];
    if tagged {
        tags.push(Tag::builder().key("ManagedBy").value("instance-manager").build());
    }
    tags.push(Tag::builder().key("Duration").value(duration).build());
    let out = ec2
        .client()
        .run_instances()
        .image_id(image)
        .instance_type(InstanceType::T2Nano)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags)).build(),
        )
        .send()
        .await
        .unwrap();
    out.instances()[0].instance_id().unwrap().to_owned()
}

/// A file as the seed's `FileStorage` writes it (`pkg/models/instance.go` field names).
fn seed_file(entries: &[(&str, &str)]) -> String {
    let now = chrono::Utc::now();
    let instances: serde_json::Map<String, Value> = entries
        .iter()
        .map(|(id, expires)| {
            let record = json!({
                "instance": {
                    "id": id, "instance_type": "t2.nano", "provider": "", "state": "running",
                    "launch_time": now.to_rfc3339_opts(chrono::SecondsFormat::Nanos, false),
                    "duration": 7_200_000_000_000_i64, "availability_zone": "us-east-1a",
                    "key_name": "instance-manager-0011223344556677", "username": "ec2-user", "expires_at": expires
                },
                "created_at": now.to_rfc3339(), "updated_at": now.to_rfc3339()
            });
            (id.to_string(), record)
        })
        .collect();
    serde_json::to_string_pretty(&json!({"instances": instances, "updated_at": now.to_rfc3339()})).unwrap()
}

#[tokio::test]
async fn import_adopts_the_seeds_instances_with_their_expiry_once() {
    let moto = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &moto).await;
    let ec2 = moto.provider("the-test").await.unwrap();

    let listed = seed_instance(&ec2, "2h0m0s", true).await;
    let expired = seed_instance(&ec2, "1m0s", true).await;
    let tagged_only = seed_instance(&ec2, "1h30m0s", true).await;
    let untagged = seed_instance(&ec2, "1h0m0s", false).await;
    let ghost = "i-00000000000000bad";
    let in_2h = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339_opts(chrono::SecondsFormat::Nanos, false);
    let past = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let file = dir.path().join("instances.json");
    std::fs::write(&file, seed_file(&[(&listed, &in_2h), (&expired, &past), (ghost, &in_2h)])).unwrap();
    let path = file.to_str().unwrap();

    // A dry run says what it would adopt and changes nothing.
    let stdout = ok(&lapse(&server, &["import", "instance-manager", path, "--dry-run"]).await);
    assert!(stdout.contains(&format!("{listed}: would adopt (running, expires ")), "{stdout}");
    assert!(stdout.contains(&format!("{tagged_only}: would adopt")), "{stdout}");
    assert!(stdout.contains(&format!("{ghost}: skipped: no such aws resource")), "{stdout}");
    assert!(!stdout.contains(&untagged), "an instance neither listed nor tagged is not touched: {stdout}");
    assert_eq!(server.count_environments().await, 0);
    assert!(tag(&ec2_instance(&ec2, &listed).await, TAG_ENVIRONMENT).is_none());

    // The import: the listed ones with the file's expiry, the tagged one with launch + Duration.
    let stdout = ok(&lapse(&server, &["import", "instance-manager", path, "--json"]).await);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let adopted = report["adopted"].as_array().unwrap();
    assert_eq!(adopted.len(), 3, "{report}");
    assert_eq!(report["skipped"][0]["provider_ref"], ghost, "{report}");
    let env_of = |r: &str| -> String {
        adopted.iter().find(|a| a["provider_ref"] == r).and_then(|a| a["environment_id"].as_str()).unwrap().to_owned()
    };
    let env = server.env(&env_of(&listed)).await;
    assert_eq!(secs_of(env["expires_at"].as_str().unwrap()), secs_of(&in_2h), "{env}");
    assert_eq!(env["provider_ref"], listed.as_str());
    assert_eq!(env["labels"]["instance-manager.key-name"], "instance-manager-0011223344556677");
    assert_eq!(env["source"], "import");
    let launched = ec2_instance(&ec2, &tagged_only).await.launch_time().unwrap().secs();
    let env = server.env(&env_of(&tagged_only)).await;
    assert_eq!(secs_of(env["expires_at"].as_str().unwrap()), launched + 5400, "{env}");
    // The instance carries Lapse's tags (no hold left), and its own.
    let i = ec2_instance(&ec2, &listed).await;
    assert_eq!(tag(&i, TAG_ENVIRONMENT), Some(env_of(&listed).as_str()));
    assert_eq!(tag(&i, TAG_CONTROLLER), Some(server.controller_id.as_str()));
    assert_eq!(tag(&i, TAG_ADOPTING), None);
    assert_eq!(tag(&i, "ManagedBy"), Some("instance-manager"));

    // The expired one is stopped by expiry, as any lease.
    server.wait_state(&env_of(&expired), "stopped", secs(30)).await;
    eventually(secs(30), "the expired instance stopped", async || {
        matches!(ec2_state(&ec2, &expired).await, InstanceStateName::Stopped | InstanceStateName::Stopping)
            .then_some(())
    })
    .await;

    // Twice is once.
    let stdout = ok(&lapse(&server, &["import", "instance-manager", path]).await);
    assert!(stdout.contains("0 adopted, 3 already adopted, 1 skipped"), "{stdout}");
    assert_eq!(server.count_environments().await, 3);
    assert_eq!(server.env(&env_of(&listed)).await["state"], "running");
    assert_eq!(ec2_state(&ec2, &listed).await, InstanceStateName::Running);

    // Two adoptions of one new instance at once adopt it once.
    let raced = seed_instance(&ec2, "1h0m0s", false).await;
    let body = json!({"provider": "aws", "instances": [{"provider_ref": raced}]});
    let (a, b) = tokio::join!(server.post("/v1/admin/adopt", body.clone()), server.post("/v1/admin/adopt", body));
    let fresh = [a, b]
        .iter()
        .map(|(status, r)| {
            assert_eq!(*status, StatusCode::OK, "{r}");
            r["adopted"].as_array().unwrap().iter().filter(|x| x["already"] == false).count()
        })
        .sum::<usize>();
    assert_eq!(fresh, 1);
    assert_eq!(server.count_environments().await, 4);

    // Hostile files: refused with the line or field, nothing adopted.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad.json", b"{\"instances\": {\n  \"i-1\": {,\n}}".to_vec(), "bad.json:2:"),
        (
            "date.json",
            seed_file(&[(&untagged, "tomorrow-ish")]).into_bytes(),
            "expires_at: \"tomorrow-ish\" is not an RFC 3339 time",
        ),
        ("id.json", seed_file(&[("i-../../etc", &in_2h)]).into_bytes(), "is not an EC2 instance id"),
    ];
    for (name, bytes, why) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let out = lapse(&server, &["import", "instance-manager", p.to_str().unwrap()]).await;
        assert!(!out.status.success(), "{name} was accepted");
        assert!(text(&out.stderr).contains(why), "{name}: {}", text(&out.stderr));
    }
    let huge = dir.path().join("huge.json");
    std::fs::File::create(&huge).unwrap().set_len(17 * 1024 * 1024).unwrap();
    let out = lapse(&server, &["import", "instance-manager", huge.to_str().unwrap()]).await;
    assert!(!out.status.success() && text(&out.stderr).contains("larger than"), "{}", text(&out.stderr));
    assert_eq!(server.count_environments().await, 4);
    assert!(tag(&ec2_instance(&ec2, &untagged).await, TAG_ENVIRONMENT).is_none());

    // The route refuses bad requests with a 400 naming the field.
    let too_many: Vec<Value> = (0..1001).map(|n| json!({"provider_ref": format!("i-{n:017x}")})).collect();
    for (body, field_name) in [
        (json!({"provider": "aws", "instances": [{"provider_ref": "../x"}]}), "instances[0].provider_ref"),
        (
            json!({"provider": "aws", "instances": [{"provider_ref": "i-1", "expires_at": "soon"}]}),
            "instances[0].expires_at",
        ),
        (json!({"provider": "nope", "discover": true}), "provider"),
        (json!({"provider": "process", "discover": true}), "cannot adopt"),
        (json!({"provider": "aws"}), "instances"),
        (json!({"provider": "aws", "instances": too_many}), "instances"),
        (json!({"provider": "aws", "discover": true, "surprise": 1}), "surprise"),
    ] {
        let (status, answer) = server.post("/v1/admin/adopt", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer["error"]["message"].to_string().contains(field_name), "{field_name}: {answer}");
    }
    assert_eq!(server.count_environments().await, 4);
    assert!(!server.log().contains(SECRET), "the secret key is in the server's log");
}

#[tokio::test]
async fn service_runs_the_server_with_the_seeds_log_flags() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let out = std::fs::File::create(dir.path().join("stdout")).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(["service", "--log-level", "debug", "--aws", "off", "--docker", "off"])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir", dir.path().join("data").to_str().unwrap()])
        .env_remove("LAPSE_LOG")
        .stdout(out)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    eventually(secs(30), "the service answers", async || {
        reqwest::get(&url).await.ok().filter(|r| r.status().is_success())
    })
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let stdout = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    assert!(stdout.starts_with("Instance Manager service started (log level: debug)\n"), "{stdout}");
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(stderr.contains("DEBUG"), "--log-level debug logs debug lines: {stderr}");
}

//! The seed's verbs against a Lapse server: each prints what `cmd/main.go` prints (or the
//! server's JSON with `--json`) and fails (exit 1) where the seed's `log.Fatal` does.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lapse_core::model::{CloudSpec, ObservedState, OnExpiry, Spec};
use lapse_core::wire::{CreateEnvironment, DurationInput, EnvironmentView, ExtendRequest};
use reqwest::Method;

use super::SeedCreateFlags;
use super::output::{self as out, USERNAME};
use crate::client::Client;

/// The seed's instance types (`internal/utils/validators.go`).
pub const SEED_INSTANCE_TYPES: [&str; 30] = [
    "t2.nano",
    "t2.micro",
    "t2.small",
    "t2.medium",
    "t2.large",
    "t2.xlarge",
    "t2.2xlarge",
    "t3.nano",
    "t3.micro",
    "t3.small",
    "t3.medium",
    "t3.large",
    "t3.xlarge",
    "t3.2xlarge",
    "m5.large",
    "m5.xlarge",
    "m5.2xlarge",
    "m5.4xlarge",
    "m5.8xlarge",
    "m5.12xlarge",
    "m5.16xlarge",
    "m5.24xlarge",
    "c5.large",
    "c5.xlarge",
    "c5.2xlarge",
    "c5.4xlarge",
    "c5.9xlarge",
    "c5.12xlarge",
    "c5.18xlarge",
    "c5.24xlarge",
];

/// Largest public key file read.
const MAX_KEY_BYTES: u64 = 16 * 1024;
/// Longest `create` waits for the instance id.
const CREATE_WAIT: Duration = Duration::from_secs(600);

/// The seed's `ValidateAvailabilityZone`: at least three dash-separated parts, the last of
/// two characters or more.
pub fn seed_zone_ok(az: &str) -> bool {
    let parts: Vec<&str> = az.split('-').collect();
    !az.is_empty() && parts.len() >= 3 && parts.last().is_some_and(|p| p.len() >= 2)
}

/// What `create` was given beyond the seed's flags.
pub struct CreateInput {
    pub provider: Option<String>,
    pub image: Option<String>,
    pub owner: String,
    pub name: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub ttl: Option<DurationInput>,
    pub ttl_text: Option<Duration>,
    pub on_expiry: OnExpiry,
    pub has_cmd: bool,
}

/// The seed's `create`: checks as the seed, prints its configuration, creates, waits for the
/// EC2 instance id (progress on stderr) and prints it.
pub async fn create(client: &Client, seed: SeedCreateFlags, input: CreateInput, json: bool) -> anyhow::Result<()> {
    let provider = input.provider.unwrap_or_else(|| "aws".into());
    if input.has_cmd {
        bail!("instance-manager's create takes no command (an EC2 instance runs its user data)");
    }
    let Some(key_path) = seed.public_key else { bail!("required flag(s) \"public-key\" not set") };
    let key = read_public_key(&key_path).map_err(|e| anyhow::anyhow!("invalid public key: {e}"))?;
    let instance_type = seed.instance_type.unwrap_or_else(|| "t2.nano".into());
    if !SEED_INSTANCE_TYPES.contains(&instance_type.as_str()) {
        bail!("invalid instance type: invalid instance type: {instance_type}");
    }
    let zone = seed.availability_zone.unwrap_or_else(|| "us-east-1a".into());
    if !seed_zone_ok(&zone) {
        bail!("invalid availability zone: invalid availability zone format: {zone}");
    }
    let lease = input.ttl_text.unwrap_or(Duration::from_secs(3600));
    if !json {
        println!("Creating instance with configuration:");
        println!("  Instance Type: {instance_type}");
        println!("  Duration: {}", out::duration(lease));
        println!("  Public Key: {}", key_path.display());
        println!("  Availability Zone: {zone}");
        println!("\nCreating instance...");
    }
    let cloud = CloudSpec {
        instance_type: Some(instance_type),
        zone: Some(zone),
        ssh_public_keys: vec![key],
        ..Default::default()
    };
    let req = CreateEnvironment {
        name: input.name,
        owner: input.owner,
        labels: input.labels,
        spec: Spec { provider, image: input.image, cloud: Some(cloud), ports: vec![22], ..Default::default() },
        ttl: Some(input.ttl.unwrap_or(DurationInput::Text("1h".into()))),
        on_expiry: input.on_expiry,
        lifecycle: Default::default(),
        max_retries: None,
        params: None,
        idle_timeout: None,
        on_idle: Default::default(),
        warn_before: None,
    };
    let env: EnvironmentView =
        client.post("/v1/environments", &req).await.map_err(|e| anyhow::anyhow!("failed to create instance: {e:#}"))?;
    let env = wait_for_instance(client, env, json).await?;
    if json {
        crate::cli::print_json(&env);
        return Ok(());
    }
    let id = out::instance_id(&env);
    println!("\nInstance created successfully!");
    println!("  Instance ID: {id}");
    println!("  State: {}", out::ec2_state(env.state));
    println!("  Expires at: {}", env.expires_at.as_deref().map(out::rfc3339).unwrap_or_default());
    println!("\nUse 'instance-manager status --instance-id {id}' to check status");
    Ok(())
}

/// Reads an OpenSSH public key file as the seed's `ValidatePublicKeyPath` would accept it.
fn read_public_key(path: &std::path::Path) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("public key file does not exist: {}", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_KEY_BYTES {
        bail!("{} is not a public key file (at most {MAX_KEY_BYTES} bytes)", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let key = text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_owned();
    if !lapse_core::validate::is_openssh_key(&key) {
        bail!("{} does not hold an OpenSSH public key (ssh-ed25519 AAAA... or ssh-rsa AAAA...)", path.display());
    }
    Ok(key)
}

/// Polls until the environment has its instance (or failed), printing each state change.
async fn wait_for_instance(client: &Client, mut env: EnvironmentView, quiet: bool) -> anyhow::Result<EnvironmentView> {
    let started = Instant::now();
    let mut last = None;
    loop {
        if last != Some(env.state) && !quiet {
            eprintln!("[{:>5.1}s] {}", started.elapsed().as_secs_f64(), env.state);
            last = Some(env.state);
        }
        if env.state == ObservedState::Failed {
            bail!("failed to create instance: {}", env.reason.as_deref().unwrap_or("the provider failed"));
        }
        if env.provider_ref.is_some() || matches!(env.state, ObservedState::Running | ObservedState::Deleted) {
            return Ok(env);
        }
        if started.elapsed() > CREATE_WAIT {
            bail!(
                "environment {} still has no instance after {} (see `lapse status {}`)",
                env.id,
                out::duration(CREATE_WAIT),
                env.id
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        env = client.get(&crate::cli::env_path(&env.id, "")).await?;
    }
}

/// The environment `id` names: a Lapse environment id, or the provider ref (EC2 instance id)
/// of one not deleted.
pub async fn resolve(client: &Client, id: &str) -> anyhow::Result<EnvironmentView> {
    if lapse_core::model::is_environment_id(id) {
        return client.get(&crate::cli::env_path(id, "")).await;
    }
    if !lapse_server::adopt::is_provider_ref(id) {
        bail!("instance {id:?} not found (an EC2 instance id is i- and hex digits)");
    }
    let all = crate::cli::list_all(client, Vec::new(), None).await?;
    let mut matches: Vec<EnvironmentView> =
        all.environments.into_iter().filter(|e| e.provider_ref.as_deref() == Some(id)).collect();
    // The live one, else the newest (ids sort by creation).
    matches.sort_by_key(|e| (e.state != ObservedState::Deleted, e.id.clone()));
    matches.pop().ok_or_else(|| anyhow::anyhow!("instance {id} not found"))
}

/// The seed's `status --instance-id`.
pub async fn status(client: &Client, id: &str, json: bool) -> anyhow::Result<()> {
    let env = resolve(client, id).await.map_err(|e| anyhow::anyhow!("failed to get instance status: {e:#}"))?;
    if json {
        crate::cli::print_json(&env);
        return Ok(());
    }
    let (public, private) = out::ips(&env);
    println!("Instance Status:");
    println!("  ID: {}", out::instance_id(&env));
    println!("  State: {}", out::ec2_state(env.state));
    println!("  Ready: {}", env.state == ObservedState::Running);
    if let Some(ip) = &public {
        println!("  Public IP: {ip}");
        println!("  SSH Command: ssh {USERNAME}@{ip}");
    }
    if let Some(ip) = &private {
        println!("  Private IP: {ip}");
    }
    Ok(())
}

/// The aws environments not deleted, as the seed's `list` found its tagged instances.
async fn managed(client: &Client) -> anyhow::Result<Vec<EnvironmentView>> {
    let all = crate::cli::list_all(client, Vec::new(), None).await?;
    Ok(all
        .environments
        .into_iter()
        .filter(|e| e.spec.cloud.is_some() || e.provider_ref.as_deref().is_some_and(|r| r.starts_with("i-")))
        .filter(|e| !matches!(e.state, ObservedState::Deleted | ObservedState::Deleting))
        .collect())
}

/// The seed's `list`.
pub async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let envs = managed(client).await.map_err(|e| anyhow::anyhow!("failed to list instances: {e:#}"))?;
    if json {
        crate::cli::print_json(&lapse_core::wire::EnvironmentList { environments: envs });
        return Ok(());
    }
    if envs.is_empty() {
        println!("No managed instances found.");
        return Ok(());
    }
    let now = lapse_core::now_millis();
    println!("Managed Instances:\n");
    for env in &envs {
        let cloud = env.spec.cloud.clone().unwrap_or_default();
        println!("Instance ID: {}", out::instance_id(env));
        println!("  Type: {}", cloud.instance_type.unwrap_or_default());
        println!("  State: {}", out::ec2_state(env.state));
        println!("  Launch Time: {}", out::rfc3339(&env.created_at));
        println!("  Duration: {}", out::lease(env).map(out::go_format_duration).unwrap_or_default());
        println!("  Expires At: {}", env.expires_at.as_deref().map(out::rfc3339).unwrap_or_default());
        println!("  Availability Zone: {}", cloud.zone.unwrap_or_default());
        if let (Some(ip), _) = out::ips(env) {
            println!("  Public IP: {ip}");
            println!("  SSH Command: ssh {USERNAME}@{ip}");
        }
        match out::remaining(env, now) {
            Some(left) if left > 0 => println!("  Time Remaining: {}", out::go_format_duration(left)),
            _ => println!("  Status: EXPIRED"),
        }
        println!();
    }
    Ok(())
}

/// The seed's `stop --instance-id`: which **terminates**, as the seed's code does.
pub async fn stop(client: &Client, id: &str, json: bool) -> anyhow::Result<()> {
    let env = resolve(client, id).await?;
    if !json {
        println!("Stopping instance {id}...");
    }
    let env: EnvironmentView = client
        .call(Method::DELETE, &crate::cli::env_path(&env.id, ""), None::<&()>)
        .await
        .map_err(|e| anyhow::anyhow!("failed to terminate instance: {e:#}"))?;
    if json {
        crate::cli::print_json(&env);
    } else {
        println!("Instance {id} has been stopped.");
    }
    Ok(())
}

/// The seed's `terminate --instance-id`.
pub async fn terminate(client: &Client, id: &str, json: bool) -> anyhow::Result<()> {
    let env = resolve(client, id).await?;
    if !json {
        println!("Terminating instance {id}...");
    }
    let env: EnvironmentView = client
        .call(Method::DELETE, &crate::cli::env_path(&env.id, ""), None::<&()>)
        .await
        .map_err(|e| anyhow::anyhow!("Failed to terminate instance: {e:#}"))?;
    if json {
        crate::cli::print_json(&env);
    } else {
        println!("Instance {id} has been terminated and removed from storage.");
    }
    Ok(())
}

/// The seed's `extend --instance-id --duration`: an expiry not passed moves by `by` (the
/// seed's `ExpiresAt += d`); a passed one counts from now (see the module doc).
pub async fn extend(client: &Client, id: &str, by: Duration, json: bool) -> anyhow::Result<()> {
    let env = resolve(client, id).await.map_err(|e| anyhow::anyhow!("failed to get instance: {e:#}"))?;
    let previous = env.expires_at.clone();
    let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
    let now = lapse_core::now_millis();
    let req = match previous.as_deref().and_then(out::millis) {
        Some(at) if at > now => {
            ExtendRequest { by: None, until: Some(lapse_core::format_millis(at.saturating_add(by_ms))) }
        }
        _ => ExtendRequest { by: Some(DurationInput::Text(format!("{}ms", by_ms.max(1)))), until: None },
    };
    let was_stopped = env.state == ObservedState::Stopped;
    let env: EnvironmentView = client
        .post(&crate::cli::env_path(&env.id, "/extend"), &req)
        .await
        .map_err(|e| anyhow::anyhow!("failed to update instance: {e:#}"))?;
    if json {
        crate::cli::print_json(&env);
        return Ok(());
    }
    println!("Instance TTL extended successfully!");
    println!("  Instance ID: {}", out::instance_id(&env));
    println!("  Previous expiry: {}", previous.as_deref().map(out::rfc3339).unwrap_or_default());
    println!("  New expiry: {}", env.expires_at.as_deref().map(out::rfc3339).unwrap_or_default());
    println!("  Extended by: {}", out::duration(by));
    if was_stopped && env.desired_state == lapse_core::model::DesiredState::Running {
        println!("\nNote: Instance is currently stopped. The server starts it again now.");
    }
    Ok(())
}

/// The seed's `show [--instance-id]`.
pub async fn show(client: &Client, id: Option<&str>, json: bool) -> anyhow::Result<()> {
    let envs = match id {
        Some(id) => vec![resolve(client, id).await.map_err(|e| anyhow::anyhow!("instance {id} not found: {e:#}"))?],
        None => managed(client).await.map_err(|e| anyhow::anyhow!("failed to load instances: {e:#}"))?,
    };
    if json {
        crate::cli::print_json(&lapse_core::wire::EnvironmentList { environments: envs });
        return Ok(());
    }
    if id.is_none() {
        if envs.is_empty() {
            println!("No instances found in storage.");
            println!("Create an instance first using: instance-manager create --public-key ~/.ssh/id_rsa.pub");
            return Ok(());
        }
        println!("=== All Stored Instances ({} total) ===\n", envs.len());
        for (n, env) in envs.iter().enumerate() {
            println!("Instance {}:", n + 1);
            detailed(env);
            println!();
        }
    } else {
        println!("=== Instance Communication Details ===\n");
        detailed(&envs[0]);
    }
    Ok(())
}

/// The seed's `printDetailedInstanceInfo`.
fn detailed(env: &EnvironmentView) {
    let cloud = env.spec.cloud.clone().unwrap_or_default();
    let id = out::instance_id(env);
    let key_name = env.labels.get("instance-manager.key-name").cloned().or_else(|| key_pair_name(&cloud));
    println!("🆔 Instance ID: {id}");
    println!("💻 Instance Type: {}", cloud.instance_type.unwrap_or_default());
    println!("📍 Availability Zone: {}", cloud.zone.unwrap_or_default());
    println!("🔑 Key Name: {}", key_name.unwrap_or_default());
    println!("👤 Username: {USERNAME}");
    println!("\n🌐 Network & Communication Details:");
    let (public, private) = out::ips(env);
    match &public {
        Some(ip) => {
            println!("   📡 Public IP: {ip}");
            println!("   🔗 SSH Command: ssh -i ~/.ssh/id_rsa {USERNAME}@{ip}");
            println!("   🌍 Web Access: http://{ip} (if web server running)");
        }
        None => {
            println!("   📡 Public IP: Not assigned yet (instance may be starting)");
            println!("   💡 Tip: Check status again in a few minutes");
        }
    }
    if let Some(ip) = &private {
        println!("   🏠 Private IP: {ip}");
    }
    println!("\n📊 Instance Status:");
    println!("   State: {}", out::ec2_state(env.state));
    println!("   Launch Time: {}", out::plain_time(&env.created_at));
    println!("   Duration: {}", out::lease(env).map(out::go_format_duration).unwrap_or_default());
    println!("   Expires At: {}", env.expires_at.as_deref().map(out::plain_time).unwrap_or_default());
    match out::remaining(env, lapse_core::now_millis()) {
        Some(left) if left > 0 => {
            println!("   ⏳ Time Remaining: {}", out::go_format_duration(left));
            if left < 10 * 60_000 {
                println!("   ⚠️  Warning: Instance will expire soon!");
                println!("   💡 Extend with: instance-manager extend --instance-id {id} --duration 1h");
            }
        }
        _ => {
            println!("   ⚠️  Status: EXPIRED");
            println!("   💡 Tip: This instance should be terminated automatically");
        }
    }
    if let Some(ip) = &public {
        println!("\n🚀 Quick Connect: {USERNAME}@{ip}");
    }
    println!("\n📝 Storage Information:");
    println!("   📁 This data is persisted locally for future access");
    println!("   🔄 Run 'instance-manager service' for automatic lifecycle management");
}

/// The seed's `sync [--instance-id]`: the server keeps state and IPs in step with EC2 (its
/// drift sweep); this prints what it holds, as the seed's sync printed what it wrote.
pub async fn sync(client: &Client, id: Option<&str>, json: bool) -> anyhow::Result<()> {
    let envs = match id {
        Some(id) => {
            vec![resolve(client, id).await.map_err(|e| anyhow::anyhow!("failed to sync instance {id}: {e:#}"))?]
        }
        None => managed(client).await.map_err(|e| anyhow::anyhow!("failed to list instances: {e:#}"))?,
    };
    if json {
        crate::cli::print_json(&lapse_core::wire::EnvironmentList { environments: envs });
        return Ok(());
    }
    for env in &envs {
        let (public, _) = out::ips(env);
        println!(
            "Instance {} synced: PublicIP={}, State={}",
            out::instance_id(env),
            public.unwrap_or_default(),
            out::ec2_state(env.state)
        );
    }
    match id {
        Some(id) => println!("Sync completed for instance {id}."),
        None => println!("Sync completed for all instances."),
    }
    Ok(())
}

/// The EC2 key pair the aws provider imported the spec's first key under.
#[cfg(feature = "aws")]
fn key_pair_name(cloud: &lapse_core::model::CloudSpec) -> Option<String> {
    cloud.ssh_public_keys.first().map(|k| lapse_providers::aws::key_pair_name(k))
}

/// Without the aws provider no key pair was imported.
#[cfg(not(feature = "aws"))]
fn key_pair_name(_cloud: &lapse_core::model::CloudSpec) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_as_the_seed_checks_them() {
        assert!(seed_zone_ok("us-east-1a"));
        assert!(seed_zone_ok("us-east-1ab"));
        assert!(!seed_zone_ok("us-east"));
        assert!(!seed_zone_ok("us-east-1"));
        assert!(!seed_zone_ok(""));
    }
}

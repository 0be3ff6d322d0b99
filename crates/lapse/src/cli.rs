//! The command line: `lapse serve` and the verbs that talk to a server.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use lapse_core::model::{ObservedState, OnExpiry, OnIdle, Resources, Spec};
use lapse_core::wire::{
    CreateEnvironment, DurationInput, EnvironmentList, EnvironmentView, EventList, ExecRequest, ExecResult,
    ExtendRequest, LogsView, PoolList, PoolView, ProviderList,
};
use reqwest::Method;

use crate::client::Client;
use crate::output;
use crate::serve::{self, ServeArgs};

/// Lapse: leased compute environments (processes, containers) that stop or disappear when
/// their lease runs out.
///
/// `lapse serve` runs the control plane; every other verb talks to one at --url.
///
/// For users of instance-manager (bdanp/instance-manager): its commands work unchanged.
/// `create` with --public-key/-k, --instance-type/-t or --availability-zone/-z is its create
/// (provider aws, -P as its --provider); --instance-id/-i on status, stop, extend, terminate,
/// show and sync is its verb, with its output; `service` is its service (runs the server,
/// which enforces expiry); `import instance-manager` adopts its instances. Its `stop`
/// terminates, and so does `stop -i`. Run as `instance-manager` (a symlink), every verb
/// prints its output, `list` included.
#[derive(Parser, Debug)]
#[command(name = "lapse", version, propagate_version = true, args_override_self = true)]
pub struct Cli {
    /// The Lapse server to talk to.
    #[arg(long, global = true, env = "LAPSE_URL", default_value = "http://127.0.0.1:7070")]
    url: String,
    /// Print the server's JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// The API key (or the admin key) to present, when the server requires keys.
    #[arg(long, global = true, env = "LAPSE_KEY", hide_env_values = true)]
    key: Option<String>,
    #[command(flatten)]
    seed_log: crate::instance_manager::SeedLogFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control plane: API, reconciler, expiry timers, drift sweep.
    Serve(Box<ServeArgs>),
    /// Create an environment; the command to run follows `--`.
    ///
    /// Example: lapse create --provider docker --image localhost/busybox --ttl 30m --on-expiry stop -- sleep 1000
    Create(Box<CreateArgs>),
    /// List environments.
    #[command(alias = "ls")]
    List {
        /// Only this owner's.
        #[arg(long)]
        owner: Option<String>,
        /// Only in this state (pending, provisioning, running, stopping, stopped, deleting, deleted, failed).
        #[arg(long)]
        state: Option<String>,
        /// Only with this label, as key=value (repeatable; all must match).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// At most this many (default: all; the server's pages are followed to the end).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one environment (with -i: instance-manager's status of an EC2 instance); with
    /// --server, the server itself.
    Status(StatusArgs),
    /// Move an environment's expiry; one stopped by its expiry starts again.
    Extend {
        #[command(flatten)]
        id: IdArg,
        /// How much longer (counted from the later of now and the current expiry): 30m, 2h30m,
        /// "2 hours"; a bare number is hours, as instance-manager's (-d 2 is two hours).
        #[arg(long, alias = "duration", short = 'd', conflicts_with = "until", required_unless_present = "until",
              value_parser = lease_duration)]
        by: Option<DurationInput>,
        /// A new expiry time, RFC 3339 (2026-12-01T12:00:00Z).
        #[arg(long)]
        until: Option<String>,
    },
    /// Stop an environment (it can be started again). With -i, instance-manager's stop, which
    /// TERMINATES the instance as the seed's did.
    Stop(IdArg),
    /// Start a stopped or failed environment.
    Start(IdArg),
    /// Delete an environment and everything its provider holds for it.
    #[command(alias = "rm")]
    Delete {
        #[command(flatten)]
        id: IdArg,
        /// Skip the workspace's final push to S3 (also for a delete already waiting on a
        /// push that keeps failing): what was not pushed is lost.
        #[arg(long)]
        force: bool,
    },
    /// Run a command inside a running environment; exits with its exit code.
    Exec {
        #[command(flatten)]
        id: IdArg,
        /// Give up after this long, with its unit: 30s, 5m (default 30s).
        #[arg(long, value_parser = text_duration)]
        timeout: Option<DurationInput>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Attach this terminal to a shell inside a running environment (process, docker,
    /// swarm); exits with the shell's exit code.
    Shell {
        #[command(flatten)]
        id: IdArg,
    },
    /// Print the tail of what an environment printed.
    Logs {
        #[command(flatten)]
        id: IdArg,
        /// Lines per stream.
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
    /// The audit trail: every transition and every mutating call.
    Events {
        /// Only this environment's.
        #[arg(long)]
        environment: Option<String>,
        /// Only events after this sequence number.
        #[arg(long)]
        after: Option<i64>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The server's providers and whether each answers.
    Providers,
    /// The SWIM Redis queues: waiting, in flight, dead-lettered and processed messages.
    Queues,
    /// Tenants and API keys (needs the admin key: --key or LAPSE_KEY).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Who the presented key is: its tenant, or admin.
    Whoami,
    /// Time and cost per environment and per tenant (default: this month so far).
    Usage {
        /// Start, RFC 3339 (default: the start of this month).
        #[arg(long)]
        from: Option<String>,
        /// End, RFC 3339 (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Only this tenant's (admin key).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Check a config file (as `lapse serve --config` reads it) without a server: every error,
    /// with its line; exits 1 if there is one.
    Check {
        /// The TOML file, or the seed's `desired_vms.exs` (by its extension).
        file: std::path::PathBuf,
        /// Longest TTL the file may give (as the server's --max-ttl).
        #[arg(long, default_value = "30d")]
        max_ttl: String,
        /// The provider of a `.exs` spec that names none (as the server's --vms-provider).
        #[arg(long, default_value = "process")]
        vms_provider: String,
    },
    /// Run one drift sweep now and say what it corrected, per provider (admin key). With
    /// --dry-run, only say what it would correct: orphans to remove or adopt, vanished and
    /// exited environments, resources kept by `lapse:keep` or left alone while transitional;
    /// nothing is changed.
    Sweep {
        /// Plan the sweep and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
    },
    /// Warm pools: list them, or show one.
    Pools {
        /// A pool's name; all pools when absent.
        name: Option<String>,
    },
    /// instance-manager's terminate: delete the instance's environment (TerminateInstances).
    Terminate(IdArg),
    /// instance-manager's show: the details of one instance (-i) or of every aws environment.
    Show(OptionalIdArg),
    /// instance-manager's sync: the state and IPs the server holds (its sweep keeps them in
    /// step with EC2), of one instance (-i) or all.
    Sync(OptionalIdArg),
    /// instance-manager's service: runs the server (`lapse serve` with these flags), which
    /// enforces expiry; --log-level and --verbose set its logging (LAPSE_LOG wins), and
    /// AWS_REGION defaults to us-east-1 as the seed's.
    Service(Box<ServeArgs>),
    /// Import another tool's environments into the server (admin key).
    #[command(subcommand)]
    Import(ImportCommand),
    /// Measure a `lapse serve` started for the purpose and print every figure of one run:
    /// create latency, docker create-to-running, expiry lateness, warm claims under 200
    /// clients, sim create throughput, pool refill rate, and 100,000 leases (memory, restart
    /// time, expiry lateness). About 15 minutes with the defaults; flags shrink each part.
    Bench(crate::bench::BenchArgs),
    /// Copy a SQLite store into an empty PostgreSQL database and verify the copy (stop the
    /// server first; then serve with --database postgres://...).
    ///
    /// Example: lapse migrate --data-dir /var/lib/lapse --to postgres://lapse:secret@db:5432/lapse
    Migrate(crate::migrate::MigrateArgs),
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// Environment id (as `lapse list` shows it), or an EC2 instance id.
    #[arg(value_name = "ID", required_unless_present_any = ["instance_id", "server"], conflicts_with_all = ["instance_id", "server"])]
    id: Option<String>,
    /// instance-manager's --instance-id: the EC2 instance id (or an environment id); the
    /// verb then behaves and prints as instance-manager's.
    #[arg(long = "instance-id", short = 'i', value_name = "ID", conflicts_with = "server")]
    instance_id: Option<String>,
    /// The server instead of an environment: version, store, providers, timers, backlog and,
    /// on PostgreSQL, every replica connected to the database and the locks it holds.
    #[arg(long)]
    server: bool,
}

#[derive(clap::Args, Debug)]
struct IdArg {
    /// Environment id (as `lapse list` shows it), or an EC2 instance id.
    #[arg(value_name = "ID", required_unless_present = "instance_id", conflicts_with = "instance_id")]
    id: Option<String>,
    /// instance-manager's --instance-id: the EC2 instance id (or an environment id); the
    /// verb then behaves and prints as instance-manager's.
    #[arg(long = "instance-id", short = 'i', value_name = "ID")]
    instance_id: Option<String>,
}

impl IdArg {
    /// The id given, and whether it came as the seed's `-i`.
    fn get(&self) -> (&str, bool) {
        match (&self.instance_id, &self.id) {
            (Some(i), _) => (i, true),
            (None, Some(id)) => (id, false),
            // clap requires one of the two.
            (None, None) => ("", false),
        }
    }
}

#[derive(clap::Args, Debug)]
struct OptionalIdArg {
    /// instance-manager's --instance-id (default: all).
    #[arg(long = "instance-id", short = 'i', value_name = "ID")]
    instance_id: Option<String>,
}

#[derive(Subcommand, Debug)]
enum ImportCommand {
    /// Adopt instance-manager's instances (its instances.json, and those tagged
    /// ManagedBy=instance-manager in the server's region) as environments with their expiry.
    InstanceManager(crate::instance_manager::ImportArgs),
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// Provider: process (local processes), docker (containers), aws, ... Default: process,
    /// or aws with instance-manager's flags (-P is its --provider).
    #[arg(long, short = 'p', short_alias = 'P')]
    provider: Option<String>,
    #[command(flatten)]
    seed: crate::instance_manager::SeedCreateFlags,
    /// Image (docker).
    #[arg(long)]
    image: Option<String>,
    /// A name for people.
    #[arg(long)]
    name: Option<String>,
    /// Who it is for (default: $USER).
    #[arg(long, env = "USER", default_value = "anonymous")]
    owner: String,
    /// Label key=value (repeatable).
    #[arg(long = "label", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = key_value)]
    env: Vec<(String, String)>,
    /// A claim parameter KEY=VALUE for a warm member's pool hook (`on_claim`); a cold start
    /// gets it as an environment variable (repeatable).
    #[arg(long = "param", value_parser = key_value)]
    params: Vec<(String, String)>,
    /// A file for the warm member: GUEST_PATH=LOCAL_FILE, written by the pool's hook
    /// (repeatable; at most 64 KiB in all).
    #[arg(long = "param-file", value_parser = key_value)]
    param_files: Vec<(String, String)>,
    /// Virtual CPUs (docker), fractions allowed.
    #[arg(long)]
    vcpu: Option<f64>,
    /// Memory limit in MiB (docker).
    #[arg(long)]
    mem_mb: Option<u64>,
    /// TCP port to publish (repeatable).
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// Lease length: 30m, 2h30m, "2 hours", case-insensitive; a bare number is hours, as
    /// instance-manager's (-d 2 is two hours). Default: the server's, 1h.
    #[arg(long, alias = "duration", short = 'd', value_parser = lease_duration)]
    ttl: Option<DurationInput>,
    /// What happens when the lease runs out.
    #[arg(long, value_parser = ["stop", "delete"], default_value = "stop")]
    on_expiry: String,
    /// lease (runs until its TTL), service or daemon (kept running, restarted when it exits;
    /// no expiry unless --ttl), job (runs to completion, kept until its TTL).
    #[arg(long, value_parser = ["lease", "service", "daemon", "job"], default_value = "lease")]
    lifecycle: String,
    /// Jobs: retries after a non-zero exit.
    #[arg(long)]
    max_retries: Option<u32>,
    /// Stop (or delete, --on-idle) it after this long without activity: 10m, 1h.
    #[arg(long, value_parser = text_duration)]
    idle_timeout: Option<DurationInput>,
    /// What --idle-timeout does.
    #[arg(long, value_parser = ["stop", "delete"], default_value = "stop")]
    on_idle: String,
    /// Pre-expiry warnings: how long before the lease ends each fires, e.g. 15m,2m (an
    /// `expiring_soon` event and webhook, and the `LAPSE_NOTICE` file inside).
    #[arg(long)]
    warn_before: Option<String>,
    /// Wait until it runs (or fails), showing progress.
    #[arg(long)]
    wait: bool,
    /// A cloud-init user-data file, handed to the environment (`process` and `docker` put it
    /// in a file whose path is in `LAPSE_USER_DATA`).
    #[arg(long, value_name = "FILE")]
    user_data: Option<std::path::PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    cmd: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Tenants: create or list.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// API keys: create (printed once) or revoke.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand, Debug)]
enum TenantCommand {
    /// Create a tenant.
    Create {
        name: String,
        /// `free` (default) or `pro`.
        #[arg(long)]
        tier: Option<String>,
    },
    /// List tenants.
    List,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Create an API key, for a tenant (--tenant) or one that reads /metrics and nothing
    /// else (--metrics); the key is printed this once.
    #[command(group = clap::ArgGroup::new("scope").required(true).args(["tenant", "metrics"]))]
    Create {
        /// The tenant whose environments the key reaches.
        #[arg(long)]
        tenant: Option<String>,
        /// A metrics-only key (for a Prometheus scraper).
        #[arg(long)]
        metrics: bool,
    },
    /// Revoke a key by its id: it is refused from now on.
    Revoke { id: String },
}

/// `--param` and `--param-file` as the create's `params` (none when neither is given).
fn claim_params(
    env: Vec<(String, String)>,
    files: Vec<(String, String)>,
) -> anyhow::Result<Option<lapse_core::claim::ClaimParams>> {
    if env.is_empty() && files.is_empty() {
        return Ok(None);
    }
    let mut params = lapse_core::claim::ClaimParams { env: env.into_iter().collect(), ..Default::default() };
    for (guest, local) in files {
        let meta = std::fs::metadata(&local).with_context(|| format!("--param-file {guest}={local}"))?;
        if meta.len() > lapse_core::claim::MAX_PARAM_BYTES as u64 {
            anyhow::bail!("--param-file {local}: {} bytes; at most {}", meta.len(), lapse_core::claim::MAX_PARAM_BYTES);
        }
        let text = std::fs::read_to_string(&local).with_context(|| format!("reading --param-file {local}"))?;
        params.files.insert(guest, text);
    }
    Ok(Some(params))
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// A lease length in the CLI grammar ([`lapse_core::duration::parse_cli_duration`]), sent to
/// the server with its unit so that the server never reads a bare number.
fn lease_duration(s: &str) -> Result<DurationInput, String> {
    lapse_core::duration::parse_cli_duration(s).map(exact).map_err(|e| e.to_string())
}

/// A duration in the text grammar (a unit is required).
fn text_duration(s: &str) -> Result<DurationInput, String> {
    lapse_core::duration::parse_duration(s).map(exact).map_err(|e| e.to_string())
}

fn exact(d: Duration) -> DurationInput {
    DurationInput::Text(format!("{}ms", d.as_millis().max(1)))
}

fn urlencode(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c.to_string()
            } else {
                format!("%{:02X}", c as u32 & 0xff)
            }
        })
        .collect()
}

pub(crate) fn env_path(id: &str, rest: &str) -> String {
    // Ids are hex; anything else is sent escaped and the server answers 404.
    let id: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_string() } else { format!("%{:02X}", c as u32 & 0xff) })
        .collect();
    format!("/v1/environments/{id}{rest}")
}

/// A server's end: a refused `--database` (or a PostgreSQL database that cannot be used) is
/// a usage error (exit code 2), like clap's.
fn served(result: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            if let Some(refused) = e.downcast_ref::<crate::database::DatabaseRefused>() {
                eprintln!("error: {refused}");
                return Ok(ExitCode::from(2));
            }
            if let Some(refused) = e.downcast_ref::<lapse_store::pg::PgError>() {
                eprintln!("error: --database: {refused}");
                return Ok(ExitCode::from(2));
            }
            Err(e)
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Serve(args) = cli.command {
        return served(serve::run(*args).await);
    }
    if let Command::Service(mut args) = cli.command {
        args.log_filter = Some(cli.seed_log.filter());
        if args.aws_region.is_none() {
            args.aws_region = Some("us-east-1".into());
        }
        println!("Instance Manager service started (log level: {})", cli.seed_log.log_level);
        println!("Monitoring instance lifecycle, TTL changes, and state management...");
        println!("Press Ctrl+C to stop the service.");
        let result = serve::run(*args).await;
        if result.is_ok() {
            println!("Service stopped.");
        }
        return served(result);
    }
    if let Command::Bench(args) = cli.command {
        crate::bench::run(args, cli.json).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Migrate(args) = cli.command {
        return crate::migrate::run(args, cli.json).await;
    }
    if let Command::Check { file, max_ttl, vms_provider } = &cli.command {
        return crate::check::run(file, max_ttl, vms_provider, cli.json);
    }
    let client = Client::new(&cli.url, cli.key.clone())?;
    let json = cli.json;
    let seed_output = crate::instance_manager::invoked_as_seed();
    let show = |env: &EnvironmentView| {
        if json {
            print_json(env);
        } else {
            output::environment(env);
        }
    };
    match cli.command {
        Command::Serve(_) | Command::Service(_) | Command::Bench(_) | Command::Migrate(_) | Command::Check { .. } => {
            unreachable!("handled above")
        }
        Command::Create(args) if args.seed.given() || seed_output => {
            let input = crate::instance_manager::CreateInput {
                provider: args.provider,
                image: args.image,
                owner: args.owner,
                name: args.name,
                labels: args.labels.into_iter().collect(),
                ttl_text: args.ttl.as_ref().and_then(|t| match t {
                    DurationInput::Text(t) => lapse_core::duration::parse_duration(t).ok(),
                    _ => None,
                }),
                ttl: args.ttl,
                on_expiry: if args.on_expiry == "delete" { OnExpiry::Delete } else { OnExpiry::Stop },
                has_cmd: !args.cmd.is_empty(),
            };
            crate::instance_manager::create(&client, args.seed, input, json).await?;
        }
        Command::Create(args) => {
            let resources = (args.vcpu.is_some() || args.mem_mb.is_some()).then_some(Resources {
                vcpu: args.vcpu,
                mem_mb: args.mem_mb,
                disk_gb: None,
            });
            let req = CreateEnvironment {
                name: args.name,
                owner: args.owner,
                labels: args.labels.into_iter().collect(),
                spec: Spec {
                    provider: args.provider.unwrap_or_else(|| "process".into()),
                    image: args.image,
                    cmd: args.cmd,
                    env: args.env.into_iter().collect::<BTreeMap<_, _>>(),
                    resources,
                    ports: args.ports,
                    user_data: match &args.user_data {
                        Some(path) => Some(
                            std::fs::read_to_string(path)
                                .with_context(|| format!("reading --user-data {}", path.display()))?,
                        ),
                        None => None,
                    },
                    ..Default::default()
                },
                ttl: args.ttl,
                on_expiry: if args.on_expiry == "delete" { OnExpiry::Delete } else { OnExpiry::Stop },
                lifecycle: args.lifecycle.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
                max_retries: args.max_retries,
                params: claim_params(args.params, args.param_files)?,
                idle_timeout: args.idle_timeout,
                on_idle: if args.on_idle == "delete" { OnIdle::Delete } else { OnIdle::Stop },
                warn_before: args.warn_before.map(|w| lapse_core::wire::WarnBefore::One(DurationInput::Text(w))),
            };
            let mut env: EnvironmentView = client.post("/v1/environments", &req).await?;
            if args.wait {
                env = wait_until_settled(&client, env, json).await?;
            }
            show(&env);
            if env.state == ObservedState::Failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::List { .. } if seed_output => crate::instance_manager::list(&client, json).await?,
        Command::List { owner, state, labels, limit } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(o) = owner {
                query.push(("owner", o));
            }
            if let Some(s) = state {
                query.push(("state", s));
            }
            for l in labels {
                query.push(("label", l));
            }
            let list = list_all(&client, query, limit).await?;
            if json {
                print_json(&list);
            } else {
                output::environments(&list.environments);
            }
        }
        Command::Status(StatusArgs { server: true, .. }) => {
            let status: lapse_core::wire::StatusView = client.get("/v1/status").await?;
            if json {
                print_json(&status);
            } else {
                output::server(&status);
            }
        }
        Command::Status(StatusArgs { instance_id: Some(id), .. }) => {
            crate::instance_manager::status(&client, &id, json).await?
        }
        Command::Status(StatusArgs { id: Some(id), .. }) if seed_output => {
            crate::instance_manager::status(&client, &id, json).await?
        }
        Command::Status(StatusArgs { id: Some(id), .. }) => {
            show(&client.get(&env_path(&env_id(&client, &id).await?, "")).await?)
        }
        Command::Status(_) => unreachable!("clap requires an id or --server"),
        Command::Extend { id, by, until } => {
            let (id, seed) = id.get();
            match (&by, seed || seed_output) {
                (Some(DurationInput::Text(t)), true) => {
                    let d = lapse_core::duration::parse_duration(t)
                        .map_err(|e| anyhow::anyhow!("invalid duration: {e}"))?;
                    crate::instance_manager::extend(&client, id, d, json).await?;
                }
                _ => {
                    let id = env_id(&client, id).await?;
                    let req = ExtendRequest { by, until };
                    show(&client.post(&env_path(&id, "/extend"), &req).await?);
                }
            }
        }
        Command::Stop(id) => match id.get() {
            (id, true) => crate::instance_manager::stop(&client, id, json).await?,
            (id, false) if seed_output => crate::instance_manager::stop(&client, id, json).await?,
            (id, false) => {
                let id = env_id(&client, id).await?;
                show(&client.post(&env_path(&id, "/stop"), &()).await?)
            }
        },
        Command::Terminate(id) => crate::instance_manager::terminate(&client, id.get().0, json).await?,
        Command::Show(OptionalIdArg { instance_id }) => {
            crate::instance_manager::show(&client, instance_id.as_deref(), json).await?
        }
        Command::Sync(OptionalIdArg { instance_id }) => {
            crate::instance_manager::sync(&client, instance_id.as_deref(), json).await?
        }
        Command::Import(ImportCommand::InstanceManager(args)) => {
            crate::instance_manager::run_import(&client, args, json).await?
        }
        Command::Start(id) => {
            let id = env_id(&client, id.get().0).await?;
            show(&client.post(&env_path(&id, "/start"), &()).await?)
        }
        Command::Delete { id, force } => {
            let id = env_id(&client, id.get().0).await?;
            let path = if force { env_path(&id, "?force=true") } else { env_path(&id, "") };
            show(&client.call(Method::DELETE, &path, None::<&()>).await?)
        }
        Command::Exec { id, timeout, cmd } => {
            let req = ExecRequest { cmd, timeout };
            let id = env_id(&client, id.get().0).await?;
            let result: ExecResult = client.post(&env_path(&id, "/exec"), &req).await?;
            if json {
                print_json(&result);
            } else {
                print!("{}", result.stdout);
                eprint!("{}", result.stderr);
                let _ = std::io::stdout().flush();
            }
            if result.timed_out {
                eprintln!("error: the command was still running at its timeout");
                return Ok(ExitCode::from(124));
            }
            let code = result.exit_code.unwrap_or(1);
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Command::Shell { id } => {
            let id = env_id(&client, id.get().0).await?;
            return crate::shell::run(&cli.url, cli.key.as_deref(), &id).await;
        }
        Command::Logs { id, tail } => {
            let id = env_id(&client, id.get().0).await?;
            let logs: LogsView = client.get(&env_path(&id, &format!("/logs?tail={tail}"))).await?;
            if json {
                print_json(&logs);
            } else {
                print!("{}", logs.stdout);
                eprint!("{}", logs.stderr);
            }
        }
        Command::Events { environment, after, limit } => {
            let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            if let Some(e) = environment {
                query.push(("environment", e));
            }
            if let Some(a) = after {
                query.push(("after", a.to_string()));
            }
            let qs = serde_urlencoded::to_string(&query).context("encoding the query")?;
            let events: EventList = client.get(&format!("/v1/events?{qs}")).await?;
            if json {
                print_json(&events);
            } else {
                output::events(&events.events);
            }
        }
        Command::Pools { name } => match name {
            Some(name) => {
                let pool: PoolView = client.get(&format!("/v1/pools/{}", urlencode(&name))).await?;
                if json {
                    print_json(&pool);
                } else {
                    output::pools(std::slice::from_ref(&pool));
                }
            }
            None => {
                let list: PoolList = client.get("/v1/pools").await?;
                if json {
                    print_json(&list);
                } else {
                    output::pools(&list.pools);
                }
            }
        },
        Command::Sweep { dry_run, provider } => {
            let req = lapse_core::wire::SweepRequest { dry_run, provider };
            let view: lapse_core::wire::SweepView = client.post("/v1/admin/sweep", &req).await?;
            if json {
                print_json(&view);
            } else {
                print_sweep(&view);
            }
        }
        Command::Providers => {
            let list: ProviderList = client.get("/v1/providers").await?;
            if json {
                print_json(&list);
            } else {
                let rows: Vec<Vec<String>> = list
                    .providers
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.kind.clone(),
                            if p.available { "up".into() } else { "down".into() },
                            capabilities(&p.capabilities),
                            p.detail.clone(),
                        ]
                    })
                    .collect();
                output::table(&["PROVIDER", "KIND", "STATUS", "CAN", "DETAIL"], &rows);
            }
        }
        Command::Usage { from, to, tenant } => {
            let query: Vec<String> = [("from", from), ("to", to), ("tenant", tenant)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k}={}", urlencode(&v))))
                .collect();
            let view: lapse_core::wire::UsageView = client.get(&format!("/v1/usage?{}", query.join("&"))).await?;
            if json {
                print_json(&view);
            } else {
                println!("from {} to {}", view.from, view.to);
                let rows: Vec<Vec<String>> = view
                    .tenants
                    .iter()
                    .map(|t| {
                        vec![
                            t.tenant.clone(),
                            t.environments.to_string(),
                            format!("{:.3}", t.running_hours),
                            format!("{:.3}", t.stopped_hours),
                            format!("{:.4}", t.cost),
                        ]
                    })
                    .collect();
                output::table(&["TENANT", "ENVIRONMENTS", "RUNNING H", "STOPPED H", "COST"], &rows);
            }
        }
        Command::Whoami => {
            let me: lapse_core::wire::WhoAmI = client.get("/v1/whoami").await?;
            if json {
                print_json(&me);
            } else {
                println!("{}{}", me.actor, me.tenant.map(|t| format!(" (tenant {t})")).unwrap_or_default());
            }
        }
        Command::Admin(AdminCommand::Tenant(TenantCommand::Create { name, tier })) => {
            let req = lapse_core::wire::CreateTenant { name, tier, quota: None, quota_check: None };
            let t: lapse_core::wire::TenantView = client.post("/v1/admin/tenants", &req).await?;
            if json {
                print_json(&t);
            } else {
                println!("tenant {} created (tier {})", t.name, t.tier);
            }
        }
        Command::Admin(AdminCommand::Tenant(TenantCommand::List)) => {
            let list: lapse_core::wire::TenantList = client.get("/v1/admin/tenants").await?;
            if json {
                print_json(&list);
            } else {
                let rows: Vec<Vec<String>> =
                    list.tenants.iter().map(|t| vec![t.name.clone(), t.tier.clone(), t.created_at.clone()]).collect();
                output::table(&["TENANT", "TIER", "CREATED"], &rows);
            }
        }
        Command::Admin(AdminCommand::Key(KeyCommand::Create { tenant, metrics })) => {
            let req = match tenant {
                Some(tenant) if !metrics => {
                    lapse_core::wire::CreateKey { scope: lapse_core::wire::KeyScopeName::Tenant, tenant: Some(tenant) }
                }
                _ => lapse_core::wire::CreateKey { scope: lapse_core::wire::KeyScopeName::Metrics, tenant: None },
            };
            let k: lapse_core::wire::KeyCreated = client.post("/v1/admin/keys", &req).await?;
            if json {
                print_json(&k);
            } else {
                println!("{}", k.key);
                let whose = k.tenant.map_or("that reads /metrics only".to_owned(), |t| format!("for tenant {t}"));
                eprintln!("key {} {whose}: shown this once; keep it (LAPSE_KEY) — only its hash is stored", k.id);
            }
        }
        Command::Admin(AdminCommand::Key(KeyCommand::Revoke { id })) => {
            let path = format!("/v1/admin/keys/{}", urlencode(&id));
            let r: lapse_core::wire::KeyRevoked = client.call(Method::DELETE, &path, None::<&()>).await?;
            if json {
                print_json(&r);
            } else {
                let whose = r.tenant.map_or("(metrics)".to_owned(), |t| format!("of tenant {t}"));
                println!("key {} {whose} revoked", r.id);
            }
        }
        Command::Queues => {
            let view: lapse_core::wire::QueuesView = client.get("/v1/queues").await?;
            if json {
                print_json(&view);
            } else if !view.enabled {
                println!("this server consumes no Redis queues (see `lapse serve --help`, REDIS_CONNECTION_STRING)");
            } else {
                let state = if view.connected { "connected" } else { "NOT connected" };
                println!(
                    "redis {} ({state}), provider {}",
                    view.redis.unwrap_or_default(),
                    view.provider.unwrap_or_default()
                );
                if let Some(error) = &view.error {
                    println!("last error: {error}");
                }
                let n = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
                let rows: Vec<Vec<String>> = view
                    .queues
                    .iter()
                    .map(|q| {
                        vec![
                            q.name.clone(),
                            q.key.clone(),
                            n(q.depth),
                            n(q.in_flight),
                            n(q.dead_lettered),
                            q.processed.to_string(),
                            q.concurrency.to_string(),
                        ]
                    })
                    .collect();
                output::table(&["QUEUE", "KEY", "WAITING", "IN FLIGHT", "DEAD", "PROCESSED", "CONCURRENCY"], &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The environment id an id names: itself, or for an EC2 instance id (`i-...`) the
/// environment whose provider ref it is.
async fn env_id(client: &Client, id: &str) -> anyhow::Result<String> {
    if !id.starts_with("i-") {
        return Ok(id.to_owned());
    }
    Ok(crate::instance_manager::resolve(client, id).await?.id)
}

/// Every page of `GET /v1/environments` with `query`, following the cursors, up to `limit`.
pub(crate) async fn list_all(
    client: &Client,
    query: Vec<(&str, String)>,
    limit: Option<usize>,
) -> anyhow::Result<EnvironmentList> {
    /// The server's largest page.
    const PAGE: usize = 1000;
    let mut all = EnvironmentList { environments: Vec::new() };
    let mut cursor: Option<String> = None;
    loop {
        let want = limit.map_or(PAGE, |l| (l - all.environments.len()).min(PAGE));
        if want == 0 {
            return Ok(all);
        }
        let mut q = query.clone();
        q.push(("limit", want.to_string()));
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let qs = serde_urlencoded::to_string(&q).context("encoding the query")?;
        let (page, next): (EnvironmentList, _) = client.get_page(&format!("/v1/environments?{qs}")).await?;
        all.environments.extend(page.environments);
        match next {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

/// Polls until the environment runs or fails, printing each state change to stderr.
async fn wait_until_settled(client: &Client, mut env: EnvironmentView, quiet: bool) -> anyhow::Result<EnvironmentView> {
    let started = Instant::now();
    let mut last = None;
    loop {
        if last != Some(env.state) && !quiet {
            eprintln!("[{:>5.1}s] {}", started.elapsed().as_secs_f64(), env.state);
            last = Some(env.state);
        }
        match env.state {
            ObservedState::Running | ObservedState::Failed | ObservedState::Stopped | ObservedState::Deleted => {
                return Ok(env);
            }
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("environment {} is still {} after 10 minutes", env.id, env.state);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        env = client.get(&env_path(&env.id, "")).await?;
    }
}

pub(crate) fn print_json(value: &impl serde::Serialize) {
    // Serializing the wire types cannot fail.
    println!("{}", serde_json::to_string_pretty(value).expect("wire types serialize"));
}

/// A provider's capabilities as words (`exec,logs,stop`), `-` for none.
fn capabilities(c: &lapse_core::wire::Capabilities) -> String {
    let words: Vec<&str> = [
        (c.exec, "exec"),
        (c.logs, "logs"),
        (c.stop_keeps_disk, "stop"),
        (c.cloud, "cloud"),
        (c.lease_backstop, "backstop"),
        (c.boots_kernel, "kernel"),
    ]
    .into_iter()
    .filter_map(|(has, word)| has.then_some(word))
    .collect();
    if words.is_empty() { "-".into() } else { words.join(",") }
}

/// A sweep's plan (and outcome) per provider, as tables.
fn print_sweep(view: &lapse_core::wire::SweepView) {
    let verb = if view.dry_run { "would" } else { "did" };
    for p in &view.providers {
        if let Some(e) = &p.error {
            println!("{}: not swept: {e}", p.provider);
            continue;
        }
        let changes = p.actions.iter().filter(|a| !matches!(a.action.as_str(), "keep" | "transitional")).count();
        println!("{}: {verb} make {changes} correction(s)", p.provider);
        if p.actions.is_empty() {
            continue;
        }
        let rows: Vec<Vec<String>> = p
            .actions
            .iter()
            .map(|a| {
                let done = match (a.done, &a.error) {
                    (Some(true), _) => "done".to_owned(),
                    (Some(false), Some(e)) => format!("not done: {e}"),
                    (Some(false), None) => "not done".to_owned(),
                    (None, _) => "-".to_owned(),
                };
                vec![
                    a.action.clone(),
                    a.environment_id.clone(),
                    a.provider_ref.clone().unwrap_or_default(),
                    a.detail.clone(),
                    done,
                ]
            })
            .collect();
        output::table(&["ACTION", "ENVIRONMENT", "RESOURCE", "DETAIL", "RESULT"], &rows);
    }
}

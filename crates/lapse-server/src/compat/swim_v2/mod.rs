//! SWIM's newer contract, the one LabMan speaks: alex-sviridov/swim@670feb4 (HEAD,
//! 2025-10-23), `INTERFACE.md` and the Go code that implements it, which this module follows
//! where the two disagree: `cmd/swim/service.go` (queues), `internal/config/constants.go`
//! (keys, statuses, TTLs, rate limits), `internal/redis/client.go` (`ServerState`, `SET NX`),
//! `internal/provisioner/provisioner.go` (one lab per user, lab switch, states),
//! `internal/decommissioner/decommissioner.go` (the stale rule), `internal/cleanup/cleanup.go`
//! (expiry), `internal/connector/hcloud/request.go` (the payload, `DEFAULT_TTL_MINUTES`).
//!
//! Keys, with the default prefix `vmmanager:` ([`V2Config::prefix`]):
//! - `<prefix>provision`: `{"webuserid", "labId"}` ([`message`]), producers `RPUSH`, taken from
//!   the head (FIFO, as the seed's `BLPOP`);
//! - `<prefix>decommission`: `{"webuserid", "labId"?, "serverId"?}`;
//! - `<prefix>servers:<webuserid>`: the user's lab ([`cache`]), 24 h TTL, deleted when the lab
//!   is gone or failed;
//! - `<prefix>ratelimit:<webuserid>:<provision|decommission>`: `SET NX` with a TTL of
//!   `PROVISION_RATE_LIMIT_SECONDS` / `DECOMMISSION_RATE_LIMIT_SECONDS` (15 s) ([`apply`]);
//! - `<queue>:processing`, `<queue>:dead`: Lapse's, as for the older contract.
//!
//! **The same pump as the older contract** ([`crate::compat::swim::consumer`]): messages move
//! to a processing list, each is applied with its receipt in one store transaction through
//! the one admission path, then removed; a crash between any two steps re-applies nothing.
//!
//! **One lab per user** ([`lapse_store::Store::apply_lab_messages`]): a provision for the user's
//! current lab is a no-op; for another lab, the old one is set to be deleted and the new one
//! created **in one store transaction**. The seed pushes a decommission of the old lab (with
//! its `serverId`) and provisions at once; that decommission passes the decommission rate
//! limit, so a switch within 15 s of a decommission leaks the old server for good (its cache
//! entry is overwritten, so cleanup never finds it). One transaction cannot leak, and what
//! LabMan reads (`servers:<user>` showing the new lab at once) is the same.
//!
//! **Expiry pushes a decommission**, as the seed's cleanup does: [`expiry`] `RPUSH`es
//! `{"labId":N,"webuserid":U}` (the seed's bytes) once a lab's `expiresAt` has passed, and
//! again every 5 minutes while it lives; the decommission queue then handles it like any
//! other. The lease in the store runs [`EXPIRY_GRACE`] longer and deletes the lab itself if
//! no pushed decommission got through (Redis down, rate limited), so nothing leaks.
//!
//! Where Lapse differs on purpose (each also in the README):
//! - a bad message is dead-lettered with its reason (the seed logs and drops it), and is
//!   checked before it takes a rate-limit key (the seed takes the provision key even for a
//!   message that then fails validation);
//! - a rate-limited message is dead-lettered with the reason `rate limited` (the seed drops
//!   it): the producer sees the same (nothing happens), the operator can see why;
//! - the rate-limit key's value is the message's tag (the seed writes `1`), so a message
//!   handled again after a crash is not limited by its own key;
//! - `serverId` is the Lapse environment id, written from the first state on (the seed's is
//!   empty until the server exists); a decommission by `serverId` deletes only a lab of the
//!   same `webuserid` (the seed deletes any server of the project by id);
//! - expiry is noticed within [`V2Config::cleanup_every`] (5 s), not 5 minutes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::compat::swim::{Kind, Queue, Swim, SwimConfig};

pub mod apply;
pub mod cache;
pub mod expiry;
pub mod message;

/// The source of the labs this contract makes: only these are ever selected or mirrored.
pub const SOURCE: &str = "swim_v2";
/// The label holding a lab's `labId`.
pub const LAB_LABEL: &str = "swim.v2.lab_id";
/// How much longer than `expiresAt` the store's lease runs (the backstop of [`expiry`]).
pub const EXPIRY_GRACE: Duration = Duration::from_secs(15 * 60);

/// The newer contract's settings (the Lapse ones, provider and spec defaults, are the
/// [`SwimConfig`]'s, shared with the older contract).
#[derive(Clone, Debug, PartialEq)]
pub struct V2Config {
    /// Put before every key (`vmmanager:`).
    pub prefix: String,
    /// The `user` field (`SSH_USERNAME`, `student`).
    pub ssh_username: String,
    /// A lab's life (`DEFAULT_TTL_MINUTES`, 30).
    pub ttl_minutes: u64,
    /// `PROVISION_RATE_LIMIT_SECONDS` (15 s).
    pub provision_rate_limit: Duration,
    /// `DECOMMISSION_RATE_LIMIT_SECONDS` (15 s).
    pub decommission_rate_limit: Duration,
    /// The cloud-init every lab gets (`HCLOUD_DEFAULT_CLOUD_INIT_FILE`), read at start.
    pub cloud_init_file: Option<PathBuf>,
    /// How often expired labs are looked for.
    pub cleanup_every: Duration,
    /// How often a decommission is pushed again for a lab still alive after its expiry (the
    /// seed's cleanup interval).
    pub repush_every: Duration,
}

impl Default for V2Config {
    fn default() -> V2Config {
        V2Config {
            prefix: "vmmanager:".into(),
            ssh_username: "student".into(),
            ttl_minutes: 30,
            provision_rate_limit: Duration::from_secs(15),
            decommission_rate_limit: Duration::from_secs(15),
            cloud_init_file: None,
            cleanup_every: Duration::from_secs(5),
            repush_every: Duration::from_secs(300),
        }
    }
}

impl V2Config {
    pub fn provision_queue(&self) -> String {
        format!("{}provision", self.prefix)
    }

    pub fn decommission_queue(&self) -> String {
        format!("{}decommission", self.prefix)
    }

    /// The key of one user's lab.
    pub fn server_key(&self, webuserid: &str) -> String {
        format!("{}servers:{webuserid}", self.prefix)
    }

    /// The rate-limit key of one user's `operation` (`provision`, `decommission`).
    pub fn rate_limit_key(&self, webuserid: &str, operation: &str) -> String {
        format!("{}ratelimit:{webuserid}:{operation}", self.prefix)
    }
}

/// The newer contract on a running server: its Redis link and queues, its settings, and the
/// cloud-init read at start.
#[derive(Debug)]
pub struct SwimV2 {
    pub link: Arc<Swim>,
    pub config: V2Config,
    pub user_data: Option<String>,
}

impl SwimV2 {
    /// The contract over `shared`'s Redis and Lapse settings, with `shared.v2`'s own.
    pub fn new(shared: &SwimConfig) -> anyhow::Result<SwimV2> {
        let config = shared.v2.clone().unwrap_or_default();
        let mut link_config = shared.clone();
        link_config.prefix = config.prefix.clone();
        let queues = [
            Arc::new(Queue::new(Kind::Provision, config.provision_queue(), shared.provision_concurrency, true)),
            Arc::new(Queue::new(Kind::Decommission, config.decommission_queue(), shared.control_concurrency, true)),
        ];
        let user_data = match &config.cloud_init_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("the SWIM v2 cloud-init file {}: {e}", path.display()))?;
                if text.len() > lapse_core::validate::MAX_USER_DATA {
                    anyhow::bail!(
                        "the SWIM v2 cloud-init file {} is over {} bytes",
                        path.display(),
                        lapse_core::validate::MAX_USER_DATA
                    );
                }
                Some(text)
            }
            None => None,
        };
        Ok(SwimV2 { link: Arc::new(Swim::with_queues(link_config, queues)?), config, user_data })
    }

    /// Starts the state keys' mirror, both queues' pumps and the expiry pusher.
    pub fn spawn(self: &Arc<Self>, app: &App) -> Vec<tokio::task::JoinHandle<()>> {
        tracing::info!(
            redis = %self.link.config.shown_url(),
            provision = %self.config.provision_queue(),
            decommission = %self.config.decommission_queue(),
            provider = %self.link.config.provider,
            "consuming the SWIM v2 (vmmanager) queues"
        );
        let mut tasks = vec![
            tokio::spawn(cache::run(app.clone(), self.clone(), app.cx.store.subscribe())),
            tokio::spawn(expiry::run(app.clone(), self.clone())),
        ];
        let contract = Arc::new(apply::V2 { swim: self.clone() });
        for queue in &self.link.queues {
            tasks.push(tokio::spawn(crate::compat::swim::consumer::run_contract(
                app.clone(),
                self.link.clone(),
                queue.clone(),
                contract.clone(),
            )));
        }
        tasks
    }
}

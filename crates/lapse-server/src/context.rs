//! What the reconciler, the sweep and the API layer share.

use lapse_providers::ProviderSet;
use lapse_store::Store;

use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::timers::Timers;

#[derive(Debug)]
pub struct Context {
    pub store: Store,
    pub providers: ProviderSet,
    pub timers: Timers,
    pub clock: Clock,
    pub metrics: Metrics,
    /// Claims per minute, per pool (see [`crate::claim_rate`]).
    pub claim_rate: crate::claim_rate::ClaimRate,
    pub config: ServerConfig,
    /// Labels every resource this control plane makes.
    pub controller_id: String,
    /// Spec hashes of the pools that exist: a create whose spec has none skips the claim
    /// transaction. Kept by the pool maintainer and by pool changes.
    pub pooled_hashes: std::sync::RwLock<std::collections::HashSet<String>>,
    /// Wakes the pool maintainer (after a claim, a pool change).
    pub pool_wake: tokio::sync::Notify,
    /// API keys: who may call, and see what.
    pub auth: crate::auth::Auth,
    /// The SWIM Redis queues, if this server consumes them.
    pub swim: Option<std::sync::Arc<crate::compat::swim::Swim>>,
    /// SWIM's newer contract (`vmmanager:*`), if this server serves it; set by `start`.
    pub swim_v2: Option<std::sync::Arc<crate::compat::swim_v2::SwimV2>>,
    /// The declarative config file's state, if one is served.
    pub config_status: std::sync::Mutex<Option<lapse_core::wire::ConfigStatus>>,
    /// Stops and deletes recorded while the store could not write (see [`crate::deferred`]).
    pub deferred: crate::deferred::Deferred,
    /// Keeps two sweeps of one provider from running at once.
    pub sweeps: crate::sweep::SweepLocks,
    /// The routing proxy's link signer and address, once it listens (`--proxy-listen`).
    pub proxy_links: std::sync::OnceLock<std::sync::Arc<crate::proxy::LinkIssuer>>,
    /// The latest activity of environments, not yet in the store (see [`crate::activity`]).
    pub activity: crate::activity::Activity,
    /// Short names the proxy resolves to environments, and which are open without a key
    /// (set by the Classla adapter, `compat::classla`, when it runs).
    pub route_alias: std::sync::OnceLock<std::sync::Arc<dyn crate::proxy::RouteAlias>>,
    /// S3 workspaces' locks, clients and back-offs (see [`crate::workspace`]).
    pub workspaces: crate::workspace::Workspaces,
    /// Whether this server runs the background work now (see [`crate::lead`]).
    pub role: crate::lead::Role,
    /// The dashboard's sessions and live streams (see [`crate::ui`]).
    pub ui: crate::ui::UiState,
    /// Terminals open, in total and per environment (see [`crate::http::terminal`]).
    pub terminals: std::sync::Arc<crate::proxy::limits::Streams>,
    /// Wakes the webhook worker (see [`crate::webhooks`]).
    pub webhooks: crate::webhooks::Hub,
}

impl Context {
    /// A context with fresh timers, clock, metrics and pool state around what start-up made.
    pub fn new(
        store: Store,
        providers: ProviderSet,
        config: ServerConfig,
        controller_id: String,
        auth: crate::auth::Auth,
        swim: Option<std::sync::Arc<crate::compat::swim::Swim>>,
        deferred: crate::deferred::Deferred,
    ) -> Context {
        let clock = Clock::new();
        let metrics = Metrics::new();
        metrics.start_at_zero(&providers.names());
        let terminals =
            crate::proxy::limits::Streams::new(config.terminal.max_total, config.terminal.max_per_environment);
        Context {
            store,
            providers,
            timers: Timers::default(),
            clock,
            metrics,
            claim_rate: Default::default(),
            config,
            controller_id,
            pool_wake: tokio::sync::Notify::new(),
            pooled_hashes: Default::default(),
            config_status: std::sync::Mutex::new(None),
            swim,
            swim_v2: None,
            auth,
            deferred,
            sweeps: Default::default(),
            proxy_links: Default::default(),
            activity: crate::activity::Activity::new(clock),
            route_alias: Default::default(),
            workspaces: Default::default(),
            ui: Default::default(),
            role: Default::default(),
            terminals,
            webhooks: Default::default(),
        }
    }

    /// Replaces the set of pooled spec hashes.
    pub fn set_pooled_hashes(&self, hashes: impl IntoIterator<Item = String>) {
        *self.pooled_hashes.write().unwrap_or_else(|p| p.into_inner()) = hashes.into_iter().collect();
    }

    /// Whether this server reconciles `env` now (see [`crate::lead`]): on SQLite always; with
    /// replicas, an environment placed on a local provider (`placed_on`) by the replica that
    /// placed it, everything else by the leader.
    pub fn owns(&self, env: &lapse_core::model::Environment) -> bool {
        self.owns_placed(&env.spec.provider, env.placed_on.as_deref())
    }

    /// [`Context::owns`] from an environment's provider and `placed_on` alone.
    pub fn owns_placed(&self, provider: &str, placed_on: Option<&str>) -> bool {
        let Some(me) = self.store.replica_id() else { return true };
        match placed_on {
            Some(on) if self.is_local(provider) => on == me,
            _ => self.role.leading(),
        }
    }

    /// With replicas, the replica on whose host `env`'s resources are when that is another
    /// one: an environment of a local provider placed by another replica. Its `exec`, logs,
    /// terminal and claim hook can only run there.
    pub fn hosted_elsewhere<'a>(&self, env: &'a lapse_core::model::Environment) -> Option<&'a str> {
        let me = self.store.replica_id()?;
        let on = env.placed_on.as_deref()?;
        (on != me && self.is_local(&env.spec.provider)).then_some(on)
    }

    /// Whether this server sweeps `provider` now: on SQLite always; with replicas, a local
    /// provider on every replica (each its own host's), the others on the leader.
    pub fn sweeps(&self, provider: &str) -> bool {
        self.store.replica_id().is_none() || self.is_local(provider) || self.role.leading()
    }

    /// Where an environment on `provider` made here is placed: with replicas, this replica
    /// when the provider is local (its resources live on this host); else nowhere in particular.
    pub fn placement_for(&self, provider: &str) -> Option<String> {
        self.store.replica_id().filter(|_| self.is_local(provider)).map(str::to_owned)
    }

    /// Whether `provider`'s resources live on this host ([`lapse_core::wire::Capabilities::local`]).
    pub fn is_local(&self, provider: &str) -> bool {
        self.providers.get(provider).is_some_and(|p| p.capabilities().local)
    }

    /// Whether some pool has this spec hash (so a claim may succeed).
    pub fn is_pooled(&self, hash: &str) -> bool {
        self.pooled_hashes.read().unwrap_or_else(|p| p.into_inner()).contains(hash)
    }
}

//! Lapse's control plane: HTTP API, reconciler, timers, drift sweep and metrics, started by
//! [`start`]. See `ARCHITECTURE.md` at the repository root for the whole picture.
//!
//! ```text
//!  HTTP API ──> app (validate, write desired state + event) ──> store
//!                   │ enqueue(id)                                 ^
//!                   v                                             │ observed state, events
//!  timers ──> reconciler (plan → one idempotent step) ──> providers
//!                   ^
//!  drift sweep ─────┘ (corrects records, removes orphans)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use lapse_providers::process::ProcessProvider;
use lapse_store::Store;
use tokio::task::JoinHandle;

pub mod activity;
pub mod admission;
pub mod adopt;
pub mod app;
pub mod auth;
pub mod claim_hook;
pub mod claim_rate;
pub mod clock;
pub mod compat;
pub mod config;
pub mod context;
pub mod datafile;
pub mod declare;
pub mod deferred;
pub mod health;
pub mod host;
pub mod http;
pub mod lead;
pub mod metrics;
pub mod moves;
pub mod pools;
pub mod probe;
pub mod providers;
pub mod proxy;
pub mod rearm;
pub mod reconciler;
pub mod sweep;
pub mod timers;
pub mod ui;
pub mod warnings;
pub mod webhooks;
pub mod workspace;

#[cfg(test)]
mod tests;

pub use config::ServerConfig;

use crate::app::App;
use crate::context::Context;
use crate::reconciler::Reconciler;

/// A started control plane.
pub struct Running {
    pub addr: SocketAddr,
    /// The seed's own listener (`--seed-listen`), when there is one.
    pub seed_addr: Option<SocketAddr>,
    /// The routing proxy's listener (`--proxy-listen`), when there is one.
    pub proxy_addr: Option<SocketAddr>,
    /// The Classla API's listener (`--classla-listen`), when there is one.
    pub classla_addr: Option<SocketAddr>,
    pub app: App,
    shutdown: tokio::sync::watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    /// The data dir's lock, held while this server runs.
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// On PostgreSQL, why the server stopped on its own (the database was taken), once it did.
    lost: Arc<std::sync::Mutex<Option<String>>>,
}

impl Running {
    /// Serves until a shutdown is asked for, then returns.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let result = (&mut self.http).await;
        self.stop_background().await;
        if let Some(reason) = self.lost.lock().unwrap_or_else(|p| p.into_inner()).take() {
            anyhow::bail!("stopped: {reason}");
        }
        result.context("the HTTP server task failed")?.context("the HTTP server failed")
    }

    /// Stops serving. Steps in flight are abandoned exactly as a crash would abandon them;
    /// the next start finishes them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.http).await;
        self.stop_background().await;
    }

    /// A sender that stops the server when `true` is sent (for signal handlers).
    pub fn shutdown_handle(&self) -> tokio::sync::watch::Sender<bool> {
        self.shutdown.clone()
    }

    async fn stop_background(&mut self) {
        for task in self.background.drain(..) {
            task.abort();
            let _ = task.await;
        }
        // Activity held in memory is written before the store closes, unless the database
        // was taken (`lapse migrate`) while its server lock was lost.
        let lost = self.lost.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        if lost {
            tracing::warn!("the last activity is not written: the server lock is lost");
        } else if let Err(e) = self.app.cx.activity.flush(&self.app.cx).await {
            tracing::warn!(error = %e, "writing the last activity failed");
        }
        self.app.cx.store.close().await;
    }
}

/// Opens the store, sets up providers, rebuilds timers and the reconciler's queue from the
/// store, and starts serving.
pub async fn start(mut config: ServerConfig) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
    // Paths handed to environments (user data) and logged must not depend on the cwd.
    config.data_dir = config
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving the data dir {}", config.data_dir.display()))?;
    let lock = lock_data_dir(&config.data_dir)?;
    let (store, server_lock) = open_store(&config).await?;
    let controller_id = store.controller_id().await?;
    let journal = config.data_dir.join("deferred.journal");
    let deferred = deferred::Deferred::open(&journal)
        .with_context(|| format!("opening the deferred-changes journal {}", journal.display()))?;

    let tables = match &config.config_file {
        Some(path) => declare::start_tables(path)?,
        None => declare::StartTables::default(),
    };
    if let Some(prices) = tables.prices {
        config.prices = prices;
    }
    config.tiers = tables.tiers;
    if tables.webhooks_policy.as_ref().is_some_and(|p| p.allow_private) {
        config.webhooks.allow_private = true;
    }
    let declared_hooks = webhooks::declared::records(&tables.webhooks, &|k| std::env::var(k).ok())
        .map_err(|e| anyhow::anyhow!("config file: {e}"))?;
    store.set_config_webhooks(&declared_hooks).await?;
    config.provider_tables = tables.providers.clone();
    let decls = providers::table::check(&tables.providers).map_err(|errors| {
        anyhow::anyhow!(
            "config file {}: {}",
            config.config_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            errors.join("; ")
        )
    })?;
    for decl in &decls {
        if let Some(n) = decl.concurrency {
            config.concurrency.insert(decl.name.clone(), n);
        }
        if let Some(every) = decl.sweep_interval {
            config.sweep_intervals.insert(decl.name.clone(), every);
        }
    }

    let (exits, mut exited) = tokio::sync::mpsc::unbounded_channel::<String>();
    let process = ProcessProvider::new(config.data_dir.join("process"), &controller_id)
        .context("setting up the process provider")?
        .with_helper(std::env::current_exe().context("finding this program (the process provider's helper)")?)
        .with_exit_notifier(exits);
    let process = Arc::new(process);
    let vars = |name: &str| std::env::var(name).ok();
    let providers = providers::build(&config, &controller_id, process.clone(), &decls, &vars).await;
    tracing::info!(providers = ?providers.names(), "providers ready");

    let swim_config = config.swim.clone().or_else(|| tables.redis.map(compat::swim::RedisSection::into_config));
    let admin_key = config.admin_key.clone().or_else(|| tables.auth.and_then(|a| a.admin_key));
    let auth = auth::Auth::new(admin_key.as_deref(), config.rate_limit)?
        .with_unauthenticated_limit(config.unauthenticated_rate_limit);
    if !auth.enabled() && !config.listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {}: no admin key is configured, so anyone who reaches the port could do \
             anything. Set LAPSE_ADMIN_KEY (or [auth] admin_key in the config file), or listen on loopback",
            config.listen
        );
    }
    if auth.enabled() {
        tracing::info!("API keys required: every route but /healthz needs Authorization: Bearer <key>");
    } else {
        tracing::warn!("no admin key configured: single-tenant mode, no API keys checked, loopback only");
    }
    let swim = match swim_config {
        Some(mut cfg) => {
            let Some(provider) = providers.get(&cfg.provider) else {
                anyhow::bail!(
                    "the SWIM queues' provider {:?} is not on this server (it has: {}); set SWIM_PROVIDER",
                    cfg.provider,
                    providers.names().join(", ")
                );
            };
            cfg.provider_kind = Some(provider.kind().to_owned());
            if cfg.kind() == "process" && cfg.default_cmd.is_none() {
                anyhow::bail!(
                    "the SWIM queues' process environments need a command: set SWIM_PROVISION_DEFAULT_CMD \
                     (or default_cmd in the [redis] table)"
                );
            }
            Some(cfg)
        }
        None => None,
    };
    // The newer contract beside (or instead of) the older one, on the same Redis.
    let swim_v2 = match swim.as_ref().filter(|cfg| cfg.v2.is_some()) {
        Some(cfg) => {
            let v2 = compat::swim_v2::SwimV2::new(cfg)?;
            let life = std::time::Duration::from_secs(v2.config.ttl_minutes.saturating_mul(60));
            if life > config.max_ttl {
                anyhow::bail!(
                    "DEFAULT_TTL_MINUTES {} is above this server's longest TTL ({} minutes)",
                    v2.config.ttl_minutes,
                    config.max_ttl.as_secs() / 60
                );
            }
            Some(Arc::new(v2))
        }
        None => None,
    };
    let swim = match swim.filter(|cfg| cfg.v1) {
        Some(cfg) => Some(Arc::new(compat::swim::Swim::new(cfg)?)),
        None => None,
    };

    let mut cx = Context::new(store, providers, config, controller_id, auth, swim, deferred);
    cx.swim_v2 = swim_v2.clone();
    let cx = Arc::new(cx);
    let reconciler = Reconciler::new(cx.clone());
    // On PostgreSQL this replica follows until it takes the lead (see `lead`).
    let replicas = cx.store.has_replicas();
    if replicas {
        cx.role.follow();
    }
    // Stops and deletes made while the disk was full, before a crash: into the store first.
    if !cx.deferred.is_empty() {
        let left = deferred::flush(&cx).await;
        tracing::info!(left, "deferred changes from the journal written to the store");
    }

    // Applied before anything runs: a bad file at start is an error to fix now (at reload it
    // keeps the last good state). What it writes is queued for the reconciler.
    let app = App::new(cx.clone(), reconciler.clone());
    if let Some(path) = &cx.config.config_file
        && let Err(errors) = declare::reload(&app, path).await
    {
        let text = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ");
        anyhow::bail!("config file {} refused:\n  {text}", path.display());
    }

    // The store is the truth: timers and queue are rebuilt from it (with replicas, each
    // step does nothing for what another replica owns).
    let rebuilt = lead::rebuild(&cx, &reconciler).await?;
    tracing::info!(
        controller = %cx.controller_id,
        replica = ?cx.store.replica_id(),
        providers = ?cx.providers.names(),
        timers = rebuilt.timers,
        unconverged = rebuilt.unconverged,
        "state rebuilt from the store"
    );
    let leader_work = leader_work(&app, swim_v2.clone());
    let mut background = vec![
        tokio::spawn({
            let r = reconciler.clone();
            async move { r.run().await }
        }),
        tokio::spawn({
            let (timers, clock, r) = (cx.timers.clone(), cx.clock, reconciler.clone());
            async move { timers.run(clock, move |id| r.enqueue(&id)).await }
        }),
        tokio::spawn(sweep::run(cx.clone(), reconciler.clone())),
        tokio::spawn(probe::run(cx.clone(), reconciler.clone())),
    ];
    if replicas {
        tracing::info!("following: the replica that leads runs the leader's work (see `lapse status --server`)");
        background.push(tokio::spawn(lead::run(cx.clone(), reconciler.clone(), leader_work)));
        background.push(tokio::spawn(lead::follow_remote(cx.clone(), reconciler.clone())));
        background.push(tokio::spawn(lead::follower_upkeep(cx.clone())));
    } else {
        background.extend(leader_work());
    }
    // Every replica: its deferred journal, the activity it saw, its processes, its config file.
    background.push(tokio::spawn(deferred::run(cx.clone(), reconciler.clone())));
    background.push(tokio::spawn(activity::run_flusher(cx.clone())));
    background.push(tokio::spawn({
        let (cx, r) = (cx.clone(), reconciler.clone());
        // A process this server started exited: look at it now, not at the next sweep.
        async move {
            while let Some(id) = exited.recv().await {
                let (cx, r, process) = (cx.clone(), r.clone(), process.clone());
                tokio::spawn(async move {
                    // A quick exit can beat the step that records it running: let that finish.
                    for _ in 0..250 {
                        if !r.is_busy(&id) {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    if let Err(e) = sweep::check_one(&cx, &r, process.as_ref(), &id).await {
                        tracing::warn!(environment = %id, error = %e, "checking an exited process failed; the sweep will");
                    }
                });
            }
        }
    }));

    if let Some(path) = cx.config.config_file.clone() {
        background.push(tokio::spawn(declare::watch(app.clone(), path, cx.config.config_poll)));
    }
    let mut limits = cx.config.connections;
    match http::listener::raise_fd_limit() {
        Ok((before, now)) => {
            limits.max_connections = http::listener::effective_max_connections(limits.max_connections, now);
            tracing::info!(
                soft_before = before,
                soft_now = now,
                max_connections = limits.max_connections,
                "file descriptor limit (RLIMIT_NOFILE) raised to the hard limit"
            );
        }
        Err(e) => tracing::warn!(error = %e, "reading or raising the file descriptor limit failed"),
    }
    let listener = tokio::net::TcpListener::bind(cx.config.listen)
        .await
        .with_context(|| format!("listening on {}", cx.config.listen))?;
    let addr = listener.local_addr()?;
    let (shutdown, stopped) = tokio::sync::watch::channel(false);
    let router = http::router(app.clone());
    let seed_addr = match cx.config.seed_listen {
        Some(seed_listen) => {
            let seed = tokio::net::TcpListener::bind(seed_listen)
                .await
                .with_context(|| format!("listening on {seed_listen} (--seed-listen)"))?;
            let seed_addr = seed.local_addr()?;
            let router = compat::fc::seed_router(app.clone());
            let stopped = stopped.clone();
            background.push(tokio::spawn(async move {
                if let Err(e) = http::listener::serve(seed, router, limits, stopped).await {
                    tracing::error!(error = %e, "the seed listener failed");
                }
            }));
            tracing::warn!(
                %seed_addr,
                "serving the seed's /vms and /stats without keys on seed_addr: whoever reaches it can create and delete VMs of any tenant"
            );
            Some(seed_addr)
        }
        None => None,
    };
    let classla_addr = match cx.config.classla.clone() {
        Some(settings) => {
            // `HeadBucket` through the S3 client; a build without it checks names only.
            #[cfg(feature = "s3")]
            let check: Arc<dyn compat::classla::bucket::BucketCheck> = Arc::new(compat::classla::bucket::S3Check);
            #[cfg(not(feature = "s3"))]
            let check: Arc<dyn compat::classla::bucket::BucketCheck> =
                Arc::new(compat::classla::bucket::NoCheck::default());
            let router = compat::classla::start(&app, settings.config, check).await?;
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("listening on {} (--classla-listen)", settings.listen))?;
            let classla_addr = listener.local_addr()?;
            let stopped = stopped.clone();
            background.push(tokio::spawn(async move {
                if let Err(e) = http::listener::serve(listener, router, limits, stopped).await {
                    tracing::error!(error = %e, "the Classla listener failed");
                }
            }));
            tracing::info!(%classla_addr, "serving the Classla API");
            Some(classla_addr)
        }
        None => None,
    };
    let proxy_addr = match cx.config.proxy.clone() {
        Some(proxy) => {
            if !cx.auth.enabled() && !proxy.listen.ip().is_loopback() {
                anyhow::bail!(
                    "refusing to serve the proxy on {}: no admin key is configured, so anyone who reaches it could \
                     reach every environment. Set an admin key, or listen on loopback",
                    proxy.listen
                );
            }
            // Idle stop consumes the activity; until then it goes nowhere.
            let started = proxy::start(app.clone(), proxy, Arc::new(app.cx.activity.clone()), stopped.clone()).await?;
            background.push(started.task);
            Some(started.addr)
        }
        None => None,
    };
    let http = tokio::spawn(http::listener::serve(listener, router, limits, stopped));
    tracing::info!(%addr, data_dir = %cx.config.data_dir.display(), "lapse is serving");
    let lost = Arc::new(std::sync::Mutex::new(None));
    if let Some(held) = server_lock {
        background.push(tokio::spawn(keep_server_lock(cx.clone(), held, lost.clone(), shutdown.clone())));
    }
    Ok(Running { addr, seed_addr, proxy_addr, classla_addr, app, shutdown, http, background, _lock: lock, lost })
}

/// The work that runs once, on the server that leads (see [`lead`]): started once on SQLite,
/// and on PostgreSQL each time this replica takes the lead (the handles are aborted when it
/// is lost).
fn leader_work(app: &App, swim_v2: Option<Arc<compat::swim_v2::SwimV2>>) -> lead::Spawn {
    let app = app.clone();
    Arc::new(move || {
        let (cx, reconciler) = (app.cx.clone(), app.reconciler.clone());
        let mut tasks = vec![
            tokio::spawn(moves::run(cx.clone(), reconciler.clone())),
            tokio::spawn(pools::run(cx.clone(), reconciler.clone())),
            tokio::spawn(webhooks::worker::run(cx.clone())),
        ];
        #[cfg(feature = "s3")]
        tasks.push(tokio::spawn(workspace::run(cx.clone())));
        if let Some(swim) = cx.swim.clone() {
            tracing::info!(
                redis = %swim.config.shown_url(),
                provision = %swim.config.provision_queue(),
                decommission = %swim.config.decommission_queue(),
                provider = %swim.config.provider,
                "consuming the SWIM queues"
            );
            tasks.push(tokio::spawn(compat::swim::cache::run(app.clone(), swim.clone(), cx.store.subscribe())));
            for queue in &swim.queues {
                tasks.push(tokio::spawn(compat::swim::consumer::run(app.clone(), swim.clone(), queue.clone())));
            }
        }
        if let Some(v2) = &swim_v2 {
            tasks.extend(v2.spawn(&app));
        }
        tasks
    })
}

/// The store the config names (SQLite by default), and on PostgreSQL the server lock every
/// replica holds shared.
async fn open_store(config: &ServerConfig) -> anyhow::Result<(Store, Option<lapse_store::pg::HeldLock>)> {
    if let Some(url) = &config.postgres {
        let replica = datafile::replica_id(&config.data_dir)?;
        let store = Store::connect_postgres_as(url, &replica).await?;
        let held = store.hold_server_lock().await?;
        tracing::info!(replica = ?store.replica_id(), "the store is on PostgreSQL");
        return Ok((store, held));
    }
    let db = config.database.clone().unwrap_or_else(|| config.data_dir.join("lapse.db"));
    let store = Store::open(&db).await.with_context(|| format!("opening the store at {}", db.display()))?;
    Ok((store, None))
}

/// Holds the shared server lock: when its connection is lost (the database restarted), takes
/// it again; if what holds the database alone (`lapse migrate`) has it meanwhile, stops the
/// server at once.
async fn keep_server_lock(
    cx: Arc<Context>,
    mut held: lapse_store::pg::HeldLock,
    lost: Arc<std::sync::Mutex<Option<String>>>,
    shutdown: tokio::sync::watch::Sender<bool>,
) {
    loop {
        let reason = held.lost().await;
        tracing::warn!(%reason, "the PostgreSQL server lock's connection is lost: taking it again");
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            match cx.store.hold_server_lock().await {
                Ok(Some(again)) => {
                    tracing::info!("the PostgreSQL server lock is held again");
                    held = again;
                    break;
                }
                Ok(None) => return,
                Err(lapse_store::pg::PgError::Taken) => {
                    let reason = "the database was taken by lapse migrate while the server lock was lost".to_owned();
                    tracing::error!(%reason, "stopping");
                    *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                    let _ = shutdown.send(true);
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "taking the server lock again failed; retrying"),
            }
        }
    }
}

/// One server per data dir: two reconcilers on one store would fight over every environment.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = dir.join("lapse.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        anyhow::anyhow!(
            "another `lapse serve` is using the data dir {} ({errno}); give this one its own --data-dir",
            dir.display()
        )
    })
}

//! In-process tests of the control plane with paused time: a real [`Context`] on a temp-dir
//! SQLite store, the reconciler and timer loops running, test providers in place of real
//! backends, and no HTTP.
//!
//! **Time moves only when a test moves it.** sqlx's SQLite connections are real threads;
//! with paused time tokio advances its clock to the next timer whenever the runtime waits on
//! one of them, so a lease could run out in the middle of a create, at a moment no test
//! chose. [`Harness::start`] therefore holds a blocking task for the harness's life (a
//! `spawn_blocking` task stops a current-thread runtime's paused clock from auto-advancing),
//! and tests move the clock with [`tokio::time::advance`] alone. Waiting for the store or the
//! reconciler is done in real time ([`eventually`], [`Harness::settle`]), never with a
//! tokio sleep, so waiting cannot move the clock either.
//!
//! An `expect` here marks a step whose failure is the test's failure (a store that does not
//! open, a create that is refused); it is never a guess that something cannot fail.
//!
//! Modules: [`gated`] (a provider that blocks provisions until a test opens its gate),
//! `replace_in_flight` (issue 9 item 4), `expiry_burst` (issue 9 item 9's expiry figure).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapse_providers::ProviderSet;
use lapse_store::Store;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::{DockerSetting, ServerConfig};
use crate::context::Context;
use crate::reconciler::Reconciler;

mod classla;
mod expiry_burst;
pub(crate) mod gated;
mod health;
mod idle;
mod prices;
pub(crate) mod probed;
mod rearm;
mod replace_in_flight;
mod sweep;

/// How long, in real time, a test waits for something before it fails.
const REAL_TIMEOUT: Duration = Duration::from_secs(120);

/// A control plane without HTTP: the reconciler and the timers run; the sweep, the pool
/// maintainer and the config watcher do not (no test here needs them, and each would add
/// timers of its own).
pub(crate) struct Harness {
    pub app: App,
    tasks: Vec<JoinHandle<()>>,
    _time: TimeHold,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Starts a control plane with `providers` and the defaults changed by `configure`.
    pub async fn start(providers: ProviderSet, configure: impl FnOnce(&mut ServerConfig)) -> Harness {
        // First, before anything can set a timer.
        let time = TimeHold::take();
        // A temp dir cannot fail to be made on a test machine; if it does, nothing here can run.
        let dir = tempfile::tempdir().expect("a temp dir for the store");
        let mut config = ServerConfig::new(dir.path());
        config.docker = DockerSetting::Off;
        config.host_memory_limit = None;
        config.host_disk_limit = None;
        configure(&mut config);
        let store = Store::open(&dir.path().join("lapse.db")).await.expect("opening a fresh store");
        let controller_id = store.controller_id().await.expect("the store's controller id");
        let deferred = crate::deferred::Deferred::open(&dir.path().join("deferred.journal"))
            .expect("opening a fresh deferred journal");
        let auth = crate::auth::Auth::new(None, None).expect("auth without keys");
        let cx = Arc::new(Context::new(store, providers, config, controller_id, auth, None, deferred));
        let reconciler = Reconciler::new(cx.clone());
        let app = App::new(cx.clone(), reconciler.clone());
        let tasks = vec![
            tokio::spawn({
                let r = reconciler.clone();
                async move { r.run().await }
            }),
            tokio::spawn({
                let (timers, clock, r) = (cx.timers.clone(), cx.clock, reconciler);
                async move { timers.run(clock, move |id| r.enqueue(&id)).await }
            }),
        ];
        Harness { app, tasks, _time: time, _dir: dir }
    }

    pub fn cx(&self) -> &Context {
        &self.app.cx
    }

    /// Waits (in real time) until the reconciler has nothing queued or running, as seen on
    /// several looks in a row: everything due at the current (frozen) instant is done.
    pub async fn settle(&self) {
        let mut idle_looks = 0;
        eventually("the reconciler to settle", || {
            idle_looks = if self.app.reconciler.backlog() == 0 { idle_looks + 1 } else { 0 };
            let settled = idle_looks >= 3;
            async move { settled.then_some(()) }
        })
        .await;
    }

    /// The environment's row, which must exist.
    pub async fn env(&self, id: &str) -> lapse_core::model::Environment {
        self.cx().store.get(id).await.expect("reading the store").expect("the environment exists")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Keeps the paused clock from auto-advancing while it lives (see the module doc).
struct TimeHold {
    /// Dropping it ends the blocking task, which lets the clock auto-advance again.
    _release: std::sync::mpsc::Sender<()>,
}

impl TimeHold {
    fn take() -> TimeHold {
        let (release, released) = std::sync::mpsc::channel::<()>();
        // Returns when the sender is dropped; nothing is ever sent.
        tokio::task::spawn_blocking(move || while released.recv().is_ok() {});
        TimeHold { _release: release }
    }
}

/// Sleeps in real time without letting the paused clock move (a blocking task holds it).
pub(crate) async fn real_sleep(duration: Duration) {
    // The closure only sleeps: it cannot panic, so the join cannot fail.
    tokio::task::spawn_blocking(move || std::thread::sleep(duration)).await.expect("a sleeping blocking task");
}

/// Polls `check` every few real milliseconds until it yields a value; fails the test after
/// [`REAL_TIMEOUT`] of real time, naming `what`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < REAL_TIMEOUT, "timed out after {REAL_TIMEOUT:?} (real time) waiting for {what}");
        real_sleep(Duration::from_millis(2)).await;
    }
}

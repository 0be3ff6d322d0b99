//! Issue 11 items 1 and 6: the sweep's plan and its application are one code path (a dry run
//! shows what the real sweep then does, and changes nothing); `lapse:keep` is never touched;
//! each provider is swept on its own interval.
//!
//! [`Held`] is a provider whose resources the test sets directly, which counts its `list`
//! calls and records every call that changes something.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lapse_core::model::{Lifecycle, NO_TENANT, ObservedState, OnExpiry, Spec, new_environment_id};
use lapse_core::validate::FieldError;
use lapse_providers::{Instance, InstanceStatus, Placement, Provider, ProviderError, ProviderSet};
use lapse_store::EventFilter;

use super::{Harness, eventually};
use crate::app::Job;
use crate::sweep::{self, Outcome};

/// A provider whose resources are what the test puts in `held`.
struct Held {
    name: &'static str,
    held: Mutex<BTreeMap<String, Instance>>,
    lists: AtomicUsize,
    /// `list` waits while this is `false` (a slow cloud).
    answering: tokio::sync::watch::Sender<bool>,
    /// `delete`, `stop`, `ensure_running` and `collect_garbage` calls, in order.
    changes: Mutex<Vec<String>>,
}

impl Held {
    fn new(name: &'static str) -> Arc<Held> {
        Arc::new(Held {
            name,
            held: Mutex::default(),
            lists: AtomicUsize::new(0),
            answering: tokio::sync::watch::Sender::new(true),
            changes: Mutex::default(),
        })
    }

    fn put(&self, id: &str, status: InstanceStatus, keep: bool) {
        let instance = Instance {
            environment_id: id.to_owned(),
            provider_ref: format!("ref-{id}"),
            status,
            endpoints: vec![],
            addresses: vec![],
            exit_code: (status == InstanceStatus::Stopped).then_some(3),
            user_data_path: None,
            exit_reason: None,
            keep,
        };
        self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), instance);
    }

    fn remove(&self, id: &str) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    fn holds(&self, id: &str) -> bool {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id)
    }

    fn changes(&self) -> Vec<String> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, change: String) {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).push(change);
    }
}

#[async_trait]
impl Provider for Held {
    fn name(&self) -> &'static str {
        self.name
    }

    fn validate(&self, _spec: &Spec) -> Result<(), FieldError> {
        Ok(())
    }

    async fn health(&self) -> Result<String, ProviderError> {
        Ok("held test provider".into())
    }

    async fn ensure_running(&self, id: &str, _p: &Placement, _spec: &Spec) -> Result<Instance, ProviderError> {
        self.record(format!("ensure_running {id}"));
        self.put(id, InstanceStatus::Running, false);
        Ok(self.held.lock().unwrap_or_else(|p| p.into_inner())[id].clone())
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), ProviderError> {
        self.record(format!("stop {id}"));
        self.put(id, InstanceStatus::Stopped, false);
        Ok(())
    }

    async fn delete(&self, id: &str, _grace: Duration) -> Result<(), ProviderError> {
        self.record(format!("delete {id}"));
        self.remove(id);
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(self.held.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned())
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = self.answering.subscribe().wait_for(|answering| *answering).await;
        Ok(self.held.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect())
    }

    async fn collect_garbage(&self) -> Result<usize, ProviderError> {
        self.record("collect_garbage".into());
        Ok(0)
    }
}

fn job(job_id: &str, provider: &str, labels: &[(&str, &str)]) -> Job {
    Job {
        job_id: job_id.to_owned(),
        name: None,
        tenant: NO_TENANT.to_owned(),
        spec: Spec { provider: provider.into(), cmd: vec!["run".into()], ..Default::default() },
        lifecycle: Lifecycle::Service,
        max_retries: 0,
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ttl: None,
        on_expiry: OnExpiry::Stop,
        idle_timeout: None,
        on_idle: Default::default(),
        warn_before: Vec::new(),
        source: "test".into(),
        seed_spec: None,
        make_tenant: false,
    }
}

async fn start(providers: &[Arc<Held>], configure: impl FnOnce(&mut crate::config::ServerConfig)) -> Harness {
    let mut set = ProviderSet::default();
    for p in providers {
        set.insert(p.clone());
    }
    Harness::start(set, configure).await
}

/// A running environment of `held`, with these labels.
async fn running(h: &Harness, job_id: &str, labels: &[(&str, &str)]) -> String {
    let id = h.app.upsert_job(job(job_id, "held", labels), "test").await.expect("creating the job").env.id;
    h.settle().await;
    assert_eq!(h.env(&id).await.observed, ObservedState::Running);
    id
}

async fn event_count(h: &Harness) -> usize {
    let filter = EventFilter { limit: 10_000, ..Default::default() };
    h.cx().store.events(&filter).await.expect("reading events").len()
}

/// What a plan says, as `(action, environment)` pairs in its order.
fn words(plan: &sweep::Plan) -> Vec<(&'static str, String)> {
    plan.actions.iter().map(|p| (p.action.word(), p.environment_id.clone())).collect()
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_plans_what_the_sweep_then_does_and_changes_nothing() {
    let held = Held::new("held");
    let h = start(std::slice::from_ref(&held), |_| {}).await;
    let vanished = running(&h, "vanished", &[]).await;
    let settling = running(&h, "settling", &[]).await;
    let (orphan, kept) = (new_environment_id(), new_environment_id());
    held.put(&orphan, InstanceStatus::Running, false);
    held.put(&kept, InstanceStatus::Running, true);
    held.remove(&vanished);
    held.put(&settling, InstanceStatus::Stopping, false);
    let before = (event_count(&h).await, h.env(&vanished).await, held.changes());
    let r = &h.app.reconciler;

    let (plan, outcomes) = sweep::sweep_now(h.cx(), r, held.as_ref(), true).await.expect("a dry run");
    assert!(outcomes.is_none());
    let mut expected = vec![
        ("remove_orphan", orphan.clone()),
        ("keep", kept.clone()),
        ("provision_again", vanished.clone()),
        ("transitional", settling.clone()),
    ];
    let mut planned = words(&plan);
    planned.sort();
    expected.sort();
    assert_eq!(planned, expected);
    // Nothing changed: no event, no row, no provider call but list and inspect.
    assert_eq!((event_count(&h).await, h.env(&vanished).await, held.changes()), before);
    assert!(held.holds(&orphan) && held.holds(&kept));

    // The real sweep plans the same and applies it.
    let (applied, outcomes) = sweep::sweep_now(h.cx(), r, held.as_ref(), false).await.expect("a sweep");
    assert_eq!(applied, plan, "one code path: the dry run's plan is the real sweep's");
    let outcomes = outcomes.expect("a real sweep has outcomes");
    for (p, o) in applied.actions.iter().zip(&outcomes) {
        let expect =
            if matches!(p.action.word(), "keep" | "transitional") { Outcome::LeftAlone } else { Outcome::Done };
        assert_eq!(*o, expect, "{p:?}");
    }
    assert!(!held.holds(&orphan), "the orphan is removed");
    assert!(held.holds(&kept), "the kept resource is not");
    assert!(!held.changes().iter().any(|c| c.contains(&kept)), "nothing was asked of the kept one");
    let events = h.cx().store.events(&EventFilter { limit: 100, ..Default::default() }).await.expect("events");
    assert!(events.iter().any(|e| e.environment_id.as_deref() == Some(orphan.as_str()) && e.action == "remove_orphan"));
    h.settle().await;
    assert!(held.holds(&vanished), "the vanished environment was provisioned again");
    assert_eq!(h.env(&vanished).await.observed, ObservedState::Running);
}

#[tokio::test(start_paused = true)]
async fn a_record_labelled_lapse_keep_is_neither_corrected_nor_removed() {
    let held = Held::new("held");
    let h = start(std::slice::from_ref(&held), |_| {}).await;
    let exited = running(&h, "exited", &[("lapse.keep", "true")]).await;
    held.put(&exited, InstanceStatus::Stopped, false);
    let before = h.env(&exited).await;
    let r = &h.app.reconciler;
    let (plan, _) = sweep::sweep_now(h.cx(), r, held.as_ref(), false).await.expect("a sweep");
    assert_eq!(words(&plan), [("keep", exited.clone())]);
    assert_eq!(h.env(&exited).await, before, "the record is left as it was");
    // The exit watcher's path keeps to the same rule.
    assert_eq!(sweep::check_one(h.cx(), r, held.as_ref(), &exited).await.expect("check_one"), None);
    assert_eq!(h.env(&exited).await, before);
}

#[tokio::test(start_paused = true)]
async fn each_provider_is_swept_on_its_own_interval_and_a_slow_list_delays_no_other() {
    let (fast, slow) = (Held::new("held"), Held::new("slow"));
    // The slow cloud's first `list` does not answer until the test says so.
    slow.answering.send_replace(false);
    let h = start(&[fast.clone(), slow.clone()], |c| {
        c.sweep_interval = Duration::from_secs(10);
        c.sweep_intervals.insert("slow".into(), Duration::from_secs(60));
    })
    .await;
    let cx = h.app.cx.clone();
    let task = tokio::spawn(sweep::run(cx, h.app.reconciler.clone()));
    // Both sweep once at start.
    let counts = || (fast.lists.load(Ordering::SeqCst), slow.lists.load(Ordering::SeqCst));
    eventually("the first sweeps", || {
        let seen = counts();
        async move { (seen == (1, 1)).then_some(()) }
    })
    .await;
    for n in 2..=6 {
        tokio::time::advance(Duration::from_secs(10)).await;
        eventually(&format!("sweep {n} of the fast provider"), || {
            let seen = counts().0;
            async move { (seen == n).then_some(()) }
        })
        .await;
    }
    assert_eq!(counts(), (6, 1), "50 s in: the fast provider swept every 10 s while the slow one's list hung");
    slow.answering.send_replace(true);
    tokio::time::advance(Duration::from_secs(10)).await;
    eventually("the slow provider's second sweep", || {
        let seen = counts().1;
        async move { (seen == 2).then_some(()) }
    })
    .await;
    eventually("the fast provider's seventh sweep", || {
        let seen = counts().0;
        async move { (seen == 7).then_some(()) }
    })
    .await;
    task.abort();
}

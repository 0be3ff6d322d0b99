//! Issue 9 item 4: the reconciler loses no change. A spec replaced (`App::upsert_job`, as
//! `POST /vms` and config reloads do) while a provision is in flight is applied: the step
//! provisions from the row its intent write returned, and clears `replace` only if the spec it
//! provisioned is still the row's.
//!
//! Both tests hold the provision at a point of the reconciler's step with the [`Gated`]
//! provider and replace the spec there; time is frozen throughout (see `tests/mod.rs`).

use std::sync::Arc;

use lapse_core::model::{Lifecycle, NO_TENANT, ObservedState, OnExpiry, Spec};
use lapse_providers::ProviderSet;

use super::gated::{self, Call, Gated};
use super::{Harness, eventually};
use crate::app::Job;

fn job(job_id: &str, cmd: &str) -> Job {
    Job {
        job_id: job_id.to_owned(),
        name: None,
        tenant: NO_TENANT.to_owned(),
        spec: Spec { provider: gated::NAME.into(), cmd: vec![cmd.to_owned()], ..Default::default() },
        lifecycle: Lifecycle::Lease,
        max_retries: 0,
        labels: Default::default(),
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

fn provision(id: &str, cmd: &str) -> Call {
    Call::Provision { id: id.to_owned(), cmd: vec![cmd.to_owned()] }
}

async fn start(gated: &Arc<Gated>, concurrency: usize) -> Harness {
    let mut providers = ProviderSet::default();
    providers.insert(gated.clone());
    Harness::start(providers, |config| {
        config.concurrency.insert(gated::NAME.into(), concurrency);
    })
    .await
}

/// Waits until the provider has been asked to provision `id` at least once.
async fn provision_in_flight(gated: &Gated, id: &str) {
    eventually(&format!("a provision of {id} to reach the provider"), || {
        let asked = gated.calls_of(id).iter().any(|c| matches!(c, Call::Provision { .. }));
        async move { asked.then_some(()) }
    })
    .await;
}

/// (a) The spec is replaced while `ensure_running` of the old one is blocked in the provider:
/// when it returns, the step records `running` but keeps `replace`, and the next step
/// replaces the old resource with the new spec.
#[tokio::test(start_paused = true)]
async fn a_spec_replaced_during_the_provider_call_is_provisioned_after_it() {
    let gated = Arc::new(Gated::new());
    let h = start(&gated, 8).await;
    let id = h.app.upsert_job(job("a", "old"), "vms").await.expect("creating the job").env.id;
    provision_in_flight(&gated, &id).await;
    assert_eq!(h.env(&id).await.observed, ObservedState::Provisioning);

    let replaced = h.app.upsert_job(job("a", "new"), "vms").await.expect("replacing the spec").env;
    assert!(replaced.replace, "a spec replaced while provisioning must be marked for replacement");
    gated.open();
    h.settle().await;

    assert_eq!(
        gated.calls_of(&id),
        [provision(&id, "old"), Call::Delete { id: id.clone() }, provision(&id, "new")],
        "the provider must see the old spec, then the old resource removed and the new spec provisioned"
    );
    let env = h.env(&id).await;
    assert_eq!(env.observed, ObservedState::Running);
    assert_eq!(env.spec.cmd, ["new"]);
    assert!(!env.replace, "replace must be cleared once the row's spec is the one provisioned");
}

/// (b) The spec is replaced after the step read the row but before it wrote its intent: the
/// provider's only slot is held by another environment's blocked provision, so the step
/// waits for it between the two. It must provision the new spec, and never the old one.
///
/// The test sees "the step read the row and waits for the slot" by counting handles to the
/// provider: the reconciler clones its `Arc` for a provider step after reading the row and
/// before it waits for a slot, and nothing else in this harness holds one. (If that order
/// changes, this test times out; it cannot pass without the window it means to test.)
#[tokio::test(start_paused = true)]
async fn a_spec_replaced_before_the_intent_write_is_the_one_provisioned() {
    let gated = Arc::new(Gated::new());
    let h = start(&gated, 1).await;
    // The provider set's handle and ours.
    let idle_handles = Arc::strong_count(&gated);

    let holder = h.app.upsert_job(job("holder", "holder"), "vms").await.expect("creating the holder").env.id;
    provision_in_flight(&gated, &holder).await;
    assert_eq!(Arc::strong_count(&gated), idle_handles + 1, "the holder's step holds the provider");

    let id = h.app.upsert_job(job("a", "old"), "vms").await.expect("creating the job").env.id;
    eventually("the job's step to read its row and wait for the provider's slot", || {
        let waiting = Arc::strong_count(&gated) == idle_handles + 2;
        async move { waiting.then_some(()) }
    })
    .await;
    assert_eq!(h.env(&id).await.observed, ObservedState::Pending, "the step has not written its intent yet");
    assert!(gated.calls_of(&id).is_empty());

    let replaced = h.app.upsert_job(job("a", "new"), "vms").await.expect("replacing the spec").env;
    assert_eq!(replaced.spec.cmd, ["new"]);
    gated.open();
    h.settle().await;

    assert_eq!(gated.calls_of(&id), [provision(&id, "new")], "only the new spec may reach the provider");
    let env = h.env(&id).await;
    assert_eq!(env.observed, ObservedState::Running);
    assert_eq!(env.spec.cmd, ["new"]);
    assert!(!env.replace);
    assert_eq!(h.env(&holder).await.observed, ObservedState::Running);
}

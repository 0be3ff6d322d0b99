//! Issue 11 item 9: cloud environments accrue at their provider's price for their instance
//! type (`[prices.NAME]`), the provider's default type when the spec names none, the table's
//! `default` for a type it lacks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lapse_core::cost::{CloudPrices, Prices};
use lapse_core::model::{CloudSpec, Lifecycle, NO_TENANT, ObservedState, OnExpiry, Spec};
use lapse_providers::ProviderSet;

use super::Harness;
use super::gated::{self, Gated};
use crate::app::Job;

fn job(job_id: &str, instance_type: Option<&str>) -> Job {
    let cloud = CloudSpec { instance_type: instance_type.map(str::to_owned), ..Default::default() };
    Job {
        job_id: job_id.to_owned(),
        name: None,
        tenant: NO_TENANT.to_owned(),
        spec: Spec { provider: gated::NAME.into(), cloud: Some(cloud), ..Default::default() },
        lifecycle: Lifecycle::Service,
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

#[tokio::test(start_paused = true)]
async fn a_cloud_environment_accrues_at_its_instance_types_price() {
    let gated = Arc::new(Gated::new());
    gated.open();
    let mut providers = ProviderSet::default();
    providers.insert(gated.clone());
    let h = Harness::start(providers, |c| {
        c.prices = Prices {
            vcpu_hour: 100.0,
            clouds: BTreeMap::from([(
                gated::NAME.to_owned(),
                CloudPrices { default: Some(0.5), instance_types: BTreeMap::from([("big".to_owned(), 2.0)]) },
            )]),
            ..Default::default()
        };
    })
    .await;
    let from = h.cx().clock.now();
    let big = h.app.upsert_job(job("big", Some("big")), "test").await.expect("creating").env.id;
    let other = h.app.upsert_job(job("other", Some("unlisted")), "test").await.expect("creating").env.id;
    h.settle().await;
    assert_eq!(h.env(&big).await.observed, ObservedState::Running);
    tokio::time::advance(Duration::from_secs(3600)).await;
    let usage = h.app.usage(None, from, h.cx().clock.now()).await.expect("usage");
    let of = |id: &str| usage.environments.iter().find(|e| e.id == id).cloned().expect("in the usage");
    assert_eq!(of(&big).hourly, 2.0, "its type's price");
    assert!((of(&big).cost - 2.0).abs() < 1e-3, "{:?}", of(&big));
    assert_eq!(of(&other).hourly, 0.5, "a type the table lacks costs the table's default");
    let tenant = usage.tenants.iter().find(|t| t.tenant.is_empty()).expect("the operator's usage");
    assert!((tenant.cost - 2.5).abs() < 1e-3, "{tenant:?}");
}

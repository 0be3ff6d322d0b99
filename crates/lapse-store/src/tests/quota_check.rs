//! A tenant's quota check (migration 0010) and the in-transaction check it selects.

use lapse_core::model::{Resources, Spec};
use lapse_core::quota::{Quota, QuotaCheck};

use crate::{NewEvent, Store, TenantRecord};
use lapse_core::model::Environment;

fn four_vcpu(n: u8, tenant: &str) -> Environment {
    let spec = Spec {
        provider: "sim".into(),
        resources: Some(Resources { vcpu: Some(4.0), mem_mb: Some(1024), disk_gb: None }),
        ..Default::default()
    };
    let mut e = Environment::new(format!("{n:032x}"), "ada".into(), spec, 1);
    e.tenant = tenant.to_owned();
    e
}

on_both!(the_quota_check_is_a_tenant_column_and_selects_the_in_transaction_check);

async fn the_quota_check_is_a_tenant_column_and_selects_the_in_transaction_check(store: Store) {
    let record = |name: &str| TenantRecord {
        name: name.into(),
        tier: "pro".into(),
        quota: serde_json::json!({}),
        quota_check: "summed".into(),
        created_at: 1,
    };
    for name in ["each", "sum"] {
        assert!(
            store
                .create_tenant(&record(name), NewEvent::of_tenant(name, "t", "create_tenant", "ok", ""))
                .await
                .unwrap()
        );
    }
    assert_eq!(store.tenant("each").await.unwrap().unwrap().quota_check, "summed", "the default");
    let event = NewEvent::of_tenant("each", "t", "update_tenant", "ok", "per_request");
    let updated = store.set_quota_check("each", "per_request", event).await.unwrap().unwrap();
    assert_eq!(updated.quota_check, "per_request");
    assert_eq!(store.tenant("each").await.unwrap().unwrap(), updated);
    let event = NewEvent::of_tenant("nobody", "t", "update_tenant", "ok", "");
    assert_eq!(store.set_quota_check("nobody", "per_request", event).await.unwrap(), None);

    let pro = Quota::tier("pro").unwrap();
    let per_request = Quota { check: QuotaCheck::PerRequest, ..pro.clone() };
    for n in 0..3 {
        let env = four_vcpu(n, "each");
        store.insert_admitted(&env, NewEvent::new(&env.id, "t", "create", "ok", ""), &per_request).await.unwrap();
    }
    let fourth = four_vcpu(3, "each");
    let refused =
        store.insert_admitted(&fourth, NewEvent::new(&fourth.id, "t", "create", "ok", ""), &per_request).await;
    assert!(matches!(refused, Err(crate::StoreError::Refused(m)) if m.contains("environments 3 of 3")));
    let first = four_vcpu(10, "sum");
    store.insert_admitted(&first, NewEvent::new(&first.id, "t", "create", "ok", ""), &pro).await.unwrap();
    let second = four_vcpu(11, "sum");
    let refused = store.insert_admitted(&second, NewEvent::new(&second.id, "t", "create", "ok", ""), &pro).await;
    assert!(matches!(refused, Err(crate::StoreError::Refused(m)) if m.starts_with("quota: vcpu 4 of 4")));
    assert_eq!(store.get(&second.id).await.unwrap(), None, "nothing written");
}

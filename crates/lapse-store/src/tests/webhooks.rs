//! The webhook outbox: cursors, one environment's order, the pending cap, attempts, and the
//! warning columns.

use lapse_core::model::{Environment, Spec};

use crate::{Attempt, NewDelivery, NewEvent, Store, WebhookRecord};

on_both!(
    a_new_hook_starts_after_the_latest_event_and_its_cursor_moves_once,
    one_environments_deliveries_wait_for_the_earlier_ones,
    the_pending_cap_keeps_the_oldest_and_says_so,
    deleting_is_scoped_to_the_tenant_and_config_hooks_follow_the_file,
    warning_columns_round_trip,
);

pub(crate) fn hook(id: &str, tenant: Option<&str>) -> WebhookRecord {
    WebhookRecord {
        id: id.into(),
        tenant: tenant.map(Into::into),
        url: "http://h/".into(),
        events: vec!["*".into()],
        secret: "s".repeat(16),
        source: "api".into(),
        name: None,
        cursor: 0,
        failures: 0,
        created_at: 1,
    }
}

pub(crate) fn delivery(id: &str, env: Option<&str>) -> NewDelivery {
    NewDelivery {
        id: id.into(),
        seq: None,
        event: "created".into(),
        environment_id: env.map(Into::into),
        body: "{}".into(),
    }
}

pub(crate) fn event() -> NewEvent {
    NewEvent::of_tenant("", "t", "x", "ok", "")
}

async fn a_new_hook_starts_after_the_latest_event_and_its_cursor_moves_once(store: Store) {
    store.append_event(event()).await.unwrap();
    let made = store.create_webhook(&hook("h1", None), event()).await.unwrap();
    assert_eq!(made.cursor, 1, "what happened before the hook is not reported");
    let last = store.last_event_seq().await.unwrap();
    assert_eq!(last, 2, "the hook's own event");
    let done = store.fan_out("h1", 1, last, &[delivery("d1", Some("e"))], 10).await.unwrap();
    assert_eq!((done.inserted, done.stale), (1, false));
    // A second fan-out from the old cursor is stale and writes nothing (no duplicate).
    let again = store.fan_out("h1", 1, last, &[delivery("d2", Some("e"))], 10).await.unwrap();
    assert!(again.stale);
    assert_eq!(store.list_deliveries("h1", None, 10).await.unwrap().len(), 1);
    assert_eq!(store.get_webhook("h1").await.unwrap().unwrap().cursor, last);
}

async fn one_environments_deliveries_wait_for_the_earlier_ones(store: Store) {
    store.create_webhook(&hook("h1", None), event()).await.unwrap();
    let ds = [delivery("a1", Some("a")), delivery("a2", Some("a")), delivery("b1", Some("b"))];
    store.fan_out("h1", 0, 5, &ds, 10).await.unwrap();
    let ids = |v: Vec<(crate::DeliveryRecord, WebhookRecord)>| v.into_iter().map(|(d, _)| d.id).collect::<Vec<_>>();
    assert_eq!(ids(store.due_deliveries(i64::MAX, 10).await.unwrap()), ["a1", "b1"]);
    store
        .record_attempt("a1", &Attempt::Retry { code: Some(500), error: "HTTP 500".into(), next_at: i64::MAX - 1 })
        .await
        .unwrap();
    assert_eq!(
        ids(store.due_deliveries(lapse_core::now_millis() + 1_000, 10).await.unwrap()),
        ["b1"],
        "a2 waits behind a1's retry"
    );
    assert_eq!(store.get_webhook("h1").await.unwrap().unwrap().failures, 1);
    store.record_attempt("a1", &Attempt::Delivered { code: 200 }).await.unwrap();
    assert_eq!(ids(store.due_deliveries(i64::MAX, 10).await.unwrap()), ["a2", "b1"]);
    assert_eq!(store.get_webhook("h1").await.unwrap().unwrap().failures, 0);
    let a1 = store.list_deliveries("h1", None, 10).await.unwrap().into_iter().find(|d| d.id == "a1").unwrap();
    assert_eq!((a1.status.as_str(), a1.attempts, a1.response_code), ("delivered", 2, Some(200)));
    // Recording twice changes nothing (only a pending delivery takes an attempt).
    store.record_attempt("a1", &Attempt::GaveUp { code: None, error: "x".into() }).await.unwrap();
    let a1 = store.list_deliveries("h1", None, 10).await.unwrap().into_iter().find(|d| d.id == "a1").unwrap();
    assert_eq!(a1.status, "delivered");
}

async fn the_pending_cap_keeps_the_oldest_and_says_so(store: Store) {
    store.create_webhook(&hook("h1", Some("acme")), event()).await.unwrap();
    let ds: Vec<NewDelivery> = (0..5).map(|i| delivery(&format!("d{i}"), Some("e"))).collect();
    let done = store.fan_out("h1", 0, 9, &ds, 3).await.unwrap();
    assert_eq!((done.inserted, done.dropped), (3, 2));
    let kept: Vec<String> = store.list_deliveries("h1", None, 10).await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(kept, ["d0", "d1", "d2"]);
    let dropped = store
        .events(&crate::EventFilter { action: Some("webhook_dropped".into()), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].tenant.as_deref(), Some("acme"));
    assert_eq!(store.pending_deliveries().await.unwrap(), 3);
}

async fn deleting_is_scoped_to_the_tenant_and_config_hooks_follow_the_file(store: Store) {
    store.create_webhook(&hook("h1", Some("acme")), event()).await.unwrap();
    assert!(!store.delete_webhook("h1", Some("rival"), event()).await.unwrap());
    assert!(store.get_webhook("h1").await.unwrap().is_some());
    assert!(store.delete_webhook("h1", Some("acme"), event()).await.unwrap());
    assert!(store.get_webhook("h1").await.unwrap().is_none());

    let declared = |url: &str| WebhookRecord {
        source: "config".into(),
        name: Some("ops".into()),
        url: url.into(),
        ..hook("c1", None)
    };
    store.set_config_webhooks(&[declared("http://one/")]).await.unwrap();
    store.set_config_webhooks(&[WebhookRecord { id: "c2".into(), ..declared("http://two/") }]).await.unwrap();
    let hooks = store.list_webhooks(None, None, 10).await.unwrap();
    assert_eq!(hooks.len(), 1, "updated by its key, not added");
    assert_eq!((hooks[0].id.as_str(), hooks[0].url.as_str()), ("c1", "http://two/"));
    store.set_config_webhooks(&[]).await.unwrap();
    assert!(store.list_webhooks(None, None, 10).await.unwrap().is_empty());
}

async fn warning_columns_round_trip(store: Store) {
    let spec = Spec { provider: "process".into(), cmd: vec!["true".into()], ..Default::default() };
    let mut e = Environment::new("a".repeat(32), "o".into(), spec, 1);
    e.expires_at = Some(100_000);
    e.warn_before = vec![60_000, 30_000];
    e.warned = vec![60_000];
    e.warned_at = Some(41_000);
    store.insert(&e, NewEvent::new(&e.id, "t", "create", "ok", "")).await.unwrap();
    assert_eq!(store.get(&e.id).await.unwrap().unwrap(), e);
    assert!(store.warning_ids().await.unwrap().is_empty(), "only running ones");
    store
        .update(&e.id, |r| {
            r.observed = lapse_core::model::ObservedState::Running;
            Ok::<_, crate::StoreError>(vec![])
        })
        .await
        .unwrap();
    assert_eq!(store.warning_ids().await.unwrap(), [e.id.clone()]);
}

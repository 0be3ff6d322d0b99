//! The webhook outbox on PostgreSQL: src/tests/webhooks.rs mirrored, and two replicas
//! following one hook's cursor at once.

use std::collections::BTreeMap;
use std::time::Duration;

use lapse_core::model::{Environment, Spec};

use super::insert;
use crate::pg::PgStore;
use crate::pg::testdb::TestDb;
use crate::pg::write::append_events;
use crate::{Attempt, DeliveryRecord, NewDelivery, NewEvent, WebhookRecord};

fn hook(id: &str, tenant: Option<&str>) -> WebhookRecord {
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

fn delivery(id: &str, env: Option<&str>) -> NewDelivery {
    NewDelivery {
        id: id.into(),
        seq: None,
        event: "created".into(),
        environment_id: env.map(Into::into),
        body: "{}".into(),
    }
}

fn event() -> NewEvent {
    NewEvent::of_tenant("", "t", "x", "ok", "")
}

async fn append(store: &PgStore, events: &[NewEvent]) {
    insert(store, &[], events).await;
}

fn ids(v: Vec<(DeliveryRecord, WebhookRecord)>) -> Vec<String> {
    v.into_iter().map(|(d, _)| d.id).collect()
}

#[tokio::test]
async fn a_new_hook_starts_after_the_latest_event_and_its_cursor_moves_once() {
    let db = TestDb::new().await;
    let store = db.store().await;
    assert_eq!(store.last_event_seq().await.unwrap(), 0, "0 before any");
    append(&store, &[event()]).await;
    let made = store.create_webhook(&hook("h1", None), event()).await.unwrap();
    assert_eq!(made.cursor, 1, "what happened before the hook is not reported");
    let last = store.last_event_seq().await.unwrap();
    assert_eq!(last, 2, "the hook's own event");
    let done = store.fan_out("h1", 1, last, &[delivery("d1", Some("e"))], 10).await.unwrap();
    assert_eq!((done.inserted, done.stale), (1, false));
    let again = store.fan_out("h1", 1, last, &[delivery("d2", Some("e"))], 10).await.unwrap();
    assert!(again.stale, "a second fan-out from the old cursor writes nothing");
    assert!(store.fan_out("nope", 0, 1, &[delivery("d3", None)], 10).await.unwrap().stale);
    assert_eq!(store.list_deliveries("h1", None, 10).await.unwrap().len(), 1);
    let got = store.get_webhook("h1").await.unwrap().unwrap();
    assert_eq!(got, WebhookRecord { cursor: last, ..hook("h1", None) });
    assert_eq!(store.get_webhook("nope").await.unwrap(), None);
    store.close().await;
}

#[tokio::test]
async fn one_environments_deliveries_wait_for_the_earlier_ones() {
    let db = TestDb::new().await;
    let store = db.store().await;
    store.create_webhook(&hook("h1", None), event()).await.unwrap();
    assert_eq!(store.next_delivery_due().await.unwrap(), None);
    let ds = [delivery("a1", Some("a")), delivery("a2", Some("a")), delivery("b1", Some("b")), delivery("p1", None)];
    store.fan_out("h1", 0, 5, &ds, 10).await.unwrap();
    assert!(store.next_delivery_due().await.unwrap().is_some());
    assert_eq!(
        ids(store.due_deliveries(i64::MAX, 10).await.unwrap()),
        ["a1", "b1", "p1"],
        "no environment: one order too"
    );
    assert_eq!(ids(store.due_deliveries(i64::MAX, 2).await.unwrap()), ["a1", "b1"], "at most `limit`");
    let retry = Attempt::Retry { code: Some(500), error: "HTTP 500".into(), next_at: i64::MAX - 1 };
    store.record_attempt("a1", &retry).await.unwrap();
    let soon = lapse_core::now_millis() + 1_000;
    assert_eq!(ids(store.due_deliveries(soon, 10).await.unwrap()), ["b1", "p1"], "a2 waits behind a1's retry");
    assert_eq!(store.get_webhook("h1").await.unwrap().unwrap().failures, 1);
    store.record_attempt("a1", &Attempt::Delivered { code: 200 }).await.unwrap();
    assert_eq!(ids(store.due_deliveries(i64::MAX, 10).await.unwrap()), ["a2", "b1", "p1"]);
    assert_eq!(store.get_webhook("h1").await.unwrap().unwrap().failures, 0);
    let find = |all: Vec<DeliveryRecord>| all.into_iter().find(|d| d.id == "a1").unwrap();
    let a1 = find(store.list_deliveries("h1", None, 10).await.unwrap());
    assert_eq!((a1.status.as_str(), a1.attempts, a1.response_code), ("delivered", 2, Some(200)));
    assert!(a1.delivered_at.is_some() && a1.error.is_none(), "{a1:?}");
    store.record_attempt("a1", &Attempt::GaveUp { code: None, error: "x".into() }).await.unwrap();
    assert_eq!(find(store.list_deliveries("h1", None, 10).await.unwrap()).status, "delivered", "only pending ones");
    let page: Vec<String> =
        store.list_deliveries("h1", Some("a2"), 10).await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(page, ["b1", "p1"], "in id order after `after`");
    store.close().await;
}

#[tokio::test]
async fn the_pending_cap_keeps_the_oldest_and_says_so() {
    let db = TestDb::new().await;
    let store = db.store().await;
    store.create_webhook(&hook("h1", Some("acme")), event()).await.unwrap();
    let ds: Vec<NewDelivery> = (0..5).map(|i| delivery(&format!("d{i}"), Some("e"))).collect();
    let done = store.fan_out("h1", 0, 9, &ds, 3).await.unwrap();
    assert_eq!((done.inserted, done.dropped), (3, 2));
    let kept: Vec<String> = store.list_deliveries("h1", None, 10).await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(kept, ["d0", "d1", "d2"]);
    let dropped: Vec<Option<String>> = sqlx::query_scalar("SELECT tenant FROM events WHERE action = 'webhook_dropped'")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(dropped, [Some("acme".to_owned())]);
    assert_eq!(store.pending_deliveries().await.unwrap(), 3);
    store.add_delivery("h1", &delivery("ping", None)).await.unwrap();
    assert_eq!(store.pending_deliveries().await.unwrap(), 4, "a ping is outside the cap");
    store.close().await;
}

#[tokio::test]
async fn deleting_is_scoped_to_the_tenant_and_config_hooks_follow_the_file() {
    let db = TestDb::new().await;
    let store = db.store().await;
    store.create_webhook(&hook("h1", Some("acme")), event()).await.unwrap();
    store.create_webhook(&hook("h2", Some("rival")), event()).await.unwrap();
    store.add_delivery("h1", &delivery("p", None)).await.unwrap();
    let listed = |v: Vec<WebhookRecord>| v.into_iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(listed(store.list_webhooks(Some("acme"), None, 10).await.unwrap()), ["h1"]);
    assert_eq!(listed(store.list_webhooks(None, Some("h1"), 10).await.unwrap()), ["h2"]);
    assert_eq!(listed(store.list_webhooks(None, None, 1).await.unwrap()), ["h1"]);
    assert!(!store.delete_webhook("h1", Some("rival"), event()).await.unwrap());
    assert!(store.get_webhook("h1").await.unwrap().is_some());
    assert!(store.delete_webhook("h1", Some("acme"), event()).await.unwrap());
    assert!(store.get_webhook("h1").await.unwrap().is_none());
    assert_eq!(store.pending_deliveries().await.unwrap(), 0, "its deliveries went with it");
    assert!(store.delete_webhook("h2", None, event()).await.unwrap(), "the operator deletes any");

    let declared = |url: &str| WebhookRecord {
        source: "config".into(),
        name: Some("ops".into()),
        url: url.into(),
        ..hook("c1", None)
    };
    store.set_config_webhooks(&[declared("http://one/")]).await.unwrap();
    let cursor = store.get_webhook("c1").await.unwrap().unwrap().cursor;
    assert_eq!(cursor, store.last_event_seq().await.unwrap(), "a new one starts at the latest event");
    append(&store, &[event()]).await;
    store.set_config_webhooks(&[WebhookRecord { id: "c2".into(), ..declared("http://two/") }]).await.unwrap();
    let hooks = store.list_webhooks(None, None, 10).await.unwrap();
    assert_eq!(hooks.len(), 1, "updated by its key, not added");
    assert_eq!((hooks[0].id.as_str(), hooks[0].url.as_str(), hooks[0].cursor), ("c1", "http://two/", cursor));
    store.set_config_webhooks(&[]).await.unwrap();
    assert!(store.list_webhooks(None, None, 10).await.unwrap().is_empty());
    // Two replicas applying the file at once (starting together): one hook.
    let (one, two) = (db.store().await, db.store().await);
    for round in 0..5 {
        let (x, y) = tokio::join!(one.last_event_seq(), two.last_event_seq()); // connected, both
        x.unwrap();
        y.unwrap();
        let other =
            WebhookRecord { id: format!("x{round}"), name: Some(format!("dev{round}")), ..declared("http://x/") };
        let again = [WebhookRecord { id: format!("y{round}"), ..other.clone() }];
        let (a, b) =
            tokio::join!(one.set_config_webhooks(std::slice::from_ref(&other)), two.set_config_webhooks(&again));
        a.unwrap();
        b.unwrap();
        let hooks = store.list_webhooks(None, None, 10).await.unwrap();
        assert_eq!(hooks.len(), 1, "{hooks:?}");
        assert_eq!(hooks[0].name, other.name);
        store.set_config_webhooks(&[]).await.unwrap();
    }
    store.close().await;
}

#[tokio::test]
async fn warning_columns_round_trip() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let spec = Spec { provider: "process".into(), cmd: vec!["true".into()], ..Default::default() };
    let mut e = Environment::new("a".repeat(32), "o".into(), spec, 1);
    e.expires_at = Some(100_000);
    e.warn_before = vec![60_000, 30_000];
    e.warned = vec![60_000];
    e.warned_at = Some(41_000);
    insert(&store, std::slice::from_ref(&e), &[]).await;
    assert_eq!(super::get(&store, &e.id).await.unwrap(), e);
    assert!(store.warning_ids().await.unwrap().is_empty(), "only running ones");
    sqlx::query("UPDATE environments SET observed = 'running'").execute(store.pool()).await.unwrap();
    assert_eq!(store.warning_ids().await.unwrap(), [e.id.clone()]);
    store.close().await;
}

/// One replica's worker following `hook`'s cursor until it reaches `last`: each round reads
/// the events after the cursor and fans them out, one delivery per event, ids its own.
async fn follow(store: &PgStore, hook: &str, until: impl Fn() -> bool) -> usize {
    let mut stale = 0;
    loop {
        let cursor = store.get_webhook(hook).await.unwrap().unwrap().cursor;
        let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM events WHERE seq > $1 ORDER BY seq LIMIT 25")
            .bind(cursor)
            .fetch_all(store.pool())
            .await
            .unwrap();
        let Some(to) = seqs.last().copied() else {
            if until() {
                return stale;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        };
        let ds: Vec<NewDelivery> = seqs
            .iter()
            .map(|s| NewDelivery { seq: Some(*s), ..delivery(&lapse_core::model::new_environment_id(), None) })
            .collect();
        if store.fan_out(hook, cursor, to, &ds, usize::MAX).await.unwrap().stale {
            stale += 1;
        }
    }
}

/// Per event `seq`, how many deliveries report it.
async fn reported(store: &PgStore) -> BTreeMap<i64, i64> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT e.seq, COUNT(d.id) FROM events e LEFT JOIN webhook_deliveries d ON d.seq = e.seq \
         GROUP BY e.seq",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fan_out_each_delivery_once() {
    let db = TestDb::new().await;
    let (one, two) = (db.store().await, db.store().await);
    one.create_webhook(&hook("h1", None), event()).await.unwrap();
    let events: Vec<NewEvent> = (0..300).map(|i| NewEvent::of_tenant("", "t", "x", "ok", format!("{i}"))).collect();
    append(&one, &events).await;
    let (a, b) = tokio::join!(follow(&one, "h1", || true), follow(&two, "h1", || true));
    let counts = reported(&one).await;
    assert_eq!(counts.len(), 301, "the hook's own event and the 300");
    assert!(counts.values().all(|n| *n == 1), "each event delivered once (stale fan-outs: {a} + {b}): {counts:?}");
    one.close().await;
    two.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_never_skips_an_event() {
    let db = TestDb::new().await;
    let store = db.store().await;
    store.create_webhook(&hook("h1", None), event()).await.unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Writers whose transactions hold their event a while before committing, in parallel.
    let writers: Vec<_> = (0..8_u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..15_u64 {
                    let mut tx = store.pool().begin().await.unwrap();
                    append_events(&mut tx, &[NewEvent::of_tenant("", "t", "x", "ok", format!("{w}/{i}"))])
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis((w * 7 + i * 3) % 11)).await;
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    let follower = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move { follow(&store, "h1", || done.load(std::sync::atomic::Ordering::SeqCst)).await })
    };
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    follower.await.unwrap();
    let counts = reported(&store).await;
    assert_eq!(counts.len(), 121, "the hook's own event and the 120");
    let missed: Vec<i64> = counts.iter().filter(|(_, n)| **n != 1).map(|(s, _)| *s).collect();
    assert!(missed.is_empty(), "events the cursor passed without a delivery: {missed:?}");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_deleted_while_fanning_out_and_recording_leaves_nothing_behind() {
    let db = TestDb::new().await;
    let (one, two) = (db.store().await, db.store().await);
    for round in 0..10 {
        let id = format!("h{round}");
        one.create_webhook(&hook(&id, None), event()).await.unwrap();
        one.add_delivery(&id, &delivery(&format!("p{round}"), None)).await.unwrap();
        let cursor = one.get_webhook(&id).await.unwrap().unwrap().cursor;
        let ds: Vec<NewDelivery> = (0..50).map(|i| delivery(&format!("{id}-{i}"), Some("e"))).collect();
        let (ping, delivered) = (format!("p{round}"), Attempt::Delivered { code: 200 });
        let (f, r, d) = tokio::join!(
            one.fan_out(&id, cursor, cursor + 1, &ds, 100),
            two.record_attempt(&ping, &delivered),
            two.delete_webhook(&id, None, event())
        );
        f.unwrap();
        r.unwrap();
        assert!(d.unwrap());
    }
    let orphans: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_deliveries d \
         WHERE NOT EXISTS (SELECT 1 FROM webhooks h WHERE h.id = d.webhook_id)",
    )
    .fetch_one(one.pool())
    .await
    .unwrap();
    assert_eq!(orphans, 0);
    one.close().await;
    two.close().await;
}

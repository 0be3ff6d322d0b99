//! The webhook outbox on PostgreSQL beyond the contract tests both backends run
//! (src/tests/webhooks.rs): two replicas following one hook's cursor at once.

use std::collections::BTreeMap;
use std::time::Duration;

use super::insert;
use crate::pg::PgStore;
use crate::pg::testdb::TestDb;
use crate::pg::write::append_events;
use crate::tests::webhooks::{delivery, event, hook};
use crate::{Attempt, NewDelivery, NewEvent};

async fn append(store: &PgStore, events: &[NewEvent]) {
    insert(store, &[], events).await;
}

/// One replica's worker following `hook`'s cursor until `until` holds and nothing is left:
/// each round reads the events after the cursor and fans them out, one delivery per event,
/// ids its own.
async fn follow(store: &PgStore, hook: &str, until: impl Fn() -> bool) -> usize {
    let mut stale = 0;
    loop {
        // Asked before the read: an event committed between an empty read and a later "until"
        // would otherwise be left behind by the test itself.
        let finishing = until();
        let cursor = store.get_webhook(hook).await.unwrap().unwrap().cursor;
        let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM events WHERE seq > $1 ORDER BY seq LIMIT 25")
            .bind(cursor)
            .fetch_all(store.pool())
            .await
            .unwrap();
        let Some(to) = seqs.last().copied() else {
            if finishing {
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

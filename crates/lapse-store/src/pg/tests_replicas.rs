//! Several replicas on one database: the change feed crosses them ([`super::feed`]), one
//! leads at a time and a replica that lost the lead can no longer write ([`super::lead`]).

use std::time::Duration;

use lapse_core::model::{Environment, ObservedState, Spec};

use super::PgStore;
use super::feed::Remote;
use super::lead::Replica;
use crate::pg::testdb::TestDb;
use crate::{NewEvent, StoreError};

fn env(id: &str) -> Environment {
    Environment::new(id.into(), "ada".into(), Spec { provider: "sim".into(), ..Default::default() }, 1)
}

async fn put(store: &PgStore, e: &Environment) {
    store.insert(e, NewEvent::new(&e.id, "t", "create", "ok", "")).await.unwrap();
}

/// The next remote change, within 5 s.
async fn next_remote(rx: &mut tokio::sync::broadcast::Receiver<Remote>) -> Remote {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a remote change within 5 s").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_reaches_the_others_feed_and_not_its_own_remote_one() {
    let db = TestDb::new().await;
    let (a, b) = (db.store().await, db.store().await);
    assert_ne!(a.replica_id(), b.replica_id());
    let (mut a_remote, mut b_remote, mut b_feed) = (a.remote_changes(), b.remote_changes(), b.subscribe());
    // The listeners are connected once a change made after them arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;

    put(&a, &env("e1")).await;
    match next_remote(&mut b_remote).await {
        Remote::Changed(e) => assert_eq!((e.id.as_str(), e.observed), ("e1", ObservedState::Pending)),
        Remote::Missed => panic!("nothing was missed"),
    }
    let fed = tokio::time::timeout(Duration::from_secs(5), b_feed.recv()).await.unwrap().unwrap();
    assert_eq!(fed.id, "e1", "the other replica's change feed shows it");

    let id = "e1".to_owned();
    a.update::<StoreError>(&id, |e| {
        e.observed = ObservedState::Running;
        Ok(vec![])
    })
    .await
    .unwrap();
    match next_remote(&mut b_remote).await {
        Remote::Changed(e) => assert_eq!(e.observed, ObservedState::Running, "the committed row, read back"),
        Remote::Missed => panic!("nothing was missed"),
    }
    // Activity is not on the feed; a change on b reaches a.
    a.record_activity(&[("e1".into(), 50)]).await.unwrap();
    put(&b, &env("e2")).await;
    match next_remote(&mut a_remote).await {
        Remote::Changed(e) => assert_eq!(e.id, "e2", "a hears b's change, not its own nor the activity"),
        Remote::Missed => panic!("nothing was missed"),
    }
    let heard = tokio::time::timeout(Duration::from_secs(1), b_remote.recv()).await;
    assert!(heard.is_err(), "b hears neither its own change nor activity: {heard:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_a_replica_that_lost_the_lead_writes_nothing() {
    let db = TestDb::new().await;
    let (a, b) = (db.store().await, db.store().await);
    let lead_a = a.try_lead().await.unwrap().expect("the first replica leads");
    assert!(b.try_lead().await.unwrap().is_none(), "one leader at a time");
    put(&a, &env("e1")).await;
    put(&b, &env("e2")).await;

    let listed = a.replicas().await.unwrap();
    let leader: Vec<&str> = listed.iter().filter(|r| r.leader).map(|r| r.id.as_str()).collect();
    assert_eq!(leader, [a.replica_id()], "{listed:?}");
    assert!(listed.iter().any(|r| r.id == b.replica_id() && !r.leader && r.connections > 0), "{listed:?}");
    let _server = b.hold_server_lock().await.unwrap();
    let holds = |id: &str, l: &[Replica]| l.iter().find(|r| r.id == id).map(|r| r.holds.clone()).unwrap_or_default();
    let listed = a.replicas().await.unwrap();
    assert_eq!(holds(a.replica_id(), &listed), ["leader"]);
    assert_eq!(holds(b.replica_id(), &listed), ["server"]);

    // a loses its lock (its session ends: as with a kill -9) but has not noticed yet: b takes
    // the lead with a newer epoch, and from then on nothing a writes commits.
    drop(lead_a);
    let lead_b = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(lead) = b.try_lead().await.unwrap() {
                return lead;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("b takes the lead once a's session is gone");
    assert_eq!(lead_b.epoch, a.fenced_epoch().unwrap() + 1);
    let refused = a.insert(&env("e3"), NewEvent::new("e3", "t", "create", "ok", "")).await.unwrap_err();
    assert!(refused.is_unwritable() && refused.to_string().contains("cannot be written"), "{refused}");
    assert!(!a.is_writable(), "a fenced replica says it cannot write (503s, /readyz)");
    assert!(a.record_sync_error("e1", "x", 1).await.is_err(), "single-statement writes are fenced too");
    assert!(a.get("e3").await.unwrap().is_none(), "nothing was written");
    put(&b, &env("e4")).await;

    // Once it steps down, a writes again as a follower.
    a.step_down();
    put(&a, &env("e5")).await;
    assert!(a.is_writable());
    let listed = b.replicas().await.unwrap();
    assert_eq!(listed.iter().filter(|r| r.leader).map(|r| r.id.as_str()).collect::<Vec<_>>(), [b.replica_id()]);
}

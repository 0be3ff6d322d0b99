//! [`Store::update_versioned`]: it starts from the row it is given, yet never writes over a
//! change it did not see.

use super::*;

on_both!(a_versioned_update_chains_and_never_writes_over_a_change_it_did_not_see, stale_versioned_updates_lose_nothing);

async fn a_versioned_update_chains_and_never_writes_over_a_change_it_did_not_see(store: Store) {
    let a = sample(&"a".repeat(32), "ada");
    store.insert(&a, NewEvent::new(&a.id, "api", "create", "ok", "")).await.unwrap();
    let known = store.get_versioned(&a.id).await.unwrap().unwrap();
    assert_eq!(known.env, a);
    assert!(store.get_versioned("nope").await.unwrap().is_none());

    // Another writer since `known` was read: its change is kept, and `change` sees it.
    store
        .update::<StoreError>(&a.id, |e| {
            e.attempts = 10;
            Ok(vec![])
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    let written = store
        .update_versioned::<StoreError>(&known, |e| {
            seen.push(e.attempts);
            e.restarts += 1;
            Ok(vec![NewEvent::new(&e.id, "reconciler", "transition", "starting", "")])
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.last(), Some(&10), "the last run of `change` saw the other write: {seen:?}");
    assert_eq!((written.env.attempts, written.env.restarts), (10, 1));

    // Chained on the row it wrote: `change` runs once, on exactly that row, and what it writes
    // is what a read gives back (with the same revision).
    let mut runs = Vec::new();
    let next = store
        .update_versioned::<StoreError>(&written, |e| {
            runs.push(e.clone());
            e.restarts += 1;
            Ok(vec![])
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(runs, std::slice::from_ref(&written.env));
    assert_eq!(next.env.restarts, 2);
    assert_eq!(store.get_versioned(&a.id).await.unwrap(), Some(next));
    let filter = EventFilter { target: Some(a.id.clone()), limit: 100, ..Default::default() };
    let actions: Vec<String> = store.events(&filter).await.unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["create", "transition"], "a rerun of `change` records its events once");
}

async fn stale_versioned_updates_lose_nothing(store: Store) {
    let a = sample(&"a".repeat(32), "ada");
    store.insert(&a, NewEvent::new(&a.id, "api", "create", "ok", "")).await.unwrap();
    let known = store.get_versioned(&a.id).await.unwrap().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (store, known) = (store.clone(), known.clone());
        tasks.push(tokio::spawn(async move {
            store
                .update_versioned::<StoreError>(&known, |e| {
                    e.attempts += 1;
                    Ok(vec![])
                })
                .await
                .unwrap()
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.get(&a.id).await.unwrap().unwrap().attempts, 40);
}

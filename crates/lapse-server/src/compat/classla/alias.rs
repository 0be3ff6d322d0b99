//! The seed's 8-character ids of the adapter's environments, kept in memory and following
//! the store's change feed: what the proxy resolves `/code/<id>/` with ([`RouteAlias`]) and
//! what the routes look containers up by.
//!
//! An environment is the adapter's when it carries [`LABEL_BUCKET`] (a started container) or
//! is a member of the pool [`POOL`]; its seed id is its short id ([`lapse_core::claim::short_id`], the random
//! end of its UUIDv7). Deleted ones are kept (the seed answers for a stopped container), so
//! a `GET` after a `DELETE` still finds it. Two environments with one short id (a 1 in 2^32
//! chance per pair) make that id ambiguous: it resolves to nothing, and the log says so.
//! A feed that lags reloads the whole map from the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lapse_core::claim::short_id;
use lapse_core::model::{Environment, ObservedState};
use lapse_store::{ListFilter, Store, StoreError};

use super::config::{LABEL_BUCKET, POOL};
use crate::proxy::RouteAlias;

/// An id held by two environments.
const AMBIGUOUS: &str = "";

#[derive(Debug, Default)]
pub struct Aliases {
    ids: Mutex<HashMap<String, String>>,
    open: bool,
}

/// Whether `env` is one of the adapter's.
pub fn is_ours(env: &Environment) -> bool {
    env.labels.contains_key(LABEL_BUCKET) || env.pool.as_deref() == Some(POOL)
}

impl Aliases {
    /// Loads the adapter's environments and follows the store (the task ends with the feed).
    pub async fn follow(store: &Store, open: bool) -> Result<Arc<Aliases>, StoreError> {
        let aliases = Arc::new(Aliases { ids: Mutex::default(), open });
        let mut feed = store.subscribe();
        aliases.reload(store).await?;
        let (weak, store) = (Arc::downgrade(&aliases), store.clone());
        tokio::spawn(async move {
            loop {
                let change = feed.recv().await;
                let Some(aliases) = weak.upgrade() else { return };
                match change {
                    Ok(env) => aliases.note(&env),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if let Err(e) = aliases.reload(&store).await {
                            tracing::warn!(error = %e, "the Classla ids could not be reloaded; retrying on the next change");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(aliases)
    }

    async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let mut envs = store.list(&ListFilter::default()).await?;
        envs.extend(store.list(&ListFilter { state: Some(ObservedState::Deleted), ..Default::default() }).await?);
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for env in &envs {
            self.note(env);
        }
        Ok(())
    }

    /// Records a committed row.
    pub fn note(&self, env: &Environment) {
        if !is_ours(env) {
            return;
        }
        let alias = short_id(&env.id).to_owned();
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        match ids.get(&alias) {
            Some(id) if id != &env.id && id != AMBIGUOUS => {
                tracing::warn!(%alias, "two Classla environments share a short id: it resolves to neither");
                ids.insert(alias, AMBIGUOUS.to_owned());
            }
            Some(_) => {}
            None => {
                ids.insert(alias, env.id.clone());
            }
        }
    }

    /// The environment id of seed id `alias`.
    pub fn id_of(&self, alias: &str) -> Option<String> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).get(alias).filter(|id| id.as_str() != AMBIGUOUS).cloned()
    }
}

impl RouteAlias for Aliases {
    fn resolve(&self, alias: &str) -> Option<String> {
        self.id_of(alias)
    }

    fn is_open(&self, environment_id: &str) -> bool {
        self.open && self.id_of(short_id(environment_id)).as_deref() == Some(environment_id)
    }
}

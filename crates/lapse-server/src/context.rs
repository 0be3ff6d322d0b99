//! What the reconciler, the sweep and the API layer share.

use lapse_providers::ProviderSet;
use lapse_store::Store;

use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::timers::Timers;

#[derive(Debug)]
pub struct Context {
    pub store: Store,
    pub providers: ProviderSet,
    pub timers: Timers,
    pub clock: Clock,
    pub metrics: Metrics,
    pub config: ServerConfig,
    /// Labels every resource this control plane makes.
    pub controller_id: String,
    /// Wakes the pool maintainer (after a claim, a pool change).
    pub pool_wake: tokio::sync::Notify,
    /// The declarative config file's state, if one is served.
    pub config_status: std::sync::Mutex<Option<lapse_core::wire::ConfigStatus>>,
}

//! Prometheus metrics, served at `/metrics` in the text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub provider: String,
    pub step: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub provider: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
    pub outcome: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub reconcile_steps: Family<StepLabels, Counter>,
    pub environments: Family<StateLabels, Gauge>,
    pub expiry_lateness: Histogram,
    pub sweep_orphans_removed: Family<ProviderLabels, Counter>,
    pub sweep_drift_corrected: Family<ProviderLabels, Counter>,
    pub queue_messages: Family<QueueLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lapse");
        let reconcile_steps = Family::<StepLabels, Counter>::default();
        registry.register(
            "reconcile_steps",
            "Reconciler steps taken, by provider, step and outcome",
            reconcile_steps.clone(),
        );
        let environments = Family::<StateLabels, Gauge>::default();
        registry.register("environments", "Environments by provider and observed state", environments.clone());
        let expiry_lateness = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register(
            "expiry_lateness_seconds",
            "How long after expires_at an expiry was applied",
            expiry_lateness.clone(),
        );
        let sweep_orphans_removed = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "sweep_orphans_removed",
            "Labelled resources the store did not know, removed",
            sweep_orphans_removed.clone(),
        );
        let sweep_drift_corrected = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "sweep_drift_corrected",
            "Records corrected because their resource changed or vanished",
            sweep_drift_corrected.clone(),
        );
        let queue_messages = Family::<QueueLabels, Counter>::default();
        registry.register(
            "queue_messages",
            "Redis queue messages handled, by queue and outcome (applied, skipped as applied before, dead)",
            queue_messages.clone(),
        );
        Metrics {
            queue_messages,
            registry,
            reconcile_steps,
            environments,
            expiry_lateness,
            sweep_orphans_removed,
            sweep_drift_corrected,
        }
    }

    pub fn step(&self, provider: &str, step: &str, outcome: &str) {
        self.reconcile_steps
            .get_or_create(&StepLabels {
                provider: provider.to_owned(),
                step: step.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn queue(&self, queue: &str, outcome: &str, n: u64) {
        if n > 0 {
            self.queue_messages
                .get_or_create(&QueueLabels { queue: queue.to_owned(), outcome: outcome.to_owned() })
                .inc_by(n);
        }
    }

    /// Sets the per-state gauges from fresh counts (states no longer present drop out).
    pub fn set_environment_counts(&self, counts: &[(String, String, i64)]) {
        self.environments.clear();
        for (provider, state, n) in counts {
            self.environments.get_or_create(&StateLabels { provider: provider.clone(), state: state.clone() }).set(*n);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding into a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

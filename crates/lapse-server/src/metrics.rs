//! Prometheus metrics, served at `/metrics` in the text format.
//!
//! Beside the registry's own, `lapse_provider_call_seconds{provider,op}` is a histogram of the
//! time inside each provider's calls to its backend (`Provider::call_times`, read at each
//! scrape from the providers' own counters).

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
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
    pub sweep_orphans_adopted: Family<ProviderLabels, Counter>,
    pub sweep_garbage_collected: Family<ProviderLabels, Counter>,
    pub provisions_failed: Family<ProviderLabels, Counter>,
    pub queue_messages: Family<QueueLabels, Counter>,
    /// The providers [`Metrics::start_at_zero`] was given: their running gauge is exported
    /// even at 0.
    providers: std::sync::Mutex<Vec<String>>,
    /// `lapse_webhook_deliveries_total{outcome="delivered"|"retry"|"failed"}`: attempts.
    pub webhook_deliveries: Family<OutcomeLabels, Counter>,
    /// `lapse_webhook_pending`: deliveries waiting (every hook).
    pub webhook_pending: Gauge,
    /// `lapse_webhook_dropped_total`: deliveries left out over a hook's pending cap.
    pub webhook_dropped: Counter,
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
        let sweep_orphans_adopted = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "sweep_orphans_adopted",
            "Labelled resources the store did not know, recorded as environments (orphans = \"adopt\")",
            sweep_orphans_adopted.clone(),
        );
        let sweep_garbage_collected = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "sweep_garbage_collected",
            "Leftover provider resources no environment uses (networks, key pairs), removed",
            sweep_garbage_collected.clone(),
        );
        let provisions_failed = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "provisions_failed",
            "Provisions given up (the environment is failed), by provider",
            provisions_failed.clone(),
        );
        let queue_messages = Family::<QueueLabels, Counter>::default();
        registry.register(
            "queue_messages",
            "Redis queue messages handled, by queue and outcome (applied, skipped as applied before, dead)",
            queue_messages.clone(),
        );
        let webhook_deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, retry, failed: given up)",
            webhook_deliveries.clone(),
        );
        let webhook_pending = Gauge::default();
        registry.register("webhook_pending", "Webhook deliveries pending", webhook_pending.clone());
        let webhook_dropped = Counter::default();
        registry.register(
            "webhook_dropped",
            "Webhook deliveries dropped because their hook had too many pending",
            webhook_dropped.clone(),
        );
        let metrics = Metrics {
            webhook_deliveries,
            webhook_pending,
            webhook_dropped,
            queue_messages,
            registry,
            reconcile_steps,
            environments,
            expiry_lateness,
            sweep_orphans_removed,
            sweep_drift_corrected,
            sweep_orphans_adopted,
            sweep_garbage_collected,
            provisions_failed,
            providers: Default::default(),
        };
        for outcome in ["delivered", "retry", "failed"] {
            let _ = metrics.webhook_deliveries.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() });
        }
        metrics
    }

    /// Exports every provider's counters at 0 from the start, so that an alert's `increase()`
    /// sees the first event (a series that appears at 1 shows no increase) and the families
    /// are on `/metrics` before anything happened.
    pub fn start_at_zero(&self, providers: &[&str]) {
        for provider in providers {
            let labels = ProviderLabels { provider: (*provider).to_owned() };
            for family in [
                &self.sweep_orphans_removed,
                &self.sweep_orphans_adopted,
                &self.sweep_drift_corrected,
                &self.sweep_garbage_collected,
                &self.provisions_failed,
            ] {
                let _ = family.get_or_create(&labels);
            }
            for outcome in ["ok", "error"] {
                let step =
                    StepLabels { provider: (*provider).to_owned(), step: "provision".into(), outcome: outcome.into() };
                let _ = self.reconcile_steps.get_or_create(&step);
            }
            let _ = self
                .environments
                .get_or_create(&StateLabels { provider: (*provider).to_owned(), state: "running".into() });
        }
        *self.providers.lock().unwrap_or_else(|p| p.into_inner()) = providers.iter().map(|p| (*p).to_owned()).collect();
    }

    /// Exports a queue's outcomes at 0 (its consumer starts).
    pub fn queue_at_zero(&self, queue: &str) {
        for outcome in ["applied", "skipped", "dead"] {
            let _ = self
                .queue_messages
                .get_or_create(&QueueLabels { queue: queue.to_owned(), outcome: outcome.to_owned() });
        }
    }

    /// Counts one webhook delivery attempt.
    pub fn webhook_delivery(&self, outcome: &str) {
        self.webhook_deliveries.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).inc();
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
        for provider in self.providers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ =
                self.environments.get_or_create(&StateLabels { provider: provider.clone(), state: "running".into() });
        }
        for (provider, state, n) in counts {
            self.environments.get_or_create(&StateLabels { provider: provider.clone(), state: state.clone() }).set(*n);
        }
    }

    pub fn encode(&self) -> String {
        self.encode_with(&[])
    }

    /// The text exposition, with the providers' call histograms.
    pub fn encode_with(&self, providers: &[std::sync::Arc<dyn lapse_providers::Provider>]) -> String {
        use prometheus_client::encoding::text;
        let calls: Vec<(String, lapse_providers::calls::CallTime)> =
            providers.iter().flat_map(|p| p.call_times().into_iter().map(move |t| (p.name().to_owned(), t))).collect();
        let busy: Vec<(String, f64)> =
            providers.iter().filter_map(|p| p.call_busy().map(|b| (p.name().to_owned(), b.as_secs_f64()))).collect();
        let mut per_scrape = Registry::with_prefix("lapse");
        per_scrape.register_collector(Box::new(ProviderCalls(calls)));
        per_scrape.register_collector(Box::new(ProviderBusy(busy)));
        let mut out = String::new();
        // Writing into a String cannot fail.
        text::encode_registry(&mut out, &self.registry).expect("encoding into a String");
        text::encode_registry(&mut out, &per_scrape).expect("encoding into a String");
        text::encode_eof(&mut out).expect("encoding into a String");
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    provider: String,
    op: String,
}

/// One scrape's snapshot of the providers' call times, encoded as one histogram family.
#[derive(Debug)]
struct ProviderCalls(Vec<(String, lapse_providers::calls::CallTime)>);

impl prometheus_client::collector::Collector for ProviderCalls {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use lapse_providers::calls::BUCKETS;
        let mut family = encoder.encode_descriptor(
            "provider_call_seconds",
            "Time inside provider calls to their backends (SDK send() and its retries), by provider and operation",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (provider, t) in &self.0 {
            let labels = CallLabels { provider: provider.clone(), op: t.op.clone() };
            let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
            let buckets: Vec<(f64, u64)> = bounds.zip(t.buckets.iter().copied()).collect();
            family.encode_family(&labels)?.encode_histogram::<CallLabels>(
                t.total.as_secs_f64(),
                t.count,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderOnly {
    provider: String,
}

/// One scrape's snapshot of each provider's busy time (at least one call in flight).
#[derive(Debug)]
struct ProviderBusy(Vec<(String, f64)>);

impl prometheus_client::collector::Collector for ProviderBusy {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "provider_call_busy_seconds",
            "Wall time with at least one provider call in flight (overlapping calls counted once), by provider",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (provider, seconds) in &self.0 {
            let labels = ProviderOnly { provider: provider.clone() };
            family.encode_family(&labels)?.encode_counter::<ProviderOnly, _, f64>(seconds, None)?;
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

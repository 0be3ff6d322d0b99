//! A provider as configured: a backend of some *kind* (`aws`, `docker`, ...) under the *name*
//! specs use (`aws-eu`), with a deadline on every call.
//!
//! [`Configured`] wraps any [`Provider`]: `name()` is the configured name, `kind()` the
//! backend's, and every call is bounded by [`CallTimeouts`], so a cloud that never answers
//! costs a failed (and retried) step, never a stuck reconciler, sweep or request. A call cut
//! by its deadline is abandoned, as a crash would abandon it; every provider operation is
//! idempotent, so the retry finishes it.
//!
//! Names are interned once (`&'static str`, as [`Provider::name`] returns): providers are
//! built at start from the flags and the config file, so their number is bounded.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lapse_core::model::Spec;
use lapse_core::validate::FieldError;
use lapse_core::wire::{ExecResult, LogsView};

use crate::{Capabilities, Foreign, ForeignQuery, Instance, Placement, Provider, ProviderError};

/// How long each kind of call may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallTimeouts {
    /// `ensure_running`, `stop`, `delete` (a cloud create waits for the VM to boot); a stop's
    /// or delete's grace is added.
    pub change: Duration,
    /// `inspect`, `list` (every page), `logs`, `collect_garbage`; an exec's own timeout is
    /// added to it.
    pub read: Duration,
    /// `health` (the providers' page asks every provider at once).
    pub health: Duration,
}

impl Default for CallTimeouts {
    fn default() -> Self {
        CallTimeouts {
            change: Duration::from_secs(15 * 60),
            read: Duration::from_secs(120),
            health: Duration::from_secs(10),
        }
    }
}

/// A provider under its configured name, each call bounded by a deadline.
pub struct Configured {
    name: &'static str,
    inner: Arc<dyn Provider>,
    timeouts: CallTimeouts,
}

impl Configured {
    pub fn new(name: &str, inner: Arc<dyn Provider>, timeouts: CallTimeouts) -> Self {
        Configured { name: intern(name), inner, timeouts }
    }

    async fn within<T>(
        &self,
        op: &'static str,
        limit: Duration,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(self.late(op, limit)),
        }
    }

    /// The failure of a call abandoned at its deadline.
    fn late(&self, op: &'static str, limit: Duration) -> ProviderError {
        ProviderError::Failed {
            provider: self.inner.kind(),
            op,
            message: format!("no answer within {} s; abandoned, to be retried", limit.as_secs_f64()),
        }
    }
}

/// `name` as a `&'static str`, leaked once per distinct name.
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// `spec` with its variables naming the environment (`${LAPSE_SHORT_ID}`) given their values,
/// when it has any: done here for every provider; the stored spec (and its hash) keeps the
/// placeholder.
fn expanded(spec: &Spec, environment_id: &str) -> Option<Spec> {
    lapse_core::claim::expand_env(&spec.env, environment_id).map(|env| Spec { env, ..spec.clone() })
}

#[async_trait]
impl Provider for Configured {
    fn name(&self) -> &'static str {
        self.name
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn validate(&self, spec: &Spec) -> Result<(), FieldError> {
        self.inner.validate(spec)
    }

    fn boots_kernel(&self) -> bool {
        self.inner.boots_kernel()
    }

    fn validate_labels(&self, labels: &std::collections::BTreeMap<String, String>) -> Result<(), FieldError> {
        self.inner.validate_labels(labels)
    }

    fn call_times(&self) -> Vec<crate::calls::CallTime> {
        self.inner.call_times()
    }

    fn call_busy(&self) -> Option<Duration> {
        self.inner.call_busy()
    }

    fn default_instance_type(&self) -> Option<&'static str> {
        self.inner.default_instance_type()
    }

    async fn health(&self) -> Result<String, ProviderError> {
        self.within("health", self.timeouts.health, self.inner.health()).await
    }

    async fn ensure_running(
        &self,
        environment_id: &str,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError> {
        let expanded = expanded(spec, environment_id);
        let spec = expanded.as_ref().unwrap_or(spec);
        self.within("create or start", self.timeouts.change, self.inner.ensure_running(environment_id, placement, spec))
            .await
    }

    async fn ensure_running_after(
        &self,
        environment_id: &str,
        placement: &Placement,
        spec: &Spec,
        intent: crate::Intent,
    ) -> Result<Instance, ProviderError> {
        let expanded = expanded(spec, environment_id);
        let spec = expanded.as_ref().unwrap_or(spec);
        let call = self.inner.ensure_running_after(environment_id, placement, spec, intent);
        self.within("create or start", self.timeouts.change, call).await
    }

    async fn stop(&self, environment_id: &str, grace: Duration) -> Result<(), ProviderError> {
        self.within("stop", self.timeouts.change + grace, self.inner.stop(environment_id, grace)).await
    }

    async fn delete(&self, environment_id: &str, grace: Duration) -> Result<(), ProviderError> {
        self.within("delete", self.timeouts.change + grace, self.inner.delete(environment_id, grace)).await
    }

    async fn remove_orphans(&self, environment_ids: &[String], grace: Duration) -> Vec<Result<(), ProviderError>> {
        let work = self.inner.remove_orphans(environment_ids, grace);
        match tokio::time::timeout(self.timeouts.change + grace, work).await {
            Ok(results) => results,
            Err(_) => {
                let late = self.late("remove_orphans", self.timeouts.change + grace);
                environment_ids.iter().map(|_| Err(late.clone())).collect()
            }
        }
    }

    async fn inspect(&self, environment_id: &str) -> Result<Option<Instance>, ProviderError> {
        self.within("inspect", self.timeouts.read, self.inner.inspect(environment_id)).await
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        self.within("list", self.timeouts.read, self.inner.list()).await
    }

    async fn exec(
        &self,
        environment_id: &str,
        spec: &Spec,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, ProviderError> {
        self.within("exec", self.timeouts.read + timeout, self.inner.exec(environment_id, spec, cmd, timeout)).await
    }

    /// Opening is bounded by `read`; the terminal then lasts as long as its shell.
    async fn open_terminal(
        &self,
        environment_id: &str,
        spec: &Spec,
        size: crate::terminal::TermSize,
    ) -> Result<crate::terminal::Terminal, ProviderError> {
        self.within("terminal", self.timeouts.read, self.inner.open_terminal(environment_id, spec, size)).await
    }

    async fn collect_garbage(&self) -> Result<usize, ProviderError> {
        self.within("collect garbage", self.timeouts.read, self.inner.collect_garbage()).await
    }

    async fn logs(&self, environment_id: &str, tail_lines: usize) -> Result<LogsView, ProviderError> {
        self.within("logs", self.timeouts.read, self.inner.logs(environment_id, tail_lines)).await
    }

    // No deadline: it follows an event stream for as long as the stream lasts.
    async fn watch_moves(&self, moved: tokio::sync::mpsc::Sender<crate::Move>) -> Result<(), ProviderError> {
        self.inner.watch_moves(moved).await
    }

    /// The stream is returned within `read`; the syncer bounds reading it.
    async fn get_archive(
        &self,
        environment_id: &str,
        spec: &Spec,
        dir: &str,
    ) -> Result<crate::archive::ArchiveStream, ProviderError> {
        self.within("get_archive", self.timeouts.read, self.inner.get_archive(environment_id, spec, dir)).await
    }

    /// A whole workspace moves within `change` (15 min by default).
    async fn put_archive(
        &self,
        environment_id: &str,
        spec: &Spec,
        dest: &str,
        tar: crate::archive::ArchiveStream,
    ) -> Result<(), ProviderError> {
        self.within("put_archive", self.timeouts.change, self.inner.put_archive(environment_id, spec, dest, tar)).await
    }

    async fn rearm(&self, environment_id: &str, placement: &Placement) -> Result<(), ProviderError> {
        self.within("rearm", self.timeouts.change, self.inner.rearm(environment_id, placement)).await
    }

    async fn find_foreign(&self, query: &ForeignQuery) -> Result<Vec<Foreign>, ProviderError> {
        self.within("find", self.timeouts.read, self.inner.find_foreign(query)).await
    }

    async fn adopt(
        &self,
        environment_id: &str,
        provider_ref: &str,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError> {
        self.within("adopt", self.timeouts.change, self.inner.adopt(environment_id, provider_ref, placement, spec))
            .await
    }

    async fn finish_adoption(&self, environment_id: &str, provider_ref: &str, keep: bool) -> Result<(), ProviderError> {
        self.within(
            "finish adoption",
            self.timeouts.change,
            self.inner.finish_adoption(environment_id, provider_ref, keep),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimConfig, SimProvider};

    /// Answers nothing, ever.
    struct Silent;

    #[async_trait]
    impl Provider for Silent {
        fn name(&self) -> &'static str {
            "silent"
        }
        fn validate(&self, _spec: &Spec) -> Result<(), FieldError> {
            Ok(())
        }
        async fn health(&self) -> Result<String, ProviderError> {
            std::future::pending().await
        }
        async fn ensure_running(&self, _: &str, _: &Placement, _: &Spec) -> Result<Instance, ProviderError> {
            std::future::pending().await
        }
        async fn stop(&self, _: &str, _: Duration) -> Result<(), ProviderError> {
            std::future::pending().await
        }
        async fn delete(&self, _: &str, _: Duration) -> Result<(), ProviderError> {
            std::future::pending().await
        }
        async fn inspect(&self, _: &str) -> Result<Option<Instance>, ProviderError> {
            std::future::pending().await
        }
        async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_answers_fails_at_its_deadline_and_may_be_retried() {
        let timeouts = CallTimeouts::default();
        let p = Configured::new("quiet-one", Arc::new(Silent), timeouts);
        let started = tokio::time::Instant::now();
        let e = p.list().await.unwrap_err();
        assert_eq!(started.elapsed(), timeouts.read);
        assert!(e.is_retryable(), "{e}");
        assert!(e.to_string().contains("list") && e.to_string().contains("no answer within 120 s"), "{e}");
        let started = tokio::time::Instant::now();
        p.stop("e1", Duration::from_secs(10)).await.unwrap_err();
        assert_eq!(started.elapsed(), timeouts.change + Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        p.health().await.unwrap_err();
        assert_eq!(started.elapsed(), timeouts.health);
    }

    #[tokio::test]
    async fn the_configured_name_is_the_name_and_the_backend_is_the_kind() {
        let sim = Arc::new(SimProvider::new(SimConfig::default()));
        let p = Configured::new("sim-b", sim, CallTimeouts::default());
        assert_eq!((p.name(), p.kind()), ("sim-b", "sim"));
        assert!(p.health().await.is_ok());
        // Interned once: the same name is the same string.
        let again = Configured::new("sim-b", Arc::new(Silent), CallTimeouts::default());
        assert!(std::ptr::eq(p.name(), again.name()));
    }
}

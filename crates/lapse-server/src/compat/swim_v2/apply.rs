//! What a batch of the newer contract's messages does: each checked ([`message`]), held to
//! its user's rate limit, then applied with its receipt in one store transaction (one lab
//! per user, the stale rule: [`lapse_store::Store::apply_lab_messages`]); a batch's
//! messages are applied in one transaction, in order.
//!
//! **Rate limits** are the seed's: `SET <prefix>ratelimit:<user>:<op> <tag> NX PX <ttl>`,
//! taken only by a message that parsed (the seed takes the provision key before it
//! validates). A message whose key is held by another message is refused with the reason
//! `rate limited` (the seed drops it). The key holds the message's tag, so a message found in
//! the processing list after a crash passes its own key.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapse_core::model::{Environment, NO_TENANT, ObservedState, OnExpiry, Spec, new_environment_id};
use lapse_store::{
    LabDecommission, LabDecommissionOutcome, LabMessage, LabOutcome, LabProvisionOutcome, LabRequest, NewEvent,
};
use redis::aio::MultiplexedConnection;

use super::message::{self, MessageError};
use super::{EXPIRY_GRACE, LAB_LABEL, SOURCE, SwimV2};
use crate::admission::{self, HostGuard, Principal};
use crate::app::App;
use crate::compat::swim::consumer::{Applied, Contract, Entry, RoundError};
use crate::compat::swim::{Kind, Queue, Swim};

/// The reason of a rate-limited message's dead letter.
pub const RATE_LIMITED: &str = "rate limited";

/// Takes the key for `ARGV[1]` (the tag) for `ARGV[2]` ms unless another tag holds it.
const TAKE_LIMIT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0";

static TAKE_LIMIT_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(TAKE_LIMIT));

/// The newer contract, for the pump.
pub(crate) struct V2 {
    pub swim: Arc<SwimV2>,
}

impl Contract for V2 {
    fn name(&self) -> &'static str {
        "swim_v2"
    }

    async fn apply(&self, app: &App, link: &Swim, queue: &Queue, batch: Vec<Entry>) -> Result<Applied, RoundError> {
        let mut conn = link.connect(Duration::from_secs(10)).await?;
        let mut out = Applied::default();
        let mut accepted: Vec<(Entry, Checked)> = Vec::with_capacity(batch.len());
        for entry in batch {
            match self.check(app, queue, &mut conn, &entry).await? {
                Ok(Some(checked)) => accepted.push((entry, checked)),
                Ok(None) => out.done.push(entry),
                Err(reason) => out.dead.push((entry, reason)),
            }
        }
        if accepted.is_empty() {
            return Ok(out);
        }
        let items: Vec<(LabMessage, LabRequest)> = accepted.iter().map(|(e, c)| c.item(queue, e)).collect();
        let outcomes = app.cx.store.apply_lab_messages(&items).await?;
        for ((_, checked), outcome) in accepted.iter().zip(outcomes) {
            report(app, queue, checked, outcome);
        }
        out.done.extend(accepted.into_iter().map(|(e, _)| e));
        Ok(out)
    }
}

/// A message that passed its checks and its rate limit, for the store.
enum Checked {
    Provision { owner: String, lab: String, env: Box<Environment>, event: NewEvent },
    Decommission { owner: String, lab: Option<String>, server_id: Option<String> },
}

impl Checked {
    fn item<'a>(&'a self, queue: &'a Queue, entry: &'a Entry) -> (LabMessage<'a>, LabRequest<'a>) {
        let (owner, removal, request) = match self {
            Checked::Provision { owner, lab, env, event } => (
                owner,
                format!("lab switch of {owner} to lab {lab} from {}", queue.key),
                LabRequest::Provision { lab, env, event: event.clone() },
            ),
            Checked::Decommission { owner, lab, server_id } => (
                owner,
                format!("decommission of {owner} from {}", queue.key),
                LabRequest::Decommission(LabDecommission { lab: lab.as_deref(), server_id: server_id.as_deref() }),
            ),
        };
        let message =
            LabMessage { queue: &queue.key, tag: &entry.tag, source: SOURCE, owner, lab_label: LAB_LABEL, removal };
        (message, request)
    }
}

impl V2 {
    /// One message checked: the outer error is Redis's or the store's (the batch is handled
    /// again), the inner one refuses the message; `None` is a message with nothing to do.
    async fn check(
        &self,
        app: &App,
        queue: &Queue,
        conn: &mut MultiplexedConnection,
        entry: &Entry,
    ) -> Result<Result<Option<Checked>, String>, RoundError> {
        if let Some(length) = entry.cut_from {
            let limit = self.swim.link.config.max_message_bytes;
            return Ok(Err(MessageError::TooLarge { length, limit }.to_string()));
        }
        match queue.kind {
            Kind::Provision => {
                let request = match message::provision(entry.message()) {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(e.to_string())),
                };
                if !self.take_limit(conn, &request.webuserid, "provision", &entry.tag).await? {
                    return Ok(Err(RATE_LIMITED.into()));
                }
                self.provision(app, queue, request).await
            }
            Kind::Decommission => {
                let request = match message::decommission(entry.message()) {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(e.to_string())),
                };
                if !self.take_limit(conn, &request.webuserid, "decommission", &entry.tag).await? {
                    return Ok(Err(RATE_LIMITED.into()));
                }
                Ok(Ok(Some(Checked::Decommission {
                    owner: request.webuserid,
                    lab: request.lab.map(|l| l.to_string()),
                    server_id: request.server_id,
                })))
            }
        }
    }

    async fn take_limit(
        &self,
        conn: &mut MultiplexedConnection,
        webuserid: &str,
        operation: &str,
        tag: &str,
    ) -> Result<bool, RoundError> {
        let config = &self.swim.config;
        let ttl = match operation {
            "provision" => config.provision_rate_limit,
            _ => config.decommission_rate_limit,
        };
        let taken: i64 = TAKE_LIMIT_SCRIPT
            .key(config.rate_limit_key(webuserid, operation))
            .arg(tag)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(conn)
            .await?;
        Ok(taken == 1)
    }

    /// The lab a provision makes, admitted; `None` when it is the user's lab already.
    async fn provision(
        &self,
        app: &App,
        queue: &Queue,
        request: message::Provision,
    ) -> Result<Result<Option<Checked>, String>, RoundError> {
        let lab = request.lab.to_string();
        let owner = request.webuserid;
        // The user's lab already: nothing to admit or write (the store decides again).
        let rows = app.cx.store.lab_rows(SOURCE, &owner).await?;
        if rows.iter().any(|e| is_current(e) && e.labels.get(LAB_LABEL) == Some(&lab)) {
            tracing::info!(queue = %queue.key, webuserid = %owner, lab, "the user's lab already; ignoring the request");
            return Ok(Ok(None));
        }
        let link = &self.swim.link.config;
        let mut spec =
            Spec { provider: link.provider.clone(), user_data: self.swim.user_data.clone(), ..Default::default() };
        if let Some(cmd) = &link.default_cmd {
            spec.cmd = vec!["/bin/sh".into(), "-c".into(), cmd.clone()];
        }
        // Local processes have no image.
        if spec.provider != "process" {
            spec.image = link.default_image.clone();
        }
        let now = app.cx.clock.now();
        let ttl = Duration::from_secs(self.swim.config.ttl_minutes.saturating_mul(60));
        let mut env = Environment::new(new_environment_id(), owner.clone(), spec, now);
        env.labels.insert(LAB_LABEL.into(), lab.clone());
        env.expires_at = Some(now.saturating_add((ttl + EXPIRY_GRACE).as_millis() as i64));
        env.on_expiry = OnExpiry::Delete;
        env.source = SOURCE.into();
        let operator = Principal::operator(NO_TENANT, SOURCE);
        if let Err(e) = admission::admit(&app.cx, &mut env, &operator, HostGuard::Check).await {
            return Ok(Err(e.to_string()));
        }
        let what = format!("lab {lab} for {owner} from {}, expires in {} min", queue.key, self.swim.config.ttl_minutes);
        let event = NewEvent::new(&env.id, SOURCE, "create", "ok", what);
        Ok(Ok(Some(Checked::Provision { owner, lab, env: Box::new(env), event })))
    }
}

/// Starts what a message's outcome needs (timers, the reconciler) and logs it.
fn report(app: &App, queue: &Queue, checked: &Checked, outcome: LabOutcome) {
    match (checked, outcome) {
        (Checked::Provision { owner, lab, .. }, LabOutcome::Provision(outcome)) => match outcome {
            LabProvisionOutcome::Created { env, replaced } => {
                if let Some(at) = env.expires_at {
                    app.cx.timers.schedule(at, &env.id);
                }
                app.reconciler.enqueue(&env.id);
                for old in &replaced {
                    app.reconciler.enqueue(&old.id);
                }
                tracing::info!(queue = %queue.key, webuserid = %owner, lab, replaced = replaced.len(), "lab provisioned");
                applied(app, queue);
            }
            LabProvisionOutcome::SameLab(_) => {
                tracing::info!(queue = %queue.key, webuserid = %owner, lab, "the user's lab already; ignoring the request");
            }
            LabProvisionOutcome::AlreadyApplied => app.cx.metrics.queue(&queue.key, "skipped", 1),
        },
        (Checked::Decommission { owner, lab, .. }, LabOutcome::Decommission(outcome)) => match outcome {
            LabDecommissionOutcome::Deleted(changed) => {
                for env in &changed {
                    app.reconciler.enqueue(&env.id);
                }
                tracing::info!(queue = %queue.key, webuserid = %owner, environments = changed.len(), "lab decommissioned");
                applied(app, queue);
            }
            LabDecommissionOutcome::Stale { current_lab } => tracing::warn!(
                queue = %queue.key,
                webuserid = %owner,
                requested = lab.as_deref().unwrap_or_default(),
                current = current_lab,
                "labId mismatch, ignoring stale decommission request"
            ),
            LabDecommissionOutcome::NoLab => {
                tracing::info!(queue = %queue.key, webuserid = %owner, "no lab to decommission and no serverId");
            }
            LabDecommissionOutcome::AlreadyApplied => app.cx.metrics.queue(&queue.key, "skipped", 1),
        },
        // The store answers each request in kind.
        _ => tracing::error!(queue = %queue.key, "a lab message's outcome is not of its kind"),
    }
}

/// A lab that counts as the user's (not being deleted, not failed).
pub(crate) fn is_current(e: &Environment) -> bool {
    e.desired != lapse_core::model::DesiredState::Deleted
        && !matches!(e.observed, ObservedState::Failed | ObservedState::Deleted)
}

fn applied(app: &App, queue: &Queue) {
    queue.applied.fetch_add(1, Ordering::Relaxed);
    app.cx.metrics.queue(&queue.key, "applied", 1);
}

//! The delivery worker: fan out new events into deliveries, then deliver what is due.
//!
//! One loop per server. Each turn: for every hook, the events after its cursor (a batch of
//! at most [`FAN_OUT_BATCH`]) become deliveries in one transaction with the cursor's advance;
//! then the due deliveries (the oldest pending one of each hook and environment) are sent, at
//! most [`super::WebhookPolicy::concurrency`] at once, and each attempt is recorded. It sleeps
//! [`IDLE_POLL`] (or until woken by a `ping`) when there is nothing to do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapse_core::wire::{EnvironmentView, Event};
use lapse_store::{Attempt, EventFilter, NewDelivery, StoreError, WebhookRecord};
use serde_json::{Value, json};

use super::deliver::{Outcome, Request, Sender};
use super::events::{name_of, wants};
use crate::context::Context;

/// Events read per hook per turn.
pub const FAN_OUT_BATCH: u32 = 500;
/// How often the worker looks for new events when idle.
pub const IDLE_POLL: Duration = Duration::from_millis(200);

/// Runs for ever.
pub async fn run(cx: Arc<Context>) {
    let policy = cx.config.webhooks.clone();
    let sender = match Sender::new(policy.allow_private, policy.timeout) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the webhook client could not be built; no webhooks are delivered");
            return;
        }
    };
    loop {
        let wake = cx.webhooks.wake.notified();
        let mut busy = false;
        match fan_out_all(&cx).await {
            Ok(n) => busy |= n > 0,
            Err(e) => tracing::warn!(error = %e, "webhooks: reading new events failed"),
        }
        match deliver_due(&cx, &sender).await {
            Ok(n) => busy |= n > 0,
            Err(e) => tracing::warn!(error = %e, "webhooks: reading due deliveries failed"),
        }
        if let Ok(n) = cx.store.pending_deliveries().await {
            cx.metrics.webhook_pending.set(n);
        }
        if !busy {
            tokio::select! {
                () = wake => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }
}

/// Fans out every hook's new events; how many events were read.
pub async fn fan_out_all(cx: &Context) -> Result<usize, StoreError> {
    let last = cx.store.last_event_seq().await?;
    let mut read = 0;
    let mut after = None;
    loop {
        let hooks = cx.store.list_webhooks(None, after.as_deref(), 200).await?;
        let Some(tail) = hooks.last() else { break };
        after = Some(tail.id.clone());
        for hook in hooks.iter().filter(|h| h.cursor < last) {
            read += fan_out(cx, hook).await?;
        }
    }
    Ok(read)
}

/// One batch of `hook`'s new events into deliveries.
async fn fan_out(cx: &Context, hook: &WebhookRecord) -> Result<usize, StoreError> {
    let events =
        cx.store.events(&EventFilter { after: Some(hook.cursor), limit: FAN_OUT_BATCH, ..Default::default() }).await?;
    let Some(to) = events.last().map(|e| e.seq) else { return Ok(0) };
    let mut views: HashMap<String, Option<EnvironmentView>> = HashMap::new();
    let mut deliveries = Vec::new();
    for e in &events {
        let Some((name, reason)) = name_of(e) else { continue };
        if !wants(&hook.events, name) {
            continue;
        }
        let tenant = e.tenant.clone().unwrap_or_default();
        if hook.tenant.as_ref().is_some_and(|t| *t != tenant) {
            continue;
        }
        let view = match &e.environment_id {
            Some(id) => match views.get(id) {
                Some(v) => v.clone(),
                None => {
                    let v = cx.store.get(id).await?.map(|env| EnvironmentView::from(&env));
                    views.insert(id.clone(), v.clone());
                    v
                }
            },
            None => None,
        };
        let id = lapse_core::model::new_environment_id();
        deliveries.push(NewDelivery {
            body: body(&id, name, e, view.as_ref(), reason.as_deref()),
            id,
            seq: Some(e.seq),
            event: name.to_owned(),
            environment_id: e.environment_id.clone(),
        });
    }
    let done = cx.store.fan_out(&hook.id, hook.cursor, to, &deliveries, cx.config.webhooks.max_pending).await?;
    if done.dropped > 0 {
        cx.metrics.webhook_dropped.inc_by(done.dropped as u64);
        tracing::warn!(webhook = %hook.id, dropped = done.dropped, "webhook deliveries dropped: too many pending");
    }
    Ok(events.len())
}

/// A delivery's JSON body: `{"id","event","created_at","environment","reason"?,"tenant"}`,
/// at most [`super::MAX_BODY_BYTES`] (a larger environment is cut to its id and state).
pub fn body(id: &str, name: &str, e: &Event, view: Option<&EnvironmentView>, reason: Option<&str>) -> String {
    let tenant = e.tenant.clone().filter(|t| !t.is_empty());
    let make = |environment: Value| {
        let mut b = json!({
            "id": id,
            "event": name,
            "created_at": lapse_core::format_millis(e.at),
            "environment": environment,
            "tenant": tenant,
        });
        if let Some(r) = reason {
            b["reason"] = Value::String(r.chars().take(2048).collect());
        }
        b.to_string()
    };
    let full = make(view.map_or(Value::Null, |v| serde_json::to_value(v).unwrap_or(Value::Null)));
    if full.len() <= super::MAX_BODY_BYTES {
        return full;
    }
    make(view.map_or(Value::Null, |v| json!({"id": v.id, "state": v.state, "truncated": true})))
}

/// Sends what is due; how many attempts were made.
async fn deliver_due(cx: &Context, sender: &Sender) -> Result<usize, StoreError> {
    let policy = &cx.config.webhooks;
    let now = lapse_core::now_millis();
    let due = cx.store.due_deliveries(now, (policy.concurrency.max(1) * 4) as u32).await?;
    let n = due.len();
    futures::stream::iter(due)
        .for_each_concurrent(policy.concurrency.max(1), |(d, hook)| async move {
            let outcome = sender
                .send(Request {
                    url: &hook.url,
                    event: &d.event,
                    delivery_id: &d.id,
                    secret: &hook.secret,
                    body: &d.body,
                })
                .await;
            let attempts = d.attempts + 1;
            let attempt = match outcome {
                Outcome::Delivered(code) => Attempt::Delivered { code },
                Outcome::Failed { code, error } => {
                    let wait = super::retry_wait(policy, attempts);
                    let next_at = lapse_core::now_millis() + wait.as_millis() as i64;
                    let too_old = next_at - d.created_at > super::MAX_AGE.as_millis() as i64;
                    if attempts >= policy.max_attempts || too_old {
                        Attempt::GaveUp { code, error }
                    } else {
                        Attempt::Retry { code, error, next_at }
                    }
                }
            };
            let label = match &attempt {
                Attempt::Delivered { .. } => "delivered",
                Attempt::Retry { .. } => "retry",
                Attempt::GaveUp { .. } => "failed",
            };
            cx.metrics.webhook_delivery(label);
            tracing::debug!(webhook = %hook.id, delivery = %d.id, event = %d.event, outcome = label, "webhook attempt");
            if let Err(e) = cx.store.record_attempt(&d.id, &attempt).await {
                // Not recorded: it stays pending and is sent again (at least once).
                tracing::warn!(delivery = %d.id, error = %e, "recording a webhook attempt failed");
            }
        })
        .await;
    Ok(n)
}

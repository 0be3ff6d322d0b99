//! Running a pool's claim hook ([`lapse_core::claim`]) on a member a create just claimed.
//!
//! The claim transaction marks the member with the label [`PENDING_LABEL`]; the hook's steps
//! run through the provider's `exec`, bounded by the hook's timeout as a whole; on success a
//! second transaction clears the mark (with a `claim_hook ok` event), on failure the member
//! is recycled (desired `deleted`, an event with the step's exit and stderr) and the create
//! goes on to the next member or a cold start. A member still marked when the server starts
//! (it died mid-hook: the caller never got an answer) is recycled by [`recycle_pending`], so
//! no environment stays half-assigned. The `http` kind ([`http`]) posts to the member's
//! recorded endpoint instead of running a command.

pub mod http;

use std::time::Instant;

use lapse_core::claim::{ClaimHook, ClaimParams, READY_PAUSE, delivery};
use lapse_core::model::{DesiredState, Environment};
use lapse_providers::Provider;
use lapse_store::{ListFilter, NewEvent, StoreError};

use crate::context::Context;

/// The label a claimed member carries until its hook has run.
pub const PENDING_LABEL: &str = "lapse.claim";
/// Its value.
pub const PENDING: &str = "pending";

/// Most of a failing step's stderr kept in the reason.
const MAX_REASON: usize = 300;

/// Runs `hook` with `params` inside `env` (running, just claimed); `Err` says which step
/// failed and how.
pub async fn deliver(
    provider: &dyn Provider,
    env: &Environment,
    hook: &ClaimHook,
    params: &ClaimParams,
) -> Result<(), String> {
    let deadline = Instant::now() + hook.timeout();
    let left = || deadline.saturating_duration_since(Instant::now());
    for step in delivery(hook, params) {
        let what = step_name(hook, &step);
        let done = provider.exec(&env.id, &env.spec, &step, left()).await.map_err(|e| format!("{what}: {e}"))?;
        match done.exit_code {
            Some(0) => {}
            code => return Err(format!("{what}: {}", outcome(code, &done.stderr))),
        }
    }
    if let Some(http) = &hook.http {
        return http::deliver(env, http, params, deadline).await;
    }
    if hook.ready.is_empty() {
        return Ok(());
    }
    let mut last = String::from("not run");
    while !left().is_zero() {
        match provider.exec(&env.id, &env.spec, &hook.ready, left()).await {
            Ok(done) if done.exit_code == Some(0) => return Ok(()),
            Ok(done) => last = outcome(done.exit_code, &done.stderr),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(READY_PAUSE.min(left())).await;
    }
    Err(format!("ready did not pass within {:?}: {last}", hook.timeout()))
}

fn step_name(hook: &ClaimHook, step: &[String]) -> String {
    match step.first().map(String::as_str) {
        Some("env") => format!("on_claim.exec {:?}", hook.exec.first().map(String::as_str).unwrap_or("")),
        _ => format!("writing {}", step.get(4).map(String::as_str).unwrap_or("a file")),
    }
}

fn outcome(code: Option<i64>, stderr: &str) -> String {
    let stderr: String = stderr.trim().chars().take(MAX_REASON).collect();
    match code {
        Some(c) if stderr.is_empty() => format!("exit {c}"),
        Some(c) => format!("exit {c}: {stderr}"),
        None => "timed out".into(),
    }
}

/// Clears a delivered member's mark.
pub async fn finish(cx: &Context, id: &str, actor: &str) -> Result<Option<Environment>, StoreError> {
    cx.store
        .update(id, |e| {
            e.labels.remove(PENDING_LABEL);
            Ok::<_, StoreError>(vec![NewEvent::new(id, actor, "claim_hook", "ok", "claim parameters delivered")])
        })
        .await
}

/// Recycles a member whose hook failed (or whose server died during it).
pub async fn recycle(cx: &Context, id: &str, actor: &str, why: &str) -> Result<(), StoreError> {
    cx.store
        .update(id, |e| {
            e.labels.remove(PENDING_LABEL);
            e.desired = DesiredState::Deleted;
            e.restart_on_extend = false;
            Ok::<_, StoreError>(vec![NewEvent::new(id, actor, "claim_hook", "error", format!("recycled: {why}"))])
        })
        .await?;
    Ok(())
}

/// At start: members left marked by a server that died during their hook are recycled;
/// answers their ids, for the reconciler.
pub async fn recycle_pending(cx: &Context) -> Result<Vec<String>, StoreError> {
    let filter = ListFilter { labels: vec![(PENDING_LABEL.into(), PENDING.into())], ..Default::default() };
    let mut recycled = Vec::new();
    for env in cx.store.list(&filter).await? {
        recycle(cx, &env.id, "pool", "the server stopped before its claim hook finished").await?;
        tracing::warn!(environment = %env.id, "recycled a member whose claim hook never finished");
        recycled.push(env.id);
    }
    Ok(recycled)
}

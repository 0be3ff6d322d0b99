//! Pre-expiry warnings: at each mark `expires_at − d` of an environment's `warn_before`, an
//! `expiring_soon` event (and so the webhook of that name), and for `process` and `docker`
//! environments a line in the file `LAPSE_NOTICE` names inside the environment.
//!
//! Contract:
//! - `warn_before` comes from the create body, else the tenant's tier (`[tiers.X]
//!   warn_before`); each mark above zero and below the lease, at most [`MAX_MARKS`]. A tier's
//!   mark that does not fit a short lease is left out, not refused.
//! - **Marks are timers like expiry.** The reconciler's converged step of a running
//!   environment calls [`step`], which fires the marks that are due and returns the next
//!   one's deadline for the timers. At start every running environment with marks is looked
//!   at once ([`lapse_store::Store::warning_ids`]), so timers are rebuilt from the store.
//! - **A mark fires once per lease**: the marks fired are in the row (`warned`), written in
//!   the same transaction as the event, so a restart repeats none; marks passed while the
//!   server was down fire once (one event naming the nearest) if the lease has not ended.
//! - **Extending clears them**: `App::extend` empties `warned` when `expires_at` moves, so
//!   the marks count from the new expiry.
//! - The notice is a JSON line `{"event":"expiring_soon","expires_at","in_seconds"}` written
//!   through the provider's archive upload (`put_archive`), best effort: a failure is logged,
//!   never retried, and never holds the event back. `LAPSE_NOTICE` is
//!   `<work dir>/.lapse/notice` for `process` and `/run/lapse-notice` for `docker`; the file
//!   holds the latest warning.

use std::time::Duration;

use futures::StreamExt;
use lapse_core::Millis;
use lapse_core::model::{DesiredState, Environment, ObservedState};
use lapse_core::wire::WarnBefore;
use lapse_store::NewEvent;

use crate::admission::Principal;
use crate::app::{App, AppError};
use crate::auth::Caller;
use crate::context::Context;
use crate::webhooks::events::{EXPIRING_SOON, QUOTA_REFUSED};

/// Most marks an environment may have.
pub const MAX_MARKS: usize = 8;

fn invalid(message: impl Into<String>) -> AppError {
    AppError::Invalid(lapse_core::validate::FieldError { field: "warn_before".into(), message: message.into() })
}

/// The marks of a new environment in ms, largest first: the request's (checked), else its
/// tier's (those that fit the lease).
pub fn marks(
    app: &App,
    input: Option<&WarnBefore>,
    ttl: Option<Duration>,
    who: &Principal,
) -> Result<Vec<Millis>, AppError> {
    let Some(input) = input else {
        let tier = who.quota.as_ref().map(|q| q.warn_before.clone()).unwrap_or_default();
        let lease = ttl.unwrap_or(Duration::ZERO);
        let mut out: Vec<Millis> =
            tier.iter().filter(|d| !d.is_zero() && **d < lease).map(|d| d.as_millis() as Millis).collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out.dedup();
        out.truncate(MAX_MARKS);
        return Ok(out);
    };
    check_marks(input, ttl, app.cx.config.max_ttl).map_err(invalid)
}

/// Checks marks against a lease of `ttl` (pure): each above zero and below the lease, at most
/// [`MAX_MARKS`]; in ms, largest first, without duplicates.
pub fn check_marks(input: &WarnBefore, ttl: Option<Duration>, max_ttl: Duration) -> Result<Vec<Millis>, String> {
    let items = input.items();
    if items.len() > MAX_MARKS {
        return Err(format!("at most {MAX_MARKS} marks"));
    }
    let Some(lease) = ttl else {
        return Err("the environment has no lease (give it a ttl)".into());
    };
    let mut out = Vec::with_capacity(items.len());
    for item in &items {
        let d = item.to_duration(max_ttl).map_err(|e| e.to_string())?;
        if d.is_zero() || d >= lease {
            return Err(format!(
                "each mark must be above zero and below the lease ({})",
                lapse_core::duration::format_duration(lease)
            ));
        }
        out.push(d.as_millis() as Millis);
    }
    out.sort_unstable_by(|a, b| b.cmp(a));
    out.dedup();
    Ok(out)
}

/// The deadlines of `e`'s marks not yet fired, earliest first.
fn unfired(e: &Environment) -> Vec<(Millis, Millis)> {
    let Some(exp) = e.expires_at else { return Vec::new() };
    let mut out: Vec<(Millis, Millis)> =
        e.warn_before.iter().filter(|d| !e.warned.contains(d)).map(|d| (exp - d, *d)).collect();
    out.sort_unstable();
    out
}

fn warnable(e: &Environment, now: Millis) -> bool {
    e.observed == ObservedState::Running
        && e.desired == DesiredState::Running
        && e.expired_at.is_none()
        && e.expires_at.is_some_and(|exp| now < exp)
}

/// Fires `env`'s due marks; the deadline of its next one, for the timers.
pub async fn step(cx: &Context, env: &Environment) -> Option<Millis> {
    let now = cx.clock.now();
    if env.warn_before.is_empty() || !warnable(env, now) {
        return None;
    }
    let marks = unfired(env);
    let due: Vec<Millis> = marks.iter().filter(|(at, _)| *at <= now).map(|(_, d)| *d).collect();
    if !due.is_empty() {
        let lease = env.expires_at;
        let fired = cx
            .store
            .update(&env.id, |e| {
                if !warnable(e, now) || e.expires_at != lease {
                    return Err(AppError::Conflict("changed".into()));
                }
                let fresh: Vec<Millis> = due.iter().copied().filter(|d| !e.warned.contains(d)).collect();
                if fresh.is_empty() {
                    return Err(AppError::Conflict("fired".into()));
                }
                e.warned.extend(&fresh);
                e.warned_at = Some(now);
                let exp = e.expires_at.unwrap_or(now);
                let left = Duration::from_millis(u64::try_from(exp - now).unwrap_or(0));
                Ok(vec![NewEvent::new(
                    &e.id,
                    "warnings",
                    EXPIRING_SOON,
                    "ok",
                    format!(
                        "the lease ends at {} (in {})",
                        lapse_core::format_millis(exp),
                        lapse_core::duration::format_duration(Duration::from_secs(left.as_secs()))
                    ),
                )])
            })
            .await;
        match fired {
            Ok(Some(e)) => {
                tracing::info!(environment = %e.id, "pre-expiry warning");
                notify(cx, &e, now);
            }
            Ok(None) | Err(AppError::Conflict(_)) => {}
            Err(err) => {
                tracing::warn!(environment = %env.id, error = %err, "recording a pre-expiry warning failed; retrying in 1 s");
                return Some(now + 1_000);
            }
        }
    }
    marks.iter().map(|(at, _)| *at).find(|at| *at > now)
}

/// Where `LAPSE_NOTICE` points in an environment of provider kind `kind`, as (directory,
/// file name); `None` for kinds without a notice.
pub fn notice_place(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "process" => Some(("/.lapse", "notice")),
        "docker" => Some(("/run", "lapse-notice")),
        _ => None,
    }
}

/// Writes the notice line into the environment (in the background, best effort).
fn notify(cx: &Context, e: &Environment, now: Millis) {
    let Some(provider) = cx.providers.get(&e.spec.provider).cloned() else { return };
    let Some((dir, file)) = notice_place(provider.kind()) else { return };
    let exp = e.expires_at.unwrap_or(now);
    let line = serde_json::json!({
        "event": "expiring_soon",
        "expires_at": lapse_core::format_millis(exp),
        "in_seconds": (exp - now).max(0) / 1000,
    })
    .to_string()
        + "\n";
    let (id, spec) = (e.id.clone(), e.spec.clone());
    tokio::spawn(async move {
        let tar = match notice_tar(dir, file, line.as_bytes()) {
            Ok(t) => t,
            Err(err) => return tracing::warn!(environment = %id, error = %err, "building the notice failed"),
        };
        // The process provider's archive root is the work directory; `/` is that root.
        let (dest, tar) = if dir == "/.lapse" { ("/", tar) } else { (dir, tar) };
        if let Err(err) = provider.put_archive(&id, &spec, dest, tar).await {
            tracing::warn!(environment = %id, error = %err, "writing the pre-expiry notice failed");
        }
    });
}

/// A tar stream of the notice file (under `.lapse/` for the process provider's root).
fn notice_tar(dir: &str, file: &str, body: &[u8]) -> std::io::Result<lapse_providers::archive::ArchiveStream> {
    use lapse_providers::archive::{EntryKind, end_marker, header_bytes, pad};
    let mtime = u64::try_from(lapse_core::now_millis() / 1000).unwrap_or(0);
    let mut parts = Vec::new();
    let path = if dir == "/.lapse" {
        parts.push(header_bytes(".lapse", EntryKind::Dir, 0, mtime)?);
        format!(".lapse/{file}")
    } else {
        file.to_owned()
    };
    parts.push(header_bytes(&path, EntryKind::File, body.len() as u64, mtime)?);
    parts.push(bytes::Bytes::copy_from_slice(body));
    parts.push(pad(body.len() as u64));
    parts.push(end_marker());
    Ok(futures::stream::iter(parts.into_iter().map(Ok)).boxed())
}

/// Writes the `quota_refused` event of a refused create (its own transaction: the refused
/// one wrote nothing). A failure is logged; the refusal stands either way.
pub async fn record_quota_refusal(app: &App, caller: &Caller, owner: &str, message: &str) {
    let tenant = caller.scope().unwrap_or("");
    let owner: String = owner.chars().take(128).collect();
    let event =
        NewEvent::of_tenant(tenant, &caller.actor(), QUOTA_REFUSED, "refused", format!("{message} (owner {owner})"));
    if let Err(e) = app.cx.store.append_event(event).await {
        tracing::warn!(error = %e, "recording a quota refusal failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfired_marks_are_earliest_first_and_skip_fired_ones() {
        let mut e = Environment::new("e".into(), "o".into(), Default::default(), 0);
        e.expires_at = Some(10_000);
        e.warn_before = vec![4_000, 2_000];
        assert_eq!(unfired(&e), vec![(6_000, 4_000), (8_000, 2_000)]);
        e.warned = vec![4_000];
        assert_eq!(unfired(&e), vec![(8_000, 2_000)]);
        e.observed = ObservedState::Running;
        assert!(warnable(&e, 9_999) && !warnable(&e, 10_000));
    }

    #[test]
    fn marks_are_checked_against_the_lease() {
        use lapse_core::wire::DurationInput as D;
        let day = Duration::from_secs(86_400);
        let lease = Some(Duration::from_secs(600));
        let text = |t: &str| WarnBefore::One(D::Text(t.into()));
        assert_eq!(check_marks(&text("2m, 5m,2m"), lease, day).unwrap(), vec![300_000, 120_000]);
        assert_eq!(
            check_marks(&WarnBefore::Many(vec![D::Seconds(60), D::Text("30s".into())]), lease, day).unwrap(),
            vec![60_000, 30_000]
        );
        for (bad, why) in [
            (text("10m"), "below the lease"),
            (text("0s"), "positive"),
            (text("1m,x"), ""),
            (WarnBefore::One(D::Seconds(-1)), ""),
            (text("1s,2s,3s,4s,5s,6s,7s,8s,9s"), "at most 8"),
        ] {
            let err = check_marks(&bad, lease, day).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(check_marks(&text("1m"), None, day).unwrap_err().contains("no lease"));
    }

    #[test]
    fn the_notice_is_a_tar_of_one_file() {
        for (dir, file) in [notice_place("process").unwrap(), notice_place("docker").unwrap()] {
            assert!(notice_tar(dir, file, b"{}\n").is_ok());
        }
        assert!(notice_place("aws").is_none());
    }
}

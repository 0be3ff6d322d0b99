//! What a batch of queue messages does to the store: each message checked ([`request`],
//! [`cloud_init`]) and either committed with its receipt (and idempotency key) or refused
//! with a reason. Removing the batch from Redis is the consumer's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use lapse_core::duration;
use lapse_core::model::{DesiredState, Environment, NO_TENANT, OnExpiry, new_environment_id};
use lapse_store::{AppliedCreates, ChangeOutcome, ListFilter, NewEvent, QueuedChange, QueuedCreate};

use super::cloud_init::CloudInitDir;
use super::consumer::RoundError;
use super::entry::Entry;
use super::request::{self, DecommissionRequest, LAB_LABEL, MessageError, ProvisionRequest, RESOURCES_LABEL};
use super::{Kind, Queue, Swim};
use crate::admission::{self, HostGuard, Principal};
use crate::app::{App, AppError};

/// The source of the environments the queues make; decommissions select only these.
pub const SOURCE: &str = "swim";

/// A batch handled: messages whose effect is committed (or was before), and refused ones with
/// the reason.
#[derive(Debug, Default)]
pub(super) struct Handled {
    pub done: Vec<Entry>,
    pub dead: Vec<(Entry, String)>,
}

/// Applies a batch to the store. The error is the store's (the batch stays in the processing
/// list, to be handled again); each message's own refusal is in [`Handled::dead`].
pub(super) async fn apply(app: &App, swim: &Swim, queue: &Queue, batch: Vec<Entry>) -> Result<Handled, RoundError> {
    let mut out = Handled::default();
    match queue.kind {
        Kind::Provision => {
            let dir = CloudInitDir::new(swim.config.cloud_init_root(&app.cx.config.data_dir));
            // One read per file and batch: a batch of labs usually names one file.
            let mut files: HashMap<String, Result<String, String>> = HashMap::new();
            let mut items = Vec::with_capacity(batch.len());
            let mut accepted = Vec::with_capacity(batch.len());
            for entry in batch {
                match provision_item(app, swim, queue, &dir, &mut files, &entry).await {
                    Ok(item) => {
                        items.push(item);
                        accepted.push(entry);
                    }
                    Err(reason) => out.dead.push((entry, reason)),
                }
            }
            if !items.is_empty() {
                let keyed: Vec<(&QueuedCreate, Option<&str>)> =
                    items.iter().map(|(item, key)| (item, key.as_deref())).collect();
                let AppliedCreates { fresh, duplicate_keys } =
                    app.cx.store.apply_keyed_creates(&queue.key, &keyed).await?;
                let fresh: std::collections::HashSet<String> = fresh.into_iter().collect();
                for (item, _) in items.iter().filter(|(i, _)| fresh.contains(&i.tag)) {
                    if let Some(at) = item.env.expires_at {
                        app.cx.timers.schedule(at, &item.env.id);
                    }
                    app.reconciler.enqueue(&item.env.id);
                }
                queue.applied.fetch_add(fresh.len() as u64, Ordering::Relaxed);
                app.cx.metrics.queue(&queue.key, "applied", fresh.len() as u64);
                app.cx.metrics.queue(&queue.key, "skipped", (items.len() - fresh.len()) as u64);
                if !duplicate_keys.is_empty() {
                    tracing::info!(
                        queue = %queue.key,
                        skipped = duplicate_keys.len(),
                        "messages whose IdempotencyKey was applied before were not applied again"
                    );
                }
                let replayed = items.len() - fresh.len() - duplicate_keys.len();
                if replayed > 0 {
                    tracing::info!(
                        queue = %queue.key,
                        skipped = replayed,
                        "messages applied before a crash were not applied again"
                    );
                }
            }
            out.done = accepted;
        }
        Kind::Decommission => {
            for entry in batch {
                match decommission(app, swim, queue, &entry).await? {
                    Ok(()) => out.done.push(entry),
                    Err(reason) => out.dead.push((entry, reason)),
                }
            }
        }
    }
    Ok(out)
}

/// Parses an entry, refusing it first if the script that took it cut it.
fn parse<T: serde::de::DeserializeOwned>(swim: &Swim, entry: &Entry) -> Result<T, MessageError> {
    if let Some(length) = entry.cut_from {
        return Err(MessageError::TooLarge { length, limit: swim.config.max_message_bytes });
    }
    request::parse_bytes(entry.message(), swim.config.max_message_bytes)
}

/// The environment a provision message creates, with its idempotency key.
async fn provision_item(
    app: &App,
    swim: &Swim,
    queue: &Queue,
    dir: &CloudInitDir,
    files: &mut HashMap<String, Result<String, String>>,
    entry: &Entry,
) -> Result<(QueuedCreate, Option<String>), String> {
    let req: ProvisionRequest = parse(swim, entry).map_err(|e| e.to_string())?;
    let mut p = request::provision(&req, &swim.config, app.cx.config.max_ttl)?;
    if let Some(file) = &p.cloud_init_file {
        let text = match files.get(file) {
            Some(read) => read.clone()?,
            None => {
                let read = dir.read(file).await.map_err(|e| e.to_string());
                files.insert(file.clone(), read.clone());
                read?
            }
        };
        p.spec.user_data = Some(text);
    }
    let now = app.cx.clock.now();
    let mut env = Environment::new(new_environment_id(), p.owner, p.spec, now);
    env.name = Some(p.name);
    env.labels = p.labels;
    env.expires_at = Some(now + p.ttl.as_millis() as i64);
    env.on_expiry = OnExpiry::Delete;
    env.source = SOURCE.into();
    admit(app, &mut env).await?;
    let message = format!(
        "lab {} for {} from {}, ttl {}, on expiry delete",
        p.lab,
        env.owner,
        queue.key,
        duration::format_duration(p.ttl)
    );
    let event = NewEvent::new(&env.id, "swim", "create", "ok", message);
    Ok((QueuedCreate { tag: entry.tag.clone(), env, event }, p.idempotency_key))
}

/// Admits a lab as the operator's (tenantless), through the same admission as every create.
///
/// An instance type is a size the provider enforces. Where it cannot (the `process` provider
/// on a host without a writable cgroup), refusing would dead-letter every message of a
/// deployment whose default type is set, though the seed's users asked for a lab, not for a
/// limit: the lab runs without limits instead, its type kept as a label, marked
/// [`RESOURCES_LABEL`]` = unenforced` (and `resources_enforced: false` in its key), and the
/// log says so once per server.
async fn admit(app: &App, env: &mut Environment) -> Result<(), String> {
    let operator = Principal::operator(NO_TENANT, "swim");
    match admission::admit(&app.cx, env, &operator, HostGuard::Check).await {
        Err(AppError::Invalid(e)) if e.field == "spec.resources" && env.spec.resources.is_some() => {
            if !UNENFORCED_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    provider = %env.spec.provider,
                    reason = %e.message,
                    "SWIM instance types cannot be enforced here; labs run without their type's vCPU and memory limits"
                );
            }
            env.spec.resources = None;
            env.labels.insert(RESOURCES_LABEL.to_owned(), "unenforced".to_owned());
            admission::admit(&app.cx, env, &operator, HostGuard::Check).await.map_err(|e| e.to_string())
        }
        other => other.map_err(|e| e.to_string()),
    }
}

/// Whether the log said that instance types are not enforced.
static UNENFORCED_WARNED: AtomicBool = AtomicBool::new(false);

/// Deletes the environments a decommission names, of those SWIM made. The outer error is the
/// store's; the inner one refuses the message.
async fn decommission(app: &App, swim: &Swim, queue: &Queue, entry: &Entry) -> Result<Result<(), String>, RoundError> {
    let parsed = parse::<DecommissionRequest>(swim, entry).map_err(|e| e.to_string());
    let d = match parsed.and_then(|r| request::decommission(&r)) {
        Ok(d) => d,
        Err(reason) => return Ok(Err(reason)),
    };
    let filter = ListFilter {
        owner: Some(d.owner.clone()),
        labels: d.lab.iter().map(|l| (LAB_LABEL.to_owned(), l.clone())).collect(),
        ..Default::default()
    };
    let what = match &d.lab {
        Some(lab) => format!("decommission of {}, lab {lab}", d.owner),
        None => format!("decommission of {}", d.owner),
    };
    let message = QueuedChange {
        tag: &entry.tag,
        idempotency_key: d.idempotency_key.as_deref(),
        source: Some(SOURCE),
        filter: &filter,
    };
    let outcome = app
        .cx
        .store
        .apply_queued_change(&queue.key, message, {
            let message = format!("{what} from {}", queue.key);
            move |e| {
                e.desired = DesiredState::Deleted;
                e.restart_on_extend = false;
                vec![NewEvent::new(&e.id, "swim", "delete", "ok", message.clone())]
            }
        })
        .await?;
    match outcome {
        ChangeOutcome::Applied(changed) => {
            for env in &changed {
                app.reconciler.enqueue(&env.id);
            }
            tracing::info!(queue = %queue.key, environments = changed.len(), "{what}");
            queue.applied.fetch_add(1, Ordering::Relaxed);
            app.cx.metrics.queue(&queue.key, "applied", 1);
        }
        ChangeOutcome::DuplicateKey => {
            tracing::info!(queue = %queue.key, "{what}: its IdempotencyKey was applied before; not applied again");
            app.cx.metrics.queue(&queue.key, "skipped", 1);
        }
        ChangeOutcome::AlreadyApplied => app.cx.metrics.queue(&queue.key, "skipped", 1),
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lapse_core::model::Spec;
    use lapse_providers::process::ProcessProvider;
    use lapse_providers::{Provider, ProviderSet};

    use super::*;
    use crate::compat::swim::SwimConfig;
    use crate::tests::Harness;

    /// A `process` provider without its helper program cannot enforce resources (as one
    /// without a writable cgroup): a lab with an instance type runs all the same, its type kept
    /// as a label and marked unenforced.
    #[tokio::test(start_paused = true)]
    async fn an_instance_type_the_provider_cannot_enforce_is_kept_as_a_label() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut providers = ProviderSet::default();
        let process = ProcessProvider::new(dir.path(), "ctl").expect("a process provider");
        assert!(
            process.validate(&Spec { resources: Some(request::instance_type("DEV1-S").unwrap()), ..spec() }).is_err()
        );
        providers.insert(Arc::new(process));
        let h = Harness::start(providers, |_| {}).await;
        let mut config = SwimConfig::new("127.0.0.1:1");
        config.default_cmd = Some("true".into());
        config.default_instance_type = Some("DEV1-S".into());
        let swim = Swim::new(config).expect("a Redis URL");
        let queue = swim.queues[0].clone();
        let message = r#"#lapse:t:1 {"WebUsername":"ann","LabID":3,"TTLMinutes":30,"ServerType":"GP1-XS"}"#;
        let entry = Entry::parse(message.as_bytes().to_vec()).expect("a tagged element");
        let handled = apply(&h.app, &swim, &queue, vec![entry]).await.expect("the store writes");
        assert_eq!((handled.done.len(), handled.dead.len()), (1, 0), "{:?}", handled.dead);
        let envs = h.app.cx.store.list(&ListFilter { owner: Some("ann".into()), ..Default::default() }).await.unwrap();
        let env = &envs[0];
        assert_eq!(env.spec.resources, None);
        assert_eq!(env.labels[RESOURCES_LABEL], "unenforced");
        assert_eq!(env.labels[request::INSTANCE_TYPE_LABEL], "GP1-XS");
        assert!(env.name.as_deref().is_some_and(|n| n.starts_with("lab3-")), "{:?}", env.name);
        let state = super::super::cache::ServerState::of(env);
        assert_eq!((state.lapse.instance_type, state.lapse.resources_enforced), (Some("GP1-XS"), Some(false)));
    }

    fn spec() -> Spec {
        Spec { provider: "process".into(), cmd: vec!["true".into()], ..Default::default() }
    }
}

//! The queue consumers: one pump per queue moves messages into its processing list, handlers
//! apply them (at most `concurrency` batches at once) and remove them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapse_core::model::{DesiredState, Environment, OnExpiry, new_environment_id};
use lapse_core::{duration, format_millis};
use lapse_store::{ListFilter, NewEvent, QueuedCreate};
use redis::aio::MultiplexedConnection;
use tokio::sync::Semaphore;

use super::request::{self, DecommissionRequest, LAB_LABEL, ProvisionRequest};
use super::{FIRST_BACKOFF, Kind, Queue, Swim, next_backoff};
use crate::app::App;

/// Marks a message in a processing list as tagged: `#lapse:<tag> <message>`.
const TAG_MARK: &str = "#lapse:";

/// Moves up to `ARGV[2]` messages from the queue's tail (the seed's producers `LPUSH`) to the
/// processing list, each tagged `ARGV[1]<n>`, atomically.
const TAKE: &str = r"
local out = {}
for i = 1, tonumber(ARGV[2]) do
  local m = redis.call('RPOP', KEYS[1])
  if not m then break end
  local e = ARGV[1] .. i .. ' ' .. m
  redis.call('LPUSH', KEYS[2], e)
  out[#out + 1] = e
end
return out";

/// Replaces one untagged message (moved by `BLMOVE`) in the processing list by its tagged form.
const TAG: &str = r"
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[1], ARGV[2])
  return 1
end
return 0";

/// Removes handled messages from the processing list: `ARGV[1]` applied ones, then pairs of
/// (message, dead-letter record) for refused ones, which go to the dead-letter list. Each
/// search starts at the tail, where the oldest batch is, and messages come in the order they
/// were taken: removing a batch costs about its size, not its size times the list's.
const DONE: &str = r"
local n = tonumber(ARGV[1])
for i = 2, n + 1 do
  redis.call('LREM', KEYS[1], -1, ARGV[i])
end
for i = n + 2, #ARGV, 2 do
  redis.call('LREM', KEYS[1], -1, ARGV[i])
  redis.call('LPUSH', KEYS[2], ARGV[i + 1])
end
return 0";

struct Scripts {
    take: redis::Script,
    tag: redis::Script,
    done: redis::Script,
}

static SCRIPTS: std::sync::LazyLock<Scripts> = std::sync::LazyLock::new(|| Scripts {
    take: redis::Script::new(TAKE),
    tag: redis::Script::new(TAG),
    done: redis::Script::new(DONE),
});

/// Why a round of consuming ended: the pump reconnects and recovers after either.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Store(#[from] lapse_store::StoreError),
}

/// A message in a processing list.
#[derive(Clone, Debug)]
struct Entry {
    /// The processing list's element, exactly.
    raw: String,
    tag: String,
    message: String,
}

fn parse_entry(raw: String) -> Result<Entry, String> {
    match raw.strip_prefix(TAG_MARK).and_then(|rest| rest.split_once(' ')) {
        Some((tag, message)) => Ok(Entry { tag: tag.to_owned(), message: message.to_owned(), raw: raw.clone() }),
        None => Err(raw),
    }
}

/// Runs one queue for ever: connect, recover the processing list, consume; on any failure
/// wait for the handlers in flight, back off and do it again.
pub async fn run(app: App, swim: Arc<Swim>, queue: Arc<Queue>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match round(&app, &swim, &queue).await {
            Ok(()) => return,
            Err(e) => {
                swim.down(&format!("{} queue", queue.name()), &e);
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
            }
        }
        if swim.connect(Duration::from_secs(1)).await.is_ok() {
            backoff = FIRST_BACKOFF;
        }
    }
}

async fn round(app: &App, swim: &Arc<Swim>, queue: &Arc<Queue>) -> Result<(), RoundError> {
    // The pump's connection blocks in BLMOVE; handlers use their own.
    let mut pump = swim.connect(Duration::from_secs(10)).await?;
    let work = swim.connect(Duration::from_secs(10)).await?;
    swim.up();
    // What a crash (or a lost connection) left in the processing list is handled first.
    let leftovers: Vec<String> =
        redis::cmd("LRANGE").arg(&queue.processing).arg(0).arg(-1).query_async(&mut pump).await?;
    if !leftovers.is_empty() {
        let mut entries = Vec::new();
        // Oldest (the tail) first, the order they were taken in.
        for raw in leftovers.into_iter().rev() {
            match parse_entry(raw) {
                Ok(entry) => entries.push(entry),
                Err(untagged) => entries.extend(tag(&mut pump, queue, untagged).await?),
            }
        }
        tracing::info!(queue = %queue.key, messages = entries.len(), "handling messages left in the processing list");
        for chunk in entries.chunks(swim.config.batch) {
            handle(app, swim, queue, &mut work.clone(), chunk.to_vec()).await?;
        }
    }
    prune(app, queue, &mut pump).await?;
    let slots = Arc::new(Semaphore::new(queue.concurrency));
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel::<RoundError>();
    let mut last_prune = tokio::time::Instant::now();
    loop {
        crate::health::tick(&format!("swim:{}", queue.name()));
        if let Ok(e) = failed_rx.try_recv() {
            // Let the other handlers finish before the processing list is read again.
            let _ = slots.acquire_many(queue.concurrency as u32).await;
            return Err(e);
        }
        let batch = take(&mut pump, queue, swim.config.batch).await?;
        if batch.is_empty() {
            if last_prune.elapsed() > Duration::from_secs(600) {
                prune(app, queue, &mut pump).await?;
                last_prune = tokio::time::Instant::now();
            }
            continue;
        }
        // The semaphore is never closed.
        let permit = slots.clone().acquire_owned().await.expect("slots open");
        let (app, swim, queue, mut conn, failed) =
            (app.clone(), swim.clone(), queue.clone(), work.clone(), failed_tx.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(&app, &swim, &queue, &mut conn, batch).await {
                let _ = failed.send(e);
            }
            drop(permit);
        });
    }
}

/// Takes a batch: what is queued now, or else the first message to arrive within a second.
async fn take(conn: &mut MultiplexedConnection, queue: &Queue, max: usize) -> Result<Vec<Entry>, RoundError> {
    let prefix = format!("{TAG_MARK}{}:", uuid::Uuid::new_v4().simple());
    let taken: Vec<String> =
        SCRIPTS.take.key(&queue.key).key(&queue.processing).arg(&prefix).arg(max).invoke_async(conn).await?;
    if !taken.is_empty() {
        return Ok(taken.into_iter().filter_map(|raw| parse_entry(raw).ok()).collect());
    }
    let moved: Option<String> = redis::cmd("BLMOVE")
        .arg(&queue.key)
        .arg(&queue.processing)
        .arg("RIGHT")
        .arg("LEFT")
        .arg(1.0)
        .query_async(conn)
        .await?;
    match moved {
        Some(untagged) => Ok(tag(conn, queue, untagged).await?.into_iter().collect()),
        None => Ok(vec![]),
    }
}

/// Tags an untagged message in the processing list.
async fn tag(conn: &mut MultiplexedConnection, queue: &Queue, untagged: String) -> Result<Option<Entry>, RoundError> {
    let tagged = format!("{TAG_MARK}{}:0 {untagged}", uuid::Uuid::new_v4().simple());
    let replaced: i64 = SCRIPTS.tag.key(&queue.processing).arg(&untagged).arg(&tagged).invoke_async(conn).await?;
    Ok((replaced == 1).then(|| parse_entry(tagged).expect("a tagged entry parses")))
}

/// Forgets receipts of messages that left the processing list long ago.
async fn prune(app: &App, queue: &Queue, conn: &mut MultiplexedConnection) -> Result<(), RoundError> {
    let listed: Vec<String> = redis::cmd("LRANGE").arg(&queue.processing).arg(0).arg(-1).query_async(conn).await?;
    let keep = listed.into_iter().filter_map(|raw| parse_entry(raw).ok()).map(|e| e.tag).collect();
    let before = app.cx.clock.now() - 3_600_000;
    let gone = app.cx.store.prune_receipts(&queue.key, before, &keep).await?;
    if gone > 0 {
        tracing::debug!(queue = %queue.key, receipts = gone, "pruned old receipts");
    }
    Ok(())
}

/// Applies a batch and removes it from the processing list; refused messages go to the
/// dead-letter list.
async fn handle(
    app: &App,
    swim: &Swim,
    queue: &Queue,
    conn: &mut MultiplexedConnection,
    batch: Vec<Entry>,
) -> Result<(), RoundError> {
    let started = std::time::Instant::now();
    let size = batch.len();
    let mut dead: Vec<(Entry, String)> = Vec::new();
    let mut done: Vec<Entry> = Vec::new();
    let mut built_ms = 0.0;
    match queue.kind {
        Kind::Provision => {
            let mut items = Vec::with_capacity(batch.len());
            let mut accepted = Vec::with_capacity(batch.len());
            for entry in batch {
                match provision_item(app, swim, queue, &entry) {
                    Ok(item) => {
                        items.push(item);
                        accepted.push(entry);
                    }
                    Err(reason) => dead.push((entry, reason)),
                }
            }
            built_ms = started.elapsed().as_secs_f64() * 1e3;
            if !items.is_empty() {
                let fresh = app.cx.store.apply_creates(&queue.key, &items).await?;
                let fresh: std::collections::HashSet<String> = fresh.into_iter().collect();
                for item in items.iter().filter(|i| fresh.contains(&i.tag)) {
                    if let Some(at) = item.env.expires_at {
                        app.cx.timers.schedule(at, &item.env.id);
                    }
                    app.reconciler.enqueue(&item.env.id);
                }
                queue.applied.fetch_add(fresh.len() as u64, Ordering::Relaxed);
                app.cx.metrics.queue(&queue.key, "applied", fresh.len() as u64);
                app.cx.metrics.queue(&queue.key, "skipped", (items.len() - fresh.len()) as u64);
                if fresh.len() < items.len() {
                    tracing::info!(
                        queue = %queue.key,
                        skipped = items.len() - fresh.len(),
                        "messages applied before a crash were not applied again"
                    );
                }
            }
            done = accepted;
        }
        Kind::Decommission => {
            for entry in batch {
                match decommission(app, queue, &entry).await? {
                    Ok(()) => done.push(entry),
                    Err(reason) => dead.push((entry, reason)),
                }
            }
        }
    }
    if swim.crash_after_commit && !done.is_empty() {
        tracing::error!("LAPSE_FAULT=swim-crash-after-commit: dying before removing the batch");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
    let committed_ms = started.elapsed().as_secs_f64() * 1e3;
    let now = format_millis(app.cx.clock.now());
    let mut script = SCRIPTS.done.prepare_invoke();
    script.key(&queue.processing).key(&queue.dead).arg(done.len());
    for entry in &done {
        script.arg(&entry.raw);
    }
    for (entry, reason) in &dead {
        tracing::warn!(queue = %queue.key, %reason, "message refused: moved to the dead-letter list");
        let record = serde_json::json!({"message": entry.message, "reason": reason, "queue": queue.key, "at": now});
        script.arg(&entry.raw).arg(record.to_string());
    }
    let _: i64 = script.invoke_async(conn).await?;
    queue.dead_lettered.fetch_add(dead.len() as u64, Ordering::Relaxed);
    app.cx.metrics.queue(&queue.key, "dead", dead.len() as u64);
    tracing::debug!(
        queue = %queue.key,
        messages = size,
        built_ms,
        committed_ms,
        done_ms = started.elapsed().as_secs_f64() * 1e3,
        "batch handled"
    );
    Ok(())
}

fn provision_item(app: &App, swim: &Swim, queue: &Queue, entry: &Entry) -> Result<QueuedCreate, String> {
    let req: ProvisionRequest = request::parse(&entry.message)?;
    let path = request::cloud_init_path(&req.cloud_init_file, swim.config.cloud_init_dir.as_deref())?;
    let user_data = request::read_cloud_init(&path)?;
    let p = request::provision(&req, &swim.config, user_data, app.cx.config.max_ttl)?;
    app.check_spec(&p.spec).map_err(|e| e.to_string())?;
    let now = app.cx.clock.now();
    let mut env = Environment::new(new_environment_id(), p.owner, p.spec, now);
    env.labels = p.labels;
    env.expires_at = Some(now + p.ttl.as_millis() as i64);
    env.on_expiry = OnExpiry::Delete;
    env.source = "swim".into();
    let message = format!(
        "lab {} for {} from {}, ttl {}, on expiry delete",
        p.lab,
        env.owner,
        queue.key,
        duration::format_duration(p.ttl)
    );
    let event = NewEvent::new(&env.id, "swim", "create", "ok", message);
    Ok(QueuedCreate { tag: entry.tag.clone(), env, event })
}

/// Deletes the environments a decommission names. The outer error is the store's; the inner
/// one refuses the message.
async fn decommission(app: &App, queue: &Queue, entry: &Entry) -> Result<Result<(), String>, RoundError> {
    let (owner, lab) =
        match request::parse::<DecommissionRequest>(&entry.message).and_then(|r| request::decommission(&r)) {
            Ok(x) => x,
            Err(reason) => return Ok(Err(reason)),
        };
    let filter = ListFilter {
        owner: Some(owner.clone()),
        labels: lab.iter().map(|l| (LAB_LABEL.to_owned(), l.clone())).collect(),
        ..Default::default()
    };
    let what = match &lab {
        Some(lab) => format!("decommission of {owner}, lab {lab}"),
        None => format!("decommission of {owner}"),
    };
    let applied = app
        .cx
        .store
        .apply_change(&queue.key, &entry.tag, &filter, |e| {
            e.desired = DesiredState::Deleted;
            e.restart_on_extend = false;
            vec![NewEvent::new(&e.id, "swim", "delete", "ok", format!("{what} from {}", queue.key))]
        })
        .await?;
    if let Some(changed) = applied {
        for env in &changed {
            app.reconciler.enqueue(&env.id);
        }
        tracing::info!(queue = %queue.key, environments = changed.len(), "{what}");
        queue.applied.fetch_add(1, Ordering::Relaxed);
        app.cx.metrics.queue(&queue.key, "applied", 1);
    } else {
        app.cx.metrics.queue(&queue.key, "skipped", 1);
    }
    Ok(Ok(()))
}

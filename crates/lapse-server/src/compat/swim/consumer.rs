//! The queue consumers: one pump per queue moves messages into its processing list, handlers
//! apply them (at most `concurrency` batches at once) and remove them.
//!
//! **One pump, any contract.** What a batch does is the contract's (`Contract`): the older
//! SWIM contract's is `super::apply` (`V1`), the newer one's is
//! [`crate::compat::swim_v2`]'s. Taking, tagging, recovery, receipts' pruning, removal and
//! dead letters are the pump's, the same for both.
//!
//! Every element is read as bytes. The script that takes a batch tags each message, cuts one
//! over the size limit to its first 4 KiB, and stops at [`BATCH_BYTES`], so a reply stays
//! bounded whatever the producers pushed. When the queue is empty the pump waits with a
//! `BLMOVE` of the queue onto itself (which changes nothing) and takes again.
//!
//! Only an IO failure (or one the client says needs a new connection) is a lost Redis; any
//! other failure ends the round all the same, is reported as itself, and the next round
//! starts after the back-off.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapse_core::format_millis;
use redis::aio::MultiplexedConnection;
use tokio::sync::Semaphore;

use super::apply::{Handled, apply};
pub(crate) use super::entry::Entry;
use super::entry::{DEAD_LETTER_PREFIX, TAG_MARK, dead_letter};
use super::{FIRST_BACKOFF, Kind, Queue, Swim, is_connection_error, next_backoff};
use crate::app::App;

/// How long the store keeps an applied idempotency key.
pub const KEYS_KEPT_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most idempotency keys the store keeps per queue (the newest).
pub const KEYS_KEPT_AT_MOST: u64 = 100_000;
/// A batch stops growing once its messages reach this many bytes (it has at least one).
pub const BATCH_BYTES: usize = 8 << 20;

/// Moves up to `ARGV[2]` messages from the queue's tail (the older seed's producers `LPUSH`),
/// or its head when `ARGV[6]` is `LPOP` (the newer one's `RPUSH`), to the processing list,
/// each tagged `ARGV[1]<n>`, atomically; a message over `ARGV[3]` bytes is kept as
/// `ARGV[1]<n>!<length>` and its first `ARGV[4]` bytes. Stops after `ARGV[5]` bytes.
const TAKE: &str = r"
local out = {}
local limit, keep, budget = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local pop = 'RPOP'
if ARGV[6] == 'LPOP' then pop = 'LPOP' end
local bytes = 0
for i = 1, tonumber(ARGV[2]) do
  if bytes >= budget then break end
  local m = redis.call(pop, KEYS[1])
  if not m then break end
  local e
  if #m > limit then
    e = ARGV[1] .. i .. '!' .. #m .. ' ' .. string.sub(m, 1, keep)
  else
    e = ARGV[1] .. i .. ' ' .. m
  end
  redis.call('LPUSH', KEYS[2], e)
  bytes = bytes + #e
  out[#out + 1] = e
end
return out";

/// Replaces one untagged element of the processing list (one pushed there by hand, or by an
/// older version) by its tagged form, cut like `TAKE` cuts; returns that form.
const TAG: &str = r"
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 1 then
  local m = ARGV[1]
  local e
  if #m > tonumber(ARGV[3]) then
    e = ARGV[2] .. '!' .. #m .. ' ' .. string.sub(m, 1, tonumber(ARGV[4]))
  else
    e = ARGV[2] .. ' ' .. m
  end
  redis.call('LPUSH', KEYS[1], e)
  return e
end
return false";

/// Removes handled messages from the processing list: `ARGV[2]` applied ones, then pairs of
/// (message, dead-letter record) for refused ones, which go to the dead-letter list, trimmed
/// to its newest `ARGV[1]`. Each search starts at the tail, where the oldest batch is, and
/// messages come in the order they were taken: removing a batch costs about its size, not its
/// size times the list's.
const DONE: &str = r"
local n = tonumber(ARGV[2])
for i = 3, n + 2 do
  redis.call('LREM', KEYS[1], -1, ARGV[i])
end
local dead = 0
for i = n + 3, #ARGV, 2 do
  redis.call('LREM', KEYS[1], -1, ARGV[i])
  redis.call('LPUSH', KEYS[2], ARGV[i + 1])
  dead = dead + 1
end
if dead > 0 then
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[1]) - 1)
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

/// A batch applied: messages whose effect is committed (or was before), and refused ones with
/// the reason (each becomes a dead letter).
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub done: Vec<Entry>,
    pub dead: Vec<(Entry, String)>,
}

/// What a batch of one contract's messages does. The error is the store's or Redis's (the
/// batch stays in the processing list, to be handled again); each message's own refusal is
/// in [`Applied::dead`].
pub(crate) trait Contract: Send + Sync + 'static {
    /// Names the pump's health beat (`<name>:provision`): `swim`, `swim_v2`.
    fn name(&self) -> &'static str;

    fn apply(
        &self,
        app: &App,
        swim: &Swim,
        queue: &Queue,
        batch: Vec<Entry>,
    ) -> impl Future<Output = Result<Applied, RoundError>> + Send;
}

/// The older SWIM contract: [`super::apply`].
pub(crate) struct V1;

impl Contract for V1 {
    fn name(&self) -> &'static str {
        "swim"
    }

    async fn apply(&self, app: &App, swim: &Swim, queue: &Queue, batch: Vec<Entry>) -> Result<Applied, RoundError> {
        let Handled { done, dead } = apply(app, swim, queue, batch).await?;
        Ok(Applied { done, dead })
    }
}

/// Why a round of consuming ended: the pump backs off and recovers after each.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RoundError {
    /// The connection failed: Redis is gone or unreachable.
    #[error("Redis connection: {0}")]
    Connection(#[source] redis::RedisError),
    /// Redis answered with an error (e.g. a queue key of the wrong type).
    #[error("Redis refused a command: {0}")]
    Refused(#[source] redis::RedisError),
    #[error(transparent)]
    Store(#[from] lapse_store::StoreError),
}

impl From<redis::RedisError> for RoundError {
    fn from(e: redis::RedisError) -> RoundError {
        if is_connection_error(&e) { RoundError::Connection(e) } else { RoundError::Refused(e) }
    }
}

/// Runs one queue of the older contract for ever (see `run_contract`).
pub async fn run(app: App, swim: Arc<Swim>, queue: Arc<Queue>) {
    if queue.kind == Kind::Provision && swim.config.cloud_init_dir.is_none() {
        // The default dir is made; one configured must exist (a typo must not pass silently).
        let root = swim.config.cloud_init_root(&app.cx.config.data_dir);
        if let Err(e) = std::fs::create_dir_all(&root) {
            tracing::warn!(dir = %root.display(), error = %e, "cannot make the cloud-init dir");
        }
    }
    run_contract(app, swim, queue, Arc::new(V1)).await
}

/// Runs one queue for ever: connect, recover the processing list, consume, each batch applied
/// by `contract`; on any failure wait for the handlers in flight, back off and do it again.
pub(crate) async fn run_contract<C: Contract>(app: App, swim: Arc<Swim>, queue: Arc<Queue>, contract: Arc<C>) {
    app.cx.metrics.queue_at_zero(&queue.key);
    let mut backoff = FIRST_BACKOFF;
    loop {
        match round(&app, &swim, &queue, &contract).await {
            Ok(()) => return,
            Err(e) => {
                let what = format!("{} queue", queue.name());
                match &e {
                    RoundError::Connection(_) => swim.down(&what, &e),
                    RoundError::Refused(_) | RoundError::Store(_) => swim.refused(&what, &e),
                }
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
            }
        }
        if swim.connect(Duration::from_secs(1)).await.is_ok() {
            backoff = FIRST_BACKOFF;
        }
    }
}

async fn round<C: Contract>(
    app: &App,
    swim: &Arc<Swim>,
    queue: &Arc<Queue>,
    contract: &Arc<C>,
) -> Result<(), RoundError> {
    // The pump's connection blocks in BLMOVE; handlers use their own.
    let mut pump = swim.connect(Duration::from_secs(10)).await?;
    let work = swim.connect(Duration::from_secs(10)).await?;
    swim.up();
    // What a crash (or a lost connection) left in the processing list is handled first.
    let leftovers: Vec<Vec<u8>> =
        redis::cmd("LRANGE").arg(&queue.processing).arg(0).arg(-1).query_async(&mut pump).await?;
    if !leftovers.is_empty() {
        let mut entries = Vec::new();
        // Oldest (the tail) first, the order they were taken in.
        for raw in leftovers.into_iter().rev() {
            match Entry::parse(raw) {
                Ok(entry) => entries.push(entry),
                Err(untagged) => entries.extend(tag(&mut pump, swim, queue, untagged).await?),
            }
        }
        tracing::info!(queue = %queue.key, messages = entries.len(), "handling messages left in the processing list");
        for chunk in entries.chunks(swim.config.batch) {
            handle(app, swim, queue, contract.as_ref(), &mut work.clone(), chunk.to_vec()).await?;
        }
    }
    prune(app, queue, &mut pump).await?;
    let slots = Arc::new(Semaphore::new(queue.concurrency));
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel::<RoundError>();
    let mut last_prune = tokio::time::Instant::now();
    loop {
        crate::health::tick(&format!("{}:{}", contract.name(), queue.name()));
        if let Ok(e) = failed_rx.try_recv() {
            // Let the other handlers finish before the processing list is read again.
            let _ = slots.acquire_many(queue.concurrency as u32).await;
            return Err(e);
        }
        let batch = take(&mut pump, swim, queue).await?;
        if batch.is_empty() {
            if last_prune.elapsed() > Duration::from_secs(600) {
                prune(app, queue, &mut pump).await?;
                last_prune = tokio::time::Instant::now();
            }
            continue;
        }
        // The semaphore is never closed.
        let permit = slots.clone().acquire_owned().await.expect("slots open");
        let (app, swim, queue, contract, mut conn, failed) =
            (app.clone(), swim.clone(), queue.clone(), contract.clone(), work.clone(), failed_tx.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(&app, &swim, &queue, contract.as_ref(), &mut conn, batch).await {
                let _ = failed.send(e);
            }
            drop(permit);
        });
    }
}

/// Takes a batch: what is queued now, or else what arrives within a second.
async fn take(conn: &mut MultiplexedConnection, swim: &Swim, queue: &Queue) -> Result<Vec<Entry>, RoundError> {
    for wait in [true, false] {
        let prefix = format!("{}{}:", String::from_utf8_lossy(TAG_MARK), uuid::Uuid::new_v4().simple());
        let taken: Vec<Vec<u8>> = SCRIPTS
            .take
            .key(&queue.key)
            .key(&queue.processing)
            .arg(&prefix)
            .arg(swim.config.batch)
            .arg(swim.config.max_message_bytes)
            .arg(DEAD_LETTER_PREFIX)
            .arg(BATCH_BYTES.max(swim.config.max_message_bytes))
            .arg(if queue.from_head { "LPOP" } else { "RPOP" })
            .invoke_async(conn)
            .await?;
        if !taken.is_empty() {
            // Every element the script returns is tagged by it.
            return Ok(taken.into_iter().filter_map(|raw| Entry::parse(raw).ok()).collect());
        }
        if wait {
            // Blocks until the queue has an element, and puts it back where it was. The reply
            // (that element, or nil) is not needed: `redis::Value` takes any.
            let side = if queue.from_head { "LEFT" } else { "RIGHT" };
            let _: redis::Value = redis::cmd("BLMOVE")
                .arg(&queue.key)
                .arg(&queue.key)
                .arg(side)
                .arg(side)
                .arg(1.0)
                .query_async(conn)
                .await?;
        }
    }
    Ok(vec![])
}

/// Tags an untagged element of the processing list.
async fn tag(
    conn: &mut MultiplexedConnection,
    swim: &Swim,
    queue: &Queue,
    untagged: Vec<u8>,
) -> Result<Option<Entry>, RoundError> {
    let tag = format!("{}{}:0", String::from_utf8_lossy(TAG_MARK), uuid::Uuid::new_v4().simple());
    let tagged: Option<Vec<u8>> = SCRIPTS
        .tag
        .key(&queue.processing)
        .arg(untagged)
        .arg(tag)
        .arg(swim.config.max_message_bytes)
        .arg(DEAD_LETTER_PREFIX)
        .invoke_async(conn)
        .await?;
    Ok(tagged.and_then(|raw| Entry::parse(raw).ok()))
}

/// Forgets receipts of messages that left the processing list long ago, and old idempotency
/// keys.
async fn prune(app: &App, queue: &Queue, conn: &mut MultiplexedConnection) -> Result<(), RoundError> {
    let listed: Vec<Vec<u8>> = redis::cmd("LRANGE").arg(&queue.processing).arg(0).arg(-1).query_async(conn).await?;
    let keep = listed.into_iter().filter_map(|raw| Entry::parse(raw).ok()).map(|e| e.tag).collect();
    let now = app.cx.clock.now();
    let gone = app.cx.store.prune_receipts(&queue.key, now - 3_600_000, &keep).await?;
    let keys_before = now - KEYS_KEPT_FOR.as_millis() as i64;
    let keys = app.cx.store.prune_idempotency_keys(&queue.key, keys_before, KEYS_KEPT_AT_MOST).await?;
    if gone > 0 || keys > 0 {
        tracing::debug!(queue = %queue.key, receipts = gone, idempotency_keys = keys, "pruned old receipts");
    }
    Ok(())
}

/// Applies a batch and removes it from the processing list; refused messages go to the
/// dead-letter list.
async fn handle<C: Contract>(
    app: &App,
    swim: &Swim,
    queue: &Queue,
    contract: &C,
    conn: &mut MultiplexedConnection,
    batch: Vec<Entry>,
) -> Result<(), RoundError> {
    let started = std::time::Instant::now();
    let size = batch.len();
    let Applied { done, dead } = contract.apply(app, swim, queue, batch).await?;
    if swim.crash_after_commit && !done.is_empty() {
        tracing::error!("LAPSE_FAULT=swim-crash-after-commit: dying before removing the batch");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
    let committed_ms = started.elapsed().as_secs_f64() * 1e3;
    let now = format_millis(app.cx.clock.now());
    let mut script = SCRIPTS.done.prepare_invoke();
    script.key(&queue.processing).key(&queue.dead).arg(swim.config.dead_letter_max).arg(done.len());
    for entry in &done {
        script.arg(&entry.raw);
    }
    for (entry, reason) in &dead {
        tracing::warn!(
            queue = %queue.key,
            tag = %entry.tag,
            bytes = entry.length(),
            %reason,
            "message refused: moved to the dead-letter list"
        );
        script.arg(&entry.raw).arg(dead_letter(entry, reason, &queue.key, &now));
    }
    let _: i64 = script.invoke_async(conn).await?;
    queue.dead_lettered.fetch_add(dead.len() as u64, Ordering::Relaxed);
    app.cx.metrics.queue(&queue.key, "dead", dead.len() as u64);
    tracing::debug!(
        queue = %queue.key,
        messages = size,
        committed_ms,
        done_ms = started.elapsed().as_secs_f64() * 1e3,
        "batch handled"
    );
    Ok(())
}

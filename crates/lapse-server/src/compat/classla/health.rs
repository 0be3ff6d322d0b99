//! `GET /api/health` (`src/routes/health.ts`, `resourceMonitor.ts`): the engine's ping (the
//! adapter's provider's `health`: `503` and `"degraded"` when it does not answer), the
//! pre-warmed queue, and the host's resources as Lapse reads them (`/proc/meminfo`,
//! `/proc/loadavg`, `statvfs` of the data dir).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ClasslaState;
use super::config::POOL;
use super::wire::{self, now_iso};

/// Bytes of memory: total, available (`MemTotal`, `MemAvailable`).
fn memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("MemTotal:")? * 1024, field("MemAvailable:")? * 1024))
}

/// The load of the last minute as a percent of the cores, and the cores.
fn cpu() -> (f64, usize) {
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .unwrap_or(0.0);
    ((100.0 * load / cores as f64).min(100.0), cores)
}

/// Bytes of the data dir's filesystem: total, used, available.
fn disk(path: &std::path::Path) -> Option<(u64, u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = st.fragment_size() as u64;
    let total = st.blocks() as u64 * frag;
    let free = st.blocks_free() as u64 * frag;
    let available = st.blocks_available() as u64 * frag;
    Some((total, total.saturating_sub(free), available))
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 }
}

pub async fn health(State(state): State<ClasslaState>) -> Response {
    let config = &state.classla.config;
    let mut docker = json!({"connected": false});
    let mut ok = false;
    match state.app.cx.providers.get(&config.provider) {
        None => docker["error"] = Value::from(format!("provider {} is not configured on this server", config.provider)),
        Some(p) => match p.health().await {
            Ok(_) => {
                docker["connected"] = Value::from(true);
                ok = true;
            }
            Err(e) => docker["error"] = Value::from(e.to_string()),
        },
    }
    let envs = state.app.cx.store.list(&lapse_store::ListFilter::default()).await.unwrap_or_default();
    let live: Vec<_> = envs.iter().filter(|e| super::alias::is_ours(e) && wire::is_live(e)).collect();
    let running = live.iter().filter(|e| wire::status(e) == "running").count();
    let pre_warmed = state.app.get_pool(POOL).await.map(|p| p.warm).unwrap_or(0);
    let with_bucket = live.iter().filter(|e| wire::status(e) == "running" && e.pool.is_none()).count();
    let mut body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "timestamp": now_iso(),
        "docker": docker,
    });
    let (usage, cores) = cpu();
    let (mem_total, mem_available) = memory().unwrap_or((0, 0));
    let mem_used = mem_total.saturating_sub(mem_available);
    let (disk_total, disk_used, disk_available) = disk(&state.app.cx.config.data_dir).unwrap_or((0, 0, 0));
    body["resources"] = json!({
        "cpu": {"usage": usage, "available": cores},
        "memory": {"total": mem_total, "used": mem_used, "available": mem_available, "usagePercent": percent(mem_used, mem_total)},
        "disk": {"total": disk_total, "used": disk_used, "available": disk_available,
                 "usagePercent": percent(disk_used, disk_used + disk_available)},
        "containers": {"running": running, "total": live.len()},
    });
    body["queue"] = json!({"preWarmed": pre_warmed, "withS3Bucket": with_bucket, "targetSize": config.queue_size});
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

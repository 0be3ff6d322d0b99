//! The host guard: local providers (`process`, `docker`) take no new environments while the
//! host's memory use is above a limit (the seed's memory threshold) or the data dir's
//! filesystem is nearly full, and warm pools of local providers do not refill meanwhile. A
//! refusal is the host's state, not the caller's fault: `503 host_capacity`.
//!
//! The readings are taken at most every [`READING_TTL`] and shared: admission asks once per
//! environment, and a queue batch or a pool refill admits a thousand at once.

/// Providers whose environments use this host's memory.
pub const LOCAL_PROVIDERS: &[&str] = &["process", "docker"];

/// Percent of the host's memory in use (`MemTotal` less `MemAvailable`, from `/proc/meminfo`).
pub fn memory_used_percent() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text)
}

fn parse_meminfo(text: &str) -> Option<f64> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    };
    let (total, available) = (field("MemTotal:")?, field("MemAvailable:")?);
    (total > 0.0).then(|| 100.0 * (total - available) / total)
}

/// Percent of the filesystem holding `path` in use, as `df` counts it (blocks reserved for
/// root count as not available).
pub fn disk_used_percent(path: &std::path::Path) -> Option<f64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    used_percent(st.blocks() as f64, st.blocks_free() as f64, st.blocks_available() as f64)
}

fn used_percent(blocks: f64, free: f64, available: f64) -> Option<f64> {
    let used = blocks - free;
    (used + available > 0.0).then(|| 100.0 * used / (used + available))
}

/// How long one reading of memory and disk use stands.
pub const READING_TTL: std::time::Duration = std::time::Duration::from_millis(250);

/// Memory and disk use, read at most every [`READING_TTL`] (per data dir).
fn readings(data_dir: &std::path::Path) -> (Option<f64>, Option<f64>) {
    type Reading = (std::time::Instant, std::path::PathBuf, Option<f64>, Option<f64>);
    static LAST: std::sync::Mutex<Option<Reading>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, dir, memory, disk)) = last.as_ref()
        && at.elapsed() < READING_TTL
        && dir == data_dir
    {
        return (*memory, *disk);
    }
    let (memory, disk) = (memory_used_percent(), disk_used_percent(data_dir));
    *last = Some((std::time::Instant::now(), data_dir.to_owned(), memory, disk));
    (memory, disk)
}

/// Why a new environment of `provider` must wait, if the host's memory or the data dir's
/// disk is above the configured limit.
pub fn refusal(provider: &str, config: &crate::config::ServerConfig) -> Option<String> {
    if !LOCAL_PROVIDERS.contains(&provider) || (config.host_memory_limit.is_none() && config.host_disk_limit.is_none())
    {
        return None;
    }
    let (memory, disk) = readings(&config.data_dir);
    if let Some(limit) = config.host_memory_limit
        && let Some(used) = memory
        && used > limit
    {
        return Some(format!(
            "host memory use is {used:.0}%, above the {limit:.0}% limit (--host-memory-limit): no new {provider} \
             environments until it drops"
        ));
    }
    if let Some(limit) = config.host_disk_limit
        && let Some(used) = disk
        && used > limit
    {
        return Some(format!(
            "disk use of the data dir's filesystem is {used:.0}%, above the {limit:.0}% limit (--host-disk-limit): \
             no new {provider} environments until space is freed"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo() {
        let text = "MemTotal:       1000 kB\nMemFree:        100 kB\nMemAvailable:    250 kB\n";
        assert_eq!(parse_meminfo(text), Some(75.0));
        assert_eq!(parse_meminfo("MemTotal: 0 kB\nMemAvailable: 0 kB\n"), None);
        assert!(memory_used_percent().is_some_and(|p| (0.0..=100.0).contains(&p)));
    }

    #[test]
    fn counts_disk_like_df() {
        // 100 blocks, 30 free of which 10 are reserved for root: 70 used of 90 usable.
        assert_eq!(used_percent(100.0, 30.0, 20.0).map(|p| p.round()), Some(78.0));
        assert_eq!(used_percent(0.0, 0.0, 0.0), None);
        assert!(disk_used_percent(std::path::Path::new("/")).is_some_and(|p| (0.0..=100.0).contains(&p)));
    }

    #[test]
    fn guards_local_providers_only() {
        let mut config = crate::config::ServerConfig::new("/");
        config.host_memory_limit = None;
        config.host_disk_limit = None;
        assert_eq!(refusal("process", &config), None, "no limit, no guard");
        config.host_disk_limit = Some(0.0);
        assert_eq!(refusal("sim", &config), None, "only local providers");
        assert!(refusal("docker", &config).unwrap().contains("--host-disk-limit"));
        config.host_memory_limit = Some(0.0);
        assert!(refusal("process", &config).unwrap().contains("above the 0% limit (--host-memory-limit)"));
    }
}

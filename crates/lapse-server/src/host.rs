//! The host guard: local providers (`process`, `docker`) take no new environments while the
//! host's memory use is above a limit (the seed's memory threshold), and warm pools of local
//! providers do not refill meanwhile.

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

/// Why a new environment of `provider` must wait, if the host is above `limit` percent.
pub fn refusal(provider: &str, limit: Option<f64>) -> Option<String> {
    let limit = limit?;
    if !LOCAL_PROVIDERS.contains(&provider) {
        return None;
    }
    let used = memory_used_percent()?;
    (used > limit).then(|| {
        format!(
            "host memory use is {used:.0}%, above the {limit:.0}% limit (--host-memory-limit): no new {provider} \
             environments until it drops"
        )
    })
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
        assert_eq!(refusal("sim", Some(0.0)), None, "only local providers");
        assert_eq!(refusal("process", None), None, "no limit, no guard");
        assert!(refusal("process", Some(0.0)).unwrap().contains("above the 0% limit"));
    }
}

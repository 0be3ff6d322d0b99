//! Scaleway's instance types as the resources a local provider enforces.
//!
//! The seed passes `ServerType` to Scaleway unchecked (`CommercialType: req.ServerType`), so a
//! type Scaleway does not have fails its create and nothing is made. Here a type is a size:
//! the named families below, and every type whose name spells its size
//! (`<FAMILY>-<n>C-<m>G`, e.g. `POP2-2C-8G`, `POP2-HM-4C-32G`, `COPARM1-2C-8G`). Anything else
//! is refused, naming the known ones. Names are matched case-insensitively.

use lapse_core::model::Resources;

/// The named types: (name, vCPU, memory in MiB).
const NAMED: &[(&str, f64, u64)] = &[
    ("STARDUST1-S", 1.0, 1024),
    ("DEV1-S", 2.0, 2048),
    ("DEV1-M", 3.0, 4096),
    ("DEV1-L", 4.0, 8192),
    ("DEV1-XL", 4.0, 12288),
    ("PLAY2-PICO", 1.0, 2048),
    ("PLAY2-NANO", 2.0, 4096),
    ("PLAY2-MICRO", 4.0, 8192),
    ("PRO2-XXS", 2.0, 8192),
    ("PRO2-XS", 4.0, 16384),
    ("PRO2-S", 8.0, 32768),
    ("PRO2-M", 16.0, 65536),
    ("PRO2-L", 32.0, 131_072),
    ("GP1-XS", 4.0, 16384),
    ("GP1-S", 8.0, 32768),
    ("GP1-M", 16.0, 65536),
    ("GP1-L", 32.0, 131_072),
    ("GP1-XL", 48.0, 262_144),
    ("ENT1-XXS", 2.0, 8192),
    ("ENT1-XS", 4.0, 16384),
    ("ENT1-S", 8.0, 32768),
    ("ENT1-M", 16.0, 65536),
    ("ENT1-L", 32.0, 131_072),
    ("ENT1-XL", 64.0, 262_144),
];

/// The largest size a `<n>C-<m>G` name may spell (beyond any real type).
const MAX_VCPU: u64 = 512;
const MAX_GIB: u64 = 4096;

/// The resources of an instance type, or why it has none.
pub fn resources(name: &str) -> Result<Resources, String> {
    if let Some((_, vcpu, mem)) = NAMED.iter().find(|(n, ..)| n.eq_ignore_ascii_case(name)) {
        return Ok(Resources { vcpu: Some(*vcpu), mem_mb: Some(*mem), disk_gb: None });
    }
    if let Some((vcpu, gib)) = spelled(name) {
        return Ok(Resources { vcpu: Some(vcpu as f64), mem_mb: Some(gib * 1024), disk_gb: None });
    }
    let known: Vec<&str> = NAMED.iter().map(|(n, ..)| *n).collect();
    let mut shown: String = name.chars().take(64).collect();
    if shown.len() < name.len() {
        shown.push('…');
    }
    Err(format!(
        "unknown ServerType {shown:?}: not one of {} nor of the form FAMILY-<n>C-<m>G (e.g. POP2-2C-8G)",
        known.join(", ")
    ))
}

/// `FAMILY[-VARIANT]-<n>C-<m>G`: the vCPU count and GiB it spells.
fn spelled(name: &str) -> Option<(u64, u64)> {
    let upper = name.to_ascii_uppercase();
    let parts: Vec<&str> = upper.split('-').collect();
    let [family @ .., cpu, mem] = parts.as_slice() else { return None };
    if family.is_empty() || family.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric())) {
        return None;
    }
    let number = |s: &str, unit: char, max: u64| {
        let digits = s.strip_suffix(unit)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 4 {
            return None;
        }
        digits.parse::<u64>().ok().filter(|n| (1..=max).contains(n))
    };
    Some((number(cpu, 'C', MAX_VCPU)?, number(mem, 'G', MAX_GIB)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(name: &str) -> Option<(f64, u64)> {
        resources(name).ok().map(|r| (r.vcpu.unwrap(), r.mem_mb.unwrap()))
    }

    #[test]
    fn named_and_spelled_types_have_sizes() {
        assert_eq!(size("DEV1-S"), Some((2.0, 2048)));
        assert_eq!(size("dev1-l"), Some((4.0, 8192)), "case-insensitive");
        assert_eq!(size("POP2-2C-8G"), Some((2.0, 8192)));
        assert_eq!(size("POP2-HM-4C-32G"), Some((4.0, 32768)));
        assert_eq!(size("coparm1-2c-8g"), Some((2.0, 8192)));
        for bad in
            ["HUGE", "", "-2C-8G", "POP2-0C-8G", "POP2-2C-0G", "POP2-2C", "POP2--2C-8G", "POP2-99999C-8G", "P/P-2C-8G"]
        {
            let e = resources(bad).unwrap_err();
            assert!(e.starts_with("unknown ServerType") && e.contains("DEV1-S"), "{bad}: {e}");
        }
        assert!(resources(&"X".repeat(1000)).unwrap_err().len() < 600, "a long name is cut");
    }
}

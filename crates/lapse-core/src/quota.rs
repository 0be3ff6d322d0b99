//! Tenant quotas: limits from a tier, overridden per tenant, checked against what a tenant
//! holds now plus what a request asks for. Pure; the store runs [`Quota::admit`] inside the
//! transaction that creates, so concurrent requests cannot both pass a limit.
//!
//! **Summed or per request** ([`QuotaCheck`], a tenant setting). `summed` (the default)
//! holds the vCPU, memory and disk of all of a tenant's live environments together under the
//! limits. `per_request` holds each environment's own request under them, as github.gg's
//! orchestrator does (`requested > max`, `src/lib/dev-env/orchestrator.ts` at `2745f5a`), so
//! a `pro` tenant may run three 4-vCPU environments. The environment count is summed in both
//! modes (the seed's own concurrency check never fires; Lapse's does).
//!
//! **Tiers** ([`Quota::tier`], [`TIERS`]): the resource limits are github.gg's
//! (`src/lib/vm/user-vm-service.ts`, `user_quotas` in `src/db/schema`): `free` 2 vCPU /
//! 4096 MB / 10 GB disk, `pro` 4 / 8192 / 50, `unlimited` 8 / 16384 / 100. The environment
//! counts (`free` 1, `pro` 3, `unlimited` none) and the default resources given to a spec
//! that names none are Lapse's.

use std::time::Duration;

use crate::model::{Resources, Spec};
use crate::wire::QuotaInput;

/// The built-in tiers.
pub const TIERS: &[&str] = &["free", "pro", "unlimited"];

/// How a tenant's vCPU, memory and disk limits are held (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuotaCheck {
    /// What all of the tenant's live environments ask for, together (Lapse's default).
    #[default]
    Summed,
    /// What each environment asks for, alone (github.gg's orchestrator).
    PerRequest,
}

impl QuotaCheck {
    /// The name the API, the CLI and the store use.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaCheck::Summed => "summed",
            QuotaCheck::PerRequest => "per_request",
        }
    }

    pub fn parse(name: &str) -> Option<QuotaCheck> {
        match name {
            "summed" => Some(QuotaCheck::Summed),
            "per_request" => Some(QuotaCheck::PerRequest),
            _ => None,
        }
    }
}

/// Resolved limits; `None` is unlimited.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quota {
    /// Whether `vcpu`, `mem_mb` and `disk_gb` bound the sum or each request.
    pub check: QuotaCheck,
    pub environments: Option<u32>,
    pub vcpu: Option<f64>,
    pub mem_mb: Option<u64>,
    pub disk_gb: Option<u64>,
    pub max_ttl: Option<Duration>,
    pub env_hours_per_month: Option<f64>,
    /// The providers a tenant may use; `None`: every provider the server has except
    /// `process` (which runs on the server's own host).
    pub providers: Option<Vec<String>>,
    /// What a spec that names no resources is charged, and given (so that it is enforced).
    pub default_vcpu: Option<f64>,
    pub default_mem_mb: Option<u64>,
    /// Pre-expiry warnings of an environment that gives none (`[tiers.X] warn_before`).
    pub warn_before: Vec<Duration>,
}

/// What a spec without resources gets under a tier that sets no defaults.
pub const FALLBACK_VCPU: f64 = 1.0;
pub const FALLBACK_MEM_MB: u64 = 1024;

/// What a tenant holds: environments not deleted and not failed (pending and provisioning ones
/// count), and the resources their specs ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub environments: u32,
    pub vcpu: f64,
    pub mem_mb: u64,
    pub disk_gb: u64,
}

impl Quota {
    /// The built-in tiers ([`TIERS`]): `free` = 1 environment, 2 vCPU, 4096 MB, 10 GB disk;
    /// `pro` = 3 environments, 4 vCPU, 8192 MB, 50 GB; `unlimited` = any number of
    /// environments, 8 vCPU, 16384 MB, 100 GB (github.gg's numbers; see the module doc).
    pub fn tier(name: &str) -> Option<Quota> {
        let (environments, vcpu, mem_mb, disk_gb, default_vcpu, default_mem_mb) = match name {
            "free" => (Some(1), 2.0, 4096, 10, 0.5, 512),
            "pro" => (Some(3), 4.0, 8192, 50, 1.0, 1024),
            "unlimited" => (None, 8.0, 16384, 100, 1.0, 1024),
            _ => return None,
        };
        Some(Quota {
            environments,
            vcpu: Some(vcpu),
            mem_mb: Some(mem_mb),
            disk_gb: Some(disk_gb),
            default_vcpu: Some(default_vcpu),
            default_mem_mb: Some(default_mem_mb),
            ..Quota::default()
        })
    }

    /// Whether a tenant under this quota may use `provider`.
    pub fn permits(&self, provider: &str) -> bool {
        match &self.providers {
            Some(allowed) => allowed.iter().any(|p| p == provider),
            None => provider != "process",
        }
    }

    /// The resources a spec is charged and given: its own, with what it leaves out taken
    /// from the tier's defaults. `disk_gb` is never defaulted (not every provider has disks).
    pub fn charged(&self, asked: Option<&Resources>) -> Resources {
        let asked = asked.cloned().unwrap_or_default();
        Resources {
            vcpu: asked.vcpu.or(Some(self.default_vcpu.unwrap_or(FALLBACK_VCPU))),
            mem_mb: asked.mem_mb.or(Some(self.default_mem_mb.unwrap_or(FALLBACK_MEM_MB))),
            disk_gb: asked.disk_gb,
        }
    }

    /// This quota with a tenant's overrides; `max_ttl` is resolved within `longest`.
    pub fn with(mut self, o: &QuotaInput, longest: Duration) -> Quota {
        self.environments = o.environments.or(self.environments);
        self.vcpu = o.vcpu.or(self.vcpu);
        self.mem_mb = o.mem_mb.or(self.mem_mb);
        self.disk_gb = o.disk_gb.or(self.disk_gb);
        if let Some(t) = o.max_ttl.as_ref().and_then(|t| t.to_duration(longest).ok()) {
            self.max_ttl = Some(t);
        }
        self.env_hours_per_month = o.env_hours_per_month.or(self.env_hours_per_month);
        if o.providers.is_some() {
            self.providers = o.providers.clone();
        }
        self.default_vcpu = o.default_vcpu.or(self.default_vcpu);
        self.default_mem_mb = o.default_mem_mb.or(self.default_mem_mb);
        if let Some(w) = &o.warn_before {
            self.warn_before = w.items().iter().filter_map(|d| d.to_duration(longest).ok()).collect();
        }
        self
    }

    /// Refuses an expiry further than the quota's longest TTL from `now`.
    pub fn check_expiry(&self, expires_at: crate::Millis, now: crate::Millis) -> Result<(), String> {
        let ahead = Duration::from_millis(u64::try_from(expires_at - now).unwrap_or(0));
        match self.max_ttl {
            Some(max) if ahead > max + Duration::from_secs(1) => Err(format!(
                "quota: max_ttl is {}; this would run for {} more",
                crate::duration::format_duration(max),
                crate::duration::format_duration(ahead)
            )),
            _ => Ok(()),
        }
    }

    /// Refuses a TTL above the quota's longest, naming both.
    pub fn check_ttl(&self, ttl: Option<Duration>) -> Result<(), String> {
        match (self.max_ttl, ttl) {
            (Some(max), None) => Err(format!(
                "quota: max_ttl is {}; this request asks for no expiry",
                crate::duration::format_duration(max)
            )),
            (Some(max), Some(t)) if t > max => Err(format!(
                "quota: max_ttl is {}; this request asks for {}",
                crate::duration::format_duration(max),
                crate::duration::format_duration(t)
            )),
            _ => Ok(()),
        }
    }

    /// Admits one more environment of `spec` on top of `usage`, or names the limit it would
    /// pass, what is in use and what the request asks for. Under [`QuotaCheck::PerRequest`]
    /// only the environment count adds `usage`; vCPU, memory and disk are the request's own.
    pub fn admit(&self, usage: &Usage, spec: &Spec) -> Result<(), String> {
        let asked = spec.resources.clone().unwrap_or_default();
        if self.check == QuotaCheck::PerRequest {
            let usage = Usage { environments: usage.environments, ..Usage::default() };
            return self.admit_each(&usage, &asked);
        }
        self.admit_each(usage, &asked)
    }

    /// [`Quota::admit`] of a request that asks for `asked`.
    fn admit_each(&self, usage: &Usage, asked: &Resources) -> Result<(), String> {
        let per_request = self.check == QuotaCheck::PerRequest;
        let over = |dimension: &str, used: String, max: String, asked: String| {
            if per_request {
                format!(
                    "quota: {dimension} at most {max} per environment (checked per request); this request asks for {asked}"
                )
            } else {
                format!("quota: {dimension} {used} of {max} in use; this request asks for {asked}")
            }
        };
        if let Some(max) = self.environments
            && usage.environments + 1 > max
        {
            return Err(format!(
                "quota: environments {} of {max} in use (pending and provisioning ones count); this request needs 1 more",
                usage.environments
            ));
        }
        if let Some(max) = self.vcpu
            && let Some(v) = asked.vcpu
            && usage.vcpu + v > max + 1e-9
        {
            return Err(over("vcpu", usage.vcpu.to_string(), max.to_string(), v.to_string()));
        }
        if let Some(max) = self.mem_mb
            && let Some(m) = asked.mem_mb
            && usage.mem_mb + m > max
        {
            return Err(over("mem_mb", usage.mem_mb.to_string(), max.to_string(), m.to_string()));
        }
        if let Some(max) = self.disk_gb
            && let Some(d) = asked.disk_gb
            && usage.disk_gb + d > max
        {
            return Err(over("disk_gb", usage.disk_gb.to_string(), max.to_string(), d.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Resources;
    use crate::wire::DurationInput;

    fn spec(vcpu: f64, mem_mb: u64) -> Spec {
        Spec {
            provider: "sim".into(),
            resources: Some(Resources { vcpu: Some(vcpu), mem_mb: Some(mem_mb), disk_gb: None }),
            ..Default::default()
        }
    }

    #[test]
    fn tiers_overrides_and_messages() {
        let free = Quota::tier("free").unwrap();
        assert_eq!(free.admit(&Usage::default(), &spec(2.0, 4096)), Ok(()));
        let one = Usage { environments: 1, vcpu: 1.0, mem_mb: 1024, disk_gb: 0 };
        let e = free.admit(&one, &spec(1.0, 1024)).unwrap_err();
        assert!(e.contains("environments 1 of 1 in use") && e.contains("needs 1 more"), "{e}");
        let pro = Quota::tier("pro").unwrap();
        let e = pro.admit(&one, &spec(3.5, 1024)).unwrap_err();
        assert_eq!(e, "quota: vcpu 1 of 4 in use; this request asks for 3.5");
        let e = pro.admit(&one, &spec(1.0, 8000)).unwrap_err();
        assert!(e.starts_with("quota: mem_mb 1024 of 8192"), "{e}");
        assert!(Quota::tier("gold").is_none());
        let longest = Duration::from_secs(86_400);
        let custom = pro.with(
            &QuotaInput {
                environments: Some(10),
                disk_gb: Some(5),
                max_ttl: Some(DurationInput::Text("1h".into())),
                ..Default::default()
            },
            longest,
        );
        assert_eq!(custom.environments, Some(10));
        assert_eq!(custom.vcpu, Some(4.0), "kept from the tier");
        let mut big = spec(1.0, 10);
        big.resources.as_mut().unwrap().disk_gb = Some(6);
        assert!(custom.admit(&one, &big).unwrap_err().contains("disk_gb 0 of 5"));
        assert!(custom.check_ttl(Some(Duration::from_secs(3600))).is_ok());
        assert!(custom.check_ttl(Some(Duration::from_secs(3601))).unwrap_err().contains("max_ttl is 1h"));
        assert!(custom.check_ttl(None).is_err());
        assert!(Quota::default().check_ttl(None).is_ok());
    }

    #[test]
    fn providers_and_default_resources() {
        let free = Quota::tier("free").unwrap();
        assert!(free.permits("docker") && free.permits("sim"));
        assert!(!free.permits("process"), "process runs on the server's host: not by default");
        let custom = free.clone().with(
            &QuotaInput { providers: Some(vec!["process".into()]), default_mem_mb: Some(64), ..Default::default() },
            Duration::from_secs(86_400),
        );
        assert!(custom.permits("process") && !custom.permits("docker"));
        let charged = custom.charged(None);
        assert_eq!((charged.vcpu, charged.mem_mb, charged.disk_gb), (Some(0.5), Some(64), None));
        let asked = Resources { vcpu: Some(2.0), mem_mb: None, disk_gb: Some(3) };
        let charged = Quota::default().charged(Some(&asked));
        assert_eq!((charged.vcpu, charged.mem_mb, charged.disk_gb), (Some(2.0), Some(FALLBACK_MEM_MB), Some(3)));
        let hour = Quota { max_ttl: Some(Duration::from_secs(3600)), ..Default::default() };
        assert!(hour.check_expiry(3_600_000, 0).is_ok());
        assert!(hour.check_expiry(7_200_000, 0).unwrap_err().contains("max_ttl is 1h"));
    }

    #[test]
    fn github_gg_tier_numbers() {
        let numbers = |name: &str| {
            let q = Quota::tier(name).unwrap();
            (q.environments, q.vcpu, q.mem_mb, q.disk_gb, q.check)
        };
        assert_eq!(numbers("free"), (Some(1), Some(2.0), Some(4096), Some(10), QuotaCheck::Summed));
        assert_eq!(numbers("pro"), (Some(3), Some(4.0), Some(8192), Some(50), QuotaCheck::Summed));
        assert_eq!(numbers("unlimited"), (None, Some(8.0), Some(16384), Some(100), QuotaCheck::Summed));
        assert!(TIERS.iter().all(|t| Quota::tier(t).is_some()));
        let free = Quota::tier("free").unwrap();
        let mut disk = spec(1.0, 1024);
        disk.resources.as_mut().unwrap().disk_gb = Some(11);
        assert_eq!(
            free.admit(&Usage::default(), &disk).unwrap_err(),
            "quota: disk_gb 0 of 10 in use; this request asks for 11"
        );
    }

    #[test]
    fn per_request_holds_each_environment_summed_holds_them_together() {
        let summed = Quota::tier("pro").unwrap();
        let per_request = Quota { check: QuotaCheck::PerRequest, ..summed.clone() };
        let four = spec(4.0, 1024);
        let mut usage = Usage::default();
        for n in 0..3 {
            assert_eq!(per_request.admit(&usage, &four), Ok(()), "per request: environment {n} fits alone");
            if n == 1 {
                let e = summed.admit(&usage, &four).unwrap_err();
                assert_eq!(e, "quota: vcpu 4 of 4 in use; this request asks for 4");
            }
            usage = Usage {
                environments: usage.environments + 1,
                vcpu: usage.vcpu + 4.0,
                mem_mb: usage.mem_mb + 1024,
                disk_gb: 0,
            };
        }
        let e = per_request.admit(&usage, &four).unwrap_err();
        assert!(e.contains("environments 3 of 3"), "the count is summed in both modes: {e}");
        let e = per_request.admit(&Usage::default(), &spec(4.5, 1024)).unwrap_err();
        assert_eq!(e, "quota: vcpu at most 4 per environment (checked per request); this request asks for 4.5");
        let e = per_request.admit(&Usage::default(), &spec(1.0, 9000)).unwrap_err();
        assert!(e.starts_with("quota: mem_mb at most 8192 per environment"), "{e}");
        assert_eq!(QuotaCheck::parse("per_request"), Some(QuotaCheck::PerRequest));
        assert_eq!(QuotaCheck::parse(QuotaCheck::Summed.as_str()), Some(QuotaCheck::Summed));
        assert_eq!(QuotaCheck::parse("Summed"), None);
    }

    #[test]
    fn a_tier_may_give_default_warnings() {
        let input = QuotaInput {
            warn_before: Some(crate::wire::WarnBefore::One(DurationInput::Text("15m,2m".into()))),
            ..Default::default()
        };
        let tier = Quota::default().with(&input, Duration::from_secs(86_400));
        assert_eq!(tier.warn_before, vec![Duration::from_secs(900), Duration::from_secs(120)]);
        assert!(Quota::tier("free").unwrap().warn_before.is_empty());
    }
}

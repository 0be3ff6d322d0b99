//! Tenant quotas: limits from a tier, overridden per tenant, checked against what a tenant
//! holds now plus what a request asks for. Pure; the store runs [`Quota::admit`] inside the
//! transaction that creates, so concurrent requests cannot both pass a limit.

use std::time::Duration;

use crate::model::{Resources, Spec};
use crate::wire::QuotaInput;

/// Resolved limits; `None` is unlimited.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quota {
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
    /// The built-in tiers (the seed's): `free` = 1 environment, 2 vCPU, 4 GB; `pro` = 3
    /// environments, 4 vCPU, 8 GB.
    pub fn tier(name: &str) -> Option<Quota> {
        let (environments, vcpu, mem_mb, default_vcpu, default_mem_mb) = match name {
            "free" => (1, 2.0, 4096, 0.5, 512),
            "pro" => (3, 4.0, 8192, 1.0, 1024),
            _ => return None,
        };
        Some(Quota {
            environments: Some(environments),
            vcpu: Some(vcpu),
            mem_mb: Some(mem_mb),
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
    /// pass, what is in use and what the request asks for.
    pub fn admit(&self, usage: &Usage, spec: &Spec) -> Result<(), String> {
        let asked = spec.resources.clone().unwrap_or_default();
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
            return Err(format!("quota: vcpu {} of {max} in use; this request asks for {v}", usage.vcpu));
        }
        if let Some(max) = self.mem_mb
            && let Some(m) = asked.mem_mb
            && usage.mem_mb + m > max
        {
            return Err(format!("quota: mem_mb {} of {max} in use; this request asks for {m}", usage.mem_mb));
        }
        if let Some(max) = self.disk_gb
            && let Some(d) = asked.disk_gb
            && usage.disk_gb + d > max
        {
            return Err(format!("quota: disk_gb {} of {max} in use; this request asks for {d}", usage.disk_gb));
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
}

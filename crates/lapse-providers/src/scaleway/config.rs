//! The provider's settings, from the seed's environment variables.
//!
//! `SCW_SECRET_KEY` turns the provider on (it is the `X-Auth-Token`); `SCW_ACCESS_KEY`,
//! `SCW_ORGANIZATION_ID`, `SCW_PROJECT_ID` and `SCW_DEFAULT_ZONE` are then required, as SWIM
//! requires them. `SCW_API_URL` replaces `https://api.scaleway.com` (for tests against a
//! local fake, and for proxies). The keys never appear in `Debug` output.

use std::time::Duration;

/// The API's address when `SCW_API_URL` is unset.
pub const DEFAULT_API_URL: &str = "https://api.scaleway.com";

#[derive(Clone)]
pub struct ScalewayConfig {
    pub access_key: String,
    pub secret_key: String,
    pub organization_id: String,
    pub project_id: String,
    pub default_zone: String,
    pub api_url: String,
    /// The longest one API call may take.
    pub call_timeout: Duration,
    /// Retries of a throttled (`429`), failed (`5xx`) or unanswered call, and the first pause
    /// (doubled each time).
    pub retries: u32,
    pub retry_pause: Duration,
    /// Between two looks while a server boots or stops (SWIM: 15 s).
    pub poll_interval: Duration,
    /// The longest a boot or a power-off is waited for (SWIM: 300 s).
    pub settle_timeout: Duration,
    /// How long after `expires_at` the backstop powers the server off.
    pub backstop_grace: Duration,
    /// Servers per page when listing.
    pub page_size: u32,
}

impl std::fmt::Debug for ScalewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScalewayConfig")
            .field("access_key", &"<redacted>")
            .field("secret_key", &"<redacted>")
            .field("organization_id", &self.organization_id)
            .field("project_id", &self.project_id)
            .field("default_zone", &self.default_zone)
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl ScalewayConfig {
    /// Settings with the seed's timings, for these ids and keys.
    pub fn new(access_key: &str, secret_key: &str, organization_id: &str, project_id: &str, zone: &str) -> Self {
        ScalewayConfig {
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            organization_id: organization_id.to_owned(),
            project_id: project_id.to_owned(),
            default_zone: zone.to_owned(),
            api_url: DEFAULT_API_URL.to_owned(),
            call_timeout: Duration::from_secs(30),
            retries: 4,
            retry_pause: Duration::from_secs(1),
            poll_interval: Duration::from_secs(15),
            settle_timeout: Duration::from_secs(300),
            backstop_grace: Duration::from_secs(600),
            page_size: 50,
        }
    }

    /// From a variable reader: `Ok(None)` when `SCW_SECRET_KEY` is unset (the provider is
    /// off), `Err(reason)` naming the missing variables when it is set but others are not.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let get = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let Some(secret) = get("SCW_SECRET_KEY") else { return Ok(None) };
        let names = ["SCW_ACCESS_KEY", "SCW_ORGANIZATION_ID", "SCW_PROJECT_ID", "SCW_DEFAULT_ZONE"];
        let missing: Vec<&str> = names.iter().copied().filter(|k| get(k).is_none()).collect();
        if !missing.is_empty() {
            return Err(format!("SCW_SECRET_KEY is set but {} is not", missing.join(", ")));
        }
        let v = |k: &str| get(k).unwrap_or_default();
        let mut cfg = Self::new(
            &v("SCW_ACCESS_KEY"),
            &secret,
            &v("SCW_ORGANIZATION_ID"),
            &v("SCW_PROJECT_ID"),
            &v("SCW_DEFAULT_ZONE"),
        );
        if !super::valid_zone(&cfg.default_zone) {
            return Err(format!("SCW_DEFAULT_ZONE {:?} is not a zone (like fr-par-1)", cfg.default_zone));
        }
        if let Some(url) = get("SCW_API_URL") {
            cfg.api_url = url;
        }
        Ok(Some(cfg))
    }

    /// From the process environment.
    pub fn from_env() -> Result<Option<Self>, String> {
        Self::from_vars(|k| std::env::var(k).ok())
    }
}

//! The adapter's settings, read from the seed's environment variables with the seed's
//! defaults and parsing (`src/config/index.ts`: `process.env[key] || default`, numbers by
//! `parseInt`), and what they make: the pre-warmed pool's spec and claim hook.

use std::collections::BTreeMap;
use std::time::Duration;

use lapse_core::claim::{ClaimHook, HttpHook, HttpReady, JsonAccept, SHORT_ID_PLACEHOLDER};
use lapse_core::model::{Resources, Route, Spec};
use lapse_core::wire::DurationInput;

/// The pool of pre-warmed containers.
pub const POOL: &str = "classla";
/// The actor and pool source of what the adapter does.
pub const SOURCE: &str = "classla";
/// The label holding a container's bucket: what marks a started container as the adapter's
/// (under `lapse.`, which a tenant's key cannot set).
pub const LABEL_BUCKET: &str = "lapse.classla.s3_bucket";
/// The label holding a container's `shutdownReason` once it is stopped through the API.
pub const LABEL_SHUTDOWN: &str = "lapse.classla.shutdown_reason";
/// The seed's ports: code-server, noVNC, the container's web server (and its hook).
pub const CODE_PORT: u16 = 8080;
pub const VNC_PORT: u16 = 6080;
pub const WEB_PORT: u16 = 3000;
/// The seed's claim: the health wait and the 30 s sync wait.
pub const HOOK_TIMEOUT: &str = "40s";

/// What the Classla adapter runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct ClasslaConfig {
    /// `API_KEY`: the keys, as given (compared by their SHA-256, as the seed does).
    pub api_keys: Vec<String>,
    /// `DOMAIN` (required).
    pub domain: String,
    /// `IDE_CONTAINER_IMAGE` (`classla-ide-container:latest`).
    pub image: String,
    /// `swarm` when it is configured, else `docker` (or what the operator names).
    pub provider: String,
    /// `PRE_WARMED_QUEUE_SIZE` (10).
    pub queue_size: u32,
    /// `CONTAINER_CPU_LIMIT` (2 cores).
    pub cpu_limit: i64,
    /// `CONTAINER_MEMORY_LIMIT` (4294967296 bytes).
    pub memory_limit: i64,
    /// `MAX_MEMORY_PERCENT` (90): a cold start is refused at or above it.
    pub max_memory_percent: i64,
    /// `INACTIVITY_TIMEOUT_SECONDS` (600).
    pub inactivity_timeout: i64,
    /// `AWS_REGION` (`us-east-1`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`.
    pub aws_region: String,
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    /// `BACKEND_API_URL` (`http://localhost:8000/api` in the container), `CONTAINER_SERVICE_TOKEN`.
    pub backend_api_url: Option<String>,
    pub container_service_token: Option<String>,
    /// `MANAGEMENT_API_URL` given to containers: this adapter as they reach it.
    pub management_url: String,
    /// Whether the containers' URLs open without a key (`--classla-open-urls`).
    pub open_urls: bool,
    /// The containers' command instead of the image's (`--classla-cmd`; empty: the image's).
    pub cmd: Vec<String>,
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("Missing required environment variable: {0}")]
    Missing(&'static str),
    #[error("Invalid number for environment variable {0}: {1}")]
    NotANumber(&'static str, String),
    #[error("{0} must be {1}")]
    OutOfRange(&'static str, &'static str),
}

/// JavaScript's `parseInt(text, 10)`: optional blanks and sign, then the leading digits.
pub fn parse_int(text: &str) -> Option<i64> {
    let t = text.trim_start();
    let (sign, digits) = match t.as_bytes().first() {
        Some(b'-') => (-1, &t[1..]),
        Some(b'+') => (1, &t[1..]),
        _ => (1, t),
    };
    let end = digits.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
    // More digits than an i64 holds is not a number Lapse can use.
    digits[..end].parse::<i64>().ok().map(|n| sign * n)
}

impl ClasslaConfig {
    /// Reads the seed's variables through `get`; `provider` is the default provider.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
        provider: &str,
        management_url: String,
        open_urls: bool,
    ) -> Result<ClasslaConfig, ConfigError> {
        // `process.env[key] || default`: an empty value is the default.
        let var = |k: &str| get(k).filter(|v| !v.is_empty());
        let number = |k: &'static str, default: i64| match var(k) {
            None => Ok(default),
            Some(v) => parse_int(&v).ok_or(ConfigError::NotANumber(k, v)),
        };
        let api_key = var("API_KEY").ok_or(ConfigError::Missing("API_KEY"))?;
        let api_keys: Vec<String> =
            api_key.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect();
        if api_keys.is_empty() {
            return Err(ConfigError::OutOfRange("API_KEY", "at least one key (a comma-separated list)"));
        }
        let config = ClasslaConfig {
            api_keys,
            domain: var("DOMAIN").ok_or(ConfigError::Missing("DOMAIN"))?,
            image: var("IDE_CONTAINER_IMAGE").unwrap_or_else(|| "classla-ide-container:latest".into()),
            provider: provider.to_owned(),
            queue_size: u32::try_from(number("PRE_WARMED_QUEUE_SIZE", 10)?)
                .map_err(|_| ConfigError::OutOfRange("PRE_WARMED_QUEUE_SIZE", "0 or more"))?,
            cpu_limit: number("CONTAINER_CPU_LIMIT", 2)?,
            memory_limit: number("CONTAINER_MEMORY_LIMIT", 4_294_967_296)?,
            max_memory_percent: number("MAX_MEMORY_PERCENT", 90)?,
            inactivity_timeout: number("INACTIVITY_TIMEOUT_SECONDS", 600)?,
            aws_region: var("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
            aws_access_key_id: var("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            backend_api_url: var("BACKEND_API_URL"),
            container_service_token: var("CONTAINER_SERVICE_TOKEN"),
            management_url,
            open_urls,
            cmd: Vec::new(),
        };
        if config.cpu_limit < 1 {
            return Err(ConfigError::OutOfRange("CONTAINER_CPU_LIMIT", "1 core or more"));
        }
        if config.memory_limit < 6 * 1024 * 1024 {
            return Err(ConfigError::OutOfRange("CONTAINER_MEMORY_LIMIT", "at least 6 MiB (in bytes)"));
        }
        if !(1..=86_400 * 30).contains(&config.inactivity_timeout) {
            return Err(ConfigError::OutOfRange("INACTIVITY_TIMEOUT_SECONDS", "1 to 2592000"));
        }
        Ok(config)
    }

    /// The pre-warmed containers' spec: the seed's image, limits, ports, routes and
    /// environment (`containerService.ts` `createContainer` with `skipS3Bucket`); the ids in
    /// it are each member's own ([`SHORT_ID_PLACEHOLDER`]).
    pub fn spec(&self) -> Spec {
        let env: BTreeMap<String, String> = [
            ("CODE_BASE_PATH", format!("/code/{SHORT_ID_PLACEHOLDER}")),
            ("VNC_BASE_PATH", format!("/vnc/{SHORT_ID_PLACEHOLDER}")),
            ("INACTIVITY_TIMEOUT_SECONDS", self.inactivity_timeout.to_string()),
            ("MANAGEMENT_API_URL", self.management_url.clone()),
            ("CONTAINER_ID", SHORT_ID_PLACEHOLDER.to_owned()),
            ("BACKEND_API_URL", self.backend_api_url.clone().unwrap_or_else(|| "http://localhost:8000/api".into())),
            ("CONTAINER_SERVICE_TOKEN", self.container_service_token.clone().unwrap_or_default()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let routes: BTreeMap<String, Route> = [
            ("code", Route::Port(CODE_PORT)),
            ("vnc", Route::Port(VNC_PORT)),
            ("web", Route::Port(WEB_PORT)),
            ("terminal", Route::Port(CODE_PORT)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Spec {
            provider: self.provider.clone(),
            image: Some(self.image.clone()),
            cmd: self.cmd.clone(),
            env,
            resources: Some(Resources {
                vcpu: Some(self.cpu_limit as f64),
                mem_mb: Some(u64::try_from(self.memory_limit / (1024 * 1024)).unwrap_or(0)),
                disk_gb: None,
            }),
            ports: vec![WEB_PORT, VNC_PORT, CODE_PORT],
            routes,
            ..Default::default()
        }
    }

    /// The pool's claim hook: the seed's bucket assignment (`assignS3BucketToContainer`):
    /// `POST :3000/assign-s3-bucket {bucket, bucketId, region, accessKeyId, secretAccessKey}`,
    /// answered `{"status": "success" | "already_assigned"}`, then `GET :3000/sync-status`
    /// until `{"status": "ready"}`.
    pub fn hook() -> ClaimHook {
        let body = [
            ("bucket", "S3_BUCKET"),
            ("bucketId", "S3_BUCKET_ID"),
            ("region", "S3_REGION"),
            ("accessKeyId", "AWS_ACCESS_KEY_ID"),
            ("secretAccessKey", "AWS_SECRET_ACCESS_KEY"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        ClaimHook {
            http: Some(HttpHook {
                port: WEB_PORT,
                path: "/assign-s3-bucket".into(),
                body,
                accept: Some(JsonAccept {
                    field: "status".into(),
                    values: vec!["success".into(), "already_assigned".into()],
                }),
                ready: Some(HttpReady {
                    port: None,
                    path: "/sync-status".into(),
                    field: Some("status".into()),
                    value: Some("ready".into()),
                }),
            }),
            timeout: Some(DurationInput::Text(HOOK_TIMEOUT.into())),
            ..Default::default()
        }
    }

    /// `INACTIVITY_TIMEOUT_SECONDS` as Lapse's idle timeout.
    pub fn idle_timeout(&self) -> DurationInput {
        DurationInput::Text(lapse_core::duration::format_duration(Duration::from_secs(
            u64::try_from(self.inactivity_timeout).unwrap_or(600),
        )))
    }

    /// The protocol of the containers' URLs: `http` for `localhost`, `*.localhost` or an IP
    /// address (the seed's patterns), else `https`.
    pub fn url_scheme(&self) -> &'static str {
        let d = self.domain.as_str();
        let is_local = d == "localhost" || d.ends_with(".localhost");
        if is_local || is_ipv4_shape(d) || is_ipv6_shape(d) { "http" } else { "https" }
    }
}

/// The seed's `/^(\d{1,3}\.){3}\d{1,3}$/`.
fn is_ipv4_shape(d: &str) -> bool {
    let parts: Vec<&str> = d.split('.').collect();
    parts.len() == 4 && parts.iter().all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The seed's `/^([0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}$/`.
fn is_ipv6_shape(d: &str) -> bool {
    let parts: Vec<&str> = d.split(':').collect();
    (3..=8).contains(&parts.len()) && parts.iter().all(|p| p.len() <= 4 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_the_seeds_variables_and_defaults() {
        let c = ClasslaConfig::from_env(
            env(&[("API_KEY", " a, b ,,"), ("DOMAIN", "localhost")]),
            "docker",
            "http://m".into(),
            false,
        )
        .unwrap();
        assert_eq!(c.api_keys, ["a", "b"]);
        assert_eq!((c.queue_size, c.cpu_limit, c.memory_limit, c.max_memory_percent), (10, 2, 4_294_967_296, 90));
        assert_eq!(
            (c.inactivity_timeout, c.image.as_str(), c.aws_region.as_str()),
            (600, "classla-ide-container:latest", "us-east-1")
        );
        let spec = c.spec();
        assert_eq!(spec.resources.as_ref().unwrap().mem_mb, Some(4096));
        assert_eq!(spec.env["CODE_BASE_PATH"], "/code/${LAPSE_SHORT_ID}");
        assert_eq!(spec.routes["terminal"].port(), 8080);
        let c = ClasslaConfig::from_env(
            env(&[
                ("API_KEY", "k"),
                ("DOMAIN", "ide.example.com"),
                ("PRE_WARMED_QUEUE_SIZE", "3abc"),
                ("MAX_MEMORY_PERCENT", ""),
            ]),
            "swarm",
            "http://m".into(),
            true,
        )
        .unwrap();
        assert_eq!((c.queue_size, c.max_memory_percent), (3, 90), "parseInt and `||` as the seed");
        assert_eq!(c.url_scheme(), "https");
        for (vars, want) in [
            (&[("DOMAIN", "x")][..], ConfigError::Missing("API_KEY")),
            (&[("API_KEY", "k")][..], ConfigError::Missing("DOMAIN")),
            (
                &[("API_KEY", "k"), ("DOMAIN", "x"), ("CONTAINER_CPU_LIMIT", "two")][..],
                ConfigError::NotANumber("CONTAINER_CPU_LIMIT", "two".into()),
            ),
        ] {
            assert_eq!(ClasslaConfig::from_env(env(vars), "docker", String::new(), false).unwrap_err(), want);
        }
    }

    #[test]
    fn url_schemes_follow_the_seed() {
        let mut c =
            ClasslaConfig::from_env(env(&[("API_KEY", "k"), ("DOMAIN", "localhost")]), "docker", String::new(), false)
                .unwrap();
        for (domain, scheme) in [
            ("localhost", "http"),
            ("ide.localhost", "http"),
            ("10.0.0.1", "http"),
            ("::1", "http"),
            ("ide.example.com", "https"),
        ] {
            c.domain = domain.into();
            assert_eq!(c.url_scheme(), scheme, "{domain}");
        }
        assert_eq!(parse_int("  -12px"), Some(-12));
        assert_eq!(parse_int("x1"), None);
    }
}

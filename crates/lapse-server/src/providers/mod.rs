//! The provider factory: every provider this server has, built once at start from the flags,
//! the seeds' environment variables and the config file's `[providers.NAME]` tables
//! ([`table`]).
//!
//! - A provider *kind* (`aws`, `docker`, ...) is separate from its *name* (`aws-eu`): specs
//!   name a provider, behaviour follows its kind ([`Provider::kind`]). Several of one kind run
//!   side by side (`[providers.aws-eu]`, `[providers.aws-us]`).
//! - Without tables, the seeds' variables alone give each cloud's provider under its kind's
//!   name, as before: `AWS_REGION` the `aws` one, `SCW_*` the `scaleway` one, `OVH_*` the
//!   `ovh` one, a Docker Engine the `docker` one, `--swarm-endpoint` (`LAPSE_SWARM_HOST`) the
//!   `swarm` one. A table named like a kind replaces that one;
//!   its unset keys fall back to the same variables.
//! - A provider asked for but not usable (no credentials, a variable missing) is still listed,
//!   unavailable, with the reason (never a credential), and refuses specs naming it.
//! - Every provider is wrapped in [`Configured`]: its configured name, and a deadline on every
//!   call (`create_timeout`, `call_timeout`).

mod swarm;
pub mod table;

use std::collections::BTreeMap;
use std::sync::Arc;

use lapse_providers::configured::{CallTimeouts, Configured};
use lapse_providers::{Provider, ProviderSet};

use crate::config::{DockerSetting, ServerConfig};
pub use table::{ProviderDecl, ProviderTable};

/// Reads a variable (the process environment in `lapse serve`; a map in tests).
pub type Vars<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// Builds every provider: `process` (given, always there), `sim` when configured, the implicit
/// providers of the flags and variables, and one per `[providers.NAME]` table.
pub async fn build(
    config: &ServerConfig,
    controller_id: &str,
    process: Arc<dyn Provider>,
    decls: &[ProviderDecl],
    vars: Vars<'_>,
) -> ProviderSet {
    let by_name: BTreeMap<&str, &ProviderDecl> = decls.iter().map(|d| (d.name.as_str(), d)).collect();
    let mut built: Vec<(String, Arc<dyn Provider>)> = vec![("process".into(), process)];
    if let Some(sim) = &config.sim {
        tracing::warn!("the sim provider is on: its environments are simulated");
        built.push(("sim".into(), Arc::new(lapse_providers::sim::SimProvider::new(*sim))));
    }
    // The implicit ones, unless a table of the same name replaces them.
    if !by_name.contains_key("docker")
        && let Some(p) = docker(config, &config.docker, controller_id, "docker").await
    {
        built.push(("docker".into(), p));
    }
    if !by_name.contains_key("swarm")
        && let Some(endpoint) = &config.swarm
    {
        built.push(("swarm".into(), swarm::build(endpoint, controller_id, "swarm").await));
    }
    if !by_name.contains_key("aws")
        && let Some(p) = implicit_aws(config, controller_id).await
    {
        built.push(("aws".into(), p));
    }
    if !by_name.contains_key("scaleway")
        && let Some(p) = implicit_scaleway(config, controller_id)
    {
        built.push(("scaleway".into(), p));
    }
    if !by_name.contains_key("ovh")
        && let Some(p) = ovh(config, &config.ovh, controller_id, "ovh", SshOwn::default()).await
    {
        built.push(("ovh".into(), p));
    }
    for decl in decls {
        if let Some(p) = declared(config, controller_id, decl, vars).await {
            built.push((decl.name.clone(), p));
        }
    }
    let mut providers = ProviderSet::default();
    for (name, inner) in built {
        let mut timeouts = CallTimeouts::default();
        if let Some(decl) = by_name.get(name.as_str()) {
            timeouts.change = decl.create_timeout.unwrap_or(timeouts.change);
            timeouts.read = decl.call_timeout.unwrap_or(timeouts.read);
        }
        providers.insert(Arc::new(Configured::new(&name, inner, timeouts)));
    }
    providers
}

/// The provider of one table (the built-in `process` and `sim` take only common keys).
async fn declared(
    config: &ServerConfig,
    controller_id: &str,
    decl: &ProviderDecl,
    vars: Vars<'_>,
) -> Option<Arc<dyn Provider>> {
    let t = &decl.settings;
    let name = decl.name.as_str();
    match decl.kind {
        "process" | "sim" => None,
        "docker" => {
            let setting = match &t.endpoint {
                Some(e) => DockerSetting::Endpoint(e.clone()),
                None => config.docker.clone(),
            };
            docker(config, &setting, controller_id, name).await
        }
        "swarm" => match t.endpoint.as_ref().or(config.swarm.as_ref()) {
            Some(endpoint) => Some(swarm::build(endpoint, controller_id, name).await),
            None => Some(unavailable("swarm", name, "no endpoint: set endpoint, --swarm-endpoint or LAPSE_SWARM_HOST")),
        },
        "aws" => {
            let regional = (t.region.clone(), t.endpoint_url.clone(), t.profile.clone());
            Some(aws(config, regional, controller_id, name, SshOwn::of(t)).await)
        }
        "scaleway" => Some(scaleway(config, declared_scaleway(config, t, vars), controller_id, name, SshOwn::of(t))),
        "ovh" => {
            let base = &config.ovh;
            let secret = |var: &Option<String>, default: &str| vars(var.as_deref().unwrap_or(default));
            let setting = crate::config::OvhSetting {
                endpoint: t.endpoint.clone().or_else(|| base.endpoint.clone()),
                application_key: t.application_key.clone().or_else(|| base.application_key.clone()),
                application_secret: secret(&t.application_secret_env, "OVH_APPLICATION_SECRET"),
                consumer_key: secret(&t.consumer_key_env, "OVH_CONSUMER_KEY"),
                project_id: t.project_id.clone().or_else(|| base.project_id.clone()),
                region: t.region.clone().or_else(|| base.region.clone()),
                poll_interval: base.poll_interval,
            };
            match ovh(config, &setting, controller_id, name, SshOwn::of(t)).await {
                Some(p) => Some(p),
                None => {
                    Some(unavailable("ovh", name, "no application key: set application_key or OVH_APPLICATION_KEY"))
                }
            }
        }
        other => {
            tracing::error!(provider = name, kind = other, "no such provider kind in this build");
            None
        }
    }
}

fn unavailable(kind: &'static str, name: &str, reason: &str) -> Arc<dyn Provider> {
    tracing::warn!(provider = name, %reason, "{kind} provider unavailable");
    Arc::new(lapse_providers::unavailable::Unavailable::new(kind, reason))
}

async fn docker(
    config: &ServerConfig,
    setting: &DockerSetting,
    controller_id: &str,
    name: &str,
) -> Option<Arc<dyn Provider>> {
    #[cfg(feature = "docker")]
    {
        use lapse_providers::docker::DockerProvider;
        let conventions = config.docker_conventions.clone();
        match setting {
            DockerSetting::Off => {
                tracing::info!(provider = name, "docker provider off (configured)");
                None
            }
            DockerSetting::Auto => match DockerProvider::detect(None, controller_id).await {
                Ok(p) => {
                    let p = p.with_conventions(conventions);
                    // Its answer is in the health detail.
                    p.probe_disk().await;
                    tracing::info!(provider = name, detail = %p.health().await.unwrap_or_default(), "docker provider on");
                    Some(Arc::new(p))
                }
                Err(e) => match DockerProvider::installed(controller_id) {
                    Some(p) => {
                        tracing::warn!(
                            provider = name,
                            error = %e,
                            "docker provider on, but its engine does not answer yet (disk_gb refused)"
                        );
                        Some(Arc::new(p.with_conventions(conventions)))
                    }
                    None => {
                        tracing::info!(provider = name, reason = %e, "docker provider off: no Docker Engine API answered");
                        None
                    }
                },
            },
            DockerSetting::Endpoint(endpoint) => match DockerProvider::connect(endpoint, controller_id) {
                Ok(p) => {
                    let p = p.with_conventions(conventions);
                    match p.health().await {
                        Err(e) => tracing::warn!(
                            provider = name,
                            error = %e,
                            "docker provider on, but its endpoint does not answer yet (disk_gb refused)"
                        ),
                        Ok(_) => {
                            p.probe_disk().await;
                            tracing::info!(provider = name, detail = %p.health().await.unwrap_or_default(), "docker provider on");
                        }
                    }
                    Some(Arc::new(p))
                }
                Err(e) => {
                    tracing::error!(provider = name, error = %e, "docker provider off: bad endpoint");
                    None
                }
            },
        }
    }
    #[cfg(not(feature = "docker"))]
    {
        let _ = (config, setting, controller_id);
        tracing::info!(provider = name, "docker provider not built in (feature `docker`)");
        None
    }
}

/// The aws provider of the flags: on by `--aws on`, or by a region (`--aws-region`, `AWS_REGION`).
async fn implicit_aws(config: &ServerConfig, controller_id: &str) -> Option<Arc<dyn Provider>> {
    use crate::config::AwsSetting;
    let on = match config.aws {
        AwsSetting::Off => false,
        AwsSetting::On => true,
        AwsSetting::Auto => config.aws_region.is_some(),
    };
    if !on {
        return None;
    }
    Some(aws(config, (config.aws_region.clone(), None, None), controller_id, "aws", SshOwn::default()).await)
}

/// An aws provider (EC2). One that cannot connect (no credentials, no region) is listed
/// unavailable with the reason.
/// `(region, endpoint_url, profile)`.
type Regional = (Option<String>, Option<String>, Option<String>);

async fn aws(
    config: &ServerConfig,
    (region, endpoint_url, profile): Regional,
    controller_id: &str,
    name: &str,
    ssh: SshOwn<'_>,
) -> Arc<dyn Provider> {
    #[cfg(feature = "aws")]
    {
        use lapse_providers::aws::{AwsOptions, AwsProvider, UnavailableAws};
        let options = AwsOptions { region, endpoint_url, profile };
        match AwsProvider::connect_with(&options, controller_id).await {
            Ok(p) => {
                let p = p.with_seed_tags(config.aws_seed_tags).with_ssh(ssh_config(config, ssh));
                match p.health().await {
                    Ok(detail) => tracing::info!(provider = name, %detail, "aws provider on"),
                    Err(e) => {
                        tracing::warn!(provider = name, error = %e, "aws provider on, but EC2 does not answer yet")
                    }
                }
                Arc::new(p)
            }
            Err(e) => {
                tracing::warn!(provider = name, reason = %e, "aws provider unavailable");
                Arc::new(UnavailableAws::new(e.to_string()))
            }
        }
    }
    #[cfg(not(feature = "aws"))]
    {
        let _ = (config, region, endpoint_url, profile, controller_id, ssh);
        unavailable("aws", name, "the aws provider is not built in (feature `aws`)")
    }
}

/// The scaleway provider of the variables (`SCW_SECRET_KEY` asks for it).
fn implicit_scaleway(config: &ServerConfig, controller_id: &str) -> Option<Arc<dyn Provider>> {
    #[cfg(feature = "scaleway")]
    {
        let setting = config.scaleway.clone()?;
        Some(scaleway(config, setting, controller_id, "scaleway", SshOwn::default()))
    }
    #[cfg(not(feature = "scaleway"))]
    {
        let _ = (config, controller_id);
        None
    }
}

#[cfg(feature = "scaleway")]
type ScalewaySetting = Result<lapse_providers::scaleway::ScalewayConfig, String>;
#[cfg(not(feature = "scaleway"))]
type ScalewaySetting = Result<(), String>;

/// A table's scaleway settings: its keys, else the `SCW_*` variables; the timings of the
/// flags (`--scaleway-backstop-grace`, `--scaleway-poll-interval`) when they gave a provider.
fn declared_scaleway(config: &ServerConfig, t: &ProviderTable, vars: Vars<'_>) -> ScalewaySetting {
    #[cfg(feature = "scaleway")]
    {
        use lapse_providers::scaleway::ScalewayConfig;
        let secret_var = t.secret_key_env.clone().unwrap_or_else(|| "SCW_SECRET_KEY".into());
        let table_value = |key: &str| -> Option<String> {
            match key {
                "SCW_SECRET_KEY" => vars(&secret_var),
                "SCW_ACCESS_KEY" => t.access_key.clone().or_else(|| vars(key)),
                "SCW_ORGANIZATION_ID" => t.organization_id.clone().or_else(|| vars(key)),
                "SCW_PROJECT_ID" => t.project_id.clone().or_else(|| vars(key)),
                "SCW_DEFAULT_ZONE" => t.zone.clone().or_else(|| vars(key)),
                "SCW_API_URL" => t.api_url.clone().or_else(|| vars(key)),
                _ => vars(key),
            }
        };
        let mut cfg = match ScalewayConfig::from_vars(table_value) {
            Ok(Some(cfg)) => cfg,
            Ok(None) => return Err(format!("no secret key: set {secret_var}")),
            Err(reason) => return Err(reason.replace("SCW_SECRET_KEY", &secret_var)),
        };
        if let Some(Ok(flags)) = &config.scaleway {
            cfg.backstop_grace = flags.backstop_grace;
            cfg.poll_interval = flags.poll_interval;
        }
        Ok(cfg)
    }
    #[cfg(not(feature = "scaleway"))]
    {
        let _ = (config, t, vars);
        Err("the scaleway provider is not built in (feature `scaleway`)".into())
    }
}

/// A scaleway provider, or one listed unavailable with the reason (the keys never logged).
fn scaleway(
    config: &ServerConfig,
    setting: ScalewaySetting,
    controller_id: &str,
    name: &str,
    ssh: SshOwn<'_>,
) -> Arc<dyn Provider> {
    #[cfg(feature = "scaleway")]
    {
        use lapse_providers::scaleway::ScalewayProvider;
        match setting.and_then(|cfg| {
            let zone = cfg.default_zone.clone();
            let api = cfg.api_url.clone();
            ScalewayProvider::new(cfg, controller_id)
                .map(|p| (p.with_ssh(ssh_config(config, ssh)), zone, api))
                .map_err(|e| e.to_string())
        }) {
            Ok((p, zone, api)) => {
                tracing::info!(provider = name, %zone, %api, "scaleway provider on");
                Arc::new(p)
            }
            Err(reason) => unavailable("scaleway", name, &reason),
        }
    }
    #[cfg(not(feature = "scaleway"))]
    {
        let _ = (config, setting, controller_id, ssh);
        unavailable("scaleway", name, "the scaleway provider is not built in (feature `scaleway`)")
    }
}

/// An ovh provider, when an application key is given: working when the rest is there, else
/// listed unavailable with the missing variables named (never a value). `None` without a key.
async fn ovh(
    config: &ServerConfig,
    setting: &crate::config::OvhSetting,
    controller_id: &str,
    name: &str,
    ssh: SshOwn<'_>,
) -> Option<Arc<dyn Provider>> {
    if setting.application_key.as_deref().is_none_or(str::is_empty) {
        return None;
    }
    #[cfg(feature = "ovh")]
    {
        use lapse_providers::ovh::{Credentials, OvhConfig, OvhProvider};
        let given = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
        let missing: Vec<&str> = [
            ("OVH_APPLICATION_SECRET", &setting.application_secret),
            ("OVH_CONSUMER_KEY", &setting.consumer_key),
            ("OVH_PROJECT_ID", &setting.project_id),
        ]
        .into_iter()
        .filter(|(_, v)| given(v).is_none())
        .map(|(name, _)| name)
        .collect();
        let made = if missing.is_empty() {
            let credentials = Credentials {
                application_key: given(&setting.application_key).unwrap_or_default(),
                application_secret: given(&setting.application_secret).unwrap_or_default(),
                consumer_key: given(&setting.consumer_key).unwrap_or_default(),
            };
            let endpoint = given(&setting.endpoint).unwrap_or_else(|| "ovh-eu".into());
            let project = given(&setting.project_id).unwrap_or_default();
            let mut ovh = OvhConfig::new(&endpoint, credentials, &project, setting.region.as_deref());
            if let Some(every) = setting.poll_interval {
                ovh.poll_interval = every.max(std::time::Duration::from_millis(10));
            }
            OvhProvider::new(ovh, controller_id).map(|p| p.with_ssh(ssh_config(config, ssh))).map_err(|e| e.to_string())
        } else {
            Err(format!("OVH_APPLICATION_KEY is set but {} not", missing.join(", ")))
        };
        match made {
            Ok(p) => {
                match p.health().await {
                    Ok(detail) => tracing::info!(provider = name, %detail, "ovh provider on"),
                    Err(e) => {
                        tracing::warn!(provider = name, error = %e, "ovh provider on, but the API does not answer yet")
                    }
                }
                Some(Arc::new(p))
            }
            Err(reason) => Some(unavailable("ovh", name, &reason)),
        }
    }
    #[cfg(not(feature = "ovh"))]
    {
        let _ = (config, controller_id, ssh);
        Some(unavailable(
            "ovh",
            name,
            "OVH_APPLICATION_KEY is set but the ovh provider is not built in (feature `ovh`)",
        ))
    }
}

/// How the cloud providers reach their VMs over SSH: keys under `<data dir>/ssh`, the rest
/// from `LAPSE_SSH_PORT`, `LAPSE_SSH_USER`, `LAPSE_SSH_DEADLINE_FILE` (a bad value is logged
/// and the defaults kept), under the table's own user and port.
#[cfg(any(feature = "aws", feature = "scaleway", feature = "ovh"))]
fn ssh_config(config: &ServerConfig, own: SshOwn<'_>) -> lapse_providers::ssh::SshConfig {
    let dir = config.data_dir.join("ssh");
    let cfg = lapse_providers::ssh::SshConfig::from_env(&dir).unwrap_or_else(|reason| {
        tracing::warn!(%reason, "SSH settings refused; using the defaults");
        lapse_providers::ssh::SshConfig::in_dir(dir)
    });
    cfg.with_overrides(own.user, own.port)
}

/// A table's own `ssh_user` and `ssh_port` (checked by [`table::check`]); none for the
/// implicit providers.
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(not(any(feature = "aws", feature = "scaleway", feature = "ovh")), allow(dead_code))]
struct SshOwn<'a> {
    user: Option<&'a str>,
    port: Option<u16>,
}

impl<'a> SshOwn<'a> {
    fn of(t: &'a ProviderTable) -> Self {
        SshOwn { user: t.ssh_user.as_deref(), port: t.ssh_port }
    }
}

#[cfg(test)]
mod tests;

//! `[providers.NAME]` in the config file: one provider instance per table.
//!
//! ```toml
//! [providers.aws-eu]
//! kind = "aws"              # optional when the table's name is a kind
//! region = "eu-west-1"
//! sweep_interval = "5m"     # how often the drift sweep lists it (default: --sweep-interval)
//! concurrency = 16          # its calls at once
//! create_timeout = "15m"    # the longest a create, start, stop or delete may take
//! call_timeout = "2m"       # the longest a list, inspect or logs call may take
//! ```
//!
//! Kinds and their own keys (each unset key falls back to the seed's variable, so a table may
//! only name what differs):
//! - `aws`: `region` (`AWS_REGION`), `endpoint_url` (`AWS_ENDPOINT_URL`), `profile`.
//! - `scaleway`: `zone` (`SCW_DEFAULT_ZONE`), `project_id`, `organization_id`, `api_url`,
//!   `access_key`, and `secret_key_env`: the *name* of the variable holding the secret key
//!   (default `SCW_SECRET_KEY`).
//! - `ovh`: `endpoint`, `region`, `project_id`, `application_key`, and the names of the
//!   variables holding the secrets: `application_secret_env` (default `OVH_APPLICATION_SECRET`),
//!   `consumer_key_env` (default `OVH_CONSUMER_KEY`).
//! - `aws`, `scaleway`, `ovh` also: `ssh_user` and `ssh_port`, how `exec` and `extend` reach
//!   their VMs over SSH (default: `LAPSE_SSH_USER`, else the cloud's image user; `LAPSE_SSH_PORT`,
//!   else 22).
//! - `docker`: `endpoint` (`unix:///…`, `tcp://…`; default: `DOCKER_HOST`, then the usual sockets).
//! - `swarm`: `endpoint`, a Swarm manager's Engine API (default: `--swarm-endpoint`,
//!   `LAPSE_SWARM_HOST`; listed unavailable without one).
//! - `process`, `sim`: built in, once each; their tables take only the common keys.
//!
//! Secrets are never written in the file (a config file is read by more people than its
//! variables); a key such as `secret_key` is refused with the `_env` form to use instead.
//! Tables are read at start; a change needs a restart (the server says so when it sees one).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// The kinds of provider this server knows.
pub const KINDS: [&str; 7] = ["process", "docker", "swarm", "aws", "scaleway", "ovh", "sim"];

/// Kinds a server has one of, built in.
const SINGLE: [&str; 2] = ["process", "sim"];

/// One `[providers.NAME]` table as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderTable {
    pub kind: Option<String>,
    pub sweep_interval: Option<String>,
    pub concurrency: Option<usize>,
    pub create_timeout: Option<String>,
    pub call_timeout: Option<String>,
    // aws
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    // scaleway
    pub zone: Option<String>,
    pub project_id: Option<String>,
    pub organization_id: Option<String>,
    pub api_url: Option<String>,
    pub access_key: Option<String>,
    pub secret_key_env: Option<String>,
    // ovh (region and project_id above)
    pub endpoint: Option<String>,
    pub application_key: Option<String>,
    pub application_secret_env: Option<String>,
    pub consumer_key_env: Option<String>,
    // aws, scaleway, ovh
    pub ssh_user: Option<String>,
    pub ssh_port: Option<u16>,
    // Refused with a pointer to the `_env` form: a secret in the file.
    secret_key: Option<toml::Value>,
    application_secret: Option<toml::Value>,
    consumer_key: Option<toml::Value>,
}

/// A table, checked: its kind known, its durations parsed, no key of another kind.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderDecl {
    pub name: String,
    pub kind: &'static str,
    pub sweep_interval: Option<Duration>,
    pub concurrency: Option<usize>,
    pub create_timeout: Option<Duration>,
    pub call_timeout: Option<Duration>,
    pub settings: ProviderTable,
}

/// Checks every table; the errors name the table and the key.
pub fn check(tables: &BTreeMap<String, ProviderTable>) -> Result<Vec<ProviderDecl>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, table) in tables {
        match check_one(name, table) {
            Ok(decl) => out.push(decl),
            Err(e) => errors.push(format!("[providers.{name}]: {e}")),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

fn check_one(name: &str, t: &ProviderTable) -> Result<ProviderDecl, String> {
    lapse_core::validate::name("provider name", name).map_err(|e| e.message)?;
    let kind_text = t.kind.as_deref().unwrap_or(name);
    let kind = KINDS.iter().copied().find(|k| *k == kind_text).ok_or_else(|| match &t.kind {
        Some(k) => format!("kind {k:?} is not one of {}", KINDS.join(", ")),
        None => format!("give a kind (one of {}): the name {name:?} is not a kind", KINDS.join(", ")),
    })?;
    if SINGLE.contains(&kind) && name != kind {
        return Err(format!("the {kind} provider is built in, once, under the name {kind:?}"));
    }
    for (given, env_form) in [
        (&t.secret_key, "secret_key_env"),
        (&t.application_secret, "application_secret_env"),
        (&t.consumer_key, "consumer_key_env"),
    ] {
        if given.is_some() {
            return Err(format!(
                "secrets are not written in the config file; name the variable that holds it with {env_form}"
            ));
        }
    }
    let own: &[&str] = match kind {
        "aws" => &["region", "endpoint_url", "profile", "ssh_user", "ssh_port"],
        "scaleway" => &[
            "zone",
            "project_id",
            "organization_id",
            "api_url",
            "access_key",
            "secret_key_env",
            "ssh_user",
            "ssh_port",
        ],
        "ovh" => &[
            "endpoint",
            "region",
            "project_id",
            "application_key",
            "application_secret_env",
            "consumer_key_env",
            "ssh_user",
            "ssh_port",
        ],
        "docker" | "swarm" => &["endpoint"],
        _ => &[],
    };
    for (key, set) in set_keys(t) {
        if set && !own.contains(&key) {
            return Err(format!("{key} is not a setting of a {kind} provider"));
        }
    }
    for var in [&t.secret_key_env, &t.application_secret_env, &t.consumer_key_env].into_iter().flatten() {
        if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("{var:?} is not a variable name (letters, digits, _)"));
        }
    }
    let duration = |key: &str, v: &Option<String>| -> Result<Option<Duration>, String> {
        v.as_deref()
            .map(|text| match lapse_core::duration::parse_duration(text) {
                Ok(d) if d.is_zero() => Err(format!("{key} must be above zero")),
                Ok(d) => Ok(d),
                Err(e) => Err(format!("{key}: {e}")),
            })
            .transpose()
    };
    if let Some(user) = t.ssh_user.as_deref().filter(|u| !lapse_core::validate::is_unix_user(u)) {
        return Err(format!("ssh_user {user:?} is not a user name (a-z, 0-9, _, -, ., at most 32)"));
    }
    if t.ssh_port == Some(0) {
        return Err("ssh_port must be a port (1-65535)".into());
    }
    if t.concurrency == Some(0) {
        return Err("concurrency must be at least 1".into());
    }
    Ok(ProviderDecl {
        name: name.to_owned(),
        kind,
        sweep_interval: duration("sweep_interval", &t.sweep_interval)?,
        concurrency: t.concurrency,
        create_timeout: duration("create_timeout", &t.create_timeout)?,
        call_timeout: duration("call_timeout", &t.call_timeout)?,
        settings: t.clone(),
    })
}

/// Each kind-specific key and whether the table sets it.
fn set_keys(t: &ProviderTable) -> [(&'static str, bool); 16] {
    [
        ("region", t.region.is_some()),
        ("endpoint_url", t.endpoint_url.is_some()),
        ("profile", t.profile.is_some()),
        ("zone", t.zone.is_some()),
        ("project_id", t.project_id.is_some()),
        ("organization_id", t.organization_id.is_some()),
        ("api_url", t.api_url.is_some()),
        ("access_key", t.access_key.is_some()),
        ("secret_key_env", t.secret_key_env.is_some()),
        ("endpoint", t.endpoint.is_some()),
        ("application_key", t.application_key.is_some()),
        ("application_secret_env", t.application_secret_env.is_some()),
        ("consumer_key_env", t.consumer_key_env.is_some()),
        ("ssh_user", t.ssh_user.is_some()),
        ("ssh_port", t.ssh_port.is_some()),
        ("kind", false),
    ]
}

/// The kind of each provider the file names (what a spec naming it is validated as, before
/// a server runs).
pub fn kinds(tables: &BTreeMap<String, ProviderTable>) -> BTreeMap<String, &'static str> {
    tables.iter().filter_map(|(name, t)| check_one(name, t).ok().map(|d| (name.clone(), d.kind))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(text: &str) -> BTreeMap<String, ProviderTable> {
        #[derive(Deserialize)]
        struct File {
            providers: BTreeMap<String, ProviderTable>,
        }
        toml::from_str::<File>(text).unwrap().providers
    }

    #[test]
    fn two_of_one_kind_side_by_side() {
        let decls = check(&tables(
            "[providers.aws-eu]\nkind = \"aws\"\nregion = \"eu-west-1\"\nsweep_interval = \"5m\"\n\
             [providers.aws-us]\nkind = \"aws\"\nregion = \"us-east-1\"\nconcurrency = 4\n\
             [providers.docker]\nendpoint = \"unix:///run/podman/podman.sock\"\n",
        ))
        .unwrap();
        let by: BTreeMap<_, _> = decls.iter().map(|d| (d.name.as_str(), d)).collect();
        assert_eq!(by["aws-eu"].kind, "aws");
        assert_eq!(by["aws-eu"].sweep_interval, Some(Duration::from_secs(300)));
        assert_eq!(by["aws-us"].settings.region.as_deref(), Some("us-east-1"));
        assert_eq!(by["aws-us"].concurrency, Some(4));
        assert_eq!(by["docker"].kind, "docker", "a table named by its kind needs no kind");
    }

    #[test]
    fn bad_tables_are_refused_with_the_table_and_key_named() {
        let cases = [
            ("[providers.x]\nregion = \"a\"\n", "give a kind"),
            ("[providers.x]\nkind = \"gcp\"\n", "kind \"gcp\" is not one of"),
            ("[providers.x]\nkind = \"aws\"\nzone = \"fr-par-1\"\n", "zone is not a setting of a aws provider"),
            ("[providers.s]\nkind = \"scaleway\"\nsecret_key = \"SCWxxxx\"\n", "secret_key_env"),
            ("[providers.o]\nkind = \"ovh\"\nconsumer_key = \"ck\"\n", "consumer_key_env"),
            ("[providers.p2]\nkind = \"process\"\n", "built in, once"),
            ("[providers.a]\nkind = \"aws\"\nsweep_interval = \"5\"\n", "sweep_interval"),
            ("[providers.a]\nkind = \"aws\"\ncall_timeout = \"0s\"\n", "call_timeout"),
            ("[providers.a]\nkind = \"aws\"\nssh_user = \"-oProxyCommand=x\"\n", "ssh_user"),
            ("[providers.a]\nkind = \"ovh\"\nssh_port = 0\n", "ssh_port"),
            ("[providers.a]\nkind = \"docker\"\nssh_user = \"admin\"\n", "ssh_user"),
            ("[providers.a]\nkind = \"aws\"\nconcurrency = 0\n", "at least 1"),
            ("[providers.s]\nkind = \"scaleway\"\nsecret_key_env = \"A B\"\n", "not a variable name"),
            ("[providers.\"Bad Name\"]\nkind = \"aws\"\n", "[providers.Bad Name]"),
        ];
        for (text, expected) in cases {
            let errors = check(&tables(text)).unwrap_err();
            assert!(errors.len() == 1 && errors[0].contains(expected), "{text}: {errors:?}");
            assert!(errors[0].starts_with("[providers."), "{errors:?}");
        }
        // A secret's value is never echoed back.
        let errors =
            check(&tables("[providers.s]\nkind = \"scaleway\"\nsecret_key = \"SCW-very-secret\"\n")).unwrap_err();
        assert!(!errors[0].contains("SCW-very-secret"), "{errors:?}");
    }

    #[test]
    fn an_unknown_key_is_a_syntax_error() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct File {
            providers: BTreeMap<String, ProviderTable>,
        }
        let e = toml::from_str::<File>("[providers.a]\nkind = \"aws\"\nregon = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("regon"), "{e}");
    }
}

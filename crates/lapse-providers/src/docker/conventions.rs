//! An operator's container conventions: what an existing fleet's tooling filters and
//! connects on (github.gg's `docker run … --name gh-gg-<id> --label gh.gg/managed=true
//! --label gh.gg/vm-name=<name> -p <port>:22 --restart unless-stopped`,
//! `src/lib/vm/docker-provider.ts` at `2745f5a`), set once for the provider.
//!
//! - `labels`: set on every container, beside Lapse's own (`lapse.*`, which the sweep finds
//!   containers by and which no configured label may shadow).
//! - `name_label`: a label whose value is the container's name (the seed's `gh.gg/vm-name`).
//! - `name_prefix`: containers are `<prefix><environment id>` (default `lapse-`). The whole
//!   id is kept (the seed's 8 characters would collide: a UUIDv7's first 8 hex digits change
//!   every 65 s), so names stay unique; a container made under another prefix is still found
//!   by its labels.
//! - `publish_address` and `port_range`: `spec.ports` are published on this address (default
//!   `127.0.0.1`), each on the first free host port of the range (as the seed picks from
//!   2222), or on a port the engine picks without a range. See [`super::ports`].
//! - `restart`: the engine's restart policy (`no`, `unless-stopped`, `on-failure[:N]`). The
//!   engine then restarts a container whose command exits, and a container it is restarting
//!   counts as running, so the sweep does not record that exit (a job is run again by the
//!   engine; once `on-failure:N` gives up, the exit is Lapse's again). Lapse's `stop` (and a
//!   stop at expiry) is `docker stop`, which these policies never undo, not even when the
//!   engine restarts. `always` is refused: Docker restarts `always` containers that Lapse
//!   stopped whenever the engine restarts, and the record would say stopped. (Podman treats
//!   `unless-stopped` as `always`; it restarts such containers at boot only through
//!   `podman-restart.service`, so do not enable that unit for Lapse's containers.)

use std::collections::BTreeMap;
use std::net::IpAddr;

use bollard::models::{RestartPolicy, RestartPolicyNameEnum};

/// Prefix of the labels Lapse sets itself.
pub const RESERVED_LABEL_PREFIX: &str = "lapse.";

/// The conventions; [`Conventions::default`] is Lapse's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conventions {
    pub labels: BTreeMap<String, String>,
    pub name_label: Option<String>,
    pub name_prefix: String,
    pub publish_address: IpAddr,
    pub port_range: Option<PortRange>,
    pub restart: Option<Restart>,
}

impl Default for Conventions {
    fn default() -> Self {
        Conventions {
            labels: BTreeMap::new(),
            name_label: None,
            name_prefix: "lapse-".into(),
            publish_address: IpAddr::from([127, 0, 0, 1]),
            port_range: None,
            restart: None,
        }
    }
}

/// Host ports `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// A restart policy, as `docker run --restart` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    No,
    UnlessStopped,
    /// At most this many retries (`None`: no limit).
    OnFailure(Option<u32>),
}

/// A convention that does not read, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConventionError {
    pub setting: &'static str,
    pub message: String,
}

fn refuse(setting: &'static str, message: impl Into<String>) -> ConventionError {
    ConventionError { setting, message: message.into() }
}

impl Conventions {
    /// Adds `KEY=VALUE` (`--docker-label`).
    pub fn add_label(&mut self, pair: &str) -> Result<(), ConventionError> {
        let (key, value) = pair.split_once('=').ok_or_else(|| refuse("docker label", "give KEY=VALUE"))?;
        check_label_key("docker label", key)?;
        if value.len() > 256 || value.chars().any(char::is_control) {
            return Err(refuse(
                "docker label",
                format!("the value of {key} is over 256 bytes or holds control characters"),
            ));
        }
        self.labels.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// `--docker-name-label KEY`.
    pub fn set_name_label(&mut self, key: &str) -> Result<(), ConventionError> {
        check_label_key("docker name label", key)?;
        self.name_label = Some(key.to_owned());
        Ok(())
    }

    /// `--docker-name-prefix`: 1–30 of `A-Z a-z 0-9 _ . -`, starting with a letter or digit
    /// (what the engine accepts in a name).
    pub fn set_name_prefix(&mut self, prefix: &str) -> Result<(), ConventionError> {
        let valid = (1..=30).contains(&prefix.len())
            && prefix.starts_with(|c: char| c.is_ascii_alphanumeric())
            && prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(refuse(
                "docker name prefix",
                "1-30 of A-Z a-z 0-9 _ . -, starting with a letter or a digit (e.g. gh-gg-)",
            ));
        }
        self.name_prefix = prefix.to_owned();
        Ok(())
    }

    /// `--docker-publish-address`: an IP address.
    pub fn set_publish_address(&mut self, address: &str) -> Result<(), ConventionError> {
        self.publish_address = address
            .parse()
            .map_err(|_| refuse("docker publish address", format!("{address:?} is not an IP address")))?;
        Ok(())
    }

    /// `--docker-port-range FIRST-LAST`, e.g. `2222-3221`.
    pub fn set_port_range(&mut self, range: &str) -> Result<(), ConventionError> {
        let bad = || refuse("docker port range", format!("{range:?}: give FIRST-LAST, 1 <= FIRST <= LAST <= 65535"));
        let (first, last) = range.split_once('-').ok_or_else(bad)?;
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(bad());
        }
        self.port_range = Some(PortRange { first, last });
        Ok(())
    }

    /// `--docker-restart no|unless-stopped|on-failure[:N]` (`always` is refused: see the
    /// module doc).
    pub fn set_restart(&mut self, policy: &str) -> Result<(), ConventionError> {
        self.restart = Some(match policy {
            "no" => Restart::No,
            "always" => {
                return Err(refuse(
                    "docker restart",
                    "always would restart containers Lapse stopped whenever the engine restarts; use unless-stopped",
                ));
            }
            "unless-stopped" => Restart::UnlessStopped,
            "on-failure" => Restart::OnFailure(None),
            other => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
                Some(Ok(n)) => Restart::OnFailure(Some(n)),
                _ => {
                    return Err(refuse(
                        "docker restart",
                        format!("{policy:?}: one of no, unless-stopped, on-failure, on-failure:N"),
                    ));
                }
            },
        });
        Ok(())
    }

    /// The container name of an environment.
    pub fn container_name(&self, environment_id: &str) -> String {
        format!("{}{environment_id}", self.name_prefix)
    }

    /// The labels these conventions add to a container called `name`.
    pub fn labels_for(&self, name: &str) -> Vec<(String, String)> {
        let name_label = self.name_label.iter().map(|k| (k.clone(), name.to_owned()));
        self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).chain(name_label).collect()
    }

    /// The engine's form of the restart policy.
    pub fn restart_policy(&self) -> Option<RestartPolicy> {
        let (name, maximum_retry_count) = match self.restart? {
            Restart::No => (RestartPolicyNameEnum::NO, None),
            Restart::UnlessStopped => (RestartPolicyNameEnum::UNLESS_STOPPED, None),
            Restart::OnFailure(n) => (RestartPolicyNameEnum::ON_FAILURE, n.map(i64::from)),
        };
        Some(RestartPolicy { name: Some(name), maximum_retry_count })
    }
}

/// A label key the engine takes that is not one of Lapse's own.
fn check_label_key(setting: &'static str, key: &str) -> Result<(), ConventionError> {
    let valid = (1..=128).contains(&key.len())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if !valid {
        return Err(refuse(setting, format!("{key:?}: a key is 1-128 of A-Z a-z 0-9 . _ - /")));
    }
    if key.starts_with(RESERVED_LABEL_PREFIX) {
        return Err(refuse(setting, format!("{key:?}: labels starting with lapse. are Lapse's own")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_gg_conventions_read_and_bad_ones_are_refused() {
        let mut c = Conventions::default();
        assert_eq!(c.container_name("abc"), "lapse-abc");
        c.add_label("gh.gg/managed=true").unwrap();
        c.set_name_label("gh.gg/vm-name").unwrap();
        c.set_name_prefix("gh-gg-").unwrap();
        c.set_publish_address("0.0.0.0").unwrap();
        c.set_port_range("2222-3221").unwrap();
        c.set_restart("unless-stopped").unwrap();
        assert_eq!(c.container_name("0190abcd"), "gh-gg-0190abcd");
        let labels = c.labels_for("gh-gg-x");
        assert_eq!(labels, [("gh.gg/managed".into(), "true".into()), ("gh.gg/vm-name".into(), "gh-gg-x".into())]);
        assert_eq!(c.port_range, Some(PortRange { first: 2222, last: 3221 }));
        assert_eq!(c.restart_policy().unwrap().name, Some(RestartPolicyNameEnum::UNLESS_STOPPED));
        c.set_restart("on-failure:3").unwrap();
        assert_eq!(c.restart_policy().unwrap().maximum_retry_count, Some(3));

        let mut c = Conventions::default();
        for bad in ["novalue", "=x", "lapse.environment=x", "a b=c", "k=\u{7}"] {
            assert!(c.add_label(bad).is_err(), "{bad}");
        }
        for bad in ["", "-x", "a/b", "x y", &"a".repeat(31)] {
            assert!(c.set_name_prefix(bad).is_err(), "{bad:?}");
        }
        for bad in ["2222", "0-10", "3000-2000", "1-70000", "a-b"] {
            assert!(c.set_port_range(bad).is_err(), "{bad}");
        }
        assert!(c.set_publish_address("localhost").is_err());
        assert!(c.set_restart("sometimes").is_err() && c.set_restart("on-failure:x").is_err());
        assert!(c.set_restart("always").unwrap_err().to_string().contains("use unless-stopped"));
        assert_eq!(c, Conventions::default(), "a refused setting changes nothing");
    }
}

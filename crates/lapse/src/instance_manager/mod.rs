//! instance-manager's CLI (bdanp/instance-manager, `cmd/main.go`) on `lapse`, as a drop-in.
//!
//! **How the seed's usage and Lapse's share one CLI.**
//! - The seed's verbs that Lapse lacked are added: `terminate`, `show`, `sync`, `service`,
//!   and `import instance-manager` moves its `~/.instance-manager/instances.json` (and the
//!   instances tagged `ManagedBy=instance-manager`) into Lapse.
//! - Verbs both have (`create`, `status`, `list`, `stop`, `extend`) take the seed's flags
//!   beside Lapse's. **The seed's flags select the seed's behaviour and output**:
//!   `create` with `--public-key/-k`, `--instance-type/-t` or `--availability-zone/-z` is
//!   the seed's create (provider `aws` by default, `-P` as the seed's `--provider`);
//!   `--instance-id/-i` on `status`, `stop`, `extend` is the seed's verb. Without them the
//!   verbs are Lapse's, with Lapse's output. A binary named `instance-manager` (a symlink to
//!   `lapse`) prints the seed's output for every verb, `list` included.
//! - `-i` takes the EC2 instance id (resolved through the environment's provider ref) or a
//!   Lapse environment id.
//! - The seed's `stop` **terminates** (its code calls TerminateInstances); so does
//!   `stop -i` here. Lapse's `stop ID` stops (the disk stays).
//! - The seed's `extend` counts from the current expiry even when it has passed; here an
//!   expiry not passed is moved the same way, and a passed one (expiry has already stopped
//!   the instance) counts from now, so the extended instance runs again at once.
//! - The state and IPs come from the server (its drift sweep keeps them in step with EC2);
//!   `sync` prints them as the seed's `sync` did.
//! - `service` runs `lapse serve` (the seed's service enforced expiry; the server does, within
//!   a second), with the seed's `--log-level` and `--verbose`, and `AWS_REGION` defaulting to
//!   `us-east-1` as the seed's.
//! - Not provided: the seed's `web` UI.

mod file;
mod import;
mod output;
mod verbs;

pub use import::{ImportArgs, run_import};
pub use verbs::{CreateInput, create, extend, list, resolve, show, status, stop, sync, terminate};

/// The seed's `create` flags that Lapse's `create` lacked (`cmd/main.go`).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct SeedCreateFlags {
    /// instance-manager: EC2 instance type (default t2.nano; one of the seed's 30 t2, t3, m5,
    /// c5 types).
    #[arg(long = "instance-type", short = 't')]
    pub instance_type: Option<String>,
    /// instance-manager: path to the SSH public key file (required in the seed's usage).
    #[arg(long = "public-key", short = 'k', value_name = "FILE")]
    pub public_key: Option<std::path::PathBuf>,
    /// instance-manager: AWS availability zone (default us-east-1a).
    #[arg(long = "availability-zone", short = 'z')]
    pub availability_zone: Option<String>,
}

impl SeedCreateFlags {
    /// Whether the seed's create is asked for.
    pub fn given(&self) -> bool {
        self.instance_type.is_some() || self.public_key.is_some() || self.availability_zone.is_some()
    }
}

/// The seed's global `--log-level` and `--verbose` (used by `service`; accepted everywhere).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct SeedLogFlags {
    /// instance-manager: log level for `service` (debug, info, warn, error; unknown values
    /// mean info). LAPSE_LOG, when set, wins.
    #[arg(long = "log-level", global = true, default_value = "info")]
    pub log_level: String,
    /// instance-manager: verbose logging (debug) for `service`.
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,
}

impl SeedLogFlags {
    /// The tracing filter the seed's flags mean (`getLogLevel`: unknown values are info).
    pub fn filter(&self) -> String {
        let level = match self.log_level.to_lowercase().as_str() {
            _ if self.verbose => "debug",
            "debug" => "debug",
            "warn" | "warning" => "warn",
            "error" => "error",
            _ => "info",
        };
        match level {
            "debug" => "debug,sqlx=info,hyper=info,h2=info,rustls=info,aws_smithy_runtime=info,aws_config=info".into(),
            other => format!("{other},sqlx=warn,tower_http=warn"),
        }
    }
}

/// Whether this binary runs as `instance-manager` (a symlink), printing the seed's output
/// for every verb.
pub fn invoked_as_seed() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|n| n == "instance-manager")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_as_the_seed() {
        let f = |level: &str, verbose| SeedLogFlags { log_level: level.into(), verbose }.filter();
        assert!(f("debug", false).starts_with("debug,"));
        assert!(f("WARNING", false).starts_with("warn,"));
        assert!(f("error", false).starts_with("error,"));
        assert!(f("nonsense", false).starts_with("info,"));
        assert!(f("error", true).starts_with("debug,"));
    }
}

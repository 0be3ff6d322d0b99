//! For tests (feature `swarm-testing`): the test Swarm's engine (`LAPSE_SWARM_HOST`, which
//! `scripts/test-env.sh` sets after starting a private one-node Swarm), and a guard that
//! removes every service and network of a controller when dropped, so a failed test leaves
//! nothing running.

use std::time::Duration;

use bollard::Docker;

/// `LAPSE_SWARM_HOST`; panics (a test helper) with what to do when it is unset.
pub fn host() -> String {
    std::env::var("LAPSE_SWARM_HOST").expect(
        "LAPSE_SWARM_HOST is not set: the swarm tests need a Docker Engine in Swarm mode; \
         `. scripts/test-env.sh` starts one and sets it",
    )
}

/// A client of the test Swarm's engine, its API version agreed.
pub async fn engine() -> Docker {
    Docker::connect_with_unix(&host(), 60, bollard::API_DEFAULT_VERSION)
        .expect("connecting to the swarm's engine")
        .negotiate_version()
        .await
        .expect("the swarm's engine answers")
}

/// Removes every service, then every network, labelled with this controller when dropped.
#[derive(Debug)]
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=lapse.controller={}", self.0);
        let docker =
            |args: &[&str]| {
                std::process::Command::new("docker").env("DOCKER_HOST", host()).args(args).output().ok().map(|o| {
                    String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_owned).collect::<Vec<_>>()
                })
            };
        for kind in ["service", "network"] {
            if let Some(ids) = docker(&[kind, "ls", "-q", "--filter", &filter]).filter(|i| !i.is_empty()) {
                // A network goes only once its services' tasks are gone.
                if kind == "network" {
                    std::thread::sleep(Duration::from_secs(2));
                }
                let mut args = vec![kind, "rm"];
                args.extend(ids.iter().map(String::as_str));
                docker(&args);
            }
        }
    }
}

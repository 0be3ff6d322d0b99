//! Integration tests: real `lapse serve` processes on loopback ports, real providers (local
//! processes; Podman's Docker API, which `scripts/test` starts). One test binary.

mod admission;
mod api;
mod aws;
mod aws_tags;
mod claim_hook;
mod cli;
mod crash;
mod declare;
mod docker;
mod drift;
mod fc;
mod full_disk;
mod github_gg;
mod harness;
mod idle_health;
mod instance_manager;
mod isolation;
mod lifecycles;
mod limits;
mod ovh;
mod pools;
mod providers;
mod proxy;
mod redis_server;
mod retry;
mod scaleway;
mod schemathesis;
mod swarm;
mod sweep;
mod swim;
mod swim_v2;
mod tenants;

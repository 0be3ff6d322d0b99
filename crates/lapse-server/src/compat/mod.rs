//! The seeds' surfaces: each module speaks one seed system's external contract exactly (its
//! keys, JSON shapes, routes, status codes), so that system's existing clients work unchanged,
//! and each is a thin layer over the one admission path ([`crate::admission`]) and the one
//! store transaction: no seed surface writes the store any other way.
//!
//! | module | seed | what it speaks |
//! |---|---|---|
//! | [`swim`] | alex-sviridov/swim@27f4120 | `swim:*` Redis queues and `swim:server:<id>` |
//! | [`swim_v2`] | alex-sviridov/swim@670feb4 (`INTERFACE.md`) | `vmmanager:*` queues, `vmmanager:servers:<user>`, rate limits |
//! | [`fc`] | ndrean/microvm-control-planner@2ff3827 (`fc_ex_cp`) | `POST /vms`, `GET`/`DELETE /vms/:id`, `GET /stats`, `desired_vms.exs` (read by `declare/exs`) |
//! | [`github_gg`] | lantos1618/github.gg@2745f5a | the `vm.*` procedures under `/v1/github-gg/users/{user}/` |
//! | [`github_gg`] | lantos1618/github.gg@2745f5a | the `vm.*` procedures: per-user get-or-create, start, stop, destroy, `executeCode` |
//! | [`classla`] | Classla/ClasslaV2@aef6eae (`classla-ide-container/orchestration`) | `/api/containers/*`, `/api/health`, on `--classla-listen` |
//!
//! Each module's doc names the seed files it follows, and where it differs on purpose.

pub mod classla;
pub mod fc;
pub mod github_gg;
pub mod swim;
pub mod swim_v2;

//! The OpenAPI document, built from the handlers' annotations and the wire types, so it
//! describes what the server does.

use utoipa::OpenApi;

use super::{admin, environments, pools, seed, system};

#[derive(OpenApi)]
#[openapi(
    info(title = "Lapse", description = "Control plane for short-lived compute environments."),
    paths(
        environments::create, environments::list, environments::show, environments::extend,
        environments::stop, environments::start, environments::delete, environments::exec, environments::logs,
        pools::list, pools::show, pools::put, pools::delete, seed::create_vm, seed::stats,
        admin::create_tenant, admin::list_tenants, admin::create_key, admin::revoke_key, admin::whoami,
        system::healthz, system::metrics, system::providers, system::status, system::queues, system::events, system::openapi,
    ),
    tags((name = "environments", description = "Leased environments"), (name = "pools", description = "Warm pools"), (name = "seed", description = "The Firecracker control plane's API, for users migrating from it"), (name = "system", description = "Health, metrics, audit trail, queues"), (name = "admin", description = "Tenants and API keys"))
)]
pub struct ApiDoc;

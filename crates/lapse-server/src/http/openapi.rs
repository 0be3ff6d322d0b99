//! The OpenAPI document, built from the handlers' annotations and the wire types, so it
//! describes what the server does.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, environments, pools, seed, system};

#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerKeys),
    info(title = "Lapse", description = "Control plane for short-lived compute environments."),
    paths(
        environments::create, environments::list, environments::show, environments::extend,
        environments::stop, environments::start, environments::delete, environments::exec, environments::logs,
        pools::list, pools::show, pools::put, pools::delete, seed::create_vm, seed::stats,
        admin::create_tenant, admin::list_tenants, admin::create_key, admin::revoke_key, admin::whoami,
        system::healthz, system::metrics, system::providers, system::status, system::queues, system::usage, system::events, system::openapi,
    ),
    tags((name = "environments", description = "Leased environments"), (name = "pools", description = "Warm pools"), (name = "seed", description = "The Firecracker control plane's API, for users migrating from it"), (name = "system", description = "Health, metrics, audit trail, queues"), (name = "admin", description = "Tenants and API keys"))
)]
pub struct ApiDoc;

/// Every route but `/healthz` takes `Authorization: Bearer <key>` when the server has keys.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

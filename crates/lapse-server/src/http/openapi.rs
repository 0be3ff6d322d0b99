//! The OpenAPI document, built from the handlers' annotations and the wire types, so it
//! describes what the server does.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{activity, admin, adopt, environments, pools, sweep, system, terminal, watch, webhooks, workspace};
use crate::compat::fc as seed;
use crate::compat::github_gg as gg;

#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerKeys),
    info(title = "Lapse", description = "Control plane for short-lived compute environments."),
    paths(
        environments::create, environments::list, environments::show, environments::extend,
        environments::stop, environments::start, environments::delete, environments::exec, environments::logs, watch::watch,
        terminal::terminal,
        crate::proxy::links::create_link, activity::activity, workspace::show,
        pools::list, pools::show, pools::put, pools::delete, seed::create_vm, seed::show_vm, seed::delete_vm, seed::stats,
        gg::get_my_vm, gg::provision_my_vm, gg::start_my_vm, gg::stop_my_vm, gg::destroy_my_vm, gg::execute_code,
        admin::create_tenant, admin::list_tenants, admin::update_tenant, admin::create_key, admin::create_scoped_key, admin::revoke_key, admin::whoami, adopt::adopt, sweep::sweep,
        webhooks::create, webhooks::list, webhooks::show, webhooks::delete, webhooks::deliveries, webhooks::test,
        system::healthz, system::readyz, system::metrics, system::providers, system::status, system::queues, system::usage, system::events, system::openapi,
    ),
    tags((name = "environments", description = "Leased environments"), (name = "pools", description = "Warm pools"), (name = "seed", description = "The Firecracker control plane's API, for users migrating from it"), (name = "github.gg", description = "github.gg's personal-VM procedures: one VM per user, exec of a shell string"), (name = "system", description = "Health, metrics, audit trail, queues"), (name = "admin", description = "Tenants and API keys"), (name = "webhooks", description = "Lifecycle webhooks and their deliveries"))
)]
pub struct ApiDoc;

/// Every route but `/healthz` takes `Authorization: Bearer <key>` when the server has keys,
/// and so may answer what the authentication layer answers; routes with a body may answer
/// what the body extractor answers. Declared once here rather than on every handler.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
        let error = |why: &str| -> RefOr<utoipa::openapi::Response> {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
            RefOr::T(ResponseBuilder::new().description(why).content("application/json", content).build())
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/healthz" || path == "/readyz" {
                continue;
            }
            let has_params = path.contains('{');
            let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for op in ops.into_iter().flatten() {
                let responses = &mut op.responses.responses;
                let mut add = |code: &str, why: &str| {
                    responses.entry(code.to_owned()).or_insert_with(|| error(why));
                };
                add("401", "No key, or not a valid one (when the server has keys)");
                add("403", "A tenant's key on a route for the admin key");
                add(
                    "429",
                    "Too many requests with this key, or without a valid key from this address (see Retry-After), or over a quota",
                );
                if op.request_body.is_some() {
                    add("400", "Invalid request");
                    add("408", "The body did not arrive in time");
                    add("413", "Body too large");
                    add("415", "Not JSON");
                }
                if has_params {
                    add("400", "A path parameter that is not valid percent-encoded UTF-8");
                }
            }
        }
    }
}

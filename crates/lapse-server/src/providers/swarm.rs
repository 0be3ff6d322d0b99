//! The swarm provider of the flags (`--swarm-endpoint`, `LAPSE_SWARM_HOST`) or of a
//! `[providers.NAME] kind = "swarm"` table: on when an endpoint is given, listed unavailable
//! (with the reason) when the endpoint does not read or the build has no `swarm` feature. An
//! endpoint that does not answer yet, or is no Swarm manager, keeps the provider on: its
//! health says why, and it works once the manager answers.

use std::sync::Arc;

use lapse_providers::Provider;

/// The swarm provider at `endpoint`, named `name`.
pub async fn build(endpoint: &str, controller_id: &str, name: &str) -> Arc<dyn Provider> {
    #[cfg(feature = "swarm")]
    {
        use lapse_providers::swarm::SwarmProvider;
        match SwarmProvider::connect(endpoint, controller_id) {
            Ok(p) => {
                match p.health().await {
                    Ok(detail) => tracing::info!(provider = name, %detail, "swarm provider on"),
                    Err(e) => tracing::warn!(provider = name, error = %e, "swarm provider on, but not usable yet"),
                }
                Arc::new(p)
            }
            Err(e) => super::unavailable("swarm", name, &e.to_string()),
        }
    }
    #[cfg(not(feature = "swarm"))]
    {
        let _ = (endpoint, controller_id);
        super::unavailable("swarm", name, "the swarm provider is not built in (feature `swarm`)")
    }
}

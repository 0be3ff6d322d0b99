//! `[[webhooks]]` and `[webhooks_policy]` of the config file (read at start).
//!
//! ```toml
//! [[webhooks]]
//! name = "ops"                     # optional key (default: the url); renaming makes a new hook
//! url = "https://hooks.example.com/lapse"
//! events = ["failed", "expired"]   # or ["*"]
//! secret_env = "LAPSE_OPS_HOOK_SECRET"  # the variable holding the secret (never the secret)
//! tenant = "acme"                  # optional: only this tenant's events (none: every tenant's)
//!
//! [webhooks_policy]
//! allow_private = false            # true lets tenants' hooks reach private addresses
//! ```
//!
//! The file's hooks are the operator's: their URLs are checked for form only. At start the
//! store's config hooks are made exactly the file's (by key): a new one reports events from
//! then on, a changed one keeps its cursor, one no longer declared is removed. The API cannot
//! delete them.

use lapse_store::WebhookRecord;
use serde::Deserialize;

use super::{address, api, events};

/// One `[[webhooks]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookDecl {
    #[serde(default)]
    pub name: Option<String>,
    pub url: String,
    pub events: Vec<String>,
    pub secret_env: String,
    #[serde(default)]
    pub tenant: Option<String>,
}

/// `[webhooks_policy]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    #[serde(default)]
    pub allow_private: bool,
}

/// The records the file declares, every error named by its entry.
pub fn records(decls: &[WebhookDecl], vars: &dyn Fn(&str) -> Option<String>) -> Result<Vec<WebhookRecord>, String> {
    let mut out: Vec<WebhookRecord> = Vec::new();
    for (i, d) in decls.iter().enumerate() {
        let what = format!("[[webhooks]] #{} ({})", i + 1, d.name.as_deref().unwrap_or(&d.url));
        let url = address::parse_url(&d.url).map_err(|e| format!("{what}: {e}"))?;
        let wanted = events::check_names(&d.events).map_err(|e| format!("{what}: events: {e}"))?;
        let secret = vars(&d.secret_env).ok_or_else(|| format!("{what}: secret_env {:?} is not set", d.secret_env))?;
        api::check_secret(&secret).map_err(|e| format!("{what}: the secret in {}: {e}", d.secret_env))?;
        if let Some(t) = &d.tenant {
            lapse_core::validate::tenant("tenant", t).map_err(|e| format!("{what}: {e}"))?;
        }
        let name = d.name.clone().unwrap_or_else(|| d.url.clone());
        if out.iter().any(|h| h.name.as_deref() == Some(name.as_str())) {
            return Err(format!("{what}: a second webhook keyed {name:?} (give each a distinct name)"));
        }
        out.push(WebhookRecord {
            id: lapse_core::model::new_environment_id(),
            tenant: d.tenant.clone(),
            url: url.to_string(),
            events: wanted,
            secret,
            source: "config".into(),
            name: Some(name),
            cursor: 0,
            failures: 0,
            created_at: lapse_core::now_millis(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(url: &str, events: &[&str], secret_env: &str) -> WebhookDecl {
        WebhookDecl {
            name: None,
            url: url.into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            secret_env: secret_env.into(),
            tenant: None,
        }
    }

    #[test]
    fn declared_hooks_take_their_secret_from_the_environment_and_are_checked() {
        let vars = |k: &str| (k == "HOOK").then(|| "0123456789abcdef0123".to_owned());
        let made = records(&[decl("https://h.example/x", &["failed"], "HOOK")], &vars).unwrap();
        assert_eq!(made[0].secret, "0123456789abcdef0123");
        assert_eq!(made[0].source, "config");
        for (bad, want) in [
            (decl("https://h.example/x", &["failed"], "MISSING"), "is not set"),
            (decl("ftp://h.example/x", &["failed"], "HOOK"), "scheme"),
            (decl("https://h.example/x", &["nope"], "HOOK"), "unknown event"),
        ] {
            let err = records(&[bad], &vars).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
        let twice = [decl("https://h.example/x", &["*"], "HOOK"), decl("https://h.example/x", &["*"], "HOOK")];
        assert!(records(&twice, &vars).unwrap_err().contains("distinct name"));
    }
}

#[cfg(test)]
mod config_tests {
    #[test]
    fn a_config_environment_takes_warn_before_checked_against_its_ttl() {
        let day = std::time::Duration::from_secs(86_400);
        let ok = "[[environment]]\nid = \"web\"\nttl = \"1h\"\nwarn_before = \"15m,2m\"\nspec = { provider = \"process\", cmd = [\"true\"] }\n";
        let declared = crate::declare::parse(ok, day).unwrap();
        assert!(declared.environments[0].0.warn_before.is_some());
        let bad = ok.replace("15m,2m", "2h");
        let errors = crate::declare::parse(&bad, day).unwrap_err();
        assert!(errors.iter().any(|e| e.line == 1 && e.message.contains("warn_before")), "{errors:?}");
        let hooks = "[[webhooks]]\nurl = \"https://h.example/x\"\nevents = [\"*\"]\nsecret_env = \"X\"\n[webhooks_policy]\nallow_private = true\n";
        assert!(crate::declare::parse(hooks, day).is_ok(), "the start-only tables are accepted at reload too");
    }
}

//! The factory: named providers from tables, the seeds' variables as fallback, unavailable
//! ones listed with the reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use lapse_providers::Provider;
use lapse_providers::sim::{SimConfig, SimProvider};

use super::table::{self, ProviderTable};
use super::*;

fn decls(text: &str) -> Vec<ProviderDecl> {
    #[derive(serde::Deserialize)]
    struct File {
        providers: BTreeMap<String, ProviderTable>,
    }
    table::check(&toml::from_str::<File>(text).unwrap().providers).unwrap()
}

fn quiet_config(dir: &std::path::Path) -> ServerConfig {
    let mut config = ServerConfig::new(dir);
    config.docker = DockerSetting::Off;
    config.aws = crate::config::AwsSetting::Off;
    config
}

fn process() -> Arc<dyn Provider> {
    Arc::new(SimProvider::new(SimConfig::default()))
}

#[tokio::test]
async fn without_tables_the_built_in_ones_keep_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quiet_config(dir.path());
    config.sim = Some(SimConfig::default());
    let none = |_: &str| None;
    let set = build(&config, "ctl", process(), &[], &none).await;
    assert_eq!(set.names(), vec!["process", "sim"]);
    let sim = set.get("sim").unwrap();
    assert_eq!((sim.name(), sim.kind()), ("sim", "sim"));
}

#[cfg(feature = "scaleway")]
#[tokio::test]
async fn a_scaleway_table_takes_its_keys_then_the_seeds_variables() {
    let dir = tempfile::tempdir().unwrap();
    let config = quiet_config(dir.path());
    let vars = |name: &str| -> Option<String> {
        match name {
            "SCW_SECRET_KEY_AMS" => Some("secret-ams-0000".into()),
            "SCW_ACCESS_KEY" => Some("SCWACCESS".into()),
            "SCW_ORGANIZATION_ID" => Some("org-1".into()),
            "SCW_PROJECT_ID" => Some("proj-1".into()),
            "SCW_DEFAULT_ZONE" => Some("fr-par-1".into()),
            _ => None,
        }
    };
    let decls = decls(
        "[providers.scw-ams]\nkind = \"scaleway\"\nzone = \"nl-ams-1\"\nsecret_key_env = \"SCW_SECRET_KEY_AMS\"\n\
         api_url = \"http://127.0.0.1:9\"\n\
         [providers.scw-waw]\nkind = \"scaleway\"\nzone = \"pl-waw-1\"\nsecret_key_env = \"SCW_SECRET_KEY_WAW\"\n",
    );
    let set = build(&config, "ctl", process(), &decls, &vars).await;
    assert_eq!(set.names(), vec!["process", "scw-ams", "scw-waw"]);
    let ams = set.get("scw-ams").unwrap();
    assert_eq!(ams.kind(), "scaleway");
    assert!(ams.capabilities().cloud && ams.capabilities().lease_backstop);
    // Its secret variable is unset: listed, unavailable, the variable named, no value shown.
    let waw = set.get("scw-waw").unwrap();
    let e = waw.health().await.unwrap_err().to_string();
    assert!(e.contains("SCW_SECRET_KEY_WAW"), "{e}");
    let spec = lapse_core::model::Spec { provider: "scw-waw".into(), ..Default::default() };
    assert!(waw.validate(&spec).unwrap_err().message.contains("unavailable"));
    // Nothing answers on port 9: the ams one is on, but its calls fail (retryably).
    let e = ams.list().await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(!e.to_string().contains("secret-ams-0000"), "{e}");
}

#[cfg(feature = "ovh")]
#[tokio::test]
async fn an_ovh_table_without_its_secrets_is_unavailable_with_the_variables_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = quiet_config(dir.path());
    let vars = |name: &str| (name == "OVH_CK_B").then(|| "ck-value-123".to_owned());
    let decls = decls(
        "[providers.ovh-b]\nkind = \"ovh\"\napplication_key = \"ak\"\nproject_id = \"p\"\nconsumer_key_env = \"OVH_CK_B\"\n\
         [providers.ovh-c]\nkind = \"ovh\"\n",
    );
    let set = build(&config, "ctl", process(), &decls, &vars).await;
    let b = set.get("ovh-b").unwrap().health().await.unwrap_err().to_string();
    assert!(b.contains("OVH_APPLICATION_SECRET") && !b.contains("ck-value-123"), "{b}");
    let c = set.get("ovh-c").unwrap().health().await.unwrap_err().to_string();
    assert!(c.contains("no application key"), "{c}");
}

#[tokio::test(start_paused = true)]
async fn a_table_gives_its_deadlines_to_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quiet_config(dir.path());
    config.sim = Some(SimConfig::parse("create=5s").unwrap());
    let decls = decls("[providers.sim]\ncreate_timeout = \"1s\"\n");
    let none = |_: &str| None;
    let set = build(&config, "ctl", process(), &decls, &none).await;
    let spec = lapse_core::model::Spec { provider: "sim".into(), ..Default::default() };
    let started = tokio::time::Instant::now();
    let e = set.get("sim").unwrap().ensure_running("e1", &lapse_providers::Placement::default(), &spec).await;
    match e {
        Err(e) => assert!(e.to_string().contains("no answer within 1 s"), "{e}"),
        Ok(_) => panic!("a create slower than its create_timeout must fail"),
    }
    assert_eq!(started.elapsed(), std::time::Duration::from_secs(1));
}

#[cfg(feature = "swarm")]
#[tokio::test]
async fn swarm_is_off_unless_an_endpoint_is_given_by_flag_or_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quiet_config(dir.path());
    let none = |_: &str| None;
    assert!(build(&config, "ctl", process(), &[], &none).await.get("swarm").is_none(), "off by default");

    // The flag's endpoint; one that does not answer keeps the provider listed, saying why.
    config.swarm = Some("tcp://127.0.0.1:9".into());
    let set = build(&config, "ctl", process(), &[], &none).await;
    let swarm = set.get("swarm").expect("the flag's swarm provider");
    assert_eq!(swarm.kind(), "swarm");
    assert!(matches!(swarm.health().await, Err(lapse_providers::ProviderError::Unavailable { .. })));

    // A table of the kind, with its own endpoint or the flag's; without either, unavailable.
    let tables = decls(
        "[providers.swarm-b]\nkind = \"swarm\"\nendpoint = \"unix:///nonexistent/docker.sock\"\n\
         [providers.swarm-c]\nkind = \"swarm\"\n",
    );
    let set = build(&config, "ctl", process(), &tables, &none).await;
    assert_eq!((set.get("swarm-b").unwrap().kind(), set.get("swarm-c").unwrap().kind()), ("swarm", "swarm"));
    let reason = set.get("swarm-b").unwrap().health().await.unwrap_err().to_string();
    assert!(reason.contains("nonexistent"), "{reason}");
    config.swarm = None;
    let set = build(&config, "ctl", process(), &tables, &none).await;
    let reason = set.get("swarm-c").unwrap().health().await.unwrap_err().to_string();
    assert!(reason.contains("no endpoint"), "{reason}");
    let bad = table::check(
        &toml::from_str::<BTreeMap<String, BTreeMap<String, ProviderTable>>>(
            "[providers.s]\nkind = \"swarm\"\nregion = \"x\"\n",
        )
        .unwrap()["providers"],
    )
    .unwrap_err();
    assert!(bad[0].contains("region is not a setting of a swarm provider"), "{bad:?}");
}

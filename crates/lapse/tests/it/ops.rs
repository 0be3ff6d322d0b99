//! The operations files shipped in `ops/`: the Prometheus alert rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`), and every metric the rules and the
//! Grafana dashboard name is one a running server exports (so a renamed metric cannot leave
//! an alert that never fires). `promtool` comes from Debian's `prometheus` package, which the
//! test command installs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;

use crate::harness::Server;

fn ops_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops")
}

fn promtool(args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(ops_dir().join("prometheus"))
        .output()
        .expect("promtool runs (Debian's prometheus package; scripts/test-env.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", "lapse-alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "lapse-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// `lapse_…` names in a text (PromQL inside YAML or JSON).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("lapse_") {
        let start = i + at;
        let word_start = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end =
            text[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(text.len(), |n| start + n);
        if word_start {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    let rules = std::fs::read_to_string(ops_dir().join("prometheus/lapse-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(ops_dir().join("grafana/lapse.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(!parsed["panels"].as_array().unwrap().is_empty());
    let mut wanted = metric_names(&rules);
    wanted.extend(metric_names(&dashboard));
    // The dashboard's own names (uid, tags) are not metrics.
    wanted.retain(|n| n != "lapse_overview");
    assert!(wanted.len() >= 10, "{wanted:?}");

    // A server with a queue (SWIM's, on a private Redis) and the process provider.
    let setup = crate::swim::setup_with("process", &[], &[]).await;
    let server: &Server = &setup.server;
    let id = server.create(crate::harness::process_env(&["sleep", "30"])).await["id"].as_str().unwrap().to_owned();
    server.wait_state(&id, "running", crate::harness::secs(20)).await;
    let (status, body) = server.raw(reqwest::Method::GET, "/metrics", None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let exposition = body.as_str().expect("the text exposition").to_owned();
    // A family is exported when its `# TYPE` line is, samples or not.
    let families: BTreeSet<&str> =
        exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let family_of = |name: &str| -> bool {
        families.contains(name)
            || ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix).is_some_and(|base| families.contains(base)))
    };
    let missing: Vec<&String> = wanted.iter().filter(|n| !family_of(n)).collect();
    assert!(missing.is_empty(), "named by ops/ but not exported: {missing:?}\nexported: {families:?}");
}

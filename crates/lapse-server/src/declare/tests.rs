//! The parser and the start tables, by example.

use std::time::Duration;

use lapse_core::model::Lifecycle;

use super::*;

const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

#[test]
fn a_good_file() {
    let text = r#"
[[environment]]
id = "web-api"
tenant = "production"
ttl = "2h"
spec = { provider = "process", cmd = ["sleep", "600"] }
warm_pool = { min = 2, max = 5 }

[[pool]]
name = "boxes"
min = 3
spec = { provider = "docker", image = "localhost/busybox" }
"#;
    let d = parse(text, MAX).unwrap();
    assert_eq!(d.environments.len(), 1);
    assert_eq!(d.environments[0].0.lifecycle, Lifecycle::Service);
    assert_eq!(d.environments[0].1, Some(Duration::from_secs(7200)));
    let names: Vec<_> = d.pools.iter().map(|p| (p.name.as_str(), p.min, p.max)).collect();
    assert_eq!(names, [("web-api", 2, Some(5)), ("boxes", 3, None)]);
}

#[test]
fn every_error_with_its_line() {
    let text = r#"[[environment]]
id = "a"
spec = { provider = "nope", cmd = ["x"] }

[[environment]]
id = "a"
ttl = "soon"
spec = { provider = "docker" }

[[pool]]
name = "p"
min = 5
max = 2
spec = { provider = "process", cmd = ["x"] }
"#;
    let errors = parse(text, MAX).unwrap_err();
    let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(got.iter().any(|e| e.starts_with("line 1: ") && e.contains("unknown provider \"nope\"")), "{got:#?}");
    assert!(got.iter().any(|e| e.starts_with("line 5: ") && e.contains("declared twice")), "{got:#?}");
    assert!(got.iter().any(|e| e.starts_with("line 5: ") && e.contains("ttl")), "{got:#?}");
    assert!(got.iter().any(|e| e.starts_with("line 5: ") && e.contains("needs an image")), "{got:#?}");
    assert!(got.iter().any(|e| e.starts_with("line 10: ") && e.contains("max (2) is below min (5)")), "{got:#?}");
}

#[test]
fn syntax_and_unknown_fields() {
    let errors =
        parse("[[environment]]\nid = \"a\"\nspec = { provider = \"process\", cmd = [\"x\"] }\ncolour = \"red\"\n", MAX)
            .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.contains("colour"), "{errors:?}");
    let errors = parse("[[environment]\nid = ", MAX).unwrap_err();
    assert_eq!(errors[0].line, 1, "{errors:?}");
    assert_eq!(parse("", MAX), Ok(Declared::default()));
}

#[test]
fn a_redis_table_configures_the_swim_queues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lapse.toml");
    let text = "[redis]\nurl = \"10.0.0.5:6379\"\nprefix = \"vmmanager:\"\nprovider = \"docker\"\n\
                default_image = \"lab:1\"\nprovision_concurrency = 3\n";
    std::fs::write(&path, text).unwrap();
    assert_eq!(parse(text, MAX), Ok(Declared::default()), "the environments part ignores it");
    let cfg = start_tables(&path).unwrap().redis.unwrap().into_config();
    assert_eq!(cfg.provision_queue(), "vmmanager:provision:queue");
    assert_eq!((cfg.provider.as_str(), cfg.provision_concurrency, cfg.control_concurrency), ("docker", 3, 5));
    assert_eq!(cfg.default_image.as_deref(), Some("lab:1"));
    std::fs::write(&path, "[redis]\nport = 1\n").unwrap();
    assert!(start_tables(&path).unwrap_err().to_string().contains("port"));
    std::fs::write(&path, "[auth]\nadmin_key = \"0123456789abcdef\"\n").unwrap();
    let tables = start_tables(&path).unwrap();
    assert_eq!(tables.auth.unwrap().admin_key.as_deref(), Some("0123456789abcdef"));
    assert_eq!(tables.redis, None);
}

#[test]
fn a_name_and_the_mass_removal_flag() {
    let text =
        "allow_mass_removal = true\n\n[[environment]]\nid = \"a\"\nname = \"web.1\"\nspec = { provider = \"sim\" }\n";
    let d = parse(text, MAX).unwrap();
    assert!(d.allow_mass_removal);
    assert_eq!(d.environments[0].0.name.as_deref(), Some("web.1"));
    let errors =
        parse("[[environment]]\nid = \"a\"\nname = \"no spaces\"\nspec = { provider = \"sim\" }\n", MAX).unwrap_err();
    let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(got, ["line 1: environment \"a\": name: may hold only letters, digits, '.', '_' and '-'"]);
    let errors = parse("[[environment]]\nid = \"a\"\nspec = { provider = \"sim\" }\nallow_mass_removal = true\n", MAX);
    assert!(errors.is_err(), "the flag is top-level: after a table it belongs to the table");
}

#[test]
fn idle_timeouts_and_health_probes_in_a_file() {
    let text = r#"
[[environment]]
id = "ide"
idle_timeout = "30m"
on_idle = "delete"
spec = { provider = "process", cmd = ["x"], ports = [8080], health = { http = { port = 8080, path = "/" } } }
"#;
    let d = parse(text, MAX).unwrap();
    let decl = &d.environments[0].0;
    assert_eq!(decl.on_idle, lapse_core::model::OnIdle::Delete);
    assert_eq!(crate::activity::idle_millis(decl.idle_timeout.as_ref().unwrap(), MAX), Ok(1_800_000));
    assert!(decl.spec.health.is_some());
    let bad = r#"
[[environment]]
id = "ide"
idle_timeout = "10ms"
spec = { provider = "process", cmd = ["x"], ports = [8080], health = { tcp = 9 } }
"#;
    let errors = parse(bad, MAX).unwrap_err().iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    assert!(errors.contains("idle_timeout: must be at least 1s"), "{errors}");
    assert!(errors.contains("spec.health.tcp"), "{errors}");
}

//! Properties of [`parse`]: no text makes it panic; its errors carry the line of what is
//! wrong; a valid file generated from values parses back to exactly those values.

use std::collections::BTreeMap;
use std::time::Duration;

use lapse_core::model::{Lifecycle, OnExpiry, Spec};
use lapse_core::wire::{DurationInput, WarmPool};
use proptest::prelude::*;

use super::{Declared, EnvDecl, PoolDecl, parse};

const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A TOML basic string holding exactly `s`.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn inline_map(map: &BTreeMap<String, String>) -> String {
    let items: Vec<String> = map.iter().map(|(k, v)| format!("{} = {}", quote(k), quote(v))).collect();
    format!("{{ {} }}", items.join(", "))
}

fn lifecycle_text(l: Lifecycle) -> &'static str {
    match l {
        Lifecycle::Lease => "lease",
        Lifecycle::Service => "service",
        Lifecycle::Daemon => "daemon",
        Lifecycle::Job => "job",
    }
}

fn spec_text(spec: &Spec) -> String {
    let mut parts = vec![format!("provider = {}", quote(&spec.provider))];
    if !spec.cmd.is_empty() {
        let args: Vec<String> = spec.cmd.iter().map(|a| quote(a)).collect();
        parts.push(format!("cmd = [{}]", args.join(", ")));
    }
    if !spec.env.is_empty() {
        parts.push(format!("env = {}", inline_map(&spec.env)));
    }
    format!("{{ {} }}", parts.join(", "))
}

/// A file declaring `envs` and `pools` (each table on its own lines, in order), and the line
/// of each table's header: environments first, then pools.
fn render(envs: &[EnvDecl], pools: &[PoolDecl], allow: bool) -> (String, Vec<usize>) {
    let mut text = String::from("# generated\n");
    if allow {
        text.push_str("allow_mass_removal = true\n");
    }
    let mut headers = Vec::new();
    let mut table = |text: &mut String, header: &str, lines: Vec<String>| {
        text.push('\n');
        headers.push(text.lines().count() + 1);
        text.push_str(header);
        text.push('\n');
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
    };
    for e in envs {
        let mut lines = vec![format!("id = {}", quote(&e.id))];
        if let Some(n) = &e.name {
            lines.push(format!("name = {}", quote(n)));
        }
        if let Some(t) = &e.tenant {
            lines.push(format!("tenant = {}", quote(t)));
        }
        if e.lifecycle != Lifecycle::Service {
            lines.push(format!("lifecycle = {}", quote(lifecycle_text(e.lifecycle))));
        }
        match &e.ttl {
            Some(DurationInput::Seconds(s)) => lines.push(format!("ttl = {s}")),
            Some(DurationInput::Text(t)) => lines.push(format!("ttl = {}", quote(t))),
            None => {}
        }
        if e.on_expiry == OnExpiry::Delete {
            lines.push("on_expiry = \"delete\"".into());
        }
        if let Some(r) = e.max_retries {
            lines.push(format!("max_retries = {r}"));
        }
        if !e.labels.is_empty() {
            lines.push(format!("labels = {}", inline_map(&e.labels)));
        }
        lines.push(format!("spec = {}", spec_text(&e.spec)));
        if let Some(w) = e.warm_pool {
            let max = w.max.map_or(String::new(), |m| format!(", max = {m}"));
            lines.push(format!("warm_pool = {{ min = {}{max} }}", w.min));
        }
        table(&mut text, "[[environment]]", lines);
    }
    for p in pools {
        let mut lines = vec![format!("name = {}", quote(&p.name)), format!("min = {}", p.min)];
        if let Some(m) = p.max {
            lines.push(format!("max = {m}"));
        }
        if let Some(v) = &p.version {
            lines.push(format!("version = {}", quote(v)));
        }
        if p.lifecycle != Lifecycle::Lease {
            lines.push(format!("lifecycle = {}", quote(lifecycle_text(p.lifecycle))));
        }
        lines.push(format!("spec = {}", spec_text(&p.spec)));
        table(&mut text, "[[pool]]", lines);
    }
    (text, headers)
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,20}"
}

fn lifecycle() -> impl Strategy<Value = Lifecycle> {
    prop_oneof![Just(Lifecycle::Lease), Just(Lifecycle::Service), Just(Lifecycle::Daemon), Just(Lifecycle::Job)]
}

fn spec() -> impl Strategy<Value = Spec> {
    let cmd = prop::collection::vec("[^\u{0}]{1,12}", 1..4);
    let env = prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,8}", "[^\u{0}]{0,12}", 0..3);
    (prop_oneof![Just("sim"), Just("process")], cmd, env).prop_map(|(provider, cmd, env)| Spec {
        provider: provider.to_owned(),
        cmd,
        env,
        ..Spec::default()
    })
}

fn ttl() -> impl Strategy<Value = Option<(DurationInput, Duration)>> {
    prop_oneof![
        Just(None),
        (1i64..=86_400).prop_map(|s| Some((DurationInput::Seconds(s), Duration::from_secs(s as u64)))),
        (1u64..=600).prop_map(|m| Some((DurationInput::Text(format!("{m}m")), Duration::from_secs(m * 60)))),
    ]
}

fn warm_pool() -> impl Strategy<Value = Option<WarmPool>> {
    prop::option::of(
        (0u32..5, prop::option::of(0u32..5)).prop_map(|(min, extra)| WarmPool { min, max: extra.map(|e| min + e) }),
    )
}

/// The environment numbered `i` (ids are unique by their suffix).
fn environment(i: usize) -> impl Strategy<Value = (EnvDecl, Option<Duration>)> {
    let labels = prop::collection::btree_map("[A-Za-z0-9./_-]{1,10}", "[^\\p{Cc}]{0,12}", 0..3);
    let fields = (name(), prop::option::of(name()), prop::option::of(name()), lifecycle(), ttl(), any::<bool>());
    (fields, prop::option::of(0u32..10), labels, spec(), warm_pool()).prop_map(
        move |((id, name, tenant, lifecycle, ttl, delete), retries, labels, spec, warm_pool)| {
            let decl = EnvDecl {
                id: format!("{id}-e{i}"),
                name,
                tenant,
                lifecycle,
                ttl: ttl.as_ref().map(|(input, _)| input.clone()),
                on_expiry: if delete { OnExpiry::Delete } else { OnExpiry::Stop },
                max_retries: retries.filter(|_| lifecycle == Lifecycle::Job),
                idle_timeout: None,
                on_idle: Default::default(),
                labels,
                spec,
                warm_pool,
                warn_before: None,
                seed_spec: None,
            };
            (decl, ttl.map(|(_, d)| d))
        },
    )
}

fn pool(i: usize) -> impl Strategy<Value = PoolDecl> {
    (name(), spec(), 0u32..5, prop::option::of(0u32..5), prop::option::of(name()), lifecycle()).prop_map(
        move |(n, spec, min, extra, version, lifecycle)| PoolDecl {
            name: format!("{n}-p{i}"),
            spec,
            min,
            max: extra.map(|e| min + e),
            version,
            lifecycle,
        },
    )
}

fn declared() -> impl Strategy<Value = Declared> {
    let envs = (0usize..5).prop_flat_map(|n| (0..n).map(environment).collect::<Vec<_>>());
    let pools = (0usize..4).prop_flat_map(|n| (0..n).map(pool).collect::<Vec<_>>());
    (envs, pools, any::<bool>()).prop_map(|(environments, declared_pools, allow_mass_removal)| {
        let warm = environments.iter().filter_map(|(e, _)| {
            e.warm_pool.map(|w| PoolDecl {
                name: e.id.clone(),
                spec: e.spec.clone(),
                min: w.min,
                max: w.max,
                version: None,
                lifecycle: e.lifecycle,
            })
        });
        let pools = warm.chain(declared_pools).collect();
        Declared { environments, pools, allow_mass_removal, keep_removed: false, ..Default::default() }
    })
}

/// Pieces of config files, to make texts that reach past the TOML syntax into the checks.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[[environment]]\n".to_owned()),
        Just("[[pool]]\n".to_owned()),
        Just("[redis]\n".to_owned()),
        Just("id = \"a\"\n".to_owned()),
        Just("name = \"p\"\n".to_owned()),
        Just("min = 3\n".to_owned()),
        Just("max = 1\n".to_owned()),
        Just("ttl = \"soon\"\n".to_owned()),
        Just("ttl = -5\n".to_owned()),
        Just("max_retries = 2\n".to_owned()),
        Just("lifecycle = \"job\"\n".to_owned()),
        Just("spec = { provider = \"sim\" }\n".to_owned()),
        Just("spec = { provider = \"process\", cmd = [\"\"] }\n".to_owned()),
        Just("warm_pool = { min = 4, max = 2 }\n".to_owned()),
        Just("allow_mass_removal = true\n".to_owned()),
        "[^\u{0}]{0,8}",
        "[=\\[\\]{}\",.\n #]{1,6}",
    ]
}

fn lines_of(text: &str) -> usize {
    text.split('\n').count()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_answered_without_a_panic(text in "(?s).{0,200}") {
        if let Err(errors) = parse(&text, MAX_TTL) {
            prop_assert!(!errors.is_empty());
            for e in &errors {
                prop_assert!((1..=lines_of(&text)).contains(&e.line), "{e:?} in {text:?}");
            }
        }
    }

    #[test]
    fn config_like_text_gets_errors_with_lines(parts in prop::collection::vec(fragment(), 0..24)) {
        let text = parts.concat();
        if let Err(errors) = parse(&text, MAX_TTL) {
            prop_assert!(!errors.is_empty());
            for e in &errors {
                prop_assert!((1..=lines_of(&text)).contains(&e.line), "{e:?} in {text:?}");
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    #[test]
    fn a_generated_file_parses_to_what_was_generated(want in declared()) {
        let envs: Vec<EnvDecl> = want.environments.iter().map(|(e, _)| e.clone()).collect();
        let pools: Vec<PoolDecl> = want.pools.iter().filter(|p| !envs.iter().any(|e| e.id == p.name)).cloned().collect();
        let (text, _) = render(&envs, &pools, want.allow_mass_removal);
        prop_assert_eq!(parse(&text, MAX_TTL), Ok(want), "{}", text);
    }

    #[test]
    fn an_error_names_the_line_of_its_entry(want in declared(), pick in any::<prop::sample::Index>(), kind in 0..3u8) {
        let mut envs: Vec<EnvDecl> = want.environments.iter().map(|(e, _)| e.clone()).collect();
        let mut pools: Vec<PoolDecl> = want.pools.iter().filter(|p| !envs.iter().any(|e| e.id == p.name)).cloned().collect();
        prop_assume!(!envs.is_empty() || !pools.is_empty());
        let at = pick.index(envs.len() + pools.len());
        let expected = if at < envs.len() {
            let e = &mut envs[at];
            match kind {
                0 => e.tenant = Some("not a name".into()),
                1 => e.spec.provider = "nope".into(),
                _ => e.ttl = Some(DurationInput::Text("soon".into())),
            }
            "environment"
        } else {
            let p = &mut pools[at - envs.len()];
            match kind {
                0 => {
                    p.min = p.min.max(1);
                    p.max = Some(p.min - 1);
                }
                1 => p.spec.provider = "nope".into(),
                _ => p.version = Some("not a version".into()),
            }
            "pool"
        };
        let (text, headers) = render(&envs, &pools, false);
        let errors = parse(&text, MAX_TTL).expect_err("an invalid entry is refused");
        prop_assert_eq!(errors.len(), 1, "{:?}\n{}", errors, text);
        prop_assert_eq!(errors[0].line, headers[at], "{:?}\n{}", errors, text);
        prop_assert!(errors[0].message.starts_with(expected), "{:?}", errors);
    }
}

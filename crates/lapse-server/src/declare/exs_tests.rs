//! The `.exs` reader: the seed's own `config/desired_vms.exs`, errors at line and column, the
//! bounds; and properties (no text panics it; any JSON-like term written as Elixir reads back
//! to the same JSON).

use proptest::prelude::*;
use serde_json::{Value, json};

use super::exs::{self, MAX_DEPTH, parse_terms, to_json};

/// The seed's file, verbatim (ndrean/microvm-control-planner@2ff3827:config/desired_vms.exs).
const SEED_FILE: &str = include_str!("../../../lapse/tests/it/fc/desired_vms.exs");

fn seed_file_without_kernel() -> String {
    SEED_FILE
        .lines()
        .filter(|l| !l.trim_start().starts_with("rootfs:") && !l.trim_start().starts_with("kernel:"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn error_of(text: &str) -> (usize, usize, String) {
    let errors = exs::parse(text, "process").expect_err("refused");
    (errors[0].line, errors[0].column, errors[0].message.clone())
}

#[test]
fn the_seeds_own_file_is_read_and_its_kernel_refused_by_a_provider_that_cannot_boot_one() {
    let (line, column, message) = error_of(SEED_FILE);
    assert_eq!((line, column), (6, 3), "the entry's tuple: {message}");
    assert!(
        message.starts_with("vm \"web-app-1\": spec.kernel: the process provider cannot boot a kernel"),
        "{message}"
    );

    let declared = exs::parse(&seed_file_without_kernel(), "process").expect("the rest of the seed's file is read");
    let [(env, ttl)] = declared.environments.as_slice() else { panic!("one entry: {declared:?}") };
    assert_eq!((env.id.as_str(), env.tenant.as_deref(), *ttl), ("web-app-1", Some("web-app-1"), None));
    assert_eq!(env.spec.provider, "process");
    assert_eq!(env.spec.cmd, ["/app/bin/server"]);
    assert_eq!(env.spec.env["MIX_ENV"], "prod");
    assert_eq!(env.spec.env["DATABASE_URL"], "postgresql://localhost/myapp");
    let resources = env.spec.resources.clone().unwrap();
    assert_eq!((resources.vcpu, resources.mem_mb), (Some(2.0), Some(512)));
    assert_eq!(env.lifecycle, lapse_core::model::Lifecycle::Service);
    let seed: Value = serde_json::from_str(env.seed_spec.as_deref().unwrap()).unwrap();
    assert_eq!(
        seed,
        json!({"cmd": ["/app/bin/server"], "env": {"MIX_ENV": "prod", "SECRET_KEY_BASE": "xyz...", "DATABASE_URL": "postgresql://localhost/myapp"},
            "resources": {"vcpu": 2, "mem_mb": 512}, "lifecycle": "service", "warm_pool": {"min": 1, "max": 3}}),
        "as Jason.encode! stores it: atom keys as strings"
    );
    let [pool] = declared.pools.as_slice() else { panic!("its warm pool: {declared:?}") };
    assert_eq!((pool.name.as_str(), pool.min, pool.max), ("web-app-1", 1, Some(3)));
}

#[test]
fn the_literal_subset_reads_as_jason_would_store_it() {
    let text = r#"
        # a comment
        [{"a", "t", %{"quoted" => 1, lifecycle: :daemon, flag: true, none: nil, "str key": 0x1F,
            n: -1_000, f: 1.5e3, list: [1, "two", :three, %{}], nested: %{deep: [[]]}, esc: "q\"\\\#{x}\n", "atom": :"with space"}},]
    "#;
    let exs::Kind::List(entries) = parse_terms(text).unwrap().kind else { panic!("a list") };
    let exs::Kind::Tuple(parts) = &entries[0].kind else { panic!("a tuple") };
    assert_eq!((parts[2].line, parts[2].column), (3, 21), "where the map starts");
    assert_eq!(
        to_json(&parts[2]).unwrap(),
        json!({"quoted": 1, "lifecycle": "daemon", "flag": true, "none": null, "str key": 31, "n": -1000, "f": 1500.0,
            "list": [1, "two", "three", {}], "nested": {"deep": [[]]}, "esc": "q\"\\#{x}\n", "atom": "with space"})
    );
}

#[test]
fn errors_have_their_line_and_column() {
    for (text, line, column, says) in [
        ("[{\"a\", \"t\", %{cmd: System.get_env(\"X\")}}]", 1, 20, "not a literal"),
        ("[\n  {\"a\", \"t\", %{cmd: \"#{x}\"}}]", 2, 22, "interpolation"),
        ("[{\"a\", \"t\", %{cmd: \"open", 1, 25, "not closed"),
        ("[{\"a\", \"t\", %{tuple: {1, 2}}}]", 1, 22, "tuple"),
        ("[{\"a\", \"t\"}]", 1, 2, "{vm_id, tenant, spec}"),
        ("%{a: 1}", 1, 1, "must be a list"),
        ("[{:a, \"t\", %{}}]", 1, 3, "vm_id must be a string"),
        ("[{\"a\", \"t\", %{n: 99999999999999999999999}}]", 1, 18, "beyond 64 bits"),
        ("[{\"a\", \"t\", %{cmd: [\"x\"]}} {\"b\"}]", 1, 28, "expected ','"),
        ("[{\"a\", \"t\", %{cmd: [\"x\"]}}, {\"a\", \"t\", %{cmd: [\"x\"]}}]", 1, 29, "declared twice"),
        ("[{\"bad id\", \"t\", %{cmd: [\"x\"]}}]", 1, 2, "vm_id"),
        ("[{\"a\", \"t\", %{cmd: [\"x\"], warm_pool: %{min: 5, max: 1}}}]", 1, 2, "warm_pool"),
        ("[{\"a\", \"t\", %{env: %{A: [1]}}}]", 1, 13, "spec.env.A"),
        ("~w(a b)", 1, 1, "unexpected '~'"),
    ] {
        let (l, c, message) = error_of(text);
        assert_eq!((l, c), (line, column), "{text}: {message}");
        assert!(message.contains(says), "{text}: {message}");
    }
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 10), "]".repeat(MAX_DEPTH + 10));
    let error = parse_terms(&deep).unwrap_err();
    assert!(error.message.contains("nested deeper"), "{error}");
    let bomb = "[".repeat(1_000_000);
    assert!(parse_terms(&bomb).is_err(), "a million brackets are refused, not a stack overflow");
}

/// A JSON value as a seed `.exs` file writes it (atom keys where they can be, strings else).
fn elixir(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(items) => format!("[{}]", items.iter().map(elixir).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => {
            let pairs: Vec<String> = m
                .iter()
                .map(|(k, v)| {
                    let plain = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if plain { format!("{k}: {}", elixir(v)) } else { format!("{} => {}", quote(k), elixir(v)) }
                })
                .collect();
            format!("%{{{}}}", pairs.join(", "))
        }
    }
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '#' => out.push_str("\\#"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(|f| Value::from((f * 1000.0).round() / 1000.0 + 0.5)),
        "(?s).{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_][a-z0-9_]{0,6}|[ -~]{0,6}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_answered_without_a_panic(text in "(?s).{0,200}") {
        let _ = exs::parse(&text, "process");
    }

    #[test]
    fn any_text_made_of_the_grammars_pieces_is_answered_without_a_panic(
        pieces in prop::collection::vec(prop_oneof![
            Just("["), Just("]"), Just("{"), Just("}"), Just("%{"), Just(","), Just(": "), Just(" => "), Just("\""),
            Just(":a"), Just("1"), Just("-"), Just("0x"), Just("1.5e"), Just("nil"), Just("# c\n"), Just("\\"), Just("#{"),
        ], 0..60)
    ) {
        let _ = exs::parse(&pieces.concat(), "process");
    }

    #[test]
    fn a_json_like_term_written_as_elixir_reads_back(value in json_value()) {
        let text = elixir(&value);
        let term = parse_terms(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let back = to_json(&term).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(back, value, "{}", text);
    }
}

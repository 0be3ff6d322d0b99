//! `lapse check FILE`: a declarative config file read as `lapse serve --config` would read
//! it, without a server; exit code 0 when it is good, 1 with every error (line and column)
//! when not; `--json` for scripts.

use std::process::ExitCode;

use anyhow::Context as _;

pub fn run(file: &std::path::Path, max_ttl: &str, vms_provider: &str, json: bool) -> anyhow::Result<ExitCode> {
    let max_ttl = lapse_core::duration::parse_duration(max_ttl).map_err(|e| anyhow::anyhow!("--max-ttl: {e}"))?;
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file.display();
    let options =
        lapse_server::declare::FileOptions { max_ttl, vms_provider: vms_provider.to_owned(), delete_removed: false };
    match lapse_server::declare::parse_file(file, &text, &options) {
        Ok(declared) => {
            if json {
                crate::cli::print_json(
                    &serde_json::json!({"ok": true, "environments": declared.environments.len(), "pools": declared.pools.len()}),
                );
            } else {
                println!("{name}: ok ({} environments, {} pools)", declared.environments.len(), declared.pools.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            if json {
                let list: Vec<_> = errors
                    .iter()
                    .map(|e| serde_json::json!({"line": e.line, "column": e.column, "message": e.message}))
                    .collect();
                crate::cli::print_json(&serde_json::json!({"ok": false, "errors": list}));
            } else {
                for e in &errors {
                    match e.column {
                        0 => eprintln!("{name}:{}: {}", e.line, e.message),
                        column => eprintln!("{name}:{}:{column}: {}", e.line, e.message),
                    }
                }
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

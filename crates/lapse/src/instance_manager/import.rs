//! `lapse import instance-manager [FILE]`: adopts the instances instance-manager recorded
//! (its `instances.json`, see [`super::file`]) and, unless `--no-discover`, every instance
//! tagged `ManagedBy=instance-manager` in the server's region, as Lapse environments with
//! their expiry, through the server's `POST /v1/admin/adopt` (admin key). Idempotent: an
//! instance adopted before is reported as such. `--dry-run` prints what would be adopted.

use std::path::PathBuf;

use anyhow::Context as _;
use lapse_core::model::OnExpiry;
use lapse_server::adopt::{AdoptInstance, AdoptReport, AdoptRequest, MAX_ADOPT};

use super::file;
use crate::client::Client;

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// instance-manager's file (default ~/.instance-manager/instances.json; without it, only
    /// the tagged instances are adopted).
    pub file: Option<PathBuf>,
    /// Print what would be adopted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only the file's instances, not every one tagged ManagedBy=instance-manager.
    #[arg(long)]
    pub no_discover: bool,
    /// The provider holding them (as `lapse serve` names it).
    #[arg(long, default_value = "aws")]
    pub provider: String,
    /// What their expiry does: stop (as instance-manager's service) or delete.
    #[arg(long, value_parser = ["stop", "delete"], default_value = "stop")]
    pub on_expiry: String,
    /// Whose the environments are (default: $USER).
    #[arg(long, env = "USER", default_value = "instance-manager")]
    pub owner: String,
}

/// Runs the import; prints each instance's outcome (or the reports as JSON).
pub async fn run_import(client: &Client, args: ImportArgs, json: bool) -> anyhow::Result<()> {
    let (path, explicit) = match &args.file {
        Some(p) => (p.clone(), true),
        None => (file::default_path(), false),
    };
    let entries = match file::read(&path) {
        Ok(entries) => entries,
        Err(file::FileError::Read { source, .. }) if !explicit && source.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("no {} here; adopting the tagged instances only", path.display());
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    if entries.is_empty() && args.no_discover {
        anyhow::bail!("nothing to import: {} lists no instances and --no-discover is set", path.display());
    }
    let instances: Vec<AdoptInstance> = entries
        .iter()
        .map(|e| {
            let mut labels = std::collections::BTreeMap::new();
            if !e.key_name.is_empty() && e.key_name.len() <= 255 {
                labels.insert("instance-manager.key-name".to_owned(), e.key_name.clone());
            }
            AdoptInstance { provider_ref: e.id.clone(), expires_at: e.expires_at.clone(), name: None, labels }
        })
        .collect();
    if !json {
        let tagged = if args.no_discover { "" } else { ", and those tagged ManagedBy=instance-manager" };
        let verb = if args.dry_run { "Checking" } else { "Adopting" };
        eprintln!("{verb} {} instance(s) from {}{tagged}...", instances.len(), path.display());
    }
    let on_expiry = if args.on_expiry == "delete" { OnExpiry::Delete } else { OnExpiry::Stop };
    let mut batches: Vec<Vec<AdoptInstance>> = instances.chunks(MAX_ADOPT).map(<[_]>::to_vec).collect();
    if batches.is_empty() {
        batches.push(Vec::new());
    }
    let mut all = AdoptReport { dry_run: args.dry_run, ..Default::default() };
    let total = batches.len();
    for (n, batch) in batches.into_iter().enumerate() {
        if total > 1 && !json {
            eprintln!("  batch {}/{total}...", n + 1);
        }
        let req = AdoptRequest {
            provider: args.provider.clone(),
            instances: batch,
            discover: !args.no_discover && n == 0,
            dry_run: args.dry_run,
            owner: Some(args.owner.clone()),
            on_expiry,
            ports: vec![22],
        };
        let report: AdoptReport = client.post("/v1/admin/adopt", &req).await.context("adopting instances")?;
        all.adopted.extend(report.adopted);
        all.skipped.extend(report.skipped);
    }
    if json {
        crate::cli::print_json(&all);
        return Ok(());
    }
    print_report(&all);
    Ok(())
}

fn print_report(r: &AdoptReport) {
    let (mut new, mut already) = (0, 0);
    for a in &r.adopted {
        let expires = a.expires_at.as_deref().map(super::output::rfc3339).unwrap_or_default();
        match (&a.environment_id, a.already, r.dry_run) {
            (Some(env), true, _) => {
                already += 1;
                println!("{}: already adopted as environment {env} ({})", a.provider_ref, a.state);
            }
            (_, _, true) => {
                new += 1;
                println!("{}: would adopt ({}, expires {expires})", a.provider_ref, a.state);
            }
            (env, _, false) => {
                new += 1;
                println!(
                    "{}: adopted as environment {} ({}, expires {expires})",
                    a.provider_ref,
                    env.as_deref().unwrap_or("?"),
                    a.state
                );
            }
        }
    }
    for s in &r.skipped {
        println!("{}: skipped: {}", s.provider_ref, s.reason);
    }
    let verb = if r.dry_run { "would be adopted" } else { "adopted" };
    println!("{new} {verb}, {already} already adopted, {} skipped", r.skipped.len());
}

//! Builds the dashboard (`../../ui`, Vite + TypeScript) into `$OUT_DIR/ui` when the `ui`
//! feature is on, for `src/ui/assets.rs` to embed.
//!
//! - `LAPSE_UI_DIST=<dir>`: no npm at all; that prebuilt directory is copied in.
//! - Otherwise `npm ci` runs only when `ui/node_modules` is missing or older than
//!   `ui/package-lock.json`, then `npm run build` with `LAPSE_UI_OUT=$OUT_DIR/ui`.
//! - Without Node.js the build fails and says how to build without the dashboard.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LAPSE_UI_DIST");
    if std::env::var_os("CARGO_FEATURE_UI").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("ui");
    if let Some(dist) = std::env::var_os("LAPSE_UI_DIST") {
        let dist = PathBuf::from(dist);
        println!("cargo:rerun-if-changed={}", dist.display());
        if !dist.join("index.html").is_file() {
            fail(&format!(
                "LAPSE_UI_DIST={} holds no index.html (build it with `npm run build` in ui/)",
                dist.display()
            ));
        }
        let _ = std::fs::remove_dir_all(&out);
        if let Err(e) = copy_dir(&dist, &out) {
            fail(&format!("copying LAPSE_UI_DIST={} into {}: {e}", dist.display(), out.display()));
        }
        return;
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let ui = manifest.join("../../ui");
    for watched in ["src", "index.html", "package.json", "package-lock.json", "vite.config.ts", "tsconfig.json"] {
        println!("cargo:rerun-if-changed={}", ui.join(watched).display());
    }
    if !ui.join("package.json").is_file() {
        fail(&format!("no dashboard sources at {}", ui.display()));
    }
    if needs_install(&ui) {
        npm(&ui, &["ci", "--no-audit", "--no-fund"], &out);
    }
    npm(&ui, &["run", "build"], &out);
    if !out.join("index.html").is_file() {
        fail(&format!("`npm run build` left no index.html in {}", out.display()));
    }
}

/// `node_modules` missing, or older than the lockfile (npm writes `.package-lock.json` there).
fn needs_install(ui: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(&ui.join("node_modules/.package-lock.json")), modified(&ui.join("package-lock.json"))) {
        (Some(installed), Some(lock)) => installed < lock,
        _ => true,
    }
}

fn npm(ui: &Path, args: &[&str], out: &Path) {
    let status = Command::new("npm").args(args).current_dir(ui).env("LAPSE_UI_OUT", out).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!("`npm {}` in {} failed ({s})", args.join(" "), ui.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(
            "the dashboard (feature `ui`, on by default) is built with npm, and npm was not found: install \
             Node.js (20 or later, with npm), or set LAPSE_UI_DIST=<a prebuilt ui dir>, or build without the \
             dashboard: cargo build --no-default-features --features docker,swarm,scaleway,ovh,aws,s3",
        ),
        Err(e) => fail(&format!("running npm: {e}")),
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    println!("cargo:warning={message}");
    std::process::exit(1);
}

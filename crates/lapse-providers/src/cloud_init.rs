//! User data for cloud VMs: Lapse's own part (the SSH keys that let Lapse and the user in,
//! and the lease backstop) and the user's own cloud-init, as one MIME multipart document
//! (`multipart/mixed`) that cloud-init runs part by part. Every cloud provider builds its user
//! data here ([`user_data`]); none writes its own.
//!
//! **Lapse's part** is a `#cloud-config` ([`lapse_part`]) that comes **last** and merges with
//! `merge_how: dict(recurse_array,no_replace)+list(append)`: a user's own `#cloud-config`
//! with `bootcmd` or `ssh_authorized_keys` of its own keeps them, and Lapse's entries are
//! appended (cloud-init's default merge would let a later part *replace* the lists, so
//! Lapse's part must be the later one). It holds:
//! - `ssh_authorized_keys`: Lapse's key for the environment ([`crate::ssh::KeyStore`]) and
//!   the spec's `cloud.ssh_public_keys`, each as a quoted scalar (a key cannot add YAML);
//! - **the backstop** ([`Backstop`]), one script shared by the three clouds, started from
//!   `bootcmd` (so at **every** boot): it seeds the deadline file (default
//!   [`crate::ssh::DEFAULT_DEADLINE_FILE`], the lease's `expires_at` in Unix seconds) from the
//!   user data unless the file already holds a later one, then loops each minute: it reads the
//!   deadline from the cloud's metadata where there is one ([`Metadata`]: AWS's instance tag
//!   `lapse:expires-at` through IMDS, Scaleway's `lapse:expires-at=` server tag from
//!   `http://169.254.42.42/conf`) and writes it to the file, else reads the file, and powers
//!   off at deadline plus grace. `extend` of a running VM moves the deadline by updating the
//!   tag and writing the file over SSH ([`crate::Provider::rearm`]).
//!
//! The user's part keeps its type, told by its first line (`#cloud-config`, `#!`, `#include`,
//! `#cloud-boothook`, ...); a MIME document of the user's own is nested as it is. The boundary
//! is chosen so that it does not occur in any part: a spec cannot end the document early and
//! so drop the backstop that holds the lease.
//!
//! Not verified against a real cloud-init here (none runs in the tests): the tests check the
//! document's structure, and run the backstop's seeding and loop logic under `sh`.

/// The lease backstop of one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backstop<'a> {
    /// When the lease ends (Unix seconds).
    pub expires_at: i64,
    /// How long after it the guest powers itself off.
    pub grace_secs: i64,
    /// The guest file holding the deadline (an absolute path of plain characters).
    pub deadline_file: &'a str,
    /// Where else the guest can read the deadline.
    pub metadata: Metadata,
    /// The command that ends the VM (`shutdown -h now`, `shutdown -P now`).
    pub power_off: &'a str,
}

/// Where a guest reads its lease's deadline besides the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metadata {
    /// Only the file (OVH: no tags in its metadata).
    None,
    /// EC2's instance metadata, tag `lapse:expires-at` (RFC 3339), IMDSv2 then v1.
    AwsImds,
    /// Scaleway's `http://169.254.42.42/conf`, server tag `lapse:expires-at=<Unix seconds>`.
    ScalewayConf,
}

/// The whole user data: the user's own part (if any), then Lapse's (keys, backstop), as one
/// multipart document. With neither keys nor a lease, the user's data goes as given.
pub fn user_data(backstop: Option<&Backstop<'_>>, ssh_keys: &[String], own: Option<&str>) -> Option<String> {
    let own = own.filter(|s| !s.trim().is_empty());
    match lapse_part(backstop, ssh_keys) {
        Some(lapse) => Some(multipart(&lapse, own)),
        None => own.map(str::to_owned),
    }
}

/// Lapse's own `#cloud-config`: the keys and the backstop; `None` with neither.
pub fn lapse_part(backstop: Option<&Backstop<'_>>, ssh_keys: &[String]) -> Option<String> {
    let keys: Vec<&str> = ssh_keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()).collect();
    if backstop.is_none() && keys.is_empty() {
        return None;
    }
    let mut out = String::from(
        "#cloud-config\n# Lapse: SSH keys and the lease backstop\nmerge_how: 'dict(recurse_array,no_replace)+list(append)'\n",
    );
    if !keys.is_empty() {
        out.push_str("ssh_authorized_keys:\n");
        for key in keys {
            // A JSON string is a YAML double-quoted scalar: newlines and quotes stay inside.
            out.push_str(&format!("  - {}\n", serde_json::Value::String(key.to_owned())));
        }
    }
    if let Some(b) = backstop {
        out.push_str("bootcmd:\n  - |\n");
        for line in backstop_boot(b).lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    Some(out)
}

/// The shell run at every boot: seeds the deadline file, writes the loop, starts it.
pub fn backstop_boot(b: &Backstop<'_>) -> String {
    let file = b.deadline_file;
    let dir = file.rsplit_once('/').map(|(d, _)| d).filter(|d| !d.is_empty()).unwrap_or("/");
    format!(
        "# Lapse lease backstop: power off at expires-at + {grace}s, even when Lapse is down.\n\
         mkdir -p {dir}\n\
         c=$(cat {file} 2>/dev/null); case \"$c\" in ''|*[!0-9]*) c=0;; esac\n\
         if [ {at} -gt \"$c\" ]; then echo {at} > {file}.tmp && mv {file}.tmp {file}; fi\n\
         cat > {dir}/backstop.sh <<'LAPSE_BACKSTOP'\n{script}LAPSE_BACKSTOP\n\
         nohup sh {dir}/backstop.sh >/dev/null 2>&1 &\n",
        grace = b.grace_secs,
        at = b.expires_at,
        script = backstop_loop(b),
    )
}

/// The loop: metadata (when the cloud has it) updates the file; the file's deadline plus the
/// grace powers the VM off. One look a minute; `LAPSE_BACKSTOP_ONCE=1` looks once (tests).
pub fn backstop_loop(b: &Backstop<'_>) -> String {
    let file = b.deadline_file;
    let metadata = match b.metadata {
        Metadata::None => "",
        Metadata::AwsImds => {
            "tok=$(curl -sf -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token 2>/dev/null)\n\
             t=$(curl -sf -m 5 ${tok:+-H \"X-aws-ec2-metadata-token: $tok\"} http://169.254.169.254/latest/meta-data/tags/instance/lapse:expires-at 2>/dev/null)\n\
             m=$( [ -n \"$t\" ] && date -d \"$t\" +%s 2>/dev/null )\n"
        }
        Metadata::ScalewayConf => {
            "m=$(curl -sf -m 5 http://169.254.42.42/conf 2>/dev/null | tr -d \"'\\\"\" | sed -n 's/^TAGS_[0-9]*=lapse:expires-at=//p' | head -n 1)\n"
        }
    };
    format!(
        "#!/bin/sh\n\
         f={file}; g={grace}\n\
         while :; do\n\
         m=\n\
         {metadata}\
         case \"$m\" in ''|*[!0-9]*) ;; *) [ \"$m\" = \"$(cat $f 2>/dev/null)\" ] || {{ echo \"$m\" > $f.tmp && mv $f.tmp $f; }};; esac\n\
         d=$(cat $f 2>/dev/null)\n\
         case \"$d\" in ''|*[!0-9]*) ;; *) [ \"$(date +%s)\" -ge $((d + g)) ] && {power_off};; esac\n\
         [ -n \"$LAPSE_BACKSTOP_ONCE\" ] && exit 0\n\
         sleep 60\n\
         done\n",
        grace = b.grace_secs,
        power_off = b.power_off,
    )
}

/// The command line that moves a running guest's deadline: writes `expires_at` (Unix
/// seconds) to the deadline file whole (temp file, rename); under `sudo -n` for a user other
/// than root.
pub fn rearm_command(deadline_file: &str, expires_at: i64, as_root: bool) -> String {
    let dir = deadline_file.rsplit_once('/').map(|(d, _)| d).filter(|d| !d.is_empty()).unwrap_or("/");
    let script =
        format!("mkdir -p {dir} && echo {expires_at} > {deadline_file}.tmp && mv {deadline_file}.tmp {deadline_file}");
    let quoted = crate::ssh::quote::word(&script);
    if as_root { format!("sh -c {quoted}") } else { format!("sudo -n sh -c {quoted}") }
}

/// Lapse's part last (see the module doc), after the user's own.
fn multipart(lapse: &str, own: Option<&str>) -> String {
    let boundary = boundary_for(lapse, own.unwrap_or_default());
    let mut out = format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n");
    if let Some(own) = own {
        if own.trim_start().to_ascii_lowercase().starts_with("content-type:") {
            // A MIME document already: its own headers head the part.
            out.push_str(&format!("--{boundary}\n{}\n", own.trim_end_matches('\n')));
        } else {
            out.push_str(&part(&boundary, part_type(own), "user-data", own));
        }
    }
    out.push_str(&part(&boundary, "text/cloud-config", "lapse", lapse));
    out.push_str(&format!("--{boundary}--\n"));
    out
}

/// The MIME type cloud-init gives a part by its first line.
pub fn part_type(user_data: &str) -> &'static str {
    let first = user_data.trim_start().lines().next().unwrap_or_default().trim();
    if first.starts_with("#cloud-config-archive") {
        "text/cloud-config-archive"
    } else if first.starts_with("#cloud-config") {
        "text/cloud-config"
    } else if first.starts_with("#cloud-boothook") {
        "text/cloud-boothook"
    } else if first.starts_with("#part-handler") {
        "text/part-handler"
    } else if first.starts_with("#!") {
        "text/x-shellscript"
    } else if first.starts_with("#include") {
        "text/x-include-url"
    } else {
        // Anything else cloud-init would ignore whole; as plain text it still reaches the VM.
        "text/plain"
    }
}

fn part(boundary: &str, kind: &str, name: &str, body: &str) -> String {
    format!(
        "--{boundary}\nContent-Type: {kind}; charset=\"utf-8\"\nMIME-Version: 1.0\n\
         Content-Disposition: attachment; filename=\"{name}\"\n\n{}\n",
        body.trim_end_matches('\n')
    )
}

/// A boundary found in neither text.
fn boundary_for(a: &str, b: &str) -> String {
    (0u32..)
        .map(|n| format!("==lapse-{n:08x}=="))
        .find(|candidate| !a.contains(candidate.as_str()) && !b.contains(candidate.as_str()))
        .expect("a finite text leaves some boundary free")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backstop(file: &str) -> Backstop<'_> {
        Backstop {
            expires_at: 1_900_000_000,
            grace_secs: 600,
            deadline_file: file,
            metadata: Metadata::None,
            power_off: "shutdown -P now",
        }
    }

    #[test]
    fn both_parts_survive_with_their_types_lapse_last() {
        let b = backstop("/var/lib/lapse/expires-at");
        let all = user_data(Some(&b), &["ssh-ed25519 AAAAkey lapse".into()], Some("#!/bin/sh\necho hello\n")).unwrap();
        assert!(all.starts_with("Content-Type: multipart/mixed"));
        let user = all.find("Content-Type: text/x-shellscript").unwrap();
        let lapse = all.find("Content-Type: text/cloud-config").unwrap();
        assert!(user < lapse, "Lapse's part merges last: {all}");
        assert!(all.contains("echo hello") && all.contains("merge_how: 'dict(recurse_array,no_replace)+list(append)'"));
        assert!(all.contains("ssh_authorized_keys:\n  - \"ssh-ed25519 AAAAkey lapse\"\n"), "{all}");
        assert!(all.contains("bootcmd:\n  - |\n    # Lapse lease backstop"), "{all}");
        assert!(all.contains("if [ 1900000000 -gt"));
        assert!(all.trim_end().ends_with("--"));
        let own_mime = "Content-Type: multipart/mixed; boundary=\"x\"\n\n--x\n\nhi\n--x--\n";
        assert!(user_data(Some(&b), &[], Some(own_mime)).unwrap().contains(own_mime.trim_end()));
    }

    #[test]
    fn nothing_of_lapse_leaves_the_users_data_as_given() {
        assert_eq!(user_data(None, &[], None), None);
        assert_eq!(user_data(None, &[], Some("  ")), None);
        assert_eq!(
            user_data(None, &[], Some("#cloud-config\nruncmd: [ls]\n")).unwrap(),
            "#cloud-config\nruncmd: [ls]\n"
        );
        let keys_only = user_data(None, &["ssh-ed25519 AAAA".into()], None).unwrap();
        assert!(keys_only.contains("ssh_authorized_keys") && !keys_only.contains("bootcmd"));
    }

    #[test]
    fn user_data_cannot_end_the_document_before_the_backstop() {
        // The user's data holds the first boundary's closing line: another boundary is used.
        let hostile = "#!/bin/sh\n--==lapse-00000000==--\n";
        let b = backstop("/f");
        let all = user_data(Some(&b), &[], Some(hostile)).unwrap();
        assert!(all.contains("boundary=\"==lapse-00000001==\""), "{all}");
        let closing = all.find("--==lapse-00000001==--").unwrap();
        assert!(all.find("Lapse lease backstop").unwrap() < closing);
        assert_eq!(all.matches("--==lapse-00000001==--").count(), 1);
    }

    #[test]
    fn a_hostile_key_adds_no_yaml() {
        let part = lapse_part(None, &["ssh-ed25519 AAAA\"\nruncmd: [reboot]\n#".into()]).unwrap();
        assert!(!part.contains("\nruncmd"), "{part}");
        assert!(part.contains(r#"  - "ssh-ed25519 AAAA\"\nruncmd: [reboot]\n#""#), "{part}");
    }

    fn sh(script: &str) -> std::process::Output {
        std::process::Command::new("sh").arg("-c").arg(script).env("LAPSE_BACKSTOP_ONCE", "1").output().unwrap()
    }

    /// The boot part seeds the file unless it holds a later deadline, and the loop powers off
    /// only once deadline plus grace has passed.
    #[test]
    fn the_backstop_seeds_the_file_and_powers_off_at_deadline_plus_grace() {
        let dir = tempfile::tempdir().unwrap();
        let file = format!("{}/lapse/expires-at", dir.path().display());
        let off = dir.path().join("off");
        let power_off = format!("touch {}", off.display());
        let now = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs())
            .unwrap();
        let mut b = Backstop {
            expires_at: now + 3600,
            grace_secs: 60,
            deadline_file: &file,
            metadata: Metadata::None,
            power_off: &power_off,
        };
        assert!(sh(&backstop_boot(&b)).status.success());
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), (now + 3600).to_string());
        // A boot with older user data (AWS keeps the launch's) leaves a moved deadline alone.
        b.expires_at = now - 7200;
        assert!(sh(&backstop_boot(&b)).status.success());
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), (now + 3600).to_string());
        assert!(sh(&backstop_loop(&b)).status.success());
        assert!(!off.exists(), "the lease runs: no power-off");
        // Within the grace: still on.
        std::fs::write(&file, format!("{}\n", now - 30)).unwrap();
        assert!(sh(&backstop_loop(&b)).status.success());
        assert!(!off.exists());
        std::fs::write(&file, format!("{}\n", now - 61)).unwrap();
        assert!(sh(&backstop_loop(&b)).status.success());
        assert!(off.exists(), "deadline plus grace passed: powered off");
    }

    #[test]
    fn rearm_writes_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = format!("{}/x/expires-at", dir.path().display());
        assert!(sh(&rearm_command(&file, 1_234, true)).status.success());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1234\n");
        assert!(rearm_command("/f", 1, false).starts_with("sudo -n sh -c '"));
    }

    #[test]
    fn the_metadata_readers_are_there() {
        let aws = backstop_loop(&Backstop { metadata: Metadata::AwsImds, ..backstop("/f") });
        assert!(aws.contains("latest/api/token") && aws.contains("tags/instance/lapse:expires-at"));
        let scw = backstop_loop(&Backstop { metadata: Metadata::ScalewayConf, ..backstop("/f") });
        assert!(scw.contains("http://169.254.42.42/conf") && scw.contains("lapse:expires-at="));
        // Both parse as shell.
        for script in [aws, scw] {
            let out = std::process::Command::new("sh").arg("-n").arg("-c").arg(&script).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }

    #[test]
    fn types_by_first_line() {
        for (text, kind) in [
            ("#cloud-config\n", "text/cloud-config"),
            ("#cloud-config-archive\n", "text/cloud-config-archive"),
            ("#!/bin/bash\n", "text/x-shellscript"),
            ("#include\nhttp://x\n", "text/x-include-url"),
            ("#cloud-boothook\n", "text/cloud-boothook"),
            ("plain", "text/plain"),
        ] {
            assert_eq!(part_type(text), kind, "{text}");
        }
    }
}

//! User data for cloud VMs: the lease backstop and the user's own cloud-init, as one MIME
//! multipart document (`multipart/mixed`) that cloud-init runs part by part. Every cloud
//! provider builds its user data here; each supplies only its backstop part (how that cloud's
//! guest arms its own shutdown).
//!
//! The user's part keeps its type, told by its first line (`#cloud-config`, `#!`, `#include`,
//! `#cloud-boothook`, ...); a MIME document of the user's own is nested as it is. The boundary
//! is chosen so that it does not occur in the user's data: a spec cannot end the document early
//! and so drop the backstop that holds the lease.

/// The backstop, first, then the user's own data (if any), as one multipart document.
pub fn with_backstop(backstop_type: &str, backstop: &str, own: Option<&str>) -> String {
    let own = own.filter(|s| !s.trim().is_empty());
    let boundary = boundary_for(backstop, own.unwrap_or_default());
    let mut out = format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n");
    out.push_str(&part(&boundary, backstop_type, "lapse-backstop", backstop));
    if let Some(own) = own {
        if own.trim_start().to_ascii_lowercase().starts_with("content-type:") {
            // A MIME document already: its own headers head the part.
            out.push_str(&format!("--{boundary}\n{}\n", own.trim_end_matches('\n')));
        } else {
            out.push_str(&part(&boundary, part_type(own), "user-data", own));
        }
    }
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

    #[test]
    fn both_parts_survive_with_their_types() {
        let all =
            with_backstop("text/x-shellscript", "#!/bin/sh\nshutdown -P +5\n", Some("#cloud-config\nruncmd: [ls]\n"));
        assert!(all.starts_with("Content-Type: multipart/mixed"));
        assert!(all.contains("Content-Type: text/x-shellscript") && all.contains("shutdown -P +5"));
        assert!(all.contains("Content-Type: text/cloud-config") && all.contains("runcmd: [ls]"));
        assert!(all.trim_end().ends_with("--"));
        let own_mime = "Content-Type: multipart/mixed; boundary=\"x\"\n\n--x\n\nhi\n--x--\n";
        assert!(with_backstop("text/plain", "b", Some(own_mime)).contains(own_mime.trim_end()));
    }

    #[test]
    fn user_data_cannot_end_the_document_before_the_backstop() {
        // The user's data holds the first boundary's closing line: another boundary is used.
        let hostile = "#!/bin/sh\n--==lapse-00000000==--\n";
        let all = with_backstop("text/x-shellscript", "BACKSTOP", Some(hostile));
        assert!(all.contains("boundary=\"==lapse-00000001==\""), "{all}");
        let closing = all.find("--==lapse-00000001==--").unwrap();
        assert!(all.find("BACKSTOP").unwrap() < closing);
        assert_eq!(all.matches("--==lapse-00000001==--").count(), 1);
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

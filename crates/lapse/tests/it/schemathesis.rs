//! schemathesis (from PyPI; `scripts/test` installs it) against a live server with keys: every
//! route of the OpenAPI document, generated valid and invalid input. No answer may be a 5xx,
//! and every answer must fit the document (status, content type, headers, body schema);
//! invalid input must be refused and routes must refuse callers without a key.

use std::time::Duration;

use crate::harness::Server;

#[tokio::test]
async fn the_live_api_holds_to_its_openapi_document() {
    let exe = std::env::var("LAPSE_SCHEMATHESIS")
        .expect("LAPSE_SCHEMATHESIS is set by scripts/test (schemathesis from PyPI); run the tests with it");
    let dir = tempfile::tempdir().unwrap();
    let admin = "admin-key-for-schemathesis-0123456789";
    // Generous limits: the run is one client making many requests.
    let args = ["--sim", "0", "--rate-limit", "0"];
    let server = Server::start_with_env(dir.path(), &args, &[("LAPSE_ADMIN_KEY", admin)]).await;
    let run = tokio::process::Command::new(exe)
        .arg("run")
        .arg(format!("{}/v1/openapi.json", server.url))
        .args(["-H", &format!("Authorization: Bearer {admin}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,ignored_auth,missing_required_header,negative_data_rejection"])
        .args(["--max-examples", "30", "--phases", "examples,coverage,fuzzing", "-w", "2", "--seed", "1"])
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run).await.expect("schemathesis within 10 min").unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found failures:\n{text}\nserver log:\n{}", server.log());
    assert!(text.contains("passed"), "{text}");
}

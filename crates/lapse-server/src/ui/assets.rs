//! The dashboard's files, embedded at build time (feature `ui`; `build.rs` builds `../../ui`
//! into `$OUT_DIR/ui`).
//!
//! `GET /ui/<path>` answers the file at `<path>`; any other path (no file, no extension
//! matched) answers `index.html`, so the single-page app's own routes load it. Vite names
//! assets under `assets/` by their content hash: those are `immutable` for a year; everything
//! else is `no-cache`. Every answer carries the security headers of [`security_headers`]: a
//! CSP without inline script (`connect-src` `'self'` and WebSockets), `nosniff`,
//! `Referrer-Policy: same-origin`, `X-Frame-Options: DENY`.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::http::ApiError;

/// The dashboard's Content-Security-Policy. Styles may be inline: xterm.js and uPlot set
/// element styles and xterm.js writes its theme into a `<style>` element; scripts may not.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; font-src 'self'; connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// `GET /ui`, `/ui/`, `/ui/{*path}`.
pub async fn serve(req: Request) -> Response {
    let path = req.uri().path();
    let relative = path.strip_prefix("/ui").unwrap_or(path).trim_start_matches('/');
    let mut answer = answer(relative);
    security_headers(answer.headers_mut());
    answer
}

/// Adds the dashboard's security headers.
pub fn security_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(feature = "ui")]
static DIST: include_dir::Dir<'static> = include_dir::include_dir!("$OUT_DIR/ui");

#[cfg(feature = "ui")]
fn answer(relative: &str) -> Response {
    let file = (!relative.is_empty() && !relative.split('/').any(|s| s.is_empty() || s == "." || s == ".."))
        .then(|| DIST.get_file(relative))
        .flatten();
    let (file, name) = match file {
        Some(f) => (f, relative),
        // A missing hashed asset is a 404, so a stale page does not run index.html as script.
        None if relative.starts_with("assets/") => {
            return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such dashboard asset").into_response();
        }
        None => match DIST.get_file("index.html") {
            Some(f) => (f, "index.html"),
            None => return no_dashboard(),
        },
    };
    let cache = if name.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    ([(header::CONTENT_TYPE, content_type(name)), (header::CACHE_CONTROL, cache)], file.contents()).into_response()
}

#[cfg(not(feature = "ui"))]
fn answer(_relative: &str) -> Response {
    no_dashboard()
}

fn no_dashboard() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_dashboard",
        "this build has no dashboard: it was built without the `ui` feature (build with default features and Node.js)",
    )
    .into_response()
}

/// The content type of a built file, by its extension.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_build_without_the_dashboard_says_so_in_a_json_404() {
        let answer = no_dashboard();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(answer.into_body(), 4096).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "no_dashboard");
        assert!(body["error"]["message"].as_str().unwrap().contains("without the `ui` feature"), "{body}");
    }

    #[test]
    fn content_types_follow_extensions() {
        for (name, expect) in [
            ("index.html", "text/html; charset=utf-8"),
            ("assets/index-abc.js", "text/javascript; charset=utf-8"),
            ("assets/index-abc.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
            ("noext", "application/octet-stream"),
        ] {
            assert_eq!(content_type(name), expect, "{name}");
        }
    }
}

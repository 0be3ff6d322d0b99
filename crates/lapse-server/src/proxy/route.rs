//! Which environment and port a proxied request is for, read from its path (or its host), and
//! the path it is forwarded with. Pure: no IO.
//!
//! - `/e/<id>/<port>/<rest>`: any port of the environment's spec.
//! - `/<route>/<id>/<rest>`: a named route of the spec (`spec.routes`); the prefix
//!   `/<route>/<id>` is stripped unless the route keeps it.
//! - `<id>-<route>.<domain>` (or `<id>-<port>.<domain>`) with `--proxy-domain`: the whole
//!   path is forwarded as it is.
//!
//! The route is decided from the raw (still percent-encoded) path before anything is
//! forwarded, and the rest of the path is held to rules that keep it inside the route: no
//! segment that decodes to `.` or `..` (`%2e%2e` included), no encoded `/` or `\` (`%2f`,
//! `%5c`), no `\`, no empty segment (`//host` tricks), no NUL or control characters, and only
//! origin-form request targets (absolute-form `http://host/...`, authority-form and `*` are
//! refused before this module runs). Whatever the path says, the connection goes only to the
//! endpoint Lapse recorded for the chosen environment and port.

use lapse_core::model::is_environment_id;

/// What the request asks for inside its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `/e/<id>/<port>`, or a host `<id>-<port>.<domain>`.
    Port(u16),
    /// A named route of the spec.
    Route(String),
}

/// A request's route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    pub environment_id: String,
    pub target: Target,
    /// The path prefix that chose the route (`/e/<id>/8080`, `/code/<id>`); empty when the
    /// host chose it.
    pub prefix: String,
    /// The raw path after the prefix: empty or starting with `/`.
    pub rest: String,
}

/// Why a path is not proxied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No route has this shape (or the id cannot be an environment's): a 404.
    #[error("no such proxy route: the proxy serves /e/<id>/<port>/... and /<route>/<id>/...")]
    NoRoute,
    /// The path tries to leave its route, or cannot be forwarded safely: a 400.
    #[error("{0}")]
    BadPath(&'static str),
}

impl Routed {
    /// The path the backend gets: the rest alone (always starting with `/`) when the prefix is
    /// stripped, else the prefix and the rest.
    pub fn forwarded_path(&self, strip_prefix: bool) -> String {
        let rest = if self.rest.is_empty() { "/" } else { self.rest.as_str() };
        if strip_prefix || self.prefix.is_empty() { rest.to_owned() } else { format!("{}{rest}", self.prefix) }
    }

    /// The cookie path of this route's environment (`/e/<id>`, `/code/<id>`; `/` by host).
    pub fn cookie_path(&self) -> String {
        match (&self.target, self.prefix.is_empty()) {
            (_, true) => "/".to_owned(),
            (Target::Port(_), false) => format!("/e/{}", self.environment_id),
            (Target::Route(name), false) => format!("/{name}/{}", self.environment_id),
        }
    }
}

/// The route of a raw path (`/e/<id>/<port>/...`, `/<route>/<id>/...`).
pub fn parse_path(raw: &str) -> Result<Routed, RouteError> {
    let Some(path) = raw.strip_prefix('/') else { return Err(RouteError::BadPath("the path must start with /")) };
    let mut parts = path.splitn(3, '/');
    let first = parts.next().unwrap_or_default();
    let second = parts.next().ok_or(RouteError::NoRoute)?;
    let (environment_id, target, prefix, after) = if first == "e" {
        let third = parts.next().ok_or(RouteError::NoRoute)?;
        let (port, after) = match third.split_once('/') {
            Some((port, after)) => (port, Some(after)),
            None => (third, None),
        };
        let port = parse_port(port).ok_or(RouteError::NoRoute)?;
        (second, Target::Port(port), format!("/e/{second}/{port}"), after)
    } else {
        if !lapse_core::validate::is_route_name(first) {
            return Err(RouteError::NoRoute);
        }
        (second, Target::Route(first.to_owned()), format!("/{first}/{second}"), parts.next())
    };
    if !is_environment_id(environment_id) && !is_alias(environment_id) {
        return Err(RouteError::NoRoute);
    }
    let rest = match after {
        Some(after) => format!("/{after}"),
        None => String::new(),
    };
    check_rest(&rest)?;
    Ok(Routed { environment_id: environment_id.to_owned(), target, prefix, rest })
}

/// Whether `s` may be a short name a [`super::RouteAlias`] resolves: 4-32 of `[a-z0-9]`
/// (the Classla seed's ids are 8).
pub fn is_alias(s: &str) -> bool {
    (4..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The route of a request whose `Host` is `<id>-<route>.<domain>` or `<id>-<port>.<domain>`
/// (any `:port` after it ignored); `None` when the host is not under `domain`.
pub fn parse_host(host: &str, domain: &str, raw_path: &str) -> Option<Result<Routed, RouteError>> {
    let host = host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |h| h.0);
    let host = host.to_ascii_lowercase();
    let label = host.strip_suffix(&domain.to_ascii_lowercase())?.strip_suffix('.')?;
    let Some((id, route)) = label.split_once('-') else { return Some(Err(RouteError::NoRoute)) };
    if !is_environment_id(id) {
        return Some(Err(RouteError::NoRoute));
    }
    let target = match parse_port(route) {
        Some(port) => Target::Port(port),
        None if lapse_core::validate::is_route_name(route) => Target::Route(route.to_owned()),
        None => return Some(Err(RouteError::NoRoute)),
    };
    if !raw_path.starts_with('/') {
        return Some(Err(RouteError::BadPath("the path must start with /")));
    }
    Some(check_rest(raw_path).map(|()| Routed {
        environment_id: id.to_owned(),
        target,
        prefix: String::new(),
        rest: raw_path.to_owned(),
    }))
}

/// A port as a path segment: 1 to 65535 in plain decimal (no sign, no leading zero).
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p > 0)
}

/// Holds the rest of a path to the rules in the module doc.
fn check_rest(rest: &str) -> Result<(), RouteError> {
    if rest.is_empty() {
        return Ok(());
    }
    if rest.contains('\\') {
        return Err(RouteError::BadPath("a backslash in the path is refused"));
    }
    // Every segment but the last (a trailing `/`) must be non-empty.
    let segments: Vec<&str> = rest[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() && i + 1 < segments.len() {
            return Err(RouteError::BadPath("an empty path segment (//) is refused"));
        }
        let decoded = percent_decode(segment).ok_or(RouteError::BadPath("the path has a bad percent-encoding"))?;
        if decoded == b"." || decoded == b".." {
            return Err(RouteError::BadPath("dot segments (. and .., encoded or not) are refused"));
        }
        if decoded.contains(&b'/') || decoded.contains(&b'\\') {
            return Err(RouteError::BadPath("an encoded slash or backslash (%2F, %5C) is refused"));
        }
        if decoded.iter().any(|b| b.is_ascii_control()) {
            return Err(RouteError::BadPath("control characters in the path are refused"));
        }
    }
    Ok(())
}

/// `%XX` decoding; `None` for a `%` not followed by two hex digits.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let text = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(text, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The query without the proxy's own parameters (`lapse_key`, `lapse_link`), and their values
/// (still percent-encoded as sent). Other parameters keep their bytes and order.
pub fn split_query(query: Option<&str>) -> (Option<String>, Option<String>, Option<String>) {
    let Some(query) = query else { return (None, None, None) };
    let (mut kept, mut key, mut link) = (Vec::new(), None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("lapse_key", v)) => key = Some(v.to_owned()),
            Some(("lapse_link", v)) => link = Some(v.to_owned()),
            _ if pair == "lapse_key" || pair == "lapse_link" => {}
            _ => kept.push(pair),
        }
    }
    let kept = (!kept.is_empty()).then(|| kept.join("&"));
    (kept, key, link)
}

/// Decodes a query value (`%XX` and `+` for space) as UTF-8.
pub fn query_value(raw: &str) -> Option<String> {
    let bytes = percent_decode(&raw.replace('+', " "))?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0192f0a1b2c3d4e5f60718293a4b5c6d";

    #[test]
    fn paths_choose_their_route() {
        let r = parse_path(&format!("/e/{ID}/8080/a/b?x")).unwrap();
        assert_eq!(
            (r.target.clone(), r.prefix.as_str(), r.rest.as_str()),
            (Target::Port(8080), &*format!("/e/{ID}/8080"), "/a/b?x")
        );
        assert_eq!(r.forwarded_path(true), "/a/b?x");
        assert_eq!(r.cookie_path(), format!("/e/{ID}"));
        let r = parse_path(&format!("/code/{ID}/static/x.js")).unwrap();
        assert_eq!(r.target, Target::Route("code".into()));
        assert_eq!(r.forwarded_path(true), "/static/x.js");
        assert_eq!(r.forwarded_path(false), format!("/code/{ID}/static/x.js"));
        assert_eq!(r.cookie_path(), format!("/code/{ID}"));
        let bare = parse_path(&format!("/terminal/{ID}")).unwrap();
        assert_eq!((bare.rest.as_str(), bare.forwarded_path(true)), ("", "/".to_owned()));
        assert_eq!(parse_path(&format!("/e/{ID}/8080")).unwrap().forwarded_path(false), format!("/e/{ID}/8080/"));
        assert_eq!(parse_path(&format!("/e/{ID}/8080/")).unwrap().rest, "/", "a trailing slash is kept");
    }

    #[test]
    fn a_short_name_is_left_to_the_alias() {
        let r = parse_path("/code/a1b2c3d4/x").unwrap();
        assert_eq!(
            (r.environment_id.as_str(), r.prefix.as_str(), r.rest.as_str()),
            ("a1b2c3d4", "/code/a1b2c3d4", "/x")
        );
        for path in ["/code/A1B2C3D4/", "/code/a-b-c-d/", "/code/abc/", "/code/a1b2c3d4/../x"] {
            assert!(parse_path(path).is_err(), "{path}");
        }
    }

    #[test]
    fn what_is_no_route() {
        for path in [
            "/".to_owned(),
            "/e".into(),
            format!("/e/{ID}"),
            format!("/e/{ID}/"),
            format!("/e/{ID}/0/"),
            format!("/e/{ID}/65536/"),
            format!("/e/{ID}/080/"),
            format!("/e/{ID}/+80/"),
            format!("/e/{ID}/8o/"),
            "/e/not-an-id/80/".into(),
            format!("/e/{}/80/", ID.to_uppercase()),
            format!("/v1/{ID}/"),
            format!("/api/{ID}/"),
            format!("/Code/{ID}/"),
            "/code/..%2f..%2fetc/".into(),
            format!("//e/{ID}/80/"),
            format!("/e//{ID}/80/"),
        ] {
            assert_eq!(parse_path(&path), Err(RouteError::NoRoute), "{path}");
        }
    }

    #[test]
    fn tricks_cannot_leave_the_route() {
        for rest in [
            "/../x",
            "/a/../../x",
            "/..",
            "/.",
            "/a/./b",
            "/%2e%2e/x",
            "/%2E%2e/x",
            "/.%2e/x",
            "/%2e/x",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "//evil.example/x",
            "/a//b",
            "/a%00b",
            "/a%0d%0aX:1",
            "/a%zz",
            "/a%2",
        ] {
            let path = format!("/e/{ID}/8080{rest}");
            assert!(matches!(parse_path(&path), Err(RouteError::BadPath(_))), "{path}");
            let path = format!("/code/{ID}{rest}");
            assert!(matches!(parse_path(&path), Err(RouteError::BadPath(_))), "{path}");
            assert!(
                matches!(
                    parse_host(&format!("{ID}-code.ide.test"), "ide.test", rest),
                    Some(Err(RouteError::BadPath(_)))
                ),
                "{rest}"
            );
        }
        for fine in ["/a/b/", "/a..b", "/...", "/%41", "/a.b/c", "/a%20b"] {
            assert!(parse_path(&format!("/e/{ID}/8080{fine}")).is_ok(), "{fine}");
        }
    }

    #[test]
    fn hosts_choose_their_route() {
        let r = parse_host(&format!("{ID}-code.ide.test:8443"), "ide.test", "/x?y").unwrap().unwrap();
        assert_eq!(
            (r.target.clone(), r.prefix.as_str(), r.forwarded_path(false), r.cookie_path()),
            (Target::Route("code".into()), "", "/x?y".into(), "/".into())
        );
        let r = parse_host(&format!("{ID}-8080.IDE.test"), "ide.test", "/").unwrap().unwrap();
        assert_eq!(r.target, Target::Port(8080));
        assert!(parse_host("ide.test", "ide.test", "/").is_none());
        assert!(parse_host(&format!("{ID}-code.other.test"), "ide.test", "/").is_none());
        assert!(parse_host(&format!("{ID}-code.evilide.test"), "ide.test", "/").is_none());
        assert_eq!(parse_host(&format!("{ID}.ide.test"), "ide.test", "/"), Some(Err(RouteError::NoRoute)));
        assert_eq!(parse_host(&format!("{ID}-v1.ide.test"), "ide.test", "/"), Some(Err(RouteError::NoRoute)));
        assert_eq!(parse_host("nope-code.ide.test", "ide.test", "/"), Some(Err(RouteError::NoRoute)));
    }

    #[test]
    fn the_proxy_parameters_leave_the_query() {
        assert_eq!(split_query(None), (None, None, None));
        assert_eq!(split_query(Some("a=1&lapse_key=k%2B&b=2")), (Some("a=1&b=2".into()), Some("k%2B".into()), None));
        assert_eq!(split_query(Some("lapse_link=t")), (None, None, Some("t".into())));
        assert_eq!(split_query(Some("x=%20&lapse_key")), (Some("x=%20".into()), None, None));
        assert_eq!(query_value("a%2Bb+c").as_deref(), Some("a+b c"));
        assert_eq!(query_value("%ff"), None);
    }
}

//! Signed links and session cookies: HMAC-SHA256 with a server secret kept in the data dir.
//!
//! A token is `<kind>.<environment id>.<scope>.<expires at, ms>.<principal>.<mac>`, every
//! part of `[a-z0-9:-]`, so it goes into a URL or a cookie as it is; `mac` is the hex
//! HMAC-SHA256 of everything before it under the secret. `kind` is `link` (made by
//! `POST /v1/environments/{id}/links`, good for one environment and one port or route until it
//! expires) or `sess` (the cookie the proxy sets from a link or a key). `scope` is `p<port>`,
//! `r-<route>` or `any` (every port and route of the environment); `principal` says on whose
//! authority: `open` (no keys), `admin`, `key-<id>` (re-checked on every use, so revoking the
//! key ends its sessions) or `link`.
//!
//! The secret is 32 random bytes, hex, in `<data dir>/proxy.secret` (mode 0600), written to a
//! temporary file and renamed into place at the first start, so a crash never leaves half a
//! secret; deleting the file (and restarting) invalidates every link and session.

use std::path::Path;

use hmac::{Hmac, Mac};
use lapse_core::Millis;
use lapse_core::model::is_environment_id;
use sha2::Sha256;

/// What a token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Link,
    Session,
}

/// The ports and routes a token opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Any,
    Port(u16),
    Route(String),
}

/// On whose authority a token was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Open,
    Admin,
    Key(String),
    Link,
}

/// A token's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    pub environment_id: String,
    pub scope: Scope,
    pub expires_at: Millis,
    pub principal: Principal,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the link or session is not valid (malformed or tampered with)")]
    Invalid,
    #[error("the link or session has expired")]
    Expired,
}

/// Why the secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{action} the proxy secret {path}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the proxy secret {0} is not 64 hex digits; delete it to make a new one (every link and session ends)")]
    Malformed(String),
}

/// Longest token accepted (a route name is at most 32 characters).
const MAX_TOKEN: usize = 256;

/// Signs and checks tokens.
pub struct Signer {
    key: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<secret>)")
    }
}

impl Signer {
    /// A signer with this secret.
    pub fn new(key: [u8; 32]) -> Signer {
        Signer { key }
    }

    /// A signer with a fresh random secret (nothing survives a restart).
    pub fn ephemeral() -> Signer {
        let mut key = [0u8; 32];
        // The OS's random source failing leaves nothing safe to do.
        getrandom::fill(&mut key).expect("the OS random source");
        Signer { key }
    }

    /// The secret of `<dir>/proxy.secret`, made at the first start.
    pub fn load_or_create(dir: &Path) -> Result<Signer, SecretError> {
        let path = dir.join("proxy.secret");
        let shown = path.display().to_string();
        let io = |action, source| SecretError::Io { action, path: shown.clone(), source };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                warn_if_readable(&path);
                let text = text.trim_end();
                let key = decode_hex(text).ok_or_else(|| SecretError::Malformed(shown.clone()))?;
                Ok(Signer { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signer = Signer::ephemeral();
                crate::datafile::write_new(dir, "proxy.secret", format!("{}\n", hex(&signer.key)).as_bytes(), 0o600)
                    .map_err(|(action, e)| io(action, e))?;
                tracing::info!(path = %path.display(), "made the proxy's secret for signed links and sessions");
                Ok(signer)
            }
            Err(e) => Err(io("reading", e)),
        }
    }

    /// The token's text.
    pub fn sign(&self, token: &Token) -> String {
        let body = body(token);
        let mac = self.mac(body.as_bytes());
        format!("{body}.{}", hex(&mac))
    }

    /// The token `text` holds, if this server signed it and it has not expired at `now`.
    pub fn verify(&self, text: &str, now: Millis) -> Result<Token, TokenError> {
        if text.len() > MAX_TOKEN {
            return Err(TokenError::Invalid);
        }
        let (body, mac) = text.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let mac = decode_hex(mac).ok_or(TokenError::Invalid)?;
        let mut check = Hmac::<Sha256>::new_from_slice(&self.key).map_err(|_| TokenError::Invalid)?;
        check.update(body.as_bytes());
        // Constant-time comparison.
        check.verify_slice(&mac).map_err(|_| TokenError::Invalid)?;
        let token = parse_body(body).ok_or(TokenError::Invalid)?;
        if token.expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(token)
    }

    fn mac(&self, bytes: &[u8]) -> [u8; 32] {
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }
}

fn body(t: &Token) -> String {
    let kind = match t.kind {
        Kind::Link => "link",
        Kind::Session => "sess",
    };
    let scope = match &t.scope {
        Scope::Any => "any".to_owned(),
        Scope::Port(p) => format!("p{p}"),
        Scope::Route(r) => format!("r-{r}"),
    };
    let principal = match &t.principal {
        Principal::Open => "open".to_owned(),
        Principal::Admin => "admin".to_owned(),
        Principal::Key(id) => format!("key-{id}"),
        Principal::Link => "link".to_owned(),
    };
    format!("{kind}.{}.{scope}.{}.{principal}", t.environment_id, t.expires_at)
}

fn parse_body(body: &str) -> Option<Token> {
    let mut parts = body.split('.');
    let kind = match parts.next()? {
        "link" => Kind::Link,
        "sess" => Kind::Session,
        _ => return None,
    };
    let environment_id = parts.next().filter(|id| is_environment_id(id))?.to_owned();
    let scope = match parts.next()? {
        "any" => Scope::Any,
        s if s.starts_with('p') => Scope::Port(s[1..].parse().ok().filter(|p| *p > 0)?),
        s => Scope::Route(s.strip_prefix("r-").filter(|r| lapse_core::validate::is_route_name(r))?.to_owned()),
    };
    let expires_at = parts.next()?.parse::<Millis>().ok()?;
    let principal = match parts.next()? {
        "open" => Principal::Open,
        "admin" => Principal::Admin,
        "link" => Principal::Link,
        p => Principal::Key(
            p.strip_prefix("key-").filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))?.to_owned(),
        ),
    };
    parts.next().is_none().then_some(Token { kind, environment_id, scope, expires_at, principal })
}

fn warn_if_readable(path: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.mode() & 0o777), "the proxy secret can be read by others; chmod 600 it");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0192f0a1b2c3d4e5f60718293a4b5c6d";

    fn token(scope: Scope, principal: Principal) -> Token {
        Token { kind: Kind::Link, environment_id: ID.into(), scope, expires_at: 10_000, principal }
    }

    #[test]
    fn tokens_round_trip_and_refuse_tampering() {
        let signer = Signer::new([7; 32]);
        for t in [
            token(Scope::Port(8080), Principal::Link),
            token(Scope::Route("code".into()), Principal::Admin),
            Token { kind: Kind::Session, ..token(Scope::Any, Principal::Key("0123abcd".into())) },
            token(Scope::Any, Principal::Open),
        ] {
            let text = signer.sign(&t);
            assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b)), "{text}");
            assert_eq!(signer.verify(&text, 9_999), Ok(t.clone()));
            assert_eq!(signer.verify(&text, 10_000), Err(TokenError::Expired));
            assert_eq!(Signer::new([8; 32]).verify(&text, 0), Err(TokenError::Invalid), "another secret");
            // Any change of the signed part, or of the MAC, is refused.
            for (i, _) in text.char_indices() {
                let mut bytes = text.clone().into_bytes();
                bytes[i] = if bytes[i] == b'1' { b'2' } else { b'1' };
                let changed = String::from_utf8(bytes).unwrap();
                if changed != text {
                    assert!(signer.verify(&changed, 0).is_err(), "{changed}");
                }
            }
        }
        let longer = signer.sign(&Token { expires_at: 99_999_999, ..token(Scope::Port(1), Principal::Link) });
        let (body, _) = longer.rsplit_once('.').unwrap();
        let forged = format!("{}.{}", body, hex(&[0; 32]));
        assert_eq!(signer.verify(&forged, 0), Err(TokenError::Invalid));
        for junk in ["", ".", "a.b", &"x".repeat(MAX_TOKEN + 1), "link.x.any.1.link.00"] {
            assert_eq!(signer.verify(junk, 0), Err(TokenError::Invalid), "{junk}");
        }
    }

    #[test]
    fn the_secret_is_made_once_private_and_kept() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let first = Signer::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("proxy.secret")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Signer::load_or_create(dir.path()).unwrap();
        assert_eq!(first.key, again.key, "kept across restarts");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        std::fs::write(dir.path().join("proxy.secret"), "short\n").unwrap();
        assert!(matches!(Signer::load_or_create(dir.path()), Err(SecretError::Malformed(_))));
    }
}

//! Who is calling: API keys, the bootstrap admin key, and what each may reach.
//!
//! A key is `lapse_<id>_<secret>`: 16 hex digits of id (public: it names the key in the audit
//! trail and in `DELETE /v1/admin/keys/{id}`) and 64 hex digits (256 bits) of secret. The store
//! keeps only the SHA-256 of the secret; a presented key is hashed and compared in constant
//! time. The bootstrap admin key (`LAPSE_ADMIN_KEY` or the config file's `[auth] admin_key`)
//! is any string of at least 16 characters, kept only as its hash too.
//!
//! With no admin key configured, the server is single-tenant: every caller is
//! [`Caller::Open`], and `lapse serve` refuses to listen on anything but loopback.
//!
//! A key has a scope: a tenant's (its environments and events) or metrics-only
//! ([`Caller::Metrics`]: `GET /metrics` and nothing else). The `Authorization` scheme is
//! case-insensitive (`Bearer`, `bearer`, …: RFC 7235).
//!
//! Two rate limits (governor): per tenant or metrics key ([`Auth::admit`]), and per source
//! address for requests without a valid key ([`Auth::refused_from`], [`Auth::blocked`]): an
//! address over that allowance is refused before its keys are hashed or looked up.

use sha2::{Digest, Sha256};

use lapse_store::{KeyRecord, KeyScope, Store, StoreError};

/// Shortest admin key accepted.
pub const MIN_ADMIN_KEY: usize = 16;

/// The caller of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No keys configured: single-tenant, everything allowed; what it makes has no tenant.
    Open,
    /// The bootstrap admin key: every tenant's everything.
    Admin,
    /// A tenant's key: only that tenant's environments and events.
    Tenant { tenant: String, key_id: String },
    /// A metrics-only key: `GET /metrics` and nothing else (the authentication layer refuses
    /// it everywhere else; below that layer it sees no tenant's things).
    Metrics { key_id: String },
}

/// The scope of a [`Caller::Metrics`] below the authentication layer: a string no tenant can
/// be named, so it sees nothing should a route ever let it through.
const NO_TENANT: &str = "\u{0}metrics-only";

impl Caller {
    /// The one tenant this caller may see, or `None` for all.
    pub fn scope(&self) -> Option<&str> {
        match self {
            Caller::Tenant { tenant, .. } => Some(tenant),
            Caller::Metrics { .. } => Some(NO_TENANT),
            Caller::Open | Caller::Admin => None,
        }
    }

    /// Whether it may see `tenant`'s things.
    pub fn sees(&self, tenant: &str) -> bool {
        self.scope().is_none_or(|t| t == tenant)
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Open | Caller::Admin)
    }

    /// Who it is in the audit trail.
    pub fn actor(&self) -> String {
        match self {
            Caller::Open => "api".into(),
            Caller::Admin => "admin".into(),
            Caller::Tenant { key_id, .. } | Caller::Metrics { key_id } => format!("key:{key_id}"),
        }
    }

    /// Whether it is a metrics-only key.
    pub fn is_metrics_only(&self) -> bool {
        matches!(self, Caller::Metrics { .. })
    }

    /// The tenant of what it creates ([`lapse_core::model::NO_TENANT`] for the operator).
    pub fn tenant(&self) -> &str {
        self.scope().unwrap_or(lapse_core::model::NO_TENANT)
    }
}

/// The server's key settings.
#[derive(Debug, Default)]
pub struct Auth {
    admin_hash: Option<[u8; 32]>,
    /// Requests per tenant key: sustained per second, and burst.
    limiter: Option<governor::DefaultKeyedRateLimiter<String>>,
    /// Requests without a valid key, per source address.
    anonymous: Option<AnonymousLimit>,
}

/// Requests without a valid key, per source address (an IPv4 address, an IPv6 /64). Only
/// refusals count, so valid keys never use this allowance. An address over it is blocked
/// until its allowance returns: its requests are refused before any key is looked at, so a
/// flood of bad keys costs no hashing and no store reads (valid keys from that address wait
/// too, for the `Retry-After` the refusal gave).
#[derive(Debug)]
struct AnonymousLimit {
    limiter: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    blocked: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, std::time::Instant>>,
}

/// Addresses remembered at most, by each limiter, before the stale ones are dropped.
const MAX_REMEMBERED: usize = 10_000;

/// The unit an address is limited by: an IPv6 address's /64 (what one host gets), an IPv4
/// address as it is.
fn source(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            std::net::IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Requests a tenant key may make: `per_second` sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// Why a key was refused: always the same answer to the caller, whatever the reason.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is needed: send Authorization: Bearer <key>")]
    Missing,
    #[error("the API key is not valid (unknown, malformed or revoked)")]
    Invalid,
    /// A dashboard cookie whose session is gone (expired, signed out, the server restarted,
    /// or its key revoked).
    #[error("the dashboard session has ended (expired, signed out, key revoked or server restarted): sign in again")]
    SessionEnded,
    /// A dashboard cookie on a request it may not make (no CSRF token, another origin).
    #[error("{0}")]
    Forbidden(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Auth {
    pub fn new(admin_key: Option<&str>, rate: Option<RateLimit>) -> anyhow::Result<Auth> {
        let admin_hash = match admin_key {
            Some(k) if k.chars().count() < MIN_ADMIN_KEY => {
                anyhow::bail!("the admin key must be at least {MIN_ADMIN_KEY} characters")
            }
            Some(k) => Some(sha256(k.as_bytes())),
            None => None,
        };
        let limiter = rate.and_then(|r| {
            let per_second = std::num::NonZeroU32::new(r.per_second)?;
            let burst = std::num::NonZeroU32::new(r.burst.max(1))?;
            Some(governor::RateLimiter::keyed(governor::Quota::per_second(per_second).allow_burst(burst)))
        });
        Ok(Auth { admin_hash, limiter, anonymous: None })
    }

    /// Limits requests without a valid key to `rate` per source address.
    pub fn with_unauthenticated_limit(mut self, rate: Option<RateLimit>) -> Auth {
        self.anonymous = rate.and_then(|r| {
            let per_second = std::num::NonZeroU32::new(r.per_second)?;
            let burst = std::num::NonZeroU32::new(r.burst.max(1))?;
            Some(AnonymousLimit {
                limiter: governor::RateLimiter::keyed(governor::Quota::per_second(per_second).allow_burst(burst)),
                blocked: Default::default(),
            })
        });
        self
    }

    /// `Err(wait)` while `ip` is blocked for sending too many requests without a valid key.
    pub fn blocked(&self, ip: std::net::IpAddr) -> Result<(), std::time::Duration> {
        let Some(anon) = &self.anonymous else { return Ok(()) };
        let mut blocked = anon.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let key = source(ip);
        match blocked.get(&key) {
            Some(until) if *until > std::time::Instant::now() => Err(*until - std::time::Instant::now()),
            Some(_) => {
                blocked.remove(&key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a request from `ip` that had no valid key; `Err(wait)` (and `ip` blocked for
    /// that long) when it is over its allowance.
    pub fn refused_from(&self, ip: std::net::IpAddr) -> Result<(), std::time::Duration> {
        use governor::clock::Clock as _;
        let Some(anon) = &self.anonymous else { return Ok(()) };
        let key = source(ip);
        if anon.limiter.len() > MAX_REMEMBERED {
            anon.limiter.retain_recent();
        }
        let Err(not_until) = anon.limiter.check_key(&key) else { return Ok(()) };
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        let mut blocked = anon.blocked.lock().unwrap_or_else(|p| p.into_inner());
        if blocked.len() > MAX_REMEMBERED {
            let now = std::time::Instant::now();
            blocked.retain(|_, until| *until > now);
        }
        blocked.insert(key, std::time::Instant::now() + wait);
        Err(wait)
    }

    /// Takes one request from the caller's allowance; `Err` carries how long to wait. Only
    /// tenant keys are limited (admins run the server; without keys there is no one to tell
    /// apart).
    pub fn admit(&self, caller: &Caller) -> Result<(), std::time::Duration> {
        use governor::clock::Clock as _;
        let (Some(limiter), Caller::Tenant { key_id, .. } | Caller::Metrics { key_id }) = (&self.limiter, caller)
        else {
            return Ok(());
        };
        limiter
            .check_key(key_id)
            .map_err(|not_until| not_until.wait_time_from(governor::clock::DefaultClock::default().now()))
    }

    /// Whether keys are required (an admin key is configured).
    pub fn enabled(&self) -> bool {
        self.admin_hash.is_some()
    }

    /// The caller presenting `authorization` (the header's value, if any).
    pub async fn caller(&self, store: &Store, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let Some(admin) = &self.admin_hash else { return Ok(Caller::Open) };
        let token = authorization.and_then(bearer_token).ok_or(AuthError::Missing)?;
        if constant_time_eq(&sha256(token.as_bytes()), admin) {
            return Ok(Caller::Admin);
        }
        let (id, secret) = parse_key(token).ok_or(AuthError::Invalid)?;
        let key = store.key(id).await?.ok_or(AuthError::Invalid)?;
        let stored = decode_hex(&key.hash).ok_or(AuthError::Invalid)?;
        if !constant_time_eq(&sha256(secret.as_bytes()), &stored) || key.revoked_at.is_some() {
            return Err(AuthError::Invalid);
        }
        Ok(caller_of(key))
    }

    /// The caller of the key `id`, whose secret was proven earlier (a dashboard session holds
    /// only the id): read again from the store, so a revoked or removed key is refused.
    pub async fn caller_of_key_id(&self, store: &Store, id: &str) -> Result<Caller, AuthError> {
        let key = store.key(id).await?.ok_or(AuthError::Invalid)?;
        if key.revoked_at.is_some() {
            return Err(AuthError::Invalid);
        }
        Ok(caller_of(key))
    }
}

fn caller_of(key: KeyRecord) -> Caller {
    match key.scope {
        KeyScope::Tenant(tenant) => Caller::Tenant { tenant, key_id: key.id },
        KeyScope::Metrics => Caller::Metrics { key_id: key.id },
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 7235), spaces around the token are ignored.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A fresh key of `scope`: the record to store and the key to show once.
pub fn new_key(scope: KeyScope, now: lapse_core::Millis) -> (KeyRecord, String) {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    // The OS's random source failing leaves nothing safe to do.
    getrandom::fill(&mut id).expect("the OS random source");
    getrandom::fill(&mut secret).expect("the OS random source");
    let (id, secret) = (hex(&id), hex(&secret));
    let record =
        KeyRecord { id: id.clone(), scope, hash: hex(&sha256(secret.as_bytes())), created_at: now, revoked_at: None };
    (record, format!("lapse_{id}_{secret}"))
}

/// `lapse_<16 hex>_<64 hex>` → (id, secret).
fn parse_key(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("lapse_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, 16) && hex_of(secret, 64)).then_some((id, secret))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Compares two digests without an early exit, so timing says nothing of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_their_shape_and_hash() {
        let (record, key) = new_key(KeyScope::Tenant("acme".into()), 1);
        let (id, secret) = parse_key(&key).unwrap();
        assert_eq!(id, record.id);
        assert_eq!(decode_hex(&record.hash), Some(sha256(secret.as_bytes())));
        assert!(!record.hash.contains(secret), "only the hash is kept");
        let (other, _) = new_key(KeyScope::Tenant("acme".into()), 1);
        assert_ne!(other.id, record.id);
        for bad in ["", "lapse_", "lapse_zz_yy", &key[..key.len() - 1], &key.replace("lapse_", "lapsf_")] {
            assert!(parse_key(bad).is_none(), "{bad}");
        }
        assert!(constant_time_eq(&sha256(b"x"), &sha256(b"x")));
        assert!(!constant_time_eq(&sha256(b"x"), &sha256(b"y")));
        assert!(Auth::new(Some("short"), None).is_err());
        for (header, token) in
            [("Bearer k", Some("k")), ("bearer k", Some("k")), ("BEARER  k ", Some("k")), ("bEaReR\tk", Some("k"))]
        {
            assert_eq!(bearer_token(header), token, "{header:?}");
        }
        for bad in ["", "Bearer", "Bearer ", "Basic k", "Bearerk", "Token k"] {
            assert_eq!(bearer_token(bad), None, "{bad:?}");
        }
        let auth = Auth::new(Some("0123456789abcdef"), Some(RateLimit { per_second: 1, burst: 2 })).unwrap();
        let caller = Caller::Tenant { tenant: "t".into(), key_id: "k".into() };
        assert!(auth.admit(&caller).is_ok() && auth.admit(&caller).is_ok());
        let wait = auth.admit(&caller).unwrap_err();
        assert!(wait <= std::time::Duration::from_secs(1), "{wait:?}");
        assert!(auth.admit(&Caller::Admin).is_ok(), "admins are not limited");

        let auth = auth.with_unauthenticated_limit(Some(RateLimit { per_second: 1, burst: 2 }));
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(auth.blocked(a).is_ok() && auth.refused_from(a).is_ok() && auth.refused_from(a).is_ok());
        assert!(auth.refused_from(a).is_err(), "over the burst");
        assert!(auth.blocked(a).is_err(), "blocked until its allowance returns");
        assert!(auth.blocked(b).is_ok() && auth.refused_from(b).is_ok(), "another address is not");
        let (c, d): (std::net::IpAddr, std::net::IpAddr) =
            ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap());
        assert_eq!(source(c), source(d), "an IPv6 /64 is one source");
    }
}

//! Where a webhook may be delivered.
//!
//! A hook's URL is `http` or `https` with a host, no credentials, at most [`MAX_URL_LEN`]
//! bytes. Unless the operator allows private addresses (`--webhook-allow-private`,
//! `[webhooks_policy] allow_private = true`), every address it resolves to must be public:
//! not loopback, link-local, private (RFC 1918, IPv6 unique-local), CGNAT (100.64/10),
//! multicast, unspecified, broadcast, documentation or reserved, nor an IPv4-mapped or
//! IPv4-compatible form of one of those. The check runs at registration and at **every
//! delivery**: the HTTP client resolves through [`CheckedResolver`], which hands the connector
//! only the addresses it checked (so a name that re-resolves to `127.0.0.1` later — DNS
//! rebinding — is refused, not connected to). A URL whose host is an IP literal skips DNS and
//! is checked here before the request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest URL a hook may have.
pub const MAX_URL_LEN: usize = 2048;

/// Why a URL or address is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("url: {0}")]
    Url(String),
    #[error("url: {host} resolves to {addr}, a {kind} address (the operator may allow them: --webhook-allow-private)")]
    Private { host: String, addr: IpAddr, kind: &'static str },
    #[error("url: {host} could not be resolved: {message}")]
    Unresolved { host: String, message: String },
}

/// Parses and checks a hook URL's form (scheme, host, no credentials, length).
pub fn parse_url(text: &str) -> Result<reqwest::Url, AddressError> {
    if text.len() > MAX_URL_LEN {
        return Err(AddressError::Url(format!("longer than {MAX_URL_LEN} bytes")));
    }
    let url = reqwest::Url::parse(text).map_err(|e| AddressError::Url(format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(AddressError::Url(format!("the scheme must be http or https, not {:?}", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(AddressError::Url("it has no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(AddressError::Url("credentials in the URL are not taken; use the secret".into()));
    }
    if url.fragment().is_some() {
        return Err(AddressError::Url("a fragment is never sent; leave it out".into()));
    }
    Ok(url)
}

/// The kind of address `ip` is if a hook may not reach it, else `None` (public).
pub fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            // ::ffff:a.b.c.d and ::a.b.c.d reach (or name) the IPv4 address.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return Some("IPv4-compatible");
            }
            forbidden_v6(v6)
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() || o[0] == 0 {
        "unspecified"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        "CGNAT"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_broadcast()
        || o[0] >= 240
        || ip.is_documentation()
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
    {
        "reserved"
    } else {
        return None;
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_multicast() {
        "multicast"
    } else if (s[0] & 0xffc0) == 0xfe80 {
        "link-local"
    } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 {
        "private"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "reserved"
    } else if s[0] == 0x0064 && s[1] == 0xff9b {
        // NAT64 of an IPv4 address: judged by that address.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return forbidden_v4(v4).map(|_| "NAT64 of a private");
    } else {
        return None;
    })
}

/// Resolves `url`'s host and checks every address (unless `allow_private`); the addresses a
/// connection may use.
pub async fn resolve_checked(url: &reqwest::Url, allow_private: bool) -> Result<Vec<SocketAddr>, AddressError> {
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::lookup_host((host.as_str(), port)))
                .await
                .map_err(|_| AddressError::Unresolved { host: host.clone(), message: "timed out".into() })?
                .map_err(|e| AddressError::Unresolved { host: host.clone(), message: e.to_string() })?
                .collect()
        }
    };
    if addrs.is_empty() {
        return Err(AddressError::Unresolved { host, message: "no addresses".into() });
    }
    if !allow_private {
        for a in &addrs {
            if let Some(kind) = forbidden_kind(a.ip()) {
                return Err(AddressError::Private { host, addr: a.ip(), kind });
            }
        }
    }
    Ok(addrs)
}

/// The HTTP client's resolver: only checked addresses reach the connector.
#[derive(Clone, Copy, Debug)]
pub struct CheckedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // The port is the connector's; 0 here.
            let url = reqwest::Url::parse(&format!("http://{host}/"))?;
            let addrs = resolve_checked(&url, allow_private).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter().map(|a| SocketAddr::new(a.ip(), 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_refused_in_every_form() {
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00::1", "private"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("64:ff9b::a00:1", "NAT64 of a private"),
        ] {
            assert_eq!(forbidden_kind(addr.parse().unwrap()), Some(kind), "{addr}");
        }
        for public in ["1.1.1.1", "100.128.0.1", "8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1", "64:ff9b::101:101"] {
            assert_eq!(forbidden_kind(public.parse().unwrap()), None, "{public}");
        }
    }

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        assert!(parse_url("https://hooks.example.com/x?y=1").is_ok());
        assert!(parse_url("http://1.2.3.4:8080/").is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://",
            "example.com/hook",
            "http://user:pw@example.com/",
            "http://example.com/#frag",
            "unix:/run/docker.sock",
            "",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(parse_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }

    #[tokio::test]
    async fn resolution_checks_every_address_unless_allowed() {
        let url = parse_url("http://127.0.0.1:9/").unwrap();
        assert!(matches!(resolve_checked(&url, false).await, Err(AddressError::Private { kind: "loopback", .. })));
        assert_eq!(resolve_checked(&url, true).await.unwrap(), vec!["127.0.0.1:9".parse().unwrap()]);
        let url = parse_url("http://[::ffff:7f00:1]/").unwrap();
        assert!(resolve_checked(&url, false).await.is_err());
        let url = parse_url("http://localhost:9/").unwrap();
        assert!(resolve_checked(&url, false).await.is_err());
    }
}

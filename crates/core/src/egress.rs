//! Where easel may send a request to a URL a caller chose (callbacks, input images): the rules of
//! DESIGN.md §7 that need no network. The API applies them at submission, so a hopeless URL is
//! refused at once with the reason; the outbound client (`easel-callbacks`) applies them again at
//! delivery, to every address the host resolves to, and connects only to those addresses.
//!
//! - `https` only; plain `http` only to a loopback address, and only when the operator allows it
//!   (`EASEL_ALLOW_LOOPBACK_CALLBACKS=true`, for local use).
//! - No credentials in the URL.
//! - Only public unicast addresses: loopback, private, shared, link-local (169.254.169.254
//!   included), unique-local, multicast, unspecified, documentation, benchmarking, reserved,
//!   IPv4-mapped/-compatible, NAT64, 6to4 and Teredo addresses are refused, naming the kind. IPv4 in
//!   decimal, octal or hex spellings is normalised by the URL parser (WHATWG rules) first.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Why a URL or address is refused. The message is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the URL is not valid: {0}")]
    InvalidUrl(String),
    #[error("only https URLs are allowed{hint}")]
    Scheme { hint: &'static str },
    #[error("URLs with credentials (user:password@host) are not allowed")]
    Credentials,
    #[error("{}", address_message(host, *addr, kind))]
    Address { host: String, addr: IpAddr, kind: &'static str },
}

fn address_message(host: &str, addr: IpAddr, kind: &str) -> String {
    let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|h| h == addr);
    if literal {
        format!("{addr} is {kind} address; only public addresses are allowed")
    } else {
        format!("{host} resolves to {addr}, {kind} address; only public addresses are allowed")
    }
}

/// Why an address is refused, or `None` for a public unicast address.
pub fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: [([u8; 4], u32, &str); 17] = [
        ([0, 0, 0, 0], 8, "an unspecified (this-network)"),
        ([10, 0, 0, 0], 8, "a private"),
        ([100, 64, 0, 0], 10, "a shared (carrier-grade NAT)"),
        ([127, 0, 0, 0], 8, "a loopback"),
        ([169, 254, 0, 0], 16, "a link-local (cloud metadata)"),
        ([172, 16, 0, 0], 12, "a private"),
        ([192, 0, 0, 0], 24, "an IETF protocol"),
        ([192, 0, 2, 0], 24, "a documentation"),
        ([192, 31, 196, 0], 24, "an AS112"),
        ([192, 52, 193, 0], 24, "an AMT"),
        ([192, 88, 99, 0], 24, "a 6to4 relay"),
        ([192, 168, 0, 0], 16, "a private"),
        ([198, 18, 0, 0], 15, "a benchmarking"),
        ([198, 51, 100, 0], 24, "a documentation"),
        ([203, 0, 113, 0], 24, "a documentation"),
        ([224, 0, 0, 0], 4, "a multicast"),
        ([240, 0, 0, 0], 4, "a reserved (or broadcast)"),
    ];
    RANGES.iter().find(|(net, prefix, _)| in_v4(ip, *net, *prefix)).map(|(_, _, kind)| *kind)
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
    (u128::from(ip) & mask) == (u128::from(Ipv6Addr::from(net)) & mask)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("an unspecified");
    }
    if ip.is_loopback() {
        return Some("a loopback");
    }
    const RANGES: [([u16; 8], u32, &str); 13] = [
        ([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, "an IPv4-mapped"),
        ([0, 0, 0, 0, 0, 0, 0, 0], 96, "an IPv4-compatible"),
        ([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, "a NAT64"),
        ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "a local NAT64"),
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "a discard-only"),
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "a Teredo"),
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "an IETF protocol"),
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "a documentation"),
        ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "a 6to4"),
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "a unique-local"),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "a link-local"),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "a site-local"),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "a multicast"),
    ];
    if let Some((_, _, kind)) = RANGES.iter().find(|(net, prefix, _)| in_v6(ip, *net, *prefix)) {
        return Some(kind);
    }
    // Only global unicast (2000::/3) remains allowed.
    if !in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
        return Some("a reserved");
    }
    None
}

pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// The rules that need no network: scheme, credentials, and a literal address.
pub fn check_url(raw: &str, allow_loopback_http: bool) -> Result<Url, Refusal> {
    let url = Url::parse(raw.trim()).map_err(|e| Refusal::InvalidUrl(e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::Credentials);
    }
    let literal = match url.host() {
        Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        Some(Host::Domain(d)) if !d.is_empty() => None,
        _ => return Err(Refusal::InvalidUrl("it has no host".into())),
    };
    match url.scheme() {
        "https" => {}
        "http" if allow_loopback_http && literal.is_none_or(is_loopback) => {}
        _ => {
            let hint = if allow_loopback_http {
                " (plain http only to a loopback address)"
            } else {
                " (plain http to loopback needs EASEL_ALLOW_LOOPBACK_CALLBACKS=true)"
            };
            return Err(Refusal::Scheme { hint });
        }
    }
    if let Some(ip) = literal {
        check_address(&url, ip, allow_loopback_http)?;
    }
    Ok(url)
}

/// Whether `url` may connect to `ip` (one of the addresses its host resolved to).
pub fn check_address(url: &Url, ip: IpAddr, allow_loopback_http: bool) -> Result<(), Refusal> {
    if allow_loopback_http && is_loopback(ip) {
        return Ok(());
    }
    if let Some(kind) = forbidden_kind(ip) {
        return Err(Refusal::Address { host: url.host_str().unwrap_or_default().to_owned(), addr: ip, kind });
    }
    if url.scheme() == "http" {
        return Err(Refusal::Scheme { hint: " (plain http only to a loopback address)" });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn public_unicast_addresses_pass_and_special_ones_are_named() {
        for ok in ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:82a::200e"] {
            assert_eq!(forbidden_kind(ok.parse().unwrap()), None, "{ok}");
        }
        let cases = [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("10.1.2.3", "private"),
            ("172.31.255.255", "private"),
            ("192.168.0.1", "private"),
            ("100.64.0.1", "shared"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("198.18.0.1", "benchmarking"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "IPv4-mapped"),
            ("::ffff:8.8.8.8", "IPv4-mapped"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("64:ff9b::a00:1", "NAT64"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("2002:7f00:1::", "6to4"),
            ("2001:0:4136:e378::1", "Teredo"),
            ("4000::1", "reserved"),
        ];
        for (addr, kind) in cases {
            let got = forbidden_kind(addr.parse().unwrap());
            assert!(got.is_some_and(|k| k.contains(kind)), "{addr}: {got:?}");
        }
    }

    #[test]
    fn static_rules_refuse_schemes_credentials_and_literal_private_addresses_in_any_spelling() {
        let refused = |url: &str| check_url(url, false).unwrap_err();
        assert!(matches!(refused("http://example.com/hook"), Refusal::Scheme { .. }));
        assert!(matches!(refused("ftp://example.com/x"), Refusal::Scheme { .. }));
        assert!(matches!(refused("https://user:pw@example.com/"), Refusal::Credentials));
        assert!(matches!(refused("https://user@example.com/"), Refusal::Credentials));
        for url in [
            "https://2130706433/",
            "https://0x7f.1/",
            "https://0177.0.0.1/",
            "https://127.1/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::1]:8443/",
            "https://0.0.0.0/",
            "https://169.254.169.254/latest/meta-data/",
        ] {
            assert!(matches!(refused(url), Refusal::Address { .. }), "{url}: {:?}", check_url(url, false));
        }
        assert!(check_url("https://example.com/hook", false).is_ok());
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok());
        assert!(check_url("http://localhost:8080/hook", true).is_ok(), "names are checked once resolved");
        assert!(matches!(check_url("http://10.0.0.1/", true).unwrap_err(), Refusal::Scheme { .. }));
    }
}

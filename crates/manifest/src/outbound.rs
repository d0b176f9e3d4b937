//! `allowed_outbound_hosts` in Spin's syntax: `scheme://host[:port]`, where the scheme, the host,
//! a leading host label (`*.example.com`) and the port may be `*`, and a port may be a range
//! `1000..2000` (end excluded, as in Spin). A host may be an IP address, IPv6 in brackets
//! (`http://[::1]:8080`), or a CIDR range of addresses (`tcp://10.0.0.0/8:5432`,
//! `udp://[fd00::/8]:53`). Nothing is allowed unless a pattern matches.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Suffix(String),
    /// A host name, lowercase.
    Exact(String),
    /// An IP address, compared as an address (`::0001` is `::1`).
    Address(IpAddr),
    /// A CIDR range of addresses (`10.0.0.0/8`).
    Network(IpNet),
}

/// A request's host as compared: an IP address (brackets of an IPv6 literal removed) or a
/// lowercase name.
fn normalize(host: &str) -> Result<IpAddr, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>()
        .map_err(|_| bare.to_ascii_lowercase())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    Any,
    Range(u16, u16),
}

/// One parsed `allowed_outbound_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    raw: String,
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The domain of service chaining: `http://NAME.spin.internal` is component `NAME` of the same
/// app, called in-process.
pub const SERVICE_CHAINING_SUFFIX: &str = ".spin.internal";

/// The component a request's host names through service chaining (`NAME.spin.internal`, any
/// case, a trailing dot allowed), if it is such a host.
pub fn chaining_target(host: &str) -> Option<String> {
    if !in_chaining_domain(host) {
        return None;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let name = host.strip_suffix(SERVICE_CHAINING_SUFFIX)?;
    (!name.is_empty() && !name.contains('.')).then(|| name.to_string())
}

/// Whether `host` is `spin.internal` or a name under it (any case, a trailing dot allowed),
/// without allocating: the front end asks this of every request's Host.
pub fn in_chaining_domain(host: &str) -> bool {
    let host = host.trim_end_matches('.').as_bytes();
    let domain = &SERVICE_CHAINING_SUFFIX.as_bytes()[1..];
    host.len() >= domain.len()
        && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
        && (host.len() == domain.len() || host[host.len() - domain.len() - 1] == b'.')
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl AllowedHost {
    /// Parses one entry; the error says what is wrong with it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(format!(
                "`{raw}` has no scheme; write it as `scheme://host[:port]`, e.g. `https://{raw}`"
            ));
        };
        if scheme.is_empty() {
            return Err(format!(
                "`{raw}` has an empty scheme; use `http`, `https` or `*`"
            ));
        }
        let rest = rest.trim_end_matches('/');
        let (rest, prefix) = split_prefix(raw, rest)?;
        let rest: &str = &rest;
        if rest.contains('/') {
            return Err(format!(
                "`{raw}` has a path; an allowed host is only `scheme://host[:port]`"
            ));
        }
        if rest.contains('@') {
            return Err(format!(
                "`{raw}` has user info; an allowed host is only `scheme://host[:port]` (credentials go in a request header)"
            ));
        }
        // `[v6]` or `[v6]:port`; else `host` or `host:port`.
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let Some((addr, after)) = bracketed.split_once(']') else {
                return Err(format!("`{raw}`: `[` without `]` around an IPv6 address"));
            };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("`{raw}`: `[{addr}]` is not an IPv6 address"));
            }
            match after {
                "" => (addr, None),
                _ => match after.strip_prefix(':') {
                    Some(p) => (addr, Some(p)),
                    None => return Err(format!("`{raw}`: expected `:PORT` after `[{addr}]`")),
                },
            }
        } else {
            match rest.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(format!(
                        "`{raw}`: an IPv6 address goes in brackets, as in `http://[::1]:8080`"
                    ));
                }
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(format!(
                "`{raw}` has no host; use a name, an address or `*`"
            ));
        }
        let host_pattern = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(format!(
                    "`{raw}`: only the first label of a host may be `*`"
                ));
            }
            HostPattern::Suffix(format!(".{}", suffix.to_ascii_lowercase()))
        } else if host.contains('*') {
            return Err(format!(
                "`{raw}`: a host wildcard must be `*` or start with `*.`, as in `*.example.com`"
            ));
        } else {
            match (normalize(host), prefix) {
                (Ok(ip), Some(len)) => {
                    let net = IpNet::new(ip, len)
                        .map_err(|_| format!("`{raw}`: /{len} is not a prefix length for {ip}"))?;
                    if net.network() != ip {
                        return Err(format!(
                            "`{raw}`: {ip}/{len} has host bits set; the range is written `{}`",
                            net.trunc()
                        ));
                    }
                    HostPattern::Network(net)
                }
                (Ok(ip), None) => HostPattern::Address(ip),
                (Err(_), Some(_)) => {
                    return Err(format!(
                        "`{raw}`: a CIDR range needs an IP address before the `/`, as in `tcp://10.0.0.0/8:5432`"
                    ));
                }
                (Err(name), None) => HostPattern::Exact(name),
            }
        };
        let port_pattern = match port {
            Some("*") => PortPattern::Any,
            Some(p) => {
                if let Some((lo, hi)) = p.split_once("..") {
                    let lo = parse_port(raw, lo)?;
                    let hi = parse_port(raw, hi)?;
                    // The end is excluded, as in Spin (and Rust): `8000..8000` allows nothing.
                    if lo >= hi {
                        return Err(format!(
                            "`{raw}`: port range {lo}..{hi} is empty (the end is excluded); for one port write `:{lo}`"
                        ));
                    }
                    PortPattern::Range(lo, hi - 1)
                } else {
                    let port = parse_port(raw, p)?;
                    PortPattern::Range(port, port)
                }
            }
            None => match default_port(scheme) {
                Some(port) => PortPattern::Range(port, port),
                None => {
                    return Err(format!(
                        "`{raw}` needs a port because scheme `{scheme}` has no default; add `:PORT` or `:*`"
                    ));
                }
            },
        };
        Ok(Self {
            raw: raw.to_string(),
            scheme: (scheme != "*").then(|| scheme.to_ascii_lowercase()),
            host: host_pattern,
            port: port_pattern,
        })
    }

    /// The IP address this entry names, if its host is one (`http://10.0.0.5:8080`): such an
    /// entry is the operator's explicit permission to reach that address.
    pub fn address(&self) -> Option<IpAddr> {
        match self.host {
            HostPattern::Address(ip) => Some(ip),
            _ => None,
        }
    }

    /// Whether this entry names `ip` itself: its host is that address, or a CIDR range holding
    /// it (`tcp://10.0.0.0/8:5432`). Wildcards and host names name no address.
    pub fn names(&self, ip: IpAddr) -> bool {
        match self.host {
            HostPattern::Address(a) => a == ip,
            HostPattern::Network(net) => net.contains(&ip),
            _ => false,
        }
    }

    /// Whether this entry's scheme is `scheme` or `*`.
    pub fn has_scheme(&self, scheme: &str) -> bool {
        self.scheme
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case(scheme))
    }

    /// Whether this entry's host pattern matches the host name `name` (any port), a name's
    /// wildcard included; an address or CIDR entry matches no name.
    pub fn matches_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match &self.host {
            HostPattern::Any => true,
            HostPattern::Suffix(suffix) => name.ends_with(suffix.as_str()),
            HostPattern::Exact(h) => *h == name,
            HostPattern::Address(_) | HostPattern::Network(_) => false,
        }
    }

    /// The component this entry allows chaining to by name (`http://NAME.spin.internal`).
    pub fn chaining_target(&self) -> Option<String> {
        match &self.host {
            HostPattern::Exact(h) => chaining_target(h),
            _ => None,
        }
    }

    /// Whether this entry allows service chaining to `component`: as in Spin, only an entry
    /// naming `http://COMPONENT.spin.internal` or `http://*.spin.internal` does; neither the
    /// wildcard `*://*:*` nor `self` does.
    pub fn allows_chaining_to(&self, component: &str) -> bool {
        if !self.has_scheme("http") {
            return false;
        }
        match &self.host {
            HostPattern::Exact(h) => chaining_target(h).as_deref() == Some(component),
            HostPattern::Suffix(s) => s == SERVICE_CHAINING_SUFFIX,
            _ => false,
        }
    }

    /// Whether this entry allows a request to the app itself (a URL with no host, as the Spin
    /// SDKs send a relative URL) over `scheme`: an entry `http://self` or `https://self`, or one
    /// allowing any host.
    pub fn allows_self(&self, scheme: &str) -> bool {
        self.has_scheme(scheme)
            && match &self.host {
                HostPattern::Any => true,
                HostPattern::Exact(h) => h == "self",
                _ => false,
            }
    }

    /// Whether a request to `scheme://host:port` is allowed by this entry. `host` is the
    /// request's host: a name, an IPv4 address, or an IPv6 address with or without brackets.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        if let Some(s) = &self.scheme
            && !s.eq_ignore_ascii_case(scheme)
        {
            return false;
        }
        let host = normalize(host);
        let host_ok = match (&self.host, &host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Suffix(suffix), Err(name)) => name.ends_with(suffix.as_str()),
            (HostPattern::Exact(h), Err(name)) => h == name,
            (HostPattern::Address(a), Ok(ip)) => a == ip,
            (HostPattern::Network(net), Ok(ip)) => net.contains(ip),
            _ => false,
        };
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Range(lo, hi) => (lo..=hi).contains(&port),
        };
        host_ok && port_ok
    }
}

fn parse_port(raw: &str, p: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .map_err(|_| format!("`{raw}`: `{p}` is not a port; use a number, a range `A..B` or `*`"))
}

/// Whether any entry allows the destination.
pub fn is_allowed(list: &[AllowedHost], scheme: &str, host: &str, port: u16) -> bool {
    list.iter().any(|a| a.allows(scheme, host, port))
}

/// Whether an entry allowing the destination names its address explicitly (the request's host
/// is an IP address and an entry's host is that address or a CIDR range holding it, not a
/// wildcard).
pub fn names_address(list: &[AllowedHost], scheme: &str, host: &str, port: u16) -> bool {
    let Ok(ip) = normalize(host) else {
        return false;
    };
    list.iter()
        .any(|a| a.names(ip) && a.allows(scheme, host, port))
}

/// `host/len` (a CIDR range, IPv6 in brackets: `[fd00::/8]`) split into the host, with the rest
/// of the entry after it, and the prefix length; anything else unchanged.
fn split_prefix<'a>(
    raw: &str,
    rest: &'a str,
) -> Result<(std::borrow::Cow<'a, str>, Option<u8>), String> {
    let (host, after, bracketed) = if let Some(b) = rest.strip_prefix('[') {
        match b.split_once(']') {
            Some((inside, after)) => (inside, after, true),
            None => return Ok((rest.into(), None)),
        }
    } else {
        match rest.find([':', '/']) {
            Some(i) => (&rest[..i], &rest[i..], false),
            None => (rest, "", false),
        }
    };
    let (host, len, after) = if bracketed {
        match host.split_once('/') {
            Some((h, len)) => (h, len, after),
            None => return Ok((rest.into(), None)),
        }
    } else {
        let Some(tail) = after.strip_prefix('/') else {
            return Ok((rest.into(), None));
        };
        let end = tail.find(':').unwrap_or(tail.len());
        (host, &tail[..end], &tail[end..])
    };
    if host.parse::<IpAddr>().is_err() {
        // `host/path`: the path error below says what is wrong.
        return Ok((rest.into(), None));
    }
    let len = len.parse::<u8>().map_err(|_| {
        format!("`{raw}`: `/{len}` is not a prefix length; a CIDR range is written `10.0.0.0/8`")
    })?;
    let host = if bracketed {
        format!("[{host}]{after}")
    } else {
        format!("{host}{after}")
    };
    Ok((host.into(), Some(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_spin_internal_entries_allow_service_chaining() {
        let e = |raw: &str| AllowedHost::parse(raw).unwrap();
        assert!(e("http://back.spin.internal").allows_chaining_to("back"));
        assert!(e("http://BACK.spin.internal").allows_chaining_to("back"));
        assert!(!e("http://back.spin.internal").allows_chaining_to("front"));
        assert!(e("http://*.spin.internal").allows_chaining_to("front"));
        assert!(e("*://*.spin.internal:*").allows_chaining_to("front"));
        for no in [
            "*://*:*",
            "http://*",
            "http://self",
            "http://*.internal",
            "https://back.spin.internal",
        ] {
            assert!(!e(no).allows_chaining_to("back"), "{no}");
        }
        assert_eq!(
            e("http://back.spin.internal").chaining_target().as_deref(),
            Some("back")
        );
        assert_eq!(e("http://*.spin.internal").chaining_target(), None);
        assert_eq!(
            chaining_target("Back.Spin.Internal.").as_deref(),
            Some("back")
        );
        assert_eq!(chaining_target("a.b.spin.internal"), None);
        assert_eq!(chaining_target(".spin.internal"), None);
        assert_eq!(chaining_target("example.com"), None);
        for inside in [
            "spin.internal",
            "SPIN.internal.",
            "a.b.Spin.Internal",
            "x.spin.internal",
        ] {
            assert!(in_chaining_domain(inside), "{inside}");
        }
        for outside in ["xspin.internal", "spin.internal.com", "internal", "", "."] {
            assert!(!in_chaining_domain(outside), "{outside}");
        }
    }

    #[test]
    fn self_entries_and_any_host_allow_requests_to_the_app_itself() {
        let e = |raw: &str| AllowedHost::parse(raw).unwrap();
        assert!(e("http://self").allows_self("http"));
        assert!(!e("http://self").allows_self("https"));
        assert!(e("https://self").allows_self("https"));
        assert!(e("*://*:*").allows_self("http"));
        assert!(!e("http://example.com").allows_self("http"));
        assert!(!e("http://*.spin.internal").allows_self("http"));
    }

    #[test]
    fn matches_like_spin() {
        let a = AllowedHost::parse("https://example.com").unwrap();
        assert!(a.allows("https", "example.com", 443));
        assert!(!a.allows("http", "example.com", 80));
        assert!(!a.allows("https", "example.com", 8443));
        let a = AllowedHost::parse("http://127.0.0.1:*").unwrap();
        assert!(a.allows("http", "127.0.0.1", 3000));
        assert!(!a.allows("http", "127.0.0.2", 3000));
        let a = AllowedHost::parse("*://*.example.com:*").unwrap();
        assert!(a.allows("http", "api.example.com", 1));
        assert!(!a.allows("http", "example.com", 1));
        let a = AllowedHost::parse("http://localhost:8000..8002").unwrap();
        assert!(!a.allows("http", "localhost", 7999));
        assert!(a.allows("http", "localhost", 8000));
        assert!(a.allows("http", "localhost", 8001));
        assert!(!a.allows("http", "localhost", 8002));
        // The end is excluded: `a..a` is empty, and refused rather than allowing `a`.
        let err = AllowedHost::parse("http://localhost:8000..8000").unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        assert!(AllowedHost::parse("http://localhost:8001..8000").is_err());
        let a = AllowedHost::parse("http://localhost:8000..8001").unwrap();
        assert!(a.allows("http", "localhost", 8000));
        assert!(!a.allows("http", "localhost", 8001));
    }

    #[test]
    fn ipv6_entries_match_ipv6_requests() {
        let a = AllowedHost::parse("http://[::1]:8080").unwrap();
        assert_eq!(a.address(), Some("::1".parse().unwrap()));
        // The request's host as http::Uri gives it (brackets), bare, or spelled otherwise.
        assert!(a.allows("http", "[::1]", 8080));
        assert!(a.allows("http", "::1", 8080));
        assert!(a.allows("http", "[0:0::0001]", 8080));
        assert!(!a.allows("http", "[::2]", 8080));
        assert!(!a.allows("http", "[::1]", 8081));
        let a = AllowedHost::parse("https://[2001:db8::1]").unwrap();
        assert!(a.allows("https", "[2001:db8::1]", 443));
        let a = AllowedHost::parse("http://[fe80::1]:*").unwrap();
        assert!(a.allows("http", "[fe80::1]", 1));
        assert!(AllowedHost::parse("http://::1:8080").is_err());
        assert!(AllowedHost::parse("http://[::1:8080").is_err());
        assert!(AllowedHost::parse("http://[example.com]:80").is_err());
        assert!(AllowedHost::parse("http://[::1]8080").is_err());
        // A name is never an address, and the reverse.
        let a = AllowedHost::parse("http://127.0.0.1:80").unwrap();
        assert!(a.allows("http", "127.0.0.1", 80));
        assert!(!a.allows("http", "localhost", 80));
        assert!(names_address(
            std::slice::from_ref(&a),
            "http",
            "127.0.0.1",
            80
        ));
        let any = AllowedHost::parse("http://*:80").unwrap();
        assert!(!names_address(&[any], "http", "127.0.0.1", 80));
        let name = AllowedHost::parse("http://localhost:80").unwrap();
        assert!(!names_address(&[name], "http", "localhost", 80));
    }

    #[test]
    fn cidr_ranges_match_their_addresses() {
        let a = AllowedHost::parse("tcp://10.0.0.0/8:5432").unwrap();
        assert!(a.allows("tcp", "10.1.2.3", 5432));
        assert!(a.allows("tcp", "10.255.255.255", 5432));
        assert!(!a.allows("tcp", "11.0.0.1", 5432));
        assert!(!a.allows("tcp", "10.1.2.3", 5433));
        assert!(!a.allows("udp", "10.1.2.3", 5432));
        assert!(a.names("10.9.9.9".parse().unwrap()));
        assert!(names_address(
            std::slice::from_ref(&a),
            "tcp",
            "10.0.0.1",
            5432
        ));
        // A name is not in a range.
        assert!(!a.allows("tcp", "db.example.com", 5432));
        let a = AllowedHost::parse("*://127.0.0.0/24:8000..8010").unwrap();
        assert!(a.allows("udp", "127.0.0.9", 8009));
        assert!(!a.allows("udp", "127.0.1.9", 8009));
        let a = AllowedHost::parse("udp://[fd00::/8]:53").unwrap();
        assert!(a.allows("udp", "fd12::1", 53));
        assert!(a.allows("udp", "[fd12::1]", 53));
        assert!(!a.allows("udp", "fe80::1", 53));
        let a = AllowedHost::parse("tcp://192.168.1.7/32:1").unwrap();
        assert!(a.allows("tcp", "192.168.1.7", 1));
        assert!(!a.allows("tcp", "192.168.1.8", 1));
        for bad in [
            "tcp://10.0.0.1/8:5432",
            "tcp://10.0.0.0/33:5432",
            "tcp://10.0.0.0/x:5432",
            "tcp://example.com/8:5432",
            "udp://[fd00::1/8]:53",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
        let err = AllowedHost::parse("tcp://10.0.0.1/8:5432").unwrap_err();
        assert!(err.contains("10.0.0.0/8"), "{err}");
    }

    #[test]
    fn socket_schemes_and_names() {
        let a = AllowedHost::parse("tcp://*.example.com:5432").unwrap();
        assert!(a.has_scheme("tcp"));
        assert!(!a.has_scheme("udp"));
        assert!(a.matches_name("db.example.com"));
        assert!(a.matches_name("DB.Example.com."));
        assert!(!a.matches_name("example.com"));
        assert!(AllowedHost::parse("*://x:1").unwrap().has_scheme("udp"));
        assert!(
            !AllowedHost::parse("tcp://10.0.0.1:1")
                .unwrap()
                .matches_name("10.0.0.1")
        );
        // Sockets have no default port.
        assert!(AllowedHost::parse("tcp://example.com").is_err());
    }

    #[test]
    fn user_info_is_refused() {
        let err = AllowedHost::parse("http://user@example.com").unwrap_err();
        assert!(err.contains("user info"), "{err}");
        assert!(AllowedHost::parse("http://user:pw@example.com:80").is_err());
    }

    #[test]
    fn rejects_malformed() {
        assert!(AllowedHost::parse("example.com").is_err());
        assert!(AllowedHost::parse("*://example.com").is_err());
        assert!(AllowedHost::parse("https://ex*ample.com").is_err());
        assert!(AllowedHost::parse("https://example.com/path").is_err());
        assert!(AllowedHost::parse("http://example.com:http").is_err());
    }
}

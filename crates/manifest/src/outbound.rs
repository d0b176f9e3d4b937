//! `allowed_outbound_hosts` in Spin's syntax: `scheme://host[:port]`, where the scheme, the host,
//! a leading host label (`*.example.com`) and the port may be `*`, and a port may be a range
//! `1000..2000`. Nothing is allowed unless a pattern matches.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Suffix(String),
    Exact(String),
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
        if rest.contains('/') {
            return Err(format!(
                "`{raw}` has a path; an allowed host is only `scheme://host[:port]`"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
            _ => (rest, None),
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
            HostPattern::Exact(host.to_ascii_lowercase())
        };
        let port_pattern = match port {
            Some("*") => PortPattern::Any,
            Some(p) => {
                if let Some((lo, hi)) = p.split_once("..") {
                    let lo = parse_port(raw, lo)?;
                    let hi = parse_port(raw, hi)?;
                    if lo > hi {
                        return Err(format!("`{raw}`: port range {lo}..{hi} is empty"));
                    }
                    PortPattern::Range(lo, hi.saturating_sub(1).max(lo))
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

    /// Whether a request to `scheme://host:port` is allowed by this entry.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        if let Some(s) = &self.scheme
            && !s.eq_ignore_ascii_case(scheme)
        {
            return false;
        }
        let host = host.to_ascii_lowercase();
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Suffix(suffix) => host.ends_with(suffix.as_str()),
            HostPattern::Exact(h) => *h == host,
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(a.allows("http", "localhost", 8001));
        assert!(!a.allows("http", "localhost", 8002));
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

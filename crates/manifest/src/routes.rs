//! Spin's HTTP route syntax and matching: exact paths, `:param` segments, a trailing `/...`
//! wildcard, and the most specific route wins.

use std::cmp::Ordering;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Exact(String),
    Param(String),
}

/// A parsed route such as `/users/:id/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    raw: String,
    segments: Vec<Segment>,
    wildcard: bool,
}

/// Why a route string was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError(pub String);

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl RoutePattern {
    /// Parses a route as written in a manifest, joined under the application base path.
    pub fn parse(base: &str, route: &str) -> Result<Self, RouteError> {
        if !route.starts_with('/') {
            return Err(RouteError(format!("route `{route}` must start with `/`")));
        }
        let base = base.trim_end_matches('/');
        let raw = format!("{base}{route}");
        let mut segments = Vec::new();
        let mut wildcard = false;
        let trimmed = raw.trim_start_matches('/');
        let parts: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if *part == "..." {
                if !last {
                    return Err(RouteError(format!(
                        "route `{route}` has `...` before its end; a wildcard may only be the last segment"
                    )));
                }
                wildcard = true;
            } else if let Some(name) = part.strip_prefix(':') {
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(RouteError(format!(
                        "route `{route}` has an invalid parameter `{part}`; use `:name` with letters, digits, `_` or `-`"
                    )));
                }
                segments.push(Segment::Param(name.to_string()));
            } else if part.is_empty() && last {
                // A trailing slash: `/foo/` is the same route as `/foo`.
            } else if part.is_empty() {
                return Err(RouteError(format!(
                    "route `{route}` contains an empty segment `//`"
                )));
            } else {
                segments.push(Segment::Exact(part.to_string()));
            }
        }
        Ok(Self {
            raw,
            segments,
            wildcard,
        })
    }

    /// The route as written, including any `/...` (Spin's `spin-raw-component-route`).
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The route without a trailing `/...` (Spin's `spin-component-route`).
    pub fn without_wildcard(&self) -> &str {
        let r = self.raw.strip_suffix("...").unwrap_or(&self.raw);
        if r.len() > 1 {
            r.strip_suffix('/').unwrap_or(r)
        } else {
            r
        }
    }

    /// Matches a request path (without query). Returns the parameters and the path info.
    pub fn matches(&self, path: &str) -> Option<RouteMatch> {
        let trimmed = path.trim_start_matches('/');
        let mut parts = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect::<Vec<_>>()
        };
        // `/foo/` is served by `/foo` as Spin does.
        if !self.wildcard && parts.last() == Some(&"") {
            parts.pop();
        }
        if parts.len() < self.segments.len()
            || (!self.wildcard && parts.len() != self.segments.len())
        {
            return None;
        }
        let mut params = Vec::new();
        for (seg, part) in self.segments.iter().zip(&parts) {
            match seg {
                Segment::Exact(s) if s == part => {}
                Segment::Exact(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(name) => params.push((name.clone(), (*part).to_string())),
            }
        }
        let rest = &parts[self.segments.len()..];
        let path_info = if rest.is_empty() {
            String::new()
        } else {
            format!("/{}", rest.join("/"))
        };
        Some(RouteMatch { params, path_info })
    }

    /// Orders routes so that the most specific sorts first: segment by segment, an exact segment
    /// beats a parameter, a parameter beats the wildcard, and a longer route beats its prefix.
    pub fn specificity_cmp(&self, other: &Self) -> Ordering {
        fn rank(p: &RoutePattern, i: usize) -> u8 {
            match p.segments.get(i) {
                Some(Segment::Exact(_)) => 3,
                Some(Segment::Param(_)) => 2,
                None if !p.wildcard => 1,
                None => 0,
            }
        }
        let n = self.segments.len().max(other.segments.len()) + 1;
        for i in 0..n {
            match rank(other, i).cmp(&rank(self, i)) {
                Ordering::Equal => continue,
                o => return o,
            }
        }
        Ordering::Equal
    }

    /// Two patterns that accept exactly the same paths.
    pub fn same_shape(&self, other: &Self) -> bool {
        self.wildcard == other.wildcard
            && self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Exact(x), Segment::Exact(y)) => x == y,
                    (Segment::Param(_), Segment::Param(_)) => true,
                    _ => false,
                })
    }
}

/// The result of matching a path against a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// `:name` segments and the text they matched, in route order.
    pub params: Vec<(String, String)>,
    /// What the trailing wildcard matched, with a leading `/`; empty for an exact match.
    pub path_info: String,
}

/// The `spin-*` headers Spin's HTTP trigger gives a request that `pattern` matched as
/// `matched`, in an app whose base path is `base`: the request's full URL, the client's address
/// (`None` for a request made in-process by another component), the route and what it matched.
pub fn spin_headers(
    base: &str,
    pattern: &RoutePattern,
    matched: &RouteMatch,
    full_url: &str,
    client: Option<&str>,
) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = spin_route_headers(base, pattern)
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    headers.extend(
        spin_request_headers(matched.clone(), full_url.to_string(), client)
            .map(|(n, v)| (n.into_owned(), v)),
    );
    headers
}

/// The part of [`spin_headers`] that is the same for every request of a route (a server works
/// these out once per route).
pub fn spin_route_headers(base: &str, pattern: &RoutePattern) -> [(&'static str, String); 4] {
    [
        ("spin-matched-route", pattern.raw().to_string()),
        ("spin-raw-component-route", pattern.raw().to_string()),
        (
            "spin-component-route",
            pattern.without_wildcard().to_string(),
        ),
        ("spin-base-path", base.to_string()),
    ]
}

/// The part of [`spin_headers`] that changes with each request: the full URL, what the route's
/// wildcard matched, the client's address and the route's parameters.
pub fn spin_request_headers(
    matched: RouteMatch,
    full_url: String,
    client: Option<&str>,
) -> impl Iterator<Item = (std::borrow::Cow<'static, str>, String)> {
    use std::borrow::Cow;
    let RouteMatch { params, path_info } = matched;
    [
        (Cow::Borrowed("spin-full-url"), full_url),
        (Cow::Borrowed("spin-path-info"), path_info),
    ]
    .into_iter()
    .chain(client.map(|c| (Cow::Borrowed("spin-client-addr"), c.to_string())))
    .chain(params.into_iter().map(|(name, value)| {
        // As Spin names it: `:user_id` is `spin-path-match-user-id`.
        (
            Cow::Owned(format!("spin-path-match-{}", name.replace('_', "-"))),
            value,
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(r: &str) -> RoutePattern {
        RoutePattern::parse("/", r).unwrap()
    }

    #[test]
    fn exact_param_wildcard() {
        assert!(p("/hello").matches("/hello").is_some());
        assert!(p("/hello").matches("/hello/").is_some());
        assert!(p("/hello").matches("/hello/x").is_none());
        let m = p("/users/:id").matches("/users/42").unwrap();
        assert_eq!(m.params, vec![("id".to_string(), "42".to_string())]);
        assert!(p("/users/:id").matches("/users/").is_none());
        let m = p("/static/...").matches("/static/a/b.txt").unwrap();
        assert_eq!(m.path_info, "/a/b.txt");
        assert_eq!(p("/static/...").matches("/static").unwrap().path_info, "");
        assert!(p("/...").matches("/").is_some());
        assert!(p("/").matches("/").is_some());
        assert!(p("/").matches("/x").is_none());
    }

    #[test]
    fn most_specific_first() {
        let mut routes = [p("/..."), p("/a/..."), p("/a/:x"), p("/a/b"), p("/a")];
        routes.sort_by(|a, b| a.specificity_cmp(b));
        let order: Vec<_> = routes.iter().map(|r| r.raw().to_string()).collect();
        assert_eq!(order, ["/a/b", "/a/:x", "/a", "/a/...", "/..."]);
    }

    #[test]
    fn component_route_names() {
        assert_eq!(p("/a/...").without_wildcard(), "/a");
        assert_eq!(p("/...").without_wildcard(), "/");
        assert_eq!(RoutePattern::parse("/base", "/x").unwrap().raw(), "/base/x");
    }

    #[test]
    fn rejects_bad_routes() {
        assert!(RoutePattern::parse("/", "x").is_err());
        assert!(RoutePattern::parse("/", "/a/.../b").is_err());
        assert!(RoutePattern::parse("/", "/a/:").is_err());
    }
}

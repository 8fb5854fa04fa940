//! The route table: path normalisation and longest-prefix lookup on whole segments.
//!
//! Pure logic, no Pingora types: it takes a host, a method and a path and answers which
//! route (by index) serves them. Building [`crate::state::Route`]s with their pools is not
//! its business.
//!
//! Normalisation happens before matching, so that no spelling of a path can reach a route
//! while skipping the policy of a longer one: percent-escapes of unreserved characters are
//! decoded (`%64` → `d`), repeated slashes are merged, and `.`/`..` segments are resolved.
//! What cannot be made safe is rejected: escaped `/`, `\` or NUL, other control bytes, bad
//! escapes, and `..` above the root.
//!
//! Layer: a leaf (pure logic, used by `config` to check paths); must not import `config`, `state`,
//! `upstream`, `plan` or `proxy`.

use http::Method;
use std::collections::HashMap;

/// Why a request path was refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("invalid percent-encoding in the path")]
    BadEscape,
    #[error("encoded '/', '\\' or NUL in the path")]
    EncodedSeparator,
    #[error("control character or backslash in the path")]
    ForbiddenByte,
    #[error("the path climbs above the root")]
    AboveRoot,
}

/// Returns the normal form of `path` (no query). See the module docs for the rules.
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: nothing to decode, no dot segments, no empty segments.
    if !bytes
        .iter()
        .any(|&b| b == b'%' || b == b'.' || b == b'\\' || b < 0x21 || b == 0x7f)
        && !path.contains("//")
    {
        return Ok(path.to_string());
    }
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let v = hex_val(hex[0])
                    .zip(hex_val(hex[1]))
                    .map(|(h, l)| h << 4 | l)
                    .ok_or(PathError::BadEscape)?;
                if v == b'/' || v == b'\\' || v == 0 {
                    return Err(PathError::EncodedSeparator);
                }
                if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                    decoded.push(v as char);
                } else if v < 0x20 || v == 0x7f {
                    return Err(PathError::ForbiddenByte);
                } else {
                    // Keep other escapes as they are, in upper case.
                    decoded.push('%');
                    decoded.push(hex[0].to_ascii_uppercase() as char);
                    decoded.push(hex[1].to_ascii_uppercase() as char);
                }
                i += 3;
            }
            b'\\' => return Err(PathError::ForbiddenByte),
            _ if b < 0x20 || b == 0x7f => return Err(PathError::ForbiddenByte),
            _ => {
                // Multi-byte UTF-8 is copied byte-for-byte via the char boundary below.
                let ch_len = utf8_len(b);
                let end = (i + ch_len).min(bytes.len());
                decoded.push_str(path.get(i..end).ok_or(PathError::BadEscape)?);
                i = end;
            }
        }
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing && !segments.is_empty()) {
        out.push('/');
    }
    Ok(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// One route as the table sees it.
#[derive(Debug, Clone)]
pub struct RouteKey {
    pub prefix: String,
    /// `None` = any method.
    pub methods: Option<Vec<Method>>,
    /// Lower-case host names; `None` = any host.
    pub hosts: Option<Vec<String>>,
}

/// The answer of [`RouteTable::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(usize),
    /// A route owns the path but not this method; the methods it allows.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

/// Routes indexed by prefix; lookup walks the path's ancestors from longest to shortest,
/// so its cost is the number of segments, not the number of routes.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Keyed with foldhash: the keys are fixed when the table is built, so a hash that
    /// resists chosen collisions (SipHash, a few hundred instructions per path segment
    /// looked up) buys nothing here.
    by_prefix: HashMap<String, Vec<(usize, RouteKey)>, foldhash::fast::RandomState>,
    max_segments: usize,
}

impl RouteTable {
    /// Builds the table; `routes[i]` is answered as `Found(i)`. Earlier routes win ties.
    pub fn new(routes: Vec<RouteKey>) -> RouteTable {
        let mut t = RouteTable::default();
        for (i, r) in routes.into_iter().enumerate() {
            t.max_segments = t.max_segments.max(r.prefix.matches('/').count());
            t.by_prefix
                .entry(r.prefix.clone())
                .or_default()
                .push((i, r));
        }
        t
    }

    /// `path` must be normalised; `host` may carry a port (ignored) and any case.
    pub fn lookup(&self, host: Option<&str>, method: &Method, path: &str) -> Lookup {
        let host = host.map(strip_port);
        let mut candidate = path;
        loop {
            if let Some(routes) = self.by_prefix.get(candidate) {
                let mut allowed = Vec::new();
                let mut host_matched = false;
                for (i, r) in routes {
                    if !host_ok(r, host) {
                        continue;
                    }
                    host_matched = true;
                    match &r.methods {
                        None => return Lookup::Found(*i),
                        Some(ms) if ms.contains(method) => return Lookup::Found(*i),
                        Some(ms) if method == Method::HEAD && ms.contains(&Method::GET) => {
                            return Lookup::Found(*i)
                        }
                        Some(ms) => allowed.extend(ms.iter().cloned()),
                    }
                }
                if host_matched {
                    allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                    allowed.dedup();
                    return Lookup::MethodNotAllowed(allowed);
                }
            }
            if candidate == "/" {
                return Lookup::NotFound;
            }
            candidate = match candidate.rfind('/') {
                Some(0) => "/",
                Some(pos) => &candidate[..pos],
                None => return Lookup::NotFound,
            };
        }
    }

    pub fn len(&self) -> usize {
        self.by_prefix.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

fn host_ok(r: &RouteKey, host: Option<&str>) -> bool {
    match (&r.hosts, host) {
        (None, _) => true,
        (Some(hs), Some(h)) => hs.iter().any(|x| x.eq_ignore_ascii_case(h)),
        (Some(_), None) => false,
    }
}

/// Rewrites a normalised request path for the upstream: strip or replace the route prefix.
pub fn rewrite_path<'a>(
    path: &'a str,
    prefix: &str,
    strip: bool,
    replace: Option<&str>,
) -> std::borrow::Cow<'a, str> {
    use std::borrow::Cow;
    let rest = if prefix == "/" {
        path
    } else {
        path.strip_prefix(prefix).unwrap_or(path)
    };
    match (strip, replace) {
        (_, Some(new)) => {
            let new = if new == "/" { "" } else { new };
            if rest.is_empty() {
                if new.is_empty() {
                    Cow::Borrowed("/")
                } else {
                    Cow::Owned(new.to_string())
                }
            } else {
                Cow::Owned(format!("{new}{rest}"))
            }
        }
        (true, None) if rest.is_empty() => Cow::Borrowed("/"),
        (true, None) if prefix == "/" => Cow::Borrowed(path),
        (true, None) => Cow::Borrowed(rest),
        // The usual route: the path as it came (no copy).
        (false, None) => Cow::Borrowed(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(prefix: &str) -> RouteKey {
        RouteKey {
            prefix: prefix.into(),
            methods: None,
            hosts: None,
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let t = RouteTable::new(vec![key("/"), key("/api"), key("/api/v1/doctors")]);
        assert_eq!(
            t.lookup(None, &Method::GET, "/api/v1/doctors/7"),
            Lookup::Found(2)
        );
        assert_eq!(
            t.lookup(None, &Method::GET, "/api/v1/patients"),
            Lookup::Found(1)
        );
        assert_eq!(t.lookup(None, &Method::GET, "/other"), Lookup::Found(0));
    }

    #[test]
    fn prefixes_match_whole_segments_only() {
        let t = RouteTable::new(vec![key("/api/v1/doctors")]);
        assert_eq!(
            t.lookup(None, &Method::GET, "/api/v1/doctors"),
            Lookup::Found(0)
        );
        assert_eq!(
            t.lookup(None, &Method::GET, "/api/v1/doctors/"),
            Lookup::Found(0)
        );
        assert_eq!(
            t.lookup(None, &Method::GET, "/api/v1/doctors/7"),
            Lookup::Found(0)
        );
        assert_eq!(
            t.lookup(None, &Method::GET, "/api/v1/doctorsX"),
            Lookup::NotFound
        );
        assert_eq!(t.lookup(None, &Method::GET, "/api/v1"), Lookup::NotFound);
    }

    #[test]
    fn methods_and_hosts_filter_routes() {
        let mut get_only = key("/a");
        get_only.methods = Some(vec![Method::GET]);
        let mut on_host = key("/a");
        on_host.hosts = Some(vec!["admin.example".into()]);
        on_host.methods = Some(vec![Method::POST]);
        let t = RouteTable::new(vec![get_only, on_host]);
        assert_eq!(t.lookup(Some("x"), &Method::GET, "/a/b"), Lookup::Found(0));
        assert_eq!(t.lookup(Some("x"), &Method::HEAD, "/a"), Lookup::Found(0));
        assert_eq!(
            t.lookup(Some("Admin.Example:8080"), &Method::POST, "/a"),
            Lookup::Found(1)
        );
        assert_eq!(
            t.lookup(Some("x"), &Method::DELETE, "/a"),
            Lookup::MethodNotAllowed(vec![Method::GET])
        );
    }

    #[test]
    fn normalisation_decodes_merges_and_resolves() {
        assert_eq!(
            normalize_path("/api/v1/%64octors").as_deref(),
            Ok("/api/v1/doctors")
        );
        assert_eq!(
            normalize_path("//api//v1/doctors").as_deref(),
            Ok("/api/v1/doctors")
        );
        assert_eq!(
            normalize_path("/x/../api/v1/doctors").as_deref(),
            Ok("/api/v1/doctors")
        );
        assert_eq!(normalize_path("/x/%2e%2E/api").as_deref(), Ok("/api"));
        assert_eq!(normalize_path("/a/./b/").as_deref(), Ok("/a/b/"));
        assert_eq!(normalize_path("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(normalize_path("/").as_deref(), Ok("/"));
        assert_eq!(normalize_path("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(normalize_path("/ñ").as_deref(), Ok("/ñ"));
    }

    #[test]
    fn normalisation_rejects_what_cannot_be_made_safe() {
        assert_eq!(normalize_path("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a%00"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a\\b"), Err(PathError::ForbiddenByte));
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(normalize_path("/a%0a"), Err(PathError::ForbiddenByte));
        assert_eq!(normalize_path("api"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn rewrites() {
        assert_eq!(
            rewrite_path("/api/v1/doctors/7", "/api/v1/doctors", true, None),
            "/7"
        );
        assert_eq!(
            rewrite_path("/api/v1/doctors", "/api/v1/doctors", true, None),
            "/"
        );
        assert_eq!(
            rewrite_path("/api/v1/doctors/7", "/api/v1/doctors", false, Some("/v2")),
            "/v2/7"
        );
        assert_eq!(
            rewrite_path("/api/v1/doctors", "/api/v1/doctors", false, Some("/v2")),
            "/v2"
        );
        assert_eq!(rewrite_path("/api/x", "/api", false, Some("/")), "/x");
        assert_eq!(rewrite_path("/api/x", "/api", false, None), "/api/x");
        assert_eq!(rewrite_path("/x", "/", true, None), "/x");
    }
}

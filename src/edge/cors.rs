//! CORS (`cors:` in `gateway.yaml`): which browser origins may call the gateway from script,
//! how preflights are answered, and which `Access-Control-*` headers go on responses.
//!
//! This module owns the config shape, its validation, origin matching and the headers to
//! send. It does not write responses: the caller answers a preflight itself (204 with the
//! headers from [`Cors::preflight`]) and adds [`Cors::response_headers`] to every other
//! response, after dropping any `Access-Control-*` headers an upstream sent (the gateway, not
//! each upstream, is the CORS authority). Cookie-based CSRF checks live in `auth`, not here.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;
use std::collections::HashSet;

/// `cors:` — the cross-origin policy. Every field has a default; with no `allowed_origins`
/// (the default) CORS is off and no `Access-Control-*` header is ever sent.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`, `http://localhost:3000`) and subdomain
    /// wildcards (`https://*.example.com` matches `https://a.example.com` and
    /// `https://a.b.example.com`, but not `https://example.com`, `http://a.example.com` nor
    /// `https://a.example.com.evil.com`). Scheme and host are case-insensitive and a default
    /// port (`:80` for http, `:443` for https) is ignored. `"*"` alone allows any origin, but
    /// never together with `allow_credentials`. Default: none (CORS off).
    pub allowed_origins: Vec<String>,
    /// Whether browsers may send cookies and read responses to credentialed requests
    /// (`Access-Control-Allow-Credentials: true`). Default: false.
    pub allow_credentials: bool,
    /// Methods a preflight may ask for; matched case-sensitively after uppercasing this list.
    /// `"*"` allows any. Default: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS.
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for, case-insensitive; `"*"` allows any. Default:
    /// Authorization, Content-Type, X-Requested-With, X-Request-Id, Idempotency-Key.
    pub allowed_headers: Vec<String>,
    /// Response headers that script may read (`Access-Control-Expose-Headers`). Default:
    /// X-Request-Id.
    pub exposed_headers: Vec<String>,
    /// How long browsers may cache a preflight answer, in seconds; at most 86400. Default: 600.
    pub max_age: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
        CorsConfig {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            allowed_methods: list(&["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
            allowed_headers: list(&[
                "Authorization",
                "Content-Type",
                "X-Requested-With",
                "X-Request-Id",
                "Idempotency-Key",
            ]),
            exposed_headers: list(&["X-Request-Id"]),
            max_age: 600,
        }
    }
}

const ANY: &str = "*";
const MAX_AGE_LIMIT: u64 = 86_400;
const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

impl CorsConfig {
    /// Every problem in this section, each prefixed with its path below `at`, e.g.
    /// `routes[2].cors.allowed_origins[1]: "https://a.com/" must not have a path, ...`.
    /// Checks origin syntax (`scheme://host[:port]`, a wildcard only as the whole first label),
    /// `"*"` with credentials, the `"null"` origin, duplicates, method and header names, and
    /// `max_age`.
    pub fn validate(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let path = format!("{at}.allowed_origins[{i}]");
            let o = origin.trim();
            if o == ANY {
                if self.allow_credentials {
                    problems.push(format!(
                        "{path}: \"*\" cannot be combined with allow_credentials: true (browsers refuse it); list the origins instead"
                    ));
                }
            } else if o.eq_ignore_ascii_case("null") {
                problems.push(format!(
                    "{path}: \"null\" is refused: sandboxed frames and file: pages send it, so any page can claim it"
                ));
            } else {
                match parse_origin(o, true) {
                    Err(why) => problems.push(format!("{path}: {origin:?} {why}")),
                    Ok(spec) => {
                        if !seen.insert(spec) {
                            problems.push(format!("{path}: {origin:?} is listed twice"));
                        }
                    }
                }
            }
        }
        for (i, m) in self.allowed_methods.iter().enumerate() {
            let m = m.trim();
            if m != ANY && Method::from_bytes(m.as_bytes()).is_err() {
                problems.push(format!(
                    "{at}.allowed_methods[{i}]: {m:?} is not an HTTP method"
                ));
            }
        }
        for (i, h) in self.allowed_headers.iter().enumerate() {
            let h = h.trim();
            if h != ANY && HeaderName::from_bytes(h.as_bytes()).is_err() {
                problems.push(format!(
                    "{at}.allowed_headers[{i}]: {h:?} is not a valid header name"
                ));
            }
        }
        for (i, h) in self.exposed_headers.iter().enumerate() {
            let h = h.trim();
            if h == ANY {
                problems.push(format!(
                    "{at}.exposed_headers[{i}]: \"*\" is not supported here; list the header names to expose"
                ));
            } else if HeaderName::from_bytes(h.as_bytes()).is_err() {
                problems.push(format!(
                    "{at}.exposed_headers[{i}]: {h:?} is not a valid header name"
                ));
            }
        }
        if self.max_age > MAX_AGE_LIMIT {
            problems.push(format!(
                "{at}.max_age: must be at most {MAX_AGE_LIMIT} (24h); browsers cap it lower anyway"
            ));
        }
        problems
    }
}

/// A parsed origin, normalised: lowercase scheme and host, default port dropped. For a
/// wildcard pattern `host` is the suffix after `*.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OriginSpec {
    scheme: String,
    host: String,
    port: Option<u16>,
    wildcard: bool,
}

impl OriginSpec {
    /// The serialised form browsers send in `Origin` (for exact origins).
    fn key(&self) -> String {
        match self.port {
            Some(p) => format!("{}://{}:{p}", self.scheme, self.host),
            None => format!("{}://{}", self.scheme, self.host),
        }
    }

    /// Whether the exact origin `o` falls under this wildcard pattern.
    fn covers(&self, o: &OriginSpec) -> bool {
        self.scheme == o.scheme
            && self.port == o.port
            && o.host
                .strip_suffix(&self.host)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
    }
}

/// Parses `scheme://host[:port]`; `why` texts complete a sentence starting with the origin.
fn parse_origin(s: &str, allow_wildcard: bool) -> Result<OriginSpec, &'static str> {
    const SHAPE: &str =
        "is not an origin: expected scheme://host[:port], e.g. https://app.example.com";
    let (scheme, rest) = s.split_once("://").ok_or(SHAPE)?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(SHAPE);
    }
    if rest.contains(['/', '?', '#']) {
        return Err("must not have a path, query or fragment (not even a trailing '/'): an origin is scheme://host[:port]");
    }
    if rest.contains('@') {
        return Err("must not contain user info: an origin is scheme://host[:port]");
    }
    let bracketed = rest.starts_with('[');
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("has an invalid host")?;
        let addr: std::net::Ipv6Addr = addr.parse().map_err(|_| "has an invalid host")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("has an invalid port")?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err("has an invalid port (1-65535)"),
        },
    };
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    let port = port.filter(|p| Some(*p) != default_port);
    let (host, wildcard) = match host.strip_prefix("*.") {
        Some(suffix) if allow_wildcard => (suffix.to_string(), true),
        _ => (host, false),
    };
    if host.contains('*') {
        return Err(if allow_wildcard {
            "may use '*' only as the whole first label of the host, as in https://*.example.com"
        } else {
            "has an invalid host"
        });
    }
    if !bracketed && !valid_hostname(&host) {
        return Err(
            "has an invalid host (letters, digits, '-' and '.'; use punycode for other names)",
        );
    }
    Ok(OriginSpec {
        scheme,
        host,
        port,
        wildcard,
    })
}

/// Dot-separated labels of 1-63 letters, digits, '-' or '_' (not starting or ending with '-').
fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A compiled [`CorsConfig`]: origins parsed and header values built once.
#[derive(Debug, Clone)]
pub struct Cors {
    /// `"*"` configured without credentials: any origin, answered with a literal `*`.
    any_origin: bool,
    /// Exact origins in the serialised form browsers send.
    exact: HashSet<String>,
    wildcards: Vec<OriginSpec>,
    credentials: bool,
    any_method: bool,
    methods: Vec<String>,
    any_header: bool,
    headers: Vec<HeaderName>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
}

impl Cors {
    /// Compiles the config. Entries that [`CorsConfig::validate`] reports are skipped; in
    /// particular `"*"` together with `allow_credentials` is ignored (it allows no origin)
    /// rather than widened, and `max_age` is capped at 86400.
    pub fn new(cfg: &CorsConfig) -> Cors {
        let mut any_origin = false;
        let mut exact = HashSet::new();
        let mut wildcards = Vec::new();
        for o in cfg.allowed_origins.iter().map(|o| o.trim()) {
            if o == ANY {
                any_origin |= !cfg.allow_credentials;
            } else if let Ok(spec) = parse_origin(o, true) {
                if spec.wildcard {
                    wildcards.push(spec);
                } else {
                    exact.insert(spec.key());
                }
            }
        }
        let any_method = cfg.allowed_methods.iter().any(|m| m.trim() == ANY);
        let methods: Vec<String> = cfg
            .allowed_methods
            .iter()
            .map(|m| m.trim().to_ascii_uppercase())
            .filter(|m| m != ANY && Method::from_bytes(m.as_bytes()).is_ok())
            .collect();
        let any_header = cfg.allowed_headers.iter().any(|h| h.trim() == ANY);
        let header_names = |list: &[String]| -> Vec<(HeaderName, String)> {
            list.iter()
                .map(|h| h.trim())
                .filter_map(|h| Some((HeaderName::from_bytes(h.as_bytes()).ok()?, h.to_string())))
                .collect()
        };
        let allowed = header_names(&cfg.allowed_headers);
        let exposed = header_names(&cfg.exposed_headers);
        Cors {
            any_origin,
            exact,
            wildcards,
            credentials: cfg.allow_credentials,
            any_method,
            allow_methods: join(methods.iter().map(String::as_str)),
            methods,
            any_header,
            allow_headers: join(allowed.iter().map(|(_, spelt)| spelt.as_str())),
            headers: allowed.into_iter().map(|(name, _)| name).collect(),
            expose_headers: join(exposed.iter().map(|(_, spelt)| spelt.as_str())),
            max_age: HeaderValue::from(cfg.max_age.min(MAX_AGE_LIMIT)),
        }
    }

    /// Whether any origin is allowed at all. When false, [`Cors::preflight`] always answers
    /// `None` and [`Cors::response_headers`] is always empty, so the caller may let `OPTIONS`
    /// requests through to the upstream instead.
    pub fn is_enabled(&self) -> bool {
        self.any_origin || !self.exact.is_empty() || !self.wildcards.is_empty()
    }

    /// Whether a request is a CORS preflight: `OPTIONS` with both `Origin` and
    /// `Access-Control-Request-Method`. Any other `OPTIONS` is an ordinary request.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight: `Some(headers)` when the origin is allowed, the requested
    /// method is allowed and every requested header is allowed (case-insensitive); the caller
    /// then answers 204 with exactly these headers, which always include
    /// `Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers`.
    ///
    /// `None` when anything is not allowed (or the request is malformed): the caller still
    /// answers 204 but with no `Access-Control-*` header (only [`Cors::preflight_vary`]), so
    /// the browser blocks the actual request itself. A 403 would tell an attacker nothing
    /// more and would show up as a misleading error in the browser console.
    ///
    /// `"*"` in `allowed_methods` or `allowed_headers` is answered by echoing what was asked,
    /// because browsers ignore a literal `*` on credentialed requests and never let it cover
    /// `Authorization`.
    pub fn preflight(&self, headers: &HeaderMap) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let allow_origin = self.allow_origin_value(headers)?;
        let method = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)?
            .to_str()
            .ok()?
            .trim();
        Method::from_bytes(method.as_bytes()).ok()?;
        if !self.any_method && !self.methods.iter().any(|m| m == method) {
            return None;
        }
        let mut requested = Vec::new();
        for value in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            for name in value.to_str().ok()?.split(',').map(str::trim) {
                if name.is_empty() {
                    continue;
                }
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                if !self.any_header && !self.headers.contains(&name) {
                    return None;
                }
                requested.push(name);
            }
        }
        let mut out = vec![(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin)];
        if self.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        let allow_methods = if self.any_method {
            HeaderValue::from_str(method).ok()
        } else {
            self.allow_methods.clone()
        };
        if let Some(v) = allow_methods {
            out.push((header::ACCESS_CONTROL_ALLOW_METHODS, v));
        }
        let allow_headers = if self.any_header {
            join(requested.iter().map(HeaderName::as_str))
        } else {
            self.allow_headers.clone()
        };
        if let Some(v) = allow_headers {
            out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, v));
        }
        out.push((header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()));
        out.push(Self::preflight_vary());
        Some(out)
    }

    /// `Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers`, for the
    /// caller to put on a refused preflight's answer too (the allowed answer already has it).
    pub fn preflight_vary() -> (HeaderName, HeaderValue) {
        (header::VARY, HeaderValue::from_static(PREFLIGHT_VARY))
    }

    /// Adds [`Cors::response_headers`] to an answer's `headers`: `Vary` appended to what it
    /// has, the others set.
    pub fn add_response_headers(&self, request_headers: &HeaderMap, headers: &mut HeaderMap) {
        for (k, v) in self.response_headers(request_headers) {
            if k == header::VARY {
                headers.append(k, v);
            } else {
                headers.insert(k, v);
            }
        }
    }

    /// Headers to add to an actual (non-preflight) response, given the request's headers:
    /// `Access-Control-Allow-Origin` (the request's origin echoed, or `*` when `"*"` is
    /// configured without credentials), `Access-Control-Allow-Credentials: true` when
    /// configured, and `Access-Control-Expose-Headers` when non-empty. None of these when the
    /// request has no (or more than one) `Origin` or the origin is not allowed.
    ///
    /// `Vary: Origin` is returned whenever CORS is enabled and not the bare `"*"`, whatever
    /// the request, because the answer then depends on `Origin` and caches must key on it.
    /// The caller should append it to any `Vary` the upstream sent, not replace it. When CORS
    /// is off (no origins configured) the result is always empty.
    pub fn response_headers(&self, request_headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        if !self.is_enabled() {
            return out;
        }
        if !self.any_origin {
            out.push((header::VARY, HeaderValue::from_static("Origin")));
        }
        let Some(allow_origin) = self.allow_origin_value(request_headers) else {
            return out;
        };
        out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin));
        if self.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(v) = &self.expose_headers {
            out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone()));
        }
        out
    }

    /// The `Access-Control-Allow-Origin` value for this request, or `None` when it has no
    /// single `Origin` or the origin is not allowed.
    fn allow_origin_value(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let mut origins = headers.get_all(header::ORIGIN).iter();
        let value = origins.next()?;
        if origins.next().is_some() {
            return None;
        }
        if self.any_origin {
            return Some(HeaderValue::from_static("*"));
        }
        let origin = value.to_str().ok()?;
        if self.exact.contains(origin) {
            return Some(value.clone());
        }
        let spec = parse_origin(origin, false).ok()?;
        let allowed =
            self.exact.contains(&spec.key()) || self.wildcards.iter().any(|w| w.covers(&spec));
        allowed.then(|| value.clone())
    }
}

/// `a, b, c` as a header value; `None` for an empty list.
fn join<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let joined = items.collect::<Vec<_>>().join(", ");
    if joined.is_empty() {
        None
    } else {
        HeaderValue::from_str(&joined).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(origins: &[&str]) -> CorsConfig {
        CorsConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..CorsConfig::default()
        }
    }

    fn cors(origins: &[&str]) -> Cors {
        Cors::new(&cfg(origins))
    }

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    fn origin(o: &'static str) -> HeaderMap {
        req(&[("origin", o)])
    }

    fn get<'a>(headers: &'a [(HeaderName, HeaderValue)], name: &str) -> Option<&'a str> {
        let mut found = headers.iter().filter(|(n, _)| n == name);
        let first = found.next().map(|(_, v)| v.to_str().unwrap());
        assert!(found.next().is_none(), "{name} appears twice");
        first
    }

    fn allows(c: &Cors, o: &'static str) -> bool {
        get(
            &c.response_headers(&origin(o)),
            "access-control-allow-origin",
        )
        .is_some()
    }

    fn preflight_req(o: &'static str, method: &'static str, hdrs: &'static str) -> HeaderMap {
        let mut m = req(&[("origin", o), ("access-control-request-method", method)]);
        if !hdrs.is_empty() {
            m.append(
                "access-control-request-headers",
                HeaderValue::from_static(hdrs),
            );
        }
        m
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let d = CorsConfig::default();
        assert!(d.allowed_origins.is_empty() && !d.allow_credentials);
        assert_eq!(
            d.allowed_methods,
            ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        );
        assert_eq!(
            d.allowed_headers,
            [
                "Authorization",
                "Content-Type",
                "X-Requested-With",
                "X-Request-Id",
                "Idempotency-Key"
            ]
        );
        assert_eq!(d.exposed_headers, ["X-Request-Id"]);
        assert_eq!(d.max_age, 600);
        assert!(d.validate("cors").is_empty());
        let parsed: CorsConfig = serde_yaml::from_str("allow_credentials: true").unwrap();
        assert_eq!(
            parsed,
            CorsConfig {
                allow_credentials: true,
                ..d
            }
        );
        assert!(serde_yaml::from_str::<CorsConfig>("allowed_origin: [x]").is_err());
    }

    #[test]
    fn exact_origin_is_echoed_with_vary() {
        let c = cors(&["https://app.example.com"]);
        let h = c.response_headers(&origin("https://app.example.com"));
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            get(&h, "access-control-expose-headers"),
            Some("X-Request-Id")
        );
        assert_eq!(get(&h, "vary"), Some("Origin"));
        assert_eq!(get(&h, "access-control-allow-credentials"), None);
    }

    #[test]
    fn exact_origin_match_ignores_case_and_default_port() {
        let c = cors(&["HTTPS://App.Example.com:443", "http://localhost:3000"]);
        assert!(allows(&c, "https://app.example.com"));
        assert!(allows(&c, "https://app.example.com:443"));
        assert!(allows(&c, "http://localhost:3000"));
        assert!(!allows(&c, "http://localhost:3001"));
        assert!(!allows(&c, "http://localhost"));
        assert!(!allows(&c, "http://app.example.com"));
        assert!(!allows(&c, "https://app.example.com:8443"));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let c = cors(&["https://*.example.com"]);
        assert!(allows(&c, "https://a.example.com"));
        assert!(allows(&c, "https://a.b.example.com"));
        assert!(allows(&c, "https://A.Example.COM"));
        assert!(!allows(&c, "https://example.com"));
        assert!(!allows(&c, "http://a.example.com"));
        assert!(!allows(&c, "https://a.example.com.evil.com"));
        assert!(!allows(&c, "https://evilexample.com"));
        assert!(!allows(&c, "https://.example.com"));
        assert!(!allows(&c, "https://a.example.com:8443"));
        assert!(!allows(&c, "https://a.example.com/"));
        assert!(!allows(&c, "https://*.example.com"));
    }

    #[test]
    fn wildcard_with_port_requires_that_port() {
        let c = cors(&["http://*.dev.test:8080"]);
        assert!(allows(&c, "http://a.dev.test:8080"));
        assert!(!allows(&c, "http://a.dev.test"));
    }

    #[test]
    fn ipv6_origins_match_in_normal_form() {
        let c = cors(&["http://[0:0::1]:8080"]);
        assert!(allows(&c, "http://[::1]:8080"));
        assert!(!allows(&c, "http://[::2]:8080"));
    }

    #[test]
    fn unlisted_missing_or_repeated_origin_gets_only_vary() {
        let c = cors(&["https://app.example.com"]);
        let vary_only = vec![(header::VARY, HeaderValue::from_static("Origin"))];
        assert_eq!(c.response_headers(&origin("https://evil.com")), vary_only);
        assert_eq!(c.response_headers(&HeaderMap::new()), vary_only);
        assert_eq!(c.response_headers(&origin("null")), vary_only);
        assert_eq!(c.response_headers(&origin("")), vary_only);
        let twice = req(&[
            ("origin", "https://app.example.com"),
            ("origin", "https://app.example.com"),
        ]);
        assert_eq!(c.response_headers(&twice), vary_only);
    }

    #[test]
    fn star_without_credentials_answers_star_without_vary() {
        let c = cors(&["*"]);
        let h = c.response_headers(&origin("https://anything.example"));
        assert_eq!(get(&h, "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&h, "vary"), None);
        assert!(c.response_headers(&HeaderMap::new()).is_empty());
        let p = c.preflight(&preflight_req("null", "PUT", "")).unwrap();
        assert_eq!(get(&p, "access-control-allow-origin"), Some("*"));
    }

    #[test]
    fn star_with_credentials_is_invalid_and_allows_nothing() {
        let config = CorsConfig {
            allow_credentials: true,
            ..cfg(&["*"])
        };
        assert_eq!(
            config.validate("routes[2].cors"),
            vec!["routes[2].cors.allowed_origins[0]: \"*\" cannot be combined with allow_credentials: true (browsers refuse it); list the origins instead"]
        );
        let c = Cors::new(&config);
        assert!(!c.is_enabled());
        assert!(c.response_headers(&origin("https://a.com")).is_empty());
        assert!(c
            .preflight(&preflight_req("https://a.com", "GET", ""))
            .is_none());
    }

    #[test]
    fn response_headers_are_added_to_an_answer_vary_appended_the_others_set() {
        let c = cors(&["https://app.example.com"]);
        let mut answer = HeaderMap::new();
        answer.insert(header::VARY, HeaderValue::from_static("Accept"));
        answer.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://upstream.example"),
        );
        c.add_response_headers(&origin("https://app.example.com"), &mut answer);
        let vary: Vec<_> = answer.get_all(header::VARY).iter().collect();
        assert_eq!(vary.len(), 2, "{answer:?}");
        assert_eq!(vary[0], "Accept");
        assert_eq!(
            answer
                .get_all(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .iter()
                .collect::<Vec<_>>(),
            vec!["https://app.example.com"]
        );
    }

    #[test]
    fn credentials_are_announced_for_allowed_origins() {
        let c = Cors::new(&CorsConfig {
            allow_credentials: true,
            ..cfg(&["https://app.example.com"])
        });
        let h = c.response_headers(&origin("https://app.example.com"));
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        let refused = c.response_headers(&origin("https://evil.com"));
        assert_eq!(get(&refused, "access-control-allow-credentials"), None);
    }

    #[test]
    fn no_origins_configured_means_cors_off() {
        let c = Cors::new(&CorsConfig::default());
        assert!(!c.is_enabled());
        assert!(c.response_headers(&origin("https://a.com")).is_empty());
        assert!(c
            .preflight(&preflight_req("https://a.com", "GET", ""))
            .is_none());
    }

    #[test]
    fn is_preflight_needs_options_origin_and_request_method() {
        let full = preflight_req("https://a.com", "PUT", "");
        assert!(Cors::is_preflight(&Method::OPTIONS, &full));
        assert!(!Cors::is_preflight(&Method::GET, &full));
        assert!(!Cors::is_preflight(
            &Method::OPTIONS,
            &origin("https://a.com")
        ));
        let no_origin = req(&[("access-control-request-method", "PUT")]);
        assert!(!Cors::is_preflight(&Method::OPTIONS, &no_origin));
    }

    #[test]
    fn allowed_preflight_gets_the_full_answer() {
        let c = Cors::new(&CorsConfig {
            allow_credentials: true,
            ..cfg(&["https://app.example.com"])
        });
        let h = c
            .preflight(&preflight_req(
                "https://app.example.com",
                "PATCH",
                "content-type, Authorization",
            ))
            .unwrap();
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(
            get(&h, "access-control-allow-methods"),
            Some("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
        );
        assert_eq!(
            get(&h, "access-control-allow-headers"),
            Some("Authorization, Content-Type, X-Requested-With, X-Request-Id, Idempotency-Key")
        );
        assert_eq!(get(&h, "access-control-max-age"), Some("600"));
        assert_eq!(get(&h, "vary"), Some(PREFLIGHT_VARY));
        assert_eq!(get(&h, "access-control-expose-headers"), None);
    }

    #[test]
    fn preflight_is_refused_for_unlisted_origin_method_or_header() {
        let c = cors(&["https://app.example.com"]);
        let ok = "https://app.example.com";
        assert!(c
            .preflight(&preflight_req(ok, "DELETE", "x-request-id"))
            .is_some());
        assert!(c
            .preflight(&preflight_req("https://evil.com", "GET", ""))
            .is_none());
        assert!(c.preflight(&preflight_req(ok, "PROPFIND", "")).is_none());
        // Methods are case-sensitive: browsers send non-standard casings as written.
        assert!(c.preflight(&preflight_req(ok, "patch", "")).is_none());
        assert!(c
            .preflight(&preflight_req(ok, "GET", "authorization, x-secret"))
            .is_none());
        assert!(c.preflight(&preflight_req(ok, "GET en", "")).is_none());
        assert!(c
            .preflight(&preflight_req(ok, "GET", "bad header"))
            .is_none());
        assert!(c.preflight(&origin(ok)).is_none());
    }

    #[test]
    fn requested_headers_match_case_insensitively_across_lines() {
        let c = cors(&["https://a.com"]);
        let mut h = preflight_req("https://a.com", "POST", "CONTENT-TYPE,,");
        h.append(
            "access-control-request-headers",
            HeaderValue::from_static(" idempotency-key "),
        );
        assert!(c.preflight(&h).is_some());
    }

    #[test]
    fn star_methods_and_headers_echo_what_was_asked() {
        let c = Cors::new(&CorsConfig {
            allowed_methods: vec!["*".into()],
            allowed_headers: vec!["*".into()],
            allow_credentials: true,
            ..cfg(&["https://a.com"])
        });
        let h = c
            .preflight(&preflight_req(
                "https://a.com",
                "PROPFIND",
                "X-Custom, authorization",
            ))
            .unwrap();
        assert_eq!(get(&h, "access-control-allow-methods"), Some("PROPFIND"));
        assert_eq!(
            get(&h, "access-control-allow-headers"),
            Some("x-custom, authorization")
        );
        let none_asked = c
            .preflight(&preflight_req("https://a.com", "GET", ""))
            .unwrap();
        assert_eq!(get(&none_asked, "access-control-allow-headers"), None);
    }

    #[test]
    fn configured_methods_are_uppercased_and_max_age_capped() {
        let c = Cors::new(&CorsConfig {
            allowed_methods: vec!["get".into(), " post ".into()],
            allowed_headers: vec![],
            max_age: 1_000_000,
            ..cfg(&["https://a.com"])
        });
        let h = c
            .preflight(&preflight_req("https://a.com", "POST", ""))
            .unwrap();
        assert_eq!(get(&h, "access-control-allow-methods"), Some("GET, POST"));
        assert_eq!(get(&h, "access-control-allow-headers"), None);
        assert_eq!(get(&h, "access-control-max-age"), Some("86400"));
        assert!(c
            .preflight(&preflight_req("https://a.com", "POST", "content-type"))
            .is_none());
    }

    #[test]
    fn empty_exposed_headers_sends_no_expose_header() {
        let c = Cors::new(&CorsConfig {
            exposed_headers: vec![],
            ..cfg(&["https://a.com"])
        });
        let h = c.response_headers(&origin("https://a.com"));
        assert_eq!(get(&h, "access-control-expose-headers"), None);
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://a.com")
        );
    }

    #[test]
    fn preflight_vary_names_the_three_request_headers() {
        let (name, value) = Cors::preflight_vary();
        assert_eq!(name, header::VARY);
        assert_eq!(value, PREFLIGHT_VARY);
    }

    #[test]
    fn validate_reports_bad_origins_with_paths() {
        let config = cfg(&[
            "https://ok.example.com",
            "https://app.example.com/",
            "app.example.com",
            "https://a.*.example.com",
            "https://*example.com",
            "https://app.example.com:0",
            "https://app.example.com:http",
            "https://user@app.example.com",
            "null",
            "https://",
            "https://exa mple.com",
            "https://OK.example.com:443",
            "ftp//x",
            "https://app.example.com?x=1",
        ]);
        let p = config.validate("routes[2].cors");
        let why = |i: usize| {
            let prefix = format!("routes[2].cors.allowed_origins[{i}]: ");
            p.iter()
                .find_map(|m| m.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no problem for [{i}] in {p:#?}"))
        };
        assert!(why(1).contains("must not have a path"));
        assert!(why(2).contains("expected scheme://host[:port]"));
        assert!(why(3).contains("'*' only as the whole first label"));
        assert!(why(4).contains("'*' only as the whole first label"));
        assert!(why(5).contains("invalid port"));
        assert!(why(6).contains("invalid port"));
        assert!(why(7).contains("user info"));
        assert!(why(8).contains("\"null\" is refused"));
        assert!(why(9).contains("invalid host"));
        assert!(why(10).contains("invalid host"));
        assert!(why(11).contains("listed twice"));
        assert!(why(12).contains("expected scheme://host[:port]"));
        assert!(why(13).contains("must not have a path, query or fragment"));
        assert_eq!(p.len(), 13, "{p:#?}");
    }

    #[test]
    fn validate_accepts_good_origins() {
        let config = cfg(&[
            "https://app.example.com",
            "http://localhost:3000",
            "https://*.example.com",
            "https://*.example.com:8443",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "chrome-extension://abcdef",
            "https://xn--bcher-kva.example",
            " https://padded.example.com ",
            "*",
        ]);
        assert_eq!(config.validate("cors"), Vec::<String>::new());
    }

    #[test]
    fn validate_reports_bad_methods_headers_and_max_age() {
        let config = CorsConfig {
            allowed_methods: vec!["GET".into(), "BAD METHOD".into(), "*".into()],
            allowed_headers: vec!["X-Ok".into(), "bad:name".into(), "*".into()],
            exposed_headers: vec!["*".into(), "".into()],
            max_age: 86_401,
            ..cfg(&["https://a.com"])
        };
        assert_eq!(
            config.validate("cors"),
            vec![
                "cors.allowed_methods[1]: \"BAD METHOD\" is not an HTTP method",
                "cors.allowed_headers[1]: \"bad:name\" is not a valid header name",
                "cors.exposed_headers[0]: \"*\" is not supported here; list the header names to expose",
                "cors.exposed_headers[1]: \"\" is not a valid header name",
                "cors.max_age: must be at most 86400 (24h); browsers cap it lower anyway",
            ]
        );
    }

    #[test]
    fn malformed_ipv6_and_wildcard_hosts_are_refused() {
        for bad in [
            "https://*.[::1]",
            "http://[::1",
            "http://[::1]x",
            "http://[::1]:",
            "http://[zz::1]:80",
            "https://*",
            "https://*.",
            "https://a-.example.com",
            "https://a..example.com",
            "https://a.example.com:+80",
        ] {
            assert_eq!(cfg(&[bad]).validate("cors").len(), 1, "{bad}");
        }
    }

    #[test]
    fn invalid_origin_entries_are_skipped_not_widened() {
        let c = cors(&["https://*.*.example.com", "https://app.example.com/"]);
        assert!(!c.is_enabled());
        assert!(!allows(&c, "https://a.b.example.com"));
        assert!(!allows(&c, "https://app.example.com"));
    }
}

//! Checks of the parts of `upstreams.NAME:` that need more than a type: backend URLs, hash
//! keys, TLS to the backends, retries and timeouts (retries and timeouts also of routes and
//! `defaults`).

use super::super::UpstreamTlsConfig;
use super::{RetryConfig, Timeouts};

/// `upstreams.NAME.tls`: what can be said without reading the files (reading them is part
/// of building the pool: [`crate::upstream::tls`]).
pub(super) fn check_upstream_tls(p: &mut Vec<String>, at: &str, t: &UpstreamTlsConfig) {
    if let Some(name) = &t.server_name {
        if !valid_server_name(name) {
            p.push(format!(
                "{at}.tls.server_name: {name:?} is not a DNS name or IP address"
            ));
        }
    }
    match (&t.client_cert, &t.client_key) {
        (Some(_), None) => p.push(format!(
            "{at}.tls.client_key: required with {at}.tls.client_cert"
        )),
        (None, Some(_)) => p.push(format!(
            "{at}.tls.client_cert: required with {at}.tls.client_key"
        )),
        _ => {}
    }
}

/// A name rustls can send as SNI and verify a certificate against (DNS name or IP).
pub(super) fn valid_server_name(name: &str) -> bool {
    pingora::tls::ServerName::try_from(name).is_ok()
}

const RETRY_ON: [&str; 6] = ["connect_error", "timeout", "reset", "502", "503", "504"];

pub(super) fn check_retry(p: &mut Vec<String>, at: &str, r: &RetryConfig) {
    if r.retries.is_some_and(|n| n > 10) {
        p.push(format!("{at}.retries: at most 10"));
    }
    for (i, v) in r.retry_on.iter().flatten().enumerate() {
        if !RETRY_ON.contains(&v.as_str()) {
            p.push(format!(
                "{at}.retry_on[{i}]: {v:?} is not one of {}",
                RETRY_ON.join(", ")
            ));
        }
    }
    if r.retry_buffer.is_some_and(|s| s.0 > 64 * 1024) {
        p.push(format!(
            "{at}.retry_buffer: at most 64KiB (the size Pingora replays)"
        ));
    }
    if let (Some(b), Some(c)) = (r.backoff_base, r.backoff_cap) {
        if c.0 < b.0 {
            p.push(format!("{at}.backoff_cap: must not be below backoff_base"));
        }
    }
}

pub(super) fn check_timeouts(p: &mut Vec<String>, at: &str, t: &Timeouts) {
    for (key, v) in [("connect", t.connect), ("read", t.read), ("total", t.total)] {
        if matches!(v, Some(d) if d.0.is_zero()) {
            p.push(format!("{at}.{key}: must be greater than 0"));
        }
    }
}

/// `client_ip`, `header:NAME` or `cookie:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKeySpec {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

impl HashKeySpec {
    pub fn parse(s: &str) -> Option<HashKeySpec> {
        match s.split_once(':') {
            None if s == "client_ip" => Some(HashKeySpec::ClientIp),
            Some(("header", h)) => http::HeaderName::from_bytes(h.trim().as_bytes())
                .ok()
                .map(HashKeySpec::Header),
            Some(("cookie", c)) if !c.trim().is_empty() => {
                Some(HashKeySpec::Cookie(c.trim().to_string()))
            }
            _ => None,
        }
    }
}

/// A backend URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// `https://`: the connection is TLS ([`crate::config::UpstreamTlsConfig`]).
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// `http://host:port[/]`, `https://host:port[/]` or `host:port` (plain HTTP).
pub fn parse_backend_url(url: &str) -> Result<BackendUrl, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if url.contains("://") {
        return Err(format!(
            "{url:?}: only http:// and https:// backends are supported"
        ));
    } else {
        (false, url)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(format!(
            "{url:?}: a backend is scheme://host:port, without path or credentials"
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, p) = v6
            .split_once("]:")
            .ok_or_else(|| format!("{url:?}: expected [v6]:port"))?;
        (h.to_string(), p)
    } else {
        let (h, p) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{url:?}: a port is required"))?;
        (h.to_string(), p)
    };
    if host.is_empty() {
        return Err(format!("{url:?}: missing host"));
    }
    let port: u16 = port.parse().map_err(|_| format!("{url:?}: invalid port"))?;
    if port == 0 {
        return Err(format!("{url:?}: port 0 is not a backend"));
    }
    Ok(BackendUrl { tls, host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls() {
        let url = |tls, host: &str, port| BackendUrl {
            tls,
            host: host.into(),
            port,
        };
        assert_eq!(
            parse_backend_url("http://svc:8000"),
            Ok(url(false, "svc", 8000))
        );
        assert_eq!(
            parse_backend_url("127.0.0.1:80/"),
            Ok(url(false, "127.0.0.1", 80))
        );
        assert_eq!(
            parse_backend_url("http://[::1]:9"),
            Ok(url(false, "::1", 9))
        );
        assert_eq!(
            parse_backend_url("https://svc.internal:443"),
            Ok(url(true, "svc.internal", 443))
        );
        assert!(parse_backend_url("ftp://svc:21")
            .unwrap_err()
            .contains("only http:// and https://"));
        assert!(parse_backend_url("https://svc").is_err());
        assert!(parse_backend_url("http://svc:8000/api").is_err());
        assert!(parse_backend_url("http://svc").is_err());
    }

    #[test]
    fn hash_keys() {
        assert_eq!(HashKeySpec::parse("client_ip"), Some(HashKeySpec::ClientIp));
        assert!(matches!(
            HashKeySpec::parse("header:X-User"),
            Some(HashKeySpec::Header(_))
        ));
        assert_eq!(
            HashKeySpec::parse("cookie:sid"),
            Some(HashKeySpec::Cookie("sid".into()))
        );
        assert_eq!(HashKeySpec::parse("body"), None);
    }
}

//! `server.cache:` and `routes[i].cache:`: the response cache's part of the file format and
//! its validation. What the settings do is `cache`'s business.

use super::{Dur, Size};
use serde::Deserialize;
use std::time::Duration;

/// `server.cache:` — the process-wide store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Memory for every stored answer together (key, headers and body). Least recently used
    /// answers are evicted past it. Default 64MiB.
    pub max_size: Size,
    /// Larger answers are passed through without being stored. Default 1MiB.
    pub max_object_size: Size,
    /// Response header that says what the cache did (`HIT`, `MISS`, `EXPIRED`, `STALE`,
    /// `UPDATING`, `REVALIDATED`, `BYPASS`) on routes with a cache; empty for none.
    /// Default `X-Cache-Status`.
    pub status_header: String,
    /// Concurrent misses for one URL wait this long for the first to fill the cache instead of
    /// all going upstream; `0s` turns the lock off. Default 5s.
    pub lock_timeout: Dur,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: Size(64 * 1024 * 1024),
            max_object_size: Size(1024 * 1024),
            status_header: "X-Cache-Status".into(),
            lock_timeout: Dur::secs(5),
        }
    }
}

impl CacheConfig {
    pub fn validate(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_size.0 < 1024 {
            p.push(format!("{at}.max_size: must be at least 1KiB"));
        }
        if self.max_object_size.0 == 0 || self.max_object_size.0 > self.max_size.0 {
            p.push(format!(
                "{at}.max_object_size: must be greater than 0 and at most max_size"
            ));
        }
        if !self.status_header.is_empty()
            && http::HeaderName::from_bytes(self.status_header.as_bytes()).is_err()
        {
            p.push(format!(
                "{at}.status_header: {:?} is not a header name",
                self.status_header
            ));
        }
        if self.lock_timeout.0 > Duration::from_secs(60) {
            p.push(format!("{at}.lock_timeout: must be at most 60s"));
        }
        p
    }
}

/// `routes[i].cache:` — present means the route's GET and HEAD answers may be cached.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteCacheConfig {
    /// Freshness for answers that state none (no `s-maxage`, `max-age` or `Expires`), for the
    /// statuses cacheable by default (200, 203, 204, 300, 301, 308, 404, 410). Default: none,
    /// so only answers with explicit freshness are stored.
    pub ttl: Option<Dur>,
    /// The route's answers are the same for everyone: requests carrying credentials use and
    /// fill the shared cache too (authentication and roles are still checked first).
    /// Default false: such requests bypass the cache.
    pub public: bool,
    /// How long past its freshness a stored answer may be served when the upstream fails (no
    /// healthy backend, connect error, timeout, 500/502/503/504), unless the answer's own
    /// `Cache-Control: stale-if-error` says otherwise. Default 10m.
    pub stale_if_error: Dur,
    /// How long past its freshness a stored answer may be served while one request refreshes
    /// it in the background, unless the answer's `stale-while-revalidate` says otherwise.
    /// Default 0s.
    pub stale_while_revalidate: Dur,
}

impl Default for RouteCacheConfig {
    fn default() -> Self {
        RouteCacheConfig {
            ttl: None,
            public: false,
            stale_if_error: Dur::secs(600),
            stale_while_revalidate: Dur::secs(0),
        }
    }
}

impl RouteCacheConfig {
    pub fn validate(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.ttl.is_some_and(|t| t.0.is_zero()) {
            p.push(format!(
                "{at}.ttl: must be greater than 0 (omit it to store only answers with explicit freshness)"
            ));
        }
        let year = Duration::from_secs(365 * 24 * 3600);
        for (name, d) in [
            ("ttl", self.ttl.map_or(Duration::ZERO, |t| t.0)),
            ("stale_if_error", self.stale_if_error.0),
            ("stale_while_revalidate", self.stale_while_revalidate.0),
        ] {
            if d > year {
                p.push(format!("{at}.{name}: must be at most 365d"));
            }
        }
        p
    }
}

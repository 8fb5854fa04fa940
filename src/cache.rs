//! Response caching of upstream GET and HEAD answers, per route, on pingora-cache.
//!
//! This module owns the decisions — which requests may use the cache, which answers may be
//! stored and for how long, what varies the key — and the cache-status vocabulary. The storage is [`store::MemoryStore`]; the hit/miss
//! state machine, `Age`, conditional requests and ranges on hits are pingora-cache's.
//!
//! Safety rules, in order:
//! - A request carrying credentials (`Authorization`, `Cookie`, or a signed-in user) never
//!   touches the cache unless the route says its answers are `public`.
//! - An answer with `Set-Cookie`, `Vary: *`, `Cache-Control: private` or `no-store`, or a 206,
//!   is never stored.
//! - Freshness comes from `Cache-Control` (`s-maxage`, `max-age`) or `Expires`; the route's
//!   `ttl`, when set, applies only to answers that give none.
//!
//! The settings (`server.cache`, `routes[i].cache`) are part of the file format:
//! [`crate::config::cache`].
//!
//! Layer: above `config`; must not import `state`, `upstream`, `metrics`, `auth`, `pages`, `plan`
//! or `proxy`.

pub mod store;

use crate::config::cache::{CacheConfig, RouteCacheConfig};
use crate::config::Dur;
use http::{HeaderMap, StatusCode};
use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters::{calculate_fresh_until, calculate_serve_stale_durations};
use pingora::cache::{CacheMeta, CacheMetaDefaults, CachePhase, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};

/// The process-wide cache handles: the store and the fill lock. Built once per gateway and
/// leaked, as pingora-cache needs `&'static` for both.
#[derive(Clone, Copy)]
pub struct Cache {
    pub store: &'static store::MemoryStore,
    pub lock: Option<&'static pingora::cache::lock::CacheKeyLockImpl>,
}

impl Cache {
    pub fn new(c: &CacheConfig) -> Cache {
        let store = Box::leak(Box::new(store::MemoryStore::new(
            c.max_size.0 as usize,
            c.max_object_size.0 as usize,
        )));
        let lock = (!c.lock_timeout.0.is_zero()).then(|| {
            let l: &'static pingora::cache::lock::CacheKeyLockImpl =
                Box::leak(pingora::cache::lock::CacheLock::new_boxed(c.lock_timeout.0));
            l
        });
        Cache { store, lock }
    }

    /// Applies new bounds from a reloaded config (the lock timeout needs a restart).
    pub fn apply(&self, c: &CacheConfig) {
        self.store
            .set_limits(c.max_size.0 as usize, c.max_object_size.0 as usize);
    }
}

/// A route's cache policy, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub ttl: Option<Duration>,
    pub public: bool,
    pub stale_if_error_sec: u32,
    pub stale_while_revalidate_sec: u32,
}

impl Policy {
    pub fn new(c: &RouteCacheConfig) -> Policy {
        let secs = |d: Dur| u32::try_from(d.0.as_secs()).unwrap_or(u32::MAX);
        Policy {
            ttl: c.ttl.map(|t| t.0),
            public: c.public,
            stale_if_error_sec: secs(c.stale_if_error),
            stale_while_revalidate_sec: secs(c.stale_while_revalidate),
        }
    }

    /// Whether this request may use (read and fill) the cache. `signed_in` is true when the
    /// gateway verified a user for it (it forwards that identity upstream).
    pub fn admits(&self, req: &RequestHeader, signed_in: bool) -> Admission {
        if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
            return Admission::Off;
        }
        if !self.public && (signed_in || has_credentials(&req.headers)) {
            return Admission::Bypass;
        }
        Admission::Use
    }

    /// Whether `resp` may be stored, and its freshness and stale windows.
    pub fn decide(&self, resp: &ResponseHeader, now: SystemTime) -> RespCacheable {
        use RespCacheable::Uncacheable;
        let h = &resp.headers;
        if h.contains_key(http::header::SET_COOKIE) {
            return Uncacheable(NoCacheReason::Custom("set-cookie"));
        }
        if vary_names(h).any(|n| n == "*") {
            return Uncacheable(NoCacheReason::Custom("vary: *"));
        }
        if resp.status == StatusCode::PARTIAL_CONTENT {
            return Uncacheable(NoCacheReason::Custom("partial content"));
        }
        let cc = CacheControl::from_resp_headers(resp);
        if cc
            .as_ref()
            .is_some_and(|c| c.is_cacheable() == Cacheable::No)
        {
            return Uncacheable(NoCacheReason::OriginNotCache);
        }
        let defaults = CacheMetaDefaults::new(
            |_| None,
            self.stale_while_revalidate_sec,
            self.stale_if_error_sec,
        );
        let fresh_until =
            calculate_fresh_until(now, cc.as_ref(), resp, false, &defaults).or_else(|| {
                let ttl = self.ttl?;
                heuristically_cacheable(resp.status).then(|| now + ttl)
            });
        let Some(fresh_until) = fresh_until else {
            return Uncacheable(NoCacheReason::OriginNotCache);
        };
        let (swr, sie) = calculate_serve_stale_durations(cc.as_ref(), &defaults);
        let mut header = resp.clone();
        if let Some(cc) = &cc {
            cc.strip_private_headers(&mut header);
        }
        RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, header))
    }
}

/// What a request may do with its route's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Look up and store.
    Use,
    /// The route caches, but not for this request (credentials): straight upstream.
    Bypass,
    /// Not a cacheable method.
    Off,
}

/// `Authorization` or `Cookie` on the request.
pub fn has_credentials(h: &HeaderMap) -> bool {
    h.contains_key(http::header::AUTHORIZATION) || h.contains_key(http::header::COOKIE)
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1), less 206.
fn heuristically_cacheable(s: StatusCode) -> bool {
    matches!(s.as_u16(), 200 | 203 | 204 | 300 | 301 | 308 | 404 | 410)
}

/// Header names listed in `Vary`, lowercased.
fn vary_names(h: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    h.get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
}

/// The variance of a stored answer for this request: the values of the request headers its
/// `Vary` names. `None` when it varies on nothing.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<pingora::cache::key::HashBinary> {
    let mut names: Vec<String> = vary_names(meta.headers()).collect();
    if names.is_empty() {
        return None;
    }
    names.sort();
    names.dedup();
    let mut v = pingora::cache::VarianceBuilder::new();
    for name in names {
        let value: Vec<u8> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .flat_map(|v| v.as_bytes().iter().copied().chain(*b"\n"))
            .collect();
        v.add_owned_name_value(name, value);
    }
    v.finalize()
}

/// Whether an error means the upstream could not answer (so a stale answer may stand in):
/// no healthy backend, connect failures, timeouts, resets, 500/502/503/504. Not the
/// client's own errors, nor statuses the gateway chose (401, 413, 429, ...).
pub fn upstream_failed(source: &pingora::ErrorSource, etype: &pingora::ErrorType) -> bool {
    use pingora::ErrorType as E;
    match etype {
        E::HTTPStatus(s) => matches!(s, 500 | 502 | 503 | 504),
        _ => *source != pingora::ErrorSource::Downstream,
    }
}

/// The cache-status word for a request on a caching route, `None` where nothing happened.
pub fn status_word(phase: CachePhase, bypassed: bool) -> Option<&'static str> {
    if bypassed {
        return Some("BYPASS");
    }
    Some(match phase {
        CachePhase::Hit => "HIT",
        CachePhase::Miss => "MISS",
        CachePhase::Stale => "STALE",
        CachePhase::StaleUpdating => "UPDATING",
        CachePhase::Expired => "EXPIRED",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "REVALIDATED",
        // Looked up, found nothing usable, and the answer could not be stored.
        CachePhase::Disabled(
            NoCacheReason::OriginNotCache
            | NoCacheReason::ResponseTooLarge
            | NoCacheReason::PredictedResponseTooLarge
            | NoCacheReason::Custom(_),
        ) => "MISS",
        CachePhase::Bypass => "BYPASS",
        _ => return None,
    })
}

/// The label of [`status_word`] in metrics.
/// Every value [`status_label`] gives.
pub const STATUS_LABELS: [&str; 7] = [
    "hit",
    "miss",
    "stale",
    "updating",
    "expired",
    "revalidated",
    "bypass",
];

pub fn status_label(word: &str) -> &'static str {
    match word {
        "HIT" => "hit",
        "MISS" => "miss",
        "STALE" => "stale",
        "UPDATING" => "updating",
        "EXPIRED" => "expired",
        "REVALIDATED" => "revalidated",
        _ => "bypass",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Size;

    fn policy() -> Policy {
        Policy::new(&RouteCacheConfig::default())
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).expect("header");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/a", None).expect("req");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    fn fresh_for(c: &RespCacheable, now: SystemTime) -> Option<Duration> {
        match c {
            RespCacheable::Cacheable(m) => {
                Some(m.fresh_until().duration_since(now).unwrap_or_default())
            }
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn max_age_and_s_maxage_set_freshness() {
        let now = SystemTime::now();
        let p = policy();
        let c = p.decide(&resp(200, &[("cache-control", "max-age=30")]), now);
        assert_eq!(fresh_for(&c, now), Some(Duration::from_secs(30)));
        let c = p.decide(
            &resp(200, &[("cache-control", "max-age=30, s-maxage=90")]),
            now,
        );
        assert_eq!(fresh_for(&c, now), Some(Duration::from_secs(90)));
    }

    #[test]
    fn private_no_store_set_cookie_and_vary_star_are_never_stored() {
        let now = SystemTime::now();
        let p = Policy {
            ttl: Some(Duration::from_secs(60)),
            public: true,
            ..policy()
        };
        for h in [
            vec![("cache-control", "private, max-age=60")],
            vec![("cache-control", "no-store, max-age=60")],
            vec![("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            vec![("cache-control", "max-age=60"), ("vary", "Accept, *")],
        ] {
            let c = p.decide(&resp(200, &h), now);
            assert!(!c.is_cacheable(), "{h:?} must not be stored");
        }
        assert!(!p
            .decide(&resp(206, &[("cache-control", "max-age=9")]), now)
            .is_cacheable());
    }

    #[test]
    fn ttl_applies_only_without_explicit_freshness_and_to_default_cacheable_statuses() {
        let now = SystemTime::now();
        let without = policy();
        assert!(!without.decide(&resp(200, &[]), now).is_cacheable());
        let with = Policy {
            ttl: Some(Duration::from_secs(60)),
            ..policy()
        };
        let c = with.decide(&resp(200, &[]), now);
        assert_eq!(fresh_for(&c, now), Some(Duration::from_secs(60)));
        let c = with.decide(&resp(200, &[("cache-control", "max-age=5")]), now);
        assert_eq!(fresh_for(&c, now), Some(Duration::from_secs(5)));
        assert!(!with.decide(&resp(500, &[]), now).is_cacheable());
        assert!(with.decide(&resp(404, &[]), now).is_cacheable());
    }

    #[test]
    fn stale_if_error_comes_from_the_answer_else_the_route() {
        let now = SystemTime::now();
        let p = policy();
        let meta = p
            .decide(&resp(200, &[("cache-control", "max-age=1")]), now)
            .unwrap_meta();
        assert_eq!(meta.stale_if_error_sec(), 600);
        let meta = p
            .decide(
                &resp(200, &[("cache-control", "max-age=1, stale-if-error=7")]),
                now,
            )
            .unwrap_meta();
        assert_eq!(meta.stale_if_error_sec(), 7);
        let meta = p
            .decide(
                &resp(200, &[("cache-control", "max-age=1, must-revalidate")]),
                now,
            )
            .unwrap_meta();
        assert_eq!(
            meta.stale_if_error_sec(),
            0,
            "must-revalidate forbids stale"
        );
    }

    #[test]
    fn credentials_bypass_unless_the_route_is_public() {
        let p = policy();
        assert_eq!(p.admits(&req(&[]), false), Admission::Use);
        assert_eq!(
            p.admits(&req(&[("authorization", "Bearer x")]), false),
            Admission::Bypass
        );
        assert_eq!(
            p.admits(&req(&[("cookie", "a=b")]), false),
            Admission::Bypass
        );
        assert_eq!(p.admits(&req(&[]), true), Admission::Bypass);
        let public = Policy {
            public: true,
            ..policy()
        };
        assert_eq!(
            public.admits(&req(&[("authorization", "Bearer x")]), true),
            Admission::Use
        );
        let post = RequestHeader::build("POST", b"/a", None).expect("req");
        assert_eq!(public.admits(&post, false), Admission::Off);
    }

    #[test]
    fn variance_follows_the_vary_header() {
        let now = SystemTime::now();
        let meta = policy()
            .decide(
                &resp(
                    200,
                    &[("cache-control", "max-age=9"), ("vary", "Accept-Language")],
                ),
                now,
            )
            .unwrap_meta();
        let es = variance(&meta, &req(&[("accept-language", "es")]));
        let en = variance(&meta, &req(&[("accept-language", "en")]));
        assert!(es.is_some());
        assert_ne!(es, en);
        assert_eq!(
            es,
            variance(&meta, &req(&[("accept-language", "es"), ("x-other", "1")]))
        );
        let plain = policy()
            .decide(&resp(200, &[("cache-control", "max-age=9")]), now)
            .unwrap_meta();
        assert_eq!(variance(&plain, &req(&[])), None);
    }

    #[test]
    fn config_problems_name_their_path() {
        let c = CacheConfig {
            max_size: Size(10),
            status_header: "bad header".into(),
            ..CacheConfig::default()
        };
        let p = c.validate("server.cache");
        assert!(
            p.iter().any(|m| m.starts_with("server.cache.max_size:")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("server.cache.max_object_size:")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("server.cache.status_header:")),
            "{p:?}"
        );
        let r = RouteCacheConfig {
            ttl: Some(Dur::secs(0)),
            ..RouteCacheConfig::default()
        };
        assert_eq!(
            r.validate("routes[1].cache"),
            vec!["routes[1].cache.ttl: must be greater than 0 (omit it to store only answers with explicit freshness)".to_string()]
        );
    }
}

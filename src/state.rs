//! The runtime tables built from one config: a [`Snapshot`]. Immutable once built; a
//! reload builds a new one and swaps it in ([`SharedState`]), carrying over pools whose
//! config is unchanged so their health state survives.
//!
//! Layer: above `config`, the edge policies, `cache`, `upstream`, `pages`, `routing`, `errors` and
//! `metrics::series`; must not import `auth`, `builtin`, `admin`, `reload`, `plan` or `proxy`.

use crate::config::{parse_cidr, Config, ConfigError, RetryConfig, RetryMethods, Timeouts};
pub use crate::errors::Fallback;
use crate::routing::{RouteKey, RouteTable};
use crate::upstream::retry::RetryPolicy;
use crate::upstream::tls::UpstreamTls;
use crate::upstream::Pool;
use arc_swap::ArcSwap;
use http::Method;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The snapshot every request loads once, in `new_ctx`.
pub type SharedState = Arc<ArcSwap<Snapshot>>;

/// Default connect timeout to a backend.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default per-read (and per-write) timeout with a backend.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on a whole upstream exchange.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(60);

/// `server.limits` as plain values.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    pub max_body_bytes: u64,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub keepalive_requests: u32,
    /// Write buffer of each new client connection (`server.limits.write_buffer`).
    pub write_buffer: usize,
    /// `server.http2`, for each new HTTP/2 connection.
    pub http2: crate::config::Http2Config,
}

/// A route, resolved: its pool, effective timeouts and body limit.
pub struct Route {
    pub index: usize,
    pub name: String,
    pub prefix: String,
    pub methods: Option<Vec<Method>>,
    pub pool: Arc<Pool>,
    pub strip_prefix: bool,
    pub rewrite_prefix: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub total_timeout: Duration,
    pub max_body_bytes: u64,
    pub retry: RetryPolicy,
    pub fallback: Option<Fallback>,
    pub auth: crate::config::AuthMode,
    pub compression: bool,
    pub cors: Arc<crate::edge::cors::Cors>,
    pub ip_rules: crate::edge::ip_rules::IpRules,
    pub headers: crate::edge::header_rules::HeaderRules,
    pub websocket: bool,
    pub limiters: Vec<Arc<crate::edge::ratelimit::Limiter>>,
    pub max_in_flight: Option<u32>,
    /// Requests of this route in flight now.
    pub in_flight: std::sync::atomic::AtomicU32,
    /// `max_in_flight_per_client`: requests in flight per client ip.
    pub client_slots: Option<crate::edge::in_flight::ClientSlots>,
    /// `cache`: this route's answers may be cached.
    pub cache: Option<crate::cache::Policy>,
    pub roles: Option<Vec<String>>,
    pub on_store_error: crate::config::StoreFailure,
    /// `audit`: its requests are recorded in the access audit (`crate::audit`).
    pub audit: crate::config::AuditMode,
    /// This route's request metrics, resolved once.
    pub series: crate::metrics::series::RouteSeries,
}

/// Route settings over pool settings over `defaults` over the built-in policy.
fn resolve_retry(layers: [&RetryConfig; 3]) -> RetryPolicy {
    let d = RetryPolicy::default();
    let first = |f: &dyn Fn(&RetryConfig) -> Option<Duration>| layers.iter().find_map(|l| f(l));
    RetryPolicy {
        retries: layers.iter().find_map(|l| l.retries).unwrap_or(d.retries),
        backoff_base: first(&|l| l.backoff_base.map(|v| v.0)).unwrap_or(d.backoff_base),
        backoff_cap: first(&|l| l.backoff_cap.map(|v| v.0)).unwrap_or(d.backoff_cap),
        retry_on: layers
            .iter()
            .find_map(|l| l.retry_on.clone())
            .unwrap_or(d.retry_on),
        all_methods: layers
            .iter()
            .find_map(|l| l.methods)
            .map_or(d.all_methods, |m| m == RetryMethods::All),
        idempotency_key: layers
            .iter()
            .find_map(|l| l.idempotency_key)
            .unwrap_or(d.idempotency_key),
        retry_buffer: layers
            .iter()
            .find_map(|l| l.retry_buffer)
            .map_or(d.retry_buffer, |s| s.0),
    }
}

pub struct Snapshot {
    pub config: Arc<Config>,
    pub table: RouteTable,
    pub routes: Vec<Arc<Route>>,
    pub pools: BTreeMap<String, Arc<Pool>>,
    pub trusted_proxies: Vec<IpNet>,
    pub limits: Limits,
    /// Templates, pages and assets.
    pub pages: Arc<crate::pages::Pages>,
    /// `defaults.cors`, for the gateway's own endpoints and pages.
    pub cors: Arc<crate::edge::cors::Cors>,
}

impl Snapshot {
    /// Builds every table from `config`. Pools whose config equals one in `previous` are
    /// reused as they are. All problems are reported together, with their config paths.
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
        Snapshot::build_with(config, previous, None)
    }

    /// [`Snapshot::build`] with the shared Redis client for distributed rate limits. Without
    /// one (e.g. `gatehouse check`), Redis-backed limits are built as local ones.
    pub fn build_with(
        config: Config,
        previous: Option<&Snapshot>,
        redis: Option<&fred::clients::Client>,
    ) -> Result<Snapshot, ConfigError> {
        let mut problems = Vec::new();
        let mut pools = BTreeMap::new();
        for (name, ucfg) in &config.upstreams {
            // TLS files are read on every build, so a reload picks up replaced certificates
            // and keys; a pool is carried over only when they are unchanged too.
            let tls = match UpstreamTls::load(
                &format!("upstreams.{name}.tls"),
                &ucfg.tls,
                &config.base_dir,
            ) {
                Ok(t) => t,
                Err(ps) => {
                    problems.extend(ps);
                    continue;
                }
            };
            if let Some(old) = previous.and_then(|p| p.pools.get(name)) {
                if &old.config == ucfg && old.tls == tls {
                    pools.insert(name.clone(), old.clone());
                    continue;
                }
            }
            match Pool::build(name, ucfg, tls) {
                Ok(p) => {
                    pools.insert(name.clone(), Arc::new(p));
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        let limits = &config.server.limits;
        let default_cors = Arc::new(crate::edge::cors::Cors::new(&config.defaults.cors));
        let mut routes = Vec::new();
        let mut keys = Vec::new();
        for (index, r) in config.routes.iter().enumerate() {
            let Some(pool) = pools.get(&r.upstream) else {
                if config.upstreams.contains_key(&r.upstream) {
                    continue; // pool failed to build; already reported
                }
                problems.push(format!(
                    "routes[{index}].upstream: unknown upstream {:?}",
                    r.upstream
                ));
                continue;
            };
            let pool_t = &config.upstreams[&r.upstream].timeouts;
            let pick = |f: fn(&Timeouts) -> Option<crate::config::Dur>, d: Duration| {
                f(&r.timeouts).or(f(pool_t)).map_or(d, |v| v.0)
            };
            let methods = r.methods.as_ref().map(|ms| {
                ms.iter()
                    .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                    .collect::<Vec<_>>()
            });
            keys.push(RouteKey {
                prefix: r.prefix.clone(),
                methods: methods.clone(),
                hosts: r
                    .hosts
                    .as_ref()
                    .map(|hs| hs.iter().map(|h| h.to_ascii_lowercase()).collect()),
            });
            let mut limiters = Vec::new();
            for (j, rl) in r.rate_limits.iter().enumerate() {
                // Carry a limiter over a reload when its route and settings are unchanged.
                let old = previous.and_then(|p| {
                    let name = r.name.clone().unwrap_or_else(|| r.upstream.clone());
                    p.routes.iter().find(|o| o.name == name).and_then(|o| {
                        o.limiters
                            .iter()
                            .find(|l| l.name() == rl.name && l.config() == rl)
                            .cloned()
                    })
                });
                if let Some(l) = old {
                    limiters.push(l);
                    continue;
                }
                let mut cfg = rl.clone();
                if redis.is_none() {
                    cfg.backend = crate::edge::ratelimit::Backend::Local;
                }
                match crate::edge::ratelimit::Limiter::new(&cfg, redis.cloned()) {
                    Ok(l) => limiters.push(Arc::new(l.remember(rl.clone()))),
                    Err(e) => problems.push(format!("routes[{index}].rate_limits[{j}]: {e}")),
                }
            }
            routes.push(Arc::new(Route {
                index,
                limiters,
                max_in_flight: r.max_in_flight,
                in_flight: std::sync::atomic::AtomicU32::new(0),
                client_slots: r
                    .max_in_flight_per_client
                    .map(crate::edge::in_flight::ClientSlots::new),
                cache: r.cache.as_ref().map(crate::cache::Policy::new),
                name: r.name.clone().unwrap_or_else(|| r.upstream.clone()),
                prefix: r.prefix.clone(),
                methods,
                pool: pool.clone(),
                strip_prefix: r.strip_prefix,
                rewrite_prefix: r.rewrite_prefix.clone(),
                connect_timeout: pick(|t| t.connect, DEFAULT_CONNECT_TIMEOUT),
                read_timeout: pick(|t| t.read, DEFAULT_READ_TIMEOUT),
                total_timeout: pick(|t| t.total, DEFAULT_TOTAL_TIMEOUT),
                max_body_bytes: r.max_body_bytes.map_or(limits.max_body_bytes.0, |s| s.0),
                retry: resolve_retry([
                    &r.retry,
                    &config.upstreams[&r.upstream].retry,
                    &config.defaults.retry,
                ]),
                fallback: r.fallback.as_ref().map(|f| Fallback {
                    status: f.status,
                    headers: f
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    body: f.body.as_ref().map(|b| bytes::Bytes::from(b.to_string())),
                    template: f.template.clone(),
                }),
                auth: r.auth,
                audit: r.audit,
                compression: r.compression,
                cors: match &r.cors {
                    Some(c) => Arc::new(crate::edge::cors::Cors::new(c)),
                    None => default_cors.clone(),
                },
                ip_rules: crate::edge::ip_rules::IpRules::new(&r.ip_rules),
                headers: crate::edge::header_rules::HeaderRules::new(&r.headers),
                websocket: r.websocket,
                roles: r.roles.clone(),
                on_store_error: r.on_store_error,
                series: Default::default(),
            }));
        }
        let tls = &config.server.tls;
        if !tls.listen.is_empty() || !tls.certificates.is_empty() {
            problems.extend(tls.validate(&config.base_dir));
        }
        let pages = match crate::pages::Pages::build(&config, &pools) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                problems.extend(e.problems);
                None
            }
        };
        if let Some(p) = &pages {
            for (i, r) in config.routes.iter().enumerate() {
                if let Some(t) = r.fallback.as_ref().and_then(|f| f.template.as_ref()) {
                    if !p.has_template(t) {
                        problems.push(format!(
                            "routes[{i}].fallback.template: no template {t:?} in web.templates"
                        ));
                    }
                }
            }
        }
        let (Some(pages), true) = (pages, problems.is_empty()) else {
            return Err(ConfigError { problems });
        };
        let trusted_proxies = config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|t| parse_cidr(t))
            .collect();
        Ok(Snapshot {
            table: RouteTable::new(keys),
            routes,
            pools,
            trusted_proxies,
            limits: Limits {
                max_header_bytes: limits.max_header_bytes.0 as usize,
                max_connections: limits.max_connections,
                max_connections_per_ip: limits.max_connections_per_ip,
                max_body_bytes: limits.max_body_bytes.0,
                header_timeout: limits.header_timeout.0,
                keepalive_timeout: limits.keepalive_timeout.0,
                keepalive_requests: limits.keepalive_requests,
                write_buffer: limits.write_buffer.0 as usize,
                http2: config.server.http2,
            },
            pages,
            cors: default_cors,
            config: Arc::new(config),
        })
    }

    /// Runs a first health check on every pool that has one, so dead backends are out
    /// before traffic arrives (pingora starts every backend as healthy).
    pub async fn prime_health(&self) {
        let checks = self
            .pools
            .values()
            .filter(|p| p.has_health_check())
            .map(|p| p.run_check());
        futures_join_all(checks).await;
    }
}

/// Polls every future on this task until all are done (they borrow the snapshot, so they
/// cannot be spawned).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut pending: Vec<_> = futs.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

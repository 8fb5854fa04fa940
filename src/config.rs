//! `gateway.yaml`: load → interpolate env → parse (strict) → validate (all problems, with paths).
//!
//! This module owns the file format only. It does not build runtime tables (that is
//! [`crate::state`]) and never touches sockets, so `gatehouse check` can run it anywhere.
//! Every struct denies unknown fields: a typo is an error, not a silently ignored key.
//!
//! Layer: the bottom: the file format. Uses only the leaf `routing` (a path's normal form) and its
//! own children. Must not import `state`, `cache`, `upstream`, `metrics`, `auth`, `pages`,
//! `errors`, `plan`, `proxy`, `edge::tls` or `edge::listener`. (The config shapes of the edge
//! policies are still defined in `edge::cors`, `edge::ip_rules`, `edge::header_rules` and
//! `edge::ratelimit`, leaves that import nothing back; they belong here next.)

pub mod cache;
mod interpolate;
pub mod role;
pub mod telemetry;
pub mod tls;
pub mod units;
pub mod validate;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

pub use units::{Dur, Size};
pub use validate::{parse_backend_url, parse_cidr, BackendUrl, HashKeySpec};

/// A config that failed to load, with every problem found, each prefixed by its path.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    pub fn one(problem: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![problem.into()],
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Upstream pools by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes, matched by longest path prefix on whole segments.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Settings every pool and route inherits unless it sets its own.
    #[serde(default)]
    pub defaults: Defaults,
    /// Users, tokens, sessions, cookies, login protection.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Server-rendered pages, error pages and static assets.
    #[serde(default)]
    pub web: WebConfig,
    /// OpenTelemetry tracing (off unless an endpoint is configured).
    #[serde(default)]
    pub telemetry: telemetry::TelemetryConfig,
    /// Folder relative paths in the file are resolved against (the config file's folder).
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
}

/// `web:` — pages rendered with minijinja, and static assets.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Template folder (relative to the config file). Default `templates`.
    pub templates: String,
    /// Asset folder served under `assets_prefix`. Default `assets`.
    pub assets: String,
    /// URL prefix of the assets. Default `/assets/`.
    pub assets_prefix: String,
    pub site: SiteConfig,
    pub pages: Vec<PageConfig>,
    /// Timeout of one page data source. Default 3s.
    pub data_timeout: Dur,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            templates: "templates".into(),
            assets: "assets".into(),
            assets_prefix: "/assets/".into(),
            site: SiteConfig::default(),
            pages: Vec::new(),
            data_timeout: Dur::secs(3),
        }
    }
}

/// `web.site:` — given to every template as `site`.
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    pub name: String,
    pub lang: String,
    pub tagline: String,
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            name: "PredictHealth".into(),
            lang: "es".into(),
            tagline: "Salud predictiva para pacientes, médicos e instituciones".into(),
        }
    }
}

/// `web.pages[i]:` — a page: path → template, with access rules and data sources.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PageConfig {
    /// Exact path (normalised form).
    pub path: String,
    /// Template name under `web.templates`.
    pub template: String,
    pub title: String,
    #[serde(default)]
    pub auth: AuthMode,
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// Data sources: name → GET to an upstream pool path; `{user_id}`, `{role}` and
    /// `{session_id}` are replaced with the signed-in user's values.
    #[serde(default)]
    pub data: BTreeMap<String, DataSourceConfig>,
}

/// `web.pages[i].data.NAME:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSourceConfig {
    pub upstream: String,
    pub path: String,
}

/// `auth:` — identity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `postgres://…` or `sqlite://path`; empty means the SQLite file `gatehouse.db`.
    pub database_url: String,
    /// Apply pending migrations at start-up. Default true.
    pub migrate_on_start: bool,
    /// `redis://…` (also sentinel/cluster forms); empty means the in-process store.
    pub redis_url: String,
    /// Bound on every session-store call; a down store fails requests within it. Default 500ms.
    pub store_timeout: Dur,
    pub jwt: JwtConfig,
    pub sessions: SessionsConfig,
    pub cookies: CookieConfig,
    pub login: LoginConfig,
    /// Origins allowed to make state-changing requests authenticated by cookie (CSRF),
    /// besides the gateway's own origin.
    pub trusted_origins: OneOrMany,
    /// Per-role settings (`patient`, `doctor`, `institution`, `admin`).
    pub roles: BTreeMap<String, RoleConfig>,
}

/// `auth.roles.ROLE:`
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    pub sessions: RoleSessionsConfig,
}

/// `auth.roles.ROLE.sessions:` — this role's own limits; unset ones are `auth.sessions`'.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoleSessionsConfig {
    pub idle_timeout: Option<Dur>,
    pub absolute_lifetime: Option<Dur>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            database_url: String::new(),
            migrate_on_start: true,
            redis_url: String::new(),
            store_timeout: Dur::millis(500),
            jwt: JwtConfig::default(),
            sessions: SessionsConfig::default(),
            cookies: CookieConfig::default(),
            login: LoginConfig::default(),
            trusted_origins: OneOrMany::default(),
            roles: BTreeMap::new(),
        }
    }
}

/// `auth.jwt:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// HS256 (default), RS256, ES256 or EdDSA.
    pub algorithm: String,
    /// HS256 secret, at least 32 bytes. Empty: a random secret per process (tokens die on restart).
    pub secret: String,
    /// PEM private key file (RS256, ES256, EdDSA); empty counts as unset.
    #[serde(deserialize_with = "empty_as_none")]
    pub private_key: Option<String>,
    /// PEM public key file matching `private_key`; empty counts as unset.
    #[serde(deserialize_with = "empty_as_none")]
    pub public_key: Option<String>,
    /// Key id put in new tokens' headers.
    pub kid: Option<String>,
    /// Older keys that still verify (rotation).
    pub verify_keys: Vec<VerifyKey>,
    pub issuer: String,
    pub audience: String,
    /// Clock skew allowed for exp, nbf and iat. Default 30s.
    pub leeway: Dur,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithm: "HS256".into(),
            secret: String::new(),
            private_key: None,
            public_key: None,
            kid: None,
            verify_keys: Vec::new(),
            issuer: "gatehouse".into(),
            audience: "predicthealth".into(),
            leeway: Dur::secs(30),
        }
    }
}

/// `auth.jwt.verify_keys[i]:` — a key that verifies but no longer signs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VerifyKey {
    pub kid: String,
    /// HS256: the secret; otherwise unused.
    #[serde(default)]
    pub secret: Option<String>,
    /// RS256/ES256/EdDSA: PEM public key file.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// `auth.sessions:` — keys and lifetimes in the session store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    pub access_prefix: String,
    pub refresh_prefix: String,
    pub access_ttl: Dur,
    pub refresh_ttl: Dur,
    /// No session lives past this age, whatever its activity (NIST SP 800-63B AAL2: 12h).
    pub absolute_lifetime: Dur,
    /// A session with no activity for this long ends (AAL2: 30m; HIPAA automatic logoff).
    pub idle_timeout: Dur,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            access_prefix: "access_token:".into(),
            refresh_prefix: "refresh_token:".into(),
            access_ttl: Dur::secs(15 * 60),
            refresh_ttl: Dur::secs(7 * 86_400),
            absolute_lifetime: Dur::secs(12 * 3600),
            idle_timeout: Dur::secs(30 * 60),
        }
    }
}

/// `auth.cookies:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CookieConfig {
    /// The access-token cookie. Default `predicthealth_session`.
    pub name: String,
    /// The refresh-token cookie (Path limited to the auth endpoints).
    pub refresh_name: String,
    pub same_site: SameSite,
    pub secure: SecureMode,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "predicthealth_session".into(),
            refresh_name: "predicthealth_refresh".into(),
            same_site: SameSite::Strict,
            secure: SecureMode::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// `Secure` on cookies: `auto` when TLS is terminated here or by a trusted proxy.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecureMode {
    Auto,
    Always,
    Never,
}

/// `auth.login:` — brute-force protection.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// Failed logins per account within `window` before it is locked. Default 5.
    pub max_failures_per_account: u64,
    /// Failed logins per client ip within `window` before it is locked. Default 20.
    pub max_failures_per_ip: u64,
    /// Window of the counters; a lock lasts until it ends. Default 15m.
    pub window: Dur,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            max_failures_per_account: 5,
            max_failures_per_ip: 20,
            window: Dur::secs(15 * 60),
        }
    }
}

/// `routes[i].auth`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    None,
    Optional,
    Required,
}

/// `routes[i].on_store_error`: what a protected route does when the session store is down.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreFailure {
    /// 503 (default).
    #[default]
    FailClosed,
    /// Accept a valid token without its live-session check.
    FailOpen,
}

/// `defaults:` — global defaults, overridden per pool, then per route.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub retry: RetryConfig,
    /// CORS for every route without its own, and for the gateway's own endpoints.
    #[serde(default)]
    pub cors: crate::edge::cors::CorsConfig,
}

/// `retry:` (in `defaults`, a pool or a route). Unset fields inherit.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first attempt (0–10). Default 2.
    pub retries: Option<u32>,
    /// First backoff; each retry doubles it, full jitter. Default 50ms.
    pub backoff_base: Option<Dur>,
    /// Largest backoff. Default 1s.
    pub backoff_cap: Option<Dur>,
    /// Failures that may be retried: connect_error, timeout, reset, 502, 503, 504. Default all.
    pub retry_on: Option<Vec<String>>,
    /// `idempotent` (default: GET, HEAD, OPTIONS, PUT, DELETE) or `all`.
    pub methods: Option<RetryMethods>,
    /// Also retry non-idempotent requests that carry `Idempotency-Key`. Default false.
    pub idempotency_key: Option<bool>,
    /// Request bodies up to this size are kept for replay (at most 64KiB). Default 64KiB.
    pub retry_buffer: Option<Size>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RetryMethods {
    Idempotent,
    All,
}

/// `upstreams.NAME.circuit_breaker:` — per-backend breaker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    pub enabled: bool,
    /// Consecutive failures that open it. Default 5.
    pub consecutive_failures: u32,
    /// Failure rate (percent) over `window` that opens it. Default 50.
    pub failure_rate: u32,
    pub window: Dur,
    /// Requests in the window before the rate counts. Default 20.
    pub min_requests: u32,
    /// First open period; doubles on each failed probe. Default 5s.
    pub cooldown: Dur,
    /// Longest open period. Default 60s.
    pub max_cooldown: Dur,
    /// Requests let through at once while half-open. Default 1.
    pub half_open_probes: u32,
    /// Upstream statuses counted as failures. Default 500 and 502–599.
    pub failure_statuses: Vec<u16>,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            enabled: true,
            consecutive_failures: 5,
            failure_rate: 50,
            window: Dur::secs(10),
            min_requests: 20,
            cooldown: Dur::secs(5),
            max_cooldown: Dur::secs(60),
            half_open_probes: 1,
            failure_statuses: std::iter::once(500).chain(502..=599).collect(),
        }
    }
}

/// `upstreams.NAME.retry_budget:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Retries as a fraction of requests over `window`. Default 0.2.
    pub ratio: f64,
    /// Retries always allowed per second. Default 3.
    pub min_per_second: u32,
    pub window: Dur,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: 0.2,
            min_per_second: 3,
            window: Dur::secs(10),
        }
    }
}

/// `routes[i].fallback:` — the answer when no backend can take a request.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body for API clients. Default: the standard error body.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Template (under `web.templates`) rendered for browsers instead of the error page;
    /// it gets the usual context plus `error`.
    #[serde(default)]
    pub template: Option<String>,
}

fn default_fallback_status() -> u16 {
    503
}

/// `server:` — listeners, threads, shutdown, limits, trusted proxies, logging.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public listen addresses (`host:port`). Default `0.0.0.0:8080`.
    pub listen: OneOrMany,
    /// Admin listener (health and, later, metrics). Default `127.0.0.1:9091`.
    pub admin_listen: Option<String>,
    /// Worker threads. Default 2.
    pub threads: usize,
    /// Let idle worker threads take tasks queued on busy ones (Tokio's multi-thread
    /// scheduler). `false` runs one single-threaded runtime per worker thread instead:
    /// cheaper scheduling, no balancing of connections between threads. Default true;
    /// with `threads: 1`, `gatehouse run` uses the single-threaded runtime (nothing to steal).
    pub work_stealing: bool,
    /// How long in-flight requests may drain after SIGTERM/SIGINT. Default 5s.
    pub grace_period: Dur,
    /// After the grace period, how long the runtimes get to stop. Default 1s.
    pub shutdown_timeout: Dur,
    /// Peers (CIDR or plain addresses) whose `X-Forwarded-For`/`-Proto` are believed.
    pub trusted_proxies: Vec<String>,
    pub limits: Limits,
    pub log: LogConfig,
    /// Reload when the config file's modification time changes (besides SIGHUP). Default false.
    pub watch_config: bool,
    /// Response compression (gzip, br, zstd) for clients that accept it.
    pub compression: CompressionConfig,
    /// Optional HTTPS listener.
    pub tls: tls::TlsConfig,
    /// The response cache's store (routes opt in with `routes[i].cache`).
    pub cache: cache::CacheConfig,
    /// Unix socket through which a new process takes over the listeners (`run --upgrade`).
    pub upgrade_sock: String,
    /// Where the process id is written.
    pub pid_file: String,
    /// Accepted and ignored: the hand-written HTTP/1 lane it switched on was removed (it
    /// framed upstream answers with its own code and let an upstream's stray bytes reach the
    /// next client). Every request is served by Pingora's proxy; `true` is warned about.
    pub native_http1: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: OneOrMany(vec!["0.0.0.0:8080".into()]),
            admin_listen: Some("127.0.0.1:9091".into()),
            threads: 2,
            work_stealing: true,
            grace_period: Dur::secs(5),
            shutdown_timeout: Dur::secs(1),
            trusted_proxies: Vec::new(),
            limits: Limits::default(),
            log: LogConfig::default(),
            watch_config: false,
            compression: CompressionConfig::default(),
            tls: tls::TlsConfig::default(),
            cache: cache::CacheConfig::default(),
            upgrade_sock: "/tmp/gatehouse_upgrade.sock".into(),
            native_http1: false,
            pid_file: "/tmp/gatehouse.pid".into(),
        }
    }
}

/// `server.compression:`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    pub enabled: bool,
    /// Bodies smaller than this are sent as they are. Default 1KiB.
    pub min_size: Size,
    /// Compression level (1–9). Default 6.
    pub level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            min_size: Size(1024),
            level: 6,
        }
    }
}

/// `server.limits:` — what nginx enforces by default, with nginx-like defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request header block (request line + headers). Over it → 431. Default 32KiB.
    pub max_header_bytes: Size,
    /// Largest request body unless a route says otherwise. Over it → 413. Default 10MiB.
    pub max_body_bytes: Size,
    /// Total time a client has to send the whole header block. Default 10s.
    pub header_timeout: Dur,
    /// How long an idle keep-alive connection is kept open. Default 60s.
    pub keepalive_timeout: Dur,
    /// Requests served on one keep-alive connection before it is closed. Default 1000.
    pub keepalive_requests: u32,
    /// Open client connections in total; more are closed at once. 0: no limit. Default 10000.
    pub max_connections: u32,
    /// Open connections per client ip (the TCP peer); more are closed at once. 0: no limit.
    pub max_connections_per_ip: u32,
    /// Write buffer of each client connection, kept for its life: small answers leave in
    /// one send. 0 saves that memory per idle connection at one more send per answer.
    /// Default 1460B (one TCP segment).
    pub write_buffer: Size,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: Size(32 * 1024),
            max_body_bytes: Size(10 * 1024 * 1024),
            header_timeout: Dur::secs(10),
            keepalive_timeout: Dur::secs(60),
            keepalive_requests: 1000,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            write_buffer: Size(1460),
        }
    }
}

/// `server.log:` — level (overridden by `LOG_LEVEL` through the default file), format.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
    pub format: LogFormat,
    /// One line per request on target `access`. Default true.
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            access_log: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// A string or a list of strings; a single string may hold a comma-separated list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, a comma-separated string, or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(split_list(v)))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<OneOrMany, E> {
                Ok(OneOrMany(Vec::new()))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<OneOrMany, E> {
                Ok(OneOrMany(Vec::new()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    out.push(item);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `""` (e.g. an unset `${VAR:-}`) is the same as an absent key.
fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<String>::deserialize(d)?;
    Ok(v.filter(|s| !s.trim().is_empty()))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// `upstreams.NAME:` — a pool of backends.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port` or `https://host:port` URLs (or `host:port`): a comma-separated
    /// string, or a list of strings or `{url, weight}` entries.
    pub backends: BackendList,
    #[serde(default)]
    pub balance: Balance,
    /// Key for `consistent_hash`: `client_ip` (default), `header:NAME` or `cookie:NAME`.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// `Host` sent upstream: absent keeps the client's; a value replaces it.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Defaults for routes to this pool.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// How long an idle pooled connection to a backend is kept. Default 60s.
    #[serde(default = "default_idle")]
    pub keepalive_idle: Dur,
    /// Retry defaults for routes to this pool.
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    /// TLS to this pool's `https://` backends.
    #[serde(default)]
    pub tls: UpstreamTlsConfig,
}

/// `upstreams.NAME.tls:` — how the pool's `https://` backends are reached. File paths are
/// relative to the config file; the files are read when the pool is built (start, `check`,
/// every reload). Loading them is [`crate::upstream::tls`]'s business.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsConfig {
    /// PEM file of the CA certificates the backends' certificates must chain to. Absent:
    /// the system's roots.
    #[serde(deserialize_with = "empty_as_none")]
    pub ca_file: Option<String>,
    /// Name sent as SNI and checked against the certificate. Absent: each backend URL's host.
    #[serde(deserialize_with = "empty_as_none")]
    pub server_name: Option<String>,
    /// Verify the backend's certificate (chain and name). Default true; `false` is warned
    /// about at start and by `gatehouse check`.
    pub verify: bool,
    /// PEM client certificate (chain) for mutual TLS; needs `client_key`.
    #[serde(deserialize_with = "empty_as_none")]
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(deserialize_with = "empty_as_none")]
    pub client_key: Option<String>,
}

impl Default for UpstreamTlsConfig {
    fn default() -> Self {
        UpstreamTlsConfig {
            ca_file: None,
            server_name: None,
            verify: true,
            client_cert: None,
            client_key: None,
        }
    }
}

fn default_idle() -> Dur {
    Dur::secs(60)
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackendList(pub Vec<BackendEntry>);

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendEntry {
    pub url: String,
    #[serde(default = "one")]
    pub weight: usize,
}

fn one() -> usize {
    1
}

impl<'de> Deserialize<'de> for BackendList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Url(String),
            Entry(BackendEntry),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<Item>),
        }
        let entry = |url: String| BackendEntry { url, weight: 1 };
        Ok(BackendList(match Raw::deserialize(d)? {
            Raw::One(s) => split_list(&s).into_iter().map(entry).collect(),
            Raw::Many(items) => items
                .into_iter()
                .flat_map(|i| match i {
                    Item::Url(s) => split_list(&s).into_iter().map(entry).collect(),
                    Item::Entry(e) => vec![e],
                })
                .collect(),
        }))
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Weighted round robin (weights default to 1).
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Ketama consistent hashing on `hash_key`.
    ConsistentHash,
}

/// `upstreams.NAME.health_check:` — active checks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// `http` (default) or `tcp`.
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    /// Path probed by `http` checks. Default `/health`.
    pub path: String,
    /// Statuses counted healthy. Default `[200]`.
    pub expected_status: Vec<u16>,
    /// Time between checks. Default 5s.
    pub interval: Dur,
    /// Connect and read timeout of one check. Default 1s.
    pub timeout: Dur,
    /// Consecutive successes that bring a backend back. Default 2.
    pub rise: usize,
    /// Consecutive failures that take a backend out. Default 3.
    pub fall: usize,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: HealthCheckKind::Http,
            path: "/health".into(),
            expected_status: vec![200],
            interval: Dur::secs(5),
            timeout: Dur::secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
}

/// Timeouts; every field optional so routes override pool defaults one by one.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP connect to a backend. Default 2s.
    pub connect: Option<Dur>,
    /// Each read from (and write to) a backend. Default 30s.
    pub read: Option<Dur>,
    /// The whole exchange with the upstream, from route match to the last byte. Default 60s.
    pub total: Option<Dur>,
}

/// `routes[i]:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label for logs and metrics. Default: the upstream name.
    #[serde(default)]
    pub name: Option<String>,
    /// Path prefix, matched on whole segments (`/api/v1/doctors` never matches `/api/v1/doctorsX`).
    pub prefix: String,
    pub upstream: String,
    /// Allowed methods; absent means any (TRACE is always refused).
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Host names (without port) this route answers; absent means any.
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    /// Remove the prefix before forwarding (`/api/v1/doctors/7` → `/7`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the prefix with this one before forwarding.
    #[serde(default)]
    pub rewrite_prefix: Option<String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Body limit for this route; default `server.limits.max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<Size>,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Answer when no backend can take the request; default 503 with `Retry-After`.
    #[serde(default)]
    pub fallback: Option<FallbackConfig>,
    /// `none` (default), `optional` or `required`.
    #[serde(default)]
    pub auth: AuthMode,
    /// Roles allowed (with `auth: required`); absent means any signed-in user.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    #[serde(default)]
    pub on_store_error: StoreFailure,
    /// Compress this route's responses (when `server.compression` is on). Default true.
    #[serde(default = "yes")]
    pub compression: bool,
    /// CORS for this route; default `defaults.cors`.
    #[serde(default)]
    pub cors: Option<crate::edge::cors::CorsConfig>,
    /// Client addresses allowed / denied (CIDRs), on the real client ip.
    #[serde(default)]
    pub ip_rules: crate::edge::ip_rules::IpRulesConfig,
    /// Request and response header edits.
    #[serde(default)]
    pub headers: crate::edge::header_rules::HeaderRulesConfig,
    /// Pass WebSocket upgrades through (authentication applies to the upgrade request).
    #[serde(default)]
    pub websocket: bool,
    /// Rate limits, all of which must allow a request.
    #[serde(default)]
    pub rate_limits: Vec<crate::edge::ratelimit::RateLimitConfig>,
    /// Requests of this route in flight at once; more get 503 with `Retry-After`.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Requests of this route in flight at once from one client ip; more get 429 with
    /// `Retry-After`.
    #[serde(default)]
    pub max_in_flight_per_client: Option<u32>,
    /// Cache this route's GET and HEAD answers (see `server.cache` for the store).
    #[serde(default)]
    pub cache: Option<cache::RouteCacheConfig>,
}

fn yes() -> bool {
    true
}

impl Config {
    /// Reads `path`, expands environment variables and parses and validates it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(format!("{}: cannot read: {e}", path.display())))?;
        let mut c = Config::from_yaml_str(&text)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            c.base_dir = dir.to_path_buf();
        }
        Ok(c)
    }

    /// A path from the file, resolved against the config file's folder.
    pub fn resolve(&self, p: &str) -> std::path::PathBuf {
        let p = std::path::Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Same as [`Config::load`] for text already in memory (tests, reload).
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_str_with_env(text, |k| std::env::var(k).ok())
    }

    pub fn from_yaml_str_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let expanded =
            interpolate::expand(text, env).map_err(|problems| ConfigError { problems })?;
        let config: Config = if expanded.trim().is_empty() {
            serde_yaml::from_str("{}")
        } else {
            serde_yaml::from_str(&expanded)
        }
        .map_err(|e| ConfigError::one(describe_yaml_error(&e)))?;
        let problems = validate::validate(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// serde_yaml puts the path first (`routes[0]: unknown field ...`); keep it, and make the
/// location read as a location.
fn describe_yaml_error(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) if !msg.contains("at line") => {
            format!("{msg} (line {}, column {})", loc.line(), loc.column())
        }
        _ => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str_with_env(text, |_| None)
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").expect("defaults");
        assert_eq!(c.server, ServerConfig::default());
        assert!(c.routes.is_empty());
    }

    #[test]
    fn unknown_keys_are_errors_with_their_path() {
        let err = parse("routes:\n  - prefix: /a\n    upstream: a\n    upstrem: b\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("routes[0]"), "{text}");
        assert!(text.contains("unknown field `upstrem`"), "{text}");
    }

    #[test]
    fn backends_accept_comma_lists_and_weighted_entries() {
        let c = parse(
            "upstreams:\n  a:\n    backends: http://127.0.0.1:1, http://127.0.0.1:2\n  b:\n    backends:\n      - http://127.0.0.1:3\n      - {url: http://127.0.0.1:4, weight: 3}\n",
        )
        .expect("valid");
        assert_eq!(c.upstreams["a"].backends.0.len(), 2);
        assert_eq!(c.upstreams["b"].backends.0[1].weight, 3);
    }

    #[test]
    fn units_are_parsed_into_real_types() {
        let c = parse("server:\n  grace_period: 250ms\n  limits:\n    max_body_bytes: 1MiB\n")
            .expect("valid");
        assert_eq!(c.server.grace_period, Dur::millis(250));
        assert_eq!(c.server.limits.max_body_bytes, Size(1024 * 1024));
        let err = parse("server:\n  grace_period: soon\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.grace_period") && err.contains("invalid duration"),
            "{err}"
        );
    }
}

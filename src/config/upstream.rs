//! `upstreams.NAME:` — a pool of backends: balancing, health checks, timeouts, retries, the
//! retry budget, the circuit breaker and TLS to the backends.

use serde::Deserialize;

use super::{empty_as_none, split_list, Dur, Size};

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

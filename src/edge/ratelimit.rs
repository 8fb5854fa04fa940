//! Rate limits: one [`Limiter`] per configured limit, checked once per request.
//!
//! The algorithm is GCRA (generic cell rate algorithm), which is exact and keeps O(1) state
//! per key: the theoretical arrival time (TAT). A limit of `rate` = N per `period` has the
//! emission interval `T = period / N`; with `burst` = B (default N) a key may send B requests
//! at once into an idle bucket, is refused on the B+1st, and regains one request every `T`.
//! A refused request changes nothing.
//!
//! Two backends:
//!
//! * `local`: in-process, 16 `Mutex<HashMap<key, TAT>>` shards. An entry whose TAT is in the
//!   past means exactly the same as no entry, so sweeps (opportunistic, on writes) drop them
//!   and memory is bounded by the keys active within the last `burst × T`. A hard cap of
//!   [`MAX_KEYS`] entries per limiter holds even under a flood of distinct keys: past it,
//!   unknown keys are allowed without being counted (logged once), and a full shard is swept
//!   again at most once a second.
//! * `redis`: shared by every gateway instance. One Lua script (EVAL) does the whole check
//!   atomically on Redis' own clock (`TIME`), so instances with skewed clocks share one limit
//!   exactly. Keys are `ratelimit:<name>:<key>`, expiring when their TAT passes. Each call is
//!   bounded by [`REDIS_TIMEOUT`] and fails at once while the connection is down; failures give
//!   [`Decision::StoreError`] and the caller applies [`OnStoreError`].
//!
//! This module does not extract keys from requests (the caller passes `ip:1.2.3.4`,
//! `user:42`, ...), build responses, or count metrics. [`Decision::write_headers`] renders
//! the `RateLimit-*` and `Retry-After` headers.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use fred::clients::Client;
use fred::prelude::Options;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use tokio::time::Instant;

/// Most entries a local limiter holds (split evenly over its shards).
pub const MAX_KEYS: usize = 100_000;
/// Bound on every Redis call.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// Our own guard past [`REDIS_TIMEOUT`], in case fred's timeout does not fire.
const GUARD_MARGIN: Duration = Duration::from_millis(200);
const SHARDS: usize = 16;
/// The finest emission interval: at most one million requests per second.
const MIN_INTERVAL: Duration = Duration::from_micros(1);
/// The longest time a full bucket may take to refill (`burst × T`).
const MAX_REFILL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longer keys are stored as a prefix plus a hash, so one key costs a bounded amount.
const MAX_KEY_LEN: usize = 256;
/// A shard is swept at least this often (on its next write) ...
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// ... and when it has doubled since its last sweep, but not below this size.
const SWEEP_MIN_LEN: usize = 256;
/// A full shard is swept again at most this often.
const FULL_SWEEP_GAP: Duration = Duration::from_secs(1);

/// A clock for [`Limiter::with_clock`] (the same type as the session store's).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// One `rate_limits` entry of a route, as written in `gateway.yaml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Label for logs/metrics, and part of the Redis key; unique per route. Letters, digits,
    /// `_`, `-` or `.`, at most 64.
    pub name: String,
    /// What identifies a client: "client_ip" (default), "user" (the signed-in user id;
    /// anonymous requests fall back to client_ip), "header:NAME", "claim:NAME" (a JWT claim of
    /// the signed-in user: sub, role, sid). A header is only meaningful when something trusted
    /// sets it: a client may send any value.
    #[serde(default = "default_key")]
    pub key: String,
    /// "100/1m", "10/s", "5000/1h" — count / period (units s, m, h; number optional → 1).
    pub rate: String,
    /// Most requests accepted at once by an idle key; default: the rate's count.
    #[serde(default)]
    pub burst: Option<u32>,
    /// "local" (default, in-process) or "redis" (shared by every gateway instance; needs
    /// auth.redis_url).
    #[serde(default)]
    pub backend: Backend,
    /// When Redis is unreachable: "allow" (default; counted and logged by the caller) or "deny".
    #[serde(default)]
    pub on_store_error: OnStoreError,
}

fn default_key() -> String {
    "client_ip".into()
}

/// Where a limit keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In-process: each gateway instance counts on its own.
    #[default]
    Local,
    /// In Redis: one count shared by every instance.
    Redis,
}

/// What the caller does with [`Decision::StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Let the request through (fail open).
    #[default]
    Allow,
    /// Refuse it (fail closed).
    Deny,
}

/// What identifies a client, parsed from [`RateLimitConfig::key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    /// The client address (after trusted-proxy resolution).
    ClientIp,
    /// The signed-in user's id; anonymous requests fall back to the client address.
    User,
    /// The value of a request header (name lower-cased).
    Header(HeaderName),
    /// A claim of the signed-in user's token: `sub`, `role` or `sid`.
    Claim(String),
}

/// The claims a key may name.
const CLAIMS: [&str; 3] = ["sub", "role", "sid"];

impl KeySpec {
    /// Parses `client_ip`, `user`, `header:NAME` or `claim:NAME`.
    pub fn parse(s: &str) -> Result<KeySpec, String> {
        if let Some(name) = s.strip_prefix("header:") {
            return HeaderName::from_bytes(name.as_bytes())
                .map(KeySpec::Header)
                .map_err(|_| format!("{name:?} is not a valid header name"));
        }
        if let Some(claim) = s.strip_prefix("claim:") {
            return match CLAIMS.contains(&claim) {
                true => Ok(KeySpec::Claim(claim.to_owned())),
                false => Err(format!(
                    "unknown claim {claim:?} (expected sub, role or sid)"
                )),
            };
        }
        match s {
            "client_ip" => Ok(KeySpec::ClientIp),
            "user" => Ok(KeySpec::User),
            _ => Err(format!(
                "unknown key {s:?} (expected client_ip, user, header:NAME or claim:NAME)"
            )),
        }
    }
}

/// Parses a rate, `COUNT/PERIOD`: `100/1m`, `10/s`, `5000/1h`. PERIOD is an optional whole
/// number (default 1) and a unit `s`, `m` or `h`. Both must be at least 1.
pub fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let err = |why: &str| {
        format!("invalid rate {s:?}: {why} (expected COUNT/PERIOD, e.g. 100/1m, 10/s, 5000/1h)")
    };
    let (count, period) = s.trim().split_once('/').ok_or_else(|| err("missing '/'"))?;
    let count = count.trim();
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("COUNT must be a whole number"));
    }
    let count: u32 = count.parse().map_err(|_| err("COUNT is too large"))?;
    if count == 0 {
        return Err(err("COUNT must be at least 1"));
    }
    let period = period.trim();
    let digits = period.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = period.split_at(digits);
    let number: u64 = match number {
        "" => 1,
        n => n.parse().map_err(|_| err("PERIOD is too large"))?,
    };
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "" => return Err(err("PERIOD needs a unit: s, m or h")),
        other => return Err(err(&format!("unknown unit {other:?} (use s, m or h)"))),
    };
    if number == 0 {
        return Err(err("PERIOD must be at least 1"));
    }
    let secs = number
        .checked_mul(unit_secs)
        .ok_or_else(|| err("PERIOD is too large"))?;
    Ok((count, Duration::from_secs(secs)))
}

/// The compiled numbers of one limit.
#[derive(Debug, Clone, Copy)]
struct Params {
    /// The rate's count (reported as the limit).
    rate: u32,
    /// The emission interval `T`: one request regained per `T`.
    interval: Duration,
    /// `burst × T`: how far ahead of now a key's TAT may run.
    capacity: Duration,
}

/// Compiles `rate` and `burst`; an error names the field at fault.
fn params(rate: &str, burst: Option<u32>) -> Result<Params, (&'static str, String)> {
    let (count, period) = parse_rate(rate).map_err(|e| ("rate", e))?;
    let interval = period / count;
    if interval < MIN_INTERVAL {
        return Err((
            "rate",
            format!("{rate:?} is too fast (at most 1000000 per second)"),
        ));
    }
    let burst = burst.unwrap_or(count);
    if burst == 0 {
        return Err(("burst", "must be at least 1".into()));
    }
    let capacity = interval.saturating_mul(burst);
    if capacity > MAX_REFILL {
        let field = if burst == count { "rate" } else { "burst" };
        let msg = format!("a burst of {burst} at {rate} takes more than 30 days to refill");
        return Err((field, msg));
    }
    Ok(Params {
        rate: count,
        interval,
        capacity,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl RateLimitConfig {
    /// Every problem of this entry, each prefixed with `at` and the field:
    /// `routes[2].rate_limits[0].rate: invalid rate "x": ...`. Empty when valid. (Whether
    /// `redis` is configured and names are unique per route is the config's to check.)
    pub fn validate(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        if !valid_name(&self.name) {
            p.push(format!(
                "{at}.name: {:?} must be 1 to 64 letters, digits, '_', '-' or '.'",
                self.name
            ));
        }
        if let Err(e) = KeySpec::parse(&self.key) {
            p.push(format!("{at}.key: {e}"));
        }
        if let Err((field, e)) = params(&self.rate, self.burst) {
            p.push(format!("{at}.{field}: {e}"));
        }
        p
    }
}

/// The outcome of one [`Limiter::check`].
///
/// Durations are exact (to the nanosecond locally, the microsecond from Redis); headers round
/// them up to whole seconds. `reset` is always the time
/// until the key's bucket is full again (every `burst` request available), counting this
/// request if it was allowed.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Let it through. `limit` is the rate's count; `remaining` is how many more requests
    /// would be allowed right now (it counts against `burst`, so it may exceed `limit` when
    /// `burst` does).
    Allow {
        limit: u32,
        remaining: u32,
        reset: Duration,
    },
    /// Answer 429. `retry_after` is the time until the next request will be allowed.
    Deny {
        limit: u32,
        retry_after: Duration,
        reset: Duration,
    },
    /// The store (Redis) failed or timed out; the caller applies [`OnStoreError`].
    StoreError,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Decision {
    /// Sets (replacing) `RateLimit-Limit: <limit>`, `RateLimit-Remaining: <remaining>` (0 on
    /// Deny) and `RateLimit-Reset: <reset, seconds, rounded up>`, and on Deny also
    /// `Retry-After: <retry_after, seconds, rounded up, at least 1>`. Writes nothing for
    /// [`Decision::StoreError`].
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let (limit, remaining, reset, retry) = match self {
            Decision::Allow {
                limit,
                remaining,
                reset,
            } => (*limit, *remaining, *reset, None),
            Decision::Deny {
                limit,
                retry_after,
                reset,
            } => (*limit, 0, *reset, Some(*retry_after)),
            Decision::StoreError => return,
        };
        let set = |h: &mut HeaderMap, name: &'static str, v: u64| {
            h.insert(HeaderName::from_static(name), HeaderValue::from(v));
        };
        set(headers, "ratelimit-limit", u64::from(limit));
        set(headers, "ratelimit-remaining", u64::from(remaining));
        set(headers, "ratelimit-reset", ceil_secs(reset));
        if let Some(retry) = retry {
            set(headers, "retry-after", ceil_secs(retry).max(1));
        }
    }
}

/// GCRA on durations relative to now. `backlog` is how far the key's TAT lies ahead of now
/// (zero for a new or idle key). Returns the decision and, if allowed, the new backlog.
fn gcra(backlog: Duration, p: &Params) -> (Decision, Option<Duration>) {
    // A TAT further ahead than the capacity cannot arise; clamp in case it somehow does.
    let backlog = backlog.min(p.capacity);
    let next = backlog + p.interval;
    if next > p.capacity {
        let retry_after = next - p.capacity;
        let d = Decision::Deny {
            limit: p.rate,
            retry_after,
            reset: backlog,
        };
        return (d, None);
    }
    let left = (p.capacity - next).as_nanos() / p.interval.as_nanos();
    let d = Decision::Allow {
        limit: p.rate,
        remaining: u32::try_from(left).unwrap_or(u32::MAX),
        reset: next,
    };
    (d, Some(next))
}

/// Keys longer than [`MAX_KEY_LEN`] become a prefix plus `#` and a 64-bit SipHash of the whole
/// key (std's fixed-key `DefaultHasher`, so every instance agrees on Redis keys).
fn bounded_key(key: &str) -> Cow<'_, str> {
    if key.len() <= MAX_KEY_LEN {
        return Cow::Borrowed(key);
    }
    let mut cut = MAX_KEY_LEN - 17;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    Cow::Owned(format!("{}#{:016x}", &key[..cut], h.finish()))
}

// ---------------------------------------------------------------------------------------------
// Local backend
// ---------------------------------------------------------------------------------------------

mod local;
mod remote;
use local::Local;
use remote::Remote;

enum Store {
    Local(Local),
    Redis(Remote),
}

/// One configured limit, compiled; shared by every request of its route.
pub struct Limiter {
    /// The settings it was built from (to carry it over an unchanged reload).
    config: RateLimitConfig,
    name: String,
    key_spec: KeySpec,
    on_store_error: OnStoreError,
    params: Params,
    store: Store,
}

impl Limiter {
    /// Compiles `cfg` (every problem of [`RateLimitConfig::validate`] is an error). The Redis
    /// backend needs `redis`, normally the session store's client (it must fail fast and
    /// reconnect on its own, as `RedisStore::connect` sets up); the local backend ignores it.
    pub fn new(cfg: &RateLimitConfig, redis: Option<Client>) -> Result<Limiter, String> {
        let at = format!("rate limit {:?}", cfg.name);
        let problems = cfg.validate(&at);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let key_spec = KeySpec::parse(&cfg.key)?;
        let params = params(&cfg.rate, cfg.burst).map_err(|(f, e)| format!("{at}.{f}: {e}"))?;
        let store = match (cfg.backend, redis) {
            (Backend::Local, _) => Store::Local(Local::new(MAX_KEYS)),
            (Backend::Redis, None) => {
                return Err(format!(
                    "{at}.backend: \"redis\" needs a Redis connection (auth.redis_url)"
                ))
            }
            (Backend::Redis, Some(client)) => Store::Redis(Remote {
                client,
                options: Options {
                    timeout: Some(REDIS_TIMEOUT),
                    fail_fast: true,
                    ..Options::default()
                },
                prefix: format!("ratelimit:{}:", cfg.name),
                interval_us: params.interval.as_micros().to_string(),
                capacity_us: params.capacity.as_micros().to_string(),
                failing: AtomicBool::new(false),
            }),
        };
        Ok(Limiter {
            config: cfg.clone(),
            name: cfg.name.clone(),
            key_spec,
            on_store_error: cfg.on_store_error,
            params,
            store,
        })
    }

    /// Replaces the local backend's clock (default: `tokio::time::Instant::now`), for tests.
    /// The Redis backend always uses the server's clock.
    pub fn with_clock(mut self, clock: Clock) -> Limiter {
        if let Store::Local(local) = &mut self.store {
            let now = clock();
            for s in &mut local.shards {
                s.get_mut()
                    .unwrap_or_else(PoisonError::into_inner)
                    .last_sweep = now;
            }
            local.clock = clock;
        }
        self
    }

    /// The configured name.
    /// Records the settings as written in the config (they may differ from what was built,
    /// e.g. a Redis limit built locally by `gatehouse check`).
    pub fn remember(mut self, cfg: RateLimitConfig) -> Limiter {
        self.config = cfg;
        self
    }

    /// The settings this limiter stands for.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What identifies a client.
    pub fn key_spec(&self) -> &KeySpec {
        &self.key_spec
    }

    /// What the caller does with [`Decision::StoreError`].
    pub fn on_store_error(&self) -> OnStoreError {
        self.on_store_error
    }

    /// Where the state is kept.
    pub fn backend(&self) -> Backend {
        match self.store {
            Store::Local(_) => Backend::Local,
            Store::Redis(_) => Backend::Redis,
        }
    }

    /// Checks and records one request for `key` (already extracted by the caller, e.g.
    /// "ip:1.2.3.4"). Keys longer than 256 bytes are shortened to a prefix and a hash.
    /// Local: never waits. Redis: finishes within ~[`REDIS_TIMEOUT`], and at once while the
    /// connection is down, with [`Decision::StoreError`] on any failure.
    pub async fn check(&self, key: &str) -> Decision {
        let key = bounded_key(key);
        match &self.store {
            Store::Local(l) => l.check(&self.name, &key, &self.params),
            Store::Redis(r) => r.check(&self.name, &key, &self.params).await,
        }
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.name)
            .field("key", &self.key_spec)
            .field("backend", &self.backend())
            .field("interval", &self.params.interval)
            .field("capacity", &self.params.capacity)
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::store::{RedisStore, SessionStore, DEFAULT_OP_TIMEOUT};
    use fred::interfaces::KeysInterface;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const SEC: fn(u64) -> Duration = Duration::from_secs;

    fn cfg(rate: &str, burst: Option<u32>) -> RateLimitConfig {
        RateLimitConfig {
            name: "api".into(),
            key: default_key(),
            rate: rate.into(),
            burst,
            backend: Backend::Local,
            on_store_error: OnStoreError::Allow,
        }
    }

    /// A manual clock and the function that moves it forward.
    fn manual_clock() -> (Clock, impl Fn(Duration)) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let read = now.clone();
        let clock: Clock = Arc::new(move || *read.lock().unwrap());
        (clock, move |d| *now.lock().unwrap() += d)
    }

    fn local(rate: &str, burst: Option<u32>) -> (Limiter, impl Fn(Duration)) {
        let (clock, advance) = manual_clock();
        let l = Limiter::new(&cfg(rate, burst), None).unwrap();
        (l.with_clock(clock), advance)
    }

    fn local_len(l: &Limiter) -> usize {
        match &l.store {
            Store::Local(s) => s.len(),
            Store::Redis(_) => unreachable!(),
        }
    }

    fn allowed(d: &Decision) -> bool {
        matches!(d, Decision::Allow { .. })
    }

    fn retry_after(d: &Decision) -> Duration {
        match d {
            Decision::Deny { retry_after, .. } => *retry_after,
            other => panic!("expected Deny, got {other:?}"),
        }
    }

    // ---- local -------------------------------------------------------------------------

    #[tokio::test]
    async fn allows_n_in_a_window_then_refuses() {
        let (l, _) = local("10/10s", None);
        for i in 0..10u32 {
            let d = l.check("ip:1").await;
            let reset = SEC(u64::from(i) + 1);
            let remaining = 9 - i;
            assert_eq!(
                d,
                Decision::Allow {
                    limit: 10,
                    remaining,
                    reset
                }
            );
        }
        let d = l.check("ip:1").await;
        assert_eq!(
            d,
            Decision::Deny {
                limit: 10,
                retry_after: SEC(1),
                reset: SEC(10)
            }
        );
        // Refused requests change nothing.
        assert_eq!(l.check("ip:1").await, d);
    }

    #[tokio::test]
    async fn one_more_every_period_over_n() {
        let (l, advance) = local("10/10s", None);
        for _ in 0..10 {
            assert!(allowed(&l.check("k").await));
        }
        advance(SEC(1) - Duration::from_nanos(1));
        assert_eq!(retry_after(&l.check("k").await), Duration::from_nanos(1));
        advance(Duration::from_nanos(1));
        assert_eq!(
            l.check("k").await,
            Decision::Allow {
                limit: 10,
                remaining: 0,
                reset: SEC(10)
            }
        );
        assert_eq!(retry_after(&l.check("k").await), SEC(1));
        // A full period refills the whole bucket, and no more.
        advance(SEC(10));
        let n = futures_count(&l, "k", 20).await;
        assert_eq!(n, 10);
    }

    async fn futures_count(l: &Limiter, key: &str, tries: usize) -> usize {
        let mut n = 0;
        for _ in 0..tries {
            n += usize::from(allowed(&l.check(key).await));
        }
        n
    }

    #[tokio::test]
    async fn steady_rate_is_never_refused() {
        let (l, advance) = local("3/1s", None);
        for _ in 0..1000 {
            assert!(allowed(&l.check("k").await));
            advance(Duration::from_nanos(333_333_333));
        }
        // 1/3 s does not divide evenly: the interval is rounded down to whole nanoseconds.
        assert_eq!(futures_count(&l, "k", 10).await, 3);
    }

    #[tokio::test]
    async fn burst_bounds_what_comes_at_once() {
        let (l, advance) = local("10/10s", Some(3));
        assert_eq!(futures_count(&l, "k", 10).await, 3);
        assert_eq!(retry_after(&l.check("k").await), SEC(1));
        advance(SEC(1));
        assert_eq!(futures_count(&l, "k", 10).await, 1);

        // burst 1: strictly one per interval.
        let (l, advance) = local("2/1s", Some(1));
        assert!(allowed(&l.check("k").await));
        assert_eq!(retry_after(&l.check("k").await), MS(500));
        advance(MS(500));
        assert!(allowed(&l.check("k").await));

        // burst above the rate: remaining counts against the burst.
        let (l, _) = local("10/10s", Some(20));
        let first = l.check("k").await;
        assert_eq!(
            first,
            Decision::Allow {
                limit: 10,
                remaining: 19,
                reset: SEC(1)
            }
        );
        assert_eq!(futures_count(&l, "k", 30).await, 19);
    }

    #[tokio::test]
    async fn keys_are_independent() {
        let (l, _) = local("2/1m", None);
        assert_eq!(futures_count(&l, "ip:1", 5).await, 2);
        assert_eq!(futures_count(&l, "ip:2", 5).await, 2);
        assert_eq!(futures_count(&l, "user:1", 5).await, 2);
        assert_eq!(local_len(&l), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_checks_are_exact() {
        let (l, _) = local("100/1h", None);
        let l = Arc::new(l);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { futures_count(&l, "k", 50).await })
            })
            .collect();
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap();
        }
        assert_eq!(n, 100);
    }

    #[tokio::test]
    async fn stale_entries_are_swept() {
        let (l, advance) = local("5/1s", None);
        for i in 0..20_000 {
            assert!(allowed(&l.check(&format!("old{i}")).await));
        }
        assert_eq!(local_len(&l), 20_000);
        advance(SEC(1));
        // New keys trigger size-based sweeps that drop the idle ones.
        for i in 0..20_000 {
            l.check(&format!("new{i}")).await;
        }
        assert!(local_len(&l) < 30_000, "{}", local_len(&l));
        // Time-based: after the sweep interval, one write per shard clears its idle keys.
        advance(SWEEP_INTERVAL);
        for i in 0..1000 {
            l.check(&format!("fresh{i}")).await;
        }
        assert_eq!(local_len(&l), 1000);
    }

    #[tokio::test]
    async fn key_table_is_capped() {
        let (clock, advance) = manual_clock();
        let mut l = Limiter::new(&cfg("1/1m", None), None).unwrap();
        l.store = Store::Local(Local::new(SHARDS * 4));
        let l = l.with_clock(clock);
        for i in 0..1000 {
            assert!(allowed(&l.check(&format!("k{i}")).await));
        }
        assert_eq!(local_len(&l), SHARDS * 4);
        // Keys already held are still limited; unknown ones pass uncounted.
        let held = match &l.store {
            Store::Local(s) => s.shards[0].lock().unwrap().tats.keys().next().cloned(),
            Store::Redis(_) => None,
        }
        .unwrap();
        assert!(!allowed(&l.check(&held).await));
        assert_eq!(futures_count(&l, "other", 3).await, 3);
        // Once entries go idle, a full shard sweeps and counts new keys again.
        advance(SEC(60));
        assert_eq!(futures_count(&l, "other", 3).await, 1);
    }

    #[tokio::test]
    async fn long_keys_are_bounded_and_distinct() {
        let (l, _) = local("1/1m", None);
        let a = format!("header:{}", "x".repeat(10_000));
        let b = format!("{a}y");
        assert!(allowed(&l.check(&a).await));
        assert!(allowed(&l.check(&b).await));
        assert!(!allowed(&l.check(&a).await));
        assert!(bounded_key(&a).len() <= MAX_KEY_LEN);
        assert_ne!(bounded_key(&a), bounded_key(&b));
        let multibyte = "é".repeat(500);
        assert!(bounded_key(&multibyte).len() <= MAX_KEY_LEN);
        assert_eq!(bounded_key("ip:1.2.3.4"), "ip:1.2.3.4");
    }

    #[test]
    fn headers_round_up() {
        let mut h = HeaderMap::new();
        let allow = Decision::Allow {
            limit: 10,
            remaining: 4,
            reset: MS(2500),
        };
        allow.write_headers(&mut h);
        assert_eq!(h["ratelimit-limit"], "10");
        assert_eq!(h["ratelimit-remaining"], "4");
        assert_eq!(h["ratelimit-reset"], "3");
        assert!(!h.contains_key("retry-after"));
        let deny = Decision::Deny {
            limit: 10,
            retry_after: MS(200),
            reset: SEC(6),
        };
        deny.write_headers(&mut h);
        assert_eq!(h["ratelimit-remaining"], "0");
        assert_eq!(h["ratelimit-reset"], "6");
        assert_eq!(h["retry-after"], "1");
        assert_eq!(h.len(), 4);
        let mut empty = HeaderMap::new();
        Decision::StoreError.write_headers(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn parse_rate_forms() {
        assert_eq!(parse_rate("100/1m"), Ok((100, SEC(60))));
        assert_eq!(parse_rate("10/s"), Ok((10, SEC(1))));
        assert_eq!(parse_rate("5000/1h"), Ok((5000, SEC(3600))));
        assert_eq!(parse_rate(" 3 / 90s "), Ok((3, SEC(90))));
        assert_eq!(parse_rate("1/m"), Ok((1, SEC(60))));
        for (bad, why) in [
            ("100", "missing '/'"),
            ("/1m", "COUNT must be a whole number"),
            ("-1/s", "COUNT must be a whole number"),
            ("1.5/s", "COUNT must be a whole number"),
            ("0/s", "COUNT must be at least 1"),
            ("5000000000/s", "COUNT is too large"),
            ("10/", "PERIOD needs a unit"),
            ("10/5", "PERIOD needs a unit"),
            ("10/0s", "PERIOD must be at least 1"),
            ("10/1d", "unknown unit \"d\""),
            ("10/1ms", "unknown unit \"ms\""),
            ("10/1 m", "unknown unit \" m\""),
            ("10/99999999999999999999s", "PERIOD is too large"),
            ("10/9999999999999999h", "PERIOD is too large"),
        ] {
            let e = parse_rate(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.starts_with(&format!("invalid rate {bad:?}: ")), "{e}");
        }
    }

    #[test]
    fn key_specs() {
        assert_eq!(KeySpec::parse("client_ip"), Ok(KeySpec::ClientIp));
        assert_eq!(KeySpec::parse("user"), Ok(KeySpec::User));
        let h = KeySpec::parse("header:X-Api-Key").unwrap();
        assert_eq!(h, KeySpec::Header(HeaderName::from_static("x-api-key")));
        assert_eq!(
            KeySpec::parse("claim:sid"),
            Ok(KeySpec::Claim("sid".into()))
        );
        assert!(KeySpec::parse("header:").is_err());
        assert!(KeySpec::parse("header:bad name").is_err());
        assert!(KeySpec::parse("claim:email").is_err());
        assert!(KeySpec::parse("ip").is_err());
    }

    #[test]
    fn validate_reports_every_problem_with_its_path() {
        assert!(cfg("10/s", None).validate("x").is_empty());
        let bad = RateLimitConfig {
            name: "a:b".into(),
            key: "cookie:sid".into(),
            rate: "10/d".into(),
            ..cfg("", None)
        };
        let p = bad.validate("routes[1].rate_limits[0]");
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(
            p[0],
            "routes[1].rate_limits[0].name: \"a:b\" must be 1 to 64 letters, digits, '_', '-' or '.'"
        );
        assert_eq!(
            p[1],
            "routes[1].rate_limits[0].key: unknown key \"cookie:sid\" (expected client_ip, user, header:NAME or claim:NAME)"
        );
        assert!(p[2].starts_with("routes[1].rate_limits[0].rate: invalid rate \"10/d\""));

        let p = cfg("10/s", Some(0)).validate("at");
        assert_eq!(p, ["at.burst: must be at least 1"]);
        let p = cfg("2000000/s", None).validate("at");
        assert_eq!(
            p,
            ["at.rate: \"2000000/s\" is too fast (at most 1000000 per second)"]
        );
        let p = cfg("1/1h", Some(1000)).validate("at");
        assert_eq!(
            p,
            ["at.burst: a burst of 1000 at 1/1h takes more than 30 days to refill"]
        );
        assert_eq!(cfg("1000/1000h", None).validate("at").len(), 1);
        assert!(cfg("1/1h", Some(720)).validate("at").is_empty());
    }

    #[test]
    fn config_defaults_and_strictness() {
        let c: RateLimitConfig = serde_yaml::from_str("name: login\nrate: 5/m\n").unwrap();
        assert_eq!(c.key, "client_ip");
        assert_eq!(c.burst, None);
        assert_eq!(c.backend, Backend::Local);
        assert_eq!(c.on_store_error, OnStoreError::Allow);
        let c: RateLimitConfig = serde_yaml::from_str(
            "{name: a, rate: 5/m, key: user, burst: 2, backend: redis, on_store_error: deny}",
        )
        .unwrap();
        assert_eq!(
            (c.backend, c.on_store_error),
            (Backend::Redis, OnStoreError::Deny)
        );
        assert!(serde_yaml::from_str::<RateLimitConfig>("{name: a, rate: 5/m, brust: 2}").is_err());
        assert!(
            serde_yaml::from_str::<RateLimitConfig>("{name: a, rate: 5/m, backend: x}").is_err()
        );
    }

    #[test]
    fn new_refuses_invalid_config_and_redis_without_client() {
        let e = Limiter::new(&cfg("0/s", None), None).unwrap_err();
        assert!(
            e.starts_with("rate limit \"api\".rate: invalid rate"),
            "{e}"
        );
        let redis = RateLimitConfig {
            backend: Backend::Redis,
            ..cfg("1/s", None)
        };
        let e = Limiter::new(&redis, None).unwrap_err();
        assert!(e.contains("auth.redis_url"), "{e}");
        let l = Limiter::new(&cfg("1/s", None), None).unwrap();
        assert_eq!(
            (l.name(), l.key_spec(), l.on_store_error(), l.backend()),
            (
                "api",
                &KeySpec::ClientIp,
                OnStoreError::Allow,
                Backend::Local
            )
        );
    }

    // ---- redis -------------------------------------------------------------------------

    fn redis_url() -> Option<String> {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                eprintln!("note: REDIS_URL is not set; skipping Redis test");
                None
            }
        }
    }

    /// A limit name no other run uses (the Redis server may be shared).
    fn unique_name() -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let n = N.fetch_add(1, Ordering::Relaxed);
        format!("t{}-{nanos}-{n}", std::process::id())
    }

    /// One gateway instance: its own connection, set up as the session store does.
    async fn instance(url: &str, name: &str, rate: &str) -> (Limiter, RedisStore) {
        let store = RedisStore::connect(url, DEFAULT_OP_TIMEOUT).await.unwrap();
        let c = RateLimitConfig {
            name: name.into(),
            backend: Backend::Redis,
            ..cfg(rate, None)
        };
        let l = Limiter::new(&c, Some(store.client().clone())).unwrap();
        (l, store)
    }

    async fn is_store_error_within(l: &Limiter, limit: Duration) {
        let start = std::time::Instant::now();
        let d = l.check("k").await;
        let took = start.elapsed();
        assert_eq!(d, Decision::StoreError);
        assert!(took < limit, "took {took:?}");
    }

    #[tokio::test]
    async fn redis_accuracy() {
        let Some(url) = redis_url() else { return };
        let name = unique_name();
        let (l, store) = instance(&url, &name, "10/10s").await;
        for i in 0..10u32 {
            match l.check("ip:1").await {
                Decision::Allow {
                    limit: 10,
                    remaining,
                    reset,
                } => {
                    assert_eq!(remaining, 9 - i);
                    assert!(reset <= SEC(u64::from(i) + 1) && reset > SEC(u64::from(i)));
                }
                other => panic!("request {i}: {other:?}"),
            }
        }
        let wait = match l.check("ip:1").await {
            Decision::Deny {
                limit: 10,
                retry_after,
                reset,
            } => {
                assert!(
                    retry_after <= SEC(1) && retry_after > MS(500),
                    "{retry_after:?}"
                );
                assert!(reset <= SEC(10) && reset > SEC(9), "{reset:?}");
                retry_after
            }
            other => panic!("{other:?}"),
        };
        assert!(allowed(&l.check("ip:2").await), "keys are independent");
        // The key expires when its TAT passes.
        let pttl: i64 = store
            .client()
            .pttl(format!("ratelimit:{name}:ip:1"))
            .await
            .unwrap();
        assert!(pttl > 9000 && pttl <= 10_000, "{pttl}");

        tokio::time::sleep(wait + MS(20)).await;
        assert!(allowed(&l.check("ip:1").await));
        let r = retry_after(&l.check("ip:1").await);
        assert!(r > MS(900), "{r:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_instances_share_one_limit() {
        let Some(url) = redis_url() else { return };
        let name = unique_name();
        let (a, _sa) = instance(&url, &name, "20/1h").await;
        let (b, _sb) = instance(&url, &name, "20/1h").await;
        let (a, b) = (Arc::new(a), Arc::new(b));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let l = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move { futures_count(&l, "user:7", 10).await })
            })
            .collect();
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap();
        }
        assert_eq!(n, 20, "20 across both instances, not 40");
        assert!(!allowed(&a.check("user:7").await));
        assert!(!allowed(&b.check("user:7").await));
    }

    #[tokio::test]
    async fn redis_down_at_start_is_a_store_error_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://127.0.0.1:{port}");
        let (l, _s) = instance(&url, "down", "1/s").await;
        is_store_error_within(&l, MS(250)).await;
        is_store_error_within(&l, MS(250)).await;
    }

    /// A throwaway redis-server on 127.0.0.1, killed on drop.
    struct RedisServer(std::process::Child);

    impl RedisServer {
        fn start(port: u16) -> Option<RedisServer> {
            let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
            let child = std::process::Command::new(bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            let Ok(child) = child else {
                eprintln!("note: redis-server not found; skipping");
                return None;
            };
            let server = RedisServer(child);
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = std::time::Instant::now() + SEC(5);
            while std::net::TcpStream::connect_timeout(&addr, MS(100)).is_err() {
                assert!(std::time::Instant::now() < deadline, "redis did not start");
                std::thread::sleep(MS(20));
            }
            Some(server)
        }
    }

    impl RedisServer {
        fn signal(&self, sig: &str) {
            let pid = self.0.id().to_string();
            let status = std::process::Command::new("kill")
                .args([sig, &pid])
                .status();
            assert!(status.unwrap().success());
        }
    }

    async fn wait_until_up(store: &RedisStore) {
        let deadline = std::time::Instant::now() + SEC(10);
        while store.ping().await.is_err() {
            assert!(std::time::Instant::now() < deadline, "did not recover");
            tokio::time::sleep(MS(100)).await;
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn redis_killed_gives_store_error_within_a_second() {
        if redis_url().is_none() {
            return;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Some(server) = RedisServer::start(port) else {
            return;
        };
        let url = format!("redis://127.0.0.1:{port}");
        let (l, store) = instance(&url, "outage", "1/1h").await;
        assert!(allowed(&l.check("k").await));
        assert!(!allowed(&l.check("k").await));

        // Hung (stopped, not dead): each check times out instead of waiting.
        server.signal("-STOP");
        is_store_error_within(&l, SEC(1)).await;
        server.signal("-CONT");
        wait_until_up(&store).await;
        assert!(!allowed(&l.check("k").await), "state survived");

        drop(server);
        is_store_error_within(&l, SEC(1)).await;
        tokio::time::sleep(MS(700)).await;
        is_store_error_within(&l, MS(250)).await;

        // Back (empty): the same limiter works again.
        let _server = RedisServer::start(port).unwrap();
        wait_until_up(&store).await;
        assert!(allowed(&l.check("k").await));
    }
}

//! Session store: the small key-value surface that live sessions, refresh-token rotation,
//! the per-user session index and login-failure counters need.
//!
//! Two implementations of [`SessionStore`]:
//!
//! * [`MemoryStore`]: in-process, for a single gateway instance. Expiry is checked on every
//!   read and expired entries are swept opportunistically on writes, so memory stays bounded
//!   by the live keys.
//! * [`RedisStore`]: shared, via `fred`. It starts even when Redis is down, reconnects on its
//!   own, and every call finishes (`Ok` or `Err`) within the operation timeout: while the
//!   connection is down, commands fail at once instead of queueing.
//!
//! Both behave alike: TTLs are rounded up to whole milliseconds and clamped to
//! `[1 ms, ~100 years]`; reading a key of the wrong kind (a set through [`SessionStore::get`],
//! say) is a [`StoreError::Other`], as Redis' `WRONGTYPE` is.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, SetsInterface};
use fred::prelude::{Builder, Config, Error as FredError, ErrorKind, Expiration, Options};
use fred::types::config::{ReconnectPolicy, UnresponsiveConfig};
use fred::types::{ClusterHash, CustomCommand, FromValue};
use tokio::time::Instant;

/// Errors from a [`SessionStore`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached (connection down, refused, reset, authentication failed).
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The operation did not finish within the store's operation timeout.
    #[error("session store timed out")]
    Timeout,
    /// Anything else: invalid configuration, wrong value type, unexpected reply.
    #[error("session store error: {0}")]
    Other(String),
}

/// The operations sessions need. Every call must finish (Ok or Err) within the store's op timeout: a down Redis gives Err quickly (target: well under 1 s), never a hang.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores `value` under `key` (replacing any value of any kind) with the given TTL.
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError>;
    /// Reads a string value; `None` when the key does not exist.
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Remaining time to live; None when the key does not exist.
    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError>;
    /// Sets a new TTL on an existing key; false if the key does not exist.
    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// Deletes keys; returns how many existed.
    async fn delete(&self, keys: &[String]) -> Result<u64, StoreError>;
    /// Atomically deletes `key` and returns its value if it existed (GETDEL) — used for refresh-token rotation so that two concurrent refreshes cannot both succeed.
    async fn take(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Set (collection) operations for the per-user session index; `ttl` refreshes the set's TTL.
    async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError>;
    /// Removes `member` from the set at `key`; an emptied set disappears.
    async fn set_remove(&self, key: &str, member: &str) -> Result<(), StoreError>;
    /// Members of the set at `key` (unordered); empty when the key does not exist.
    async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError>;
    /// Increments a counter, setting `ttl` when it is created (fixed window); returns the new value. For login-failure counting.
    async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, StoreError>;
    /// Checks that the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// "memory" or "redis", for logs.
    fn kind(&self) -> &'static str;
}

const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// A TTL in whole milliseconds, rounded up and clamped to `[1, MAX_TTL_MS]`.
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000))
        .unwrap_or(MAX_TTL_MS)
        .clamp(1, MAX_TTL_MS)
}

fn wrong_type() -> StoreError {
    StoreError::Other("WRONGTYPE Operation against a key holding the wrong kind of value".into())
}

// ---------------------------------------------------------------------------------------------
// In-process store
// ---------------------------------------------------------------------------------------------

/// A clock for [`MemoryStore::with_clock`].
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// A full sweep runs at least this often (on the next write).
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// A full sweep also runs when the map has doubled since the last one, but not below this size.
const SWEEP_MIN_LEN: usize = 1024;

enum Value {
    Str(String),
    Set(HashSet<String>),
}

struct Entry {
    value: Value,
    expires_at: Instant,
}

struct MemInner {
    map: HashMap<String, Entry>,
    last_sweep: Instant,
    sweep_at_len: usize,
}

impl MemInner {
    /// The entry under `key` if it has not expired; an expired one is removed.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.map.get(key).is_some_and(|e| e.expires_at <= now) {
            self.map.remove(key);
        }
        self.map.get_mut(key)
    }

    fn maybe_sweep(&mut self, now: Instant) {
        if self.map.len() >= self.sweep_at_len
            || now.saturating_duration_since(self.last_sweep) >= SWEEP_INTERVAL
        {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: Instant) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| e.expires_at > now);
        let len = self.map.len();
        if self.map.capacity() > SWEEP_MIN_LEN && self.map.capacity() > len * 4 {
            self.map.shrink_to(len * 2);
        }
        self.last_sweep = now;
        self.sweep_at_len = (len * 2).max(SWEEP_MIN_LEN);
        before - len
    }
}

/// In-process store for a single instance: a `Mutex<HashMap>` with expiry checked on read and
/// an opportunistic sweep on writes (every 30 s, or when the map has doubled since the last
/// sweep), so memory is bounded by live keys.
///
/// Time comes from [`tokio::time::Instant`]: [`MemoryStore::new`] reads `Instant::now()`, so a
/// paused tokio clock (`tokio::time::pause`/`advance`, feature `test-util`) drives expiry;
/// [`MemoryStore::with_clock`] injects any other clock.
pub struct MemoryStore {
    inner: Mutex<MemInner>,
    clock: Clock,
}

impl MemoryStore {
    /// An empty store on the tokio clock.
    pub fn new() -> MemoryStore {
        MemoryStore::with_clock(Arc::new(Instant::now))
    }

    /// An empty store reading time from `clock` (for tests).
    pub fn with_clock(clock: Clock) -> MemoryStore {
        let now = clock();
        MemoryStore {
            inner: Mutex::new(MemInner {
                map: HashMap::new(),
                last_sweep: now,
                sweep_at_len: SWEEP_MIN_LEN,
            }),
            clock,
        }
    }

    /// Number of entries held, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the store holds no entries at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every expired entry now; returns how many were removed.
    pub fn sweep(&self) -> usize {
        let now = (self.clock)();
        self.lock().sweep(now)
    }

    fn lock(&self) -> MutexGuard<'_, MemInner> {
        // A panic while holding the lock cannot leave the map half-updated in a harmful way.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn deadline(now: Instant, ttl: Duration) -> Instant {
        now + Duration::from_millis(ttl_millis(ttl))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.len())
            .finish()
    }
}

#[async_trait::async_trait]
impl SessionStore for MemoryStore {
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let now = (self.clock)();
        let mut g = self.lock();
        g.maybe_sweep(now);
        let entry = Entry {
            value: Value::Str(value.to_owned()),
            expires_at: Self::deadline(now, ttl),
        };
        g.map.insert(key.to_owned(), entry);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let now = (self.clock)();
        match self.lock().live(key, now).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            Some(Value::Set(_)) => Err(wrong_type()),
        }
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let now = (self.clock)();
        Ok(self
            .lock()
            .live(key, now)
            .map(|e| e.expires_at.saturating_duration_since(now)))
    }

    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = (self.clock)();
        let mut g = self.lock();
        g.maybe_sweep(now);
        Ok(match g.live(key, now) {
            Some(e) => {
                e.expires_at = Self::deadline(now, ttl);
                true
            }
            None => false,
        })
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, StoreError> {
        let now = (self.clock)();
        let mut g = self.lock();
        let mut n = 0;
        for key in keys {
            if g.live(key, now).is_some() {
                g.map.remove(key);
                n += 1;
            }
        }
        Ok(n)
    }

    async fn take(&self, key: &str) -> Result<Option<String>, StoreError> {
        let now = (self.clock)();
        let mut g = self.lock();
        match g.live(key, now).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Set(_)) => Err(wrong_type()),
            Some(Value::Str(_)) => match g.map.remove(key).map(|e| e.value) {
                Some(Value::Str(s)) => Ok(Some(s)),
                _ => Ok(None),
            },
        }
    }

    async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        let now = (self.clock)();
        let expires_at = Self::deadline(now, ttl);
        let mut g = self.lock();
        g.maybe_sweep(now);
        match g.live(key, now) {
            Some(Entry {
                value: Value::Set(set),
                expires_at: exp,
            }) => {
                set.insert(member.to_owned());
                *exp = expires_at;
            }
            Some(_) => return Err(wrong_type()),
            None => {
                let set = HashSet::from([member.to_owned()]);
                let entry = Entry {
                    value: Value::Set(set),
                    expires_at,
                };
                g.map.insert(key.to_owned(), entry);
            }
        }
        Ok(())
    }

    async fn set_remove(&self, key: &str, member: &str) -> Result<(), StoreError> {
        let now = (self.clock)();
        let mut g = self.lock();
        let emptied = match g.live(key, now).map(|e| &mut e.value) {
            None => false,
            Some(Value::Str(_)) => return Err(wrong_type()),
            Some(Value::Set(set)) => {
                set.remove(member);
                set.is_empty()
            }
        };
        if emptied {
            g.map.remove(key);
        }
        Ok(())
    }

    async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let now = (self.clock)();
        match self.lock().live(key, now).map(|e| &e.value) {
            None => Ok(Vec::new()),
            Some(Value::Set(set)) => Ok(set.iter().cloned().collect()),
            Some(Value::Str(_)) => Err(wrong_type()),
        }
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        let now = (self.clock)();
        let mut g = self.lock();
        g.maybe_sweep(now);
        match g.live(key, now).map(|e| &mut e.value) {
            Some(Value::Str(s)) => {
                let n = s
                    .parse::<u64>()
                    .ok()
                    .and_then(|n| n.checked_add(1))
                    .ok_or_else(|| StoreError::Other("value is not a counter".into()))?;
                *s = n.to_string();
                Ok(n)
            }
            Some(Value::Set(_)) => Err(wrong_type()),
            None => {
                let entry = Entry {
                    value: Value::Str("1".into()),
                    expires_at: Self::deadline(now, ttl),
                };
                g.map.insert(key.to_owned(), entry);
                Ok(1)
            }
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

// ---------------------------------------------------------------------------------------------
// Redis store
// ---------------------------------------------------------------------------------------------

/// The operation timeout callers use unless configured otherwise.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(500);

/// Extra time allowed past the op timeout before our own guard gives up on a command that fred
/// has not answered.
const GUARD_MARGIN: Duration = Duration::from_millis(200);

/// `SADD` + `PEXPIRE`, atomically.
const SET_ADD_SCRIPT: &str = "redis.call('SADD', KEYS[1], ARGV[1]) \
     redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1";

/// `INCR`, setting the TTL when the counter is created (or somehow has none): a fixed window.
const INCR_SCRIPT: &str = "local v = redis.call('INCR', KEYS[1]) \
     if v == 1 or redis.call('PTTL', KEYS[1]) == -1 then \
     redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return v";

/// Whether `scheme` is one of fred's: `redis`, `rediss`, `valkey` or `valkeys`, optionally
/// followed by `-cluster` or `-sentinel`.
fn known_scheme(scheme: &str) -> bool {
    let base = scheme
        .strip_suffix("-cluster")
        .or_else(|| scheme.strip_suffix("-sentinel"))
        .unwrap_or(scheme);
    matches!(base, "redis" | "rediss" | "valkey" | "valkeys")
}

/// Redis (or Valkey) via fred.
///
/// URL forms (fred's `Config::from_url`):
/// * `redis://[[user:]pass@]host[:port][/db]` — one server (port 6379 by default);
/// * `redis-cluster://[[user:]pass@]host:port[?node=host2:port2&node=...]` — a cluster, seeded
///   from the listed nodes;
/// * `redis-sentinel://[[user:]pass@]host[:port][/db]?sentinelServiceName=NAME[&node=host2:port2...]`
///   — a primary behind sentinels (the hosts are the sentinels, port 26379 by default);
/// * the same with `valkey` in place of `redis`.
///
/// TLS schemes (`rediss`, `valkeys`, `rediss-cluster`, ...) are refused unless fred is built
/// with one of its TLS features (`enable-rustls-ring`, `enable-rustls`, `enable-native-tls`).
///
/// Needs Redis 6.2 or later (`GETDEL`). While the connection is down, commands fail at once
/// (fred's per-command `fail_fast`) rather than queue; a hung server costs each command the
/// op timeout, then [`StoreError::Timeout`]. A command that timed out may still have run.
pub struct RedisStore {
    client: Client,
    options: Options,
    op_timeout: Duration,
}

impl RedisStore {
    /// Connects lazily-but-promptly: returns Ok even if Redis is down at start (the gateway must start and serve public routes), with reconnect policy so it recovers when Redis comes back. `op_timeout` bounds every command (default callers pass 500 ms).
    ///
    /// Waits at most `op_timeout` for the first connection. A zero `op_timeout` means
    /// [`DEFAULT_OP_TIMEOUT`]. Fails only for an invalid or unsupported URL.
    pub async fn connect(url: &str, op_timeout: Duration) -> Result<RedisStore, StoreError> {
        let op_timeout = if op_timeout.is_zero() {
            DEFAULT_OP_TIMEOUT
        } else {
            op_timeout
        };
        let scheme = url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default();
        if !known_scheme(&scheme) {
            return Err(StoreError::Other(format!(
                "invalid Redis URL: unsupported scheme {scheme:?} (expected redis://, \
                 redis-cluster:// or redis-sentinel://)"
            )));
        }
        // fred's errors do not echo the URL, so credentials stay out of the message.
        let mut config = Config::from_url(url)
            .map_err(|e| StoreError::Other(format!("invalid Redis URL: {e}")))?;
        if (scheme.starts_with("rediss") || scheme.starts_with("valkeys")) && !config.uses_tls() {
            return Err(StoreError::Other(format!(
                "invalid Redis URL: {scheme}:// needs TLS, which this build does not include \
                 (fred's TLS features are off)"
            )));
        }
        // Run the reconnect policy for the first connection too, instead of failing on it.
        config.fail_fast = false;

        let connect_timeout =
            (op_timeout * 4).clamp(Duration::from_secs(1), Duration::from_secs(10));
        let unresponsive = (op_timeout * 4).max(Duration::from_secs(1));
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = connect_timeout;
                c.internal_command_timeout = connect_timeout;
                // A connection that has had no reply for this long since its last write is
                // dropped and rebuilt (then commands fail at once). Under steady traffic fred's
                // check rarely fires; each command is still bounded by `op_timeout`.
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(unresponsive),
                    interval: (unresponsive / 4).max(Duration::from_millis(50)),
                };
            })
            .with_performance_config(|p| p.default_command_timeout = op_timeout)
            // Retry forever: 100 ms, doubling, at most 2 s apart.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let client = builder
            .build()
            .map_err(|e| StoreError::Other(format!("invalid Redis configuration: {e}")))?;

        let down = Arc::new(AtomicBool::new(false));
        let on_error = down.clone();
        client.on_error(move |(error, server)| {
            let server = server.map(|s| s.to_string()).unwrap_or_default();
            if on_error.swap(true, Ordering::Relaxed) {
                tracing::debug!(%server, %error, "session store: redis connection error");
            } else {
                tracing::warn!(%server, %error, "session store: redis unreachable, retrying");
            }
            async { Ok(()) }
        });
        let on_reconnect = down;
        client.on_reconnect(move |server| {
            if on_reconnect.swap(false, Ordering::Relaxed) {
                tracing::info!(server = %server, "session store: redis connection restored");
            }
            async { Ok(()) }
        });

        // The connection task runs (and reconnects) until `shutdown`.
        let _task = client.connect();
        match tokio::time::timeout(op_timeout, client.wait_for_connect()).await {
            Ok(Ok(())) => tracing::info!("session store: connected to redis"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "session store: redis not reachable yet, retrying")
            }
            Err(_) => tracing::warn!("session store: redis not reachable yet, retrying"),
        }

        let options = Options {
            timeout: Some(op_timeout),
            // Fail at once while the connection is down instead of queueing until it is back.
            fail_fast: true,
            ..Options::default()
        };
        Ok(RedisStore {
            client,
            options,
            op_timeout,
        })
    }

    /// The underlying fred client, for callers that need pub/sub later.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The timeout that bounds every operation.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// Closes the connection and stops reconnecting; later operations fail.
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(self.op_timeout, self.client.quit()).await;
    }

    fn cmd(&self) -> fred::clients::WithOptions<Client> {
        self.client.with_options(&self.options)
    }

    /// `EVAL script 1 key args...`, sent as a custom command: fred 10.1 does not implement
    /// `LuaInterface` for `WithOptions`, so `eval` there would silently drop the per-command
    /// options (and with them fail-fast).
    async fn eval<R>(
        &self,
        op: &'static str,
        script: &str,
        key: &str,
        args: &[&str],
    ) -> Result<R, StoreError>
    where
        R: FromValue + Send,
    {
        let slot = ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes()));
        let cmd = CustomCommand::new_static("EVAL", slot, false);
        let mut argv = vec![script, "1", key];
        argv.extend_from_slice(args);
        let c = self.cmd();
        self.run(op, c.custom::<R, &str>(cmd, argv)).await
    }

    /// Runs one command under our own guard (in case fred's timeout does not fire) and maps
    /// its error.
    async fn run<T, F>(&self, op: &'static str, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, FredError>> + Send,
    {
        match tokio::time::timeout(self.op_timeout + GUARD_MARGIN, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::debug!(op, error = %e, "session store: redis command failed");
                Err(map_error(&e))
            }
            Err(_) => {
                tracing::debug!(op, "session store: redis command timed out");
                Err(StoreError::Timeout)
            }
        }
    }
}

fn map_error(e: &FredError) -> StoreError {
    match e.kind() {
        ErrorKind::Timeout => StoreError::Timeout,
        ErrorKind::IO
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Routing
        | ErrorKind::Cluster
        | ErrorKind::Sentinel
        | ErrorKind::Auth => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Other(e.to_string()),
    }
}

/// A TTL as the `i64` milliseconds Redis takes.
fn ttl_px(ttl: Duration) -> i64 {
    i64::try_from(ttl_millis(ttl)).unwrap_or(i64::MAX)
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("op_timeout", &self.op_timeout)
            .field("connected", &self.client.is_connected())
            .finish()
    }
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let c = self.cmd();
        let px = Some(Expiration::PX(ttl_px(ttl)));
        self.run("set", c.set::<(), _, _>(key, value, px, None, false))
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let c = self.cmd();
        self.run("get", c.get::<Option<String>, _>(key)).await
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let c = self.cmd();
        let ms = self.run("pttl", c.pttl::<i64, _>(key)).await?;
        Ok(match ms {
            -1 => Some(Duration::MAX), // a key without expiry (not written by this store)
            ms => u64::try_from(ms).ok().map(Duration::from_millis),
        })
    }

    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let c = self.cmd();
        let n = self
            .run("pexpire", c.pexpire::<i64, _>(key, ttl_px(ttl), None))
            .await?;
        Ok(n == 1)
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let c = self.cmd();
        if !self.client.is_clustered() {
            return self.run("del", c.del::<u64, _>(keys.to_vec())).await;
        }
        // Keys may hash to different slots: one DEL each, all under one guard.
        let all = async {
            let mut n = 0;
            for key in keys {
                n += c.del::<u64, _>(key.as_str()).await?;
            }
            Ok(n)
        };
        self.run("del", all).await
    }

    async fn take(&self, key: &str) -> Result<Option<String>, StoreError> {
        let c = self.cmd();
        self.run("getdel", c.getdel::<Option<String>, _>(key)).await
    }

    async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        let px = ttl_px(ttl).to_string();
        self.eval("sadd", SET_ADD_SCRIPT, key, &[member, &px]).await
    }

    async fn set_remove(&self, key: &str, member: &str) -> Result<(), StoreError> {
        let c = self.cmd();
        self.run("srem", c.srem::<(), _, _>(key, member)).await
    }

    async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let c = self.cmd();
        self.run("smembers", c.smembers::<Vec<String>, _>(key))
            .await
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        let px = ttl_px(ttl).to_string();
        let n: i64 = self.eval("incr", INCR_SCRIPT, key, &[&px]).await?;
        u64::try_from(n).map_err(|_| StoreError::Other("value is not a counter".into()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let c = self.cmd();
        self.run("ping", c.ping::<()>(None)).await
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::atomic::AtomicU64;

    type Advance = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

    /// A manual clock for [`MemoryStore::with_clock`].
    fn manual_clock() -> (Clock, Advance) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let read = now.clone();
        let clock: Clock = Arc::new(move || *read.lock().unwrap());
        let advance: Advance = Arc::new(move |d| {
            *now.lock().unwrap() += d;
            Box::pin(async {})
        });
        (clock, advance)
    }

    fn memory() -> (Arc<MemoryStore>, Advance) {
        let (clock, advance) = manual_clock();
        (Arc::new(MemoryStore::with_clock(clock)), advance)
    }

    /// Real time for Redis: a little past the requested span, so the server has expired keys.
    fn sleeper() -> Advance {
        Arc::new(|d| Box::pin(tokio::time::sleep(d + Duration::from_millis(50))))
    }

    fn unique_prefix() -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let n = N.fetch_add(1, Ordering::Relaxed);
        format!("gatehouse-test:{}:{nanos}:{n}:", std::process::id())
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const LONG: Duration = Duration::from_secs(60);

    // ---- shared semantics, written once --------------------------------------------------

    async fn check_kv(s: &dyn SessionStore, p: &str) {
        let k = format!("{p}kv");
        assert_eq!(s.get(&k).await.unwrap(), None);
        assert_eq!(s.ttl(&k).await.unwrap(), None);
        assert!(!s.expire(&k, LONG).await.unwrap());
        s.set(&k, "v1", LONG).await.unwrap();
        assert_eq!(s.get(&k).await.unwrap().as_deref(), Some("v1"));
        let ttl = s.ttl(&k).await.unwrap().unwrap();
        assert!(ttl > Duration::from_secs(55) && ttl <= LONG, "{ttl:?}");
        s.set(&k, "v2", LONG).await.unwrap();
        assert_eq!(s.get(&k).await.unwrap().as_deref(), Some("v2"));
        assert!(s.expire(&k, Duration::from_secs(5)).await.unwrap());
        let ttl = s.ttl(&k).await.unwrap().unwrap();
        assert!(
            ttl > Duration::from_secs(3) && ttl <= Duration::from_secs(5),
            "{ttl:?}"
        );

        let k2 = format!("{p}kv2");
        s.set(&k2, "x", LONG).await.unwrap();
        let keys = vec![k.clone(), k2.clone(), format!("{p}missing")];
        assert_eq!(s.delete(&keys).await.unwrap(), 2);
        assert_eq!(s.delete(&keys).await.unwrap(), 0);
        assert_eq!(s.delete(&[]).await.unwrap(), 0);
        assert_eq!(s.get(&k).await.unwrap(), None);

        s.set(&k, "once", LONG).await.unwrap();
        assert_eq!(s.take(&k).await.unwrap().as_deref(), Some("once"));
        assert_eq!(s.take(&k).await.unwrap(), None);
        assert_eq!(s.get(&k).await.unwrap(), None);
        s.ping().await.unwrap();
    }

    async fn check_expiry(s: &dyn SessionStore, p: &str, advance: &Advance) {
        let k = format!("{p}exp");
        s.set(&k, "v", MS(300)).await.unwrap();
        let ttl = s.ttl(&k).await.unwrap().unwrap();
        assert!(ttl <= MS(300) && ttl > Duration::ZERO, "{ttl:?}");
        advance(MS(400)).await;
        assert_eq!(s.get(&k).await.unwrap(), None);
        assert_eq!(s.ttl(&k).await.unwrap(), None);
        assert_eq!(s.take(&k).await.unwrap(), None);
        assert!(!s.expire(&k, LONG).await.unwrap());
        assert_eq!(s.delete(std::slice::from_ref(&k)).await.unwrap(), 0);

        // expire() extends a live key past its first deadline.
        s.set(&k, "v", MS(300)).await.unwrap();
        assert!(s.expire(&k, Duration::from_secs(10)).await.unwrap());
        advance(MS(400)).await;
        assert_eq!(s.get(&k).await.unwrap().as_deref(), Some("v"));
        // ... and shortens it.
        assert!(s.expire(&k, MS(100)).await.unwrap());
        advance(MS(200)).await;
        assert_eq!(s.get(&k).await.unwrap(), None);
    }

    async fn check_sets(s: &dyn SessionStore, p: &str, advance: &Advance) {
        let k = format!("{p}set");
        assert!(s.set_members(&k).await.unwrap().is_empty());
        s.set_remove(&k, "nope").await.unwrap();
        s.set_add(&k, "a", LONG).await.unwrap();
        s.set_add(&k, "b", LONG).await.unwrap();
        s.set_add(&k, "a", LONG).await.unwrap();
        let mut m = s.set_members(&k).await.unwrap();
        m.sort();
        assert_eq!(m, ["a", "b"]);
        s.set_remove(&k, "a").await.unwrap();
        assert_eq!(s.set_members(&k).await.unwrap(), ["b"]);
        s.set_remove(&k, "b").await.unwrap();
        assert!(s.set_members(&k).await.unwrap().is_empty());
        assert_eq!(s.ttl(&k).await.unwrap(), None, "an emptied set disappears");

        // Each add refreshes the set's TTL.
        let k = format!("{p}set-ttl");
        s.set_add(&k, "a", MS(1000)).await.unwrap();
        advance(MS(600)).await;
        s.set_add(&k, "b", MS(1000)).await.unwrap();
        advance(MS(600)).await;
        let mut m = s.set_members(&k).await.unwrap();
        m.sort();
        assert_eq!(m, ["a", "b"]);
        advance(MS(600)).await;
        assert!(s.set_members(&k).await.unwrap().is_empty());

        // Kinds do not mix.
        let str_key = format!("{p}str");
        s.set(&str_key, "v", LONG).await.unwrap();
        assert!(matches!(
            s.set_add(&str_key, "m", LONG).await,
            Err(StoreError::Other(_))
        ));
        assert!(s.set_members(&str_key).await.is_err());
        let set_key = format!("{p}set-kind");
        s.set_add(&set_key, "m", LONG).await.unwrap();
        assert!(matches!(s.get(&set_key).await, Err(StoreError::Other(_))));
        assert!(s.take(&set_key).await.is_err());
        assert!(s.incr(&set_key, LONG).await.is_err());
        // set() replaces a value of any kind.
        s.set(&set_key, "now a string", LONG).await.unwrap();
        assert_eq!(
            s.get(&set_key).await.unwrap().as_deref(),
            Some("now a string")
        );
    }

    async fn check_incr(s: &dyn SessionStore, p: &str, advance: &Advance) {
        let k = format!("{p}ctr");
        assert_eq!(s.incr(&k, MS(300)).await.unwrap(), 1);
        assert_eq!(s.incr(&k, MS(300)).await.unwrap(), 2);
        advance(MS(200)).await;
        // A fixed window: later increments do not push the deadline out.
        assert_eq!(s.incr(&k, MS(300)).await.unwrap(), 3);
        let ttl = s.ttl(&k).await.unwrap().unwrap();
        assert!(ttl <= MS(100), "{ttl:?}");
        advance(MS(200)).await;
        assert_eq!(s.incr(&k, MS(300)).await.unwrap(), 1, "window resets");
        assert_eq!(s.get(&k).await.unwrap().as_deref(), Some("1"));

        let bad = format!("{p}not-a-number");
        s.set(&bad, "abc", LONG).await.unwrap();
        assert!(matches!(
            s.incr(&bad, LONG).await,
            Err(StoreError::Other(_))
        ));
    }

    async fn check_take_is_atomic(s: Arc<dyn SessionStore>, p: &str) {
        let k = format!("{p}refresh");
        for round in 0..3 {
            s.set(&k, &format!("token-{round}"), LONG).await.unwrap();
            let tasks: Vec<_> = (0..50)
                .map(|_| {
                    let (s, k) = (s.clone(), k.clone());
                    tokio::spawn(async move { s.take(&k).await.unwrap() })
                })
                .collect();
            let mut winners = Vec::new();
            for t in tasks {
                if let Some(v) = t.await.unwrap() {
                    winners.push(v);
                }
            }
            assert_eq!(winners, [format!("token-{round}")]);
        }
    }

    async fn check_all(s: Arc<dyn SessionStore>, advance: Advance) {
        let p = unique_prefix();
        check_kv(s.as_ref(), &p).await;
        check_expiry(s.as_ref(), &p, &advance).await;
        check_sets(s.as_ref(), &p, &advance).await;
        check_incr(s.as_ref(), &p, &advance).await;
        check_take_is_atomic(s, &p).await;
    }

    // ---- MemoryStore ----------------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_semantics() {
        let (s, advance) = memory();
        assert_eq!(s.kind(), "memory");
        check_all(s, advance).await;
    }

    #[test]
    fn ttl_rounding() {
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_millis(MS(500)), 500);
        assert_eq!(ttl_millis(Duration::MAX), MAX_TTL_MS);
    }

    #[tokio::test]
    async fn memory_sweep_bounds_memory() {
        let (s, advance) = memory();
        for i in 0..5000 {
            s.set(&format!("old{i}"), "v", Duration::from_secs(1))
                .await
                .unwrap();
        }
        assert_eq!(s.len(), 5000);
        advance(Duration::from_secs(2)).await;
        // Writes of new keys trigger size-based sweeps that drop the expired ones.
        for i in 0..5000 {
            s.set(&format!("new{i}"), "v", Duration::from_secs(1))
                .await
                .unwrap();
        }
        assert!(s.len() < 9000, "expired entries were swept: {}", s.len());
        advance(Duration::from_secs(2)).await;
        let held = s.len();
        assert_eq!(s.sweep(), held, "everything left had expired");
        assert!(s.is_empty());

        // Time-based: one write after the sweep interval clears everything expired.
        for i in 0..100 {
            s.incr(&format!("ctr{i}"), Duration::from_secs(1))
                .await
                .unwrap();
        }
        advance(SWEEP_INTERVAL).await;
        s.set("fresh", "v", LONG).await.unwrap();
        assert_eq!(s.len(), 1);
    }

    #[tokio::test]
    async fn memory_default_clock_is_tokio() {
        let s = MemoryStore::default();
        s.set("k", "v", MS(300)).await.unwrap();
        assert_eq!(s.get("k").await.unwrap().as_deref(), Some("v"));
        tokio::time::sleep(MS(400)).await;
        assert_eq!(s.get("k").await.unwrap(), None);
    }

    // ---- RedisStore -----------------------------------------------------------------------

    fn redis_url() -> Option<String> {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                eprintln!("note: REDIS_URL is not set; skipping Redis test");
                None
            }
        }
    }

    /// A port on 127.0.0.1 with nothing listening (right now).
    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// Well under the 500 ms op timeout: the command was refused, not timed out.
    const AT_ONCE: Duration = Duration::from_millis(250);
    const WITHIN_1S: Duration = Duration::from_secs(1);

    /// Asserts that `op` fails within `limit`.
    async fn fails_fast<T: fmt::Debug>(
        what: &str,
        limit: Duration,
        op: impl Future<Output = Result<T, StoreError>>,
    ) {
        let start = std::time::Instant::now();
        let r = op.await;
        let took = start.elapsed();
        assert!(r.is_err(), "{what}: expected an error, got {r:?}");
        assert!(took < limit, "{what}: took {took:?} ({r:?})");
    }

    /// Every operation fails within `limit`. Uses its own keys: a command that timed out may
    /// still run once a hung server resumes.
    async fn all_ops_fail_fast(s: &RedisStore, limit: Duration) {
        fails_fast("set", limit, s.set("ff:k", "v", LONG)).await;
        fails_fast("get", limit, s.get("ff:k")).await;
        fails_fast("ttl", limit, s.ttl("ff:k")).await;
        fails_fast("expire", limit, s.expire("ff:k", LONG)).await;
        fails_fast("delete", limit, s.delete(&["ff:k".to_owned()])).await;
        fails_fast("take", limit, s.take("ff:k")).await;
        fails_fast("set_add", limit, s.set_add("ff:s", "m", LONG)).await;
        fails_fast("set_remove", limit, s.set_remove("ff:s", "m")).await;
        fails_fast("set_members", limit, s.set_members("ff:s")).await;
        fails_fast("incr", limit, s.incr("ff:c", LONG)).await;
        fails_fast("ping", limit, s.ping()).await;
    }

    /// Polls `ping` until it succeeds (the reconnect backoff is at most 2 s).
    async fn wait_until_up(s: &RedisStore) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.ping().await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "store did not recover"
            );
            tokio::time::sleep(MS(100)).await;
        }
    }

    /// A throwaway redis-server on 127.0.0.1, killed on drop.
    struct RedisServer {
        child: std::process::Child,
        dir: std::path::PathBuf,
    }

    impl RedisServer {
        fn binary() -> Option<String> {
            let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
            let found = std::process::Command::new(&bin)
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                eprintln!("note: {bin} not found; skipping test that runs its own Redis");
            }
            found.then_some(bin)
        }

        fn start(bin: &str, port: u16) -> RedisServer {
            let dir = std::env::temp_dir().join(format!(
                "gatehouse-store-redis-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let child = std::process::Command::new(bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let server = RedisServer { child, dir };
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            while std::net::TcpStream::connect_timeout(&addr, MS(100)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "redis-server did not start"
                );
                std::thread::sleep(MS(20));
            }
            server
        }

        fn signal(&self, sig: &str) {
            let status = std::process::Command::new("kill")
                .args([sig, &self.child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_semantics() {
        let Some(url) = redis_url() else { return };
        let s = RedisStore::connect(&url, DEFAULT_OP_TIMEOUT).await.unwrap();
        assert_eq!(s.kind(), "redis");
        s.ping().await.unwrap();
        check_all(Arc::new(s), sleeper()).await;
    }

    #[tokio::test]
    async fn redis_invalid_urls_are_refused() {
        for url in [
            "",
            "not a url",
            "localhost:6379",
            "http://127.0.0.1:6379",
            "redis://",
            "redis://127.0.0.1:notaport",
            "redis://127.0.0.1:6379/notadb",
            "redis-sentinel://127.0.0.1:26379",
            "rediss://127.0.0.1:6379",
            "rediss-cluster://127.0.0.1:6379",
        ] {
            let r = RedisStore::connect(url, MS(200)).await;
            assert!(matches!(r, Err(StoreError::Other(_))), "{url}: {r:?}");
        }
    }

    #[tokio::test]
    async fn redis_url_forms_connect_lazily() {
        // Nothing listens on these ports: connect still returns Ok, promptly.
        let port = free_port();
        for url in [
            format!("redis://127.0.0.1:{port}"),
            format!("redis://user:secret@127.0.0.1:{port}/2"),
            format!("valkey://:secret@127.0.0.1:{port}"),
            format!(
                "redis-cluster://127.0.0.1:{port}?node=127.0.0.1:{}",
                port + 1
            ),
            format!("redis-sentinel://127.0.0.1:{port}/1?sentinelServiceName=mymaster"),
        ] {
            let start = std::time::Instant::now();
            let s = RedisStore::connect(&url, MS(200)).await.unwrap();
            assert!(start.elapsed() < Duration::from_secs(1), "{url}");
            fails_fast(&url, WITHIN_1S, s.get("k")).await;
            s.shutdown().await;
        }
    }

    #[tokio::test]
    async fn redis_down_at_start_fails_fast_then_recovers() {
        let port = free_port();
        let s = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), DEFAULT_OP_TIMEOUT)
            .await
            .unwrap();
        all_ops_fail_fast(&s, AT_ONCE).await;
        if redis_url().is_none() {
            return;
        }
        let Some(bin) = RedisServer::binary() else {
            return;
        };
        let _server = RedisServer::start(&bin, port);
        wait_until_up(&s).await;
        s.set("k", "v", LONG).await.unwrap();
        assert_eq!(s.get("k").await.unwrap().as_deref(), Some("v"));
    }

    #[tokio::test]
    async fn redis_outage_and_recovery() {
        if redis_url().is_none() {
            return;
        }
        let Some(bin) = RedisServer::binary() else {
            return;
        };
        let port = free_port();
        let server = RedisServer::start(&bin, port);
        let s = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), DEFAULT_OP_TIMEOUT)
            .await
            .unwrap();
        s.set("k", "v", LONG).await.unwrap();

        // A hung server (stopped, not dead): commands time out instead of waiting.
        server.signal("-STOP");
        all_ops_fail_fast(&s, WITHIN_1S).await;
        server.signal("-CONT");
        wait_until_up(&s).await;
        assert_eq!(s.get("k").await.unwrap().as_deref(), Some("v"));

        // A dead server: commands fail, immediately after the kill and while it stays down.
        drop(server);
        all_ops_fail_fast(&s, WITHIN_1S).await;
        // Once the loss is noticed, commands are refused at once instead of queued.
        tokio::time::sleep(MS(700)).await;
        all_ops_fail_fast(&s, AT_ONCE).await;

        // Back on the same port (empty, no persistence): the same store works again.
        let _server = RedisServer::start(&bin, port);
        wait_until_up(&s).await;
        assert_eq!(s.get("k").await.unwrap(), None);
        s.set("k", "v2", LONG).await.unwrap();
        assert_eq!(s.take("k").await.unwrap().as_deref(), Some("v2"));
        assert_eq!(s.incr("c", LONG).await.unwrap(), 1);
    }
}

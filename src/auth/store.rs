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

use std::time::Duration;

mod memory;
mod redis;

pub use memory::{Clock, MemoryStore};
pub use redis::{RedisStore, DEFAULT_OP_TIMEOUT};

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    pub(super) type Advance =
        Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

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

    pub(super) fn memory() -> (Arc<MemoryStore>, Advance) {
        let (clock, advance) = manual_clock();
        (Arc::new(MemoryStore::with_clock(clock)), advance)
    }

    /// Real time for Redis: a little past the requested span, so the server has expired keys.
    pub(super) fn sleeper() -> Advance {
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

    pub(super) const MS: fn(u64) -> Duration = Duration::from_millis;
    pub(super) const LONG: Duration = Duration::from_secs(60);

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

    pub(super) async fn check_all(s: Arc<dyn SessionStore>, advance: Advance) {
        let p = unique_prefix();
        check_kv(s.as_ref(), &p).await;
        check_expiry(s.as_ref(), &p, &advance).await;
        check_sets(s.as_ref(), &p, &advance).await;
        check_incr(s.as_ref(), &p, &advance).await;
        check_take_is_atomic(s, &p).await;
    }

    // ---- MemoryStore ----------------------------------------------------------------------

    #[test]
    fn ttl_rounding() {
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_millis(MS(500)), 500);
        assert_eq!(ttl_millis(Duration::MAX), MAX_TTL_MS);
    }
}

//! [`MemoryStore`]: the in-process [`SessionStore`], for a single gateway instance.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{ttl_millis, wrong_type, SessionStore, StoreError};

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

#[cfg(test)]
mod tests {
    use super::super::tests::{check_all, memory, LONG, MS};
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_semantics() {
        let (s, advance) = memory();
        assert_eq!(s.kind(), "memory");
        check_all(s, advance).await;
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
}

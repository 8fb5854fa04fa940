//! The response cache's storage: a pingora-cache [`Storage`] kept in memory under a byte bound.
//!
//! Every entry is weighed as key + serialized meta + body; when an insert takes the total over
//! `max_size`, the least recently used entries go first (a hit counts as a use). Entries remember
//! their route and primary key (host and URL), so an SRE can purge a route, a URL prefix or all
//! of it. Bodies are `Bytes`: a hit clones a pointer, never the body.
//!
//! Not here: what may be cached and for how long (the parent module), nor the hit/miss state
//! machine (pingora-cache's `HttpCache`, driven by pingora-proxy).

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::eviction::CacheEntryId;
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// What a purge selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    /// Every entry stored for this route name.
    Route(String),
    /// Every entry whose URL path starts with this prefix (on any host), optionally only
    /// of one route.
    Prefix {
        prefix: String,
        route: Option<String>,
    },
}

/// Counters read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: usize,
    pub bytes: usize,
    pub evictions: u64,
}

struct Entry {
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
    weight: usize,
    tick: u64,
    route: String,
    /// The URL path the entry was stored for (what prefix purges match).
    path: String,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Use order: tick → key; the first is the least recently used.
    lru: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, key: &str) -> bool {
        match self.map.remove(key) {
            Some(e) => {
                self.lru.remove(&e.tick);
                self.bytes -= e.weight;
                true
            }
            None => false,
        }
    }
}

/// The in-memory store. Built once per gateway and leaked: pingora-cache wants `&'static`.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    max_size: AtomicUsize,
    max_object_size: AtomicUsize,
    evictions: AtomicU64,
}

/// The primary key is `route \n host \n path?query`; the path is what prefix purges match.
pub fn primary_key(route: &str, host: &str, path_and_query: &str) -> String {
    format!("{route}\n{host}\n{path_and_query}")
}

fn path_of(primary: &str) -> &str {
    let target = primary.splitn(3, '\n').nth(2).unwrap_or("");
    target.split('?').next().unwrap_or("")
}

impl MemoryStore {
    pub fn new(max_size: usize, max_object_size: usize) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            max_size: AtomicUsize::new(max_size),
            max_object_size: AtomicUsize::new(max_object_size),
            evictions: AtomicU64::new(0),
        }
    }

    /// New bounds (a reload); entries over the new total are evicted at once.
    pub fn set_limits(&self, max_size: usize, max_object_size: usize) {
        self.max_size.store(max_size, Ordering::Release);
        self.max_object_size
            .store(max_object_size, Ordering::Release);
        let mut g = self.lock();
        self.evict_to(&mut g, max_size);
    }

    pub fn max_object_size(&self) -> usize {
        self.max_object_size.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> Stats {
        let g = self.lock();
        Stats {
            entries: g.map.len(),
            bytes: g.bytes,
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// Removes what `sel` selects; returns how many entries went.
    pub fn purge_matching(&self, sel: &Selector) -> usize {
        let mut g = self.lock();
        let keys: Vec<String> = g
            .map
            .iter()
            .filter(|(_, e)| match sel {
                Selector::All => true,
                Selector::Route(r) => &e.route == r,
                Selector::Prefix { prefix, route } => {
                    route.as_ref().is_none_or(|r| &e.route == r) && path_matches(&e.path, prefix)
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            g.remove(k);
        }
        keys.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn evict_to(&self, g: &mut Inner, limit: usize) {
        while g.bytes > limit {
            let Some((_, key)) = g.lru.pop_first() else {
                break;
            };
            if let Some(e) = g.map.remove(&key) {
                g.bytes -= e.weight;
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn insert(&self, key: String, entry: Entry) -> usize {
        let weight = entry.weight;
        if weight > self.max_size.load(Ordering::Acquire) {
            return 0;
        }
        let mut g = self.lock();
        g.remove(&key);
        g.tick += 1;
        let tick = g.tick;
        g.lru.insert(tick, key.clone());
        g.bytes += weight;
        g.map.insert(key, Entry { tick, ..entry });
        let limit = self.max_size.load(Ordering::Acquire);
        self.evict_to(&mut g, limit);
        weight
    }
}

/// Whether `path` is `prefix` or lies below it on a segment boundary (`/a` covers `/a/b`,
/// not `/ab`); a prefix ending in `/` covers everything under it.
fn path_matches(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = key.combined();
        let (meta, body) = {
            let mut g = self.lock();
            g.tick += 1;
            let tick = g.tick;
            let Some(e) = g.map.get_mut(&hash) else {
                return Ok(None);
            };
            let old = std::mem::replace(&mut e.tick, tick);
            let found = (e.meta.clone(), e.body.clone());
            g.lru.remove(&old);
            g.lru.insert(tick, hash);
            found
        };
        let meta = CacheMeta::deserialize(&meta.0, &meta.1)?;
        let end = body.len();
        Ok(Some((
            meta,
            Box::new(Hit {
                body,
                start: 0,
                end,
                done: false,
            }),
        )))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let primary = key.primary_key_str().unwrap_or("").to_string();
        Ok(Box::new(Miss {
            store: self,
            key: key.combined(),
            route: key.user_tag().to_string(),
            path: path_of(&primary).to_string(),
            meta: meta.serialize()?,
            body: BytesMut::new(),
            limit: self.max_object_size(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let removed = self.lock().remove(&target.key().combined());
        Ok(if removed {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let serialized = meta.serialize()?;
        let mut g = self.lock();
        let Some(e) = g.map.get_mut(&key.combined()) else {
            return Ok(false);
        };
        let new_weight =
            e.weight - e.meta.0.len() - e.meta.1.len() + serialized.0.len() + serialized.1.len();
        let old_weight = std::mem::replace(&mut e.weight, new_weight);
        e.meta = serialized;
        g.bytes = g.bytes - old_weight + new_weight;
        Ok(true)
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync + 'static) {
        self
    }
}

/// A stored body being read.
struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(ErrorType::InternalError, "seek start out of range");
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        None
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A response being stored; it enters the store only when its body is complete.
struct Miss {
    store: &'static MemoryStore,
    key: String,
    route: String,
    path: String,
    meta: (Vec<u8>, Vec<u8>),
    body: BytesMut,
    limit: usize,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.body.len() + data.len() > self.limit {
            // pingora-proxy stops filling the cache and keeps serving the client.
            return Error::e_explain(
                ErrorType::InternalError,
                "response larger than server.cache.max_object_size",
            );
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let this = *self;
        let weight = this.key.len() + this.meta.0.len() + this.meta.1.len() + this.body.len();
        let stored = this.store.insert(
            this.key,
            Entry {
                meta: this.meta,
                body: this.body.freeze(),
                weight,
                tick: 0,
                route: this.route,
                path: this.path,
            },
        );
        Ok(MissFinishType::Created(stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    fn store(max: usize) -> &'static MemoryStore {
        Box::leak(Box::new(MemoryStore::new(max, max)))
    }

    fn meta() -> CacheMeta {
        let now = SystemTime::now();
        let resp = ResponseHeader::build(200, None).expect("header");
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, resp)
    }

    fn key(route: &str, path: &str) -> CacheKey {
        CacheKey::new(primary_key(route, "h", path), route)
    }

    async fn put(s: &'static MemoryStore, k: &CacheKey, body: &[u8]) -> usize {
        let trace = pingora::cache::trace::Span::inactive().handle();
        let mut m = s.get_miss_handler(k, &meta(), &trace).await.expect("miss");
        m.write_body(Bytes::copy_from_slice(body), true)
            .await
            .expect("write");
        match m.finish().await.expect("finish") {
            MissFinishType::Created(n) => n,
            MissFinishType::Appended(n, _) => n,
        }
    }

    async fn body_of(s: &'static MemoryStore, k: &CacheKey) -> Option<Bytes> {
        let trace = pingora::cache::trace::Span::inactive().handle();
        let (_, mut hit) = s.lookup(k, &trace).await.expect("lookup")?;
        hit.read_body().await.expect("read")
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn stored_body_comes_back_whole() {
        block_on(async {
            let s = store(1 << 20);
            let k = key("r", "/a");
            assert!(put(s, &k, b"hello").await > 5);
            assert_eq!(body_of(s, &k).await.as_deref(), Some(&b"hello"[..]));
            assert_eq!(s.stats().entries, 1);
        });
    }

    #[test]
    fn least_recently_used_entry_is_evicted_to_stay_under_the_bound() {
        block_on(async {
            let probe = store(1 << 20);
            let one = put(probe, &key("r", "/x"), &[0u8; 1000]).await;
            // Room for two entries of this size, not three.
            let s = store(one * 2 + one / 2);
            let (a, b, c) = (key("r", "/a"), key("r", "/b"), key("r", "/c"));
            put(s, &a, &[1u8; 1000]).await;
            put(s, &b, &[2u8; 1000]).await;
            assert!(body_of(s, &a).await.is_some()); // a is now more recent than b
            put(s, &c, &[3u8; 1000]).await;
            assert!(body_of(s, &b).await.is_none(), "b was least recently used");
            assert!(body_of(s, &a).await.is_some());
            assert!(body_of(s, &c).await.is_some());
            let st = s.stats();
            assert_eq!((st.entries, st.evictions), (2, 1));
            assert!(st.bytes <= one * 2 + one / 2);
        });
    }

    #[test]
    fn an_object_over_the_object_limit_is_not_stored() {
        block_on(async {
            let s: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(1 << 20, 10)));
            let k = key("r", "/big");
            let trace = pingora::cache::trace::Span::inactive().handle();
            let mut m = s.get_miss_handler(&k, &meta(), &trace).await.expect("miss");
            assert!(m
                .write_body(Bytes::from_static(&[0; 11]), true)
                .await
                .is_err());
            drop(m);
            assert!(body_of(s, &k).await.is_none());
            assert_eq!(s.stats(), Stats::default());
        });
    }

    #[test]
    fn purge_by_route_prefix_and_all() {
        block_on(async {
            let s = store(1 << 20);
            for (r, p) in [
                ("a", "/x/1"),
                ("a", "/x/2?q=1"),
                ("a", "/xy"),
                ("b", "/x/3"),
            ] {
                put(s, &key(r, p), b"1").await;
            }
            let sel = Selector::Prefix {
                prefix: "/x".into(),
                route: Some("a".into()),
            };
            assert_eq!(s.purge_matching(&sel), 2, "/xy is not under /x");
            assert!(body_of(s, &key("a", "/xy")).await.is_some());
            assert!(body_of(s, &key("b", "/x/3")).await.is_some());
            assert_eq!(s.purge_matching(&Selector::Route("b".into())), 1);
            assert_eq!(s.purge_matching(&Selector::All), 1);
            assert_eq!(s.stats().bytes, 0);
        });
    }

    #[test]
    fn lowering_the_bound_evicts_at_once() {
        block_on(async {
            let s = store(1 << 20);
            let one = put(s, &key("r", "/a"), &[0u8; 100]).await;
            put(s, &key("r", "/b"), &[0u8; 100]).await;
            s.set_limits(one + one / 2, one);
            assert_eq!(s.stats().entries, 1);
            assert!(body_of(s, &key("r", "/b")).await.is_some());
        });
    }

    #[test]
    fn seek_serves_a_byte_range() {
        block_on(async {
            let s = store(1 << 20);
            let k = key("r", "/r");
            put(s, &k, b"0123456789").await;
            let trace = pingora::cache::trace::Span::inactive().handle();
            let (_, mut hit) = s.lookup(&k, &trace).await.expect("ok").expect("hit");
            hit.seek(2, Some(5)).expect("seek");
            assert_eq!(
                hit.read_body().await.expect("read").as_deref(),
                Some(&b"234"[..])
            );
            assert!(hit.seek(10, None).is_err());
        });
    }
}

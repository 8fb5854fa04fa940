//! Live-session checks without a Redis round trip on every request, while revocation stays
//! immediate across instances.
//!
//! Each instance keeps a small cache `jti → when its session key expires`. A hit answers
//! the live-session check locally. Every instance subscribes to a Redis pub/sub channel;
//! ending a session (logout, logout-all, refresh rotation, refresh reuse) publishes the dead
//! access-token ids there after deleting their keys, and every instance drops them from its
//! cache — so a logout through one instance is refused by the others on their next request
//! (milliseconds, the pub/sub latency). While the subscription is down (or before it is up)
//! the cache is not used at all and every check goes to Redis, so a missed message can never
//! keep a dead session alive. Entries also age out after `max_age` as a last bound.

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::{Builder, Config};
use fred::types::config::ReconnectPolicy;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The channel revoked access-token ids are published on.
pub const CHANNEL: &str = "gatehouse:revoked";

/// Largest number of cached sessions per instance; past it the cache is cleared.
const MAX_ENTRIES: usize = 200_000;

/// `jti → (key expiry estimate, cached at)`; usable only while `enabled`.
pub struct LiveCache {
    entries: Mutex<HashMap<String, (Instant, Instant)>>,
    enabled: AtomicBool,
    max_age: Duration,
}

impl LiveCache {
    pub fn new(max_age: Duration) -> LiveCache {
        LiveCache {
            entries: Mutex::new(HashMap::new()),
            enabled: AtomicBool::new(false),
            max_age,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remaining TTL of a cached live session, when the cache may be trusted.
    pub fn get(&self, jti: &str, now: Instant) -> Option<Duration> {
        if !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        let g = self.lock();
        let (expires, cached) = g.get(jti)?;
        if now.duration_since(*cached) > self.max_age || *expires <= now {
            return None;
        }
        Some(expires.duration_since(now))
    }

    pub fn put(&self, jti: &str, ttl: Duration, now: Instant) {
        if !self.enabled.load(Ordering::Acquire) {
            return;
        }
        let mut g = self.lock();
        if g.len() >= MAX_ENTRIES {
            g.retain(|_, (e, c)| *e > now && now.duration_since(*c) <= self.max_age);
            if g.len() >= MAX_ENTRIES {
                g.clear();
            }
        }
        g.insert(jti.to_string(), (now + ttl, now));
    }

    pub fn evict(&self, jti: &str) {
        self.lock().remove(jti);
    }

    fn set_enabled(&self, on: bool) {
        if !on {
            self.enabled.store(false, Ordering::Release);
        }
        self.lock().clear();
        if on {
            self.enabled.store(true, Ordering::Release);
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }
}

/// The subscription that keeps a [`LiveCache`] honest, and the publisher of revocations.
pub struct Revocations {
    pub cache: Arc<LiveCache>,
    publisher: Client,
    /// `None` for a publisher only (the CLI): it keeps no cache to be told about.
    _subscriber: Option<SubscriberClient>,
}

impl Revocations {
    /// Subscribes (reconnecting forever) on a dedicated connection to `url`; publishes
    /// through `publisher` (the session store's client).
    pub async fn start(
        url: &str,
        publisher: Client,
        max_age: Duration,
    ) -> Result<Revocations, String> {
        let config = Config::from_url(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
        let mut builder = Builder::from_config(config);
        builder.set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| format!("subscriber: {e}"))?;
        let cache = Arc::new(LiveCache::new(max_age));

        let c = cache.clone();
        subscriber.on_message(move |msg| {
            if let Some(text) = msg.value.as_str() {
                for jti in text.split_whitespace() {
                    c.evict(jti);
                }
            }
            async { Ok(()) }
        });
        let c = cache.clone();
        subscriber.on_error(move |(error, _)| {
            // Messages may be lost while down: stop trusting the cache.
            c.set_enabled(false);
            tracing::warn!(%error, "session revocation channel down; checking every request in Redis");
            async { Ok(()) }
        });
        let c = cache.clone();
        let resub = subscriber.clone();
        subscriber.on_reconnect(move |_| {
            let c = c.clone();
            let resub = resub.clone();
            async move {
                if resub.resubscribe_all().await.is_ok() {
                    c.set_enabled(true);
                    tracing::info!("session revocation channel restored");
                }
                Ok(())
            }
        });
        let _task = subscriber.connect();
        let _manage = subscriber.manage_subscriptions();
        let first = async {
            subscriber.wait_for_connect().await?;
            subscriber.subscribe(CHANNEL).await
        };
        match tokio::time::timeout(Duration::from_secs(2), first).await {
            Ok(Ok(())) => cache.set_enabled(true),
            _ => tracing::warn!("session revocation channel not up yet; the local session cache stays off until it is"),
        }
        Ok(Revocations {
            cache,
            publisher,
            _subscriber: Some(subscriber),
        })
    }

    /// Publishes revocations without listening (a process that checks no sessions: the CLI
    /// ending a user's sessions). Its cache stays off.
    pub fn publisher_only(publisher: Client) -> Revocations {
        Revocations {
            cache: Arc::new(LiveCache::new(Duration::ZERO)),
            publisher,
            _subscriber: None,
        }
    }

    /// Tells every instance that these access-token ids are dead (after their keys are gone).
    pub async fn publish(&self, jtis: &[String]) {
        for jti in jtis {
            self.cache.evict(jti);
        }
        if jtis.is_empty() {
            return;
        }
        let msg = jtis.join(" ");
        let r: Result<i64, _> = tokio::time::timeout(
            Duration::from_millis(500),
            self.publisher.publish(CHANNEL, msg.as_str()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(fred::error::Error::new(
                fred::error::ErrorKind::Timeout,
                "publish timed out",
            ))
        });
        if let Err(e) = r {
            // The keys are already deleted; peers fall back to Redis within `max_age`.
            tracing::warn!(error = %e, "could not publish a session revocation");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_not_trusted_until_enabled_and_entries_age_out() {
        let c = LiveCache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        c.put("a", Duration::from_secs(100), t0);
        assert_eq!(c.get("a", t0), None, "disabled: nothing cached or answered");
        c.set_enabled(true);
        c.put("a", Duration::from_secs(100), t0);
        assert_eq!(
            c.get("a", t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            c.get("a", t0 + Duration::from_secs(31)),
            None,
            "older than max_age"
        );
        c.evict("a");
        assert_eq!(c.get("a", t0), None);
        c.put("b", Duration::from_secs(5), t0);
        assert_eq!(
            c.get("b", t0 + Duration::from_secs(6)),
            None,
            "the key has expired"
        );
        c.set_enabled(false);
        c.set_enabled(true);
        c.put("x", Duration::from_secs(5), t0);
        c.set_enabled(false);
        assert_eq!(c.get("x", t0), None, "disabling clears and stops answering");
    }
}

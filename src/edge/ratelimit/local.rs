//! The in-process backend: GCRA state per key in sharded maps, with bounded size and idle
//! eviction (one instance, or `backend: local` on purpose).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{gcra, Clock, Decision, Params, FULL_SWEEP_GAP, SHARDS, SWEEP_INTERVAL, SWEEP_MIN_LEN};

pub(super) struct Shard {
    pub(super) tats: HashMap<String, Instant>,
    pub(super) last_sweep: Instant,
    pub(super) sweep_at_len: usize,
}

impl Shard {
    /// Drops every entry whose TAT has passed: for GCRA that is the same as no entry.
    pub(super) fn sweep(&mut self, now: Instant) {
        self.tats.retain(|_, tat| *tat > now);
        let len = self.tats.len();
        if self.tats.capacity() > SWEEP_MIN_LEN && self.tats.capacity() > len * 4 {
            self.tats.shrink_to(len * 2);
        }
        self.last_sweep = now;
        self.sweep_at_len = (len * 2).max(SWEEP_MIN_LEN);
    }
}

pub(super) struct Local {
    pub(super) shards: Vec<Mutex<Shard>>,
    pub(super) hasher: RandomState,
    pub(super) max_per_shard: usize,
    pub(super) clock: Clock,
    pub(super) full_logged: AtomicBool,
}

impl Local {
    pub(super) fn new(max_keys: usize) -> Local {
        let clock: Clock = Arc::new(Instant::now);
        let now = clock();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    tats: HashMap::new(),
                    last_sweep: now,
                    sweep_at_len: SWEEP_MIN_LEN,
                })
            })
            .collect();
        Local {
            shards,
            hasher: RandomState::new(),
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
            clock,
            full_logged: AtomicBool::new(false),
        }
    }

    pub(super) fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn check(&self, name: &str, key: &str, p: &Params) -> Decision {
        let now = (self.clock)();
        let mut s = self.shard(key);
        if s.tats.len() >= s.sweep_at_len
            || now.saturating_duration_since(s.last_sweep) >= SWEEP_INTERVAL
        {
            s.sweep(now);
        }
        if let Some(tat) = s.tats.get_mut(key) {
            let (d, next) = gcra(tat.saturating_duration_since(now), p);
            if let Some(next) = next {
                *tat = now + next;
            }
            return d;
        }
        let (d, next) = gcra(Duration::ZERO, p);
        if let Some(next) = next {
            // While full, sweep at most once per gap: a flood of new keys must not turn every
            // request into a scan of the shard.
            if s.tats.len() >= self.max_per_shard
                && now.saturating_duration_since(s.last_sweep) >= FULL_SWEEP_GAP
            {
                s.sweep(now);
            }
            if s.tats.len() < self.max_per_shard {
                s.tats.insert(key.to_owned(), now + next);
            } else if !self.full_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    limiter = %name,
                    max_keys = self.max_per_shard * SHARDS,
                    "rate limit: key table full, new keys are allowed without being counted"
                );
            }
        }
        d
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).tats.len())
            .sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Redis backend
// ---------------------------------------------------------------------------------------------

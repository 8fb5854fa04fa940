//! Per-backend circuit breaker: closed → open after N consecutive failures, or a failure
//! rate ≥ X % over a window with at least M requests; open for a cool-down that doubles
//! (5 s up to 60 s by default); half-open lets K probes through; a probe's success closes
//! it, a probe's failure re-opens it with the next cool-down.
//!
//! Pure state machine: every call takes `now`, so tests drive it with an injected clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker thresholds (from `upstreams.NAME.circuit_breaker`).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    /// Failure rate in percent (1–100) that opens the breaker over `window`.
    pub failure_rate: u32,
    pub window: Duration,
    pub min_requests: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 50,
            window: Duration::from_secs(10),
            min_requests: 20,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(60),
            half_open_probes: 1,
        }
    }
}

/// The exported state: 0 closed, 1 open, 2 half-open (the metric's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

const BUCKETS: usize = 10;

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive: u32,
    /// Ring of (bucket start, requests, failures) over `window`.
    buckets: [(Option<Instant>, u32, u32); BUCKETS],
    open_until: Instant,
    /// Cool-down used by the last opening; doubles on each re-open from half-open.
    cooldown: Duration,
    probes_in_flight: u32,
    half_open_since: Instant,
}

/// See the module docs. Cheap to query; one short lock per call.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    epoch: Instant,
    inner: Mutex<Inner>,
}

/// A state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig, now: Instant) -> Breaker {
        let cooldown = cfg.cooldown;
        Breaker {
            cfg,
            epoch: now,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive: 0,
                buckets: [(None, 0, 0); BUCKETS],
                open_until: now,
                cooldown,
                probes_in_flight: 0,
                half_open_since: now,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        let g = self.lock();
        match g.state {
            BreakerState::Open if now >= g.open_until => BreakerState::HalfOpen,
            s => s,
        }
    }

    /// Whether a request may go to this backend now. In half-open this takes one of the
    /// K probe slots; the slot is given back by [`Breaker::record`].
    pub fn try_acquire(&self, now: Instant) -> (bool, Option<Transition>) {
        let mut g = self.lock();
        match g.state {
            BreakerState::Closed => (true, None),
            BreakerState::Open if now < g.open_until => (false, None),
            BreakerState::Open => {
                g.state = BreakerState::HalfOpen;
                g.half_open_since = now;
                g.probes_in_flight = 1;
                (
                    true,
                    Some(Transition {
                        from: BreakerState::Open,
                        to: BreakerState::HalfOpen,
                    }),
                )
            }
            BreakerState::HalfOpen => {
                // A probe that never reported (client gone) must not wedge the breaker.
                if now.duration_since(g.half_open_since) > self.cfg.max_cooldown {
                    g.probes_in_flight = 0;
                    g.half_open_since = now;
                }
                if g.probes_in_flight < self.cfg.half_open_probes {
                    g.probes_in_flight += 1;
                    (true, None)
                } else {
                    (false, None)
                }
            }
        }
    }

    /// Gives back a half-open probe slot without an outcome: the request ended for a reason
    /// that says nothing about the backend (the client went away).
    pub fn release(&self) {
        let mut g = self.lock();
        if g.state == BreakerState::HalfOpen {
            g.probes_in_flight = g.probes_in_flight.saturating_sub(1);
        }
    }

    /// Records the outcome of one request to this backend.
    pub fn record(&self, success: bool, now: Instant) -> Option<Transition> {
        let mut g = self.lock();
        let window = self.cfg.window;
        let slot_len = window / BUCKETS as u32;
        match g.state {
            BreakerState::HalfOpen => {
                g.probes_in_flight = g.probes_in_flight.saturating_sub(1);
                if success {
                    g.state = BreakerState::Closed;
                    g.consecutive = 0;
                    g.cooldown = self.cfg.cooldown;
                    g.buckets = [(None, 0, 0); BUCKETS];
                    Some(Transition {
                        from: BreakerState::HalfOpen,
                        to: BreakerState::Closed,
                    })
                } else {
                    let next = (g.cooldown * 2).min(self.cfg.max_cooldown);
                    g.cooldown = next;
                    g.open_until = now + next;
                    g.state = BreakerState::Open;
                    Some(Transition {
                        from: BreakerState::HalfOpen,
                        to: BreakerState::Open,
                    })
                }
            }
            // Late outcomes of requests sent before the breaker opened change nothing.
            BreakerState::Open => None,
            BreakerState::Closed => {
                let idx = bucket_index(self.epoch, now, slot_len);
                let b = &mut g.buckets[idx];
                if b.0
                    .is_none_or(|start| now.duration_since(start) >= slot_len)
                {
                    *b = (Some(now), 0, 0);
                }
                b.1 += 1;
                if !success {
                    b.2 += 1;
                }
                if success {
                    g.consecutive = 0;
                    return None;
                }
                g.consecutive += 1;
                let (total, failed) = g
                    .buckets
                    .iter()
                    .filter(|(start, _, _)| start.is_some_and(|s| now.duration_since(s) < window))
                    .fold((0u32, 0u32), |(t, f), (_, r, x)| (t + r, f + x));
                let by_count = g.consecutive >= self.cfg.consecutive_failures;
                let by_rate = total >= self.cfg.min_requests
                    && u64::from(failed) * 100
                        >= u64::from(self.cfg.failure_rate) * u64::from(total);
                if by_count || by_rate {
                    g.state = BreakerState::Open;
                    g.cooldown = self.cfg.cooldown;
                    g.open_until = now + g.cooldown;
                    g.consecutive = 0;
                    Some(Transition {
                        from: BreakerState::Closed,
                        to: BreakerState::Open,
                    })
                } else {
                    None
                }
            }
        }
    }
}

/// Buckets are indexed by time slot since `epoch`, so a bucket is reused only after a
/// full window.
fn bucket_index(epoch: Instant, now: Instant, slot_len: Duration) -> usize {
    let slot = now.saturating_duration_since(epoch).as_nanos() / slot_len.as_nanos().max(1);
    (slot % BUCKETS as u128) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 50,
            window: Duration::from_secs(10),
            min_requests: 10,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(60),
            half_open_probes: 1,
        }
    }

    /// A breaker of [`cfg`] opened by three consecutive failures at the returned instant.
    fn opened() -> (Breaker, Instant) {
        let t0 = Instant::now();
        let b = Breaker::new(cfg(), t0);
        for _ in 0..3 {
            b.record(false, t0);
        }
        (b, t0)
    }

    #[test]
    fn breaker_opens_after_consecutive_failures() {
        let t0 = Instant::now();
        let b = Breaker::new(cfg(), t0);
        assert_eq!(b.record(false, t0), None);
        assert_eq!(b.record(false, t0), None);
        assert_eq!(
            b.record(false, t0),
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            })
        );
        assert!(!b.try_acquire(t0 + Duration::from_secs(1)).0);
        assert_eq!(b.state(t0 + Duration::from_secs(1)), BreakerState::Open);
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let t0 = Instant::now();
        let b = Breaker::new(cfg(), t0);
        b.record(false, t0);
        b.record(false, t0);
        b.record(true, t0);
        b.record(false, t0);
        b.record(false, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn breaker_opens_on_failure_rate_with_enough_requests() {
        let t0 = Instant::now();
        let b = Breaker::new(cfg(), t0);
        // Alternate: never 3 in a row, but 50 % over 10 requests.
        let mut opened = None;
        for i in 0..10 {
            opened = opened.or(b.record(i % 2 == 0, t0 + Duration::from_millis(i * 100)));
        }
        assert_eq!(opened.map(|t| t.to), Some(BreakerState::Open));
    }

    #[test]
    fn failure_rate_needs_min_requests() {
        let t0 = Instant::now();
        let b = Breaker::new(cfg(), t0);
        for i in 0..8 {
            b.record(i % 2 == 0, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let b = Breaker::new(cfg(), t0);
        for i in 0..9 {
            b.record(i % 2 == 0, t0);
        }
        // 20 s later the earlier requests no longer count.
        let later = t0 + Duration::from_secs(20);
        assert_eq!(b.record(false, later), None);
        assert_eq!(b.state(later), BreakerState::Closed);
    }

    #[test]
    fn half_open_after_cooldown_lets_one_probe_and_success_closes() {
        let (b, t0) = opened();
        let t1 = t0 + Duration::from_secs(5);
        let (ok, tr) = b.try_acquire(t1);
        assert!(ok);
        assert_eq!(tr.map(|t| t.to), Some(BreakerState::HalfOpen));
        assert!(!b.try_acquire(t1).0, "only K=1 probe at a time");
        assert_eq!(b.record(true, t1).map(|t| t.to), Some(BreakerState::Closed));
        assert!(b.try_acquire(t1).0);
    }

    #[test]
    fn a_released_probe_frees_its_slot_without_judging_the_backend() {
        let (b, t0) = opened();
        let t1 = t0 + Duration::from_secs(5);
        assert!(b.try_acquire(t1).0);
        assert!(!b.try_acquire(t1).0);
        b.release(); // the probe's client hung up
        assert_eq!(
            b.state(t1),
            BreakerState::HalfOpen,
            "neither closed nor reopened"
        );
        assert!(b.try_acquire(t1).0, "the slot is free for another probe");
        // In the closed state a release changes nothing.
        let c = Breaker::new(cfg(), t0);
        c.release();
        assert!(c.try_acquire(t0).0);
    }

    #[test]
    fn failed_probe_reopens_with_doubled_cooldown_up_to_the_cap() {
        let (b, t0) = opened();
        let mut now = t0;
        let mut expected = Duration::from_secs(5);
        for _ in 0..6 {
            now += expected;
            assert!(b.try_acquire(now).0, "probe allowed after {expected:?}");
            assert_eq!(b.record(false, now).map(|t| t.to), Some(BreakerState::Open));
            expected = (expected * 2).min(Duration::from_secs(60));
            assert!(!b.try_acquire(now + expected - Duration::from_millis(1)).0);
        }
        assert_eq!(expected, Duration::from_secs(60));
        // Closing resets the cool-down to the base.
        now += expected;
        assert!(b.try_acquire(now).0);
        b.record(true, now);
        for _ in 0..3 {
            b.record(false, now);
        }
        assert!(!b.try_acquire(now + Duration::from_millis(4999)).0);
        assert!(b.try_acquire(now + Duration::from_secs(5)).0);
    }

    #[test]
    fn a_lost_probe_does_not_wedge_half_open() {
        let (b, t0) = opened();
        let t1 = t0 + Duration::from_secs(5);
        assert!(b.try_acquire(t1).0);
        assert!(!b.try_acquire(t1 + Duration::from_secs(1)).0);
        assert!(b.try_acquire(t1 + Duration::from_secs(61)).0);
    }
}

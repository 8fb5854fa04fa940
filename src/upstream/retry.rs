//! Retry decisions: which failures may be retried, whether this request is safe to send
//! again, how long to back off, and the per-pool retry budget that keeps a failing
//! upstream from seeing multiplied load.
//!
//! Pure logic over plain values; `proxy.rs` feeds it what happened and acts on the answer.

use http::Method;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Could not connect (refused, unreachable, connect timeout): nothing was sent.
    Connect,
    /// Connected, then a read or write timed out.
    Timeout,
    /// Connected, then the connection was reset or closed before a full answer.
    Reset,
    /// The upstream answered with this status.
    Status(u16),
}

impl Failure {
    /// Label for logs and the `reason` of `retries_total`.
    /// Every value [`Failure::reason`] gives (metric labels exported before any retry).
    pub const REASONS: [&'static str; 7] = [
        "connect_error",
        "timeout",
        "reset",
        "502",
        "503",
        "504",
        "status",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Connect => "connect_error",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Status(502) => "502",
            Failure::Status(503) => "503",
            Failure::Status(504) => "504",
            Failure::Status(_) => "status",
        }
    }

    /// Classifies a Pingora error from the upstream exchange.
    pub fn of(e: &pingora::Error) -> Failure {
        use pingora::ErrorType::*;
        match e.etype() {
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | BindError
            | SocketError | ConnectProxyFailure | TLSHandshakeFailure => Failure::Connect,
            ReadTimedout | WriteTimedout => Failure::Timeout,
            HTTPStatus(code) => Failure::Status(*code),
            _ => Failure::Reset,
        }
    }
}

/// The effective retry policy of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub retries: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub retry_on: Vec<String>,
    /// Retry any method once bytes may have reached the upstream.
    pub all_methods: bool,
    /// Retry a non-idempotent request that carries `Idempotency-Key`.
    pub idempotency_key: bool,
    /// Request bodies up to this many bytes are kept for replay.
    pub retry_buffer: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 2,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(1),
            retry_on: ["connect_error", "timeout", "reset", "502", "503", "504"]
                .map(String::from)
                .to_vec(),
            all_methods: false,
            idempotency_key: false,
            retry_buffer: 64 * 1024,
        }
    }
}

/// Why a failed attempt is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRetry {
    NotRetryable,
    Exhausted,
    UnsafeMethod,
    BodyNotBuffered,
    Deadline,
    Budget,
    NoOtherBackend,
    ResponseStarted,
}

impl NoRetry {
    pub fn as_str(&self) -> &'static str {
        match self {
            NoRetry::NotRetryable => "not_in_retry_on",
            NoRetry::Exhausted => "retries_exhausted",
            NoRetry::UnsafeMethod => "non_idempotent",
            NoRetry::BodyNotBuffered => "body_too_large",
            NoRetry::Deadline => "deadline",
            NoRetry::Budget => "budget_exhausted",
            NoRetry::NoOtherBackend => "no_other_backend",
            NoRetry::ResponseStarted => "response_started",
        }
    }
}

/// What is known about the request when an attempt fails.
#[derive(Debug, Clone)]
pub struct AttemptFacts<'a> {
    pub failure: Failure,
    pub method: &'a Method,
    pub has_idempotency_key: bool,
    /// Attempts made so far, including the failed one.
    pub attempts: u32,
    pub body_bytes: u64,
    pub body_truncated: bool,
}

impl RetryPolicy {
    /// Policy checks that do not depend on time, budget or backends.
    pub fn allows(&self, f: &AttemptFacts<'_>) -> Result<(), NoRetry> {
        if !self.retry_on.iter().any(|r| r == f.failure.reason()) {
            return Err(NoRetry::NotRetryable);
        }
        if f.attempts > self.retries {
            return Err(NoRetry::Exhausted);
        }
        if f.failure == Failure::Connect {
            // Nothing reached the upstream: always safe.
            return Ok(());
        }
        let idempotent = matches!(
            *f.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        );
        if !(idempotent || self.all_methods || (self.idempotency_key && f.has_idempotency_key)) {
            return Err(NoRetry::UnsafeMethod);
        }
        if f.body_truncated || f.body_bytes > self.retry_buffer {
            return Err(NoRetry::BodyNotBuffered);
        }
        Ok(())
    }

    /// Full-jitter exponential backoff before retry number `retry` (1-based):
    /// uniform in `[0, min(cap, base · 2^(retry-1))]`.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        exp.min(self.backoff_cap).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// `Retry-After` as delta-seconds (the HTTP-date form is not honoured).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Retry budget: retries may be at most `ratio` of requests over `window`, but at least
/// `min_per_second` per second are always allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    pub ratio: f64,
    pub min_per_second: u32,
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_per_second: 3,
            window: Duration::from_secs(10),
        }
    }
}

const SLOTS: usize = 10;

#[derive(Debug)]
pub struct RetryBudget {
    cfg: BudgetConfig,
    epoch: Instant,
    /// (slot number, requests, retries)
    slots: Mutex<[(u64, u64, u64); SLOTS]>,
}

impl RetryBudget {
    pub fn new(cfg: BudgetConfig, now: Instant) -> RetryBudget {
        RetryBudget {
            cfg,
            epoch: now,
            slots: Mutex::new([(u64::MAX, 0, 0); SLOTS]),
        }
    }

    fn slot(&self, now: Instant) -> u64 {
        let len = (self.cfg.window / SLOTS as u32).as_nanos().max(1);
        (now.saturating_duration_since(self.epoch).as_nanos() / len) as u64
    }

    fn with_slot<R>(
        &self,
        now: Instant,
        f: impl FnOnce(&mut [(u64, u64, u64); SLOTS], usize, u64) -> R,
    ) -> R {
        let slot = self.slot(now);
        let idx = (slot % SLOTS as u64) as usize;
        let mut g = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if g[idx].0 != slot {
            g[idx] = (slot, 0, 0);
        }
        f(&mut g, idx, slot)
    }

    /// Counts one original request.
    pub fn record_request(&self, now: Instant) {
        self.with_slot(now, |s, idx, _| s[idx].1 += 1);
    }

    /// Takes one retry from the budget if there is one.
    pub fn try_spend(&self, now: Instant) -> bool {
        let ratio = self.cfg.ratio;
        let floor = u64::from(self.cfg.min_per_second) * self.cfg.window.as_secs().max(1);
        self.with_slot(now, |s, idx, slot| {
            let live = |e: &(u64, u64, u64)| e.0 != u64::MAX && e.0 + SLOTS as u64 > slot;
            let (requests, retries) = s
                .iter()
                .filter(|e| live(e))
                .fold((0u64, 0u64), |(a, b), e| (a + e.1, b + e.2));
            let allowed = ((requests as f64 * ratio) as u64).max(floor);
            if retries < allowed {
                s[idx].2 += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(failure: Failure, method: &Method) -> AttemptFacts<'_> {
        AttemptFacts {
            failure,
            method,
            has_idempotency_key: false,
            attempts: 1,
            body_bytes: 0,
            body_truncated: false,
        }
    }

    #[test]
    fn connect_failures_are_always_safe_to_retry() {
        let p = RetryPolicy::default();
        assert_eq!(p.allows(&facts(Failure::Connect, &Method::POST)), Ok(()));
    }

    #[test]
    fn post_is_not_retried_once_bytes_may_have_been_sent() {
        let p = RetryPolicy::default();
        for f in [Failure::Reset, Failure::Timeout, Failure::Status(503)] {
            assert_eq!(
                p.allows(&facts(f, &Method::POST)),
                Err(NoRetry::UnsafeMethod),
                "{f:?}"
            );
            assert_eq!(p.allows(&facts(f, &Method::GET)), Ok(()), "{f:?}");
            assert_eq!(p.allows(&facts(f, &Method::PUT)), Ok(()), "{f:?}");
        }
    }

    #[test]
    fn opt_ins_allow_post() {
        let all = RetryPolicy {
            all_methods: true,
            ..Default::default()
        };
        assert_eq!(all.allows(&facts(Failure::Reset, &Method::POST)), Ok(()));
        let key = RetryPolicy {
            idempotency_key: true,
            ..Default::default()
        };
        let mut f = facts(Failure::Reset, &Method::POST);
        assert_eq!(key.allows(&f), Err(NoRetry::UnsafeMethod));
        f.has_idempotency_key = true;
        assert_eq!(key.allows(&f), Ok(()));
    }

    #[test]
    fn large_bodies_and_exhausted_attempts_are_not_retried() {
        let p = RetryPolicy::default();
        let mut f = facts(Failure::Reset, &Method::PUT);
        f.body_bytes = 64 * 1024 + 1;
        assert_eq!(p.allows(&f), Err(NoRetry::BodyNotBuffered));
        let mut f = facts(Failure::Reset, &Method::GET);
        f.attempts = 3;
        assert_eq!(p.allows(&f), Err(NoRetry::Exhausted));
        let only_connect = RetryPolicy {
            retry_on: vec!["connect_error".into()],
            ..Default::default()
        };
        assert_eq!(
            only_connect.allows(&facts(Failure::Status(503), &Method::GET)),
            Err(NoRetry::NotRetryable)
        );
    }

    #[test]
    fn backoff_is_full_jitter_exponential_and_capped() {
        let p = RetryPolicy {
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(300),
            ..Default::default()
        };
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(50));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(200));
        assert_eq!(p.backoff(4, 1.0), Duration::from_millis(300));
        assert_eq!(p.backoff(30, 1.0), Duration::from_millis(300));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(100));
    }

    #[test]
    fn budget_allows_the_floor_then_the_ratio() {
        let t0 = Instant::now();
        let b = RetryBudget::new(
            BudgetConfig {
                ratio: 0.2,
                min_per_second: 1,
                window: Duration::from_secs(10),
            },
            t0,
        );
        // No traffic: the floor (1/s over 10 s = 10) still allows retries.
        let spent = (0..50).filter(|_| b.try_spend(t0)).count();
        assert_eq!(spent, 10);
        // 100 requests → 20 % = 20 retries in the window.
        for _ in 0..100 {
            b.record_request(t0);
        }
        let more = (0..50).filter(|_| b.try_spend(t0)).count();
        assert_eq!(more, 10, "20 allowed in all, 10 already spent");
    }

    #[test]
    fn budget_recovers_after_the_window() {
        let t0 = Instant::now();
        let b = RetryBudget::new(
            BudgetConfig {
                ratio: 0.0,
                min_per_second: 1,
                window: Duration::from_secs(10),
            },
            t0,
        );
        assert_eq!((0..20).filter(|_| b.try_spend(t0)).count(), 10);
        assert!(!b.try_spend(t0 + Duration::from_secs(5)));
        assert!(b.try_spend(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn retry_after_parses_seconds() {
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}

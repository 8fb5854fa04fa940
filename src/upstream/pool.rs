//! One upstream pool: resolved backends behind a pingora `LoadBalancer`, with its
//! health-check settings, per-pool timeout defaults and TLS settings, and the Pingora peer
//! an attempt at one of its backends connects with.

use super::breaker::{Breaker, BreakerConfig, BreakerState, Transition};
use super::retry::{AttemptFacts, BudgetConfig, Failure, NoRetry, RetryBudget, RetryPolicy};
use super::tls::UpstreamTls;
use crate::config::{parse_backend_url, HashKeySpec};
use crate::config::{Balance, HealthCheckKind, UpstreamConfig};
use pingora::lb::discovery::Static;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a request's attempts stand, for [`Pool::decide_retry`].
pub struct RetryState<'a> {
    /// Backends tried so far.
    pub tried: &'a [SocketAddr],
    /// When the request's time runs out.
    pub deadline: Option<Instant>,
    /// The upstream's `Retry-After` (honoured on a 503).
    pub retry_after: Option<Duration>,
    /// The client already has the start of an answer.
    pub response_started: bool,
}

/// A retry allowed: wait `delay` first; `same_backend_ok`: the backend just tried may take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub delay: Duration,
    pub same_backend_ok: bool,
}

/// Why a pool could not be built (beyond what config validation already caught).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("upstreams.{pool}.backends[{index}]: cannot resolve {url:?}: {reason}")]
    Resolve {
        pool: String,
        index: usize,
        url: String,
        reason: String,
    },
    #[error("upstreams.{pool}.backends[{index}]: {reason}")]
    Invalid {
        pool: String,
        index: usize,
        reason: String,
    },
    #[error("upstreams.{pool}.health_check: {reason}")]
    HealthCheck { pool: String, reason: String },
}

/// A backend as configured and as resolved.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    pub url: String,
    pub addr: SocketAddr,
    pub weight: usize,
    /// `addr` as text, for metric labels (formatted once, not per request).
    pub label: String,
    /// `https://`: reached over TLS with the pool's settings.
    pub tls: bool,
    /// The name sent as SNI and verified (TLS backends only): `tls.server_name`, else the
    /// URL's host.
    pub server_name: String,
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
}

macro_rules! with_lb {
    ($b:expr, $lb:ident => $e:expr) => {
        match $b {
            Balancer::RoundRobin($lb) => $e,
            Balancer::Random($lb) => $e,
            Balancer::Consistent($lb) => $e,
        }
    };
}

/// A pool of backends. Shared (`Arc`) by routes and kept across reloads when its config
/// is unchanged, so health state survives.
pub struct Pool {
    pub name: String,
    pub config: UpstreamConfig,
    pub backends: Vec<BackendInfo>,
    pub hash_key: Option<HashKeySpec>,
    /// `tls:` with its files as read when the pool was built.
    pub tls: UpstreamTls,
    balancer: Balancer,
    health_interval: Option<Duration>,
    next_check: Mutex<Instant>,
    checking: AtomicBool,
    /// While set, one failed or passed check flips a backend: used for the first pass so
    /// that a dead backend is out before the first request, not after `fall` intervals.
    priming: Arc<AtomicBool>,
    /// One breaker per backend; empty when `circuit_breaker.enabled` is false. Found by a
    /// linear look (pools are small; a SipHash per lookup showed in profiles).
    breakers: Vec<(SocketAddr, Breaker)>,
    failure_statuses: Vec<u16>,
    pub budget: RetryBudget,
    /// This pool's attempt metrics, resolved once.
    pub series: crate::metrics::series::PoolSeries,
    /// The balancer's readiness of each backend (in `backends` order), copied after every
    /// health-check pass (the only thing that changes it): asking the balancer costs two
    /// SipHashes and a map lookup per pick.
    ready: Vec<AtomicBool>,
}

impl Pool {
    /// The metric label of a backend of this pool.
    pub fn backend_label(&self, addr: &SocketAddr) -> std::borrow::Cow<'_, str> {
        match self.backends.iter().find(|b| b.addr == *addr) {
            Some(b) => std::borrow::Cow::Borrowed(b.label.as_str()),
            None => std::borrow::Cow::Owned(addr.to_string()),
        }
    }

    /// The peer for one attempt at `addr`: plain HTTP, or TLS with this pool's SNI,
    /// verification, CA list and client certificate. The caller sets the timeouts.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        match self.backends.iter().find(|b| b.addr == addr) {
            Some(b) if b.tls => {
                let mut peer = HttpPeer::new(addr, true, b.server_name.clone());
                self.tls.apply(&mut peer);
                peer
            }
            // `addr` comes from this pool's picks, so it is always one of its backends.
            _ => HttpPeer::new(addr, false, String::new()),
        }
    }

    /// Resolves the backends (blocking DNS, once) and builds the balancer and health check.
    /// `tls` is the pool's `tls:` block with its files loaded ([`UpstreamTls::load`]).
    pub fn build(name: &str, cfg: &UpstreamConfig, tls: UpstreamTls) -> Result<Pool, PoolError> {
        let mut backends = Vec::new();
        for (index, entry) in cfg.backends.0.iter().enumerate() {
            let url = parse_backend_url(&entry.url).map_err(|reason| PoolError::Invalid {
                pool: name.into(),
                index,
                reason,
            })?;
            let addr = (url.host.as_str(), url.port)
                .to_socket_addrs()
                .map_err(|e| PoolError::Resolve {
                    pool: name.into(),
                    index,
                    url: entry.url.clone(),
                    reason: e.to_string(),
                })?
                .next()
                .ok_or_else(|| PoolError::Resolve {
                    pool: name.into(),
                    index,
                    url: entry.url.clone(),
                    reason: "no address".into(),
                })?;
            backends.push(BackendInfo {
                url: entry.url.clone(),
                label: addr.to_string(),
                addr,
                weight: entry.weight.max(1),
                tls: url.tls,
                server_name: if url.tls {
                    tls.server_name_for(&url.host)
                } else {
                    String::new()
                },
            });
        }
        let set: BTreeSet<Backend> = backends
            .iter()
            .map(|b| {
                let mut be = Backend::new_with_weight("0.0.0.0:0", b.weight).map_err(|e| {
                    PoolError::Invalid {
                        pool: name.into(),
                        index: 0,
                        reason: e.to_string(),
                    }
                })?;
                be.addr = pingora::protocols::l4::socket::SocketAddr::Inet(b.addr);
                Ok(be)
            })
            .collect::<Result<_, PoolError>>()?;

        let priming = Arc::new(AtomicBool::new(true));
        let check = match &cfg.health_check {
            None => None,
            Some(hc) => Some(build_check(
                name,
                cfg,
                hc,
                &backends,
                &tls,
                priming.clone(),
            )?),
        };
        let balancer = match cfg.balance {
            Balance::RoundRobin => Balancer::RoundRobin(make_lb(set, check)),
            Balance::Random => Balancer::Random(make_lb(set, check)),
            Balance::ConsistentHash => Balancer::Consistent(make_lb(set, check)),
        };
        let hash_key = match cfg.balance {
            Balance::ConsistentHash => Some(
                cfg.hash_key
                    .as_deref()
                    .and_then(HashKeySpec::parse)
                    .unwrap_or(HashKeySpec::ClientIp),
            ),
            _ => None,
        };
        let now = Instant::now();
        let cb = &cfg.circuit_breaker;
        let breaker_cfg = BreakerConfig {
            consecutive_failures: cb.consecutive_failures,
            failure_rate: cb.failure_rate,
            window: cb.window.0,
            min_requests: cb.min_requests,
            cooldown: cb.cooldown.0,
            max_cooldown: cb.max_cooldown.0,
            half_open_probes: cb.half_open_probes,
        };
        let breakers = if cb.enabled {
            backends
                .iter()
                .map(|b| (b.addr, Breaker::new(breaker_cfg.clone(), now)))
                .collect()
        } else {
            Vec::new()
        };
        let rb = &cfg.retry_budget;
        let budget = RetryBudget::new(
            BudgetConfig {
                ratio: rb.ratio,
                min_per_second: rb.min_per_second,
                window: rb.window.0,
            },
            now,
        );
        Ok(Pool {
            breakers,
            failure_statuses: cb.failure_statuses.clone(),
            budget,
            name: name.into(),
            config: cfg.clone(),
            backends,
            hash_key,
            tls,
            balancer,
            health_interval: cfg.health_check.as_ref().map(|h| h.interval.0),
            next_check: Mutex::new(Instant::now()),
            checking: AtomicBool::new(false),
            priming,
            series: Default::default(),
            ready: Vec::new(),
        }
        .with_readiness())
    }

    /// Picks a backend that is healthy, not in `exclude` and allowed by its breaker (which,
    /// half-open, hands out a probe slot). `key` matters only for consistent hashing.
    /// `None`: nobody can take the request.
    pub fn select(
        &self,
        key: &[u8],
        now: Instant,
        exclude: &[SocketAddr],
    ) -> Option<(SocketAddr, Option<Transition>)> {
        let transition = std::cell::Cell::new(None);
        let accept = |addr: &SocketAddr, ready: bool| {
            ready
                && !exclude.contains(addr)
                && self.breaker(addr).is_none_or(|br| {
                    let (ok, t) = br.try_acquire(now);
                    transition.set(t);
                    ok
                })
        };
        // One backend (the usual pool): nothing to balance, and the balancer's walk (a
        // hash set of the backends seen, a SipHash each) is most of the cost of a pick.
        if let [only] = self.backends.as_slice() {
            let ready = !exclude.contains(&only.addr) && self.is_healthy(&only.addr);
            return accept(&only.addr, ready).then(|| (only.addr, transition.get()));
        }
        let max = self.backends.len().max(1) * 4 + 16;
        let pick = with_lb!(&self.balancer, lb => lb.select_with(key, max, |b, ready| {
            b.addr.as_inet().is_some_and(|addr| accept(addr, ready))
        }));
        pick.and_then(|b| b.addr.as_inet().copied())
            .map(|a| (a, transition.get()))
    }

    fn breaker(&self, addr: &SocketAddr) -> Option<&Breaker> {
        self.breakers
            .iter()
            .find(|(a, _)| a == addr)
            .map(|(_, b)| b)
    }

    /// Whether some backend outside `exclude` could take a request now (no probe taken).
    pub fn has_candidate(&self, exclude: &[SocketAddr], now: Instant) -> bool {
        self.backends.iter().any(|b| {
            !exclude.contains(&b.addr)
                && self.is_healthy(&b.addr)
                && self.breaker_state(&b.addr, now) != BreakerState::Open
        })
    }

    /// The backend for the next attempt: as [`Pool::select`] among backends not tried yet; a
    /// retry on an upstream status (`same_backend_ok`) may go back to one already tried when
    /// no other can take it.
    pub fn pick(
        &self,
        key: &[u8],
        now: Instant,
        tried: &[SocketAddr],
        same_backend_ok: bool,
    ) -> Option<(SocketAddr, Option<Transition>)> {
        let pick = self.select(key, now, tried);
        if pick.is_none() && same_backend_ok && !tried.is_empty() {
            return self.select(key, now, &[]);
        }
        pick
    }

    /// The one retry decision for proxied requests and page data sources: the policy
    /// (`allows`), nothing of the answer sent yet, the wait (backoff, or a 503's
    /// `Retry-After`) within the deadline, another backend able to take it (a status retry
    /// may reuse the same one), and the pool's retry budget — spent only when all else
    /// says yes.
    pub fn decide_retry(
        &self,
        policy: &RetryPolicy,
        facts: &AttemptFacts<'_>,
        state: &RetryState<'_>,
        now: Instant,
    ) -> Result<Retry, NoRetry> {
        policy.allows(facts)?;
        if state.response_started {
            return Err(NoRetry::ResponseStarted);
        }
        let delay = match (facts.failure, state.retry_after) {
            (Failure::Status(503), Some(ra)) => ra,
            _ => policy.backoff(facts.attempts, rand::random::<f64>()),
        };
        let remaining = state
            .deadline
            .map_or(Duration::MAX, |d| d.saturating_duration_since(now));
        if delay >= remaining {
            return Err(NoRetry::Deadline);
        }
        let same_backend_ok = matches!(facts.failure, Failure::Status(_));
        if !same_backend_ok && !self.has_candidate(state.tried, now) {
            return Err(NoRetry::NoOtherBackend);
        }
        if !self.budget.try_spend(now) {
            return Err(NoRetry::Budget);
        }
        Ok(Retry {
            delay,
            same_backend_ok,
        })
    }

    /// Feeds one attempt's outcome to the backend's breaker.
    pub fn record(&self, addr: &SocketAddr, success: bool, now: Instant) -> Option<Transition> {
        self.breaker(addr).and_then(|b| b.record(success, now))
    }

    /// Ends a request to `addr` without judging the backend (see [`Breaker::release`]).
    pub fn release(&self, addr: &SocketAddr) {
        if let Some(b) = self.breaker(addr) {
            b.release();
        }
    }

    pub fn breaker_state(&self, addr: &SocketAddr, now: Instant) -> BreakerState {
        self.breaker(addr)
            .map_or(BreakerState::Closed, |b| b.state(now))
    }

    /// Whether an upstream status counts as a breaker failure.
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.failure_statuses.contains(&status)
    }

    /// Whether the balancer counts `addr` as ready (enabled and healthy), as of the last
    /// health-check pass.
    pub fn is_healthy(&self, addr: &SocketAddr) -> bool {
        match self.backends.iter().position(|b| b.addr == *addr) {
            Some(i) => self.ready[i].load(Ordering::Acquire),
            None => self.balancer_ready(addr),
        }
    }

    fn with_readiness(mut self) -> Pool {
        self.ready = (0..self.backends.len())
            .map(|_| AtomicBool::new(false))
            .collect();
        self.copy_readiness();
        self
    }

    /// Copies the balancer's readiness of every backend into `ready`.
    fn copy_readiness(&self) {
        for (b, r) in self.backends.iter().zip(&self.ready) {
            r.store(self.balancer_ready(&b.addr), Ordering::Release);
        }
    }

    /// Asks the balancer whether `addr` is ready.
    fn balancer_ready(&self, addr: &SocketAddr) -> bool {
        let b = Backend {
            addr: pingora::protocols::l4::socket::SocketAddr::Inet(*addr),
            weight: self
                .backends
                .iter()
                .find(|b| &b.addr == addr)
                .map_or(1, |b| b.weight),
            ext: Default::default(),
        };
        with_lb!(&self.balancer, lb => lb.backends().ready(&b))
    }

    pub fn has_health_check(&self) -> bool {
        self.health_interval.is_some()
    }

    /// Claims the next health-check pass if one is due and none is running. Cheap.
    pub fn claim_check(&self, now: Instant) -> bool {
        let Some(interval) = self.health_interval else {
            return false;
        };
        {
            let mut next = self.next_check.lock().unwrap_or_else(|p| p.into_inner());
            if *next > now {
                return false;
            }
            *next = now + interval;
        }
        !self.checking.swap(true, Ordering::AcqRel)
    }

    /// Runs a pass claimed with [`Pool::claim_check`].
    pub async fn run_claimed_check(&self) {
        self.run_check().await;
        self.checking.store(false, Ordering::Release);
    }

    /// One pass over every backend, all in parallel.
    pub async fn run_check(&self) {
        with_lb!(&self.balancer, lb => lb.backends().run_health_check(true).await);
        self.copy_readiness();
        self.priming.store(false, Ordering::Release);
    }
}

fn make_lb<S>(
    set: BTreeSet<Backend>,
    check: Option<Box<dyn HealthCheck + Send + Sync>>,
) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let mut backends = Backends::new(Static::new(set));
    if let Some(c) = check {
        backends.set_health_check(c);
    }
    let lb = LoadBalancer::from_backends(backends);
    // Static discovery never blocks; this publishes the membership to the selector.
    let fut = lb.update();
    futures_now(fut);
    lb
}

/// Polls a future that is known to complete without waiting (static discovery).
fn futures_now<F: std::future::Future>(fut: F) {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut fut = std::pin::pin!(fut);
    // Static discovery is ready on the first poll; anything else is a programming error
    // we surface as an empty pool rather than a panic.
    let _ = fut.as_mut().poll(&mut cx);
}

fn build_check(
    pool: &str,
    cfg: &UpstreamConfig,
    hc: &crate::config::HealthCheckConfig,
    backends: &[BackendInfo],
    tls: &UpstreamTls,
    priming: Arc<AtomicBool>,
) -> Result<Box<dyn HealthCheck + Send + Sync>, PoolError> {
    // One check per way of reaching a backend (plain, or TLS with its SNI): pingora's checks
    // take one peer template each.
    let mut ways: Vec<(bool, &str)> = Vec::new();
    let mut targets = Vec::new();
    for b in backends {
        let way = (b.tls, b.server_name.as_str());
        let index = match ways.iter().position(|w| *w == way) {
            Some(i) => i,
            None => {
                ways.push(way);
                ways.len() - 1
            }
        };
        targets.push((b.addr, index));
    }
    let checks = ways
        .iter()
        .map(|&(is_tls, server_name)| {
            let peer_tls = is_tls.then_some((tls, server_name));
            one_check(pool, cfg, hc, peer_tls)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Box::new(super::health::Check {
        checks,
        targets,
        pool: pool.into(),
        rise: hc.rise,
        fall: hc.fall,
        priming,
    }))
}

/// The check of the backends reached one way: plain, or TLS with this SNI.
fn one_check(
    pool: &str,
    cfg: &UpstreamConfig,
    hc: &crate::config::HealthCheckConfig,
    tls: Option<(&UpstreamTls, &str)>,
) -> Result<Box<dyn HealthCheck + Send + Sync>, PoolError> {
    let timeout = hc.timeout.0;
    let err = |e: Box<pingora::Error>| PoolError::HealthCheck {
        pool: pool.into(),
        reason: e.to_string(),
    };
    Ok(match (hc.kind, tls) {
        (HealthCheckKind::Tcp, None) => {
            let mut c = TcpHealthCheck::new();
            c.peer_template.options.connection_timeout = Some(timeout);
            c.peer_template.options.total_connection_timeout = Some(timeout);
            c
        }
        (HealthCheckKind::Tcp, Some((tls, server_name))) => {
            let mut peer = HttpPeer::new("0.0.0.0:1", true, server_name.to_string());
            tls.apply(&mut peer);
            peer.options.connection_timeout = Some(timeout);
            peer.options.total_connection_timeout = Some(timeout);
            Box::new(super::health::ConnectCheck {
                peer_template: peer,
                connector: pingora::connectors::TransportConnector::new(None),
            })
        }
        (HealthCheckKind::Http, _) => {
            // The Host of a TLS check defaults to the name the certificate is checked for.
            let host = cfg
                .host
                .clone()
                .or_else(|| tls.map(|(_, name)| name.to_string()))
                .unwrap_or_else(|| "localhost".into());
            let mut c = HttpHealthCheck::new(&host, tls.is_some());
            if let Some((tls, server_name)) = tls {
                c.peer_template.sni = server_name.to_string();
                tls.apply(&mut c.peer_template);
            }
            let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None).map_err(err)?;
            req.insert_header("Host", host.as_str()).map_err(err)?;
            req.insert_header("User-Agent", "gatehouse-health-check")
                .map_err(err)?;
            c.req = req;
            c.peer_template.options.connection_timeout = Some(timeout);
            c.peer_template.options.total_connection_timeout = Some(timeout);
            c.peer_template.options.read_timeout = Some(timeout);
            c.peer_template.options.write_timeout = Some(timeout);
            let expected = hc.expected_status.clone();
            c.validator = Some(Box::new(move |resp| {
                if expected.contains(&resp.status.as_u16()) {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode("unexpected status", resp.status.as_u16()),
                        "during http health check",
                    )
                }
            }));
            Box::new(c)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(yaml: &str) -> Pool {
        let cfg: UpstreamConfig = serde_yaml::from_str(yaml).expect("upstream config");
        Pool::build("app", &cfg, UpstreamTls::default()).expect("pool")
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn facts(failure: Failure, attempts: u32) -> AttemptFacts<'static> {
        AttemptFacts {
            failure,
            method: &http::Method::GET,
            has_idempotency_key: false,
            attempts,
            body_bytes: 0,
            body_truncated: false,
        }
    }

    fn state(tried: &[SocketAddr]) -> RetryState<'_> {
        RetryState {
            tried,
            deadline: None,
            retry_after: None,
            response_started: false,
        }
    }

    #[test]
    fn the_retry_decision_needs_another_backend_unless_it_is_a_status_retry() {
        let one = pool("backends: http://127.0.0.1:3");
        let a = addr("127.0.0.1:3");
        let now = Instant::now();
        let policy = RetryPolicy::default();
        let connect = one.decide_retry(&policy, &facts(Failure::Connect, 1), &state(&[a]), now);
        assert_eq!(connect, Err(NoRetry::NoOtherBackend));
        let status = one
            .decide_retry(&policy, &facts(Failure::Status(503), 1), &state(&[a]), now)
            .expect("a status retry may go back to the same backend");
        assert!(status.same_backend_ok);
        // ... and `pick` then hands the tried backend out again.
        assert_eq!(one.pick(b"", now, &[a], true).map(|p| p.0), Some(a));
        assert!(one.pick(b"", now, &[a], false).is_none());
    }

    #[test]
    fn the_retry_decision_honours_retry_after_the_deadline_and_a_started_answer() {
        let p = pool("backends: http://127.0.0.1:1, http://127.0.0.1:2");
        let tried = [addr("127.0.0.1:1")];
        let now = Instant::now();
        let policy = RetryPolicy::default();
        let mut st = state(&tried);
        st.retry_after = Some(Duration::from_millis(700));
        let r = p
            .decide_retry(&policy, &facts(Failure::Status(503), 1), &st, now)
            .expect("retried");
        assert_eq!(
            r.delay,
            Duration::from_millis(700),
            "a 503's Retry-After is the wait"
        );
        st.deadline = Some(now + Duration::from_millis(500));
        let late = p.decide_retry(&policy, &facts(Failure::Status(503), 1), &st, now);
        assert_eq!(
            late,
            Err(NoRetry::Deadline),
            "no retry that cannot finish in time"
        );
        let mut started = state(&tried);
        started.response_started = true;
        let r = p.decide_retry(&policy, &facts(Failure::Connect, 1), &started, now);
        assert_eq!(r, Err(NoRetry::ResponseStarted));
    }

    #[test]
    fn the_retry_decision_spends_the_budget_last_and_stops_when_it_is_gone() {
        let p = pool(
            "backends: http://127.0.0.1:1, http://127.0.0.1:2\nretry_budget: {ratio: 0.0, min_per_second: 0}",
        );
        let tried = [addr("127.0.0.1:1")];
        let now = Instant::now();
        let policy = RetryPolicy::default();
        let r = p.decide_retry(&policy, &facts(Failure::Connect, 1), &state(&tried), now);
        assert_eq!(r, Err(NoRetry::Budget));
        // A refusal before the budget leaves it untouched (nothing to spend on).
        let r = p.decide_retry(&policy, &facts(Failure::Connect, 9), &state(&tried), now);
        assert_eq!(r, Err(NoRetry::Exhausted));
    }

    #[test]
    fn a_pick_skips_excluded_backends_and_none_is_left_when_all_are() {
        let p = pool("backends: http://127.0.0.1:1, http://127.0.0.1:2");
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.1:2"));
        let now = Instant::now();
        for _ in 0..10 {
            let (got, _) = p.select(b"", now, &[a]).expect("the other backend");
            assert_eq!(got, b);
        }
        assert!(p.select(b"", now, &[a, b]).is_none());
        assert!(!p.has_candidate(&[a, b], now));
        assert!(p.has_candidate(&[a], now));
        // One backend: the short path honours the exclusion too.
        let one = pool("backends: http://127.0.0.1:3");
        assert_eq!(
            one.select(b"", now, &[]).map(|s| s.0),
            Some(addr("127.0.0.1:3"))
        );
        assert!(one.select(b"", now, &[addr("127.0.0.1:3")]).is_none());
    }

    #[test]
    fn round_robin_takes_turns_between_backends() {
        let p = pool("backends: http://127.0.0.1:1, http://127.0.0.1:2");
        let now = Instant::now();
        let picks: Vec<SocketAddr> = (0..4)
            .filter_map(|_| p.select(b"", now, &[]).map(|s| s.0))
            .collect();
        assert_eq!(picks.len(), 4);
        assert_ne!(picks[0], picks[1]);
        assert_eq!(picks[0], picks[2]);
    }

    #[test]
    fn an_open_breaker_takes_its_backend_out_of_the_picks() {
        let p = pool(
            "backends: http://127.0.0.1:1, http://127.0.0.1:2\ncircuit_breaker: {consecutive_failures: 2, cooldown: 30s}",
        );
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.1:2"));
        let now = Instant::now();
        assert_eq!(p.breaker_state(&a, now), BreakerState::Closed);
        assert!(p.record(&a, false, now).is_none());
        let opened = p.record(&a, false, now).expect("a transition");
        assert_eq!(opened.to, BreakerState::Open);
        assert_eq!(p.breaker_state(&a, now), BreakerState::Open);
        for _ in 0..10 {
            assert_eq!(p.select(b"", now, &[]).map(|s| s.0), Some(b));
        }
        assert!(!p.has_candidate(&[b], now), "b excluded and a open: nobody");
        // A success on the other backend changes nothing for the open one.
        p.record(&b, true, now);
        assert_eq!(p.breaker_state(&a, now), BreakerState::Open);
    }

    #[test]
    fn https_backends_get_tls_peers_with_their_host_as_server_name() {
        use pingora::upstreams::peer::Peer;
        let p = pool("backends: https://127.0.0.1:1, http://127.0.0.1:2");
        let tls = p.peer(addr("127.0.0.1:1"));
        assert!(tls.is_tls());
        assert_eq!(tls.sni(), "127.0.0.1");
        assert!(tls.verify_cert() && tls.verify_hostname());
        let plain = p.peer(addr("127.0.0.1:2"));
        assert!(!plain.is_tls());
        assert_eq!(plain.sni(), "");
        let cfg: UpstreamConfig =
            serde_yaml::from_str("backends: https://127.0.0.1:3\ntls: {server_name: svc.internal}")
                .expect("cfg");
        let tls = UpstreamTls::load("upstreams.app.tls", &cfg.tls, std::path::Path::new("."))
            .expect("no files");
        let p = Pool::build("app", &cfg, tls).expect("pool");
        assert_eq!(p.peer(addr("127.0.0.1:3")).sni(), "svc.internal");
    }

    #[test]
    fn failure_statuses_labels_and_bad_urls() {
        let p = pool("backends: http://127.0.0.1:1");
        assert!(p.is_failure_status(500) && p.is_failure_status(503));
        assert!(!p.is_failure_status(404) && !p.is_failure_status(200));
        assert_eq!(p.backend_label(&addr("127.0.0.1:1")), "127.0.0.1:1");
        assert_eq!(p.backend_label(&addr("127.0.0.1:9")), "127.0.0.1:9");
        let cfg: UpstreamConfig =
            serde_yaml::from_str("backends: http://127.0.0.1:1, ftp://127.0.0.1:2").expect("cfg");
        match Pool::build("app", &cfg, UpstreamTls::default()) {
            Err(PoolError::Invalid { pool, index, .. }) => {
                assert_eq!((pool.as_str(), index), ("app", 1));
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("an ftp backend was accepted"),
        }
    }
}

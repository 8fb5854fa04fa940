//! Attempts to backends: choosing one (health, breakers, consistent hash, backoff), the peer
//! with the route's timeouts, closing an attempt (breaker, metrics), and deciding retries
//! (`upstream::retry`'s policy, the pool's budget, the route's deadline).

use super::{Ctx, Gateway};
use crate::errors::Reject;
use crate::state::Route;
use crate::upstream::breaker::Transition;
use crate::upstream::retry::{parse_retry_after, AttemptFacts, Failure, NoRetry};
use crate::upstream::{Retry, RetryState};
use http::Method;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType, RetryType};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the attempts of one request learned (the plan's decisions live in [`Ctx`]).
#[derive(Default)]
pub(super) struct AttemptState {
    /// The backend of the current (or last) attempt.
    pub backend: Option<SocketAddr>,
    /// When the route's total timeout runs out (none for WebSockets).
    pub deadline: Option<Instant>,
    /// Request body bytes read so far.
    pub body_bytes: u64,
    /// Attempts sent (or tried) to backends.
    pub count: u32,
    /// Backends tried so far; the first inline (most requests make one attempt).
    pub tried: smallvec::SmallVec<[SocketAddr; 1]>,
    /// When the current attempt started; `None` once it is closed.
    pub start: Option<Instant>,
    /// Wait before the next attempt (backoff or the upstream's Retry-After).
    pub next_delay: Option<Duration>,
    /// A retry on an upstream status may go back to the same backend; others may not.
    pub same_backend_ok: bool,
    /// Set by `upstream_status` when it turns a 502/503/504 into a retry.
    pub status_retry: Option<Failure>,
}

/// The start of an attempt to a backend ([`Gateway::next_attempt`]).
enum Attempt {
    /// Send it to `addr`; `remaining` is what is left of the route's total timeout.
    Go {
        addr: SocketAddr,
        remaining: Duration,
    },
    /// The total timeout ran out (waiting for the backoff, say).
    Expired,
    /// No backend can take it: the route's fallback answers.
    Fallback(Reject),
}

/// What the retry decision needs to know of the request.
struct Sent<'a> {
    method: &'a Method,
    headers: &'a http::HeaderMap,
    /// Part of the body was sent upstream and not kept for a retry.
    body_truncated: bool,
    /// The client already has the start of an answer.
    response_started: bool,
}

impl<'a> Sent<'a> {
    fn of(session: &'a Session) -> Sent<'a> {
        let req = session.req_header();
        Sent {
            method: &req.method,
            headers: &req.headers,
            body_truncated: session.as_ref().retry_buffer_truncated(),
            response_started: session.response_written().is_some(),
        }
    }
}

impl Gateway {
    /// The peer for the next attempt (`upstream_peer`): a backend chosen, the route's
    /// timeouts within what is left of its total timeout.
    pub(super) async fn peer(&self, session: &Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no route in context");
        };
        let (addr, remaining) = match self
            .next_attempt(ctx, &route, &session.req_header().headers)
            .await
        {
            Attempt::Go { addr, remaining } => (addr, remaining),
            Attempt::Expired => {
                let mut e = Error::explain(
                    ErrorType::ReadTimedout,
                    "total timeout exhausted before connect",
                );
                e.as_up();
                return Err(e);
            }
            Attempt::Fallback(r) => {
                let status = r.status;
                ctx.reject = Some(r);
                return Error::e_explain(ErrorType::HTTPStatus(status), "no backend available");
            }
        };
        ctx.attempt_span = ctx.trace.attempt(
            &session.req_header().method,
            &route.pool.name,
            addr,
            ctx.up.count,
        );
        let mut peer = route.pool.peer(addr);
        let opts = &mut peer.options;
        opts.connection_timeout = Some(route.connect_timeout.min(remaining));
        opts.total_connection_timeout = Some(route.connect_timeout.min(remaining));
        let read = if ctx.websocket {
            Duration::from_secs(3600)
        } else {
            route.read_timeout.min(remaining)
        };
        opts.read_timeout = Some(read);
        opts.write_timeout = Some(read);
        opts.idle_timeout = Some(route.pool.config.keepalive_idle.0);
        Ok(Box::new(peer))
    }

    /// A connection (or TLS handshake) to the backend failed: the breaker hears of it, and
    /// the request may go to another backend.
    pub(super) fn connect_failed(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.finish_attempt(ctx, Some(false), "connect_error", None);
        let retry = self.decide_retry(&Sent::of(session), ctx, Failure::Connect, None);
        e.set_retry(retry);
        e
    }

    /// The exchange with the backend failed after connecting.
    pub(super) fn proxy_failed(
        &self,
        peer: &HttpPeer,
        session: &Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.up.status_retry.take().is_some() {
            // Recorded and decided in upstream_status.
            e.set_retry(true);
            return e;
        }
        if e.esource() == &ErrorSource::Downstream {
            // The client went away (or broke the exchange) before the answer was through:
            // nothing to retry, and nothing the backend did wrong.
            self.finish_attempt(ctx, None, "client_error", None);
            e.set_retry(false);
            return e;
        }
        let failure = Failure::of(&e);
        if e.retry == RetryType::ReusedOnly && client_reused && session.response_written().is_none()
        {
            // A pooled connection the upstream had already closed: nothing was processed,
            // so this is as safe to retry as a connect failure, and not the backend's fault.
            ctx.up.start = None;
            std::mem::take(&mut ctx.attempt_span).end_attempt(
                "reset",
                None,
                Some("pooled connection closed"),
            );
            let retry = self.decide_retry(&Sent::of(session), ctx, Failure::Connect, None);
            e.set_retry(retry);
            return e;
        }
        self.finish_attempt(ctx, Some(false), failure.reason(), None);
        let retry = self.decide_retry(&Sent::of(session), ctx, failure, None);
        e.set_retry(retry);
        e
    }

    /// The backend answered: the attempt is closed (a failure status counts against the
    /// backend), and a 502/503/504 may become a retry (`Err`: Pingora retries).
    pub(super) fn upstream_status(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        let status = resp.status.as_u16();
        let failed = route.pool.is_failure_status(status);
        let outcome = if failed { "failure_status" } else { "ok" };
        self.finish_attempt(ctx, Some(!failed), outcome, Some(status));
        if matches!(status, 502..=504) {
            let retry_after = resp
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let failure = Failure::Status(status);
            if self.decide_retry(&Sent::of(session), ctx, failure, retry_after) {
                ctx.up.status_retry = Some(failure);
                return Error::e_explain(
                    ErrorType::HTTPStatus(status),
                    "retrying an upstream error status",
                );
            }
        }
        Ok(())
    }

    /// Closes the current attempt: breaker outcome (`None`: none, the backend is not to
    /// blame), metrics.
    fn finish_attempt(
        &self,
        ctx: &mut Ctx,
        success: Option<bool>,
        outcome: &'static str,
        status: Option<u16>,
    ) {
        let failed = !matches!(outcome, "ok" | "failure_status");
        std::mem::take(&mut ctx.attempt_span).end_attempt(
            outcome,
            status,
            failed.then_some(outcome),
        );
        let (Some(route), Some(addr), Some(start)) =
            (ctx.route.as_ref(), ctx.up.backend, ctx.up.start.take())
        else {
            return;
        };
        let pool = &route.pool;
        let series = &pool.series;
        series
            .attempts
            .get((addr, outcome), || {
                let backend = pool.backend_label(&addr);
                self.metrics.upstream_requests_total.with_label_values(&[
                    pool.name.as_str(),
                    backend.as_ref(),
                    outcome,
                ])
            })
            .inc();
        let now = Instant::now();
        series
            .duration
            .get_or_init(|| {
                self.metrics
                    .upstream_duration_seconds
                    .with_label_values(&[pool.name.as_str()])
            })
            .observe(now.saturating_duration_since(start).as_secs_f64());
        match success {
            Some(success) => {
                if let Some(t) = pool.record(&addr, success, now) {
                    self.breaker_transition(&pool.name, &addr, t, &ctx.request_id);
                }
            }
            None => pool.release(&addr),
        }
    }

    fn breaker_transition(
        &self,
        upstream: &str,
        addr: &SocketAddr,
        t: Transition,
        request_id: &str,
    ) {
        let backend = addr.to_string();
        self.metrics
            .circuit_breaker_transitions_total
            .with_label_values(&[upstream, backend.as_str(), t.to.as_str()])
            .inc();
        tracing::warn!(request_id, upstream, backend = %backend, from = t.from.as_str(), to = t.to.as_str(), "circuit breaker");
    }

    /// Decides whether the failed attempt is retried; on yes, sets the delay and counts it.
    fn decide_retry(
        &self,
        sent: &Sent<'_>,
        ctx: &mut Ctx,
        failure: Failure,
        retry_after: Option<Duration>,
    ) -> bool {
        let Some(route) = ctx.route.clone() else {
            return false;
        };
        let up = &mut ctx.up;
        let facts = AttemptFacts {
            failure,
            method: sent.method,
            has_idempotency_key: sent.headers.contains_key("idempotency-key"),
            attempts: up.count,
            body_bytes: up.body_bytes,
            body_truncated: sent.body_truncated,
        };
        let state = RetryState {
            tried: &up.tried,
            deadline: up.deadline,
            retry_after,
            response_started: sent.response_started,
        };
        let decision = route
            .pool
            .decide_retry(&route.retry, &facts, &state, Instant::now());
        match decision {
            Ok(Retry {
                delay,
                same_backend_ok,
            }) => {
                up.next_delay = Some(delay);
                up.same_backend_ok = same_backend_ok;
                self.metrics
                    .retries_total
                    .with_label_values(&[route.name.as_str(), failure.reason()])
                    .inc();
                tracing::info!(
                    request_id = %ctx.request_id, route = %route.name, backend = %up.backend.map(|b| b.to_string()).unwrap_or_default(),
                    reason = failure.reason(), attempt = up.count, delay_ms = delay.as_millis() as u64, "retrying"
                );
                true
            }
            Err(why) => {
                if why == NoRetry::Budget {
                    self.metrics
                        .retry_budget_exhausted_total
                        .with_label_values(&[route.pool.name.as_str()])
                        .inc();
                }
                tracing::debug!(request_id = %ctx.request_id, reason = failure.reason(), why = why.as_str(), "not retried");
                false
            }
        }
    }

    /// Starts the next attempt of a proxied request: the backoff waited out, the retry
    /// budget told of a new request, a backend chosen (health, breakers, consistent hash; a
    /// status retry may go back to the same one) and the context updated.
    async fn next_attempt(
        &self,
        ctx: &mut Ctx,
        route: &Route,
        headers: &http::HeaderMap,
    ) -> Attempt {
        if let Some(delay) = ctx.up.next_delay.take() {
            let left = ctx
                .up
                .deadline
                .map_or(delay, |d| d.saturating_duration_since(Instant::now()));
            tokio::time::sleep(delay.min(left)).await;
        }
        let now = Instant::now();
        let remaining = ctx
            .up
            .deadline
            .map_or(route.total_timeout, |d| d.saturating_duration_since(now));
        if remaining.is_zero() {
            return Attempt::Expired;
        }
        if ctx.up.count == 0 {
            route.pool.budget.record_request(now);
        }
        let key = hash_key(route, headers, ctx);
        let pick = route
            .pool
            .pick(&key, now, &ctx.up.tried, ctx.up.same_backend_ok);
        let Some((addr, transition)) = pick else {
            self.metrics
                .fallbacks_total
                .with_label_values(&[route.name.as_str()])
                .inc();
            tracing::warn!(request_id = %ctx.request_id, route = %route.name, upstream = %route.pool.name, attempts = ctx.up.count, "no backend can take the request; fallback");
            return Attempt::Fallback(Reject::fallback(route.fallback.as_ref()));
        };
        if let Some(t) = transition {
            self.breaker_transition(&route.pool.name, &addr, t, &ctx.request_id);
        }
        let up = &mut ctx.up;
        up.count += 1;
        up.tried.push(addr);
        up.backend = Some(addr);
        up.start = Some(now);
        up.status_retry = None;
        Attempt::Go { addr, remaining }
    }
}

/// The consistent-hash key of this request: client ip, a header or a cookie.
fn hash_key(route: &Route, headers: &http::HeaderMap, ctx: &Ctx) -> Vec<u8> {
    use crate::config::HashKeySpec;
    match &route.pool.hash_key {
        None => Vec::new(),
        Some(HashKeySpec::ClientIp) => ctx
            .client_ip
            .map(|i| i.to_string().into_bytes())
            .unwrap_or_default(),
        Some(HashKeySpec::Header(h)) => headers
            .get(h)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
        Some(HashKeySpec::Cookie(name)) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_bytes().to_vec())
            .unwrap_or_default(),
    }
}

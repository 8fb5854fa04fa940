//! `impl ProxyHttp` — thin on purpose: each phase calls the module that owns the decision.
//!
//! request_filter: request id, client ip, hygiene, path normalisation, built-in endpoints,
//! route lookup, body limit → upstream_peer: backend from the route's pool, timeouts →
//! upstream_request_filter: path rewrite, Host, forwarding headers → response filters →
//! fail_to_proxy: our JSON error (504 for timeouts) → logging: the access log line.

use crate::auth::guard::{self, Decision, Identity};
use crate::auth::{endpoints, Auth};
use crate::builtin;
use crate::edge::header_rules::HeaderOp;
use crate::edge::{forwarding, hygiene, listener::Reused};
use crate::errors::Reject;
use crate::metrics::{method_label, Metrics};
use crate::routing::{self, Lookup};
use crate::state::{Route, SharedState, Snapshot};
use crate::upstream::breaker::Transition;
use crate::upstream::retry::{parse_retry_after, AttemptFacts, Failure, NoRetry};
use async_trait::async_trait;

mod web;

use bytes::Bytes;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::ResponseCompression;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType, RetryType};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use web::{CSRF_COOKIE, FLASH_COOKIE};

/// The gateway's proxy logic; long-lived handles only. Per-request state is [`Ctx`].
#[derive(Clone)]
pub struct Gateway {
    pub state: SharedState,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Auth>,
    pub access_log: bool,
    /// The response cache (routes opt in with `cache:`).
    pub cache: crate::cache::Cache,
}

/// Per-request context. The snapshot is loaded once, so retries and logging see the
/// version the request started with, even across a reload.
pub struct Ctx {
    start: Instant,
    snapshot: Arc<Snapshot>,
    request_id: String,
    peer_ip: Option<IpAddr>,
    client_ip: Option<IpAddr>,
    /// Normalised request path (no query).
    path: Option<String>,
    route: Option<Arc<Route>>,
    backend: Option<SocketAddr>,
    deadline: Option<Instant>,
    body_bytes: u64,
    /// What we answered (or will answer) ourselves, for fail_to_proxy and the access log.
    reject: Option<Reject>,
    status: u16,
    /// Attempts sent (or tried) to backends, and the backends they went to.
    attempts: u32,
    /// Backends tried so far; the first inline (most requests make one attempt).
    tried: smallvec::SmallVec<[SocketAddr; 1]>,
    attempt_start: Option<Instant>,
    /// Wait before the next attempt (backoff or the upstream's Retry-After).
    next_delay: Option<Duration>,
    /// A retry on an upstream status may go back to the same backend; others may not.
    same_backend_ok: bool,
    /// Set by upstream_response_filter when it turns a 502/503/504 into a retry.
    status_retry: Option<Failure>,
    /// The signed-in user, when the route checked one.
    identity: Option<Identity>,
    /// TLS in front of the client: ours, or a trusted proxy's (`X-Forwarded-Proto: https`).
    tls: bool,
    /// The client connection itself is TLS (our HTTPS listener).
    tls_conn: bool,
    /// CORS policy for this request's answer: the route's, else `defaults.cors`.
    cors: Option<Arc<crate::edge::cors::Cors>>,
    /// A WebSocket upgrade on a route that allows it.
    websocket: bool,
    api_client: bool,
    /// Headers for the answer decided during the request (rate-limit state).
    extra_headers: Vec<(String, String)>,
    /// This request holds one of its route's `max_in_flight` slots.
    holds_slot: bool,
    /// This request holds one of its client's `max_in_flight_per_client` slots.
    client_slot: Option<IpAddr>,
    /// The route caches, but this request may not use the cache (credentials).
    cache_bypass: bool,
    /// The client prefers br, which the gateway encodes itself (see `edge::brotli_body`).
    br: bool,
    /// Boxed: the encoder state is ~5.6 KiB, and `Ctx` lives inside Pingora's per-request
    /// future, which is moved (copied whole) as it is built; inline it made every request
    /// copy it (issue 8: ~3 % of the plain proxy's CPU was that copy).
    br_stream: Option<Box<crate::edge::brotli_body::BrStream>>,
}

impl Ctx {
    /// A fresh context for a request served with `snapshot`.
    fn new(snapshot: Arc<Snapshot>) -> Ctx {
        Ctx {
            start: Instant::now(),
            snapshot,
            request_id: String::new(),
            peer_ip: None,
            client_ip: None,
            path: None,
            route: None,
            backend: None,
            deadline: None,
            body_bytes: 0,
            reject: None,
            status: 0,
            attempts: 0,
            tried: smallvec::SmallVec::new(),
            attempt_start: None,
            next_delay: None,
            same_backend_ok: false,
            status_retry: None,
            identity: None,
            tls: false,
            tls_conn: false,
            cors: None,
            websocket: false,
            extra_headers: Vec::new(),
            holds_slot: false,
            client_slot: None,
            cache_bypass: false,
            br: false,
            br_stream: None,
            api_client: true,
        }
    }
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
    /// Writes a whole answer; `Content-Type: application/json` unless `headers` set one
    /// (or the body is empty). `Set-Cookie` headers are appended, others replace.
    async fn send_json(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<()> {
        let has_type = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if has_type || body.is_empty() {
            return self.send_raw(session, ctx, status, body, headers).await;
        }
        let mut all = Vec::with_capacity(headers.len() + 1);
        all.push(("Content-Type".to_string(), "application/json".to_string()));
        all.extend_from_slice(headers);
        self.send_raw(session, ctx, status, body, &all).await
    }

    /// Writes a whole answer with exactly these headers (plus length and request id).
    async fn send_raw(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(3 + headers.len()))?;
        let mut body = body;
        let has_length = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        if !has_length {
            resp.insert_header("content-length", body.len().to_string())?;
        }
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if status >= 400 {
            resp.insert_header("cache-control", "no-store")?;
        }
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("set-cookie") {
                resp.append_header(k.clone(), v.as_str())?;
            } else {
                resp.insert_header(k.clone(), v.as_str())?;
            }
        }
        if let Some(cors) = ctx.cors.as_ref().filter(|c| c.is_enabled()) {
            for (k, v) in cors.response_headers(&session.req_header().headers) {
                if k == http::header::VARY {
                    resp.append_header(k, v)?;
                } else {
                    resp.insert_header(k, v)?;
                }
            }
        }
        if let (true, Some(h)) = (ctx.tls_conn, ctx.snapshot.config.server.tls.hsts.as_ref()) {
            resp.insert_header("strict-transport-security", h.header_value())?;
        }
        if !body.is_empty() && Self::wants_br(session, ctx, &resp, Some(body.len() as u64)) {
            body = Bytes::from(crate::edge::brotli_body::compress_all(&body));
            Self::br_headers(&mut resp)?;
            resp.insert_header("content-length", body.len().to_string())?;
        }
        ctx.status = status;
        if crate::DRAINING.load(std::sync::atomic::Ordering::Acquire)
            || session.is_process_shutting_down()
        {
            session.set_keepalive(None);
        }
        Self::maybe_skip_compression(session, ctx, Some(body.len() as u64));
        let head_only = session.req_header().method == Method::HEAD || body.is_empty();
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }

    /// Whether this answer gets the gateway's own br encoding.
    fn wants_br(session: &Session, ctx: &Ctx, resp: &ResponseHeader, len: Option<u64>) -> bool {
        let c = ctx.snapshot.config.server.compression;
        let status = resp.status.as_u16();
        ctx.br
            && c.enabled
            && ctx.route.as_ref().is_none_or(|r| r.compression)
            && !ctx.websocket
            && session.req_header().method != Method::HEAD
            && !(status < 200 || status == 204 || status == 304)
            && !resp.headers.contains_key(http::header::CONTENT_ENCODING)
            && len.is_none_or(|n| n >= c.min_size.0)
            && resp
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(crate::edge::brotli_body::compressible)
    }

    /// Marks a response header as br-encoded.
    fn br_headers(resp: &mut ResponseHeader) -> Result<()> {
        resp.remove_header(&http::header::CONTENT_LENGTH);
        resp.remove_header(&http::header::ACCEPT_RANGES);
        resp.insert_header(http::header::CONTENT_ENCODING, "br")?;
        resp.append_header(http::header::VARY, "Accept-Encoding")?;
        let etag = resp
            .headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(etag) = etag.filter(|e| e.starts_with('"')) {
            resp.insert_header(http::header::ETAG, format!("W/{etag}"))?;
        }
        Ok(())
    }

    /// Turns compression off for this answer when it is small or its route opts out.
    fn maybe_skip_compression(session: &mut Session, ctx: &Ctx, len: Option<u64>) {
        let c = ctx.snapshot.config.server.compression;
        let small = len.is_some_and(|n| n < c.min_size.0);
        let opted_out = ctx.route.as_ref().is_some_and(|r| !r.compression);
        if c.enabled && (small || opted_out) {
            if let Some(m) = session
                .downstream_modules_ctx
                .get_mut::<ResponseCompression>()
            {
                m.adjust_level(0);
            }
        }
    }

    /// Runs the auth guard for this request (routes and pages share it).
    async fn protect(
        &self,
        session: &Session,
        ctx: &Ctx,
        mode: crate::config::AuthMode,
        roles: Option<&[String]>,
        on_store_error: crate::config::StoreFailure,
    ) -> Decision {
        let req = session.req_header();
        let greq = guard::Request {
            method: &req.method,
            path: ctx.path.as_deref().unwrap_or("/"),
            query: req.uri.query(),
            headers: &req.headers,
            api_client: ctx.api_client,
            tls: ctx.tls,
        };
        guard::protect(&self.auth, mode, roles, on_store_error, &greq).await
    }

    /// Takes the route's and the client's in-flight slots (`max_in_flight`,
    /// `max_in_flight_per_client`; `logging` gives them back). The answer when one refuses.
    fn take_in_flight(&self, ctx: &mut Ctx, route: &Route) -> Option<Reject> {
        use std::sync::atomic::Ordering;
        let refused = |scope: &str, r: Reject| {
            self.metrics
                .in_flight_rejected_total
                .with_label_values(&[route.name.as_str(), scope])
                .inc();
            Some(r.with_header("Retry-After", "1"))
        };
        if let Some(max) = route.max_in_flight {
            if route.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
                route.in_flight.fetch_sub(1, Ordering::AcqRel);
                let msg = "Too many requests in progress; try again shortly.";
                return refused("route", Reject::new(503, "overloaded", msg));
            }
            ctx.holds_slot = true;
        }
        if let (Some(slots), Some(ip)) = (&route.client_slots, ctx.client_ip) {
            if !slots.try_take(ip) {
                let msg = "Too many of your requests are in progress; try again shortly.";
                return refused("client", Reject::new(429, "too_many_in_flight", msg));
            }
            ctx.client_slot = Some(ip);
        }
        None
    }

    fn count_auth(&self, result: &str, reason: &str) {
        self.metrics
            .auth_decisions_total
            .with_label_values(&[result, reason])
            .inc();
    }

    /// Applies the route's rate limits; `Ok(true)` when the request was answered (429/503).
    async fn rate_limit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Arc<Route>,
    ) -> Result<bool> {
        use crate::edge::ratelimit::{Decision as Rl, KeySpec, OnStoreError};
        for limiter in &route.limiters {
            let ip = || {
                format!(
                    "ip:{}",
                    ctx.client_ip.map(|i| i.to_string()).unwrap_or_default()
                )
            };
            let key = match limiter.key_spec() {
                KeySpec::ClientIp => ip(),
                KeySpec::User => ctx
                    .identity
                    .as_ref()
                    .map_or_else(ip, |i| format!("user:{}", i.claims.sub)),
                KeySpec::Header(h) => session
                    .req_header()
                    .headers
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(ip, |v| format!("header:{v}")),
                KeySpec::Claim(c) => ctx
                    .identity
                    .as_ref()
                    .and_then(|i| match c.as_str() {
                        "sub" => Some(i.claims.sub.clone()),
                        "role" => Some(i.claims.role.clone()),
                        "sid" => Some(i.claims.sid.clone()),
                        _ => None,
                    })
                    .map_or_else(ip, |v| format!("claim:{v}")),
            };
            let decision = limiter.check(&key).await;
            let mut headers = http::HeaderMap::new();
            decision.write_headers(&mut headers);
            let pairs: Vec<(String, String)> = headers
                .iter()
                .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
                .collect();
            match decision {
                Rl::Allow { .. } => ctx.extra_headers = pairs,
                Rl::Deny { .. } => {
                    self.metrics
                        .rate_limited_total
                        .with_label_values(&[route.name.as_str()])
                        .inc();
                    tracing::info!(request_id = %ctx.request_id, route = %route.name, limit = limiter.name(), "rate limited");
                    let mut r = Reject::new(429, "rate_limited", "Too many requests; slow down.");
                    r.headers.extend(pairs);
                    return self.reject(session, ctx, r).await;
                }
                Rl::StoreError => {
                    self.metrics.session_store_errors_total.inc();
                    match limiter.on_store_error() {
                        OnStoreError::Allow => {
                            tracing::warn!(request_id = %ctx.request_id, limit = limiter.name(), "rate-limit store unavailable; allowing");
                        }
                        OnStoreError::Deny => {
                            let r = Reject::new(
                                503,
                                "rate_limit_unavailable",
                                "The service is temporarily unavailable.",
                            )
                            .with_header("Retry-After", "5");
                            return self.reject(session, ctx, r).await;
                        }
                    }
                }
            }
        }
        Ok(false)
    }

    /// Reads a small request body whole (auth endpoints); `None` when it is over `limit`.
    async fn read_small_body(session: &mut Session, limit: usize) -> Result<Option<Bytes>> {
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = session.read_request_body().await? {
            if buf.len() + chunk.len() > limit {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Some(buf.freeze()))
    }

    /// Answers one of the auth endpoints (login, validate, refresh, logout).
    async fn auth_endpoint(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        ep: Result<endpoints::Endpoint, &'static str>,
    ) -> Result<bool> {
        let ep = match ep {
            Ok(ep) => ep,
            Err(allow) => {
                let r = crate::errors::from_status(405).with_header("Allow", allow);
                return self.reject(session, ctx, r).await;
            }
        };
        let Some(body) = Self::read_small_body(session, 16 * 1024).await? else {
            session.set_keepalive(None);
            return self
                .reject(session, ctx, crate::errors::from_status(413))
                .await;
        };
        let req = session.req_header();
        if matches!(ep, endpoints::Endpoint::WebLogin(_)) {
            // The portals' forms post under /api/web/: the Accept header decides.
            ctx.api_client = !crate::edge::client::wants_html(&req.headers);
        }
        let ereq = endpoints::Request {
            query: req.uri.query(),
            headers: &req.headers,
            body,
            client_ip: ctx.client_ip,
            tls: ctx.tls,
            api_client: ctx.api_client,
            request_id: &ctx.request_id,
        };
        let reply = self.auth.handle(ep, &ereq).await;
        self.count_auth(reply.decision.0, reply.decision.1);
        self.send_json(session, ctx, reply.status, reply.body, &reply.headers)
            .await?;
        Ok(true)
    }

    /// Closes the current attempt: breaker outcome (`None`: none, the backend is not to
    /// blame), metrics.
    fn finish_attempt(&self, ctx: &mut Ctx, success: Option<bool>, outcome: &'static str) {
        let (Some(route), Some(addr), Some(start)) =
            (ctx.route.as_ref(), ctx.backend, ctx.attempt_start.take())
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
        let facts = AttemptFacts {
            failure,
            method: sent.method,
            has_idempotency_key: sent.headers.contains_key("idempotency-key"),
            attempts: ctx.attempts,
            body_bytes: ctx.body_bytes,
            body_truncated: sent.body_truncated,
        };
        let now = Instant::now();
        let decision = route.retry.allows(&facts).and_then(|()| {
            if sent.response_started {
                return Err(NoRetry::ResponseStarted);
            }
            let delay = match (failure, retry_after) {
                (Failure::Status(503), Some(ra)) => ra,
                _ => route.retry.backoff(ctx.attempts, rand::random::<f64>()),
            };
            let remaining = ctx
                .deadline
                .map_or(Duration::MAX, |d| d.saturating_duration_since(now));
            if delay >= remaining {
                return Err(NoRetry::Deadline);
            }
            let same_ok = matches!(failure, Failure::Status(_));
            if !same_ok && !route.pool.has_candidate(&ctx.tried, now) {
                return Err(NoRetry::NoOtherBackend);
            }
            if !route.pool.budget.try_spend(now) {
                self.metrics
                    .retry_budget_exhausted_total
                    .with_label_values(&[route.pool.name.as_str()])
                    .inc();
                return Err(NoRetry::Budget);
            }
            Ok((delay, same_ok))
        });
        match decision {
            Ok((delay, same_ok)) => {
                ctx.next_delay = Some(delay);
                ctx.same_backend_ok = same_ok;
                self.metrics
                    .retries_total
                    .with_label_values(&[route.name.as_str(), failure.reason()])
                    .inc();
                tracing::info!(
                    request_id = %ctx.request_id, route = %route.name, backend = %ctx.backend.map(|b| b.to_string()).unwrap_or_default(),
                    reason = failure.reason(), attempt = ctx.attempts, delay_ms = delay.as_millis() as u64, "retrying"
                );
                true
            }
            Err(why) => {
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
        if let Some(delay) = ctx.next_delay.take() {
            let left = ctx
                .deadline
                .map_or(delay, |d| d.saturating_duration_since(Instant::now()));
            tokio::time::sleep(delay.min(left)).await;
        }
        let now = Instant::now();
        let remaining = ctx
            .deadline
            .map_or(route.total_timeout, |d| d.saturating_duration_since(now));
        if remaining.is_zero() {
            return Attempt::Expired;
        }
        if ctx.attempts == 0 {
            route.pool.budget.record_request(now);
        }
        let key = hash_key(route, headers, ctx);
        let mut pick = route.pool.select(&key, now, &ctx.tried);
        if pick.is_none() && ctx.same_backend_ok && !ctx.tried.is_empty() {
            pick = route.pool.select(&key, now, &[]);
        }
        let Some((addr, transition)) = pick else {
            self.metrics
                .fallbacks_total
                .with_label_values(&[route.name.as_str()])
                .inc();
            tracing::warn!(request_id = %ctx.request_id, route = %route.name, upstream = %route.pool.name, attempts = ctx.attempts, "no backend can take the request; fallback");
            return Attempt::Fallback(Reject::fallback(route.fallback.as_ref()));
        };
        if let Some(t) = transition {
            self.breaker_transition(&route.pool.name, &addr, t, &ctx.request_id);
        }
        ctx.attempts += 1;
        ctx.tried.push(addr);
        ctx.backend = Some(addr);
        ctx.attempt_start = Some(now);
        ctx.status_retry = None;
        Attempt::Go { addr, remaining }
    }

    /// The end of a request: in-flight slots given back, the
    /// request metrics, the access log line.
    fn log_request(
        &self,
        ctx: &mut Ctx,
        method: &Method,
        raw_path: &str,
        status: u16,
        bytes: usize,
        error: &str,
    ) {
        if let Some(route) = &ctx.route {
            if std::mem::take(&mut ctx.holds_slot) {
                route
                    .in_flight
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
            if let (Some(slots), Some(ip)) = (&route.client_slots, ctx.client_slot.take()) {
                slots.release(ip);
            }
        }
        let route_label = ctx.route.as_ref().map_or("-", |r| r.name.as_str());
        let method_l = method_label(method);
        let requests = || {
            // StatusCode renders its number without allocating.
            let code = http::StatusCode::from_u16(status).ok();
            let status_label = code.as_ref().map_or("0", http::StatusCode::as_str);
            self.metrics
                .requests_total
                .with_label_values(&[route_label, method_l, status_label])
        };
        let duration = || {
            self.metrics
                .request_duration_seconds
                .with_label_values(&[route_label])
        };
        let elapsed = ctx.start.elapsed().as_secs_f64();
        match &ctx.route {
            Some(r) => {
                r.series.requests.get((method_l, status), requests).inc();
                r.series.duration.get_or_init(duration).observe(elapsed);
            }
            None => {
                requests().inc();
                duration().observe(elapsed);
            }
        }
        if !self.access_log {
            return;
        }
        let path = ctx.path.as_deref().unwrap_or(raw_path);
        let route = ctx.route.as_ref();
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            client_ip = %ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
            method = %method,
            path = %path,
            route = route.map_or("-", |r| r.name.as_str()),
            upstream = route.map_or("-", |r| r.pool.name.as_str()),
            backend = %ctx.backend.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
            status,
            bytes,
            duration_ms = elapsed * 1000.0,
            attempts = ctx.attempts,
            error,
        );
    }

    async fn reject(&self, session: &mut Session, ctx: &mut Ctx, r: Reject) -> Result<bool> {
        self.send_reject(session, ctx, &r).await?;
        ctx.reject = Some(r);
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.state.load_full())
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        // Compression must be switched on before the modules read Accept-Encoding; small
        // answers and routes that opt out switch it off again at response time.
        let c = ctx.snapshot.config.server.compression;
        if c.enabled {
            let accept = session
                .req_header()
                .headers
                .get(http::header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            ctx.br = crate::edge::brotli_body::prefers_br(accept);
            if !ctx.br {
                if let Some(m) = session
                    .downstream_modules_ctx
                    .get_mut::<ResponseCompression>()
                {
                    m.adjust_level(c.level);
                    // Pingora 0.9.1's brotli stream is never finished: br is ours.
                    m.adjust_algorithm_level(
                        pingora::protocols::http::compression::Algorithm::Brotli,
                        0,
                    );
                }
            }
        }
        // `close` on any Connection line ends the connection after this answer (Pingora reads
        // only the first line).
        if !session.is_http2() && forwarding::connection_close(&session.req_header().headers) {
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = match req
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
        {
            Some(id) if forwarding::valid_request_id(id) => id.to_string(),
            _ => forwarding::new_request_id(),
        };
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip =
            forwarding::client_ip(ctx.peer_ip, &req.headers, &ctx.snapshot.trusted_proxies);
        ctx.tls_conn = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.tls = ctx.tls_conn
            || (ctx
                .peer_ip
                .is_some_and(|ip| forwarding::is_trusted(ip, &ctx.snapshot.trusted_proxies))
                && req
                    .headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.eq_ignore_ascii_case("https")));

        let raw = || (!session.is_http2()).then(|| session.as_downstream().to_h1_raw());
        if let Err(r) = hygiene::check(req, raw) {
            session.set_keepalive(None);
            return self.reject(session, ctx, r).await;
        }
        let path = match routing::normalize_path(req.uri.path()) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(request_id = %ctx.request_id, error = %e, "path refused");
                return self
                    .reject(
                        session,
                        ctx,
                        Reject::bad_request("The request path is not valid."),
                    )
                    .await;
            }
        };
        let method = req.method.clone();
        let snapshot = ctx.snapshot.clone();

        if path == "/health" || path == "/api/v1/health" {
            if method != Method::GET && method != Method::HEAD {
                let r = crate::errors::from_status(405).with_header("Allow", "GET, HEAD");
                ctx.path = Some(path);
                return self.reject(session, ctx, r).await;
            }
            let body = if path == "/health" {
                builtin::liveness()
            } else {
                builtin::detailed(&snapshot)
            };
            ctx.path = Some(path);
            self.send_json(session, ctx, 200, Bytes::from(body.to_string()), &[])
                .await?;
            return Ok(true);
        }

        ctx.api_client = crate::edge::client::is_api_client(&path, &req.headers);
        ctx.path = Some(path.clone());

        let tls_cfg = &snapshot.config.server.tls;
        if tls_cfg.redirect_http && !ctx.tls {
            // Plain HTTP: send the client to the same place over HTTPS.
            let host = req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            let host = host
                .rsplit_once(':')
                .filter(|(_, p)| p.parse::<u16>().is_ok())
                .map_or(host, |(h, _)| h);
            let port = tls_cfg
                .listen
                .first()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .map_or(443, |a| a.port());
            if !host.is_empty() && !host.contains(['/', ' ', '@']) {
                let authority = if port == 443 {
                    host.to_string()
                } else {
                    format!("{host}:{port}")
                };
                let mut location = format!("https://{authority}{path}");
                if let Some(q) = req.uri.query() {
                    location.push('?');
                    location.push_str(q);
                }
                let headers = [("Location".to_string(), location)];
                self.send_json(session, ctx, 308, Bytes::new(), &headers)
                    .await?;
                return Ok(true);
            }
        }
        ctx.cors = Some(snapshot.cors.clone());
        if crate::edge::cors::Cors::is_preflight(&method, &req.headers) {
            let requested = req
                .headers
                .get("access-control-request-method")
                .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
                .unwrap_or(Method::GET);
            let host = req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok());
            let cors = match snapshot.table.lookup(host, &requested, &path) {
                Lookup::Found(i) => snapshot.routes[i].cors.clone(),
                _ => snapshot.cors.clone(),
            };
            if cors.is_enabled() {
                // Answered before authentication: a preflight carries no credentials.
                let mut headers: Vec<(String, String)> = cors
                    .preflight(&req.headers)
                    .unwrap_or_else(|| vec![crate::edge::cors::Cors::preflight_vary()])
                    .into_iter()
                    .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
                    .collect();
                headers.push(("Cache-Control".into(), "no-store".into()));
                ctx.cors = None;
                self.send_json(session, ctx, 204, Bytes::new(), &headers)
                    .await?;
                return Ok(true);
            }
        }
        if let Some(ep) = endpoints::route(&method, &path) {
            return self.auth_endpoint(session, ctx, ep).await;
        }

        let pages = snapshot.pages.clone();
        if let Some(assets) = &pages.assets {
            let req = session.req_header();
            if let Some(answer) =
                assets.serve(&method, ctx.path.as_deref().unwrap_or("/"), &req.headers)
            {
                return self.send_asset(session, ctx, answer).await;
            }
        }
        // The seeds' JSON dashboards: the same page definition, as JSON.
        let json_page = ctx
            .path
            .as_deref()
            .and_then(|p| p.strip_prefix("/api/web/"))
            .and_then(|r| r.strip_suffix("/dashboard"))
            .filter(|r| !r.contains('/'))
            .and_then(|role| pages.find(&format!("/{role}/dashboard")));
        if let Some(page) = json_page {
            return self.serve_page(session, ctx, pages, page, true).await;
        }
        if let Some(page) = pages.find(ctx.path.as_deref().unwrap_or("/")) {
            return self.serve_page(session, ctx, pages, page, false).await;
        }

        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host());
        let path = ctx.path.clone().unwrap_or_default();
        let lookup = snapshot.table.lookup(host, &method, &path);
        let content_length = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        ctx.path = Some(path);
        let route = match lookup {
            Lookup::Found(i) => snapshot.routes[i].clone(),
            Lookup::NotFound => return self.reject(session, ctx, Reject::not_found()).await,
            Lookup::MethodNotAllowed(allowed) => {
                let allow = allowed
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let r = crate::errors::from_status(405).with_header("Allow", allow);
                return self.reject(session, ctx, r).await;
            }
        };
        ctx.cors = Some(route.cors.clone());
        if !route.ip_rules.permits(ctx.client_ip) {
            ctx.route = Some(route);
            let r = Reject::new(
                403,
                "ip_forbidden",
                "Access from this address is not allowed.",
            );
            return self.reject(session, ctx, r).await;
        }
        if let Some(r) = self.take_in_flight(ctx, &route) {
            ctx.route = Some(route); // so that `logging` gives back a slot already taken
            return self.reject(session, ctx, r).await;
        }
        if content_length.is_some_and(|n| n > route.max_body_bytes) {
            session.set_keepalive(None);
            ctx.route = Some(route);
            return self
                .reject(session, ctx, crate::errors::from_status(413))
                .await;
        }
        ctx.websocket = route.websocket && session.is_upgrade_req();
        if ctx.websocket {
            // An upgraded connection lives as long as both ends want: no total deadline, and
            // the downstream read timeout lifted (Pingora keeps 60 s per read otherwise).
            session.set_read_timeout(Some(Duration::from_secs(3600)));
        } else {
            ctx.deadline = Some(ctx.start + route.total_timeout);
        }
        let decision = self
            .protect(
                session,
                ctx,
                route.auth,
                route.roles.as_deref(),
                route.on_store_error,
            )
            .await;
        ctx.route = Some(route.clone());
        match decision {
            Decision::Anonymous => self.rate_limit(session, ctx, &route).await,
            Decision::Allow(identity) => {
                self.count_auth("allow", "token");
                ctx.identity = Some(identity);
                self.rate_limit(session, ctx, &route).await
            }
            Decision::Deny { reject, reason } => {
                self.count_auth("deny", reason);
                self.reject(session, ctx, reject).await
            }
            Decision::Redirect { location, reason } => {
                self.count_auth("redirect", reason);
                let headers = [
                    ("Location".to_string(), location),
                    ("Cache-Control".to_string(), "no-store".to_string()),
                ];
                self.send_json(session, ctx, 303, Bytes::new(), &headers)
                    .await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(b), Some(route)) = (body.as_ref(), ctx.route.as_ref()) {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > route.max_body_bytes {
                ctx.reject = Some(crate::errors::from_status(413));
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over the limit");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no route in context");
        };
        let (addr, remaining) = match self
            .next_attempt(ctx, &route, &_session.req_header().headers)
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

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.finish_attempt(ctx, Some(false), "connect_error");
        let retry = self.decide_retry(&Sent::of(session), ctx, Failure::Connect, None);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.status_retry.take().is_some() {
            // Recorded and decided in upstream_response_filter.
            e.set_retry(true);
            return e;
        }
        if e.esource() == &ErrorSource::Downstream {
            // The client went away (or broke the exchange) before the answer was through:
            // nothing to retry, and nothing the backend did wrong.
            self.finish_attempt(ctx, None, "client_error");
            e.set_retry(false);
            return e;
        }
        let failure = Failure::of(&e);
        if e.retry == RetryType::ReusedOnly && client_reused && session.response_written().is_none()
        {
            // A pooled connection the upstream had already closed: nothing was processed,
            // so this is as safe to retry as a connect failure, and not the backend's fault.
            ctx.attempt_start = None;
            let retry = self.decide_retry(&Sent::of(session), ctx, Failure::Connect, None);
            e.set_retry(retry);
            return e;
        }
        self.finish_attempt(ctx, Some(false), failure.reason());
        let retry = self.decide_retry(&Sent::of(session), ctx, failure, None);
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(route), Some(path)) = (ctx.route.as_ref(), ctx.path.as_ref()) else {
            return Error::e_explain(ErrorType::InternalError, "no route in context");
        };
        let mut target = routing::rewrite_path(
            path,
            &route.prefix,
            route.strip_prefix,
            route.rewrite_prefix.as_deref(),
        )
        .into_owned();
        if let Some(q) = session.req_header().uri.query() {
            target.push('?');
            target.push_str(q);
        }
        let uri = target
            .parse::<http::Uri>()
            .map_err(|e| Error::because(ErrorType::InternalError, "rewritten uri", e))?;
        up.set_uri(uri);

        // One pass over what the client sent (usually a handful of headers) instead of a
        // lookup per hop-by-hop and identity name; identity headers come only from the gateway.
        let listed = forwarding::connection_listed(&up.headers);
        let strip: Vec<http::HeaderName> = up
            .headers
            .keys()
            .filter(|k| {
                let k = k.as_str();
                forwarding::HOP_BY_HOP.contains(&k)
                    || forwarding::IDENTITY_HEADERS.contains(&k)
                    || listed.iter().any(|l| l == k)
            })
            .cloned()
            .collect();
        for name in &strip {
            up.remove_header(name);
        }
        // The gateway's own cookies (session, refresh, CSRF, flash) never reach an upstream;
        // the client's others pass as sent (`Some("")`: nothing is left, no header).
        match crate::auth::cookies::strip(&up.headers, &self.auth.own_cookies()) {
            None => {}
            Some(c) if c.is_empty() => {
                up.remove_header(&http::header::COOKIE);
            }
            Some(c) => {
                up.insert_header(http::header::COOKIE, c)?;
            }
        }
        if ctx.websocket {
            let upgrade = session
                .req_header()
                .headers
                .get(http::header::UPGRADE)
                .cloned();
            if let Some(u) = upgrade {
                up.insert_header(http::header::UPGRADE, u)?;
                up.insert_header(http::header::CONNECTION, "upgrade")?;
            }
        }
        // The client's Host as it came (a cheap clone of the parsed value, no copy).
        let orig_host: Option<http::HeaderValue> = {
            let req = session.req_header();
            req.headers.get(http::header::HOST).cloned().or_else(|| {
                req.uri
                    .authority()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            })
        };
        if let Some(host) = &route.pool.config.host {
            up.insert_header(http::header::HOST, host.as_str())?;
        } else if !up.headers.contains_key(http::header::HOST) {
            if let Some(h) = &orig_host {
                up.insert_header(http::header::HOST, h.clone())?;
            }
        }

        let trusted_peer = ctx
            .peer_ip
            .is_some_and(|ip| forwarding::is_trusted(ip, &ctx.snapshot.trusted_proxies));
        // One string for the peer address, reused for X-Real-IP when it is the client.
        let mut peer_value = None;
        if let Some(peer) = ctx.peer_ip {
            use std::fmt::Write;
            let mut xff = String::with_capacity(64);
            for v in up.headers.get_all("x-forwarded-for") {
                if let Ok(v) = v.to_str() {
                    if !xff.is_empty() {
                        xff.push_str(", ");
                    }
                    xff.push_str(v);
                }
            }
            let start = if xff.is_empty() {
                0
            } else {
                xff.push_str(", ");
                xff.len()
            };
            let _ = write!(xff, "{peer}");
            if start == 0 {
                let v = http::HeaderValue::try_from(xff)
                    .map_err(|e| Error::because(ErrorType::InternalError, "peer address", e))?;
                peer_value = Some(v.clone());
                up.insert_header("x-forwarded-for", v)?;
            } else {
                up.insert_header("x-forwarded-for", xff)?;
            }
        }
        if let Some(client) = ctx.client_ip {
            match peer_value.filter(|_| Some(client) == ctx.peer_ip) {
                Some(v) => up.insert_header("x-real-ip", v)?,
                None => up.insert_header("x-real-ip", client.to_string())?,
            }
        }
        if ctx.tls_conn {
            up.insert_header("x-forwarded-proto", http::HeaderValue::from_static("https"))?;
        } else if !(trusted_peer && up.headers.contains_key("x-forwarded-proto")) {
            up.insert_header("x-forwarded-proto", http::HeaderValue::from_static("http"))?;
        }
        if !(trusted_peer && up.headers.contains_key("x-forwarded-host")) {
            match &orig_host {
                Some(h) => up.insert_header("x-forwarded-host", h.clone())?,
                None => {
                    up.remove_header("x-forwarded-host");
                }
            }
        }
        up.insert_header("x-request-id", ctx.request_id.as_str())?;
        for op in route.headers.request_ops() {
            match op {
                HeaderOp::Remove(n) => {
                    up.remove_header(n);
                }
                HeaderOp::Set(n, v) => {
                    up.insert_header(n.clone(), v.clone())?;
                }
                HeaderOp::Add(n, v) => {
                    up.append_header(n.clone(), v.clone())?;
                }
            }
        }
        if let Some(id) = &ctx.identity {
            up.insert_header("authorization", format!("Bearer {}", id.token))?;
            up.insert_header("x-user-id", id.claims.sub.as_str())?;
            up.insert_header("x-user-role", id.claims.role.as_str())?;
            up.insert_header("x-session-id", id.claims.sid.as_str())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        if let Some(route) = ctx.route.clone() {
            let failed = route.pool.is_failure_status(status);
            let outcome = if failed { "failure_status" } else { "ok" };
            self.finish_attempt(ctx, Some(!failed), outcome);
            if matches!(status, 502..=504) {
                let retry_after = resp
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                let failure = Failure::Status(status);
                if self.decide_retry(&Sent::of(session), ctx, failure, retry_after) {
                    ctx.status_retry = Some(failure);
                    return Error::e_explain(
                        ErrorType::HTTPStatus(status),
                        "retrying an upstream error status",
                    );
                }
            }
        }
        let switching = ctx.websocket && resp.status.as_u16() == 101;
        for name in forwarding::connection_listed(&resp.headers) {
            // A 101 must keep `Upgrade` (RFC 6455 §4.1), although `Connection` names it.
            if !(switching && name == "upgrade") {
                resp.remove_header(name.as_str());
            }
        }
        for name in ["keep-alive", "proxy-connection", "proxy-authenticate"] {
            resp.remove_header(name);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if crate::DRAINING.load(std::sync::atomic::Ordering::Acquire)
            || session.is_process_shutting_down()
        {
            session.set_keepalive(None); // written as `Connection: close`
        }
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        let len = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        Self::maybe_skip_compression(session, ctx, len);
        if Self::wants_br(session, ctx, resp, len) {
            Self::br_headers(resp)?;
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            ctx.br_stream = Some(Box::default());
        }
        for (k, v) in &ctx.extra_headers {
            resp.insert_header(k.clone(), v.as_str())?;
        }
        if let (true, Some(h)) = (ctx.tls_conn, ctx.snapshot.config.server.tls.hsts.as_ref()) {
            resp.insert_header("strict-transport-security", h.header_value())?;
        }
        if let Some(route) = ctx.route.as_ref().filter(|r| r.cache.is_some()) {
            let phase = session.cache.phase();
            if let Some(word) = crate::cache::status_word(phase, ctx.cache_bypass) {
                self.metrics
                    .cache_requests_total
                    .with_label_values(&[route.name.as_str(), crate::cache::status_label(word)])
                    .inc();
                let header = &ctx.snapshot.config.server.cache.status_header;
                if !header.is_empty() {
                    resp.insert_header(header.clone(), word)?;
                }
            }
        }
        if let Some(route) = ctx.route.as_ref() {
            for op in route.headers.response_ops() {
                match op {
                    HeaderOp::Remove(n) => {
                        resp.remove_header(n);
                    }
                    HeaderOp::Set(n, v) => {
                        resp.insert_header(n.clone(), v.clone())?;
                    }
                    HeaderOp::Add(n, v) => {
                        resp.append_header(n.clone(), v.clone())?;
                    }
                }
            }
        }
        if let Some(cors) = ctx.cors.as_ref().filter(|c| c.is_enabled()) {
            // The gateway owns CORS on routes where it is configured.
            let upstream_cors: Vec<_> = resp
                .headers
                .keys()
                .filter(|k| k.as_str().starts_with("access-control-"))
                .cloned()
                .collect();
            for k in upstream_cors {
                resp.remove_header(&k);
            }
            for (k, v) in cors.response_headers(&session.req_header().headers) {
                if k == http::header::VARY {
                    resp.append_header(k, v)?;
                } else {
                    resp.insert_header(k, v)?;
                }
            }
        }
        if let Some(cookie) = ctx
            .identity
            .as_ref()
            .and_then(|i| i.renewed_cookie.as_ref())
        {
            resp.append_header("set-cookie", cookie.as_str())?;
        }
        ctx.status = resp.status.as_u16();
        Ok(())
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.as_ref()) else {
            return Ok(());
        };
        if ctx.websocket {
            return Ok(());
        }
        match policy.admits(session.req_header(), ctx.identity.is_some()) {
            crate::cache::Admission::Use => {
                session
                    .cache
                    .enable(self.cache.store, None, None, self.cache.lock, None);
                session
                    .cache
                    .set_max_file_size_bytes(self.cache.store.max_object_size());
            }
            crate::cache::Admission::Bypass => ctx.cache_bypass = true,
            crate::cache::Admission::Off => {}
        }
        Ok(())
    }

    fn cache_key_callback(
        &self,
        session: &Session,
        ctx: &mut Ctx,
    ) -> Result<pingora::cache::CacheKey> {
        let (Some(route), Some(path)) = (ctx.route.as_ref(), ctx.path.as_deref()) else {
            return Error::e_explain(ErrorType::InternalError, "no route in context");
        };
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let target = match req.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let primary = crate::cache::store::primary_key(&route.name, &host, &target);
        Ok(pingora::cache::CacheKey::new(primary, route.name.as_str()))
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<pingora::cache::RespCacheable> {
        Ok(match ctx.route.as_ref().and_then(|r| r.cache.as_ref()) {
            Some(policy) => policy.decide(resp, std::time::SystemTime::now()),
            None => pingora::cache::RespCacheable::Uncacheable(
                pingora::cache::NoCacheReason::NeverEnabled,
            ),
        })
    }

    fn cache_vary_filter(
        &self,
        meta: &pingora::cache::CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<pingora::cache::key::HashBinary> {
        crate::cache::variance(meta, req)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        // `None`: stale-while-revalidate, already bounded by the stored answer's window.
        error.is_none_or(|e| crate::cache::upstream_failed(e.esource(), e.etype()))
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(stream) = ctx.br_stream.as_ref() {
            let mut out = match body.take() {
                Some(b) => stream.push(&b).to_vec(),
                None => Vec::new(),
            };
            if end_of_stream {
                out.extend_from_slice(&stream.finish());
            }
            *body = (!out.is_empty()).then(|| Bytes::from(out));
        }
        Ok(None)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if ctx.deadline.is_some_and(|d| Instant::now() > d) {
            let mut e = Error::explain(
                ErrorType::ReadTimedout,
                "total timeout of the route exceeded",
            );
            e.as_up();
            return Err(e);
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let downstream_gone = e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            );
        let r = ctx.reject.take().unwrap_or_else(|| Reject::from_pingora(e));
        let status = r.status;
        if downstream_gone {
            ctx.status = 499;
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        if session.response_written().is_none() {
            session.set_keepalive(None);
            if let Err(err) = self.send_reject(session, ctx, &r).await {
                tracing::debug!(request_id = %ctx.request_id, error = %err, "could not send error response");
            }
        }
        ctx.reject = Some(r);
        ctx.status = status;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        // Statuses we raise ourselves are logged once, in the access log. So are the
        // client's own failures (a hang-up mid-request, a malformed request): Pingora would
        // log each at ERROR ("Fail to proxy: Downstream ConnectionClosed"), which is client
        // behaviour, not a gateway fault (the access log has them, outcome `client_error`).
        matches!(e.etype(), ErrorType::HTTPStatus(_)) || e.esource() == &ErrorSource::Downstream
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map_or(ctx.status, |r| r.status.as_u16());
        let bytes = session.body_bytes_sent();
        let req = session.req_header();
        let error = e.map(|e| e.etype().as_str()).unwrap_or("");
        self.log_request(ctx, &req.method, req.uri.path(), status, bytes, error);
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &Ctx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        Some(Box::new(Reused(ctx.peer_ip)))
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

#[cfg(test)]
mod tests {
    /// `Ctx` is part of Pingora's per-request future, which is copied whole while it is built
    /// (`Box::pin` of `process_new_http`, once per request): every byte of it is copied on
    /// every request. Large parts (the brotli encoder state, ~5.6 KiB) are boxed.
    #[test]
    fn the_request_context_stays_small() {
        let size = std::mem::size_of::<super::Ctx>();
        assert!(size <= 1024, "Ctx is {size} bytes");
    }
}

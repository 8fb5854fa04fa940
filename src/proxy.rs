//! The Pingora lane: `impl ProxyHttp`, a table of contents of the request's life. Each phase
//! is a call into the module that owns the decision:
//!
//! - `request_filter` — [`crate::plan`] decides (hygiene, path, health, HTTPS redirect,
//!   preflight, auth endpoints, assets, pages, route, address rules, body limit); this lane
//!   executes it: `answer` writes the gateway's own answers, `endpoints` the built-in ones
//!   (`register`: the registration page and endpoints), `web` the pages, `admission`
//!   admits a proxied request (slots, session, rate limits);
//! - `upstream_peer`, `fail_to_connect`, `error_while_proxy`, `upstream_response_filter` —
//!   `attempts`: backend choice, timeouts, breaker, retries;
//! - `upstream_request_filter`, `response_filter` — `edits`: the heads going up and back;
//! - the cache callbacks — `caching` and `crate::cache`;
//! - `fail_to_proxy` — the error answer (504 for timeouts), `logging` — `access_log`.
//!
//! Layer: the lane. Imports the plan and everything below it; nothing below imports this.
//! Must not import `edge::listener` (which wraps it), `admin` or `reload`.

use crate::auth::guard::Identity;
use crate::auth::Auth;
use crate::edge::forwarding::{self, Reused};
use crate::errors::Reject;
use crate::metrics::Metrics;
use crate::plan::{self, Plan};
use crate::state::{Route, SharedState, Snapshot};
use crate::telemetry::Span;
use async_trait::async_trait;

mod access_log;
mod admission;
mod answer;
mod attempts;
mod caching;
mod edits;
mod endpoints;
mod register;
mod web;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};
use std::net::IpAddr;
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
    /// OpenTelemetry tracing (a no-op when off).
    pub tracer: crate::telemetry::Tracer,
    /// The access audit's queue (routes and pages opt in with `audit`).
    pub audit: Arc<crate::audit::AuditSink>,
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
    /// What we answered (or will answer) ourselves, for fail_to_proxy and the access log.
    reject: Option<Reject>,
    /// The status the client got (when Pingora has no response header to tell).
    status: u16,
    /// What the attempts to backends learned.
    up: attempts::AttemptState,
    /// The request's server span (nothing when tracing is off).
    trace: Span,
    /// The current upstream attempt's client span.
    attempt_span: Span,
    /// The signed-in user, when the route checked one.
    identity: Option<Identity>,
    /// The page the request is for (its `audit` applies, as a route's does).
    page: Option<Arc<crate::pages::PageDef>>,
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
            reject: None,
            status: 0,
            up: attempts::AttemptState::default(),
            trace: Span::default(),
            attempt_span: Span::default(),
            identity: None,
            page: None,
            tls: false,
            tls_conn: false,
            cors: None,
            websocket: false,
            extra_headers: Vec::new(),
            holds_slot: false,
            client_slot: None,
            cache_bypass: false,
            br_stream: None,
            api_client: true,
        }
    }

    /// Keeps what the plan learned about the request.
    fn learn(&mut self, facts: plan::Facts) {
        self.request_id = facts.request_id;
        self.client_ip = facts.client_ip;
        self.tls = facts.tls;
        self.path = facts.path;
        self.api_client = facts.api_client;
        self.cors = facts.cors;
        self.page = facts.page;
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.state.load_full())
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // `close` on any Connection line ends the connection after this answer (Pingora reads
        // only the first line).
        if !session.is_http2() && forwarding::connection_close(&session.req_header().headers) {
            session.set_keepalive(None);
        }
        Ok(())
    }

    /// The plan decides (`crate::plan`); this executes it.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.trace = self.tracer.start_server(session.req_header());
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.tls_conn = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let (facts, plan) = {
            let inbound = plan::Inbound {
                head: session.req_header(),
                peer_ip: ctx.peer_ip,
                tls_conn: ctx.tls_conn,
                audit_degraded: self.audit.degraded(),
            };
            let h1 = !session.is_http2();
            let raw = || h1.then(|| session.as_downstream().to_h1_raw());
            plan::plan(&ctx.snapshot, &inbound, raw)
        };
        ctx.learn(facts);
        ctx.trace.set_client(ctx.client_ip, ctx.peer_ip);
        match plan {
            Plan::Refuse {
                reject,
                close,
                route,
            } => {
                if close {
                    session.set_keepalive(None);
                }
                if let Some(r) = &route {
                    ctx.trace.set_route(&r.prefix);
                }
                ctx.route = route;
                self.reject(session, ctx, reject).await
            }
            Plan::Answer(answer) => {
                self.send_answer(session, ctx, answer).await?;
                Ok(true)
            }
            Plan::Health { detailed } => self.health(session, ctx, detailed).await,
            Plan::AuthEndpoint(ep) => self.auth_endpoint(session, ctx, ep).await,
            Plan::Page { page, as_json } => self.serve_page(session, ctx, page, as_json).await,
            Plan::Proxy(route) => self.admit(session, ctx, route).await,
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
            ctx.up.body_bytes += b.len() as u64;
            if ctx.up.body_bytes > route.max_body_bytes {
                ctx.reject = Some(crate::errors::from_status(413));
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over the limit");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        self.peer(session, ctx).await
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.connect_failed(session, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        self.proxy_failed(peer, session, e, ctx, client_reused)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.edit_upstream_request(session, up, ctx)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.upstream_status(session, resp, ctx)?;
        Self::strip_upstream_hop_headers(resp, ctx);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.edit_response(session, resp, ctx)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        self.cache_admit(session, ctx);
        Ok(())
    }

    fn cache_key_callback(
        &self,
        session: &Session,
        ctx: &mut Ctx,
    ) -> Result<pingora::cache::CacheKey> {
        Self::cache_key(session, ctx)
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
        if ctx.up.deadline.is_some_and(|d| Instant::now() > d) {
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
        // An attempt still open (the client left mid-answer, say) ends with the request.
        std::mem::take(&mut ctx.attempt_span).end_attempt("unfinished", None, e.map(|_| error));
        std::mem::take(&mut ctx.trace).end_server(status, e.map(|_| error));
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &Ctx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        Some(Box::new(Reused(ctx.peer_ip)))
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

//! gatehouse's own HTTP/1 engine: the native lane (`server.native_http1`, issue 8).
//!
//! Pingora's HTTP proxy costs ~1.5–1.6 × nginx's CPU per plain request before gatehouse adds
//! anything (benches/results); an engine of nginx's shape with gatehouse's per-request work
//! measured 0.78 × (examples/tokio_http1.rs). This lane is that engine inside gatehouse: for
//! each plain-HTTP/1 request whose head [`crate::edge::listener::EdgeApp`] has read, it
//! decides from the head alone whether it can finish the request itself ([`Gateway::native_plan`]);
//! if so it serves it ([`Gateway::native_serve`]), otherwise the request goes to Pingora's
//! proxy exactly as before, with nothing consumed and nothing counted. A connection can carry
//! requests of both lanes.
//!
//! The lane takes a request only when it does everything gatehouse would do with it:
//! a proxy route (not `/health`, auth endpoints, pages, assets, preflights or the HTTPS
//! redirect), found by the route table, without cache, rate limits or a WebSocket upgrade, no
//! request body (`Content-Length` absent or 0; no `Transfer-Encoding`, `Expect`, `Upgrade`),
//! no compression to negotiate (no `Accept-Encoding` while compression is on for the route),
//! an ip the route's rules admit, an origin-form target, a head httparse parses with at most
//! 64 headers. Anything else, including every malformed head, is Pingora's, whose answers
//! (hygiene, 400s, 404/405, 403) are then the ones the client gets.
//!
//! What it does, in the order `src/proxy.rs` does it and with the same functions: request
//! id, client ip (trusted proxies), path normalisation, route lookup, ip rules, in-flight
//! limits, the auth guard (token, live session, roles; 401/403/303 answered here), backend
//! selection through the route's pool (health, breaker, consistent hash), connect/read/total
//! timeouts, retries with backoff and the retry budget (connect failures, timeouts, resets,
//! 502–504), the path rewrite, forwarding and identity headers (client-sent ones stripped),
//! the route's header rules, CORS response headers, a renewed session cookie, the breaker's
//! record, the metrics and the access log, and gatehouse's JSON or HTML error answers. The
//! request head is forwarded as bytes; the response head is passed through with hop-by-hop
//! headers dropped and `X-Request-Id`, `Date` and `Connection` set; bodies (Content-Length,
//! chunked, or until the upstream closes) are relayed as bytes. Upstream keep-alive
//! connections are kept per worker thread and backend.

use super::{Attempt, Ctx, Gateway, Sent};
use crate::auth::endpoints;
use crate::auth::guard::{self, Decision};
use crate::edge::listener::find_head_end;
use crate::edge::write_buffer::LazyWriteBuf;
use crate::edge::{client, forwarding};
use crate::errors::Reject;
use crate::routing::{self, Lookup};
use crate::upstream::retry::{parse_retry_after, Failure};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use pingora::protocols::Stream;
use pingora::ErrorType;
use std::borrow::Cow;
use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Headers a head may have for this lane (more go to Pingora, which allows more).
const MAX_HEADERS: usize = 64;
/// Headers an upstream response may have (Pingora's limit).
const MAX_RESPONSE_HEADERS: usize = 256;
/// Largest upstream response head read.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read size for bodies.
const CHUNK: usize = 16 * 1024;
/// How long one write to the client may take (Pingora's downstream default is 60 s).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle upstream connections kept per worker thread, over all backends.
const MAX_IDLE_UPSTREAM: usize = 256;

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What [`Gateway::native_plan`] found in a head the lane takes.
pub struct Plan {
    ctx: Ctx,
    method: Method,
    headers: HeaderMap,
    uri: http::Uri,
    /// The client asked for keep-alive (no `Connection: close`).
    keep_alive: bool,
}

/// What the exchange with an upstream went wrong with.
enum AttemptError {
    Connect { timed_out: bool },
    Timeout,
    Reset,
}

impl AttemptError {
    fn failure(&self) -> Failure {
        match self {
            AttemptError::Connect { .. } => Failure::Connect,
            AttemptError::Timeout => Failure::Timeout,
            AttemptError::Reset => Failure::Reset,
        }
    }

    /// What the client gets when this is the last attempt, and the access log's error.
    fn answer(&self) -> (Reject, &'static str) {
        let timeout = || crate::errors::from_status(504);
        let failed = || crate::errors::from_status(502);
        match self {
            AttemptError::Connect { timed_out: true } => {
                (timeout(), ErrorType::ConnectTimedout.as_str())
            }
            AttemptError::Connect { timed_out: false } => {
                (failed(), ErrorType::ConnectRefused.as_str())
            }
            AttemptError::Timeout => (timeout(), ErrorType::ReadTimedout.as_str()),
            AttemptError::Reset => (failed(), ErrorType::ConnectionClosed.as_str()),
        }
    }
}

/// An upstream answer whose head has been read.
struct Upstream {
    conn: TcpStream,
    /// Bytes read from it: the response head, and what followed.
    buf: Vec<u8>,
    head_len: usize,
    status: u16,
}

thread_local! {
    /// Idle upstream keep-alive connections of this worker thread: backend, connection,
    /// since when idle.
    static IDLE: RefCell<Vec<(SocketAddr, TcpStream, Instant)>> = const { RefCell::new(Vec::new()) };
}

/// An idle connection to `addr` not older than `max_idle`, if this thread has one.
fn take_idle(addr: SocketAddr, max_idle: Duration) -> Option<TcpStream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let now = Instant::now();
        // Kept oldest first: the stale ones are at the front (usually none; a look at one).
        let stale = idle
            .iter()
            .take_while(|(_, _, since)| now.duration_since(*since) >= max_idle)
            .count();
        idle.drain(..stale);
        let at = idle.iter().rposition(|(a, _, _)| *a == addr)?;
        Some(idle.remove(at).1)
    })
}

fn put_idle(addr: SocketAddr, conn: TcpStream) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        if idle.len() >= MAX_IDLE_UPSTREAM {
            idle.remove(0);
        }
        idle.push((addr, conn, Instant::now()));
    });
}

/// Whether the comma-separated header value `v` lists `token` (ASCII case-insensitive).
pub fn contains_token(v: &[u8], token: &str) -> bool {
    v.split(|&c| c == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// An address as text, on the stack; IPv4 without the formatting machinery (a Display per
/// request showed in profiles).
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 48],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, n) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if n >= 100 {
                        t.push(b'0' + n / 100);
                    }
                    if n >= 10 {
                        t.push(b'0' + n / 10 % 10);
                    }
                    t.push(b'0' + n % 10);
                }
            }
            IpAddr::V6(v6) => {
                // At most 45 characters (RFC 4291 with an embedded IPv4 address).
                let mut w = std::io::Cursor::new(&mut t.buf[..]);
                let _ = std::io::Write::write_fmt(&mut w, format_args!("{v6}"));
                t.len = w.position() as usize;
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons and hex digits were written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// `HTTP/1.1 NNN reason` and its line end.
fn status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    let status = status.clamp(100, 999);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

async fn with_timeout<T>(
    d: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    // Most reads and writes are done at the first poll: no timer is set for those.
    let mut f = std::pin::pin!(f);
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match f.as_mut().poll(cx) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => None,
        })
    })
    .await;
    if let Some(r) = first {
        return r;
    }
    match tokio::time::timeout(d, f).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Writes `bytes` to the client, bounded in time.
async fn to_client(client: &mut Stream, bytes: &[u8]) -> io::Result<()> {
    with_timeout(CLIENT_WRITE_TIMEOUT, client.write_all(bytes)).await
}

impl Gateway {
    /// Whether the native lane takes the request whose head is `head` (see the module docs),
    /// decided without side effects: `None` leaves it to Pingora.
    pub fn native_plan(&self, head: &[u8], peer_ip: Option<IpAddr>) -> Option<Box<Plan>> {
        if !self.state.load().config.server.native_http1 {
            return None;
        }
        // Uninitialised: zeroing 64 headers for every request showed in profiles.
        let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        if !matches!(
            req.parse_with_uninit_headers(head, &mut raw),
            Ok(httparse::Status::Complete(_))
        ) {
            return None;
        }
        let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
        let target = req.path?;
        let version = req.version?;
        // HTTP/1.0 clients stay on Pingora's lane, which re-frames chunked answers for them.
        if version != 1
            || !target.starts_with('/')
            || method == Method::TRACE
            || method.as_str() == "TRACK"
        {
            return None;
        }
        let uri: http::Uri = target.parse().ok()?;
        let mut headers = HeaderMap::with_capacity(req.headers.len());
        let mut keep_alive = true;
        // What the lane needs to know of the head, noted as it is read (a map lookup each
        // showed in profiles): a Host, no body, no upgrade or expectation.
        let (mut host, mut lengths, mut accept_encoding) = (0, 0, false);
        for h in req.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            match name {
                header::CONNECTION => keep_alive &= !contains_token(h.value, "close"),
                header::HOST => host += 1,
                header::CONTENT_LENGTH if h.value == b"0" => lengths += 1,
                header::CONTENT_LENGTH
                | header::TRANSFER_ENCODING
                | header::UPGRADE
                | header::EXPECT => return None,
                header::ACCEPT_ENCODING => accept_encoding = true,
                _ => {}
            }
            headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
        }
        if host == 0 || lengths > 1 {
            return None;
        }

        let snapshot = self.state.load_full();
        let client_ip = forwarding::client_ip(peer_ip, &headers, &snapshot.trusted_proxies);
        let tls = peer_ip.is_some_and(|ip| forwarding::is_trusted(ip, &snapshot.trusted_proxies))
            && headers
                .get(X_FORWARDED_PROTO)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("https"));
        let path = routing::normalize_path(uri.path()).ok()?;
        if path == "/health" || path == "/api/v1/health" {
            return None;
        }
        let config = &snapshot.config;
        if (config.server.tls.redirect_http && !tls)
            || crate::edge::cors::Cors::is_preflight(&method, &headers)
            || endpoints::route(&method, &path).is_some()
        {
            return None;
        }
        let pages = &snapshot.pages;
        if pages.assets.as_ref().is_some_and(|a| a.claims(&path))
            || (path.starts_with("/api/web/") && path.ends_with("/dashboard"))
            || pages.find(&path).is_some()
        {
            return None;
        }
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let route = match snapshot.table.lookup(host, &method, &path) {
            Lookup::Found(i) => snapshot.routes[i].clone(),
            _ => return None,
        };
        let compression = config.server.compression.enabled && route.compression && accept_encoding;
        if route.cache.is_some()
            || !route.limiters.is_empty()
            || compression
            || !route.ip_rules.permits(client_ip)
        {
            return None;
        }
        // The context only now: a request handed to Pingora gets its own there.
        let mut ctx = Ctx::new(snapshot);
        ctx.peer_ip = peer_ip;
        ctx.client_ip = client_ip;
        ctx.tls = tls;
        ctx.request_id = match headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
            Some(id) if forwarding::valid_request_id(id) => id.to_string(),
            _ => forwarding::new_request_id(),
        };
        ctx.api_client = client::is_api_client(&path, &headers);
        ctx.path = Some(path);
        ctx.cors = Some(route.cors.clone());
        ctx.deadline = Some(ctx.start + route.total_timeout);
        ctx.route = Some(route);
        Some(Box::new(Plan {
            ctx,
            method,
            headers,
            uri,
            keep_alive,
        }))
    }

    /// Serves a request [`Gateway::native_plan`] took. `may_keep`: the server would keep
    /// the connection (keep-alive on, reuses left, not shutting down). `carry` holds what the
    /// client sent after the head (the next request); bytes read while the upstream is
    /// awaited are added to it. Returns whether the connection stays open for another request.
    pub async fn native_serve(
        &self,
        client: &mut Stream,
        carry: &mut BytesMut,
        plan: Box<Plan>,
        may_keep: bool,
    ) -> bool {
        // Used in place: the plan (the ~1 KiB context with it) stays in its box.
        let mut plan = plan;
        let Plan {
            ctx,
            method,
            headers,
            uri,
            keep_alive,
        } = &mut *plan;
        let ctx = &mut *ctx;
        self.metrics.native_requests_total.inc();
        // The lane writes whole answers: no copy into the connection's write buffer.
        LazyWriteBuf::set_direct(client, true);
        let draining = crate::DRAINING.load(std::sync::atomic::Ordering::Acquire);
        let mut keep = *keep_alive && may_keep && !draining;
        let mut bytes = 0usize;
        let error = self
            .native_request(
                client, carry, ctx, method, headers, uri, &mut keep, &mut bytes,
            )
            .await;
        if keep {
            if let Err(e) = with_timeout(CLIENT_WRITE_TIMEOUT, client.flush()).await {
                tracing::debug!(request_id = %ctx.request_id, error = %e, "client write failed");
                keep = false;
            }
        }
        LazyWriteBuf::set_direct(client, false);
        let status = ctx.status;
        self.log_request(ctx, method, uri.path(), status, bytes, error.unwrap_or(""));
        if !keep {
            let _ = with_timeout(Duration::from_secs(2), async {
                client.flush().await?;
                client.shutdown().await
            })
            .await;
        }
        keep
    }

    /// The request's way through the lane; the access log's error, if any.
    #[allow(clippy::too_many_arguments)]
    async fn native_request(
        &self,
        client: &mut Stream,
        carry: &mut BytesMut,
        ctx: &mut Ctx,
        method: &Method,
        headers: &HeaderMap,
        uri: &http::Uri,
        keep: &mut bool,
        bytes: &mut usize,
    ) -> Option<&'static str> {
        let route = ctx.route.clone()?;
        if let Some(r) = self.take_in_flight(ctx, &route) {
            self.native_reject(client, ctx, method, headers, uri, &r, keep, bytes)
                .await;
            return None;
        }
        let greq = guard::Request {
            method,
            path: ctx.path.as_deref().unwrap_or("/"),
            query: uri.query(),
            headers,
            api_client: ctx.api_client,
            tls: ctx.tls,
        };
        let decision = guard::protect(
            &self.auth,
            route.auth,
            route.roles.as_deref(),
            route.on_store_error,
            &greq,
        )
        .await;
        match decision {
            Decision::Anonymous => {}
            Decision::Allow(identity) => {
                self.count_auth("allow", "token");
                ctx.identity = Some(identity);
            }
            Decision::Deny { reject, reason } => {
                self.count_auth("deny", reason);
                self.native_reject(client, ctx, method, headers, uri, &reject, keep, bytes)
                    .await;
                return None;
            }
            Decision::Redirect { location, reason } => {
                self.count_auth("redirect", reason);
                let extra = [
                    ("Location".to_string(), location),
                    ("Cache-Control".to_string(), "no-store".to_string()),
                ];
                let sent = self
                    .native_answer(
                        client,
                        ctx,
                        method,
                        headers,
                        303,
                        Bytes::new(),
                        &extra,
                        keep,
                    )
                    .await;
                *bytes += sent;
                return None;
            }
        }

        let head = self.upstream_head(ctx, method, headers, uri);
        let sent = Sent {
            method,
            headers,
            body_truncated: false,
            response_started: false,
        };
        loop {
            let (addr, remaining) = match self.next_attempt(ctx, &route, headers).await {
                Attempt::Go { addr, remaining } => (addr, remaining),
                Attempt::Expired => {
                    let (r, error) = AttemptError::Timeout.answer();
                    *keep = false;
                    self.native_reject(client, ctx, method, headers, uri, &r, keep, bytes)
                        .await;
                    return Some(error);
                }
                Attempt::Fallback(r) => {
                    *keep = false;
                    self.native_reject(client, ctx, method, headers, uri, &r, keep, bytes)
                        .await;
                    return Some(ErrorType::HTTPStatus(r.status).as_str());
                }
            };
            let connect_timeout = route.connect_timeout.min(remaining);
            let read_timeout = route.read_timeout.min(remaining);
            let idle = route.pool.config.keepalive_idle.0;
            let attempt = exchange(addr, &head, connect_timeout, read_timeout, idle);
            let result = tokio::select! {
                r = attempt => r,
                () = client_gone(client, carry) => {
                    // The client hung up while the upstream worked: nothing to answer, and
                    // nothing the backend did wrong (Pingora's lane does the same).
                    self.finish_attempt(ctx, None, "client_error");
                    ctx.status = 499;
                    *keep = false;
                    return Some(ErrorType::ConnectionClosed.as_str());
                }
            };
            let up = match result {
                Ok(up) => up,
                Err(e) => {
                    let failure = e.failure();
                    self.finish_attempt(ctx, Some(false), failure.reason());
                    if self.decide_retry(&sent, ctx, failure, None) {
                        continue;
                    }
                    let (r, error) = e.answer();
                    *keep = false;
                    self.native_reject(client, ctx, method, headers, uri, &r, keep, bytes)
                        .await;
                    return Some(error);
                }
            };
            let status = up.status;
            let head = match self.response_head(ctx, method, headers, &up, *keep) {
                Ok(head) => head,
                Err(why) => {
                    // An unreadable answer is the upstream's failure, like a reset.
                    tracing::warn!(request_id = %ctx.request_id, backend = %addr, why, "unusable upstream response head");
                    self.finish_attempt(ctx, Some(false), Failure::Reset.reason());
                    if self.decide_retry(&sent, ctx, Failure::Reset, None) {
                        continue;
                    }
                    let r = crate::errors::from_status(502);
                    *keep = false;
                    self.native_reject(client, ctx, method, headers, uri, &r, keep, bytes)
                        .await;
                    return Some(ErrorType::InvalidHTTPHeader.as_str());
                }
            };
            let failed = route.pool.is_failure_status(status);
            let outcome = if failed { "failure_status" } else { "ok" };
            self.finish_attempt(ctx, Some(!failed), outcome);
            if matches!(status, 502..=504) {
                let retry_after = response_header(&up, "retry-after")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(parse_retry_after);
                if self.decide_retry(&sent, ctx, Failure::Status(status), retry_after) {
                    continue;
                }
            }
            *keep = head.keep;
            ctx.status = status;
            let result = self.relay(client, ctx, head, up, read_timeout, bytes).await;
            return match result {
                Ok(()) => None,
                Err(e) => {
                    tracing::debug!(request_id = %ctx.request_id, error = %e, "response relay failed");
                    *keep = false;
                    Some(ErrorType::ReadError.as_str())
                }
            };
        }
    }

    /// The request head for the upstream: what `upstream_request_filter` makes of the
    /// client's, as bytes.
    fn upstream_head(
        &self,
        ctx: &Ctx,
        method: &Method,
        headers: &HeaderMap,
        uri: &http::Uri,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        let (Some(route), Some(path)) = (ctx.route.as_ref(), ctx.path.as_ref()) else {
            return out;
        };
        let target = routing::rewrite_path(
            path,
            &route.prefix,
            route.strip_prefix,
            route.rewrite_prefix.as_deref(),
        );
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        if let Some(q) = uri.query() {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");

        let trusted_peer = ctx
            .peer_ip
            .is_some_and(|ip| forwarding::is_trusted(ip, &ctx.snapshot.trusted_proxies));
        // Not cloned: a clone of a header value read into its own buffer allocates.
        let orig_host: Option<&str> = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()));
        let keep_proto = trusted_peer && headers.contains_key(X_FORWARDED_PROTO);
        let keep_fwd_host = trusted_peer && headers.contains_key(X_FORWARDED_HOST);
        let pool_host = route.pool.config.host.as_deref();
        let listed = forwarding::connection_listed(headers);
        // The gateway's own cookies never reach an upstream (decided in upstream_cookie).
        let cookie = self.upstream_cookie(headers);
        let set_here = |k: &str| {
            k == "x-forwarded-for"
                || k == "x-real-ip"
                || k == "x-request-id"
                || (k == "x-forwarded-proto" && !keep_proto)
                || (k == "x-forwarded-host" && !keep_fwd_host)
                || (k == "host" && pool_host.is_some())
                || (k == "cookie" && cookie.is_some())
        };
        let kept = headers.iter().filter(|(k, _)| {
            let k = k.as_str();
            !(forwarding::HOP_BY_HOP.contains(&k)
                || forwarding::IDENTITY_HEADERS.contains(&k)
                || listed.iter().any(|l| l == k)
                || set_here(k))
        });

        // The forwarding headers, as upstream_request_filter sets them (on the stack: seven
        // at most, and the addresses as text without allocating).
        let mut ours: [Option<(&str, Cow<'_, str>)>; 7] = Default::default();
        let mut n = 0;
        macro_rules! add {
            ($k:expr, $v:expr) => {{
                ours[n] = Some(($k, $v));
                n += 1;
            }};
        }
        if let Some(h) = pool_host {
            add!("host", Cow::Borrowed(h));
        }
        let peer_text = ctx.peer_ip.map(IpText::new);
        let peer_str = peer_text.as_ref().map(IpText::as_str);
        if let Some(peer) = peer_str {
            let mut earlier = headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .peekable();
            if earlier.peek().is_none() {
                add!("x-forwarded-for", Cow::Borrowed(peer));
            } else {
                let mut xff = String::with_capacity(64);
                for v in earlier {
                    xff.push_str(v);
                    xff.push_str(", ");
                }
                xff.push_str(peer);
                add!("x-forwarded-for", Cow::Owned(xff));
            }
        }
        let client_text = ctx
            .client_ip
            .filter(|c| Some(*c) != ctx.peer_ip)
            .map(IpText::new);
        if ctx.client_ip.is_some() {
            if let Some(text) = client_text.as_ref().map(IpText::as_str).or(peer_str) {
                add!("x-real-ip", Cow::Borrowed(text));
            }
        }
        if !keep_proto {
            add!("x-forwarded-proto", Cow::Borrowed("http"));
        }
        if !keep_fwd_host {
            if let Some(h) = orig_host {
                add!("x-forwarded-host", Cow::Borrowed(h));
            }
        }
        if let Some(c) = cookie.as_deref().filter(|c| !c.is_empty()) {
            add!("cookie", Cow::Borrowed(c));
        }
        ours[n] = Some(("x-request-id", Cow::Borrowed(ctx.request_id.as_str())));
        let ours = ours.iter().flatten();

        let ops = route.headers.request_ops();
        if ops.is_empty() {
            for (k, v) in kept {
                write_header(&mut out, k.as_str().as_bytes(), v.as_bytes());
            }
            for (k, v) in ours {
                write_header(&mut out, k.as_bytes(), v.as_bytes());
            }
        } else {
            // Header rules see (and may change) the forwarding headers, as on Pingora.
            let mut map = HeaderMap::with_capacity(headers.len() + 7);
            for (k, v) in kept {
                map.append(k.clone(), v.clone());
            }
            for (k, v) in ours {
                if let Ok(v) = HeaderValue::from_str(v.as_ref()) {
                    map.insert(HeaderName::from_static(k), v);
                }
            }
            route.headers.apply_request(&mut map);
            for (k, v) in &map {
                write_header(&mut out, k.as_str().as_bytes(), v.as_bytes());
            }
        }
        if let Some(id) = &ctx.identity {
            let c = &id.claims;
            out.extend_from_slice(b"authorization: Bearer ");
            out.extend_from_slice(id.token.as_bytes());
            out.extend_from_slice(b"\r\n");
            write_header(&mut out, b"x-user-id", c.sub.as_bytes());
            write_header(&mut out, b"x-user-role", c.role.as_bytes());
            write_header(&mut out, b"x-session-id", c.sid.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The client's response head for the upstream's: hop-by-hop headers dropped, the
    /// route's header rules, CORS and a renewed cookie applied, the gateway's headers set.
    /// With the body's framing and whether the upstream connection may be kept. Built before
    /// anything is written, so an unreadable head can still be answered with 502.
    fn response_head(
        &self,
        ctx: &Ctx,
        method: &Method,
        req_headers: &HeaderMap,
        up: &Upstream,
        keep: bool,
    ) -> Result<Head, &'static str> {
        let head = &up.buf[..up.head_len];
        let build = |res: &httparse::Response<'_, '_>| {
            self.response_head_of(ctx, method, req_headers, up, keep, res)
        };
        // Room for 64 headers first; the larger array only when needed (zeroing or even
        // reserving it costs on every answer).
        match parse_response::<MAX_HEADERS, _>(head, &build) {
            Ok(Some(r)) => r,
            Ok(None) => match parse_response::<MAX_RESPONSE_HEADERS, _>(head, &build) {
                Ok(Some(r)) => r,
                _ => Err("unreadable response head"),
            },
            Err(()) => Err("unreadable response head"),
        }
    }

    /// [`Gateway::response_head`] for a parsed head.
    fn response_head_of(
        &self,
        ctx: &Ctx,
        method: &Method,
        req_headers: &HeaderMap,
        up: &Upstream,
        keep: bool,
        res: &httparse::Response<'_, '_>,
    ) -> Result<Head, &'static str> {
        let status = up.status;
        let head_only = *method == Method::HEAD || status == 204 || status == 304;
        let mut framing = Framing::Close;
        let mut up_keep = res.version == Some(1);
        // Connection-listed names other than close and keep-alive (rare: no allocation
        // for the usual `Connection: keep-alive`).
        let mut listed: Vec<&[u8]> = Vec::new();
        // Each header's class, worked out once for both passes.
        let mut classes: smallvec::SmallVec<[Class; 16]> =
            smallvec::SmallVec::with_capacity(res.headers.len());
        for h in res.headers.iter() {
            let class = classify(h.name);
            classes.push(class);
            match class {
                Class::Connection => {
                    listed.extend(
                        h.value
                            .split(|&c| c == b',')
                            .map(<[u8]>::trim_ascii)
                            .filter(|t| {
                                !t.eq_ignore_ascii_case(b"close")
                                    && !t.eq_ignore_ascii_case(b"keep-alive")
                            }),
                    );
                    if contains_token(h.value, "close") {
                        up_keep = false;
                    } else if contains_token(h.value, "keep-alive") {
                        up_keep = true;
                    }
                }
                Class::ContentLength => {
                    let n = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .ok_or("bad Content-Length")?;
                    if matches!(framing, Framing::Length(m) if m != n) {
                        return Err("conflicting Content-Length");
                    }
                    if !matches!(framing, Framing::Chunked) {
                        framing = Framing::Length(n);
                    }
                }
                Class::TransferEncoding => {
                    // Chunked must be the last coding; the body then ends with its last chunk.
                    let last = h.value.rsplit(|&c| c == b',').next().unwrap_or_default();
                    if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                        return Err("a transfer coding other than chunked");
                    }
                    framing = Framing::Chunked;
                }
                Class::Dropped | Class::Other => {}
            }
        }
        if head_only {
            framing = Framing::None;
        }
        // A body that ends when the upstream closes ends the client's connection too.
        let keep = keep && !matches!(framing, Framing::Close);
        let route = ctx.route.clone();
        let response_ops = route.as_ref().map_or(&[][..], |r| r.headers.response_ops());
        let cors = ctx.cors.clone().filter(|c| c.is_enabled());
        let cookie = ctx
            .identity
            .as_ref()
            .and_then(|i| i.renewed_cookie.as_deref());

        // Room for the body bytes already read too: `relay` sends them with the head.
        let mut out = Vec::with_capacity(up.buf.len() + 128);
        status_line(&mut out, status, res.reason.unwrap_or_default().as_bytes());
        let chunked = matches!(framing, Framing::Chunked);
        let dropped = |class: Class, name: &str| match class {
            Class::Connection | Class::Dropped => true,
            // With Transfer-Encoding, a Content-Length is wrong (RFC 9112 §6.3): not passed on.
            Class::ContentLength => chunked,
            Class::TransferEncoding | Class::Other => listed
                .iter()
                .any(|l| name.as_bytes().eq_ignore_ascii_case(l)),
        };
        let kept = res
            .headers
            .iter()
            .zip(classes.iter().copied())
            .filter(|(h, class)| !dropped(*class, h.name))
            .map(|(h, _)| h);
        if response_ops.is_empty() && cors.is_none() && cookie.is_none() {
            let head = &up.buf[..up.head_len];
            for h in kept {
                match raw_line(head, h) {
                    // The header's line as the upstream sent it, in one copy.
                    Some(line) => {
                        out.extend_from_slice(line);
                        out.extend_from_slice(b"\r\n");
                    }
                    None => write_header(&mut out, h.name.as_bytes(), h.value),
                }
            }
        } else {
            let mut map = HeaderMap::with_capacity(res.headers.len() + 4);
            for h in kept {
                let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(h.name.as_bytes()),
                    HeaderValue::from_bytes(h.value),
                ) else {
                    return Err("bad header");
                };
                map.append(k, v);
            }
            if let Some(r) = &route {
                r.headers.apply_response(&mut map);
            }
            if let Some(cors) = &cors {
                // The gateway owns CORS on routes where it is configured.
                let theirs: Vec<HeaderName> = map
                    .keys()
                    .filter(|k| k.as_str().starts_with("access-control-"))
                    .cloned()
                    .collect();
                for k in theirs {
                    map.remove(&k);
                }
                cors.add_response_headers(req_headers, &mut map);
            }
            if let Some(c) = cookie.and_then(|c| HeaderValue::try_from(c).ok()) {
                map.append(header::SET_COOKIE, c);
            }
            for (k, v) in &map {
                write_header(&mut out, k.as_str().as_bytes(), v.as_bytes());
            }
        }
        write_header(&mut out, b"x-request-id", ctx.request_id.as_bytes());
        self.close_head(&mut out, keep);
        Ok(Head {
            out,
            framing,
            up_keep,
            keep,
        })
    }

    /// Passes the upstream's answer to the client: the head from [`Gateway::response_head`],
    /// then the body as bytes.
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &self,
        client: &mut Stream,
        ctx: &mut Ctx,
        head: Head,
        mut up: Upstream,
        read_timeout: Duration,
        bytes: &mut usize,
    ) -> io::Result<()> {
        let Head {
            mut out,
            framing,
            up_keep,
            ..
        } = head;
        let body_start = up.head_len;
        match framing {
            Framing::None => {
                to_client(client, &out).await?;
                let clean = up.buf.len() == body_start;
                if up_keep && clean {
                    put_idle(ctx.backend_addr(), up.conn);
                }
            }
            Framing::Length(n) => {
                let have = ((up.buf.len() - body_start) as u64).min(n) as usize;
                out.extend_from_slice(&up.buf[body_start..body_start + have]);
                to_client(client, &out).await?;
                *bytes += have;
                let extra = up.buf.len() - body_start - have;
                let mut left = n - have as u64;
                let mut buf = std::mem::take(&mut up.buf);
                let mut over = extra > 0;
                while left > 0 {
                    buf.clear();
                    buf.reserve(CHUNK);
                    let got = with_timeout(read_timeout, up.conn.read_buf(&mut buf)).await?;
                    if got == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let take = (got as u64).min(left) as usize;
                    to_client(client, &buf[..take]).await?;
                    *bytes += take;
                    left -= take as u64;
                    over = got > take;
                }
                if up_keep && !over {
                    put_idle(ctx.backend_addr(), up.conn);
                }
            }
            Framing::Chunked => {
                let mut scan = ChunkScan::default();
                let mut buf = std::mem::take(&mut up.buf);
                buf.drain(..body_start);
                let first = scan.feed(&buf);
                let upto = first.unwrap_or(buf.len());
                out.extend_from_slice(&buf[..upto]);
                to_client(client, &out).await?;
                *bytes += upto;
                let mut end = first.map(|e| e == buf.len());
                while end.is_none() {
                    buf.clear();
                    buf.reserve(CHUNK);
                    let got = with_timeout(read_timeout, up.conn.read_buf(&mut buf)).await?;
                    if got == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let done = scan.feed(&buf);
                    let upto = done.unwrap_or(buf.len());
                    to_client(client, &buf[..upto]).await?;
                    *bytes += upto;
                    end = done.map(|e| e == buf.len());
                }
                if up_keep && end == Some(true) {
                    put_idle(ctx.backend_addr(), up.conn);
                }
            }
            Framing::Close => {
                out.extend_from_slice(&up.buf[body_start..]);
                *bytes += up.buf.len() - body_start;
                to_client(client, &out).await?;
                let mut buf = std::mem::take(&mut up.buf);
                loop {
                    buf.clear();
                    buf.reserve(CHUNK);
                    let got = with_timeout(read_timeout, up.conn.read_buf(&mut buf)).await?;
                    if got == 0 {
                        break;
                    }
                    to_client(client, &buf).await?;
                    *bytes += got;
                }
            }
        }
        Ok(())
    }

    /// Ends a response head: `Date`, `Connection`, the blank line.
    fn close_head(&self, out: &mut Vec<u8>, keep: bool) {
        let date = pingora::protocols::http::date::get_cached_date();
        write_header(out, b"date", date.as_bytes());
        let connection: &[u8] = if keep { b"keep-alive" } else { b"close" };
        write_header(out, b"connection", connection);
        out.extend_from_slice(b"\r\n");
    }

    /// Answers `r` as `send_reject` does (HTML for browsers, JSON for API clients).
    #[allow(clippy::too_many_arguments)]
    async fn native_reject(
        &self,
        client: &mut Stream,
        ctx: &mut Ctx,
        method: &Method,
        headers: &HeaderMap,
        uri: &http::Uri,
        r: &Reject,
        keep: &mut bool,
        bytes: &mut usize,
    ) {
        let (body, extra) = self.reject_answer(ctx, r, uri.query());
        *bytes += self
            .native_answer(client, ctx, method, headers, r.status, body, &extra, keep)
            .await;
        ctx.reject = Some(r.clone());
    }

    /// Writes a whole answer of the gateway's own, as `send_json` and `send_raw` do;
    /// the body bytes sent.
    #[allow(clippy::too_many_arguments)]
    async fn native_answer(
        &self,
        client: &mut Stream,
        ctx: &mut Ctx,
        method: &Method,
        req_headers: &HeaderMap,
        status: u16,
        body: Bytes,
        extra: &[(String, String)],
        keep: &mut bool,
    ) -> usize {
        let mut map = HeaderMap::with_capacity(extra.len() + 4);
        let has_type = extra
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if !has_type && !body.is_empty() {
            map.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        map.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if let Ok(id) = HeaderValue::from_str(&ctx.request_id) {
            map.insert("x-request-id", id);
        }
        if status >= 400 {
            map.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        for (k, v) in extra {
            let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) else {
                continue;
            };
            if k == header::SET_COOKIE {
                map.append(k, v);
            } else {
                map.insert(k, v);
            }
        }
        if let Some(cors) = ctx.cors.as_ref().filter(|c| c.is_enabled()) {
            cors.add_response_headers(req_headers, &mut map);
        }
        ctx.status = status;
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = Vec::with_capacity(256 + body.len());
        status_line(&mut out, status, reason.as_bytes());
        for (k, v) in &map {
            write_header(&mut out, k.as_str().as_bytes(), v.as_bytes());
        }
        self.close_head(&mut out, *keep);
        let with_body = *method != Method::HEAD && !body.is_empty();
        if with_body {
            out.extend_from_slice(&body);
        }
        if let Err(e) = to_client(client, &out).await {
            tracing::debug!(request_id = %ctx.request_id, error = %e, "could not send the answer");
            *keep = false;
            return 0;
        }
        if with_body {
            body.len()
        } else {
            0
        }
    }
}

impl Ctx {
    fn backend_addr(&self) -> SocketAddr {
        self.backend
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

/// The client's response head, built from the upstream's.
struct Head {
    out: Vec<u8>,
    framing: Framing,
    /// The upstream connection may be kept after the body.
    up_keep: bool,
    /// The client connection is kept after this answer.
    keep: bool,
}

/// Where a response body ends.
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes.
    Close,
}

/// Returns when the client has closed its side (or its connection failed). What it sends
/// meanwhile (a pipelined request) is kept in `carry`, up to 64 KiB; then it is no longer read.
async fn client_gone(client: &mut Stream, carry: &mut BytesMut) {
    use std::task::Poll;
    std::future::poll_fn(|cx| loop {
        if carry.len() >= 64 * 1024 {
            return Poll::Pending; // the other branch of the select wakes the task
        }
        // Read on the stack of this poll: nothing is allocated while nothing arrives.
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        let mut rb = tokio::io::ReadBuf::uninit(&mut scratch);
        match std::pin::Pin::new(&mut *client).poll_read(cx, &mut rb) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(()),
            Poll::Ready(Ok(())) => carry.extend_from_slice(rb.filled()),
        }
    })
    .await
}

fn response_header<'a>(up: &'a Upstream, name: &str) -> Option<&'a [u8]> {
    let head = &up.buf[..up.head_len];
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// What the lane does with an upstream response header.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Class {
    Connection,
    ContentLength,
    TransferEncoding,
    /// Hop-by-hop, or set by the gateway (`Date`, `X-Request-Id`).
    Dropped,
    Other,
}

/// A response header's [`Class`], by length first: one comparison for most names.
fn classify(name: &str) -> Class {
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        4 if is("date") => Class::Dropped,
        10 if is("connection") => Class::Connection,
        10 if is("keep-alive") => Class::Dropped,
        12 if is("x-request-id") => Class::Dropped,
        14 if is("content-length") => Class::ContentLength,
        16 if is("proxy-connection") => Class::Dropped,
        17 if is("transfer-encoding") => Class::TransferEncoding,
        18 if is("proxy-authenticate") => Class::Dropped,
        _ => Class::Other,
    }
}

/// The bytes of `head` from a parsed header's name to the end of its value (`Name: value`),
/// when the parser's slices point into `head` as expected.
fn raw_line<'a>(head: &'a [u8], h: &httparse::Header<'_>) -> Option<&'a [u8]> {
    let base = head.as_ptr() as usize;
    let start = (h.name.as_ptr() as usize).checked_sub(base)?;
    let end = (h.value.as_ptr() as usize)
        .checked_sub(base)?
        .checked_add(h.value.len())?;
    let line = head.get(start..end)?;
    // Name, colon, the value: anything else and the header is written from its parts.
    (!h.value.is_empty()
        && line.starts_with(h.name.as_bytes())
        && line.get(h.name.len()) == Some(&b':')
        && line.ends_with(h.value))
    .then_some(line)
}

/// One attempt: a connection to `addr` (an idle one of this thread, else new), the request
/// head written, the response head read (informational answers skipped). A pooled
/// connection the upstream had closed is replaced by a new one once: nothing was processed.
async fn exchange(
    addr: SocketAddr,
    head: &[u8],
    connect_timeout: Duration,
    read_timeout: Duration,
    max_idle: Duration,
) -> Result<Upstream, AttemptError> {
    if let Some(conn) = take_idle(addr, max_idle) {
        match send_and_read(conn, head, read_timeout).await {
            Ok(up) => return Ok(up),
            Err((AttemptError::Reset, false)) => {} // closed while idle: a new connection
            Err((e, _)) => return Err(e),
        }
    }
    let conn = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(c)) => c,
        Ok(Err(_)) => return Err(AttemptError::Connect { timed_out: false }),
        Err(_) => return Err(AttemptError::Connect { timed_out: true }),
    };
    let _ = conn.set_nodelay(true);
    send_and_read(conn, head, read_timeout)
        .await
        .map_err(|(e, _)| e)
}

/// Writes the head and reads the response head; on failure, whether any response byte
/// had arrived.
async fn send_and_read(
    mut conn: TcpStream,
    head: &[u8],
    read_timeout: Duration,
) -> Result<Upstream, (AttemptError, bool)> {
    let io_err = |e: io::Error, got: bool| {
        if e.kind() == io::ErrorKind::TimedOut {
            (AttemptError::Timeout, got)
        } else {
            (AttemptError::Reset, got)
        }
    };
    with_timeout(read_timeout, conn.write_all(head))
        .await
        .map_err(|e| io_err(e, false))?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut from = 0usize;
    loop {
        if let Some(end) = find_head_end(&buf[from..]).map(|e| e + from) {
            // The status line only; the whole head is read by `response_head`.
            let Some(status) = status_code(&buf[from..end]) else {
                return Err((AttemptError::Reset, true));
            };
            if (100..200).contains(&status) && status != 101 {
                from = end; // 100 Continue, 103 Early Hints: the answer follows
                continue;
            }
            if !(200..600).contains(&status) {
                return Err((AttemptError::Reset, true));
            }
            buf.drain(..from);
            return Ok(Upstream {
                conn,
                buf,
                head_len: end - from,
                status,
            });
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err((AttemptError::Reset, true));
        }
        if buf.capacity() == buf.len() {
            buf.reserve(4096);
        }
        let got = with_timeout(read_timeout, conn.read_buf(&mut buf))
            .await
            .map_err(|e| io_err(e, !buf.is_empty()))?;
        if got == 0 {
            return Err((AttemptError::Reset, !buf.is_empty()));
        }
    }
}

/// Parses a whole response head with room for `N` headers and hands it to `f`; `Ok(None)`
/// when it has more headers than that, `Err` when it is not a valid head.
fn parse_response<const N: usize, T>(
    head: &[u8],
    f: impl FnOnce(&httparse::Response<'_, '_>) -> T,
) -> Result<Option<T>, ()> {
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; N];
    let mut res = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    match config.parse_response_with_uninit_headers(&mut res, head, &mut raw) {
        Ok(httparse::Status::Complete(_)) => Ok(Some(f(&res))),
        Err(httparse::Error::TooManyHeaders) => Ok(None),
        _ => Err(()),
    }
}

/// The status code of a response head (`HTTP/1.x NNN …`).
fn status_code(head: &[u8]) -> Option<u16> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit)
        || rest.get(3).is_some_and(|&b| b != b' ' && b != b'\r')
    {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Finds the end of a chunked body fed in pieces (sizes, extensions, trailers); the bytes
/// themselves are passed on as they are.
#[derive(Default)]
pub struct ChunkScan {
    state: Chunk,
    size: u64,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum Chunk {
    #[default]
    Size,
    /// Chunk extensions, up to the line's end.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines, then the blank line.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
}

impl ChunkScan {
    fn digit(&mut self, d: u8) {
        self.size = self.size.saturating_mul(16).saturating_add(u64::from(d));
    }

    /// Feeds `b`; the offset just past the body's end if it is in `b`.
    pub fn feed(&mut self, b: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            match self.state {
                Chunk::Size => match c {
                    b'0'..=b'9' => self.digit(c - b'0'),
                    b'a'..=b'f' => self.digit(c - b'a' + 10),
                    b'A'..=b'F' => self.digit(c - b'A' + 10),
                    b'\r' => self.state = Chunk::SizeLf,
                    _ => self.state = Chunk::Ext,
                },
                Chunk::Ext => {
                    if c == b'\r' {
                        self.state = Chunk::SizeLf;
                    }
                }
                Chunk::SizeLf => {
                    self.state = if self.size == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data
                    }
                }
                Chunk::Data => {
                    let take = self.size.min((b.len() - i) as u64);
                    self.size -= take;
                    i += take as usize;
                    if self.size == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr => self.state = Chunk::DataLf,
                Chunk::DataLf => self.state = Chunk::Size,
                Chunk::TrailerStart => {
                    self.state = if c == b'\r' {
                        Chunk::EndLf
                    } else {
                        Chunk::Trailer
                    }
                }
                Chunk::Trailer => {
                    if c == b'\r' {
                        self.state = Chunk::TrailerLf;
                    }
                }
                Chunk::TrailerLf => self.state = Chunk::TrailerStart,
                Chunk::EndLf => return Some(i + 1),
            }
            i += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_ends_after_the_last_chunk_and_its_trailers_however_it_is_split() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in 0..=body.len() {
            let mut scan = ChunkScan::default();
            let (a, b) = body.split_at(split);
            let end = match scan.feed(a) {
                Some(e) => e,
                None => split + scan.feed(b).expect("ends in the second part"),
            };
            assert_eq!(end, body.len(), "split at {split}");
        }
        let mut scan = ChunkScan::default();
        assert_eq!(scan.feed(b"5\r\nhello\r\n"), None, "no last chunk yet");
        let mut scan = ChunkScan::default();
        assert_eq!(
            scan.feed(b"0\r\n\r\nnext"),
            Some(5),
            "what follows is not the body's"
        );
    }

    #[test]
    fn response_headers_are_found_by_name_in_the_head() {
        let buf =
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After:  2 \r\nX: y\r\n\r\nbody".to_vec();
        let head_len = find_head_end(&buf).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let conn = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let up = Upstream {
                conn,
                buf,
                head_len,
                status: 503,
            };
            assert_eq!(response_header(&up, "retry-after"), Some(&b"2"[..]));
            assert_eq!(response_header(&up, "x"), Some(&b"y"[..]));
            assert_eq!(response_header(&up, "missing"), None);
        });
    }

    #[test]
    fn response_headers_are_classified_in_any_case_and_kept_lines_copied_as_sent() {
        assert_eq!(classify("Connection"), Class::Connection);
        assert_eq!(classify("KEEP-ALIVE"), Class::Dropped);
        assert_eq!(classify("content-length"), Class::ContentLength);
        assert_eq!(classify("Transfer-Encoding"), Class::TransferEncoding);
        for dropped in [
            "Date",
            "X-Request-ID",
            "Proxy-Connection",
            "proxy-authenticate",
        ] {
            assert_eq!(classify(dropped), Class::Dropped, "{dropped}");
        }
        for other in [
            "Content-Type",
            "Server",
            "Dates",
            "Set-Cookie",
            "",
            "x-request-ix",
        ] {
            assert_eq!(classify(other), Class::Other, "{other}");
        }

        let head = b"HTTP/1.1 200 OK\r\nContent-Type:text/plain\r\nX-A:  b c \r\nX-Empty:\r\n\r\n"
            .to_vec();
        let mut raw = [httparse::EMPTY_HEADER; 8];
        let mut res = httparse::Response::new(&mut raw);
        assert!(res.parse(&head).unwrap().is_complete());
        let lines: Vec<Option<&[u8]>> = res.headers.iter().map(|h| raw_line(&head, h)).collect();
        assert_eq!(lines[0], Some(&b"Content-Type:text/plain"[..]));
        assert_eq!(lines[1], Some(&b"X-A:  b c"[..]));
        assert_eq!(lines[2], None, "an empty value is written from its parts");
        // Slices from elsewhere are never taken for lines of this head.
        let other = httparse::Header {
            name: "X-A",
            value: b"b c",
        };
        assert_eq!(raw_line(&head, &other), None);
    }

    #[test]
    fn status_codes_are_read_from_the_status_line_only_when_well_formed() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503\r\n\r\n"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(status_code(b"HTTP/2 200\r\n"), None);
        assert_eq!(status_code(b"ICY 200 OK\r\n"), None);
    }

    #[test]
    fn addresses_and_status_lines_are_written_as_display_would() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.100.255",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "::ffff:192.168.100.200",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
        let mut out = Vec::new();
        status_line(&mut out, 204, b"No Content");
        status_line(&mut out, 502, b"");
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nHTTP/1.1 502 \r\n");
    }

    #[test]
    fn connection_tokens_are_found_in_lists() {
        assert!(contains_token(b"Keep-Alive, Upgrade", "keep-alive"));
        assert!(contains_token(b" close ", "close"));
        assert!(!contains_token(b"closed", "close"));
    }
}

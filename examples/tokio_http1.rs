//! What an HTTP/1 proxy engine of nginx's shape costs on Tokio: the second floor line of the
//! load harness (benches/load/run.sh), beside bare Pingora (`examples/bare_pingora.rs`).
//! Issue 8 asks for a plain proxy at ≤ 1.0 × nginx's CPU per request; Pingora's proxy alone
//! is ~1.8 ×. This engine answers "what would it take": one buffer per connection, the
//! request head forwarded as bytes with the forwarding headers spliced in, the response head
//! passed through with hop-by-hop headers dropped and `X-Request-Id` added, the body relayed
//! as bytes (Content-Length or chunked), upstream keep-alive connections reused from a
//! per-thread list. No header maps, no per-request session object, no boxed futures.
//!
//! It is a measuring instrument, not a gateway: no routing, limits, timeouts, retries,
//! metrics or logs; request bodies only with Content-Length (a chunked request body is
//! answered 411 and the connection closed); no pipelining of requests to the upstream; a
//! pooled upstream connection the upstream has closed fails the request instead of being
//! retried on a new one.
//!
//! ```sh
//! cargo build --release --example tokio_http1
//! taskset -c 0 target/release/examples/tokio_http1 127.0.0.1:8082 127.0.0.1:8080
//! ```
//! The first argument is where it listens, the second the upstream (`ip:port`, plain HTTP).
//! It sets the same forwarding headers as the harness's nginx and bare Pingora
//! (`X-Forwarded-For`, `-Proto`, `-Host`, `X-Real-IP`, `X-Request-Id`).
//!
//! With `policy CONFIG` after them, each request also goes through gatehouse's own per-request
//! work of a plain proxy route, called from the gatehouse library as `src/proxy.rs` calls it:
//! an `http::HeaderMap` built from the head, request id (kept when valid, else new), client ip
//! (trusted proxies), path normalisation, client kind, route lookup in CONFIG's routes (404 /
//! 405 answered here), ip rules, the retry budget, backend selection through the route's pool
//! (health and breaker), the path rewrite, for routes with `auth` the guard (token, live
//! session through the session cache, roles: `gatehouse::auth::guard::protect`, with CONFIG's
//! `auth` section, Redis included) and the identity headers, the breaker's record of the
//! outcome and the two request metrics. The upstream argument is then ignored: backends come
//! from CONFIG. Not there: rate limits, CORS, header rules, timeouts, retries, access log —
//! what the load harness's routes do not use, or what costs nothing when nothing fails.

use std::cell::RefCell;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// The same allocator as the gatehouse binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Most request heads fit; a bigger one grows the buffer (up to `MAX_HEAD`).
const BUF: usize = 4096;
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// Idle upstream connections of this thread per backend (the engine runs on one
/// current-thread runtime).
type Pool = Rc<RefCell<Vec<(SocketAddr, TcpStream)>>>;

/// gatehouse's configuration and metrics, for `policy` mode (see the module docs).
struct Policy {
    snap: gatehouse::state::Snapshot,
    metrics: Arc<gatehouse::metrics::Metrics>,
    auth: gatehouse::auth::Auth,
}

/// What the policy decided for one request.
struct Decision {
    backend: SocketAddr,
    route: Arc<gatehouse::state::Route>,
    request_id: String,
    method: http::Method,
    start: Instant,
    /// For the auth guard.
    headers: http::HeaderMap,
    path: String,
    api_client: bool,
}

impl Policy {
    fn load(path: &str) -> io::Result<Policy> {
        let invalid =
            |e: gatehouse::ConfigError| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        let config = gatehouse::Config::load(std::path::Path::new(path)).map_err(invalid)?;
        let auth_cfg = config.auth.clone();
        let snap = gatehouse::check(config).map_err(invalid)?;
        let metrics = Arc::new(gatehouse::metrics::Metrics::new());
        let auth = gatehouse::auth::Auth::build(&auth_cfg, metrics.clone()).map_err(invalid)?;
        Ok(Policy {
            snap,
            metrics,
            auth,
        })
    }

    /// The route's auth guard: the identity headers to add, or the status to answer.
    async fn authorize(&self, d: &Decision, out: &mut Vec<u8>) -> Result<(), &'static str> {
        use gatehouse::auth::guard::{self, Decision as Guard};
        let route = &d.route;
        let req = guard::Request {
            method: &d.method,
            path: &d.path,
            query: None,
            headers: &d.headers,
            api_client: d.api_client,
        };
        let decision = guard::protect(
            &self.auth,
            route.auth,
            route.roles.as_deref(),
            route.on_store_error,
            &req,
        )
        .await;
        match decision {
            Guard::Anonymous => Ok(()),
            Guard::Allow(id) => {
                // Before the blank line that ends the upstream head.
                out.truncate(out.len() - 2);
                let c = &id.claims;
                let _ = write!(
                    out,
                    "authorization: Bearer {}\r\nx-user-id: {}\r\nx-user-role: {}\r\n\
                     x-session-id: {}\r\n\r\n",
                    id.token, c.sub, c.role, c.sid
                );
                Ok(())
            }
            Guard::Deny { .. } => Err("401 Unauthorized"),
            Guard::Redirect { .. } => Err("303 See Other"),
        }
    }

    /// gatehouse's request-phase work for a plain proxy route: the decision, or the status
    /// to answer.
    fn decide(
        &self,
        req: &httparse::Request<'_, '_>,
        peer: IpAddr,
        upstream_path: &mut String,
    ) -> Result<Decision, &'static str> {
        use gatehouse::edge::{client, forwarding};
        use gatehouse::routing::Lookup;
        let start = Instant::now();
        let mut headers = http::HeaderMap::with_capacity(req.headers.len());
        for h in req.headers.iter() {
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(h.name.as_bytes()),
                http::HeaderValue::from_bytes(h.value),
            ) else {
                return Err("400 Bad Request");
            };
            headers.append(name, value);
        }
        let request_id = match headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
            Some(id) if forwarding::valid_request_id(id) => id.to_string(),
            _ => forwarding::new_request_id(),
        };
        let snap = &self.snap;
        let client_ip = forwarding::client_ip(Some(peer), &headers, &snap.trusted_proxies);
        let target = req.path.unwrap_or("/");
        let (raw_path, query) = target
            .split_once('?')
            .map_or((target, None), |(p, q)| (p, Some(q)));
        let path = gatehouse::routing::normalize_path(raw_path).map_err(|_| "400 Bad Request")?;
        let api_client = client::is_api_client(&path, &headers);
        let method = http::Method::from_bytes(req.method.unwrap_or("GET").as_bytes())
            .map_err(|_| "400 Bad Request")?;
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let route = match snap.table.lookup(host, &method, &path) {
            Lookup::Found(i) => snap.routes[i].clone(),
            Lookup::NotFound => return Err("404 Not Found"),
            Lookup::MethodNotAllowed(_) => return Err("405 Method Not Allowed"),
        };
        if !route.ip_rules.permits(client_ip) {
            return Err("403 Forbidden");
        }
        let now = Instant::now();
        route.pool.budget.record_request(now);
        let Some((backend, _transition)) = route.pool.select(&[], now, &[]) else {
            return Err("503 Service Unavailable");
        };
        *upstream_path = gatehouse::routing::rewrite_path(
            &path,
            &route.prefix,
            route.strip_prefix,
            route.rewrite_prefix.as_deref(),
        );
        if let Some(q) = query {
            upstream_path.push('?');
            upstream_path.push_str(q);
        }
        Ok(Decision {
            backend,
            route,
            request_id,
            method,
            start,
            headers,
            path,
            api_client,
        })
    }

    /// gatehouse's logging-phase work: the breaker's record and the request metrics.
    fn finish(&self, d: &Decision, status: u16) {
        let route = &d.route;
        let _ = route.pool.record(
            &d.backend,
            !route.pool.is_failure_status(status),
            Instant::now(),
        );
        let code = http::StatusCode::from_u16(status).ok();
        self.metrics
            .requests_total
            .with_label_values(&[
                route.name.as_str(),
                gatehouse::metrics::method_label(&d.method),
                code.as_ref().map_or("0", http::StatusCode::as_str),
            ])
            .inc();
        self.metrics
            .request_duration_seconds
            .with_label_values(&[route.name.as_str()])
            .observe(d.start.elapsed().as_secs_f64());
    }
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: tokio_http1 LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("upstream: {e}")))?;
    let policy = match (args.next().as_deref(), args.next()) {
        (Some("policy"), Some(path)) => Some(Rc::new(Policy::load(&path)?)),
        (None, _) => None,
        _ => {
            eprintln!("usage: tokio_http1 LISTEN_ADDR UPSTREAM_ADDR [policy GATEWAY_YAML]");
            std::process::exit(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_current_thread();
    rt.enable_io();
    if policy.is_some() {
        // gatehouse's session store times its Redis calls.
        rt.enable_time();
    }
    let rt = rt.build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(&listen).await?;
        let pool: Pool = Rc::default();
        loop {
            let (client, peer) = listener.accept().await?;
            let _ = client.set_nodelay(true);
            let pool = pool.clone();
            let policy = policy.clone();
            tokio::task::spawn_local(async move {
                // A connection's errors end that connection only.
                let _ = Conn::new(client, peer, upstream, pool, policy)
                    .serve()
                    .await;
            });
        }
    })
}

struct Conn {
    client: TcpStream,
    peer: String,
    peer_ip: IpAddr,
    policy: Option<Rc<Policy>>,
    /// `policy` mode: the current request's route and backend.
    decision: Option<Decision>,
    /// The upstream request's path (`policy` mode: rewritten for the route).
    upstream_path: String,
    upstream: SocketAddr,
    pool: Pool,
    /// Bytes read from the client: the current request, and whatever followed it.
    inb: Vec<u8>,
    /// The head sent upstream, then the response head sent to the client.
    out: Vec<u8>,
    /// Bytes read from the upstream.
    upb: Vec<u8>,
    /// The current request's id: sent upstream and echoed to the client, as nginx does.
    id: String,
    /// The current response's status.
    status: u16,
}

/// Where a message's body ends.
enum Body {
    None,
    Length(usize),
    Chunked,
    /// Until the upstream closes (responses only).
    Close,
}

impl Conn {
    fn new(
        client: TcpStream,
        peer: SocketAddr,
        upstream: SocketAddr,
        pool: Pool,
        policy: Option<Rc<Policy>>,
    ) -> Self {
        Conn {
            client,
            peer: peer.ip().to_string(),
            peer_ip: peer.ip(),
            policy,
            decision: None,
            upstream_path: String::new(),
            upstream,
            pool,
            inb: Vec::with_capacity(BUF),
            out: Vec::with_capacity(BUF),
            upb: Vec::with_capacity(BUF),
            id: String::with_capacity(32),
            status: 0,
        }
    }

    async fn serve(mut self) -> io::Result<()> {
        loop {
            let Some(head_len) = self.read_head().await? else {
                return Ok(());
            };
            let (keep_alive, body, head_only) = match self.request_head(head_len) {
                Ok(parsed) => parsed,
                Err(status) => return self.refuse(status).await,
            };
            if let (Some(policy), Some(d)) = (&self.policy, &self.decision) {
                if d.route.auth != gatehouse::config::AuthMode::None {
                    if let Err(status) = policy.authorize(d, &mut self.out).await {
                        return self.refuse(status).await;
                    }
                }
            }
            let mut up = self.upstream_conn().await?;
            // The head, and the part of the request body already read, go in one write.
            let in_body = match body {
                Body::Length(n) => n,
                _ => 0,
            };
            let have = (self.inb.len() - head_len).min(in_body);
            self.out
                .extend_from_slice(&self.inb[head_len..head_len + have]);
            up.write_all(&self.out).await?;
            self.inb.drain(..head_len + have);
            if have < in_body {
                relay_exact(&mut self.client, &mut up, in_body - have, &mut self.inb).await?;
            }
            let (reusable, status) = self.relay_response(&mut up, head_only, keep_alive).await?;
            if let (Some(policy), Some(d)) = (&self.policy, self.decision.take()) {
                policy.finish(&d, status);
            }
            if reusable {
                let backend = self.backend();
                self.pool.borrow_mut().push((backend, up));
            }
            if !keep_alive {
                return self.client.shutdown().await;
            }
        }
    }

    /// Answers `status` (e.g. "404 Not Found") with an empty body and ends the connection.
    async fn refuse(&mut self, status: &str) -> io::Result<()> {
        let msg = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        self.client.write_all(msg.as_bytes()).await
    }

    /// Reads until `inb` holds a whole request head; its length, or `None` when the client
    /// closed between requests.
    async fn read_head(&mut self) -> io::Result<Option<usize>> {
        loop {
            if let Some(end) = find_head_end(&self.inb) {
                return Ok(Some(end));
            }
            if self.inb.len() >= MAX_HEAD {
                return Err(io::Error::other("request head too large"));
            }
            if self.inb.capacity() == self.inb.len() {
                self.inb.reserve(BUF);
            }
            if self.client.read_buf(&mut self.inb).await? == 0 {
                return if self.inb.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Parses the request head in `inb[..head_len]` and writes the upstream request head
    /// into `out`: (client keep-alive, request body, HEAD request), or the status to answer.
    fn request_head(&mut self, head_len: usize) -> Result<(bool, Body, bool), &'static str> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.inb[..head_len]) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err("400 Bad Request"),
        }
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Err("400 Bad Request");
        };
        self.id.clear();
        let path = match &self.policy {
            Some(policy) => {
                let d = policy.decide(&req, self.peer_ip, &mut self.upstream_path)?;
                self.id.push_str(&d.request_id);
                self.decision = Some(d);
                self.upstream_path.as_str()
            }
            None => {
                let _ = std::fmt::Write::write_fmt(
                    &mut self.id,
                    format_args!("{:032x}", rand::random::<u128>()),
                );
                path
            }
        };
        let out = &mut self.out;
        out.clear();
        let _ = write!(out, "{method} {path} HTTP/1.1\r\n");
        let mut keep_alive = version == 1;
        let mut body = Body::None;
        let mut host: &[u8] = b"";
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("connection") {
                if contains_token(h.value, b"close") {
                    keep_alive = false;
                } else if contains_token(h.value, b"keep-alive") {
                    keep_alive = true;
                }
                continue;
            }
            if name.eq_ignore_ascii_case("keep-alive")
                || name.eq_ignore_ascii_case("proxy-connection")
                || name.eq_ignore_ascii_case("te")
                || name.eq_ignore_ascii_case("upgrade")
                || name.eq_ignore_ascii_case("x-forwarded-for")
                || name.eq_ignore_ascii_case("x-real-ip")
                || name.eq_ignore_ascii_case("x-forwarded-proto")
                || name.eq_ignore_ascii_case("x-forwarded-host")
                || name.eq_ignore_ascii_case("x-request-id")
            {
                continue;
            }
            if self.policy.is_some()
                && gatehouse::edge::forwarding::IDENTITY_HEADERS
                    .iter()
                    .any(|i| name.eq_ignore_ascii_case(i))
            {
                // Identity headers come only from the gateway (`authorize`).
                continue;
            }
            if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err("411 Length Required");
            }
            if name.eq_ignore_ascii_case("content-length") {
                body = Body::Length(parse_len(h.value).ok_or("400 Bad Request")?);
            }
            if name.eq_ignore_ascii_case("host") {
                host = h.value;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(
            out,
            "x-forwarded-for: {ip}\r\nx-real-ip: {ip}\r\nx-forwarded-proto: http\r\n\
             x-request-id: {id}\r\nx-forwarded-host: ",
            ip = self.peer,
            id = self.id
        );
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n\r\n");
        let head_only = method == "HEAD";
        Ok((keep_alive, body, head_only))
    }

    /// Where the current request goes: the policy's backend, or the one upstream.
    fn backend(&self) -> SocketAddr {
        self.decision.as_ref().map_or(self.upstream, |d| d.backend)
    }

    /// An idle upstream connection of this thread to the backend, or a new one.
    async fn upstream_conn(&mut self) -> io::Result<TcpStream> {
        let backend = self.backend();
        let pooled = {
            let mut pool = self.pool.borrow_mut();
            let at = pool.iter().rposition(|(a, _)| *a == backend);
            at.map(|i| pool.swap_remove(i).1)
        };
        if let Some(up) = pooled {
            return Ok(up);
        }
        let up = TcpStream::connect(backend).await?;
        let _ = up.set_nodelay(true);
        Ok(up)
    }

    /// Reads the response from `up` and relays it to the client; whether `up` can be reused,
    /// and the status.
    async fn relay_response(
        &mut self,
        up: &mut TcpStream,
        head_only: bool,
        keep_alive: bool,
    ) -> io::Result<(bool, u16)> {
        let reusable = self.relay_response_inner(up, head_only, keep_alive).await?;
        Ok((reusable, self.status))
    }

    async fn relay_response_inner(
        &mut self,
        up: &mut TcpStream,
        head_only: bool,
        keep_alive: bool,
    ) -> io::Result<bool> {
        self.upb.clear();
        let head_len = loop {
            if let Some(end) = find_head_end(&self.upb) {
                break end;
            }
            if self.upb.len() >= MAX_HEAD {
                return Err(io::Error::other("response head too large"));
            }
            if self.upb.capacity() == self.upb.len() {
                self.upb.reserve(BUF);
            }
            if up.read_buf(&mut self.upb).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        match res.parse(&self.upb[..head_len]) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(io::Error::other("bad response head")),
        }
        let status = res.code.unwrap_or(502);
        self.status = status;
        let out = &mut self.out;
        out.clear();
        let _ = write!(
            out,
            "HTTP/1.1 {status} {}\r\n",
            res.reason.unwrap_or_default()
        );
        let mut body = if head_only || status == 204 || status == 304 || status < 200 {
            Body::None
        } else {
            Body::Close
        };
        let mut up_keep_alive = res.version == Some(1);
        for h in res.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("connection") {
                if contains_token(h.value, b"close") {
                    up_keep_alive = false;
                }
                continue;
            }
            if name.eq_ignore_ascii_case("keep-alive") || name.eq_ignore_ascii_case("x-request-id")
            {
                continue;
            }
            if !matches!(body, Body::None) {
                if name.eq_ignore_ascii_case("content-length") {
                    body = Body::Length(
                        parse_len(h.value).ok_or_else(|| io::Error::other("bad length"))?,
                    );
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    body = Body::Chunked;
                }
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(out, "x-request-id: {}\r\n", self.id);
        let client_keep_alive = keep_alive && !matches!(body, Body::Close);
        if !client_keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        self.upb.drain(..head_len);
        match body {
            Body::None => {
                self.client.write_all(&self.out).await?;
                Ok(up_keep_alive && self.upb.is_empty())
            }
            Body::Length(n) => {
                // The whole answer in one write when the upstream's first read held it.
                let have = self.upb.len().min(n);
                self.out.extend_from_slice(&self.upb[..have]);
                self.client.write_all(&self.out).await?;
                // Bytes past the body mean the upstream broke framing: not reused.
                let extra = if have < n {
                    relay_exact(up, &mut self.client, n - have, &mut self.upb).await?;
                    self.upb.len()
                } else {
                    self.upb.len() - have
                };
                Ok(up_keep_alive && extra == 0)
            }
            Body::Chunked => {
                self.client.write_all(&self.out).await?;
                let mut scan = ChunkScan::default();
                loop {
                    let done = scan.feed(&self.upb);
                    let upto = done.unwrap_or(self.upb.len());
                    self.client.write_all(&self.upb[..upto]).await?;
                    if done.is_some() {
                        return Ok(up_keep_alive && upto == self.upb.len());
                    }
                    self.upb.clear();
                    if up.read_buf(&mut self.upb).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
            Body::Close => {
                self.client.write_all(&self.out).await?;
                self.client.write_all(&self.upb).await?;
                tokio::io::copy(up, &mut self.client).await?;
                Ok(false)
            }
        }
    }
}

/// Copies exactly `n` bytes from `from` to `to` through `buf` (cleared first); whatever was
/// read past them stays in `buf`.
async fn relay_exact(
    from: &mut TcpStream,
    to: &mut TcpStream,
    mut n: usize,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    buf.clear();
    while n > 0 {
        buf.reserve(BUF.min(n));
        let got = from.read_buf(buf).await?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let take = got.min(n);
        to.write_all(&buf[..take]).await?;
        n -= take;
        buf.drain(..take);
    }
    Ok(())
}

/// The length of the head (through the blank line) at the start of `b`, if it is complete.
fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn parse_len(v: &[u8]) -> Option<usize> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

fn contains_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&c| c == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Finds the end of a chunked body fed in pieces.
#[derive(Default)]
struct ChunkScan {
    state: Chunk,
    size: usize,
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
    /// A hex digit of the size (an absurd size saturates: the upstream then never ends it).
    fn digit(&mut self, d: u8) {
        self.size = self.size.saturating_mul(16).saturating_add(usize::from(d));
    }

    /// Feeds `b`; the offset just past the body's end if it is in `b`.
    fn feed(&mut self, b: &[u8]) -> Option<usize> {
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
                    let take = self.size.min(b.len() - i);
                    self.size -= take;
                    i += take;
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
        let body = b"4;ext=1\r\nabcd\r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut scan = ChunkScan::default();
            let first = scan.feed(&body[..split]);
            let found = match first {
                Some(at) => at,
                None => split + scan.feed(&body[split..]).expect("the end of the body"),
            };
            assert_eq!(found, end, "split at {split}");
        }
    }

    #[test]
    fn a_chunked_body_without_its_last_chunk_does_not_end() {
        let mut scan = ChunkScan::default();
        assert_eq!(scan.feed(b"4\r\nabcd\r\n"), None);
        assert_eq!(scan.feed(b"ffffffffffffffffffffffff\r\n"), None);
    }

    /// A policy from a gateway.yaml with one plain and one authenticated route (the
    /// in-process session store, a throwaway SQLite file).
    fn policy(tag: &str) -> (Policy, std::path::PathBuf) {
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        let db = dir.join(format!("gatehouse-tokio-http1-{pid}-{tag}.db"));
        let yaml = dir.join(format!("gatehouse-tokio-http1-{pid}-{tag}.yaml"));
        let _ = std::fs::remove_file(&db);
        let text = format!(
            "auth:\n  database_url: sqlite://{}\n  jwt: {{algorithm: HS256, secret: \"0123456789abcdef0123456789abcdef\"}}\n\
             upstreams:\n  backend:\n    backends: http://127.0.0.1:9\n\
             routes:\n  - {{name: plain, prefix: /plain, upstream: backend}}\n\
             \x20 - {{name: svc, prefix: /svc, upstream: backend, strip_prefix: true, auth: required}}\n",
            db.display()
        );
        std::fs::write(&yaml, text).expect("write config");
        let p = Policy::load(yaml.to_str().expect("path")).expect("policy");
        let _ = std::fs::remove_file(&yaml);
        (p, db)
    }

    fn decide(p: &Policy, head: &[u8]) -> Result<(Decision, String), &'static str> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(head).expect("head").is_complete());
        let mut path = String::new();
        p.decide(&req, "127.0.0.1".parse().expect("ip"), &mut path)
            .map(|d| (d, path))
    }

    #[test]
    fn the_policy_routes_rewrites_and_refuses_as_gatehouse_does() {
        let (p, db) = policy("routes");
        let (d, path) =
            decide(&p, b"GET /svc/a/./b?x=1 HTTP/1.1\r\nHost: h\r\n\r\n").expect("found");
        assert_eq!(d.route.name, "svc");
        assert_eq!(path, "/a/b?x=1", "normalised, prefix stripped, query kept");
        assert_eq!(d.backend, "127.0.0.1:9".parse().expect("addr"));
        assert_eq!(d.request_id.len(), 32, "a new request id");
        let (d, _) =
            decide(&p, b"GET /plain HTTP/1.1\r\nX-Request-Id: abc-123\r\n\r\n").expect("found");
        assert_eq!(d.request_id, "abc-123", "a valid client id is kept");
        assert_eq!(
            decide(&p, b"GET /nothing HTTP/1.1\r\n\r\n").err(),
            Some("404 Not Found")
        );
        assert_eq!(
            decide(&p, b"GET /plain/%2e%2e/%2e%2e/x HTTP/1.1\r\n\r\n").err(),
            Some("400 Bad Request")
        );
        let _ = std::fs::remove_file(db);
    }

    #[test]
    fn the_policy_guard_refuses_a_missing_token_and_admits_a_live_session() {
        // Built outside a runtime: the auth layer starts its own (as `main` does).
        let (p, db) = policy("guard");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (d, _) = decide(&p, b"GET /svc/x HTTP/1.1\r\n\r\n").expect("found");
            let mut out = b"GET /x HTTP/1.1\r\n\r\n".to_vec();
            assert_eq!(p.authorize(&d, &mut out).await, Err("401 Unauthorized"));

            let now = gatehouse::auth::unix_now();
            let pair = p
                .auth
                .sessions
                .start("42", "patient", now)
                .await
                .expect("session");
            let head = format!(
                "GET /svc/x HTTP/1.1\r\nAuthorization: Bearer {}\r\n\r\n",
                pair.access_token
            );
            let (d, _) = decide(&p, head.as_bytes()).expect("found");
            assert_eq!(p.authorize(&d, &mut out).await, Ok(()));
            let out = String::from_utf8(out).expect("utf-8");
            assert!(
                out.contains("x-user-id: 42\r\nx-user-role: patient\r\n"),
                "{out}"
            );
            assert!(
                out.ends_with("\r\n\r\n") && !out.ends_with("\r\n\r\n\r\n"),
                "{out}"
            );

            p.auth
                .sessions
                .end_session(&pair.access.sid)
                .await
                .expect("logout");
            let (d, _) = decide(&p, head.as_bytes()).expect("found");
            let mut out = Vec::from(&b"GET /x HTTP/1.1\r\n\r\n"[..]);
            assert_eq!(
                p.authorize(&d, &mut out).await,
                Err("401 Unauthorized"),
                "revoked"
            );
        });
        let _ = std::fs::remove_file(db);
    }

    #[test]
    fn heads_end_at_the_blank_line_and_connection_tokens_are_found_in_lists() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest"),
            Some(27)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert!(contains_token(b"keep-alive, Close", b"close"));
        assert!(!contains_token(b"closed", b"close"));
        assert_eq!(parse_len(b" 12 "), Some(12));
        assert_eq!(parse_len(b"-1"), None);
    }
}

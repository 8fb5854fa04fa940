//! Connection-level limits Pingora lacks (PINGORA.md, "Slow clients and idle connections"):
//! one deadline for the whole request header block, a header-size cap answered with 431,
//! and an idle timeout between keep-alive requests.
//!
//! [`EdgeApp`] wraps the `HttpProxy` as an `HttpServerApp`. For each HTTP/1 request it takes
//! the raw stream, waits for the first byte (idle timeout, or shutdown), reads the header
//! block under one deadline and the size cap, then rebuilds the session with the bytes
//! handed over as a prefix and calls the proxy. Pingora parses the same bytes, so there is
//! one parser of record; this layer only finds the end of the head. HTTP/2 passes through.
//!
//! Idle keep-alive connections: Pingora keeps one task per connection, with its whole
//! per-connection future (~15 KiB with the boxed app futures), alive while it waits for the
//! next request. Here, after the first request of an HTTP/1 connection, the connection is
//! handed to a small task of ours ([`EdgeApp::keep_alive`]) and Pingora's task ends; ours
//! holds only the stream and a few fields while idle, and builds the request machinery only
//! when the next request's first bytes arrive (its head buffer too). The task's future is
//! ~1 KiB: sessions are built and taken apart in plain functions ([`unpack_reused`],
//! [`EdgeApp::after_head`]), never inside the async bodies, where rustc would keep room for
//! them in the future (it was 2.8 KiB that way). The client stream's write buffer
//! ([`crate::edge::write_buffer`]) holds memory only while an answer is written.
//!
//! Layer: the top below `lib`: it wraps the lane (generic over the Pingora app, it names none of
//! it) and uses `state`, `metrics`, `errors` and the edge policies; must not import `proxy`,
//! `plan`, `auth` or `admin`.

use crate::edge::forwarding::{new_request_id, Reused};
use crate::errors::Reject;
use crate::state::SharedState;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

/// See the module docs.
pub struct EdgeApp<A> {
    pub inner: Arc<A>,
    pub state: SharedState,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Open connections per client ip, and in total (for `server.limits`).
    pub conns: ConnTable,
}

/// The service's app: [`EdgeApp`] plus the connection limits for HTTP/2.
///
/// An HTTP/1 connection (plain or TLS) is counted by [`EdgeApp`] on its first request; an
/// HTTP/2 one never reaches that per-connection path (Pingora hands each of its streams over
/// as a request), so it is counted here, for its whole life, as soon as ALPN has chosen h2
/// and before any frame is read. Both count in the same [`ConnTable`], so
/// `server.limits.max_connections` and `max_connections_per_ip` hold across protocols.
/// A TLS connection is refused after its handshake (Pingora's listener offers no hook
/// before it), without a request being read.
pub struct EdgeServer<A>(pub Arc<EdgeApp<A>>);

#[async_trait]
impl<A> ServerApp for EdgeServer<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let app = &self.0;
        if !matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return app.process_new(stream, shutdown).await;
        }
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let limits = app.state.load().limits;
        if let Err(which) =
            app.conns
                .admit(ip, limits.max_connections, limits.max_connections_per_ip)
        {
            app.metrics
                .connections_refused_total
                .with_label_values(&[which])
                .inc();
            tracing::debug!(client_ip = ?ip, limit = which, "HTTP/2 connection refused by a limit");
            return None;
        }
        app.metrics.connections_active.inc();
        let out = app.process_new(stream, shutdown).await;
        app.close_connection(ip);
        out
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.0).await
    }
}

/// Pingora's bounded HTTP/2 settings with `server.http2` applied.
pub fn h2_options(c: &crate::config::Http2Config) -> H2Options {
    let mut o = pingora::protocols::http::v2::server::default_h2_options();
    o.max_concurrent_streams(c.max_concurrent_streams)
        .max_header_list_size(u32::try_from(c.max_header_list_size.0).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(c.max_pending_reset_streams as usize)
        .max_local_error_reset_streams(Some(c.max_error_reset_streams as usize));
    o
}

/// What a kept-alive connection carries to its next request: its stream, keep-alive timeout
/// (seconds) and remaining reuses, and the connection's user context.
type Kept = (
    Stream,
    Option<u64>,
    Option<u32>,
    Option<Box<dyn std::any::Any + Send + Sync>>,
);

/// The boxed future serving one request (see [`EdgeApp::after_head`]).
type Serve<'a> = Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'a>>;

/// Open connections per peer ip and in total.
#[derive(Default)]
pub struct ConnTable {
    per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>,
    total: std::sync::atomic::AtomicU32,
}

impl ConnTable {
    /// Takes a slot for a new connection, or says which limit refuses it.
    fn admit(
        &self,
        ip: Option<std::net::IpAddr>,
        max_total: u32,
        max_per_ip: u32,
    ) -> Result<(), &'static str> {
        use std::sync::atomic::Ordering;
        // Check and take the total slot in one step, so concurrent accepts cannot overshoot.
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (max_total == 0 || t < max_total).then_some(t + 1)
            })
            .map_err(|_| "total")?;
        if let Some(ip) = ip {
            let mut g = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = g.entry(ip).or_insert(0);
            if max_per_ip > 0 && *n >= max_per_ip {
                if *n == 0 {
                    g.remove(&ip);
                }
                drop(g);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err("per_ip");
            }
            *n += 1;
        }
        Ok(())
    }

    fn release(&self, ip: Option<std::net::IpAddr>) {
        use std::sync::atomic::Ordering;
        let _ = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(1))
            });
        if let Some(ip) = ip {
            let mut g = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = g.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    g.remove(&ip);
                }
            }
        }
    }
}

enum Head {
    /// The bytes read, starting with the head, and the head's length (what follows it is
    /// body or a pipelined request, see [`split_pipelined`]).
    Ready(BytesMut, usize),
    Closed,
    Reject(Reject),
}

#[async_trait]
impl<A> HttpServerApp for EdgeApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let ServerSession::H1(mut h1) = session else {
            return self.inner.process_new_http(session, shutdown).await;
        };
        let limits = self.state.load().limits;
        let user_ctx = h1.take_connection_user_context();
        let reused_by = user_ctx
            .as_ref()
            .and_then(|c| c.downcast_ref::<Reused>())
            .map(|r| r.0);
        let reused = reused_by.is_some();
        let ip = match reused_by {
            Some(ip) => ip,
            None => h1.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
        };
        let keepalive = h1
            .get_keepalive_timeout()
            .map(|_| limits.keepalive_timeout.as_secs().max(1));
        let reuses = match h1.get_keepalive_reuses_remaining() {
            None if !reused => Some(limits.keepalive_requests),
            other => other,
        };
        let stream = h1.into_inner();
        let stream = if reused {
            stream
        } else {
            crate::edge::write_buffer::wrap(stream, limits.write_buffer)
        };
        // One gauge count per connection: up on its first request, down when a request's
        // call returns None (the connection is not kept for another one).
        if !reused {
            // Connection limits: refused early and cheaply, before any byte is read.
            if let Err(which) =
                self.conns
                    .admit(ip, limits.max_connections, limits.max_connections_per_ip)
            {
                self.metrics
                    .connections_refused_total
                    .with_label_values(&[which])
                    .inc();
                tracing::debug!(client_ip = ?ip, limit = which, "connection refused by a limit");
                return None;
            }
            self.metrics.connections_active.inc();
        }
        let next = self
            .serve_head(
                stream,
                BytesMut::new(),
                &limits,
                reused,
                keepalive,
                reuses,
                user_ctx,
                shutdown,
            )
            .await;
        match next {
            Some((next, carry)) if !reused => {
                // Park the connection in our own small task; Pingora's ends here.
                let this = self.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { this.keep_alive(next, carry, ip, shutdown).await });
                None
            }
            // Pingora's own loop cannot carry pipelined bytes: close rather than lose them.
            Some((next, carry)) if carry.is_empty() => Some(next),
            _ => {
                self.close_connection(ip);
                None
            }
        }
    }

    fn h2_options(&self) -> Option<H2Options> {
        // Read for each new HTTP/2 connection, so a reload applies to the next ones.
        Some(h2_options(&self.state.load().limits.http2))
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

impl<A> EdgeApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Serves the following requests of a kept-alive HTTP/1 connection until it closes.
    async fn keep_alive(
        self: Arc<Self>,
        first: ReusedHttpStream,
        mut carry: BytesMut,
        ip: Option<std::net::IpAddr>,
        shutdown: ShutdownWatch,
    ) {
        // Taken apart at once (not kept as a `ReusedHttpStream` across the wait): this
        // future is what an idle connection holds.
        let mut next = unpack_reused(first, &self.state.load().limits);
        while let Some((stream, keepalive, reuses, user_ctx)) = next {
            let limits = self.state.load().limits;
            next = match self
                .serve_head(
                    stream,
                    std::mem::take(&mut carry),
                    &limits,
                    true,
                    keepalive,
                    reuses,
                    user_ctx,
                    &shutdown,
                )
                .await
            {
                Some((n, rest)) => {
                    carry = rest;
                    unpack_reused(n, &limits)
                }
                None => None,
            };
        }
        self.close_connection(ip);
    }

    /// A connection is gone: its gauge and limit slots are given back.
    fn close_connection(&self, ip: Option<std::net::IpAddr>) {
        self.metrics.connections_active.dec();
        self.conns.release(ip);
    }

    /// Reads one request head (starting with `carry`, bytes of it already read) and serves
    /// it. Returns the connection for the next request, with the bytes already read for it
    /// (a pipelined request), or `None` when the connection is done.
    #[allow(clippy::too_many_arguments)]
    async fn serve_head(
        self: &Arc<Self>,
        mut stream: Stream,
        carry: BytesMut,
        limits: &crate::state::Limits,
        reused: bool,
        keepalive: Option<u64>,
        reuses: Option<u32>,
        user_ctx: Option<Box<dyn std::any::Any + Send + Sync>>,
        shutdown: &ShutdownWatch,
    ) -> Option<(ReusedHttpStream, BytesMut)> {
        let head = read_head(&mut stream, carry, limits, reused, shutdown).await;
        let (serve, rest) = self.after_head(stream, head, keepalive, reuses, user_ctx, shutdown);
        serve.await.map(|next| (next, rest))
    }

    /// What follows a head: the proxy's future for the request (with the session built for
    /// it), or the refusal. Not an `async fn` on purpose: the session is a large value, and
    /// built inside the caller's async body it would keep room in that future, which is what
    /// every idle keep-alive connection holds; the future returned is boxed.
    #[allow(clippy::too_many_arguments)]
    fn after_head<'a>(
        self: &'a Arc<Self>,
        stream: Stream,
        head: Head,
        keepalive: Option<u64>,
        reuses: Option<u32>,
        user_ctx: Option<Box<dyn std::any::Any + Send + Sync>>,
        shutdown: &'a ShutdownWatch,
    ) -> (Serve<'a>, BytesMut) {
        match head {
            Head::Ready(mut buf, head_len) => {
                let rest = split_pipelined(&mut buf, head_len);
                let mut s = ServerSession::new_http1(stream);
                s.set_keepalive(if *shutdown.borrow() { None } else { keepalive });
                s.set_keepalive_reuses_remaining(reuses);
                s.set_connection_user_context(user_ctx);
                s.set_pipelined_prefix(buf);
                (self.inner.process_new_http(s, shutdown), rest)
            }
            Head::Closed => (Box::pin(std::future::ready(None)), BytesMut::new()),
            Head::Reject(r) => (
                Box::pin(async move {
                    refuse_head(stream, r).await;
                    None
                }),
                BytesMut::new(),
            ),
        }
    }
}

/// What Pingora hands back, as [`Kept`]. The session is taken apart here, outside any
/// async body, for the reason given on [`EdgeApp::after_head`].
fn unpack_reused(next: ReusedHttpStream, limits: &crate::state::Limits) -> Option<Kept> {
    let (stream, settings) = next.consume();
    let mut session = ServerSession::new_http1(stream);
    if let Some(settings) = settings {
        settings.apply_to_session(&mut session);
    }
    let ServerSession::H1(mut h1) = session else {
        return None;
    };
    let user_ctx = h1.take_connection_user_context();
    let keepalive = h1
        .get_keepalive_timeout()
        .map(|_| limits.keepalive_timeout.as_secs().max(1));
    let reuses = h1.get_keepalive_reuses_remaining();
    Some((h1.into_inner(), keepalive, reuses, user_ctx))
}

/// Answers a refused request head (408, 431) and closes the connection.
async fn refuse_head(mut stream: Stream, r: Reject) {
    let id = new_request_id();
    tracing::info!(target: "access", request_id = %id, status = r.status, reason = r.code, "request head refused");
    let body = r.body(&id);
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n",
        r.status,
        http::StatusCode::from_u16(r.status).ok().and_then(|s| s.canonical_reason()).unwrap_or(""),
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

/// Reads until the end of the header block. Idle (nothing sent yet) connections close
/// silently after the idle timeout or on shutdown; a partial head gets 408 at the deadline.
async fn read_head(
    stream: &mut Stream,
    carry: BytesMut,
    limits: &crate::state::Limits,
    reused: bool,
    shutdown: &ShutdownWatch,
) -> Head {
    let start = Instant::now();
    let max = limits.max_header_bytes;
    // No buffer while the connection is idle: the first bytes are read into a buffer on the
    // stack of one poll (`poll_read_some`), and the head's buffer is allocated once they are
    // there. `carry` holds what was read after the previous request (pipelined), if anything.
    let mut buf = carry;
    let waiting = buf.iter().all(|b| *b == b'\r' || *b == b'\n');
    let mut shutdown = shutdown.clone();
    let mut deadline = start
        + if reused && waiting {
            limits.keepalive_timeout
        } else {
            limits.header_timeout
        };
    // Carried bytes are looked at before anything is read: they may hold a whole head.
    let mut unscanned = !buf.is_empty();
    let mut scanned = 0usize;
    // One timer for the whole head, moved when the first byte of a kept-alive request comes.
    let sleep = tokio::time::sleep_until(deadline.into());
    tokio::pin!(sleep);
    loop {
        if !std::mem::take(&mut unscanned) {
            let idle = buf.iter().all(|b| *b == b'\r' || *b == b'\n');
            if buf.capacity() != 0 && buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            if sleep.deadline() != deadline.into() {
                sleep.as_mut().reset(deadline.into());
            }
            // Polled by hand rather than with `select!` and `timeout_at`: this future is what an
            // idle keep-alive connection holds, so it is kept small.
            let mut changed = std::pin::pin!(shutdown.changed());
            let read = std::future::poll_fn(|cx| {
                // Bytes already waiting win over shutdown and the deadline; a fresh connection
                // gets its first request served (with `Connection: close`) rather than reset.
                if let Poll::Ready(r) = poll_read_some(stream, &mut buf, cx) {
                    return Poll::Ready(Some(r));
                }
                if idle && reused && changed.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(std::io::ErrorKind::TimedOut.into()))),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match read {
                None => return Head::Closed,
                Some(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut && !idle => {
                    return Head::Reject(Reject::new(
                        408,
                        "request_timeout",
                        "The request headers took too long to arrive.",
                    ))
                }
                Some(Err(_)) | Some(Ok(0)) => return Head::Closed,
                Some(Ok(_)) => {}
            }
            if idle && reused {
                // First byte of a new request on a kept-alive connection: its head gets the
                // full header deadline from now.
                // The timer is moved only if the head needs another read (most come whole in
                // one): moving it to an earlier time wakes tokio's driver, one more syscall.
                deadline = Instant::now() + limits.header_timeout;
            }
        }
        // Leading empty lines before a request line are allowed (RFC 9112 §2.2).
        let lead = buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        let from = scanned.max(lead).saturating_sub(3).max(lead);
        if let Some(end) = find_head_end(&buf[from..]) {
            if from + end - lead > max {
                return Head::Reject(too_large());
            }
            if lead > 0 {
                let _ = buf.split_to(lead);
            }
            return Head::Ready(buf, from + end - lead);
        }
        scanned = buf.len();
        if buf.len() - lead > max {
            return Head::Reject(too_large());
        }
    }
}

/// Splits off what follows a request head when it can only be the next (pipelined) request:
/// a request without `Content-Length` and `Transfer-Encoding` has no body (RFC 9112 §6.3).
/// The head goes to Pingora alone, the rest is kept for the next request on the connection.
/// Anything that might make the bytes after the head mean something else — a body header,
/// an upgrade or CONNECT (the bytes then belong to the tunnel) — leaves them with the head,
/// as before: Pingora reads the body from them and, if more is left over, answers and closes
/// the connection (the client retries the rest, RFC 9112 §9.3.2). The test is on the raw
/// bytes, so a header Pingora would read as a body header is never missed here.
fn split_pipelined(buf: &mut BytesMut, head_len: usize) -> BytesMut {
    if buf.len() <= head_len {
        return BytesMut::new();
    }
    let head = &buf[..head_len];
    let mentions = |word: &[u8]| {
        head.windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word))
    };
    if mentions(b"content-length")
        || mentions(b"transfer-encoding")
        || mentions(b"upgrade")
        || head[..head.len().min(8)].eq_ignore_ascii_case(b"CONNECT ")
    {
        return BytesMut::new();
    }
    buf.split_off(head_len)
}

/// One read into `buf`. While `buf` has no memory yet (an idle connection holds none), the
/// read goes to a buffer on the stack of this poll (a read that is not ready takes nothing
/// from it) and what arrived is copied into `buf`, allocated then. Ready(Ok(0)): closed.
fn poll_read_some(
    stream: &mut Stream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() == 0 {
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut rb = ReadBuf::uninit(&mut scratch);
        std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut rb))?;
        let got = rb.filled();
        if !got.is_empty() {
            buf.reserve(got.len().max(2048));
            buf.extend_from_slice(got);
        }
        return Poll::Ready(Ok(got.len()));
    }
    // Heads that do not come in one read: rare, so the spare room is simply zeroed first.
    let len = buf.len();
    buf.resize(buf.capacity(), 0);
    let mut rb = ReadBuf::new(&mut buf[len..]);
    let r = Pin::new(&mut *stream).poll_read(cx, &mut rb);
    let n = rb.filled().len();
    buf.truncate(len + n);
    std::task::ready!(r)?;
    Poll::Ready(Ok(n))
}

fn too_large() -> Reject {
    Reject::new(
        431,
        "headers_too_large",
        "The request headers are too large.",
    )
}

/// Position just past the blank line that ends a request head (`\r\n\r\n` or bare `\n\n`,
/// as httparse and Pingora accept). Line ends are found with `memchr` (a byte-at-a-time loop
/// showed in profiles). Only the end is found here: Pingora parses the head.
pub fn find_head_end(b: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', b).find_map(|i| match b.get(i + 1..) {
        Some([b'\n', ..]) => Some(i + 2),
        Some([b'\r', b'\n', ..]) => Some(i + 3),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::{find_head_end, split_pipelined};
    use bytes::BytesMut;

    fn split(bytes: &str) -> (String, String) {
        let mut buf = BytesMut::from(bytes);
        let head_len = find_head_end(&buf).expect("a head");
        let rest = split_pipelined(&mut buf, head_len);
        (
            String::from_utf8(buf.to_vec()).unwrap(),
            String::from_utf8(rest.to_vec()).unwrap(),
        )
    }

    #[test]
    fn only_bytes_behind_a_bodyless_request_are_split_off() {
        let get = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let next = "GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(split(&format!("{get}{next}")), (get.into(), next.into()));
        assert_eq!(split(get), (get.into(), String::new()));
        for head in [
            "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            "POST /a HTTP/1.1\r\ncontent-LENGTH: 3\r\n\r\n",
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            // Named anywhere, even where Pingora would not read it as a body header.
            "GET /content-length HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let all = format!("{head}abc{next}");
            assert_eq!(split(&all), (all.clone(), String::new()), "{head:?}");
        }
    }

    /// The head wait is what every idle keep-alive connection holds (its task's future is
    /// this plus a few fields): it must not grow a buffer or a large session again (it was
    /// 2.8 KiB for the whole task before the session was built outside the async bodies).
    #[tokio::test]
    async fn the_idle_head_wait_stays_small() {
        let (a, _b) = tokio::io::duplex(64);
        let mut s: pingora::protocols::Stream = Box::new(a);
        let limits = crate::state::Limits {
            max_header_bytes: 8192,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_body_bytes: 0,
            header_timeout: std::time::Duration::from_secs(1),
            keepalive_timeout: std::time::Duration::from_secs(1),
            keepalive_requests: 1,
            write_buffer: 0,
            http2: Default::default(),
        };
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let wait = super::read_head(&mut s, BytesMut::new(), &limits, true, &rx);
        let size = std::mem::size_of_val(&wait);
        assert!(size <= 512, "the idle head wait takes {size} bytes");
    }

    #[test]
    fn head_end_is_found_for_crlf_and_lf() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"),
            Some(27)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: x\n\n"), Some(24));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        // A line end split across reads, and heads that end at the buffer's end.
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r"), None);
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\n\r\n"), Some(26));
        assert_eq!(find_head_end(b"\n\n"), Some(2));
        assert_eq!(find_head_end(b""), None);
    }
}

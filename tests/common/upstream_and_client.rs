//! Blocking test harness: a scriptable fake HTTP/1.1 upstream ([`FakeUpstream`]) and a raw
//! HTTP/1.1 client ([`raw_request`], [`get`], [`request`], [`Conn`]) for exact bytes on the wire.
//!
//! Only the standard library is used (std::net + one thread per connection); all traffic stays
//! on 127.0.0.1. Client errors are `String`s so tests can `expect()` them with context.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Maximum size of a request/response head (start line + headers).
const MAX_HEAD: usize = 64 * 1024;
/// Whole-exchange timeout used by the client helpers.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A port on 127.0.0.1 that nothing listens on now and that no other `free_port` call in this
/// process has returned: for a gateway to listen on (or a backend that must be down).
///
/// Not `bind(127.0.0.1:0)`: that draws from the kernel's ephemeral range, so while the tests of
/// one binary run in parallel the port can be handed out again (or taken by an outgoing
/// connection's local port) before the gateway binds it. Two gateways then race for it and the
/// loser's test talks to the winner (CI once saw a CORS preflight answered by another test's
/// admin listener). Ports here come from below the ephemeral range, each one once per process,
/// starting at a per-process offset so consecutive test binaries do not reuse each other's.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
    let (low, high) = port_window();
    let span = usize::from(high - low);
    if NEXT.load(SeqCst) == usize::MAX {
        let start = (std::process::id() as usize).wrapping_mul(7919) % span;
        let _ = NEXT.compare_exchange(usize::MAX, start, SeqCst, SeqCst);
    }
    for _ in 0..span {
        let port = low + (NEXT.fetch_add(1, SeqCst) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("free_port: no free port in 127.0.0.1:{low}..{high}");
}

/// The ports `free_port` hands out: up to 12,000 just below the kernel's ephemeral range.
fn port_window() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.clamp(2048, 32768);
    (high.saturating_sub(12_000).max(1024), high)
}

/// Polls `f` every 20 ms until it returns true (→ `true`) or `timeout` elapses (→ `false`).
/// The one polling loop of the harness: every wait for something to happen goes through it
/// (or [`eventually`], [`poll_until`]), so every wait has a deadline and none is a bare sleep.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !f() {
        if start.elapsed() >= timeout {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Asserts that `f` comes true within `timeout` (polled as [`wait_until`] does); `what` says
/// what was awaited in the failure message.
pub fn eventually(timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(
        wait_until(timeout, f),
        "timed out after {timeout:?} waiting: {what}"
    );
}

/// Calls `f` (as [`wait_until`] polls) until `done` holds for its value or `timeout` runs
/// out; whether it held, and the last value.
pub fn poll_until<T>(
    timeout: Duration,
    mut f: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> (bool, T) {
    let mut last = None;
    let held = wait_until(timeout, || {
        let v = f();
        let ok = done(&v);
        last = Some(v);
        ok
    });
    (held, last.expect("polled at least once"))
}

/// Owned header pairs from borrowed ones.
pub fn owned_headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What the fake upstream does for each (non-health) request.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// Answer with this status, these extra headers and this body. `Content-Length` and
    /// `Content-Type: text/plain` are added unless given here; keep-alive is honoured.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Sleep `delay` before writing the response headers, then respond like `Respond`.
    Delay {
        delay: Duration,
        status: u16,
        body: String,
    },
    /// Read the request, then never answer; the socket stays open until the upstream is dropped.
    Hang,
    /// Read the full request (incl. body), then close without writing a byte.
    /// A real RST needs `SO_LINGER 0`, which stable std cannot set without `unsafe`; so this is
    /// `shutdown(Both)` + drop: the peer sees FIN/EOF before any response byte (and RST only if
    /// it sends more data afterwards), i.e. "upstream closed the connection before responding".
    Close,
    /// Send headers whose Content-Length is 100 more than the body actually sent, then close.
    TruncatedBody { status: u16 },
    /// 200 `application/json`:
    /// `{"method":"GET","target":"/a?b=1","headers":[["host","x"]],"body_len":0}`.
    Echo,
    /// Like `Echo`, with these extra response headers (e.g. `Cache-Control`, `Vary`).
    EchoWith(Vec<(String, String)>),
}

/// A request as received by the [`FakeUpstream`] (health probes are not recorded).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Request target exactly as received (path + query).
    pub target: String,
    /// Header names lowercased, in wire order.
    pub headers: Vec<(String, String)>,
    /// Decoded body (chunked transfer coding removed).
    pub body: Vec<u8>,
}

/// A response read by the client helpers.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, in wire order.
    pub headers: Vec<(String, String)>,
    /// Decoded body (chunked transfer coding removed).
    pub body: Vec<u8>,
}

impl Response {
    /// Body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

macro_rules! header_lookups {
    ($t:ty) => {
        impl $t {
            /// First value of header `name` (case-insensitive).
            pub fn header(&self, name: &str) -> Option<&str> {
                find_all(&self.headers, name).into_iter().next()
            }
            /// All values of header `name` (case-insensitive), in wire order.
            pub fn header_all(&self, name: &str) -> Vec<&str> {
                find_all(&self.headers, name)
            }
        }
    };
}
header_lookups!(RecordedRequest);
header_lookups!(Response);

fn find_all<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    let hits = h.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
    hits.map(|(_, v)| v.as_str()).collect()
}

/// True if a comma-separated header `name` contains `token` (case-insensitive).
fn has_token(h: &[(String, String)], name: &str, token: &str) -> bool {
    let mut values = find_all(h, name).into_iter();
    values.any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn has_header(h: &[(String, String)], name: &str) -> bool {
    h.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
}

/// Locks, ignoring poison: one panicking test thread must not break the rest.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ------------------------------------------------------------------------------------------
// Wire reading, shared by server and client
// ------------------------------------------------------------------------------------------

/// Start line plus headers (names lowercased).
type Head = (String, Vec<(String, String)>);

/// Buffered reader over a socket with an optional absolute deadline.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    deadline: Option<Instant>,
}

impl Wire {
    fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            buf: Vec::new(),
            deadline: None,
        }
    }

    /// Reads more bytes into `buf`; returns how many (0 = EOF). Timeouts start with "timed out".
    fn fill(&mut self) -> Result<usize, String> {
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out".into());
            }
            let set = self.stream.set_read_timeout(Some(left));
            set.map_err(|e| format!("set_read_timeout: {e}"))?;
        }
        let mut tmp = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(format!("timed out: {e}"))
                }
                Err(e) => return Err(format!("read error: {e}")),
            }
        }
    }

    /// Reads a message head. `Ok(None)` on clean EOF before any byte (leading CRLFs skipped).
    fn read_head(&mut self) -> Result<Option<Head>, String> {
        loop {
            let blank = self
                .buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            self.buf.drain(..blank);
            let end = find(&self.buf, b"\r\n\r\n").map(|i| (i, 4));
            if let Some((i, sep)) = end.or_else(|| find(&self.buf, b"\n\n").map(|i| (i, 2))) {
                let head: Vec<u8> = self.buf.drain(..i + sep).take(i).collect();
                return parse_head(&head).map(Some);
            }
            if self.buf.len() > MAX_HEAD {
                return Err("head larger than 64 KiB".into());
            }
            if self.fill()? == 0 {
                let eof_ok = self.buf.is_empty();
                return if eof_ok {
                    Ok(None)
                } else {
                    Err("EOF inside head".into())
                };
            }
        }
    }

    /// Takes exactly `n` bytes.
    fn take(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(format!("EOF after {} of {n} body bytes", self.buf.len()));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Takes one line, without its line ending.
    fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = find(&self.buf, b"\n") {
                let l: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(String::from_utf8_lossy(&l).trim_end().to_string());
            }
            if self.fill()? == 0 {
                return Err("EOF inside chunked body".into());
            }
        }
    }

    /// Decodes a chunked body (chunk extensions and trailers are discarded).
    fn chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let l = self.line()?;
            let size = l.split(';').next().unwrap_or("").trim();
            let n = usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {l:?}"))?;
            if n == 0 {
                while !self.line()?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.take(n)?);
            self.take(2)?; // CRLF after the chunk data
        }
    }

    /// Reads a body framed by chunked or Content-Length; unframed → until close or empty.
    fn body(&mut self, h: &[(String, String)], until_close: bool) -> Result<Vec<u8>, String> {
        if has_token(h, "transfer-encoding", "chunked") {
            self.chunked()
        } else if let Some(cl) = find_all(h, "content-length").first() {
            self.take(
                cl.trim()
                    .parse()
                    .map_err(|_| format!("bad content-length {cl:?}"))?,
            )
        } else if until_close {
            while self.fill()? > 0 {}
            Ok(std::mem::take(&mut self.buf))
        } else {
            Ok(Vec::new())
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits a head into its start line and headers (names lowercased, values trimmed).
fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let start = lines.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| format!("bad header line {l:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Ok((start, headers))
}

// ------------------------------------------------------------------------------------------
// Fake upstream
// ------------------------------------------------------------------------------------------

struct Shared {
    behavior: Mutex<Behavior>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Open connections (by accept number), shut down on drop.
    open: Mutex<HashMap<usize, TcpStream>>,
    connections: AtomicUsize,
    health_status: AtomicU16,
    health_probes: AtomicUsize,
    stop: AtomicBool,
}

/// A fake HTTP/1.1 backend on 127.0.0.1, one thread per connection. Dropping it closes the
/// listener (the port refuses connections within ~5 ms) and shuts down every open connection.
pub struct FakeUpstream {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Behavior {
    /// [`Behavior::Respond`] from borrowed parts.
    pub fn respond(status: u16, headers: &[(&str, &str)], body: &str) -> Behavior {
        Behavior::Respond {
            status,
            headers: owned_headers(headers),
            body: body.into(),
        }
    }
}

impl FakeUpstream {
    /// Starts on an OS-assigned port.
    pub fn start(behavior: Behavior) -> FakeUpstream {
        Self::start_on(0, behavior)
    }

    /// Starts on an OS-assigned port, answering `status` with `headers` and `body` to every
    /// request.
    pub fn responding(status: u16, headers: &[(&str, &str)], body: &str) -> FakeUpstream {
        Self::start(Behavior::respond(status, headers, body))
    }

    /// Starts on `port`, retrying the bind for up to 5 s (e.g. to revive a "dead" backend).
    pub fn start_on(port: u16, behavior: Behavior) -> FakeUpstream {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let bind = || TcpListener::bind(addr);
        let (_, bound) = poll_until(Duration::from_secs(5), bind, |b| b.is_ok());
        let listener = bound.unwrap_or_else(|e| panic!("FakeUpstream: cannot bind {addr}: {e}"));
        let port = listener
            .local_addr()
            .expect("FakeUpstream: local_addr")
            .port();
        listener
            .set_nonblocking(true)
            .expect("FakeUpstream: set_nonblocking");
        let shared = Arc::new(Shared {
            behavior: Mutex::new(behavior),
            requests: Mutex::default(),
            open: Mutex::default(),
            connections: AtomicUsize::new(0),
            health_status: AtomicU16::new(200),
            health_probes: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let sh = Arc::clone(&shared);
        let acceptor = Some(thread::spawn(move || accept_loop(listener, sh)));
        FakeUpstream {
            port,
            shared,
            acceptor,
        }
    }

    /// Listening port.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// `"http://127.0.0.1:PORT"`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// Changes the behaviour for requests read from now on (on all connections).
    pub fn set_behavior(&self, b: Behavior) {
        *lock(&self.shared.behavior) = b;
    }
    /// Clone of all recorded (non-health) requests so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }
    /// Number of recorded (non-health) requests.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }
    /// Number of TCP connections accepted so far (health-probe connections included).
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(SeqCst)
    }
    /// Status answered on `/health` (default 200, body `ok`).
    pub fn health_status(&self, status: u16) {
        self.shared.health_status.store(status, SeqCst);
    }
    /// Number of `/health` requests answered.
    pub fn health_probe_count(&self) -> usize {
        self.shared.health_probes.load(SeqCst)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join(); // polls `stop` every 5 ms, then drops the listener
        }
        for (_, s) in lock(&self.shared.open).drain() {
            let _ = s.shutdown(Shutdown::Both); // wakes idle keep-alive and Hang threads
        }
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    while !sh.stop.load(SeqCst) {
        let Ok((stream, _)) = listener.accept() else {
            thread::sleep(Duration::from_millis(5)); // WouldBlock (or a transient error)
            continue;
        };
        let id = sh.connections.fetch_add(1, SeqCst);
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_nodelay(true);
        if let Ok(c) = stream.try_clone() {
            lock(&sh.open).insert(id, c);
        }
        let sh = Arc::clone(&sh);
        thread::spawn(move || {
            serve_conn(stream, &sh);
            lock(&sh.open).remove(&id);
        });
    }
}

/// Sleeps `d` in small steps, returning early when the upstream is being dropped.
fn sleep_unless_stopped(sh: &Shared, d: Duration) {
    let end = Instant::now() + d;
    while !sh.stop.load(SeqCst) && Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        thread::sleep(left.min(Duration::from_millis(10)));
    }
}

/// Status, extra headers, body and default Content-Type of a response to write.
type Reply = (u16, Vec<(String, String)>, Vec<u8>, &'static str);

fn serve_conn(stream: TcpStream, sh: &Shared) {
    let mut w = Wire::new(stream);
    while let Ok(Some((start, headers))) = w.read_head() {
        let mut parts = start.split_whitespace().map(str::to_string);
        let (method, target) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let keep_alive = if parts
            .next()
            .is_some_and(|v| v.eq_ignore_ascii_case("HTTP/1.0"))
        {
            has_token(&headers, "connection", "keep-alive")
        } else {
            !has_token(&headers, "connection", "close")
        };
        let framed =
            has_header(&headers, "content-length") || has_header(&headers, "transfer-encoding");
        if framed && has_token(&headers, "expect", "100-continue") {
            let _ = w.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let Ok(body) = w.body(&headers, false) else {
            return;
        };
        let head_req = method.eq_ignore_ascii_case("HEAD");
        let text = "text/plain";
        let reply: Option<Reply> = if target == "/health" {
            sh.health_probes.fetch_add(1, SeqCst);
            Some((sh.health_status.load(SeqCst), vec![], b"ok".to_vec(), text))
        } else {
            let req = RecordedRequest {
                method,
                target,
                headers,
                body,
            };
            let behavior = lock(&sh.behavior).clone();
            lock(&sh.requests).push(req.clone());
            match behavior {
                Behavior::Respond {
                    status,
                    headers,
                    body,
                } => Some((status, headers, body.into(), text)),
                Behavior::Delay {
                    delay,
                    status,
                    body,
                } => {
                    sleep_unless_stopped(sh, delay);
                    Some((status, vec![], body.into(), text))
                }
                Behavior::Echo => Some((200, vec![], echo_json(&req).into(), "application/json")),
                Behavior::EchoWith(extra) => {
                    Some((200, extra, echo_json(&req).into(), "application/json"))
                }
                Behavior::Hang => {
                    sleep_unless_stopped(sh, Duration::from_secs(24 * 3600));
                    None
                }
                Behavior::TruncatedBody { status } => {
                    let part = b"partial body";
                    let len = part.len() + 100;
                    let head = format!(
                        "HTTP/1.1 {status} {}\r\nContent-Type: {text}\r\nContent-Length: {len}\r\n\r\n",
                        reason(status)
                    );
                    let _ = w.stream.write_all(&[head.as_bytes(), part].concat());
                    None
                }
                Behavior::Close => None,
            }
        };
        let written = reply.is_some_and(|r| write_response(&mut w.stream, r, keep_alive, head_req));
        if !written || !keep_alive {
            let _ = w.stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Writes one response in a single write; returns false on IO error. Extra headers override
/// the default Content-Type / Content-Length; 1xx/204/304 get neither and no body.
fn write_response(out: &mut TcpStream, reply: Reply, keep_alive: bool, head_req: bool) -> bool {
    let (status, headers, body, content_type) = reply;
    let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
    let mut s = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if !bodyless && !has_header(&headers, "content-type") {
        s += &format!("Content-Type: {content_type}\r\n");
    }
    if !bodyless && !has_header(&headers, "content-length") {
        s += &format!("Content-Length: {}\r\n", body.len());
    }
    for (k, v) in &headers {
        s += &format!("{k}: {v}\r\n");
    }
    s += if keep_alive {
        "\r\n"
    } else {
        "Connection: close\r\n\r\n"
    };
    let mut bytes = s.into_bytes();
    if !head_req && !bodyless {
        bytes.extend_from_slice(&body);
    }
    out.write_all(&bytes).is_ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 | 302 | 307 | 308 => "Redirect",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Builds the Echo body by hand (JSON string escaping included).
fn echo_json(r: &RecordedRequest) -> String {
    fn esc(s: &str) -> String {
        let mut o = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => o += "\\\"",
                '\\' => o += "\\\\",
                '\n' => o += "\\n",
                '\r' => o += "\\r",
                '\t' => o += "\\t",
                c if (c as u32) < 0x20 || c == '\u{7f}' => o += &format!("\\u{:04x}", c as u32),
                c => o.push(c),
            }
        }
        o + "\""
    }
    let hs: Vec<String> = r
        .headers
        .iter()
        .map(|(k, v)| format!("[{},{}]", esc(k), esc(v)))
        .collect();
    let (m, t, h, n) = (esc(&r.method), esc(&r.target), hs.join(","), r.body.len());
    format!("{{\"method\":{m},\"target\":{t},\"headers\":[{h}],\"body_len\":{n}}}")
}

// ------------------------------------------------------------------------------------------
// Raw client
// ------------------------------------------------------------------------------------------

/// Sends `bytes` on a fresh connection to 127.0.0.1:`port` and reads one response (10 s in
/// total). A request starting with `HEAD ` is read as bodiless.
pub fn raw_request(port: u16, bytes: &[u8]) -> Result<Response, String> {
    let mut c = Conn::open(port)?;
    c.send(bytes)?;
    c.read_response(bytes.starts_with(b"HEAD "))
}

/// `GET {path} HTTP/1.1` with `Host: localhost` and `Connection: close` (each left out if
/// `headers` has one), then `headers`.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    raw_request(port, &build("GET", path, headers, None))
}

/// Like [`get`] with any method and a body; `Content-Length` is added unless `headers` has
/// Content-Length or Transfer-Encoding (then `body` is sent as is).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    raw_request(port, &build(method, path, headers, Some(body)))
}

fn build(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Vec<u8> {
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    let mut s = format!("{method} {path} HTTP/1.1\r\n");
    if !has("host") {
        s += "Host: localhost\r\n";
    }
    if !has("connection") {
        s += "Connection: close\r\n";
    }
    for (k, v) in headers {
        s += &format!("{k}: {v}\r\n");
    }
    if body.is_some() && !has("content-length") && !has("transfer-encoding") {
        s += &format!("Content-Length: {}\r\n", body.map_or(0, <[u8]>::len));
    }
    [s.as_bytes(), b"\r\n", body.unwrap_or_default()].concat()
}

/// A client connection to 127.0.0.1 for several requests on one socket.
pub struct Conn {
    wire: Wire,
}

impl Conn {
    /// Connects to 127.0.0.1:`port` (10 s connect and write timeouts).
    pub fn open(port: u16) -> Result<Conn, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let connect = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT);
        let stream = connect.map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let set = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
        set.map_err(|e| format!("set_write_timeout: {e}"))?;
        Ok(Conn {
            wire: Wire::new(stream),
        })
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.wire
            .stream
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads exactly one response within 10 s (see [`Conn::read_response_timeout`]).
    pub fn read_response(&mut self, head_request: bool) -> Result<Response, String> {
        self.read_response_timeout(head_request, CLIENT_TIMEOUT)
    }

    /// Reads exactly one response (a 1xx counts as one) within `t`; a timeout error starts
    /// with "timed out". Body: none for HEAD/1xx/204/304, else chunked (decoded),
    /// Content-Length, or until the peer closes.
    pub fn read_response_timeout(&mut self, head: bool, t: Duration) -> Result<Response, String> {
        self.wire.deadline = Some(Instant::now() + t);
        let head_opt = self.wire.read_head()?;
        let (start, headers) = head_opt.ok_or("connection closed before response")?;
        let code = start.split_whitespace().nth(1).unwrap_or("");
        let status: u16 = match (start.starts_with("HTTP/"), code.parse()) {
            (true, Ok(s)) => s,
            _ => return Err(format!("bad status line {start:?}")),
        };
        let bodyless = head || (100..200).contains(&status) || status == 204 || status == 304;
        let body = if bodyless {
            Vec::new()
        } else {
            self.wire.body(&headers, true)?
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// True if the peer closes (EOF or reset) within `wait`. Bytes arriving meanwhile are kept
    /// for the next `read_response*` call and waiting continues.
    pub fn is_closed_by_peer(&mut self, wait: Duration) -> bool {
        self.wire.deadline = Some(Instant::now() + wait);
        loop {
            match self.wire.fill() {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => return !e.starts_with("timed out"),
            }
        }
    }
}

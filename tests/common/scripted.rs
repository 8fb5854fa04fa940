//! A scripted raw HTTP/1 upstream for misbehaviour cases ([`ScriptedUpstream`]): it answers
//! each request with bytes written exactly as given, however wrong they are (a body after a
//! `HEAD` answer, a second unsolicited response, a broken status line …), and records every
//! request raw, with the index of the connection it arrived on, so a test can tell whether the
//! gateway reused a connection that carried a bad answer.
//!
//! Only the standard library: a `TcpListener` on 127.0.0.1 (OS-assigned port), one thread per
//! connection. Every read is bounded by a timeout, every sleep returns early when the upstream
//! is dropped; dropping it closes the listener, shuts every open connection down and joins all
//! its threads.
//!
//! Which reply a request gets: the replies scripted for its exact target (as received, e.g.
//! `/s/case`), in order, the last one repeating; else the default reply when one is set
//! ([`ScriptedUpstream::set_default`]); else a plain well-formed `200` (`upstream-ok`, no body
//! for `HEAD`).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Largest request head read (more: the request is recorded incomplete, the connection closed).
const MAX_HEAD: usize = 1024 * 1024;
/// Largest request body read.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Bound on each read from the gateway (an idle pooled connection is closed after it).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on each write to the gateway.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the upstream does on the connection after writing a reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Then {
    /// Keep the connection open and read the next request from it.
    KeepOpen,
    /// Close the connection (FIN; both directions shut down).
    Close,
    /// Wait `delay`, write `bytes` (unasked for), then close when `close`, else keep reading.
    Extra {
        delay: Duration,
        bytes: Vec<u8>,
        close: bool,
    },
}

/// One scripted answer: raw bytes written in one `write_all`, then [`Then`].
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub then: Then,
}

impl Reply {
    /// `bytes`, then the connection stays open.
    pub fn keep(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            then: Then::KeepOpen,
        }
    }

    /// `bytes`, then the connection is closed.
    pub fn close(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            then: Then::Close,
        }
    }

    /// `bytes`, then after `delay` the unasked-for `extra`; the connection stays open.
    pub fn extra_after(
        bytes: impl Into<Vec<u8>>,
        delay: Duration,
        extra: impl Into<Vec<u8>>,
    ) -> Reply {
        Reply {
            bytes: bytes.into(),
            then: Then::Extra {
                delay,
                bytes: extra.into(),
                close: false,
            },
        }
    }

    /// A well-formed `200` with `Content-Length` and a `text/plain` body, kept open.
    pub fn ok(body: &str) -> Reply {
        Reply::keep(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }
}

/// A request as the upstream read it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Index of the connection it arrived on (0 = the first connection accepted).
    pub conn: usize,
    /// Its position among the requests of that connection (0 = first).
    pub nth_on_conn: usize,
    /// The head and body bytes exactly as read (chunked framing included).
    pub raw: Vec<u8>,
    pub method: String,
    /// Request target exactly as received.
    pub target: String,
    /// `HTTP/1.1` …, as received.
    pub version: String,
    /// Header names lowercased, values trimmed, in wire order.
    pub headers: Vec<(String, String)>,
    /// The body with chunked framing removed.
    pub body: Vec<u8>,
    /// False when the head could not be read as a request or the body did not arrive whole
    /// (the connection ended, or its framing was unreadable); the connection is then closed
    /// without a reply.
    pub complete: bool,
}

impl Seen {
    /// All values of header `name` (case-insensitive), in wire order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct Script {
    by_target: HashMap<String, VecDeque<Reply>>,
    default: Option<Reply>,
}

struct Shared {
    script: Mutex<Script>,
    seen: Mutex<Vec<Seen>>,
    /// Clones of the open connections, shut down on drop (wakes blocked reads and writes).
    open: Mutex<HashMap<usize, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    connections: AtomicUsize,
    /// Replies written (scripted or default).
    replies: AtomicUsize,
    /// `Then::Extra` bytes written.
    extras: AtomicUsize,
    /// Connections this side has finished with (closed by script, peer EOF, error, timeout).
    finished: AtomicUsize,
    /// Answer `Expect: 100-continue` with an interim `100 Continue` before reading the body.
    interim_continue: AtomicBool,
    stop: AtomicBool,
}

/// The scripted upstream. See the module docs.
pub struct ScriptedUpstream {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ScriptedUpstream {
    /// Starts on an OS-assigned port of 127.0.0.1 with an empty script.
    pub fn start() -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("ScriptedUpstream: bind");
        let port = listener
            .local_addr()
            .expect("ScriptedUpstream: local_addr")
            .port();
        listener
            .set_nonblocking(true)
            .expect("ScriptedUpstream: set_nonblocking");
        let shared = Arc::new(Shared {
            script: Mutex::default(),
            seen: Mutex::default(),
            open: Mutex::default(),
            threads: Mutex::default(),
            connections: AtomicUsize::new(0),
            replies: AtomicUsize::new(0),
            extras: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            interim_continue: AtomicBool::new(true),
            stop: AtomicBool::new(false),
        });
        let sh = Arc::clone(&shared);
        let acceptor = Some(thread::spawn(move || accept_loop(listener, sh)));
        ScriptedUpstream {
            port,
            shared,
            acceptor,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"http://127.0.0.1:PORT"`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Adds `reply` to the replies for requests whose target is exactly `target`.
    pub fn script(&self, target: &str, reply: Reply) {
        let mut s = lock(&self.shared.script);
        s.by_target
            .entry(target.to_string())
            .or_default()
            .push_back(reply);
    }

    /// The reply for requests no target script matches (`None`: the plain `200`).
    pub fn set_default(&self, reply: Option<Reply>) {
        lock(&self.shared.script).default = reply;
    }

    /// Whether `Expect: 100-continue` on a request with a body gets `100 Continue` before the
    /// body is read (default: yes, as most servers do).
    pub fn set_interim_continue(&self, on: bool) {
        self.shared.interim_continue.store(on, SeqCst);
    }

    /// Every request read so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// The requests with this exact target.
    pub fn seen_for(&self, target: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.target == target)
            .collect()
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(SeqCst)
    }

    /// Replies written so far.
    pub fn reply_count(&self) -> usize {
        self.shared.replies.load(SeqCst)
    }

    /// `Then::Extra` bytes written so far.
    pub fn extras_written(&self) -> usize {
        self.shared.extras.load(SeqCst)
    }

    /// Connections this side has finished with so far.
    pub fn finished_count(&self) -> usize {
        self.shared.finished.load(SeqCst)
    }

    /// Waits (at most `timeout`) until `f(self)` holds; whether it did.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&ScriptedUpstream) -> bool,
    ) -> bool {
        super::wait_until(timeout, || f(self))
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join(); // polls `stop` every 5 ms
        }
        for (_, s) in lock(&self.shared.open).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = lock(&self.shared.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    while !sh.stop.load(SeqCst) {
        let Ok((stream, _)) = listener.accept() else {
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        let id = sh.connections.fetch_add(1, SeqCst);
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        if let Ok(c) = stream.try_clone() {
            lock(&sh.open).insert(id, c);
        }
        let sh2 = Arc::clone(&sh);
        let t = thread::spawn(move || {
            serve(stream, id, &sh2);
            if let Some(s) = lock(&sh2.open).remove(&id) {
                let _ = s.shutdown(Shutdown::Both);
            }
            sh2.finished.fetch_add(1, SeqCst);
        });
        lock(&sh.threads).push(t);
    }
}

/// Sleeps `d` in small steps, returning early when the upstream is being dropped.
fn nap(sh: &Shared, d: Duration) {
    let end = Instant::now() + d;
    while !sh.stop.load(SeqCst) && Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        thread::sleep(left.min(Duration::from_millis(5)));
    }
}

/// Buffered reads from one connection.
struct In {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Everything consumed for the current request.
    raw: Vec<u8>,
}

impl In {
    /// Reads more; `false` on EOF, error or timeout.
    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let out: Vec<u8> = self.buf.drain(..n).collect();
        self.raw.extend_from_slice(&out);
        out
    }

    /// Exactly `n` bytes, or `None` if the connection ends first.
    fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.take(n))
    }

    /// One line, without its CRLF (or LF).
    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut l = self.take(i + 1);
                l.pop();
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                return Some(l);
            }
            if self.buf.len() > MAX_HEAD || !self.fill() {
                return None;
            }
        }
    }

    /// A head up to and including CRLFCRLF; `None` on EOF (or timeout) first.
    fn head(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                return Some(self.take(i + 4));
            }
            if self.buf.len() > MAX_HEAD || !self.fill() {
                return None;
            }
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Reads a chunked body; `None` when the framing is unreadable or the connection ends.
fn chunked(r: &mut In) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = r.line()?;
        let size_part = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size_part).ok()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        if size == 0 {
            // Trailers up to the blank line.
            loop {
                if r.line()?.is_empty() {
                    return Some(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return None;
        }
        body.extend(r.exact(size)?);
        if !r.line()?.is_empty() {
            return None;
        }
    }
}

fn serve(stream: TcpStream, conn: usize, sh: &Shared) {
    let mut r = In {
        stream,
        buf: Vec::new(),
        raw: Vec::new(),
    };
    let mut nth = 0usize;
    while !sh.stop.load(SeqCst) {
        r.raw.clear();
        let Some(head) = r.head() else {
            if !r.buf.is_empty() {
                let raw = std::mem::take(&mut r.buf);
                record_broken(sh, conn, nth, raw);
            }
            return;
        };
        let text = String::from_utf8_lossy(&head[..head.len() - 4]).into_owned();
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or_default().to_string();
        let mut parts = start.splitn(3, ' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let version = parts.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .map(|l| match l.split_once(':') {
                Some((k, v)) => (k.to_ascii_lowercase(), v.trim().to_string()),
                None => (l.to_ascii_lowercase(), String::new()),
            })
            .collect();
        let values = |name: &str| -> Vec<String> {
            headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.to_ascii_lowercase())
                .collect()
        };
        let te = values("transfer-encoding");
        let cl = values("content-length");
        let is_chunked = te.last().is_some_and(|v| v.trim_end().ends_with("chunked"));
        let length: Option<Option<usize>> = if is_chunked || !te.is_empty() {
            None
        } else if cl.is_empty() {
            Some(Some(0))
        } else {
            // Every value (and every comma-separated part) must be the same number.
            let nums: Vec<Option<usize>> = cl
                .iter()
                .flat_map(|v| v.split(','))
                .map(|p| p.trim().parse::<usize>().ok().filter(|n| *n <= MAX_BODY))
                .collect();
            let first = nums.first().copied().flatten();
            Some(first.filter(|n| nums.iter().all(|m| *m == Some(*n))))
        };
        let framed = is_chunked || matches!(length, Some(Some(n)) if n > 0);
        let expects = values("expect").iter().any(|v| v == "100-continue");
        if framed && expects && sh.interim_continue.load(SeqCst) {
            let _ = r.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let body = match length {
            None if is_chunked => chunked(&mut r),
            None => None, // a transfer coding this upstream cannot frame
            Some(None) => None,
            Some(Some(n)) => r.exact(n),
        };
        let complete = body.is_some();
        let seen = Seen {
            conn,
            nth_on_conn: nth,
            raw: std::mem::take(&mut r.raw),
            method,
            target,
            version,
            headers,
            body: body.unwrap_or_default(),
            complete,
        };
        nth += 1;
        let reply = {
            let mut s = lock(&sh.script);
            let scripted = s.by_target.get_mut(&seen.target).and_then(|q| {
                if q.len() > 1 {
                    q.pop_front()
                } else {
                    q.front().cloned()
                }
            });
            scripted.or_else(|| s.default.clone())
        };
        let head_req = seen.method.eq_ignore_ascii_case("HEAD");
        lock(&sh.seen).push(seen);
        if !complete {
            return;
        }
        let reply = reply.unwrap_or_else(|| {
            let body = if head_req { "" } else { "upstream-ok" };
            Reply::keep(format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n{body}"
            ))
        });
        if r.stream.write_all(&reply.bytes).is_err() {
            return;
        }
        let _ = r.stream.flush();
        sh.replies.fetch_add(1, SeqCst);
        match reply.then {
            Then::KeepOpen => {}
            Then::Close => {
                let _ = r.stream.shutdown(Shutdown::Both);
                return;
            }
            Then::Extra {
                delay,
                bytes,
                close,
            } => {
                nap(sh, delay);
                let wrote = r.stream.write_all(&bytes).is_ok();
                sh.extras.fetch_add(1, SeqCst);
                if close || !wrote {
                    let _ = r.stream.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}

/// A connection that ended inside a head: recorded as an incomplete request.
fn record_broken(sh: &Shared, conn: usize, nth: usize, raw: Vec<u8>) {
    let text = String::from_utf8_lossy(&raw).into_owned();
    let start = text.split("\r\n").next().unwrap_or_default().to_string();
    let mut parts = start.splitn(3, ' ');
    lock(&sh.seen).push(Seen {
        conn,
        nth_on_conn: nth,
        method: parts.next().unwrap_or_default().to_string(),
        target: parts.next().unwrap_or_default().to_string(),
        version: parts.next().unwrap_or_default().to_string(),
        raw,
        headers: Vec::new(),
        body: Vec::new(),
        complete: false,
    });
}

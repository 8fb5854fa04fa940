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
//! gatehouse once served plain requests on a lane that grew out of this engine; it was removed
//! (its own framing and idle pool let an upstream's stray bytes reach the next client, README
//! "The native HTTP/1 lane"). This file stays a measuring instrument only: gatehouse parses
//! and frames HTTP with Pingora's code.

use gatehouse::edge::listener::find_head_end;
use std::cell::RefCell;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::rc::Rc;
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

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: tokio_http1 LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("upstream: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(&listen).await?;
        let pool: Pool = Rc::default();
        loop {
            let (client, peer) = listener.accept().await?;
            let _ = client.set_nodelay(true);
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                // A connection's errors end that connection only.
                let _ = Conn::new(client, peer, upstream, pool).serve().await;
            });
        }
    })
}

struct Conn {
    client: TcpStream,
    peer: String,
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
    fn new(client: TcpStream, peer: SocketAddr, upstream: SocketAddr, pool: Pool) -> Self {
        Conn {
            client,
            peer: peer.ip().to_string(),
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
            let (reusable, _status) = self.relay_response(&mut up, head_only, keep_alive).await?;
            if reusable {
                self.pool.borrow_mut().push((self.upstream, up));
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
        let _ = std::fmt::Write::write_fmt(
            &mut self.id,
            format_args!("{:032x}", rand::random::<u128>()),
        );
        let out = &mut self.out;
        out.clear();
        let _ = write!(out, "{method} {path} HTTP/1.1\r\n");
        let mut keep_alive = version == 1;
        let mut body = Body::None;
        let mut host: &[u8] = b"";
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("connection") {
                if contains_token(h.value, "close") {
                    keep_alive = false;
                } else if contains_token(h.value, "keep-alive") {
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

    /// An idle upstream connection of this thread to the backend, or a new one.
    async fn upstream_conn(&mut self) -> io::Result<TcpStream> {
        let backend = self.upstream;
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
                if contains_token(h.value, "close") {
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

/// Whether the comma-separated header value `v` lists `token` (ASCII case-insensitive).
fn contains_token(v: &[u8], token: &str) -> bool {
    v.split(|&c| c == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Finds the end of a chunked body fed in pieces (sizes, extensions, trailers); the bytes
/// themselves are passed on as they are.
#[derive(Default)]
struct ChunkScan {
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

fn parse_len(v: &[u8]) -> Option<usize> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
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
    fn lengths_are_read_as_decimal_numbers_only() {
        assert_eq!(parse_len(b" 42 "), Some(42));
        assert_eq!(parse_len(b"4x"), None);
        assert_eq!(parse_len(b"-1"), None);
    }
}

//! HTTP/2 on the TLS listener, from a hostile client's side: connection limits shared with
//! HTTP/1, `server.http2` bounds (concurrent streams, header list size) and Pingora's
//! protections (the `h2` crate's) against rapid reset, CONTINUATION floods and SETTINGS/PING
//! floods; per-route in-flight limits for requests arriving over HTTP/2.
//!
//! Well-behaved requests go through the `h2` crate's client; the attacks are written frame by
//! frame ([`Raw`]), since no conforming client sends them. Certificates are made with rcgen.

mod common;
use common::backends::TempDir;
use common::*;
use pingora::tls::{ClientConfig, RootCertStore, ServerName, TlsConnector};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Tls = pingora::tls::ClientTlsStream<TcpStream>;

/// A gateway with a TLS listener (certificate for `a.test`) and a client config trusting it.
struct H2Gateway {
    gw: Gw,
    tls_port: u16,
    client: Arc<ClientConfig>,
    _dir: TempDir,
}

fn h2_gateway(server_extra: &str, rest: &str) -> H2Gateway {
    let dir = TempDir::new("http2-limits");
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["a.test".to_string()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("certificate");
    let (crt_path, key_path) = (dir.path().join("a.crt"), dir.path().join("a.key"));
    std::fs::write(&crt_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");

    let tls_port = free_port();
    let gw = Gw::start_with_server(
        &format!(
            "  tls:\n    listen: [127.0.0.1:{tls_port}]\n    certificates: [{{cert: {}, key: {}}}]\n{server_extra}",
            crt_path.display(),
            key_path.display()
        ),
        rest,
    );
    eventually(Duration::from_secs(10), "TLS listener up", || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone()).expect("trust the test CA");
    let client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    H2Gateway {
        gw,
        tls_port,
        client: Arc::new(client),
        _dir: dir,
    }
}

impl H2Gateway {
    /// A TLS connection offering only `alpn` (`h2` or `http/1.1`).
    async fn connect(&self, alpn: &str) -> Tls {
        let mut config = (*self.client).clone();
        config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
        let tcp = TcpStream::connect(("127.0.0.1", self.tls_port))
            .await
            .expect("connect");
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("a.test").expect("name"), tcp)
            .await
            .expect("TLS handshake")
    }

    /// An `h2` client connection; its driver runs on the test's runtime.
    async fn h2_client(&self) -> Result<h2::client::SendRequest<bytes::Bytes>, h2::Error> {
        let tls = self.connect("h2").await;
        let (send, conn) = h2::client::handshake(tls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    fn refused(&self, limit: &str) -> f64 {
        self.gw
            .metric("gatehouse_connections_refused_total", &[("limit", limit)])
    }
}

/// GET `path` on an `h2` connection; the status, or the stream's error.
async fn h2_get(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    extra: &[(&str, String)],
) -> Result<u16, h2::Error> {
    let mut req = ::http::Request::builder()
        .method("GET")
        .uri(format!("https://a.test{path}"));
    for (k, v) in extra {
        req = req.header(*k, v.as_str());
    }
    let mut ready = send.clone().ready().await?;
    let (resp, _) = ready.send_request(req.body(()).expect("request"), true)?;
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    *send = ready;
    Ok(status)
}

// ---- raw frames ----

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: a literal header field without indexing, new name, no Huffman coding.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    fn int7(out: &mut Vec<u8>, mut n: usize) {
        if n < 127 {
            out.push(n as u8);
            return;
        }
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128 + 128) as u8);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.push(0x00);
    int7(out, name.len());
    out.extend_from_slice(name.as_bytes());
    int7(out, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// The header block of `GET path` for `a.test`, plus `extra` fields.
fn request_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", path),
        (":authority", "a.test"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        hpack_literal(&mut b, k, v);
    }
    b
}

/// A frame as received: type, flags, stream and payload.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A GOAWAY's last stream id: the highest stream the server took.
    fn last_stream_id(&self) -> Option<u32> {
        let b = (self.kind == GOAWAY).then_some(self.payload.get(0..4)?)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
    }
}

/// A client that speaks HTTP/2 frame by frame.
struct Raw {
    tls: Tls,
    /// The server's first SETTINGS, as (identifier, value) pairs.
    server_settings: Vec<(u16, u32)>,
}

impl Raw {
    /// Connects, sends the preface and empty SETTINGS, and acknowledges the server's.
    async fn open(g: &H2Gateway) -> Raw {
        let mut tls = g.connect("h2").await;
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        tls.write_all(&frame(SETTINGS, 0, 0, &[]))
            .await
            .expect("settings");
        let mut raw = Raw {
            tls,
            server_settings: Vec::new(),
        };
        let first = raw.read().await.expect("the server's SETTINGS");
        assert_eq!(first.kind, SETTINGS, "{first:?}");
        raw.server_settings = first
            .payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect();
        raw.send(&frame(SETTINGS, ACK, 0, &[])).await;
        raw
    }

    fn setting(&self, id: u16) -> Option<u32> {
        self.server_settings
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    }

    /// Writes bytes; false once the server has closed the connection.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.tls.write_all(bytes).await.is_ok() && self.tls.flush().await.is_ok()
    }

    /// The next frame, or None at the end of the connection (or after 10 s of silence).
    async fn read(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(10), self.tls.read_exact(&mut head));
        read.await.ok()?.ok()?;
        let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
        let mut payload = vec![0u8; len];
        self.tls.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Reads frames until `want` matches one (returned) or the connection ends (None).
    async fn until(&mut self, want: impl Fn(&Frame) -> bool) -> Option<Frame> {
        while let Some(f) = self.read().await {
            if want(&f) {
                return Some(f);
            }
        }
        None
    }
}

/// The test's own runtime for the clients (the gateway runs on its own threads; it is built
/// and dropped outside this runtime).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn hang_gateway(server_extra: &str, route_extra: &str) -> (FakeUpstream, H2Gateway) {
    let up = FakeUpstream::start(Behavior::Hang);
    let g = h2_gateway(
        server_extra,
        &format!(
            "upstreams:\n{}\nroutes:\n  - {{prefix: /slow, upstream: svc, timeouts: {{read: 30s, total: 30s}}{route_extra}}}\n",
            upstream("svc", &[up.url()], "")
        ),
    );
    (up, g)
}

#[test]
fn http2_connections_count_toward_the_per_ip_limit_with_http1_ones() {
    let g = h2_gateway("  limits: {max_connections_per_ip: 3}\n", "");
    runtime().block_on(async {
        // Two HTTP/2 connections and one HTTP/1 over TLS: the peer's three slots.
        let mut a = g.h2_client().await.expect("first h2 connection");
        let mut b = g.h2_client().await.expect("second h2 connection");
        assert_eq!(h2_get(&mut a, "/health", &[]).await.expect("a"), 200);
        assert_eq!(h2_get(&mut b, "/health", &[]).await.expect("b"), 200);
        let mut h1 = g.connect("http/1.1").await;
        h1.write_all(b"GET /health HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .expect("h1 request");
        let mut buf = vec![0u8; 4096];
        let n = h1.read(&mut buf).await.expect("h1 answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);

        // A fourth, over HTTP/2: refused before any request is served, and counted.
        let before = g.refused("per_ip");
        let fourth = async {
            let mut c = g.h2_client().await?;
            h2_get(&mut c, "/health", &[]).await
        };
        assert!(fourth.await.is_err(), "a fourth connection was served");
        eventually(Duration::from_secs(5), "the refusal counted", || {
            g.refused("per_ip") == before + 1.0
        });
        // ... and over HTTP/1 (TLS) too.
        let mut h1b = g.connect("http/1.1").await;
        let _ = h1b
            .write_all(b"GET /health HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await;
        let n = h1b.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "refused HTTP/1 connection answered");
        eventually(Duration::from_secs(5), "both refusals counted", || {
            g.refused("per_ip") == before + 2.0
        });

        // An HTTP/2 connection's slot is given back when it closes.
        drop(a);
        eventually(Duration::from_secs(10), "a slot freed", || {
            g.gw.metric("gatehouse_connections_active", &[]) <= 2.0
        });
        let mut c = g.h2_client().await.expect("a new h2 connection");
        assert_eq!(h2_get(&mut c, "/health", &[]).await.expect("c"), 200);
        assert_eq!(h2_get(&mut b, "/health", &[]).await.expect("b again"), 200);
    });
}

#[test]
fn streams_beyond_max_concurrent_streams_are_refused() {
    let (up, g) = hang_gateway("  http2: {max_concurrent_streams: 2}\n", "");
    runtime().block_on(async {
        let mut raw = Raw::open(&g).await;
        assert_eq!(raw.setting(0x3), Some(2), "SETTINGS_MAX_CONCURRENT_STREAMS");
        // Wait for the server to have our ACK before opening streams past the limit.
        raw.send(&frame(PING, 0, 0, &[1; 8])).await;
        raw.until(|f| f.kind == PING && f.flags & ACK != 0)
            .await
            .expect("PING ack");
        for id in [1u32, 3, 5] {
            let block = request_block("/slow/x", &[]);
            assert!(
                raw.send(&frame(HEADERS, END_STREAM | END_HEADERS, id, &block))
                    .await
            );
        }
        let reset = raw
            .until(|f| f.kind == RST_STREAM)
            .await
            .expect("a stream refused");
        assert_eq!(reset.stream, 5, "{reset:?}");
        assert_eq!(reset.error_code(), Some(REFUSED_STREAM));
        eventually(Duration::from_secs(5), "two requests upstream", || {
            up.requests().len() == 2
        });
        assert_eq!(up.requests().len(), 2);
    });
}

#[test]
fn an_oversized_header_list_is_answered_431_and_never_proxied() {
    let up = FakeUpstream::start(Behavior::Echo);
    let g = h2_gateway(
        "  http2: {max_header_list_size: 4KiB}\n",
        &format!(
            "upstreams:\n{}\nroutes:\n  - {{prefix: /api, upstream: svc}}\n",
            upstream("svc", &[up.url()], "")
        ),
    );
    runtime().block_on(async {
        let mut c = g.h2_client().await.expect("h2 connection");
        let big = "x".repeat(6 * 1024);
        match h2_get(&mut c, "/api/a", &[("x-big", big)]).await {
            Ok(status) => assert_eq!(status, 431),
            Err(e) => assert!(e.is_reset() || e.is_go_away(), "{e}"),
        }
        let mut c = g.h2_client().await.expect("h2 connection");
        assert_eq!(h2_get(&mut c, "/api/b", &[]).await.expect("small"), 200);
        let seen: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(seen, ["/api/b"]);
    });
}

#[test]
fn a_continuation_flood_ends_the_connection() {
    let up = FakeUpstream::start(Behavior::Echo);
    let g = h2_gateway(
        "",
        &format!(
            "upstreams:\n{}\nroutes:\n  - {{prefix: /api, upstream: svc}}\n",
            upstream("svc", &[up.url()], "")
        ),
    );
    runtime().block_on(async {
        let mut raw = Raw::open(&g).await;
        let block = request_block("/api/flood", &[]);
        assert!(raw.send(&frame(HEADERS, END_STREAM, 1, &block)).await);
        // A header block that never ends: 10,000 CONTINUATION frames of 1 KiB of header fields
        // (each a valid literal), 10 MiB in all, far past the header list bound.
        let mut piece = Vec::new();
        while piece.len() < 1024 {
            hpack_literal(
                &mut piece,
                "x-pad",
                "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy",
            );
        }
        let cont = frame(CONTINUATION, 0, 1, &piece);
        let mut sent = 0;
        while sent < 10_000 && raw.send(&cont).await {
            sent += 1;
        }
        // The header block is cut off with GOAWAY ENHANCE_YOUR_CALM (`h2` bounds the
        // CONTINUATION frames of one block by the header list size) and the rest is not read.
        let end = raw.until(|f| f.kind == GOAWAY).await;
        eprintln!("CONTINUATION flood: {sent} frames written; GOAWAY: {end:?}");
        let end = end.expect("GOAWAY before the connection closed");
        assert_eq!(end.error_code(), Some(ENHANCE_YOUR_CALM), "{end:?}");
        assert!(sent < 10_000, "the gateway read a 10 MiB header block");
        assert!(up.requests().is_empty(), "{:?}", up.requests());
        // The gateway still serves others.
        let mut c = g.h2_client().await.expect("h2 connection");
        assert_eq!(h2_get(&mut c, "/api/ok", &[]).await.expect("after"), 200);
    });
}

#[test]
fn rapid_reset_ends_the_connection_and_spares_the_upstream() {
    let (up, g) = hang_gateway("  http2: {max_pending_reset_streams: 20}\n", "");
    runtime().block_on(async {
        let mut raw = Raw::open(&g).await;
        let block = request_block("/slow/r", &[]);
        // Open and at once cancel 10,000 streams (CVE-2023-44487), not reading in between.
        let mut batch = Vec::new();
        let mut id = 1u32;
        let mut open = true;
        while id < 20_000 && open {
            batch.clear();
            for _ in 0..100 {
                batch.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
                batch.extend(frame(RST_STREAM, 0, id, &0x8u32.to_be_bytes()));
                id += 2;
            }
            open = raw.send(&batch).await;
        }
        let goaway = raw.until(|f| f.kind == GOAWAY).await;
        let goaway = goaway.expect("GOAWAY for rapid reset");
        assert_eq!(goaway.error_code(), Some(ENHANCE_YOUR_CALM), "{goaway:?}");
        let reached = up.requests().len();
        let last = goaway.last_stream_id();
        eprintln!("rapid reset: writes accepted to the end: {open}; GOAWAY: {goaway:?} (last stream {last:?}); upstream saw {reached}; streams sent {}", id / 2);
        // The server stopped taking streams long before the 10,000th (its last stream id
        // says which it took). Whether the client's writes fail is not asserted: with large
        // loopback socket buffers (tcp_rmem up to 32 MiB on some machines) all 10,000 can be
        // written before the close is seen.
        let last = last.expect("a last stream id");
        assert!(last < 2_000, "streams up to {last} were taken on one connection");
        // Cancelled requests do not reach the upstream by the thousand.
        assert!(reached < 50, "{reached} cancelled requests reached the upstream");
        let mut c = g.h2_client().await.expect("h2 connection");
        assert_eq!(h2_get(&mut c, "/health", &[]).await.expect("after"), 200);
    });
}

#[test]
fn settings_and_ping_floods_are_answered_in_step_and_bounded() {
    let g = h2_gateway("", "");
    runtime().block_on(async {
        // A client that floods PING and SETTINGS and never reads: the server answers each before
        // reading the next frame, so once its socket buffer is full it stops reading (no queue
        // grows) and the flooder's writes stall.
        let mut raw = Raw::open(&g).await;
        let mut flood = Vec::new();
        for i in 0..1000u64 {
            flood.extend(frame(PING, 0, 0, &i.to_be_bytes()));
            flood.extend(frame(SETTINGS, 0, 0, &[0, 0x4, 0, 0, 0xff, 0xff]));
        }
        let mut rounds = 0;
        let stalled = loop {
            match tokio::time::timeout(Duration::from_secs(3), raw.send(&flood)).await {
                Err(_) => break true,
                Ok(false) => break false,
                Ok(true) if rounds >= 2_000 => break false,
                Ok(true) => rounds += 1,
            }
        };
        // 2,000 rounds is 4 million frames: a server that queued answers instead of pushing back
        // would hold hundreds of MiB; it must have pushed back (or closed) well before.
        eprintln!("PING/SETTINGS flood: stalled {stalled} after {rounds} rounds of 2000 frames");
        assert!(
            stalled || rounds < 2_000,
            "the gateway read {rounds} rounds of flood without pushing back"
        );
        // Others are served throughout.
        let mut c = g.h2_client().await.expect("h2 connection");
        assert_eq!(h2_get(&mut c, "/health", &[]).await.expect("during"), 200);
        // The flooder, once it reads, finds its answers in order: PING acks echo the payloads.
        let mut fresh = Raw::open(&g).await;
        for i in 0..3u64 {
            fresh.send(&frame(PING, 0, 0, &i.to_be_bytes())).await;
        }
        for i in 0..3u64 {
            let ack = fresh
                .until(|f| f.kind == PING && f.flags & ACK != 0)
                .await
                .expect("PING ack");
            assert_eq!(ack.payload, i.to_be_bytes());
        }
    });
}

#[test]
fn route_in_flight_limits_hold_for_http2_streams() {
    let (up, g) = hang_gateway("", ", max_in_flight: 2");
    runtime().block_on(async {
        let send = g.h2_client().await.expect("h2 connection");
        // Two requests hang upstream and hold the route's slots.
        let mut held = Vec::new();
        for i in 0..2 {
            let mut s = send.clone();
            held.push(tokio::spawn(async move {
                let _ = h2_get(&mut s, &format!("/slow/{i}"), &[]).await;
            }));
        }
        eventually(Duration::from_secs(5), "two requests upstream", || {
            up.requests().len() == 2
        });
        // A third on the same connection, and one on another: refused by the route's limit.
        let mut s = send.clone();
        assert_eq!(h2_get(&mut s, "/slow/2", &[]).await.expect("third"), 503);
        let mut other = g.h2_client().await.expect("second connection");
        assert_eq!(
            h2_get(&mut other, "/slow/3", &[]).await.expect("fourth"),
            503
        );
        assert_eq!(up.requests().len(), 2);
        for h in held {
            h.abort();
        }
        let _ = DATA;
    });
}

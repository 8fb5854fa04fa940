//! The native HTTP/1 lane (`server.native_http1`, src/proxy/native.rs): which requests it
//! serves, what crosses it in both directions, connections shared with Pingora's lane, and
//! its answers when upstreams fail. The proxy suites (forwarding, resilience, timeouts,
//! upstreams, identity, edge policies, hygiene …) run a second time with the lane on
//! (`GATEHOUSE_TEST_NATIVE_HTTP1=1` in scripts/test.sh); these tests are the lane's own.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

const NATIVE: &str = "  native_http1: true\n";

/// An Echo upstream behind `/api`, with the lane on or off.
fn echo_gateway(native: bool) -> (FakeUpstream, Gw) {
    let up = FakeUpstream::start(Behavior::Echo);
    let gw = Gw::start_with_server(
        if native {
            NATIVE
        } else {
            "  native_http1: false\n"
        },
        &format!(
            "upstreams:\n{}\nroutes:\n  - {{prefix: /api, upstream: api}}\n",
            upstream("api", &[up.url()], "")
        ),
    );
    (up, gw)
}

/// `gatehouse_native_requests_total` on the admin listener.
fn native_count(gw: &Gw) -> f64 {
    let r = get(gw.admin_port, "/metrics", &[]).expect("GET admin /metrics");
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_native_requests_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn echoed_target(r: &Response) -> String {
    json(r)["target"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_native_lane_serves_plain_proxy_requests_with_the_gateways_headers() {
    let (up, gw) = echo_gateway(true);
    let r = gw.get_with(
        "/api/x/../y?q=1",
        &[
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-User-Id", "spoofed"),
            ("Authorization", "Bearer from-the-client"),
            ("Connection", "close, X-Drop-Me"),
            ("X-Drop-Me", "hop-by-hop"),
            ("X-Keep-Me", "end-to-end"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(native_count(&gw), 1.0, "the lane did not serve it");
    let seen = &up.requests()[0];
    assert_eq!(seen.target, "/api/y?q=1", "normalised path, query kept");
    let one = |name: &str| {
        let all = seen.header_all(name);
        assert_eq!(all.len(), 1, "{name}: {all:?} in {:?}", seen.headers);
        all[0].to_string()
    };
    assert_eq!(one("x-forwarded-for"), "203.0.113.9, 127.0.0.1");
    assert_eq!(
        one("x-real-ip"),
        "127.0.0.1",
        "the client is not a trusted proxy"
    );
    assert_eq!(one("x-forwarded-proto"), "http");
    assert_eq!(one("x-forwarded-host"), "localhost");
    assert_eq!(one("host"), "localhost");
    assert_eq!(one("x-keep-me"), "end-to-end");
    let id = r.header("x-request-id").expect("x-request-id answered");
    assert_eq!(one("x-request-id"), id, "the same id both ways");
    // Identity headers (Authorization included) come only from the gateway.
    for gone in ["x-user-id", "authorization", "x-drop-me", "connection"] {
        assert!(
            seen.header_all(gone).is_empty(),
            "{gone} reached the upstream"
        );
    }
    assert!(r.header("date").is_some(), "no Date");
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn with_the_lane_off_pingora_serves_every_request() {
    let (up, gw) = echo_gateway(false);
    let r = gw.get("/api/x");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.request_count(), 1);
    assert_eq!(native_count(&gw), 0.0);
}

#[test]
fn requests_the_lane_does_not_take_are_served_by_pingora() {
    let (up, gw) = echo_gateway(true);
    // A body, the health endpoint, an unknown path, an upgrade, a chunked body, HTTP/1.0:
    // all Pingora's.
    let posted = request(gw.port, "POST", "/api/form", &[], b"hello").expect("POST");
    assert_eq!(posted.status, 200, "{}", posted.text());
    assert_eq!(json(&posted)["body_len"], 5);
    let health = gw.get("/health");
    assert_eq!(health.status, 200);
    let missing = gw.get("/nowhere");
    assert_eq!(missing.status, 404);
    assert_eq!(json(&missing)["error"]["code"], "not_found");
    let upgrade = gw.get_with(
        "/api/ws",
        &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
    );
    assert_ne!(
        upgrade.status, 101,
        "no upgrade on a route without websocket"
    );
    let chunked = request(
        gw.port,
        "POST",
        "/api/chunked",
        &[("Transfer-Encoding", "chunked")],
        b"5\r\nhello\r\n0\r\n\r\n",
    )
    .expect("chunked POST");
    assert_eq!(chunked.status, 200, "{}", chunked.text());
    assert_eq!(json(&chunked)["body_len"], 5);
    let http10 = raw_request(gw.port, b"GET /api/old HTTP/1.0\r\n\r\n").expect("HTTP/1.0");
    assert_eq!(http10.status, 200, "{}", http10.text());
    assert_eq!(native_count(&gw), 0.0, "the lane took one of them");
    assert_eq!(up.request_count(), 4);
}

#[test]
fn one_keep_alive_connection_carries_requests_of_both_lanes_and_pipelined_ones() {
    let (up, gw) = echo_gateway(true);
    let mut c = Conn::open(gw.port).expect("connect");
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");

    c.send(get("/api/a").as_bytes()).unwrap();
    let a = c.read_response(false).expect("a");
    assert_eq!((a.status, echoed_target(&a)), (200, "/api/a".into()));
    assert_eq!(a.header("connection"), Some("keep-alive"));

    c.send(b"POST /api/b HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap();
    let b = c.read_response(false).expect("b (Pingora's lane)");
    assert_eq!((b.status, echoed_target(&b)), (200, "/api/b".into()));
    assert_eq!(json(&b)["body_len"], 3);

    c.send(get("/health").as_bytes()).unwrap();
    assert_eq!(c.read_response(false).expect("health").status, 200);

    // Two requests in one write: both answered, in order.
    c.send(format!("{}{}", get("/api/c"), get("/api/d")).as_bytes())
        .unwrap();
    let first = c.read_response(false).expect("c");
    let second = c.read_response(false).expect("d");
    assert_eq!(echoed_target(&first), "/api/c");
    assert_eq!(echoed_target(&second), "/api/d");

    c.send(get("/api/e").as_bytes()).unwrap();
    assert_eq!(echoed_target(&c.read_response(false).expect("e")), "/api/e");
    assert_eq!(native_count(&gw), 4.0, "a, c, d and e");
    assert_eq!(up.request_count(), 5);
    // The upstream connection is reused by the lane.
    assert!(
        up.connection_count() <= 2,
        "{} upstream connections for 5 requests",
        up.connection_count()
    );
}

/// An upstream that answers `/chunked` chunked (with a trailer) and `/close` with a body
/// delimited by closing the connection, both as written here.
fn framing_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the framing upstream");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten().take(16) {
            std::thread::spawn(move || serve_framing(conn));
        }
    });
    port
}

fn serve_framing(mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end + 4);
        let head_only = head.starts_with("HEAD ");
        if head.contains(" /api/chunked") {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nX-Request-Id: upstreams-own\r\n\r\n".to_vec();
            if !head_only {
                out.extend_from_slice(
                    b"6\r\nhello \r\n6\r\nchunky\r\n1;ext=1\r\n!\r\n0\r\nx-trailer: t\r\n\r\n",
                );
            }
            if conn.write_all(&out).is_err() {
                return;
            }
        } else if head.contains(" /api/many") {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n".to_vec();
            for i in 0..100 {
                out.extend_from_slice(format!("X-H-{i}: {i}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\nmany");
            if conn.write_all(&out).is_err() {
                return;
            }
        } else if head.contains(" /api/garbage") {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\nbody");
            return;
        } else {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nuntil the end");
            return;
        }
    }
}

#[test]
fn chunked_and_close_delimited_answers_are_relayed_whole() {
    let port = framing_upstream();
    let gw = Gw::start_with_server(
        NATIVE,
        &format!(
            "upstreams:\n{}\nroutes:\n  - {{prefix: /api, upstream: raw}}\n",
            upstream("raw", &[format!("http://127.0.0.1:{port}")], "")
        ),
    );
    let mut c = Conn::open(gw.port).expect("connect");
    for _ in 0..2 {
        c.send(b"GET /api/chunked HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let r = c.read_response(false).expect("chunked answer");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello chunky!");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        let id = r.header_all("x-request-id");
        assert_eq!(id.len(), 1, "{id:?}");
        assert_ne!(
            id[0], "upstreams-own",
            "the gateway's request id replaces it"
        );
    }
    c.send(b"HEAD /api/chunked HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let head = c.read_response(true).expect("HEAD answer");
    assert_eq!((head.status, head.body.len()), (200, 0));
    c.send(b"GET /api/close HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let r = c.read_response(false).expect("close-delimited answer");
    assert_eq!(r.text(), "until the end");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed_by_peer(Duration::from_secs(5)));
    // More headers than a request may have here (64) are fine in an answer.
    let many = gw.get("/api/many");
    assert_eq!((many.status, many.text().as_str()), (200, "many"));
    assert_eq!(many.header("x-h-99"), Some("99"));
    // A head the gateway cannot read is the upstream's failure: 502, nothing of it passed on.
    let bad = gw.get("/api/garbage");
    assert_eq!(bad.status, 502, "{}", bad.text());
    assert_eq!(json(&bad)["error"]["code"], "upstream_error");
    assert_eq!(native_count(&gw), 6.0);
}

#[test]
fn upstream_failures_get_the_gateways_error_answer_and_close_the_connection() {
    let dead = free_port(); // nothing listens there
    let gw = Gw::start_with_server(
        NATIVE,
        &format!(
            "upstreams:\n{}\nroutes:\n  - {{prefix: /api, upstream: dead, retry: {{retries: 0}}}}\n",
            upstream("dead", &[format!("http://127.0.0.1:{dead}")], "")
        ),
    );
    let mut c = Conn::open(gw.port).expect("connect");
    c.send(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let r = c.read_response(false).expect("answer");
    assert_eq!(r.status, 502, "{}", r.text());
    let body = json(&r);
    assert_eq!(body["error"]["code"], "upstream_error");
    assert_eq!(
        body["error"]["request_id"].as_str(),
        r.header("x-request-id"),
        "the error names the request"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed_by_peer(Duration::from_secs(5)));
    assert_eq!(native_count(&gw), 1.0);
    assert_eq!(
        metric(
            gw.admin_port,
            "gatehouse_upstream_requests_total",
            "outcome",
            "connect_error"
        ),
        1.0
    );
    assert_eq!(
        metric(gw.admin_port, "gatehouse_requests_total", "status", "502"),
        1.0
    );
}

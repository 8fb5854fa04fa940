//! Edge hygiene nginx applies by default, checked through the real gateway with raw bytes:
//! Host on HTTP/1.1, Content-Length with Transfer-Encoding, TRACE, header and body size
//! limits, the header deadline (slowloris), idle keep-alive and fresh idle connections.

mod common;
use common::*;
use std::time::{Duration, Instant};

/// Targets the upstream has received so far.
fn targets(up: &FakeUpstream) -> Vec<String> {
    up.requests().into_iter().map(|r| r.target).collect()
}

/// Sends a plain request that must be proxied: proves the gateway and upstream are alive
/// and that everything sent earlier has been processed by the time it returns.
fn barrier(gw: &Gw, path: &str) {
    let r = gw.get(path);
    assert_eq!(r.status, 200, "barrier request {path}: {}", r.text());
}

/// How a connection ended, as seen by the client within a bounded wait.
#[derive(Debug, PartialEq)]
enum Ending {
    /// A complete response arrived.
    Status(u16),
    /// The peer closed (EOF or reset) without a complete response.
    Closed,
    /// Nothing happened within the wait.
    StillOpen,
}

fn ending(conn: &mut Conn, wait: Duration) -> Ending {
    match conn.read_response_timeout(false, wait) {
        Ok(r) => Ending::Status(r.status),
        Err(e) if e.starts_with("timed out") => Ending::StillOpen,
        Err(_) => Ending::Closed,
    }
}

/// A complete GET head of exactly `len` bytes (padding in `X-Pad`).
fn head_of_len(path: &str, len: usize) -> Vec<u8> {
    let start = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Pad: ");
    let end = "\r\n\r\n";
    let pad = len
        .checked_sub(start.len() + end.len())
        .expect("length too small for the fixed part of the head");
    format!("{start}{}{end}", "p".repeat(pad)).into_bytes()
}

// ---------------------------------------------------------------------------------------
// Host
// ---------------------------------------------------------------------------------------

#[test]
fn http11_request_without_host_is_400_with_json_error() {
    let (up, gw) = echo_gateway("", "");
    let r = raw_request(gw.port, b"GET /api/x HTTP/1.1\r\nConnection: close\r\n\r\n")
        .expect("response to a Host-less HTTP/1.1 request");
    assert_json_error(&r, 400, "bad_request", "");
    barrier(&gw, "/api/after");
    assert_eq!(
        targets(&up),
        ["/api/after"],
        "the Host-less request reached the upstream"
    );
}

#[test]
fn http10_request_without_host_is_proxied() {
    let (up, gw) = echo_gateway("", "");
    let r = raw_request(gw.port, b"GET /api/old HTTP/1.0\r\n\r\n").expect("HTTP/1.0 response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(targets(&up), ["/api/old"]);
}

// ---------------------------------------------------------------------------------------
// Content-Length + Transfer-Encoding (request smuggling)
// ---------------------------------------------------------------------------------------

#[test]
fn content_length_with_transfer_encoding_is_400_and_never_reaches_upstream() {
    let (up, gw) = echo_gateway("", "");
    let variants: [&[u8]; 2] = [
        b"POST /api/smuggle-1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /api/smuggle-2 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    for bytes in variants {
        let r = raw_request(gw.port, bytes).expect("response to CL+TE request");
        assert_json_error(&r, 400, "bad_request", "");
    }
    barrier(&gw, "/api/after");
    assert_eq!(
        targets(&up),
        ["/api/after"],
        "a CL+TE request reached the upstream"
    );
}

#[test]
fn chunked_request_without_content_length_is_proxied_with_its_body() {
    let (up, gw) = echo_gateway("", "");
    let r = raw_request(
        gw.port,
        b"POST /api/chunked HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body, b"hello");
}

// ---------------------------------------------------------------------------------------
// TRACE
// ---------------------------------------------------------------------------------------

#[test]
fn trace_is_405_even_on_a_route_allowing_any_method() {
    let (up, gw) = echo_gateway("", "");
    let r = raw_request(
        gw.port,
        b"TRACE /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .expect("response to TRACE");
    assert_json_error(&r, 405, "method_not_allowed", "");
    // The same route takes other methods (it really allows "any").
    let r = request(gw.port, "DELETE", "/api/x", &[], b"").expect("DELETE");
    assert_eq!(r.status, 200, "{}", r.text());
    let methods: Vec<String> = up.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["DELETE"], "TRACE reached the upstream");
}

// ---------------------------------------------------------------------------------------
// Header size
// ---------------------------------------------------------------------------------------

const HEADER_LIMIT_4K: &str = "  limits:\n    max_header_bytes: 4KiB\n";

#[test]
fn header_block_over_max_header_bytes_is_431() {
    let (up, gw) = echo_gateway(HEADER_LIMIT_4K, "");
    let big = "b".repeat(6 * 1024);
    let r = get(gw.port, "/api/big", &[("X-Big", &big)]).expect("response to a 6 KiB header");
    assert_json_error(&r, 431, "headers_too_large", "");
    barrier(&gw, "/api/after");
    assert_eq!(
        targets(&up),
        ["/api/after"],
        "the oversized head reached the upstream"
    );
}

#[test]
fn header_block_just_under_max_header_bytes_is_proxied() {
    let (up, gw) = echo_gateway(HEADER_LIMIT_4K, "");
    let r = raw_request(gw.port, &head_of_len("/api/under", 4096 - 64)).expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(targets(&up), ["/api/under"]);
}

#[test]
fn header_block_of_exactly_max_header_bytes_passes_and_one_byte_more_is_431() {
    let (up, gw) = echo_gateway(HEADER_LIMIT_4K, "");
    let r = raw_request(gw.port, &head_of_len("/api/exact", 4096)).expect("response");
    assert_eq!(r.status, 200, "a head of exactly the limit: {}", r.text());
    let r = raw_request(gw.port, &head_of_len("/api/over", 4097)).expect("response");
    assert_json_error(&r, 431, "headers_too_large", "");
    assert_eq!(targets(&up), ["/api/exact"]);
}

// ---------------------------------------------------------------------------------------
// Body size
// ---------------------------------------------------------------------------------------

const BODY_LIMIT_1K: &str = "  limits:\n    max_body_bytes: 1KiB\n";

#[test]
fn content_length_over_global_max_body_bytes_is_413() {
    let (up, gw) = echo_gateway(BODY_LIMIT_1K, "");
    let body = vec![b'x'; 2048];
    let r = request(gw.port, "POST", "/api/upload", &[], &body).expect("response");
    assert_json_error(&r, 413, "payload_too_large", "");
    // At the limit is fine.
    let r = request(gw.port, "POST", "/api/ok", &[], &body[..1024]).expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1, "the oversized request reached the upstream");
    assert_eq!(
        (reqs[0].target.as_str(), reqs[0].body.len()),
        ("/api/ok", 1024)
    );
}

#[test]
fn route_max_body_bytes_below_the_global_limit_is_413_on_that_route_only() {
    let (up, gw) = echo_gateway(
        "",
        "  - {prefix: /small, upstream: api, max_body_bytes: 100B}\n",
    );
    let body = vec![b'x'; 200];
    let r = request(gw.port, "POST", "/small/upload", &[], &body).expect("response");
    assert_json_error(&r, 413, "payload_too_large", "");
    // The same body is fine on a route under the (default, 10 MiB) global limit.
    let r = request(gw.port, "POST", "/api/upload", &[], &body).expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(targets(&up), ["/api/upload"]);
}

#[test]
fn chunked_body_under_the_limit_is_forwarded_whole() {
    let (up, gw) = echo_gateway(BODY_LIMIT_1K, "");
    let mut bytes = b"POST /api/chunks HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        bytes.extend_from_slice(b"100\r\n"); // 256 bytes per chunk, 1 KiB in total
        bytes.extend_from_slice(&[b'c'; 256]);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    let r = raw_request(gw.port, &bytes).expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body.len(), 1024);
}

#[test]
fn chunked_body_growing_past_the_limit_is_refused_and_not_forwarded_whole() {
    let (up, gw) = echo_gateway(BODY_LIMIT_1K, "");
    let mut conn = Conn::open(gw.port).expect("connect");
    conn.send(b"POST /api/grow HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .expect("send head");
    // 64 chunks of 1 KiB (64 KiB against a 1 KiB limit); stop once the gateway stops reading.
    let mut chunk = b"400\r\n".to_vec();
    chunk.extend_from_slice(&[b'g'; 1024]);
    chunk.extend_from_slice(b"\r\n");
    let mut sent_all = true;
    for _ in 0..64 {
        if conn.send(&chunk).is_err() {
            sent_all = false;
            break;
        }
    }
    if sent_all {
        sent_all = conn.send(b"0\r\n\r\n").is_ok();
    }
    let outcome = ending(&mut conn, Duration::from_secs(5));
    eprintln!("oversized chunked body: client sent everything: {sent_all}; outcome: {outcome:?}");
    assert!(
        matches!(outcome, Ending::Status(413) | Ending::Closed),
        "expected 413 or a closed connection, got {outcome:?}"
    );
    barrier(&gw, "/api/after");
    let reqs = up.requests();
    assert!(
        reqs.iter().all(|r| r.body.len() <= 1024),
        "the upstream received an oversized body: {:?}",
        reqs.iter()
            .map(|r| (&r.target, r.body.len()))
            .collect::<Vec<_>>()
    );
    assert!(
        !reqs.iter().any(|r| r.target == "/api/grow"),
        "the oversized request was forwarded whole"
    );
}

// ---------------------------------------------------------------------------------------
// Header deadline (slowloris)
// ---------------------------------------------------------------------------------------

const HEADER_TIMEOUT_1S: &str = "  limits:\n    header_timeout: 1s\n";

#[test]
fn incomplete_head_gets_408_or_close_at_the_header_deadline() {
    let (up, gw) = echo_gateway(HEADER_TIMEOUT_1S, "");
    let mut conn = Conn::open(gw.port).expect("connect");
    conn.send(b"GET /api/slow HTTP/1.1\r\nHost: x\r\n")
        .expect("send partial head");
    let outcome = ending(&mut conn, Duration::from_secs(5));
    eprintln!("incomplete head: {outcome:?}");
    assert!(
        matches!(outcome, Ending::Status(408) | Ending::Closed),
        "the partial head was not cut off within 5 s (deadline 1 s): {outcome:?}"
    );
    assert_eq!(up.request_count(), 0);
}

#[test]
fn head_trickled_one_line_at_a_time_is_cut_off_by_the_total_header_deadline() {
    let (up, gw) = echo_gateway(HEADER_TIMEOUT_1S, "");
    let start = Instant::now();
    let mut conn = Conn::open(gw.port).expect("connect");
    conn.send(b"GET /api/trickle HTTP/1.1\r\nHost: x\r\n")
        .expect("send request line");
    // One header line every 300 ms, far longer than the 5 s bound if never cut off.
    let mut outcome = Ending::StillOpen;
    for i in 0..40 {
        if conn
            .send(format!("X-Trickle-{i}: 1\r\n").as_bytes())
            .is_err()
        {
            outcome = Ending::Closed;
            break;
        }
        outcome = ending(&mut conn, Duration::from_millis(300));
        if outcome != Ending::StillOpen {
            break;
        }
    }
    let elapsed = start.elapsed();
    eprintln!("trickled head: {outcome:?} after {elapsed:?}");
    assert!(
        matches!(outcome, Ending::Status(408) | Ending::Closed),
        "a trickled head was never cut off: {outcome:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "cut off only after {elapsed:?}, deadline 1 s"
    );
    assert_eq!(up.request_count(), 0);
}

#[test]
fn fresh_connection_that_sends_nothing_is_closed_silently_after_header_timeout() {
    let (_up, gw) = echo_gateway(HEADER_TIMEOUT_1S, "");
    let mut conn = Conn::open(gw.port).expect("connect");
    assert!(
        conn.is_closed_by_peer(Duration::from_secs(5)),
        "an idle fresh connection was kept open past 5 s (header_timeout 1 s)"
    );
    let after = conn.read_response_timeout(false, Duration::from_secs(1));
    assert!(after.is_err(), "expected no response, got {after:?}");
}

// ---------------------------------------------------------------------------------------
// Keep-alive
// ---------------------------------------------------------------------------------------

fn keepalive_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

#[test]
fn two_requests_on_one_keepalive_connection_are_both_answered() {
    let (up, gw) = echo_gateway("", "");
    let mut conn = Conn::open(gw.port).expect("connect");
    for path in ["/api/one", "/api/two"] {
        conn.send(&keepalive_get(path)).expect("send");
        let r = conn
            .read_response(false)
            .expect("response on the kept-alive connection");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    assert_eq!(targets(&up), ["/api/one", "/api/two"]);
}

#[test]
fn without_a_write_buffer_keepalive_answers_are_whole_and_in_order() {
    let (up, gw) = echo_gateway("  limits:\n    write_buffer: 0B\n", "");
    let mut conn = Conn::open(gw.port).expect("connect");
    for i in 0..5 {
        let path = format!("/api/n{i}");
        conn.send(&keepalive_get(&path)).expect("send");
        let r = conn
            .read_response(false)
            .expect("response on the kept-alive connection");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(r.text().contains(&path), "answer to {path}: {}", r.text());
    }
    assert_eq!(up.request_count(), 5);
}

// Pipelining (RFC 9112 §9.3.2): requests without a body that arrive behind another one are
// answered in order on the same connection (src/edge/listener.rs, `split_pipelined`).
#[test]
fn pipelined_requests_on_one_connection_are_both_answered() {
    let (up, gw) = echo_gateway("", "");
    let mut conn = Conn::open(gw.port).expect("connect");
    conn.send(&[keepalive_get("/api/p1"), keepalive_get("/api/p2")].concat())
        .expect("send both");
    for path in ["/api/p1", "/api/p2"] {
        let r = conn
            .read_response_timeout(false, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("response to pipelined {path}: {e}"));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(r.text().contains(path), "answer to {path}: {}", r.text());
    }
    assert_eq!(targets(&up), ["/api/p1", "/api/p2"]);
}

#[test]
fn a_pipelined_burst_and_a_head_split_across_writes_are_answered_in_order() {
    let (up, gw) = echo_gateway("", "");
    let mut conn = Conn::open(gw.port).expect("connect");
    // Three whole requests and the start of a fourth in one write; the fourth's end later.
    let mut burst = [
        keepalive_get("/api/b1"),
        keepalive_get("/api/b2"),
        keepalive_get("/api/b3"),
    ]
    .concat();
    burst.extend_from_slice(b"GET /api/b4 HTTP/1.1\r\nHost: loc");
    conn.send(&burst).expect("send burst");
    for path in ["/api/b1", "/api/b2", "/api/b3"] {
        let r = conn
            .read_response_timeout(false, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("response to pipelined {path}: {e}"));
        assert!(r.text().contains(path), "answer to {path}: {}", r.text());
    }
    conn.send(b"alhost\r\n\r\n").expect("send the rest");
    let r = conn
        .read_response_timeout(false, Duration::from_secs(5))
        .expect("response to the split head");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("/api/b4"), "{}", r.text());
    assert_eq!(targets(&up), ["/api/b1", "/api/b2", "/api/b3", "/api/b4"]);
}

#[test]
fn bytes_after_a_request_with_a_body_are_never_read_as_another_request() {
    // Behind a body (Content-Length or chunked) nothing is split off: the body goes to the
    // upstream whole, and what follows it closes the connection after the answer instead of
    // being taken for a request (the client may retry it on a new connection).
    for (name, first) in [
        (
            "content-length",
            "POST /api/p1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "chunked",
            "POST /api/p1 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ] {
        let (up, gw) = echo_gateway("", "");
        let mut conn = Conn::open(gw.port).expect("connect");
        let mut bytes = first.as_bytes().to_vec();
        bytes.extend_from_slice(&keepalive_get("/api/smuggled"));
        conn.send(&bytes).expect("send");
        let r = conn
            .read_response_timeout(false, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{name}: response to the POST: {e}"));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let seen = up.requests();
        assert_eq!(seen.len(), 1, "{name}: upstream saw {:?}", targets(&up));
        assert_eq!(seen[0].target, "/api/p1", "{name}");
        assert_eq!(seen[0].body, b"hello", "{name}: the body arrives whole");
        assert!(
            conn.is_closed_by_peer(Duration::from_secs(5)),
            "{name}: the connection stays open after bytes that followed a body"
        );
        assert_eq!(targets(&up), ["/api/p1"], "{name}");
    }
}

#[test]
fn idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let (_up, gw) = echo_gateway("  limits:\n    keepalive_timeout: 1s\n", "");
    let mut conn = Conn::open(gw.port).expect("connect");
    conn.send(&keepalive_get("/api/x")).expect("send");
    let r = conn.read_response(false).expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(
        r.header("connection"),
        Some("close"),
        "not kept alive at all"
    );
    assert!(
        conn.is_closed_by_peer(Duration::from_secs(5)),
        "idle keep-alive connection still open after 5 s (keepalive_timeout 1 s)"
    );
}

#[test]
fn idle_keepalive_connection_stays_open_under_the_default_timeout() {
    let (up, gw) = echo_gateway("", "");
    let mut conn = Conn::open(gw.port).expect("connect");
    conn.send(&keepalive_get("/api/first")).expect("send");
    let r = conn.read_response(false).expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !conn.is_closed_by_peer(Duration::from_millis(1500)),
        "closed within 1.5 s although keepalive_timeout defaults to 60 s"
    );
    conn.send(&keepalive_get("/api/second"))
        .expect("send again");
    let r = conn.read_response(false).expect("second response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(targets(&up), ["/api/first", "/api/second"]);
}

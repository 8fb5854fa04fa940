//! What the upstream is told about the client and what crosses the proxy: X-Forwarded-*,
//! X-Real-IP (through trusted proxies only), X-Request-Id, hop-by-hop headers in both
//! directions, and the query string.

mod common;
use common::*;

fn is_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// ---------------------------------------------------------------------------------------
// X-Forwarded-For
// ---------------------------------------------------------------------------------------

#[test]
fn x_forwarded_for_keeps_the_clients_value_and_appends_the_peer() {
    let (up, gw) = echo_gateway("", "");
    let (_, req) = forwarded(&gw, &up, "/api/x", &[("X-Forwarded-For", "1.2.3.4")]);
    assert_eq!(one(&req.headers, "x-forwarded-for"), "1.2.3.4, 127.0.0.1");
}

#[test]
fn x_forwarded_for_is_the_peer_when_the_client_sends_none() {
    let (up, gw) = echo_gateway("", "");
    let (_, req) = forwarded(&gw, &up, "/api/x", &[]);
    assert_eq!(one(&req.headers, "x-forwarded-for"), "127.0.0.1");
}

#[test]
fn x_forwarded_for_joins_several_client_header_lines_in_order() {
    let (up, gw) = echo_gateway("", "");
    let (_, req) = forwarded(
        &gw,
        &up,
        "/api/x",
        &[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-For", "5.6.7.8"),
        ],
    );
    assert_eq!(
        one(&req.headers, "x-forwarded-for"),
        "1.2.3.4, 5.6.7.8, 127.0.0.1"
    );
}

// ---------------------------------------------------------------------------------------
// Client IP (X-Real-IP)
// ---------------------------------------------------------------------------------------

#[test]
fn client_ip_comes_from_x_forwarded_for_when_the_peer_is_a_trusted_proxy() {
    let (up, gw) = echo_gateway(TRUST_LOCALHOST, "");
    let (_, req) = forwarded(&gw, &up, "/api/x", &[("X-Forwarded-For", "203.0.113.7")]);
    assert_eq!(one(&req.headers, "x-real-ip"), "203.0.113.7");
    assert_eq!(
        one(&req.headers, "x-forwarded-for"),
        "203.0.113.7, 127.0.0.1"
    );
}

#[test]
fn client_ip_is_the_peer_when_no_proxy_is_trusted() {
    let (up, gw) = echo_gateway("", "");
    let (_, req) = forwarded(&gw, &up, "/api/x", &[("X-Forwarded-For", "203.0.113.7")]);
    assert_eq!(one(&req.headers, "x-real-ip"), "127.0.0.1");
}

#[test]
fn client_ip_is_the_rightmost_untrusted_address_so_a_spoofed_left_entry_is_ignored() {
    let (up, gw) = echo_gateway(TRUST_LOCALHOST, "");
    let (_, req) = forwarded(
        &gw,
        &up,
        "/api/x",
        &[("X-Forwarded-For", "6.6.6.6, 203.0.113.7")],
    );
    assert_eq!(one(&req.headers, "x-real-ip"), "203.0.113.7");
}

#[test]
fn client_sent_x_real_ip_is_replaced() {
    let (up, gw) = echo_gateway("", "");
    let (_, req) = forwarded(&gw, &up, "/api/x", &[("X-Real-IP", "9.9.9.9")]);
    assert_eq!(one(&req.headers, "x-real-ip"), "127.0.0.1");
}

// ---------------------------------------------------------------------------------------
// X-Forwarded-Proto / -Host
// ---------------------------------------------------------------------------------------

#[test]
fn x_forwarded_proto_is_http_and_x_forwarded_host_is_the_original_host() {
    let (up, gw) = echo_gateway("", "");
    let (_, req) = forwarded(&gw, &up, "/api/x", &[("Host", "shop.example.test:8080")]);
    assert_eq!(one(&req.headers, "x-forwarded-proto"), "http");
    assert_eq!(
        one(&req.headers, "x-forwarded-host"),
        "shop.example.test:8080"
    );
    assert_eq!(one(&req.headers, "host"), "shop.example.test:8080");
}

#[test]
fn x_forwarded_proto_and_host_from_an_untrusted_peer_are_overwritten() {
    let (up, gw) = echo_gateway("", "");
    let (_, req) = forwarded(
        &gw,
        &up,
        "/api/x",
        &[
            ("Host", "shop.example.test"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
        ],
    );
    assert_eq!(one(&req.headers, "x-forwarded-proto"), "http");
    assert_eq!(one(&req.headers, "x-forwarded-host"), "shop.example.test");
}

#[test]
fn x_forwarded_proto_from_a_trusted_proxy_is_kept() {
    let (up, gw) = echo_gateway(TRUST_LOCALHOST, "");
    let (_, req) = forwarded(&gw, &up, "/api/x", &[("X-Forwarded-Proto", "https")]);
    assert_eq!(one(&req.headers, "x-forwarded-proto"), "https");
}

// ---------------------------------------------------------------------------------------
// X-Request-Id
// ---------------------------------------------------------------------------------------

#[test]
fn well_formed_request_id_is_kept_forwarded_and_echoed() {
    let (up, gw) = echo_gateway("", "");
    let id = "abc-123_x.y:z";
    let (r, req) = forwarded(&gw, &up, "/api/x", &[("X-Request-Id", id)]);
    assert_eq!(one(&req.headers, "x-request-id"), id);
    assert_eq!(r.header_all("x-request-id"), [id]);
}

#[test]
fn malformed_request_id_is_replaced_by_one_generated_id_sent_both_ways() {
    let (up, gw) = echo_gateway("", "");
    let too_long = "a".repeat(200);
    for bad in ["has spaces in it", too_long.as_str()] {
        let (r, req) = forwarded(&gw, &up, "/api/x", &[("X-Request-Id", bad)]);
        let sent = one(&req.headers, "x-request-id");
        assert!(is_hex32(sent), "upstream got {sent:?} for incoming {bad:?}");
        assert_eq!(r.header_all("x-request-id"), [sent], "echoed id differs");
    }
}

#[test]
fn missing_request_id_is_generated_and_sent_both_ways() {
    let (up, gw) = echo_gateway("", "");
    let (r1, req1) = forwarded(&gw, &up, "/api/x", &[]);
    let (r2, req2) = forwarded(&gw, &up, "/api/x", &[]);
    let (id1, id2) = (
        one(&req1.headers, "x-request-id"),
        one(&req2.headers, "x-request-id"),
    );
    assert!(is_hex32(id1), "{id1:?}");
    assert_eq!(r1.header_all("x-request-id"), [id1]);
    assert_eq!(r2.header_all("x-request-id"), [id2]);
    assert_ne!(id1, id2, "two requests got the same generated id");
}

#[test]
fn gateway_error_responses_carry_the_request_id_of_their_body() {
    let (up, gw) = echo_gateway("", "");
    let r = gw.get("/nope");
    assert_eq!(r.status, 404, "{}", r.text());
    let body_id = json(&r)["error"]["request_id"]
        .as_str()
        .expect("request_id in body")
        .to_string();
    assert!(is_hex32(&body_id), "{body_id:?}");
    assert_eq!(r.header_all("x-request-id"), [body_id.as_str()]);

    let r = gw.get_with("/nope", &[("X-Request-Id", "client-id-42")]);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(json(&r)["error"]["request_id"], "client-id-42");
    assert_eq!(r.header_all("x-request-id"), ["client-id-42"]);
    assert_eq!(up.request_count(), 0);
}

// ---------------------------------------------------------------------------------------
// Hop-by-hop headers
// ---------------------------------------------------------------------------------------

#[test]
fn hop_by_hop_request_headers_are_not_forwarded_but_ordinary_ones_are() {
    let (up, gw) = echo_gateway("", "");
    let (_, req) = forwarded(
        &gw,
        &up,
        "/api/x",
        &[
            ("Connection", "close, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Custom", "kept"),
        ],
    );
    for name in [
        "connection",
        "x-secret-hop",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            req.header(name).is_none(),
            "upstream got hop-by-hop {name}: {:?}",
            req.header_all(name)
        );
    }
    assert_eq!(one(&req.headers, "x-custom"), "kept");
}

#[test]
fn upgrade_request_header_is_not_forwarded_on_a_plain_request() {
    let (up, gw) = echo_gateway("", "");
    let (_, req) = forwarded(
        &gw,
        &up,
        "/api/x",
        &[("Upgrade", "h2c"), ("X-Custom", "kept")],
    );
    assert!(
        req.header("upgrade").is_none(),
        "upstream got Upgrade: {:?}",
        req.header_all("upgrade")
    );
    assert_eq!(one(&req.headers, "x-custom"), "kept");
}

#[test]
fn hop_by_hop_response_headers_from_the_upstream_are_removed() {
    let headers = [
        ("Keep-Alive", "timeout=5"),
        ("Connection", "X-Up-Hop"),
        ("X-Up-Hop", "1"),
        ("X-Normal", "1"),
    ];
    let up = FakeUpstream::responding(200, &headers, "ok");
    let gw = pool_gateway(
        "api",
        &[up.url()],
        "routes:\n  - {prefix: /api, upstream: api}\n",
    );
    let r = gw.get("/api/x");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "ok");
    assert_eq!(r.header_all("x-normal"), ["1"]);
    assert!(r.header("keep-alive").is_none(), "{:?}", r.headers);
    assert!(r.header("x-up-hop").is_none(), "{:?}", r.headers);
    assert!(
        r.header_all("connection")
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("x-up-hop")),
        "the upstream's Connection header reached the client: {:?}",
        r.header_all("connection")
    );
}

// ---------------------------------------------------------------------------------------
// Query string
// ---------------------------------------------------------------------------------------

#[test]
fn query_string_is_forwarded_unchanged() {
    let (up, gw) = echo_gateway("", "");
    for target in [
        "/api/x?b=2&a=%20",
        "/api/x?q=a%2Fb&q=c&flag",
        "/api/x?redirect=%2Fhome%3Fa%3D1",
    ] {
        let (_, req) = forwarded(&gw, &up, target, &[]);
        assert_eq!(req.target, target);
    }
}

#[test]
fn query_string_is_kept_when_the_prefix_is_stripped() {
    let (up, gw) = echo_gateway(
        "",
        "  - {prefix: /svc, upstream: api, strip_prefix: true}\n",
    );
    let (_, req) = forwarded(&gw, &up, "/svc/items?b=2&a=%20", &[]);
    assert_eq!(req.target, "/items?b=2&a=%20");
}

//! The request plan's order, pinned from outside: which of the gateway's own answers wins
//! when a request could get several (hygiene, path, built-in health, CORS preflight, auth
//! endpoints, assets, pages, route lookup, the route's address rules and body limit, auth).
//! Written against `request_filter` before the plan moved into `src/plan.rs`, and kept.

mod common;

use common::*;
use std::io::Write;

struct Setup {
    gw: Gw,
    _up: FakeUpstream,
    _dir: common::backends::TempDir,
}

fn setup() -> Setup {
    let up = FakeUpstream::start(Behavior::Echo);
    let dir = common::backends::TempDir::new("plan-assets");
    let mut f = std::fs::File::create(dir.path().join("app.css")).expect("asset");
    f.write_all(b"body{color:red}").expect("asset body");
    let templates = concat!(env!("CARGO_MANIFEST_DIR"), "/templates");
    let rest = format!(
        "upstreams:\n{}\nroutes:
  - {{name: everything, prefix: /, upstream: app, hosts: [catch.example], auth: required}}
  - {{name: private, prefix: /private, upstream: app, auth: required, cors: {{allowed_origins: [\"https://app.example\"]}}}}
  - {{name: readonly, prefix: /ro, upstream: app, methods: [GET]}}
  - {{name: blocked, prefix: /blocked, upstream: app, auth: required, ip_rules: {{deny: [127.0.0.1/32]}}}}
  - {{name: small, prefix: /small, upstream: app, auth: required, max_body_bytes: 10}}
  - {{name: open, prefix: /open, upstream: app}}
web:
  templates: \"{templates}\"
  assets: \"{}\"
  pages:
    - {{path: /page, template: docs.html, title: Docs}}
",
        upstream("app", &[up.url()], ""),
        dir.path().display()
    );
    Setup {
        gw: Gw::start(&rest),
        _up: up,
        _dir: dir,
    }
}

fn send(s: &Setup, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(s.gw.port, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn code(r: &Response) -> String {
    json(r)["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

const CATCH: (&str, &str) = ("Host", "catch.example");
const API: (&str, &str) = ("Accept", "application/json");

#[test]
fn hygiene_comes_before_everything_else() {
    let s = setup();
    // TRACE is refused by the hygiene check (no Allow), not by health's method check.
    let r = send(&s, "TRACE", "/health", &[API], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), None);
    assert_eq!(code(&r), "method_not_allowed");
    // Two Content-Length lines on a path a route would take: 400, and the connection ends.
    let r = raw_request(
        s.gw.port,
        b"POST /open HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    )
    .expect("raw");
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn a_path_that_climbs_above_the_root_is_refused_before_routing() {
    let s = setup();
    let r = send(&s, "GET", "/../open", &[API, CATCH], b"");
    assert_eq!(r.status, 400);
    assert_eq!(code(&r), "bad_request");
}

#[test]
fn health_is_the_gateways_even_under_a_catch_all_route() {
    let s = setup();
    let r = send(&s, "GET", "/health", &[API, CATCH], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("x-request-id").is_some());
    let r = send(&s, "POST", "/health", &[API, CATCH], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn a_preflight_is_answered_before_authentication() {
    let s = setup();
    let r = send(
        &s,
        "OPTIONS",
        "/private/x",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[test]
fn auth_endpoints_assets_and_pages_come_before_routes() {
    let s = setup();
    let r = send(&s, "GET", "/api/v1/auth/login", &[API, CATCH], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = send(&s, "GET", "/assets/app.css", &[CATCH], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body{color:red}");
    let r = send(&s, "POST", "/assets/app.css", &[API, CATCH], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = send(&s, "GET", "/assets/missing.css", &[API, CATCH], b"");
    assert_eq!(r.status, 404);
    let r = send(&s, "GET", "/page", &[("Accept", "text/html"), CATCH], b"");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/html"));
    let r = send(&s, "POST", "/page", &[API, CATCH], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // The same paths under the catch-all without those answers would be 401.
    let r = send(&s, "GET", "/elsewhere", &[API, CATCH], b"");
    assert_eq!(r.status, 401);
}

#[test]
fn route_lookup_answers_404_and_405() {
    let s = setup();
    let r = send(&s, "GET", "/nothing-here", &[API], b"");
    assert_eq!(r.status, 404);
    assert_eq!(code(&r), "not_found");
    let r = send(&s, "POST", "/ro/x", &[API], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = send(&s, "GET", "/ro/x", &[API], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn address_rules_and_the_body_limit_come_before_authentication() {
    let s = setup();
    let r = send(&s, "GET", "/blocked/x", &[API], b"");
    assert_eq!(r.status, 403);
    assert_eq!(code(&r), "ip_forbidden");
    let r = send(&s, "POST", "/small/x", &[API], &[b'x'; 100]);
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    let r = send(&s, "POST", "/small/x", &[API], b"tiny");
    assert_eq!(r.status, 401);
    let r = send(&s, "GET", "/private/x", &[("Accept", "text/html")], b"");
    assert_eq!(r.status, 303, "a browser is sent to sign in");
    assert!(r.header("location").is_some());
}

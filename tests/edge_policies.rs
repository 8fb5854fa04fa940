//! Edge policies through the running gateway: CORS (preflights before auth, origin matching,
//! the gateway as the only CORS authority), rate limits (local GCRA accuracy, keys by client
//! ip / header / user, the shared Redis backend and its outage policy), IP allow/deny lists,
//! request and response header rules, response compression, and WebSocket pass-through.
//!
//! Everything stays on 127.0.0.1. The shared-Redis test needs `REDIS_URL` (scripts/test.sh
//! sets it) and is skipped with a note otherwise; the Redis-outage test starts and kills its
//! own `redis-server` child, never the shared one.

mod common;
use common::*;

use gatehouse::auth::users::Role;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------
// Shared helpers
// ------------------------------------------------------------------------------------------

/// Migrates `db` and adds `n` patients with unique emails; returns their emails.
fn add_patients(db: &str, n: usize) -> Vec<String> {
    let users = seed_users(db, "edge.test", &vec![(Role::Patient, "Pat"); n]);
    users.into_iter().map(|u| u.email).collect()
}

/// `auth:` block on the SQLite database `db` (and the in-process session store).
fn auth_block(db: &str) -> String {
    format!("auth:\n  database_url: \"{db}\"\n  login: {{max_failures_per_ip: 1000}}\n")
}

/// Every `Access-Control-*` header of a response.
fn access_control(r: &Response) -> Vec<(String, String)> {
    r.headers
        .iter()
        .filter(|(k, _)| k.starts_with("access-control-"))
        .cloned()
        .collect()
}

// ------------------------------------------------------------------------------------------
// A tiny hand-written upstream (protocol switches, binary bodies)
// ------------------------------------------------------------------------------------------

/// What a [`TinyUpstream`] does with one connection after reading its request head: the
/// stream, the head as text, and any bytes read past the head.
type Serve = Arc<dyn Fn(&mut TcpStream, &str, Vec<u8>) + Send + Sync>;

/// A one-request-per-connection upstream on 127.0.0.1 for what [`FakeUpstream`] cannot do.
/// Request heads are recorded. Dropping it stops accepting; connection threads end when their
/// peer closes or after [`IO_TIMEOUT`] of silence.
struct TinyUpstream {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl TinyUpstream {
    fn start(serve: Serve) -> TinyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tiny upstream");
        let port = listener.local_addr().expect("local_addr").port();
        listener.set_nonblocking(true).expect("set_nonblocking");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (heads.clone(), stop.clone());
        let acceptor = thread::spawn(move || {
            while !s.load(SeqCst) {
                let Ok((mut stream, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let (h, serve) = (h.clone(), serve.clone());
                thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = stream.set_nodelay(true);
                    if let Some((head, rest)) = read_head(&mut stream) {
                        h.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(head.clone());
                        serve(&mut stream, &head, rest);
                    }
                });
            }
        });
        TinyUpstream {
            port,
            heads,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for TinyUpstream {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Reads up to the blank line ending a message head (at most 64 KiB); returns the head and
/// the bytes read after it. `None` on EOF, error or timeout before a whole head.
fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        match stream.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// Header lines of a head (after the start line), names lower-cased.
fn head_headers(head: &str) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

/// Reads until `want` bytes have arrived (starting from `have`), or fails after IO_TIMEOUT.
fn read_exactly(stream: &mut TcpStream, mut have: Vec<u8>, want: usize) -> Vec<u8> {
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut tmp = [0u8; 4096];
    while have.len() < want && Instant::now() < deadline {
        match stream.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => have.extend_from_slice(&tmp[..n]),
            Err(e) => panic!("reading relayed bytes: {e} (got {have:?})"),
        }
    }
    have
}

// ------------------------------------------------------------------------------------------
// 1. CORS
// ------------------------------------------------------------------------------------------

const APP_ORIGIN: &str = "https://app.example.com";

/// `defaults.cors` of the CORS tests: one exact origin and one subdomain wildcard.
const CORS_DEFAULTS: &str = "defaults:
  cors:
    allowed_origins: [https://app.example.com, \"https://*.example.org\"]
    allow_credentials: true
    max_age: 600
";

/// A gateway with `defaults.cors`, an Echo upstream behind `/private` (auth required),
/// `/public` and `/own` (its own CORS policy), an upstream that sends its own
/// `Access-Control-*` headers behind `/noisy`, and one seeded user.
struct CorsSite {
    app: FakeUpstream,
    noisy: FakeUpstream,
    gw: Gw,
    email: String,
    _dir: TempDir,
}

impl CorsSite {
    fn start() -> CorsSite {
        let dir = TempDir::new("cors");
        let db = dir.sqlite_url();
        let email = add_patients(&db, 1).remove(0);
        let app = FakeUpstream::start(Behavior::Echo);
        let noisy = FakeUpstream::start(Behavior::Respond {
            status: 200,
            headers: vec![
                ("Access-Control-Allow-Origin".into(), "*".into()),
                ("Access-Control-Allow-Methods".into(), "DELETE".into()),
                ("Access-Control-Expose-Headers".into(), "X-Secret".into()),
            ],
            body: "from upstream".into(),
        });
        // The front end allowed by CORS is also trusted to sign users in (as in the
        // shipped gateway.yaml, where CORS_ORIGINS fills both).
        let auth = format!("{}  trusted_origins: [\"{APP_ORIGIN}\"]\n", auth_block(&db));
        let gw = Gw::start(&format!(
            "upstreams:\n{}\n{}\nroutes:
  - {{name: private, prefix: /private, upstream: app, auth: required}}
  - {{name: public, prefix: /public, upstream: app}}
  - {{name: own, prefix: /own, upstream: app, cors: {{allowed_origins: [\"https://own.example.net\"]}}}}
  - {{name: noisy, prefix: /noisy, upstream: noisy}}
{CORS_DEFAULTS}{}",
            upstream("app", &[app.url()], ""),
            upstream("noisy", &[noisy.url()], ""),
            auth
        ));
        CorsSite {
            app,
            noisy,
            gw,
            email,
            _dir: dir,
        }
    }

    fn preflight(&self, path: &str, origin: &str, method: &str, headers: &str) -> Response {
        let mut h = vec![
            ("Origin", origin),
            ("Access-Control-Request-Method", method),
        ];
        if !headers.is_empty() {
            h.push(("Access-Control-Request-Headers", headers));
        }
        request(self.gw.port, "OPTIONS", path, &h, b"")
            .unwrap_or_else(|e| panic!("OPTIONS {path}: {e}"))
    }
}

#[test]
fn preflight_to_a_protected_route_succeeds_without_a_token_and_never_reaches_the_upstream() {
    let s = CorsSite::start();
    let r = s.preflight(
        "/private/records",
        APP_ORIGIN,
        "PUT",
        "authorization, content-type",
    );
    assert_eq!(r.status, 204, "preflight: {:?} {}", r.headers, r.text());
    assert_eq!(one(&r.headers, "access-control-allow-origin"), APP_ORIGIN);
    let methods = header_tokens(&r.headers, "access-control-allow-methods");
    assert!(methods.contains(&"put".to_string()), "{methods:?}");
    let allowed = header_tokens(&r.headers, "access-control-allow-headers");
    for h in ["authorization", "content-type"] {
        assert!(allowed.contains(&h.to_string()), "{h} in {allowed:?}");
    }
    assert_eq!(one(&r.headers, "access-control-max-age"), "600");
    assert_eq!(one(&r.headers, "access-control-allow-credentials"), "true");
    let vary = header_tokens(&r.headers, "vary");
    assert!(vary.contains(&"origin".to_string()), "Vary: {vary:?}");
    assert_eq!(s.app.request_count(), 0, "the preflight was forwarded");

    // Without the preflight headers, OPTIONS is an ordinary request: auth applies.
    let plain = request(
        s.gw.port,
        "OPTIONS",
        "/private/records",
        &[("Origin", APP_ORIGIN)],
        b"",
    )
    .expect("OPTIONS without Access-Control-Request-Method");
    assert_eq!(plain.status, 401, "{}", plain.text());
    assert_eq!(s.app.request_count(), 0);
}

#[test]
fn actual_request_from_an_allowed_origin_gets_allow_origin_vary_and_expose_headers() {
    let s = CorsSite::start();
    let r = get_ok(s.gw.port, "/public/x", &[("Origin", APP_ORIGIN)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(one(&r.headers, "access-control-allow-origin"), APP_ORIGIN);
    assert_eq!(one(&r.headers, "access-control-allow-credentials"), "true");
    let exposed = header_tokens(&r.headers, "access-control-expose-headers");
    assert!(exposed.contains(&"x-request-id".to_string()), "{exposed:?}");
    assert!(header_tokens(&r.headers, "vary").contains(&"origin".to_string()));
    assert!(
        r.header("access-control-allow-methods").is_none(),
        "Allow-Methods belongs to preflights only: {:?}",
        r.headers
    );

    // The gateway's own refusals carry CORS headers too, so script can read the 401.
    let denied = get_ok(s.gw.port, "/private/x", &[("Origin", APP_ORIGIN)]);
    assert_eq!(denied.status, 401, "{}", denied.text());
    assert_eq!(
        one(&denied.headers, "access-control-allow-origin"),
        APP_ORIGIN
    );
    assert!(header_tokens(&denied.headers, "vary").contains(&"origin".to_string()));

    // With a token, the protected route answers with the same headers.
    let token = login(s.gw.port, &s.email);
    let ok = get_ok(
        s.gw.port,
        "/private/x",
        &[("Origin", APP_ORIGIN), ("Authorization", &bearer(&token))],
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(one(&ok.headers, "access-control-allow-origin"), APP_ORIGIN);
}

#[test]
fn subdomain_wildcard_matches_subdomains_but_not_the_apex_or_another_scheme() {
    let s = CorsSite::start();
    for origin in ["https://a.example.org", "https://deep.a.example.org"] {
        let p = s.preflight("/public/x", origin, "POST", "content-type");
        assert_eq!(p.status, 204);
        assert_eq!(one(&p.headers, "access-control-allow-origin"), origin);
        let r = get_ok(s.gw.port, "/public/x", &[("Origin", origin)]);
        assert_eq!(one(&r.headers, "access-control-allow-origin"), origin);
    }
    for origin in [
        "https://example.org",
        "http://a.example.org",
        "https://a.example.org.evil.com",
        "https://a.example.org:8443",
    ] {
        let p = s.preflight("/public/x", origin, "POST", "content-type");
        assert_eq!(access_control(&p), vec![], "preflight from {origin}");
        let r = get_ok(s.gw.port, "/public/x", &[("Origin", origin)]);
        assert_eq!(r.status, 200);
        assert_eq!(access_control(&r), vec![], "GET from {origin}");
    }
}

#[test]
fn disallowed_origin_gets_no_access_control_headers_on_preflight_or_actual_request() {
    let s = CorsSite::start();
    let evil = "https://evil.example.net";
    let p = s.preflight("/private/x", evil, "DELETE", "authorization");
    assert_eq!(access_control(&p), vec![], "preflight: {:?}", p.headers);
    assert_ne!(
        p.status / 100,
        5,
        "a refused preflight is not a server error"
    );
    assert_eq!(
        s.app.request_count(),
        0,
        "a refused preflight was forwarded"
    );

    // An allowed origin asking for a method or header outside the policy is refused too.
    let p = s.preflight("/public/x", APP_ORIGIN, "PROPFIND", "");
    assert_eq!(
        access_control(&p),
        vec![],
        "unlisted method: {:?}",
        p.headers
    );
    let p = s.preflight("/public/x", APP_ORIGIN, "GET", "x-not-allowed");
    assert_eq!(
        access_control(&p),
        vec![],
        "unlisted header: {:?}",
        p.headers
    );

    let r = get_ok(s.gw.port, "/public/x", &[("Origin", evil)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(access_control(&r), vec![], "actual: {:?}", r.headers);
    let r = get_ok(s.gw.port, "/private/x", &[("Origin", evil)]);
    assert_eq!(r.status, 401);
    assert_eq!(access_control(&r), vec![], "refusal: {:?}", r.headers);

    // A route with its own policy replaces the defaults.
    let r = get_ok(s.gw.port, "/own/x", &[("Origin", APP_ORIGIN)]);
    assert_eq!(
        access_control(&r),
        vec![],
        "defaults leaked: {:?}",
        r.headers
    );
    let own = "https://own.example.net";
    let r = get_ok(s.gw.port, "/own/x", &[("Origin", own)]);
    assert_eq!(one(&r.headers, "access-control-allow-origin"), own);
}

#[test]
fn upstream_access_control_headers_are_replaced_by_the_gateways_on_a_cors_route() {
    let s = CorsSite::start();
    let r = get_ok(s.gw.port, "/noisy/x", &[("Origin", APP_ORIGIN)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "from upstream");
    assert_eq!(one(&r.headers, "access-control-allow-origin"), APP_ORIGIN);
    assert_eq!(
        one(&r.headers, "access-control-expose-headers"),
        "X-Request-Id"
    );
    assert!(
        r.header("access-control-allow-methods").is_none(),
        "upstream's Allow-Methods kept: {:?}",
        r.headers
    );

    let r = get_ok(
        s.gw.port,
        "/noisy/x",
        &[("Origin", "https://evil.example.net")],
    );
    assert_eq!(
        access_control(&r),
        vec![],
        "the upstream's `*` reached a disallowed origin: {:?}",
        r.headers
    );
    assert!(s.noisy.request_count() >= 2);
}

#[test]
fn auth_login_endpoint_answers_cors_with_the_default_policy() {
    let s = CorsSite::start();
    let p = s.preflight("/api/v1/auth/login", APP_ORIGIN, "POST", "content-type");
    assert_eq!(p.status, 204, "{:?}", p.headers);
    assert_eq!(one(&p.headers, "access-control-allow-origin"), APP_ORIGIN);
    assert_eq!(one(&p.headers, "access-control-allow-credentials"), "true");
    assert!(header_tokens(&p.headers, "access-control-allow-methods").contains(&"post".to_string()));

    let r = login_as(s.gw.port, &s.email, PASSWORD, &[("Origin", APP_ORIGIN)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(json(&r)["access_token"].is_string());
    assert_eq!(one(&r.headers, "access-control-allow-origin"), APP_ORIGIN);
    assert_eq!(one(&r.headers, "access-control-allow-credentials"), "true");
    assert!(header_tokens(&r.headers, "vary").contains(&"origin".to_string()));

    let r = login_as(
        s.gw.port,
        &s.email,
        PASSWORD,
        &[("Origin", "https://evil.example.net")],
    );
    assert_eq!(access_control(&r), vec![], "{:?}", r.headers);
    assert_eq!(r.status, 403, "a login from another site: {}", r.text());
    assert!(r.header("set-cookie").is_none(), "{:?}", r.headers);
}

// ------------------------------------------------------------------------------------------
// 2. Rate limits (local backend)
// ------------------------------------------------------------------------------------------

fn rate_gateway(server_extra: &str, routes: &str, auth: &str) -> (FakeUpstream, Gw) {
    echo_pool_gateway("app", server_extra, &format!("routes:\n{routes}{auth}"))
}

fn assert_rate_limited(r: &Response, limit: &str) {
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    assert_eq!(error_code(r), "rate_limited");
    assert_eq!(one(&r.headers, "ratelimit-limit"), limit);
    assert_eq!(one(&r.headers, "ratelimit-remaining"), "0");
    let retry: u64 = one(&r.headers, "retry-after").parse().expect("Retry-After");
    assert!(retry >= 1, "Retry-After {retry}");
    let reset: u64 = one(&r.headers, "ratelimit-reset")
        .parse()
        .expect("RateLimit-Reset");
    assert!(reset >= 1, "RateLimit-Reset {reset}");
}

#[test]
fn local_limit_passes_exactly_five_then_answers_429_with_ratelimit_headers() {
    let (up, gw) = rate_gateway(
        "",
        "  - {name: limited, prefix: /limited, upstream: app, rate_limits: [{name: per_ip, rate: \"5/1m\"}]}\n",
        "",
    );
    for expected_remaining in (0..5).rev() {
        let r = gw.get("/limited/x");
        assert_eq!(
            r.status,
            200,
            "request {}: {}",
            5 - expected_remaining,
            r.text()
        );
        assert_eq!(one(&r.headers, "ratelimit-limit"), "5");
        assert_eq!(
            one(&r.headers, "ratelimit-remaining"),
            expected_remaining.to_string()
        );
        let reset: u64 = one(&r.headers, "ratelimit-reset").parse().expect("reset");
        assert!((1..=60).contains(&reset), "RateLimit-Reset {reset}");
        assert!(r.header("retry-after").is_none());
    }
    let r = gw.get("/limited/x");
    assert_rate_limited(&r, "5");
    let retry: u64 = one(&r.headers, "retry-after").parse().expect("Retry-After");
    assert!(
        retry <= 12,
        "one request comes back every 12 s: Retry-After {retry}"
    );
    assert_eq!(up.request_count(), 5, "the refused request was forwarded");

    assert_rate_limited(&gw.get("/limited/x"), "5");
    assert_eq!(
        metric(
            gw.admin_port,
            "gatehouse_rate_limited_total",
            &[("route", "limited")]
        ),
        2.0
    );
}

#[test]
fn client_ip_key_through_a_trusted_proxy_gives_each_forwarded_client_its_own_bucket() {
    let route = "  - {name: per_ip, prefix: /r, upstream: app, rate_limits: [{name: per_ip, rate: \"2/1m\"}]}\n";
    let (_up, gw) = rate_gateway(TRUST_LOCALHOST, route, "");
    let from = |ip: &str| get_ok(gw.port, "/r/x", &[("X-Forwarded-For", ip)]);
    assert_eq!(from("10.0.0.1").status, 200);
    assert_eq!(from("10.0.0.1").status, 200);
    assert_rate_limited(&from("10.0.0.1"), "2");
    let other = from("10.0.0.2");
    assert_eq!(other.status, 200, "10.0.0.2 shares 10.0.0.1's bucket");
    assert_eq!(one(&other.headers, "ratelimit-remaining"), "1");
    assert_eq!(gw.get("/r/x").status, 200, "the proxy's own bucket");

    // From an untrusted peer X-Forwarded-For is ignored: it cannot dodge the limit.
    let (_up2, gw2) = rate_gateway("", route, "");
    let from = |ip: &str| get_ok(gw2.port, "/r/x", &[("X-Forwarded-For", ip)]);
    assert_eq!(from("10.0.0.1").status, 200);
    assert_eq!(from("10.0.0.2").status, 200);
    assert_rate_limited(&from("10.0.0.3"), "2");
}

#[test]
fn header_key_gives_each_api_key_its_own_bucket() {
    let (up, gw) = rate_gateway(
        "",
        "  - {name: keyed, prefix: /k, upstream: app, rate_limits: [{name: per_key, rate: \"2/1m\", key: \"header:X-Api-Key\"}]}\n",
        "",
    );
    let with = |key: &str| get_ok(gw.port, "/k/x", &[("X-Api-Key", key)]);
    assert_eq!(with("alpha").status, 200);
    assert_eq!(with("alpha").status, 200);
    assert_rate_limited(&with("alpha"), "2");
    assert_eq!(with("beta").status, 200, "beta shares alpha's bucket");
    assert_eq!(with("beta").status, 200);
    assert_rate_limited(&with("beta"), "2");
    // Without the header the client ip is the key: a bucket of its own.
    assert_eq!(gw.get("/k/x").status, 200);
    assert_eq!(up.request_count(), 5);
}

#[test]
fn user_key_gives_each_signed_in_user_its_own_bucket_and_anonymous_falls_back_to_ip() {
    let dir = TempDir::new("users");
    let db = dir.sqlite_url();
    let emails = add_patients(&db, 2);
    let (_up, gw) = rate_gateway(
        "",
        "  - {name: per_user, prefix: /u, upstream: app, auth: optional, rate_limits: [{name: per_user, rate: \"2/1m\", key: user}]}\n",
        &auth_block(&db),
    );
    let a = bearer(&login(gw.port, &emails[0]));
    let b = bearer(&login(gw.port, &emails[1]));
    let as_user = |auth: &str| get_ok(gw.port, "/u/x", &[("Authorization", auth)]);

    assert_eq!(as_user(&a).status, 200);
    assert_eq!(as_user(&a).status, 200);
    assert_rate_limited(&as_user(&a), "2");

    let r = as_user(&b);
    assert_eq!(r.status, 200, "user B shares user A's bucket: {}", r.text());
    assert_eq!(one(&r.headers, "ratelimit-remaining"), "1");
    assert_eq!(as_user(&b).status, 200);
    assert_rate_limited(&as_user(&b), "2");

    // Anonymous requests (same client ip as both users) are keyed by ip: a fresh bucket.
    assert_eq!(gw.get("/u/x").status, 200);
    assert_eq!(gw.get("/u/x").status, 200);
    assert_rate_limited(&gw.get("/u/x"), "2");
    assert_rate_limited(&as_user(&a), "2");
}

// ------------------------------------------------------------------------------------------
// 3. Rate limits on Redis
// ------------------------------------------------------------------------------------------

#[test]
fn redis_limit_is_shared_by_two_gateway_instances() {
    let Some(redis) = std::env::var("REDIS_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
    else {
        eprintln!("note: REDIS_URL is not set; skipping the shared Redis rate-limit test (scripts/test.sh starts a Redis)");
        return;
    };
    let dir = TempDir::new("shared");
    let db = dir.sqlite_url();
    // A fresh limit name per run: the shared Redis outlives this test.
    let name = format!("shared_{:016x}", rand::random::<u64>());
    let up = FakeUpstream::start(Behavior::Echo);
    let rest = format!(
        "upstreams:\n{}\nroutes:\n  - {{name: shared, prefix: /s, upstream: app, rate_limits: [{{name: {name}, rate: \"6/1m\", backend: redis}}]}}\nauth:\n  database_url: \"{db}\"\n  redis_url: \"{redis}\"\n",
        upstream("app", &[up.url()], "")
    );
    let a = Gw::start(&rest);
    let b = Gw::start(&rest);
    for i in 0..6 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = gw.get("/s/x");
        assert_eq!(
            r.status,
            200,
            "request {} on {}: {}",
            i + 1,
            i % 2,
            r.text()
        );
        assert_eq!(one(&r.headers, "ratelimit-limit"), "6");
        assert_eq!(
            one(&r.headers, "ratelimit-remaining"),
            (5 - i).to_string(),
            "request {}",
            i + 1
        );
    }
    assert_rate_limited(&a.get("/s/x"), "6");
    assert_rate_limited(&b.get("/s/x"), "6");
    assert_eq!(up.request_count(), 6);
}

#[test]
fn redis_outage_lets_requests_through_with_allow_and_refuses_them_with_deny() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    let dir = TempDir::new("outage");
    let db = dir.sqlite_url();
    let up = FakeUpstream::start(Behavior::Echo);
    let gw = Gw::start(&format!(
        "upstreams:\n{}\nroutes:
  - {{name: fail_open, prefix: /open, upstream: app, rate_limits: [{{name: open, rate: \"100/1m\", backend: redis, on_store_error: allow}}]}}
  - {{name: fail_closed, prefix: /closed, upstream: app, rate_limits: [{{name: closed, rate: \"100/1m\", backend: redis, on_store_error: deny}}]}}
auth:\n  database_url: \"{db}\"\n  redis_url: \"{}\"\n",
        upstream("app", &[up.url()], ""),
        redis.url()
    ));
    for path in ["/open/x", "/closed/x"] {
        let r = gw.get(path);
        assert_eq!(r.status, 200, "{path} with Redis up: {}", r.text());
        assert_eq!(one(&r.headers, "ratelimit-remaining"), "99", "{path}");
    }

    redis.kill();
    // The gateway notices the dead connection on its own time: poll for the first refusal.
    let refused = wait_until(Duration::from_secs(5), || gw.get("/closed/x").status == 503);
    assert!(refused, "deny route still answers while Redis is down");
    for _ in 0..3 {
        let r = gw.get("/closed/x");
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(error_code(&r), "rate_limit_unavailable");
        assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
        let r = gw.get("/open/x");
        assert_eq!(r.status, 200, "allow route refused: {}", r.text());
    }
}

// ------------------------------------------------------------------------------------------
// 4. IP rules
// ------------------------------------------------------------------------------------------

const IP_ROUTES: &str = "routes:
  - {name: internal, prefix: /internal, upstream: app, ip_rules: {allow: [10.0.0.0/8]}}
  - {name: blocked, prefix: /blocked, upstream: app, ip_rules: {deny: [127.0.0.1/32]}}
  - {name: both, prefix: /both, upstream: app, ip_rules: {allow: [127.0.0.0/8], deny: [127.0.0.1/32]}}
  - {name: open, prefix: /open, upstream: app}
";

fn ip_gateway(server_extra: &str) -> (FakeUpstream, Gw) {
    echo_pool_gateway("app", server_extra, IP_ROUTES)
}

fn assert_ip_forbidden(r: &Response) {
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(error_code(r), "ip_forbidden");
}

#[test]
fn allow_list_refuses_other_clients_with_403_ip_forbidden() {
    let (up, gw) = ip_gateway("");
    assert_ip_forbidden(&gw.get("/internal/x"));
    // Without a trusted proxy a client cannot claim an allowed address.
    assert_ip_forbidden(&gw.get_with("/internal/x", &[("X-Forwarded-For", "10.1.2.3")]));
    assert_eq!(up.request_count(), 0, "a refused request was forwarded");
    assert_eq!(gw.get("/open/x").status, 200);
}

#[test]
fn allow_list_admits_the_forwarded_client_through_a_trusted_proxy() {
    let (up, gw) = ip_gateway(TRUST_LOCALHOST);
    let r = gw.get_with("/internal/x", &[("X-Forwarded-For", "10.1.2.3")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.request_count(), 1);
    assert_ip_forbidden(&gw.get_with("/internal/x", &[("X-Forwarded-For", "192.0.2.1")]));
    assert_ip_forbidden(&gw.get("/internal/x"));
    assert_eq!(up.request_count(), 1);
}

#[test]
fn deny_list_refuses_the_client() {
    let (up, gw) = ip_gateway("");
    assert_ip_forbidden(&gw.get("/blocked/x"));
    assert_eq!(up.request_count(), 0);
    // Behind a trusted proxy the forwarded client is judged, not the proxy.
    let (up2, gw2) = ip_gateway(TRUST_LOCALHOST);
    let r = gw2.get_with("/blocked/x", &[("X-Forwarded-For", "192.0.2.1")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ip_forbidden(&gw2.get_with("/blocked/x", &[("X-Forwarded-For", "127.0.0.1")]));
    assert_eq!(up2.request_count(), 1);
}

#[test]
fn deny_wins_over_allow() {
    let (up, gw) = ip_gateway(TRUST_LOCALHOST);
    assert_ip_forbidden(&gw.get("/both/x"));
    let r = gw.get_with("/both/x", &[("X-Forwarded-For", "127.0.0.2")]);
    assert_eq!(r.status, 200, "allowed, not denied: {}", r.text());
    assert_eq!(up.request_count(), 1);
}

// ------------------------------------------------------------------------------------------
// 5. Header rules
// ------------------------------------------------------------------------------------------

const HEADER_RULES: &str = "headers: {request: {set: {X-Env: prod}, add: {X-Tag: a}, remove: [X-Debug]}, response: {set: {X-Frame-Options: DENY}, remove: [Server, X-Powered-By]}}";

#[test]
fn request_header_rules_set_add_and_remove_what_the_upstream_sees() {
    let up = FakeUpstream::start(Behavior::Echo);
    let gw = Gw::start(&format!(
        "upstreams:\n{}\nroutes:\n  - {{name: ruled, prefix: /ruled, upstream: app, {HEADER_RULES}}}\n",
        upstream("app", &[up.url()], "")
    ));
    let r = gw.get_with(
        "/ruled/x",
        &[("X-Env", "dev"), ("X-Tag", "client"), ("X-Debug", "1")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests().pop().expect("one upstream request");
    assert_eq!(seen.header_all("x-env"), vec!["prod"], "{:?}", seen.headers);
    let tags = seen.header_all("x-tag");
    assert!(
        tags.contains(&"client") && tags.contains(&"a") && tags.len() == 2,
        "X-Tag: {tags:?}"
    );
    assert!(seen.header("x-debug").is_none(), "{:?}", seen.headers);

    // Without a client X-Tag the upstream gets just the added one.
    let _ = gw.get("/ruled/y");
    let seen = up.requests().pop().expect("second upstream request");
    assert_eq!(seen.header_all("x-tag"), vec!["a"]);
    assert_eq!(seen.header_all("x-env"), vec!["prod"]);
}

#[test]
fn response_header_rules_set_and_remove_what_the_client_sees() {
    let up = FakeUpstream::responding(
        200,
        &[
            ("X-Powered-By", "PHP"),
            ("Server", "x"),
            ("X-Frame-Options", "SAMEORIGIN"),
            ("X-Kept", "yes"),
        ],
        "hello",
    );
    let gw = pool_gateway(
        "app",
        &[up.url()],
        &format!("routes:\n  - {{name: ruled, prefix: /ruled, upstream: app, {HEADER_RULES}}}\n"),
    );
    let r = gw.get("/ruled/x");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello");
    assert_eq!(
        r.header_all("x-frame-options"),
        vec!["DENY"],
        "{:?}",
        r.headers
    );
    assert!(r.header("x-powered-by").is_none(), "{:?}", r.headers);
    assert!(r.header("server").is_none(), "{:?}", r.headers);
    assert_eq!(r.header("x-kept"), Some("yes"));
}

#[test]
fn config_validation_refuses_header_rules_on_identity_and_framing_headers() {
    let config = |headers: &str| {
        format!(
            "upstreams:\n  app:\n    backends: http://127.0.0.1:9\nroutes:\n  - prefix: /x\n    upstream: app\n    headers: {headers}\n"
        )
    };
    for (headers, path) in [
        (
            "{request: {set: {Authorization: x}}}",
            "routes[0].headers.request.set.Authorization",
        ),
        (
            "{request: {add: {X-User-Id: \"7\"}}}",
            "routes[0].headers.request.add.X-User-Id",
        ),
        (
            "{response: {remove: [Content-Length]}}",
            "routes[0].headers.response.remove[0]",
        ),
        (
            "{request: {set: {Content-Length: \"0\"}}}",
            "routes[0].headers.request.set.Content-Length",
        ),
    ] {
        let err = gatehouse::Config::from_yaml_str(&config(headers))
            .expect_err(&format!("{headers} was accepted"))
            .to_string();
        assert!(err.contains(path), "{headers}: expected {path} in {err}");
    }
    let ok = config("{request: {set: {X-Env: prod}}, response: {remove: [X-Powered-By]}}");
    gatehouse::Config::from_yaml_str(&ok).expect("ordinary header rules are valid");
}

// ------------------------------------------------------------------------------------------
// 6. Compression
// ------------------------------------------------------------------------------------------

/// A JSON document of at least 4 KiB.
fn json_4k() -> String {
    let mut items = Vec::new();
    let mut doc = String::new();
    for i in 0.. {
        items.push(json!({"id": i, "name": format!("item-{i}"), "active": i % 2 == 0}));
        doc = json!({ "items": items }).to_string();
        if doc.len() >= 4096 {
            break;
        }
    }
    doc
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip finish")
}

/// Upstreams and routes for the compression tests.
struct CompressionSite {
    json: String,
    small: String,
    pre_gzipped: Vec<u8>,
    _ups: Vec<FakeUpstream>,
    _tiny: Vec<TinyUpstream>,
    gw: Gw,
}

impl CompressionSite {
    fn start(server_extra: &str) -> CompressionSite {
        let json = json_4k();
        let small = format!("{{\"pad\":\"{}\"}}", "a".repeat(90));
        assert_eq!(small.len(), 100);
        let big = FakeUpstream::responding(200, &[("Content-Type", "application/json")], &json);
        let tiny_json =
            FakeUpstream::responding(200, &[("Content-Type", "application/json")], &small);
        let png =
            FakeUpstream::responding(200, &[("Content-Type", "image/png")], &"P".repeat(4096));
        let partial = FakeUpstream::responding(
            206,
            &[
                ("Content-Type", "application/json"),
                ("Content-Range", "bytes 0-4095/9000"),
            ],
            &"J".repeat(4096),
        );
        let octets = FakeUpstream::responding(
            200,
            &[("Content-Type", "application/octet-stream")],
            &"O".repeat(4096),
        );
        let vary_star = FakeUpstream::responding(
            200,
            &[("Content-Type", "application/json"), ("Vary", "*")],
            &json,
        );
        let vary_origin = FakeUpstream::responding(
            200,
            &[("Content-Type", "application/json"), ("Vary", "Origin")],
            &json,
        );
        let pre_gzipped = gzip(json.as_bytes());
        let payload = pre_gzipped.clone();
        let tiny = TinyUpstream::start(Arc::new(move |s: &mut TcpStream, _: &str, _| {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                payload.len()
            );
            let _ = s.write_all(&[head.as_bytes(), &payload].concat());
        }));
        // The same JSON with no Content-Length: chunked, its size unknown at the head.
        let chunked_json = json.clone();
        let chunked = TinyUpstream::start(Arc::new(move |s: &mut TcpStream, _: &str, _| {
            let body = chunked_json.as_bytes();
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
            for part in body.chunks(1000) {
                out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            let _ = s.write_all(&out);
        }));
        let gw = Gw::start_with_server(
            server_extra,
            &format!(
                "upstreams:\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\nroutes:
  - {{name: json, prefix: /json, upstream: big}}
  - {{name: small, prefix: /small, upstream: tiny_json}}
  - {{name: png, prefix: /png, upstream: png}}
  - {{name: raw, prefix: /raw, upstream: big, compression: false}}
  - {{name: pregz, prefix: /pregz, upstream: pregz}}
  - {{name: octets, prefix: /octets, upstream: octets}}
  - {{name: partial, prefix: /partial, upstream: partial}}
  - {{name: chunked, prefix: /chunked, upstream: chunked}}
  - {{name: varystar, prefix: /varystar, upstream: varystar}}
  - {{name: varyorigin, prefix: /varyorigin, upstream: varyorigin}}
",
                upstream("big", &[big.url()], ""),
                upstream("tiny_json", &[tiny_json.url()], ""),
                upstream("png", &[png.url()], ""),
                upstream("pregz", &[tiny.url()], ""),
                upstream("octets", &[octets.url()], ""),
                upstream("partial", &[partial.url()], ""),
                upstream("chunked", &[chunked.url()], ""),
                upstream("varystar", &[vary_star.url()], ""),
                upstream("varyorigin", &[vary_origin.url()], ""),
            ),
        );
        CompressionSite {
            json,
            small,
            pre_gzipped,
            _ups: vec![big, tiny_json, png, octets, partial, vary_star, vary_origin],
            _tiny: vec![tiny, chunked],
            gw,
        }
    }

    fn fetch(&self, path: &str, accept_encoding: &str) -> Response {
        let r = self
            .gw
            .get_with(path, &[("Accept-Encoding", accept_encoding)]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r
    }
}

fn assert_identity(r: &Response, expected: &[u8], what: &str) {
    assert!(
        r.header("content-encoding").is_none(),
        "{what} was encoded: {:?}",
        r.headers
    );
    assert_eq!(r.body, expected, "{what}: body changed");
}

/// The answer is encoded with exactly `coding`.
fn assert_coding(r: &Response, coding: &str) {
    assert_eq!(
        one(&r.headers, "content-encoding"),
        coding,
        "{:?}",
        r.headers
    );
}

#[test]
fn gzip_accepting_client_gets_a_gzip_body_that_inflates_to_the_original() {
    let s = CompressionSite::start("");
    let r = s.fetch("/json/x", "gzip");
    assert_coding(&r, "gzip");
    assert!(r.body.len() < s.json.len(), "not smaller");
    assert_eq!(gunzip(&r.body), s.json.as_bytes());
    assert!(header_tokens(&r.headers, "vary").contains(&"accept-encoding".to_string()));
    // A client that asks for nothing gets the body as it is.
    let plain = s.gw.get("/json/x");
    assert_identity(&plain, s.json.as_bytes(), "no Accept-Encoding");
}

#[test]
fn brotli_accepting_client_gets_a_complete_br_stream_that_decodes_to_the_original() {
    // The gateway encodes br itself (Pingora 0.9.1's encoder never finishes its stream):
    // a client preferring br gets a complete stream, gzip-first clients still get gzip.
    let s = CompressionSite::start("");
    for accept in ["br", "br, gzip", "gzip;q=0.5, br"] {
        let r = s.fetch("/json/x", accept);
        assert_eq!(
            one(&r.headers, "content-encoding"),
            "br",
            "{accept}: {:?}",
            r.headers
        );
        let mut out = Vec::new();
        let mut d = brotli::Decompressor::new(&r.body[..], 4096);
        d.read_to_end(&mut out).expect("a complete brotli stream");
        assert_eq!(out, s.json.as_bytes(), "{accept}");
    }
    let r = s.fetch("/json/x", "gzip, deflate, br");
    assert_coding(&r, "gzip");
}

#[test]
fn zstd_accepting_client_gets_a_zstd_frame() {
    // The zstd crate is not a dependency of gatehouse itself, so the body is not decoded
    // here; it must at least be a zstd frame (magic 28 B5 2F FD), not the plain JSON.
    let s = CompressionSite::start("");
    let r = s.fetch("/json/x", "zstd");
    assert_coding(&r, "zstd");
    assert!(
        r.body.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
        "not a zstd frame: {:?}",
        &r.body[..r.body.len().min(8)]
    );
    assert!(r.body.len() < s.json.len());
}

#[test]
fn bodies_below_min_size_are_not_compressed() {
    let s = CompressionSite::start("");
    let r = s.fetch("/small/x", "gzip, br");
    assert_identity(&r, s.small.as_bytes(), "a 100-byte body");
}

#[test]
fn non_compressible_content_types_are_not_compressed() {
    let s = CompressionSite::start("");
    let r = s.fetch("/png/x", "gzip");
    assert_identity(&r, "P".repeat(4096).as_bytes(), "image/png");
}

/// One list of compressible types for every coding: gzip (Pingora's module) does not take
/// binary types that br (the gateway's) refuses.
#[test]
fn binary_types_are_not_compressed_by_any_coding() {
    let s = CompressionSite::start("");
    for ae in ["gzip", "zstd", "br", "gzip, deflate, br"] {
        let r = s.fetch("/octets/x", ae);
        assert_identity(
            &r,
            "O".repeat(4096).as_bytes(),
            &format!("octet-stream, {ae}"),
        );
    }
}

/// A 206 carries a range of the identity body (its `Content-Range` counts identity bytes):
/// no coding may touch it, whatever the client accepts.
#[test]
fn partial_content_is_never_encoded() {
    let s = CompressionSite::start("");
    for ae in ["gzip", "zstd", "br", "gzip, deflate, br"] {
        let r = s.gw.get_with(
            "/partial/x",
            &[("Accept-Encoding", ae), ("Range", "bytes=0-4095")],
        );
        assert_eq!(r.status, 206, "{ae}: {}", r.text());
        assert_identity(&r, "J".repeat(4096).as_bytes(), &format!("206, {ae}"));
        assert_eq!(r.header("content-range"), Some("bytes 0-4095/9000"), "{ae}");
    }
}

/// An answer too small to compress is decided from the answer: sent as it is, and with no
/// `Vary: Accept-Encoding`, since no client would get another coding.
#[test]
fn small_answers_do_not_vary_on_accept_encoding() {
    let s = CompressionSite::start("");
    for ae in ["gzip, deflate, br", ""] {
        let r = s.fetch("/small/x", ae);
        assert_identity(&r, s.small.as_bytes(), "a 100-byte body");
        assert!(
            !header_tokens(&r.headers, "vary").contains(&"accept-encoding".to_string()),
            "{ae:?}: {:?}",
            r.headers
        );
    }
    // A large one varies even for a client that accepts no coding.
    let r = s.fetch("/json/x", "");
    assert_identity(&r, s.json.as_bytes(), "no Accept-Encoding");
    assert!(header_tokens(&r.headers, "vary").contains(&"accept-encoding".to_string()));
}

/// The upstream's `Vary` is kept: `*` (varies on everything) stays `*` alone, a named field
/// gets `Accept-Encoding` beside it, once, compressed or not.
#[test]
fn an_upstream_vary_is_kept_and_accept_encoding_added_once() {
    let s = CompressionSite::start("");
    for ae in ["gzip", "br", ""] {
        let r = s.fetch("/varystar/x", ae);
        assert_eq!(
            header_tokens(&r.headers, "vary"),
            ["*"],
            "{ae:?}: {:?}",
            r.headers
        );
        let r = s.fetch("/varyorigin/x", ae);
        assert_eq!(
            header_tokens(&r.headers, "vary"),
            ["origin", "accept-encoding"],
            "{ae:?}: {:?}",
            r.headers
        );
    }
    let r = s.fetch("/varystar/x", "gzip");
    assert_eq!(gunzip(&r.body), s.json.as_bytes());
}

/// q-values are honoured: `q=0` says "not this coding", and Pingora's module (which takes the
/// first coding listed, whatever its q) is allowed only the coding chosen.
#[test]
fn a_coding_refused_with_q_zero_is_never_used() {
    let s = CompressionSite::start("");
    let r = s.fetch("/json/x", "gzip;q=0");
    assert_identity(&r, s.json.as_bytes(), "gzip;q=0");
    let r = s.fetch("/json/x", "zstd;q=0, gzip");
    assert_coding(&r, "gzip");
    assert_eq!(gunzip(&r.body), s.json.as_bytes());
    let r = s.fetch("/json/x", "gzip;q=0, zstd");
    assert_coding(&r, "zstd");
    assert!(
        r.body.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
        "not a zstd frame"
    );
    let r = s.fetch("/json/x", "br;q=0, gzip;q=0");
    assert_identity(&r, s.json.as_bytes(), "br;q=0, gzip;q=0");
}

/// An answer whose size is unknown at its head (chunked) is compressed as a large one is.
#[test]
fn chunked_answer_of_unknown_size_is_compressed() {
    let s = CompressionSite::start("");
    let r = s.fetch("/chunked/x", "gzip");
    assert_coding(&r, "gzip");
    assert_eq!(gunzip(&r.body), s.json.as_bytes());
}

#[test]
fn route_with_compression_false_is_not_compressed() {
    let s = CompressionSite::start("");
    let r = s.fetch("/raw/x", "gzip, br");
    assert_identity(&r, s.json.as_bytes(), "compression: false route");
}

#[test]
fn server_compression_disabled_compresses_nothing() {
    let s = CompressionSite::start("  compression: {enabled: false}\n");
    for ae in ["gzip", "br", "zstd"] {
        let r = s.fetch("/json/x", ae);
        assert_identity(&r, s.json.as_bytes(), &format!("{ae} with compression off"));
    }
}

#[test]
fn already_encoded_upstream_responses_pass_through_untouched() {
    let s = CompressionSite::start("");
    for ae in ["gzip", "gzip, br", "br"] {
        let r = s.fetch("/pregz/x", ae);
        assert_eq!(
            one(&r.headers, "content-encoding"),
            "gzip",
            "Accept-Encoding {ae}: {:?}",
            r.headers
        );
        assert_eq!(
            r.body, s.pre_gzipped,
            "Accept-Encoding {ae}: body re-encoded"
        );
    }
    assert_eq!(gunzip(&s.pre_gzipped), s.json.as_bytes());
}

// ------------------------------------------------------------------------------------------
// 7. WebSocket pass-through
// ------------------------------------------------------------------------------------------

/// The RFC 6455 sample key and its accept value.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// An upstream that switches to WebSocket when asked (then echoes raw bytes) and otherwise
/// answers `200 no upgrade`.
fn ws_upstream() -> TinyUpstream {
    TinyUpstream::start(Arc::new(|s: &mut TcpStream, head: &str, rest: Vec<u8>| {
        let h = head_headers(head);
        let wants_ws = header_tokens(&h, "upgrade").contains(&"websocket".to_string());
        if !wants_ws {
            let body = "no upgrade";
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes());
            return;
        }
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
        );
        if s.write_all(resp.as_bytes()).is_err() || s.write_all(&rest).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    }))
}

/// A client's upgrade handshake: the stream, the status, the response headers and the bytes
/// read past the response head.
struct Handshake {
    stream: TcpStream,
    status: u16,
    headers: Vec<(String, String)>,
    rest: Vec<u8>,
}

fn ws_connect(port: u16, path: &str, extra: &[(&str, &str)]) -> Handshake {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    let _ = stream.set_nodelay(true);
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    stream.write_all(req.as_bytes()).expect("send handshake");
    let (head, rest) = read_head(&mut stream).expect("a response head to the handshake");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    Handshake {
        stream,
        status,
        headers: head_headers(&head),
        rest,
    }
}

/// Asserts a switched connection relays `payload` to the echoing upstream and back.
fn assert_echoes(hs: &mut Handshake, payload: &[u8]) {
    hs.stream.write_all(payload).expect("write after upgrade");
    let got = read_exactly(&mut hs.stream, std::mem::take(&mut hs.rest), payload.len());
    assert_eq!(got, payload, "bytes after the upgrade were not relayed");
}

#[test]
fn websocket_route_switches_protocols_and_relays_bytes_both_ways() {
    let up = ws_upstream();
    let gw = pool_gateway(
        "ws",
        &[up.url()],
        "routes:\n  - {name: live, prefix: /live, upstream: ws, websocket: true}\n",
    );
    let mut hs = ws_connect(gw.port, "/live/socket", &[]);
    assert_eq!(hs.status, 101, "{:?}", hs.headers);
    assert_echoes(&mut hs, b"\x81\x05hello");
    assert_echoes(&mut hs, b"second message, still open");

    let heads = up.heads();
    assert_eq!(heads.len(), 1);
    let seen = head_headers(&heads[0]);
    assert_eq!(header_tokens(&seen, "upgrade"), vec!["websocket"]);
    assert!(header_tokens(&seen, "connection").contains(&"upgrade".to_string()));
    assert_eq!(one(&seen, "sec-websocket-key"), WS_KEY);
    assert_eq!(one(&seen, "sec-websocket-version"), "13");

    // The client must be told which protocol it switched to: a browser fails the WebSocket
    // connection when the 101 lacks `Upgrade: websocket` (RFC 6455 §4.1, RFC 9110 §15.2.2).
    assert_eq!(one(&hs.headers, "sec-websocket-accept"), WS_ACCEPT);
    assert!(
        header_tokens(&hs.headers, "connection").contains(&"upgrade".to_string()),
        "{:?}",
        hs.headers
    );
    assert!(
        header_tokens(&hs.headers, "upgrade").contains(&"websocket".to_string()),
        "the 101 reached the client without `Upgrade: websocket`: {:?}",
        hs.headers
    );
}

#[test]
fn route_without_websocket_drops_upgrade_and_never_switches() {
    let up = ws_upstream();
    let gw = pool_gateway(
        "ws",
        &[up.url()],
        "routes:\n  - {name: plain, prefix: /plain, upstream: ws}\n",
    );
    let hs = ws_connect(gw.port, "/plain/socket", &[]);
    assert_ne!(hs.status, 101, "switched on a route without websocket");
    assert_eq!(hs.status, 200, "{:?}", hs.headers);
    let heads = up.heads();
    assert_eq!(heads.len(), 1);
    let seen = head_headers(&heads[0]);
    assert!(
        header_tokens(&seen, "upgrade").is_empty(),
        "upstream saw Upgrade: {seen:?}"
    );
    assert!(
        !header_tokens(&seen, "connection").contains(&"upgrade".to_string()),
        "{seen:?}"
    );
}

#[test]
fn websocket_upgrade_requires_authentication_on_protected_routes() {
    let dir = TempDir::new("ws");
    let db = dir.sqlite_url();
    let email = add_patients(&db, 1).remove(0);
    let up = ws_upstream();
    let gw = Gw::start(&format!(
        "upstreams:\n{}\nroutes:\n  - {{name: live, prefix: /live, upstream: ws, websocket: true, auth: required}}\n{}",
        upstream("ws", &[up.url()], ""),
        auth_block(&db)
    ));
    let hs = ws_connect(gw.port, "/live/socket", &[]);
    assert_eq!(hs.status, 401, "{:?}", hs.headers);
    let hs = ws_connect(
        gw.port,
        "/live/socket",
        &[("Authorization", "Bearer not-a-token")],
    );
    assert_eq!(hs.status, 401, "{:?}", hs.headers);
    assert!(
        up.heads().is_empty(),
        "an unauthenticated upgrade reached the upstream"
    );

    let token = login(gw.port, &email);
    let mut hs = ws_connect(
        gw.port,
        "/live/socket",
        &[("Authorization", &bearer(&token))],
    );
    assert_eq!(hs.status, 101, "{:?}", hs.headers);
    assert_echoes(&mut hs, b"authenticated bytes");
    let heads = up.heads();
    assert_eq!(heads.len(), 1);
    let seen = head_headers(&heads[0]);
    assert!(
        seen.iter().any(|(k, _)| k == "x-user-id"),
        "identity headers on the upgrade: {seen:?}"
    );
}

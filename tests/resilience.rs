//! Resilience: which failures are retried (and which never are), the retry budget, per-backend
//! circuit breakers, route fallbacks, and misbehaving upstreams (dead, closing, hanging, slow,
//! truncating, flapping), observed from the client, the fake upstreams and `/metrics`.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Pool lines that switch the breaker off, for tests about the retry policy alone (the default
/// breaker opens after 5 consecutive failures and would hide later attempts).
const NO_BREAKER: &str = "    circuit_breaker: {enabled: false}\n";

/// `gatehouse_circuit_breaker_state` of one backend (None if not exported).
fn breaker_state(gw: &Gw, backend: &FakeUpstream) -> Option<f64> {
    let addr = backend.addr();
    let text = scrape(gw.admin_port);
    let labels = [("upstream", "svc"), ("backend", addr.as_str())];
    samples(&text, "gatehouse_circuit_breaker_state", &labels)
        .first()
        .copied()
}

/// Total non-health requests recorded across `ups`.
fn recorded(ups: &[&FakeUpstream]) -> usize {
    ups.iter().map(|u| u.request_count()).sum()
}

/// Recorded requests with this method across `ups`.
fn recorded_method(ups: &[&FakeUpstream], method: &str) -> usize {
    ups.iter()
        .flat_map(|u| u.requests())
        .filter(|r| r.method == method)
        .count()
}

/// A response the gateway produced because no backend could take the request.
fn assert_fallback_marked(r: &Response) {
    assert_eq!(
        r.header("x-gatehouse-fallback"),
        Some("1"),
        "not marked as a fallback: {:?}",
        r.headers
    );
}

// ------------------------------------------------------------------------------------------
// What is retried
// ------------------------------------------------------------------------------------------

#[test]
fn connect_failures_are_retried_on_the_live_backend_so_every_get_succeeds() {
    let live = FakeUpstream::start(Behavior::Echo);
    // No health check: only the retry keeps the dead backend's refusals from the client.
    let gw = svc_gateway(&[dead_backend(), live.url()], "", "");

    for i in 0..50 {
        let r = gw.get(&format!("/svc/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(json(&r)["method"], "GET", "request {i} not served by Echo");
    }

    assert_eq!(live.request_count(), 50);
    let retries = gw.metric(
        "gatehouse_retries_total",
        &[("route", "svc"), ("reason", "connect_error")],
    );
    assert!(retries > 0.0, "no connect_error retry counted");
}

#[test]
fn post_is_never_sent_twice_without_an_opt_in() {
    let (a, b) = (
        FakeUpstream::start(Behavior::Close),
        FakeUpstream::start(Behavior::Close),
    );
    let gw = svc_gateway(&[a.url(), b.url()], NO_BREAKER, "");

    let sent = 6;
    for i in 0..sent {
        let r = request(
            gw.port,
            "POST",
            "/svc/orders",
            &[],
            format!("order {i}").as_bytes(),
        )
        .unwrap_or_else(|e| panic!("POST {i}: {e}"));
        assert_json_error(&r, 502, "upstream_error", "");
    }

    assert_eq!(
        recorded_method(&[&a, &b], "POST"),
        sent,
        "a POST reached the upstreams more than once"
    );
}

#[test]
fn get_to_backends_that_close_without_answering_is_retried() {
    let (a, b) = (
        FakeUpstream::start(Behavior::Close),
        FakeUpstream::start(Behavior::Close),
    );
    let gw = svc_gateway(&[a.url(), b.url()], NO_BREAKER, "");

    let sent = 3;
    for i in 0..sent {
        let r = gw.get(&format!("/svc/{i}"));
        assert_json_error(&r, 502, "upstream_error", "");
    }

    let seen = recorded_method(&[&a, &b], "GET");
    assert!(
        seen > sent,
        "GET was not retried: {seen} recorded for {sent} sent"
    );
    assert!(a.request_count() > 0 && b.request_count() > 0);
}

#[test]
fn methods_all_lets_a_post_be_retried() {
    let (a, b) = (
        FakeUpstream::start(Behavior::Close),
        FakeUpstream::start(Behavior::Close),
    );
    let gw = svc_gateway(&[a.url(), b.url()], NO_BREAKER, ", retry: {methods: all}");

    let sent = 3;
    for i in 0..sent {
        let r = request(gw.port, "POST", "/svc/orders", &[], b"order")
            .unwrap_or_else(|e| panic!("POST {i}: {e}"));
        assert_json_error(&r, 502, "upstream_error", "");
    }

    let seen = recorded_method(&[&a, &b], "POST");
    assert!(
        seen > sent,
        "POST was not retried: {seen} recorded for {sent} sent"
    );
    let replayed = [&a, &b]
        .iter()
        .flat_map(|u| u.requests())
        .all(|r| r.body == b"order");
    assert!(replayed, "a retried POST lost its body");
}

#[test]
fn idempotency_key_opt_in_retries_only_posts_that_carry_the_key() {
    let (a, b) = (
        FakeUpstream::start(Behavior::Close),
        FakeUpstream::start(Behavior::Close),
    );
    let gw = svc_gateway(
        &[a.url(), b.url()],
        NO_BREAKER,
        ", retry: {idempotency_key: true}",
    );

    let with_key = request(
        gw.port,
        "POST",
        "/svc/orders",
        &[("Idempotency-Key", "k1")],
        b"order",
    )
    .unwrap_or_else(|e| panic!("POST with key: {e}"));
    assert_json_error(&with_key, 502, "upstream_error", "");
    let keyed = recorded_method(&[&a, &b], "POST");
    assert!(
        keyed > 1,
        "POST with Idempotency-Key was not retried ({keyed} recorded)"
    );

    let without = request(gw.port, "POST", "/svc/orders", &[], b"order")
        .unwrap_or_else(|e| panic!("POST without key: {e}"));
    assert_json_error(&without, 502, "upstream_error", "");
    assert_eq!(
        recorded_method(&[&a, &b], "POST"),
        keyed + 1,
        "a POST without Idempotency-Key was sent more than once"
    );
}

#[test]
fn bodies_larger_than_the_retry_buffer_are_not_retried() {
    let (a, b) = (
        FakeUpstream::start(Behavior::Close),
        FakeUpstream::start(Behavior::Close),
    );
    let gw = svc_gateway(
        &[a.url(), b.url()],
        NO_BREAKER,
        ", retry: {retry_buffer: 1KiB}",
    );

    let body = vec![b'x'; 4096];
    let sent = 3;
    for i in 0..sent {
        let r = request(gw.port, "PUT", "/svc/doc", &[], &body)
            .unwrap_or_else(|e| panic!("PUT {i}: {e}"));
        assert_json_error(&r, 502, "upstream_error", "");
    }

    assert_eq!(
        recorded_method(&[&a, &b], "PUT"),
        sent,
        "a PUT over retry_buffer was sent more than once"
    );
}

#[test]
fn bodies_within_the_retry_buffer_are_retried_whole() {
    let (a, b) = (
        FakeUpstream::start(Behavior::Close),
        FakeUpstream::start(Behavior::Close),
    );
    let gw = svc_gateway(
        &[a.url(), b.url()],
        NO_BREAKER,
        ", retry: {retry_buffer: 1KiB}",
    );

    let body = vec![b'y'; 512];
    let r = request(gw.port, "PUT", "/svc/doc", &[], &body).unwrap_or_else(|e| panic!("PUT: {e}"));
    assert_json_error(&r, 502, "upstream_error", "");

    let puts: Vec<_> = [&a, &b].iter().flat_map(|u| u.requests()).collect();
    assert!(puts.len() > 1, "a small PUT was not retried");
    assert!(
        puts.iter().all(|p| p.body == body),
        "a retried PUT did not carry the whole body: {:?}",
        puts.iter().map(|p| p.body.len()).collect::<Vec<_>>()
    );
}

#[test]
fn a_503_is_retried_on_the_other_backend() {
    let busy = FakeUpstream::responding(503, &[("Retry-After", "0")], "busy");
    let live = FakeUpstream::start(Behavior::Echo);
    let gw = svc_gateway(&[busy.url(), live.url()], "", "");

    for i in 0..10 {
        let r = gw.get(&format!("/svc/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }

    assert!(busy.request_count() > 0, "the 503 backend was never tried");
    assert_eq!(live.request_count(), 10);
    let retries = gw.metric(
        "gatehouse_retries_total",
        &[("route", "svc"), ("reason", "503")],
    );
    assert!(retries > 0.0, "no 503 retry counted");
}

#[test]
fn retry_on_without_503_passes_the_upstream_503_through() {
    let busy = FakeUpstream::responding(503, &[], "busy");
    let live = FakeUpstream::start(Behavior::Echo);
    let gw = svc_gateway(
        &[busy.url(), live.url()],
        "",
        ", retry: {retry_on: [connect_error]}",
    );

    let statuses: Vec<u16> = (0..10)
        .map(|i| {
            let r = gw.get(&format!("/svc/{i}"));
            match r.status {
                200 => assert_eq!(json(&r)["method"], "GET"),
                503 => assert_eq!(r.text(), "busy", "not the upstream's 503"),
                s => panic!("request {i}: unexpected {s}: {}", r.text()),
            }
            r.status
        })
        .collect();

    assert!(
        statuses.contains(&503),
        "no 503 passed through: {statuses:?}"
    );
    assert_eq!(
        busy.request_count() + live.request_count(),
        10,
        "something was retried"
    );
}

#[test]
fn retry_after_beyond_the_deadline_passes_the_503_through() {
    let busy = FakeUpstream::responding(503, &[("Retry-After", "30")], "come back later");
    let gw = svc_gateway(&[busy.url()], "", ", timeouts: {total: 2s}");

    for i in 1..=3 {
        let r = get(gw.port, "/svc/x", &[])
            .unwrap_or_else(|e| panic!("no answer within the client's 10s: {e}"));
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.text(), "come back later", "not the upstream's 503");
        assert_eq!(r.header("retry-after"), Some("30"));
        assert_eq!(r.header("x-gatehouse-fallback"), None);
        assert_eq!(busy.request_count(), i, "the 503 was retried");
    }
}

#[test]
fn retry_after_within_the_deadline_retries_the_same_backend() {
    let busy = FakeUpstream::responding(503, &[("Retry-After", "0")], "busy");
    let gw = svc_gateway(&[busy.url()], NO_BREAKER, ", retry: {retries: 2}");

    let r = gw.get("/svc/x");

    // Every attempt got a 503: the last one is passed through.
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.text(), "busy");
    assert_eq!(busy.request_count(), 3, "1 attempt + 2 retries");
}

#[test]
fn retry_budget_caps_retries_during_a_total_outage() {
    let (a, b) = (
        FakeUpstream::responding(503, &[], "down a"),
        FakeUpstream::responding(503, &[], "down b"),
    );
    let pool =
        format!("{NO_BREAKER}    retry_budget: {{ratio: 0.1, min_per_second: 1, window: 10s}}\n");
    let gw = svc_gateway(&[a.url(), b.url()], &pool, "");

    let sent = 60;
    for i in 0..sent {
        let r = gw.get(&format!("/svc/{i}"));
        assert_eq!(r.status, 503, "request {i}: {}", r.text());
    }

    // 0.1 × 60 requests is below the floor of 1/s over 10 s = 10 retries.
    let total = recorded(&[&a, &b]);
    assert!(total > sent, "nothing was retried ({total})");
    assert!(
        total <= sent + 10 + 2,
        "{total} upstream requests for {sent} client requests: the budget did not cap retries"
    );
    let exhausted = gw.metric(
        "gatehouse_retry_budget_exhausted_total",
        &[("upstream", "svc")],
    );
    assert!(exhausted > 0.0, "budget exhaustion not counted");
}

// ------------------------------------------------------------------------------------------
// Circuit breaker and fallbacks
// ------------------------------------------------------------------------------------------

#[test]
fn breaker_opens_after_consecutive_failures_and_traffic_moves_to_the_other_backend() {
    let broken = FakeUpstream::responding(500, &[], "broken");
    let live = FakeUpstream::start(Behavior::Echo);
    let gw = svc_gateway(
        &[broken.url(), live.url()],
        "    circuit_breaker: {consecutive_failures: 3, cooldown: 30s}\n",
        ", retry: {retries: 0}",
    );

    let mut opened = false;
    for i in 0..20 {
        let r = gw.get(&format!("/svc/{i}"));
        assert!(matches!(r.status, 200 | 500), "request {i}: {}", r.status);
        if breaker_state(&gw, &broken) == Some(1.0) {
            opened = true;
            break;
        }
    }
    assert!(opened, "the breaker of the failing backend never opened");
    assert_eq!(broken.request_count(), 3, "opened after 3 failures");
    let addr = broken.addr();
    let to_open = gw.metric(
        "gatehouse_circuit_breaker_transitions_total",
        &[("upstream", "svc"), ("backend", &addr), ("to", "open")],
    );
    assert!(to_open >= 1.0, "no transition to open counted");
    assert_eq!(breaker_state(&gw, &live), Some(0.0));

    let before = broken.request_count();
    for i in 0..10 {
        let r = gw.get(&format!("/svc/after/{i}"));
        assert_eq!(r.status, 200, "request {i} after opening: {}", r.text());
    }
    assert_eq!(
        broken.request_count(),
        before,
        "an open breaker still let requests through"
    );
}

#[test]
fn clients_that_hang_up_mid_request_never_open_the_breaker_of_a_healthy_backend() {
    let slow = FakeUpstream::start(Behavior::Delay {
        delay: Duration::from_millis(300),
        status: 200,
        body: "slow".into(),
    });
    let gw = svc_gateway(
        &[slow.url()],
        "    circuit_breaker: {consecutive_failures: 3, cooldown: 30s}\n",
        ", retry: {retries: 0}",
    );
    // Ten clients send a request and hang up while the backend is still working on it,
    // as a browser does when the user navigates away.
    for i in 0..10 {
        let mut c = TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        let req = format!("GET /svc/gone/{i} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        c.write_all(req.as_bytes()).expect("send");
        let n = i + 1;
        assert!(
            wait_until(Duration::from_secs(5), || slow.request_count() >= n),
            "request {i} never reached the backend"
        );
        drop(c);
    }
    // Let every hung-up request finish on the gateway's side.
    let settled = wait_until(Duration::from_secs(5), || {
        gw.metric(
            "gatehouse_upstream_requests_total",
            &[("outcome", "client_error")],
        ) >= 10.0
    });
    assert!(settled, "{}", scrape(gw.admin_port));
    assert_eq!(breaker_state(&gw, &slow), Some(0.0), "the breaker opened");
    let r = gw.get("/svc/after");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "slow");
}

#[test]
fn breaker_half_opens_after_the_cooldown_and_a_successful_probe_closes_it() {
    let up = FakeUpstream::responding(500, &[], "broken");
    let gw = svc_gateway(
        &[up.url()],
        "    circuit_breaker: {consecutive_failures: 2, cooldown: 300ms}\n",
        "",
    );
    let addr = up.addr();
    let transitions = |to: &str| {
        gw.metric(
            "gatehouse_circuit_breaker_transitions_total",
            &[("upstream", "svc"), ("backend", &addr), ("to", to)],
        )
    };

    for _ in 0..2 {
        assert_eq!(gw.get("/svc/x").status, 500);
    }
    assert_eq!(
        transitions("open"),
        1.0,
        "two failures should open the breaker"
    );

    up.set_behavior(Behavior::Echo);
    let mut last = None;
    let recovered = wait_until(Duration::from_secs(5), || {
        let r = gw.get("/svc/probe");
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    assert!(recovered, "never recovered; last answer: {last:?}");

    assert!(transitions("half_open") >= 1.0, "no half-open transition");
    assert!(transitions("closed") >= 1.0, "no close transition");
    assert_eq!(breaker_state(&gw, &up), Some(0.0), "breaker not closed");
    for i in 0..5 {
        let r = gw.get(&format!("/svc/{i}"));
        assert_eq!(r.status, 200, "request {i} after closing: {}", r.text());
    }
}

const FALLBACK_ROUTE: &str = "routes:
  - name: svc
    prefix: /svc
    upstream: svc
    fallback:
      status: 503
      headers: {Content-Type: application/json, Retry-After: \"7\"}
      body: {\"message\": \"maintenance\"}
";

const QUICK_CHECK: &str = "    health_check: {interval: 200ms, timeout: 200ms, rise: 1, fall: 1}\n";

/// Waits until every backend of pool `svc` is exported as unhealthy.
fn wait_all_unhealthy(gw: &Gw, backends: usize) {
    let all_down = wait_until(Duration::from_secs(10), || {
        let text = scrape(gw.admin_port);
        let v = samples(
            &text,
            "gatehouse_upstream_backend_healthy",
            &[("upstream", "svc")],
        );
        v.len() == backends && v.iter().all(|h| *h == 0.0)
    });
    assert!(all_down, "backends never all reported unhealthy");
}

#[test]
fn route_fallback_answers_when_every_backend_is_unhealthy() {
    let (a, b) = (
        FakeUpstream::start(Behavior::Echo),
        FakeUpstream::start(Behavior::Echo),
    );
    a.health_status(500);
    b.health_status(500);
    let gw = Gw::start(&format!(
        "upstreams:\n{}\n{FALLBACK_ROUTE}",
        upstream("svc", &[a.url(), b.url()], QUICK_CHECK)
    ));
    wait_all_unhealthy(&gw, 2);

    let r = gw.get("/svc/x");

    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(json(&r), serde_json::json!({"message": "maintenance"}));
    assert_fallback_marked(&r);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(
        r.header_all("content-type"),
        vec!["application/json"],
        "one Content-Type"
    );
    assert_eq!(
        recorded(&[&a, &b]),
        0,
        "an unhealthy backend got the request"
    );
    let fallbacks = gw.metric("gatehouse_fallbacks_total", &[("route", "svc")]);
    assert!(fallbacks > 0.0, "fallback not counted");
}

#[test]
fn open_breakers_without_a_fallback_give_503_upstream_unavailable() {
    let (a, b) = (
        FakeUpstream::responding(500, &[], "broken a"),
        FakeUpstream::responding(500, &[], "broken b"),
    );
    let gw = svc_gateway(
        &[a.url(), b.url()],
        "    circuit_breaker: {consecutive_failures: 1, cooldown: 30s}\n",
        ", retry: {retries: 0}",
    );

    let both_open = wait_until(Duration::from_secs(5), || {
        let r = gw.get("/svc/x");
        r.status == 503
            && breaker_state(&gw, &a) == Some(1.0)
            && breaker_state(&gw, &b) == Some(1.0)
    });
    assert!(
        both_open,
        "both breakers should open after one failure each"
    );
    let before = recorded(&[&a, &b]);

    let r = gw.get("/svc/y");

    assert_json_error(&r, 503, "upstream_unavailable", "");
    assert!(r.header("retry-after").is_some(), "no Retry-After");
    assert_fallback_marked(&r);
    assert_eq!(
        recorded(&[&a, &b]),
        before,
        "an open breaker let a request through"
    );
    let fallbacks = gw.metric("gatehouse_fallbacks_total", &[("route", "svc")]);
    assert!(fallbacks > 0.0, "fallback not counted");
}

#[test]
fn a_dead_pool_answers_503_without_trying_any_backend() {
    // One backend (picked without the balancer) and several (picked through it).
    for n in [1, 3] {
        let dead: Vec<String> = (0..n).map(|_| dead_backend()).collect();
        let gw = svc_gateway(&dead, QUICK_CHECK, "");
        wait_all_unhealthy(&gw, n);

        let r = get(gw.port, "/svc/x", &[])
            .unwrap_or_else(|e| panic!("no answer within the client's 10s: {e}"));

        assert_json_error(&r, 503, "upstream_unavailable", "");
        assert!(r.header("retry-after").is_some(), "no Retry-After");
        assert_fallback_marked(&r);
        let attempts = gw.metric("gatehouse_upstream_requests_total", &[("upstream", "svc")]);
        assert_eq!(
            attempts, 0.0,
            "{n} backends: the gateway tried a backend known to be down"
        );
        let fallbacks = gw.metric("gatehouse_fallbacks_total", &[("route", "svc")]);
        assert!(fallbacks > 0.0, "{n} backends: fallback not counted");
    }
}

#[test]
fn a_single_backend_behind_an_open_breaker_is_not_tried() {
    let a = FakeUpstream::responding(500, &[], "broken");
    let gw = svc_gateway(
        &[a.url()],
        "    circuit_breaker: {consecutive_failures: 1, cooldown: 30s}\n",
        ", retry: {retries: 0}",
    );
    let open = wait_until(Duration::from_secs(5), || {
        gw.get("/svc/x");
        breaker_state(&gw, &a) == Some(1.0)
    });
    assert!(open, "the breaker should open after one failure");
    let before = recorded(&[&a]);

    let r = gw.get("/svc/y");

    assert_json_error(&r, 503, "upstream_unavailable", "");
    assert_eq!(
        recorded(&[&a]),
        before,
        "an open breaker let a request through"
    );
}

// ------------------------------------------------------------------------------------------
// Misbehaving upstreams
// ------------------------------------------------------------------------------------------

/// Sends a GET on a fresh connection and reads until the gateway closes it (at most 10 s).
/// Returns the raw bytes and whether the connection was closed.
fn raw_get_until_close(port: u16, path: &str) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (out, true), // reset
        }
    }
    (out, false)
}

#[test]
fn a_body_cut_mid_way_is_not_passed_off_as_complete_and_the_gateway_keeps_serving() {
    // Two backends, so only "the response has started" keeps the gateway from retrying.
    let cut = || FakeUpstream::start(Behavior::TruncatedBody { status: 200 });
    let (a, b) = (cut(), cut());
    let gw = svc_gateway(&[a.url(), b.url()], "", "");

    let (bytes, closed) = raw_get_until_close(gw.port, "/svc/x");

    assert!(closed, "the gateway left the client connection open");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let head_end = text.find("\r\n\r\n");
    if let Some(end) = head_end.filter(|_| text.starts_with("HTTP/1.1 200")) {
        // The header went out before the body broke: the body must be visibly incomplete,
        // and nothing may be retried (a second answer cannot follow the first header).
        let head = text[..end].to_ascii_lowercase();
        let body = &bytes[end + 4..];
        let declared = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        match declared {
            Some(n) => assert!(body.len() < n, "a cut body arrived as complete: {text:?}"),
            None => assert!(
                !body.ends_with(b"0\r\n\r\n"),
                "a cut chunked body was terminated: {text:?}"
            ),
        }
        assert_eq!(
            recorded(&[&a, &b]),
            1,
            "retried after the response had started"
        );
    } else {
        // Nothing was forwarded yet: then it must be the gateway's 502, not a fake success.
        assert!(
            bytes.is_empty() || text.starts_with("HTTP/1.1 502"),
            "unexpected answer to a truncated upstream body: {text:?}"
        );
    }

    a.set_behavior(Behavior::Echo);
    b.set_behavior(Behavior::Echo);
    for i in 0..2 {
        let r = gw.get(&format!("/svc/next/{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(json(&r)["method"], "GET");
    }
}

/// Sends GETs to `/svc` and asserts each is answered 200 by the Echo backend.
fn all_echoed(gw: &Gw, n: usize) {
    for i in 0..n {
        let r = get(gw.port, &format!("/svc/{i}"), &[])
            .unwrap_or_else(|e| panic!("request {i}: no answer within the client's 10s: {e}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(json(&r)["method"], "GET", "request {i}");
    }
}

#[test]
fn a_backend_hanging_past_the_read_timeout_is_retried_on_another() {
    let hang = FakeUpstream::start(Behavior::Hang);
    let live = FakeUpstream::start(Behavior::Echo);
    let gw = svc_gateway(&[hang.url(), live.url()], "", ", timeouts: {read: 300ms}");

    all_echoed(&gw, 4);

    assert!(
        hang.request_count() >= 1,
        "the hanging backend was never tried"
    );
    let retries = gw.metric(
        "gatehouse_retries_total",
        &[("route", "svc"), ("reason", "timeout")],
    );
    assert!(retries > 0.0, "no timeout retry counted");
}

#[test]
fn slow_response_headers_past_the_read_timeout_are_retried_on_another_backend() {
    let slow = FakeUpstream::start(Behavior::Delay {
        delay: Duration::from_secs(2),
        status: 200,
        body: "late".into(),
    });
    let live = FakeUpstream::start(Behavior::Echo);
    let gw = svc_gateway(&[slow.url(), live.url()], "", ", timeouts: {read: 300ms}");

    all_echoed(&gw, 4);

    assert!(
        slow.request_count() >= 1,
        "the slow backend was never tried"
    );
}

#[test]
fn a_flapping_health_check_never_fails_a_request() {
    let (a, b) = (
        FakeUpstream::start(Behavior::Echo),
        FakeUpstream::start(Behavior::Echo),
    );
    let gw = svc_gateway(
        &[a.url(), b.url()],
        "    health_check: {interval: 100ms, timeout: 200ms, rise: 1, fall: 1}\n",
        "",
    );

    let mut to_a_while_down = 0;
    for phase in 0..10 {
        let down = phase % 2 == 0;
        a.health_status(if down { 500 } else { 200 });
        // Three probes after the flip: checks run one pass at a time, so the second one's
        // verdict is applied before the third is answered.
        let probes = a.health_probe_count();
        let seen = wait_until(Duration::from_secs(5), || {
            a.health_probe_count() >= probes + 3
        });
        assert!(seen, "phase {phase}: health checks stopped");
        let before = a.request_count();
        all_echoed(&gw, 3);
        if down {
            to_a_while_down += a.request_count() - before;
        }
    }

    assert_eq!(recorded(&[&a, &b]), 30);
    assert_eq!(to_a_while_down, 0, "an ejected backend got traffic");
    assert!(
        a.request_count() > 0,
        "the flapping backend never came back"
    );
}

#[test]
fn fallback_template_is_rendered_for_browsers_and_its_json_body_for_api_clients() {
    let tmp = TempDir::new("fallback-tpl");
    let dir = tmp.path();
    std::fs::write(dir.join("error.html"), "error {{ error.status }}").expect("write");
    std::fs::write(
        dir.join("maintenance.html"),
        "<h1>Mantenimiento {{ error.status }}</h1>",
    )
    .expect("write");
    let dead = free_port();
    let gw = Gw::start(&format!(
        "upstreams:\n  svc:\n    backends: http://127.0.0.1:{dead}\n    health_check: {{interval: 200ms, timeout: 200ms, rise: 1, fall: 1}}\n\
         routes:\n  - {{prefix: /svc, upstream: svc, fallback: {{status: 503, body: {{message: maintenance}}, template: maintenance.html}}}}\n\
         web:\n  templates: {}\n  pages: [{{path: /x, template: error.html, title: X}}]\n",
        dir.display()
    ));
    let browser = gw.get_with("/svc/page", &[("Accept", "text/html")]);
    assert_eq!(browser.status, 503);
    assert!(
        browser.text().contains("<h1>Mantenimiento 503</h1>"),
        "{}",
        browser.text()
    );
    assert_eq!(browser.header("x-gatehouse-fallback"), Some("1"));
    let api = gw.get_with("/svc/page", &[("Accept", "application/json")]);
    assert_eq!(api.status, 503);
    assert_eq!(json(&api), serde_json::json!({"message": "maintenance"}));
    assert_eq!(api.header("x-gatehouse-fallback"), Some("1"));
}

#[test]
fn a_fallback_template_that_does_not_exist_is_a_config_error() {
    let yaml = format!(
        "upstreams:\n  svc: {{backends: 'http://127.0.0.1:9'}}\nroutes:\n  - {{prefix: /svc, upstream: svc, fallback: {{template: nope.html}}}}\nweb:\n  templates: {}/templates\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let config = gatehouse::Config::from_yaml_str(&yaml).expect("parses");
    let err = gatehouse::check(config)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("routes[0].fallback.template"), "{err}");
}

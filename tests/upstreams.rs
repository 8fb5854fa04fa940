//! Upstream pools: load balancing (round robin, weights, consistent hash), active health
//! checks (HTTP and TCP), "no backend left" answers, keep-alive reuse and the upstream Host.

mod common;
use common::*;
use std::time::Duration;

/// A backend that answers 200 with its own name as the body, so a response says who served it.
fn named(name: &str) -> FakeUpstream {
    FakeUpstream::start(Behavior::Respond {
        status: 200,
        headers: vec![],
        body: name.to_string(),
    })
}

/// A route `/svc` to the pool `svc`; `pool` is the pool's YAML (see [`upstream`]).
fn gateway_with_pool(pool: &str) -> Gw {
    Gw::start(&format!(
        "upstreams:\n{pool}\nroutes:\n  - {{prefix: /svc, upstream: svc}}\n"
    ))
}

/// Health settings that react within one short interval.
const QUICK_HTTP_CHECK: &str =
    "    health_check: {interval: 200ms, timeout: 200ms, rise: 1, fall: 1}\n";
const QUICK_TCP_CHECK: &str =
    "    health_check: {type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1}\n";

/// What `/api/v1/health` says about the backend on `port` of pool `svc`.
fn backend_healthy(gw: &Gw, port: u16) -> Option<bool> {
    let r = gw.get("/api/v1/health");
    let v = json(&r);
    let backends = v["upstreams"]["svc"]["backends"].as_array()?.clone();
    backends
        .iter()
        .find(|b| b["address"] == format!("127.0.0.1:{port}"))
        .and_then(|b| b["healthy"].as_bool())
}

/// Waits (up to 10 s) until the gateway reports the backend on `port` as `healthy`.
fn wait_for_health(gw: &Gw, port: u16, healthy: bool) {
    let reached = wait_until(Duration::from_secs(10), || {
        backend_healthy(gw, port) == Some(healthy)
    });
    assert!(
        reached,
        "backend 127.0.0.1:{port} never became {}",
        if healthy { "healthy" } else { "unhealthy" }
    );
}

/// Sends `n` requests to `/svc` and returns the response bodies (each must be a 200).
fn bodies(gw: &Gw, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
    (0..n)
        .map(|i| {
            let r = gw.get_with(&format!("/svc/{i}"), headers);
            assert_eq!(r.status, 200, "request {i}: {}", r.text());
            r.text()
        })
        .collect()
}

#[test]
fn round_robin_spreads_requests_across_backends() {
    let (a, b) = (named("a"), named("b"));
    let gw = gateway_with_pool(&upstream("svc", &[a.url(), b.url()], ""));

    let got = bodies(&gw, 10, &[]);

    assert_eq!(a.request_count() + b.request_count(), 10);
    assert_eq!(a.request_count(), 5, "answers: {got:?}");
    assert_eq!(b.request_count(), 5, "answers: {got:?}");
}

#[test]
fn weighted_round_robin_follows_the_weights() {
    let (heavy, light) = (named("heavy"), named("light"));
    let gw = gateway_with_pool(&format!(
        "  svc:\n    backends:\n      - {{url: {}, weight: 3}}\n      - {{url: {}, weight: 1}}\n",
        heavy.url(),
        light.url()
    ));

    bodies(&gw, 40, &[]);

    // Pingora's weighted round robin walks a fixed list with each backend repeated `weight`
    // times, so every 4 consecutive picks are 3 + 1: the split is exact.
    assert_eq!(heavy.request_count(), 30);
    assert_eq!(light.request_count(), 10);
}

#[test]
fn consistent_hash_on_a_header_keeps_each_key_on_one_backend() {
    let (a, b) = (named("a"), named("b"));
    let gw = gateway_with_pool(&upstream(
        "svc",
        &[a.url(), b.url()],
        "    balance: consistent_hash\n    hash_key: header:X-User\n",
    ));

    let mut owners = Vec::new();
    for key in 0..20 {
        let user = format!("user-{key}");
        let got = bodies(&gw, 3, &[("X-User", &user)]);
        assert!(
            got.iter().all(|g| g == &got[0]),
            "{user} moved between backends: {got:?}"
        );
        owners.push(got[0].clone());
    }

    assert!(
        owners.contains(&"a".to_string()) && owners.contains(&"b".to_string()),
        "20 keys should land on both backends: {owners:?}"
    );
}

#[test]
fn consistent_hash_on_a_cookie_follows_that_cookie_only() {
    let (a, b) = (named("a"), named("b"));
    let gw = gateway_with_pool(&upstream(
        "svc",
        &[a.url(), b.url()],
        "    balance: consistent_hash\n    hash_key: cookie:sid\n",
    ));

    let mut owners = Vec::new();
    for key in 0..20 {
        // Other cookies change on every request; only `sid` may decide.
        let got: Vec<String> = (0..3)
            .map(|n| {
                let cookie = format!("theme=t{n}; sid=s{key}; lang=l{n}");
                let r = gw.get_with("/svc/x", &[("Cookie", &cookie)]);
                assert_eq!(r.status, 200, "{}", r.text());
                r.text()
            })
            .collect();
        assert!(
            got.iter().all(|g| g == &got[0]),
            "sid=s{key} moved between backends: {got:?}"
        );
        owners.push(got[0].clone());
    }

    assert!(
        owners.contains(&"a".to_string()) && owners.contains(&"b".to_string()),
        "20 session ids should land on both backends: {owners:?}"
    );
}

#[test]
fn consistent_hash_defaults_to_the_client_ip() {
    let (a, b) = (named("a"), named("b"));
    // The test client always connects from 127.0.0.1; trusting it makes X-Forwarded-For the
    // client address, so many "clients" can be simulated without leaving loopback.
    let gw = Gw::start_with_server(
        "  trusted_proxies: [127.0.0.1/32]",
        &format!(
            "upstreams:\n{}\nroutes:\n  - {{prefix: /svc, upstream: svc}}\n",
            upstream("svc", &[a.url(), b.url()], "    balance: consistent_hash\n")
        ),
    );

    let mut owners = Vec::new();
    for key in 1..=20 {
        let client = format!("10.0.0.{key}");
        let got = bodies(&gw, 3, &[("X-Forwarded-For", &client)]);
        assert!(
            got.iter().all(|g| g == &got[0]),
            "client {client} moved between backends: {got:?}"
        );
        owners.push(got[0].clone());
    }

    assert!(
        owners.contains(&"a".to_string()) && owners.contains(&"b".to_string()),
        "20 client addresses should land on both backends: {owners:?}"
    );
}

#[test]
fn consistent_hash_ignores_forwarded_for_from_an_untrusted_peer() {
    let (a, b) = (named("a"), named("b"));
    // No trusted proxies: the client address is the peer (127.0.0.1) whatever it claims.
    let gw = gateway_with_pool(&upstream(
        "svc",
        &[a.url(), b.url()],
        "    balance: consistent_hash\n    hash_key: client_ip\n",
    ));

    let owners: Vec<String> = (1..=20)
        .map(|key| {
            let spoofed = format!("10.0.0.{key}");
            bodies(&gw, 1, &[("X-Forwarded-For", &spoofed)]).remove(0)
        })
        .collect();

    assert!(
        owners.iter().all(|o| o == &owners[0]),
        "a spoofed X-Forwarded-For moved the hash: {owners:?}"
    );
}

#[test]
fn failing_http_health_check_ejects_a_backend_and_recovery_brings_it_back() {
    let (a, b) = (named("a"), named("b"));
    let gw = gateway_with_pool(&upstream("svc", &[a.url(), b.url()], QUICK_HTTP_CHECK));
    wait_for_health(&gw, a.port(), true);
    wait_for_health(&gw, b.port(), true);

    a.health_status(500);
    wait_for_health(&gw, a.port(), false);
    let before = a.request_count();
    let got = bodies(&gw, 10, &[]);
    assert!(
        got.iter().all(|g| g == "b"),
        "an ejected backend still got traffic: {got:?}"
    );
    assert_eq!(a.request_count(), before);

    a.health_status(200);
    wait_for_health(&gw, a.port(), true);
    let got = bodies(&gw, 10, &[]);
    assert!(
        got.iter().any(|g| g == "a") && got.iter().any(|g| g == "b"),
        "the recovered backend gets no traffic: {got:?}"
    );
}

#[test]
fn tcp_health_check_ejects_a_closed_port_and_brings_it_back_when_it_listens() {
    let a = named("a");
    let b = named("b");
    let a_port = a.port();
    let gw = gateway_with_pool(&upstream("svc", &[a.url(), b.url()], QUICK_TCP_CHECK));
    wait_for_health(&gw, a_port, true);

    drop(a); // the port now refuses connections
    wait_for_health(&gw, a_port, false);
    let got = bodies(&gw, 10, &[]);
    assert!(
        got.iter().all(|g| g == "b"),
        "a closed backend still got traffic: {got:?}"
    );

    let revived = FakeUpstream::start_on(
        a_port,
        Behavior::Respond {
            status: 200,
            headers: vec![],
            body: "a".into(),
        },
    );
    wait_for_health(&gw, a_port, true);
    let got = bodies(&gw, 10, &[]);
    assert!(
        got.iter().any(|g| g == "a"),
        "the revived backend gets no traffic: {got:?}"
    );
    assert!(revived.request_count() > 0);
}

#[test]
fn every_backend_down_is_503_with_retry_after_and_the_gateway_keeps_serving() {
    let dead = [
        format!("http://127.0.0.1:{}", free_port()),
        format!("http://127.0.0.1:{}", free_port()),
    ];
    let gw = gateway_with_pool(&upstream("svc", &dead, QUICK_TCP_CHECK));

    let r = gw.get_with("/svc/x", &[("X-Request-Id", "down-test-1")]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("retry-after").is_some(), "no Retry-After");
    let v = json(&r);
    assert_eq!(v["error"]["status"], 503);
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert_eq!(v["error"]["request_id"], "down-test-1");
    assert_eq!(r.header("x-request-id"), Some("down-test-1"));

    // Still alive: the same answer again, and the built-in endpoint works.
    let again = gw.get("/svc/y");
    assert_eq!(again.status, 503);
    assert_eq!(json(&again)["error"]["code"], "upstream_unavailable");
    assert_eq!(gw.get("/health").status, 200);
}

#[test]
fn a_pool_whose_last_backend_fails_answers_503_until_it_recovers() {
    let a = named("a");
    let gw = gateway_with_pool(&upstream("svc", &[a.url()], QUICK_HTTP_CHECK));
    assert_eq!(gw.get("/svc/x").status, 200);

    a.health_status(500);
    wait_for_health(&gw, a.port(), false);
    let r = gw.get("/svc/x");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(json(&r)["error"]["code"], "upstream_unavailable");

    a.health_status(200);
    wait_for_health(&gw, a.port(), true);
    assert_eq!(gw.get("/svc/x").status, 200);
}

#[test]
fn keepalive_connections_to_the_upstream_are_reused() {
    // No health check here: probes would open connections of their own.
    let a = named("a");
    let gw = gateway_with_pool(&upstream("svc", &[a.url()], ""));

    bodies(&gw, 10, &[]);

    assert_eq!(a.request_count(), 10);
    // Pingora hands the upstream connection back to its pool just after the last response
    // byte goes to the client; a client that is quick enough can have its next request
    // picked up before that, which opens one more connection. Anything beyond that would
    // mean no reuse at all.
    assert!(
        a.connection_count() <= 2,
        "10 sequential requests opened {} upstream connections",
        a.connection_count()
    );
}

/// The `host` header the Echo upstream received.
fn echoed_host(r: &Response) -> Option<String> {
    let v = json(r);
    v["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == "host")
        .and_then(|h| h[1].as_str().map(str::to_string))
}

#[test]
fn upstream_sees_the_client_host_by_default() {
    let echo = FakeUpstream::start(Behavior::Echo);
    let gw = gateway_with_pool(&upstream("svc", &[echo.url()], ""));

    let r = gw.get_with("/svc/x", &[("Host", "example.test")]);

    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(echoed_host(&r).as_deref(), Some("example.test"));
    let seen = echo.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header_all("host"), vec!["example.test"]);
}

#[test]
fn pool_host_replaces_the_client_host_upstream() {
    let echo = FakeUpstream::start(Behavior::Echo);
    let gw = gateway_with_pool(&upstream("svc", &[echo.url()], "    host: internal.svc\n"));

    let r = gw.get_with("/svc/x", &[("Host", "example.test")]);

    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(echoed_host(&r).as_deref(), Some("internal.svc"));
    let seen = echo.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header_all("host"), vec!["internal.svc"]);
}

//! Upstream failures as the client sees them: timeouts (read, total, route over pool) are
//! 504 `upstream_timeout`; refused or dropped connections are 502 `upstream_error`.
//!
//! A connect timeout is not tested here: provoking one needs a peer that drops SYNs (a
//! non-routable address, or a listener with a full backlog), and these tests keep all
//! traffic on loopback. Its mapping to 504 is covered by the unit tests in `src/errors.rs`.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn hanging_upstream_past_the_read_timeout_is_504() {
    let hang = FakeUpstream::start(Behavior::Hang);
    let gw = svc_gateway(&[hang.url()], "", ", timeouts: {read: 300ms}");

    let r = gw.get("/svc/x");

    assert_json_error(&r, 504, "upstream_timeout", "");
    assert_eq!(
        hang.request_count(),
        1,
        "the request did reach the upstream"
    );
}

#[test]
fn upstream_slower_than_the_total_timeout_is_504_even_within_the_read_timeout() {
    let slow = FakeUpstream::start(Behavior::Delay {
        delay: Duration::from_secs(3),
        status: 200,
        body: "late".into(),
    });
    let gw = svc_gateway(&[slow.url()], "", ", timeouts: {read: 5s, total: 300ms}");

    let r = gw.get("/svc/x");

    assert_json_error(&r, 504, "upstream_timeout", "");
}

#[test]
fn upstream_within_its_timeouts_is_answered() {
    let slow = FakeUpstream::start(Behavior::Delay {
        delay: Duration::from_millis(100),
        status: 200,
        body: "in time".into(),
    });
    let gw = svc_gateway(&[slow.url()], "", ", timeouts: {read: 5s, total: 8s}");

    let r = gw.get("/svc/x");

    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "in time");
}

#[test]
fn connection_refused_is_502() {
    // Nothing listens on this port, and no health check takes it out first.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = svc_gateway(&[dead], "", "");

    let r = gw.get("/svc/x");

    assert_json_error(&r, 502, "upstream_error", "");
    // The gateway survives it.
    assert_json_error(&gw.get("/svc/y"), 502, "upstream_error", "");
    assert_eq!(gw.get("/health").status, 200);
}

#[test]
fn upstream_closing_without_an_answer_is_502() {
    let closer = FakeUpstream::start(Behavior::Close);
    let gw = svc_gateway(&[closer.url()], "", "");

    let r = gw.get("/svc/x");

    assert_json_error(&r, 502, "upstream_error", "");
    assert!(
        closer.request_count() >= 1,
        "the request reached the upstream"
    );
}

#[test]
fn route_timeout_overrides_the_pool_default() {
    let hang = FakeUpstream::start(Behavior::Hang);
    // The pool's read timeout is longer than the client waits (10 s): if the route's 300ms
    // were ignored, no answer would arrive at all, so "a 504 arrived" proves the override.
    let gw = svc_gateway(
        &[hang.url()],
        "    timeouts: {read: 30s, total: 60s}\n",
        ", timeouts: {read: 300ms}",
    );

    let r = get(gw.port, "/svc/x", &[])
        .unwrap_or_else(|e| panic!("no answer within the client's 10s: {e}"));

    assert_json_error(&r, 504, "upstream_timeout", "");
}

#[test]
fn pool_timeouts_apply_to_routes_that_set_none() {
    let hang = FakeUpstream::start(Behavior::Hang);
    let gw = svc_gateway(&[hang.url()], "    timeouts: {read: 300ms}\n", "");

    let r = get(gw.port, "/svc/x", &[])
        .unwrap_or_else(|e| panic!("no answer within the client's 10s: {e}"));

    assert_json_error(&r, 504, "upstream_timeout", "");
}

#[test]
fn a_timeout_leaves_the_gateway_serving_the_next_request() {
    let up = FakeUpstream::start(Behavior::Hang);
    let gw = svc_gateway(&[up.url()], "", ", timeouts: {read: 300ms}");
    assert_json_error(&gw.get("/svc/x"), 504, "upstream_timeout", "");

    up.set_behavior(Behavior::Respond {
        status: 200,
        headers: vec![],
        body: "back".into(),
    });
    let r = gw.get("/svc/x");

    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "back");
}

//! Tracing through the proxy (issue 23 point 2): a request through a real gateway makes a
//! server span continuing the caller's trace, a client span per upstream attempt (child of
//! the server span) whose id is the `traceparent` the upstream receives, and an auth span;
//! with tracing off the caller's `traceparent` reaches the upstream as sent.

mod common;

use common::otlp::{hex, int_attr, str_attr, OtlpReceiver};
use common::scripted::{Reply, ScriptedUpstream};
use common::*;
use gatehouse::telemetry::proto::{self, KIND_CLIENT, KIND_INTERNAL, KIND_SERVER};
use gatehouse::telemetry::span as attr;
use std::time::Duration;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Waits until the receiver holds a server span, then returns every span (the attempt and
/// auth spans end before the server span, so they are in the same or an earlier batch).
fn spans_of_one_request(rx: &OtlpReceiver) -> Vec<proto::Span> {
    let ok = wait_until(Duration::from_secs(10), || {
        rx.spans().iter().any(|s| s.kind == KIND_SERVER)
    });
    assert!(ok, "no server span arrived: {:?}", rx.spans());
    rx.spans()
}

fn traced_gateway(rx: &OtlpReceiver, backend: &str, route_extra: &str) -> Gw {
    Gw::start(&format!(
        "telemetry:\n  endpoint: {}\n  batch_delay: 50ms\nupstreams:\n{}\nroutes:\n  - {{name: svc, prefix: /svc, upstream: svc{route_extra}}}\n",
        rx.url(),
        upstream("svc", &[backend.to_string()], "")
    ))
}

/// `00-TRACE-SPAN-FLAGS` → (trace, span).
fn parts(traceparent: &str) -> (String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "traceparent {traceparent:?}");
    assert_eq!(p[0], "00");
    (p[1].to_string(), p[2].to_string())
}

#[test]
fn a_proxied_request_continues_the_trace_and_each_attempt_is_the_upstreams_parent() {
    let rx = OtlpReceiver::start();
    let up = ScriptedUpstream::start();
    // The first attempt gets a 503 and is retried (on the same, only backend).
    up.script(
        "/svc/x",
        Reply::keep("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"),
    );
    up.script("/svc/x", Reply::ok("fine"));
    let gw = traced_gateway(&rx, &up.url(), ", retry: {backoff_base: 1ms}");
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let r = gw.get_with(
        "/svc/x",
        &[("traceparent", &incoming), ("tracestate", "vendor=abc")],
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = up.seen_for("/svc/x");
    assert_eq!(seen.len(), 2, "two attempts reach the upstream");
    let sent: Vec<(String, String)> = seen
        .iter()
        .map(|s| {
            parts(
                s.header_all("traceparent")
                    .first()
                    .expect("traceparent sent"),
            )
        })
        .collect();
    for (s, (trace, span)) in seen.iter().zip(&sent) {
        assert_eq!(trace, TRACE, "the caller's trace id goes on");
        assert_ne!(span, PARENT, "each attempt sends its own span id");
        assert_eq!(s.header_all("tracestate"), vec!["vendor=abc"]);
    }
    assert_ne!(sent[0].1, sent[1].1, "each attempt has its own span");

    let spans = spans_of_one_request(&rx);
    let server = spans
        .iter()
        .find(|s| s.kind == KIND_SERVER)
        .expect("server span");
    assert_eq!(hex(&server.trace_id), TRACE);
    assert_eq!(hex(&server.parent_span_id), PARENT);
    assert_eq!(str_attr(server, attr::HTTP_ROUTE), Some("/svc"));
    assert_eq!(server.name, "GET /svc");
    assert_eq!(int_attr(server, attr::HTTP_RESPONSE_STATUS_CODE), Some(200));
    assert_eq!(str_attr(server, attr::CLIENT_ADDRESS), Some("127.0.0.1"));

    let ok = wait_until(Duration::from_secs(10), || {
        rx.spans().iter().filter(|s| s.kind == KIND_CLIENT).count() >= 2
    });
    assert!(ok, "two attempt spans: {:?}", rx.spans());
    let spans = rx.spans();
    let mut attempts: Vec<&proto::Span> = spans.iter().filter(|s| s.kind == KIND_CLIENT).collect();
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(attempts.len(), 2);
    for (a, (_, sent_span)) in attempts.iter().zip(&sent) {
        assert_eq!(hex(&a.trace_id), TRACE);
        assert_eq!(
            a.parent_span_id, server.span_id,
            "attempts are the server span's children"
        );
        assert_eq!(
            &hex(&a.span_id),
            sent_span,
            "the upstream's parent is the attempt span"
        );
        assert_eq!(str_attr(a, attr::GATEHOUSE_UPSTREAM), Some("svc"));
    }
    assert_eq!(
        str_attr(attempts[0], attr::GATEHOUSE_ATTEMPT_OUTCOME),
        Some("failure_status")
    );
    assert_eq!(
        int_attr(attempts[0], attr::HTTP_RESPONSE_STATUS_CODE),
        Some(503)
    );
    assert_eq!(
        str_attr(attempts[1], attr::GATEHOUSE_ATTEMPT_OUTCOME),
        Some("ok")
    );
    assert_eq!(
        int_attr(attempts[1], attr::HTTP_REQUEST_RESEND_COUNT),
        Some(1)
    );
}

#[test]
fn without_a_traceparent_a_trace_starts_and_the_upstream_gets_it() {
    let rx = OtlpReceiver::start();
    let up = FakeUpstream::start(Behavior::Echo);
    let gw = traced_gateway(&rx, &up.url(), "");
    let r = gw.get("/svc/y");
    assert_eq!(r.status, 200);
    let req = &up.requests()[0];
    let tp = req
        .headers
        .iter()
        .find(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.clone())
        .expect("traceparent sent");
    let (trace, span) = parts(&tp);
    let spans = spans_of_one_request(&rx);
    let server = spans
        .iter()
        .find(|s| s.kind == KIND_SERVER)
        .expect("server");
    assert!(
        server.parent_span_id.is_empty(),
        "a new trace has a root span"
    );
    assert_eq!(hex(&server.trace_id), trace);
    let attempt = spans
        .iter()
        .find(|s| s.kind == KIND_CLIENT)
        .expect("attempt span");
    assert_eq!(hex(&attempt.span_id), span);
    assert_eq!(attempt.parent_span_id, server.span_id);
}

#[test]
fn a_refused_session_check_is_an_auth_span_marked_failed() {
    let rx = OtlpReceiver::start();
    let up = FakeUpstream::start(Behavior::Echo);
    let gw = traced_gateway(&rx, &up.url(), ", auth: required");
    let r = gw.get_with("/svc/z", &[("Accept", "application/json")]);
    assert_eq!(r.status, 401);
    assert_eq!(up.request_count(), 0);
    let spans = spans_of_one_request(&rx);
    let server = spans
        .iter()
        .find(|s| s.kind == KIND_SERVER)
        .expect("server");
    assert_eq!(int_attr(server, attr::HTTP_RESPONSE_STATUS_CODE), Some(401));
    let auth = spans
        .iter()
        .find(|s| s.kind == KIND_INTERNAL && s.name == "auth")
        .expect("auth span");
    assert_eq!(auth.parent_span_id, server.span_id);
    assert!(auth.attribute(attr::ERROR_TYPE).is_some(), "{auth:?}");
    assert!(!spans.iter().any(|s| s.kind == KIND_CLIENT), "no attempt");
}

#[test]
fn with_tracing_off_the_callers_trace_headers_reach_the_upstream_as_sent() {
    let up = FakeUpstream::start(Behavior::Echo);
    let gw = Gw::start(&format!(
        "upstreams:\n{}\nroutes:\n  - {{name: svc, prefix: /svc, upstream: svc}}\n",
        upstream("svc", &[up.url()], "")
    ));
    assert!(!gw.running.tracer.is_enabled());
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let r = gw.get_with(
        "/svc/y",
        &[("traceparent", &incoming), ("tracestate", "a=b")],
    );
    assert_eq!(r.status, 200);
    let req = &up.requests()[0];
    let get = |n: &str| {
        req.headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("traceparent"), vec![incoming.as_str()]);
    assert_eq!(get("tracestate"), vec!["a=b"]);
}

#[test]
fn a_signed_in_request_has_its_session_check_as_a_store_span_under_auth() {
    let rx = OtlpReceiver::start();
    let up = FakeUpstream::start(Behavior::Echo);
    let dir = common::backends::TempDir::new("trace-session");
    let db = dir.sqlite_url();
    let user = &seed_users(
        &db,
        "trace.test",
        &[(gatehouse::auth::users::Role::Patient, "P")],
    )[0];
    let gw = Gw::start(&format!(
        "telemetry:\n  endpoint: {}\n  batch_delay: 50ms\nupstreams:\n{}\nroutes:\n  - {{name: svc, prefix: /svc, upstream: svc, auth: required}}\nauth:\n  database_url: \"{db}\"\n  jwt: {{secret: \"{SECRET}\"}}\n",
        rx.url(),
        upstream("svc", &[up.url()], "")
    ));
    let token = login(gw.port, &user.email);
    let r = with_bearer(gw.port, "/svc/me", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let ok = wait_until(Duration::from_secs(10), || {
        rx.spans()
            .iter()
            .any(|s| s.kind == KIND_SERVER && str_attr(s, attr::HTTP_ROUTE) == Some("/svc"))
    });
    assert!(ok, "no server span for /svc: {:?}", rx.spans());
    let spans = rx.spans();
    let server = spans
        .iter()
        .find(|s| s.kind == KIND_SERVER && str_attr(s, attr::HTTP_ROUTE) == Some("/svc"))
        .expect("server span");
    let auth = spans
        .iter()
        .find(|s| s.name == "auth" && s.parent_span_id == server.span_id)
        .expect("auth span under the request");
    let store = spans
        .iter()
        .find(|s| s.name == "session check")
        .expect("session check span");
    assert_eq!(store.kind, KIND_CLIENT);
    assert_eq!(
        store.parent_span_id, auth.span_id,
        "the store call is under auth"
    );
    assert_eq!(str_attr(store, attr::DB_SYSTEM), Some("memory"));
    assert!(store.attribute(attr::ERROR_TYPE).is_none());
    // The sign-in before it: the user lookup and the session's start, under its server span.
    let login = spans
        .iter()
        .find(|s| {
            s.kind == KIND_SERVER && str_attr(s, attr::URL_PATH) == Some("/api/v1/auth/login")
        })
        .expect("login server span");
    let lookup = spans
        .iter()
        .find(|s| s.name == "SELECT" && s.parent_span_id == login.span_id)
        .expect("user lookup span");
    assert_eq!(str_attr(lookup, attr::DB_SYSTEM), Some("sqlite"));
    let start = spans
        .iter()
        .find(|s| s.name == "session start" && s.parent_span_id == login.span_id)
        .expect("session start span");
    assert_eq!(str_attr(start, attr::DB_SYSTEM), Some("memory"));
}

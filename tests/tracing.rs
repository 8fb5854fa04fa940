//! OpenTelemetry tracing (issue 23 point 2): spans made through the public API the proxy
//! uses reach an in-process OTLP/HTTP receiver with the right ids and attributes; incoming
//! `traceparent`s are continued or replaced; the export queue and a dead receiver never hold
//! anything up and are counted; page data sources send a `traceparent` naming their attempt.
//!
//! Waits poll with deadlines; nothing here asserts a duration.

mod common;

use common::otlp::{hex, int_attr, str_attr, OtlpReceiver};
use common::*;
use gatehouse::metrics::Metrics;
use gatehouse::telemetry::proto;
use gatehouse::telemetry::settings::{resolve, TelemetryConfig};
use gatehouse::telemetry::{span as attr, Counters, Exporter, SpanKind, Tracer};
use std::time::Duration;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Settings for `endpoint` with a short batch delay (the queue and batch as given).
fn settings(endpoint: &str, queue: usize, delay: Duration) -> gatehouse::telemetry::Settings {
    let cfg = TelemetryConfig {
        endpoint: endpoint.to_string(),
        queue_size: queue,
        batch_size: queue.min(512),
        batch_delay: gatehouse::config::Dur(delay),
        export_timeout: gatehouse::config::Dur(Duration::from_secs(2)),
        ..Default::default()
    };
    resolve(&cfg, |_| None).expect("valid").expect("on")
}

/// The exporter on its own thread and runtime; `stop` ends it (it flushes first).
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(exporter: Exporter) -> Running {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(exporter.run(async move {
                let _ = rx.await;
            }));
        });
        Running {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pipeline(endpoint: &str, queue: usize, delay: Duration) -> (Tracer, Exporter, Metrics) {
    let metrics = Metrics::new();
    let (tracer, exporter) = Tracer::new(settings(endpoint, queue, delay), Counters::of(&metrics));
    (tracer, exporter, metrics)
}

fn request(headers: &[(&str, &str)]) -> ::http::request::Parts {
    let mut b = ::http::Request::builder()
        .method("GET")
        .uri("/api/v1/doctors/7?x=1");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request").into_parts().0
}

fn wait_for_spans(rx: &OtlpReceiver, n: usize) -> Vec<proto::Span> {
    let ok = wait_until(Duration::from_secs(10), || rx.spans().len() >= n);
    let spans = rx.spans();
    assert!(ok, "expected {n} spans, got {}: {spans:?}", spans.len());
    spans
}

#[test]
fn a_continued_trace_reaches_the_receiver_with_parent_ids_and_http_attributes() {
    let rx = OtlpReceiver::start();
    let (tracer, exporter, metrics) = pipeline(&rx.url(), 64, Duration::from_millis(50));
    let _running = Running::start(exporter);

    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let req = request(&[
        ("traceparent", &incoming),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("host", "gw.example:8080"),
        ("user-agent", "curl/8"),
    ]);
    // What the proxy does: the server span first, the route once matched, one client span
    // per attempt whose traceparent goes upstream, then the end of the request.
    let mut server = tracer.start_server(&req);
    server.set_route("/api/v1/doctors");
    server.set_client(
        Some("203.0.113.7".parse().expect("ip")),
        Some("127.0.0.1".parse().expect("ip")),
    );
    let auth = server.internal("auth");
    auth.end();
    let backend: std::net::SocketAddr = "127.0.0.1:8000".parse().expect("addr");
    let first = server.attempt(&::http::Method::GET, "doctors", backend, 1);
    let first_tp = first.traceparent().expect("traceparent").to_string();
    first.end_attempt("failure_status", Some(503), None);
    let second = server.attempt(&::http::Method::GET, "doctors", backend, 2);
    let second_tp = second.traceparent().expect("traceparent").to_string();
    assert_eq!(second.tracestate(), Some("congo=t61rcWkgMzE"));
    second.end_attempt("ok", Some(200), None);
    let server_id = server.span_context().expect("on").span_id.to_string();
    server.end_server(200, None);

    let spans = wait_for_spans(&rx, 4);
    let by_name = |n: &str| {
        spans
            .iter()
            .filter(|s| s.name == n)
            .cloned()
            .collect::<Vec<_>>()
    };
    let srv = by_name("GET /api/v1/doctors").pop().expect("server span");
    assert_eq!(hex(&srv.trace_id), TRACE, "the caller's trace is continued");
    assert_eq!(
        hex(&srv.parent_span_id),
        PARENT,
        "the caller's span is the parent"
    );
    assert_eq!(hex(&srv.span_id), server_id);
    assert_eq!(srv.kind, proto::KIND_SERVER);
    assert_eq!(srv.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(srv.flags & 0xff, 1);
    assert_eq!(str_attr(&srv, attr::HTTP_REQUEST_METHOD), Some("GET"));
    assert_eq!(str_attr(&srv, attr::URL_PATH), Some("/api/v1/doctors/7"));
    assert_eq!(str_attr(&srv, attr::HTTP_ROUTE), Some("/api/v1/doctors"));
    assert_eq!(int_attr(&srv, attr::HTTP_RESPONSE_STATUS_CODE), Some(200));
    assert_eq!(str_attr(&srv, attr::SERVER_ADDRESS), Some("gw.example"));
    assert_eq!(int_attr(&srv, attr::SERVER_PORT), Some(8080));
    assert_eq!(str_attr(&srv, attr::CLIENT_ADDRESS), Some("203.0.113.7"));
    assert_eq!(str_attr(&srv, attr::USER_AGENT_ORIGINAL), Some("curl/8"));
    assert_eq!(srv.status, None, "a 200 leaves the status unset");
    assert!(srv.end_time_unix_nano >= srv.start_time_unix_nano && srv.start_time_unix_nano > 0);

    let auth = by_name("auth").pop().expect("auth span");
    assert_eq!(auth.kind, proto::KIND_INTERNAL);
    assert_eq!(auth.parent_span_id, srv.span_id);

    let attempts = by_name("GET");
    assert_eq!(attempts.len(), 2);
    for (a, tp) in attempts.iter().zip([&first_tp, &second_tp]) {
        assert_eq!(a.kind, proto::KIND_CLIENT);
        assert_eq!(a.trace_id, srv.trace_id, "same trace");
        assert_eq!(
            a.parent_span_id, srv.span_id,
            "the server span is the parent"
        );
        assert_eq!(
            *tp,
            format!("00-{TRACE}-{}-01", hex(&a.span_id)),
            "the traceparent sent names the attempt's own span"
        );
        assert_eq!(str_attr(a, attr::GATEHOUSE_BACKEND), Some("127.0.0.1:8000"));
        assert_eq!(str_attr(a, attr::GATEHOUSE_UPSTREAM), Some("doctors"));
        assert_eq!(str_attr(a, attr::SERVER_ADDRESS), Some("127.0.0.1"));
        assert_eq!(int_attr(a, attr::SERVER_PORT), Some(8000));
    }
    assert_ne!(attempts[0].span_id, attempts[1].span_id);
    let failed = &attempts[0];
    assert_eq!(
        str_attr(failed, attr::GATEHOUSE_ATTEMPT_OUTCOME),
        Some("failure_status")
    );
    assert_eq!(int_attr(failed, attr::HTTP_RESPONSE_STATUS_CODE), Some(503));
    assert_eq!(str_attr(failed, attr::ERROR_TYPE), Some("503"));
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(proto::STATUS_ERROR)
    );
    assert_eq!(int_attr(failed, attr::HTTP_REQUEST_RESEND_COUNT), None);
    let retried = &attempts[1];
    assert_eq!(int_attr(retried, attr::HTTP_REQUEST_RESEND_COUNT), Some(1));
    assert_eq!(
        str_attr(retried, attr::GATEHOUSE_ATTEMPT_OUTCOME),
        Some("ok")
    );
    assert_eq!(retried.status, None);

    let exports = rx.exports();
    assert!(exports.iter().all(|e| e.path == "/v1/traces"));
    assert!(exports
        .iter()
        .all(|e| e.content_type == "application/x-protobuf"));
    assert_eq!(exports[0].service_name().as_deref(), Some("gatehouse"));
    assert!(wait_until(Duration::from_secs(5), || metrics
        .trace_spans_exported_total
        .get()
        == 4));
}

#[test]
fn an_invalid_or_absent_traceparent_starts_a_new_trace() {
    let rx = OtlpReceiver::start();
    let (tracer, exporter, _m) = pipeline(&rx.url(), 64, Duration::from_millis(50));
    let _running = Running::start(exporter);
    let upper = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    let zero = format!("00-{}-{PARENT}-01", "0".repeat(32));
    for tp in [upper.as_str(), zero.as_str(), "garbage", ""] {
        let req = if tp.is_empty() {
            request(&[])
        } else {
            request(&[("traceparent", tp), ("tracestate", "k=v")])
        };
        let s = tracer.start_server(&req);
        assert_ne!(s.trace_id().map(|t| t.to_string()).as_deref(), Some(TRACE));
        assert_eq!(s.tracestate(), None, "no tracestate without a valid parent");
        s.end_server(200, None);
    }
    let spans = wait_for_spans(&rx, 4);
    for s in &spans {
        assert!(s.parent_span_id.is_empty(), "a root span: {s:?}");
        assert_ne!(hex(&s.trace_id), "0".repeat(32));
    }
    let mut ids: Vec<_> = spans.iter().map(|s| s.trace_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "each request its own trace");
}

#[test]
fn an_unsampled_caller_is_propagated_but_not_exported() {
    let rx = OtlpReceiver::start();
    let (tracer, exporter, metrics) = pipeline(&rx.url(), 64, Duration::from_millis(50));
    let mut running = Running::start(exporter);
    let req = request(&[("traceparent", &format!("00-{TRACE}-{PARENT}-00"))]);
    let server = tracer.start_server(&req);
    assert!(!server.is_recording());
    let attempt = server.attempt(
        &::http::Method::GET,
        "u",
        "127.0.0.1:1".parse().expect("a"),
        1,
    );
    let tp = attempt.traceparent().expect("propagated").to_string();
    assert!(
        tp.starts_with(&format!("00-{TRACE}-")) && tp.ends_with("-00"),
        "{tp}"
    );
    attempt.end_attempt("ok", Some(200), None);
    server.end_server(200, None);
    // A sampled request after it, to know the exporter has had its chance.
    tracer.start_server(&request(&[])).end_server(200, None);
    running.stop();
    let spans = rx.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(metrics.trace_spans_exported_total.get(), 1);
}

#[test]
fn a_full_queue_drops_spans_and_counts_them_and_recording_never_waits() {
    // No exporter running: nothing empties the queue of 4.
    let (tracer, _exporter, metrics) = pipeline("http://127.0.0.1:9", 4, Duration::from_secs(1));
    for _ in 0..10 {
        let s = tracer.start_server(&request(&[]));
        s.child("c", SpanKind::Client).end();
        s.end_server(200, None);
    }
    let dropped = metrics
        .trace_spans_dropped_total
        .with_label_values(&["queue_full"])
        .get();
    assert_eq!(dropped, 16, "20 spans into a queue of 4");
    let text = metrics.registry.gather();
    assert!(text
        .iter()
        .any(|f| f.name() == "gatehouse_trace_spans_dropped_total"));
}

#[test]
fn a_receiver_that_is_down_fails_the_export_counts_the_spans_and_blocks_nothing() {
    // A port nothing listens on.
    let port = free_port();
    let (tracer, exporter, metrics) = pipeline(
        &format!("http://127.0.0.1:{port}"),
        64,
        Duration::from_millis(20),
    );
    let _running = Running::start(exporter);
    for _ in 0..3 {
        tracer.start_server(&request(&[])).end_server(200, None);
    }
    let failed = || {
        metrics
            .trace_spans_dropped_total
            .with_label_values(&["export_failed"])
            .get()
    };
    assert!(
        wait_until(Duration::from_secs(10), || failed() == 3),
        "export_failed = {}",
        failed()
    );
    assert_eq!(metrics.trace_spans_exported_total.get(), 0);
    // Recording goes on as before.
    tracer.start_server(&request(&[])).end_server(200, None);
    assert!(wait_until(Duration::from_secs(10), || failed() == 4));
}

#[test]
fn a_receiver_answering_an_error_status_counts_the_spans_as_failed() {
    let rx = OtlpReceiver::start();
    rx.answer(503);
    let (tracer, exporter, metrics) = pipeline(&rx.url(), 64, Duration::from_millis(20));
    let _running = Running::start(exporter);
    tracer.start_server(&request(&[])).end_server(200, None);
    let failed = || {
        metrics
            .trace_spans_dropped_total
            .with_label_values(&["export_failed"])
            .get()
    };
    assert!(wait_until(Duration::from_secs(10), || failed() == 1));
    rx.answer(200);
    tracer.start_server(&request(&[])).end_server(200, None);
    assert!(wait_until(Duration::from_secs(10), || metrics
        .trace_spans_exported_total
        .get()
        == 1));
}

#[test]
fn shutdown_sends_what_is_queued() {
    let rx = OtlpReceiver::start();
    // A batch delay no test waits for: only the shutdown flush can send these.
    let (tracer, exporter, _m) = pipeline(&rx.url(), 64, Duration::from_secs(60));
    let mut running = Running::start(exporter);
    for _ in 0..3 {
        tracer.start_server(&request(&[])).end_server(200, None);
    }
    running.stop();
    assert_eq!(rx.spans().len(), 3);
}

#[test]
fn nothing_configured_is_a_disabled_tracer_that_touches_nothing() {
    let metrics = Metrics::new();
    let (tracer, exporter) =
        Tracer::from_config(&TelemetryConfig::default(), &metrics, |_| None).expect("valid");
    assert!(!tracer.is_enabled() && exporter.is_none());
    let req = request(&[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))]);
    let mut s = tracer.start_server(&req);
    s.set_route("/x");
    let a = s.attempt(
        &::http::Method::GET,
        "u",
        "127.0.0.1:1".parse().expect("a"),
        1,
    );
    assert!(
        a.traceparent().is_none(),
        "the client's traceparent is left as it came"
    );
    a.end_attempt("ok", Some(200), None);
    assert_eq!(s.log_trace_id().to_string(), "-");
    s.end_server(200, None);

    let err = Tracer::from_config(&TelemetryConfig::default(), &metrics, |k| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:4318".into()),
        "OTEL_TRACES_SAMPLER" => Some("often".into()),
        _ => None,
    })
    .err()
    .expect("an unknown sampler is refused");
    assert!(err.to_string().contains("OTEL_TRACES_SAMPLER"), "{err}");
}

#[test]
fn a_gateway_with_telemetry_exports_through_its_background_service() {
    let rx = OtlpReceiver::start();
    let gw = Gw::start(&format!(
        "telemetry:\n  endpoint: {}\n  batch_delay: 50ms\n  service_name: edge-test\n",
        rx.url()
    ));
    assert!(gw.running.tracer.is_enabled());
    for reason in ["queue_full", "export_failed"] {
        let r = get(gw.admin_port, "/metrics", &[]).expect("metrics");
        assert!(
            r.text().contains(&format!(
                "gatehouse_trace_spans_dropped_total{{reason=\"{reason}\"}} 0"
            )),
            "primed at 0: {reason}"
        );
    }
    gw.running
        .tracer
        .start_server(&request(&[]))
        .end_server(200, None);
    wait_for_spans(&rx, 1);
    assert_eq!(rx.exports()[0].service_name().as_deref(), Some("edge-test"));
    assert!(wait_until(Duration::from_secs(5), || {
        get(gw.admin_port, "/metrics", &[])
            .map(|r| {
                r.text()
                    .lines()
                    .any(|l| l == "gatehouse_trace_spans_exported_total 1")
            })
            .unwrap_or(false)
    }));
}

#[test]
fn page_data_sources_send_a_traceparent_naming_their_attempt_span() {
    use gatehouse::pages::data::{fetch_all, fetch_all_traced, Fetch};
    use std::sync::Arc;

    let rx = OtlpReceiver::start();
    let (tracer, exporter, _m) = pipeline(&rx.url(), 64, Duration::from_millis(50));
    let _running = Running::start(exporter);
    let up = FakeUpstream::start(Behavior::Echo);
    let cfg = gatehouse::Config::from_yaml_str(&format!(
        "upstreams:\n{}\n",
        upstream("patients", &[up.url()], "")
    ))
    .expect("config");
    let pool = Arc::new(
        gatehouse::upstream::Pool::build(
            "patients",
            &cfg.upstreams["patients"],
            Default::default(),
        )
        .expect("pool"),
    );
    let who = identity();
    let connector = Arc::new(pingora::connectors::http::Connector::new(None));
    let fetches = || {
        vec![Fetch {
            name: "profile".into(),
            pool: pool.clone(),
            path: "/patients/42".into(),
        }]
    };
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let server = tracer.start_server(&request(&[("traceparent", &incoming)]));
    let render = server.internal("render page");
    let render_id = render.span_context().expect("on").span_id.to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let data = rt.block_on(fetch_all_traced(
        &connector,
        fetches(),
        &who,
        "rid-1",
        Duration::from_secs(5),
        &render.context(),
    ));
    assert!(data["profile"].get("unavailable").is_none(), "{data:?}");
    render.end();
    server.end_server(200, None);

    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let tp = seen[0]
        .header("traceparent")
        .expect("a traceparent upstream")
        .to_string();
    assert!(
        tp.starts_with(&format!("00-{TRACE}-")) && tp.ends_with("-01"),
        "{tp}"
    );
    let spans = wait_for_spans(&rx, 3);
    let fetch = spans
        .iter()
        .find(|s| str_attr(s, attr::GATEHOUSE_DATA_SOURCE) == Some("profile"))
        .expect("the data source's span");
    assert_eq!(fetch.kind, proto::KIND_CLIENT);
    assert_eq!(hex(&fetch.trace_id), TRACE);
    assert_eq!(
        hex(&fetch.parent_span_id),
        render_id,
        "under the page's span"
    );
    assert_eq!(tp, format!("00-{TRACE}-{}-01", hex(&fetch.span_id)));
    assert_eq!(str_attr(fetch, attr::URL_PATH), Some("/patients/42"));
    assert_eq!(str_attr(fetch, attr::GATEHOUSE_ATTEMPT_OUTCOME), Some("ok"));
    assert_eq!(int_attr(fetch, attr::HTTP_RESPONSE_STATUS_CODE), Some(200));

    // Without a trace context (what the proxy passes today): no trace headers at all.
    let data = rt.block_on(fetch_all(
        &connector,
        fetches(),
        &who,
        "rid-2",
        Duration::from_secs(5),
    ));
    assert!(data["profile"].get("unavailable").is_none(), "{data:?}");
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].header("traceparent").is_none());
}

//! The gateway's own Prometheus registry (one per gateway, so tests can run several in one
//! process) and the counters the request path updates. Gauges that mirror state (backend
//! health, breaker state) are filled from the live snapshot at scrape time.
//!
//! Labels are bounded: route and upstream names come from the config, backends from the
//! pools, methods from a fixed list; raw paths are never labels.

use crate::state::Snapshot;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::time::Instant;

pub struct Metrics {
    pub registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub upstream_requests_total: IntCounterVec,
    pub upstream_duration_seconds: HistogramVec,
    pub retries_total: IntCounterVec,
    pub retry_budget_exhausted_total: IntCounterVec,
    pub fallbacks_total: IntCounterVec,
    pub circuit_breaker_transitions_total: IntCounterVec,
    pub auth_decisions_total: IntCounterVec,
    upstream_backend_healthy: IntGaugeVec,
    circuit_breaker_state: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(format!("gatehouse_{name}"), help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    reg.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    c
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(format!("gatehouse_{name}"), help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    reg.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    g
}

fn histogram(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(format!("gatehouse_{name}"), help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    reg.register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    h
}

impl Metrics {
    /// Builds the registry. Called once at start-up (a failure here is a programming error).
    pub fn new() -> Metrics {
        let r = Registry::new();
        let build = gauge(
            &r,
            "build_info",
            "Build information; always 1.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Metrics {
            requests_total: counter(
                &r,
                "requests_total",
                "Requests answered, by route, method and status.",
                &["route", "method", "status"],
            ),
            request_duration_seconds: histogram(
                &r,
                "request_duration_seconds",
                "Time from request arrival to the end of the response.",
                &["route"],
            ),
            upstream_requests_total: counter(
                &r,
                "upstream_requests_total",
                "Attempts sent to backends, by outcome.",
                &["upstream", "backend", "outcome"],
            ),
            upstream_duration_seconds: histogram(
                &r,
                "upstream_duration_seconds",
                "Time from sending an attempt to its response header or failure.",
                &["upstream"],
            ),
            retries_total: counter(
                &r,
                "retries_total",
                "Retries, by route and the failure that caused them.",
                &["route", "reason"],
            ),
            retry_budget_exhausted_total: counter(
                &r,
                "retry_budget_exhausted_total",
                "Retries refused because the pool's retry budget was spent.",
                &["upstream"],
            ),
            fallbacks_total: counter(
                &r,
                "fallbacks_total",
                "Requests answered by the route's fallback because no backend could take them.",
                &["route"],
            ),
            circuit_breaker_transitions_total: counter(
                &r,
                "circuit_breaker_transitions_total",
                "Circuit breaker state changes, by the state entered.",
                &["upstream", "backend", "to"],
            ),
            auth_decisions_total: counter(
                &r,
                "auth_decisions_total",
                "Authentication decisions: allow, deny, redirect or error, by reason.",
                &["result", "reason"],
            ),
            upstream_backend_healthy: gauge(
                &r,
                "upstream_backend_healthy",
                "1 when the backend passes its health checks.",
                &["upstream", "backend"],
            ),
            circuit_breaker_state: gauge(
                &r,
                "circuit_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                &["upstream", "backend"],
            ),
            registry: r,
        }
    }

    /// The text exposition, with state gauges refreshed from `snap`.
    pub fn render(&self, snap: &Snapshot) -> String {
        let now = Instant::now();
        self.upstream_backend_healthy.reset();
        self.circuit_breaker_state.reset();
        for (name, pool) in &snap.pools {
            for b in &pool.backends {
                let addr = b.addr.to_string();
                self.upstream_backend_healthy
                    .with_label_values(&[name.as_str(), addr.as_str()])
                    .set(i64::from(pool.is_healthy(&b.addr)));
                self.circuit_breaker_state
                    .with_label_values(&[name.as_str(), addr.as_str()])
                    .set(pool.breaker_state(&b.addr, now) as i64);
            }
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A bounded method label.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

//! The gateway's own Prometheus registry (one per gateway, so tests can run several in one
//! process) and the counters the request path updates. Gauges that mirror state (backend
//! health, breaker state) are filled from the live snapshot at scrape time.
//!
//! Labels are bounded: route and upstream names come from the config, backends from the
//! pools, methods from a fixed list; raw paths are never labels.
//!
//! Layer: the registry is above `state` (it reads the snapshot at scrape time); the series that
//! routes and pools hold are the leaf `metrics::series`. Must not import `auth`, `pages`, `edge`,
//! `plan` or `proxy`.

pub mod series;

use crate::state::Snapshot;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
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
    /// Second-factor checks, by outcome (`totp_ok`, `recovery_ok`, `wrong`, `replayed`,
    /// `missing`, `enrolled`, `enrol_wrong`, `error`).
    pub mfa_verifications_total: IntCounterVec,
    /// Self-registrations, by outcome (`auth::endpoints::register::OUTCOMES`).
    pub registrations_total: IntCounterVec,
    pub session_store_duration_seconds: HistogramVec,
    pub session_store_errors_total: IntCounter,
    pub rate_limited_total: IntCounterVec,
    pub config_reloads_total: IntCounterVec,
    pub config_last_reload_success: Gauge,
    pub connections_active: IntGauge,
    pub connections_refused_total: IntCounterVec,
    pub in_flight_rejected_total: IntCounterVec,
    pub cache_requests_total: IntCounterVec,
    pub cache_purged_total: IntCounter,
    cache_entries: IntGauge,
    cache_size_bytes: IntGauge,
    cache_evictions_total: IntCounter,
    /// Spans the trace exporter delivered (the collector answered 2xx).
    pub trace_spans_exported_total: IntCounter,
    /// Spans not delivered, by reason (`queue_full`, `export_failed`).
    pub trace_spans_dropped_total: IntCounterVec,
    /// Access audit rows written to the database.
    pub audit_written_total: IntCounter,
    /// Access audit rows lost, by reason (`overflow`: the queue was full; `database`: the
    /// batch could not be written).
    pub audit_dropped_total: IntCounterVec,
    /// Access audit rows waiting to be written.
    pub audit_queue_depth: IntGauge,
    /// 1 while the access audit cannot take rows (`audit: required` routes answer 503).
    pub audit_degraded: IntGauge,
    process_cpu_seconds: prometheus::Counter,
    process_resident_memory_bytes: IntGauge,
    process_open_fds: IntGauge,
    upstream_backend_healthy: IntGaugeVec,
    circuit_breaker_state: IntGaugeVec,
}

/// The `(result, reason)` pairs of `gatehouse_auth_decisions_total` exported at 0 from start:
/// what a dashboard or an alert on sign-in failures and refusals looks for. Others (rarer
/// token reasons) appear when they first happen.
pub const AUTH_DECISIONS: &[(&str, &str)] = &[
    ("allow", "token"),
    ("allow", "login"),
    ("allow", "logout"),
    ("allow", "refresh"),
    ("allow", "validate"),
    ("deny", "missing_token"),
    ("deny", "invalid_credentials"),
    ("deny", "locked"),
    ("deny", "csrf"),
    ("deny", "wrong_role"),
    ("deny", "revoked"),
    ("deny", "expired"),
    ("deny", "refresh_reuse"),
    ("deny", "account_disabled"),
    ("deny", "account_changed"),
    ("deny", "mfa_required"),
    ("deny", "invalid_otp"),
    ("deny", "otp_replayed"),
    ("deny", "mfa_enrollment_required"),
    ("deny", "store_unavailable"),
    ("redirect", "missing_token"),
    ("error", "store_unavailable"),
    ("error", "database_unavailable"),
    ("error", "bad_request"),
    ("error", "unsupported_media_type"),
];

/// The outcomes of `gatehouse_registrations_total`, exported at 0 from start: `created`,
/// `duplicate`, `invalid` (a field refused, or not JSON), `rate_limited`, `refused`
/// (cross-site, or the form's CSRF token), `disabled` (`auth.registration.enabled` off),
/// `error` (the database or the store failed).
pub const REGISTRATION_OUTCOMES: [&str; 7] = [
    "created",
    "duplicate",
    "invalid",
    "rate_limited",
    "refused",
    "disabled",
    "error",
];

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

fn single_counter(reg: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(format!("gatehouse_{name}"), help)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    reg.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    c
}

fn single_gauge(reg: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(format!("gatehouse_{name}"), help)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    reg.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    g
}

fn single_int_gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(format!("gatehouse_{name}"), help)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    reg.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    g
}

/// (cpu seconds, resident bytes, open fds) from /proc; zeros where unavailable.
fn process_stats() -> (f64, i64, i64) {
    let ticks = 100.0; // USER_HZ on Linux
    let page = 4096i64;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After ')': state(0) ppid(1) … utime(11) stime(12) … rss(21)
    let cpu = (num(11) + num(12)) / ticks;
    let rss = num(21) as i64 * page;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
    (cpu, rss, fds)
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
            registrations_total: counter(
                &r,
                "registrations_total",
                "Self-registrations (POST /api/v1/auth/register, the /register form), by outcome.",
                &["outcome"],
            ),
            mfa_verifications_total: counter(
                &r,
                "mfa_verifications_total",
                "Second-factor (TOTP or recovery code) checks at sign-in and enrolment, by outcome.",
                &["outcome"],
            ),
            session_store_duration_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "gatehouse_session_store_duration_seconds",
                        "Session store call latency, by operation.",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0,
                    ]),
                    &["op"],
                )
                .unwrap_or_else(|e| panic!("metric: {e}"));
                r.register(Box::new(h.clone()))
                    .unwrap_or_else(|e| panic!("register: {e}"));
                h
            },
            session_store_errors_total: single_counter(
                &r,
                "session_store_errors_total",
                "Session store calls that failed or timed out.",
            ),
            rate_limited_total: counter(
                &r,
                "rate_limited_total",
                "Requests refused by a rate limit, by route.",
                &["route"],
            ),
            config_reloads_total: counter(
                &r,
                "config_reloads_total",
                "Configuration reloads, by result (success, failure).",
                &["result"],
            ),
            config_last_reload_success: single_gauge(
                &r,
                "config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful configuration load.",
            ),
            connections_active: single_int_gauge(
                &r,
                "connections_active",
                "Client connections currently open (HTTP/1).",
            ),
            connections_refused_total: counter(
                &r,
                "connections_refused_total",
                "Connections closed at once by a connection limit, by limit (total, per_ip).",
                &["limit"],
            ),
            in_flight_rejected_total: counter(
                &r,
                "in_flight_rejected_total",
                "Requests refused by an in-flight limit, by route and scope (route: 503, client: 429).",
                &["route", "scope"],
            ),
            cache_requests_total: counter(
                &r,
                "cache_requests_total",
                "Requests on caching routes, by route and cache status (hit, miss, stale, updating, expired, revalidated, bypass).",
                &["route", "status"],
            ),
            cache_purged_total: single_counter(
                &r,
                "cache_purged_total",
                "Cached answers removed through the admin purge endpoint.",
            ),
            cache_entries: single_int_gauge(&r, "cache_entries", "Answers in the response cache."),
            cache_size_bytes: single_int_gauge(
                &r,
                "cache_size_bytes",
                "Memory taken by the response cache (keys, headers and bodies).",
            ),
            cache_evictions_total: single_counter(
                &r,
                "cache_evictions_total",
                "Cached answers evicted to stay under server.cache.max_size.",
            ),
            trace_spans_exported_total: single_counter(
                &r,
                "trace_spans_exported_total",
                "Trace spans delivered to the OTLP endpoint.",
            ),
            trace_spans_dropped_total: counter(
                &r,
                "trace_spans_dropped_total",
                "Trace spans not delivered, by reason (queue_full: the export queue was full; export_failed: the export request failed).",
                &["reason"],
            ),
            audit_written_total: single_counter(
                &r,
                "audit_written_total",
                "Access audit rows written to the database.",
            ),
            audit_dropped_total: {
                let c = counter(
                    &r,
                    "audit_dropped_total",
                    "Access audit rows lost, by reason (overflow: the queue was full; database: the batch could not be written).",
                    &["reason"],
                );
                for reason in ["overflow", "database"] {
                    c.with_label_values(&[reason]);
                }
                c
            },
            audit_queue_depth: single_int_gauge(
                &r,
                "audit_queue_depth",
                "Access audit rows waiting to be written.",
            ),
            audit_degraded: single_int_gauge(
                &r,
                "audit_degraded",
                "1 while the access audit cannot take rows (its last write failed or its queue is full): audit: required routes answer 503.",
            ),
            process_cpu_seconds: {
                let c = prometheus::Counter::new(
                    "gatehouse_process_cpu_seconds_total",
                    "CPU time used by the process (user + system), in seconds.",
                )
                .unwrap_or_else(|e| panic!("metric: {e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("register: {e}"));
                c
            },
            process_resident_memory_bytes: single_int_gauge(
                &r,
                "process_resident_memory_bytes",
                "Resident memory of the process.",
            ),
            process_open_fds: single_int_gauge(
                &r,
                "process_open_fds",
                "Open file descriptors of the process.",
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

    /// Creates, at 0, every counter series whose labels are known before any event — reload
    /// results, connection limits, the usual auth decisions, and per route and pool of `snap`
    /// retries by reason, retry budgets, fallbacks, rate limits, in-flight limits, cache
    /// statuses and breaker transitions — so `rate()` and alerts work from the first scrape
    /// (Prometheus instrumentation guidelines, "avoid missing metrics"). Called at start and
    /// after each reload (new routes and pools); existing series keep their counts.
    pub fn prime(&self, snap: &Snapshot) {
        for result in ["success", "failure"] {
            self.config_reloads_total.with_label_values(&[result]);
        }
        for limit in ["total", "per_ip"] {
            self.connections_refused_total.with_label_values(&[limit]);
        }
        for reason in ["queue_full", "export_failed"] {
            self.trace_spans_dropped_total.with_label_values(&[reason]);
        }
        for (result, reason) in AUTH_DECISIONS {
            self.auth_decisions_total
                .with_label_values(&[result, reason]);
        }
        for outcome in REGISTRATION_OUTCOMES {
            self.registrations_total.with_label_values(&[outcome]);
        }
        for outcome in ["totp_ok", "recovery_ok", "wrong", "replayed", "missing"] {
            self.mfa_verifications_total.with_label_values(&[outcome]);
        }
        for route in &snap.routes {
            let name = route.name.as_str();
            for reason in crate::upstream::retry::Failure::REASONS {
                self.retries_total.with_label_values(&[name, reason]);
            }
            if route.fallback.is_some() {
                self.fallbacks_total.with_label_values(&[name]);
            }
            if !route.limiters.is_empty() {
                self.rate_limited_total.with_label_values(&[name]);
            }
            if route.max_in_flight.is_some() {
                self.in_flight_rejected_total
                    .with_label_values(&[name, "route"]);
            }
            if route.client_slots.is_some() {
                self.in_flight_rejected_total
                    .with_label_values(&[name, "client"]);
            }
            if route.cache.is_some() {
                for status in crate::cache::STATUS_LABELS {
                    self.cache_requests_total.with_label_values(&[name, status]);
                }
            }
        }
        for (name, pool) in &snap.pools {
            self.retry_budget_exhausted_total
                .with_label_values(&[name.as_str()]);
            for b in &pool.backends {
                let addr = b.addr.to_string();
                for to in ["open", "half_open", "closed"] {
                    self.circuit_breaker_transitions_total.with_label_values(&[
                        name.as_str(),
                        addr.as_str(),
                        to,
                    ]);
                }
            }
        }
    }

    /// The text exposition, with state gauges refreshed from `snap` and the cache's store.
    pub fn render(&self, snap: &Snapshot, cache: Option<crate::cache::store::Stats>) -> String {
        let now = Instant::now();
        if let Some(c) = cache {
            self.cache_entries.set(c.entries as i64);
            self.cache_size_bytes.set(c.bytes as i64);
            let seen = self.cache_evictions_total.get();
            if c.evictions > seen {
                self.cache_evictions_total.inc_by(c.evictions - seen);
            }
        }
        let (cpu, rss, fds) = process_stats();
        // A counter: advance it to the kernel's figure (CPU time only grows).
        let seen = self.process_cpu_seconds.get();
        if cpu > seen {
            self.process_cpu_seconds.inc_by(cpu - seen);
        }
        self.process_resident_memory_bytes.set(rss);
        self.process_open_fds.set(fds);
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

//! Operations: the Prometheus exposition on the admin listener (valid for promtool, counters
//! and histograms that count exactly, health and breaker gauges that follow the backends),
//! `/ready` and `/health`, hot reload (in process, by SIGHUP, by watching the file) and the
//! monitoring files in `deploy/` (every query names a metric the gateway exports).
//!
//! The zero-downtime upgrade (SIGQUIT + `run --upgrade`) is in `tests/upgrade.rs`.

mod common;
use common::*;
use gatehouse::Config;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// An in-process gateway whose config can be rebuilt for reloads: `rest` is the YAML after
/// the `server:` block (upstreams, routes), the `auth:` block stays the same.
struct Reloadable {
    gw: Gw,
    auth: String,
}

impl Reloadable {
    fn start(rest: &str) -> Reloadable {
        let auth = format!("auth:\n  database_url: \"{}\"\n", temp_db_url("reload"));
        let gw = Gw::start(&format!("{rest}\n{auth}"));
        Reloadable { gw, auth }
    }

    /// The full config for `rest` on this gateway's ports.
    fn config(&self, rest: &str) -> Config {
        self.gw.config_for(&format!("{rest}\n{}", self.auth))
    }
}

/// `/api/v1/health`'s view of one backend's health (None when the backend is not listed).
fn reported_healthy(gw: &Gw, pool: &str, backend: &FakeUpstream) -> Option<bool> {
    let v = json(&gw.get("/api/v1/health"));
    v["upstreams"][pool]["backends"]
        .as_array()?
        .iter()
        .find(|b| b["address"] == backend.addr())?["healthy"]
        .as_bool()
}

// ------------------------------------------------------------------------------------------
// The exposition
// ------------------------------------------------------------------------------------------

/// `promtool`, or None (with a note) when it is not installed outside CI.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "promtool is required in CI (Debian package `prometheus`)"
    );
    eprintln!("NOTE: promtool is not installed (apt-get install prometheus); check skipped");
    None
}

#[test]
fn promtool_accepts_the_metrics_of_a_gateway_that_served_traffic() {
    let ok = FakeUpstream::start(Behavior::Echo);
    let failing = FakeUpstream::start(Behavior::Respond {
        status: 500,
        headers: vec![],
        body: "boom".into(),
    });
    let gw = Gw::start(&format!(
        "upstreams:\n{}\n{}\n    health_check: {{interval: 200ms, timeout: 200ms, rise: 1, fall: 1}}\n    circuit_breaker: {{consecutive_failures: 2, cooldown: 30s}}\nroutes:\n  - {{name: svc, prefix: /svc, upstream: svc}}\n  - {{name: failing, prefix: /failing, upstream: failing, retry: {{retries: 0}}}}\n  - {{name: private, prefix: /private, upstream: svc, auth: required}}\n",
        upstream("svc", &[ok.url()], ""),
        upstream("failing", &[failing.url()], ""),
    ));
    for path in ["/svc/a", "/svc/b", "/nowhere", "/private/x"] {
        gw.get(path);
    }
    for _ in 0..3 {
        gw.get("/failing"); // 500, 500, then the open breaker's fallback
    }
    let text = scrape(gw.admin_port);
    // The traffic is in the text that promtool checks.
    assert!(value(&text, "gatehouse_requests_total", &[("route", "svc")]) >= 2.0);
    assert!(
        text.contains("gatehouse_upstream_backend_healthy{"),
        "{text}"
    );
    assert!(text.contains("gatehouse_circuit_breaker_state{"), "{text}");
    let Some(promtool) = promtool() else { return };
    let out = output_with_stdin(Command::new(promtool).args(["check", "metrics"]), &text);
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn requests_through_a_route_raise_counters_and_histograms_by_exactly_their_number() {
    const N: usize = 7;
    let up = FakeUpstream::start(Behavior::Echo);
    let gw = Gw::start(&format!(
        "upstreams:\n{}\nroutes:\n  - {{name: svc, prefix: /svc, upstream: svc}}\n",
        upstream("svc", &[up.url()], "")
    ));
    let backend = up.addr();
    let ok_req = [("route", "svc"), ("method", "GET"), ("status", "200")];
    let duration = [("route", "svc")];
    let attempts = [
        ("upstream", "svc"),
        ("backend", backend.as_str()),
        ("outcome", "ok"),
    ];
    let unrouted = [("route", "-"), ("method", "GET"), ("status", "404")];
    let before = scrape(gw.admin_port);
    let at_start = |name: &str, labels: &[(&str, &str)]| value(&before, name, labels);

    for i in 0..N {
        assert_eq!(gw.get(&format!("/svc/{i}")).status, 200);
    }
    assert_eq!(gw.get("/no/such/route").status, 404);

    // The metrics are recorded once the response is sent: poll for them, then check the
    // exact figures (not merely "at least").
    let want_requests = at_start("gatehouse_requests_total", &ok_req) + N as f64;
    let seen = wait_metric(
        gw.admin_port,
        "gatehouse_requests_total",
        &ok_req,
        want_requests,
    );
    assert_eq!(seen, want_requests, "requests_total for 200s on route svc");
    let want_unrouted = at_start("gatehouse_requests_total", &unrouted) + 1.0;
    let seen = wait_metric(
        gw.admin_port,
        "gatehouse_requests_total",
        &unrouted,
        want_unrouted,
    );
    assert_eq!(seen, want_unrouted, "a 404 counts under route=\"-\"");

    let after = scrape(gw.admin_port);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(
        delta("gatehouse_request_duration_seconds_count", &duration),
        N as f64
    );
    assert_eq!(
        delta(
            "gatehouse_request_duration_seconds_bucket",
            &[("route", "svc"), ("le", "+Inf")]
        ),
        N as f64,
        "the +Inf bucket holds every observation"
    );
    assert!(delta("gatehouse_request_duration_seconds_sum", &duration) > 0.0);
    assert_eq!(
        delta("gatehouse_upstream_requests_total", &attempts),
        N as f64
    );
    assert_eq!(
        delta(
            "gatehouse_upstream_duration_seconds_count",
            &[("upstream", "svc")]
        ),
        N as f64
    );
    assert_eq!(
        delta(
            "gatehouse_upstream_requests_total",
            &[("upstream", "svc"), ("outcome", "connect_error")]
        ),
        0.0
    );
    assert_eq!(up.request_count(), N);
}

/// Counters whose labels are known in advance are exported at 0 before any event (issue 23),
/// so `rate()` and alerts work from the first scrape; and so are a route added by a reload.
#[test]
fn counters_with_known_labels_exist_at_zero_on_a_fresh_gateway_and_after_a_reload() {
    let up = FakeUpstream::start(Behavior::Echo);
    let rest = format!(
        "upstreams:\n{}\nroutes:\n  - {{name: api, prefix: /api, upstream: app, max_in_flight: 10, max_in_flight_per_client: 2, rate_limits: [{{name: per_ip, rate: \"5/1m\"}}], fallback: {{status: 503, body: down}}, cache: {{public: true}}}}\n",
        upstream("app", &[up.url()], "")
    );
    let gw = Gw::start(&rest);
    let text = scrape(gw.admin_port);
    let backend = up.addr();
    let expected: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "gatehouse_config_reloads_total",
            vec![("result", "success")],
        ),
        (
            "gatehouse_config_reloads_total",
            vec![("result", "failure")],
        ),
        (
            "gatehouse_connections_refused_total",
            vec![("limit", "total")],
        ),
        (
            "gatehouse_connections_refused_total",
            vec![("limit", "per_ip")],
        ),
        (
            "gatehouse_auth_decisions_total",
            vec![("result", "deny"), ("reason", "missing_token")],
        ),
        (
            "gatehouse_auth_decisions_total",
            vec![("result", "deny"), ("reason", "invalid_credentials")],
        ),
        (
            "gatehouse_auth_decisions_total",
            vec![("result", "allow"), ("reason", "login")],
        ),
        (
            "gatehouse_retries_total",
            vec![("route", "api"), ("reason", "connect_error")],
        ),
        (
            "gatehouse_retries_total",
            vec![("route", "api"), ("reason", "timeout")],
        ),
        (
            "gatehouse_retries_total",
            vec![("route", "api"), ("reason", "502")],
        ),
        (
            "gatehouse_retry_budget_exhausted_total",
            vec![("upstream", "app")],
        ),
        ("gatehouse_fallbacks_total", vec![("route", "api")]),
        ("gatehouse_rate_limited_total", vec![("route", "api")]),
        (
            "gatehouse_in_flight_rejected_total",
            vec![("route", "api"), ("scope", "route")],
        ),
        (
            "gatehouse_in_flight_rejected_total",
            vec![("route", "api"), ("scope", "client")],
        ),
        (
            "gatehouse_cache_requests_total",
            vec![("route", "api"), ("status", "hit")],
        ),
        (
            "gatehouse_cache_requests_total",
            vec![("route", "api"), ("status", "miss")],
        ),
        (
            "gatehouse_circuit_breaker_transitions_total",
            vec![
                ("upstream", "app"),
                ("backend", backend.as_str()),
                ("to", "open"),
            ],
        ),
        (
            "gatehouse_circuit_breaker_transitions_total",
            vec![
                ("upstream", "app"),
                ("backend", backend.as_str()),
                ("to", "closed"),
            ],
        ),
    ];
    for (name, labels) in &expected {
        assert_eq!(
            samples(&text, name, labels),
            vec![0.0],
            "{name} {labels:?} missing or not 0 on a fresh gateway:\n{text}"
        );
    }
    // A route added by a reload gets its series too.
    let added = format!("{rest}  - {{name: added, prefix: /added, upstream: app}}\n");
    gw.running.reload(gw.config_for(&added)).expect("reload");
    let text = scrape(gw.admin_port);
    assert_eq!(
        samples(
            &text,
            "gatehouse_retries_total",
            &[("route", "added"), ("reason", "reset")]
        ),
        vec![0.0],
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "gatehouse_config_reloads_total",
            &[("result", "success")]
        ),
        1.0
    );
}

#[test]
fn backend_health_gauge_goes_to_0_when_its_checks_fail_and_back_to_1() {
    let up = FakeUpstream::start(Behavior::Echo);
    let gw = svc_gateway(
        &[up.url()],
        "    health_check: {interval: 200ms, timeout: 200ms, rise: 1, fall: 1}\n",
        "",
    );
    let addr = up.addr();
    let labels = [("upstream", "svc"), ("backend", addr.as_str())];
    let name = "gatehouse_upstream_backend_healthy";
    assert_eq!(metric(gw.admin_port, name, &labels), 1.0);

    up.health_status(500);
    assert_eq!(
        wait_metric(gw.admin_port, name, &labels, 0.0),
        0.0,
        "a failing /health takes the backend out"
    );
    up.health_status(200);
    assert_eq!(
        wait_metric(gw.admin_port, name, &labels, 1.0),
        1.0,
        "a passing /health brings it back"
    );
}

#[test]
fn breaker_state_gauge_opens_after_consecutive_failures() {
    let up = FakeUpstream::start(Behavior::Respond {
        status: 500,
        headers: vec![],
        body: "boom".into(),
    });
    let gw = svc_gateway(
        &[up.url()],
        "    circuit_breaker: {consecutive_failures: 2, cooldown: 30s}\n",
        ", retry: {retries: 0}",
    );
    let addr = up.addr();
    let labels = [("upstream", "svc"), ("backend", addr.as_str())];
    let state = "gatehouse_circuit_breaker_state";
    assert_eq!(
        metric(gw.admin_port, state, &labels),
        0.0,
        "closed at start"
    );

    for _ in 0..2 {
        assert_eq!(
            gw.get("/svc").status,
            500,
            "the upstream's 500 is passed on"
        );
    }
    assert_eq!(
        wait_metric(gw.admin_port, state, &labels, 1.0),
        1.0,
        "open after 2 consecutive failures"
    );
    let opened = [
        ("upstream", "svc"),
        ("backend", addr.as_str()),
        ("to", "open"),
    ];
    assert_eq!(
        metric(
            gw.admin_port,
            "gatehouse_circuit_breaker_transitions_total",
            &opened
        ),
        1.0
    );
    // While open, the backend gets nothing and the route falls back.
    let r = gw.get("/svc");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-gatehouse-fallback"), Some("1"));
    assert_eq!(up.request_count(), 2);
    assert_eq!(
        wait_metric(
            gw.admin_port,
            "gatehouse_fallbacks_total",
            &[("route", "svc")],
            1.0
        ),
        1.0
    );
}

// ------------------------------------------------------------------------------------------
// Admin endpoints
// ------------------------------------------------------------------------------------------

#[test]
fn ready_and_health_answer_200_with_the_in_process_store_and_sqlite() {
    let gw = Gw::start("");
    let r = get(gw.admin_port, "/ready", &[]).expect("GET /ready");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["status"], "ready", "{v}");
    assert_eq!(v["checks"]["config"], "ok", "{v}");
    assert_eq!(
        v["checks"]["listener"],
        serde_json::json!({"ok": true}),
        "{v}"
    );
    assert_eq!(
        v["checks"]["session_store"],
        serde_json::json!({"kind": "memory", "ok": true})
    );
    assert_eq!(
        v["checks"]["database"],
        serde_json::json!({"kind": "sqlite", "ok": true})
    );

    let r = get(gw.admin_port, "/health", &[]).expect("GET /health");
    assert_eq!(r.status, 200);
    assert_eq!(
        json(&r),
        serde_json::json!({"status": "healthy", "service": "gatehouse"})
    );
    assert_eq!(gw.get("/health").status, 200, "public liveness too");
    let r = get(gw.admin_port, "/nothing-here", &[]).expect("GET unknown");
    assert_eq!(r.status, 404);
}

// ------------------------------------------------------------------------------------------
// Reload in process
// ------------------------------------------------------------------------------------------

#[test]
fn reload_with_a_broken_config_keeps_the_old_routes_and_counts_the_failure() {
    let up = FakeUpstream::start(Behavior::Echo);
    let good = format!(
        "upstreams:\n{}\nroutes:\n  - {{name: svc, prefix: /svc, upstream: svc}}\n",
        upstream("svc", &[up.url()], "")
    );
    let g = Reloadable::start(&good);
    assert_eq!(g.gw.get("/svc").status, 200);

    // Valid YAML, but the new pool's host cannot be resolved: the snapshot cannot be built.
    let broken = format!(
        "upstreams:\n{}\n  bad:\n    backends: \"http://no-such-host.invalid:80\"\nroutes:\n  - {{name: svc, prefix: /svc, upstream: svc}}\n  - {{name: bad, prefix: /bad, upstream: bad}}\n",
        upstream("svc", &[up.url()], "")
    );
    let err =
        g.gw.running
            .reload(g.config(&broken))
            .expect_err("a config whose backend does not resolve must be refused");
    assert!(
        err.problems
            .iter()
            .any(|p| p.contains("no-such-host.invalid")),
        "the problem names the backend: {err}"
    );

    assert_eq!(g.gw.get("/svc").status, 200, "the old route still answers");
    assert_eq!(
        g.gw.get("/bad").status,
        404,
        "nothing of the refused config is served"
    );
    let text = scrape(g.gw.admin_port);
    let reloads = "gatehouse_config_reloads_total";
    assert_eq!(value(&text, reloads, &[("result", "failure")]), 1.0);
    assert_eq!(value(&text, reloads, &[("result", "success")]), 0.0);
}

#[test]
fn reload_adds_a_route_while_a_long_request_in_flight_completes() {
    let slow = FakeUpstream::start(Behavior::Delay {
        delay: Duration::from_millis(1500),
        status: 200,
        body: "slow and complete".into(),
    });
    let fast = FakeUpstream::start(Behavior::Echo);
    let pools = format!(
        "upstreams:\n{}\n{}\n",
        upstream("slow", &[slow.url()], ""),
        upstream("fast", &[fast.url()], "")
    );
    let before = format!(
        "{pools}routes:\n  - {{name: slow, prefix: /slow, upstream: slow}}\n  - {{name: fast, prefix: /fast, upstream: fast}}\n"
    );
    let after = format!("{before}  - {{name: new, prefix: /new, upstream: fast}}\n");
    let g = Reloadable::start(&before);
    assert_eq!(g.gw.get("/new").status, 404);

    let port = g.gw.port;
    let in_flight = std::thread::spawn(move || get(port, "/slow", &[]));
    assert!(
        wait_until(Duration::from_secs(5), || slow.request_count() == 1),
        "the slow request did not reach its upstream"
    );
    let restart =
        g.gw.running
            .reload(g.config(&after))
            .unwrap_or_else(|e| panic!("reload refused: {e}"));
    assert!(restart.is_empty(), "nothing needs a restart: {restart:?}");
    // Precondition of the scenario (the upstream holds the answer 1.5 s; a reload takes
    // milliseconds): the request is still in flight now.
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before the reload"
    );

    assert!(
        wait_until(Duration::from_secs(5), || g.gw.get("/new").status == 200),
        "the added route is served"
    );
    let r = in_flight
        .join()
        .expect("client thread")
        .expect("the in-flight request must complete");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "slow and complete");
    assert_eq!(slow.request_count(), 1, "answered once, never retried");
    assert_eq!(
        g.gw.get("/fast").status,
        200,
        "the other routes still answer"
    );
    assert_eq!(
        metric(
            g.gw.admin_port,
            "gatehouse_config_reloads_total",
            &[("result", "success")]
        ),
        1.0
    );
}

#[test]
fn reload_carries_over_an_unchanged_pool_with_its_health_state() {
    let flaky = FakeUpstream::start(Behavior::Echo);
    let steady = FakeUpstream::start(Behavior::Echo);
    // fall 1 takes a backend out at its first failed check; rise 50 keeps it out for 50
    // passing checks (10 s), long after the reload below. A pool built anew starts every
    // backend healthy and primes it with a single check, so only a carried-over pool can
    // still report `flaky` unhealthy right after the reload.
    let pool = |rise: u32| {
        upstream(
            "svc",
            &[flaky.url(), steady.url()],
            &format!(
                "    health_check: {{interval: 200ms, timeout: 200ms, rise: {rise}, fall: 1}}\n"
            ),
        )
    };
    let routes = "routes:\n  - {name: svc, prefix: /svc, upstream: svc}\n";
    let g = Reloadable::start(&format!("upstreams:\n{}\n{routes}", pool(50)));
    assert_eq!(reported_healthy(&g.gw, "svc", &flaky), Some(true));

    flaky.health_status(500);
    assert!(
        wait_until(Duration::from_secs(5), || {
            reported_healthy(&g.gw, "svc", &flaky) == Some(false)
        }),
        "the failing backend is taken out"
    );
    flaky.health_status(200);

    let with_new_route = format!(
        "upstreams:\n{}\n{routes}  - {{name: new, prefix: /new, upstream: svc}}\n",
        pool(50)
    );
    g.gw.running
        .reload(g.config(&with_new_route))
        .unwrap_or_else(|e| panic!("reload refused: {e}"));
    assert_eq!(
        reported_healthy(&g.gw, "svc", &flaky),
        Some(false),
        "the unchanged pool kept its health state across the reload"
    );
    assert_eq!(reported_healthy(&g.gw, "svc", &steady), Some(true));
    let addr = flaky.addr();
    assert_eq!(
        metric(
            g.gw.admin_port,
            "gatehouse_upstream_backend_healthy",
            &[("upstream", "svc"), ("backend", addr.as_str())]
        ),
        0.0
    );
    assert_eq!(g.gw.get("/new").status, 200);

    // Contrast: a pool whose config changed is built anew and checked afresh, so the
    // backend, now passing its checks, is healthy right after that reload.
    let changed = format!(
        "upstreams:\n{}\n{routes}  - {{name: new, prefix: /new, upstream: svc}}\n",
        pool(49)
    );
    g.gw.running
        .reload(g.config(&changed))
        .unwrap_or_else(|e| panic!("reload refused: {e}"));
    assert_eq!(reported_healthy(&g.gw, "svc", &flaky), Some(true));
}

// ------------------------------------------------------------------------------------------
// Reload of the binary: SIGHUP and server.watch_config
// ------------------------------------------------------------------------------------------

/// A `gatehouse run -c FILE` process on free ports (`${GATEHOUSE_LISTEN}`,
/// `${GATEHOUSE_ADMIN_LISTEN}` and `${DATABASE_URL}` in the file), once both listeners answer.
fn start(config: &Path) -> Process {
    let (port, admin_port) = (free_port(), free_port());
    let mut cmd = gatehouse_on(port, admin_port);
    cmd.arg("run")
        .arg("-c")
        .arg(config)
        .env("DATABASE_URL", temp_db_url("proc"))
        .env("REDIS_URL", "");
    let p = Process::spawn(&mut cmd, port, admin_port);
    // The reload service starts before the admin listener, so once the admin /health
    // answers, SIGHUP is handled and the file's first modification time has been read.
    let up = wait_until(Duration::from_secs(15), || {
        get(admin_port, "/health", &[]).is_ok_and(|r| r.status == 200)
    });
    assert!(up, "gatehouse did not start; log:\n{}", p.log_text());
    // The proxy listener starts after the admin one: on a busy machine its first request
    // could come before it listens.
    let proxy_up = wait_until(Duration::from_secs(15), || {
        get(port, "/health", &[]).is_ok()
    });
    assert!(
        proxy_up,
        "the proxy listener did not start; log:\n{}",
        p.log_text()
    );
    p
}

/// The status `p` answers for `GET path` (0 when the request fails).
fn status(p: &Process, path: &str) -> u16 {
    get(p.port, path, &[]).map_or(0, |r| r.status)
}

/// A config file with ports and database from the environment (see [`start`]).
fn config_text(server_extra: &str, rest: &str) -> String {
    format!(
        "{}{rest}\nauth: {{database_url: \"${{DATABASE_URL}}\"}}\n",
        env_server_block(server_extra)
    )
}

/// Replaces `path` atomically (write a sibling, rename over), as deploy tools do.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.new");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

fn routes_yaml(up: &FakeUpstream, prefixes: &[&str]) -> String {
    let mut s = format!(
        "upstreams:\n{}\nroutes:\n",
        upstream("svc", &[up.url()], "")
    );
    for p in prefixes {
        s += &format!("  - {{name: r{}, prefix: {p}, upstream: svc}}\n", &p[1..]);
    }
    s
}

#[test]
fn sighup_reloads_the_file_and_a_broken_file_keeps_the_old_routes() {
    let up = FakeUpstream::start(Behavior::Echo);
    let cfg = temp_path("hup.yaml");
    std::fs::write(&cfg, config_text("", &routes_yaml(&up, &["/a"]))).expect("write config");
    let p = start(&cfg);
    assert_eq!(status(&p, "/a"), 200);
    assert_eq!(status(&p, "/b"), 404);

    replace_file(&cfg, &config_text("", &routes_yaml(&up, &["/a", "/b"])));
    p.signal("-HUP");
    assert!(
        wait_until(Duration::from_secs(10), || status(&p, "/b") == 200),
        "the route added to the file is served after SIGHUP; log:\n{}",
        p.log_text()
    );
    assert_eq!(status(&p, "/a"), 200);
    let reloads = "gatehouse_config_reloads_total";
    assert_eq!(metric(p.admin_port, reloads, &[("result", "success")]), 1.0);

    // Broken: a route to an unknown upstream. Refused as a whole.
    let mut broken = routes_yaml(&up, &["/a", "/b"]);
    broken += "  - {name: c, prefix: /c, upstream: billing}\n";
    replace_file(&cfg, &config_text("", &broken));
    p.signal("-HUP");
    assert_eq!(
        wait_metric(p.admin_port, reloads, &[("result", "failure")], 1.0),
        1.0,
        "the refused reload is counted; log:\n{}",
        p.log_text()
    );
    assert_eq!(status(&p, "/a"), 200, "old routes still answer");
    assert_eq!(status(&p, "/b"), 200, "old routes still answer");
    assert_eq!(status(&p, "/c"), 404);
    assert_eq!(metric(p.admin_port, reloads, &[("result", "success")]), 1.0);
    assert!(
        p.log_text().contains("unknown upstream"),
        "the log names the problem:\n{}",
        p.log_text()
    );
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn watch_config_reloads_an_edited_file_without_a_signal() {
    let up = FakeUpstream::start(Behavior::Echo);
    let cfg = temp_path("watch.yaml");
    let watch = "  watch_config: true\n";
    std::fs::write(&cfg, config_text(watch, &routes_yaml(&up, &["/a"]))).expect("write config");
    let p = start(&cfg);
    assert_eq!(status(&p, "/a"), 200);
    assert_eq!(status(&p, "/b"), 404);

    replace_file(&cfg, &config_text(watch, &routes_yaml(&up, &["/a", "/b"])));
    assert!(
        wait_until(Duration::from_secs(10), || status(&p, "/b") == 200),
        "the edited file is picked up; log:\n{}",
        p.log_text()
    );
    assert_eq!(status(&p, "/a"), 200);
    assert_eq!(
        metric(
            p.admin_port,
            "gatehouse_config_reloads_total",
            &[("result", "success")]
        ),
        1.0
    );
    let _ = std::fs::remove_file(&cfg);
}

// ------------------------------------------------------------------------------------------
// deploy/: the dashboard and the alerts query only metrics the gateway exports
// ------------------------------------------------------------------------------------------

/// Every metric name `src/metrics.rs` can export: its snake_case string literals with the
/// `gatehouse_` prefix (label names slip in as harmless extras), and for the histograms
/// their `_bucket`, `_sum` and `_count` series.
fn exported_metric_names() -> BTreeSet<String> {
    let src = std::fs::read_to_string(repo_file("src/metrics.rs")).expect("read src/metrics.rs");
    let mut names = BTreeSet::new();
    for (i, lit) in src.split('"').enumerate() {
        let ident = !lit.is_empty()
            && lit
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if i % 2 == 1 && ident {
            let name = if lit.starts_with("gatehouse_") {
                lit.to_string()
            } else {
                format!("gatehouse_{lit}")
            };
            for suffix in ["", "_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    assert!(
        names.contains("gatehouse_requests_total"),
        "could not read the metric names"
    );
    names
}

/// Metric names in a PromQL expression: identifiers outside label matchers, ranges and
/// strings that are not functions, keywords, `by (...)` label lists or Grafana variables.
fn promql_metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "group_left",
        "group_right",
        // Aggregations may put `by (...)` / `without (...)` before their parenthesis.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_to = |from: usize, close: u8| {
        let mut j = from;
        let mut quote = None;
        while j < b.len() {
            match (quote, b[j]) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), b'\\') => j += 1,
                (Some(_), _) => {}
                (None, b'"' | b'\'' | b'`') => quote = Some(b[j]),
                (None, c) if c == close => return j + 1,
                (None, _) => {}
            }
            j += 1;
        }
        j
    };
    while i < b.len() {
        let c = b[i];
        if c == b'{' {
            i = skip_to(i + 1, b'}');
        } else if c == b'[' {
            i = skip_to(i + 1, b']');
        } else if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_to(i + 1, c);
        } else if c == b'$' {
            // A Grafana variable: $name or ${name}.
            i += 1;
            if b.get(i) == Some(&b'{') {
                i = skip_to(i + 1, b'}');
            } else {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let mut k = i;
            while k < b.len() && b[k].is_ascii_whitespace() {
                k += 1;
            }
            let call = b.get(k) == Some(&b'(');
            if LABEL_LISTS.contains(&word) && call {
                i = skip_to(k + 1, b')');
            } else if !call && !KEYWORDS.contains(&word) {
                out.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every `expr` string anywhere in a JSON document.
fn json_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match v {
                    serde_json::Value::String(s) if k == "expr" => out.push(s.clone()),
                    _ => json_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn promql_scanner_finds_metric_names_only() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(gatehouse_x_bucket{route=~"$route", a="b{c}"}[$__rate_interval]))) / on (route) group_left max without (le) (gatehouse_y offset 5m) > bool 1 and up"#,
    );
    assert_eq!(names, ["gatehouse_x_bucket", "gatehouse_y", "up"]);
}

#[test]
fn dashboard_and_alerts_query_only_metrics_the_gateway_exports() {
    let exported = exported_metric_names();

    let text = std::fs::read_to_string(repo_file("deploy/grafana/gatehouse-dashboard.json"))
        .expect("read the dashboard");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).expect("the dashboard is valid JSON");
    assert!(
        text.contains("${DS_PROMETHEUS}"),
        "the data source is the ${{DS_PROMETHEUS}} variable"
    );
    let mut exprs = Vec::new();
    json_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "only {} queries found", exprs.len());
    for expr in &exprs {
        let names = promql_metric_names(expr);
        assert!(!names.is_empty(), "no metric in dashboard query {expr}");
        for name in names {
            assert!(
                exported.contains(&name),
                "dashboard query names {name}, which src/metrics.rs does not export: {expr}"
            );
        }
    }

    // The alerts may also use Prometheus's own `up`.
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml"))
            .expect("read the alert rules"),
    )
    .expect("the alert rules are YAML");
    let groups = rules["groups"].as_sequence().expect("groups");
    let mut count = 0;
    for rule in groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
    {
        let expr = rule["expr"].as_str().expect("every rule has an expr");
        count += 1;
        for name in promql_metric_names(expr) {
            assert!(
                name == "up" || exported.contains(&name),
                "alert {:?} names {name}, which src/metrics.rs does not export",
                rule["alert"]
            );
        }
    }
    assert!(count >= 7, "only {count} alert rules");
}

#[test]
fn promtool_accepts_the_prometheus_config_and_alert_rules() {
    let Some(promtool) = promtool() else { return };
    for args in [
        ["check", "config", "deploy/prometheus/prometheus.yml"],
        ["check", "rules", "deploy/prometheus/alerts.yml"],
    ] {
        let out = Command::new(promtool)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

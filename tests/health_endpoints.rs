//! Built-in endpoints: `/health` (liveness) and `/api/v1/health` (routes and backends).

mod common;
use common::*;

#[test]
fn health_is_the_seeds_shape() {
    let gw = Gw::start("");
    let r = gw.get("/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        json(&r),
        serde_json::json!({"status": "healthy", "service": "gatehouse"})
    );
}

#[test]
fn api_health_lists_routes_and_backend_health() {
    let live = FakeUpstream::start(Behavior::Echo);
    let dead_port = free_port();
    let gw = Gw::start(&format!(
        "upstreams:\n{}\n    health_check: {{interval: 200ms, timeout: 200ms, rise: 1, fall: 1}}\nroutes:\n  - {{name: doctors, prefix: /api/v1/doctors, upstream: doctors, methods: [GET, POST]}}\n",
        upstream("doctors", &[live.url(), format!("http://127.0.0.1:{dead_port}")], "")
    ));
    let r = gw.get("/api/v1/health");
    assert_eq!(r.status, 200);
    let v = json(&r);
    assert_eq!(v["routes"][0]["prefix"], "/api/v1/doctors");
    assert_eq!(v["routes"][0]["upstream"], "doctors");
    assert_eq!(
        v["routes"][0]["methods"],
        serde_json::json!(["GET", "POST"])
    );
    let backends = v["upstreams"]["doctors"]["backends"]
        .as_array()
        .expect("backends")
        .clone();
    let health_of = |port: u16| {
        backends
            .iter()
            .find(|b| b["address"] == format!("127.0.0.1:{port}"))
            .map(|b| b["healthy"].clone())
    };
    assert_eq!(health_of(live.port()), Some(serde_json::json!(true)));
    assert_eq!(health_of(dead_port), Some(serde_json::json!(false)));
    assert_eq!(v["upstreams"]["doctors"]["healthy_backends"], 1);
}

#[test]
fn health_refuses_other_methods() {
    let gw = Gw::start("");
    let r = request(gw.port, "POST", "/health", &[], b"x").expect("post");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn admin_listener_serves_health() {
    let gw = Gw::start("");
    let r = get(gw.admin_port, "/health", &[]).expect("admin");
    assert_eq!(r.status, 200);
    assert_eq!(json(&r)["status"], "healthy");
}

/// The harness's `free_port` is what keeps the tests of one binary, run in parallel, from
/// starting two gateways on one port (the loser's requests then reach the winner). Asked for
/// from several threads at once, it never hands out a port twice.
#[test]
fn harness_free_port_never_repeats_a_port_within_the_process() {
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| (0..500).map(|_| free_port()).collect::<Vec<u16>>()))
        .collect();
    let mut ports: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("free_port thread"))
        .collect();
    let asked = ports.len();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), asked, "free_port handed out a port twice");
}

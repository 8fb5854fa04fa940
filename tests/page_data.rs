//! Page data sources take the proxied requests' attempt machinery (issue 22 point 3): the
//! same retry decision (`Pool::decide_retry`: a 502/503/504 may go back to the only backend,
//! within the page's wait), the same identity headers, the pool's TLS and timeouts.

mod common;

use common::scripted::{Reply, ScriptedUpstream};
use common::*;
use gatehouse::pages::data::{fetch_all, Fetch};
use std::sync::Arc;
use std::time::Duration;

fn fetch(up: &ScriptedUpstream, wait: Duration) -> serde_json::Map<String, serde_json::Value> {
    let cfg = gatehouse::Config::from_yaml_str(&format!(
        "upstreams:\n{}\n",
        upstream("patients", &[up.url()], "")
    ))
    .expect("config");
    let pool = gatehouse::upstream::Pool::build(
        "patients",
        &cfg.upstreams["patients"],
        Default::default(),
    )
    .expect("pool");
    let fetches = vec![Fetch {
        name: "profile".into(),
        pool: Arc::new(pool),
        path: "/patients/42".into(),
    }];
    let connector = Arc::new(pingora::connectors::http::Connector::new(None));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(fetch_all(&connector, fetches, &identity(), "rid-7", wait))
}

const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
const JSON_OK: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"id\": 42}\n";

#[test]
fn a_503_from_the_only_backend_is_retried_on_it_as_a_proxied_get_would_be() {
    let up = ScriptedUpstream::start();
    up.script("/patients/42", Reply::keep(UNAVAILABLE));
    up.script("/patients/42", Reply::keep(JSON_OK));
    let data = fetch(&up, Duration::from_secs(5));
    assert_eq!(data["profile"], serde_json::json!({"id": 42}), "{data:?}");
    let seen = up.seen_for("/patients/42");
    assert_eq!(seen.len(), 2, "retried once");
    for s in &seen {
        assert_eq!(s.header_all("authorization"), vec!["Bearer tok"]);
        assert_eq!(s.header_all("x-user-id"), vec!["42"]);
        assert_eq!(s.header_all("x-user-role"), vec!["patient"]);
        assert_eq!(s.header_all("x-session-id"), vec!["s1"]);
        assert_eq!(s.header_all("x-request-id"), vec!["rid-7"]);
    }
}

#[test]
fn retries_stop_at_the_policy_and_the_source_is_unavailable() {
    let up = ScriptedUpstream::start();
    up.set_default(Some(Reply::keep(UNAVAILABLE)));
    let data = fetch(&up, Duration::from_secs(5));
    assert_eq!(data["profile"], serde_json::json!({"unavailable": true}));
    // The default policy: the first attempt and 2 retries.
    assert_eq!(up.seen_for("/patients/42").len(), 3);
}

//! The live-session check without a Redis round trip per request, and revocation that stays
//! immediate across instances (pub/sub): two gateways on one Redis. Needs `REDIS_URL` (the
//! test script provides a throwaway Redis); skipped with a note otherwise, failed under CI.

mod common;
use common::*;
use gatehouse::auth::users::Role;
use std::time::{Duration, Instant};

#[test]
fn repeated_checks_skip_redis_and_a_logout_through_a_is_refused_by_b_within_100ms() {
    let Some(redis) = required_services(&["REDIS_URL"], "session_cache") else {
        return;
    };
    let redis = &redis[0];
    let up = FakeUpstream::start(Behavior::Echo);
    let db = temp_db_url("session-cache");
    let email = seed_users(&db, "example.test", &[(Role::Patient, "Ana")])
        .remove(0)
        .email;
    let yaml = format!(
        "upstreams:\n{}\nroutes:\n  - {{prefix: /api/v1/patients, upstream: patients, auth: required}}\nauth:\n  database_url: \"{db}\"\n  redis_url: \"{redis}\"\n  jwt: {{secret: \"{SECRET}\"}}\n  login: {{max_failures_per_ip: 1000}}\n",
        upstream("patients", &[up.url()], "")
    );
    let a = Gw::start(&yaml);
    let b = Gw::start(&yaml);
    let token = login(a.port, &email);
    let bearer = bearer(&token);

    // B checks the session in Redis once, then answers from its cache.
    assert_eq!(
        b.get_with("/api/v1/patients/1", &[("Authorization", bearer.as_str())])
            .status,
        200
    );
    let before = metric(
        b.admin_port,
        "gatehouse_session_store_duration_seconds_count",
        &[("op", "ttl")],
    );
    for _ in 0..20 {
        assert_eq!(
            b.get_with("/api/v1/patients/1", &[("Authorization", bearer.as_str())])
                .status,
            200
        );
    }
    let after = metric(
        b.admin_port,
        "gatehouse_session_store_duration_seconds_count",
        &[("op", "ttl")],
    );
    assert!(
        after - before <= 1.0,
        "20 checks cost {} Redis lookups",
        after - before
    );

    // Logout through A; B refuses the token on a request within 100 ms.
    let out = logout(a.port, &token, false);
    assert_eq!(out.status, 200, "{}", out.text());
    let t0 = Instant::now();
    let refused = wait_until(Duration::from_millis(100), || {
        b.get_with("/api/v1/patients/1", &[("Authorization", bearer.as_str())])
            .status
            == 401
    });
    eprintln!("revocation seen by B after {:?}", t0.elapsed());
    assert!(
        refused,
        "B still accepted the token 100 ms after the logout through A"
    );
}

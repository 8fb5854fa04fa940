//! Redis as production runs it: a Sentinel set (master, replica, three sentinels) and a
//! three-node Cluster, both started by the test command (`REDIS_SENTINEL_URL`,
//! `REDIS_CLUSTER_URL`; skipped with a note without them, failed under CI), and a gateway
//! started before its Redis is up (our own `redis-server` child).
//!
//! Two gateways share each topology and one SQLite user database, as two instances behind a
//! load balancer would.

mod common;
use common::*;

use gatehouse::auth::users::Role;
use std::process::Command;
use std::time::{Duration, Instant};

const ROUTES: &str = "routes:
  - {name: signed_in, prefix: /private, upstream: app, auth: required}
  - {name: limited, prefix: /limited, upstream: app, rate_limits: [{name: shared, rate: \"3/1m\", backend: redis, on_store_error: deny}]}
";

/// A gateway on `db` and `redis` with the Echo upstream `up`.
fn gateway(db: &str, redis: &str, up: &FakeUpstream) -> Gw {
    pool_gateway(
        "app",
        &[up.url()],
        &format!("{ROUTES}auth:\n  database_url: \"{db}\"\n  redis_url: \"{redis}\"\n  jwt: {{secret: \"{SECRET}\"}}\n  login: {{max_failures_per_ip: 1000}}\n"),
    )
}

fn private_status(gw: &Gw, token: &str) -> u16 {
    with_bearer(gw.port, "/private/x", token).status
}

/// `redis-cli -p port args…`, its trimmed output lines.
fn redis_cli(port: u16, args: &[&str]) -> Vec<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// The first sentinel's port in a `redis-sentinel://host:port/…` URL.
fn first_port(url: &str) -> u16 {
    let rest = url.split("://").nth(1).expect("scheme");
    let host_port = rest.split(['/', '?']).next().expect("host");
    host_port
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

/// Two gateways on one topology share sessions; a logout through one is refused by the
/// other; a session revocation from the CLI (every session of a user, keys in several hash
/// slots) ends sessions on both; a Redis-backed rate limit is shared.
fn sessions_revocation_and_limits_are_shared(url: &str, tag: &str) {
    let up = FakeUpstream::start(Behavior::Echo);
    let dir = TempDir::new(tag);
    let db = dir.sqlite_url();
    let users = seed_users(
        &db,
        "topology.test",
        &[(Role::Patient, "Ana"), (Role::Patient, "Bea")],
    );
    let (a, b) = (gateway(&db, url, &up), gateway(&db, url, &up));

    let t1 = login(a.port, &users[0].email);
    assert_eq!(private_status(&b, &t1), 200, "B accepts A's session");
    let out = logout(b.port, &t1, false);
    assert_eq!(out.status, 200, "{}", out.text());
    assert!(
        wait_until(POLL, || private_status(&a, &t1) == 401),
        "A still accepts a session ended through B"
    );

    // Several sessions of one user, on both instances, ended at once from the CLI.
    let sessions: Vec<String> = (0..4)
        .map(|i| login(if i % 2 == 0 { a.port } else { b.port }, &users[1].email))
        .collect();
    for t in &sessions {
        assert_eq!(private_status(&a, t), 200);
    }
    run_cli_ok(
        &["user", "revoke-sessions", "--email", &users[1].email],
        &[
            ("DATABASE_URL", db.as_str()),
            ("REDIS_URL", url),
            ("MFA_ENCRYPTION_KEY", TEST_MFA_KEY),
        ],
        "",
    );
    for t in &sessions {
        for gw in [&a, &b] {
            assert!(
                wait_until(Duration::from_secs(10), || private_status(gw, t) == 401),
                "a revoked session is still accepted"
            );
        }
    }

    // `3/1m` with `backend: redis`: three requests in all, whichever instance takes them.
    let statuses: Vec<u16> = [&a, &b, &a, &b, &a]
        .iter()
        .map(|gw| gw.get("/limited/x").status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429], "shared rate limit");
}

#[test]
fn sentinel_set_shares_sessions_and_survives_a_master_failover() {
    let Some(urls) = required_services(&["REDIS_SENTINEL_URL"], "redis_topologies") else {
        return;
    };
    let url = &urls[0];
    sessions_revocation_and_limits_are_shared(url, "sentinel-shared");

    let up = FakeUpstream::start(Behavior::Echo);
    let dir = TempDir::new("sentinel-failover");
    let db = dir.sqlite_url();
    let users = seed_users(
        &db,
        "failover.test",
        &[(Role::Patient, "Ana"), (Role::Doctor, "Dan")],
    );
    let (a, b) = (gateway(&db, url, &up), gateway(&db, url, &up));
    let before = login(a.port, &users[0].email);
    let other = login(b.port, &users[1].email);
    // Sessions made more than a second before the failover (the replica has them).
    std::thread::sleep(Duration::from_millis(1100));

    let sentinel = first_port(url);
    let master = redis_cli(
        sentinel,
        &["SENTINEL", "get-master-addr-by-name", "mymaster"],
    );
    let master_port: u16 = master
        .get(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no master from the sentinel: {master:?}"));
    redis_cli(master_port, &["SHUTDOWN", "NOSAVE"]);
    let killed = Instant::now();

    // Sign-in comes back through both instances once the sentinels promote the replica.
    let back = wait_until(Duration::from_secs(20), || {
        login_as(a.port, &users[0].email, PASSWORD, &[]).status == 200
            && login_as(b.port, &users[1].email, PASSWORD, &[]).status == 200
    });
    let took = killed.elapsed();
    eprintln!("sign-in back on both instances {took:?} after the master was killed");
    assert!(back, "sign-in did not come back after the failover");
    // The recovery target (sentinel timers dominate: down after 1 s, then election and
    // promotion; measured 3.4–3.6 s on the 2-core CI machine).
    assert!(
        took < Duration::from_secs(5),
        "sign-in came back only after {took:?}"
    );
    let now_master = redis_cli(
        sentinel,
        &["SENTINEL", "get-master-addr-by-name", "mymaster"],
    );
    assert_ne!(
        now_master.get(1),
        Some(&master_port.to_string()),
        "no failover happened"
    );

    // Sessions made before the failover still work on both instances.
    for gw in [&a, &b] {
        assert_eq!(
            private_status(gw, &before),
            200,
            "session lost in the failover"
        );
        assert_eq!(
            private_status(gw, &other),
            200,
            "session lost in the failover"
        );
    }
    // Revocation across instances after the failover.
    let out = logout(a.port, &before, false);
    assert_eq!(out.status, 200, "{}", out.text());
    assert!(
        wait_until(POLL, || private_status(&b, &before) == 401),
        "B still accepts a session ended through A after the failover"
    );
    assert_eq!(private_status(&b, &other), 200);
}

#[test]
fn cluster_shares_sessions_revocation_and_rate_limits() {
    let Some(urls) = required_services(&["REDIS_CLUSTER_URL"], "redis_topologies") else {
        return;
    };
    sessions_revocation_and_limits_are_shared(&urls[0], "cluster-shared");
}

#[test]
fn a_gateway_started_before_redis_is_up_recovers_without_restart() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    redis.kill();
    let up = FakeUpstream::start(Behavior::Echo);
    let dir = TempDir::new("redis-late");
    let db = dir.sqlite_url();
    let email = seed_users(&db, "late.test", &[(Role::Patient, "Ana")])
        .remove(0)
        .email;
    let gw = gateway(&db, &redis.url(), &up);
    // No store yet: sign-in is refused (503), never served without a session.
    let r = login_as(gw.port, &email, PASSWORD, &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(redis.spawn(), "redis-server starts");
    assert!(
        wait_until(Duration::from_secs(15), || {
            login_as(gw.port, &email, PASSWORD, &[]).status == 200
        }),
        "sign-in did not work once Redis came up"
    );
    let token = login(gw.port, &email);
    assert_eq!(private_status(&gw, &token), 200);
}

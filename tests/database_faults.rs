//! PostgreSQL failing under load: our own throwaway cluster (never the shared one) crashes
//! and restarts while clients keep signing in. Logins answer 503 with `Retry-After` during
//! the outage, none hangs past the pool's acquire timeout, sign-in comes back without
//! restarting the gateway, and the pool is not left holding broken connections.

mod common;
use common::*;

use gatehouse::auth::users::Role;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The pool's 2 s acquire timeout plus slack for a loaded machine: a login slower than this
/// is a hang. Not a speed test.
const HANG_BOUND: Duration = Duration::from_millis(4500);
/// Clients signing in at once, each as its own user (no lockout interplay).
const CLIENTS: usize = 6;

/// What one login got: status, whether `Retry-After` came with a 503, error code, duration.
#[derive(Debug, Clone)]
struct Outcome {
    status: u16,
    retry_after: bool,
    code: Option<String>,
    took: Duration,
    at: Instant,
}

fn login(port: u16, email: &str) -> Outcome {
    let start = Instant::now();
    let r = login_as(port, email, PASSWORD, &[API_JSON]);
    let code = (r.status != 200).then(|| {
        serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_default()
    });
    Outcome {
        status: r.status,
        retry_after: r.header("retry-after").is_some(),
        code,
        took: start.elapsed(),
        at: start,
    }
}

#[test]
fn logins_under_load_survive_a_postgres_crash_and_restart() {
    let Some(mut pg) = OwnPostgres::start() else {
        return;
    };
    let db = pg.url();
    let roles: Vec<(Role, &str)> = (0..CLIENTS).map(|_| (Role::Patient, "Pat")).collect();
    let users = seed_users(&db, "db-faults.test", &roles);
    let up = FakeUpstream::start(Behavior::Echo);
    let gw = pool_gateway(
        "app",
        &[up.url()],
        &format!(
            "routes:\n  - {{prefix: /private, upstream: app, auth: required}}\nauth:\n  database_url: \"{db}\"\n  jwt: {{secret: \"{SECRET}\"}}\n  login: {{max_failures_per_ip: 100000, max_failures_per_account: 100000}}\n"
        ),
    );
    let port = gw.port;
    for u in &users {
        assert_eq!(login(port, &u.email).status, 200, "before the fault");
    }

    // Clients sign in back to back until told to stop (bounded: at most 5,000 logins each).
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let clients: Vec<_> = users
        .iter()
        .map(|u| {
            let (stop, seen, email) = (stop.clone(), seen.clone(), u.email.clone());
            std::thread::spawn(move || {
                for _ in 0..5_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let o = login(port, &email);
                    seen.lock().unwrap().push(o);
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_secs(1));
    let down_at = Instant::now();
    pg.stop_immediately();
    std::thread::sleep(Duration::from_secs(4));
    let restart_at = Instant::now();
    assert!(pg.start_server(), "PostgreSQL restarts");
    let up_at = Instant::now();
    // Sign-in comes back without restarting the gateway: a run of successes after the return.
    let back = wait_until(Duration::from_secs(15), || {
        let s = seen.lock().unwrap();
        let after: Vec<_> = s.iter().filter(|o| o.at > up_at).collect();
        after.len() >= 3 * CLIENTS
            && after
                .iter()
                .rev()
                .take(2 * CLIENTS)
                .all(|o| o.status == 200)
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let seen = seen.lock().unwrap().clone();
    assert!(back, "sign-in did not come back after PostgreSQL returned");

    // During the outage: 503 `auth_unavailable` with Retry-After, nothing else, no hang.
    let during: Vec<_> = seen
        .iter()
        .filter(|o| o.at > down_at + Duration::from_millis(200) && o.at + o.took < restart_at)
        .collect();
    assert!(!during.is_empty(), "no login ran during the outage");
    for o in &seen {
        assert!(o.took < HANG_BOUND, "a login took {:?}: {o:?}", o.took);
        match o.status {
            200 => {}
            503 => {
                assert!(o.retry_after, "503 without Retry-After: {o:?}");
                assert_eq!(o.code.as_deref(), Some("auth_unavailable"), "{o:?}");
            }
            _ => panic!("a login answered {}: {o:?}", o.status),
        }
    }
    assert!(
        during.iter().all(|o| o.status == 503),
        "a login succeeded while PostgreSQL was down: {during:?}"
    );

    // The pool is not left exhausted by connections broken by the crash: three times its size
    // of logins at once all succeed.
    let burst: Vec<_> = (0..30)
        .map(|i| {
            let email = users[i % CLIENTS].email.clone();
            std::thread::spawn(move || login(port, &email))
        })
        .collect();
    for b in burst {
        let o = b.join().expect("burst login");
        assert_eq!(o.status, 200, "after recovery: {o:?}");
    }
    drop(gw);
}

//! Zero-downtime upgrade of the binary (README "Operating gatehouse", PINGORA.md "Running the
//! server"): a new process started with `run --upgrade` waits on `server.upgrade_sock`; SIGQUIT
//! makes the old one hand over its listening sockets, then drain and exit. Under continuous
//! load (new connections and one keep-alive connection) no request may fail.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `gatehouse ARGS -c CONFIG` (listening on `port` and `admin_port`, as the config says),
/// without services from the environment.
fn spawn(args: &[&str], config: &Path, port: u16, admin_port: u16) -> Process {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("-c")
        .arg(config)
        .env("REDIS_URL", "")
        .env_remove("DATABASE_URL");
    Process::spawn(&mut cmd, port, admin_port)
}

/// Requests `p` answered, from its access log (JSON lines).
fn served(p: &Process) -> usize {
    p.log_lines()
        .iter()
        .filter(|l| l.contains(r#""target":"access""#) && l.contains(r#""route":"svc""#))
        .count()
}

/// What the load threads saw.
#[derive(Default)]
struct Load {
    sent: AtomicUsize,
    ok: AtomicUsize,
    /// Keep-alive connections the server ended gracefully (idle close or `Connection: close`).
    graceful_closes: AtomicUsize,
    failures: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Load {
    fn fail(&self, what: String) {
        self.failures.lock().expect("failures").push(what);
    }

    fn check(&self, r: &Response, what: &str) {
        if r.status == 200 && r.text().contains(r#""target":"/svc/"#) {
            self.ok.fetch_add(1, SeqCst);
        } else {
            self.fail(format!("{what}: status {} body {}", r.status, r.text()));
        }
    }
}

/// Upper bound on the load, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

/// One request per new connection, back to back.
fn new_connections(port: u16, load: Arc<Load>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut n = 0u64;
        while !load.stop.load(SeqCst) && start.elapsed() < LOAD_LIMIT {
            n += 1;
            load.sent.fetch_add(1, SeqCst);
            match get(port, &format!("/svc/new-{n}"), &[]) {
                Ok(r) => load.check(&r, &format!("new connection #{n}")),
                Err(e) => load.fail(format!("new connection #{n}: {e}")),
            }
        }
    })
}

/// Requests on one keep-alive connection; a new one when the server ends it gracefully.
fn keep_alive(port: u16, load: Arc<Load>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut conn: Option<Conn> = None;
        let mut n = 0u64;
        while !load.stop.load(SeqCst) && start.elapsed() < LOAD_LIMIT {
            // A connection the server closed while it was idle is not a failure: reconnect.
            if conn
                .as_mut()
                .is_some_and(|c| c.is_closed_by_peer(Duration::from_millis(1)))
            {
                load.graceful_closes.fetch_add(1, SeqCst);
                conn = None;
            }
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match Conn::open(port) {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        load.fail(format!("keep-alive connect: {e}"));
                        continue;
                    }
                },
            };
            n += 1;
            let req = format!("GET /svc/ka-{n} HTTP/1.1\r\nHost: localhost\r\n\r\n");
            if c.send(req.as_bytes()).is_err() {
                // Nothing reached the server: the connection was already gone.
                load.graceful_closes.fetch_add(1, SeqCst);
                conn = None;
                continue;
            }
            load.sent.fetch_add(1, SeqCst);
            match c.read_response(false) {
                Ok(r) => {
                    load.check(&r, &format!("keep-alive #{n}"));
                    let close = r
                        .header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    if close {
                        load.graceful_closes.fetch_add(1, SeqCst);
                        conn = None;
                    }
                }
                Err(e) => {
                    load.fail(format!("keep-alive #{n} (sent, no response): {e}"));
                    conn = None;
                }
            }
        }
    })
}

#[test]
fn sigquit_hands_the_listener_to_the_upgraded_process_without_failing_a_request() {
    let up = FakeUpstream::start(Behavior::Echo);
    let port = free_port();
    let admin_port = free_port();
    let tmp = TempDir::new("upgrade");
    let dir = tmp.path();
    let sock = dir.join("upgrade.sock");
    let config = dir.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: 127.0.0.1:{port}\n  admin_listen: 127.0.0.1:{admin_port}\n  threads: 2\n  grace_period: 2s\n  shutdown_timeout: 1s\n  upgrade_sock: {}\n  pid_file: {}\n  log: {{format: json, access_log: true}}\nupstreams:\n  svc: {{backends: '{}'}}\nroutes:\n  - {{name: svc, prefix: /svc, upstream: svc}}\nauth: {{database_url: 'sqlite://{}'}}\n",
            sock.display(),
            dir.join("gatehouse.pid").display(),
            up.url(),
            dir.join("users.db").display(),
        ),
    )
    .expect("write config");

    let mut a = spawn(&["run"], &config, port, admin_port);
    eventually(Duration::from_secs(15), "process A serves", || {
        get(port, "/svc/ready", &[]).is_ok_and(|r| r.status == 200)
    });

    let load = Arc::new(Load::default());
    let threads = [
        new_connections(port, load.clone()),
        keep_alive(port, load.clone()),
    ];
    eventually(Duration::from_secs(10), "load through A", || {
        load.ok.load(SeqCst) >= 50
    });

    // The new process first: it waits on the upgrade socket for the listeners...
    let mut b = spawn(&["run", "--upgrade"], &config, port, admin_port);
    eventually(
        Duration::from_secs(10),
        "B waits on the upgrade socket",
        || sock.exists(),
    );
    // ...then the old one hands them over and drains.
    a.signal("-QUIT");
    let mut a_status = None;
    eventually(Duration::from_secs(30), "A exits after draining", || {
        a_status = a.exited();
        a_status.is_some()
    });
    let served_by_b_when_a_exited = served(&b);
    eventually(
        Duration::from_secs(20),
        "B serves 50 requests after A exits",
        || served(&b) >= served_by_b_when_a_exited + 50,
    );

    load.stop.store(true, SeqCst);
    for t in threads {
        t.join().expect("load thread");
    }
    let sent = load.sent.load(SeqCst);
    let ok = load.ok.load(SeqCst);
    let failures = load.failures.lock().expect("failures").clone();
    eprintln!(
        "upgrade under load: {sent} requests sent, {ok} ok, {} failed, {} keep-alive connections ended gracefully; A served {}, B served {}",
        failures.len(),
        load.graceful_closes.load(SeqCst),
        served(&a),
        served(&b)
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed:\n{}\n--- A ---\n{}\n--- B ---\n{}",
        failures.len(),
        failures.join("\n"),
        a.log_text(),
        b.log_text()
    );
    assert_eq!(ok, sent);
    assert!(
        a_status.is_some_and(|s| s.success()),
        "A exits cleanly: {a_status:?}"
    );
    assert!(b.exited().is_none(), "B keeps running:\n{}", b.log_text());
    assert!(
        served(&a) > 0 && served(&b) >= 50,
        "both processes served: A {} B {}",
        served(&a),
        served(&b)
    );
    // B alone answers now, on the same public and admin ports.
    let before = served(&b);
    assert_eq!(get(port, "/svc/after", &[]).expect("after").status, 200);
    eventually(Duration::from_secs(5), "B logs the request", || {
        served(&b) > before
    });
    let r = get(admin_port, "/health", &[]).expect("admin after the upgrade");
    assert_eq!(r.status, 200);
    drop(b);
}

/// README "Operating gatehouse" tells operators to signal `$(cat /tmp/gatehouse.pid)`.
#[test]
fn run_writes_its_process_id_to_the_pid_file() {
    let (port, admin_port) = (free_port(), free_port());
    let tmp = TempDir::new("pidfile");
    let dir = tmp.path();
    let pid_file = dir.join("gatehouse.pid");
    let config = dir.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: 127.0.0.1:{port}\n  admin_listen: 127.0.0.1:{admin_port}\n  grace_period: 0s\n  shutdown_timeout: 0s\n  upgrade_sock: {}\n  pid_file: {}\nauth: {{database_url: 'sqlite://{}'}}\n",
            dir.join("upgrade.sock").display(),
            pid_file.display(),
            dir.join("users.db").display(),
        ),
    )
    .expect("write config");
    let p = spawn(&["run"], &config, port, admin_port);
    eventually(Duration::from_secs(15), "the process serves", || {
        get(port, "/health", &[]).is_ok_and(|r| r.status == 200)
    });
    let written = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.trim() == p.pid().to_string())
    });
    assert!(
        written,
        "{} should hold pid {}; it holds {:?}",
        pid_file.display(),
        p.pid(),
        std::fs::read_to_string(&pid_file).ok()
    );
    drop(p);
}

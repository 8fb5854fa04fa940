//! The `gatehouse` binary: `--version`, `check`, `run` on the default gateway.yaml with the
//! seeds' environment variables, access log lines, and shutdown on SIGTERM/SIGINT.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn temp_config(tag: &str, text: &str) -> PathBuf {
    let p = temp_path(&format!("{tag}.yaml"));
    std::fs::write(&p, text).expect("write temp config");
    p
}

#[test]
fn version_prints_name_and_version() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("gatehouse {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_accepts_the_default_config() {
    // The embedded defaults (what scripts/run.sh runs): no Redis, no MFA key.
    let out = run_ok(
        Command::new(BIN)
            .args(["check", "-c"])
            .arg(repo_file("gateway.yaml"))
            .env("REDIS_URL", "")
            .env_remove("MFA_ENCRYPTION_KEY"),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (4 routes, 4 upstreams)"));
    // Shared sessions: the shipped second-factor roles need the key every instance shares.
    let check = |key: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "-c"])
            .arg(repo_file("gateway.yaml"))
            .env("REDIS_URL", "redis://127.0.0.1:1/0");
        match key {
            Some(k) => cmd.env("MFA_ENCRYPTION_KEY", k),
            None => cmd.env_remove("MFA_ENCRYPTION_KEY"),
        };
        cmd.output().expect("gatehouse check")
    };
    let without = check(None);
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("auth.mfa.encryption_key"));
    assert!(check(Some(MFA_KEY)).status.success());
}

use common::process::TEST_MFA_KEY as MFA_KEY;

/// Signs `email` in on a gateway running the shipped config, whose doctors, institutions and
/// admins need a second factor: enrols one with `gatehouse user mfa enroll` (the gateway runs
/// with [`MFA_KEY`]) and sends the code computed from the printed secret.
fn login_with_mfa(port: u16, db: &str, email: &str) -> String {
    let config = repo_file("gateway.yaml");
    let config = config.to_str().expect("path");
    let out = run_cli(
        &["-c", config, "user", "mfa", "enroll", "--email", email],
        &[
            ("DATABASE_URL", db),
            ("REDIS_URL", ""),
            ("MFA_ENCRYPTION_KEY", MFA_KEY),
        ],
        "",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "enroll: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b32 = text
        .split(['?', '&', '\n'])
        .find_map(|kv| kv.strip_prefix("secret="))
        .expect("secret in the otpauth URI");
    let secret = data_encoding::BASE32_NOPAD
        .decode(b32.as_bytes())
        .expect("base32");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let code = gatehouse::auth::mfa::totp::code(&secret, gatehouse::auth::mfa::totp::step_of(now));
    let body = serde_json::json!({"email": email, "password": PASSWORD, "otp": code});
    let r = post_json(port, "/api/v1/auth/login", &body, &[]);
    assert_eq!(r.status, 200, "login {email}: {}", r.text());
    json(&r)["access_token"]
        .as_str()
        .expect("token")
        .to_string()
}

#[test]
fn check_lists_every_problem_with_its_path_and_exits_1() {
    let cfg = temp_config(
        "broken",
        "upstreams:\n  doctors: {backends: 'http://127.0.0.1:1'}\nroutes:\n  - {prefix: /a, upstream: doctors}\n  - {prefix: /b, upstream: doctors}\n  - {prefix: /c, upstream: billing}\n  - {prefix: d, upstream: doctors}\n",
    );
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"routes[2].upstream: unknown upstream "billing""#),
        "{err}"
    );
    assert!(err.contains("routes[3].prefix"), "{err}");
}

#[test]
fn check_rejects_unknown_keys() {
    let cfg = temp_config(
        "typo",
        "server:\n  listen: 127.0.0.1:1\n  grace_priod: 5s\n",
    );
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `grace_priod`"), "{err}");
}

#[test]
fn check_reports_a_missing_file() {
    let out = Command::new(BIN)
        .args(["check", "-c", "/nonexistent/gateway.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn environment_variables_fill_the_default_config() {
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(repo_file("gateway.yaml"))
        .env("DOCTOR_SERVICE_URL", "ftp://nope:1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstreams.doctors.backends[0]") && err.contains("ftp://nope:1"),
        "{err}"
    );
}

/// A `gatehouse` process on the default gateway.yaml, with free ports and dead services;
/// returns once it listens.
fn start(args: &[&str], env: &[(&str, String)]) -> Process {
    let (port, admin_port) = (free_port(), free_port());
    let mut cmd = gatehouse_on(port, admin_port);
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", temp_db_url("cli"))
        .env("REDIS_URL", "");
    for var in [
        "DOCTOR_SERVICE_URL",
        "PATIENT_SERVICE_URL",
        "INSTITUTION_SERVICE_URL",
        "ADMIN_SERVICE_URL",
    ] {
        cmd.env(var, dead_backend());
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let p = Process::spawn(&mut cmd, port, admin_port);
    let up = wait_until(Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "gatehouse did not listen; log:\n{}", p.log_text());
    p
}

#[test]
fn run_is_the_default_and_dead_upstreams_answer_503() {
    let db = temp_db_url("cli");
    add_user_cli(&db, "root@example.test", "admin", PASSWORD);
    let p = start(
        &[],
        &[
            ("DATABASE_URL", db.clone()),
            ("MFA_ENCRYPTION_KEY", MFA_KEY.into()),
        ],
    );
    let token = login_with_mfa(p.port, &db, "root@example.test");
    let bearer = format!("Bearer {token}");
    for path in [
        "/api/v1/doctors",
        "/api/v1/patients/3",
        "/api/v1/institutions",
        "/api/v1/admins/x",
    ] {
        let anonymous = get(p.port, path, &[]).expect("request");
        assert_eq!(
            anonymous.status, 401,
            "{path}: the default routes require a signed-in user"
        );
        let r = get(p.port, path, &[("Authorization", bearer.as_str())]).expect("request");
        assert_eq!(r.status, 503, "{path}: {}", r.text());
        assert!(r.header("retry-after").is_some(), "{path}");
        assert_eq!(json(&r)["error"]["code"], "upstream_unavailable");
    }
}

#[test]
fn service_url_variables_are_comma_separated_backend_lists() {
    let a = FakeUpstream::start(Behavior::Echo);
    let b = FakeUpstream::start(Behavior::Echo);
    let db = temp_db_url("cli");
    add_user_cli(&db, "doc@example.test", "doctor", PASSWORD);
    let p = start(
        &["run", "-c", "gateway.yaml"],
        &[
            ("DOCTOR_SERVICE_URL", format!("{}, {}", a.url(), b.url())),
            ("DATABASE_URL", db.clone()),
            ("MFA_ENCRYPTION_KEY", MFA_KEY.into()),
        ],
    );
    let bearer = format!("Bearer {}", login_with_mfa(p.port, &db, "doc@example.test"));
    for _ in 0..4 {
        let r = get(
            p.port,
            "/api/v1/doctors/1",
            &[("Authorization", bearer.as_str())],
        )
        .expect("request");
        assert_eq!(r.status, 200);
    }
    assert!(
        a.request_count() >= 1 && b.request_count() >= 1,
        "{} {}",
        a.request_count(),
        b.request_count()
    );
}

#[test]
fn access_log_has_one_json_line_per_request() {
    let up = FakeUpstream::start(Behavior::Echo);
    let db = temp_db_url("cli");
    add_user_cli(&db, "pat@example.test", "patient", PASSWORD);
    let p = start(
        &[],
        &[
            ("GATEHOUSE_LOG_FORMAT", "json".into()),
            ("PATIENT_SERVICE_URL", up.url()),
            ("DATABASE_URL", db.clone()),
        ],
    );
    let bearer = format!("Bearer {}", login(p.port, "pat@example.test"));
    let r = get(
        p.port,
        "/api/v1/patients/9?secret=1",
        &[
            ("X-Request-Id", "req-abc"),
            ("Authorization", bearer.as_str()),
        ],
    )
    .expect("request");
    assert_eq!(r.status, 200);
    let found = wait_until(Duration::from_secs(5), || {
        p.log_lines().iter().any(|l| l.contains("req-abc"))
    });
    assert!(found, "no access line:\n{}", p.log_lines().join("\n"));
    let lines = p.log_lines();
    let line = lines.iter().find(|l| l.contains("req-abc")).expect("line");
    let v: serde_json::Value = serde_json::from_str(line).expect("json log line");
    assert_eq!(v["target"], "access");
    assert_eq!(v["request_id"], "req-abc");
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert!(
        v["user_id"]
            .as_str()
            .is_some_and(|id| id.parse::<i64>().is_ok()),
        "{v}"
    );
    assert_eq!(v["role"], "patient");
    assert_eq!(v["method"], "GET");
    assert_eq!(
        v["path"], "/api/v1/patients/9",
        "path is logged without the query"
    );
    assert_eq!(v["route"], "patients");
    assert_eq!(v["upstream"], "patients");
    assert_eq!(v["backend"], up.addr());
    assert_eq!(v["status"], 200);
    assert!(v["bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(v["duration_ms"].as_f64().is_some());
    assert_eq!(lines.iter().filter(|l| l.contains("req-abc")).count(), 1);
    assert!(
        !p.log_text().contains("secret=1"),
        "no query string in any log line"
    );
    // The shipped config audits every /api/v1/* route: the request is in the access audit.
    let (found, exported) = poll_until(
        Duration::from_secs(5),
        || {
            let out = run_cli(
                &["-c", "/nonexistent/gateway.yaml", "audit", "export"],
                &[("DATABASE_URL", db.as_str())],
                "",
            );
            String::from_utf8_lossy(&out.stdout).to_string()
        },
        |text| text.contains("req-abc"),
    );
    assert!(found, "the request is not in audit export: {exported}");
    let line = exported.lines().find(|l| l.contains("req-abc"));
    let row: serde_json::Value = serde_json::from_str(line.expect("line")).expect("json line");
    assert_eq!(row["route"], "patients");
    assert_eq!(row["path"], "/api/v1/patients/9");
    assert_eq!(row["role"], "patient");
}

#[test]
fn a_client_hanging_up_mid_request_is_an_access_line_not_an_error() {
    let slow = FakeUpstream::start(Behavior::Delay {
        delay: Duration::from_millis(300),
        status: 200,
        body: "slow".into(),
    });
    let db = temp_db_url("cli");
    add_user_cli(&db, "gone@example.test", "patient", PASSWORD);
    let p = start(
        &[],
        &[
            ("GATEHOUSE_LOG_FORMAT", "json".into()),
            ("PATIENT_SERVICE_URL", slow.url()),
            ("DATABASE_URL", db),
        ],
    );
    let token = login(p.port, "gone@example.test");
    let mut c = std::net::TcpStream::connect(("127.0.0.1", p.port)).expect("connect");
    let req = format!(
        "GET /api/v1/patients/1 HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: req-gone\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    std::io::Write::write_all(&mut c, req.as_bytes()).expect("send");
    assert!(
        wait_until(Duration::from_secs(5), || slow.request_count() >= 1),
        "the request never reached the backend"
    );
    drop(c);
    let logged = wait_until(Duration::from_secs(5), || {
        p.log_lines().iter().any(|l| l.contains("req-gone"))
    });
    assert!(logged, "no access line:\n{}", p.log_lines().join("\n"));
    let lines = p.log_lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("ERROR") || l.contains("Fail to proxy")),
        "a client hang-up was logged as an error:\n{}",
        lines.join("\n")
    );
}

#[test]
fn log_level_comes_from_log_level() {
    let p = start(&[], &[("LOG_LEVEL", "warn".into())]);
    assert_eq!(get(p.port, "/health", &[]).expect("request").status, 200);
    std::thread::sleep(Duration::from_millis(200)); // let stderr flush; absence is what we check
    assert!(
        !p.log_lines().iter().any(|l| l.contains(" INFO ")),
        "{}",
        p.log_lines().join("\n")
    );
}

fn drains_in_flight_then_exits(sig: &str) {
    let slow = FakeUpstream::start(Behavior::Delay {
        delay: Duration::from_millis(800),
        status: 200,
        body: "done".into(),
    });
    let cfg = temp_config(
        &format!("drain{sig}"),
        &format!(
            "server:\n  listen: ${{GATEHOUSE_LISTEN}}\n  admin_listen: ${{GATEHOUSE_ADMIN_LISTEN}}\n  grace_period: 2s\n  shutdown_timeout: 1s\nupstreams:\n  slow: {{backends: '{}'}}\nroutes:\n  - {{prefix: /slow, upstream: slow}}\nauth: {{database_url: \"${{DATABASE_URL}}\"}}\n",
            slow.url()
        ),
    );
    let mut p = start(&["run", "-c", cfg.to_str().expect("path")], &[]);
    let port = p.port;
    let in_flight = std::thread::spawn(move || get(port, "/slow", &[]));
    assert!(
        wait_until(Duration::from_secs(5), || slow.request_count() == 1),
        "request did not reach upstream"
    );
    p.signal(sig);
    let refused = wait_until(Duration::from_secs(3), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    assert!(refused, "the listener must stop accepting after {sig}");
    let r = in_flight
        .join()
        .expect("thread")
        .expect("in-flight request must complete");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "done");
    // grace_period 2s + shutdown_timeout 1s, with slack for a loaded machine; never Pingora's 300 s.
    let took = p.wait_exit(Duration::from_secs(15));
    assert!(took.is_some(), "gatehouse still running 15 s after {sig}");
}

#[test]
fn sigterm_drains_and_exits_within_the_grace_period() {
    drains_in_flight_then_exits("-TERM");
}

#[test]
fn sigint_drains_and_exits_within_the_grace_period() {
    drains_in_flight_then_exits("-INT");
}

/// The native HTTP/1 lane was removed (issue 20): a config that still turns it on starts,
/// says the key is ignored, and is served by Pingora's proxy (which refuses a request with
/// two `Host` lines, where the lane forwarded it).
#[test]
fn a_config_that_still_sets_native_http1_is_warned_about_and_served_by_pingora() {
    let up = FakeUpstream::start(Behavior::Echo);
    let cfg = temp_config(
        "native",
        &format!(
            "server:\n  listen: 127.0.0.1:{}\n  admin_listen: null\n  native_http1: true\n  log: {{level: warn}}\nupstreams:\n  app: {{backends: \"{}\"}}\nroutes:\n  - {{prefix: /api, upstream: app}}\nauth:\n  database_url: \"sqlite://{}\"\n",
            free_port(),
            up.url(),
            std::env::temp_dir()
                .join(format!("gatehouse-cli-native-{}.db", std::process::id()))
                .display()
        ),
    );
    let text = std::fs::read_to_string(&cfg).expect("config");
    let port: u16 = text
        .split("listen: 127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("port");
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let up_ok = wait_until(Duration::from_secs(20), || {
        get(port, "/api/x", &[]).is_ok_and(|r| r.status == 200)
    });
    let r = raw_request(
        port,
        b"GET /api/x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    );
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(up_ok, "gateway did not serve: {stderr}");
    assert_eq!(r.expect("answer").status, 400, "duplicate Host forwarded");
    assert!(
        stderr.contains("server.native_http1 is ignored"),
        "no warning: {stderr}"
    );
    assert_eq!(
        up.request_count(),
        1,
        "only the first request reached the upstream"
    );
}

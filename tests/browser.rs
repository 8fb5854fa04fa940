//! The pages in a real browser: headless Debian Chromium, driven by playwright-core
//! (`tests/browser/login_flow.mjs`), opens `/`, follows the patient link to the login page,
//! signs in as a seeded patient, sees the dashboard with the patient's name and the data of a
//! fake patients upstream, logs out, and is sent to `/login?next=…` when it opens the
//! dashboard again; then registers a new patient through `/register` (a common password
//! first, refused at its field), sees the notice on the login page, and signs in with the new
//! account. Console errors and CSP violations fail it.
//!
//! Screenshots go to `test-artifacts/browser/` (git-ignored). Needs `node`,
//! `/usr/bin/chromium` and `tests/browser/node_modules/playwright-core` (scripts/test.sh
//! installs all three); without them the test is skipped, except under CI (`CI` set), where
//! it fails.

mod common;
use common::*;

use gatehouse::auth::users::{Role, UserDb};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const PATIENT_EMAIL: &str = "ana.perez@predicthealth.test";
const PATIENT_NAME: &str = "Ana Pérez";
/// What the fake patients service answers on every path (profile and appointments alike).
const PATIENT_JSON: &str = r#"{"nombre":"Ana Pérez","tipo_sangre":"O+","alergias":"Penicilina"}"#;
/// A value of [`PATIENT_JSON`] the dashboard must show.
const EXPECT_TEXT: &str = "Penicilina";
/// The account the run registers.
const NEW_NAME: &str = "Lucía Gómez";
const NEW_PASSWORD: &str = "lluvia tranquila sobre el tejado";
/// Bound on the whole browser run (the script bounds itself to 90 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What is missing to run the browser, if anything.
fn missing_tools(root: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => missing.push(format!("`node --version` failed ({})", out.status)),
        Err(e) => missing.push(format!("node ({e})")),
    }
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (Debian's chromium package)"));
    }
    let playwright = root.join("tests/browser/node_modules/playwright-core");
    if !playwright.exists() {
        missing.push(format!(
            "{} (npm ci --prefix tests/browser)",
            playwright.display()
        ));
    }
    missing
}

/// Migrates the database at `url` and adds the patient; returns the patient's id.
fn seed_patient(url: &str) -> i64 {
    block_on(async {
        let db = UserDb::connect(Some(url)).await.expect("connect user db");
        db.migrate().await.expect("migrate user db");
        let user = db
            .add_user(PATIENT_EMAIL, PASSWORD, Role::Patient, PATIENT_NAME)
            .await
            .expect("add patient");
        user.id
    })
}

/// The gateway's configuration after `server:`: the patients pool (also the dashboard's data
/// sources `profiles` and `appointments`), the pages (the repo's templates and assets) and the
/// users database.
fn gateway_yaml(patients_url: &str, database_url: &str) -> String {
    let pool = |name: &str| {
        let extra = "    timeouts: {connect: 2s, read: 5s, total: 10s}\n";
        upstream(name, &[patients_url.to_string()], extra)
    };
    format!(
        "upstreams:\n{}{}{}routes:\n  - {{name: patients, prefix: /api/v1/patients, upstream: patients, auth: required}}\n{}auth:\n  database_url: \"{database_url}\"\n",
        pool("patients"),
        pool("profiles"),
        pool("appointments"),
        web_block("3s"),
    )
}

/// Copies a child's output stream line by line into `sink`, echoing it to stderr.
fn collect(stream: impl Read + Send + 'static, sink: Arc<Mutex<String>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            eprintln!("browser| {line}");
            let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
            s.push_str(&line);
            s.push('\n');
        }
    })
}

/// Waits for `child` up to `limit`; past it, SIGTERM (Playwright then closes Chromium), and
/// SIGKILL 5 s later. `None` when it had to be stopped.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(limit, || {
        status = child.try_wait().expect("wait for node");
        status.is_some()
    });
    if status.is_some() {
        return status;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    wait_until(Duration::from_secs(5), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs `tests/browser/SCRIPT` with node, these environment variables and `ARTIFACTS_DIR`,
/// within `limit`; fails with its output when it fails or overruns.
fn run_flow(root: &Path, script: &str, env: &[(&str, &str)], artifacts: &Path, limit: Duration) {
    let started = Instant::now();
    let mut cmd = Command::new("node");
    cmd.arg(root.join("tests/browser").join(script))
        .current_dir(root)
        .env("ARTIFACTS_DIR", artifacts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start node tests/browser/{script}: {e}"));
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let readers = [
        collect(child.stdout.take().expect("stdout"), stdout.clone()),
        collect(child.stderr.take().expect("stderr"), stderr.clone()),
    ];
    let status = wait_bounded(&mut child, limit);
    for r in readers {
        let _ = r.join();
    }
    let elapsed = started.elapsed();
    let out = stdout.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let err = stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let report = format!(
        "--- stdout ---\n{out}--- stderr ---\n{err}--- screenshots in {} ---",
        artifacts.display()
    );
    match status {
        None => panic!(
            "{script} did not finish within {} s and was stopped\n{report}",
            limit.as_secs()
        ),
        Some(s) => assert!(
            s.success(),
            "{script} failed ({s}) after {:.1} s\n{report}",
            elapsed.as_secs_f64()
        ),
    }
    eprintln!("{script} passed in {:.1} s", elapsed.as_secs_f64());
}

#[test]
fn patient_logs_in_sees_dashboard_and_logs_out_in_chromium() {
    let root = crate_dir();
    let missing = missing_tools(&root);
    if !missing.is_empty() {
        let what = missing.join(", ");
        if std::env::var_os("CI").is_some() {
            panic!(
                "browser test cannot run under CI: missing {what}. scripts/test.sh installs \
                 chromium and nodejs with apt-get and runs `npm ci --prefix tests/browser`."
            );
        }
        eprintln!("skipping browser test: missing {what} (scripts/test.sh installs them)");
        return;
    }

    let upstream = FakeUpstream::start(Behavior::Respond {
        status: 200,
        headers: vec![(
            "Content-Type".into(),
            "application/json; charset=utf-8".into(),
        )],
        body: PATIENT_JSON.into(),
    });
    let database_url = temp_db_url("browser");
    let patient_id = seed_patient(&database_url);
    let gw = Gw::start(&gateway_yaml(&upstream.url(), &database_url));
    let base = format!("http://127.0.0.1:{}", gw.port);

    // The gateway serves the page the browser starts on.
    let landing = gw.get("/");
    assert_eq!(
        landing.status,
        200,
        "GET / before the browser: {}",
        landing.text()
    );

    let artifacts = root.join("test-artifacts/browser");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).expect("create test-artifacts/browser");

    let new_email = format!("nueva-{}@predicthealth.test", unique());
    run_flow(
        &root,
        "login_flow.mjs",
        &[
            ("GATEHOUSE_URL", base.as_str()),
            ("PATIENT_EMAIL", PATIENT_EMAIL),
            ("PATIENT_PASSWORD", PASSWORD),
            ("PATIENT_NAME", PATIENT_NAME),
            ("EXPECT_TEXT", EXPECT_TEXT),
            ("NEW_EMAIL", new_email.as_str()),
            ("NEW_NAME", NEW_NAME),
            ("NEW_PASSWORD", NEW_PASSWORD),
        ],
        &artifacts,
        RUN_TIMEOUT,
    );

    // The dashboard's data came from the fake upstream, asked on the patient's behalf.
    let requests = upstream.requests();
    let profile = format!("/api/v1/patients/{patient_id}");
    let appointments = format!("/api/v1/patients/{patient_id}/appointments");
    for path in [&profile, &appointments] {
        let r = requests
            .iter()
            .find(|r| &r.target == path)
            .unwrap_or_else(|| panic!("the patients upstream never got GET {path}: {requests:?}"));
        assert_eq!(r.method, "GET");
        assert_eq!(r.header("x-user-id"), Some(patient_id.to_string().as_str()));
        assert_eq!(r.header("x-user-role"), Some("patient"));
    }
    // The run registered a patient, with the name and password it typed.
    let registered = block_on(async {
        let db = UserDb::connect(Some(&database_url)).await.expect("connect");
        db.find_by_email(&new_email).await.expect("find")
    })
    .unwrap_or_else(|| panic!("{new_email} was not registered"));
    assert_eq!(registered.role, Role::Patient);
    assert_eq!(registered.display_name, NEW_NAME);
    for shot in [
        "01-landing.png",
        "03-dashboard.png",
        "05-dashboard-after-logout.png",
        "07-register-refused.png",
        "09-new-patient-dashboard.png",
    ] {
        let p = artifacts.join(shot);
        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "screenshot {} missing or empty", p.display());
    }
}

/// The second factor in Chromium (`tests/browser/mfa_flow.mjs`): a doctor, whose role must use
/// one, is sent to enrolment after the password, scans (reads) the secret, confirms with a
/// first code, sees the recovery codes and the dashboard; after logging out, the second step
/// page refuses a wrong code and lets the next one in.
#[test]
fn doctor_enrols_a_second_factor_and_signs_in_with_a_code_in_chromium() {
    const DOCTOR_EMAIL: &str = "luis.gomez@predicthealth.test";
    let root = crate_dir();
    let missing = missing_tools(&root);
    if !missing.is_empty() {
        let what = missing.join(", ");
        if std::env::var_os("CI").is_some() {
            panic!("browser test cannot run under CI: missing {what}");
        }
        eprintln!("skipping browser test: missing {what} (scripts/test.sh installs them)");
        return;
    }
    let upstream = FakeUpstream::start(Behavior::Echo);
    let database_url = temp_db_url("browser-mfa");
    block_on(async {
        let db = UserDb::connect(Some(&database_url)).await.expect("db");
        db.migrate().await.expect("migrate");
        db.add_user(DOCTOR_EMAIL, PASSWORD, Role::Doctor, "Luis Gómez")
            .await
            .expect("add doctor");
    });
    let yaml = format!(
        "{}  mfa: {{encryption_key: \"YnJvd3Nlci10ZXN0cy1tZmEta2V5LTAxMjM0NTY3ODk=\", required_roles: [doctor]}}\n",
        gateway_yaml(&upstream.url(), &database_url)
    );
    let gw = Gw::start(&yaml);
    let artifacts = root.join("test-artifacts/browser/mfa");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).expect("create test-artifacts/browser/mfa");

    // The script may wait up to 5 s twice for a fresh time step.
    run_flow(
        &root,
        "mfa_flow.mjs",
        &[
            (
                "GATEHOUSE_URL",
                format!("http://127.0.0.1:{}", gw.port).as_str(),
            ),
            ("DOCTOR_EMAIL", DOCTOR_EMAIL),
            ("DOCTOR_PASSWORD", PASSWORD),
        ],
        &artifacts,
        RUN_TIMEOUT + Duration::from_secs(30),
    );
    for shot in [
        "mfa-01-enrol.png",
        "mfa-03-second-step.png",
        "mfa-04-dashboard.png",
    ] {
        let p = artifacts.join(shot);
        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "screenshot {} missing or empty", p.display());
    }
}

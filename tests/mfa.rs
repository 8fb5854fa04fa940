//! The second factor (TOTP, RFC 6238) through the running gateway, on the embedded defaults
//! (SQLite and the in-process store) and on PostgreSQL and Redis: the API login with a
//! computed code (success, missing, wrong, replayed, clock skew), wrong codes toward the
//! lockout, enrolment required by role (the API refuses, the portal sends to enrolment and
//! starts the session once a first code confirms it), the portal's second step, recovery
//! codes used once, and `user mfa reset` ending the sessions. Codes are computed here from
//! the secret `gatehouse user mfa enroll` prints.

mod common;
use common::*;

use gatehouse::auth::mfa::totp;
use gatehouse::auth::users::Role;
use serde_json::json;

/// The key every test gateway and CLI call uses (32 bytes, base64).
const KEY: &str = "bWZhLXRlc3RzLWtleS0wMTIzNDU2Nzg5YWJjZGVmMDE=";

struct Site {
    db: String,
    redis: String,
    users: Vec<Account>,
    _up: FakeUpstream,
    gw: Gw,
    _dir: Option<TempDir>,
}

impl Site {
    fn start(b: Backend, max_failures: u64, users: &[(Role, &str)]) -> Option<Site> {
        Site::start_keyed(b, max_failures, users, KEY)
    }

    /// A gateway whose `auth.mfa.encryption_key` is `key` (the CLI always uses [`KEY`]).
    fn start_keyed(
        b: Backend,
        max_failures: u64,
        users: &[(Role, &str)],
        key: &str,
    ) -> Option<Site> {
        let (db, redis, dir) = b.urls()?;
        let users = seed_users(&db, "mfa.test", users);
        let up = FakeUpstream::start(Behavior::Echo);
        let templates = repo_file("templates");
        let rest = format!(
            "upstreams:\n{}\nroutes:\n  - {{name: private, prefix: /private, upstream: app, auth: required}}\nweb:\n  templates: \"{}\"\nauth:\n  database_url: \"{db}\"\n  redis_url: \"{redis}\"\n  jwt: {{secret: \"{SECRET}\"}}\n  login: {{max_failures_per_account: {max_failures}, max_failures_per_ip: 1000, window: 15m}}\n  mfa: {{encryption_key: \"{key}\", required_roles: [doctor]}}\n",
            upstream("app", &[up.url()], ""),
            templates.display(),
        );
        let gw = Gw::start(&rest);
        Some(Site {
            db,
            redis,
            users,
            _up: up,
            gw,
            _dir: dir,
        })
    }

    fn port(&self) -> u16 {
        self.gw.port
    }

    /// `gatehouse -c gateway.yaml user mfa ARGS` against this site's database and store.
    fn cli(&self, args: &[&str]) -> String {
        let config = repo_file("gateway.yaml");
        let all = [&["-c", config.to_str().expect("path"), "user", "mfa"], args].concat();
        let out = run_cli(
            &all,
            &[
                ("DATABASE_URL", &self.db),
                ("REDIS_URL", &self.redis),
                ("MFA_ENCRYPTION_KEY", KEY),
            ],
            "",
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "gatehouse user mfa {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Enrols `email` with the CLI; returns the secret read from the printed URI.
    fn enroll(&self, email: &str) -> Vec<u8> {
        let out = self.cli(&["enroll", "--email", email]);
        let uri = out
            .lines()
            .find(|l| l.starts_with("otpauth://totp/"))
            .unwrap_or_else(|| panic!("no otpauth URI in:\n{out}"));
        assert!(uri.contains("issuer=PredictHealth"), "{uri}");
        assert!(
            uri.contains(&gatehouse::auth::guard::percent_encode(email)),
            "{uri}"
        );
        secret_of(uri)
    }

    fn login(&self, email: &str, otp: Option<&str>) -> Response {
        let mut body = json!({"email": email, "password": PASSWORD});
        if let Some(o) = otp {
            body["otp"] = json!(o);
        }
        post_json(self.port(), "/api/v1/auth/login", &body, &[])
    }

    /// The password step of `portal`'s sign-in form (with `extra` fields, `next` say).
    fn portal_login(&self, portal: &str, email: &str, extra: &[(&str, &str)]) -> Response {
        let mut fields = vec![("email", email), ("password", PASSWORD)];
        fields.extend_from_slice(extra);
        form_post(
            self.port(),
            &format!("/api/web/auth/{portal}/login"),
            &fields,
            "",
        )
    }
}

/// The `secret` parameter of an otpauth URI, decoded.
fn secret_of(uri: &str) -> Vec<u8> {
    let b32 = uri
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("secret="))
        .unwrap_or_else(|| panic!("no secret in {uri}"));
    data_encoding::BASE32_NOPAD
        .decode(b32.as_bytes())
        .expect("base32 secret")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// The current time step, waited for until it has at least 5 s left, so that this test and
/// the gateway agree on it (not a timing assertion: it only avoids a step boundary).
fn settled_step() -> i64 {
    while now().rem_euclid(totp::PERIOD) > totp::PERIOD - 5 {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    totp::step_of(now())
}

fn no_session_cookie(r: &Response, what: &str) {
    assert!(
        r.header_all("set-cookie").is_empty(),
        "{what}: cookies set: {:?}",
        r.header_all("set-cookie")
    );
}

const CSRF: &str = "0123456789abcdef0123456789abcdef";

/// A browser form post with the double-submit CSRF token and `cookies` (`name=value; …`).
fn form_post(port: u16, path: &str, fields: &[(&str, &str)], cookies: &str) -> Response {
    let mut body = format!("csrf_token={CSRF}");
    for (k, v) in fields {
        body.push_str(&format!("&{k}={}", form_encode(v)));
    }
    let jar = if cookies.is_empty() {
        format!("predicthealth_csrf={CSRF}")
    } else {
        format!("predicthealth_csrf={CSRF}; {cookies}")
    };
    let headers = [
        BROWSER,
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Origin", "http://localhost"),
        ("Cookie", jar.as_str()),
    ];
    request_ok(port, "POST", path, &headers, body.as_bytes())
}

fn page(port: u16, path: &str, cookies: &str) -> Response {
    let jar = format!("predicthealth_csrf={CSRF}; {cookies}");
    get_ok(port, path, &[BROWSER, ("Cookie", jar.as_str())])
}

/// `name=value` of the cookie `r` sets.
fn jar_entry(r: &Response, name: &str) -> String {
    let line = set_cookie(r, name).unwrap_or_else(|| {
        panic!(
            "no {name} cookie set: {:?} {}",
            r.header_all("set-cookie"),
            r.text()
        )
    });
    format!("{name}={}", cookie_value(line))
}

fn validate_cookie(port: u16, session: &str) -> u16 {
    get_ok(port, "/api/v1/auth/validate", &[("Cookie", session)]).status
}

fn events_of(db: &str, user_id: i64) -> Vec<String> {
    block_on(async {
        let udb = gatehouse::auth::users::UserDb::connect(Some(db))
            .await
            .expect("db");
        udb.events_of(user_id)
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect()
    })
}

// ------------------------------------------------------------------------------------------

fn api_login_with_a_computed_code(b: Backend) {
    let Some(site) = Site::start(b, 50, &[(Role::Doctor, "Dra. Ana")]) else {
        return;
    };
    let ana = &site.users[0];
    let secret = site.enroll(&ana.email);

    // Missing: 401 mfa_required, nothing set, not a failure.
    let r = site.login(&ana.email, None);
    assert_json_error(&r, 401, "mfa_required", "no otp");
    no_session_cookie(&r, "no otp");
    assert!(!events_of(&site.db, ana.id).contains(&"login_failed".to_string()));
    assert_eq!(
        site.gw.metric(
            "gatehouse_mfa_verifications_total",
            &[("outcome", "missing")]
        ),
        1.0
    );

    // Wrong: 401, a failed login.
    let s = settled_step();
    let right = totp::code(&secret, s);
    let wrong = if right == "000000" {
        "000001"
    } else {
        "000000"
    };
    let r = site.login(&ana.email, Some(wrong));
    assert_json_error(&r, 401, "invalid_otp", "wrong otp");
    no_session_cookie(&r, "wrong otp");
    assert!(events_of(&site.db, ana.id).contains(&"login_failed".to_string()));

    // Skew: the previous step's code, then the current one, then the next one.
    for (step, what) in [
        (s - 1, "previous step"),
        (s, "current step"),
        (s + 1, "next step"),
    ] {
        let r = site.login(&ana.email, Some(&totp::code(&secret, step)));
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let token = json(&r)["access_token"]
            .as_str()
            .expect("token")
            .to_string();
        assert_eq!(
            with_bearer(site.port(), "/api/v1/auth/validate", &token).status,
            200
        );
    }
    // Replayed: the next step's code again.
    let r = site.login(&ana.email, Some(&totp::code(&secret, s + 1)));
    assert_json_error(&r, 401, "invalid_otp", "replayed otp");
    no_session_cookie(&r, "replayed otp");
    assert_eq!(
        site.gw.metric(
            "gatehouse_mfa_verifications_total",
            &[("outcome", "replayed")]
        ),
        1.0
    );
    assert_eq!(
        site.gw.metric(
            "gatehouse_mfa_verifications_total",
            &[("outcome", "totp_ok")]
        ),
        3.0
    );
    // Two steps away either way: refused (whatever the last accepted step).
    for step in [s + 3, s - 2] {
        let r = site.login(&ana.email, Some(&totp::code(&secret, step)));
        assert_json_error(&r, 401, "invalid_otp", "two steps away");
    }
}

fn wrong_codes_count_toward_the_lockout(b: Backend) {
    let Some(site) = Site::start(b, 3, &[(Role::Patient, "Pat")]) else {
        return;
    };
    let pat = &site.users[0];
    let secret = site.enroll(&pat.email);
    // Right passwords do not reset the count while the code is wrong.
    for _ in 0..3 {
        let r = site.login(&pat.email, Some("999999x"));
        assert_json_error(&r, 401, "invalid_otp", "wrong code");
    }
    let s = settled_step();
    let r = site.login(&pat.email, Some(&totp::code(&secret, s)));
    assert_json_error(&r, 429, "too_many_attempts", "locked after wrong codes");
    no_session_cookie(&r, "locked");
}

fn enrolment_required_by_role(b: Backend) {
    let Some(site) = Site::start(b, 50, &[(Role::Doctor, "Dr. Bo"), (Role::Patient, "Pat")]) else {
        return;
    };
    let (bo, pat) = (&site.users[0], &site.users[1]);
    // A patient needs none.
    assert_eq!(site.login(&pat.email, None).status, 200);
    // API: refused, no session.
    let r = site.login(&bo.email, None);
    assert_json_error(
        &r,
        403,
        "mfa_enrollment_required",
        "doctor without a factor",
    );
    no_session_cookie(&r, "doctor without a factor");

    // The portal's login posted by an API client: the same refusal.
    let r = post_json(
        site.port(),
        "/api/web/auth/doctor/login",
        &json!({"email": bo.email, "password": PASSWORD}),
        &[API_JSON],
    );
    assert_json_error(&r, 403, "mfa_enrollment_required", "portal login as JSON");
    no_session_cookie(&r, "portal login as JSON");

    // Portal: to enrolment, with a pending login and no session.
    let r = site.portal_login("doctor", &bo.email, &[]);
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/account/mfa"));
    assert!(
        set_cookie(&r, SESSION_COOKIE).is_none(),
        "no session before enrolment"
    );
    let pending = jar_entry(&r, "predicthealth_mfa");
    let attrs = set_cookie(&r, "predicthealth_mfa")
        .expect("cookie")
        .to_ascii_lowercase();
    assert!(
        attrs.contains("httponly") && attrs.contains("samesite=strict"),
        "{attrs}"
    );
    // Not a session: protected routes still refuse it.
    assert_eq!(
        get_ok(site.port(), "/private/x", &[("Cookie", pending.as_str())]).status,
        401
    );

    // The enrolment page: an inline SVG QR code and the secret; the same on a reload.
    let r = page(site.port(), "/account/mfa", &pending);
    assert_eq!(r.status, 200, "{}", r.text());
    let html = r.text();
    assert!(
        element(&html, "mfa-qr", "</figure>").contains("<svg"),
        "{html}"
    );
    let secret_el = element(&html, "mfa-secret", "</code>");
    let b32: String = secret_el
        .split_once('>')
        .map_or("", |(_, rest)| rest)
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let secret = data_encoding::BASE32_NOPAD
        .decode(b32.as_bytes())
        .expect("base32");
    assert_eq!(secret.len(), 20);
    let again = page(site.port(), "/account/mfa", &pending).text();
    assert!(again.contains(&b32), "a reload shows the same secret");
    assert!(!html.contains(SECRET), "no JWT secret in pages");

    // A wrong first code: back to the page; no session.
    let r = form_post(site.port(), "/account/mfa", &[("code", "12345x")], &pending);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/account/mfa?error=invalid"));
    assert!(set_cookie(&r, SESSION_COOKIE).is_none());
    // Without the CSRF pair: refused.
    let r = request_ok(
        site.port(),
        "POST",
        "/account/mfa",
        &[
            BROWSER,
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", pending.as_str()),
        ],
        b"code=123456",
    );
    assert_eq!(r.status, 303);
    assert!(set_cookie(&r, SESSION_COOKIE).is_none());

    // The right first code: enabled, recovery codes shown, the session starts.
    let s = settled_step();
    let r = form_post(
        site.port(),
        "/account/mfa",
        &[("code", &totp::code(&secret, s))],
        &pending,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let html = r.text();
    assert_eq!(
        element(&html, "mfa-recovery", "</ul>")
            .matches("<code>")
            .count(),
        10
    );
    let session = jar_entry(&r, SESSION_COOKIE);
    assert_eq!(validate_cookie(site.port(), &session), 200);
    // The pending login is over.
    let r = form_post(site.port(), "/account/mfa", &[("code", "123456")], &pending);
    assert_eq!(r.status, 303);
    assert!(set_cookie(&r, SESSION_COOKIE).is_none());

    // From now on the API asks for the code, and the same code is not taken twice.
    assert_json_error(
        &site.login(&bo.email, None),
        401,
        "mfa_required",
        "enrolled",
    );
    let r = site.login(&bo.email, Some(&totp::code(&secret, s)));
    assert_json_error(&r, 401, "invalid_otp", "the enrolment's code again");
    let r = site.login(&bo.email, Some(&totp::code(&secret, s + 1)));
    assert_eq!(r.status, 200, "{}", r.text());
}

fn portal_second_step(b: Backend) {
    let Some(site) = Site::start(b, 50, &[(Role::Patient, "Pat")]) else {
        return;
    };
    let pat = &site.users[0];
    let secret = site.enroll(&pat.email);
    let r = site.portal_login("patient", &pat.email, &[("next", "/patient/records")]);
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/login/mfa"));
    assert!(set_cookie(&r, SESSION_COOKIE).is_none());
    let pending = jar_entry(&r, "predicthealth_mfa");

    let r = page(site.port(), "/login/mfa", &pending);
    assert_eq!(r.status, 200, "{}", r.text());
    let html = r.text();
    assert!(unescape(element(&html, "mfa-form", "</form>")).contains("/api/web/auth/mfa"));
    assert!(html.contains("lang=\"es\""), "Spanish page");
    // Without a pending login: back to the sign-in page.
    let r = page(site.port(), "/login/mfa", "");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));

    let r = form_post(
        site.port(),
        "/api/web/auth/mfa",
        &[("code", "000000x")],
        &pending,
    );
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login/mfa?error=invalid"));
    assert!(set_cookie(&r, SESSION_COOKIE).is_none());

    let s = settled_step();
    let r = form_post(
        site.port(),
        "/api/web/auth/mfa",
        &[("code", &totp::code(&secret, s))],
        &pending,
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/patient/records"));
    let session = jar_entry(&r, SESSION_COOKIE);
    assert_eq!(validate_cookie(site.port(), &session), 200);
    // The pending login was used up.
    let r = form_post(
        site.port(),
        "/api/web/auth/mfa",
        &[("code", &totp::code(&secret, s + 1))],
        &pending,
    );
    assert_eq!(r.status, 303);
    assert!(set_cookie(&r, SESSION_COOKIE).is_none());
}

/// An account disabled after its password step gets no session from a right code: the
/// pending login is checked against the account again at the second step.
fn disabled_between_the_steps_gets_no_session(b: Backend) {
    let Some(site) = Site::start(b, 50, &[(Role::Patient, "Pat")]) else {
        return;
    };
    let pat = &site.users[0];
    let secret = site.enroll(&pat.email);
    let r = site.portal_login("patient", &pat.email, &[]);
    assert_eq!(r.header("location"), Some("/login/mfa"), "{}", r.text());
    let pending = jar_entry(&r, "predicthealth_mfa");

    run_cli_ok(
        &["user", "disable", "--email", &pat.email],
        &[
            ("DATABASE_URL", &site.db),
            ("REDIS_URL", &site.redis),
            ("MFA_ENCRYPTION_KEY", KEY),
        ],
        "",
    );

    let r = form_post(
        site.port(),
        "/api/web/auth/mfa",
        &[("code", &totp::code(&secret, settled_step()))],
        &pending,
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(
        set_cookie(&r, SESSION_COOKIE).is_none(),
        "a disabled account got a session: {:?}",
        r.header_all("set-cookie")
    );
}

fn recovery_code_works_once(b: Backend) {
    let Some(site) = Site::start(b, 50, &[(Role::Patient, "Pat")]) else {
        return;
    };
    let pat = &site.users[0];
    site.enroll(&pat.email);
    let out = site.cli(&["recovery-codes", "--email", &pat.email]);
    let codes: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(codes.len(), 10, "{out}");
    let login = |code: &str| {
        post_json(
            site.port(),
            "/api/v1/auth/login",
            &json!({"email": pat.email, "password": PASSWORD, "recovery_code": code}),
            &[],
        )
    };
    assert_eq!(login(codes[0]).status, 200);
    assert_json_error(&login(codes[0]), 401, "invalid_otp", "the same code again");
    // Typed in capitals with spaces: the same code.
    let typed = codes[1].to_uppercase().replace('-', " ");
    assert_eq!(login(&typed).status, 200);
    // New codes replace the old ones.
    site.cli(&["recovery-codes", "--email", &pat.email]);
    assert_json_error(&login(codes[2]), 401, "invalid_otp", "a replaced code");
}

fn reset_removes_the_factor_and_ends_sessions(b: Backend) {
    let Some(site) = Site::start(b, 50, &[(Role::Patient, "Pat")]) else {
        return;
    };
    let pat = &site.users[0];
    let secret = site.enroll(&pat.email);
    let s = settled_step();
    let r = site.login(&pat.email, Some(&totp::code(&secret, s)));
    assert_eq!(r.status, 200, "{}", r.text());
    let token = json(&r)["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let out = site.cli(&["reset", "--email", &pat.email]);
    assert!(out.contains("second factor removed"), "{out}");
    eventually(POLL, "the session ends after the reset", || {
        with_bearer(site.port(), "/api/v1/auth/validate", &token).status == 401
    });
    // No factor any more: the password alone signs in (patients need none).
    assert_eq!(site.login(&pat.email, None).status, 200);
}

fn two_logins_racing_with_one_code_do_not_both_win(b: Backend) {
    let Some(site) = Site::start(b, 50, &[(Role::Patient, "Pat")]) else {
        return;
    };
    let pat = &site.users[0];
    let secret = site.enroll(&pat.email);
    let code = totp::code(&secret, settled_step());
    let port = site.port();
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let (email, code) = (pat.email.clone(), code.clone());
            std::thread::spawn(move || {
                let body = json!({"email": email, "password": PASSWORD, "otp": code});
                post_json(port, "/api/v1/auth/login", &body, &[]).status
            })
        })
        .collect();
    let statuses: Vec<u16> = racers
        .into_iter()
        .map(|t| t.join().expect("racer"))
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 401].contains(s)),
        "{statuses:?}"
    );
}

fn a_signed_in_user_enrols_on_the_page(b: Backend) {
    let Some(site) = Site::start(b, 50, &[(Role::Patient, "Pat")]) else {
        return;
    };
    let pat = &site.users[0];
    // Not signed in: to the sign-in page.
    let r = page(site.port(), "/account/mfa", "");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login?next=/account/mfa"));
    let token = login(site.port(), &pat.email);
    let session = format!("{SESSION_COOKIE}={token}");
    let html = page(site.port(), "/account/mfa", &session).text();
    let b32: String = element(&html, "mfa-secret", "</code>")
        .split_once('>')
        .map_or("", |(_, rest)| rest)
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let secret = data_encoding::BASE32_NOPAD
        .decode(b32.as_bytes())
        .expect("base32");
    // Pending: the password alone still signs in.
    assert_eq!(site.login(&pat.email, None).status, 200);
    let s = settled_step();
    let r = form_post(
        site.port(),
        "/account/mfa",
        &[("code", &totp::code(&secret, s))],
        &session,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("mfa-recovery"));
    // Enabled: the page says so, and the API asks for a code.
    let html = page(site.port(), "/account/mfa", &session).text();
    assert!(
        !html.contains("mfa-secret") && html.contains("mfa-continue"),
        "{html}"
    );
    assert_json_error(
        &site.login(&pat.email, None),
        401,
        "mfa_required",
        "enabled",
    );
    assert_eq!(
        site.login(&pat.email, Some(&totp::code(&secret, s + 1)))
            .status,
        200
    );
}

fn a_secret_under_another_key_is_refused_not_skipped(b: Backend) {
    let other = "b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXktMDE=";
    let Some(site) = Site::start_keyed(b, 50, &[(Role::Patient, "Pat")], other) else {
        return;
    };
    let pat = &site.users[0];
    let secret = site.enroll(&pat.email);
    let r = site.login(&pat.email, Some(&totp::code(&secret, settled_step())));
    assert_json_error(&r, 503, "auth_unavailable", "undecryptable secret");
    no_session_cookie(&r, "undecryptable secret");
    assert_json_error(
        &site.login(&pat.email, None),
        401,
        "mfa_required",
        "still enrolled",
    );
}

on_both_backends!(
    two_logins_racing_with_one_code_do_not_both_win,
    a_signed_in_user_enrols_on_the_page,
    a_secret_under_another_key_is_refused_not_skipped,
    api_login_with_a_computed_code,
    wrong_codes_count_toward_the_lockout,
    enrolment_required_by_role,
    portal_second_step,
    disabled_between_the_steps_gets_no_session,
    recovery_code_works_once,
    reset_removes_the_factor_and_ends_sessions,
);

// ------------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------------

fn check(mfa: &str, redis: &str) -> Result<(), String> {
    let yaml = format!(
        "auth:\n  database_url: \"sqlite::memory:\"\n  redis_url: \"{redis}\"\n  mfa: {mfa}\n"
    );
    gatehouse::Config::from_yaml_str(&yaml)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn the_key_is_checked_and_required_where_instances_share_sessions() {
    let bad = check("{encryption_key: \"c2hvcnQ=\"}", "").unwrap_err();
    assert!(
        bad.contains("auth.mfa.encryption_key") && !bad.contains("c2hvcnQ="),
        "{bad}"
    );
    let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    check(&format!("{{encryption_key: \"{hex}\"}}"), "").expect("hex key");
    check(
        &format!("{{encryption_key: \"{KEY}\", required_roles: [doctor]}}"),
        "redis://127.0.0.1:1",
    )
    .expect("base64 key");
    // No key: fine alone (a per-process key), refused with shared sessions and required roles.
    check("{required_roles: [doctor, admin]}", "").expect("no key, one instance");
    let shared = check("{required_roles: [doctor]}", "redis://127.0.0.1:1").unwrap_err();
    assert!(shared.contains("auth.mfa.encryption_key"), "{shared}");
    let role = check("{required_roles: [nurse]}", "").unwrap_err();
    assert!(role.contains("auth.mfa.required_roles"), "{role}");
}

#[test]
fn the_cli_refuses_to_enrol_without_the_key() {
    let db = temp_db_url("mfa-cli");
    seed_users(&db, "mfa.test", &[(Role::Doctor, "D")]);
    let out = run_cli(
        &[
            "-c",
            "/nonexistent/gateway.yaml",
            "user",
            "mfa",
            "enroll",
            "--email",
            "x@mfa.test",
        ],
        &[("DATABASE_URL", &db)],
        "",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.mfa.encryption_key"), "{err}");
}

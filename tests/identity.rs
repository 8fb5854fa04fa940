//! Identity through the running gateway: the auth endpoints (login, validate, refresh,
//! logout, the portal logins), route protection by role, the identity headers upstreams get,
//! hostile tokens, cookies and CSRF, and login lockout.
//!
//! Every flow runs twice: on the embedded defaults (a SQLite file and the in-process session
//! store) and, when `DATABASE_URL` and `REDIS_URL` are set (scripts/test.sh sets both), on
//! PostgreSQL and Redis. Outages of the store or the database, and two instances sharing
//! sessions, are in `identity_redis.rs`.

mod common;
use common::*;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use gatehouse::auth::users::{Role, UserDb};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

// ------------------------------------------------------------------------------------------
// Users and gateways
// ------------------------------------------------------------------------------------------

/// The kinds of the latest auth events, as `(user_id, kind)`.
fn events(db: &str) -> Vec<(Option<i64>, String)> {
    block_on(async {
        let udb = UserDb::connect(Some(db)).await.expect("connect user db");
        let ev = udb.recent_events(10_000).await.expect("recent events");
        ev.into_iter().map(|(_, user, kind)| (user, kind)).collect()
    })
}

fn count_events(db: &str, kind: &str) -> usize {
    events(db).iter().filter(|(_, k)| k == kind).count()
}

/// Routes of every test gateway, all to one Echo upstream named `app`.
const ROUTES: &str = "routes:
  - {name: doctors_only, prefix: /doctor, upstream: app, auth: required, roles: [doctor]}
  - {name: signed_in, prefix: /private, upstream: app, auth: required}
  - {name: optional, prefix: /optional, upstream: app, auth: optional}
  - {name: public, prefix: /public, upstream: app}
";

/// What differs between test gateways.
struct Cfg {
    /// Lines inside `server:` (indented two spaces).
    server: String,
    /// The `auth.jwt` flow mapping.
    jwt: String,
    /// The `auth.login` flow mapping.
    login: String,
    /// More lines inside `auth:` (indented two spaces).
    auth_extra: String,
}

impl Default for Cfg {
    fn default() -> Cfg {
        Cfg {
            server: String::new(),
            jwt: format!("{{secret: \"{SECRET}\"}}"),
            // A generous per-ip limit: every test connects from 127.0.0.1, and with Redis
            // the counter is shared by all of them.
            login: "{max_failures_per_account: 5, max_failures_per_ip: 1000, window: 15m}".into(),
            auth_extra: String::new(),
        }
    }
}

/// A gateway with an Echo upstream behind [`ROUTES`], and its users.
struct Site {
    backend: Backend,
    db: String,
    users: Vec<Account>,
    up: FakeUpstream,
    gw: Gw,
    /// Last: removed after the gateway has stopped.
    _dir: Option<TempDir>,
}

impl Site {
    /// `None` when the backend's services are not configured (the test is skipped).
    fn start(backend: Backend, cfg: Cfg, users: &[(Role, &str)]) -> Option<Site> {
        let (db, redis, dir) = backend.urls()?;
        let users = seed_users(&db, "identity.test", users);
        let up = FakeUpstream::start(Behavior::Echo);
        let rest = format!(
            "upstreams:\n{}\n{ROUTES}auth:\n  database_url: \"{db}\"\n  redis_url: \"{redis}\"\n  jwt: {}\n  login: {}\n{}\n",
            upstream("app", &[up.url()], ""),
            cfg.jwt,
            cfg.login,
            cfg.auth_extra
        );
        let gw = Gw::start_with_server(&cfg.server, &rest);
        Some(Site {
            backend,
            db,
            users,
            up,
            gw,
            _dir: dir,
        })
    }

    fn port(&self) -> u16 {
        self.gw.port
    }

    /// Logs `user` in through the JSON endpoint; returns the reply body.
    fn login(&self, user: &Account) -> Value {
        let r = login_as(self.port(), &user.email, PASSWORD, &[]);
        assert_eq!(r.status, 200, "login {}: {}", user.email, r.text());
        json(&r)
    }
}

// ------------------------------------------------------------------------------------------
// HTTP helpers
// ------------------------------------------------------------------------------------------

fn cookie(token: &str) -> String {
    format!("{SESSION_COOKIE}={token}")
}

fn validate(port: u16, token: &str) -> Response {
    with_bearer(port, "/api/v1/auth/validate", token)
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

/// The attributes of a `Set-Cookie` line, lowercased (`httponly`, `path=/`, …).
fn cookie_attrs(line: &str) -> Vec<String> {
    line.split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect()
}

const IDENTITY_HEADERS: [&str; 4] = ["authorization", "x-user-id", "x-user-role", "x-session-id"];

fn assert_no_identity_headers(req: &RecordedRequest, what: &str) {
    for h in IDENTITY_HEADERS {
        assert!(
            req.header(h).is_none(),
            "{what}: upstream got {h}: {:?}",
            req.header_all(h)
        );
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ------------------------------------------------------------------------------------------
// Token helpers
// ------------------------------------------------------------------------------------------

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The claims of a token (no verification).
fn payload(token: &str) -> Value {
    let seg = token.split('.').nth(1).expect("payload segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).expect("base64url")).expect("JSON")
}

fn header_of(token: &str) -> Value {
    let seg = token.split('.').next().expect("header segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).expect("base64url")).expect("JSON")
}

fn sign(alg: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign")
}

/// An HS256 token over `claims` keyed with `key`.
fn forge(claims: &Value, key: &[u8]) -> String {
    sign(Algorithm::HS256, claims, &EncodingKey::from_secret(key))
}

fn with(claims: &Value, changes: &[(&str, Value)]) -> Value {
    let mut c = claims.clone();
    for (k, v) in changes {
        c[*k] = v.clone();
    }
    c
}

fn without(claims: &Value, key: &str) -> Value {
    let mut c = claims.clone();
    c.as_object_mut().expect("object").remove(key);
    c
}

/// `header.payload.` with `alg: none`.
fn alg_none(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"}).to_string();
    format!(
        "{}.{}.",
        b64(header.as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// Asserts that `token` is refused with 401 on a required route (never reaching the
/// upstream) and on the validate endpoint.
fn assert_refused(site: &Site, token: &str, what: &str) {
    let before = site.up.request_count();
    let r = with_bearer(site.port(), "/private/records", token);
    assert_eq!(r.status, 401, "{what}: protected route: {}", r.text());
    let www = r.header("www-authenticate").unwrap_or("");
    assert!(
        www.starts_with("Bearer") && www.contains("invalid_token"),
        "{what}: WWW-Authenticate {www:?}"
    );
    assert_eq!(error_code(&r), "unauthorized", "{what}");
    assert_eq!(
        site.up.request_count(),
        before,
        "{what}: reached the upstream"
    );
    let r = validate(site.port(), token);
    assert_eq!(r.status, 401, "{what}: validate: {}", r.text());
}

fn assert_accepted(site: &Site, token: &str, what: &str) {
    let r = with_bearer(site.port(), "/private/records", token);
    assert_eq!(r.status, 200, "{what}: protected route: {}", r.text());
    let r = validate(site.port(), token);
    assert_eq!(r.status, 200, "{what}: validate: {}", r.text());
}

on_both_backends!(
    login_answers_a_token_pair_the_user_and_a_strict_httponly_cookie,
    validate_accepts_a_live_token_and_refuses_a_missing_one,
    refresh_rotates_the_pair_and_reuse_of_an_old_refresh_token_ends_the_session,
    logout_ends_the_session_for_validate_and_protected_routes,
    logout_all_ends_every_session_of_the_user_and_no_other,
    browser_logout_redirects_to_login_and_clears_the_cookies,
    portal_login_from_an_api_client_answers_json,
    portal_form_login_from_a_browser_redirects_to_the_dashboard_or_a_safe_next,
    portal_form_login_with_a_wrong_password_redirects_back_to_login,
    portal_login_refuses_another_roles_credentials,
    routes_admit_exactly_the_roles_they_name,
    anonymous_api_clients_get_401_json_with_www_authenticate,
    anonymous_browsers_are_redirected_to_login_with_the_local_path_as_next,
    upstreams_get_identity_headers_for_a_bearer_request,
    upstreams_get_identity_headers_for_a_cookie_only_request,
    the_gateways_cookies_never_reach_an_upstream,
    client_sent_identity_headers_are_removed_on_every_route,
    hostile_hs256_tokens_are_refused,
    rs256_gateway_refuses_hs256_tokens_keyed_with_its_public_key_and_foreign_keys,
    cookie_authenticated_posts_need_a_same_or_trusted_origin,
    sign_in_from_another_sites_page_is_refused_and_sets_nothing,
    secure_cookies_follow_a_trusted_proxys_forwarded_proto,
    an_account_locks_after_three_failures_even_for_the_right_password,
    a_client_ip_locks_after_three_failures_across_accounts,
    unknown_emails_are_refused_like_wrong_passwords,
);

// ------------------------------------------------------------------------------------------
// 1. Login, validate, refresh, logout
// ------------------------------------------------------------------------------------------

fn login_answers_a_token_pair_the_user_and_a_strict_httponly_cookie(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat Ient")]) else {
        return;
    };
    let u = &site.users[0];
    let r = login_as(site.port(), &u.email, PASSWORD, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = json(&r);
    let (access, refresh) = (str_of(&v, "access_token"), str_of(&v, "refresh_token"));
    assert_eq!(access.split('.').count(), 3, "access token is a JWT");
    assert_eq!(refresh.split('.').count(), 3, "refresh token is a JWT");
    assert_ne!(access, refresh);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 900, "15 minutes by default");
    assert_eq!(
        v["user"],
        json!({"id": u.id, "email": u.email, "name": u.name, "role": "patient"})
    );
    let claims = payload(access);
    assert_eq!(claims["sub"], u.id.to_string());
    assert_eq!(claims["role"], "patient");
    assert_eq!(claims["typ"], "access");

    let c = set_cookie(&r, SESSION_COOKIE).expect("session cookie set");
    assert_eq!(cookie_value(c), access);
    let attrs = cookie_attrs(c);
    for want in ["httponly", "samesite=strict", "path=/"] {
        assert!(attrs.iter().any(|a| a == want), "{want} missing: {c}");
    }
    assert!(!attrs.iter().any(|a| a == "secure"), "plain http: {c}");
    let rc = set_cookie(&r, REFRESH_COOKIE).expect("refresh cookie set");
    assert_eq!(cookie_value(rc), refresh);
    let rattrs = cookie_attrs(rc);
    assert!(rattrs.iter().any(|a| a == "httponly"), "{rc}");
    assert!(
        rattrs.iter().any(|a| a == "path=/api/v1/auth/refresh"),
        "the refresh cookie goes only to the refresh endpoint: {rc}"
    );
}

fn validate_accepts_a_live_token_and_refuses_a_missing_one(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Doctor, "Doc")]) else {
        return;
    };
    let u = &site.users[0];
    let access = str_of(&site.login(u), "access_token").to_string();
    let r = validate(site.port(), &access);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["valid"], true);
    assert_eq!(v["user_id"], u.id.to_string());
    assert_eq!(v["role"], "doctor");
    let claims = payload(&access);
    assert_eq!(v["session_id"], claims["sid"]);
    assert_eq!(v["claims"], claims, "the token's claims");

    let r = get_ok(site.port(), "/api/v1/auth/validate", &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r
        .header("www-authenticate")
        .is_some_and(|w| w.starts_with("Bearer")));
    assert_eq!(error_code(&r), "unauthorized");

    let r = get_ok(
        site.port(),
        "/api/v1/auth/validate",
        &[("Cookie", &cookie(&access))],
    );
    assert_eq!(
        r.status,
        200,
        "the session cookie validates too: {}",
        r.text()
    );
}

fn refresh_rotates_the_pair_and_reuse_of_an_old_refresh_token_ends_the_session(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat")]) else {
        return;
    };
    let u = &site.users[0];
    let first = site.login(u);
    let (a1, r1) = (
        str_of(&first, "access_token"),
        str_of(&first, "refresh_token"),
    );

    let r = refresh(site.port(), r1);
    assert_eq!(r.status, 200, "{}", r.text());
    let second = json(&r);
    let (a2, r2) = (
        str_of(&second, "access_token"),
        str_of(&second, "refresh_token"),
    );
    assert_ne!(a2, a1);
    assert_ne!(r2, r1);
    assert_eq!(second["expires_in"], 900);
    assert_eq!(payload(a2)["sid"], payload(a1)["sid"], "same session");
    assert_eq!(validate(site.port(), a2).status, 200);
    assert_eq!(with_bearer(site.port(), "/private/x", a2).status, 200);
    assert_eq!(
        validate(site.port(), a1).status,
        401,
        "the replaced access token ends with the rotation"
    );

    // The old refresh token again: reuse. Refused, and the whole session ends.
    let r = refresh(site.port(), r1);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        validate(site.port(), a2).status,
        401,
        "reuse revokes the new access token"
    );
    assert_eq!(with_bearer(site.port(), "/private/x", a2).status, 401);
    assert_eq!(
        refresh(site.port(), r2).status,
        401,
        "reuse revokes the new refresh token"
    );

    let ev = events(&site.db);
    let mine = |kind: &str| ev.iter().any(|(id, k)| *id == Some(u.id) && k == kind);
    assert!(mine("refresh"), "refresh event: {ev:?}");
    assert!(mine("refresh_reuse"), "refresh_reuse event: {ev:?}");
}

fn logout_ends_the_session_for_validate_and_protected_routes(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat")]) else {
        return;
    };
    let u = &site.users[0];
    let v = site.login(u);
    let (access, refresh_token) = (str_of(&v, "access_token"), str_of(&v, "refresh_token"));
    assert_eq!(with_bearer(site.port(), "/private/x", access).status, 200);

    let r = logout(site.port(), access, false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["logged_out"], true);
    let cleared = set_cookie(&r, SESSION_COOKIE).expect("session cookie cleared");
    assert!(
        cookie_attrs(cleared).iter().any(|a| a == "max-age=0"),
        "{cleared}"
    );

    assert_eq!(validate(site.port(), access).status, 401);
    let before = site.up.request_count();
    let r = with_bearer(site.port(), "/private/x", access);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(site.up.request_count(), before);
    assert_eq!(refresh(site.port(), refresh_token).status, 401);
    let ev = events(&site.db);
    assert!(
        ev.iter().any(|(id, k)| *id == Some(u.id) && k == "logout"),
        "logout event: {ev:?}"
    );
}

fn logout_all_ends_every_session_of_the_user_and_no_other(b: Backend) {
    let Some(site) = Site::start(
        b,
        Cfg::default(),
        &[(Role::Patient, "Pat"), (Role::Patient, "Other")],
    ) else {
        return;
    };
    let (u, other) = (&site.users[0], &site.users[1]);
    let s1 = str_of(&site.login(u), "access_token").to_string();
    let s2 = str_of(&site.login(u), "access_token").to_string();
    let s3 = str_of(&site.login(other), "access_token").to_string();
    for t in [&s1, &s2, &s3] {
        assert_eq!(with_bearer(site.port(), "/private/x", t).status, 200);
    }

    let r = logout(site.port(), &s1, true);
    assert_eq!(r.status, 200, "{}", r.text());
    let ended = json(&r)["sessions_ended"].as_u64().expect("sessions_ended");
    if site.backend == Backend::Embedded {
        assert_eq!(ended, 2);
    } else {
        // A shared Redis may hold stale entries for this user id from earlier runs.
        assert!(ended >= 2, "sessions_ended {ended}");
    }
    for (t, what) in [(&s1, "first session"), (&s2, "second session")] {
        assert_eq!(validate(site.port(), t).status, 401, "{what}");
        assert_eq!(
            with_bearer(site.port(), "/private/x", t).status,
            401,
            "{what}"
        );
    }
    assert_eq!(
        with_bearer(site.port(), "/private/x", &s3).status,
        200,
        "another user's session lives on"
    );
    // Mass revocation is audited with its source and count.
    let audited = block_on(async {
        let udb = UserDb::connect(Some(&site.db))
            .await
            .expect("connect user db");
        udb.events_of(u.id).await.expect("events")
    });
    assert!(
        audited.iter().any(|e| e.kind == "sessions_revoked"
            && e.source.as_deref() == Some("api")
            && e.sessions_ended == Some(ended as i64)),
        "{audited:?}"
    );
}

fn browser_logout_redirects_to_login_and_clears_the_cookies(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat")]) else {
        return;
    };
    let access = str_of(&site.login(&site.users[0]), "access_token").to_string();
    let r = get_ok(
        site.port(),
        "/logout",
        &[("Cookie", &cookie(&access)), ("Accept", "text/html")],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/login"));
    for name in [SESSION_COOKIE, REFRESH_COOKIE] {
        let c = set_cookie(&r, name).unwrap_or_else(|| panic!("{name} not cleared"));
        assert_eq!(cookie_value(c), "", "{c}");
        assert!(cookie_attrs(c).iter().any(|a| a == "max-age=0"), "{c}");
    }
    assert_eq!(validate(site.port(), &access).status, 401);
}

// ------------------------------------------------------------------------------------------
// 2. Portal logins
// ------------------------------------------------------------------------------------------

const PATIENT_PORTAL: &str = "/api/web/auth/patient/login";

fn form_login(port: u16, path: &str, email: &str, password: &str, next: Option<&str>) -> Response {
    let mut body = format!(
        "email={}&password={}",
        form_encode(email),
        form_encode(password)
    );
    if let Some(n) = next {
        body.push_str(&format!("&next={}", form_encode(n)));
    }
    // The login page's double-submit CSRF token: the same value as a field and a cookie.
    let csrf = format!("{:032x}", rand::random::<u128>());
    body.push_str(&format!("&csrf_token={csrf}"));
    let csrf_cookie = format!("predicthealth_csrf={csrf}");
    let headers = [
        ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Origin", "http://localhost"),
        ("Cookie", csrf_cookie.as_str()),
    ];
    request(port, "POST", path, &headers, body.as_bytes())
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn portal_login_from_an_api_client_answers_json(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat")]) else {
        return;
    };
    let u = &site.users[0];
    let r = post_json(
        site.port(),
        PATIENT_PORTAL,
        &json!({"email": u.email, "password": PASSWORD}),
        &[("Accept", "application/json")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["user"]["role"], "patient");
    assert_eq!(
        validate(site.port(), str_of(&v, "access_token")).status,
        200
    );
    assert!(
        set_cookie(&r, SESSION_COOKIE).is_some(),
        "session cookie set"
    );
}

fn portal_form_login_from_a_browser_redirects_to_the_dashboard_or_a_safe_next(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat")]) else {
        return;
    };
    let u = &site.users[0];
    let dashboard = "/patient/dashboard";
    let cases = [
        (None, dashboard),
        (Some("/patient/records"), "/patient/records"),
        (Some("//evil.example"), dashboard),
        (Some("https://evil.example"), dashboard),
        (Some("/\\evil.example"), dashboard),
    ];
    for (next, want) in cases {
        let r = form_login(site.port(), PATIENT_PORTAL, &u.email, PASSWORD, next);
        assert_eq!(r.status, 303, "next {next:?}: {}", r.text());
        assert_eq!(r.header("location"), Some(want), "next {next:?}");
        let c = set_cookie(&r, SESSION_COOKIE).expect("session cookie set");
        assert_eq!(validate(site.port(), cookie_value(c)).status, 200);
    }
    // `next` in the query string works the same way.
    let path = format!("{PATIENT_PORTAL}?next=%2Fpatient%2Frecords");
    let r = form_login(site.port(), &path, &u.email, PASSWORD, None);
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/patient/records"));
}

fn portal_form_login_with_a_wrong_password_redirects_back_to_login(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat")]) else {
        return;
    };
    let u = &site.users[0];
    let r = form_login(
        site.port(),
        PATIENT_PORTAL,
        &u.email,
        "wrong-password-123",
        Some("/patient/records"),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let loc = r.header("location").unwrap_or("");
    let q = login_page_query(loc);
    assert_eq!(q.get("error").map(String::as_str), Some("invalid"), "{loc}");
    assert_eq!(
        q.get("portal").map(String::as_str),
        Some("patient"),
        "{loc}"
    );
    assert_eq!(
        q.get("next").map(String::as_str),
        Some("/patient/records"),
        "the safe next is kept: {loc}"
    );
    assert!(
        set_cookie(&r, SESSION_COOKIE).is_none(),
        "no session cookie"
    );
}

/// The query parameters (decoded) of a redirect to `/login?…`.
fn login_page_query(location: &str) -> std::collections::HashMap<String, String> {
    let query = location
        .strip_prefix("/login?")
        .unwrap_or_else(|| panic!("not a redirect to the login page: {location:?}"));
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn portal_login_refuses_another_roles_credentials(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Doctor, "Doc")]) else {
        return;
    };
    let d = &site.users[0];
    let r = post_json(
        site.port(),
        PATIENT_PORTAL,
        &json!({"email": d.email, "password": PASSWORD}),
        &[],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(error_code(&r), "wrong_portal");
    assert!(
        set_cookie(&r, SESSION_COOKIE).is_none(),
        "no session cookie"
    );

    // A browser goes back to the patient tab of the login page with the error.
    let r = form_login(site.port(), PATIENT_PORTAL, &d.email, PASSWORD, None);
    assert_eq!(r.status, 303, "browser form: {}", r.text());
    let loc = r.header("location").unwrap_or("");
    let q = login_page_query(loc);
    assert_eq!(
        q.get("error").map(String::as_str),
        Some("forbidden"),
        "{loc}"
    );
    assert_eq!(
        q.get("portal").map(String::as_str),
        Some("patient"),
        "{loc}"
    );
    assert!(
        set_cookie(&r, SESSION_COOKIE).is_none(),
        "no session cookie"
    );

    let r = post_json(
        site.port(),
        "/api/web/auth/doctor/login",
        &json!({"email": d.email, "password": PASSWORD}),
        &[],
    );
    assert_eq!(r.status, 200, "the doctor portal takes them: {}", r.text());
}

// ------------------------------------------------------------------------------------------
// 3. Roles, anonymous clients
// ------------------------------------------------------------------------------------------

fn routes_admit_exactly_the_roles_they_name(b: Backend) {
    let users = [
        (Role::Patient, "P"),
        (Role::Doctor, "D"),
        (Role::Institution, "I"),
        (Role::Admin, "A"),
    ];
    let Some(site) = Site::start(b, Cfg::default(), &users) else {
        return;
    };
    for u in &site.users {
        let token = str_of(&site.login(u), "access_token").to_string();
        let role = u.role.as_str();
        for route in ["/doctor", "/private", "/optional", "/public"] {
            let path = format!("{route}/x");
            let what = format!("{role} on {route}");
            let allowed = route != "/doctor" || u.role == Role::Doctor;
            let before = site.up.request_count();
            let r = with_bearer(site.port(), &path, &token);
            if !allowed {
                assert_eq!(r.status, 403, "{what}: {}", r.text());
                assert_eq!(error_code(&r), "forbidden", "{what}");
                assert_eq!(site.up.request_count(), before, "{what}: forwarded");
                continue;
            }
            assert_eq!(r.status, 200, "{what}: {}", r.text());
            let req = site.up.requests()[before].clone();
            if route == "/public" {
                // `auth: none` never looks at the token: no identity goes upstream.
                assert_no_identity_headers(&req, &what);
            } else {
                assert_eq!(one(&req.headers, "x-user-role"), role, "{what}");
                assert_eq!(one(&req.headers, "x-user-id"), u.id.to_string(), "{what}");
            }
        }
    }
}

fn anonymous_api_clients_get_401_json_with_www_authenticate(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[]) else {
        return;
    };
    for accept in [None, Some("application/json")] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        for path in ["/doctor/x", "/private/x"] {
            let before = site.up.request_count();
            let r = get_ok(site.port(), path, &headers);
            assert_eq!(r.status, 401, "{path} {accept:?}: {}", r.text());
            assert_eq!(
                r.header("www-authenticate"),
                Some(r#"Bearer realm="gatehouse""#),
                "{path}"
            );
            assert!(
                r.header("content-type")
                    .is_some_and(|c| c.starts_with("application/json")),
                "{path}"
            );
            assert_eq!(error_code(&r), "unauthorized", "{path}");
            assert_eq!(site.up.request_count(), before, "{path}: forwarded");
        }
        for path in ["/optional/x", "/public/x"] {
            let req = forwarded(&site.gw, &site.up, path, &headers).1;
            assert_no_identity_headers(&req, path);
        }
    }
}

fn anonymous_browsers_are_redirected_to_login_with_the_local_path_as_next(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat")]) else {
        return;
    };
    let browser = [("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")];
    let before = site.up.request_count();
    let target = "/private/records?tab=notes&q=a%20b";
    let r = get_ok(site.port(), target, &browser);
    assert_eq!(r.status, 303, "{}", r.text());
    let loc = r.header("location").unwrap_or("");
    let next = loc
        .strip_prefix("/login?next=")
        .unwrap_or_else(|| panic!("Location {loc:?}"));
    assert!(
        !next.contains(['?', '&', '=', ':', '#']),
        "next is percent-encoded: {loc}"
    );
    assert_eq!(
        percent_decode(next),
        target,
        "next is the local path: {loc}"
    );
    assert_eq!(site.up.request_count(), before, "not forwarded");

    let r = get_ok(site.port(), "/doctor/x", &browser);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login?next=/doctor/x"));
    assert_eq!(get_ok(site.port(), "/optional/x", &browser).status, 200);

    // Signed in with the wrong role: 403, not a redirect back to the login page.
    let access = str_of(&site.login(&site.users[0]), "access_token").to_string();
    let mut h = browser.to_vec();
    let c = cookie(&access);
    h.push(("Cookie", &c));
    assert_eq!(get_ok(site.port(), "/doctor/x", &h).status, 403);
    assert_eq!(get_ok(site.port(), "/private/x", &h).status, 200);
}

// ------------------------------------------------------------------------------------------
// 4. Identity headers
// ------------------------------------------------------------------------------------------

fn assert_identity(req: &RecordedRequest, token: &str, u: &Account) {
    let claims = payload(token);
    assert_eq!(one(&req.headers, "authorization"), bearer(token));
    assert_eq!(one(&req.headers, "x-user-id"), u.id.to_string());
    assert_eq!(one(&req.headers, "x-user-role"), u.role.as_str());
    assert_eq!(one(&req.headers, "x-session-id"), str_of(&claims, "sid"));
}

const SPOOFS: [(&str, &str); 3] = [
    ("X-User-Id", "1"),
    ("X-User-Role", "admin"),
    ("X-Session-Id", "forged-session"),
];

fn upstreams_get_identity_headers_for_a_bearer_request(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat")]) else {
        return;
    };
    let u = &site.users[0];
    let token = str_of(&site.login(u), "access_token").to_string();
    let auth = bearer(&token);
    let mut h = vec![("Authorization", auth.as_str())];
    h.extend_from_slice(&SPOOFS);
    for route in ["/private/x", "/optional/x"] {
        let req = forwarded(&site.gw, &site.up, route, &h).1;
        assert_identity(&req, &token, u);
    }
}

fn upstreams_get_identity_headers_for_a_cookie_only_request(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Doctor, "Doc")]) else {
        return;
    };
    let u = &site.users[0];
    let token = str_of(&site.login(u), "access_token").to_string();
    let c = cookie(&token);
    let mut h = vec![("Cookie", c.as_str())];
    h.extend_from_slice(&SPOOFS);
    for route in ["/doctor/x", "/private/x", "/optional/x"] {
        let req = forwarded(&site.gw, &site.up, route, &h).1;
        assert_identity(&req, &token, u);
    }
}

/// After a browser login the client holds the session, refresh and CSRF cookies; whatever
/// route a request takes (protected, optional, public) the upstream sees only the client's
/// other cookies, in their order, and identity through `Authorization` and `X-User-*`.
fn the_gateways_cookies_never_reach_an_upstream(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat")]) else {
        return;
    };
    let u = &site.users[0];
    let v = site.login(u);
    let (access, refresh) = (str_of(&v, "access_token"), str_of(&v, "refresh_token"));
    let jar = format!(
        "theme=dark; {SESSION_COOKIE}={access}; lang=es; {REFRESH_COOKIE}={refresh}; \
         predicthealth_csrf=c5rf; predicthealth_flash=success:logged_out; predicthealth_session2=mine"
    );
    for route in ["/private/x", "/optional/x", "/public/x"] {
        let req = forwarded(&site.gw, &site.up, route, &[("Cookie", jar.as_str())]).1;
        assert_eq!(
            one(&req.headers, "cookie"),
            "theme=dark; lang=es; predicthealth_session2=mine",
            "{route}"
        );
        for secret in [access, refresh, "c5rf"] {
            assert!(
                !req.headers
                    .iter()
                    .any(|(k, v)| k != "authorization" && v.contains(secret)),
                "{route}: a gateway credential reached the upstream: {:?}",
                req.headers
            );
        }
        if route != "/public/x" {
            assert_identity(&req, access, u);
        }
    }
    // Nothing but the gateway's cookies: no Cookie header at all.
    let only = format!("{SESSION_COOKIE}={access}; {REFRESH_COOKIE}={refresh}");
    let req = forwarded(
        &site.gw,
        &site.up,
        "/private/x",
        &[("Cookie", only.as_str())],
    )
    .1;
    assert_eq!(req.header("cookie"), None, "{:?}", req.headers);
    assert_identity(&req, access, u);
    // Without any of the gateway's cookies the header passes exactly as sent.
    let req = forwarded(&site.gw, &site.up, "/public/x", &[("Cookie", "a=1;b=2")]).1;
    assert_eq!(one(&req.headers, "cookie"), "a=1;b=2");
}

fn client_sent_identity_headers_are_removed_on_every_route(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat")]) else {
        return;
    };
    let token = str_of(&site.login(&site.users[0]), "access_token").to_string();
    let valid = bearer(&token);
    let forged = bearer(&forge(&json!({"sub": "1", "role": "admin"}), b"x"));
    let authorizations = [
        None,
        Some("Basic dXNlcjpwYXNzd29yZA=="),
        Some(forged.as_str()),
    ];
    for route in ["/public/x", "/optional/x"] {
        for authz in authorizations {
            let mut h = SPOOFS.to_vec();
            h.extend(authz.map(|a| ("Authorization", a)));
            let what = format!("{route} with Authorization {authz:?}");
            let req = forwarded(&site.gw, &site.up, route, &h).1;
            assert_no_identity_headers(&req, &what);
        }
    }
    // A valid token on an `auth: none` route is not checked, so nothing is passed on.
    let mut h = SPOOFS.to_vec();
    h.push(("Authorization", valid.as_str()));
    let req = forwarded(&site.gw, &site.up, "/public/x", &h).1;
    assert_no_identity_headers(&req, "/public/x with a valid token");
}

// ------------------------------------------------------------------------------------------
// 5. Hostile tokens
// ------------------------------------------------------------------------------------------

fn hostile_hs256_tokens_are_refused(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat")]) else {
        return;
    };
    let login = site.login(&site.users[0]);
    let token = str_of(&login, "access_token").to_string();
    let base = payload(&token);
    let key = SECRET.as_bytes();
    // Control: the same claims re-signed with the gateway's secret pass, so each case
    // below fails for its one defect only.
    assert_accepted(&site, &forge(&base, key), "control (re-signed claims)");

    let t = now();
    let tampered = {
        let parts: Vec<&str> = token.split('.').collect();
        let claims = with(&base, &[("role", json!("admin"))]);
        format!(
            "{}.{}.{}",
            parts[0],
            b64(claims.to_string().as_bytes()),
            parts[2]
        )
    };
    let oversized = forge(&with(&base, &[("pad", json!("x".repeat(5000)))]), key);
    assert!(oversized.len() > 4096);
    let unknown_jti = format!("{:032x}", rand::random::<u128>());
    let cases: Vec<(&str, String)> = vec![
        ("alg none", alg_none(&base)),
        (
            "alg none with the real signature",
            format!(
                "{}.{}",
                alg_none(&base).trim_end_matches('.'),
                token.split('.').nth(2).unwrap_or("")
            ),
        ),
        (
            "signed with another secret",
            forge(&base, b"another-secret-of-more-than-32-bytes!!"),
        ),
        (
            "expired",
            forge(
                &with(
                    &base,
                    &[
                        ("iat", json!(t - 7200)),
                        ("nbf", json!(t - 7200)),
                        ("exp", json!(t - 3600)),
                    ],
                ),
                key,
            ),
        ),
        (
            "nbf in the future",
            forge(&with(&base, &[("nbf", json!(t + 3600))]), key),
        ),
        (
            "iat in the future",
            forge(&with(&base, &[("iat", json!(t + 3600))]), key),
        ),
        (
            "wrong issuer",
            forge(&with(&base, &[("iss", json!("someone-else"))]), key),
        ),
        (
            "wrong audience",
            forge(&with(&base, &[("aud", json!("another-app"))]), key),
        ),
        ("missing jti", forge(&without(&base, "jti"), key)),
        ("missing sub", forge(&without(&base, "sub"), key)),
        ("tampered payload (role changed)", tampered),
        ("oversized (> 4 KiB)", oversized),
        (
            "session key never stored",
            forge(&with(&base, &[("jti", json!(unknown_jti))]), key),
        ),
        (
            "refresh token used as access token",
            str_of(&login, "refresh_token").to_string(),
        ),
    ];
    for (what, bad) in &cases {
        assert_refused(&site, bad, what);
    }

    // Revoked: the issued token (and its re-signed twin) die with the session.
    assert_accepted(&site, &token, "before logout");
    assert_eq!(logout(site.port(), &token, false).status, 200);
    assert_refused(&site, &token, "revoked session");
    assert_refused(&site, &forge(&base, key), "revoked session, re-signed");
}

/// Generates an RSA key pair with `openssl` into `dir`; returns (private, public) paths.
fn rsa_pair(dir: &Path, name: &str) -> Option<(PathBuf, PathBuf)> {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
    let generated = ok(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private))
        && ok(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public));
    generated.then_some((private, public))
}

fn rs256_gateway_refuses_hs256_tokens_keyed_with_its_public_key_and_foreign_keys(b: Backend) {
    let dir = TempDir::new("keys");
    let (Some((private, public)), Some((foreign, _))) = (
        rsa_pair(dir.path(), "gateway"),
        rsa_pair(dir.path(), "foreign"),
    ) else {
        eprintln!("note: openssl could not generate RSA keys; skipping the RS256 test");
        return;
    };
    let cfg = Cfg {
        jwt: format!(
            "{{algorithm: RS256, private_key: \"{}\", public_key: \"{}\"}}",
            private.display(),
            public.display()
        ),
        ..Cfg::default()
    };
    let Some(site) = Site::start(b, cfg, &[(Role::Patient, "Pat")]) else {
        return;
    };
    let token = str_of(&site.login(&site.users[0]), "access_token").to_string();
    assert_eq!(header_of(&token)["alg"], "RS256");
    let base = payload(&token);
    let pem = |p: &Path| std::fs::read(p).expect("read key");
    let own_key = EncodingKey::from_rsa_pem(&pem(&private)).expect("own key");
    let foreign_key = EncodingKey::from_rsa_pem(&pem(&foreign)).expect("foreign key");
    assert_accepted(&site, &token, "issued token");
    assert_accepted(
        &site,
        &sign(Algorithm::RS256, &base, &own_key),
        "control (re-signed with the gateway key)",
    );

    let public_pem = pem(&public);
    assert_refused(
        &site,
        &forge(&base, &public_pem),
        "HS256 keyed with the RSA public key PEM",
    );
    let trimmed = String::from_utf8_lossy(&public_pem).trim().to_string();
    assert_refused(
        &site,
        &forge(&base, trimmed.as_bytes()),
        "HS256 keyed with the trimmed public key PEM",
    );
    assert_refused(
        &site,
        &sign(Algorithm::RS256, &base, &foreign_key),
        "RS256 signed with a foreign key",
    );
    assert_refused(&site, &alg_none(&base), "alg none");
}

// ------------------------------------------------------------------------------------------
// 6. Cookies and CSRF
// ------------------------------------------------------------------------------------------

/// Login CSRF: another site's page must not sign the visitor's browser into an account of
/// its choosing. The JSON login takes only JSON (a form or `text/plain` body is what a page
/// can send without a preflight), and every endpoint that sets session cookies refuses a
/// cross-site request with 403 before looking at the credentials.
fn sign_in_from_another_sites_page_is_refused_and_sets_nothing(b: Backend) {
    let cfg = Cfg {
        auth_extra: "  trusted_origins: [\"http://app.example:3000\"]\n".into(),
        ..Cfg::default()
    };
    let Some(site) = Site::start(b, cfg, &[(Role::Patient, "Pat")]) else {
        return;
    };
    let u = &site.users[0];
    let creds = json!({"email": u.email, "password": PASSWORD}).to_string();
    let form = format!(
        "email={}&password={}",
        form_encode(&u.email),
        form_encode(PASSWORD)
    );
    let login = |content_type: &str, body: &str, extra: &[(&str, &str)]| {
        let mut h = vec![("Content-Type", content_type)];
        h.extend_from_slice(extra);
        request(
            site.port(),
            "POST",
            "/api/v1/auth/login",
            &h,
            body.as_bytes(),
        )
        .expect("POST login")
    };
    let refused = |r: &Response, status: u16, code: &str, what: &str| {
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert_eq!(error_code(r), code, "{what}");
        assert!(
            r.header_all("set-cookie").is_empty(),
            "{what}: cookies set: {:?}",
            r.headers
        );
    };
    let evil = ("Origin", "https://evil.example");
    let cross = ("Sec-Fetch-Site", "cross-site");
    for (ct, body) in [
        ("application/x-www-form-urlencoded", form.as_str()),
        ("text/plain", creds.as_str()),
        ("multipart/form-data; boundary=x", creds.as_str()),
    ] {
        refused(&login(ct, body, &[]), 415, "unsupported_media_type", ct);
        refused(&login(ct, body, &[evil]), 403, "csrf", ct);
        refused(&login(ct, body, &[cross]), 403, "csrf", ct);
    }
    let json_ct = "application/json";
    for (what, extra) in [
        ("foreign Origin", vec![evil]),
        ("Origin null", vec![("Origin", "null")]),
        ("cross-site fetch metadata", vec![cross]),
        (
            "own Origin but cross-site fetch",
            vec![("Origin", "http://localhost"), cross],
        ),
    ] {
        refused(&login(json_ct, &creds, &extra), 403, "csrf", what);
    }
    for (what, extra) in [
        ("an API client (no Origin)", vec![]),
        (
            "the gateway's own origin",
            vec![("Origin", "http://localhost")],
        ),
        ("same-origin fetch", vec![("Sec-Fetch-Site", "same-origin")]),
        (
            "a trusted front end",
            vec![("Origin", "http://app.example:3000"), cross],
        ),
        ("charset parameter", vec![]),
    ] {
        let ct = if what == "charset parameter" {
            "application/json; charset=utf-8"
        } else {
            json_ct
        };
        let r = login(ct, &creds, &extra);
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert!(set_cookie(&r, SESSION_COOKIE).is_some(), "{what}");
    }

    // The portal form keeps its CSRF token, and a valid token does not make a cross-site
    // post acceptable.
    let csrf = "0123456789abcdef0123456789abcdef";
    let body = format!("{form}&csrf_token={csrf}");
    let jar = format!("predicthealth_csrf={csrf}");
    let portal = |extra: &[(&str, &str)]| {
        let mut h = vec![
            ("Accept", "text/html"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", jar.as_str()),
        ];
        h.extend_from_slice(extra);
        request(site.port(), "POST", PATIENT_PORTAL, &h, body.as_bytes()).expect("portal")
    };
    refused(
        &portal(&[evil]),
        403,
        "csrf",
        "portal form from another site",
    );
    refused(
        &portal(&[cross]),
        403,
        "csrf",
        "portal form, cross-site fetch",
    );
    let r = portal(&[("Origin", "http://localhost")]);
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(set_cookie(&r, SESSION_COOKIE).is_some());
    // The token as the pages carry it (masked afresh each time) is taken; a masked token of
    // another cookie is not.
    let post_token = |token: &str| {
        let body = format!("{form}&csrf_token={token}");
        let h = [
            ("Accept", "text/html"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", jar.as_str()),
            ("Origin", "http://localhost"),
        ];
        request(site.port(), "POST", PATIENT_PORTAL, &h, body.as_bytes()).expect("portal")
    };
    let r = post_token(&gatehouse::forms::csrf_mask(csrf));
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(
        set_cookie(&r, SESSION_COOKIE).is_some(),
        "masked token refused"
    );
    let r = post_token(&gatehouse::forms::csrf_mask(
        "fedcba9876543210fedcba9876543210",
    ));
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/login?error=forbidden"));
    assert!(
        set_cookie(&r, SESSION_COOKIE).is_none(),
        "another cookie's token taken"
    );

    // Refresh sets cookies too: refused cross-site, and the refresh token is not spent.
    let v = site.login(u);
    let rt = str_of(&v, "refresh_token");
    let r = post_json(
        site.port(),
        "/api/v1/auth/refresh",
        &json!({"refresh_token": rt}),
        &[evil],
    );
    refused(&r, 403, "csrf", "refresh from another site");
    assert_eq!(
        refresh(site.port(), rt).status,
        200,
        "the token still works"
    );
}

fn cookie_authenticated_posts_need_a_same_or_trusted_origin(b: Backend) {
    let cfg = Cfg {
        auth_extra: "  trusted_origins: [\"http://app.example:3000\"]\n".into(),
        ..Cfg::default()
    };
    let Some(site) = Site::start(b, cfg, &[(Role::Patient, "Pat")]) else {
        return;
    };
    let token = str_of(&site.login(&site.users[0]), "access_token").to_string();
    let host = format!("127.0.0.1:{}", site.port());
    let own_origin = format!("http://{host}");
    let c = cookie(&token);
    let b_auth = bearer(&token);
    let post = |extra: &[(&str, &str)]| {
        let mut h = vec![("Host", host.as_str())];
        h.extend_from_slice(extra);
        request_ok(site.port(), "POST", "/private/x", &h, b"{}")
    };

    for (what, headers) in [
        (
            "foreign Origin",
            vec![("Cookie", c.as_str()), ("Origin", "http://evil.example")],
        ),
        (
            "foreign Origin with our host as a prefix",
            vec![
                ("Cookie", c.as_str()),
                ("Origin", "http://127.0.0.1.evil.example"),
            ],
        ),
        ("no Origin at all", vec![("Cookie", c.as_str())]),
        (
            "cross-site fetch metadata",
            vec![("Cookie", c.as_str()), ("Sec-Fetch-Site", "cross-site")],
        ),
    ] {
        let before = site.up.request_count();
        let r = post(&headers);
        assert_eq!(r.status, 403, "{what}: {}", r.text());
        assert_eq!(error_code(&r), "csrf", "{what}");
        assert_eq!(site.up.request_count(), before, "{what}: forwarded");
    }
    for (what, headers) in [
        (
            "same Origin as Host",
            vec![("Cookie", c.as_str()), ("Origin", own_origin.as_str())],
        ),
        (
            "trusted Origin",
            vec![
                ("Cookie", c.as_str()),
                ("Origin", "http://app.example:3000"),
            ],
        ),
        (
            "same-origin fetch metadata",
            vec![("Cookie", c.as_str()), ("Sec-Fetch-Site", "same-origin")],
        ),
        (
            "Bearer without Origin (exempt)",
            vec![("Authorization", b_auth.as_str())],
        ),
    ] {
        let r = post(&headers);
        assert_eq!(r.status, 200, "{what}: {}", r.text());
    }
    // Safe methods are not state-changing: a foreign Origin does not matter.
    let r = get_ok(
        site.port(),
        "/private/x",
        &[("Cookie", &c), ("Origin", "http://evil.example")],
    );
    assert_eq!(r.status, 200, "GET: {}", r.text());
}

fn secure_flags(r: &Response) -> Vec<bool> {
    [SESSION_COOKIE, REFRESH_COOKIE]
        .iter()
        .map(|n| {
            let c = set_cookie(r, n).unwrap_or_else(|| panic!("{n} not set"));
            cookie_attrs(c).iter().any(|a| a == "secure")
        })
        .collect()
}

fn secure_cookies_follow_a_trusted_proxys_forwarded_proto(b: Backend) {
    let cfg = Cfg {
        server: "  trusted_proxies: [127.0.0.1/32]\n".into(),
        ..Cfg::default()
    };
    let Some(site) = Site::start(b, cfg, &[(Role::Patient, "Pat")]) else {
        return;
    };
    let email = site.users[0].email.clone();
    let login = |port, h: &[(&str, &str)]| {
        let r = login_as(port, &email, PASSWORD, h);
        assert_eq!(r.status, 200, "{}", r.text());
        secure_flags(&r)
    };
    let https = [("X-Forwarded-Proto", "https")];
    assert_eq!(
        login(site.port(), &https),
        [true, true],
        "TLS at a trusted proxy"
    );
    assert_eq!(login(site.port(), &[]), [false, false], "plain http");
    assert_eq!(
        login(site.port(), &[("X-Forwarded-Proto", "http")]),
        [false, false],
        "proxy says http"
    );

    // The same header from a client that is not a trusted proxy means nothing.
    let Some(untrusted) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat")]) else {
        return;
    };
    let email = untrusted.users[0].email.clone();
    let r = login_as(untrusted.port(), &email, PASSWORD, &https);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        secure_flags(&r),
        [false, false],
        "untrusted X-Forwarded-Proto"
    );
}

// ------------------------------------------------------------------------------------------
// 7. Lockout
// ------------------------------------------------------------------------------------------

fn assert_locked(r: &Response, window_secs: u64, what: &str) {
    assert_eq!(r.status, 429, "{what}: {}", r.text());
    assert_eq!(error_code(r), "too_many_attempts", "{what}");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{what}: Retry-After {:?}", r.header("retry-after")));
    assert!(
        (1..=window_secs).contains(&retry),
        "{what}: Retry-After {retry}"
    );
}

fn an_account_locks_after_three_failures_even_for_the_right_password(b: Backend) {
    let cfg = Cfg {
        login: "{max_failures_per_account: 3, max_failures_per_ip: 1000, window: 60s}".into(),
        ..Cfg::default()
    };
    let Some(site) = Site::start(b, cfg, &[(Role::Patient, "Pat"), (Role::Patient, "Other")])
    else {
        return;
    };
    let (u, other) = (&site.users[0], &site.users[1]);
    let locked_before = count_events(&site.db, "locked");
    for i in 1..=3 {
        let r = login_as(site.port(), &u.email, "wrong-password-123", &[]);
        assert_eq!(r.status, 401, "failure {i}: {}", r.text());
        assert_eq!(error_code(&r), "invalid_credentials");
    }
    let r = login_as(site.port(), &u.email, PASSWORD, &[]);
    assert_locked(&r, 60, "4th attempt, right password");
    assert!(
        set_cookie(&r, SESSION_COOKIE).is_none(),
        "no session while locked"
    );
    assert_locked(
        &login_as(site.port(), &u.email, PASSWORD, &[]),
        60,
        "5th attempt",
    );
    assert!(
        count_events(&site.db, "locked") > locked_before,
        "a locked event is recorded"
    );
    // The lock is per account: another user from the same address signs in.
    assert_eq!(
        login_as(site.port(), &other.email, PASSWORD, &[]).status,
        200
    );
}

fn a_client_ip_locks_after_three_failures_across_accounts(b: Backend) {
    let cfg = Cfg {
        // The client address comes from X-Forwarded-For, so that a shared Redis' counter
        // for 127.0.0.1 (every test) is not involved.
        server: "  trusted_proxies: [127.0.0.1/32]\n".into(),
        login: "{max_failures_per_account: 100, max_failures_per_ip: 3, window: 60s}".into(),
        ..Cfg::default()
    };
    let Some(site) = Site::start(b, cfg, &[(Role::Patient, "Pat")]) else {
        return;
    };
    let u = &site.users[0];
    let [x, y, z] = [
        rand::random::<u8>(),
        rand::random(),
        rand::random::<u8>() | 2,
    ];
    let ip = format!("10.{x}.{y}.{z}");
    let other_ip = format!("10.{x}.{y}.{}", z ^ 1);
    let from = |ip: &str, email: &str, pw: &str| {
        login_as(site.port(), email, pw, &[("X-Forwarded-For", ip)])
    };
    for i in 1..=3 {
        let email = format!("nobody-{i}-{}@identity.test", unique());
        let r = from(&ip, &email, "wrong-password-123");
        assert_eq!(r.status, 401, "failure {i}: {}", r.text());
    }
    assert_locked(
        &from(&ip, &u.email, PASSWORD),
        60,
        "same ip, right password",
    );
    let r = from(&other_ip, &u.email, PASSWORD);
    assert_eq!(r.status, 200, "another ip: {}", r.text());
}

fn unknown_emails_are_refused_like_wrong_passwords(b: Backend) {
    let Some(site) = Site::start(b, Cfg::default(), &[(Role::Patient, "Pat")]) else {
        return;
    };
    let wrong = login_as(site.port(), &site.users[0].email, "wrong-password-123", &[]);
    let unknown_email = format!("nobody-{}@identity.test", unique());
    let unknown = login_as(site.port(), &unknown_email, PASSWORD, &[]);
    for (what, r) in [("wrong password", &wrong), ("unknown email", &unknown)] {
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert!(set_cookie(r, SESSION_COOKIE).is_none(), "{what}");
    }
    let strip = |r: &Response| {
        let mut v = json(r);
        v["error"]
            .as_object_mut()
            .expect("error object")
            .remove("request_id");
        v
    };
    assert_eq!(strip(&wrong), strip(&unknown), "same body");
    assert_eq!(
        wrong.header("www-authenticate"),
        unknown.header("www-authenticate")
    );
}

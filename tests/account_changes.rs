//! Sessions that end when they must, through the real gateway and the real `gatehouse`
//! binary: an account change made by the CLI in another process (`user disable`,
//! `set-password`, `set-role`, `delete`, `revoke-sessions`) ends every access and refresh
//! session of the user on every running gateway, on both store kinds (the in-process store
//! through the gateway's poll of `session_revocations`; Redis directly from the CLI, and
//! across two instances through pub/sub); each change is an audit row with its source and
//! the count of sessions ended; a Redis the CLI cannot reach fails the command and says what
//! was applied. And the session policy: activity keeps a cookie session alive past the
//! access TTL (every renewal re-issues the cookie with the lifetime the store got, also on
//! `validate`), inactivity ends it.
//!
//! Each flow runs on the embedded defaults (SQLite and the in-process store) and, when
//! `DATABASE_URL` and `REDIS_URL` are set (scripts/test.sh sets both), on PostgreSQL and
//! Redis with two gateway instances.

mod common;
use common::*;

use gatehouse::auth::users::{Role, UserDb};
use std::process::Output;
use std::time::Duration;

/// How long a change may take to reach every gateway in these tests. The gateways poll
/// every 250 ms; the bound leaves room for a loaded test machine (not a speed test).
const REACH: Duration = Duration::from_secs(3);

/// The gateways of one test (two on PostgreSQL + Redis), their upstream and user.
struct Site {
    db: String,
    redis: String,
    user: Account,
    _up: FakeUpstream,
    gws: Vec<Gw>,
    /// Last: removed after the gateways have stopped.
    _dir: Option<TempDir>,
}

impl Site {
    fn start(b: Backend, auth_extra: &str) -> Option<Site> {
        let (db, redis, dir) = b.urls()?;
        let user = seed_users(&db, "accounts.test", &[(Role::Patient, "Pat")]).remove(0);
        let up = FakeUpstream::start(Behavior::Echo);
        let instances = if b == Backend::Embedded { 1 } else { 2 };
        let gws = (0..instances)
            .map(|_| {
                Gw::start(&format!(
                    "upstreams:\n{}\nroutes:\n  - {{name: signed_in, prefix: /private, upstream: app, auth: required}}\nweb:\n  templates: {templates}\n  pages:\n    - {{path: /mine, template: docs.html, title: Mine, auth: required}}\nauth:\n  database_url: \"{db}\"\n  redis_url: \"{redis}\"\n  jwt: {{secret: \"{SECRET}\"}}\n  login: {{max_failures_per_ip: 1000}}\n{auth_extra}",
                    upstream("app", &[up.url()], ""),
                    templates = concat!(env!("CARGO_MANIFEST_DIR"), "/templates"),
                ))
            })
            .collect();
        Some(Site {
            db,
            redis,
            user,
            _up: up,
            gws,
            _dir: dir,
        })
    }

    fn port(&self) -> u16 {
        self.gws[0].port
    }

    fn ports(&self) -> Vec<u16> {
        self.gws.iter().map(|g| g.port).collect()
    }

    /// `gatehouse user ARGS` in its own process, on this site's database and store.
    fn cli(&self, args: &[&str], stdin: &str) -> Output {
        cli(&self.db, &self.redis, args, stdin)
    }
}

fn cli(db: &str, redis: &str, args: &[&str], stdin: &str) -> Output {
    let args = [&["-c", "/nonexistent/gateway.yaml", "user"], args].concat();
    run_cli(&args, &[("DATABASE_URL", db), ("REDIS_URL", redis)], stdin)
}

/// What a browser and an API client hold after one sign-in.
struct Signed {
    access: String,
    refresh: String,
    cookie: String,
}

fn set_cookie_value(r: &Response, name: &str) -> Option<String> {
    set_cookie(r, name).map(|c| cookie_value(c).to_string())
}

fn max_age(r: &Response, name: &str) -> Option<u64> {
    set_cookie(r, name)?
        .split(';')
        .map(str::trim)
        .find_map(|a| a.strip_prefix("Max-Age="))
        .and_then(|v| v.parse().ok())
}

fn sign_in(port: u16, email: &str, password: &str) -> Signed {
    let r = login_as(port, email, password, &[]);
    assert_eq!(r.status, 200, "login {email}: {}", r.text());
    let v = json(&r);
    Signed {
        access: v["access_token"].as_str().expect("access").to_string(),
        refresh: v["refresh_token"].as_str().expect("refresh").to_string(),
        cookie: set_cookie_value(&r, SESSION_COOKIE).expect("session cookie"),
    }
}

fn with_cookie(port: u16, cookie: &str) -> Response {
    let c = format!("{SESSION_COOKIE}={cookie}");
    get(
        port,
        "/private/x",
        &[("Cookie", &c), ("Accept", "application/json")],
    )
    .expect("GET /private/x")
}

fn audit(db: &str, user_id: i64) -> Vec<gatehouse::auth::users::AuditEvent> {
    block_on(async {
        let udb = UserDb::connect(Some(db)).await.expect("connect");
        udb.events_of(user_id).await.expect("events")
    })
}

/// Every gateway refuses the bearer token and the cookie of every one of `sessions`.
fn all_refused(site: &Site, sessions: &[&Signed]) -> bool {
    site.ports().into_iter().all(|port| {
        sessions.iter().all(|s| {
            with_bearer(port, "/private/x", &s.access).status == 401
                && with_cookie(port, &s.cookie).status == 401
        })
    })
}

/// One account change through the CLI: two sessions of the user, used on every gateway
/// first (so live-session caches hold them), end everywhere; their refresh tokens are
/// refused; another user's session lives on; the audit row says what happened.
fn a_cli_change_ends_every_session_everywhere(b: Backend, args: &[&str], stdin: &str) {
    let Some(site) = Site::start(b, "") else {
        return;
    };
    let other = seed_users(&site.db, "accounts.test", &[(Role::Patient, "Otto")]).remove(0);
    let email = site.user.email.clone();
    let one = sign_in(site.port(), &email, PASSWORD);
    let two = sign_in(*site.ports().last().expect("port"), &email, PASSWORD);
    let bystander = sign_in(site.port(), &other.email, PASSWORD);
    for port in site.ports() {
        for s in [&one, &two, &bystander] {
            assert_eq!(with_bearer(port, "/private/x", &s.access).status, 200);
            assert_eq!(with_cookie(port, &s.cookie).status, 200);
        }
    }

    let mut full = args.to_vec();
    full.extend(["--email", email.as_str()]);
    let out = site.cli(&full, stdin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    if b == Backend::PostgresRedis {
        // The gateways' poll may have ended some first; the audit row counts all of them.
        assert!(stdout.contains("sessions ended here"), "{args:?}: {stdout}");
    } else {
        assert!(stdout.contains("within 1 s"), "{args:?}: {stdout}");
    }

    assert!(
        wait_until(REACH, || all_refused(&site, &[&one, &two])),
        "{args:?}: a session outlived the change on some gateway"
    );
    for s in [&one, &two] {
        let r = refresh(site.port(), &s.refresh);
        assert_eq!(r.status, 401, "{args:?}: refresh: {}", r.text());
    }
    for port in site.ports() {
        assert_eq!(
            with_bearer(port, "/private/x", &bystander.access).status,
            200,
            "{args:?}: bystander"
        );
    }

    // The audit row: kind, source cli, both sessions counted (by the CLI on Redis, by the
    // gateway's poll on the in-process store).
    let kind = match args[0] {
        "disable" => "user_disabled",
        "set-password" => "password_changed",
        "set-role" => "role_changed",
        "delete" => "user_deleted",
        _ => "sessions_revoked",
    };
    let counted = wait_until(REACH, || {
        audit(&site.db, site.user.id).iter().any(|e| {
            e.kind == kind && e.source.as_deref() == Some("cli") && e.sessions_ended == Some(2)
        })
    });
    assert!(
        counted,
        "{args:?}: audit rows: {:?}",
        audit(&site.db, site.user.id)
    );

    // What signing in does afterwards.
    match args[0] {
        "disable" | "delete" => {
            let r = login_as(site.port(), &email, PASSWORD, &[]);
            assert_eq!(r.status, 401, "{args:?}: {}", r.text());
        }
        "set-password" => {
            assert_eq!(login_as(site.port(), &email, PASSWORD, &[]).status, 401);
            let new = sign_in(site.port(), &email, stdin.trim());
            // A sign-in after the change is not ended by it (several polls later).
            std::thread::sleep(Duration::from_millis(600));
            for port in site.ports() {
                assert_eq!(with_bearer(port, "/private/x", &new.access).status, 200);
            }
            assert_eq!(refresh(site.port(), &new.refresh).status, 200);
        }
        "set-role" => {
            let r = login_as(site.port(), &email, PASSWORD, &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(json(&r)["user"]["role"], "doctor");
        }
        _ => {
            let new = sign_in(site.port(), &email, PASSWORD);
            std::thread::sleep(Duration::from_millis(600));
            assert_eq!(
                with_bearer(site.port(), "/private/x", &new.access).status,
                200
            );
        }
    }
}

fn disable_ends_every_session(b: Backend) {
    a_cli_change_ends_every_session_everywhere(b, &["disable"], "");
}

fn a_new_password_ends_every_session(b: Backend) {
    a_cli_change_ends_every_session_everywhere(b, &["set-password"], "a brand new passphrase\n");
}

fn a_role_change_ends_every_session(b: Backend) {
    a_cli_change_ends_every_session_everywhere(b, &["set-role", "--role", "doctor"], "");
}

fn deletion_ends_every_session(b: Backend) {
    a_cli_change_ends_every_session_everywhere(b, &["delete"], "");
}

fn revoke_sessions_ends_every_session(b: Backend) {
    a_cli_change_ends_every_session_everywhere(b, &["revoke-sessions"], "");
}

/// A disabled user cannot refresh, even before any gateway has read the change: refresh
/// looks at the account itself.
fn a_disabled_user_cannot_refresh(b: Backend) {
    let Some(site) = Site::start(b, "") else {
        return;
    };
    let s = sign_in(site.port(), &site.user.email, PASSWORD);
    block_on(async {
        let udb = UserDb::connect(Some(&site.db)).await.expect("connect");
        udb.set_disabled(&site.user.email, true)
            .await
            .expect("disable");
    });
    let r = refresh(site.port(), &s.refresh);
    assert_eq!(r.status, 401, "{}", r.text());
    // The refused refresh also ended the session.
    assert_eq!(
        with_bearer(site.port(), "/private/x", &s.access).status,
        401
    );
}

/// Activity keeps a browser's cookie session alive past the access TTL (10 s here): each
/// renewal — through `validate`, a page and a proxied request — re-issues the cookie with
/// the lifetime the store got; then inactivity past the idle timeout (12 s) ends it, refresh
/// cookie included.
fn activity_keeps_a_cookie_session_alive_and_inactivity_ends_it(b: Backend) {
    let policy = "  sessions: {access_ttl: 10s, idle_timeout: 12s, absolute_lifetime: 1h}\n";
    let Some(site) = Site::start(b, policy) else {
        return;
    };
    let port = site.port();
    let r = login_as(port, &site.user.email, PASSWORD, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(max_age(&r, SESSION_COOKIE), Some(10));
    assert_eq!(
        max_age(&r, REFRESH_COOKIE),
        Some(12),
        "the idle timeout, not 7 days"
    );
    assert_eq!(json(&r)["refresh_expires_in"], 12);
    let mut cookie = set_cookie_value(&r, SESSION_COOKIE).expect("cookie");
    let refresh_cookie = set_cookie_value(&r, REFRESH_COOKIE).expect("refresh cookie");

    // 6 s in (second half of the access TTL): a front end polling validate gets a new cookie.
    std::thread::sleep(Duration::from_secs(6));
    let c = format!("{SESSION_COOKIE}={cookie}");
    let v = get(port, "/api/v1/auth/validate", &[("Cookie", &c)]).expect("validate");
    assert_eq!(v.status, 200, "{}", v.text());
    assert_eq!(
        max_age(&v, SESSION_COOKIE),
        Some(10),
        "validate renews: {:?}",
        v.headers
    );
    cookie = set_cookie_value(&v, SESSION_COOKIE).expect("renewed cookie");

    // 12 s in: a page renews it.
    std::thread::sleep(Duration::from_secs(6));
    let c = format!("{SESSION_COOKIE}={cookie}");
    let page = get(port, "/mine", &[("Cookie", &c), ("Accept", "text/html")]).expect("page");
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        max_age(&page, SESSION_COOKIE),
        Some(10),
        "{:?}",
        page.headers
    );
    cookie = set_cookie_value(&page, SESSION_COOKIE).expect("renewed cookie");

    // 18 s in: a proxied request renews it again.
    std::thread::sleep(Duration::from_secs(6));
    let p = with_cookie(port, &cookie);
    assert_eq!(p.status, 200, "{}", p.text());
    assert_eq!(max_age(&p, SESSION_COOKIE), Some(10), "{:?}", p.headers);
    cookie = set_cookie_value(&p, SESSION_COOKIE).expect("renewed cookie");

    // 19 s in: past both the access TTL and the idle timeout counted from sign-in.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        with_cookie(port, &cookie).status,
        200,
        "kept alive by activity"
    );

    // Then 13 s without a request: over.
    std::thread::sleep(Duration::from_secs(13));
    assert_eq!(
        with_cookie(port, &cookie).status,
        401,
        "idle session still alive"
    );
    let rc = format!("{REFRESH_COOKIE}={refresh_cookie}");
    let r = request(
        port,
        "POST",
        "/api/v1/auth/refresh",
        &[("Cookie", &rc), ("Content-Type", "application/json")],
        b"{}",
    )
    .expect("refresh");
    assert_eq!(
        r.status,
        401,
        "refresh after the idle timeout: {}",
        r.text()
    );
}

on_both_backends!(
    disable_ends_every_session,
    a_new_password_ends_every_session,
    a_role_change_ends_every_session,
    deletion_ends_every_session,
    revoke_sessions_ends_every_session,
    a_disabled_user_cannot_refresh,
    activity_keeps_a_cookie_session_alive_and_inactivity_ends_it,
);

/// A Redis the CLI cannot reach: the command exits 1 and says exactly what was applied (the
/// database change and its record for the gateways), not a bare error.
#[test]
fn an_unreachable_redis_fails_the_command_and_says_what_was_applied() {
    let dir = TempDir::new("accounts-noredis");
    let db = dir.sqlite_url();
    let user = seed_users(&db, "accounts.test", &[(Role::Patient, "Pat")]).remove(0);
    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    let out = cli(&db, &dead, &["disable", "--email", &user.email], "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("disabled {} in the database", user.email))
            && err.contains("could not be ended in Redis"),
        "{err}"
    );
    let (disabled, revoked) = block_on(async {
        let udb = UserDb::connect(Some(&db)).await.expect("connect");
        let u = udb.find_by_id(user.id).await.expect("db").expect("user");
        (
            u.disabled,
            udb.sessions_valid_after(user.id).await.expect("db"),
        )
    });
    assert!(
        disabled && revoked > 0,
        "the database change is applied and recorded"
    );
}

#[test]
fn bad_input_to_the_account_commands_is_refused_with_a_message() {
    let dir = TempDir::new("accounts-bad");
    let db = dir.sqlite_url();
    let user = seed_users(&db, "accounts.test", &[(Role::Patient, "Pat")]).remove(0);
    let nobody = format!("nobody-{}@accounts.test", unique());
    for (args, stdin, want) in [
        (vec!["disable", "--email", nobody.as_str()], "", "no user"),
        (
            vec!["set-role", "--email", user.email.as_str(), "--role", "root"],
            "",
            "unknown role",
        ),
        (
            vec!["set-password", "--email", user.email.as_str()],
            "short\n",
            "password must have",
        ),
        (
            vec!["set-password", "--email", user.email.as_str()],
            "",
            "no password on stdin",
        ),
    ] {
        let out = cli(&db, "", &args, stdin);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Nothing was applied: the user still signs in with the old password, same role.
    let u = block_on(async {
        let udb = UserDb::connect(Some(&db)).await.expect("connect");
        assert_eq!(udb.sessions_valid_after(user.id).await.expect("db"), 0);
        udb.authenticate(&user.email, PASSWORD).await.expect("db")
    });
    assert_eq!(u.map(|u| u.role), Some(Role::Patient));
}

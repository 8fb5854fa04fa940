//! Test users and sessions: seeded straight into a user database, logged in through the
//! gateway; bearer and cookie shorthands.

use super::http::{get_ok, post_json, request_ok};
use super::upstream_and_client::Response;
use gatehouse::auth::users::{Role, UserDb};
use serde_json::json;

/// Every seeded user's password.
pub const PASSWORD: &str = "correct-horse-battery-staple";
/// The gateway's session cookie (the access token, for browsers).
pub const SESSION_COOKIE: &str = "predicthealth_session";
/// The gateway's refresh cookie.
pub const REFRESH_COOKIE: &str = "predicthealth_refresh";

/// A user added for one test.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub role: Role,
}

/// A string no other test (or run) uses.
pub fn unique() -> String {
    format!("{}-{:016x}", std::process::id(), rand::random::<u64>())
}

/// Runs a future to completion on a throwaway runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// Migrates the database at `db` and adds one user per `(role, display name)`, with
/// emails `{role}-{unique}@{domain}` and [`PASSWORD`].
pub fn seed_users(db: &str, domain: &str, users: &[(Role, &str)]) -> Vec<Account> {
    block_on(async {
        let udb = UserDb::connect(Some(db)).await.expect("connect user db");
        udb.migrate().await.expect("migrate user db");
        let mut out = Vec::new();
        for (role, name) in users {
            let email = format!("{}-{}@{domain}", role.as_str(), unique());
            let u = udb
                .add_user(&email, PASSWORD, *role, name)
                .await
                .expect("add user");
            out.push(Account {
                id: u.id,
                email: u.email,
                name: name.to_string(),
                role: *role,
            });
        }
        out
    })
}

/// Logs `email` in (with [`PASSWORD`]) through `POST /api/v1/auth/login`; returns the
/// access token.
pub fn login(port: u16, email: &str) -> String {
    let r = login_as(port, email, PASSWORD, &[]);
    assert_eq!(r.status, 200, "login {email}: {}", r.text());
    super::json(&r)["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token in {}", r.text()))
        .to_string()
}

/// `POST /api/v1/auth/login` with JSON credentials and `headers`; the raw answer.
pub fn login_as(port: u16, email: &str, password: &str, headers: &[(&str, &str)]) -> Response {
    let body = json!({"email": email, "password": password});
    post_json(port, "/api/v1/auth/login", &body, headers)
}

/// `POST /api/v1/auth/refresh` with the refresh token in a JSON body; the raw answer.
pub fn refresh(port: u16, refresh_token: &str) -> Response {
    let body = json!({ "refresh_token": refresh_token });
    post_json(port, "/api/v1/auth/refresh", &body, &[])
}

/// `Bearer TOKEN`, for an `Authorization` header.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `GET path` with `Authorization: Bearer token`.
pub fn with_bearer(port: u16, path: &str, token: &str) -> Response {
    get_ok(port, path, &[("Authorization", &bearer(token))])
}

/// `POST path` (no body) with `Authorization: Bearer token`.
pub fn post_bearer(port: u16, path: &str, token: &str) -> Response {
    request_ok(
        port,
        "POST",
        path,
        &[("Authorization", &bearer(token))],
        b"",
    )
}

/// `POST /api/v1/auth/logout` (`?all=true` when `all`) with the bearer token.
pub fn logout(port: u16, token: &str, all: bool) -> Response {
    let path = if all {
        "/api/v1/auth/logout?all=true"
    } else {
        "/api/v1/auth/logout"
    };
    post_bearer(port, path, token)
}

/// A signed-in user as the guard hands it to the request path (for calling gatehouse's
/// modules directly): user 42, a patient, session `s1`, bearer token `tok`.
pub fn identity() -> gatehouse::auth::guard::Identity {
    use gatehouse::auth::jwt::{Claims, TokenType};
    gatehouse::auth::guard::Identity {
        claims: Claims {
            sub: "42".into(),
            role: "patient".into(),
            sid: "s1".into(),
            jti: "j1".into(),
            iat: 0,
            nbf: 0,
            exp: i64::MAX,
            iss: "gatehouse".into(),
            aud: "predicthealth".into(),
            typ: TokenType::Access,
        },
        token: "tok".into(),
        via_cookie: false,
        renewed_cookie: None,
    }
}

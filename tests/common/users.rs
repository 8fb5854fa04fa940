//! Test users: seeded straight into a SQLite user database, logged in through the gateway.

use gatehouse::auth::users::{Role, UserDb};

/// Every seeded user's password.
pub const PASSWORD: &str = "correct-horse-battery-staple";

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

/// A fresh SQLite database URL in the temp folder.
pub fn temp_db_url(tag: &str) -> String {
    let path = std::env::temp_dir().join(format!("gatehouse-{tag}-{}-users.db", unique()));
    format!("sqlite://{}", path.display())
}

/// Migrates the SQLite database at `db` and adds one user per `(role, display name)`, with
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

/// Logs `email` in through `POST /api/v1/auth/login`; returns the access token.
pub fn login(port: u16, email: &str) -> String {
    let r = login_as(port, email, PASSWORD);
    assert_eq!(r.status, 200, "login {email}: {}", r.text());
    super::json(&r)["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token in {}", r.text()))
        .to_string()
}

/// `POST /api/v1/auth/login` with JSON credentials; the raw answer.
pub fn login_as(port: u16, email: &str, password: &str) -> super::Response {
    let body = serde_json::json!({"email": email, "password": password}).to_string();
    super::request(
        port,
        "POST",
        "/api/v1/auth/login",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .expect("POST /api/v1/auth/login")
}

/// `POST /api/v1/auth/refresh` with the refresh token in a JSON body; the raw answer.
pub fn refresh(port: u16, refresh_token: &str) -> super::Response {
    let body = serde_json::json!({ "refresh_token": refresh_token }).to_string();
    super::request(
        port,
        "POST",
        "/api/v1/auth/refresh",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .expect("POST /api/v1/auth/refresh")
}

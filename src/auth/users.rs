//! Users and the authentication audit trail, stored through sqlx.
//!
//! Owns: the `users` and `auth_events` tables, their migrations (embedded from
//! `migrations/postgres` and `migrations/sqlite`), argon2id password hashing and verification,
//! the Flask-era hash formats users are imported with (`gatehouse user import`, see
//! `import`) and their replacement by argon2id at the first successful login, the password
//! policy of new passwords ([`PasswordPolicy`]), and the mapping of database failures onto
//! [`UserError`].
//!
//! Does not own: tokens, sessions, cookies or rate limits (see the sibling modules), nor what an
//! HTTP client is told when something fails here.
//!
//! One [`UserDb`] talks to PostgreSQL (`postgres://…` or `postgresql://…`) or to an embedded,
//! bundled SQLite (`sqlite://path`, `sqlite:path`, `sqlite::memory:`, or a bare file path), with
//! the same SQL and the same behaviour. Every call gives up within a few seconds when the
//! database is unreachable ([`UserError::Unavailable`]) instead of hanging.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{ColumnIndex, Decode, Row, Type};
use tokio::sync::Semaphore;

const MAX_EVENTS_LISTED: i64 = 10_000;

// Queries are literals (sqlx 0.9 accepts only `&'static str` without an explicit audit marker).
macro_rules! user_columns {
    () => {
        "id, email, role, display_name, disabled, created_at, updated_at"
    };
}
const INSERT_USER: &str = concat!(
    "INSERT INTO users (email, password_hash, role, display_name, disabled, created_at, updated_at) ",
    "VALUES ($1, $2, $3, $4, FALSE, $5, $5) RETURNING ",
    user_columns!()
);
const SELECT_ALL_USERS: &str = concat!("SELECT ", user_columns!(), " FROM users ORDER BY id");
const SELECT_USER_BY_ID: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
const SELECT_USER_AND_HASH_BY_EMAIL: &str = concat!(
    "SELECT ",
    user_columns!(),
    ", password_hash FROM users WHERE email = $1"
);

pub use crate::config::role::Role;

impl FromStr for Role {
    type Err = UserError;

    /// Parses a role name, ignoring case and surrounding whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Role::ALL
            .into_iter()
            .find(|role| role.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| {
                UserError::InvalidInput(format!(
                    "unknown role {wanted:?}; valid roles: patient, doctor, institution, admin"
                ))
            })
    }
}

/// A user as stored, without the password hash.
#[derive(Debug, Clone, serde::Serialize)]
pub struct User {
    /// Database id; the `sub` of tokens.
    pub id: i64,
    /// Trimmed, lowercased email; unique.
    pub email: String,
    /// What the user may do.
    pub role: Role,
    /// Name shown in pages; may be empty.
    pub display_name: String,
    /// A disabled user cannot authenticate.
    pub disabled: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last change (password, disabled flag).
    pub updated_at: i64,
}

/// Kinds of audit events, stored by [`EventKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Password accepted.
    LoginOk,
    /// Password rejected, unknown email or disabled user.
    LoginFailed,
    /// Session ended by the user.
    Logout,
    /// Refresh token exchanged for new tokens.
    Refresh,
    /// An already used refresh token was presented again.
    RefreshReuse,
    /// Further attempts were refused (too many failures).
    Locked,
    /// An administrator disabled the account; its sessions ended.
    UserDisabled,
    /// The password was replaced; the user's sessions ended.
    PasswordChanged,
    /// The role was changed; the user's sessions ended.
    RoleChanged,
    /// The account was deleted; its sessions ended.
    UserDeleted,
    /// Every session of the user was ended at once (logout everywhere, `user revoke-sessions`).
    SessionsRevoked,
}

impl EventKind {
    /// The stored name: `login_ok`, `login_failed`, `logout`, `refresh`, `refresh_reuse`,
    /// `locked`, `user_disabled`, `password_changed`, `role_changed`, `user_deleted`,
    /// `sessions_revoked`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::UserDisabled => "user_disabled",
            EventKind::PasswordChanged => "password_changed",
            EventKind::RoleChanged => "role_changed",
            EventKind::UserDeleted => "user_deleted",
            EventKind::SessionsRevoked => "sessions_revoked",
            EventKind::LoginOk => "login_ok",
            EventKind::LoginFailed => "login_failed",
            EventKind::Logout => "logout",
            EventKind::Refresh => "refresh",
            EventKind::RefreshReuse => "refresh_reuse",
            EventKind::Locked => "locked",
        }
    }
}

/// A future running `body` against whichever pool `db` has (each arm is type-checked on its
/// own, so one body serves both backends), giving up after `OPERATION_TIMEOUT`. `?` in the
/// body converts into [`UserError`].
macro_rules! with_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        bounded(OPERATION_TIMEOUT, async {
            let result: Result<_, UserError> = match &$db.pool {
                Pool::Pg($pool) => $body,
                Pool::Sqlite($pool) => $body,
            };
            result
        })
    };
}

/// Handle on the user database. Cloning is cheap: clones share the pool.
#[derive(Clone)]
pub struct UserDb {
    pool: Pool,
    /// Bounds concurrent argon2 work (19 MiB and a core each) to the machine's parallelism.
    hashing: Arc<Semaphore>,
}

impl std::fmt::Debug for UserDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserDb")
            .field("backend", &self.backend())
            .finish()
    }
}

impl UserDb {
    /// Connects and opens one connection to prove the database is there.
    ///
    /// `url`: `postgres://…` / `postgresql://…` for PostgreSQL; `sqlite://path`, `sqlite:path`,
    /// `sqlite::memory:` or a bare path for SQLite; `None` or empty means the SQLite file
    /// [`DEFAULT_SQLITE_FILE`] in the working directory. SQLite files are created when missing
    /// and run in WAL mode with foreign keys on. Pools hold at most 10 connections and wait at
    /// most 2 s for one. Errors: `InvalidInput` for a malformed URL or unknown scheme,
    /// `Unavailable` when the database cannot be reached (after about 2 s, never a hang).
    pub async fn connect(url: Option<&str>) -> Result<UserDb, UserError> {
        let url = url.map(str::trim).filter(|u| !u.is_empty());
        let pool = match url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                // The URL may hold a password: never echo it.
                let options = PgConnectOptions::from_str(u)
                    .map_err(|_| UserError::InvalidInput("malformed PostgreSQL URL".into()))?;
                let pool = PgPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .idle_timeout(Some(Duration::from_secs(300)))
                    .connect_with(options);
                Pool::Pg(
                    bounded(CONNECT_TIMEOUT, pool)
                        .await
                        .map_err(cannot_connect)?,
                )
            }
            other => {
                let (options, in_memory) = sqlite_options(other)?;
                let pool_options = if in_memory {
                    // Every connection to a `:memory:` URL shares one database that lives only
                    // while a connection is open: keep exactly one, forever.
                    SqlitePoolOptions::new()
                        .max_connections(1)
                        .min_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None)
                } else {
                    SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS)
                };
                let pool = pool_options
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options);
                Pool::Sqlite(
                    bounded(CONNECT_TIMEOUT, pool)
                        .await
                        .map_err(cannot_connect)?,
                )
            }
        };
        let db = UserDb {
            pool,
            hashing: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        };
        // Compute the dummy hash now, in the background, so that the first unknown email
        // does not pay for it (which would make that one answer measurably slower).
        drop(tokio::task::spawn_blocking(dummy_hash));
        tracing::debug!(backend = db.backend(), "user database connected");
        Ok(db)
    }

    /// `db.system` of the OpenTelemetry conventions: `"postgresql"` or `"sqlite"`.
    pub fn db_system(&self) -> &'static str {
        match self.pool {
            Pool::Pg(_) => "postgresql",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Pg(_) => "postgres",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    /// Applies pending migrations; running it again is a no-op. Fails with `Other` when the
    /// database holds migrations this binary does not know or whose files changed.
    pub async fn migrate(&self) -> Result<(), UserError> {
        let source = Embedded(match self.pool {
            Pool::Pg(_) => PG_MIGRATIONS,
            Pool::Sqlite(_) => SQLITE_MIGRATIONS,
        });
        let migrator = Migrator::new(source)
            .await
            .map_err(|e| UserError::Other(e.to_string()))?;
        let run = async {
            let result = match &self.pool {
                Pool::Pg(pool) => migrator.run(pool).await,
                Pool::Sqlite(pool) => migrator.run(pool).await,
            };
            result.map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => UserError::from(e),
                other => UserError::Other(other.to_string()),
            })
        };
        // Migrations may wait on another instance's migration lock: allow longer.
        bounded(Duration::from_secs(30), run).await?;
        tracing::info!(backend = self.backend(), "user database migrated");
        Ok(())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), UserError> {
        with_pool!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
            Ok(())
        })
        .await
    }

    /// Creates a user with an argon2id hash of `password`.
    ///
    /// The email is trimmed and lowercased; it must have exactly one `@` with text on both
    /// sides, no whitespace or control characters, and at most 254 characters. The password
    /// needs at least 8 characters and at most 1024 bytes; the display name is trimmed and
    /// at most 200 characters. Errors: `InvalidInput`, `Duplicate`, `Unavailable`, `Other`.
    pub async fn add_user(
        &self,
        email: &str,
        password: &str,
        role: Role,
        display_name: &str,
    ) -> Result<User, UserError> {
        let email = normalize_email(email)?;
        check_password(password)?;
        let display_name = input::display_name(display_name)?;
        let hash = self.hash_password(password).await?;
        let now = unix_now();
        let user = with_pool!(self, |pool| {
            let row = sqlx::query(INSERT_USER)
                .bind(&email)
                .bind(&hash)
                .bind(role.as_str())
                .bind(display_name)
                .bind(now)
                .fetch_one(pool)
                .await?;
            Ok(user_from_row(&row)?)
        })
        .await?;
        tracing::info!(user_id = user.id, role = role.as_str(), "user added");
        Ok(user)
    }

    /// Every user, oldest first.
    pub async fn list_users(&self) -> Result<Vec<User>, UserError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(SELECT_ALL_USERS).fetch_all(pool).await?;
            Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
        })
        .await
    }

    /// The user with this email, in any letter case; `None` also for malformed emails.
    pub async fn find_by_email(&self, email: &str) -> Result<Option<User>, UserError> {
        let Ok(email) = normalize_email(email) else {
            return Ok(None);
        };
        Ok(self.fetch_by_email(&email).await?.map(|(user, _)| user))
    }

    /// The user with this id.
    pub async fn find_by_id(&self, id: i64) -> Result<Option<User>, UserError> {
        with_pool!(self, |pool| {
            let row = sqlx::query(SELECT_USER_BY_ID)
                .bind(id)
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(user_from_row).transpose()?)
        })
        .await
    }

    /// Disables or re-enables a user. Errors: `NotFound` when no user has this email.
    pub async fn set_disabled(&self, email: &str, disabled: bool) -> Result<(), UserError> {
        let email = normalize_email(email).map_err(|_| UserError::NotFound)?;
        let changed = with_pool!(self, |pool| {
            let sql = "UPDATE users SET disabled = $1, updated_at = $2 WHERE email = $3";
            let done = sqlx::query(sql)
                .bind(disabled)
                .bind(unix_now())
                .bind(&email)
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
        .await?;
        match changed {
            0 => Err(UserError::NotFound),
            _ => {
                tracing::info!(disabled, "user disabled flag changed");
                Ok(())
            }
        }
    }

    /// Replaces a user's password (same rules as [`UserDb::add_user`]).
    /// Errors: `InvalidInput`, `NotFound`, `Unavailable`, `Other`.
    pub async fn set_password(&self, email: &str, password: &str) -> Result<(), UserError> {
        let email = normalize_email(email).map_err(|_| UserError::NotFound)?;
        check_password(password)?;
        let hash = self.hash_password(password).await?;
        let changed = with_pool!(self, |pool| {
            let sql = "UPDATE users SET password_hash = $1, updated_at = $2 WHERE email = $3";
            let done = sqlx::query(sql)
                .bind(&hash)
                .bind(unix_now())
                .bind(&email)
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
        .await?;
        match changed {
            0 => Err(UserError::NotFound),
            _ => {
                tracing::info!("user password changed");
                Ok(())
            }
        }
    }

    /// Checks a password: `Ok(Some(user))` when it matches an enabled user; `Ok(None)` for an
    /// unknown or malformed email, a wrong password or a disabled user.
    ///
    /// Every `Ok(None)` costs one argon2 verification, against a fixed dummy hash when there is
    /// no stored one, so timing does not reveal which emails exist. Errors only when the
    /// database fails (`Unavailable`, `Other`) or a stored hash is corrupt (`Other`).
    ///
    /// A match on an imported hash (bcrypt, werkzeug pbkdf2 or scrypt) replaces it with an
    /// argon2id hash before answering; both the API and the portal logins come through here.
    pub async fn authenticate(
        &self,
        email: &str,
        password: &str,
    ) -> Result<Option<User>, UserError> {
        let found = match normalize_email(email) {
            Ok(email) => self.fetch_by_email(&email).await?,
            Err(_) => None,
        };
        let stored_hash = found.as_ref().map(|(_, hash)| hash.clone());
        let pw = password.to_owned();
        let verified = self
            .blocking_hash_work(move || verify_password(stored_hash.as_deref(), &pw))
            .await??;
        match (found, verified) {
            (Some((user, old_hash)), Verified::Yes { rehash }) if !user.disabled => {
                if rehash {
                    self.upgrade_hash(user.id, &old_hash, password).await;
                }
                Ok(Some(user))
            }
            _ => Ok(None),
        }
    }

    /// After a successful login on an imported hash (bcrypt, pbkdf2, scrypt): stores an
    /// argon2id hash of the same password in its place, unless the hash changed meanwhile
    /// (a concurrent new password wins). Not a password change: sessions go on, nothing is
    /// audited, and a failure only leaves the old hash for the next login.
    async fn upgrade_hash(&self, user_id: i64, old_hash: &str, password: &str) {
        let upgraded = async {
            let new_hash = self.hash_password(password).await?;
            with_pool!(self, |pool| {
                let done = sqlx::query(
                    "UPDATE users SET password_hash = $1 WHERE id = $2 AND password_hash = $3",
                )
                .bind(&new_hash)
                .bind(user_id)
                .bind(old_hash)
                .execute(pool)
                .await?;
                Ok(done.rows_affected())
            })
            .await
        };
        match upgraded.await {
            Ok(n) => tracing::info!(
                user_id,
                upgraded = n == 1,
                "imported password hash replaced by argon2id"
            ),
            Err(e) => {
                tracing::warn!(user_id, error = %e, "could not replace an imported password hash")
            }
        }
    }

    /// Appends an audit event of the gateway's endpoints (source `api`) at the current time.
    /// `email` is the one attempted (it may match no user); text fields are cut to 512 bytes
    /// and stripped of control characters. `user_id` is kept as given, also for a user that
    /// no longer exists (the trail outlives deleted accounts). Errors: `Unavailable`, `Other`.
    pub async fn record_event(
        &self,
        kind: EventKind,
        user_id: Option<i64>,
        email: Option<&str>,
        client_ip: Option<&str>,
        user_agent: Option<&str>,
    ) -> Result<(), UserError> {
        let [email, client_ip, user_agent] = [email, client_ip, user_agent].map(|f| f.map(clean));
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO auth_events (at, user_id, email, kind, client_ip, user_agent, source) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'api')",
            )
            .bind(unix_now())
            .bind(user_id)
            .bind(email.as_deref())
            .bind(kind.as_str())
            .bind(client_ip.as_deref())
            .bind(user_agent.as_deref())
            .execute(pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// The latest `limit` events (at most 10 000) as `(at, user_id, kind)`, most recent first.
    pub async fn recent_events(
        &self,
        limit: i64,
    ) -> Result<Vec<(i64, Option<i64>, String)>, UserError> {
        // A negative LIMIT means "no limit" to SQLite and is an error to PostgreSQL.
        let limit = limit.clamp(0, MAX_EVENTS_LISTED);
        with_pool!(self, |pool| {
            let sql =
                "SELECT at, user_id, kind FROM auth_events ORDER BY at DESC, id DESC LIMIT $1";
            let rows = sqlx::query(sql).bind(limit).fetch_all(pool).await?;
            let events = rows
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            Ok(events)
        })
        .await
    }

    /// The user and stored password hash for an already normalized email.
    async fn fetch_by_email(&self, email: &str) -> Result<Option<(User, String)>, UserError> {
        with_pool!(self, |pool| {
            let row = sqlx::query(SELECT_USER_AND_HASH_BY_EMAIL)
                .bind(email)
                .fetch_optional(pool)
                .await?;
            Ok(match row {
                Some(row) => Some((user_from_row(&row)?, row.try_get("password_hash")?)),
                None => None,
            })
        })
        .await
    }

    async fn hash_password(&self, password: &str) -> Result<String, UserError> {
        let password = password.to_owned();
        self.blocking_hash_work(move || hash_password(&password))
            .await?
    }

    /// Runs argon2 work off the async threads, a bounded number at a time.
    async fn blocking_hash_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, UserError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| UserError::Other(e.to_string()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| UserError::Other(format!("password hashing task failed: {e}")))
    }
}

fn user_from_row<R: Row>(row: &R) -> Result<User, sqlx::Error>
where
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    let role: String = row.try_get("role")?;
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        role: role
            .parse()
            .map_err(|e: UserError| sqlx::Error::ColumnDecode {
                index: "role".into(),
                source: e.into(),
            })?,
        display_name: row.try_get("display_name")?,
        disabled: row.try_get("disabled")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Unix milliseconds (session revocations compare session starts at this resolution).
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl UserDb {
    /// The pool itself, for the access audit's tables (`crate::audit::store`).
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// A migrated SQLite database in a fresh temporary file, for unit tests; the file's path
/// (the caller removes it).
#[cfg(test)]
pub(crate) async fn temp_sqlite(tag: &str) -> (UserDb, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "gatehouse-{tag}-{}-{}.db",
        std::process::id(),
        rand::random::<u64>()
    ));
    let db = UserDb::connect(Some(&format!("sqlite://{}", path.display())))
        .await
        .expect("sqlite");
    db.migrate().await.expect("migrate");
    (db, path)
}

mod accounts;
mod error;
mod formats;
mod hashing;
pub mod import;
mod input;
mod mfa;
mod policy;
mod pool;
pub use accounts::{AccountChange, Applied, AuditEvent, Revocation, Source};
pub use error::UserError;
use hashing::{dummy_hash, hash_password, verify_password, Verified};
use input::{check_password, clean};
pub use input::{display_name, normalize_email};
pub use mfa::StoredFactor;
pub use policy::{PasswordPolicy, Weakness};
/// The pool, for the access audit (`crate::audit::store`), whose tables live in this database.
pub(crate) use pool::Pool as DbPool;
pub use pool::DEFAULT_SQLITE_FILE;
use pool::{
    bounded, cannot_connect, sqlite_options, Embedded, Pool, ACQUIRE_TIMEOUT, CONNECT_TIMEOUT,
    MAX_CONNECTIONS, OPERATION_TIMEOUT, PG_MIGRATIONS, SQLITE_MIGRATIONS,
};

#[cfg(test)]
mod tests {
    use super::input::MAX_PASSWORD_BYTES;
    use super::*;
    use sqlx::Connection;
    use std::future::Future;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    const PASSWORD: &str = "correct horse battery";

    /// A name no other test (or test process) uses.
    fn unique(prefix: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}_{}_{n}_{nanos}", std::process::id())
    }

    #[derive(Debug, Clone, Copy)]
    enum Backend {
        SqliteFile,
        SqliteMemory,
        Postgres,
    }

    fn postgres_url() -> Option<String> {
        std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
    }

    /// `url` with its database name replaced.
    fn with_database(url: &str, name: &str) -> String {
        let (base, query) = url.split_at(url.find('?').unwrap_or(url.len()));
        let authority_start = base.find("://").map_or(0, |i| i + 3);
        match base[authority_start..].find('/') {
            Some(slash) => format!("{}/{name}{query}", &base[..authority_start + slash]),
            None => format!("{base}/{name}{query}"),
        }
    }

    /// `url` with its `host:port` replaced (user and password kept).
    fn with_host_port(url: &str, host_port: &str) -> String {
        let start = url.find("://").map_or(0, |i| i + 3);
        let end = url[start..]
            .find(['/', '?'])
            .map_or(url.len(), |i| start + i);
        let host_start = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
        format!("{}{host_port}{}", &url[..host_start], &url[end..])
    }

    /// Runs `behaviour` on a fresh, migrated database of `backend`, then removes it.
    /// Postgres runs are skipped (with a note) when `DATABASE_URL` is not a postgres URL.
    async fn run<F, Fut>(backend: Backend, behaviour: F)
    where
        F: FnOnce(UserDb) -> Fut,
        Fut: Future<Output = ()>,
    {
        match backend {
            Backend::SqliteMemory => {
                let db = UserDb::connect(Some("sqlite::memory:")).await.unwrap();
                db.migrate().await.unwrap();
                behaviour(db).await;
            }
            Backend::SqliteFile => {
                let dir = std::env::temp_dir().join(unique("gatehouse_users"));
                std::fs::create_dir_all(&dir).unwrap();
                let url = format!("sqlite://{}", dir.join("users.db").display());
                let db = UserDb::connect(Some(&url)).await.unwrap();
                db.migrate().await.unwrap();
                behaviour(db.clone()).await;
                if let Pool::Sqlite(pool) = &db.pool {
                    pool.close().await;
                }
                std::fs::remove_dir_all(&dir).unwrap();
            }
            Backend::Postgres => {
                let Some(admin_url) = postgres_url() else {
                    eprintln!("DATABASE_URL is not a postgres URL: skipping the postgres run");
                    return;
                };
                let name = unique("gatehouse_users");
                let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let db = UserDb::connect(Some(&with_database(&admin_url, &name)))
                    .await
                    .unwrap();
                assert_eq!(db.backend(), "postgres");
                db.migrate().await.unwrap();
                behaviour(db.clone()).await;
                if let Pool::Pg(pool) = &db.pool {
                    pool.close().await;
                }
                sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
            }
        }
    }

    /// For each behaviour `b`, tests `b::sqlite_file`, `b::sqlite_memory` and `b::postgres`.
    macro_rules! on_every_backend {
        ($($behaviour:ident),* $(,)?) => {$(
            mod $behaviour {
                use super::{run, Backend};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_file() {
                    run(Backend::SqliteFile, super::$behaviour).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_memory() {
                    run(Backend::SqliteMemory, super::$behaviour).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    run(Backend::Postgres, super::$behaviour).await;
                }
            }
        )*};
    }

    on_every_backend!(
        migrating_twice_is_a_no_op,
        added_users_are_listed_and_found,
        email_is_unique_in_any_case,
        invalid_input_is_rejected,
        authenticate_accepts_only_the_right_password_of_an_enabled_user,
        set_password_replaces_the_old_one,
        unknown_users_are_not_found,
        events_are_listed_newest_first,
        concurrent_adds_all_succeed,
    );

    async fn migrating_twice_is_a_no_op(db: UserDb) {
        db.migrate().await.unwrap();
        db.migrate().await.unwrap();
        db.ping().await.unwrap();
        assert!(db.list_users().await.unwrap().is_empty());
    }

    async fn added_users_are_listed_and_found(db: UserDb) {
        let before = unix_now();
        let ada = db
            .add_user("  Ada@Example.ORG ", PASSWORD, Role::Doctor, " Ada L. ")
            .await
            .unwrap();
        assert_eq!(ada.email, "ada@example.org");
        assert_eq!(ada.role, Role::Doctor);
        assert_eq!(ada.display_name, "Ada L.");
        assert!(!ada.disabled);
        assert!(ada.created_at >= before && ada.created_at == ada.updated_at);
        let bob = db
            .add_user("bob@example.org", PASSWORD, Role::Patient, "")
            .await
            .unwrap();
        assert!(bob.id > ada.id);

        let listed: Vec<_> = db.list_users().await.unwrap();
        let emails: Vec<_> = listed.iter().map(|u| u.email.as_str()).collect();
        assert_eq!(emails, ["ada@example.org", "bob@example.org"]);
        assert_eq!(listed[1].role, Role::Patient);

        let found = db.find_by_email("ADA@example.org").await.unwrap().unwrap();
        assert_eq!((found.id, found.display_name.as_str()), (ada.id, "Ada L."));
        let by_id = db.find_by_id(bob.id).await.unwrap().unwrap();
        assert_eq!(by_id.email, "bob@example.org");
        assert!(db.find_by_email("eve@example.org").await.unwrap().is_none());
        assert!(db.find_by_email("not an email").await.unwrap().is_none());
        assert!(db.find_by_id(bob.id + 1000).await.unwrap().is_none());
    }

    async fn email_is_unique_in_any_case(db: UserDb) {
        db.add_user("carol@example.org", PASSWORD, Role::Institution, "")
            .await
            .unwrap();
        let again = db
            .add_user(" CAROL@Example.org", PASSWORD, Role::Admin, "")
            .await;
        assert!(matches!(again, Err(UserError::Duplicate)), "{again:?}");
        assert_eq!(db.list_users().await.unwrap().len(), 1);
    }

    async fn invalid_input_is_rejected(db: UserDb) {
        let long_email = format!("{}@example.org", "a".repeat(250));
        for email in [
            "",
            "no-at-sign",
            "two@@example.org",
            "a@b@example.org",
            "@example.org",
            "dan@",
            "dan smith@example.org",
            "dan\0@example.org",
            long_email.as_str(),
        ] {
            let result = db.add_user(email, PASSWORD, Role::Patient, "").await;
            assert!(
                matches!(result, Err(UserError::InvalidInput(_))),
                "{email:?}: {result:?}"
            );
        }
        let too_long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        for password in ["", "short", "sevenÄÄ", too_long.as_str()] {
            let result = db
                .add_user("dan@example.org", password, Role::Patient, "")
                .await;
            assert!(
                matches!(result, Err(UserError::InvalidInput(_))),
                "{password:?}: {result:?}"
            );
        }
        let bad_name = db
            .add_user("dan@example.org", PASSWORD, Role::Patient, "a\nb")
            .await;
        assert!(matches!(bad_name, Err(UserError::InvalidInput(_))));
        // Exactly eight characters (more bytes) and exactly 1024 bytes are fine.
        db.add_user("dan@example.org", "ééééééé1", Role::Patient, "")
            .await
            .unwrap();
        let longest = "y".repeat(MAX_PASSWORD_BYTES);
        db.add_user("erin@example.org", &longest, Role::Patient, "")
            .await
            .unwrap();
        assert_eq!(db.list_users().await.unwrap().len(), 2);
    }

    async fn authenticate_accepts_only_the_right_password_of_an_enabled_user(db: UserDb) {
        let fay = db
            .add_user("fay@example.org", PASSWORD, Role::Patient, "Fay")
            .await
            .unwrap();
        let ok = db.authenticate(" FAY@example.org", PASSWORD).await.unwrap();
        assert_eq!(ok.map(|u| u.id), Some(fay.id));
        assert!(db
            .authenticate("fay@example.org", "wrong password")
            .await
            .unwrap()
            .is_none());
        assert!(db
            .authenticate("nobody@example.org", PASSWORD)
            .await
            .unwrap()
            .is_none());
        assert!(db
            .authenticate("not an email", PASSWORD)
            .await
            .unwrap()
            .is_none());
        assert!(db
            .authenticate("fay@example.org", "")
            .await
            .unwrap()
            .is_none());

        db.set_disabled("Fay@Example.org", true).await.unwrap();
        assert!(db.find_by_id(fay.id).await.unwrap().unwrap().disabled);
        assert!(db
            .authenticate("fay@example.org", PASSWORD)
            .await
            .unwrap()
            .is_none());
        db.set_disabled("fay@example.org", false).await.unwrap();
        let back = db.authenticate("fay@example.org", PASSWORD).await.unwrap();
        assert!(back.is_some_and(|u| !u.disabled));
    }

    async fn set_password_replaces_the_old_one(db: UserDb) {
        db.add_user("gus@example.org", PASSWORD, Role::Admin, "")
            .await
            .unwrap();
        let short = db.set_password("gus@example.org", "short").await;
        assert!(matches!(short, Err(UserError::InvalidInput(_))));
        db.set_password("GUS@example.org", "a brand new secret")
            .await
            .unwrap();
        assert!(db
            .authenticate("gus@example.org", PASSWORD)
            .await
            .unwrap()
            .is_none());
        let user = db
            .authenticate("gus@example.org", "a brand new secret")
            .await;
        assert_eq!(user.unwrap().map(|u| u.role), Some(Role::Admin));
    }

    async fn unknown_users_are_not_found(db: UserDb) {
        let disabled = db.set_disabled("nobody@example.org", true).await;
        assert!(matches!(disabled, Err(UserError::NotFound)), "{disabled:?}");
        let password = db.set_password("nobody@example.org", PASSWORD).await;
        assert!(matches!(password, Err(UserError::NotFound)), "{password:?}");
        let malformed = db.set_disabled("not an email", true).await;
        assert!(
            matches!(malformed, Err(UserError::NotFound)),
            "{malformed:?}"
        );
        // The audit trail keeps ids of users that are gone (deleted accounts).
        let event = db
            .record_event(EventKind::LoginOk, Some(424_242), None, None, None)
            .await;
        assert!(event.is_ok(), "{event:?}");
    }

    async fn events_are_listed_newest_first(db: UserDb) {
        assert!(db.recent_events(10).await.unwrap().is_empty());
        let hal = db
            .add_user("hal@example.org", PASSWORD, Role::Doctor, "")
            .await
            .unwrap();
        let before = unix_now();
        db.record_event(
            EventKind::LoginFailed,
            None,
            Some("Nobody@Example.org"),
            Some("203.0.113.9"),
            Some("curl/8.0"),
        )
        .await
        .unwrap();
        db.record_event(
            EventKind::LoginOk,
            Some(hal.id),
            Some("hal@example.org"),
            None,
            None,
        )
        .await
        .unwrap();
        // Hostile text is stored safely: NUL (which PostgreSQL refuses) and huge values.
        let huge = format!("agent\0{}", "z".repeat(10_000));
        db.record_event(
            EventKind::RefreshReuse,
            Some(hal.id),
            None,
            None,
            Some(&huge),
        )
        .await
        .unwrap();
        for kind in [EventKind::Logout, EventKind::Refresh, EventKind::Locked] {
            db.record_event(kind, Some(hal.id), None, None, None)
                .await
                .unwrap();
        }

        let events = db.recent_events(100).await.unwrap();
        let kinds: Vec<_> = events.iter().map(|(_, _, kind)| kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "locked",
                "refresh",
                "logout",
                "refresh_reuse",
                "login_ok",
                "login_failed"
            ]
        );
        assert_eq!(events[4].1, Some(hal.id));
        assert_eq!(events[5].1, None);
        assert!(events.iter().all(|(at, _, _)| *at >= before));
        assert_eq!(db.recent_events(2).await.unwrap(), events[..2]);
        assert!(db.recent_events(0).await.unwrap().is_empty());
        assert!(db.recent_events(-1).await.unwrap().is_empty());
    }

    async fn concurrent_adds_all_succeed(db: UserDb) {
        let adds = (0..6).map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let email = format!("user{i}@example.org");
                db.add_user(&email, PASSWORD, Role::Patient, "").await?;
                db.record_event(EventKind::LoginOk, None, Some(&email), None, None)
                    .await
            })
        });
        for add in adds.collect::<Vec<_>>() {
            add.await.unwrap().unwrap();
        }
        assert_eq!(db.list_users().await.unwrap().len(), 6);
        assert_eq!(db.recent_events(100).await.unwrap().len(), 6);
    }

    #[tokio::test]
    async fn sqlite_file_is_created_and_keeps_users() {
        let dir = std::env::temp_dir().join(unique("gatehouse_users"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("new.db");
        let url = format!("sqlite://{}", path.display());
        let db = UserDb::connect(Some(&url)).await.unwrap();
        assert_eq!(db.backend(), "sqlite");
        assert!(path.exists());
        db.migrate().await.unwrap();
        db.add_user("ivy@example.org", PASSWORD, Role::Patient, "")
            .await
            .unwrap();
        drop(db);
        // A bare path means a SQLite file too.
        let reopened = UserDb::connect(Some(path.to_str().unwrap())).await.unwrap();
        reopened.migrate().await.unwrap();
        assert!(reopened
            .find_by_email("ivy@example.org")
            .await
            .unwrap()
            .is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn unsupported_urls_are_invalid_input() {
        for url in [
            "mysql://root@localhost/db",
            "postgres://user:pw@host:notaport/db",
        ] {
            let result = UserDb::connect(Some(url)).await;
            let err = result.unwrap_err();
            assert!(matches!(err, UserError::InvalidInput(_)), "{url}: {err:?}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
    }

    async fn assert_unavailable_quickly(url: &str) {
        let started = Instant::now();
        let result = UserDb::connect(Some(url)).await;
        let elapsed = started.elapsed();
        assert!(
            matches!(result, Err(UserError::Unavailable(_))),
            "{result:?}"
        );
        assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_locked_sqlite_file_is_unavailable_after_the_busy_timeout() {
        let dir = std::env::temp_dir().join(unique("gatehouse_users"));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("users.db").display());
        let db = UserDb::connect(Some(&url)).await.unwrap();
        db.migrate().await.unwrap();
        db.add_user("kim@example.org", PASSWORD, Role::Patient, "")
            .await
            .unwrap();
        let mut other_writer = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut other_writer)
            .await
            .unwrap();
        // Timed without argon2 work, which is slow in debug builds.
        let started = Instant::now();
        let result = db.set_disabled("kim@example.org", true).await;
        let elapsed = started.elapsed();
        assert!(
            matches!(result, Err(UserError::Unavailable(_))),
            "{result:?}"
        );
        assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
        // WAL: readers are not blocked by the writer.
        assert!(!db.list_users().await.unwrap()[0].disabled);
        sqlx::query("ROLLBACK")
            .execute(&mut other_writer)
            .await
            .unwrap();
        db.set_disabled("kim@example.org", true).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn unopenable_sqlite_file_is_unavailable() {
        let missing = std::env::temp_dir()
            .join(unique("no_such_dir"))
            .join("users.db");
        assert_unavailable_quickly(&format!("sqlite://{}", missing.display())).await;
    }

    #[tokio::test]
    async fn connecting_to_a_closed_port_fails_fast() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        assert_unavailable_quickly(&format!("postgres://postgres@127.0.0.1:{port}/gatehouse"))
            .await;
    }

    #[tokio::test]
    async fn connecting_to_a_silent_server_fails_fast() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        assert_unavailable_quickly(&format!("postgres://postgres@127.0.0.1:{port}/gatehouse"))
            .await;
        silent.abort();
    }

    #[tokio::test]
    async fn missing_postgres_database_is_unavailable() {
        let Some(url) = postgres_url() else {
            eprintln!("DATABASE_URL is not a postgres URL: skipping");
            return;
        };
        assert_unavailable_quickly(&with_database(&url, &unique("no_such_database"))).await;
    }

    /// A TCP relay to `target`; aborting the returned task closes the listener and every
    /// relayed connection, as a stopped server would.
    async fn relay(target: String) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        (addr, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopped_postgres_gives_unavailable_within_the_acquire_timeout() {
        let Some(url) = postgres_url() else {
            eprintln!("DATABASE_URL is not a postgres URL: skipping");
            return;
        };
        let options = PgConnectOptions::from_str(&url).unwrap();
        let target = format!("{}:{}", options.get_host(), options.get_port());
        if target.starts_with('/') {
            eprintln!("DATABASE_URL uses a unix socket: skipping");
            return;
        }
        let (addr, server) = relay(target).await;
        let db = UserDb::connect(Some(&with_host_port(&url, &addr.to_string())))
            .await
            .unwrap();
        db.ping().await.unwrap();
        server.abort();
        let _ = server.await;
        for _ in 0..2 {
            let started = Instant::now();
            let ping = db.ping().await;
            assert!(matches!(ping, Err(UserError::Unavailable(_))), "{ping:?}");
            let found = db.find_by_id(1).await;
            assert!(matches!(found, Err(UserError::Unavailable(_))), "{found:?}");
            let elapsed = started.elapsed();
            assert!(
                elapsed < Duration::from_secs(6),
                "two calls took {elapsed:?}"
            );
        }
    }

    #[test]
    fn url_helpers_replace_the_right_part() {
        let url = "postgres://u:p@127.0.0.1:5432/gatehouse_test?sslmode=disable";
        assert_eq!(
            with_database(url, "other"),
            "postgres://u:p@127.0.0.1:5432/other?sslmode=disable"
        );
        assert_eq!(
            with_host_port(url, "127.0.0.1:9"),
            "postgres://u:p@127.0.0.1:9/gatehouse_test?sslmode=disable"
        );
    }

    #[test]
    fn roles_parse_and_serialize_by_lowercase_name() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
            assert_eq!(
                serde_json::to_string(&role).unwrap(),
                format!("\"{}\"", role.as_str())
            );
        }
        assert_eq!(" Doctor ".parse::<Role>().unwrap(), Role::Doctor);
        let err = "nurse".parse::<Role>().unwrap_err().to_string();
        assert!(
            err.contains("nurse") && err.contains("patient, doctor, institution, admin"),
            "{err}"
        );
    }

    #[test]
    fn event_kinds_use_the_stored_names() {
        let names = [
            EventKind::LoginOk,
            EventKind::LoginFailed,
            EventKind::Logout,
            EventKind::Refresh,
            EventKind::RefreshReuse,
            EventKind::Locked,
        ]
        .map(|k| k.as_str());
        assert_eq!(
            names,
            [
                "login_ok",
                "login_failed",
                "logout",
                "refresh",
                "refresh_reuse",
                "locked"
            ]
        );
    }
}

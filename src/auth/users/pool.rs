//! The connection pool of [`super::UserDb`]: connecting to PostgreSQL or SQLite within fixed
//! timeouts, and the embedded migrations.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationSource, MigrationType};
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};

use super::UserError;

/// Database used when no URL is configured: a SQLite file in the working directory.
pub const DEFAULT_SQLITE_FILE: &str = "gatehouse.db";

/// How long a call waits for a pooled connection (or to open one) before `Unavailable`.
pub(super) const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound on `connect`, should the driver not honour the acquire timeout.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound on one database operation, so a silent network cannot hang a caller.
pub(super) const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SQLite waits for a competing writer's lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(2);
pub(super) const MAX_CONNECTIONS: u32 = 10;

/// Migrations as `(version, description, sql)`; a unit test checks that these match the files.
pub(super) const PG_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "users and auth events",
        include_str!("../../../migrations/postgres/0001_users_and_auth_events.sql"),
    ),
    (
        2,
        "account changes end sessions",
        include_str!("../../../migrations/postgres/0002_account_changes_end_sessions.sql"),
    ),
    (
        3,
        "mfa",
        include_str!("../../../migrations/postgres/0003_mfa.sql"),
    ),
    (
        4,
        "access audit",
        include_str!("../../../migrations/postgres/0004_access_audit.sql"),
    ),
];
pub(super) const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "users and auth events",
        include_str!("../../../migrations/sqlite/0001_users_and_auth_events.sql"),
    ),
    (
        2,
        "account changes end sessions",
        include_str!("../../../migrations/sqlite/0002_account_changes_end_sessions.sql"),
    ),
    (
        3,
        "mfa",
        include_str!("../../../migrations/sqlite/0003_mfa.sql"),
    ),
    (
        4,
        "access audit",
        include_str!("../../../migrations/sqlite/0004_access_audit.sql"),
    ),
];

#[derive(Clone)]
pub(crate) enum Pool {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

/// Embedded migrations as a sqlx source; same checksums as the `sqlx migrate` CLI computes.
#[derive(Debug)]
pub(super) struct Embedded(pub(super) &'static [(i64, &'static str, &'static str)]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 's>>
    {
        let migrations = self
            .0
            .iter()
            .map(|&(version, description, sql)| {
                let (description, sql) = (Cow::Borrowed(description), Cow::Borrowed(sql));
                Migration::new(version, description, MigrationType::Simple, sql, false)
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// SQLite connect options for a non-PostgreSQL URL, and whether the database is in memory.
pub(super) fn sqlite_options(url: Option<&str>) -> Result<(SqliteConnectOptions, bool), UserError> {
    let url = url.unwrap_or(DEFAULT_SQLITE_FILE);
    let options = if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url)
            .map_err(|e| UserError::InvalidInput(format!("malformed SQLite URL: {e}")))?
    } else if url.contains("://") {
        return Err(UserError::InvalidInput(
            "unsupported database URL: use postgres://, postgresql:// or sqlite:".into(),
        ));
    } else {
        SqliteConnectOptions::new().filename(url)
    };
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let options = options
        .create_if_missing(true)
        .foreign_keys(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    Ok((options, in_memory))
}

/// Any failure to open the first connection (refused, unknown database, bad credentials, a
/// SQLite file that cannot be opened) means the database cannot be reached.
pub(super) fn cannot_connect(err: UserError) -> UserError {
    match err {
        UserError::Unavailable(msg) | UserError::Other(msg) => UserError::Unavailable(msg),
        other => UserError::Unavailable(other.to_string()),
    }
}

/// Gives up with `Unavailable` when `fut` takes longer than `limit`.
pub(super) async fn bounded<T, E: Into<UserError>>(
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, UserError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(UserError::Unavailable(format!(
            "no answer within {} ms",
            limit.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn default_database_is_the_sqlite_file_in_the_working_directory() {
        let (options, in_memory) = sqlite_options(None).unwrap();
        assert_eq!(options.get_filename(), PathBuf::from(DEFAULT_SQLITE_FILE));
        assert!(!in_memory);
        assert!(sqlite_options(Some("sqlite::memory:")).unwrap().1);
    }

    /// Every migration file is embedded, with the version and description sqlx derives from
    /// its name, and nothing else is.
    #[test]
    fn embedded_migrations_match_the_files() {
        for (dir, embedded) in [("postgres", PG_MIGRATIONS), ("sqlite", SQLITE_MIGRATIONS)] {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let mut files: Vec<_> = std::fs::read_dir(&path)
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "sql"))
                .collect();
            files.sort();
            let on_disk: Vec<(i64, String, String)> = files
                .iter()
                .map(|file| {
                    let stem = file.file_stem().unwrap().to_str().unwrap();
                    let (version, description) = stem.split_once('_').unwrap();
                    (
                        version.parse().unwrap(),
                        description.replace('_', " "),
                        std::fs::read_to_string(file).unwrap(),
                    )
                })
                .collect();
            let embedded: Vec<(i64, String, String)> = embedded
                .iter()
                .map(|&(v, d, sql)| (v, d.to_owned(), sql.to_owned()))
                .collect();
            assert_eq!(on_disk, embedded, "migrations/{dir}");
        }
    }
}

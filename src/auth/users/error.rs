//! [`UserError`]: why a user-database call failed, and how database failures map onto it.

use sqlx::sqlite::SqliteError;

/// Why a user-database call failed. Messages never contain passwords or database URLs.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The database cannot be reached, or no connection was free within the timeout.
    #[error("user database unavailable: {0}")]
    Unavailable(String),
    /// A user with this email (in any letter case) already exists.
    #[error("a user with this email already exists")]
    Duplicate,
    /// No such user.
    #[error("no such user")]
    NotFound,
    /// The caller's input was rejected; the message says why.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Anything else: a failed query, a broken migration, a corrupt row.
    #[error("user database error: {0}")]
    Other(String),
}

impl From<sqlx::Error> for UserError {
    fn from(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match err {
            E::PoolTimedOut => UserError::Unavailable("no connection within the timeout".into()),
            E::PoolClosed => UserError::Unavailable("connection pool is closed".into()),
            E::Io(e) => UserError::Unavailable(e.to_string()),
            E::Tls(e) => UserError::Unavailable(format!("tls: {e}")),
            E::WorkerCrashed => UserError::Unavailable("database worker crashed".into()),
            E::Database(e) if e.is_unique_violation() => UserError::Duplicate,
            E::Database(e) => {
                let code = e.code().unwrap_or_default();
                let unavailable = if e.try_downcast_ref::<SqliteError>().is_some() {
                    // Primary result codes: 5 busy, 6 locked (past the busy timeout), 14
                    // cannot open. sqlx reports extended codes, whose low byte is the primary.
                    code.parse::<i32>()
                        .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 14))
                } else {
                    // SQLSTATE classes 08 (connection), 53 (resources: too many connections,
                    // disk full) and 57P0x (server shutting down, starting, or gone).
                    code.starts_with("08") || code.starts_with("53") || code.starts_with("57P0")
                };
                let msg = e.message().to_owned();
                if unavailable {
                    UserError::Unavailable(msg)
                } else {
                    UserError::Other(msg)
                }
            }
            other => UserError::Other(other.to_string()),
        }
    }
}

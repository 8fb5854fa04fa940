//! Account changes that end a user's sessions — disable, new password, new role, deletion,
//! and "end every session" — and the record the gateways act on.
//!
//! Owns: the `session_revocations` table and the audit rows of these changes. Each change is
//! one transaction: the change itself, its `auth_events` row (with who acted and, later, how
//! many sessions it ended) and a `session_revocations` row. Every gateway reads new
//! revocation rows (see `auth::Auth::watch_revocations`) and ends the user's sessions that
//! started before the row's time in its own session store, so a change made by another
//! process (the CLI) reaches every instance and every store kind; refresh refuses a session
//! older than the user's latest revocation.
//!
//! Does not own: the session stores (see `auth::sessions`), nor what a client is told.

use super::{
    bounded, check_password, normalize_email, unix_now, unix_now_ms, EventKind, Pool, Role, UserDb,
    UserError, OPERATION_TIMEOUT,
};

/// Who made an account change (the `source` of its audit row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The `gatehouse` command line.
    Cli,
    /// A request to the gateway (e.g. logout everywhere).
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cli => "cli",
            Source::Api => "api",
        }
    }
}

/// A change to an account after which none of its sessions may go on.
#[derive(Debug, Clone)]
pub enum AccountChange {
    Disable,
    /// The new password (same rules as `add_user`).
    SetPassword(String),
    SetRole(Role),
    Delete,
    /// Nothing changes but every session ends.
    RevokeSessions,
    /// The second factor and recovery codes are removed (`user mfa reset`); recorded as
    /// `sessions_revoked` with the revocation reason `mfa_reset`.
    ResetMfa,
}

impl AccountChange {
    fn event(&self) -> EventKind {
        match self {
            AccountChange::Disable => EventKind::UserDisabled,
            AccountChange::SetPassword(_) => EventKind::PasswordChanged,
            AccountChange::SetRole(_) => EventKind::RoleChanged,
            AccountChange::Delete => EventKind::UserDeleted,
            AccountChange::RevokeSessions | AccountChange::ResetMfa => EventKind::SessionsRevoked,
        }
    }

    /// The `reason` of its `session_revocations` row.
    fn reason(&self) -> &'static str {
        match self {
            AccountChange::ResetMfa => "mfa_reset",
            other => other.event().as_str(),
        }
    }
}

/// What an applied change recorded.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub user_id: i64,
    /// Sessions that started before this (unix ms) end.
    pub at_ms: i64,
    /// The `auth_events` row of the change.
    pub event_id: i64,
}

/// An `auth_events` row as audit tools show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: i64,
    pub kind: String,
    pub source: Option<String>,
    pub sessions_ended: Option<i64>,
}

/// A row of `session_revocations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    pub id: i64,
    pub user_id: i64,
    pub at_ms: i64,
    pub event_id: Option<i64>,
}

const UPDATE_DISABLED: &str = "UPDATE users SET disabled = TRUE, updated_at = $1 WHERE id = $2";
const UPDATE_PASSWORD: &str = "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3";
const UPDATE_ROLE: &str = "UPDATE users SET role = $1, updated_at = $2 WHERE id = $3";
const DELETE_USER: &str = "DELETE FROM users WHERE id = $1";
const DELETE_FACTOR: &str = "DELETE FROM user_mfa WHERE user_id = $1";
const DELETE_RECOVERY_CODES: &str = "DELETE FROM mfa_recovery_codes WHERE user_id = $1";
pub(super) const INSERT_EVENT: &str =
    "INSERT INTO auth_events (at, user_id, email, kind, source, sessions_ended) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
pub(super) const INSERT_REVOCATION: &str =
    "INSERT INTO session_revocations (user_id, at_ms, reason, event_id) VALUES ($1, $2, $3, $4)";

impl UserDb {
    /// Applies `change` to the user with this email, records it (`auth_events`, with
    /// `source`) and the revocation of every session that started before now, in one
    /// transaction: either all of it is stored or nothing is. Errors: `NotFound`,
    /// `InvalidInput` (a bad password), `Unavailable`, `Other`.
    pub async fn change_account(
        &self,
        email: &str,
        change: AccountChange,
        source: Source,
    ) -> Result<Applied, UserError> {
        let email = normalize_email(email).map_err(|_| UserError::NotFound)?;
        let hash = match &change {
            AccountChange::SetPassword(pw) => {
                check_password(pw)?;
                Some(self.hash_password(pw).await?)
            }
            _ => None,
        };
        let kind = change.event().as_str();
        let reason = change.reason();
        let (now, at_ms) = (unix_now(), unix_now_ms());
        let applied = with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let id: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
                .bind(&email)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(user_id) = id else {
                return Err(UserError::NotFound);
            };
            match &change {
                AccountChange::Disable => {
                    sqlx::query(UPDATE_DISABLED)
                        .bind(now)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                }
                AccountChange::SetPassword(_) => {
                    sqlx::query(UPDATE_PASSWORD)
                        .bind(hash.as_deref())
                        .bind(now)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                }
                AccountChange::SetRole(role) => {
                    sqlx::query(UPDATE_ROLE)
                        .bind(role.as_str())
                        .bind(now)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                }
                AccountChange::Delete => {
                    sqlx::query(DELETE_USER)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                }
                AccountChange::RevokeSessions => {}
                AccountChange::ResetMfa => {
                    for sql in [DELETE_FACTOR, DELETE_RECOVERY_CODES] {
                        sqlx::query(sql).bind(user_id).execute(&mut *tx).await?;
                    }
                }
            }
            let event_id: i64 = sqlx::query_scalar(INSERT_EVENT)
                .bind(now)
                .bind(user_id)
                .bind(&email)
                .bind(kind)
                .bind(source.as_str())
                .bind(0_i64)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(INSERT_REVOCATION)
                .bind(user_id)
                .bind(at_ms)
                .bind(reason)
                .bind(event_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Applied {
                user_id,
                at_ms,
                event_id,
            })
        })
        .await?;
        tracing::info!(
            user_id = applied.user_id,
            change = kind,
            source = source.as_str(),
            "account changed; its sessions end"
        );
        Ok(applied)
    }

    /// Adds `n` to the sessions an audit event ended (each instance that ends some of them
    /// adds its share).
    pub async fn add_sessions_ended(&self, event_id: i64, n: u64) -> Result<(), UserError> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE auth_events SET sessions_ended = COALESCE(sessions_ended, 0) + $1 \
                 WHERE id = $2",
            )
            .bind(n)
            .bind(event_id)
            .execute(pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// Records a mass revocation made through the gateway (logout everywhere) with the number
    /// of sessions it ended.
    pub async fn record_sessions_revoked(
        &self,
        user_id: i64,
        source: Source,
        ended: u64,
    ) -> Result<(), UserError> {
        let ended = i64::try_from(ended).unwrap_or(i64::MAX);
        with_pool!(self, |pool| {
            let _: i64 = sqlx::query_scalar(INSERT_EVENT)
                .bind(unix_now())
                .bind(user_id)
                .bind(None::<&str>)
                .bind(EventKind::SessionsRevoked.as_str())
                .bind(source.as_str())
                .bind(ended)
                .fetch_one(pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// The audit events of one user, oldest first (at most 10 000).
    pub async fn events_of(&self, user_id: i64) -> Result<Vec<AuditEvent>, UserError> {
        with_pool!(self, |pool| {
            let rows: Vec<(i64, String, Option<String>, Option<i64>)> = sqlx::query_as(
                "SELECT at, kind, source, sessions_ended FROM auth_events \
                 WHERE user_id = $1 ORDER BY id LIMIT 10000",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(at, kind, source, sessions_ended)| AuditEvent {
                    at,
                    kind,
                    source,
                    sessions_ended,
                })
                .collect())
        })
        .await
    }

    /// Revocations after `after_id`, oldest first, at most `limit`.
    pub async fn revocations_after(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<Revocation>, UserError> {
        with_pool!(self, |pool| {
            let rows: Vec<(i64, i64, i64, Option<i64>)> = sqlx::query_as(
                "SELECT id, user_id, at_ms, event_id FROM session_revocations \
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after_id)
            .bind(limit.max(0))
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(id, user_id, at_ms, event_id)| Revocation {
                    id,
                    user_id,
                    at_ms,
                    event_id,
                })
                .collect())
        })
        .await
    }

    /// Where a gateway starting now begins reading revocations: after the last one made
    /// before `since_ms` (older ones concern sessions that cannot be alive any more).
    pub async fn revocation_cursor(&self, since_ms: i64) -> Result<i64, UserError> {
        self.scalar(
            "SELECT COALESCE(MAX(id), 0) FROM session_revocations WHERE at_ms < $1",
            since_ms,
        )
        .await
    }

    /// The time (unix ms) of the user's latest revocation, 0 for none: a session that began
    /// before it is over.
    pub async fn sessions_valid_after(&self, user_id: i64) -> Result<i64, UserError> {
        self.scalar(
            "SELECT COALESCE(MAX(at_ms), 0) FROM session_revocations WHERE user_id = $1",
            user_id,
        )
        .await
    }

    /// One integer from a query with one integer parameter.
    pub(super) async fn scalar(&self, sql: &'static str, arg: i64) -> Result<i64, UserError> {
        with_pool!(self, |pool| {
            let v: i64 = sqlx::query_scalar(sql).bind(arg).fetch_one(pool).await?;
            Ok(v)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "correct horse battery staple";

    async fn sqlite() -> (UserDb, std::path::PathBuf) {
        super::super::temp_sqlite("accounts").await
    }

    async fn events(db: &UserDb) -> Vec<(String, Option<String>, Option<i64>)> {
        with_pool!(db, |pool| {
            let rows: Vec<(String, Option<String>, Option<i64>)> =
                sqlx::query_as("SELECT kind, source, sessions_ended FROM auth_events ORDER BY id")
                    .fetch_all(pool)
                    .await?;
            Ok(rows)
        })
        .await
        .expect("events")
    }

    #[tokio::test]
    async fn each_change_is_applied_audited_and_revokes_in_one_step() {
        let (db, path) = sqlite().await;
        let ana = db
            .add_user("ana@example.org", PASSWORD, Role::Patient, "Ana")
            .await
            .expect("add");
        let start = db.revocation_cursor(i64::MAX).await.expect("cursor");
        assert_eq!(start, 0);
        assert_eq!(db.sessions_valid_after(ana.id).await.expect("none"), 0);

        let changes = [
            AccountChange::SetRole(Role::Doctor),
            AccountChange::SetPassword("another long password".into()),
            AccountChange::RevokeSessions,
            AccountChange::Disable,
            AccountChange::Delete,
        ];
        let mut last = 0;
        for change in changes {
            let applied = db
                .change_account("ANA@example.org", change.clone(), Source::Cli)
                .await
                .unwrap_or_else(|e| panic!("{change:?}: {e}"));
            assert_eq!(applied.user_id, ana.id);
            assert!(applied.at_ms >= last);
            last = applied.at_ms;
            match change {
                AccountChange::SetRole(_) => {
                    let u = db.find_by_id(ana.id).await.expect("db").expect("user");
                    assert_eq!(u.role, Role::Doctor);
                }
                AccountChange::SetPassword(pw) => {
                    assert!(db
                        .authenticate("ana@example.org", &pw)
                        .await
                        .expect("db")
                        .is_some());
                    assert!(db
                        .authenticate("ana@example.org", PASSWORD)
                        .await
                        .expect("db")
                        .is_none());
                }
                AccountChange::Disable => {
                    let u = db.find_by_id(ana.id).await.expect("db").expect("user");
                    assert!(u.disabled);
                }
                AccountChange::Delete => {
                    assert!(db.find_by_id(ana.id).await.expect("db").is_none());
                }
                AccountChange::RevokeSessions | AccountChange::ResetMfa => {}
            }
        }
        let revs = db.revocations_after(0, 100).await.expect("revocations");
        assert_eq!(revs.len(), 5);
        assert!(revs
            .iter()
            .all(|r| r.user_id == ana.id && r.event_id.is_some()));
        assert_eq!(
            db.revocations_after(revs[2].id, 100)
                .await
                .expect("tail")
                .len(),
            2
        );
        assert_eq!(db.sessions_valid_after(ana.id).await.expect("at"), last);

        db.add_sessions_ended(revs[0].event_id.expect("event"), 2)
            .await
            .expect("count");
        db.add_sessions_ended(revs[0].event_id.expect("event"), 1)
            .await
            .expect("count");
        db.record_sessions_revoked(ana.id, Source::Api, 4)
            .await
            .expect("event");
        let kinds = events(&db).await;
        assert_eq!(
            kinds,
            vec![
                ("role_changed".into(), Some("cli".into()), Some(3)),
                ("password_changed".into(), Some("cli".into()), Some(0)),
                ("sessions_revoked".into(), Some("cli".into()), Some(0)),
                ("user_disabled".into(), Some("cli".into()), Some(0)),
                ("user_deleted".into(), Some("cli".into()), Some(0)),
                ("sessions_revoked".into(), Some("api".into()), Some(4)),
            ]
        );
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn a_failed_change_leaves_nothing_behind() {
        let (db, path) = sqlite().await;
        db.add_user("bo@example.org", PASSWORD, Role::Patient, "")
            .await
            .expect("add");
        let missing = db
            .change_account("nobody@example.org", AccountChange::Disable, Source::Cli)
            .await;
        assert!(matches!(missing, Err(UserError::NotFound)), "{missing:?}");
        let weak = db
            .change_account(
                "bo@example.org",
                AccountChange::SetPassword("short".into()),
                Source::Cli,
            )
            .await;
        assert!(matches!(weak, Err(UserError::InvalidInput(_))), "{weak:?}");
        assert!(db.revocations_after(0, 10).await.expect("none").is_empty());
        assert!(events(&db).await.is_empty());
        assert!(db
            .authenticate("bo@example.org", PASSWORD)
            .await
            .expect("db")
            .is_some());
        let _ = std::fs::remove_file(path);
    }
}

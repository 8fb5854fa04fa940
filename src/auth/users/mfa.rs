//! The stored side of the second factor: the `user_mfa` and `mfa_recovery_codes` tables.
//!
//! Owns: reading and writing a user's encrypted TOTP secret, confirming an enrolment, the
//! atomic "this time step is newer than the last accepted one" check that refuses replayed
//! codes (two logins racing with one code: exactly one `UPDATE` matches), and spending
//! recovery codes once (same pattern).
//!
//! Does not own: the secret in clear, its encryption or the TOTP arithmetic (`auth::mfa`),
//! nor removing a factor (an account change: `accounts`, which also ends the sessions).

use super::{bounded, unix_now, Pool, UserDb, UserError, OPERATION_TIMEOUT};

/// A user's stored factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFactor {
    /// `v1:NONCE:CIPHERTEXT` (see `auth::mfa`).
    pub secret_enc: String,
    /// Unix seconds when the first code confirmed it; `None` while enrolment is pending.
    pub enabled_at: Option<i64>,
    /// The latest accepted time step.
    pub last_step: i64,
}

impl StoredFactor {
    pub fn enabled(&self) -> bool {
        self.enabled_at.is_some()
    }
}

const UPSERT_FACTOR: &str =
    "INSERT INTO user_mfa (user_id, secret_enc, created_at, enabled_at, last_step) \
     VALUES ($1, $2, $3, $4, 0) ON CONFLICT (user_id) DO UPDATE SET \
     secret_enc = excluded.secret_enc, created_at = excluded.created_at, \
     enabled_at = excluded.enabled_at, last_step = 0";
const INSERT_PENDING: &str =
    "INSERT INTO user_mfa (user_id, secret_enc, created_at, enabled_at, last_step) \
     VALUES ($1, $2, $3, NULL, 0) ON CONFLICT (user_id) DO NOTHING";
const SELECT_FACTOR: &str =
    "SELECT secret_enc, enabled_at, last_step FROM user_mfa WHERE user_id = $1";
const ACCEPT_STEP: &str = "UPDATE user_mfa SET last_step = $1 \
     WHERE user_id = $2 AND last_step < $1 AND enabled_at IS NOT NULL";
const CONFIRM: &str = "UPDATE user_mfa SET enabled_at = $1, last_step = $2 \
     WHERE user_id = $3 AND enabled_at IS NULL AND secret_enc = $4";
const DELETE_CODES: &str = "DELETE FROM mfa_recovery_codes WHERE user_id = $1";
const INSERT_CODE: &str =
    "INSERT INTO mfa_recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)";
const USE_CODE: &str = "UPDATE mfa_recovery_codes SET used_at = $1 \
     WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL";
const COUNT_CODES: &str =
    "SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL";

impl UserDb {
    /// The user's factor, enabled or pending; `None` without one.
    pub async fn mfa_factor(&self, user_id: i64) -> Result<Option<StoredFactor>, UserError> {
        with_pool!(self, |pool| {
            let row: Option<(String, Option<i64>, i64)> = sqlx::query_as(SELECT_FACTOR)
                .bind(user_id)
                .fetch_optional(pool)
                .await?;
            Ok(row.map(|(secret_enc, enabled_at, last_step)| StoredFactor {
                secret_enc,
                enabled_at,
                last_step,
            }))
        })
        .await
    }

    /// Stores a new factor for the user, replacing any (an enabled one when `enabled`: the
    /// CLI's enrolment; else pending until [`UserDb::mfa_confirm`]). Errors: `NotFound` when
    /// the user does not exist.
    pub async fn mfa_store(
        &self,
        user_id: i64,
        secret_enc: &str,
        enabled: bool,
    ) -> Result<(), UserError> {
        let now = unix_now();
        with_pool!(self, |pool| {
            sqlx::query(UPSERT_FACTOR)
                .bind(user_id)
                .bind(secret_enc)
                .bind(now)
                .bind(enabled.then_some(now))
                .execute(pool)
                .await
                .map_err(|e| match e {
                    sqlx::Error::Database(d) if d.is_foreign_key_violation() => UserError::NotFound,
                    other => UserError::from(other),
                })?;
            Ok(())
        })
        .await
    }

    /// The user's factor, creating a pending one with `secret_enc` when there is none (the
    /// enrolment page: reloading it shows the same secret).
    pub async fn mfa_pending(
        &self,
        user_id: i64,
        secret_enc: &str,
    ) -> Result<StoredFactor, UserError> {
        let now = unix_now();
        with_pool!(self, |pool| {
            sqlx::query(INSERT_PENDING)
                .bind(user_id)
                .bind(secret_enc)
                .bind(now)
                .execute(pool)
                .await?;
            Ok(())
        })
        .await?;
        self.mfa_factor(user_id).await?.ok_or(UserError::NotFound)
    }

    /// Enables a pending factor whose secret is still `secret_enc`, with `step` as its
    /// last accepted step. `false` when it was enabled (or replaced) meanwhile.
    pub async fn mfa_confirm(
        &self,
        user_id: i64,
        secret_enc: &str,
        step: i64,
    ) -> Result<bool, UserError> {
        let now = unix_now();
        with_pool!(self, |pool| {
            let done = sqlx::query(CONFIRM)
                .bind(now)
                .bind(step)
                .bind(user_id)
                .bind(secret_enc)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    /// Records `step` as the user's latest accepted time step, only if it is newer than the
    /// stored one: `false` means the code was already used (or an older one was).
    pub async fn mfa_accept_step(&self, user_id: i64, step: i64) -> Result<bool, UserError> {
        with_pool!(self, |pool| {
            let done = sqlx::query(ACCEPT_STEP)
                .bind(step)
                .bind(user_id)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    /// Replaces the user's recovery codes with these hashes (one transaction).
    pub async fn mfa_replace_recovery_codes(
        &self,
        user_id: i64,
        hashes: &[String],
    ) -> Result<(), UserError> {
        let now = unix_now();
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(DELETE_CODES)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            for h in hashes {
                sqlx::query(INSERT_CODE)
                    .bind(user_id)
                    .bind(h)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Spends the unused recovery code with this hash: `true` once, `false` after (or for a
    /// code the user does not have).
    pub async fn mfa_use_recovery_code(&self, user_id: i64, hash: &str) -> Result<bool, UserError> {
        let now = unix_now();
        with_pool!(self, |pool| {
            let done = sqlx::query(USE_CODE)
                .bind(now)
                .bind(user_id)
                .bind(hash)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    /// How many unused recovery codes the user has.
    pub async fn mfa_recovery_codes_left(&self, user_id: i64) -> Result<i64, UserError> {
        self.scalar(COUNT_CODES, user_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AccountChange, Role, Source};
    use super::*;

    #[tokio::test]
    async fn steps_and_recovery_codes_are_accepted_once_and_reset_removes_them() {
        let (db, path) = super::super::temp_sqlite("mfa").await;
        let u = db
            .add_user("mia@example.org", "correct horse battery", Role::Doctor, "")
            .await
            .expect("user");
        assert_eq!(db.mfa_factor(u.id).await.expect("db"), None);
        assert!(matches!(
            db.mfa_store(424_242, "v1:x:y", true).await,
            Err(UserError::NotFound)
        ));

        // Pending: made once, kept on the next call, confirmed only with its own secret.
        let p = db.mfa_pending(u.id, "v1:a:b").await.expect("pending");
        assert!(!p.enabled());
        assert_eq!(db.mfa_pending(u.id, "v1:c:d").await.expect("again"), p);
        assert!(
            !db.mfa_accept_step(u.id, 10).await.expect("db"),
            "not enabled"
        );
        assert!(!db.mfa_confirm(u.id, "v1:c:d", 10).await.expect("db"));
        assert!(db.mfa_confirm(u.id, "v1:a:b", 10).await.expect("db"));
        assert!(
            !db.mfa_confirm(u.id, "v1:a:b", 11).await.expect("db"),
            "once"
        );

        // Steps only move forward.
        assert!(!db.mfa_accept_step(u.id, 10).await.expect("db"), "replay");
        assert!(!db.mfa_accept_step(u.id, 9).await.expect("db"), "older");
        assert!(db.mfa_accept_step(u.id, 11).await.expect("db"));
        assert!(!db.mfa_accept_step(u.id, 11).await.expect("db"));

        db.mfa_replace_recovery_codes(u.id, &["h1".into(), "h2".into()])
            .await
            .expect("codes");
        assert_eq!(db.mfa_recovery_codes_left(u.id).await.expect("n"), 2);
        assert!(db.mfa_use_recovery_code(u.id, "h1").await.expect("db"));
        assert!(!db.mfa_use_recovery_code(u.id, "h1").await.expect("db"));
        assert!(!db.mfa_use_recovery_code(u.id, "nope").await.expect("db"));
        assert_eq!(db.mfa_recovery_codes_left(u.id).await.expect("n"), 1);

        db.change_account("mia@example.org", AccountChange::ResetMfa, Source::Cli)
            .await
            .expect("reset");
        assert_eq!(db.mfa_factor(u.id).await.expect("db"), None);
        assert_eq!(db.mfa_recovery_codes_left(u.id).await.expect("n"), 0);
        let events = db.events_of(u.id).await.expect("events");
        assert_eq!(
            events.last().map(|e| e.kind.as_str()),
            Some("sessions_revoked")
        );
        drop(db);
        let _ = std::fs::remove_file(&path);
    }
}

//! `gatehouse user mfa enroll|recovery-codes|reset --email E`: the parts that are not an
//! account change (`reset` is one: `users::AccountChange::ResetMfa`, run like the other
//! commands that end sessions).

use super::{recovery, Mfa};
use crate::auth::users::{UserDb, UserError};
use crate::config::AuthConfig;

/// `gatehouse user mfa …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum MfaAction {
    /// Give a user a new TOTP factor, enabled at once (replacing any), and print its
    /// otpauth:// URI and QR code to hand over. Needs auth.mfa.encryption_key.
    Enroll {
        #[arg(long)]
        email: String,
    },
    /// Print 10 new one-time recovery codes for a user (earlier ones stop working).
    RecoveryCodes {
        #[arg(long)]
        email: String,
    },
    /// Remove a user's second factor and recovery codes; their sessions end.
    Reset {
        #[arg(long)]
        email: String,
    },
}

async fn user_id(db: &UserDb, email: &str) -> Result<(i64, String), String> {
    match db.find_by_email(email).await {
        Ok(Some(u)) => Ok((u.id, u.email)),
        Ok(None) => Err(format!("no user {email}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `enroll`: the URI, the QR code and the secret in base32, for the user to scan or type.
pub async fn enroll(db: &UserDb, cfg: &AuthConfig, email: &str) -> Result<String, String> {
    let mfa = Mfa::for_cli(cfg)?;
    let (id, email) = user_id(db, email).await?;
    let secret = Mfa::new_secret();
    db.mfa_store(id, &mfa.seal(id, &secret), true)
        .await
        .map_err(|e| match e {
            UserError::NotFound => format!("no user {email}"),
            other => other.to_string(),
        })?;
    let uri = mfa.uri(&email, &secret);
    let qr = super::qr_terminal(&uri).unwrap_or_default();
    Ok(format!(
        "second factor enrolled for {email}; scan the QR code or enter the secret in an authenticator app\n{uri}\n\nsecret: {}\n\n{qr}",
        super::base32(&secret)
    ))
}

/// `recovery-codes`: ten new codes, one a line, after a header line.
pub async fn recovery_codes(db: &UserDb, email: &str) -> Result<String, String> {
    let (id, email) = user_id(db, email).await?;
    let codes = recovery::generate();
    let hashes: Vec<String> = codes
        .iter()
        .filter_map(|c| recovery::normalise(c))
        .map(|n| recovery::hash(&n))
        .collect();
    db.mfa_replace_recovery_codes(id, &hashes)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "recovery codes for {email} (each works once; earlier codes no longer do):\n{}",
        codes.join("\n")
    ))
}

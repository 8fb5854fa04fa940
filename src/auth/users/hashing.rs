//! argon2id password hashes: making one, verifying one, and the dummy hash unknown emails are
//! verified against so that timing does not tell which emails exist.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use super::UserError;

/// An argon2id PHC string with default parameters and a random salt. Blocking: ~tens of ms.
pub(super) fn hash_password(password: &str) -> Result<String, UserError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| UserError::Other(format!("password hashing failed: {e}")))
}

/// Verifies `password` against `stored`, or against a dummy hash of the same cost when there
/// is none (then always `false`). Blocking.
pub(super) fn verify_password(stored: Option<&str>, password: &str) -> Result<bool, UserError> {
    let Some(stored) = stored else {
        if let Some(hash) = dummy_hash().and_then(|h| PasswordHash::new(h).ok()) {
            let _ = Argon2::default().verify_password(password.as_bytes(), &hash);
        }
        return Ok(false);
    };
    let hash = PasswordHash::new(stored).map_err(|e| {
        tracing::error!(error = %e, "stored password hash is malformed");
        UserError::Other("stored password hash is malformed".into())
    })?;
    // Argon2::default() verifies with the parameters recorded in the hash itself.
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok())
}

/// The hash that unknown emails are verified against, computed on first use. Blocking.
pub(super) fn dummy_hash() -> Option<&'static str> {
    static DUMMY_HASH: OnceLock<Option<String>> = OnceLock::new();
    DUMMY_HASH
        .get_or_init(|| hash_password("gatehouse-dummy-password").ok())
        .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;
    const PASSWORD: &str = "correct horse battery";

    #[test]
    fn password_hashes_are_argon2id_and_verify() {
        let hash = hash_password(PASSWORD).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(Some(&hash), PASSWORD).unwrap());
        assert!(!verify_password(Some(&hash), "wrong password").unwrap());
        assert!(!verify_password(None, PASSWORD).unwrap());
        assert!(verify_password(Some("not a phc string"), PASSWORD).is_err());
    }
}

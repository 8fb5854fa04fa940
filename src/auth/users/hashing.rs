//! argon2id password hashes: making one, verifying a password against a stored hash of any
//! accepted format (see `formats`), and the dummy hash unknown emails are
//! verified against so that timing does not tell which emails exist.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use super::formats::Stored;
use super::UserError;

/// An argon2id PHC string with default parameters and a random salt. Blocking: ~tens of ms.
pub(super) fn hash_password(password: &str) -> Result<String, UserError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| UserError::Other(format!("password hashing failed: {e}")))
}

/// What checking a password against a stored hash found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verified {
    /// Wrong password (or no stored hash).
    No,
    /// Right password; `rehash` when the stored hash is of an older kind (an imported bcrypt,
    /// pbkdf2 or scrypt hash) and should be replaced by an argon2id one.
    Yes { rehash: bool },
}

/// Verifies `password` against `stored` (any format of [`Stored`]), or against a dummy hash
/// of the same cost when there is none (then always [`Verified::No`]). Blocking. A stored
/// string of no accepted format is an error, not a wrong password.
pub(super) fn verify_password(stored: Option<&str>, password: &str) -> Result<Verified, UserError> {
    let Some(stored) = stored else {
        if let Some(hash) = dummy_hash().and_then(|h| PasswordHash::new(h).ok()) {
            let _ = Argon2::default().verify_password(password.as_bytes(), &hash);
        }
        return Ok(Verified::No);
    };
    let stored = Stored::parse(stored).map_err(|e| {
        tracing::error!(error = %e, "stored password hash is malformed");
        UserError::Other("stored password hash is malformed".into())
    })?;
    // Argon2::default() verifies with the parameters recorded in the hash itself.
    Ok(if stored.verify(password) {
        Verified::Yes {
            rehash: stored.outdated(),
        }
    } else {
        Verified::No
    })
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
        let yes = Verified::Yes { rehash: false };
        assert_eq!(verify_password(Some(&hash), PASSWORD).unwrap(), yes);
        assert_eq!(
            verify_password(Some(&hash), "wrong password").unwrap(),
            Verified::No
        );
        assert_eq!(verify_password(None, PASSWORD).unwrap(), Verified::No);
        let bcrypt = "$2b$05$uzOW5902hR5XaR5emq91DOU259wc3WPJddUqF8XC5P3MN3yubZR/O";
        assert_eq!(
            verify_password(Some(bcrypt), "flask-era password 1").unwrap(),
            Verified::Yes { rehash: true }
        );
        assert!(verify_password(Some("not a phc string"), PASSWORD).is_err());
    }
}

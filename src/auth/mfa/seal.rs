//! TOTP secrets at rest: AES-256-GCM under `auth.mfa.encryption_key`, a random 96-bit nonce
//! per secret, the user id as associated data (a value copied to another user's row does not
//! open). Stored as `v1:NONCE:CIPHERTEXT`, both standard base64.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

fn aad(user_id: i64) -> Vec<u8> {
    format!("gatehouse-mfa:user:{user_id}").into_bytes()
}

/// Encrypts `secret` for `user_id`.
pub fn seal(key: &[u8; 32], user_id: i64, secret: &[u8]) -> String {
    let cipher = Aes256Gcm::new(key.into());
    let nonce: [u8; 12] = rand::random();
    let aad = aad(user_id);
    // Encryption fails only for inputs of gigabytes.
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: secret,
                aad: &aad,
            },
        )
        .unwrap_or_default();
    format!("v1:{}:{}", B64.encode(nonce), B64.encode(ct))
}

/// Decrypts a stored value of `user_id`; `None` for another key, another user's value, or a
/// malformed one.
pub fn open(key: &[u8; 32], user_id: i64, stored: &str) -> Option<Vec<u8>> {
    let mut parts = stored.split(':');
    let (Some("v1"), Some(nonce), Some(ct), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let nonce = B64.decode(nonce).ok()?;
    let ct = B64.decode(ct).ok()?;
    if nonce.len() != 12 {
        return None;
    }
    let aad = aad(user_id);
    Aes256Gcm::new(key.into())
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &ct,
                aad: &aad,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_only_with_the_key_and_the_user_it_was_sealed_for() {
        let key = [7u8; 32];
        let stored = seal(&key, 42, b"secret bytes here!!!");
        assert!(stored.starts_with("v1:"));
        assert!(!stored.contains("secret"));
        assert_eq!(
            open(&key, 42, &stored).as_deref(),
            Some(&b"secret bytes here!!!"[..])
        );
        assert_eq!(open(&key, 43, &stored), None, "another user's row");
        assert_eq!(open(&[8u8; 32], 42, &stored), None, "another key");
        // A fresh nonce each time.
        assert_ne!(seal(&key, 42, b"x"), seal(&key, 42, b"x"));
        for bad in ["", "v1:", "v2:AAAA:AAAA", "v1:!!:AAAA", "v1:AAAA:AAAA:AAAA"] {
            assert_eq!(open(&key, 42, bad), None, "{bad:?}");
        }
    }
}

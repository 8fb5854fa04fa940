//! Recovery codes: ten one-time codes a user keeps on paper for when the authenticator is
//! lost. Each is 80 random bits written as `xxxx-xxxx-xxxx-xxxx` (base32, lowercase).
//!
//! Stored as SHA-256 (hex) of the normalised code, not argon2: with 80 bits of entropy a
//! guess is as hopeless against a fast hash as against a slow one, and checking one costs a
//! single indexed lookup instead of ten argon2 verifications per attempt.

use sha2::{Digest, Sha256};

/// Codes per batch.
pub const COUNT: usize = 10;

/// A new batch of codes, as shown to the user.
pub fn generate() -> Vec<String> {
    (0..COUNT)
        .map(|_| {
            let raw: [u8; 10] = rand::random();
            let text = data_encoding::BASE32_NOPAD
                .encode(&raw)
                .to_ascii_lowercase();
            text.as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// The code as compared: letters and digits only, lowercase (dashes and spaces as typed do
/// not matter). `None` when it cannot be a recovery code.
pub fn normalise(code: &str) -> Option<String> {
    let n: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (n.len() == 16
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)))
    .then_some(n)
}

/// The stored form of a (normalised) code.
pub fn hash(normalised: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(normalised.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_well_formed_and_normalise_to_their_hash() {
        let codes = generate();
        assert_eq!(codes.len(), COUNT);
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), COUNT);
        for c in &codes {
            assert_eq!(c.len(), 19, "{c}");
            let n = normalise(c).expect("normalises");
            assert_eq!(
                normalise(&c.to_uppercase().replace('-', " ")),
                Some(n.clone())
            );
            assert_eq!(hash(&n).len(), 64);
        }
        assert_eq!(normalise("123456"), None);
        assert_eq!(normalise("abcd-abcd-abcd-abc1"), None);
    }
}

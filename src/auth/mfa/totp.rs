//! TOTP (RFC 6238) over HOTP (RFC 4226): HMAC-SHA1, 30-second steps, 6 digits — what every
//! authenticator app uses by default.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Seconds per time step.
pub const PERIOD: i64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Steps of clock skew accepted either way.
pub const SKEW: i64 = 1;

/// The time step of unix second `t`.
pub fn step_of(t: i64) -> i64 {
    t.div_euclid(PERIOD)
}

/// The HOTP value of `secret` at counter `step`, with `digits` digits.
pub fn hotp(secret: &[u8], step: u64, digits: u32) -> u32 {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        return 0;
    };
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = usize::from(h[19] & 0x0f);
    let bin = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    bin % 10u32.pow(digits)
}

/// The 6-digit code of `secret` at step `step`, zero-padded.
pub fn code(secret: &[u8], step: i64) -> String {
    format!(
        "{:0width$}",
        hotp(secret, step.max(0) as u64, DIGITS),
        width = DIGITS as usize
    )
}

/// The step within ±[`SKEW`] of `now`'s whose code is `given`, if any (the current step
/// first). Every candidate is compared in constant time.
pub fn matching_step(secret: &[u8], given: &str, now: i64) -> Option<i64> {
    let given = given.trim();
    if given.len() != DIGITS as usize || !given.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = step_of(now);
    let mut found = None;
    for step in [current, current - 1, current + 1] {
        let expected = code(secret, step);
        let same = expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if same && found.is_none() {
            found = Some(step);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 column (8 digits), secret "12345678901234567890".
    #[test]
    fn rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (t, want) in [
            (59_i64, 94287082_u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(hotp(secret, step_of(t) as u64, 8), want, "T = {t}");
        }
    }

    /// RFC 4226 appendix D: HOTP values for counters 0..9.
    #[test]
    fn rfc_4226_test_vectors() {
        let want = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (c, w) in want.iter().enumerate() {
            assert_eq!(hotp(b"12345678901234567890", c as u64, 6), *w);
        }
    }

    #[test]
    fn one_step_of_skew_either_way_is_accepted_two_are_not() {
        let secret = b"12345678901234567890";
        let now = 1_700_000_015;
        let s = step_of(now);
        assert_eq!(matching_step(secret, &code(secret, s), now), Some(s));
        assert_eq!(
            matching_step(secret, &code(secret, s - 1), now),
            Some(s - 1)
        );
        assert_eq!(
            matching_step(secret, &code(secret, s + 1), now),
            Some(s + 1)
        );
        assert_eq!(matching_step(secret, &code(secret, s - 2), now), None);
        assert_eq!(matching_step(secret, &code(secret, s + 2), now), None);
        for bad in ["", "12345", "1234567", "12a456", "١٢٣٤٥٦"] {
            assert_eq!(matching_step(secret, bad, now), None, "{bad:?}");
        }
        // Codes keep their leading zeros.
        assert_eq!(code(secret, 0).len(), 6);
    }
}

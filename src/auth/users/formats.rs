//! The password hash formats a stored user may carry: gatehouse's own argon2id PHC strings
//! and those of the seeds' Flask stack, which `gatehouse user import` brings over — bcrypt
//! (`$2a$`, `$2b$`, `$2y$`) and werkzeug's `pbkdf2:sha256:N$salt$hex`,
//! `pbkdf2:sha512:N$salt$hex` and `scrypt:N:r:p$salt$hex`. Recognising a string (with its
//! cost bounded, so that a hostile import file cannot make a login take minutes) and
//! verifying a password against it.
//!
//! Bounds (a string beyond them is refused at import, and never verified): bcrypt cost
//! 4–[`MAX_BCRYPT_COST`]; pbkdf2 1–[`MAX_PBKDF2_ITERATIONS`] iterations; scrypt N a power of
//! two up to 2^20, r and p at least 1, 128·N·r at most 256 MiB and N·r·p at most 2^22;
//! argon2id at most 256 MiB, 10 passes, 16 lanes. Werkzeug's salt is the text between the
//! first and second `$`, used as its UTF-8 bytes, and its hash lowercase hex, as werkzeug
//! writes them.

use argon2::password_hash::PasswordHash;
use pbkdf2::pbkdf2_hmac;
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Highest bcrypt cost accepted (2^15 rounds, about 2 s).
pub const MAX_BCRYPT_COST: u32 = 15;
/// Most pbkdf2 iterations accepted (werkzeug 3.1 writes 1 000 000, 2.3 wrote 600 000).
pub const MAX_PBKDF2_ITERATIONS: u32 = 5_000_000;
const MAX_SCRYPT_LOG_N: u32 = 20;
const MAX_SCRYPT_MEMORY: u64 = 256 << 20;
const MAX_SCRYPT_COST: u64 = 1 << 22;
const MAX_ARGON2_M_KIB: u32 = 256 << 10;
const MAX_ARGON2_T: u32 = 10;
const MAX_ARGON2_P: u32 = 16;
const MAX_SALT_BYTES: usize = 256;

/// A recognised stored hash, with its parameters checked against the bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stored<'a> {
    /// An argon2id PHC string.
    Argon2id(&'a str),
    /// A bcrypt string (any of `$2a$`, `$2b$`, `$2y$`: one algorithm, three names).
    Bcrypt(&'a str),
    /// werkzeug `pbkdf2:{sha256|sha512}:{iterations}${salt}${hex}`.
    Pbkdf2 {
        sha512: bool,
        iterations: u32,
        salt: &'a str,
        hash: Vec<u8>,
    },
    /// werkzeug `scrypt:{n}:{r}:{p}${salt}${hex}` (or `scrypt${salt}${hex}`: 2^15, 8, 1).
    Scrypt {
        log_n: u8,
        r: u32,
        p: u32,
        salt: &'a str,
        hash: Vec<u8>,
    },
}

impl<'a> Stored<'a> {
    /// Recognises `stored`, or says (without echoing it) why it is not an accepted hash.
    pub(super) fn parse(stored: &'a str) -> Result<Stored<'a>, String> {
        if stored.starts_with("$argon2") {
            return argon2id(stored).map(|()| Stored::Argon2id(stored));
        }
        if stored.starts_with("$2") {
            return bcrypt_hash(stored).map(|()| Stored::Bcrypt(stored));
        }
        let mut parts = stored.splitn(3, '$');
        let (method, salt, hex) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(s), Some(h)) => (m, s, h),
            _ => return Err(unknown()),
        };
        if !matches!(method.split(':').next(), Some("pbkdf2" | "scrypt")) {
            return Err(unknown());
        }
        if salt.is_empty() || salt.len() > MAX_SALT_BYTES {
            return Err(format!(
                "the werkzeug salt must have 1 to {MAX_SALT_BYTES} bytes"
            ));
        }
        let mut args = method.split(':');
        match args.next() {
            Some("pbkdf2") => {
                let args: Vec<&str> = args.collect();
                let (digest, iterations) = match args[..] {
                    [digest, iterations] => (digest, iterations),
                    _ => {
                        return Err("pbkdf2 needs its digest and iteration count \
                             (pbkdf2:sha256:N), as werkzeug writes it"
                            .into())
                    }
                };
                let sha512 = match digest {
                    "sha256" => false,
                    "sha512" => true,
                    _ => return Err("pbkdf2 digests accepted: sha256, sha512".into()),
                };
                let iterations = number(iterations)
                    .filter(|n| (1..=MAX_PBKDF2_ITERATIONS).contains(n))
                    .ok_or_else(|| {
                        format!("pbkdf2 iterations must be 1 to {MAX_PBKDF2_ITERATIONS}")
                    })?;
                let hash = lower_hex(hex, if sha512 { 64 } else { 32 })?;
                Ok(Stored::Pbkdf2 {
                    sha512,
                    iterations,
                    salt,
                    hash,
                })
            }
            Some("scrypt") => {
                let args: Vec<&str> = args.collect();
                let (n, r, p) = match args[..] {
                    [] => (Some(1 << 15), Some(8), Some(1)),
                    [n, r, p] => (number(n), number(r), number(p)),
                    _ => return Err("scrypt takes N, r and p (scrypt:N:r:p)".into()),
                };
                let (Some(n), Some(r), Some(p)) = (n, r, p) else {
                    return Err("scrypt N, r and p must be numbers".into());
                };
                let (wide_n, wide_r, wide_p) = (u64::from(n), u64::from(r), u64::from(p));
                let bounded = n.is_power_of_two()
                    && (2..=1 << MAX_SCRYPT_LOG_N).contains(&n)
                    && r >= 1
                    && p >= 1
                    && 128 * wide_n * wide_r <= MAX_SCRYPT_MEMORY
                    && wide_n * wide_r * wide_p <= MAX_SCRYPT_COST;
                if !bounded {
                    return Err(format!(
                        "scrypt N must be a power of two up to 2^{MAX_SCRYPT_LOG_N}, r and p at \
                         least 1, 128·N·r at most 256 MiB and N·r·p at most 2^22"
                    ));
                }
                let log_n = u8::try_from(n.trailing_zeros()).map_err(|_| unknown())?;
                // The scrypt crate's own rule (N < 2^(16·r)): refused here, not at login.
                scrypt::Params::new(log_n, r, p, 64)
                    .map_err(|_| "scrypt parameters out of range".to_string())?;
                let hash = lower_hex(hex, 64)?;
                Ok(Stored::Scrypt {
                    log_n,
                    r,
                    p,
                    salt,
                    hash,
                })
            }
            _ => Err(unknown()),
        }
    }

    /// Whether `password` matches. Blocking: as costly as the parameters say.
    pub(super) fn verify(&self, password: &str) -> bool {
        use argon2::password_hash::PasswordVerifier;
        match self {
            Stored::Argon2id(s) => PasswordHash::new(s).is_ok_and(|hash| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            }),
            Stored::Bcrypt(s) => bcrypt::verify(password, s).unwrap_or(false),
            Stored::Pbkdf2 {
                sha512,
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                let (pw, salt) = (password.as_bytes(), salt.as_bytes());
                if *sha512 {
                    pbkdf2_hmac::<Sha512>(pw, salt, *iterations, &mut out);
                } else {
                    pbkdf2_hmac::<Sha256>(pw, salt, *iterations, &mut out);
                }
                out.ct_eq(hash).into()
            }
            Stored::Scrypt {
                log_n,
                r,
                p,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                let Ok(params) = scrypt::Params::new(*log_n, *r, *p, out.len()) else {
                    return false;
                };
                scrypt::scrypt(password.as_bytes(), salt.as_bytes(), &params, &mut out).is_ok()
                    && bool::from(out.ct_eq(hash))
            }
        }
    }

    /// Whether a successful login should store a fresh argon2id hash instead: every kind but
    /// argon2id.
    pub(super) fn outdated(&self) -> bool {
        !matches!(self, Stored::Argon2id(_))
    }
}

fn unknown() -> String {
    "unknown password hash format (accepted: argon2id, bcrypt $2a$/$2b$/$2y$, \
     werkzeug pbkdf2:sha256:N / pbkdf2:sha512:N / scrypt:N:r:p)"
        .into()
}

fn number(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `bytes` bytes written as lowercase hex, as werkzeug writes them.
fn lower_hex(hex: &str, bytes: usize) -> Result<Vec<u8>, String> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let wrong = || {
        format!(
            "the werkzeug hash must be {} lowercase hex digits",
            bytes * 2
        )
    };
    if hex.len() != bytes * 2 {
        return Err(wrong());
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(wrong)
}

fn argon2id(stored: &str) -> Result<(), String> {
    let hash = PasswordHash::new(stored).map_err(|_| "malformed argon2 PHC string".to_string())?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err("only argon2id is accepted among the argon2 variants".into());
    }
    let params = argon2::Params::try_from(&hash)
        .map_err(|_| "argon2id parameters out of range".to_string())?;
    if hash.hash.is_none()
        || params.m_cost() > MAX_ARGON2_M_KIB
        || params.t_cost() > MAX_ARGON2_T
        || params.p_cost() > MAX_ARGON2_P
    {
        return Err(format!(
            "argon2id needs a hash, and at most m={MAX_ARGON2_M_KIB} (KiB), t={MAX_ARGON2_T}, p={MAX_ARGON2_P}"
        ));
    }
    Ok(())
}

/// `$2a$`/`$2b$`/`$2y$`, a two-digit cost, 22 salt and 31 hash characters of bcrypt's base64.
fn bcrypt_hash(stored: &str) -> Result<(), String> {
    let b = stored.as_bytes();
    let prefix_ok = b.len() == 60
        && matches!(&b[..4], b"$2a$" | b"$2b$" | b"$2y$")
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'/'));
    if !prefix_ok {
        return Err("malformed bcrypt hash (expected $2a$, $2b$ or $2y$, a two-digit cost and 53 characters)".into());
    }
    let cost = number(&stored[4..6]).unwrap_or(0);
    if !(4..=MAX_BCRYPT_COST).contains(&cost) {
        return Err(format!("bcrypt cost must be 4 to {MAX_BCRYPT_COST}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made once with werkzeug 3.1.9, bcrypt 5.0.0 and argon2-cffi 25.1.0 (Python) for this
    // password; Python is not needed to run the tests.
    const PW: &str = "flask-era password 1";
    const VECTORS: [&str; 8] = [
        "$2b$05$uzOW5902hR5XaR5emq91DOU259wc3WPJddUqF8XC5P3MN3yubZR/O",
        "$2a$05$9T9UU6ASq9/agJOKAniW4e/MdAQrE9v8fr8vNg.X5MJ5nE9md2/yy",
        "$2y$05$RLAz66ZjoWC7SNPzH5skOeVyszHkGs2hXV8oZ7q5KhTGihpPFrwQy",
        "pbkdf2:sha256:1000$vlc6r3fetkfmZoMK$49ed491bd002eb6e43e01756e069530037091eebc486af86d097080c6ee154ef",
        "pbkdf2:sha512:1000$TOrnV1n3Amy5XCKS$930562398233d980378acdc11c87583b6d4546fe999235b5c209fd5cdae3ebf36cf0ab43c285ccc084f106c6bd418fc8904ea80d6cdd1f7e7a3d4fee1a34eb54",
        "scrypt:1024:8:1$Tf0MOafxBKB2U36u$cdcb9a0a55d0e053e758bbeb62cf30508b6c5a953f8a76e31d8e6203e6f2911c7c91c96f29a921ff643eb39a444094cd231ec79577830e4a539140cd50ad227d",
        "scrypt:32768:8:1$EWby2WDkaRIUdfME$26debd36fb002c0550d186ba358b084b50e86a42d456f9ad4e1a135778add7bda2f9b7fbcbc133717d0fbefb7a7dbbb6760667cc6fb02c5355722f97f22c739c",
        "$argon2id$v=19$m=65536,t=3,p=4$fXm/umjV1VNXJqrqI6yIZA$tFF/Wok9WfO9ov99qonAwesKooMlPLqmoZE5J+0gQtQ",
    ];

    #[test]
    fn each_flask_era_hash_verifies_its_password_only() {
        for v in VECTORS {
            let stored = Stored::parse(v).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert!(stored.verify(PW), "{v}");
            assert!(!stored.verify("flask-era password 2"), "{v}");
            assert_eq!(stored.outdated(), !v.starts_with("$argon2id$"), "{v}");
        }
    }

    #[test]
    fn werkzeug_default_pbkdf2_verifies() {
        let v = "pbkdf2:sha256:1000000$HalmbSEnUuvjtqu3$0245ff59cf86a3bf21e7c4dd9918db8cee722cc6ab7e4968950770f482686377";
        assert!(Stored::parse(v).expect("pbkdf2").verify(PW));
    }

    #[test]
    fn a_changed_salt_or_digest_fails() {
        let v = VECTORS[3].replace("vlc6", "vlc7");
        assert!(!Stored::parse(&v).expect("parse").verify(PW));
        let v = VECTORS[5].replace("Tf0M", "Tf0N");
        assert!(!Stored::parse(&v).expect("parse").verify(PW));
        let v = VECTORS[0].replace("ZR/O", "ZR/P");
        assert!(!Stored::parse(&v).expect("parse").verify(PW));
    }

    #[test]
    fn malformed_unknown_and_too_costly_hashes_are_refused() {
        let cases = [
            ("", "unknown"),
            ("plain$$secret", "unknown"),
            ("sha256$salt$abcd", "unknown"),
            ("$1$abc$def", "unknown"),
            ("$2x$05$uzOW5902hR5XaR5emq91DOU259wc3WPJddUqF8XC5P3MN3yubZR/O", "bcrypt"),
            ("$2b$05$short", "bcrypt"),
            ("$2b$31$uzOW5902hR5XaR5emq91DOU259wc3WPJddUqF8XC5P3MN3yubZR/O", "cost"),
            ("$2b$03$uzOW5902hR5XaR5emq91DOU259wc3WPJddUqF8XC5P3MN3yubZR/O", "cost"),
            ("pbkdf2:sha256$salt$00", "iteration count"),
            ("pbkdf2$salt$00", "iteration count"),
            ("pbkdf2:md5:1000$salt$00", "digests"),
            ("pbkdf2:sha256:0$salt$00", "iterations"),
            ("pbkdf2:sha256:5000001$salt$00", "iterations"),
            ("pbkdf2:sha256:-1$salt$00", "iterations"),
            ("pbkdf2:sha256:1000$salt$00", "hex"),
            ("pbkdf2:sha256:1000$$0245ff59cf86a3bf21e7c4dd9918db8cee722cc6ab7e4968950770f482686377", "salt"),
            ("pbkdf2:sha256:1000$s$0245FF59CF86a3bf21e7c4dd9918db8cee722cc6ab7e4968950770f482686377", "hex"),
            ("scrypt:1000:8:1$salt$00", "power of two"),
            ("scrypt:2097152:8:1$salt$00", "power of two"),
            ("scrypt:1048576:8:1$salt$00", "256 MiB"),
            ("scrypt:1024:8:1024$salt$00", "2^22"),
            ("scrypt:1024:0:1$salt$00", "at least 1"),
            ("scrypt:1024:8$salt$00", "N, r and p"),
            ("scrypt:1024:8:1$salt$00", "hex"),
            ("$argon2i$v=19$m=65536,t=3,p=4$fXm/umjV1VNXJqrqI6yIZA$tFF/Wok9WfO9ov99qonAwesKooMlPLqmoZE5J+0gQtQ", "argon2id"),
            ("$argon2id$v=19$m=4194304,t=3,p=4$fXm/umjV1VNXJqrqI6yIZA$tFF/Wok9WfO9ov99qonAwesKooMlPLqmoZE5J+0gQtQ", "at most"),
            ("$argon2id$v=19$m=65536,t=3,p=4$fXm/umjV1VNXJqrqI6yIZA", "at most"),
            ("$argon2id$garbage", "needs a hash"),
            ("$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "out of range"),
        ];
        for (input, why) in cases {
            let err = Stored::parse(input).expect_err(input);
            assert!(err.contains(why), "{input}: {err}");
            assert!(!err.contains("salt$") && !err.contains("uzOW"), "{err}");
        }
    }
}

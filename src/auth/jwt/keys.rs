//! Key material: HS256 secrets and PEM keys (`Debug` never prints them), the signing and
//! verification keys built from them, and what is wrong with a key.

use std::fmt;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, EncodingKey};

use super::{Alg, JwtError, MIN_SECRET_LEN};

/// One key, optionally named by a `kid`.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// Key id put in / matched against the token header.
    pub kid: Option<String>,
    /// The key itself.
    pub material: KeyMaterial,
}

/// Raw key material. `Debug` never prints the bytes.
#[derive(Clone)]
pub enum KeyMaterial {
    /// HS256 shared secret (at least [`MIN_SECRET_LEN`] bytes).
    Secret(Vec<u8>),
    /// Signing key, PEM (PKCS#8 `PRIVATE KEY`; PKCS#1 also accepted for RSA).
    PrivatePem(Vec<u8>),
    /// Verification-only public key, PEM.
    PublicPem(Vec<u8>),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, len) = match self {
            KeyMaterial::Secret(b) => ("Secret", b.len()),
            KeyMaterial::PrivatePem(b) => ("PrivatePem", b.len()),
            KeyMaterial::PublicPem(b) => ("PublicPem", b.len()),
        };
        write!(f, "{kind}([redacted; {len} bytes])")
    }
}

pub(super) fn bad_key(what: &str, e: impl fmt::Display) -> JwtError {
    JwtError::BadKey(format!("{what}: {e}"))
}

/// Builds the signing key and the matching verification key.
pub(super) fn signing_pair(
    alg: Alg,
    src: &KeySource,
    what: &str,
) -> Result<(EncodingKey, DecodingKey), JwtError> {
    let pem = match (&src.material, alg) {
        (KeyMaterial::Secret(s), Alg::HS256) => {
            if s.len() < MIN_SECRET_LEN {
                return Err(JwtError::WeakSecret);
            }
            return Ok((EncodingKey::from_secret(s), DecodingKey::from_secret(s)));
        }
        (KeyMaterial::PrivatePem(p), Alg::RS256 | Alg::ES256 | Alg::EdDSA) => p,
        (_, Alg::HS256) => return Err(bad_key(what, "HS256 needs a secret")),
        (_, _) => return Err(bad_key(what, format!("{alg} needs a private key PEM"))),
    };
    let enc = match alg {
        Alg::RS256 => EncodingKey::from_rsa_pem(pem),
        Alg::ES256 => EncodingKey::from_ec_pem(pem),
        _ => EncodingKey::from_ed_pem(pem),
    }
    .map_err(|e| {
        let hint = "PKCS#8 `PRIVATE KEY` expected; convert with `openssl pkcs8 -topk8 -nocrypt`";
        bad_key(what, format!("not a {alg} private key PEM ({e}; {hint})"))
    })?;
    // Derive the public half (this also parses and checks the private key).
    let dec = Jwk::from_encoding_key(&enc, alg.to_jwt())
        .and_then(|jwk| DecodingKey::from_jwk(&jwk))
        .map_err(|e| bad_key(what, format!("unusable {alg} private key ({e})")))?;
    // Self-test: sign and verify once, so a broken key fails at startup, not per request.
    let msg = b"gatehouse-key-check";
    let sig = jsonwebtoken::crypto::sign(msg, &enc, alg.to_jwt()).map_err(|e| bad_key(what, e))?;
    match jsonwebtoken::crypto::verify(&sig, msg, &dec, alg.to_jwt()) {
        Ok(true) => Ok((enc, dec)),
        Ok(false) => Err(bad_key(what, "derived public key does not verify")),
        Err(e) => Err(bad_key(what, e)),
    }
}

/// Builds a verification-only key.
pub(super) fn verify_key(alg: Alg, src: &KeySource) -> Result<DecodingKey, JwtError> {
    let what = format!("verify-only key {:?}", src.kid.as_deref().unwrap_or(""));
    match (&src.material, alg) {
        (KeyMaterial::Secret(s), Alg::HS256) if s.len() < MIN_SECRET_LEN => {
            Err(JwtError::WeakSecret)
        }
        (KeyMaterial::Secret(s), Alg::HS256) => Ok(DecodingKey::from_secret(s)),
        (_, Alg::HS256) => Err(bad_key(&what, "HS256 needs a secret")),
        (KeyMaterial::PrivatePem(_), _) => signing_pair(alg, src, &what).map(|(_, dec)| dec),
        (KeyMaterial::PublicPem(pem), _) => {
            let dec = match alg {
                Alg::RS256 => DecodingKey::from_rsa_pem(pem),
                Alg::ES256 => DecodingKey::from_ec_pem(pem),
                _ => DecodingKey::from_ed_pem(pem),
            }
            .map_err(|e| bad_key(&what, format!("not a {alg} public key PEM ({e})")))?;
            // Round-trip through a JWK: parses RSA keys fully and checks EC/Ed key shapes.
            Jwk::from_decoding_key(&dec, Some(alg.to_jwt()))
                .and_then(|jwk| DecodingKey::from_jwk(&jwk))
                .map_err(|e| bad_key(&what, format!("unusable {alg} public key ({e})")))
        }
        (KeyMaterial::Secret(_), _) => Err(bad_key(&what, format!("{alg} needs a PEM key"))),
    }
}

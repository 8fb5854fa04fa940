//! JWT issuing and verification for gatehouse sessions.
//!
//! Pure code: no network, no clock (callers pass `now` as unix seconds), no Pingora types.
//! Built on `jsonwebtoken` (aws-lc-rs backend) for signing and signature checks; every claim
//! check is done here, strictly typed, against the caller's `now`.
//!
//! Key handling:
//! - `HS256` uses a shared secret of at least [`MIN_SECRET_LEN`] bytes.
//! - `RS256`, `ES256` and `EdDSA` sign with a PKCS#8 private key PEM (`-----BEGIN PRIVATE
//!   KEY-----`, as produced by `openssl genpkey`; RSA keys may also be PKCS#1). The public half
//!   used to verify our own tokens is derived from the private key, so callers need not pass it.
//! - Extra verification-only keys (by `kid`) support rotation; for the asymmetric algorithms
//!   they may be public key PEMs (SPKI `PUBLIC KEY`, or PKCS#1 `RSA PUBLIC KEY`) or private PEMs.
//!
//! The header `alg` is pinned to the configured algorithm, so `none` and HS/RS confusion
//! tokens are rejected before any key is touched.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod keys;
use keys::{bad_key, signing_pair, verify_key};
pub use keys::{KeyMaterial, KeySource};

/// Largest token (in bytes) that [`Jwt::verify`] will look at, and that [`Jwt::issue`] produces.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Smallest accepted HS256 secret, in bytes (256 bits).
pub const MIN_SECRET_LEN: usize = 32;

/// Which key material. HS256 uses a shared secret; the others PEM files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// HMAC-SHA256 with a shared secret.
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RSA keys of at least 2048 bits).
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl Alg {
    /// The name used in the JWT header and in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::RS256 => "RS256",
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
        }
    }

    fn to_jwt(self) -> Algorithm {
        match self {
            Alg::HS256 => Algorithm::HS256,
            Alg::RS256 => Algorithm::RS256,
            Alg::ES256 => Algorithm::ES256,
            Alg::EdDSA => Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Alg {
    type Err = String;

    /// Parses `HS256`, `RS256`, `ES256` or `EdDSA`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Alg::HS256, Alg::RS256, Alg::ES256, Alg::EdDSA]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown JWT algorithm {s:?}; expected one of HS256, RS256, ES256, EdDSA")
            })
    }
}

/// Whether a token is a short-lived access token or a refresh token (the `typ` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// Presented on every request.
    Access,
    /// Only accepted by the refresh endpoint.
    Refresh,
}

/// The claims gatehouse issues and requires. All are required on verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// User role (patient, doctor, institution, admin).
    pub role: String,
    /// Session id shared by the access and refresh tokens of one login.
    pub sid: String,
    /// Unique token id (128 random bits, hex); the session store key.
    pub jti: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Not before (unix seconds).
    pub nbf: i64,
    /// Expiry (unix seconds).
    pub exp: i64,
    /// Issuer.
    pub iss: String,
    /// Audience (a single string).
    pub aud: String,
    /// Access or refresh.
    pub typ: TokenType,
}

/// Everything [`Jwt::new`] needs.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// The pinned algorithm.
    pub alg: Alg,
    /// `iss` put in and required.
    pub issuer: String,
    /// `aud` put in and required.
    pub audience: String,
    /// Lifetime of access tokens (15 min by default in the config).
    pub access_ttl: Duration,
    /// Lifetime of refresh tokens (7 days by default in the config).
    pub refresh_ttl: Duration,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// The key that signs new tokens (its kid goes in the header when set). For HS256 a
    /// `Secret`; otherwise `PrivatePem`. It always verifies too: for RS256/ES256/EdDSA its
    /// public half is derived from the private PEM, no public PEM needed.
    pub signing: KeySource,
    /// Extra verification-only keys (rotation). Each needs a distinct `kid`. HS256: `Secret`;
    /// others: `PublicPem` or `PrivatePem`. An entry with the signing key's kid (even `None`)
    /// is taken as the signing key's public half: it must match it and is otherwise unused.
    pub verify_only: Vec<KeySource>,
}

/// Why a key could not be loaded or a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// HS256 secret shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("HS256 secret must be at least {MIN_SECRET_LEN} bytes")]
    WeakSecret,
    /// Unparsable PEM, key of the wrong kind for the algorithm, or inconsistent key set.
    #[error("bad key: {0}")]
    BadKey(String),
    /// Token longer than [`MAX_TOKEN_LEN`] bytes.
    #[error("token larger than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    /// Not three base64url segments with a JSON header and JSON object payload.
    #[error("malformed token")]
    Malformed,
    /// Signature does not match.
    #[error("bad signature")]
    BadSignature,
    /// Header `kid` names no configured key.
    #[error("unknown key id")]
    UnknownKid,
    /// Header `alg` differs from the configured algorithm.
    #[error("wrong algorithm")]
    WrongAlgorithm,
    /// `exp` is past (beyond leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond leeway).
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `iss` differs from the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` differs from the configured audience.
    #[error("wrong audience")]
    WrongAudience,
    /// `typ` is not the expected token type.
    #[error("wrong token type")]
    WrongType,
    /// A required claim is absent, null or (for `sub`/`jti`) empty.
    #[error("missing claim {0}")]
    MissingClaim(String),
    /// A claim has the wrong JSON type (e.g. `exp` as a string).
    #[error("invalid claim {0}")]
    InvalidClaim(String),
    /// Unexpected failure (RNG, signing).
    #[error("internal error: {0}")]
    Internal(String),
}

impl JwtError {
    /// Short snake_case label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::WeakSecret => "weak_secret",
            JwtError::BadKey(_) => "bad_key",
            JwtError::TooLarge => "too_large",
            JwtError::Malformed => "malformed",
            JwtError::BadSignature => "bad_signature",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::WrongAlgorithm => "wrong_algorithm",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::IssuedInFuture => "issued_in_future",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::WrongType => "wrong_type",
            JwtError::MissingClaim(_) => "missing_claim",
            JwtError::InvalidClaim(_) => "invalid_claim",
            JwtError::Internal(_) => "internal",
        }
    }
}

/// The part of the header we look at before touching any key.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// A configured issuer/verifier. Cheap to share (`Arc<Jwt>`); holds no interior mutability.
pub struct Jwt {
    alg: Alg,
    issuer: String,
    audience: String,
    access_ttl: i64,
    refresh_ttl: i64,
    leeway: i64,
    signing_kid: Option<String>,
    encoding: EncodingKey,
    /// Verifies tokens without a `kid`.
    default_key: DecodingKey,
    /// Every key by kid, the signing key included when it has one.
    by_kid: HashMap<String, DecodingKey>,
    validation: Validation,
    /// Tokens whose signature, header and claim shapes (and issuer, audience) were already
    /// checked, with their claims: a repeated token costs a map lookup instead of a
    /// signature check and two JSON decodes. Time and type are checked on every use.
    verified: std::sync::Mutex<HashMap<Box<str>, Claims>>,
}

/// Tokens kept in [`Jwt::verify`]'s cache; when full, expired ones go, then all.
const VERIFIED_CACHE_MAX: usize = 10_000;

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt")
            .field("alg", &self.alg)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("signing_kid", &self.signing_kid)
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn b64_json<T: serde::de::DeserializeOwned>(segment: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

fn take_str(map: &mut Map<String, Value>, name: &str) -> Result<String, JwtError> {
    match map.remove(name) {
        None | Some(Value::Null) => Err(JwtError::MissingClaim(name.to_owned())),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(JwtError::InvalidClaim(name.to_owned())),
    }
}

fn take_i64(map: &mut Map<String, Value>, name: &str) -> Result<i64, JwtError> {
    match map.remove(name) {
        None | Some(Value::Null) => Err(JwtError::MissingClaim(name.to_owned())),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| JwtError::InvalidClaim(name.to_owned())),
        Some(_) => Err(JwtError::InvalidClaim(name.to_owned())),
    }
}

fn non_empty(value: String, name: &str) -> Result<String, JwtError> {
    if value.is_empty() {
        Err(JwtError::MissingClaim(name.to_owned()))
    } else {
        Ok(value)
    }
}

impl Jwt {
    /// Loads and checks every key now: HS256 secrets must be at least 32 bytes, PEMs must parse
    /// as the right kind for `alg`, asymmetric signing keys must sign and verify a probe.
    pub fn new(settings: JwtSettings) -> Result<Jwt, JwtError> {
        let alg = settings.alg;
        let (encoding, default_key) = signing_pair(alg, &settings.signing, "signing key")?;
        let mut by_kid = HashMap::new();
        if let Some(kid) = &settings.signing.kid {
            by_kid.insert(kid.clone(), default_key.clone());
        }
        for src in &settings.verify_only {
            let key = verify_key(alg, src)?;
            if src.kid == settings.signing.kid {
                // The signing key's own public half, passed alongside it: redundant (it is
                // derived), but it must be the same key.
                let msg = b"gatehouse-key-match";
                let sig = jsonwebtoken::crypto::sign(msg, &encoding, alg.to_jwt())
                    .map_err(|e| bad_key("signing key", e))?;
                if !jsonwebtoken::crypto::verify(&sig, msg, &key, alg.to_jwt()).unwrap_or(false) {
                    let kid = src.kid.as_deref().unwrap_or("");
                    return Err(JwtError::BadKey(format!(
                        "verify-only key {kid:?} has the signing key's kid but does not match it"
                    )));
                }
                continue;
            }
            let Some(kid) = &src.kid else {
                return Err(JwtError::BadKey("verify-only keys need a kid".into()));
            };
            if by_kid.insert(kid.clone(), key).is_some() {
                return Err(JwtError::BadKey(format!("duplicate kid {kid:?}")));
            }
        }
        let mut validation = Validation::new(alg.to_jwt());
        // Signature and algorithm only; every claim is checked in `verify` against `now`.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Ok(Jwt {
            alg,
            issuer: settings.issuer,
            audience: settings.audience,
            access_ttl: secs(settings.access_ttl),
            refresh_ttl: secs(settings.refresh_ttl),
            leeway: secs(settings.leeway),
            signing_kid: settings.signing.kid,
            encoding,
            default_key,
            by_kid,
            validation,
            verified: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The configured (pinned) algorithm.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Issues a token of `typ` for the given identity; `now` is unix seconds; returns the token
    /// and its claims. `jti` is 128 random bits in hex; `nbf = iat = now`; `exp = now + ttl`.
    pub fn issue(
        &self,
        sub: &str,
        role: &str,
        sid: &str,
        typ: TokenType,
        now: i64,
    ) -> Result<(String, Claims), JwtError> {
        let mut jti = [0u8; 16];
        rand::rngs::OsRng
            .try_fill_bytes(&mut jti)
            .map_err(|e| JwtError::Internal(format!("random jti: {e}")))?;
        let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
        self.sign(sub, role, sid, &jti, typ, now)
    }

    /// Re-issues an access token keeping an existing `jti` (a renewed cookie for a live
    /// session); otherwise like [`Jwt::issue`] with [`TokenType::Access`].
    pub fn issue_with_jti(
        &self,
        sub: &str,
        role: &str,
        sid: &str,
        jti: &str,
        now: i64,
    ) -> Result<(String, Claims), JwtError> {
        self.sign(sub, role, sid, jti, TokenType::Access, now)
    }

    fn sign(
        &self,
        sub: &str,
        role: &str,
        sid: &str,
        jti: &str,
        typ: TokenType,
        now: i64,
    ) -> Result<(String, Claims), JwtError> {
        if sub.is_empty() {
            return Err(JwtError::MissingClaim("sub".into()));
        }
        if jti.is_empty() {
            return Err(JwtError::MissingClaim("jti".into()));
        }
        let ttl = match typ {
            TokenType::Access => self.access_ttl,
            TokenType::Refresh => self.refresh_ttl,
        };
        let claims = Claims {
            sub: sub.to_owned(),
            role: role.to_owned(),
            sid: sid.to_owned(),
            jti: jti.to_owned(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            typ,
        };
        let mut header = Header::new(self.alg.to_jwt());
        header.kid = self.signing_kid.clone();
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| JwtError::Internal(format!("signing: {e}")))?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::TooLarge);
        }
        Ok((token, claims))
    }

    /// Verifies a token: size ≤ [`MAX_TOKEN_LEN`], header `alg` equal to the configured one,
    /// `kid` (if present) selects the key (unknown → `UnknownKid`; absent → the signing key),
    /// signature, every claim present and correctly typed, `iss`/`aud` exact, `exp`/`nbf` with
    /// leeway, `iat` not beyond `now + leeway`, `typ == expected`, `sub`/`jti` non-empty.
    pub fn verify(&self, token: &str, expected: TokenType, now: i64) -> Result<Claims, JwtError> {
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        let claims = match cached {
            Some(c) => c,
            None => {
                let c = self.verify_signed(token)?;
                let mut m = self.verified.lock().unwrap_or_else(|e| e.into_inner());
                if m.len() >= VERIFIED_CACHE_MAX {
                    m.retain(|_, c| now < c.exp.saturating_add(self.leeway));
                    if m.len() >= VERIFIED_CACHE_MAX {
                        m.clear();
                    }
                }
                m.insert(token.into(), c.clone());
                c
            }
        };
        self.check_time_and_type(claims, expected, now)
    }

    /// Everything about a token that does not depend on the time or the expected type:
    /// size, shape, algorithm, key, signature, claim types, issuer and audience.
    fn verify_signed(&self, token: &str) -> Result<Claims, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let b64url = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if header.is_empty()
            || payload.is_empty()
            || ![header, payload, signature].iter().all(|s| b64url(s))
        {
            return Err(JwtError::Malformed);
        }
        let header: RawHeader = b64_json(header)?;
        if header.alg != self.alg.as_str() {
            return Err(JwtError::WrongAlgorithm);
        }
        let key = match &header.kid {
            Some(kid) => self.by_kid.get(kid).ok_or(JwtError::UnknownKid)?,
            None => &self.default_key,
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation)
            .map_err(|e| match e.into_kind() {
                ErrorKind::InvalidSignature => JwtError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                    JwtError::WrongAlgorithm
                }
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => JwtError::Malformed,
                other => JwtError::Internal(format!("verifying: {other:?}")),
            })?;
        let mut map = data.claims;
        let typ = take_str(&mut map, "typ")?;
        let claims = Claims {
            sub: non_empty(take_str(&mut map, "sub")?, "sub")?,
            role: take_str(&mut map, "role")?,
            sid: take_str(&mut map, "sid")?,
            jti: non_empty(take_str(&mut map, "jti")?, "jti")?,
            iat: take_i64(&mut map, "iat")?,
            nbf: take_i64(&mut map, "nbf")?,
            exp: take_i64(&mut map, "exp")?,
            iss: take_str(&mut map, "iss")?,
            aud: take_str(&mut map, "aud")?,
            typ: match typ.as_str() {
                "access" => TokenType::Access,
                "refresh" => TokenType::Refresh,
                _ => return Err(JwtError::WrongType),
            },
        };
        if claims.iss != self.issuer {
            return Err(JwtError::WrongIssuer);
        }
        if claims.aud != self.audience {
            return Err(JwtError::WrongAudience);
        }
        Ok(claims)
    }

    fn check_time_and_type(
        &self,
        claims: Claims,
        expected: TokenType,
        now: i64,
    ) -> Result<Claims, JwtError> {
        if now >= claims.exp.saturating_add(self.leeway) {
            return Err(JwtError::Expired);
        }
        if claims.nbf > now.saturating_add(self.leeway) {
            return Err(JwtError::NotYetValid);
        }
        if claims.iat > now.saturating_add(self.leeway) {
            return Err(JwtError::IssuedInFuture);
        }
        if claims.typ != expected {
            return Err(JwtError::WrongType);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const ISS: &str = "gatehouse";
    const AUD: &str = "gatehouse-clients";

    // Fixtures generated once with `openssl genpkey` (RSA 2048, EC P-256, Ed25519) and
    // `openssl pkey -pubout`. Test-only keys; never use them anywhere else.
    const RSA1_PRIV: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCgWv+qzZfbBVpL\n\
DBk3jo/Y/OgtWNs1hOSZPNUA2xkBhugPlWU7LnM5BakMGPUIa7iLiXopNRyt5zQh\n\
PTTDoBs0cpFQEISnC5nNT65JYQjK7j78pXjlRrqlngstfN1zku3rfdo4zHI8Bld+\n\
liJ6PhMf+dA9HyzpVwDaGFX3dxB2OsHpJVQYLFNbM0d03W/Un1/DApLjRMYx/WXs\n\
wlr0q54hGhy1l2b0K3Q2YZijVIynqynxi28CwAA9A3fY3p0LNR4cg/Z7eEbQBa+s\n\
dph6LUumGvKWaAtXUBnemSIXq7S75CzLTk3qrTscbOyZOFI/sYyf6tAM1kqk8GpI\n\
ozy+E1RfAgMBAAECggEASzoFgQKMP/Kl5lkZp2eY8inLXiK2S8g5We4g2xLuCzpX\n\
uZ/Tas0ivth58rPul/G5FLT8+0HwX2D8oq9NBo0g1hz9MLtfD+KwV5IO6Fu+PT1B\n\
jVKvgZgJzdJz2fYfCa4fMX/MFSNMX/51o2wZZpGidTjDyTjL3/ex7Z7HDZ3suhme\n\
VrIW0x18gnchrHSBc82Gii/XbnC7hm3i+kpP9TT4hrR9VUdDhOA4v3qr6FwP7Sn9\n\
gm7coSF7zjtiayo0k5XuEwX64KAExCXcs95CWxxDhTYDAijfwjnmqPHpUvxebPaQ\n\
AaGlDu3KafSl6tYqrxkQ4EW/Osz2uJxC638cIA2uuQKBgQDRDO7bFvti5J5hdq9Y\n\
ZQFk1p65ucdOzCjMVsCp3xVEDPl0jpB7zgqky9D0+mWqjJF7et3MxWDOsvfxvaVi\n\
Z2u2VQqZhUGK4shKtLXlYx/wSjSu81oDx63aW9RzwLQLkEDdPXjB915v2vfDEMzi\n\
awdYuwX91Ah5JFTGZNWyFdVcbQKBgQDEXmleW6PVD5frd4V/Bi2YAZx6+mCIKoZ6\n\
D2WmZaOxd/I6RvIyCCE2iOuNwsMqmnKHUSF2xnFUS/Gn+WVYZpDQBzA9eVmApgjB\n\
UeNWEAtcj/gl19RaJr85t4ECQ5GwvI2tuc0hkMfowkCZBX4AL6BRvfQjSwM2VQsn\n\
QozwY8QcewKBgDhfnXXVb7sOXat4vvY+Xq7btXfuIlIcehAIgPIOJ4TvXsHQxCOu\n\
v24LTHETqSDhwUWkL3XN8DotRvGYq6WqsAA+VJprte4HE+4ZZ0fRgEZjLGvVUfvc\n\
+AP/aX5BhAvuPZ+ruQnNdFkDmnau7CFOrW9/F7GIYTSR2I6bmIjqnFvNAoGAXK9H\n\
Qp80a/spNJ28Z+EtogKYrj8BUyPnRzN/QhPVOI2pyjH0XQMTUh88NzQHVFOD3TTA\n\
+8Pcd/JEhIkleZ0nmtjZvxpI0X0Mwtp42AVIp47YjFwbwdVqCr7/aGcmG+pTYP1C\n\
wiYJBWaygMdj2oigPhTPZ90fDgUD96rkxQ4B4YMCgYAjSUHQ0azzb3eyF/68w6s6\n\
EnggnelbvFeGTxBF1cH3V8yX0M0JXlC114LT+DUG4+hXsdvvqXIXqpU1yQBL6sE7\n\
h3coj9V7S9s21nJpDqNuG7vViFfGEoms44y/DDz1FOOHCUzsSpAncYGUbsX9Yf4V\n\
271EBP3RXisy8739UJTkqQ==\n\
-----END PRIVATE KEY-----\n";
    const RSA2_PRIV: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEuwIBADANBgkqhkiG9w0BAQEFAASCBKUwggShAgEAAoIBAQCXLMRHjZKuQipK\n\
LeyJ+EN3DEHDziq5bkTZGs41ezGNXOU0JL9vWk4lKhwKIlWvMzR57jXNauTZxAgF\n\
m/CvjJCFbFtrsNvxRgUkzjf+T/7Du7Y9zqHR+Bw1XZiO3aP0OFAKKdWoZlts4S5p\n\
jFo2aAjPnZ0v4Tz89NqyyMQgp+l5lmVCQXkxVbbhpDTrj5fZ6zhcMHykbUUnNX/B\n\
F6mSvhcPE3JLjQ0yDlGDrGCoJ84U9VSEGMyEiZe62RZ6DSLepxjIisnQQ6ejBIhH\n\
l+EekDDXE9BJjF1h0mjB1S0oD1a0dIrkd1nwygoSrVsNMDxcjbwHFX03SSfbZ/Sx\n\
ZzcF/nTFAgMBAAECgf8EXB/snT4+9t68X4lj5Z7T9lmmDn+hTcpUwbihyECMqZc4\n\
dw9eHnN48gjCY08OqNrE+T/+Xn+RkwbJcmsSim33B1/XcHKKUpo6cIY6LiUOjV0C\n\
Rr/Hun+us+Fq/jU/m6yfUfKj+vX31cyF2wMO1HLuRBoXi5D5NaWKEWgbnPFLtpaW\n\
7i5bp/KgUocgANWaJ4ZAaqiMYq6PVFbMcII51uYERjBl6RDvRxBGSUjXuMt24x6H\n\
JjbFosb0NnDZh/hrxi6sDWHsxD/j3IvRERcKSvFTaKCWVmXyqqJXQiHNMdQwkM1h\n\
mWYfuxuUtbIXIiscSFHVES3YDlnUlmKFY4+4yU8CgYEAzWY9K+fEUW3upTOvEuU5\n\
5cIGQYaqR/mHf+eB7q7VUjUuot++7Z0RmVm8kO3ranaF/JJlbWnrSIXAYPvJyBI9\n\
AGPEt+dTBifwTTqdIRCgk5fauhWcQ13jjynD2k6U3yxRYtVbtVyp5QaKPQ5rdT1c\n\
D5qr4XNNjfBJmZU6CoCqG2MCgYEAvGrLLz90VK8DwCZACqTtU9WfgQBSTwC04YSA\n\
CvAnjNKOMl6ssIxyFdInoHpLqXzhv4gGLAV7u1HRmz0KUsbcuBdK0aIGRrbyMQuK\n\
e4BTuciKpGpLkSHiUrIWF1v/g6WwJ9/dPg0JBqXxAAAwqQxoVOk/HEJ4yNvrb+Pa\n\
KOgL67cCgYBWqgC9ebj3sq6yva/tBRL8wnTpSOyoGbz2VrQYBWS0nwPibQ2eLFu0\n\
nIxXikt+TCwUeaCaHcrMesLFKPfmlutuMqpZ/hylyEw4CbcqsF1QaQ483cllE0Rk\n\
r3aXsfhWgdiFHwjm6QY2QCAryt3ERfOGEfjb006xyOUFDFXFAKzFiQKBgBswSeui\n\
e3Xw31it7FXc4MZVMDQcSMRPtMpKJXPunbZrd8t67+52BcxyS/eTTjHB7I2H4mQd\n\
0nIAZ3/AOiohuh3ydoBzofY4VhCPuscBiJNpheAd2pOx0Qff3OI4C1IC6b2HR1S5\n\
6tCDx5gZbuwl9zQxiELasLVDTuERfxyiB35XAoGBAKYAbPY0uJij4V6ABQJjxlY7\n\
FjDzITnFgFril4NrMTLuib1kNT71d3F/U5Alnmk5wJ/dIFdqFnmig0xLpl9CK0K6\n\
7kgqi0kx/69QlKYmLFQkz518VlQ3ZQ+crUohiiJn3xDIo3Mk3YA7zsJC+buoBBqb\n\
GMDYdlkI5ljokD5kQ7+D\n\
-----END PRIVATE KEY-----\n";
    const EC1_PRIV: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMMi6BOOM6FGLD5LX\n\
yPsi4FyG6E9O0+rjOQo/7xW4acehRANCAAQUVxYVjnogo9SOA7B5yE3DhndZQjsG\n\
ooQFMXMHGW2c42WHn6ECzgcDUFBc0CF9BlPEChDspimC9/kgLYflU8pm\n\
-----END PRIVATE KEY-----\n";
    const EC2_PRIV: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg+E4dqpge4OSctPdg\n\
ImByBX59o5f0CMRJKSuz+oEpBw+hRANCAARNA2q3vP2G3mNXUyC1QNeL9+DlA+t0\n\
njEj/wd2w927vovyXz2zNJGxUsYjHPdzZHqU6ndeNbfK5YUnCRoQEy2t\n\
-----END PRIVATE KEY-----\n";
    const ED1_PRIV: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIE33yfTbsPzK97ZNVBjnO21PKkAayr6WbNzZCeXpsDMX\n\
-----END PRIVATE KEY-----\n";
    const ED2_PRIV: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIEX9BQf418s8Rs6vSTYdGEEbUW3Ph0mlnZLniBez5bF/\n\
-----END PRIVATE KEY-----\n";
    const RSA1_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAoFr/qs2X2wVaSwwZN46P\n\
2PzoLVjbNYTkmTzVANsZAYboD5VlOy5zOQWpDBj1CGu4i4l6KTUcrec0IT00w6Ab\n\
NHKRUBCEpwuZzU+uSWEIyu4+/KV45Ua6pZ4LLXzdc5Lt633aOMxyPAZXfpYiej4T\n\
H/nQPR8s6VcA2hhV93cQdjrB6SVUGCxTWzNHdN1v1J9fwwKS40TGMf1l7MJa9Kue\n\
IRoctZdm9Ct0NmGYo1SMp6sp8YtvAsAAPQN32N6dCzUeHIP2e3hG0AWvrHaYei1L\n\
phrylmgLV1AZ3pkiF6u0u+Qsy05N6q07HGzsmThSP7GMn+rQDNZKpPBqSKM8vhNU\n\
XwIDAQAB\n\
-----END PUBLIC KEY-----\n";
    const EC1_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEFFcWFY56IKPUjgOwechNw4Z3WUI7\n\
BqKEBTFzBxltnONlh5+hAs4HA1BQXNAhfQZTxAoQ7KYpgvf5IC2H5VPKZg==\n\
-----END PUBLIC KEY-----\n";
    const ED1_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEALitkXLixtEtnCA5WfgK5c/cXI/ZaL4zru1GHaYb2uYo=\n\
-----END PUBLIC KEY-----\n";

    fn key(kid: Option<&str>, material: KeyMaterial) -> KeySource {
        KeySource {
            kid: kid.map(str::to_owned),
            material,
        }
    }

    fn private(pem: &str) -> KeyMaterial {
        KeyMaterial::PrivatePem(pem.as_bytes().to_vec())
    }

    fn public(pem: &str) -> KeyMaterial {
        KeyMaterial::PublicPem(pem.as_bytes().to_vec())
    }

    fn settings(alg: Alg, signing: KeySource, verify_only: Vec<KeySource>) -> JwtSettings {
        JwtSettings {
            alg,
            issuer: ISS.into(),
            audience: AUD.into(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            leeway: Duration::from_secs(30),
            signing,
            verify_only,
        }
    }

    fn jwt(alg: Alg, signing: KeySource, verify_only: Vec<KeySource>) -> Jwt {
        Jwt::new(settings(alg, signing, verify_only)).unwrap()
    }

    fn hs() -> Jwt {
        jwt(
            Alg::HS256,
            key(None, KeyMaterial::Secret(SECRET.to_vec())),
            vec![],
        )
    }

    fn rs() -> Jwt {
        jwt(Alg::RS256, key(None, private(RSA1_PRIV)), vec![])
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    /// Valid claims for the test settings, as raw JSON so tests can break them.
    fn claims_json() -> Value {
        json!({
            "sub": "user-1", "role": "doctor", "sid": "sess-1", "jti": "00ff",
            "iat": NOW, "nbf": NOW, "exp": NOW + 900,
            "iss": ISS, "aud": AUD, "typ": "access",
        })
    }

    /// Signs arbitrary JSON claims with the test HS256 secret.
    fn sign_hs(claims: &Value) -> String {
        let enc = EncodingKey::from_secret(SECRET);
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &enc).unwrap()
    }

    fn with(field: &str, value: Value) -> Value {
        let mut c = claims_json();
        c[field] = value;
        c
    }

    fn without(field: &str) -> Value {
        let mut c = claims_json();
        c.as_object_mut().unwrap().remove(field);
        c
    }

    fn round_trip(j: &Jwt) {
        for typ in [TokenType::Access, TokenType::Refresh] {
            let (token, issued) = j.issue("user-1", "patient", "sess-1", typ, NOW).unwrap();
            let verified = j.verify(&token, typ, NOW + 10).unwrap();
            assert_eq!(verified, issued);
            assert_eq!(issued.iss, ISS);
            assert_eq!(issued.aud, AUD);
            assert_eq!((issued.iat, issued.nbf), (NOW, NOW));
        }
    }

    #[test]
    fn round_trip_hs256() {
        round_trip(&hs());
    }

    #[test]
    fn round_trip_rs256() {
        round_trip(&rs());
    }

    #[test]
    fn round_trip_es256() {
        round_trip(&jwt(Alg::ES256, key(Some("e1"), private(EC1_PRIV)), vec![]));
    }

    #[test]
    fn round_trip_eddsa() {
        round_trip(&jwt(Alg::EdDSA, key(Some("d1"), private(ED1_PRIV)), vec![]));
    }

    #[test]
    fn issued_claims_have_ttl_random_jti_and_kid_header() {
        let j = jwt(
            Alg::HS256,
            key(Some("k9"), KeyMaterial::Secret(SECRET.to_vec())),
            vec![],
        );
        let (t1, a) = j.issue("u", "admin", "s", TokenType::Access, NOW).unwrap();
        let (_, r) = j.issue("u", "admin", "s", TokenType::Refresh, NOW).unwrap();
        assert_eq!(a.exp, NOW + 900);
        assert_eq!(r.exp, NOW + 7 * 24 * 3600);
        assert_eq!(a.jti.len(), 32);
        assert!(a.jti.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.jti, r.jti);
        let header = jsonwebtoken::decode_header(&t1).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k9"));
        assert_eq!(header.alg, Algorithm::HS256);
    }

    #[test]
    fn a_cached_token_is_still_checked_for_time_and_type() {
        let j = hs();
        let (t, _) = j.issue("u", "admin", "s", TokenType::Access, NOW).unwrap();
        assert!(j.verify(&t, TokenType::Access, NOW).is_ok());
        // Now in the cache: the second verification skips the signature, not the rules.
        assert!(matches!(
            j.verify(&t, TokenType::Refresh, NOW),
            Err(JwtError::WrongType)
        ));
        assert!(matches!(
            j.verify(&t, TokenType::Access, NOW + 900 + 3600),
            Err(JwtError::Expired)
        ));
        assert!(matches!(
            j.verify(&t, TokenType::Access, NOW - 3600),
            Err(JwtError::NotYetValid | JwtError::IssuedInFuture)
        ));
        assert!(j.verify(&t, TokenType::Access, NOW + 1).is_ok());
        // A token differing in one signature byte is a different key: fully verified, refused.
        let mut bad = t.clone();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        assert!(j.verify(&bad, TokenType::Access, NOW).is_err());
        // Another instance (other keys) never sees this cache.
        let other = jwt(
            Alg::HS256,
            key(
                None,
                KeyMaterial::Secret(b"another-secret-of-at-least-32-bytes!!".to_vec()),
            ),
            vec![],
        );
        assert!(matches!(
            other.verify(&t, TokenType::Access, NOW),
            Err(JwtError::BadSignature)
        ));
    }

    #[test]
    fn issue_refuses_empty_sub() {
        let err = hs()
            .issue("", "admin", "s", TokenType::Access, NOW)
            .unwrap_err();
        assert!(matches!(err, JwtError::MissingClaim(c) if c == "sub"));
    }

    #[test]
    fn access_token_rejected_as_refresh_and_vice_versa() {
        let j = hs();
        let (access, _) = j.issue("u", "r", "s", TokenType::Access, NOW).unwrap();
        let (refresh, _) = j.issue("u", "r", "s", TokenType::Refresh, NOW).unwrap();
        assert!(matches!(
            j.verify(&access, TokenType::Refresh, NOW),
            Err(JwtError::WrongType)
        ));
        assert!(matches!(
            j.verify(&refresh, TokenType::Access, NOW),
            Err(JwtError::WrongType)
        ));
        let odd = sign_hs(&with("typ", json!("id")));
        assert!(matches!(
            j.verify(&odd, TokenType::Access, NOW),
            Err(JwtError::WrongType)
        ));
    }

    #[test]
    fn alg_none_token_rejected() {
        let payload = b64(&claims_json().to_string());
        for j in [hs(), rs()] {
            for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"NONE"}"#] {
                let token = format!("{}.{payload}.", b64(header));
                let err = j.verify(&token, TokenType::Access, NOW).unwrap_err();
                assert!(matches!(err, JwtError::WrongAlgorithm), "{err:?}");
            }
        }
    }

    #[test]
    fn hs256_token_signed_with_rsa_public_key_rejected_by_rs256_verifier() {
        let j = rs();
        let hmac_key = EncodingKey::from_secret(RSA1_PUB.as_bytes());
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims_json(), &hmac_key)
            .unwrap();
        let err = j.verify(&token, TokenType::Access, NOW).unwrap_err();
        assert!(matches!(err, JwtError::WrongAlgorithm), "{err:?}");
        // Same trick with the header relabelled RS256: the HMAC is not an RSA signature.
        let signing_input = format!(
            "{}.{}",
            b64(r#"{"alg":"RS256","typ":"JWT"}"#),
            b64(&claims_json().to_string())
        );
        let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &hmac_key, Algorithm::HS256)
            .unwrap();
        let err = j
            .verify(&format!("{signing_input}.{sig}"), TokenType::Access, NOW)
            .unwrap_err();
        assert!(matches!(err, JwtError::BadSignature), "{err:?}");
    }

    #[test]
    fn token_signed_with_different_key_rejected() {
        let other_secret = KeyMaterial::Secret(b"another-secret-another-secret-32".to_vec());
        let cases = [
            (
                Alg::HS256,
                KeyMaterial::Secret(SECRET.to_vec()),
                other_secret,
            ),
            (Alg::RS256, private(RSA1_PRIV), private(RSA2_PRIV)),
            (Alg::ES256, private(EC1_PRIV), private(EC2_PRIV)),
            (Alg::EdDSA, private(ED1_PRIV), private(ED2_PRIV)),
        ];
        for (alg, mine, theirs) in cases {
            let verifier = jwt(alg, key(None, mine), vec![]);
            let forger = jwt(alg, key(None, theirs), vec![]);
            let (token, _) = forger
                .issue("u", "admin", "s", TokenType::Access, NOW)
                .unwrap();
            let err = verifier.verify(&token, TokenType::Access, NOW).unwrap_err();
            assert!(matches!(err, JwtError::BadSignature), "{alg}: {err:?}");
        }
    }

    #[test]
    fn expired_beyond_leeway_rejected() {
        let j = hs();
        let (token, c) = j.issue("u", "r", "s", TokenType::Access, NOW).unwrap();
        let err = j.verify(&token, TokenType::Access, c.exp + 30).unwrap_err();
        assert!(matches!(err, JwtError::Expired));
        assert!(matches!(
            j.verify(&token, TokenType::Access, c.exp + 3600),
            Err(JwtError::Expired)
        ));
    }

    #[test]
    fn expired_within_leeway_accepted() {
        let j = hs();
        let (token, c) = j.issue("u", "r", "s", TokenType::Access, NOW).unwrap();
        assert!(j.verify(&token, TokenType::Access, c.exp + 29).is_ok());
    }

    #[test]
    fn future_nbf_rejected() {
        let token = sign_hs(&with("nbf", json!(NOW + 31)));
        assert!(matches!(
            hs().verify(&token, TokenType::Access, NOW),
            Err(JwtError::NotYetValid)
        ));
        let token = sign_hs(&with("nbf", json!(NOW + 30)));
        assert!(hs().verify(&token, TokenType::Access, NOW).is_ok());
    }

    #[test]
    fn future_iat_beyond_leeway_rejected() {
        let token = sign_hs(&with("iat", json!(NOW + 31)));
        assert!(matches!(
            hs().verify(&token, TokenType::Access, NOW),
            Err(JwtError::IssuedInFuture)
        ));
        let token = sign_hs(&with("iat", json!(NOW + 30)));
        assert!(hs().verify(&token, TokenType::Access, NOW).is_ok());
    }

    #[test]
    fn wrong_issuer_rejected() {
        let token = sign_hs(&with("iss", json!("evil")));
        assert!(matches!(
            hs().verify(&token, TokenType::Access, NOW),
            Err(JwtError::WrongIssuer)
        ));
    }

    #[test]
    fn wrong_audience_rejected() {
        let token = sign_hs(&with("aud", json!("someone-else")));
        assert!(matches!(
            hs().verify(&token, TokenType::Access, NOW),
            Err(JwtError::WrongAudience)
        ));
    }

    #[test]
    fn missing_jti_rejected() {
        let token = sign_hs(&without("jti"));
        let err = hs().verify(&token, TokenType::Access, NOW).unwrap_err();
        assert!(
            matches!(err, JwtError::MissingClaim(ref c) if c == "jti"),
            "{err:?}"
        );
    }

    #[test]
    fn missing_sub_rejected() {
        let token = sign_hs(&without("sub"));
        let err = hs().verify(&token, TokenType::Access, NOW).unwrap_err();
        assert!(
            matches!(err, JwtError::MissingClaim(ref c) if c == "sub"),
            "{err:?}"
        );
    }

    #[test]
    fn every_claim_is_required() {
        for field in [
            "sub", "role", "sid", "jti", "iat", "nbf", "exp", "iss", "aud", "typ",
        ] {
            for claims in [without(field), with(field, Value::Null)] {
                let err = hs()
                    .verify(&sign_hs(&claims), TokenType::Access, NOW)
                    .unwrap_err();
                assert!(
                    matches!(err, JwtError::MissingClaim(ref c) if c == field),
                    "{err:?}"
                );
            }
        }
    }

    #[test]
    fn empty_sub_rejected() {
        for field in ["sub", "jti"] {
            let token = sign_hs(&with(field, json!("")));
            let err = hs().verify(&token, TokenType::Access, NOW).unwrap_err();
            assert!(
                matches!(err, JwtError::MissingClaim(ref c) if c == field),
                "{err:?}"
            );
        }
    }

    #[test]
    fn tampered_payload_rejected() {
        for j in [hs(), rs()] {
            let (token, _) = j
                .issue("u", "patient", "s", TokenType::Access, NOW)
                .unwrap();
            let parts: Vec<&str> = token.split('.').collect();
            let payload = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
            let payload = String::from_utf8(payload)
                .unwrap()
                .replace("patient", "admin");
            let forged = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
            let err = j.verify(&forged, TokenType::Access, NOW).unwrap_err();
            assert!(matches!(err, JwtError::BadSignature), "{err:?}");
        }
    }

    #[test]
    fn oversized_token_rejected_before_parsing() {
        let j = hs();
        let junk = "x".repeat(MAX_TOKEN_LEN + 1);
        assert!(matches!(
            j.verify(&junk, TokenType::Access, NOW),
            Err(JwtError::TooLarge)
        ));
        let token = sign_hs(&with("role", json!("r".repeat(4000))));
        assert!(token.len() > MAX_TOKEN_LEN);
        assert!(matches!(
            j.verify(&token, TokenType::Access, NOW),
            Err(JwtError::TooLarge)
        ));
        let huge = "r".repeat(4000);
        assert!(matches!(
            j.issue("u", &huge, "s", TokenType::Access, NOW),
            Err(JwtError::TooLarge)
        ));
    }

    #[test]
    fn wrong_typed_claim_rejected() {
        let cases = [
            ("exp", json!("9999999999")),
            ("exp", json!(9_999_999_999.5)),
            ("nbf", json!("0")),
            ("iat", json!(true)),
            ("sub", json!(123)),
            ("jti", json!(["a"])),
            ("iss", json!([ISS])),
            ("aud", json!([AUD])),
            ("role", json!({"r": 1})),
            ("typ", json!(1)),
        ];
        for (field, value) in cases {
            let token = sign_hs(&with(field, value.clone()));
            let err = hs().verify(&token, TokenType::Access, NOW).unwrap_err();
            assert!(
                matches!(err, JwtError::InvalidClaim(ref c) if c == field),
                "{field}={value}: {err:?}"
            );
        }
    }

    #[test]
    fn rotation_old_kid_still_verifies() {
        // HS256: old secret kept as verify-only.
        let old_secret = b"old-secret-old-secret-old-secret".to_vec();
        let old = jwt(
            Alg::HS256,
            key(Some("k1"), KeyMaterial::Secret(old_secret.clone())),
            vec![],
        );
        let new = jwt(
            Alg::HS256,
            key(Some("k2"), KeyMaterial::Secret(SECRET.to_vec())),
            vec![key(Some("k1"), KeyMaterial::Secret(old_secret))],
        );
        let (token, claims) = old.issue("u", "r", "s", TokenType::Access, NOW).unwrap();
        assert_eq!(new.verify(&token, TokenType::Access, NOW).unwrap(), claims);
        let (fresh, _) = new.issue("u", "r", "s", TokenType::Access, NOW).unwrap();
        assert!(new.verify(&fresh, TokenType::Access, NOW).is_ok());
        // Asymmetric: old public key (PEM) kept as verify-only, for each algorithm.
        let cases = [
            (Alg::RS256, RSA1_PRIV, RSA1_PUB, RSA2_PRIV),
            (Alg::ES256, EC1_PRIV, EC1_PUB, EC2_PRIV),
            (Alg::EdDSA, ED1_PRIV, ED1_PUB, ED2_PRIV),
        ];
        for (alg, old_priv, old_pub, new_priv) in cases {
            let old = jwt(alg, key(Some("k1"), private(old_priv)), vec![]);
            let new = jwt(
                alg,
                key(Some("k2"), private(new_priv)),
                vec![key(Some("k1"), public(old_pub))],
            );
            let (token, claims) = old.issue("u", "r", "s", TokenType::Refresh, NOW).unwrap();
            assert_eq!(new.verify(&token, TokenType::Refresh, NOW).unwrap(), claims);
            // An old private PEM works as a verify-only key too.
            let via_private = jwt(
                alg,
                key(Some("k2"), private(new_priv)),
                vec![key(Some("k1"), private(old_priv))],
            );
            assert!(via_private.verify(&token, TokenType::Refresh, NOW).is_ok());
        }
    }

    #[test]
    fn issue_with_jti_keeps_jti() {
        let j = hs();
        let (token, c) = j.issue_with_jti("u", "r", "s", "abc123", NOW).unwrap();
        assert_eq!((c.jti.as_str(), c.typ), ("abc123", TokenType::Access));
        assert_eq!(j.verify(&token, TokenType::Access, NOW).unwrap(), c);
        assert!(matches!(
            j.issue_with_jti("u", "r", "s", "", NOW),
            Err(JwtError::MissingClaim(ref c)) if c == "jti"
        ));
    }

    #[test]
    fn signing_key_public_half_may_be_passed_with_same_kid() {
        for kid in [None, Some("k1")] {
            let own = vec![key(kid, public(RSA1_PUB))];
            let j = jwt(Alg::RS256, key(kid, private(RSA1_PRIV)), own);
            round_trip(&j);
            let wrong = vec![key(kid, private(RSA2_PRIV))];
            let err = Jwt::new(settings(Alg::RS256, key(kid, private(RSA1_PRIV)), wrong));
            assert!(matches!(err, Err(JwtError::BadKey(_))), "{err:?}");
        }
        let own = vec![key(None, public(ED1_PUB))];
        round_trip(&jwt(Alg::EdDSA, key(None, private(ED1_PRIV)), own));
    }

    #[test]
    fn unknown_kid_rejected() {
        let j = hs();
        let other = jwt(
            Alg::HS256,
            key(Some("k7"), KeyMaterial::Secret(SECRET.to_vec())),
            vec![],
        );
        let (token, _) = other.issue("u", "r", "s", TokenType::Access, NOW).unwrap();
        assert!(matches!(
            j.verify(&token, TokenType::Access, NOW),
            Err(JwtError::UnknownKid)
        ));
    }

    #[test]
    fn token_without_kid_uses_signing_key_only() {
        let old_secret = b"old-secret-old-secret-old-secret".to_vec();
        let j = jwt(
            Alg::HS256,
            key(Some("k2"), KeyMaterial::Secret(SECRET.to_vec())),
            vec![key(Some("k1"), KeyMaterial::Secret(old_secret.clone()))],
        );
        assert!(j
            .verify(&sign_hs(&claims_json()), TokenType::Access, NOW)
            .is_ok());
        let by_old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims_json(),
            &EncodingKey::from_secret(&old_secret),
        )
        .unwrap();
        let err = j.verify(&by_old, TokenType::Access, NOW).unwrap_err();
        assert!(matches!(err, JwtError::BadSignature), "{err:?}");
    }

    #[test]
    fn hs256_secret_of_31_bytes_refused() {
        let weak = key(None, KeyMaterial::Secret(vec![7u8; 31]));
        let err = Jwt::new(settings(Alg::HS256, weak, vec![])).unwrap_err();
        assert!(matches!(err, JwtError::WeakSecret));
        let strong = key(None, KeyMaterial::Secret(SECRET.to_vec()));
        let weak_old = key(Some("old"), KeyMaterial::Secret(vec![7u8; 31]));
        let err = Jwt::new(settings(Alg::HS256, strong, vec![weak_old])).unwrap_err();
        assert!(matches!(err, JwtError::WeakSecret));
    }

    #[test]
    fn bad_keys_refused() {
        let secret = || KeyMaterial::Secret(SECRET.to_vec());
        let cases = [
            (Alg::RS256, key(None, secret()), vec![]),
            (Alg::RS256, key(None, public(RSA1_PUB)), vec![]),
            (Alg::RS256, key(None, private(EC1_PRIV)), vec![]),
            (Alg::ES256, key(None, private(RSA1_PRIV)), vec![]),
            (Alg::ES256, key(None, private(ED1_PRIV)), vec![]),
            (Alg::EdDSA, key(None, private(EC1_PRIV)), vec![]),
            (Alg::EdDSA, key(None, private("not a pem")), vec![]),
            (Alg::HS256, key(None, private(RSA1_PRIV)), vec![]),
            (
                Alg::RS256,
                key(None, private(RSA1_PRIV)),
                vec![key(Some("x"), public(EC1_PUB))],
            ),
            (
                Alg::ES256,
                key(Some("a"), private(EC1_PRIV)),
                vec![key(None, public(EC1_PUB))],
            ),
            (
                Alg::ES256,
                key(None, private(EC1_PRIV)),
                vec![key(Some("x"), public("junk"))],
            ),
            (
                Alg::HS256,
                key(Some("a"), secret()),
                vec![key(Some("b"), secret()), key(Some("b"), secret())],
            ),
            (
                Alg::HS256,
                key(Some("a"), secret()),
                vec![key(Some("a"), KeyMaterial::Secret(vec![1; 32]))],
            ),
        ];
        for (alg, signing, verify_only) in cases {
            let err = Jwt::new(settings(alg, signing, verify_only)).unwrap_err();
            assert!(matches!(err, JwtError::BadKey(_)), "{alg}: {err:?}");
        }
    }

    #[test]
    fn garbage_tokens_are_malformed() {
        let header = b64(r#"{"alg":"HS256","typ":"JWT"}"#);
        // Correctly signed, but the payload is not a JSON object.
        let signed = |payload: &str| {
            let input = format!("{header}.{}", b64(payload));
            let key = EncodingKey::from_secret(SECRET);
            let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256);
            format!("{input}.{}", sig.unwrap())
        };
        let garbage = [
            String::new(),
            "a.b".into(),
            "a.b.c".into(),
            "a.b.c.d".into(),
            "..".into(),
            "!!!.@@@.###".into(),
            "é.ü.ß".into(),
            format!("{}.e30.", b64("not json")),
            format!("{}.e30.", b64(r#"{"typ":"JWT"}"#)),
            format!("{}.e30.", b64(r#"{"alg":1}"#)),
            format!("{header}.***.abc"),
            format!("{header}.e30.not*base64"),
            format!("{header}.e30.abc="),
            signed("[1,2]"),
            signed("{"),
            signed("null"),
        ];
        for j in [hs(), rs()] {
            for token in &garbage {
                match j.verify(token, TokenType::Access, NOW) {
                    Err(JwtError::Malformed) => {}
                    // The RS256 verifier refuses the HS256 headers before parsing further.
                    Err(JwtError::WrongAlgorithm) if j.alg() == Alg::RS256 => {}
                    other => panic!("{token:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn alg_parses_case_insensitively() {
        assert_eq!("hs256".parse::<Alg>().unwrap(), Alg::HS256);
        assert_eq!("RS256".parse::<Alg>().unwrap(), Alg::RS256);
        assert_eq!("es256".parse::<Alg>().unwrap(), Alg::ES256);
        assert_eq!("EDDSA".parse::<Alg>().unwrap(), Alg::EdDSA);
        let err = "none".parse::<Alg>().unwrap_err();
        for name in ["HS256", "RS256", "ES256", "EdDSA"] {
            assert!(err.contains(name), "{err}");
        }
        assert_eq!(Alg::EdDSA.to_string(), "EdDSA");
    }

    #[test]
    fn reasons_are_snake_case_labels() {
        assert_eq!(JwtError::Expired.reason(), "expired");
        assert_eq!(JwtError::BadSignature.reason(), "bad_signature");
        assert_eq!(
            JwtError::MissingClaim("sub".into()).reason(),
            "missing_claim"
        );
        assert_eq!(JwtError::IssuedInFuture.reason(), "issued_in_future");
    }

    #[test]
    fn debug_output_redacts_keys() {
        let s = settings(
            Alg::HS256,
            key(None, KeyMaterial::Secret(SECRET.to_vec())),
            vec![],
        );
        let shown = format!("{s:?} {:?}", Jwt::new(s.clone()).unwrap());
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}

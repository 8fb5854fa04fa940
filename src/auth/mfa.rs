//! The second factor: TOTP (RFC 6238) with secrets encrypted at rest, one-time recovery
//! codes, and the short-lived "password accepted, second step pending" state of the portal.
//!
//! Owns: the encryption key (`auth.mfa.encryption_key`), making and reading secrets, the
//! `otpauth://` URI and its QR code, checking a code (±1 step, each step accepted once per
//! user), the roles that must use a factor, and the pending-login records in the session
//! store (`mfa_pending:{id}`, 5 minutes).
//!
//! Submodules: `totp` (the arithmetic, with the RFCs' vectors), `seal` (AES-256-GCM),
//! `recovery` (codes and their hashes), `cli` (`gatehouse user mfa …`).
//!
//! Does not own: the tables (`users::mfa`), removing a factor (an account change, which ends
//! the sessions), nor the HTTP side (`endpoints::mfa`).

pub mod cli;
pub mod recovery;
pub mod seal;
pub mod totp;

use super::store::{SessionStore, StoreError};
use super::users::{Role, StoredFactor, UserDb, UserError};
use crate::config::{AuthConfig, ConfigError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long the portal's second step (or enrolment) may take after the password step.
pub const PENDING_TTL: Duration = Duration::from_secs(300);
/// The cookie that carries a pending login's id (HttpOnly, SameSite per `auth.cookies`).
pub const PENDING_COOKIE: &str = "predicthealth_mfa";

/// Bytes of a new TOTP secret (RFC 4226 recommends 160 bits).
const SECRET_BYTES: usize = 20;

/// The second factor's settings and key.
pub struct Mfa {
    key: [u8; 32],
    /// The key is random for this process (no `auth.mfa.encryption_key`).
    pub ephemeral: bool,
    pub issuer: String,
    pub required_roles: Vec<Role>,
}

/// What checking a code gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A TOTP code of a new step, now recorded as the last one.
    Totp,
    /// An unused recovery code, now spent.
    Recovery,
    /// Neither: a wrong code, or a recovery code already used.
    Wrong,
    /// A right TOTP code of a step already accepted (replay).
    Replayed,
}

impl Outcome {
    /// The `outcome` label of `gatehouse_mfa_verifications_total`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Totp => "totp_ok",
            Outcome::Recovery => "recovery_ok",
            Outcome::Wrong => "wrong",
            Outcome::Replayed => "replayed",
        }
    }
}

/// Why a code could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    #[error(transparent)]
    Db(#[from] UserError),
    /// The stored secret does not open with this key (another key, or a copied row).
    #[error("the stored second factor cannot be decrypted (is auth.mfa.encryption_key the one it was enrolled with?)")]
    Undecryptable,
}

/// A login whose password was right, waiting for its second factor (or its enrolment).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub user_id: i64,
    pub role: String,
    pub email: String,
    /// Where to go after the login (a safe local path).
    pub next: Option<String>,
    /// Unix ms the password check began (account changes since end it, as for a session).
    pub began_ms: i64,
    /// `true`: the user has no factor and must enrol one first.
    pub enroll: bool,
}

fn pending_key(id: &str) -> String {
    format!("mfa_pending:{id}")
}

impl Mfa {
    /// From `auth.mfa`; an empty key gives a random one for this process (with a warning).
    pub fn from_config(cfg: &AuthConfig) -> Result<Mfa, ConfigError> {
        let m = &cfg.mfa;
        let (key, ephemeral) = match m
            .key()
            .map_err(|e| ConfigError::one(format!("auth.mfa.encryption_key: {e}")))?
        {
            Some(k) => (k, false),
            None => {
                tracing::warn!("auth.mfa.encryption_key (MFA_ENCRYPTION_KEY) is not set: second factors are encrypted with a random key for this process; ones enrolled now stop working when it ends (gatehouse user mfa reset)");
                (rand::random(), true)
            }
        };
        let required_roles = m
            .required_roles
            .iter()
            .map(|r| {
                r.parse::<Role>()
                    .map_err(|e| ConfigError::one(format!("auth.mfa.required_roles: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Mfa {
            key,
            ephemeral,
            issuer: m.issuer.clone(),
            required_roles,
        })
    }

    /// The key from `auth.mfa` for the CLI, which must never make one up: a secret sealed
    /// with a key the gateways do not have could never be checked.
    pub fn for_cli(cfg: &AuthConfig) -> Result<Mfa, String> {
        let key = cfg
            .mfa
            .key()
            .map_err(|e| format!("auth.mfa.encryption_key: {e}"))?
            .ok_or("auth.mfa.encryption_key is empty: set MFA_ENCRYPTION_KEY (the gateways' key; openssl rand -base64 32), or enrol from the page /account/mfa")?;
        let mut mfa = Mfa::from_config(&AuthConfig {
            mfa: crate::config::MfaConfig {
                required_roles: Vec::new(),
                ..cfg.mfa.clone()
            },
            ..AuthConfig::default()
        })
        .map_err(|e| e.to_string())?;
        mfa.key = key;
        Ok(mfa)
    }

    /// Whether users of `role` must use a second factor.
    pub fn required_for(&self, role: Role) -> bool {
        self.required_roles.contains(&role)
    }

    /// A fresh random secret.
    pub fn new_secret() -> Vec<u8> {
        (0..SECRET_BYTES).map(|_| rand::random::<u8>()).collect()
    }

    /// The stored (encrypted) form of `secret` for `user_id`.
    pub fn seal(&self, user_id: i64, secret: &[u8]) -> String {
        seal::seal(&self.key, user_id, secret)
    }

    /// The secret of a stored factor.
    pub fn open(&self, user_id: i64, f: &StoredFactor) -> Result<Vec<u8>, MfaError> {
        seal::open(&self.key, user_id, &f.secret_enc).ok_or(MfaError::Undecryptable)
    }

    /// The `otpauth://totp/ISSUER:EMAIL?secret=…&issuer=ISSUER` URI authenticator apps read.
    pub fn uri(&self, email: &str, secret: &[u8]) -> String {
        let enc = |s: &str| super::guard::percent_encode(s).replace('/', "%2F");
        format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={}&period={}",
            enc(&self.issuer),
            enc(email),
            base32(secret),
            enc(&self.issuer),
            totp::DIGITS,
            totp::PERIOD
        )
    }

    /// Checks `code` — six digits (TOTP) or a recovery code — for a user with an enabled
    /// factor, at unix second `now`. A TOTP step, once accepted, is never accepted again for
    /// that user; a recovery code works once.
    pub async fn verify(
        &self,
        users: &UserDb,
        user_id: i64,
        factor: &StoredFactor,
        code: &str,
        now: i64,
    ) -> Result<Outcome, MfaError> {
        let code = code.trim();
        if code.len() == totp::DIGITS as usize {
            let secret = self.open(user_id, factor)?;
            return Ok(match totp::matching_step(&secret, code, now) {
                None => Outcome::Wrong,
                Some(step) if users.mfa_accept_step(user_id, step).await? => Outcome::Totp,
                Some(_) => Outcome::Replayed,
            });
        }
        Ok(match recovery::normalise(code) {
            Some(n)
                if users
                    .mfa_use_recovery_code(user_id, &recovery::hash(&n))
                    .await? =>
            {
                Outcome::Recovery
            }
            _ => Outcome::Wrong,
        })
    }

    /// Records a pending login; returns its id (the cookie's value).
    pub async fn start_pending(
        store: &dyn SessionStore,
        p: &Pending,
    ) -> Result<String, StoreError> {
        let id = format!("{:032x}", rand::random::<u128>());
        let v = serde_json::to_string(p).map_err(|e| StoreError::Other(e.to_string()))?;
        store.set(&pending_key(&id), &v, PENDING_TTL).await?;
        Ok(id)
    }

    /// The pending login of this id, if it is still there.
    pub async fn pending(
        store: &dyn SessionStore,
        id: &str,
    ) -> Result<Option<Pending>, StoreError> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        Ok(store
            .get(&pending_key(id))
            .await?
            .and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Ends a pending login (done, or given up).
    pub async fn end_pending(store: &dyn SessionStore, id: &str) -> Result<(), StoreError> {
        store.delete(&[pending_key(id)]).await.map(|_| ())
    }
}

/// RFC 4648 base32 without padding, as `otpauth://` URIs carry secrets.
pub fn base32(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(bytes)
}

/// The QR code of `text` as an inline `<svg>` element (no XML prolog).
pub fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .dark_color(qrcode::render::svg::Color("#000000"))
        .light_color(qrcode::render::svg::Color("#ffffff"))
        .build();
    let start = svg.find("<svg")?;
    Some(svg[start..].to_string())
}

/// The QR code of `text` for a terminal (Unicode half blocks, dark on light).
pub fn qr_terminal(text: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_names_issuer_account_and_secret() {
        let mfa = Mfa {
            key: [1; 32],
            ephemeral: false,
            issuer: "PredictHealth".into(),
            required_roles: vec![Role::Doctor],
        };
        let uri = mfa.uri("ana+x@example.org", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/PredictHealth:ana%2Bx%40example.org?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=PredictHealth&algorithm=SHA1&digits=6&period=30"
        );
        assert!(mfa.required_for(Role::Doctor) && !mfa.required_for(Role::Patient));
        let svg = qr_svg(&uri).expect("svg");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(qr_terminal(&uri).is_some_and(|t| t.contains('█') || t.contains('▀')));
    }
}

//! `auth:` — users' store, tokens, sessions, cookies, login protection, roles; and the
//! per-route `auth` and `on_store_error` modes.

use serde::Deserialize;
use std::collections::BTreeMap;

use super::{empty_as_none, Dur, OneOrMany};

/// `auth:` — identity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `postgres://…` or `sqlite://path`; empty means the SQLite file `gatehouse.db`.
    pub database_url: String,
    /// Apply pending migrations at start-up. Default true.
    pub migrate_on_start: bool,
    /// `redis://…` (also sentinel/cluster forms); empty means the in-process store.
    pub redis_url: String,
    /// Bound on every session-store call; a down store fails requests within it. Default 500ms.
    pub store_timeout: Dur,
    pub jwt: JwtConfig,
    pub sessions: SessionsConfig,
    pub cookies: CookieConfig,
    pub login: LoginConfig,
    /// Origins allowed to make state-changing requests authenticated by cookie (CSRF),
    /// besides the gateway's own origin.
    pub trusted_origins: OneOrMany,
    /// Per-role settings (`patient`, `doctor`, `institution`, `admin`).
    pub roles: BTreeMap<String, RoleConfig>,
    pub mfa: MfaConfig,
    pub registration: RegistrationConfig,
    pub passwords: PasswordsConfig,
}

/// `auth.roles.ROLE:`
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    pub sessions: RoleSessionsConfig,
}

/// `auth.roles.ROLE.sessions:` — this role's own limits; unset ones are `auth.sessions`'.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoleSessionsConfig {
    pub idle_timeout: Option<Dur>,
    pub absolute_lifetime: Option<Dur>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            database_url: String::new(),
            migrate_on_start: true,
            redis_url: String::new(),
            store_timeout: Dur::millis(500),
            jwt: JwtConfig::default(),
            sessions: SessionsConfig::default(),
            cookies: CookieConfig::default(),
            login: LoginConfig::default(),
            mfa: MfaConfig::default(),
            trusted_origins: OneOrMany::default(),
            roles: BTreeMap::new(),
            registration: RegistrationConfig::default(),
            passwords: PasswordsConfig::default(),
        }
    }
}

/// `auth.jwt:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// HS256 (default), RS256, ES256 or EdDSA.
    pub algorithm: String,
    /// HS256 secret, at least 32 bytes. Empty: a random secret per process (tokens die on restart).
    pub secret: String,
    /// PEM private key file (RS256, ES256, EdDSA); empty counts as unset.
    #[serde(deserialize_with = "empty_as_none")]
    pub private_key: Option<String>,
    /// PEM public key file matching `private_key`; empty counts as unset.
    #[serde(deserialize_with = "empty_as_none")]
    pub public_key: Option<String>,
    /// Key id put in new tokens' headers.
    pub kid: Option<String>,
    /// Older keys that still verify (rotation).
    pub verify_keys: Vec<VerifyKey>,
    pub issuer: String,
    pub audience: String,
    /// Clock skew allowed for exp, nbf and iat. Default 30s.
    pub leeway: Dur,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithm: "HS256".into(),
            secret: String::new(),
            private_key: None,
            public_key: None,
            kid: None,
            verify_keys: Vec::new(),
            issuer: "gatehouse".into(),
            audience: "predicthealth".into(),
            leeway: Dur::secs(30),
        }
    }
}

/// `auth.jwt.verify_keys[i]:` — a key that verifies but no longer signs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VerifyKey {
    pub kid: String,
    /// HS256: the secret; otherwise unused.
    #[serde(default)]
    pub secret: Option<String>,
    /// RS256/ES256/EdDSA: PEM public key file.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// `auth.sessions:` — keys and lifetimes in the session store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    pub access_prefix: String,
    pub refresh_prefix: String,
    pub access_ttl: Dur,
    pub refresh_ttl: Dur,
    /// No session lives past this age, whatever its activity (NIST SP 800-63B AAL2: 12h).
    pub absolute_lifetime: Dur,
    /// A session with no activity for this long ends (AAL2: 30m; HIPAA automatic logoff).
    pub idle_timeout: Dur,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            access_prefix: "access_token:".into(),
            refresh_prefix: "refresh_token:".into(),
            access_ttl: Dur::secs(15 * 60),
            refresh_ttl: Dur::secs(7 * 86_400),
            absolute_lifetime: Dur::secs(12 * 3600),
            idle_timeout: Dur::secs(30 * 60),
        }
    }
}

/// `auth.cookies:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CookieConfig {
    /// The access-token cookie. Default `predicthealth_session`.
    pub name: String,
    /// The refresh-token cookie (Path limited to the auth endpoints).
    pub refresh_name: String,
    pub same_site: SameSite,
    pub secure: SecureMode,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "predicthealth_session".into(),
            refresh_name: "predicthealth_refresh".into(),
            same_site: SameSite::Strict,
            secure: SecureMode::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// `Secure` on cookies: `auto` when TLS is terminated here or by a trusted proxy.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecureMode {
    Auto,
    Always,
    Never,
}

/// `auth.login:` — brute-force protection.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// Failed logins per account within `window` before it is locked. Default 5.
    pub max_failures_per_account: u64,
    /// Failed logins per client ip within `window` before it is locked. Default 20.
    pub max_failures_per_ip: u64,
    /// Window of the counters; a lock lasts until it ends. Default 15m.
    pub window: Dur,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            max_failures_per_account: 5,
            max_failures_per_ip: 20,
            window: Dur::secs(15 * 60),
        }
    }
}

/// `auth.registration:` — self-registration (`POST /api/v1/auth/register`, the `/register`
/// page).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Off: both the endpoint and the page answer 404. Default true.
    pub enabled: bool,
    /// Roles a new account may get; the first is the default, a request may choose another
    /// one of them (`role`). Default `[patient]`: doctors, institutions and administrators
    /// are created by administrators.
    pub roles: Vec<String>,
    /// Registrations (created or refused as a duplicate) per client ip within `window`
    /// before `429`. Default 10.
    pub max_per_ip: u64,
    /// Window of the per-ip counter. Default 1h.
    pub window: Dur,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            enabled: true,
            roles: vec!["patient".into()],
            max_per_ip: 10,
            window: Dur::secs(3600),
        }
    }
}

/// `auth.passwords:` — the password policy of registration and the CLI (NIST SP 800-63B).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordsConfig {
    /// Fewest characters a new password may have (8 to 256). Default 12.
    pub min_length: usize,
}

impl Default for PasswordsConfig {
    fn default() -> Self {
        PasswordsConfig { min_length: 12 }
    }
}

/// `auth.mfa:` — the second factor (TOTP, RFC 6238; README "Second factor").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MfaConfig {
    /// 32 bytes as base64 or hex (`openssl rand -base64 32`) that encrypt TOTP secrets at
    /// rest. Empty: a random key per process with the in-process store (development; factors
    /// enrolled then stop working on restart), refused with a shared (Redis) store when
    /// `required_roles` is set; the CLI cannot enrol without it.
    pub encryption_key: String,
    /// Roles that must use a second factor: such a user without one is sent to enrolment
    /// after the password step and gets no session until it is done. Default none.
    pub required_roles: Vec<String>,
    /// The `issuer` of the `otpauth://` URI (what authenticator apps show). Default
    /// `PredictHealth`.
    pub issuer: String,
}

impl Default for MfaConfig {
    fn default() -> Self {
        MfaConfig {
            encryption_key: String::new(),
            required_roles: Vec::new(),
            issuer: "PredictHealth".into(),
        }
    }
}

impl MfaConfig {
    /// The encryption key: `Ok(None)` when empty; 32 bytes given as standard base64 (with or
    /// without padding) or as 64 hex digits.
    pub fn key(&self) -> Result<Option<[u8; 32]>, String> {
        use base64::Engine as _;
        let text = self.encryption_key.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            data_encoding::HEXLOWER_PERMISSIVE
                .decode(text.as_bytes())
                .ok()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
                .ok()
        };
        match bytes.map(<[u8; 32]>::try_from) {
            Some(Ok(key)) => Ok(Some(key)),
            // Never echo the value: it is a secret.
            _ => {
                Err("must be 32 bytes as base64 or 64 hex digits (openssl rand -base64 32)".into())
            }
        }
    }
}

/// `routes[i].auth`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    None,
    Optional,
    Required,
}

/// `routes[i].on_store_error`: what a protected route does when the session store is down.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreFailure {
    /// 503 (default).
    #[default]
    FailClosed,
    /// Accept a valid token without its live-session check.
    FailOpen,
}

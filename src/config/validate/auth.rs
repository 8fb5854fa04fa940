//! Checks of `auth:`: store URLs, token keys and lifetimes, cookies, login protection, roles.

use super::super::{AuthConfig, SameSite, SecureMode};

pub(super) fn check_auth(p: &mut Vec<String>, a: &AuthConfig) {
    let url = a.database_url.trim();
    if !(url.is_empty()
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || url.starts_with("sqlite:"))
    {
        p.push("auth.database_url: must be postgres://…, postgresql://… or sqlite:… (empty: sqlite file gatehouse.db)".into());
    }
    let r = a.redis_url.trim();
    if !(r.is_empty()
        || r.starts_with("redis://")
        || r.starts_with("rediss://")
        || r.starts_with("redis-sentinel://")
        || r.starts_with("redis-cluster://"))
    {
        p.push("auth.redis_url: must be redis://…, rediss://…, redis-sentinel://… or redis-cluster://… (empty: in-process store)".into());
    }
    if a.store_timeout.0.is_zero() || a.store_timeout.0.as_millis() > 5000 {
        p.push("auth.store_timeout: must be between 1ms and 5s".into());
    }
    let j = &a.jwt;
    let alg = j.algorithm.to_ascii_uppercase();
    match alg.as_str() {
        "HS256" => {
            if !j.secret.is_empty() && j.secret.len() < 32 {
                p.push(format!(
                    "auth.jwt.secret: {} bytes is too short for HS256; at least 32 are required (JWT_SECRET_KEY)",
                    j.secret.len()
                ));
            }
        }
        "RS256" | "ES256" | "EDDSA" => {
            if j.private_key.is_none() {
                p.push(format!(
                    "auth.jwt.private_key: required for {}",
                    j.algorithm
                ));
            }
        }
        _ => p.push(format!(
            "auth.jwt.algorithm: {:?} is not one of HS256, RS256, ES256, EdDSA",
            j.algorithm
        )),
    }
    if j.issuer.is_empty() || j.audience.is_empty() {
        p.push("auth.jwt: issuer and audience must not be empty".into());
    }
    let s = &a.sessions;
    if s.access_prefix.is_empty()
        || s.refresh_prefix.is_empty()
        || s.access_prefix == s.refresh_prefix
    {
        p.push(
            "auth.sessions: access_prefix and refresh_prefix must be non-empty and different"
                .into(),
        );
    }
    if s.access_ttl.0.as_secs() < 10
        || s.refresh_ttl.0 < s.access_ttl.0
        || s.absolute_lifetime.0 < s.access_ttl.0
    {
        p.push("auth.sessions: access_ttl ≥ 10s, and refresh_ttl and absolute_lifetime ≥ access_ttl, are required".into());
    }
    if s.idle_timeout.0.as_secs() < 10 {
        p.push("auth.sessions.idle_timeout: must be at least 10s".into());
    }
    for (role, r) in &a.roles {
        if !crate::config::role::Role::ALL
            .iter()
            .any(|known| known.as_str() == role)
        {
            p.push(format!(
                "auth.roles.{role}: unknown role (patient, doctor, institution, admin)"
            ));
        }
        let limits = [
            ("idle_timeout", r.sessions.idle_timeout),
            ("absolute_lifetime", r.sessions.absolute_lifetime),
        ];
        for (key, v) in limits {
            if v.is_some_and(|d| d.0.as_secs() < 10) {
                p.push(format!(
                    "auth.roles.{role}.sessions.{key}: must be at least 10s"
                ));
            }
        }
    }
    let c = &a.cookies;
    for (key, name) in [("name", &c.name), ("refresh_name", &c.refresh_name)] {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            p.push(format!(
                "auth.cookies.{key}: {name:?} is not a valid cookie name"
            ));
        }
    }
    if c.same_site == SameSite::None && c.secure == SecureMode::Never {
        p.push("auth.cookies: same_site: none requires secure cookies".into());
    }
    let l = &a.login;
    if l.max_failures_per_account == 0 || l.max_failures_per_ip == 0 || l.window.0.is_zero() {
        p.push("auth.login: limits and window must be greater than 0".into());
    }
    check_registration(p, a);
    check_mfa(p, a);
}

/// `auth.registration` and `auth.passwords`.
fn check_registration(p: &mut Vec<String>, a: &AuthConfig) {
    let r = &a.registration;
    if r.roles.is_empty() {
        p.push("auth.registration.roles: list at least one role (shipped: [patient])".into());
    }
    for (i, role) in r.roles.iter().enumerate() {
        if !crate::config::role::Role::ALL
            .iter()
            .any(|known| known.as_str() == role)
        {
            p.push(format!(
                "auth.registration.roles[{i}]: unknown role {role:?} (patient, doctor, institution, admin)"
            ));
        } else if r.roles[..i].contains(role) {
            p.push(format!(
                "auth.registration.roles[{i}]: {role:?} is listed twice"
            ));
        }
    }
    if r.max_per_ip == 0 || r.window.0.is_zero() {
        p.push("auth.registration: max_per_ip and window must be greater than 0".into());
    }
    let min = a.passwords.min_length;
    if !(8..=256).contains(&min) {
        p.push(format!(
            "auth.passwords.min_length: {min} is outside 8..=256 (NIST SP 800-63B: at least 8; passwords may have up to 256 characters)"
        ));
    }
}

/// `auth.mfa:` — the key's form, and a key where several instances share sessions.
fn check_mfa(p: &mut Vec<String>, a: &AuthConfig) {
    let m = &a.mfa;
    if let Err(e) = m.key() {
        p.push(format!("auth.mfa.encryption_key: {e} (MFA_ENCRYPTION_KEY)"));
    }
    for role in &m.required_roles {
        if !crate::config::role::Role::ALL
            .iter()
            .any(|known| known.as_str() == role)
        {
            p.push(format!(
                "auth.mfa.required_roles: unknown role {role:?} (patient, doctor, institution, admin)"
            ));
        }
    }
    if m.encryption_key.trim().is_empty()
        && !m.required_roles.is_empty()
        && !a.redis_url.trim().is_empty()
    {
        p.push("auth.mfa.encryption_key: required when auth.mfa.required_roles is set and sessions are shared (auth.redis_url): every instance must read the same secrets (MFA_ENCRYPTION_KEY; openssl rand -base64 32)".into());
    }
    if m.issuer.trim().is_empty() || m.issuer.contains(':') || m.issuer.len() > 64 {
        p.push("auth.mfa.issuer: must be 1 to 64 characters without ':'".into());
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    use crate::config::validate::tests::problems;

    #[test]
    fn registration_and_password_defaults_are_the_shipped_policy() {
        let c = Config::from_yaml_str_with_env("auth: {}\n", |_| None).expect("config");
        let r = &c.auth.registration;
        assert!(r.enabled);
        assert_eq!(r.roles, ["patient"]);
        assert_eq!((r.max_per_ip, r.window.0.as_secs()), (10, 3600));
        assert_eq!(c.auth.passwords.min_length, 12);
    }

    #[test]
    fn registration_roles_must_be_known_and_the_minimum_bounded() {
        let p = problems(
            "auth:\n  registration: {roles: [patient, nurse, patient], max_per_ip: 0}\n  passwords: {min_length: 6}\n",
        );
        let joined = p.join("\n");
        for needle in [
            "auth.registration.roles[1]: unknown role \"nurse\"",
            "auth.registration.roles[2]: \"patient\" is listed twice",
            "auth.registration: max_per_ip and window must be greater than 0",
            "auth.passwords.min_length: 6 is outside 8..=256",
        ] {
            assert!(joined.contains(needle), "{needle} missing in:\n{joined}");
        }
        let empty = problems("auth:\n  registration: {roles: []}\n").join("\n");
        assert!(
            empty.contains("auth.registration.roles: list at least one role"),
            "{empty}"
        );
        assert!(problems("auth:\n  passwords: {min_length: 300}\n")
            .join("\n")
            .contains("auth.passwords.min_length: 300"));
        assert!(problems(
            "auth:\n  registration: {roles: [patient, doctor]}\n  passwords: {min_length: 8}\n"
        )
        .is_empty());
        let unknown = problems("auth:\n  registration: {open: true}\n").join("\n");
        assert!(unknown.contains("open"), "{unknown}");
    }
}

//! Session cookies: reading the token from `Cookie`, and building `Set-Cookie` values
//! (HttpOnly, SameSite, Path, Secure when TLS is in front).

use crate::config::{CookieConfig, SameSite, SecureMode};
use http::HeaderMap;

/// The value of cookie `name` in the request, if any.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Whether cookies get `Secure`: always, never, or (auto) when the client connection is TLS.
pub fn secure(cfg: &CookieConfig, tls: bool) -> bool {
    match cfg.secure {
        SecureMode::Always => true,
        SecureMode::Never => false,
        SecureMode::Auto => tls,
    }
}

fn same_site(s: SameSite) -> &'static str {
    match s {
        SameSite::Strict => "Strict",
        SameSite::Lax => "Lax",
        SameSite::None => "None",
    }
}

/// `Set-Cookie` for a value living `max_age` seconds on `path`.
pub fn set(
    cfg: &CookieConfig,
    name: &str,
    value: &str,
    path: &str,
    max_age: u64,
    tls: bool,
) -> String {
    let mut c = format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite={}",
        same_site(cfg.same_site)
    );
    if secure(cfg, tls) || cfg.same_site == SameSite::None {
        c.push_str("; Secure");
    }
    c
}

/// `Set-Cookie` that removes cookie `name` on `path`.
pub fn clear(cfg: &CookieConfig, name: &str, path: &str, tls: bool) -> String {
    set(cfg, name, "", path, 0, tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_named_cookie() {
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            "a=1; predicthealth_session=tok; b=2".parse().expect("v"),
        );
        assert_eq!(get(&h, "predicthealth_session"), Some("tok"));
        assert_eq!(get(&h, "missing"), None);
    }

    #[test]
    fn set_cookie_is_httponly_strict_and_secure_behind_tls() {
        let cfg = CookieConfig::default();
        let c = set(&cfg, "s", "v", "/", 900, false);
        assert_eq!(c, "s=v; Path=/; Max-Age=900; HttpOnly; SameSite=Strict");
        assert!(set(&cfg, "s", "v", "/", 900, true).ends_with("; Secure"));
        let never = CookieConfig {
            secure: SecureMode::Never,
            ..CookieConfig::default()
        };
        assert!(!set(&never, "s", "v", "/", 1, true).contains("Secure"));
        assert!(clear(&cfg, "s", "/", false).contains("Max-Age=0"));
    }
}

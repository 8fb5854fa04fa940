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

/// Cookie carrying the double-submit CSRF token of forms.
pub const CSRF_COOKIE: &str = "predicthealth_csrf";
/// Cookie carrying one flash message across a redirect (`kind:code`).
pub const FLASH_COOKIE: &str = "predicthealth_flash";

/// Path of the refresh cookie: only the endpoint that uses it receives it (browsers send it
/// nowhere else, so no proxied route and no upstream ever sees it).
pub const REFRESH_PATH: &str = "/api/v1/auth/refresh";

/// The refresh cookie's path before it was narrowed to [`REFRESH_PATH`]; logout and a new
/// sign-in clear a cookie left there by an older gatehouse.
pub const LEGACY_REFRESH_PATH: &str = "/api/";

/// The `Cookie` value to forward upstream once the gateway's own cookies (`names`: session,
/// refresh, CSRF, flash) are taken out: `None` when there is none of them (forward the
/// header as it is), `Some("")` when nothing else is left (drop the header). The client's
/// other cookies keep their order and spelling.
pub fn strip(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    let values = || {
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes())
    };
    let name_of = |pair: &[u8]| {
        let pair = pair.trim_ascii();
        let end = memchr::memchr(b'=', pair).unwrap_or(pair.len());
        pair[..end].trim_ascii().to_vec()
    };
    let ours = |pair: &[u8]| {
        let n = name_of(pair);
        names.iter().any(|g| g.as_bytes() == n.as_slice())
    };
    if !values().any(|v| v.split(|b| *b == b';').any(ours)) {
        return None;
    }
    let mut out = Vec::new();
    for pair in values().flat_map(|v| v.split(|b| *b == b';')) {
        let pair = pair.trim_ascii();
        if pair.is_empty() || ours(pair) {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
    }
    // Header values are bytes; what was valid in one stays valid joined with "; ".
    Some(String::from_utf8_lossy(&out).into_owned())
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
    fn the_gateways_cookies_are_taken_out_and_the_others_pass_unchanged() {
        let names = [
            "predicthealth_session",
            "predicthealth_refresh",
            "predicthealth_csrf",
        ];
        let jar = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(http::header::COOKIE, v.parse().expect("value"));
            }
            h
        };
        let strip1 = |v: &'static str| strip(&jar(&[v]), &names);
        assert_eq!(
            strip1("theme=dark; lang=es"),
            None,
            "nothing of ours: as sent"
        );
        assert_eq!(
            strip1("theme=dark; predicthealth_session=tok;predicthealth_refresh=r; lang=es"),
            Some("theme=dark; lang=es".into())
        );
        assert_eq!(strip1("predicthealth_session=tok"), Some(String::new()));
        assert_eq!(strip1(" predicthealth_csrf = x ; a=1"), Some("a=1".into()));
        // A name that only starts like ours is the client's.
        assert_eq!(strip1("predicthealth_session2=x"), None);
        // HTTP/2 clients may send one Cookie header per cookie.
        let split = jar(&["a=1", "predicthealth_refresh=r", "b=2"]);
        assert_eq!(strip(&split, &names), Some("a=1; b=2".into()));
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

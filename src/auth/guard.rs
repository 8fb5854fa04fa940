//! Route protection in the request filter: find the token (Bearer header or session
//! cookie), check it and its live session, apply roles and the CSRF origin rule, and say
//! what the client gets when it is refused (401 JSON with `WWW-Authenticate` for API
//! clients, 303 to `/login?next=…` for browsers, 403 for a wrong role, 503 when the store
//! is down and the route fails closed).

use super::jwt::Claims;
use super::sessions::SessionError;
use super::{cookies, unix_now, Auth};
use crate::config::{AuthMode, StoreFailure};
use crate::errors::Reject;
use http::{HeaderMap, Method};

/// The signed-in user of this request.
#[derive(Debug, Clone)]
pub struct Identity {
    pub claims: Claims,
    pub token: String,
    pub via_cookie: bool,
    /// The `Set-Cookie` value that renews a cookie session: the access token re-issued, with
    /// the lifetime its store key just got (decided here once, written by every path that
    /// answers: proxied responses, pages, validate).
    pub renewed_cookie: Option<String>,
}

impl Identity {
    /// The identity headers an upstream receives for this user, on proxied requests and page
    /// data sources alike (the client's own copies are removed before these are set).
    pub fn upstream_headers(&self) -> [(&'static str, String); 4] {
        [
            ("authorization", format!("Bearer {}", self.token)),
            ("x-user-id", self.claims.sub.clone()),
            ("x-user-role", self.claims.role.clone()),
            ("x-session-id", self.claims.sid.clone()),
        ]
    }
}

/// What the request filter does next.
#[derive(Debug)]
pub enum Decision {
    Anonymous,
    Allow(Identity),
    /// Answer with this (401/403/503), or redirect a browser to this location.
    Deny {
        reject: Reject,
        reason: &'static str,
    },
    Redirect {
        location: String,
        reason: &'static str,
    },
}

/// What the guard needs to know about the request.
pub struct Request<'a> {
    pub method: &'a Method,
    /// Normalised path and the raw query, for `next`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub api_client: bool,
    /// The client connection is TLS (for the renewed cookie's `Secure`).
    pub tls: bool,
    /// The trace the session check's store call is a span of (`TraceContext::none()`: none).
    pub trace: crate::telemetry::TraceContext,
}

/// The `Set-Cookie` value of a renewed cookie session, or `None` when nothing was renewed or
/// the token came as a Bearer header.
pub fn renewed_cookie(
    auth: &Auth,
    claims: &super::jwt::Claims,
    renewed: Option<std::time::Duration>,
    via_cookie: bool,
    tls: bool,
    now: i64,
) -> Option<String> {
    let ttl = renewed.filter(|_| via_cookie)?;
    let token = auth.sessions.reissue_access(claims, now).ok()?;
    let c = &auth.config.cookies;
    Some(cookies::set(
        c,
        &c.name,
        &token,
        "/",
        ttl.as_secs().max(1),
        tls,
    ))
}

/// The bearer token, or else the session cookie.
pub fn find_token<'a>(headers: &'a HeaderMap, cookie_name: &str) -> Option<(&'a str, bool)> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let mut parts = v.splitn(2, ' ');
        if let (Some(scheme), Some(tok)) = (parts.next(), parts.next()) {
            if scheme.eq_ignore_ascii_case("bearer") && !tok.trim().is_empty() {
                return Some((tok.trim(), false));
            }
        }
    }
    cookies::get(headers, cookie_name)
        .filter(|t| !t.is_empty())
        .map(|t| (t, true))
}

/// `/login?next=<path?query>` with the target percent-encoded.
pub fn login_redirect(path: &str, query: Option<&str>) -> String {
    let mut target = path.to_string();
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    format!("/login?next={}", percent_encode(&target))
}

pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unauthorized(
    api: bool,
    req: &Request<'_>,
    token_present: bool,
    reason: &'static str,
) -> Decision {
    if !api {
        return Decision::Redirect {
            location: login_redirect(req.path, req.query),
            reason,
        };
    }
    let www = if token_present {
        r#"Bearer realm="gatehouse", error="invalid_token""#
    } else {
        r#"Bearer realm="gatehouse""#
    };
    Decision::Deny {
        reject: Reject::new(401, "unauthorized", "Authentication is required.")
            .with_header("WWW-Authenticate", www),
        reason,
    }
}

/// Checks a state-changing, cookie-authenticated request's origin (CSRF).
pub fn origin_allowed(headers: &HeaderMap, trusted: &[String]) -> bool {
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(origin) = headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    {
        if trusted.iter().any(|t| t.trim_end_matches('/') == origin) {
            return true;
        }
        let authority = origin.split_once("://").map_or("", |(_, a)| a);
        return !host.is_empty() && authority.eq_ignore_ascii_case(host);
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => site == "same-origin" || site == "none",
        None => false,
    }
}

/// Whether a request comes from another site's page (login CSRF): its `Origin` is neither
/// the gateway's own nor trusted, or, unless the origin is trusted, the browser says
/// `Sec-Fetch-Site: cross-site`. A request with neither header (an API client, a browser
/// that sends no `Origin` on a same-origin form) is not.
pub fn cross_site(headers: &HeaderMap, trusted: &[String]) -> bool {
    let origin = headers
        .get(http::header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("null"));
    if origin.is_some_and(|o| trusted.iter().any(|t| t.trim_end_matches('/') == o)) {
        return false;
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return true;
    }
    origin.is_some() && !origin_allowed(headers, trusted)
}

/// Decides the request against the route's `auth`, `roles` and `on_store_error`.
pub async fn protect(
    auth: &Auth,
    mode: AuthMode,
    roles: Option<&[String]>,
    on_store_error: StoreFailure,
    req: &Request<'_>,
) -> Decision {
    if mode == AuthMode::None {
        return Decision::Anonymous;
    }
    let Some((token, via_cookie)) = find_token(req.headers, &auth.config.cookies.name) else {
        return match mode {
            AuthMode::Required => unauthorized(req.api_client, req, false, "missing_token"),
            _ => Decision::Anonymous,
        };
    };
    let now = unix_now();
    let mut span = req.trace.db(auth.sessions.store.kind(), "session check");
    let result = auth.sessions.check(token, now).await;
    if let Err(SessionError::Store(e)) = &result {
        span.set_error("store_error", &e.to_string());
    }
    span.end();
    let checked = match result {
        Ok((claims, renewed)) => {
            let cookie = renewed_cookie(auth, &claims, renewed, via_cookie, req.tls, now);
            Ok((claims, cookie))
        }
        Err(SessionError::Store(e)) => match on_store_error {
            StoreFailure::FailOpen => {
                tracing::warn!(error = %e, "session store unavailable; route fails open");
                auth.sessions.verify_only(token, now).map(|c| (c, None))
            }
            StoreFailure::FailClosed => {
                tracing::warn!(error = %e, "session store unavailable; refusing");
                return Decision::Deny {
                    reject: Reject::new(
                        503,
                        "session_store_unavailable",
                        "Sign-in is temporarily unavailable.",
                    )
                    .with_header("Retry-After", "5"),
                    reason: "store_unavailable",
                };
            }
        },
        Err(e) => Err(e),
    };
    let (claims, renewed_cookie) = match checked {
        Ok(c) => c,
        Err(e) => {
            return match mode {
                AuthMode::Required => unauthorized(req.api_client, req, true, e.reason()),
                _ => Decision::Anonymous,
            }
        }
    };
    if let (AuthMode::Required, Some(roles)) = (mode, roles) {
        if !roles.iter().any(|r| r == &claims.role) {
            return Decision::Deny {
                reject: Reject::new(403, "forbidden", "Your role may not access this resource."),
                reason: "wrong_role",
            };
        }
    }
    let safe = matches!(*req.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if via_cookie && !safe && !origin_allowed(req.headers, &auth.config.trusted_origins.0) {
        return Decision::Deny {
            reject: Reject::new(403, "csrf", "Cross-site request refused."),
            reason: "csrf",
        };
    }
    Decision::Allow(Identity {
        claims,
        token: token.to_string(),
        via_cookie,
        renewed_cookie,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn bearer_wins_over_cookie() {
        let h = headers(&[("authorization", "Bearer abc"), ("cookie", "s=def")]);
        assert_eq!(find_token(&h, "s"), Some(("abc", false)));
        let h = headers(&[("cookie", "s=def")]);
        assert_eq!(find_token(&h, "s"), Some(("def", true)));
        let h = headers(&[("authorization", "Basic xyz")]);
        assert_eq!(find_token(&h, "s"), None);
    }

    #[test]
    fn login_redirect_encodes_the_target() {
        assert_eq!(
            login_redirect("/patient/dashboard", Some("a=1&b=2")),
            "/login?next=/patient/dashboard%3Fa%3D1%26b%3D2"
        );
    }

    #[test]
    fn csrf_origin_rules() {
        let trusted = vec!["http://localhost:3000".to_string()];
        assert!(origin_allowed(
            &headers(&[("host", "gw.example"), ("origin", "https://gw.example")]),
            &trusted
        ));
        assert!(origin_allowed(
            &headers(&[("host", "gw.example"), ("origin", "http://localhost:3000")]),
            &trusted
        ));
        assert!(!origin_allowed(
            &headers(&[("host", "gw.example"), ("origin", "https://evil.example")]),
            &trusted
        ));
        assert!(origin_allowed(
            &headers(&[("host", "gw.example"), ("sec-fetch-site", "same-origin")]),
            &trusted
        ));
        assert!(!origin_allowed(
            &headers(&[("host", "gw.example"), ("sec-fetch-site", "cross-site")]),
            &trusted
        ));
        assert!(!origin_allowed(
            &headers(&[("host", "gw.example")]),
            &trusted
        ));
    }

    #[test]
    fn cross_site_requests_are_told_by_origin_or_sec_fetch_site() {
        let trusted = vec!["http://localhost:3000".to_string()];
        let is = |h: &[(&'static str, &'static str)]| cross_site(&headers(h), &trusted);
        // API clients send neither header.
        assert!(!is(&[("host", "gw.example")]));
        assert!(!is(&[
            ("host", "gw.example"),
            ("origin", "https://gw.example")
        ]));
        assert!(!is(&[
            ("host", "gw.example"),
            ("sec-fetch-site", "same-origin")
        ]));
        assert!(!is(&[("host", "gw.example"), ("sec-fetch-site", "none")]));
        // A trusted front end on another site is cross-site to the browser, and allowed.
        assert!(!is(&[
            ("host", "gw.example"),
            ("origin", "http://localhost:3000"),
            ("sec-fetch-site", "cross-site")
        ]));
        assert!(is(&[
            ("host", "gw.example"),
            ("origin", "https://evil.example")
        ]));
        assert!(is(&[("host", "gw.example"), ("origin", "null")]));
        assert!(is(&[
            ("host", "gw.example"),
            ("sec-fetch-site", "cross-site")
        ]));
        assert!(is(&[
            ("host", "gw.example"),
            ("origin", "https://gw.example"),
            ("sec-fetch-site", "cross-site")
        ]));
    }
}

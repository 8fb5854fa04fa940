//! The seeds' auth endpoints, answered by the gateway itself:
//! `POST /api/v1/auth/login`, `POST /api/web/auth/{patient|doctor|institution}/login`,
//! `GET /api/v1/auth/validate`, `POST /api/v1/auth/refresh`, `POST /api/v1/auth/logout`
//! (`?all=true`), and `GET /logout` for browsers; self-registration (`POST
//! /api/v1/auth/register`, and `/register`: the page, rendered by the proxy, and its form);
//! the portal's second login step (`GET /login/mfa`, `POST /api/web/auth/mfa`) and
//! second-factor enrolment (`GET`/`POST /account/mfa`).
//!
//! Each handler takes plain request facts and returns a [`Reply`]; the proxy reads the body
//! and writes the reply. Failures are recorded as auth events and counted by the caller.

use super::guard::find_token;
use super::sessions::{SessionError, TokenPair};
use super::users::{EventKind, Role, User};
use super::{cookies, unix_now, Auth};
use crate::errors::Reject;
use crate::forms::form_decode;
use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::json;
use std::net::IpAddr;

mod login;
mod logout;
mod mfa;
mod refresh;
pub mod register;

/// A complete answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Result and reason for `auth_decisions_total`.
    pub decision: (&'static str, &'static str),
    /// A page for the proxy to render instead of `body` (the second-factor pages).
    pub page: Option<Box<PageReply>>,
    /// The outcome of a second-factor check, for `gatehouse_mfa_verifications_total`.
    pub mfa: Option<&'static str>,
}

/// A page an endpoint answers with: rendered by the proxy with the site's templates, the
/// shared context (CSRF token included) and `extra`.
#[derive(Debug, Clone)]
pub struct PageReply {
    pub template: &'static str,
    pub title: &'static str,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Reply {
    fn json(status: u16, v: serde_json::Value, decision: (&'static str, &'static str)) -> Reply {
        Reply {
            status,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Cache-Control".into(), "no-store".into()),
            ],
            body: Bytes::from(v.to_string()),
            decision,
            page: None,
            mfa: None,
        }
    }

    fn error(r: Reject, request_id: &str, decision: (&'static str, &'static str)) -> Reply {
        let mut headers = vec![
            ("Content-Type".into(), "application/json".into()),
            ("Cache-Control".into(), "no-store".into()),
        ];
        headers.extend(r.headers.iter().cloned());
        Reply {
            status: r.status,
            headers,
            body: r.body(request_id),
            decision,
            page: None,
            mfa: None,
        }
    }

    fn redirect(location: &str, decision: (&'static str, &'static str)) -> Reply {
        Reply {
            status: 303,
            headers: vec![
                ("Location".into(), location.into()),
                ("Cache-Control".into(), "no-store".into()),
            ],
            body: Bytes::new(),
            decision,
            page: None,
            mfa: None,
        }
    }

    fn page(
        template: &'static str,
        title: &'static str,
        extra: serde_json::Value,
        decision: (&'static str, &'static str),
    ) -> Reply {
        let extra = match extra {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        Reply {
            status: 200,
            headers: vec![("Cache-Control".into(), "no-store".into())],
            body: Bytes::new(),
            decision,
            page: Some(Box::new(PageReply {
                template,
                title,
                extra,
            })),
            mfa: None,
        }
    }
}

/// Which endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    WebLogin(Role),
    Validate,
    Refresh,
    Logout,
    LogoutPage,
    /// `POST /api/v1/auth/register` (JSON).
    Register,
    /// `GET /register`: the page (rendered by the proxy).
    RegisterPage,
    /// `POST /register`: the page's form.
    RegisterForm,
    /// `GET /login/mfa`: the portal's second step.
    MfaPage,
    /// `POST /api/web/auth/mfa`: the second step's code.
    MfaVerify,
    /// `GET /account/mfa`: enrolment (QR code).
    MfaEnrolPage,
    /// `POST /account/mfa`: enrolment confirmed with a first code.
    MfaEnrol,
}

impl Endpoint {
    /// One of the registration endpoints (404 while `auth.registration.enabled` is off).
    pub fn registers(self) -> bool {
        matches!(
            self,
            Endpoint::Register | Endpoint::RegisterPage | Endpoint::RegisterForm
        )
    }
}

/// The paths of the registration endpoints (all `404`, whatever the method, while
/// `auth.registration.enabled` is off).
pub fn is_registration_path(path: &str) -> bool {
    matches!(path, "/api/v1/auth/register" | "/register")
}

/// Maps a normalised path to an endpoint; `Err(allow)` when the path is one but the
/// method is not.
pub fn route(method: &Method, path: &str) -> Option<Result<Endpoint, &'static str>> {
    if path == "/account/mfa" {
        return Some(match *method {
            Method::GET | Method::HEAD => Ok(Endpoint::MfaEnrolPage),
            Method::POST => Ok(Endpoint::MfaEnrol),
            _ => Err("GET, HEAD, POST"),
        });
    }
    let (ep, allowed): (Endpoint, &[Method]) = match path {
        "/api/v1/auth/login" => (Endpoint::Login, &[Method::POST]),
        "/api/web/auth/patient/login" => (Endpoint::WebLogin(Role::Patient), &[Method::POST]),
        "/api/web/auth/doctor/login" => (Endpoint::WebLogin(Role::Doctor), &[Method::POST]),
        "/api/web/auth/institution/login" => {
            (Endpoint::WebLogin(Role::Institution), &[Method::POST])
        }
        "/api/v1/auth/validate" => (Endpoint::Validate, &[Method::GET, Method::HEAD]),
        "/api/v1/auth/refresh" => (Endpoint::Refresh, &[Method::POST]),
        "/api/v1/auth/logout" => (Endpoint::Logout, &[Method::POST]),
        "/logout" => (Endpoint::LogoutPage, &[Method::GET, Method::HEAD]),
        "/login/mfa" => (Endpoint::MfaPage, &[Method::GET, Method::HEAD]),
        "/api/web/auth/mfa" => (Endpoint::MfaVerify, &[Method::POST]),
        "/api/v1/auth/register" => (Endpoint::Register, &[Method::POST]),
        "/register" if method == Method::POST => (Endpoint::RegisterForm, &[Method::POST]),
        "/register" => (
            Endpoint::RegisterPage,
            &[Method::GET, Method::HEAD, Method::POST],
        ),
        _ => return None,
    };
    Some(if allowed.contains(method) {
        Ok(ep)
    } else if allowed.contains(&Method::POST) && allowed.contains(&Method::GET) {
        Err("GET, HEAD, POST")
    } else if allowed.contains(&Method::GET) {
        Err("GET, HEAD")
    } else {
        Err("POST")
    })
}

/// What a handler knows about the request.
pub struct Request<'a> {
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    pub client_ip: Option<IpAddr>,
    pub tls: bool,
    pub api_client: bool,
    pub request_id: &'a str,
    /// The request's trace: the user database and session store calls are spans of it.
    pub trace: crate::telemetry::TraceContext,
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Content-Type: application/json` (parameters such as `charset` allowed).
    fn is_json(&self) -> bool {
        self.header("content-type").is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        })
    }

    /// `Content-Type: application/x-www-form-urlencoded`: what a page's form posts.
    fn is_form(&self) -> bool {
        self.header("content-type").is_some_and(|ct| {
            ct.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
    }

    /// The form's double-submit CSRF token (`csrf_token`) is the one of the CSRF cookie
    /// that our pages set: the form came from our page. Pages carry it masked
    /// (`forms::csrf_mask`); the bare token is taken too.
    fn form_token_matches(&self) -> bool {
        let sent = self.fields().and_then(|f| {
            f.get("csrf_token")
                .and_then(|v| v.as_str())
                .map(String::from)
        });
        let Some(cookie) = cookies::get(self.headers, cookies::CSRF_COOKIE) else {
            return false;
        };
        sent.as_deref().is_some_and(|s| {
            !s.is_empty()
                && (s.eq_ignore_ascii_case(cookie)
                    || crate::forms::csrf_unmask(s).is_some_and(|t| t.eq_ignore_ascii_case(cookie)))
        })
    }

    fn ip(&self) -> Option<String> {
        self.client_ip.map(|i| i.to_string())
    }

    /// Form fields or JSON object fields, by content type.
    fn fields(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        let ct = self
            .header("content-type")
            .unwrap_or("")
            .to_ascii_lowercase();
        if ct.starts_with("application/x-www-form-urlencoded") {
            let text = std::str::from_utf8(&self.body).ok()?;
            Some(
                text.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (form_decode(k), serde_json::Value::String(form_decode(v))))
                    .collect(),
            )
        } else {
            match serde_json::from_slice::<serde_json::Value>(&self.body).ok()? {
                serde_json::Value::Object(m) => Some(m),
                _ => None,
            }
        }
    }

    fn query_param(&self, name: &str) -> Option<String> {
        crate::forms::query_param(self.query, name)
    }
}

fn bad_request(req: &Request<'_>, message: &'static str) -> Reply {
    Reply::error(
        Reject::bad_request(message),
        req.request_id,
        ("error", "bad_request"),
    )
}

fn unavailable(req: &Request<'_>, what: &'static str) -> Reply {
    Reply::error(
        Reject::new(
            503,
            "auth_unavailable",
            "Sign-in is temporarily unavailable.",
        )
        .with_header("Retry-After", "5"),
        req.request_id,
        ("error", what),
    )
}

fn user_json(u: &User) -> serde_json::Value {
    json!({"id": u.id, "email": u.email, "name": u.display_name, "role": u.role.as_str()})
}

impl Auth {
    fn session_cookies(&self, pair: &TokenPair, tls: bool) -> Vec<(String, String)> {
        let c = &self.config.cookies;
        vec![
            (
                "Set-Cookie".into(),
                cookies::set(
                    c,
                    &c.name,
                    &pair.access_token,
                    "/",
                    pair.access_ttl.as_secs(),
                    tls,
                ),
            ),
            (
                "Set-Cookie".into(),
                cookies::set(
                    c,
                    &c.refresh_name,
                    &pair.refresh_token,
                    cookies::REFRESH_PATH,
                    pair.refresh_ttl.as_secs(),
                    tls,
                ),
            ),
            (
                "Set-Cookie".into(),
                cookies::clear(c, &c.refresh_name, cookies::LEGACY_REFRESH_PATH, tls),
            ),
        ]
    }

    fn clear_cookies(&self, tls: bool) -> Vec<(String, String)> {
        let c = &self.config.cookies;
        vec![
            ("Set-Cookie".into(), cookies::clear(c, &c.name, "/", tls)),
            (
                "Set-Cookie".into(),
                cookies::clear(c, &c.refresh_name, cookies::REFRESH_PATH, tls),
            ),
            (
                "Set-Cookie".into(),
                cookies::clear(c, &c.refresh_name, cookies::LEGACY_REFRESH_PATH, tls),
            ),
        ]
    }

    fn pair_json(&self, pair: &TokenPair, user: serde_json::Value) -> serde_json::Value {
        json!({
            "access_token": pair.access_token,
            "refresh_token": pair.refresh_token,
            "token_type": "Bearer",
            "expires_in": pair.access_ttl.as_secs(),
            "refresh_expires_in": pair.refresh_ttl.as_secs(),
            "user": user,
        })
    }

    async fn event(
        &self,
        kind: EventKind,
        user: Option<i64>,
        email: Option<&str>,
        req: &Request<'_>,
    ) {
        let ip = req.ip();
        if let Err(e) = self
            .users
            .record_event(kind, user, email, ip.as_deref(), req.header("user-agent"))
            .await
        {
            tracing::warn!(request_id = req.request_id, error = %e, kind = kind.as_str(), "auth event not recorded");
        }
    }

    /// What refuses a request to `ep` before anything is read: `404` for the registration
    /// endpoints while `auth.registration.enabled` is off, and `403` (`csrf`) for a request
    /// from another site's page to an endpoint that sets session cookies (login CSRF: it
    /// could sign the visitor's browser into an account of its choosing) or registers (an
    /// account made in the visitor's name by another site is no better).
    pub fn refuse_early(&self, ep: Endpoint, req: &Request<'_>) -> Option<Reply> {
        if ep.registers() && !self.config.registration.enabled {
            return Some(Reply::error(
                Reject::not_found(),
                req.request_id,
                ("deny", "disabled"),
            ));
        }
        // The page itself may be linked from anywhere.
        let same_origin_only = matches!(
            ep,
            Endpoint::Login
                | Endpoint::WebLogin(_)
                | Endpoint::Refresh
                | Endpoint::Validate
                | Endpoint::Register
                | Endpoint::RegisterForm
                | Endpoint::MfaVerify
                | Endpoint::MfaEnrol
        );
        if same_origin_only && super::guard::cross_site(req.headers, &self.config.trusted_origins.0)
        {
            return Some(Reply::error(
                Reject::new(403, "csrf", "Cross-site request refused."),
                req.request_id,
                ("deny", "csrf"),
            ));
        }
        None
    }

    /// Answers one auth endpoint.
    pub async fn handle(&self, ep: Endpoint, req: &Request<'_>) -> Reply {
        if let Some(r) = self.refuse_early(ep, req) {
            return r;
        }
        match ep {
            Endpoint::Register => self.register_api(req).await,
            Endpoint::RegisterForm => match self.register_form(req).await {
                register::FormOutcome::Reply(r) => r,
                register::FormOutcome::Form(f) => f.refusal.reply(req.request_id),
            },
            // The page itself is rendered by the proxy.
            Endpoint::RegisterPage => {
                Reply::error(Reject::not_found(), req.request_id, ("deny", "disabled"))
            }
            Endpoint::Login => {
                // JSON only: a form or `text/plain` body is what another site's page can
                // send without a preflight.
                if !req.is_json() {
                    return Reply::error(
                        Reject::new(
                            415,
                            "unsupported_media_type",
                            "Send email and password as JSON (Content-Type: application/json).",
                        ),
                        req.request_id,
                        ("error", "unsupported_media_type"),
                    );
                }
                let user = match self.check_credentials(req).await {
                    Ok(u) => u,
                    Err(r) => return r,
                };
                let outcome = match self.second_factor(&user.0, req).await {
                    Ok(o) => o,
                    Err(r) => return r,
                };
                self.reset_failures(&user.0.email, req).await;
                match self.start_session(&user, req).await {
                    Ok(pair) => {
                        let mut r = Reply::json(
                            200,
                            self.pair_json(&pair, user_json(&user.0)),
                            ("allow", "login"),
                        );
                        r.headers.extend(self.session_cookies(&pair, req.tls));
                        r.mfa = outcome;
                        r
                    }
                    Err(r) => r,
                }
            }
            Endpoint::WebLogin(role) => self.web_login(role, req).await,
            Endpoint::Validate => match find_token(req.headers, &self.config.cookies.name) {
                None => self.unauthorized(req, "missing_token"),
                Some((token, via_cookie)) => match self.sessions.check(token, unix_now()).await {
                    Ok((c, renewed)) => {
                        // A front end polling validate keeps its cookie session alive too.
                        let cookie = super::guard::renewed_cookie(
                            self,
                            &c,
                            renewed,
                            via_cookie,
                            req.tls,
                            unix_now(),
                        );
                        let mut r = Reply::json(
                            200,
                            json!({"valid": true, "user_id": c.sub, "role": c.role, "session_id": c.sid, "expires_at": c.exp, "claims": c}),
                            ("allow", "validate"),
                        );
                        r.headers
                            .extend(cookie.map(|v| ("Set-Cookie".to_string(), v)));
                        r
                    }
                    Err(SessionError::Store(_)) => unavailable(req, "store_unavailable"),
                    Err(e) => self.unauthorized(req, e.reason()),
                },
            },
            Endpoint::Refresh => self.refresh(req).await,
            Endpoint::Logout | Endpoint::LogoutPage => self.logout(ep, req).await,
            Endpoint::MfaPage => self.mfa_page(req).await,
            Endpoint::MfaVerify => self.mfa_verify(req).await,
            Endpoint::MfaEnrolPage => self.mfa_enrol_page(req).await,
            Endpoint::MfaEnrol => self.mfa_enrol(req).await,
        }
    }

    fn unauthorized(&self, req: &Request<'_>, reason: &'static str) -> Reply {
        Reply::error(
            Reject::new(401, "unauthorized", "Authentication is required.")
                .with_header("WWW-Authenticate", r#"Bearer realm="gatehouse""#),
            req.request_id,
            ("deny", reason),
        )
    }
}

impl Reply {
    fn with_headers(mut self, h: Vec<(String, String)>) -> Reply {
        self.headers.extend(h);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_methods() {
        assert_eq!(
            route(&Method::POST, "/api/v1/auth/login"),
            Some(Ok(Endpoint::Login))
        );
        assert_eq!(route(&Method::GET, "/api/v1/auth/login"), Some(Err("POST")));
        assert_eq!(
            route(&Method::POST, "/api/web/auth/doctor/login"),
            Some(Ok(Endpoint::WebLogin(Role::Doctor)))
        );
        assert_eq!(route(&Method::POST, "/api/web/auth/admin/login"), None);
        assert_eq!(
            route(&Method::GET, "/logout"),
            Some(Ok(Endpoint::LogoutPage))
        );
        assert_eq!(
            route(&Method::POST, "/api/v1/auth/validate"),
            Some(Err("GET, HEAD"))
        );
        assert_eq!(
            route(&Method::POST, "/api/v1/auth/register"),
            Some(Ok(Endpoint::Register))
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/auth/register"),
            Some(Err("POST"))
        );
        assert_eq!(
            route(&Method::GET, "/register"),
            Some(Ok(Endpoint::RegisterPage))
        );
        assert_eq!(
            route(&Method::HEAD, "/register"),
            Some(Ok(Endpoint::RegisterPage))
        );
        assert_eq!(
            route(&Method::POST, "/register"),
            Some(Ok(Endpoint::RegisterForm))
        );
        assert_eq!(
            route(&Method::PUT, "/register"),
            Some(Err("GET, HEAD, POST"))
        );
        assert!([
            Endpoint::Register,
            Endpoint::RegisterPage,
            Endpoint::RegisterForm
        ]
        .iter()
        .all(|e| e.registers()));
        assert!(!Endpoint::Login.registers());
    }
}

//! The seeds' auth endpoints, answered by the gateway itself:
//! `POST /api/v1/auth/login`, `POST /api/web/auth/{patient|doctor|institution}/login`,
//! `GET /api/v1/auth/validate`, `POST /api/v1/auth/refresh`, `POST /api/v1/auth/logout`
//! (`?all=true`), and `GET /logout` for browsers.
//!
//! Each handler takes plain request facts and returns a [`Reply`]; the proxy reads the body
//! and writes the reply. Failures are recorded as auth events and counted by the caller.

use super::guard::find_token;
use super::sessions::{SessionError, TokenPair};
use super::users::{EventKind, Role, User, UserError};
use super::{cookies, unix_now, Auth};
use crate::errors::Reject;
use crate::forms::{form_decode, safe_next};
use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::json;
use std::net::IpAddr;

/// A complete answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Result and reason for `auth_decisions_total`.
    pub decision: (&'static str, &'static str),
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
}

/// Maps a normalised path to an endpoint; `Err(allow)` when the path is one but the
/// method is not.
pub fn route(method: &Method, path: &str) -> Option<Result<Endpoint, &'static str>> {
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
        _ => return None,
    };
    Some(if allowed.contains(method) {
        Ok(ep)
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

    /// Failure counters: `login_fail:acct:{email}` and `login_fail:ip:{ip}`.
    fn counter_keys(&self, email: &str, req: &Request<'_>) -> (String, Option<String>) {
        (
            format!("login_fail:acct:{email}"),
            req.ip().map(|ip| format!("login_fail:ip:{ip}")),
        )
    }

    async fn locked(&self, email: &str, req: &Request<'_>) -> Result<Option<u64>, SessionError> {
        let l = &self.config.login;
        let (acct, ip) = self.counter_keys(email, req);
        let store = &self.sessions.store;
        let count = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let mut retry_after = None;
        if count(store.get(&acct).await?) >= l.max_failures_per_account {
            retry_after = Some(
                store
                    .ttl(&acct)
                    .await?
                    .map_or(l.window.0.as_secs(), |d| d.as_secs().max(1)),
            );
        }
        if let Some(ip) = ip {
            if count(store.get(&ip).await?) >= l.max_failures_per_ip {
                let t = store
                    .ttl(&ip)
                    .await?
                    .map_or(l.window.0.as_secs(), |d| d.as_secs().max(1));
                retry_after = Some(retry_after.map_or(t, |r: u64| r.max(t)));
            }
        }
        Ok(retry_after)
    }

    async fn count_failure(&self, email: &str, req: &Request<'_>) -> Result<(), SessionError> {
        let window = self.config.login.window.0;
        let (acct, ip) = self.counter_keys(email, req);
        self.sessions.store.incr(&acct, window).await?;
        if let Some(ip) = ip {
            self.sessions.store.incr(&ip, window).await?;
        }
        Ok(())
    }

    /// Shared by both login endpoints: credentials → user, with lockout; with the time (unix
    /// ms) the password check began.
    async fn check_credentials(&self, req: &Request<'_>) -> Result<(User, i64), Reply> {
        let Some(fields) = req.fields() else {
            return Err(bad_request(
                req,
                "Send email and password as JSON or a form.",
            ));
        };
        let text = |k: &str| {
            fields
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::trim)
                .unwrap_or("")
        };
        let email = text("email").to_ascii_lowercase();
        let password = fields
            .get("password")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if email.is_empty() || password.is_empty() || email.len() > 254 || password.len() > 1024 {
            return Err(bad_request(
                req,
                "Send email and password as JSON or a form.",
            ));
        }
        match self.locked(&email, req).await {
            Ok(Some(retry)) => {
                self.event(EventKind::Locked, None, Some(&email), req).await;
                return Err(Reply::error(
                    Reject::new(
                        429,
                        "too_many_attempts",
                        "Too many failed sign-ins; try again later.",
                    )
                    .with_header("Retry-After", retry.to_string()),
                    req.request_id,
                    ("deny", "locked"),
                ));
            }
            Ok(None) => {}
            Err(_) => return Err(unavailable(req, "store_unavailable")),
        }
        let began_ms = super::users::unix_now_ms();
        let span = req.trace.db(self.users.db_system(), "SELECT");
        let authenticated = self.users.authenticate(&email, password).await;
        span.end();
        match authenticated {
            Ok(Some(user)) => {
                let (acct, _) = self.counter_keys(&email, req);
                if let Err(e) = self.sessions.store.delete(&[acct]).await {
                    tracing::warn!(request_id = req.request_id, error = %e, "could not reset the failure counter");
                }
                Ok((user, began_ms))
            }
            Ok(None) => {
                self.event(EventKind::LoginFailed, None, Some(&email), req)
                    .await;
                if self.count_failure(&email, req).await.is_err() {
                    return Err(unavailable(req, "store_unavailable"));
                }
                Err(Reply::error(
                    Reject::new(401, "invalid_credentials", "Wrong email or password."),
                    req.request_id,
                    ("deny", "invalid_credentials"),
                ))
            }
            Err(UserError::Unavailable(e)) => {
                tracing::error!(request_id = req.request_id, error = %e, "user database unavailable");
                Err(unavailable(req, "database_unavailable"))
            }
            Err(e) => {
                tracing::error!(request_id = req.request_id, error = %e, "login failed");
                Err(unavailable(req, "database_error"))
            }
        }
    }

    async fn start_session(
        &self,
        (user, began_ms): &(User, i64),
        req: &Request<'_>,
    ) -> Result<TokenPair, Reply> {
        let span = req.trace.db(self.sessions.store.kind(), "session start");
        let started = self
            .sessions
            .start(&user.id.to_string(), user.role.as_str(), unix_now())
            .await;
        span.end();
        match started {
            Ok(pair) => {
                // An account change committed while the password was being checked (a
                // disable, a new password) must not leave this session behind: the gateways
                // end only sessions begun before a change.
                match self.users.sessions_valid_after(user.id).await {
                    Ok(t) if t < *began_ms => {}
                    other => {
                        if let Err(e) = self.sessions.end_session(&pair.access.sid).await {
                            tracing::error!(request_id = req.request_id, error = %e, "could not end a session begun during an account change");
                        }
                        return Err(match other {
                            Err(_) => unavailable(req, "database_unavailable"),
                            Ok(_) => Reply::error(
                                Reject::new(401, "invalid_credentials", "Wrong email or password."),
                                req.request_id,
                                ("deny", "account_changed"),
                            ),
                        });
                    }
                }
                self.event(EventKind::LoginOk, Some(user.id), Some(&user.email), req)
                    .await;
                Ok(pair)
            }
            Err(e) => {
                tracing::error!(request_id = req.request_id, error = %e, "could not start a session");
                Err(unavailable(req, "store_unavailable"))
            }
        }
    }

    /// Answers one auth endpoint.
    pub async fn handle(&self, ep: Endpoint, req: &Request<'_>) -> Reply {
        // Endpoints that set session cookies never do so for another site's page: it could
        // sign the visitor's browser into an account of its choosing (login CSRF).
        let sets_session = matches!(
            ep,
            Endpoint::Login | Endpoint::WebLogin(_) | Endpoint::Refresh | Endpoint::Validate
        );
        if sets_session && super::guard::cross_site(req.headers, &self.config.trusted_origins.0) {
            return Reply::error(
                Reject::new(403, "csrf", "Cross-site request refused."),
                req.request_id,
                ("deny", "csrf"),
            );
        }
        match ep {
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
                match self.start_session(&user, req).await {
                    Ok(pair) => {
                        let mut r = Reply::json(
                            200,
                            self.pair_json(&pair, user_json(&user.0)),
                            ("allow", "login"),
                        );
                        r.headers.extend(self.session_cookies(&pair, req.tls));
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

    async fn web_login(&self, role: Role, req: &Request<'_>) -> Reply {
        // Forms (browsers) carry the double-submit CSRF token of the login page.
        let is_form = req.header("content-type").is_some_and(|ct| {
            ct.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
        if is_form {
            let sent = req.fields().and_then(|f| {
                f.get("csrf_token")
                    .and_then(|v| v.as_str())
                    .map(String::from)
            });
            let cookie = cookies::get(req.headers, cookies::CSRF_COOKIE);
            if sent.is_none() || sent.as_deref() != cookie {
                return if req.api_client {
                    Reply::error(
                        Reject::new(403, "csrf", "Cross-site request refused."),
                        req.request_id,
                        ("deny", "csrf"),
                    )
                } else {
                    Reply::redirect("/login?error=forbidden", ("deny", "csrf"))
                };
            }
        }
        let next = req
            .fields()
            .and_then(|f| f.get("next").and_then(|v| v.as_str()).map(String::from))
            .or_else(|| req.query_param("next"))
            .filter(|n| safe_next(n));
        let user = match self.check_credentials(req).await {
            Ok(u) => u,
            Err(r) if !req.api_client && matches!(r.status, 401 | 429) => {
                let mut loc = format!(
                    "/login?portal={}&error={}",
                    role.as_str(),
                    if r.status == 429 { "locked" } else { "invalid" }
                );
                if let Some(n) = &next {
                    loc.push_str("&next=");
                    loc.push_str(&super::guard::percent_encode(n));
                }
                return Reply::redirect(&loc, r.decision);
            }
            Err(r) => return r,
        };
        if user.0.role != role {
            if !req.api_client {
                let loc = format!("/login?portal={}&error=forbidden", role.as_str());
                return Reply::redirect(&loc, ("deny", "wrong_role"));
            }
            return Reply::error(
                Reject::new(403, "wrong_portal", "This account cannot sign in here."),
                req.request_id,
                ("deny", "wrong_role"),
            );
        }
        let pair = match self.start_session(&user, req).await {
            Ok(p) => p,
            Err(r) => return r,
        };
        let mut r = if req.api_client {
            Reply::json(
                200,
                self.pair_json(&pair, user_json(&user.0)),
                ("allow", "login"),
            )
        } else {
            let target = next.unwrap_or_else(|| format!("/{}/dashboard", role.as_str()));
            Reply::redirect(&target, ("allow", "login"))
        };
        r.headers.extend(self.session_cookies(&pair, req.tls));
        r
    }

    async fn refresh(&self, req: &Request<'_>) -> Reply {
        let from_body = req.fields().and_then(|f| {
            f.get("refresh_token")
                .and_then(|v| v.as_str())
                .map(String::from)
        });
        let token = from_body.or_else(|| {
            cookies::get(req.headers, &self.config.cookies.refresh_name).map(String::from)
        });
        let Some(token) = token else {
            return bad_request(req, "Send refresh_token.");
        };
        let now = unix_now();
        let claims = match self.sessions.verify_refresh(&token, now) {
            Ok(c) => c,
            Err(e) => return self.unauthorized(req, e.reason()),
        };
        // The account as it is now: a disabled, deleted or re-roled account refreshes nothing,
        // and a session begun before the user's latest account change is over.
        let valid_after = match self
            .account_valid_after(&claims.sub, &claims.role, req)
            .await
        {
            Ok(Some(t)) => t,
            Ok(None) => {
                if let Err(e) = self.sessions.end_session(&claims.sid).await {
                    tracing::warn!(request_id = req.request_id, error = %e, "could not end the session of a disabled account");
                }
                let mut r = self.unauthorized(req, "account_disabled");
                r.headers.extend(self.clear_cookies(req.tls));
                return r;
            }
            Err(r) => return r,
        };
        let span = req.trace.db(self.sessions.store.kind(), "session refresh");
        let refreshed = self.sessions.refresh(&token, now, valid_after).await;
        span.end();
        match refreshed {
            Ok(pair) => {
                let uid = pair.access.sub.parse::<i64>().ok();
                self.event(EventKind::Refresh, uid, None, req).await;
                let user = json!({"id": pair.access.sub, "role": pair.access.role});
                let mut r = Reply::json(200, self.pair_json(&pair, user), ("allow", "refresh"));
                r.headers.extend(self.session_cookies(&pair, req.tls));
                r
            }
            Err(SessionError::RefreshReuse { user_id }) => {
                tracing::warn!(request_id = req.request_id, user = %user_id, "refresh token reuse: session revoked");
                self.event(EventKind::RefreshReuse, user_id.parse().ok(), None, req)
                    .await;
                let mut r = self.unauthorized(req, "refresh_reuse");
                r.headers.extend(self.clear_cookies(req.tls));
                r
            }
            Err(SessionError::Store(_)) => unavailable(req, "store_unavailable"),
            Err(e) => self.unauthorized(req, e.reason()),
        }
    }

    /// `Some(t)`: the user exists, is enabled and still has `role`; sessions begun before
    /// `t` (unix ms, the latest account change) are over. `None`: the account is gone,
    /// disabled or changed role. `Err`: the database cannot say (the 503 to answer).
    async fn account_valid_after(
        &self,
        sub: &str,
        role: &str,
        req: &Request<'_>,
    ) -> Result<Option<i64>, Reply> {
        let db_down = || unavailable(req, "database_unavailable");
        let Ok(id) = sub.parse::<i64>() else {
            return Ok(None);
        };
        match self.users.find_by_id(id).await {
            Ok(Some(u)) if !u.disabled && u.role.as_str() == role => {}
            Ok(_) => return Ok(None),
            Err(e) => {
                tracing::error!(error = %e, "user database unavailable: account not checked");
                return Err(db_down());
            }
        }
        match self.users.sessions_valid_after(id).await {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                tracing::error!(error = %e, "user database unavailable: revocations not checked");
                Err(db_down())
            }
        }
    }

    async fn logout(&self, ep: Endpoint, req: &Request<'_>) -> Reply {
        let browser = ep == Endpoint::LogoutPage;
        let all = req
            .query_param("all")
            .is_some_and(|v| v == "true" || v == "1");
        let token = find_token(req.headers, &self.config.cookies.name).map(|(t, _)| t);
        let claims = token.and_then(|t| self.sessions.verify_only(t, unix_now()).ok());
        let Some(claims) = claims else {
            if browser {
                return Reply::redirect("/login", ("allow", "logout"))
                    .with_headers(self.clear_cookies(req.tls));
            }
            let mut r = self.unauthorized(req, "missing_token");
            r.headers.extend(self.clear_cookies(req.tls));
            return r;
        };
        let ended = if all {
            self.sessions.end_all(&claims.sub).await
        } else {
            self.sessions.end_session(&claims.sid).await.map(|_| 1)
        };
        match ended {
            Ok(n) => {
                match (all, claims.sub.parse::<i64>()) {
                    (true, Ok(uid)) => {
                        let recorded = self
                            .users
                            .record_sessions_revoked(uid, super::users::Source::Api, n as u64)
                            .await;
                        if let Err(e) = recorded {
                            tracing::warn!(request_id = req.request_id, error = %e, "auth event not recorded");
                        }
                    }
                    _ => {
                        self.event(EventKind::Logout, claims.sub.parse().ok(), None, req)
                            .await
                    }
                }
                let r = if browser {
                    let flash = cookies::set(
                        &self.config.cookies,
                        cookies::FLASH_COOKIE,
                        "success:logged_out",
                        "/",
                        60,
                        req.tls,
                    );
                    Reply::redirect("/login", ("allow", "logout"))
                        .with_headers(vec![("Set-Cookie".into(), flash)])
                } else {
                    Reply::json(
                        200,
                        json!({"logged_out": true, "sessions_ended": n}),
                        ("allow", "logout"),
                    )
                };
                r.with_headers(self.clear_cookies(req.tls))
            }
            Err(e) => {
                tracing::error!(request_id = req.request_id, error = %e, "logout failed: session store");
                unavailable(req, "store_unavailable")
            }
        }
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
    }
}

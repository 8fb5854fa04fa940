//! `POST /api/v1/auth/login` and `POST /api/web/auth/{patient|doctor|institution}/login`:
//! credentials with lockout after repeated failures, and the session they start.

use super::{bad_request, unavailable, user_json, Reply, Request};
use crate::auth::sessions::{SessionError, TokenPair};
use crate::auth::users::{EventKind, Role, User, UserError};
use crate::auth::{guard, unix_now, users, Auth};
use crate::errors::Reject;
use crate::forms::safe_next;

impl Auth {
    /// Failure counters: `login_fail:acct:{email}` and `login_fail:ip:{ip}`.
    pub(super) fn counter_keys(&self, email: &str, req: &Request<'_>) -> (String, Option<String>) {
        (
            format!("login_fail:acct:{email}"),
            req.ip().map(|ip| format!("login_fail:ip:{ip}")),
        )
    }

    pub(super) async fn locked(
        &self,
        email: &str,
        req: &Request<'_>,
    ) -> Result<Option<u64>, SessionError> {
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

    pub(super) async fn count_failure(
        &self,
        email: &str,
        req: &Request<'_>,
    ) -> Result<(), SessionError> {
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
    pub(super) async fn check_credentials(&self, req: &Request<'_>) -> Result<(User, i64), Reply> {
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
        let began_ms = users::unix_now_ms();
        let span = req.trace.db(self.users.db_system(), "SELECT");
        let authenticated = self.users.authenticate(&email, password).await;
        span.end();
        match authenticated {
            // The account's failure counter is reset once the whole login (second factor
            // included) succeeds: `reset_failures`.
            Ok(Some(user)) => Ok((user, began_ms)),
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

    /// A login succeeded (password and, where there is one, second factor): the account's
    /// failure counter starts again.
    pub(super) async fn reset_failures(&self, email: &str, req: &Request<'_>) {
        let (acct, _) = self.counter_keys(email, req);
        if let Err(e) = self.sessions.store.delete(&[acct]).await {
            tracing::warn!(request_id = req.request_id, error = %e, "could not reset the failure counter");
        }
    }

    pub(super) async fn start_session(
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

    pub(super) async fn web_login(&self, role: Role, req: &Request<'_>) -> Reply {
        // Forms (browsers) carry the double-submit CSRF token of the login page.
        if req.is_form() && !req.form_token_matches() {
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
                    loc.push_str(&guard::percent_encode(n));
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
        let mut outcome = None;
        if req.api_client {
            match self.second_factor(&user.0, req).await {
                Ok(o) => outcome = o,
                Err(r) => return r,
            }
        } else if let Some(r) = self.portal_second_step(&user, next.as_deref(), req).await {
            return r;
        }
        self.reset_failures(&user.0.email, req).await;
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
        r.mfa = outcome;
        r
    }
}

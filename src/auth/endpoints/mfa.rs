//! The second factor at login, and its enrolment.
//!
//! API (`POST /api/v1/auth/login`, and a portal login posted as JSON): an enrolled user
//! sends `"otp"` (six digits) or `"recovery_code"` with the password; without either the
//! answer is 401 `mfa_required` and nothing is set or started (not a failure: the password
//! was right). A wrong or replayed code is a failed login (it counts toward the lockout and
//! is recorded as `login_failed`). A user whose role must use a factor and has none gets 403
//! `mfa_enrollment_required`.
//!
//! Portal (forms): after the password step, an enrolled user gets a pending login (the
//! store's `mfa_pending:{id}`, 5 minutes, id in the `predicthealth_mfa` cookie) and is sent
//! to `GET /login/mfa`, which posts the code to `POST /api/web/auth/mfa`; a user who must
//! enrol first is sent to `GET /account/mfa` with the same kind of pending login, and gets
//! the session once a first code confirms the factor (`POST /account/mfa`). A signed-in
//! user enrols on the same page.

use super::{unavailable, Reply, Request};
use crate::auth::mfa::{totp, Mfa, MfaError, Outcome, Pending, PENDING_COOKIE};
use crate::auth::sessions::SessionError;
use crate::auth::users::{EventKind, StoredFactor, User};
use crate::auth::{cookies, guard, unix_now, Auth};
use crate::errors::Reject;
use serde_json::json;

/// Who an enrolment page is for.
struct Subject {
    user: User,
    /// The pending login (id, record) when the user has no session yet.
    pending: Option<(String, Pending)>,
}

fn dashboard(role: &str) -> String {
    format!("/{role}/dashboard")
}

impl Auth {
    /// The API's second factor for a user whose password was right: `Ok(outcome)` when the
    /// login may go on (`None`: the user has no factor and needs none).
    pub(super) async fn second_factor(
        &self,
        user: &User,
        req: &Request<'_>,
    ) -> Result<Option<&'static str>, Reply> {
        let factor = match self.users.mfa_factor(user.id).await {
            Ok(f) => f.filter(StoredFactor::enabled),
            Err(_) => return Err(unavailable(req, "database_unavailable")),
        };
        let Some(factor) = factor else {
            if self.mfa.required_for(user.role) {
                return Err(Reply::error(
                    Reject::new(
                        403,
                        "mfa_enrollment_required",
                        "This account must enrol a second factor (sign in on the portal, or ask an administrator: gatehouse user mfa enroll).",
                    ),
                    req.request_id,
                    ("deny", "mfa_enrollment_required"),
                ));
            }
            return Ok(None);
        };
        let fields = req.fields().unwrap_or_default();
        let code = ["otp", "recovery_code"]
            .iter()
            .filter_map(|k| fields.get(*k).and_then(|v| v.as_str()))
            .map(str::trim)
            .find(|v| !v.is_empty())
            .map(String::from);
        let Some(code) = code.filter(|c| c.len() <= 64) else {
            let mut r = Reply::error(
                Reject::new(
                    401,
                    "mfa_required",
                    "A second factor is required: send \"otp\" (the authenticator's code) or \"recovery_code\".",
                ),
                req.request_id,
                ("deny", "mfa_required"),
            );
            r.mfa = Some("missing");
            return Err(r);
        };
        match self.check_code(user, &factor, &code, req).await {
            Ok(o) => Ok(Some(o.label())),
            Err(mut r) => {
                if r.status == 401 {
                    r = Reply::error(
                        Reject::new(401, "invalid_otp", "Wrong or already used code."),
                        req.request_id,
                        r.decision,
                    )
                    .with_mfa(r.mfa);
                }
                Err(r)
            }
        }
    }

    /// Checks a code of an enabled factor; a wrong or replayed one is a failed login.
    /// `Err` carries a 401 (wrong), or a 503.
    async fn check_code(
        &self,
        user: &User,
        factor: &StoredFactor,
        code: &str,
        req: &Request<'_>,
    ) -> Result<Outcome, Reply> {
        let span = req.trace.db(self.users.db_system(), "UPDATE");
        let checked = self
            .mfa
            .verify(&self.users, user.id, factor, code, unix_now())
            .await;
        span.end();
        match checked {
            Ok(o @ (Outcome::Totp | Outcome::Recovery)) => Ok(o),
            Ok(o) => {
                self.event(
                    EventKind::LoginFailed,
                    Some(user.id),
                    Some(&user.email),
                    req,
                )
                .await;
                if self.count_failure(&user.email, req).await.is_err() {
                    return Err(unavailable(req, "store_unavailable"));
                }
                let reason = if o == Outcome::Replayed {
                    "otp_replayed"
                } else {
                    "invalid_otp"
                };
                Err(Reply::error(
                    Reject::new(401, "invalid_otp", "Wrong or already used code."),
                    req.request_id,
                    ("deny", reason),
                )
                .with_mfa(Some(o.label())))
            }
            Err(MfaError::Undecryptable) => {
                tracing::error!(request_id = req.request_id, user_id = user.id, "the user's second factor cannot be decrypted: is auth.mfa.encryption_key the key it was enrolled with? (gatehouse user mfa reset enrols anew)");
                Err(unavailable(req, "mfa_undecryptable").with_mfa(Some("error")))
            }
            Err(MfaError::Db(_)) => Err(unavailable(req, "database_unavailable")),
        }
    }

    /// The portal's step after a right password: `Some(redirect)` to the second step or to
    /// enrolment (with a pending login), `None` when the session may start now.
    pub(super) async fn portal_second_step(
        &self,
        (user, began_ms): &(User, i64),
        next: Option<&str>,
        req: &Request<'_>,
    ) -> Option<Reply> {
        let enabled = match self.users.mfa_factor(user.id).await {
            Ok(f) => f.is_some_and(|f| f.enabled()),
            Err(_) => return Some(unavailable(req, "database_unavailable")),
        };
        let enroll = !enabled && self.mfa.required_for(user.role);
        if !enabled && !enroll {
            return None;
        }
        let pending = Pending {
            user_id: user.id,
            role: user.role.as_str().into(),
            email: user.email.clone(),
            next: next.map(String::from),
            began_ms: *began_ms,
            enroll,
        };
        let id = match Mfa::start_pending(self.sessions.store.as_ref(), &pending).await {
            Ok(id) => id,
            Err(_) => return Some(unavailable(req, "store_unavailable")),
        };
        let (to, reason) = if enroll {
            ("/account/mfa", "mfa_enrollment_required")
        } else {
            ("/login/mfa", "mfa_required")
        };
        let mut r = Reply::redirect(to, ("deny", reason));
        r.headers.push(self.pending_cookie(Some(&id), req.tls));
        Some(r)
    }

    fn pending_cookie(&self, id: Option<&str>, tls: bool) -> (String, String) {
        let c = &self.config.cookies;
        let v = match id {
            Some(id) => cookies::set(
                c,
                PENDING_COOKIE,
                id,
                "/",
                crate::auth::mfa::PENDING_TTL.as_secs(),
                tls,
            ),
            None => cookies::clear(c, PENDING_COOKIE, "/", tls),
        };
        ("Set-Cookie".into(), v)
    }

    /// The pending login of the request's cookie.
    async fn pending_of(&self, req: &Request<'_>) -> Result<Option<(String, Pending)>, Reply> {
        let Some(id) = cookies::get(req.headers, PENDING_COOKIE) else {
            return Ok(None);
        };
        match Mfa::pending(self.sessions.store.as_ref(), id).await {
            Ok(p) => Ok(p.map(|p| (id.to_string(), p))),
            Err(_) => Err(unavailable(req, "store_unavailable")),
        }
    }

    /// Back to the sign-in page, the pending login (if any) forgotten.
    fn back_to_login(&self, role: Option<&str>, error: Option<&str>, req: &Request<'_>) -> Reply {
        let mut loc = "/login".to_string();
        let mut sep = '?';
        if let Some(r) = role {
            loc.push_str(&format!("{sep}portal={r}"));
            sep = '&';
        }
        if let Some(e) = error {
            loc.push_str(&format!("{sep}error={e}"));
        }
        let mut r = Reply::redirect(&loc, ("deny", "mfa_pending_missing"));
        r.headers.push(self.pending_cookie(None, req.tls));
        r
    }

    /// `GET /login/mfa`
    pub(super) async fn mfa_page(&self, req: &Request<'_>) -> Reply {
        match self.pending_of(req).await {
            Err(r) => r,
            Ok(Some((_, p))) if !p.enroll => {
                let error = req.query_param("error").filter(|e| e == "invalid");
                Reply::page(
                    "mfa.html",
                    "Verificación en dos pasos",
                    json!({"mfa": {"mode": "verify", "error": error, "portal": p.role}}),
                    ("allow", "mfa_page"),
                )
            }
            Ok(Some(_)) => Reply::redirect("/account/mfa", ("deny", "mfa_enrollment_required")),
            Ok(None) => self.back_to_login(None, None, req),
        }
    }

    /// `POST /api/web/auth/mfa` (form: `csrf_token`, `code`).
    pub(super) async fn mfa_verify(&self, req: &Request<'_>) -> Reply {
        if !req.form_token_matches() {
            return Reply::redirect("/login?error=forbidden", ("deny", "csrf"));
        }
        let (id, p) = match self.pending_of(req).await {
            Err(r) => return r,
            Ok(Some((id, p))) if !p.enroll => (id, p),
            Ok(_) => return self.back_to_login(None, None, req),
        };
        let store = self.sessions.store.as_ref();
        match self.locked(&p.email, req).await {
            Ok(Some(_)) => {
                let _ = Mfa::end_pending(store, &id).await;
                self.event(EventKind::Locked, Some(p.user_id), Some(&p.email), req)
                    .await;
                let mut r = self.back_to_login(Some(&p.role), Some("locked"), req);
                r.decision = ("deny", "locked");
                return r;
            }
            Ok(None) => {}
            Err(_) => return unavailable(req, "store_unavailable"),
        }
        let user = match self.users.find_by_id(p.user_id).await {
            Ok(Some(u)) if !u.disabled && u.role.as_str() == p.role => u,
            Ok(_) => return self.back_to_login(Some(&p.role), Some("invalid"), req),
            Err(_) => return unavailable(req, "database_unavailable"),
        };
        let factor = match self.users.mfa_factor(user.id).await {
            Ok(Some(f)) if f.enabled() => f,
            Ok(_) => return self.back_to_login(Some(&p.role), Some("invalid"), req),
            Err(_) => return unavailable(req, "database_unavailable"),
        };
        let code = req
            .fields()
            .and_then(|f| f.get("code").and_then(|v| v.as_str()).map(String::from))
            .unwrap_or_default();
        if code.trim().is_empty() || code.len() > 64 {
            return Reply::redirect("/login/mfa?error=invalid", ("deny", "mfa_required"))
                .with_mfa(Some("missing"));
        }
        let outcome = match self.check_code(&user, &factor, &code, req).await {
            Ok(o) => o,
            Err(r) if r.status == 401 => {
                return Reply::redirect("/login/mfa?error=invalid", r.decision).with_mfa(r.mfa)
            }
            Err(r) => return r,
        };
        let _ = Mfa::end_pending(store, &id).await;
        self.reset_failures(&user.email, req).await;
        let target = p.next.clone().unwrap_or_else(|| dashboard(&p.role));
        self.portal_session(&user, p.began_ms, &target, req)
            .await
            .with_mfa(Some(outcome.label()))
    }

    /// Starts the session of a portal login that passed its second step, and goes on.
    async fn portal_session(
        &self,
        user: &User,
        began_ms: i64,
        target: &str,
        req: &Request<'_>,
    ) -> Reply {
        let pair = match self.start_session(&(user.clone(), began_ms), req).await {
            Ok(p) => p,
            Err(r) if r.status == 401 => {
                return self.back_to_login(Some(user.role.as_str()), Some("invalid"), req)
            }
            Err(r) => return r,
        };
        let mut r = Reply::redirect(target, ("allow", "login"));
        r.headers.extend(self.session_cookies(&pair, req.tls));
        r.headers.push(self.pending_cookie(None, req.tls));
        r
    }

    /// The signed-in user, or the pending login that must enrol.
    async fn enrolment_subject(&self, req: &Request<'_>) -> Result<Option<Subject>, Reply> {
        if let Some((token, _)) = guard::find_token(req.headers, &self.config.cookies.name) {
            match self.sessions.check(token, unix_now()).await {
                Ok((claims, _)) => {
                    let found = match claims.sub.parse::<i64>() {
                        Ok(id) => self.users.find_by_id(id).await,
                        Err(_) => Ok(None),
                    };
                    match found {
                        Ok(Some(user)) if !user.disabled => {
                            return Ok(Some(Subject {
                                user,
                                pending: None,
                            }))
                        }
                        Ok(_) => {}
                        Err(_) => return Err(unavailable(req, "database_unavailable")),
                    }
                }
                Err(SessionError::Store(_)) => return Err(unavailable(req, "store_unavailable")),
                Err(_) => {}
            }
        }
        let Some((id, p)) = self.pending_of(req).await? else {
            return Ok(None);
        };
        if !p.enroll {
            return Ok(None);
        }
        match self.users.find_by_id(p.user_id).await {
            Ok(Some(user)) if !user.disabled && user.role.as_str() == p.role => Ok(Some(Subject {
                user,
                pending: Some((id, p)),
            })),
            Ok(_) => Ok(None),
            Err(_) => Err(unavailable(req, "database_unavailable")),
        }
    }

    /// The user's pending factor, made (or made anew, when it no longer opens) as needed;
    /// `Ok(None)` when the factor is already enabled.
    async fn pending_factor(
        &self,
        user: &User,
        req: &Request<'_>,
    ) -> Result<Option<(StoredFactor, Vec<u8>)>, Reply> {
        let fresh = || self.mfa.seal(user.id, &Mfa::new_secret());
        let db = |_| unavailable(req, "database_unavailable");
        let mut f = self
            .users
            .mfa_pending(user.id, &fresh())
            .await
            .map_err(db)?;
        if f.enabled() {
            return Ok(None);
        }
        let secret = match self.mfa.open(user.id, &f) {
            Ok(s) => s,
            Err(_) => {
                // Begun under another key (a restart without auth.mfa.encryption_key):
                // nothing was confirmed, so start over.
                let sealed = fresh();
                self.users
                    .mfa_store(user.id, &sealed, false)
                    .await
                    .map_err(db)?;
                f = self.users.mfa_pending(user.id, &sealed).await.map_err(db)?;
                self.mfa
                    .open(user.id, &f)
                    .map_err(|_| unavailable(req, "mfa_undecryptable"))?
            }
        };
        Ok(Some((f, secret)))
    }

    /// `GET /account/mfa`: the QR code (inline SVG) and the secret to type, or that the
    /// factor is enabled already.
    pub(super) async fn mfa_enrol_page(&self, req: &Request<'_>) -> Reply {
        let subject = match self.enrolment_subject(req).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Reply::redirect("/login?next=/account/mfa", ("redirect", "missing_token"))
            }
            Err(r) => return r,
        };
        let user = &subject.user;
        let Some((_, secret)) = (match self.pending_factor(user, req).await {
            Ok(f) => f,
            Err(r) => return r,
        }) else {
            return Reply::page(
                "mfa.html",
                "Verificación en dos pasos",
                json!({"mfa": {"mode": "enabled", "portal": user.role.as_str()}}),
                ("allow", "mfa_page"),
            );
        };
        let uri = self.mfa.uri(&user.email, &secret);
        let error = req.query_param("error").filter(|e| e == "invalid");
        Reply::page(
            "mfa.html",
            "Activa la verificación en dos pasos",
            json!({"mfa": {
                "mode": "enroll",
                "qr_svg": crate::auth::mfa::qr_svg(&uri),
                "secret": crate::auth::mfa::base32(&secret),
                "uri": uri,
                "error": error,
                "required": subject.pending.is_some(),
                "portal": user.role.as_str(),
            }}),
            ("allow", "mfa_page"),
        )
    }

    /// `POST /account/mfa` (form: `csrf_token`, `code`): a first code enables the pending
    /// factor; the answer shows new recovery codes, and a user who had to enrol to sign in
    /// gets the session.
    pub(super) async fn mfa_enrol(&self, req: &Request<'_>) -> Reply {
        if !req.form_token_matches() {
            return Reply::redirect("/login?error=forbidden", ("deny", "csrf"));
        }
        let subject = match self.enrolment_subject(req).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Reply::redirect("/login?next=/account/mfa", ("redirect", "missing_token"))
            }
            Err(r) => return r,
        };
        let user = &subject.user;
        let (factor, secret) = match self.pending_factor(user, req).await {
            Ok(Some(f)) => f,
            Ok(None) => return Reply::redirect("/account/mfa", ("deny", "mfa_already_enabled")),
            Err(r) => return r,
        };
        let code = req
            .fields()
            .and_then(|f| f.get("code").and_then(|v| v.as_str()).map(String::from))
            .unwrap_or_default();
        let step = totp::matching_step(&secret, &code, unix_now());
        let confirmed = match step {
            Some(step) => self
                .users
                .mfa_confirm(user.id, &factor.secret_enc, step)
                .await
                .map_err(|_| unavailable(req, "database_unavailable")),
            None => Ok(false),
        };
        match confirmed {
            Ok(true) => {}
            Ok(false) => {
                return Reply::redirect("/account/mfa?error=invalid", ("deny", "invalid_otp"))
                    .with_mfa(Some("enrol_wrong"))
            }
            Err(r) => return r,
        }
        tracing::info!(user_id = user.id, "second factor enrolled");
        let codes = crate::auth::mfa::recovery::generate();
        let hashes: Vec<String> = codes
            .iter()
            .filter_map(|c| crate::auth::mfa::recovery::normalise(c))
            .map(|n| crate::auth::mfa::recovery::hash(&n))
            .collect();
        if let Err(e) = self
            .users
            .mfa_replace_recovery_codes(user.id, &hashes)
            .await
        {
            tracing::warn!(request_id = req.request_id, error = %e, "recovery codes not stored");
        }
        let target = subject
            .pending
            .as_ref()
            .and_then(|(_, p)| p.next.clone())
            .unwrap_or_else(|| dashboard(user.role.as_str()));
        let mut r = Reply::page(
            "mfa.html",
            "Verificación en dos pasos activada",
            json!({"mfa": {"mode": "done", "recovery_codes": codes, "next_url": target, "portal": user.role.as_str()}}),
            ("allow", "mfa_enrolled"),
        )
        .with_mfa(Some("enrolled"));
        if let Some((id, p)) = &subject.pending {
            let _ = Mfa::end_pending(self.sessions.store.as_ref(), id).await;
            let pair = match self.start_session(&(user.clone(), p.began_ms), req).await {
                Ok(p) => p,
                Err(r) if r.status == 401 => {
                    return self.back_to_login(Some(user.role.as_str()), Some("invalid"), req)
                }
                Err(r) => return r,
            };
            self.reset_failures(&user.email, req).await;
            r.headers.extend(self.session_cookies(&pair, req.tls));
            r.headers.push(self.pending_cookie(None, req.tls));
            r.decision = ("allow", "login");
        }
        r
    }
}

impl Reply {
    fn with_mfa(mut self, outcome: Option<&'static str>) -> Reply {
        self.mfa = outcome;
        self
    }
}

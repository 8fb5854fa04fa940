//! Self-registration: `POST /api/v1/auth/register` (JSON `{email, password, name, role?}`)
//! and the `/register` page's form (`POST /register`). A new account gets a role from
//! `auth.registration.roles`, a password that passes the policy (`users::PasswordPolicy`),
//! and no session: signing in is a separate step.
//!
//! Answers: `201 {"user": {id, email, name, role}}`; `400` naming the `field` (`email`,
//! `password`, `name`, `role`) and a `reason`; `409` when the email cannot be registered
//! (nothing more: no id, no role); `429` with `Retry-After` past `auth.registration.max_per_ip`
//! registrations (created or duplicate) per client ip within `auth.registration.window`;
//! `415` for a JSON endpoint sent anything but JSON. The page's form gets `303` to the
//! login page with a flash notice, or the form again with the field at fault (rendered by
//! the proxy from a [`FormError`]). `404` when `auth.registration.enabled` is off is the
//! caller's (the proxy answers it as a page or JSON).

use super::{user_json, Reply, Request};
use crate::auth::users::{self, PasswordPolicy, Role, User, UserError};
use crate::auth::{cookies, Auth};
use crate::errors::Reject;
use serde_json::json;

/// Why a registration did not create an account.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    /// `error.code` of the JSON answer.
    pub code: &'static str,
    /// The field at fault (`email`, `password`, `name`, `role`); `None` for the request as
    /// a whole.
    pub field: Option<&'static str>,
    /// Why, as a stable code (`required`, `invalid`, `too_short`, `common`, `taken`, …) that
    /// the page's template turns into Spanish.
    pub reason: &'static str,
    /// English text for API clients.
    pub message: String,
    pub retry_after: Option<u64>,
    /// Result and reason for `auth_decisions_total`.
    pub decision: (&'static str, &'static str),
}

impl Refusal {
    fn field(
        field: &'static str,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Box<Refusal> {
        let code = match field {
            "password" => "weak_password",
            "email" => "invalid_email",
            "name" => "invalid_name",
            _ => "invalid_role",
        };
        let decision = if field == "password" {
            ("deny", "weak_password")
        } else {
            ("error", "bad_request")
        };
        Box::new(Refusal {
            status: 400,
            code,
            field: Some(field),
            reason,
            message: message.into(),
            retry_after: None,
            decision,
        })
    }

    fn whole(status: u16, code: &'static str, reason: &'static str, message: &str) -> Box<Refusal> {
        Box::new(Refusal {
            status,
            code,
            field: None,
            reason,
            message: message.into(),
            retry_after: None,
            decision: match status {
                409 => ("deny", "duplicate_email"),
                429 => ("deny", "rate_limited"),
                403 => ("deny", "csrf"),
                s if s >= 500 => ("error", reason),
                _ => ("error", "bad_request"),
            },
        })
    }

    /// The JSON answer: the gateway's error body plus `field` and `reason`.
    pub fn reply(&self, request_id: &str) -> Reply {
        let mut error = json!({
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "reason": self.reason,
            "request_id": request_id,
        });
        if let Some(f) = self.field {
            error["field"] = json!(f);
        }
        let mut r = Reply::json(self.status, json!({ "error": error }), self.decision);
        if let Some(s) = self.retry_after {
            r.headers.push(("Retry-After".into(), s.to_string()));
        }
        r
    }
}

/// The form as posted, to show it again (never the password).
#[derive(Debug, Clone, Default)]
pub struct FormValues {
    pub email: String,
    pub name: String,
    pub role: String,
}

/// The `/register` page shown again after a post that created nothing.
#[derive(Debug, Clone)]
pub struct FormError {
    pub refusal: Refusal,
    pub values: FormValues,
}

/// What a post of the `/register` form gets.
pub enum FormOutcome {
    /// Sent as it is (the redirect after success; JSON for an API client).
    Reply(Reply),
    /// The form again, with this error.
    Form(FormError),
}

/// `registrations_total{outcome}` of an answer's status: `created` (201, or the form's 303),
/// `invalid` (400, 415), `refused` (403), `disabled` (404), `duplicate` (409),
/// `rate_limited` (429), `error` (anything else); one of
/// [`crate::metrics::REGISTRATION_OUTCOMES`].
pub fn outcome(status: u16) -> &'static str {
    match status {
        201 | 303 => "created",
        400 | 415 => "invalid",
        403 => "refused",
        404 => "disabled",
        409 => "duplicate",
        429 => "rate_limited",
        _ => "error",
    }
}

impl Auth {
    /// `POST /api/v1/auth/register`.
    pub(super) async fn register_api(&self, req: &Request<'_>) -> Reply {
        // JSON only, as for login: a form or `text/plain` body is what another site's page
        // can send without a preflight.
        if !req.is_json() {
            return Reply::error(
                Reject::new(
                    415,
                    "unsupported_media_type",
                    "Send email, password and name as JSON (Content-Type: application/json).",
                ),
                req.request_id,
                ("error", "unsupported_media_type"),
            );
        }
        let Some(fields) = req.fields() else {
            return Refusal::whole(
                400,
                "bad_request",
                "bad_request",
                "Send email, password and name as a JSON object.",
            )
            .reply(req.request_id);
        };
        match self.register(&fields, req).await {
            Ok(user) => Reply::json(
                201,
                json!({ "user": user_json(&user) }),
                ("allow", "register"),
            ),
            Err(r) => r.reply(req.request_id),
        }
    }

    /// `POST /register`: the page's form (double-submit CSRF token, like the portal logins).
    /// API clients get the JSON answers of [`Auth::register_api`], browsers a redirect or
    /// the form again.
    pub async fn register_form(&self, req: &Request<'_>) -> FormOutcome {
        let fields = match req.fields() {
            Some(f) if req.is_form() => f,
            _ => {
                let r = Refusal::whole(
                    400,
                    "bad_request",
                    "bad_request",
                    "Send the registration form (application/x-www-form-urlencoded).",
                );
                return self.form_refused(*r, FormValues::default(), req);
            }
        };
        let text = |k: &str| {
            fields
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let values = FormValues {
            email: text("email"),
            name: text("name"),
            role: text("role"),
        };
        if !req.form_token_matches() {
            let r = Refusal::whole(403, "csrf", "forbidden", "Cross-site request refused.");
            return self.form_refused(*r, values, req);
        }
        match self.register(&fields, req).await {
            Ok(user) if req.api_client => FormOutcome::Reply(Reply::json(
                201,
                json!({ "user": user_json(&user) }),
                ("allow", "register"),
            )),
            Ok(user) => {
                let location = match user.role {
                    Role::Admin => "/login".to_string(),
                    role => format!("/login?portal={}", role.as_str()),
                };
                let flash = cookies::set(
                    &self.config.cookies,
                    cookies::FLASH_COOKIE,
                    "success:registered",
                    "/",
                    60,
                    req.tls,
                );
                FormOutcome::Reply(
                    Reply::redirect(&location, ("allow", "register"))
                        .with_headers(vec![("Set-Cookie".into(), flash)]),
                )
            }
            Err(r) => self.form_refused(*r, values, req),
        }
    }

    fn form_refused(&self, r: Refusal, values: FormValues, req: &Request<'_>) -> FormOutcome {
        if req.api_client {
            FormOutcome::Reply(r.reply(req.request_id))
        } else {
            FormOutcome::Form(FormError { refusal: r, values })
        }
    }

    /// Validates the fields, applies the per-ip limit and creates the account.
    async fn register(
        &self,
        fields: &serde_json::Map<String, serde_json::Value>,
        req: &Request<'_>,
    ) -> Result<User, Box<Refusal>> {
        // A field sent as anything but a string counts as missing.
        let text = |k: &str| fields.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let email = match text("email").trim() {
            "" => return Err(Refusal::field("email", "required", "email is required")),
            e => users::normalize_email(e)
                .map_err(|e| Refusal::field("email", "invalid", without_prefix(e)))?,
        };
        let name = match users::display_name(text("name")) {
            Ok("") => return Err(Refusal::field("name", "required", "name is required")),
            Ok(n) => n.to_string(),
            Err(e) => return Err(Refusal::field("name", "invalid", without_prefix(e))),
        };
        let role = self.registration_role(text("role"))?;
        let password = text("password");
        if password.is_empty() {
            return Err(Refusal::field(
                "password",
                "required",
                "password is required",
            ));
        }
        PasswordPolicy::from_config(&self.config.passwords)
            .check(password, &email, &name)
            .map_err(|w| Refusal::field("password", w.code(), w.to_string()))?;
        self.count_registration(req).await?;
        let span = req.trace.db(self.users.db_system(), "INSERT");
        // Hashes before it inserts: a duplicate costs as much time as a new account.
        let added = self.users.add_user(&email, password, role, &name).await;
        span.end();
        match added {
            Ok(user) => {
                tracing::info!(
                    request_id = req.request_id,
                    user_id = user.id,
                    role = role.as_str(),
                    "user registered"
                );
                Ok(user)
            }
            Err(UserError::Duplicate) => Err(Refusal::whole(
                409,
                "email_unavailable",
                "taken",
                "This email cannot be registered.",
            )),
            Err(UserError::InvalidInput(m)) => {
                Err(Refusal::whole(400, "bad_request", "invalid", &m))
            }
            Err(e) => {
                tracing::error!(request_id = req.request_id, error = %e, "registration failed: user database");
                let mut r = Refusal::whole(
                    503,
                    "auth_unavailable",
                    "unavailable",
                    "Registration is temporarily unavailable.",
                );
                r.decision = ("error", "database_unavailable");
                r.retry_after = Some(5);
                Err(r)
            }
        }
    }

    /// The role asked for (`role`), which must be one of `auth.registration.roles`; the
    /// first of them when none is asked for.
    fn registration_role(&self, asked: &str) -> Result<Role, Box<Refusal>> {
        let allowed = &self.config.registration.roles;
        let asked = asked.trim();
        let name = if asked.is_empty() {
            allowed.first().map(String::as_str).unwrap_or("patient")
        } else {
            allowed
                .iter()
                .map(String::as_str)
                .find(|r| r.eq_ignore_ascii_case(asked))
                .ok_or_else(|| {
                    Refusal::field(
                        "role",
                        "invalid",
                        format!("role must be one of: {}", allowed.join(", ")),
                    )
                })?
        };
        name.parse::<Role>()
            .map_err(|e| Refusal::field("role", "invalid", without_prefix(e)))
    }

    /// Counts a registration of the client ip (`register:ip:{ip}`) and refuses it past
    /// `max_per_ip` within `window`.
    async fn count_registration(&self, req: &Request<'_>) -> Result<(), Box<Refusal>> {
        let Some(ip) = req.ip() else {
            return Ok(());
        };
        let r = &self.config.registration;
        let key = format!("register:ip:{ip}");
        let store = &self.sessions.store;
        let span = req.trace.db(store.kind(), "INCR");
        let counted = store.incr(&key, r.window.0).await;
        span.end();
        let n = counted.map_err(|e| {
            tracing::error!(request_id = req.request_id, error = %e, "registration counter: session store");
            let mut r = Refusal::whole(
                503,
                "auth_unavailable",
                "unavailable",
                "Registration is temporarily unavailable.",
            );
            r.decision = ("error", "store_unavailable");
            r.retry_after = Some(5);
            r
        })?;
        if n <= r.max_per_ip {
            return Ok(());
        }
        let retry = match store.ttl(&key).await {
            Ok(Some(d)) => d.as_secs().max(1),
            _ => r.window.0.as_secs().max(1),
        };
        let mut refusal = Refusal::whole(
            429,
            "too_many_registrations",
            "rate_limited",
            "Too many registrations from this address; try again later.",
        );
        refusal.retry_after = Some(retry);
        Err(refusal)
    }
}

/// A [`UserError::InvalidInput`]'s message without its `invalid input: ` prefix.
fn without_prefix(e: UserError) -> String {
    match e {
        UserError::InvalidInput(m) => m,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_status() {
        assert_eq!(outcome(201), "created");
        assert_eq!(outcome(303), "created");
        assert_eq!(outcome(400), "invalid");
        assert_eq!(outcome(415), "invalid");
        assert_eq!(outcome(409), "duplicate");
        assert_eq!(outcome(429), "rate_limited");
        assert_eq!(outcome(404), "disabled");
        assert_eq!(outcome(403), "refused");
        assert_eq!(outcome(503), "error");
        for o in crate::metrics::REGISTRATION_OUTCOMES {
            assert!(
                [201, 400, 403, 404, 409, 429, 503]
                    .iter()
                    .any(|s| outcome(*s) == o),
                "{o}"
            );
        }
    }

    #[test]
    fn a_refusal_names_its_field_and_reason_in_json() {
        let r = Refusal::field("password", "common", "password is too common");
        let reply = r.reply("req-1");
        assert_eq!(reply.status, 400);
        let v: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
        assert_eq!(v["error"]["code"], "weak_password");
        assert_eq!(v["error"]["field"], "password");
        assert_eq!(v["error"]["reason"], "common");
        assert_eq!(v["error"]["request_id"], "req-1");
        let dup = Refusal::whole(
            409,
            "email_unavailable",
            "taken",
            "This email cannot be registered.",
        );
        let v: serde_json::Value = serde_json::from_slice(&dup.reply("r").body).expect("json");
        assert!(v["error"].get("field").is_none());
        assert_eq!(dup.decision, ("deny", "duplicate_email"));
    }
}

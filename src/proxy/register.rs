//! The registration endpoints in the lane: `GET /register` (the page, rendered like any page
//! from `register.html`, with the CSRF cookie), `POST /register` (its form: the redirect to
//! the login page after success, or the page again with the field at fault) and
//! `POST /api/v1/auth/register` (JSON, answered by `auth::endpoints`), each counted in
//! `gatehouse_registrations_total{outcome}`.
//!
//! While `auth.registration.enabled` is off, or when the templates have no `register.html`,
//! the page and its form are `404` (the HTML error page for browsers).

use super::web::PageExtra;
use super::{Ctx, Gateway};
use crate::answer::Answer;
use crate::auth::endpoints::register::{self, FormError, FormOutcome};
use crate::auth::endpoints::Endpoint;
use crate::auth::users::PasswordPolicy;
use crate::config::AuthMode;
use crate::errors::Reject;
use crate::pages::PageDef;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde_json::{json, Value};
use std::sync::Arc;

/// The template of the page.
const TEMPLATE: &str = "register.html";

impl Gateway {
    /// One of the registration endpoints; `body` is the request body (empty for the page).
    pub(super) async fn registration(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        ep: Endpoint,
        body: Bytes,
    ) -> Result<bool> {
        let has_page = ctx.snapshot.pages.has_template(TEMPLATE);
        if ep == Endpoint::RegisterPage {
            if !self.auth.config.registration.enabled || !has_page {
                return self.reject(session, ctx, Reject::not_found()).await;
            }
            return self.registration_page(session, ctx, None).await;
        }
        let outcome = {
            let req = session.req_header();
            let ereq = super::endpoints::auth_request(req, ctx, body);
            match self.auth.refuse_early(ep, &ereq) {
                Some(r) => FormOutcome::Reply(r),
                None if ep == Endpoint::RegisterForm && !has_page => {
                    FormOutcome::Reply(self.auth.handle(Endpoint::RegisterPage, &ereq).await)
                }
                None if ep == Endpoint::RegisterForm => self.auth.register_form(&ereq).await,
                None => FormOutcome::Reply(self.auth.handle(ep, &ereq).await),
            }
        };
        match outcome {
            FormOutcome::Reply(reply) => {
                self.count_registration(reply.status, reply.decision);
                if reply.status == 404 && !ctx.api_client {
                    return self.reject(session, ctx, Reject::not_found()).await;
                }
                let answer = Answer::json(reply.status, reply.headers, reply.body);
                self.send_answer(session, ctx, answer).await?;
                Ok(true)
            }
            FormOutcome::Form(form) => {
                let r = &form.refusal;
                self.count_registration(r.status, r.decision);
                self.registration_page(session, ctx, Some(form)).await
            }
        }
    }

    fn count_registration(&self, status: u16, decision: (&str, &str)) {
        self.count_auth(decision.0, decision.1);
        self.metrics
            .registrations_total
            .with_label_values(&[register::outcome(status)])
            .inc();
    }

    /// The page: the empty form, or the form again after `form`'s refusal (its status, the
    /// values sent but the password, the field at fault and why).
    async fn registration_page(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        form: Option<FormError>,
    ) -> Result<bool> {
        let cfg = &self.auth.config;
        let mut more = PageExtra::default();
        more.context.insert(
            "registration".into(),
            json!({
                "roles": cfg.registration.roles,
                "min_length": PasswordPolicy::from_config(&cfg.passwords).min_length(),
            }),
        );
        if let Some(f) = form {
            let r = f.refusal;
            more.status = Some(r.status);
            if let Some(s) = r.retry_after {
                more.headers.push(("Retry-After".into(), s.to_string()));
            }
            more.context.insert(
                "form".into(),
                json!({"email": f.values.email, "name": f.values.name, "role": f.values.role}),
            );
            more.context.insert(
                "form_error".into(),
                json!({
                    "field": r.field.unwrap_or("form"),
                    "reason": r.reason,
                    "retry_after": r.retry_after,
                }),
            );
        } else {
            more.context.insert("form".into(), Value::Null);
            more.context.insert("form_error".into(), Value::Null);
        }
        self.serve_page_with(session, ctx, page(), false, more)
            .await
    }
}

/// The page's definition: public, no data sources.
fn page() -> Arc<PageDef> {
    static PAGE: std::sync::OnceLock<Arc<PageDef>> = std::sync::OnceLock::new();
    PAGE.get_or_init(|| {
        Arc::new(PageDef {
            path: "/register".into(),
            template: TEMPLATE.into(),
            title: "Crear cuenta".into(),
            auth: AuthMode::None,
            roles: None,
            data: Vec::new(),
            // A public form: no one's data is accessed.
            audit: Default::default(),
        })
    })
    .clone()
}

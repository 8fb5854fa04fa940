//! The gateway's own endpoints as the plan names them: health and the auth endpoints.

use super::{Ctx, Gateway};
use crate::answer::Answer;
use crate::auth::endpoints;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::Session;

impl Gateway {
    /// `/health` (liveness) or `/api/v1/health` (routes and backends).
    pub(super) async fn health(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        detailed: bool,
    ) -> Result<bool> {
        let body = if detailed {
            crate::builtin::detailed(&ctx.snapshot)
        } else {
            crate::builtin::liveness()
        };
        let answer = Answer::json(200, Vec::new(), Bytes::from(body.to_string()));
        self.send_answer(session, ctx, answer).await?;
        Ok(true)
    }

    /// Answers one of the auth endpoints (login, validate, refresh, logout; registration in
    /// `register`).
    pub(super) async fn auth_endpoint(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        ep: Result<endpoints::Endpoint, &'static str>,
    ) -> Result<bool> {
        let ep = match ep {
            Ok(ep) => ep,
            Err(allow) => {
                let off = !self.auth.config.registration.enabled
                    && ctx
                        .path
                        .as_deref()
                        .is_some_and(endpoints::is_registration_path);
                let r = if off {
                    crate::errors::Reject::not_found()
                } else {
                    crate::errors::from_status(405).with_header("Allow", allow)
                };
                return self.reject(session, ctx, r).await;
            }
        };
        let Some(body) = read_small_body(session, 16 * 1024).await? else {
            session.set_keepalive(None);
            return self
                .reject(session, ctx, crate::errors::from_status(413))
                .await;
        };
        if ep.registers() {
            return self.registration(session, ctx, ep, body).await;
        }
        let req = session.req_header();
        if matches!(ep, endpoints::Endpoint::WebLogin(_)) {
            // The portals' forms post under /api/web/: the Accept header decides.
            ctx.api_client = !crate::edge::client::wants_html(&req.headers);
        }
        let page_endpoint = matches!(
            ep,
            endpoints::Endpoint::MfaPage
                | endpoints::Endpoint::MfaVerify
                | endpoints::Endpoint::MfaEnrolPage
                | endpoints::Endpoint::MfaEnrol
        );
        if page_endpoint {
            // Pages and the forms they post: browsers' (errors as HTML pages).
            ctx.api_client = false;
        }
        let ereq = auth_request(req, ctx, body);
        let mut reply = self.auth.handle(ep, &ereq).await;
        self.count_auth(reply.decision.0, reply.decision.1);
        if let Some(outcome) = reply.mfa {
            self.metrics
                .mfa_verifications_total
                .with_label_values(&[outcome])
                .inc();
        }
        if let Some(page) = reply.page.take() {
            let answer = self.render_endpoint_page(session, ctx, *page, reply.headers);
            self.send_answer(session, ctx, answer).await?;
            return Ok(true);
        }
        if page_endpoint && reply.status >= 400 {
            let r = crate::errors::Reject::new(reply.status, "error", "");
            let mut answer = self.reject_answer(ctx, &r, None);
            answer.headers.extend(
                reply
                    .headers
                    .into_iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("retry-after")),
            );
            self.send_answer(session, ctx, answer).await?;
            return Ok(true);
        }
        let answer = Answer::json(reply.status, reply.headers, reply.body);
        self.send_answer(session, ctx, answer).await?;
        Ok(true)
    }

    /// Renders a page an auth endpoint answered with (the second-factor pages): the shared
    /// context with the double-submit CSRF token (set when the browser has none), the
    /// security headers of every page, and the endpoint's own headers (cookies).
    fn render_endpoint_page(
        &self,
        session: &Session,
        ctx: &Ctx,
        page: endpoints::PageReply,
        extra_headers: Vec<(String, String)>,
    ) -> Answer {
        use crate::auth::cookies;
        let req = session.req_header();
        let mut headers = crate::pages::html_headers();
        let csrf = match cookies::get(&req.headers, cookies::CSRF_COOKIE)
            .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            Some(v) => v.to_string(),
            None => {
                let v = format!("{:032x}", rand::random::<u128>());
                let c = &self.auth.config.cookies;
                headers.push((
                    "Set-Cookie".into(),
                    cookies::set(c, cookies::CSRF_COOKIE, &v, "/", 86_400, ctx.tls),
                ));
                v
            }
        };
        headers.extend(
            extra_headers
                .into_iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("cache-control")),
        );
        let pages = &ctx.snapshot.pages;
        let view = crate::pages::RequestView {
            path: ctx.path.as_deref().unwrap_or("/"),
            query: None,
            request_id: &ctx.request_id,
            user: None,
            csrf_token: &csrf,
            flash: Vec::new(),
        };
        let mjctx = pages.context(&view, page.title, page.extra);
        match pages.render(page.template, &mjctx) {
            Ok(html) => Answer::json(200, headers, Bytes::from(html)),
            Err(e) => {
                tracing::error!(request_id = %ctx.request_id, error = %e, template = page.template, "page template failed");
                let html = pages.render_error(500, &view);
                Answer::json(500, headers, Bytes::from(html))
            }
        }
    }
}

/// Reads a small request body whole (auth endpoints); `None` when it is over `limit`.
/// What the auth endpoints know of a request: every lane and endpoint builds it here.
pub(super) fn auth_request<'a>(
    req: &'a RequestHeader,
    ctx: &'a Ctx,
    body: Bytes,
) -> endpoints::Request<'a> {
    endpoints::Request {
        query: req.uri.query(),
        headers: &req.headers,
        body,
        client_ip: ctx.client_ip,
        tls: ctx.tls,
        api_client: ctx.api_client,
        request_id: &ctx.request_id,
        trace: ctx.trace.context(),
    }
}

async fn read_small_body(session: &mut Session, limit: usize) -> Result<Option<Bytes>> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if buf.len() + chunk.len() > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

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
        let ereq = endpoints::Request {
            query: req.uri.query(),
            headers: &req.headers,
            body,
            client_ip: ctx.client_ip,
            tls: ctx.tls,
            api_client: ctx.api_client,
            request_id: &ctx.request_id,
            trace: ctx.trace.context(),
        };
        let reply = self.auth.handle(ep, &ereq).await;
        self.count_auth(reply.decision.0, reply.decision.1);
        let answer = Answer::json(reply.status, reply.headers, reply.body);
        self.send_answer(session, ctx, answer).await?;
        Ok(true)
    }
}

/// Reads a small request body whole (auth endpoints); `None` when it is over `limit`.
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

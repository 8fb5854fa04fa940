//! Admission of a planned request: in-flight slots, the session check and rate limits — the
//! steps after the plan that need shared counters or I/O. Pages use the same session check
//! and the same mapping of its decision ([`Gateway::admit_identity`]).

use super::{Ctx, Gateway};
use crate::answer::Answer;
use crate::auth::guard::{self, Decision};
use crate::errors::Reject;
use crate::state::Route;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Duration;

/// What admission says.
pub(super) enum Admit {
    /// Go on.
    Go,
    /// The request was answered (refused, or sent to sign in).
    Answered,
}

impl Gateway {
    /// Admits a request the plan sends to `route`: the route's and the client's in-flight
    /// slots, the WebSocket and deadline settings, the session check, the rate limits.
    /// `Ok(true)` when the request was answered here.
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: Arc<Route>,
    ) -> Result<bool> {
        ctx.trace.set_route(&route.prefix);
        let refused = self.take_in_flight(ctx, &route);
        ctx.route = Some(route.clone()); // so that `logging` gives back a slot already taken
        if let Some(r) = refused {
            return self.reject(session, ctx, r).await;
        }
        ctx.websocket = route.websocket && session.is_upgrade_req();
        if ctx.websocket {
            // An upgraded connection lives as long as both ends want: no total deadline, and
            // the downstream read timeout lifted (Pingora keeps 60 s per read otherwise).
            session.set_read_timeout(Some(Duration::from_secs(3600)));
        } else {
            ctx.up.deadline = Some(ctx.start + route.total_timeout);
        }
        let decision = self
            .protect(
                session,
                ctx,
                route.auth,
                route.roles.as_deref(),
                route.on_store_error,
            )
            .await;
        match self.admit_identity(session, ctx, decision).await? {
            Admit::Answered => Ok(true),
            Admit::Go => self.rate_limit(session, ctx, &route).await,
        }
    }

    /// Runs the auth guard for this request (routes and pages share it).
    pub(super) async fn protect(
        &self,
        session: &Session,
        ctx: &Ctx,
        mode: crate::config::AuthMode,
        roles: Option<&[String]>,
        on_store_error: crate::config::StoreFailure,
    ) -> Decision {
        let req = session.req_header();
        let mut greq = guard::Request {
            method: &req.method,
            path: ctx.path.as_deref().unwrap_or("/"),
            query: req.uri.query(),
            headers: &req.headers,
            api_client: ctx.api_client,
            tls: ctx.tls,
            trace: crate::telemetry::TraceContext::none(),
        };
        let mut span = ctx.trace.internal("auth");
        greq.trace = span.context();
        let decision = guard::protect(&self.auth, mode, roles, on_store_error, &greq).await;
        if let Decision::Deny { reason, .. } = &decision {
            span.set_error(reason, "refused");
        }
        span.end();
        decision
    }

    /// Acts on the guard's decision, the one mapping for routes and pages: the identity kept,
    /// a refusal answered, a browser sent to sign in; counted either way.
    pub(super) async fn admit_identity(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        decision: Decision,
    ) -> Result<Admit> {
        match decision {
            Decision::Anonymous => Ok(Admit::Go),
            Decision::Allow(identity) => {
                self.count_auth("allow", "token");
                ctx.identity = Some(identity);
                Ok(Admit::Go)
            }
            Decision::Deny { reject, reason } => {
                self.count_auth("deny", reason);
                self.reject(session, ctx, reject).await?;
                Ok(Admit::Answered)
            }
            Decision::Redirect { location, reason } => {
                self.count_auth("redirect", reason);
                self.send_answer(session, ctx, Answer::redirect(303, location))
                    .await?;
                Ok(Admit::Answered)
            }
        }
    }

    /// Takes the route's and the client's in-flight slots (`max_in_flight`,
    /// `max_in_flight_per_client`; `logging` gives them back). The answer when one refuses.
    fn take_in_flight(&self, ctx: &mut Ctx, route: &Route) -> Option<Reject> {
        use std::sync::atomic::Ordering;
        let refused = |scope: &str, r: Reject| {
            self.metrics
                .in_flight_rejected_total
                .with_label_values(&[route.name.as_str(), scope])
                .inc();
            Some(r.with_header("Retry-After", "1"))
        };
        if let Some(max) = route.max_in_flight {
            if route.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
                route.in_flight.fetch_sub(1, Ordering::AcqRel);
                let msg = "Too many requests in progress; try again shortly.";
                return refused("route", Reject::new(503, "overloaded", msg));
            }
            ctx.holds_slot = true;
        }
        if let (Some(slots), Some(ip)) = (&route.client_slots, ctx.client_ip) {
            if !slots.try_take(ip) {
                let msg = "Too many of your requests are in progress; try again shortly.";
                return refused("client", Reject::new(429, "too_many_in_flight", msg));
            }
            ctx.client_slot = Some(ip);
        }
        None
    }

    pub(super) fn count_auth(&self, result: &str, reason: &str) {
        self.metrics
            .auth_decisions_total
            .with_label_values(&[result, reason])
            .inc();
    }

    /// Applies the route's rate limits; `Ok(true)` when the request was answered (429/503).
    async fn rate_limit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Arc<Route>,
    ) -> Result<bool> {
        use crate::edge::ratelimit::{Decision as Rl, KeySpec, OnStoreError};
        for limiter in &route.limiters {
            let ip = || {
                format!(
                    "ip:{}",
                    ctx.client_ip.map(|i| i.to_string()).unwrap_or_default()
                )
            };
            let key = match limiter.key_spec() {
                KeySpec::ClientIp => ip(),
                KeySpec::User => ctx
                    .identity
                    .as_ref()
                    .map_or_else(ip, |i| format!("user:{}", i.claims.sub)),
                KeySpec::Header(h) => session
                    .req_header()
                    .headers
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(ip, |v| format!("header:{v}")),
                KeySpec::Claim(c) => ctx
                    .identity
                    .as_ref()
                    .and_then(|i| match c.as_str() {
                        "sub" => Some(i.claims.sub.clone()),
                        "role" => Some(i.claims.role.clone()),
                        "sid" => Some(i.claims.sid.clone()),
                        _ => None,
                    })
                    .map_or_else(ip, |v| format!("claim:{v}")),
            };
            let decision = limiter.check(&key).await;
            let mut headers = http::HeaderMap::new();
            decision.write_headers(&mut headers);
            let pairs: Vec<(String, String)> = headers
                .iter()
                .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
                .collect();
            match decision {
                Rl::Allow { .. } => ctx.extra_headers = pairs,
                Rl::Deny { .. } => {
                    self.metrics
                        .rate_limited_total
                        .with_label_values(&[route.name.as_str()])
                        .inc();
                    tracing::info!(request_id = %ctx.request_id, route = %route.name, limit = limiter.name(), "rate limited");
                    let mut r = Reject::new(429, "rate_limited", "Too many requests; slow down.");
                    r.headers.extend(pairs);
                    return self.reject(session, ctx, r).await;
                }
                Rl::StoreError => {
                    self.metrics.session_store_errors_total.inc();
                    match limiter.on_store_error() {
                        OnStoreError::Allow => {
                            tracing::warn!(request_id = %ctx.request_id, limit = limiter.name(), "rate-limit store unavailable; allowing");
                        }
                        OnStoreError::Deny => {
                            let r = Reject::new(
                                503,
                                "rate_limit_unavailable",
                                "The service is temporarily unavailable.",
                            )
                            .with_header("Retry-After", "5");
                            return self.reject(session, ctx, r).await;
                        }
                    }
                }
            }
        }
        Ok(false)
    }
}

//! The end of a request: in-flight slots given back, the request metrics, the access audit
//! row of an audited route or page (`crate::audit`), the access log. Both proxied requests
//! and the gateway's own answers (pages, refusals) end here.
//!
//! Neither the audit nor the access log holds a query string, body, cookie or token: the
//! path is the normalised one (or the raw path, which has no query).

use super::{Ctx, Gateway};
use crate::metrics::method_label;
use http::Method;

impl Gateway {
    /// Closes the request's books once it is answered (`logging`).
    pub(super) fn log_request(
        &self,
        ctx: &mut Ctx,
        method: &Method,
        raw_path: &str,
        status: u16,
        bytes: usize,
        error: &str,
    ) {
        if let Some(route) = &ctx.route {
            if std::mem::take(&mut ctx.holds_slot) {
                route
                    .in_flight
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
            if let (Some(slots), Some(ip)) = (&route.client_slots, ctx.client_slot.take()) {
                slots.release(ip);
            }
        }
        let route_label = ctx.route.as_ref().map_or("-", |r| r.name.as_str());
        let method_l = method_label(method);
        let requests = || {
            // StatusCode renders its number without allocating.
            let code = http::StatusCode::from_u16(status).ok();
            let status_label = code.as_ref().map_or("0", http::StatusCode::as_str);
            self.metrics
                .requests_total
                .with_label_values(&[route_label, method_l, status_label])
        };
        let duration = || {
            self.metrics
                .request_duration_seconds
                .with_label_values(&[route_label])
        };
        let elapsed = ctx.start.elapsed().as_secs_f64();
        match &ctx.route {
            Some(r) => {
                r.series.requests.get((method_l, status), requests).inc();
                r.series.duration.get_or_init(duration).observe(elapsed);
            }
            None => {
                requests().inc();
                duration().observe(elapsed);
            }
        }
        let path = ctx.path.as_deref().unwrap_or(raw_path);
        self.audit_request(ctx, method, path, status);
        if !self.access_log {
            return;
        }
        let route = ctx.route.as_ref();
        let claims = ctx.identity.as_ref().map(|i| &i.claims);
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            trace_id = %ctx.trace.log_trace_id(),
            client_ip = %ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
            user_id = claims.map_or("-", |c| c.sub.as_str()),
            role = claims.map_or("-", |c| c.role.as_str()),
            method = %method,
            path = %path,
            route = route.map_or("-", |r| r.name.as_str()),
            upstream = route.map_or("-", |r| r.pool.name.as_str()),
            backend = %ctx.up.backend.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
            status,
            bytes,
            duration_ms = elapsed * 1000.0,
            attempts = ctx.up.count,
            error,
        );
    }

    /// Queues the access audit row of a request on a route or page with `audit` on (never
    /// waiting: a full queue drops the row and counts it).
    fn audit_request(&self, ctx: &Ctx, method: &Method, path: &str, status: u16) {
        let label = match (&ctx.route, &ctx.page) {
            (Some(r), _) if r.audit.is_on() => r.name.as_str(),
            (None, Some(p)) if p.audit.is_on() => p.path.as_str(),
            _ => return,
        };
        let claims = ctx.identity.as_ref().map(|i| &i.claims);
        self.audit.record(crate::audit::Entry {
            at_ms: crate::audit::now_ms(),
            request_id: ctx.request_id.clone(),
            user_id: claims.map(|c| c.sub.clone()),
            role: claims.map(|c| c.role.clone()),
            client_ip: ctx.client_ip.map(|i| i.to_string()),
            method: method.as_str().to_string(),
            route: label.to_string(),
            path: path.to_string(),
            status,
            upstream: ctx.up.backend.map(|b| b.to_string()),
        });
    }
}

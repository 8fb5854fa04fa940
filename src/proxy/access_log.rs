//! The end of a request: in-flight slots given back, the request metrics, the access log.

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
        if !self.access_log {
            return;
        }
        let path = ctx.path.as_deref().unwrap_or(raw_path);
        let route = ctx.route.as_ref();
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            trace_id = %ctx.trace.log_trace_id(),
            client_ip = %ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
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
}

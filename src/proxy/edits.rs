//! The header edits of a proxied request: what goes upstream (target, hop-by-hop, the
//! gateway's cookies and identity headers out; Host, forwarding, request id, the route's
//! header rules and the signed-in identity in) and what comes back (hop-by-hop out; request
//! id, compression, rate-limit state, HSTS, cache status, header rules, CORS, the renewed
//! session cookie in).

use super::{Ctx, Gateway};
use crate::edge::forwarding;
use crate::edge::header_rules::HeaderOp;
use crate::routing;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;

/// Applies a route's header rules to a request or response head.
macro_rules! apply_ops {
    ($head:expr, $ops:expr) => {
        for op in $ops {
            match op {
                HeaderOp::Remove(n) => {
                    $head.remove_header(n);
                }
                HeaderOp::Set(n, v) => {
                    $head.insert_header(n.clone(), v.clone())?;
                }
                HeaderOp::Add(n, v) => {
                    $head.append_header(n.clone(), v.clone())?;
                }
            }
        }
    };
}

impl Gateway {
    /// The request head that goes upstream (`upstream_request_filter`).
    pub(super) fn edit_upstream_request(
        &self,
        session: &Session,
        up: &mut RequestHeader,
        ctx: &Ctx,
    ) -> Result<()> {
        let (Some(route), Some(path)) = (ctx.route.as_ref(), ctx.path.as_ref()) else {
            return Error::e_explain(ErrorType::InternalError, "no route in context");
        };
        let mut target = routing::rewrite_path(
            path,
            &route.prefix,
            route.strip_prefix,
            route.rewrite_prefix.as_deref(),
        );
        if let Some(q) = session.req_header().uri.query() {
            let t = target.to_mut();
            t.push('?');
            t.push_str(q);
        }
        // The usual request already names exactly this target (origin-form, nothing
        // rewritten or normalised): its bytes go upstream as they are, without a new URI.
        if target.as_bytes() != up.raw_path() {
            let uri = target
                .parse::<http::Uri>()
                .map_err(|e| Error::because(ErrorType::InternalError, "rewritten uri", e))?;
            up.set_uri(uri);
        }

        // One pass over what the client sent (usually a handful of headers) instead of a
        // lookup per hop-by-hop and identity name; identity headers come only from the gateway.
        let listed = forwarding::connection_listed(&up.headers);
        let strip: Vec<http::HeaderName> = up
            .headers
            .keys()
            .filter(|k| {
                let k = k.as_str();
                forwarding::HOP_BY_HOP.contains(&k)
                    || forwarding::IDENTITY_HEADERS.contains(&k)
                    || listed.iter().any(|l| l == k)
            })
            .cloned()
            .collect();
        for name in &strip {
            up.remove_header(name);
        }
        // The gateway's own cookies (session, refresh, CSRF, flash) never reach an upstream;
        // the client's others pass as sent (`Some("")`: nothing is left, no header).
        match crate::auth::cookies::strip(&up.headers, &self.auth.own_cookies()) {
            None => {}
            Some(c) if c.is_empty() => {
                up.remove_header(&http::header::COOKIE);
            }
            Some(c) => {
                up.insert_header(http::header::COOKIE, c)?;
            }
        }
        if ctx.websocket {
            let upgrade = session
                .req_header()
                .headers
                .get(http::header::UPGRADE)
                .cloned();
            if let Some(u) = upgrade {
                up.insert_header(http::header::UPGRADE, u)?;
                up.insert_header(http::header::CONNECTION, "upgrade")?;
            }
        }
        // The client's Host as it came (a cheap clone of the parsed value, no copy).
        let orig_host: Option<http::HeaderValue> = {
            let req = session.req_header();
            req.headers.get(http::header::HOST).cloned().or_else(|| {
                req.uri
                    .authority()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            })
        };
        if let Some(host) = &route.pool.config.host {
            up.insert_header(http::header::HOST, host.as_str())?;
        } else if !up.headers.contains_key(http::header::HOST) {
            if let Some(h) = &orig_host {
                up.insert_header(http::header::HOST, h.clone())?;
            }
        }
        self.forwarding_headers(up, ctx, orig_host)?;
        up.insert_header("x-request-id", ctx.request_id.as_str())?;
        // W3C Trace Context: this attempt's span is the upstream's parent. Tracing off: the
        // client's headers pass as sent.
        if let Some(tp) = ctx.attempt_span.traceparent() {
            up.insert_header("traceparent", tp.as_str())?;
            match ctx.attempt_span.tracestate() {
                Some(ts) => up.insert_header("tracestate", ts)?,
                None => {
                    up.remove_header("tracestate");
                }
            }
        }
        apply_ops!(up, route.headers.request_ops());
        if let Some(id) = &ctx.identity {
            for (name, value) in id.upstream_headers() {
                up.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    /// `X-Forwarded-For` (the peer appended), `X-Real-IP`, `X-Forwarded-Proto` and
    /// `X-Forwarded-Host` (a trusted proxy's kept, anyone else's replaced).
    fn forwarding_headers(
        &self,
        up: &mut RequestHeader,
        ctx: &Ctx,
        orig_host: Option<http::HeaderValue>,
    ) -> Result<()> {
        let trusted_peer = ctx
            .peer_ip
            .is_some_and(|ip| forwarding::is_trusted(ip, &ctx.snapshot.trusted_proxies));
        // One string for the peer address, reused for X-Real-IP when it is the client.
        let mut peer_value = None;
        if let Some(peer) = ctx.peer_ip {
            use std::fmt::Write;
            let mut xff = String::with_capacity(64);
            for v in up.headers.get_all("x-forwarded-for") {
                if let Ok(v) = v.to_str() {
                    if !xff.is_empty() {
                        xff.push_str(", ");
                    }
                    xff.push_str(v);
                }
            }
            let start = if xff.is_empty() {
                0
            } else {
                xff.push_str(", ");
                xff.len()
            };
            let _ = write!(xff, "{peer}");
            if start == 0 {
                let v = http::HeaderValue::try_from(xff)
                    .map_err(|e| Error::because(ErrorType::InternalError, "peer address", e))?;
                peer_value = Some(v.clone());
                up.insert_header("x-forwarded-for", v)?;
            } else {
                up.insert_header("x-forwarded-for", xff)?;
            }
        }
        if let Some(client) = ctx.client_ip {
            match peer_value.filter(|_| Some(client) == ctx.peer_ip) {
                Some(v) => up.insert_header("x-real-ip", v)?,
                None => up.insert_header("x-real-ip", client.to_string())?,
            }
        }
        if ctx.tls_conn {
            up.insert_header("x-forwarded-proto", http::HeaderValue::from_static("https"))?;
        } else if !(trusted_peer && up.headers.contains_key("x-forwarded-proto")) {
            up.insert_header("x-forwarded-proto", http::HeaderValue::from_static("http"))?;
        }
        if !(trusted_peer && up.headers.contains_key("x-forwarded-host")) {
            match orig_host {
                Some(h) => up.insert_header("x-forwarded-host", h)?,
                None => {
                    up.remove_header("x-forwarded-host");
                }
            }
        }
        Ok(())
    }

    /// Hop-by-hop headers out of the upstream's answer (`upstream_response_filter`).
    pub(super) fn strip_upstream_hop_headers(resp: &mut ResponseHeader, ctx: &Ctx) {
        let switching = ctx.websocket && resp.status.as_u16() == 101;
        for name in forwarding::connection_listed(&resp.headers) {
            // A 101 must keep `Upgrade` (RFC 6455 §4.1), although `Connection` names it.
            if !(switching && name == "upgrade") {
                resp.remove_header(name.as_str());
            }
        }
        for name in ["keep-alive", "proxy-connection", "proxy-authenticate"] {
            resp.remove_header(name);
        }
    }

    /// The answer's head as the client gets it (`response_filter`).
    pub(super) fn edit_response(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if crate::DRAINING.load(std::sync::atomic::Ordering::Acquire)
            || session.is_process_shutting_down()
        {
            session.set_keepalive(None); // written as `Connection: close`
        }
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        let len = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if Self::choose_coding(session, ctx, resp, len, false)? == super::answer::Coding::Br {
            Self::encoded_headers(resp, "br")?;
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            ctx.br_stream = Some(Box::default());
        }
        for (k, v) in &ctx.extra_headers {
            resp.insert_header(k.clone(), v.as_str())?;
        }
        if let (true, Some(h)) = (ctx.tls_conn, ctx.snapshot.config.server.tls.hsts.as_ref()) {
            resp.insert_header("strict-transport-security", h.header_value())?;
        }
        if let Some(route) = ctx.route.as_ref().filter(|r| r.cache.is_some()) {
            let phase = session.cache.phase();
            if let Some(word) = crate::cache::status_word(phase, ctx.cache_bypass) {
                self.metrics
                    .cache_requests_total
                    .with_label_values(&[route.name.as_str(), crate::cache::status_label(word)])
                    .inc();
                let header = &ctx.snapshot.config.server.cache.status_header;
                if !header.is_empty() {
                    resp.insert_header(header.clone(), word)?;
                }
            }
        }
        if let Some(route) = ctx.route.as_ref() {
            apply_ops!(resp, route.headers.response_ops());
        }
        if let Some(cors) = ctx.cors.as_ref().filter(|c| c.is_enabled()) {
            // The gateway owns CORS on routes where it is configured.
            let upstream_cors: Vec<_> = resp
                .headers
                .keys()
                .filter(|k| k.as_str().starts_with("access-control-"))
                .cloned()
                .collect();
            for k in upstream_cors {
                resp.remove_header(&k);
            }
            for (k, v) in cors.response_headers(&session.req_header().headers) {
                if k == http::header::VARY {
                    resp.append_header(k, v)?;
                } else {
                    resp.insert_header(k, v)?;
                }
            }
        }
        if let Some(cookie) = ctx
            .identity
            .as_ref()
            .and_then(|i| i.renewed_cookie.as_ref())
        {
            resp.append_header("set-cookie", cookie.as_str())?;
        }
        ctx.status = resp.status.as_u16();
        Ok(())
    }
}

//! The gateway's spans as the OpenTelemetry HTTP and database semantic conventions describe
//! them: the request's server span, one client span per upstream attempt, internal spans
//! (auth check, page render) and store calls. Each call is a no-op on a span of tracing off.

use super::span::*;
use super::{Span, TraceContext, Tracer};
use std::net::{IpAddr, SocketAddr};

/// `http.request.method` as the conventions spell it: the usual methods as they are, any
/// other as `_OTHER`.
pub fn method_name(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

impl Tracer {
    /// The request's server span: continues the trace of the request's `traceparent` (when
    /// there is exactly one and it is valid; its `tracestate` is kept) or starts one. Named
    /// by the method until [`Span::set_route`]; records `http.request.method`, `url.path`,
    /// `server.address`/`server.port` (Host), `user_agent.original` and
    /// `network.protocol.version`. Tracing off: returns at once, reading nothing.
    ///
    /// Call it first thing in `request_filter` (Pingora's `RequestHeader` derefs to
    /// `http::request::Parts`).
    #[inline]
    pub fn start_server(&self, req: &http::request::Parts) -> Span {
        if !self.is_enabled() {
            return Span::none();
        }
        self.start_server_on(req)
    }

    fn start_server_on(&self, req: &http::request::Parts) -> Span {
        let incoming = super::context::incoming(&req.headers);
        let method = method_name(&req.method);
        let mut s = self.start(method, SpanKind::Server, incoming);
        if !s.is_recording() {
            return s;
        }
        s.set_static(HTTP_REQUEST_METHOD, method);
        s.set_str(URL_PATH, req.uri.path());
        if let Some(scheme) = req.uri.scheme_str() {
            s.set_str(URL_SCHEME, scheme);
        }
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()));
        if let Some(host) = host {
            let (name, port) = split_host(host);
            s.set_str(SERVER_ADDRESS, name);
            if let Some(p) = port {
                s.set_int(SERVER_PORT, i64::from(p));
            }
        }
        if let Some(ua) = req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            s.set_str(USER_AGENT_ORIGINAL, ua);
        }
        s.set_static(
            NETWORK_PROTOCOL_VERSION,
            match req.version {
                http::Version::HTTP_10 => "1.0",
                http::Version::HTTP_2 => "2",
                http::Version::HTTP_3 => "3",
                _ => "1.1",
            },
        );
        s
    }
}

/// `host[:port]` (or `[v6]:port`) into its parts.
fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((h, after)) = rest.split_once(']') {
            return (h, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (host, None),
    }
}

impl Span {
    /// The matched route, once known: `http.route` and the span name `{method} {route}`.
    #[inline]
    pub fn set_route(&mut self, route: &str) {
        if self.is_recording() {
            self.set_route_recording(route);
        }
    }

    fn set_route_recording(&mut self, route: &str) {
        let method = match self.data().and_then(|d| d.get(HTTP_REQUEST_METHOD)) {
            Some(Value::Str(m)) => m.clone(),
            _ => "HTTP".into(),
        };
        self.set_str(HTTP_ROUTE, route);
        self.set_name(format!("{method} {route}"));
    }

    /// `client.address` (after trusted proxies) and `network.peer.address` (the TCP peer).
    #[inline]
    pub fn set_client(&mut self, client: Option<IpAddr>, peer: Option<IpAddr>) {
        if self.is_recording() {
            self.set_client_recording(client, peer);
        }
    }

    fn set_client_recording(&mut self, client: Option<IpAddr>, peer: Option<IpAddr>) {
        if let Some(c) = client {
            self.set_str(CLIENT_ADDRESS, &c.to_string());
        }
        if let Some(p) = peer {
            self.set_str(NETWORK_PEER_ADDRESS, &p.to_string());
        }
    }

    /// Ends the server span with the status answered (`0`: none was). A 5xx, or `error`
    /// (what went wrong, e.g. the Pingora error type), marks it failed; 4xx do not (the
    /// conventions leave a server span's status unset for client errors).
    #[inline]
    pub fn end_server(self, status: u16, error: Option<&str>) {
        if self.is_recording() {
            self.end_server_recording(status, error);
        }
    }

    fn end_server_recording(mut self, status: u16, error: Option<&str>) {
        if status > 0 {
            self.set_int(HTTP_RESPONSE_STATUS_CODE, i64::from(status));
        }
        match error {
            Some(e) => self.set_error(e, e),
            None if status >= 500 => {
                let code = status.to_string();
                self.set_error(&code, &code)
            }
            None => {}
        }
    }

    /// An upstream attempt: a client span, child of this (server) span, named by the method.
    /// `attempt` counts from 1; attempts after the first carry `http.request.resend_count`.
    /// Send [`Span::traceparent`] of the returned span (and [`Span::tracestate`]) with the
    /// attempt.
    #[inline]
    pub fn attempt(
        &self,
        method: &http::Method,
        upstream: &str,
        backend: SocketAddr,
        attempt: u32,
    ) -> Span {
        let m = method_name(method);
        attempt_span(
            self.child(m, SpanKind::Client),
            m,
            upstream,
            backend,
            attempt,
        )
    }

    /// Ends an attempt span: `gatehouse.attempt.outcome` (the outcome label of
    /// `gatehouse_upstream_requests_total`: `ok`, `failure_status`, `connect_error`,
    /// `timeout`, `reset`), the status if one came back, and failed when the status is 4xx or
    /// 5xx or `error_type` names what went wrong (e.g. the outcome, or Pingora's error type).
    #[inline]
    pub fn end_attempt(self, outcome: &str, status: Option<u16>, error_type: Option<&str>) {
        if self.is_recording() {
            self.end_attempt_recording(outcome, status, error_type);
        }
    }

    fn end_attempt_recording(
        mut self,
        outcome: &str,
        status: Option<u16>,
        error_type: Option<&str>,
    ) {
        self.set_str(GATEHOUSE_ATTEMPT_OUTCOME, outcome);
        if let Some(st) = status {
            self.set_int(HTTP_RESPONSE_STATUS_CODE, i64::from(st));
        }
        match (error_type, status) {
            (Some(e), _) => self.set_error(e, outcome),
            (None, Some(st)) if st >= 400 => {
                let code = st.to_string();
                self.set_error(&code, &code)
            }
            _ => {}
        }
    }

    /// Work inside the gateway under this span: `auth`, `render page` ….
    #[inline]
    pub fn internal(&self, name: &'static str) -> Span {
        self.child(name, SpanKind::Internal)
    }

    /// A store or database call under this span: a client span named by the operation, with
    /// `db.system` (`redis`, `postgresql`, `sqlite`, `memory`) and `db.operation.name`.
    /// Mark a failure with [`Span::set_error`].
    #[inline]
    pub fn db(&self, system: &'static str, operation: &'static str) -> Span {
        db_span(self.child(operation, SpanKind::Client), system, operation)
    }
}

impl TraceContext {
    /// [`Span::db`] under the span of this context (a store call made in another module).
    #[inline]
    pub fn db(&self, system: &'static str, operation: &'static str) -> Span {
        db_span(self.child(operation, SpanKind::Client), system, operation)
    }

    /// [`Span::attempt`] under the span of this context (from another task or module).
    #[inline]
    pub fn attempt(
        &self,
        method: &http::Method,
        upstream: &str,
        backend: SocketAddr,
        attempt: u32,
    ) -> Span {
        let m = method_name(method);
        attempt_span(
            self.child(m, SpanKind::Client),
            m,
            upstream,
            backend,
            attempt,
        )
    }
}

/// The attributes of a store or database call span (`child` is none when tracing is off).
fn db_span(mut s: Span, system: &'static str, operation: &'static str) -> Span {
    if s.is_recording() {
        s.set_static(DB_SYSTEM, system);
        s.set_static(DB_OPERATION_NAME, operation);
    }
    s
}

fn attempt_span(
    mut s: Span,
    method: &'static str,
    upstream: &str,
    backend: SocketAddr,
    attempt: u32,
) -> Span {
    if !s.is_recording() {
        return s;
    }
    s.set_static(HTTP_REQUEST_METHOD, method);
    let ip = backend.ip().to_string();
    s.set_str(SERVER_ADDRESS, &ip);
    s.set_int(SERVER_PORT, i64::from(backend.port()));
    s.set_str(NETWORK_PEER_ADDRESS, &ip);
    s.set_str(GATEHOUSE_BACKEND, &backend.to_string());
    s.set_str(GATEHOUSE_UPSTREAM, upstream);
    if attempt > 1 {
        s.set_int(HTTP_REQUEST_RESEND_COUNT, i64::from(attempt - 1));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_split_into_address_and_port() {
        assert_eq!(split_host("gw.example"), ("gw.example", None));
        assert_eq!(split_host("gw.example:8080"), ("gw.example", Some(8080)));
        assert_eq!(split_host("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host("::1"), ("::1", None));
    }

    #[test]
    fn unusual_methods_are_other() {
        assert_eq!(method_name(&http::Method::GET), "GET");
        let m = http::Method::from_bytes(b"PROPFIND").expect("method");
        assert_eq!(method_name(&m), "_OTHER");
    }
}

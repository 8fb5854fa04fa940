//! The request plan: what the gateway does with one request, decided once, in one place.
//!
//! Lane-neutral: no Pingora types and no I/O. [`plan`] reads the parsed request head and the
//! configuration snapshot and says what happens, in this order (the order is the policy):
//!
//! 1. hygiene (`edge::hygiene`: TRACE, Host, duplicate lengths) — refused, connection closed;
//! 2. the path's normal form (`routing::normalize_path`) — 400;
//! 3. the built-in health endpoints (`/health`, `/api/v1/health`);
//! 4. plain HTTP sent to HTTPS (`server.tls.redirect_http`) — 308;
//! 5. a CORS preflight, answered before authentication (it carries no credentials);
//! 6. the auth endpoints (login, refresh, validate, logout, portal logins, registration and
//!    its `/register` page);
//! 7. static assets, then pages (HTML, and `/api/web/{role}/dashboard` as JSON);
//! 8. route lookup — 404, 405 with `Allow`;
//! 9. the route's address rules (403) and its body limit by `Content-Length` (413);
//! 10. a route or page with `audit: required` while the access audit cannot take rows —
//!     503 with `Retry-After` (never served unaudited);
//! 11. otherwise: proxy on that route (or render the page).
//!
//! What needs I/O or shared counters runs after, in the lane, on the route the plan chose:
//! in-flight slots, the session check (`auth::guard`), rate limits, then the attempts.
//!
//! Layer: above `config`, `edge`, `routing`, `state`, `auth` and `pages`; must not import
//! `proxy`, `edge::listener`, `lib` or Pingora.

use crate::answer::Answer;
use crate::auth::endpoints::{self, Endpoint};
use crate::edge::cors::Cors;
use crate::edge::{forwarding, hygiene};
use crate::errors::Reject;
use crate::pages::PageDef;
use crate::routing::{self, Lookup};
use crate::state::{Route, Snapshot};
use bytes::Bytes;
use http::Method;
use std::net::IpAddr;
use std::sync::Arc;

/// The request as the plan sees it.
pub struct Inbound<'a> {
    /// The parsed head.
    pub head: &'a http::request::Parts,
    /// The address the connection came from.
    pub peer_ip: Option<IpAddr>,
    /// The connection itself is TLS (the gateway's HTTPS listener).
    pub tls_conn: bool,
    /// The access audit cannot take rows now (`crate::audit::AuditSink::degraded`).
    pub audit_degraded: bool,
}

/// What the plan learned about the request, whatever it decided.
#[derive(Default)]
pub struct Facts {
    /// The client's `X-Request-Id` when valid, else a new one.
    pub request_id: String,
    /// The client's address: the peer, or what trusted proxies say.
    pub client_ip: Option<IpAddr>,
    /// TLS in front of the client: ours, or a trusted proxy's (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// The path's normal form (no query); `None` when it has none.
    pub path: Option<String>,
    /// Answers are JSON (an API client), not HTML pages.
    pub api_client: bool,
    /// The CORS policy of the answer: the route's, else `defaults.cors`; none before it is
    /// known (hygiene, health, the HTTPS redirect) and for preflights (answered whole).
    pub cors: Option<Arc<Cors>>,
    /// The page the request is for, whatever was decided (its `audit` applies).
    pub page: Option<Arc<PageDef>>,
}

impl std::fmt::Debug for Facts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Facts")
            .field("request_id", &self.request_id)
            .field("client_ip", &self.client_ip)
            .field("tls", &self.tls)
            .field("path", &self.path)
            .field("api_client", &self.api_client)
            .field("cors", &self.cors)
            .field("page", &self.page.as_ref().map(|p| p.path.as_str()))
            .finish()
    }
}

/// What happens to the request.
pub enum Plan {
    /// Refused here. `close`: the connection ends after the answer. `route`: the route it
    /// matched, if any (its counters and CORS apply).
    Refuse {
        reject: Reject,
        close: bool,
        route: Option<Arc<Route>>,
    },
    /// Answered here with exactly this (an HTTPS redirect, a preflight, an asset).
    Answer(Answer),
    /// `/health` (liveness) or `/api/v1/health` (`detailed`: routes and backends).
    Health { detailed: bool },
    /// One of the auth endpoints; `Err(allow)`: the method is not one it takes.
    AuthEndpoint(Result<Endpoint, &'static str>),
    /// A page (GET or HEAD); `as_json`: the seeds' JSON dashboard of the same page.
    Page { page: Arc<PageDef>, as_json: bool },
    /// Proxied on this route, once admitted (slots, session, rate limits).
    Proxy(Arc<Route>),
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plan::Refuse {
                reject,
                close,
                route,
            } => f
                .debug_struct("Refuse")
                .field("status", &reject.status)
                .field("code", &reject.code)
                .field("close", close)
                .field("route", &route.as_ref().map(|r| r.name.as_str()))
                .finish(),
            Plan::Answer(a) => f.debug_tuple("Answer").field(a).finish(),
            Plan::Health { detailed } => f
                .debug_struct("Health")
                .field("detailed", detailed)
                .finish(),
            Plan::AuthEndpoint(ep) => f.debug_tuple("AuthEndpoint").field(ep).finish(),
            Plan::Page { page, as_json } => f
                .debug_struct("Page")
                .field("path", &page.path)
                .field("as_json", as_json)
                .finish(),
            Plan::Proxy(route) => f.debug_tuple("Proxy").field(&route.name).finish(),
        }
    }
}

/// Decides what happens to the request. `raw` gives the header block as received (HTTP/1;
/// `None` otherwise), read only when a check needs what the parse hides.
pub fn plan(
    snapshot: &Snapshot,
    req: &Inbound<'_>,
    raw: impl FnOnce() -> Option<Bytes>,
) -> (Facts, Plan) {
    let head = req.head;
    let mut facts = front(snapshot, req);
    if let Err(reject) = hygiene::check(head, raw) {
        return (facts, refuse(reject, true, None));
    }
    let path = match routing::normalize_path(head.uri.path()) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(request_id = %facts.request_id, error = %e, "path refused");
            let reject = Reject::bad_request("The request path is not valid.");
            return (facts, refuse(reject, false, None));
        }
    };
    let plan = decide(snapshot, head, &path, &mut facts);
    let plan = audit_gate(plan, req.audit_degraded);
    facts.path = Some(path);
    (facts, plan)
}

/// Request id, client address and TLS: known before anything is decided.
fn front(snapshot: &Snapshot, req: &Inbound<'_>) -> Facts {
    let headers = &req.head.headers;
    let request_id = match headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(id) if forwarding::valid_request_id(id) => id.to_string(),
        _ => forwarding::new_request_id(),
    };
    let trusted = &snapshot.trusted_proxies;
    let tls = req.tls_conn
        || (req
            .peer_ip
            .is_some_and(|ip| forwarding::is_trusted(ip, trusted))
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("https")));
    Facts {
        request_id,
        client_ip: forwarding::client_ip(req.peer_ip, headers, trusted),
        tls,
        path: None,
        api_client: true,
        cors: None,
        page: None,
    }
}

fn refuse(reject: Reject, close: bool, route: Option<Arc<Route>>) -> Plan {
    Plan::Refuse {
        reject,
        close,
        route,
    }
}

fn method_not_allowed(allow: &str) -> Plan {
    let reject = crate::errors::from_status(405).with_header("Allow", allow);
    refuse(reject, false, None)
}

/// Steps 3–10 on a valid path.
fn decide(snapshot: &Snapshot, head: &http::request::Parts, path: &str, facts: &mut Facts) -> Plan {
    let (method, headers) = (&head.method, &head.headers);
    if path == "/health" || path == "/api/v1/health" {
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed("GET, HEAD");
        }
        return Plan::Health {
            detailed: path != "/health",
        };
    }
    facts.api_client = crate::edge::client::is_api_client(path, headers);
    if let Some(location) = https_location(snapshot, head, path, facts.tls) {
        return Plan::Answer(Answer::new(
            308,
            vec![("Location".to_string(), location)],
            Bytes::new(),
        ));
    }
    facts.cors = Some(snapshot.cors.clone());
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    if Cors::is_preflight(method, headers) {
        let requested = headers
            .get("access-control-request-method")
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
            .unwrap_or(Method::GET);
        let cors = match snapshot.table.lookup(host, &requested, path) {
            Lookup::Found(i) => &snapshot.routes[i].cors,
            _ => &snapshot.cors,
        };
        if cors.is_enabled() {
            let mut pairs: Vec<(String, String)> = cors
                .preflight(headers)
                .unwrap_or_else(|| vec![Cors::preflight_vary()])
                .into_iter()
                .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
                .collect();
            pairs.push(("Cache-Control".into(), "no-store".into()));
            facts.cors = None;
            return Plan::Answer(Answer::new(204, pairs, Bytes::new()));
        }
    }
    if let Some(ep) = endpoints::route(method, path) {
        return Plan::AuthEndpoint(ep);
    }
    let pages = &snapshot.pages;
    if let Some(asset) = pages
        .assets
        .as_ref()
        .and_then(|a| a.serve(method, path, headers))
    {
        return match asset.status {
            404 => refuse(Reject::not_found(), false, None),
            405 => method_not_allowed("GET, HEAD"),
            status => {
                let pairs = asset.headers.into_iter().map(|(k, v)| (k.to_string(), v));
                Plan::Answer(Answer::new(status, pairs.collect(), asset.body))
            }
        };
    }
    // The seeds' JSON dashboards: the same page definition, as JSON.
    let json_page = path
        .strip_prefix("/api/web/")
        .and_then(|r| r.strip_suffix("/dashboard"))
        .filter(|r| !r.contains('/'))
        .and_then(|role| pages.find(&format!("/{role}/dashboard")));
    let page = match json_page {
        Some(page) => Some((page, true)),
        None => pages.find(path).map(|page| (page, false)),
    };
    if let Some((page, as_json)) = page {
        facts.page = Some(page.clone());
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed("GET, HEAD");
        }
        return Plan::Page { page, as_json };
    }
    let host = host.or_else(|| head.uri.host());
    let route = match snapshot.table.lookup(host, method, path) {
        Lookup::Found(i) => snapshot.routes[i].clone(),
        Lookup::NotFound => return refuse(Reject::not_found(), false, None),
        Lookup::MethodNotAllowed(allowed) => {
            let allow = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            return method_not_allowed(&allow);
        }
    };
    facts.cors = Some(route.cors.clone());
    if !route.ip_rules.permits(facts.client_ip) {
        let msg = "Access from this address is not allowed.";
        return refuse(Reject::new(403, "ip_forbidden", msg), false, Some(route));
    }
    let content_length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if content_length.is_some_and(|n| n > route.max_body_bytes) {
        return refuse(crate::errors::from_status(413), true, Some(route));
    }
    Plan::Proxy(route)
}

/// Step 10: a route or page with `audit: required` is not served while the access audit
/// cannot take rows; the refusal keeps the route, so it is counted (and recorded when the
/// audit recovers in time).
fn audit_gate(plan: Plan, audit_degraded: bool) -> Plan {
    use crate::config::AuditMode;
    if !audit_degraded {
        return plan;
    }
    let route = match &plan {
        Plan::Proxy(route) if route.audit == AuditMode::Required => Some(route.clone()),
        Plan::Page { page, .. } if page.audit == AuditMode::Required => None,
        _ => return plan,
    };
    let reject = Reject::new(
        503,
        "audit_unavailable",
        "The service is temporarily unavailable.",
    )
    .with_header("Retry-After", "5");
    refuse(reject, false, route)
}

/// Where a plain-HTTP request goes when `server.tls.redirect_http` is on: the same host,
/// the HTTPS listener's port, path and query. `None` when it stays (TLS already, off, or a
/// Host that cannot be put in a URL).
fn https_location(
    snapshot: &Snapshot,
    head: &http::request::Parts,
    path: &str,
    tls: bool,
) -> Option<String> {
    let tls_cfg = &snapshot.config.server.tls;
    if !tls_cfg.redirect_http || tls {
        return None;
    }
    let host = head
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let host = host
        .rsplit_once(':')
        .filter(|(_, p)| p.parse::<u16>().is_ok())
        .map_or(host, |(h, _)| h);
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return None;
    }
    let port = tls_cfg
        .listen
        .first()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map_or(443, |a| a.port());
    let authority = if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let mut location = format!("https://{authority}{path}");
    if let Some(q) = head.uri.query() {
        location.push('?');
        location.push_str(q);
    }
    Some(location)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn snapshot(rest: &str) -> Snapshot {
        let yaml = format!("server:\n  listen: 127.0.0.1:1\n{rest}");
        let config = Config::from_yaml_str(&yaml).expect("config");
        Snapshot::build(config, None).expect("snapshot")
    }

    fn head(method: &str, target: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(target);
        b = b.header("host", "localhost");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    fn decide_for(s: &Snapshot, h: &http::request::Parts) -> (Facts, Plan) {
        let inbound = Inbound {
            head: h,
            peer_ip: Some(IpAddr::from([127, 0, 0, 1])),
            tls_conn: false,
            audit_degraded: false,
        };
        plan(s, &inbound, || None)
    }

    #[test]
    fn audit_required_refuses_with_503_only_while_the_audit_is_degraded() {
        let s = snapshot(
            "upstreams:
  app:
    backends: http://127.0.0.1:9
routes:
  - {name: must, prefix: /must, upstream: app, audit: required}
  - {name: may, prefix: /may, upstream: app, audit: true}
",
        );
        let plan_with = |path: &str, degraded: bool| {
            let h = head("GET", path, &[]);
            let inbound = Inbound {
                head: &h,
                peer_ip: Some(IpAddr::from([127, 0, 0, 1])),
                tls_conn: false,
                audit_degraded: degraded,
            };
            plan(&s, &inbound, || None).1
        };
        assert!(matches!(plan_with("/must", false), Plan::Proxy(_)));
        assert!(matches!(plan_with("/may", true), Plan::Proxy(_)));
        let p = plan_with("/must", true);
        assert!(
            matches!(p, Plan::Refuse { ref reject, route: Some(ref r), close: false }
                if reject.status == 503 && r.name == "must"
                    && reject.headers.iter().any(|(k, _)| k == "Retry-After")),
            "{p:?}"
        );
    }

    const ROUTES: &str = "upstreams:\n  app:\n    backends: http://127.0.0.1:9\nroutes:\n  - {name: everything, prefix: /, upstream: app, auth: required, cors: {allowed_origins: [\"https://a.example\"]}}\n  - {name: ro, prefix: /ro, upstream: app, methods: [GET]}\n  - {name: small, prefix: /small, upstream: app, max_body_bytes: 10, ip_rules: {deny: [10.0.0.0/8]}}\n  - {name: blocked, prefix: /blocked, upstream: app, max_body_bytes: 10, ip_rules: {deny: [127.0.0.1/32]}}\n";

    #[test]
    fn hygiene_refuses_and_closes_before_the_path_is_read() {
        let s = snapshot(ROUTES);
        let (_, p) = decide_for(&s, &head("TRACE", "/../x", &[]));
        assert!(matches!(p, Plan::Refuse { close: true, ref reject, .. } if reject.status == 405));
    }

    #[test]
    fn a_bad_path_is_400_and_keeps_no_path() {
        let s = snapshot(ROUTES);
        let (f, p) = decide_for(&s, &head("GET", "/../x", &[]));
        assert!(matches!(p, Plan::Refuse { close: false, ref reject, .. } if reject.status == 400));
        assert!(f.path.is_none());
    }

    #[test]
    fn health_wins_over_a_catch_all_route_and_takes_only_get_and_head() {
        let s = snapshot(ROUTES);
        let (f, p) = decide_for(&s, &head("GET", "/api/v1/health", &[]));
        assert!(matches!(p, Plan::Health { detailed: true }));
        assert!(f.cors.is_none(), "no CORS on health");
        let (_, p) = decide_for(&s, &head("DELETE", "/health", &[]));
        assert!(matches!(p, Plan::Refuse { ref reject, .. } if reject.status == 405));
    }

    #[test]
    fn a_preflight_is_answered_whole_with_the_routes_policy() {
        let s = snapshot(ROUTES);
        let h = head(
            "OPTIONS",
            "/x",
            &[
                ("origin", "https://a.example"),
                ("access-control-request-method", "PUT"),
            ],
        );
        let (f, p) = decide_for(&s, &h);
        let Plan::Answer(a) = p else {
            panic!("not answered: {p:?}")
        };
        assert_eq!(a.status, 204);
        assert!(a
            .headers
            .iter()
            .any(|(k, v)| k == "access-control-allow-origin" && v == "https://a.example"));
        assert!(
            f.cors.is_none(),
            "the preflight's headers are the whole answer"
        );
    }

    #[test]
    fn auth_endpoints_come_before_routes() {
        let s = snapshot(ROUTES);
        let (_, p) = decide_for(&s, &head("POST", "/api/v1/auth/login", &[]));
        assert!(matches!(p, Plan::AuthEndpoint(Ok(Endpoint::Login))));
        let (_, p) = decide_for(&s, &head("GET", "/api/v1/auth/login", &[]));
        assert!(matches!(p, Plan::AuthEndpoint(Err("POST"))));
        // The registration page is built in, ahead of a catch-all route.
        let (_, p) = decide_for(&s, &head("GET", "/register", &[]));
        assert!(matches!(p, Plan::AuthEndpoint(Ok(Endpoint::RegisterPage))));
        let (_, p) = decide_for(&s, &head("POST", "/register", &[]));
        assert!(matches!(p, Plan::AuthEndpoint(Ok(Endpoint::RegisterForm))));
    }

    #[test]
    fn route_lookup_then_address_rules_then_the_body_limit() {
        let s = snapshot(ROUTES);
        let (f, p) = decide_for(&s, &head("GET", "/anything?q=1", &[]));
        assert!(matches!(p, Plan::Proxy(ref r) if r.name == "everything"));
        assert_eq!(f.path.as_deref(), Some("/anything"));
        assert!(f.cors.is_some_and(|c| c.is_enabled()));
        let (_, p) = decide_for(&s, &head("POST", "/ro/x", &[]));
        assert!(matches!(p, Plan::Refuse { ref reject, .. }
            if reject.status == 405 && reject.headers.contains(&("Allow".into(), "GET".into()))));
        let (_, p) = decide_for(&s, &head("POST", "/small", &[("content-length", "11")]));
        assert!(
            matches!(p, Plan::Refuse { ref reject, close: true, route: Some(ref r) } if reject.status == 413 && r.name == "small")
        );
        let (_, p) = decide_for(&s, &head("POST", "/small", &[("content-length", "10")]));
        assert!(matches!(p, Plan::Proxy(_)));
        // Address rules before the body limit.
        let (_, p) = decide_for(&s, &head("POST", "/blocked", &[("content-length", "11")]));
        assert!(matches!(p, Plan::Refuse { ref reject, close: false, .. } if reject.status == 403));
    }

    #[test]
    fn no_route_is_404() {
        let s = snapshot("upstreams:\n  app:\n    backends: http://127.0.0.1:9\nroutes:\n  - {name: a, prefix: /a, upstream: app}\n");
        let (_, p) = decide_for(&s, &head("GET", "/b", &[]));
        assert!(matches!(p, Plan::Refuse { ref reject, route: None, .. } if reject.status == 404));
    }

    #[test]
    fn the_request_id_is_kept_when_valid_and_made_otherwise() {
        let s = snapshot(ROUTES);
        let (f, _) = decide_for(&s, &head("GET", "/x", &[("x-request-id", "abc-123")]));
        assert_eq!(f.request_id, "abc-123");
        let (f, _) = decide_for(&s, &head("GET", "/x", &[("x-request-id", "bad id!")]));
        assert_ne!(f.request_id, "bad id!");
        assert!(!f.request_id.is_empty());
    }
}

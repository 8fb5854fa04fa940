//! Page data sources: GETs to upstream pools on behalf of the signed-in user, fetched
//! concurrently through the same pools (health checks, breakers, retry budget) with a
//! timeout, and retried by the same decision as a proxied GET (`Pool::pick`,
//! `Pool::decide_retry`: another backend, or the same one for a 502/503/504, within the
//! page's wait). A failed source becomes `{"unavailable": true}`: the page still renders.
//!
//! With tracing on, each attempt is a client span under the page's span and sends a
//! `traceparent` naming it ([`fetch_all_traced`]).
//!
//! Layer: a step of the lane, above `auth` (it fetches for the signed-in user) and `upstream`; must
//! not import `plan` or `proxy`.

use crate::auth::guard::Identity;
use crate::telemetry::{span as attr, Span, TraceContext};
use crate::upstream::retry::{AttemptFacts, Failure, RetryPolicy};
use crate::upstream::{Pool, Retry, RetryState};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest JSON body a data source may return.
const MAX_BODY: usize = 1024 * 1024;

/// One source to fetch: its name in the template, the pool and the path (placeholders
/// already filled in).
pub struct Fetch {
    pub name: String,
    pub pool: Arc<Pool>,
    pub path: String,
}

/// `{user_id}`, `{role}` and `{session_id}` from the identity, percent-encoded.
pub fn fill_path(template: &str, who: &Identity) -> String {
    let enc = |s: &str| crate::auth::guard::percent_encode(s).replace('/', "%2F");
    template
        .replace("{user_id}", &enc(&who.claims.sub))
        .replace("{role}", &enc(&who.claims.role))
        .replace("{session_id}", &enc(&who.claims.sid))
}

/// Fetches every source concurrently; returns `name → JSON or {"unavailable": true}`.
pub async fn fetch_all(
    connector: &Arc<Connector>,
    fetches: Vec<Fetch>,
    who: &Identity,
    request_id: &str,
    timeout: Duration,
) -> serde_json::Map<String, Value> {
    fetch_all_traced(
        connector,
        fetches,
        who,
        request_id,
        timeout,
        &TraceContext::none(),
    )
    .await
}

/// [`fetch_all`] with each attempt a client span under `trace` (the page's span), whose
/// `traceparent` (and the caller's `tracestate`) the attempt sends. `TraceContext::none()`:
/// no spans, no trace headers.
pub async fn fetch_all_traced(
    connector: &Arc<Connector>,
    fetches: Vec<Fetch>,
    who: &Identity,
    request_id: &str,
    timeout: Duration,
    trace: &TraceContext,
) -> serde_json::Map<String, Value> {
    let mut set = tokio::task::JoinSet::new();
    for f in fetches {
        let connector = connector.clone();
        let headers = identity_headers(who, request_id);
        let source = Source {
            name: f.name.clone(),
            trace: trace.clone(),
            deadline: Instant::now() + timeout,
        };
        set.spawn(async move {
            let result = tokio::time::timeout(
                timeout,
                fetch_one(&connector, &f.pool, &f.path, &headers, &source),
            )
            .await;
            let value = match result {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    tracing::warn!(source = %f.name, upstream = %f.pool.name, error = %e, "page data source failed");
                    json!({"unavailable": true})
                }
                Err(_) => {
                    tracing::warn!(source = %f.name, upstream = %f.pool.name, "page data source timed out");
                    json!({"unavailable": true})
                }
            };
            (f.name, value)
        });
    }
    let mut out = serde_json::Map::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((name, value)) = joined {
            out.insert(name, value);
        }
    }
    out
}

fn identity_headers(who: &Identity, request_id: &str) -> Vec<(&'static str, String)> {
    let mut headers = Vec::from(who.upstream_headers());
    headers.push(("x-request-id", request_id.to_string()));
    headers.push(("accept", "application/json".to_string()));
    headers
}

/// What an attempt's span needs to know of its source.
struct Source {
    name: String,
    trace: TraceContext,
    /// When the page stops waiting for it (no retry is started that could not finish).
    deadline: Instant,
}

async fn fetch_one(
    connector: &Connector,
    pool: &Pool,
    path: &str,
    headers: &[(&'static str, String)],
    source: &Source,
) -> Result<Value, String> {
    let policy = RetryPolicy::default();
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    let mut same_backend_ok = false;
    pool.budget.record_request(Instant::now());
    loop {
        let now = Instant::now();
        let (addr, _) = pool
            .pick(b"", now, &tried, same_backend_ok)
            .ok_or("no backend can take the request")?;
        let mut span =
            source
                .trace
                .attempt(&http::Method::GET, &pool.name, addr, tried.len() as u32 + 1);
        span.set_str(attr::URL_PATH, path);
        span.set_str(attr::GATEHOUSE_DATA_SOURCE, &source.name);
        let result = exchange(connector, pool, addr, path, headers, &span).await;
        let failure = match &result {
            Ok((status, _)) if pool.is_failure_status(*status) => Some(Failure::Status(*status)),
            Ok(_) => None,
            Err((f, _)) => Some(*f),
        };
        match (&result, failure) {
            (Ok((status, _)), None) => span.end_attempt("ok", Some(*status), None),
            (Ok((status, _)), Some(_)) => span.end_attempt("failure_status", Some(*status), None),
            (Err((f, _)), _) => {
                let outcome = match f {
                    Failure::Status(_) => "failure_status",
                    other => other.reason(),
                };
                span.end_attempt(outcome, None, Some(outcome))
            }
        }
        pool.record(&addr, failure.is_none(), Instant::now());
        // The same decision as a proxied GET's (`Pool::decide_retry`), within the page's wait.
        let retry = failure.and_then(|failure| {
            tried.push(addr);
            let facts = AttemptFacts {
                failure,
                method: &http::Method::GET,
                has_idempotency_key: false,
                attempts: tried.len() as u32,
                body_bytes: 0,
                body_truncated: false,
            };
            let state = RetryState {
                tried: &tried,
                deadline: Some(source.deadline),
                retry_after: None,
                response_started: false,
            };
            pool.decide_retry(&policy, &facts, &state, Instant::now())
                .ok()
        });
        if let Some(Retry {
            delay,
            same_backend_ok: same,
        }) = retry
        {
            same_backend_ok = same;
            tracing::debug!(upstream = %pool.name, backend = %addr, ?delay, "page data source retried");
            tokio::time::sleep(delay).await;
            continue;
        }
        let (status, body) = result.map_err(|(_, e)| e)?;
        if !(200..300).contains(&status) {
            return Err(format!("status {status}"));
        }
        return serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"));
    }
}

/// One GET to one backend: its status and body, or what went wrong (classified for the
/// retry decision).
async fn exchange(
    connector: &Connector,
    pool: &Pool,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&'static str, String)],
    span: &Span,
) -> Result<(u16, Vec<u8>), (Failure, String)> {
    // Errors of Pingora's exchange are classified; building the request cannot be retried.
    let up = |e: Box<pingora::Error>| (Failure::of(&e), e.to_string());
    let local = |e: Box<pingora::Error>| (Failure::Status(0), e.to_string());
    let timeouts = &pool.config.timeouts;
    // Plain or TLS as the pool's backend URL says, with the pool's TLS settings.
    let mut peer = pool.peer(addr);
    peer.options.connection_timeout =
        Some(timeouts.connect.map_or(Duration::from_secs(2), |d| d.0));
    peer.options.read_timeout = Some(timeouts.read.map_or(Duration::from_secs(5), |d| d.0));
    peer.options.idle_timeout = Some(pool.config.keepalive_idle.0);
    let (mut session, _reused) = connector.get_http_session(&peer).await.map_err(up)?;
    let mut req =
        RequestHeader::build("GET", path.as_bytes(), Some(headers.len() + 1)).map_err(local)?;
    let host = pool.config.host.clone().unwrap_or_else(|| addr.to_string());
    req.insert_header("host", host).map_err(local)?;
    for (k, v) in headers {
        req.insert_header(*k, v.as_str()).map_err(local)?;
    }
    if let Some(tp) = span.traceparent() {
        req.insert_header("traceparent", tp.as_str())
            .map_err(local)?;
        if let Some(ts) = span.tracestate() {
            req.insert_header("tracestate", ts).map_err(local)?;
        }
    }
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(up)?;
    session.finish_request_body().await.map_err(up)?;
    session.read_response_header().await.map_err(up)?;
    let status = session.response_header().map_or(0, |r| r.status.as_u16());
    let mut body = Vec::new();
    while let Some(chunk) = session.read_response_body().await.map_err(up)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err((Failure::Status(0), "response too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(session, &peer, peer.options.idle_timeout)
        .await;
    Ok((status, body))
}

//! Endpoints the gateway answers itself: `GET /health` (liveness, the seeds' shape) and
//! `GET /api/v1/health` (every route and every backend's current health).
//!
//! Layer: above `state`; must not import `auth`, `plan` or `proxy`.

use crate::state::Snapshot;
use serde_json::{json, Value};

/// `{"status":"healthy","service":"gatehouse"}`
pub fn liveness() -> Value {
    json!({"status": "healthy", "service": "gatehouse"})
}

/// Routes and backend health from the live snapshot. `status` is `healthy` when every
/// pool has at least one healthy backend, `degraded` otherwise.
pub fn detailed(snap: &Snapshot) -> Value {
    let routes: Vec<Value> = snap
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "prefix": r.prefix,
                "methods": r.methods.as_ref().map(|ms| ms.iter().map(|m| m.as_str()).collect::<Vec<_>>()),
                "upstream": r.pool.name,
            })
        })
        .collect();
    let (upstreams, all_up) = upstream_health(snap);
    json!({
        "status": if all_up { "healthy" } else { "degraded" },
        "service": "gatehouse",
        "version": env!("CARGO_PKG_VERSION"),
        "routes": routes,
        "upstreams": upstreams,
    })
}

/// Every pool's backends and their current health, keyed by pool name, and whether every pool
/// has at least one healthy backend.
pub fn upstream_health(snap: &Snapshot) -> (serde_json::Map<String, Value>, bool) {
    let mut all_up = true;
    let upstreams = snap
        .pools
        .iter()
        .map(|(name, pool)| {
            let backends: Vec<Value> = pool
                .backends
                .iter()
                .map(|b| json!({"url": b.url, "address": b.addr.to_string(), "weight": b.weight, "healthy": pool.is_healthy(&b.addr)}))
                .collect();
            let healthy = pool.backends.iter().filter(|b| pool.is_healthy(&b.addr)).count();
            all_up &= healthy > 0;
            (
                name.clone(),
                json!({"healthy_backends": healthy, "total_backends": pool.backends.len(), "backends": backends}),
            )
        })
        .collect();
    (upstreams, all_up)
}

/// Every route for the docs page: name, prefix, methods, upstream, auth, roles.
pub fn route_docs(snap: &Snapshot) -> Value {
    Value::Array(
        snap.routes
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "prefix": r.prefix,
                    "methods": r.methods.as_ref().map(|ms| ms.iter().map(|m| m.as_str()).collect::<Vec<_>>()),
                    "upstream": r.pool.name,
                    "auth": match r.auth {
                        crate::config::AuthMode::None => "none",
                        crate::config::AuthMode::Optional => "optional",
                        crate::config::AuthMode::Required => "required",
                    },
                    "roles": r.roles,
                })
            })
            .collect(),
    )
}

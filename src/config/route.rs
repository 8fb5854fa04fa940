//! `routes[i]:` — a route and its fallback answer; `defaults:`, what routes and pools inherit.

use serde::Deserialize;
use std::collections::BTreeMap;

use super::{cache, AuthMode, RetryConfig, Size, StoreFailure, Timeouts};

/// `defaults:` — global defaults, overridden per pool, then per route.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub retry: RetryConfig,
    /// CORS for every route without its own, and for the gateway's own endpoints.
    #[serde(default)]
    pub cors: crate::edge::cors::CorsConfig,
}

/// `routes[i].fallback:` — the answer when no backend can take a request.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body for API clients. Default: the standard error body.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Template (under `web.templates`) rendered for browsers instead of the error page;
    /// it gets the usual context plus `error`.
    #[serde(default)]
    pub template: Option<String>,
}

fn default_fallback_status() -> u16 {
    503
}

/// `routes[i]:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label for logs and metrics. Default: the upstream name.
    #[serde(default)]
    pub name: Option<String>,
    /// Path prefix, matched on whole segments (`/api/v1/doctors` never matches `/api/v1/doctorsX`).
    pub prefix: String,
    pub upstream: String,
    /// Allowed methods; absent means any (TRACE is always refused).
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Host names (without port) this route answers; absent means any.
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    /// Remove the prefix before forwarding (`/api/v1/doctors/7` → `/7`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the prefix with this one before forwarding.
    #[serde(default)]
    pub rewrite_prefix: Option<String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Body limit for this route; default `server.limits.max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<Size>,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Answer when no backend can take the request; default 503 with `Retry-After`.
    #[serde(default)]
    pub fallback: Option<FallbackConfig>,
    /// `none` (default), `optional` or `required`.
    #[serde(default)]
    pub auth: AuthMode,
    /// Roles allowed (with `auth: required`); absent means any signed-in user.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    #[serde(default)]
    pub on_store_error: StoreFailure,
    /// Compress this route's responses (when `server.compression` is on). Default true.
    #[serde(default = "yes")]
    pub compression: bool,
    /// CORS for this route; default `defaults.cors`.
    #[serde(default)]
    pub cors: Option<crate::edge::cors::CorsConfig>,
    /// Client addresses allowed / denied (CIDRs), on the real client ip.
    #[serde(default)]
    pub ip_rules: crate::edge::ip_rules::IpRulesConfig,
    /// Request and response header edits.
    #[serde(default)]
    pub headers: crate::edge::header_rules::HeaderRulesConfig,
    /// Pass WebSocket upgrades through (authentication applies to the upgrade request).
    #[serde(default)]
    pub websocket: bool,
    /// Rate limits, all of which must allow a request.
    #[serde(default)]
    pub rate_limits: Vec<crate::edge::ratelimit::RateLimitConfig>,
    /// Requests of this route in flight at once; more get 503 with `Retry-After`.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Requests of this route in flight at once from one client ip; more get 429 with
    /// `Retry-After`.
    #[serde(default)]
    pub max_in_flight_per_client: Option<u32>,
    /// Cache this route's GET and HEAD answers (see `server.cache` for the store).
    #[serde(default)]
    pub cache: Option<cache::RouteCacheConfig>,
    /// Record this route's requests in the access audit: `false` (default), `true`, or
    /// `"required"` (503 while the audit cannot take rows).
    #[serde(default)]
    pub audit: super::AuditMode,
}

fn yes() -> bool {
    true
}

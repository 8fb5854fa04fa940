//! Upstream pools: backends, load balancing (pingora-load-balancing), active health
//! checks and TLS to `https://` backends. Retry policy and circuit breaking build on this (resilience work).
//!
//! This module owns "which backend may take this request"; it knows nothing of routes.
//!
//! Layer: above `config` and the leaf `metrics::series`; must not import `state`, `cache`, `auth`,
//! `pages`, `plan` or `proxy` (`upstream::health`, which reads the snapshot, has its own line).

pub mod breaker;
mod health;
mod pool;
pub mod retry;
pub mod tls;

pub use health::HealthService;
pub use pool::{BackendInfo, Pool, PoolError, Retry, RetryState};

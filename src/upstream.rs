//! Upstream pools: backends, load balancing (pingora-load-balancing) and active health
//! checks. Retry policy and circuit breaking build on this (resilience work).
//!
//! This module owns "which backend may take this request"; it knows nothing of routes.

pub mod breaker;
mod health;
mod pool;
pub mod retry;

pub use health::HealthService;
pub use pool::{BackendInfo, Pool, PoolError};

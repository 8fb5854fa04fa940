//! Active health checks: our wrapper around pingora's checks (thresholds, priming, logs)
//! and the background service that runs every pool's checks on its own interval.
//!
//! The service reads the current snapshot on every tick, so pools added by a reload are
//! checked without restarting anything.

use crate::state::SharedState;
use async_trait::async_trait;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wraps a pingora check: rise/fall thresholds, a one-check threshold while priming, and
/// health changes logged with the pool name.
pub(super) struct Check {
    pub inner: Box<dyn HealthCheck + Send + Sync>,
    pub pool: String,
    pub rise: usize,
    pub fall: usize,
    pub priming: Arc<AtomicBool>,
}

#[async_trait]
impl HealthCheck for Check {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        self.inner.check(target).await
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if healthy {
            tracing::info!(upstream = %self.pool, backend = %target.addr, "backend is healthy again");
        } else {
            tracing::warn!(upstream = %self.pool, backend = %target.addr, "backend failed its health check; taken out");
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if self.priming.load(Ordering::Acquire) {
            1
        } else if success {
            self.rise
        } else {
            self.fall
        }
    }
}

/// Background service: every 100 ms, runs the checks that are due on the current snapshot.
pub struct HealthService {
    pub state: SharedState,
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snapshot = self.state.load_full();
            let now = Instant::now();
            for pool in snapshot.pools.values() {
                if pool.claim_check(now) {
                    let pool = pool.clone();
                    tokio::spawn(async move { pool.run_claimed_check().await });
                }
            }
        }
    }
}

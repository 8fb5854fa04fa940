//! Active health checks: our wrapper around pingora's checks (thresholds, priming, logs, one
//! check per way of reaching a backend), a connect-only check that can carry a TLS client
//! certificate, and the background service that runs every pool's checks on its own
//! interval.
//!
//! The service reads the current snapshot on every tick, so pools added by a reload are
//! checked without restarting anything.
//!
//! Layer: above `state` (it reads the live snapshot's pools); must not import `auth`, `pages`,
//! `plan` or `proxy`.

use crate::state::SharedState;
use async_trait::async_trait;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wraps pingora checks: rise/fall thresholds, a one-check threshold while priming, and
/// health changes logged with the pool name. Backends that are reached differently (plain
/// or TLS, another SNI) have their own check: `checks[targets[addr]]`.
pub(super) struct Check {
    pub checks: Vec<Box<dyn HealthCheck + Send + Sync>>,
    pub targets: Vec<(std::net::SocketAddr, usize)>,
    pub pool: String,
    pub rise: usize,
    pub fall: usize,
    pub priming: Arc<AtomicBool>,
}

#[async_trait]
impl HealthCheck for Check {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let index = target
            .addr
            .as_inet()
            .and_then(|a| self.targets.iter().find(|(t, _)| t == a))
            .map_or(0, |(_, i)| *i);
        match self.checks.get(index) {
            Some(c) => c.check(target).await,
            None => pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "no health check for this backend",
            ),
        }
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

/// A `tcp` check of a TLS backend: connect and complete the handshake with the pool's TLS
/// settings. Pingora's `TcpHealthCheck` takes a `BasicPeer`, which cannot carry a client
/// certificate, so a backend that requires one would fail it.
pub(super) struct ConnectCheck {
    pub peer_template: pingora::upstreams::peer::HttpPeer,
    pub connector: pingora::connectors::TransportConnector,
}

#[async_trait]
impl HealthCheck for ConnectCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let mut peer = self.peer_template.clone();
        peer._address = target.addr.clone();
        self.connector.new_stream(&peer).await.map(|_| ())
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
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

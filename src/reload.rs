//! Hot reload: on SIGHUP (and, with `server.watch_config`, when the file changes) the
//! config is loaded, validated and built into a new snapshot; on any error the old one
//! keeps serving and the failure is logged and counted. Requests in flight keep the
//! snapshot they started with; pools whose config is unchanged are carried over with their
//! health, breaker and connection state. Settings that only take effect at start (listeners,
//! threads, identity backends and keys) are reported as needing a restart.
//!
//! Layer: above `state` (builds and swaps snapshots), `metrics` and `edge::tls`; must not import
//! `auth`, `admin`, `plan` or `proxy`.

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::state::{SharedState, Snapshot};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What a successful reload changed that needs a restart to take effect.
pub type NeedsRestart = Vec<&'static str>;

pub struct Reloader {
    pub state: SharedState,
    /// Shared Redis client for distributed rate limits.
    pub redis: Option<fred::clients::Client>,
    /// The HTTPS listener's certificate resolver: certificates are re-read on reload.
    pub tls: Option<Arc<crate::edge::tls::SniResolver>>,
    pub metrics: Arc<Metrics>,
    /// The response cache: its bounds follow the config.
    pub cache: crate::cache::Cache,
    /// The file `gatehouse run -c` read; `None` when the config came from memory.
    pub path: Option<PathBuf>,
}

fn restart_needed(old: &Config, new: &Config) -> NeedsRestart {
    let mut out = Vec::new();
    let (a, b) = (&old.server, &new.server);
    if a.listen != b.listen {
        out.push("server.listen");
    }
    if a.admin_listen != b.admin_listen {
        out.push("server.admin_listen");
    }
    if (a.threads, a.work_stealing) != (b.threads, b.work_stealing) {
        out.push("server.threads/work_stealing");
    }
    if (a.grace_period, a.shutdown_timeout) != (b.grace_period, b.shutdown_timeout) {
        out.push("server.grace_period/shutdown_timeout");
    }
    if a.log != b.log {
        out.push("server.log");
    }
    if a.cache.lock_timeout != b.cache.lock_timeout {
        out.push("server.cache.lock_timeout");
    }
    if old.auth.database_url != new.auth.database_url {
        out.push("auth.database_url");
    }
    if old.auth.redis_url != new.auth.redis_url {
        out.push("auth.redis_url");
    }
    let (mut x, mut y) = (old.auth.clone(), new.auth.clone());
    x.database_url.clear();
    y.database_url.clear();
    x.redis_url.clear();
    y.redis_url.clear();
    if x != y {
        out.push("auth");
    }
    if old.telemetry != new.telemetry {
        out.push("telemetry");
    }
    // The audit's queue and writer are built once (routes' and pages' `audit` modes reload).
    if old.audit != new.audit {
        out.push("audit");
    }
    out
}

impl Reloader {
    /// Builds a snapshot from `config` next to the current one and swaps it in.
    pub async fn apply(&self, config: Config) -> Result<NeedsRestart, ConfigError> {
        let old = self.state.load_full();
        let result = {
            let old = old.clone();
            let redis = self.redis.clone();
            tokio::task::spawn_blocking(move || {
                Snapshot::build_with(config, Some(&old), redis.as_ref())
            })
            .await
            .map_err(|e| ConfigError::one(format!("reload task failed: {e}")))
            .and_then(|r| r)
        };
        let snap = match result {
            Ok(s) => s,
            Err(e) => {
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["failure"])
                    .inc();
                for p in &e.problems {
                    tracing::error!(problem = %p, "reload failed; the previous configuration keeps serving");
                }
                return Err(e);
            }
        };
        for w in crate::config::validate::warnings(&snap.config) {
            tracing::warn!(warning = %w, "configuration");
        }
        snap.prime_health().await;
        if let Some(resolver) = &self.tls {
            match resolver.reload(&snap.config.server.tls, &snap.config.base_dir) {
                Ok(()) => tracing::info!("certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "certificates not reloaded; the previous ones keep serving")
                }
            }
        }
        self.cache.apply(&snap.config.server.cache);
        let restart = restart_needed(&old.config, &snap.config);
        let carried = snap
            .pools
            .iter()
            .filter(|(n, p)| old.pools.get(*n).is_some_and(|o| Arc::ptr_eq(o, p)))
            .count();
        tracing::info!(
            routes = snap.routes.len(),
            pools = snap.pools.len(),
            carried_over = carried,
            "configuration reloaded"
        );
        for key in &restart {
            tracing::warn!(
                key,
                "changed in the configuration but only takes effect after a restart"
            );
        }
        self.metrics.prime(&snap);
        self.state.store(Arc::new(snap));
        self.metrics
            .config_reloads_total
            .with_label_values(&["success"])
            .inc();
        self.metrics.config_last_reload_success.set(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        Ok(restart)
    }

    /// Reads the config file again and applies it.
    pub async fn reload_file(&self) -> Result<NeedsRestart, ConfigError> {
        let Some(path) = self.path.clone() else {
            return Err(ConfigError::one("no configuration file to reload"));
        };
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| ConfigError::one(format!("reload task failed: {e}")))
            .and_then(|r| r);
        match loaded {
            Ok(c) => self.apply(c).await,
            Err(e) => {
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["failure"])
                    .inc();
                for p in &e.problems {
                    tracing::error!(problem = %p, "reload failed; the previous configuration keeps serving");
                }
                Err(e)
            }
        }
    }
}

/// Background service: SIGHUP, and optionally polling the file's modification time.
pub struct ReloadService {
    pub reloader: Arc<Reloader>,
    /// Poll interval when `server.watch_config` is on.
    pub watch: Option<Duration>,
}

fn mtime(path: &Option<PathBuf>) -> Option<SystemTime> {
    path.as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .and_then(|m| m.modified().ok())
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload by signal is off");
                None
            }
        };
        let mut tick = tokio::time::interval(self.watch.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = mtime(&self.reloader.path);
        loop {
            let by_signal = tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                _ = tick.tick() => false,
            };
            if !by_signal {
                if self.watch.is_none() {
                    continue;
                }
                let now = mtime(&self.reloader.path);
                if now == seen {
                    continue;
                }
                seen = now;
                tracing::info!("configuration file changed; reloading");
            } else {
                tracing::info!("SIGHUP: reloading the configuration");
                seen = mtime(&self.reloader.path);
            }
            let _ = self.reloader.reload_file().await;
        }
    }
}

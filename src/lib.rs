//! gatehouse: a programmable edge gateway on Pingora.
//!
//! [`build_server`] turns a [`Config`] into a ready Pingora `Server`; `main` and the
//! integration tests share it. [`spawn`] runs one on its own thread for tests.

pub mod admin;
pub mod answer;
pub mod audit;
pub mod auth;
pub mod builtin;
pub mod cache;
pub mod config;
pub mod edge;
pub mod errors;
pub mod forms;
pub mod logging;
pub mod metrics;
pub mod pages;
pub mod plan;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod state;
pub mod telemetry;
pub mod upstream;

use arc_swap::ArcSwap;
use async_trait::async_trait;
pub use config::{Config, ConfigError};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use state::{SharedState, Snapshot};
use std::sync::Arc;

/// Options that come from the command line rather than the file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Take over listening sockets from a running instance (zero-downtime upgrade).
    pub upgrade: bool,
    /// The file the config came from, for reloads.
    pub config_path: Option<std::path::PathBuf>,
    /// This server is the only one the process ever runs (`gatehouse run`). It lets
    /// `threads: 1` use Tokio's current-thread scheduler: Pingora finds that runtime through a
    /// process-wide thread-local keyed by thread id, and thread ids are recycled, so a server
    /// started after another one's threads exited would inherit handles of the stopped runtime
    /// and never listen. Servers started in-process ([`spawn`]) keep the scheduler the
    /// configuration names.
    pub sole_server: bool,
}

/// Validates and builds everything `run` would, without binding sockets (`gatehouse check`).
pub fn check(config: Config) -> Result<Snapshot, ConfigError> {
    let auth_cfg = config.auth.clone();
    // The OTEL_* variables the gateway would read, checked as `run` would.
    let telemetry = telemetry::settings::resolve(&config.telemetry, |k| std::env::var(k).ok())
        .map_err(|problems| ConfigError { problems });
    let snapshot = Snapshot::build(config, None);
    let keys = auth::build_jwt(&auth_cfg);
    let mut problems = Vec::new();
    for r in [keys.err(), telemetry.err()].into_iter().flatten() {
        problems.extend(r.problems);
    }
    match snapshot {
        Ok(s) if problems.is_empty() => Ok(s),
        Ok(_) => Err(ConfigError { problems }),
        Err(mut e) => {
            e.problems.extend(problems);
            Err(e)
        }
    }
}

/// Builds the Pingora server: proxy service (behind the edge wrapper), admin listener,
/// health checks. Runs a first health check so dead backends are out before traffic.
/// What [`build_server`] hands back besides the server.
pub struct Handles {
    pub state: SharedState,
    pub metrics: Arc<metrics::Metrics>,
    pub reloader: Arc<reload::Reloader>,
    /// The tracer (disabled when `telemetry:` and the `OTEL_*` variables name no endpoint).
    pub tracer: telemetry::Tracer,
}

/// Pingora's server settings for `server:` (`sole_server`: see [`RunOptions::sole_server`]).
fn server_conf(s: &config::ServerConfig, sole_server: bool) -> ServerConf {
    ServerConf {
        threads: s.threads,
        // One thread has no one to steal from: Tokio's current-thread scheduler does the same
        // work for less (≈10% less CPU per proxied request in benches/load, issue 8).
        work_stealing: s.work_stealing && !(sole_server && s.threads == 1),
        grace_period_seconds: Some(s.grace_period.0.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(s.shutdown_timeout.0.as_secs_f64().ceil() as u64),
        // Attempts allowed by Pingora's loop; whether to retry is decided per failure by the
        // route's policy (at most 10 retries), so this only has to be large enough.
        max_retries: 11,
        upgrade_sock: s.upgrade_sock.clone(),
        pid_file: s.pid_file.clone(),
        ..Default::default()
    }
}

pub fn build_server(config: Config, opts: RunOptions) -> Result<(Server, Handles), ConfigError> {
    let metrics = Arc::new(metrics::Metrics::new());
    metrics.config_last_reload_success.set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    if config.server.native_http1 {
        tracing::warn!("server.native_http1 is ignored: the native HTTP/1 lane was removed (README, \"The native HTTP/1 lane\"); Pingora's proxy serves every request");
    }
    for w in config::validate::warnings(&config) {
        tracing::warn!(warning = %w, "configuration");
    }
    // Built first: a bad OTEL_* variable fails the start before anything connects.
    let (tracer, exporter) =
        telemetry::Tracer::from_config(&config.telemetry, &metrics, |k| std::env::var(k).ok())?;
    let auth = Arc::new(auth::Auth::build(&config.auth, metrics.clone())?);
    auth.watch_revocations();
    let snapshot = Snapshot::build_with(config, None, auth.redis.as_ref())?;
    prime(&snapshot);
    metrics.prime(&snapshot);
    let cfg = snapshot.config.clone();
    let state: SharedState = Arc::new(ArcSwap::from_pointee(snapshot));

    let s = &cfg.server;
    let conf = server_conf(s, opts.sole_server);
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let auth_for_admin = auth.clone();
    // The access audit: one queue and one writer per process, in the users database.
    let audit = audit::AuditSink::new(&cfg.audit, metrics.clone());
    let audit_writer = audit::AuditService {
        sink: audit.clone(),
        db: auth.users.clone(),
        config: cfg.audit.clone(),
    };
    let cache = cache::Cache::new(&s.cache);
    let gateway = proxy::Gateway {
        state: state.clone(),
        metrics: metrics.clone(),
        auth,
        access_log: s.log.access_log,
        cache,
        tracer: tracer.clone(),
        audit,
    };
    let proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
    let app = edge::listener::EdgeServer(Arc::new(edge::listener::EdgeApp {
        inner: Arc::new(proxy),
        state: state.clone(),
        metrics: metrics.clone(),
        conns: Default::default(),
    }));
    let mut service = Service::new("gatehouse proxy".to_string(), app);
    for addr in &s.listen.0 {
        // No 64 KiB read buffer held per connection for its whole life (PINGORA.md,
        // "Memory per connection"); the header wait reads into its own small buffer. No
        // write buffer either: the edge wraps each client stream in its own, which holds
        // memory only while an answer is written (edge/write_buffer.rs).
        let listener = pingora::listeners::ListenerConfig::tcp(addr.as_str())
            .l4_buffer(pingora::listeners::L4BufferSettings::new(0, 0));
        service.add_listener(listener);
    }
    let tls_resolver = if s.tls.listen.is_empty() {
        None
    } else {
        let resolver =
            Arc::new(edge::tls::SniResolver::new(&s.tls, &cfg.base_dir).map_err(ConfigError::one)?);
        for addr in &s.tls.listen {
            let settings = edge::tls::listener_settings(&s.tls, &cfg.base_dir, resolver.clone())
                .map_err(ConfigError::one)?;
            service.add_tls_with_settings(addr, None, settings);
        }
        Some(resolver)
    };
    server.add_service(service);

    if let Some(admin_addr) = &s.admin_listen {
        let mut admin = Service::new(
            "gatehouse admin".to_string(),
            pingora::apps::http_app::HttpServer::new_app(admin::Admin {
                state: state.clone(),
                metrics: metrics.clone(),
                auth: auth_for_admin.clone(),
                cache,
                listening: std::sync::atomic::AtomicBool::new(false),
            }),
        );
        admin.add_tcp(admin_addr);
        server.add_service(admin);
    }
    server.add_service(background_service(
        "health checks",
        upstream::HealthService {
            state: state.clone(),
        },
    ));
    server.add_service(background_service("access audit", audit_writer));
    if let Some(exporter) = exporter {
        server.add_service(background_service(
            "trace export",
            telemetry::ExportService::new(exporter),
        ));
    }
    let reloader = Arc::new(reload::Reloader {
        state: state.clone(),
        metrics: metrics.clone(),
        redis: auth_for_admin.redis.clone(),
        tls: tls_resolver,
        cache,
        path: opts.config_path.clone(),
    });
    server.add_service(background_service(
        "config reload",
        reload::ReloadService {
            reloader: reloader.clone(),
            watch: s.watch_config.then_some(std::time::Duration::from_secs(1)),
        },
    ));
    Ok((
        server,
        Handles {
            state,
            metrics,
            reloader,
            tracer,
        },
    ))
}

fn prime(snapshot: &Snapshot) {
    if !snapshot.pools.values().any(|p| p.has_health_check()) {
        return;
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(snapshot.prime_health()),
        Err(e) => tracing::warn!(error = %e, "could not run the first health check"),
    }
}

/// Set when a stop or upgrade signal arrives: every response from then on closes its
/// connection, so keep-alive clients reconnect (to the new process) instead of racing the
/// idle close at the end of the drain.
pub static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// SIGTERM and SIGINT drain (within `server.grace_period`); SIGQUIT hands the listeners to
/// a new process started with `--upgrade`, then drains.
pub struct SignalWatch;

#[async_trait]
impl ShutdownSignalWatch for SignalWatch {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        let sig = tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); ShutdownSignal::GracefulTerminate }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); ShutdownSignal::GracefulTerminate }
            _ = quit.recv() => { tracing::info!("SIGQUIT: handing over listeners"); ShutdownSignal::GracefulUpgrade }
        };
        DRAINING.store(true, std::sync::atomic::Ordering::Release);
        sig
    }
}

/// Runs until a signal stops the server (used by `gatehouse run`).
pub fn run(config: Config, opts: RunOptions) -> Result<(), ConfigError> {
    let pid_file = config.server.pid_file.clone();
    let (server, _handles) = build_server(config, opts)?;
    // Pingora writes it only when daemonising; operators signal the pid in it.
    if !pid_file.is_empty() {
        if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
            tracing::warn!(path = %pid_file, error = %e, "cannot write the pid file");
        }
    }
    server.run(RunArgs {
        shutdown_signal: Box::new(SignalWatch),
    });
    Ok(())
}

/// A gateway running on its own thread; stopped (fast) when dropped. For tests and embedding.
pub struct RunningGateway {
    pub state: SharedState,
    pub metrics: Arc<metrics::Metrics>,
    pub reloader: Arc<reload::Reloader>,
    pub tracer: telemetry::Tracer,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct NotifyWatch(Arc<tokio::sync::Notify>);

#[async_trait]
impl ShutdownSignalWatch for NotifyWatch {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// Builds and starts a gateway on a new thread. Listening starts shortly after return;
/// callers poll the port.
pub fn spawn(config: Config) -> Result<RunningGateway, ConfigError> {
    let (server, handles) = build_server(config, RunOptions::default())?;
    let Handles {
        state,
        metrics,
        reloader,
        tracer,
    } = handles;
    let stop = Arc::new(tokio::sync::Notify::new());
    let watch = NotifyWatch(stop.clone());
    let thread = std::thread::Builder::new()
        .name("gatehouse".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(watch),
            })
        })
        .map_err(|e| ConfigError::one(format!("cannot start the server thread: {e}")))?;
    Ok(RunningGateway {
        state,
        metrics,
        reloader,
        tracer,
        stop,
        thread: Some(thread),
    })
}

impl RunningGateway {
    /// Applies a new configuration the way SIGHUP does (tests and embedding).
    pub fn reload(&self, config: Config) -> Result<reload::NeedsRestart, ConfigError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConfigError::one(format!("reload runtime: {e}")))?;
        rt.block_on(self.reloader.apply(config))
    }

    /// Stops the server and waits for its thread.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.notify_one();
            let _ = t.join();
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_runs_the_current_thread_scheduler_when_the_server_is_the_processs_only_one() {
        let mut s = config::ServerConfig {
            threads: 1,
            work_stealing: true,
            ..Default::default()
        };
        assert!(!server_conf(&s, true).work_stealing);
        // In-process servers (tests, embedding) keep what the configuration names: see
        // RunOptions::sole_server (tests/cache.rs starts a dozen gateways in one process).
        assert!(server_conf(&s, false).work_stealing);
        s.threads = 2;
        assert!(server_conf(&s, true).work_stealing);
        s.work_stealing = false;
        assert!(!server_conf(&s, true).work_stealing);
        assert!(!server_conf(&s, false).work_stealing);
        assert_eq!(server_conf(&s, true).threads, 2);
    }
}

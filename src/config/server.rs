//! `server:` — listeners, threads, shutdown, limits, compression, logging.

use serde::Deserialize;

use super::{cache, tls, Dur, OneOrMany, Size};

/// `server:` — listeners, threads, shutdown, limits, trusted proxies, logging.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public listen addresses (`host:port`). Default `0.0.0.0:8080`.
    pub listen: OneOrMany,
    /// Admin listener (health and, later, metrics). Default `127.0.0.1:9091`.
    pub admin_listen: Option<String>,
    /// Worker threads. Default 2.
    pub threads: usize,
    /// Let idle worker threads take tasks queued on busy ones (Tokio's multi-thread
    /// scheduler). `false` runs one single-threaded runtime per worker thread instead:
    /// cheaper scheduling, no balancing of connections between threads. Default true;
    /// with `threads: 1`, `gatehouse run` uses the single-threaded runtime (nothing to steal).
    pub work_stealing: bool,
    /// How long in-flight requests may drain after SIGTERM/SIGINT. Default 5s.
    pub grace_period: Dur,
    /// After the grace period, how long the runtimes get to stop. Default 1s.
    pub shutdown_timeout: Dur,
    /// Peers (CIDR or plain addresses) whose `X-Forwarded-For`/`-Proto` are believed.
    pub trusted_proxies: Vec<String>,
    pub limits: Limits,
    /// Bounds on HTTP/2 connections (offered on the TLS listener by ALPN).
    pub http2: Http2Config,
    pub log: LogConfig,
    /// Reload when the config file's modification time changes (besides SIGHUP). Default false.
    pub watch_config: bool,
    /// Response compression (gzip, br, zstd) for clients that accept it.
    pub compression: CompressionConfig,
    /// Optional HTTPS listener.
    pub tls: tls::TlsConfig,
    /// The response cache's store (routes opt in with `routes[i].cache`).
    pub cache: cache::CacheConfig,
    /// Unix socket through which a new process takes over the listeners (`run --upgrade`).
    pub upgrade_sock: String,
    /// Where the process id is written.
    pub pid_file: String,
    /// Accepted and ignored: the hand-written HTTP/1 lane it switched on was removed (it
    /// framed upstream answers with its own code and let an upstream's stray bytes reach the
    /// next client). Every request is served by Pingora's proxy; `true` is warned about.
    pub native_http1: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: OneOrMany(vec!["0.0.0.0:8080".into()]),
            admin_listen: Some("127.0.0.1:9091".into()),
            threads: 2,
            work_stealing: true,
            grace_period: Dur::secs(5),
            shutdown_timeout: Dur::secs(1),
            trusted_proxies: Vec::new(),
            limits: Limits::default(),
            http2: Http2Config::default(),
            log: LogConfig::default(),
            watch_config: false,
            compression: CompressionConfig::default(),
            tls: tls::TlsConfig::default(),
            cache: cache::CacheConfig::default(),
            upgrade_sock: "/tmp/gatehouse_upgrade.sock".into(),
            native_http1: false,
            pid_file: "/tmp/gatehouse.pid".into(),
        }
    }
}

/// `server.compression:`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    pub enabled: bool,
    /// Bodies smaller than this are sent as they are. Default 1KiB.
    pub min_size: Size,
    /// Compression level (1–9). Default 6.
    pub level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            min_size: Size(1024),
            level: 6,
        }
    }
}

/// `server.limits:` — what nginx enforces by default, with nginx-like defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request header block (request line + headers). Over it → 431. Default 32KiB.
    pub max_header_bytes: Size,
    /// Largest request body unless a route says otherwise. Over it → 413. Default 10MiB.
    pub max_body_bytes: Size,
    /// Total time a client has to send the whole header block. Default 10s.
    pub header_timeout: Dur,
    /// How long an idle keep-alive connection is kept open. Default 60s.
    pub keepalive_timeout: Dur,
    /// Requests served on one keep-alive connection before it is closed. Default 1000.
    pub keepalive_requests: u32,
    /// Open client connections in total; more are closed at once. 0: no limit. Default 10000.
    pub max_connections: u32,
    /// Open connections per client ip (the TCP peer); more are closed at once. 0: no limit.
    pub max_connections_per_ip: u32,
    /// Write buffer of each client connection, kept for its life: small answers leave in
    /// one send. 0 saves that memory per idle connection at one more send per answer.
    /// Default 1460B (one TCP segment).
    pub write_buffer: Size,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: Size(32 * 1024),
            max_body_bytes: Size(10 * 1024 * 1024),
            header_timeout: Dur::secs(10),
            keepalive_timeout: Dur::secs(60),
            keepalive_requests: 1000,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            write_buffer: Size(1460),
        }
    }
}

/// `server.http2:` — what one HTTP/2 connection may ask of the gateway. Pingora's HTTP/2
/// code (the `h2` crate) enforces each; these set its bounds, read for every new connection
/// (a reload applies to connections made after it).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// Streams a client may have open at once on one connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`); more are refused with `REFUSED_STREAM`. Default 100.
    pub max_concurrent_streams: u32,
    /// Largest decoded request header list (`SETTINGS_MAX_HEADER_LIST_SIZE`, names and
    /// values plus 32 bytes per field); a larger one is answered 431 and never proxied, and
    /// the number of CONTINUATION frames a header block may span is bounded by it. Default
    /// 32KiB, like `limits.max_header_bytes` for HTTP/1.
    pub max_header_list_size: Size,
    /// Streams a client may open and reset before the gateway has taken them up ("rapid
    /// reset", CVE-2023-44487); over it the connection ends with `GOAWAY`
    /// `ENHANCE_YOUR_CALM`. Default 20.
    pub max_pending_reset_streams: u32,
    /// Streams the gateway may reset for a client's protocol errors on one connection
    /// ("MadeYouReset", CVE-2025-8671); over it the connection ends with `GOAWAY`
    /// `ENHANCE_YOUR_CALM`. Default 200.
    pub max_error_reset_streams: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: 100,
            max_header_list_size: Size(32 * 1024),
            max_pending_reset_streams: 20,
            max_error_reset_streams: 200,
        }
    }
}

/// `server.log:` — level (overridden by `LOG_LEVEL` through the default file), format.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
    pub format: LogFormat,
    /// One line per request on target `access`. Default true.
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            access_log: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

//! The export side: finished spans wait in a bounded queue (filled by [`super::Tracer`]
//! without ever blocking), and one background task takes them in batches and POSTs each
//! batch as OTLP/HTTP protobuf to `{endpoint}/v1/traces`, through Pingora's HTTP client
//! (the gateway's one HTTP codec). A batch leaves when it is full or when its oldest span
//! has waited `batch_delay`; on shutdown what is queued is sent once more. A failed export
//! (refused, timed out, not 2xx) is not retried: its spans are counted as dropped and the
//! failure is logged at most once every 30 seconds.

use super::proto;
use super::settings::{Endpoint, Settings};
use super::span::SpanData;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use prometheus::IntCounter;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Largest export answer read (OTLP answers are a few bytes; a partial-success message at
/// most a few hundred).
const MAX_ANSWER: usize = 64 * 1024;
/// At most one export failure logged per this period.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// The counters of `gatehouse_trace_spans_exported_total` and
/// `gatehouse_trace_spans_dropped_total{reason}`.
#[derive(Clone)]
pub struct Counters {
    pub exported: IntCounter,
    pub dropped_queue_full: IntCounter,
    pub dropped_export_failed: IntCounter,
}

impl Counters {
    /// The gateway's series (registered in [`crate::metrics::Metrics`]).
    pub fn of(m: &crate::metrics::Metrics) -> Counters {
        Counters {
            exported: m.trace_spans_exported_total.clone(),
            dropped_queue_full: m
                .trace_spans_dropped_total
                .with_label_values(&["queue_full"]),
            dropped_export_failed: m
                .trace_spans_dropped_total
                .with_label_values(&["export_failed"]),
        }
    }
}

/// The export task's half: owns the receiving end of the queue.
pub struct Exporter {
    pub(super) rx: mpsc::Receiver<SpanData>,
    settings: Settings,
    counters: Counters,
    connector: Connector,
    last_warn: Option<Instant>,
    unlogged_failures: u64,
}

impl Exporter {
    pub(super) fn new(
        rx: mpsc::Receiver<SpanData>,
        settings: Settings,
        counters: Counters,
    ) -> Self {
        Exporter {
            rx,
            settings,
            counters,
            connector: Connector::new(None),
            last_warn: None,
            unlogged_failures: 0,
        }
    }

    /// What is queued, taken without being exported (benchmarks, tests).
    pub fn take_queued(&mut self) -> Vec<SpanData> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }

    /// Exports until `shutdown` completes (then sends what is queued, once) or every
    /// [`super::Tracer`] is gone.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let max = self.settings.batch_size;
        let mut batch: Vec<SpanData> = Vec::with_capacity(max);
        let mut oldest: Option<tokio::time::Instant> = None;
        loop {
            let due = oldest.map(|t| t + self.settings.batch_delay);
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    while let Ok(s) = self.rx.try_recv() {
                        batch.push(s);
                        if batch.len() >= max {
                            self.export(&mut batch).await;
                        }
                    }
                    self.export(&mut batch).await;
                    return;
                }
                got = self.rx.recv() => match got {
                    Some(s) => {
                        batch.push(s);
                        oldest.get_or_insert_with(tokio::time::Instant::now);
                        if batch.len() >= max {
                            self.export(&mut batch).await;
                            oldest = None;
                        }
                    }
                    None => {
                        self.export(&mut batch).await;
                        return;
                    }
                },
                _ = sleep_until(due), if due.is_some() => {
                    self.export(&mut batch).await;
                    oldest = None;
                }
            }
        }
    }

    /// Sends `batch` (emptied either way) and counts the outcome.
    async fn export(&mut self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let body =
            prost::Message::encode_to_vec(&proto::request(&self.settings.service_name, batch));
        batch.clear();
        let sent = tokio::time::timeout(self.settings.export_timeout, self.post(body)).await;
        match sent {
            Ok(Ok(())) => self.counters.exported.inc_by(n),
            Ok(Err(e)) => self.failed(n, &e),
            Err(_) => self.failed(n, "timed out"),
        }
    }

    fn failed(&mut self, spans: u64, error: &str) {
        self.counters.dropped_export_failed.inc_by(spans);
        let now = Instant::now();
        if self
            .last_warn
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            self.unlogged_failures += 1;
            return;
        }
        let ep = &self.settings.endpoint;
        tracing::warn!(
            endpoint = %format_args!("{}://{}{}", if ep.https { "https" } else { "http" }, ep.authority(), ep.path),
            error,
            spans,
            failures_not_logged = self.unlogged_failures,
            "trace export failed; spans dropped"
        );
        self.last_warn = Some(now);
        self.unlogged_failures = 0;
    }

    /// One POST of `body`; Ok on a 2xx answer.
    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let ep: &Endpoint = &self.settings.endpoint;
        let addr = tokio::net::lookup_host((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", ep.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", ep.host))?;
        let timeout = self.settings.export_timeout;
        let mut peer = HttpPeer::new(addr, ep.https, ep.host.clone());
        peer.options.connection_timeout = Some(timeout);
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(30));
        let e = |e: Box<pingora::Error>| e.to_string();
        let (mut session, _reused) = self.connector.get_http_session(&peer).await.map_err(e)?;
        let mut req = RequestHeader::build("POST", ep.path.as_bytes(), Some(4)).map_err(e)?;
        req.insert_header("host", ep.authority()).map_err(e)?;
        req.insert_header("content-type", "application/x-protobuf")
            .map_err(e)?;
        req.insert_header("content-length", body.len().to_string())
            .map_err(e)?;
        req.insert_header(
            "user-agent",
            concat!("gatehouse/", env!("CARGO_PKG_VERSION")),
        )
        .map_err(e)?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(e)?;
        session
            .write_request_body(Bytes::from(body), true)
            .await
            .map_err(e)?;
        session.finish_request_body().await.map_err(e)?;
        session.read_response_header().await.map_err(e)?;
        let status = session.response_header().map_or(0, |r| r.status.as_u16());
        let mut read = 0;
        while let Some(chunk) = session.read_response_body().await.map_err(e)? {
            read += chunk.len();
            if read > MAX_ANSWER {
                return Err(format!("status {status}, answer over {MAX_ANSWER} bytes"));
            }
        }
        self.connector
            .release_http_session(session, &peer, peer.options.idle_timeout)
            .await;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The exporter as a Pingora background service: it runs until the server shuts down, then
/// sends what is queued.
pub struct ExportService(std::sync::Mutex<Option<Exporter>>);

impl ExportService {
    pub fn new(exporter: Exporter) -> Self {
        ExportService(std::sync::Mutex::new(Some(exporter)))
    }
}

#[async_trait]
impl BackgroundService for ExportService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let exporter = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(exporter) = exporter {
            exporter
                .run(async move {
                    let _ = shutdown.changed().await;
                })
                .await;
        }
    }
}

//! The audit's queue and its writer.
//!
//! [`AuditSink::record`] hands a row to a bounded queue with `try_send`: a request never
//! waits for the audit. One writer task per process ([`AuditService`], a background service)
//! takes rows as they come, up to `audit.batch_size` per transaction, gathering for at most
//! `audit.flush_interval` after the first; a failed batch is tried again (three attempts in
//! all, with backoff) while new rows keep queueing, then dropped and counted
//! (`gatehouse_audit_dropped_total{reason="database"}`); a full queue drops the new row
//! (`reason="overflow"`).
//!
//! The sink is *degraded* while its last write (or probe) failed or its queue is full; routes
//! and pages with `audit: required` answer 503 then (`crate::plan`), so they are never served
//! unaudited. While degraded and idle, the writer probes the database every flush interval
//! (a rolled-back append), so the flag clears when the database is back even if only
//! `required` routes (which are refusing) would write. The writer also purges rows past
//! `audit.retention`: at start and every `audit.purge_interval`.

use super::{now_ms, store, Entry};
use crate::auth::users::UserDb;
use crate::config::AuditConfig;
use crate::metrics::Metrics;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;

/// Attempts at writing one batch before it is dropped.
const ATTEMPTS: u32 = 3;
/// Backoff before the second attempt; doubled before each later one.
const BACKOFF: Duration = Duration::from_millis(100);

/// The request path's handle on the audit.
pub struct AuditSink {
    tx: mpsc::Sender<Entry>,
    /// Taken once by the writer.
    rx: Mutex<Option<mpsc::Receiver<Entry>>>,
    /// The last write or probe failed.
    write_failed: AtomicBool,
    /// Rows were dropped for a full queue since the last write (logged once per episode).
    overflowing: AtomicBool,
    metrics: Arc<Metrics>,
    overflow: IntCounter,
    database: IntCounter,
}

impl AuditSink {
    /// A sink whose queue holds `audit.queue_capacity` rows.
    pub fn new(cfg: &AuditConfig, metrics: Arc<Metrics>) -> Arc<AuditSink> {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let overflow = metrics.audit_dropped_total.with_label_values(&["overflow"]);
        let database = metrics.audit_dropped_total.with_label_values(&["database"]);
        Arc::new(AuditSink {
            tx,
            rx: Mutex::new(Some(rx)),
            write_failed: AtomicBool::new(false),
            overflowing: AtomicBool::new(false),
            metrics,
            overflow,
            database,
        })
    }

    /// The audit cannot take rows now: its last write failed or its queue is full.
    pub fn degraded(&self) -> bool {
        self.write_failed.load(Ordering::Acquire) || self.tx.capacity() == 0
    }

    /// Queues a row; never waits. A full queue (or a writer that is gone) drops it, counted.
    pub fn record(&self, entry: Entry) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(e)) => {
                self.overflow.inc();
                self.metrics.audit_degraded.set(1);
                if !self.overflowing.swap(true, Ordering::AcqRel) {
                    tracing::error!(request_id = %e.request_id, "access audit queue full; rows are dropped (counted in gatehouse_audit_dropped_total)");
                }
            }
            Err(TrySendError::Closed(e)) => {
                self.database.inc();
                tracing::warn!(request_id = %e.request_id, "access audit writer stopped; row dropped");
            }
        }
    }

    fn set_failed(&self, failed: bool) {
        if !failed {
            self.overflowing.store(false, Ordering::Release);
        }
        let was = self.write_failed.swap(failed, Ordering::AcqRel);
        if was != failed {
            if failed {
                tracing::error!(
                    "access audit: cannot write to the database; audit: required routes answer 503"
                );
            } else {
                tracing::info!("access audit: writing again");
            }
        }
        self.metrics.audit_degraded.set(i64::from(self.degraded()));
    }
}

/// The writer: one per process, a Pingora background service.
pub struct AuditService {
    pub sink: Arc<AuditSink>,
    pub db: UserDb,
    pub config: AuditConfig,
}

impl AuditService {
    /// Writes `batch` (emptied either way), trying [`ATTEMPTS`] times.
    async fn write(&self, batch: &mut Vec<Entry>) {
        if batch.is_empty() {
            return;
        }
        let mut wait = BACKOFF;
        for attempt in 1..=ATTEMPTS {
            match store::append(&self.db, batch).await {
                Ok(_) => {
                    self.sink
                        .metrics
                        .audit_written_total
                        .inc_by(batch.len() as u64);
                    batch.clear();
                    self.sink.set_failed(false);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, rows = batch.len(), "access audit write failed");
                    self.sink.set_failed(true);
                    if attempt < ATTEMPTS {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        }
        self.sink.database.inc_by(batch.len() as u64);
        batch.clear();
    }

    async fn purge(&self) {
        let retention = i64::try_from(self.config.retention.0.as_millis()).unwrap_or(i64::MAX);
        match store::purge(&self.db, now_ms().saturating_sub(retention)).await {
            Ok(p) if p.rows > 0 => {
                tracing::info!(
                    rows = p.rows,
                    anchor_id = p.anchor_id,
                    "access audit: rows past the retention purged"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "access audit purge failed"),
        }
    }
}

#[async_trait::async_trait]
impl BackgroundService for AuditService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = self.sink.rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let size = self.config.batch_size.max(1);
        let gather = self.config.flush_interval.0;
        let mut next_purge = Instant::now();
        let mut batch = Vec::with_capacity(size);
        loop {
            if Instant::now() >= next_purge {
                self.purge().await;
                next_purge = Instant::now() + self.config.purge_interval.0;
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                n = rx.recv_many(&mut batch, size) => {
                    if n == 0 {
                        break;
                    }
                }
                _ = tokio::time::sleep(gather) => {
                    // Idle: a degraded sink checks whether the database is back.
                    if self.sink.write_failed.load(Ordering::Acquire) {
                        match store::probe(&self.db).await {
                            Ok(()) => self.sink.set_failed(false),
                            Err(e) => tracing::debug!(error = %e, "access audit probe failed"),
                        }
                    }
                    continue;
                }
            }
            // Gather more for up to `flush_interval`, until the batch is full.
            let deadline = Instant::now() + gather;
            while batch.len() < size {
                let room = size - batch.len();
                tokio::select! {
                    n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.sink.metrics.audit_queue_depth.set(rx.len() as i64);
            self.write(&mut batch).await;
            self.sink.metrics.audit_queue_depth.set(rx.len() as i64);
        }
        // Stopping: what is queued is written before the process ends.
        rx.close();
        while let Some(e) = rx.recv().await {
            batch.push(e);
            if batch.len() >= size {
                self.write(&mut batch).await;
            }
        }
        self.write(&mut batch).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u16) -> Entry {
        Entry {
            at_ms: now_ms(),
            request_id: format!("r{n}"),
            user_id: None,
            role: None,
            client_ip: None,
            method: "GET".into(),
            route: "r".into(),
            path: "/".into(),
            status: 200,
            upstream: None,
        }
    }

    fn sink(capacity: usize) -> (Arc<AuditSink>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let cfg = AuditConfig {
            queue_capacity: capacity,
            ..AuditConfig::default()
        };
        (AuditSink::new(&cfg, metrics.clone()), metrics)
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting_and_is_degraded() {
        let (sink, metrics) = sink(2);
        sink.record(entry(1));
        assert!(!sink.degraded());
        sink.record(entry(2));
        assert!(sink.degraded(), "full");
        sink.record(entry(3));
        let overflow = metrics.audit_dropped_total.with_label_values(&["overflow"]);
        assert_eq!(overflow.get(), 1);
        assert_eq!(metrics.audit_degraded.get(), 1);
    }

    #[tokio::test]
    async fn a_failed_batch_is_retried_then_dropped_and_a_good_write_clears_the_flag() {
        let (sink, metrics) = sink(10);
        let db = UserDb::connect(Some("sqlite::memory:")).await.expect("db");
        let service = AuditService {
            sink: sink.clone(),
            db: db.clone(),
            config: AuditConfig::default(),
        };
        // No tables yet: every attempt fails.
        let mut batch = vec![entry(1), entry(2)];
        service.write(&mut batch).await;
        assert!(batch.is_empty());
        assert!(sink.degraded());
        let database = metrics.audit_dropped_total.with_label_values(&["database"]);
        assert_eq!(database.get(), 2);
        assert!(store::probe(&db).await.is_err());
        db.migrate().await.expect("migrate");
        assert!(store::probe(&db).await.is_ok());
        let mut batch = vec![entry(3)];
        service.write(&mut batch).await;
        assert!(!sink.degraded());
        assert_eq!(metrics.audit_written_total.get(), 1);
        assert_eq!(store::head(&db).await.expect("head").last_id, 1);
    }
}

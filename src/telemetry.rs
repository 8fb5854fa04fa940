//! OpenTelemetry tracing: W3C Trace Context in and out, spans, sampling, and export over
//! OTLP/HTTP (protobuf) to a collector (Jaeger, the OpenTelemetry Collector, Tempo …).
//!
//! It owns the tracer ([`Tracer`]), the span handle the request path holds ([`Span`]), the
//! context it hands to work done elsewhere ([`TraceContext`]), and the export pipeline
//! (`export`). It does not decide where in a request spans begin and end: the proxy does,
//! with the calls of `semconv` (server span, attempts, internal and database spans).
//!
//! Off — no endpoint configured — the tracer is `None` inside: every call returns at once,
//! allocates nothing and parses no header, and the gateway leaves `traceparent` alone.
//! On, each request's server span continues the caller's trace (or starts one), the sampler
//! decides once whether the trace is recorded, and every span below follows; unrecorded
//! spans still get ids so the `traceparent` sent upstream is right. A finished recorded span
//! goes into a bounded queue with `try_send`: recording never waits, and a full queue drops
//! the span and counts it.
//!
//! Layer: above `config` (its `telemetry:` section and endpoint URL) and the `metrics`
//! registry (the export counters); below the lanes, which call it; must not import `plan`,
//! `proxy`, `auth`, `pages`, `state`.

pub mod context;
pub mod export;
pub mod proto;
pub mod sampler;
mod semconv;
pub mod settings;
pub mod span;

pub use context::{Incoming, SpanContext, SpanId, TraceId, TraceParent};
pub use export::{Counters, ExportService, Exporter};
pub use sampler::Sampler;
pub use settings::{Settings, TelemetryConfig};
pub use span::{SpanData, SpanKind, Status, Value};

use std::borrow::Cow;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The process's tracer. Cheap to clone (one `Arc`, or nothing when off).
#[derive(Clone, Default)]
pub struct Tracer(Option<Arc<Inner>>);

struct Inner {
    sampler: Sampler,
    queue: mpsc::Sender<SpanData>,
    dropped_queue_full: prometheus::IntCounter,
}

impl Tracer {
    /// Tracing off: every call is a no-op.
    pub const fn disabled() -> Tracer {
        Tracer(None)
    }

    /// A tracer recording into a queue of `settings.queue_size` spans, and the exporter that
    /// empties it (run it: [`Exporter::run`], or [`ExportService`] in a Pingora server).
    pub fn new(settings: Settings, counters: Counters) -> (Tracer, Exporter) {
        let (tx, rx) = mpsc::channel(settings.queue_size.max(1));
        let inner = Inner {
            sampler: settings.sampler,
            queue: tx,
            dropped_queue_full: counters.dropped_queue_full.clone(),
        };
        (
            Tracer(Some(Arc::new(inner))),
            Exporter::new(rx, settings, counters),
        )
    }

    /// The tracer `telemetry:` and the `OTEL_*` variables of `env` describe, counting into
    /// `metrics`; `(disabled, None)` when nothing is configured. Errors name the variable or
    /// key at fault.
    pub fn from_config(
        cfg: &TelemetryConfig,
        metrics: &crate::metrics::Metrics,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Tracer, Option<Exporter>), crate::ConfigError> {
        match settings::resolve(cfg, env) {
            Ok(None) => Ok((Tracer::disabled(), None)),
            Ok(Some(s)) => {
                let (t, e) = Tracer::new(s, Counters::of(metrics));
                Ok((t, Some(e)))
            }
            Err(problems) => Err(crate::ConfigError { problems }),
        }
    }

    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// A root span (no parent in this process) continuing `incoming` if given, else starting
    /// a trace. For the request's server span use [`Tracer::start_server`], which also reads
    /// the headers.
    pub fn start(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        incoming: Option<Incoming>,
    ) -> Span {
        let Some(inner) = &self.0 else {
            return Span::none();
        };
        let (trace_id, parent, tracestate) = match incoming {
            Some(i) => (
                i.parent.trace_id,
                Some(i.parent),
                i.tracestate.map(Arc::<str>::from),
            ),
            None => (TraceId::random(), None, None),
        };
        let sampled = inner.sampler.should_sample(parent.as_ref(), &trace_id);
        let ctx = SpanContext {
            trace_id,
            span_id: SpanId::random(),
            sampled,
        };
        Span::begin(
            inner,
            ctx,
            parent.map(|p| p.span_id),
            tracestate,
            name,
            kind,
        )
    }
}

/// A span being timed. `Span::none()` (tracing off) does nothing and is one null pointer.
/// A span ends — and, when sampled, is queued for export — when [`Span::end`] is called or
/// when it is dropped.
#[derive(Default)]
pub struct Span(Option<Box<Live>>);

struct Live {
    tracer: Arc<Inner>,
    ctx: SpanContext,
    tracestate: Option<Arc<str>>,
    /// `Some` when the trace is sampled (recorded).
    data: Option<SpanData>,
}

impl Span {
    /// The no-op span.
    #[inline]
    pub const fn none() -> Span {
        Span(None)
    }

    fn begin(
        tracer: &Arc<Inner>,
        ctx: SpanContext,
        parent: Option<SpanId>,
        tracestate: Option<Arc<str>>,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
    ) -> Span {
        let data = ctx.sampled.then(|| SpanData {
            name: name.into(),
            kind,
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_span_id: parent,
            trace_state: tracestate.clone(),
            flags: 1,
            start_unix_nanos: span::now_unix_nanos(),
            end_unix_nanos: 0,
            status: Status::Unset,
            // A server span has about 11 attributes, an attempt 9: one allocation.
            attributes: Vec::with_capacity(12),
            dropped_attributes: 0,
        });
        Span(Some(Box::new(Live {
            tracer: tracer.clone(),
            ctx,
            tracestate,
            data,
        })))
    }

    /// A child span of this one (same trace, this span as parent, same sampling).
    #[inline]
    pub fn child(&self, name: impl Into<Cow<'static, str>>, kind: SpanKind) -> Span {
        match &self.0 {
            None => Span::none(),
            Some(l) => child_of(&l.tracer, &l.ctx, &l.tracestate, name, kind),
        }
    }

    /// A handle to start children of this span elsewhere (another task, another module):
    /// owned, `Send`, cheap to clone.
    pub fn context(&self) -> TraceContext {
        TraceContext(self.0.as_ref().map(|l| {
            Arc::new(Parent {
                tracer: l.tracer.clone(),
                ctx: l.ctx,
                tracestate: l.tracestate.clone(),
            })
        }))
    }

    /// Tracing is on for this request (the span has ids, recorded or not).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }

    /// The span is recorded: worth computing attributes for.
    #[inline]
    pub fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|l| l.data.is_some())
    }

    #[inline]
    pub fn span_context(&self) -> Option<SpanContext> {
        self.0.as_ref().map(|l| l.ctx)
    }

    #[inline]
    pub fn trace_id(&self) -> Option<TraceId> {
        self.0.as_ref().map(|l| l.ctx.trace_id)
    }

    /// The trace id for a log line: 32 hex digits, or `-` when tracing is off.
    #[inline]
    pub fn log_trace_id(&self) -> LogTraceId {
        LogTraceId(self.trace_id())
    }

    /// The `traceparent` naming this span as the parent, for a request the gateway sends on
    /// this span's behalf. `None` when tracing is off (then the client's header, if any, is
    /// passed through untouched).
    #[inline]
    pub fn traceparent(&self) -> Option<TraceParent> {
        self.0.as_ref().map(|l| TraceParent::new(&l.ctx))
    }

    /// The caller's `tracestate`, to send along with [`Span::traceparent`].
    #[inline]
    pub fn tracestate(&self) -> Option<&str> {
        self.0.as_ref().and_then(|l| l.tracestate.as_deref())
    }

    #[inline]
    fn data(&mut self) -> Option<&mut SpanData> {
        self.0.as_mut().and_then(|l| l.data.as_mut())
    }

    /// Renames the span (e.g. `GET /api/v1/doctors` once the route is known).
    #[inline]
    pub fn set_name(&mut self, name: impl Into<Cow<'static, str>>) {
        if let Some(d) = self.data() {
            d.name = name.into();
        }
    }

    /// A string attribute (copied only when the span is recorded).
    #[inline]
    pub fn set_str(&mut self, key: &'static str, value: &str) {
        if let Some(d) = self.data() {
            d.set(key, Value::Str(Cow::Owned(span::cut(value).to_string())));
        }
    }

    /// A string attribute known at compile time (never copied).
    #[inline]
    pub fn set_static(&mut self, key: &'static str, value: &'static str) {
        if let Some(d) = self.data() {
            d.set(key, Value::Str(Cow::Borrowed(value)));
        }
    }

    #[inline]
    pub fn set_int(&mut self, key: &'static str, value: i64) {
        if let Some(d) = self.data() {
            d.set(key, Value::Int(value));
        }
    }

    #[inline]
    pub fn set_bool(&mut self, key: &'static str, value: bool) {
        if let Some(d) = self.data() {
            d.set(key, Value::Bool(value));
        }
    }

    /// Marks the span failed: status error with `message`, and `error.type` = `error_type`.
    #[inline]
    pub fn set_error(&mut self, error_type: &str, message: &str) {
        if let Some(d) = self.data() {
            d.status = Status::Error(span::cut(message).to_string());
            d.set(
                span::ERROR_TYPE,
                Value::Str(Cow::Owned(span::cut(error_type).to_string())),
            );
        }
    }

    /// Ends the span now (dropping it does the same).
    #[inline]
    pub fn end(self) {}
}

impl Drop for Span {
    // Inline: with tracing off a span is a null pointer and dropping it a test of it.
    #[inline]
    fn drop(&mut self) {
        if let Some(live) = self.0.take() {
            finish(*live);
        }
    }
}

/// Ends a live span: a recorded one is queued for export, never waiting.
fn finish(live: Live) {
    let Live { tracer, data, .. } = live;
    if let Some(mut d) = data {
        d.end_unix_nanos = span::now_unix_nanos();
        if tracer.queue.try_send(d).is_err() {
            // Full, or the exporter has stopped (shutdown).
            tracer.dropped_queue_full.inc();
        }
    }
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Span(off)"),
            Some(l) => write!(
                f,
                "Span({} {} sampled={})",
                l.ctx.trace_id, l.ctx.span_id, l.ctx.sampled
            ),
        }
    }
}

/// A span's context with the tracer: what children are started from. Owned, `Send`, cheap
/// to clone; [`TraceContext::none`] (the default) when tracing is off.
#[derive(Clone, Default)]
pub struct TraceContext(Option<Arc<Parent>>);

struct Parent {
    tracer: Arc<Inner>,
    ctx: SpanContext,
    tracestate: Option<Arc<str>>,
}

impl TraceContext {
    pub const fn none() -> TraceContext {
        TraceContext(None)
    }

    /// A child of the span this context is of.
    pub fn child(&self, name: impl Into<Cow<'static, str>>, kind: SpanKind) -> Span {
        match &self.0 {
            None => Span::none(),
            Some(p) => child_of(&p.tracer, &p.ctx, &p.tracestate, name, kind),
        }
    }

    #[inline]
    pub fn span_context(&self) -> Option<SpanContext> {
        self.0.as_ref().map(|p| p.ctx)
    }
}

fn child_of(
    tracer: &Arc<Inner>,
    parent: &SpanContext,
    tracestate: &Option<Arc<str>>,
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
) -> Span {
    let ctx = SpanContext {
        trace_id: parent.trace_id,
        span_id: SpanId::random(),
        sampled: parent.sampled,
    };
    Span::begin(
        tracer,
        ctx,
        Some(parent.span_id),
        tracestate.clone(),
        name,
        kind,
    )
}

/// A trace id for a log field: `-` when there is none.
pub struct LogTraceId(Option<TraceId>);

impl std::fmt::Display for LogTraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(id) => f.write_str(id.hex().as_str()),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(sampler: Sampler, queue: usize) -> (Tracer, Exporter, Counters) {
        let reg = crate::metrics::Metrics::new();
        let counters = Counters::of(&reg);
        let settings = Settings {
            endpoint: settings::Endpoint::parse_base("http://127.0.0.1:9").expect("url"),
            service_name: "t".into(),
            sampler,
            queue_size: queue,
            batch_size: queue,
            batch_delay: std::time::Duration::from_secs(1),
            export_timeout: std::time::Duration::from_secs(1),
        };
        let (t, e) = Tracer::new(settings, counters.clone());
        (t, e, counters)
    }

    #[test]
    fn a_disabled_tracer_makes_spans_that_do_nothing() {
        let t = Tracer::disabled();
        let mut s = t.start_server(&http::Request::new(()).into_parts().0);
        s.set_str(span::URL_PATH, "/x");
        assert!(!s.is_active() && !s.is_recording());
        assert!(s.traceparent().is_none() && s.trace_id().is_none());
        assert_eq!(s.log_trace_id().to_string(), "-");
        assert!(!s.child("c", SpanKind::Client).is_active());
        assert!(!s.context().child("c", SpanKind::Client).is_active());
        assert_eq!(std::mem::size_of::<Span>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn unsampled_traces_get_ids_for_propagation_but_record_nothing() {
        let (t, mut e, c) = tracer(Sampler::AlwaysOff, 8);
        let s = t.start("root", SpanKind::Server, None);
        assert!(s.is_active() && !s.is_recording());
        let tp = s.traceparent().expect("propagated");
        assert!(tp.as_str().ends_with("-00"), "{tp}");
        let child = s.child("c", SpanKind::Client);
        assert_eq!(child.trace_id(), s.trace_id());
        drop(child);
        drop(s);
        assert!(e.rx.try_recv().is_err(), "nothing queued");
        assert_eq!(c.dropped_queue_full.get(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (t, mut e, c) = tracer(Sampler::AlwaysOn, 2);
        for _ in 0..5 {
            t.start("s", SpanKind::Internal, None).end();
        }
        assert_eq!(c.dropped_queue_full.get(), 3);
        let mut queued = 0;
        while e.rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 2);
    }

    #[test]
    fn children_share_the_trace_and_name_their_parent() {
        let (t, mut e, _) = tracer(Sampler::AlwaysOn, 8);
        let root = t.start("root", SpanKind::Server, None);
        let ctx = root.context();
        let a = root.child("a", SpanKind::Client);
        let b = ctx.child("b", SpanKind::Internal);
        let (a_id, b_id) = (a.span_context(), b.span_context());
        drop((a, b));
        let root_ctx = root.span_context().expect("ctx");
        drop(root);
        let spans: Vec<SpanData> = std::iter::from_fn(|| e.rx.try_recv().ok()).collect();
        assert_eq!(spans.len(), 3);
        for s in &spans[..2] {
            assert_eq!(s.trace_id, root_ctx.trace_id);
            assert_eq!(s.parent_span_id, Some(root_ctx.span_id));
        }
        assert_eq!(Some(spans[0].span_id), a_id.map(|c| c.span_id));
        assert_eq!(Some(spans[1].span_id), b_id.map(|c| c.span_id));
        assert_eq!(spans[2].parent_span_id, None);
        assert!(spans[2].end_unix_nanos >= spans[2].start_unix_nanos);
    }
}

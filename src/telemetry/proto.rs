//! The OTLP messages the trace exporter sends, written by hand for `prost` (no protoc, no
//! build script). Field numbers and types are those of opentelemetry-proto:
//! `collector/trace/v1/trace_service.proto` (ExportTraceServiceRequest),
//! `trace/v1/trace.proto` (ResourceSpans, ScopeSpans, Span, Status),
//! `common/v1/common.proto` (KeyValue, AnyValue, InstrumentationScope) and
//! `resource/v1/resource.proto` (Resource). Fields the gateway never sets (events, links,
//! schema URLs, array and map values) are left out: a decoder skips what it does not know,
//! and leaving them out writes the same bytes as leaving them empty.
//!
//! Public so tests (an in-process OTLP receiver) decode with the very same definitions.

use super::span::{SpanData, SpanKind, Status, Value};

/// `opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// `opentelemetry.proto.trace.v1.ResourceSpans`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

/// `opentelemetry.proto.resource.v1.Resource`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "2")]
    pub dropped_attributes_count: u32,
}

/// `opentelemetry.proto.trace.v1.ScopeSpans`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

/// `opentelemetry.proto.common.v1.InstrumentationScope`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `opentelemetry.proto.trace.v1.Span` (without events and links).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Span {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub trace_state: String,
    /// Empty for a root span.
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    /// `Span.SpanKind`: see [`KIND_INTERNAL`], [`KIND_SERVER`], [`KIND_CLIENT`].
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "10")]
    pub dropped_attributes_count: u32,
    #[prost(message, optional, tag = "15")]
    pub status: Option<SpanStatus>,
    /// The W3C trace flags in the low 8 bits.
    #[prost(fixed32, tag = "16")]
    pub flags: u32,
}

/// `Span.SpanKind.SPAN_KIND_INTERNAL`.
pub const KIND_INTERNAL: i32 = 1;
/// `Span.SpanKind.SPAN_KIND_SERVER`.
pub const KIND_SERVER: i32 = 2;
/// `Span.SpanKind.SPAN_KIND_CLIENT`.
pub const KIND_CLIENT: i32 = 3;

/// `opentelemetry.proto.trace.v1.Status`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpanStatus {
    #[prost(string, tag = "2")]
    pub message: String,
    /// `Status.StatusCode`: 0 unset, 1 ok, 2 error.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

/// `Status.StatusCode.STATUS_CODE_ERROR`.
pub const STATUS_ERROR: i32 = 2;

/// `opentelemetry.proto.common.v1.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `opentelemetry.proto.common.v1.AnyValue` (scalar values only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4, 7")]
    pub value: Option<any_value::Value>,
}

pub mod any_value {
    /// `AnyValue.value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        StringValue(String),
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        #[prost(int64, tag = "3")]
        IntValue(i64),
        #[prost(double, tag = "4")]
        DoubleValue(f64),
        #[prost(bytes = "vec", tag = "7")]
        BytesValue(Vec<u8>),
    }
}

impl KeyValue {
    pub fn string(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_string())),
            }),
        }
    }
}

impl AnyValue {
    /// The string value, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Some(any_value::Value::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    /// The integer value, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match &self.value {
            Some(any_value::Value::IntValue(i)) => Some(*i),
            _ => None,
        }
    }
}

impl Span {
    /// The value of attribute `key`, if set.
    pub fn attribute(&self, key: &str) -> Option<&AnyValue> {
        self.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
    }
}

/// One export request: `spans` under one resource (`service.name` and the SDK's
/// attributes) and one instrumentation scope (`gatehouse`, its version).
pub fn request(service_name: &str, spans: &[SpanData]) -> ExportTraceServiceRequest {
    let version = env!("CARGO_PKG_VERSION");
    let resource = Resource {
        attributes: vec![
            KeyValue::string("service.name", service_name),
            KeyValue::string("service.version", version),
            KeyValue::string("telemetry.sdk.name", "gatehouse"),
            KeyValue::string("telemetry.sdk.language", "rust"),
            KeyValue::string("telemetry.sdk.version", version),
        ],
        dropped_attributes_count: 0,
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "gatehouse".into(),
                    version: version.into(),
                }),
                spans: spans.iter().map(span).collect(),
            }],
        }],
    }
}

fn span(s: &SpanData) -> Span {
    Span {
        trace_id: s.trace_id.0.to_vec(),
        span_id: s.span_id.0.to_vec(),
        trace_state: s.trace_state.as_deref().unwrap_or_default().to_string(),
        parent_span_id: s.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        name: s.name.to_string(),
        kind: match s.kind {
            SpanKind::Server => KIND_SERVER,
            SpanKind::Client => KIND_CLIENT,
            SpanKind::Internal => KIND_INTERNAL,
        },
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos.max(s.start_unix_nanos),
        attributes: s
            .attributes
            .iter()
            .map(|(k, v)| KeyValue {
                key: (*k).to_string(),
                value: Some(AnyValue {
                    value: Some(match v {
                        Value::Str(s) => any_value::Value::StringValue(s.to_string()),
                        Value::Int(i) => any_value::Value::IntValue(*i),
                        Value::Bool(b) => any_value::Value::BoolValue(*b),
                    }),
                }),
            })
            .collect(),
        dropped_attributes_count: s.dropped_attributes,
        status: match &s.status {
            Status::Unset => None,
            Status::Error(m) => Some(SpanStatus {
                message: m.clone(),
                code: STATUS_ERROR,
            }),
        },
        flags: u32::from(s.flags),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::context::{SpanId, TraceId};
    use prost::Message as _;

    /// Bytes written by hand from the `.proto` field numbers and wire types: a Span with
    /// trace_id (1, bytes), span_id (2), parent_span_id (4), name (5, string), kind (6,
    /// varint), start/end (7/8, fixed64), an int attribute (9 → KeyValue{1: key, 2:
    /// AnyValue{3: varint}}), status (15 → {2: message, 3: code}) and flags (16, fixed32).
    #[test]
    fn the_wire_bytes_use_opentelemetry_protos_field_numbers_and_types() {
        let data = SpanData {
            name: "GET".into(),
            kind: SpanKind::Client,
            trace_id: TraceId([0x11; 16]),
            span_id: SpanId([0x22; 8]),
            parent_span_id: Some(SpanId([0x33; 8])),
            trace_state: None,
            flags: 1,
            start_unix_nanos: 5,
            end_unix_nanos: 6,
            status: Status::Error("x".into()),
            attributes: vec![("a", Value::Int(7))],
            dropped_attributes: 0,
        };
        let got = span(&data).encode_to_vec();
        let mut want = vec![0x0a, 16];
        want.extend([0x11; 16]);
        want.extend([0x12, 8]);
        want.extend([0x22; 8]);
        want.extend([0x22, 8]);
        want.extend([0x33; 8]);
        want.extend([0x2a, 3, b'G', b'E', b'T']);
        want.extend([0x30, 3]);
        want.extend([0x39, 5, 0, 0, 0, 0, 0, 0, 0]);
        want.extend([0x41, 6, 0, 0, 0, 0, 0, 0, 0]);
        // attributes (9, len): KeyValue { key "a", value AnyValue { int_value 7 } }
        want.extend([0x4a, 7, 0x0a, 1, b'a', 0x12, 2, 0x18, 7]);
        // status (15, len): { message "x", code 2 }
        want.extend([0x7a, 5, 0x12, 1, b'x', 0x18, 2]);
        // flags (16, fixed32): tag (16 << 3 | 5) = 133 = 0x85 0x01
        want.extend([0x85, 0x01, 1, 0, 0, 0]);
        assert_eq!(got, want);
    }

    #[test]
    fn a_request_decodes_back_to_its_spans_under_the_service_resource() {
        let data = SpanData {
            name: "GET /api".into(),
            kind: SpanKind::Server,
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent_span_id: None,
            trace_state: Some("k=v".into()),
            flags: 1,
            start_unix_nanos: 10,
            end_unix_nanos: 20,
            status: Status::Unset,
            attributes: vec![("url.path", Value::Str("/api".into()))],
            dropped_attributes: 0,
        };
        let bytes = request("svc", &[data]).encode_to_vec();
        let back = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decodes");
        let rs = &back.resource_spans[0];
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .and_then(AnyValue::as_str);
        assert_eq!(service, Some("svc"));
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.kind, KIND_SERVER);
        assert!(s.parent_span_id.is_empty());
        assert_eq!(s.trace_state, "k=v");
        assert_eq!(
            s.attribute("url.path").and_then(AnyValue::as_str),
            Some("/api")
        );
        assert_eq!(s.status, None);
    }
}

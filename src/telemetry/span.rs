//! The span model: a finished span as it waits in the export queue ([`SpanData`]), and the
//! attribute names of the OpenTelemetry HTTP and database semantic conventions the gateway
//! uses (plus its own `gatehouse.*` ones).

use super::context::{SpanId, TraceId};
use std::borrow::Cow;
use std::sync::Arc;

/// `http.request.method`: `GET`, `POST`, … (`_OTHER` for a method outside the usual set).
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
/// `url.path`: the request's path, without the query.
pub const URL_PATH: &str = "url.path";
/// `url.scheme`: `http` or `https`, as the client sent it.
pub const URL_SCHEME: &str = "url.scheme";
/// `http.route`: the matched route (the gateway's route prefix).
pub const HTTP_ROUTE: &str = "http.route";
/// `http.response.status_code`.
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
/// `http.request.resend_count`: on an attempt, how many were sent before it (absent on the
/// first).
pub const HTTP_REQUEST_RESEND_COUNT: &str = "http.request.resend_count";
/// `server.address`: the Host the client asked for (server span) or the backend's address
/// (client span).
pub const SERVER_ADDRESS: &str = "server.address";
/// `server.port`.
pub const SERVER_PORT: &str = "server.port";
/// `network.peer.address`: the address at the other end of the connection.
pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
/// `network.protocol.version`: `1.1`, `2`.
pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
/// `client.address`: the client, after trusted proxies' forwarding headers.
pub const CLIENT_ADDRESS: &str = "client.address";
/// `user_agent.original`.
pub const USER_AGENT_ORIGINAL: &str = "user_agent.original";
/// `error.type`: the class of error that ended the operation (a status code, a timeout …).
pub const ERROR_TYPE: &str = "error.type";
/// `db.system`: `redis`, `postgresql`, `sqlite`, or `memory` for the in-process store.
pub const DB_SYSTEM: &str = "db.system";
/// `db.operation.name`: `GET`, `SET`, `SELECT` …
pub const DB_OPERATION_NAME: &str = "db.operation.name";
/// `gatehouse.backend`: the backend an attempt went to (`ip:port`).
pub const GATEHOUSE_BACKEND: &str = "gatehouse.backend";
/// `gatehouse.upstream`: the pool an attempt or data source went to.
pub const GATEHOUSE_UPSTREAM: &str = "gatehouse.upstream";
/// `gatehouse.attempt.outcome`: `ok`, `failure_status`, `connect_error`, `timeout`, `reset`
/// (the outcome labels of `gatehouse_upstream_requests_total`).
pub const GATEHOUSE_ATTEMPT_OUTCOME: &str = "gatehouse.attempt.outcome";
/// `gatehouse.request_id`: the request's `X-Request-Id`.
pub const GATEHOUSE_REQUEST_ID: &str = "gatehouse.request_id";
/// `gatehouse.data_source`: a page data source's name.
pub const GATEHOUSE_DATA_SOURCE: &str = "gatehouse.data_source";

/// Most attributes one span keeps; more are counted as dropped.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest string attribute value or status message kept (longer ones are cut, on a
/// character boundary).
pub const MAX_VALUE_LEN: usize = 1024;

/// The OpenTelemetry span kinds the gateway makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A request the gateway serves.
    Server,
    /// A request the gateway sends (an upstream attempt, a data source fetch, a store call).
    Client,
    /// Work inside the gateway (auth check, page render).
    Internal,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

/// A span's status: unset (the default, also for success, as the HTTP conventions ask) or
/// an error with a message.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Status {
    #[default]
    Unset,
    Error(String),
}

/// A span as recorded: what the exporter sends.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// The caller's `tracestate`, for every span of the trace.
    pub trace_state: Option<Arc<str>>,
    /// The W3C trace flags (bit 0: sampled, always set on a recorded span).
    pub flags: u8,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub status: Status,
    pub attributes: Vec<(&'static str, Value)>,
    pub dropped_attributes: u32,
}

impl SpanData {
    /// Sets `key` (replacing an earlier value of it), within [`MAX_ATTRIBUTES`].
    pub fn set(&mut self, key: &'static str, value: Value) {
        let value = match value {
            Value::Str(s) if s.len() > MAX_VALUE_LEN => Value::Str(Cow::Owned(cut(&s).into())),
            v => v,
        };
        if let Some(slot) = self.attributes.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else if self.attributes.len() < MAX_ATTRIBUTES {
            self.attributes.push((key, value));
        } else {
            self.dropped_attributes += 1;
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// `s` cut to at most [`MAX_VALUE_LEN`] bytes on a character boundary.
pub fn cut(s: &str) -> &str {
    if s.len() <= MAX_VALUE_LEN {
        return s;
    }
    let mut end = MAX_VALUE_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Unix time now, in nanoseconds (0 if the clock is before 1970).
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> SpanData {
        SpanData {
            name: "x".into(),
            kind: SpanKind::Internal,
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent_span_id: None,
            trace_state: None,
            flags: 1,
            start_unix_nanos: 0,
            end_unix_nanos: 0,
            status: Status::Unset,
            attributes: Vec::new(),
            dropped_attributes: 0,
        }
    }

    #[test]
    fn attributes_replace_their_earlier_value_and_past_the_cap_are_counted_as_dropped() {
        let mut d = data();
        d.set(HTTP_RESPONSE_STATUS_CODE, Value::Int(502));
        d.set(HTTP_RESPONSE_STATUS_CODE, Value::Int(200));
        assert_eq!(d.get(HTTP_RESPONSE_STATUS_CODE), Some(&Value::Int(200)));
        assert_eq!(d.attributes.len(), 1);
        const KEYS: [&str; 40] = [
            "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "k10", "k11", "k12", "k13",
            "k14", "k15", "k16", "k17", "k18", "k19", "k20", "k21", "k22", "k23", "k24", "k25",
            "k26", "k27", "k28", "k29", "k30", "k31", "k32", "k33", "k34", "k35", "k36", "k37",
            "k38", "k39",
        ];
        for k in KEYS {
            d.set(k, Value::Bool(true));
        }
        assert_eq!(d.attributes.len(), MAX_ATTRIBUTES);
        assert_eq!(d.dropped_attributes, 41 - MAX_ATTRIBUTES as u32);
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let mut d = data();
        let long = "é".repeat(MAX_VALUE_LEN);
        d.set(USER_AGENT_ORIGINAL, Value::Str(long.into()));
        match d.get(USER_AGENT_ORIGINAL) {
            Some(Value::Str(s)) => {
                assert!(s.len() <= MAX_VALUE_LEN && s.len() >= MAX_VALUE_LEN - 1)
            }
            other => panic!("{other:?}"),
        }
    }
}

//! `telemetry:` — the file format of OpenTelemetry tracing's settings, and the OTLP endpoint
//! URL they name (`crate::telemetry` resolves them, with the `OTEL_*` variables over them, into
//! the tracer's settings).
//!
//! Layer: `config` (imports only `config::units`).

use super::units::Dur;
use serde::Deserialize;
use std::time::Duration;

/// The sampler names of `OTEL_TRACES_SAMPLER` that gatehouse implements (empty:
/// `parentbased_always_on`); `telemetry::sampler` maps each to its sampler.
pub const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// `telemetry:` — OpenTelemetry tracing, exported over OTLP/HTTP (protobuf). Off unless an
/// endpoint is set here or in `OTEL_EXPORTER_OTLP_ENDPOINT`; the `OTEL_*` variables, when
/// set and not empty, override these keys.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP base URL (`http://jaeger:4318`); spans go to `{endpoint}/v1/traces`.
    /// Empty (the default): tracing is off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    pub endpoint: String,
    /// `service.name` of the exported spans. Default `gatehouse`.
    pub service_name: String,
    /// One of the OpenTelemetry sampler names; default `parentbased_always_on`.
    pub sampler: String,
    /// The ratio of the `traceidratio` samplers (0 to 1; default 1).
    pub sampler_arg: Option<f64>,
    /// Finished spans waiting for export; when full, new ones are dropped and counted.
    pub queue_size: usize,
    /// Most spans in one export request.
    pub batch_size: usize,
    /// Longest a finished span waits before its batch is sent.
    pub batch_delay: Dur,
    /// Bound on one export request (connect, send, answer).
    pub export_timeout: Dur,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            endpoint: String::new(),
            service_name: "gatehouse".into(),
            sampler: String::new(),
            sampler_arg: None,
            queue_size: 2048,
            batch_size: 512,
            batch_delay: Dur::secs(2),
            export_timeout: Dur::secs(10),
        }
    }
}

impl TelemetryConfig {
    /// Problems of the file's own values, each with its path under `at` (the environment is
    /// checked when the tracer is built: [`resolve`]).
    pub fn validate(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        if !self.endpoint.trim().is_empty() {
            if let Err(e) = Endpoint::parse_base(&self.endpoint) {
                p.push(format!("{at}.endpoint: {e}"));
            }
        }
        if self.service_name.trim().is_empty() {
            p.push(format!("{at}.service_name: must not be empty"));
        }
        if let Some(r) = self.sampler_arg.filter(|r| !(0.0..=1.0).contains(r)) {
            p.push(format!("{at}.sampler_arg: {r} is not a ratio from 0 to 1"));
        }
        let sampler = self.sampler.trim();
        if !sampler.is_empty() && !SAMPLERS.contains(&sampler) {
            p.push(format!(
                "{at}.sampler: unknown sampler {sampler:?} (one of {})",
                SAMPLERS.join(", ")
            ));
        }
        if !(1..=1_000_000).contains(&self.queue_size) {
            p.push(format!("{at}.queue_size: must be between 1 and 1000000"));
        }
        if self.batch_size == 0 || self.batch_size > self.queue_size.max(1) {
            p.push(format!(
                "{at}.batch_size: must be between 1 and queue_size ({})",
                self.queue_size
            ));
        }
        if self.batch_delay.0.is_zero() || self.batch_delay.0 > Duration::from_secs(60) {
            p.push(format!("{at}.batch_delay: must be between 1ms and 60s"));
        }
        if self.export_timeout.0.is_zero() || self.export_timeout.0 > Duration::from_secs(60) {
            p.push(format!("{at}.export_timeout: must be between 1ms and 60s"));
        }
        p
    }
}

/// Where spans are POSTed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// The request target, e.g. `/v1/traces`.
    pub path: String,
}

impl Endpoint {
    /// A base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`, `telemetry.endpoint`): the traces path
    /// `v1/traces` is appended to its path.
    pub fn parse_base(url: &str) -> Result<Endpoint, String> {
        let mut e = Endpoint::parse_full(url)?;
        let base = e.path.trim_end_matches('/');
        e.path = format!("{base}/v1/traces");
        Ok(e)
    }

    /// A signal URL (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), used as it is.
    pub fn parse_full(url: &str) -> Result<Endpoint, String> {
        let url = url.trim();
        let (https, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
            Some(_) => return Err(format!("{url:?}: no query or fragment allowed")),
            None => (rest, "/"),
        };
        if path.contains(['?', '#']) {
            return Err(format!("{url:?}: no query or fragment allowed"));
        }
        if authority.contains('@') {
            return Err(format!("{url:?}: credentials in the URL are not supported"));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p, url)?,
                None if after.is_empty() => default_port,
                None => return Err(format!("{url:?}: bad port")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p, url)?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Endpoint {
            https,
            host,
            port,
            path: path.to_string(),
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn parse_port(p: &str, url: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{url:?}: bad port {p:?}")),
    }
}

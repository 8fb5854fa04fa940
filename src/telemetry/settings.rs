//! `telemetry:` in `gateway.yaml` and the standard OpenTelemetry environment variables that
//! override it, resolved into the [`Settings`] the tracer is built with — or into nothing
//! (tracing off) when no endpoint is named anywhere.

use super::sampler::Sampler;
use crate::config::Dur;
use serde::Deserialize;
use std::time::Duration;

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
        if let Err(e @ super::sampler::SamplerError::Unknown(_)) =
            Sampler::from_name(&self.sampler, None)
        {
            p.push(format!("{at}.sampler: {e}"));
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

/// Everything the tracer and its exporter need, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub endpoint: Endpoint,
    pub service_name: String,
    pub sampler: Sampler,
    pub queue_size: usize,
    pub batch_size: usize,
    pub batch_delay: Duration,
    pub export_timeout: Duration,
}

/// `cfg` with the environment over it: `None` when tracing is off (no endpoint anywhere, or
/// `OTEL_SDK_DISABLED=true`). Errors name the variable or the config key they come from.
///
/// Variables read: `OTEL_SDK_DISABLED`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is),
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended), `OTEL_EXPORTER_OTLP_PROTOCOL`
/// (`http/protobuf` only), `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
/// `OTEL_TRACES_SAMPLER_ARG`.
pub fn resolve(
    cfg: &TelemetryConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Settings>, Vec<String>> {
    let var = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let mut problems = Vec::new();
    let endpoint = if let Some(v) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Some(
            Endpoint::parse_full(&v)
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {e}")),
        )
    } else if let Some(v) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Some(Endpoint::parse_base(&v).map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}")))
    } else if !cfg.endpoint.trim().is_empty() {
        Some(Endpoint::parse_base(&cfg.endpoint).map_err(|e| format!("telemetry.endpoint: {e}")))
    } else {
        None
    };
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    if let Some(p) =
        var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
    {
        if p != "http/protobuf" {
            problems.push(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL: {p:?} is not supported (gatehouse exports http/protobuf)"
            ));
        }
    }
    let service_name =
        var("OTEL_SERVICE_NAME").unwrap_or_else(|| cfg.service_name.trim().to_string());
    let (name, name_from) = match var("OTEL_TRACES_SAMPLER") {
        Some(v) => (v, "OTEL_TRACES_SAMPLER"),
        None => (cfg.sampler.clone(), "telemetry.sampler"),
    };
    let (ratio, ratio_from) = match var("OTEL_TRACES_SAMPLER_ARG") {
        Some(v) => match Sampler::parse_ratio(&v) {
            Ok(r) => (r, "OTEL_TRACES_SAMPLER_ARG"),
            Err(e) => {
                problems.push(format!("OTEL_TRACES_SAMPLER_ARG: {e}"));
                (None, "OTEL_TRACES_SAMPLER_ARG")
            }
        },
        None => (cfg.sampler_arg, "telemetry.sampler_arg"),
    };
    let sampler = match Sampler::from_name(&name, ratio) {
        Ok(s) => Some(s),
        Err(e @ super::sampler::SamplerError::Unknown(_)) => {
            problems.push(format!("{name_from}: {e}"));
            None
        }
        Err(e) => {
            problems.push(format!("{ratio_from}: {e}"));
            None
        }
    };
    let endpoint = endpoint.map_err(|e| problems.push(e)).ok();
    match (endpoint, sampler) {
        (Some(endpoint), Some(sampler)) if problems.is_empty() => Ok(Some(Settings {
            endpoint,
            service_name,
            sampler,
            queue_size: cfg.queue_size.max(1),
            batch_size: cfg.batch_size.clamp(1, cfg.queue_size.max(1)),
            batch_delay: cfg.batch_delay.0,
            export_timeout: cfg.export_timeout.0,
        })),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::sampler::Root;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn nothing_configured_is_off() {
        let cfg = TelemetryConfig::default();
        assert_eq!(resolve(&cfg, env(&[])), Ok(None));
        assert_eq!(
            resolve(&cfg, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            Ok(None)
        );
        assert!(cfg.validate("telemetry").is_empty());
    }

    #[test]
    fn the_standard_variables_configure_it_and_override_the_file() {
        let cfg = TelemetryConfig {
            endpoint: "http://file:4318".into(),
            sampler: "always_off".into(),
            ..Default::default()
        };
        let s = resolve(
            &cfg,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318/"),
                ("OTEL_SERVICE_NAME", "edge"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ]),
        )
        .expect("valid")
        .expect("on");
        assert_eq!(s.endpoint.host, "jaeger");
        assert_eq!(s.endpoint.port, 4318);
        assert_eq!(s.endpoint.path, "/v1/traces");
        assert_eq!(s.service_name, "edge");
        assert_eq!(s.sampler, Sampler::ParentBased(Root::TraceIdRatio(0.5)));

        let s = resolve(&cfg, env(&[])).expect("valid").expect("on");
        assert_eq!(s.endpoint.host, "file");
        assert_eq!(s.service_name, "gatehouse");
        assert_eq!(s.sampler, Sampler::AlwaysOff);

        let s = resolve(
            &cfg,
            env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://otel.example/custom",
            )]),
        )
        .expect("valid")
        .expect("on");
        assert!(s.endpoint.https);
        assert_eq!(
            (s.endpoint.port, s.endpoint.path.as_str()),
            (443, "/custom")
        );
        assert_eq!(
            resolve(&cfg, env(&[("OTEL_SDK_DISABLED", "true")])),
            Ok(None)
        );
    }

    #[test]
    fn bad_values_are_errors_naming_their_variable_or_key() {
        let on = TelemetryConfig {
            endpoint: "http://127.0.0.1:4318".into(),
            ..Default::default()
        };
        let err =
            |pairs: &[(&str, &str)]| resolve(&on, env(pairs)).expect_err("invalid").join("\n");
        let e = err(&[("OTEL_TRACES_SAMPLER", "sometimes")]);
        assert!(
            e.starts_with("OTEL_TRACES_SAMPLER: unknown sampler \"sometimes\""),
            "{e}"
        );
        let e = err(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]);
        assert!(e.starts_with("OTEL_TRACES_SAMPLER_ARG:"), "{e}");
        let e = err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4318")]);
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT:"), "{e}");
        let e = err(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:"), "{e}");
        let file = TelemetryConfig {
            endpoint: "ftp://x".into(),
            sampler: "nope".into(),
            batch_size: 5000,
            sampler_arg: Some(3.0),
            ..Default::default()
        };
        let p = file.validate("telemetry").join("\n");
        assert!(p.contains("telemetry.endpoint:"), "{p}");
        assert!(p.contains("telemetry.sampler_arg: 3 is not a ratio"), "{p}");
        assert!(p.contains("telemetry.sampler: unknown sampler"), "{p}");
        assert!(p.contains("telemetry.batch_size:"), "{p}");
        let e = resolve(&file, env(&[])).expect_err("invalid").join("\n");
        assert!(
            e.contains("telemetry.endpoint:") && e.contains("telemetry.sampler:"),
            "{e}"
        );
    }

    #[test]
    fn endpoints_are_parsed_with_their_default_ports_and_paths() {
        let e = Endpoint::parse_base("http://collector").expect("valid");
        assert_eq!((e.port, e.path.as_str()), (80, "/v1/traces"));
        assert_eq!(e.authority(), "collector");
        let e = Endpoint::parse_base("http://[::1]:4318/otlp/").expect("valid");
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("::1", 4318, "/otlp/v1/traces")
        );
        assert_eq!(e.authority(), "[::1]:4318");
        assert!(Endpoint::parse_base("http://:4318").is_err());
        assert!(Endpoint::parse_base("http://h:0").is_err());
        assert!(Endpoint::parse_base("http://h:x").is_err());
        assert!(Endpoint::parse_base("http://u:p@h").is_err());
        assert!(Endpoint::parse_base("http://h/?q").is_err());
    }
}

//! `telemetry:` in `gateway.yaml` and the standard OpenTelemetry environment variables that
//! override it, resolved into the [`Settings`] the tracer is built with — or into nothing
//! (tracing off) when no endpoint is named anywhere.

use super::sampler::Sampler;
pub use crate::config::telemetry::{Endpoint, TelemetryConfig};
use std::time::Duration;

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

//! `gateway.yaml`: load → interpolate env → parse (strict) → validate (all problems, with paths).
//!
//! This module owns the file format only. It does not build runtime tables (that is
//! [`crate::state`]) and never touches sockets, so `gatehouse check` can run it anywhere.
//! Every struct denies unknown fields: a typo is an error, not a silently ignored key.
//!
//! Layer: the bottom: the file format. Uses only the leaf `routing` (a path's normal form) and its
//! own children. Must not import `state`, `cache`, `upstream`, `metrics`, `auth`, `pages`,
//! `errors`, `plan`, `proxy`, `edge::tls` or `edge::listener`. (The config shapes of the edge
//! policies are still defined in `edge::cors`, `edge::ip_rules`, `edge::header_rules` and
//! `edge::ratelimit`, leaves that import nothing back; they belong here next.)

pub mod audit;
mod auth;
pub mod cache;
mod interpolate;
pub mod role;
mod route;
mod server;
pub mod telemetry;
pub mod tls;
pub mod units;
mod upstream;
pub mod validate;
mod web;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

pub use audit::{AuditConfig, AuditMode};
pub use auth::{
    AuthConfig, AuthMode, CookieConfig, JwtConfig, LoginConfig, MfaConfig, PasswordsConfig,
    RegistrationConfig, RoleConfig, RoleSessionsConfig, SameSite, SecureMode, SessionsConfig,
    StoreFailure, VerifyKey,
};
pub use route::{Defaults, FallbackConfig, RouteConfig};
pub use server::{CompressionConfig, Http2Config, Limits, LogConfig, LogFormat, ServerConfig};
pub use units::{Dur, Size};
pub use upstream::{
    BackendEntry, BackendList, Balance, CircuitBreakerConfig, HealthCheckConfig, HealthCheckKind,
    RetryBudgetConfig, RetryConfig, RetryMethods, Timeouts, UpstreamConfig, UpstreamTlsConfig,
};
pub use validate::{parse_backend_url, parse_cidr, BackendUrl, HashKeySpec};
pub use web::{DataSourceConfig, PageConfig, SiteConfig, WebConfig};

/// A config that failed to load, with every problem found, each prefixed by its path.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    pub fn one(problem: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![problem.into()],
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Upstream pools by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes, matched by longest path prefix on whole segments.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Settings every pool and route inherits unless it sets its own.
    #[serde(default)]
    pub defaults: Defaults,
    /// Users, tokens, sessions, cookies, login protection.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Server-rendered pages, error pages and static assets.
    #[serde(default)]
    pub web: WebConfig,
    /// OpenTelemetry tracing (off unless an endpoint is configured).
    #[serde(default)]
    pub telemetry: telemetry::TelemetryConfig,
    /// The access audit: retention, queue, batches (routes and pages opt in with `audit`).
    #[serde(default)]
    pub audit: AuditConfig,
    /// Folder relative paths in the file are resolved against (the config file's folder).
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
}

/// A string or a list of strings; a single string may hold a comma-separated list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, a comma-separated string, or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(split_list(v)))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<OneOrMany, E> {
                Ok(OneOrMany(Vec::new()))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<OneOrMany, E> {
                Ok(OneOrMany(Vec::new()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    out.push(item);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `""` (e.g. an unset `${VAR:-}`) is the same as an absent key.
fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<String>::deserialize(d)?;
    Ok(v.filter(|s| !s.trim().is_empty()))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

impl Config {
    /// Reads `path`, expands environment variables and parses and validates it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(format!("{}: cannot read: {e}", path.display())))?;
        let mut c = Config::from_yaml_str(&text)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            c.base_dir = dir.to_path_buf();
        }
        Ok(c)
    }

    /// A path from the file, resolved against the config file's folder.
    pub fn resolve(&self, p: &str) -> std::path::PathBuf {
        let p = std::path::Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Same as [`Config::load`] for text already in memory (tests, reload).
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_str_with_env(text, |k| std::env::var(k).ok())
    }

    pub fn from_yaml_str_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let expanded =
            interpolate::expand(text, env).map_err(|problems| ConfigError { problems })?;
        let config: Config = if expanded.trim().is_empty() {
            serde_yaml::from_str("{}")
        } else {
            serde_yaml::from_str(&expanded)
        }
        .map_err(|e| ConfigError::one(describe_yaml_error(&e)))?;
        let problems = validate::validate(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// serde_yaml puts the path first (`routes[0]: unknown field ...`); keep it, and make the
/// location read as a location.
fn describe_yaml_error(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) if !msg.contains("at line") => {
            format!("{msg} (line {}, column {})", loc.line(), loc.column())
        }
        _ => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str_with_env(text, |_| None)
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").expect("defaults");
        assert_eq!(c.server, ServerConfig::default());
        assert!(c.routes.is_empty());
    }

    #[test]
    fn unknown_keys_are_errors_with_their_path() {
        let err = parse("routes:\n  - prefix: /a\n    upstream: a\n    upstrem: b\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("routes[0]"), "{text}");
        assert!(text.contains("unknown field `upstrem`"), "{text}");
    }

    #[test]
    fn backends_accept_comma_lists_and_weighted_entries() {
        let c = parse(
            "upstreams:\n  a:\n    backends: http://127.0.0.1:1, http://127.0.0.1:2\n  b:\n    backends:\n      - http://127.0.0.1:3\n      - {url: http://127.0.0.1:4, weight: 3}\n",
        )
        .expect("valid");
        assert_eq!(c.upstreams["a"].backends.0.len(), 2);
        assert_eq!(c.upstreams["b"].backends.0[1].weight, 3);
    }

    #[test]
    fn units_are_parsed_into_real_types() {
        let c = parse("server:\n  grace_period: 250ms\n  limits:\n    max_body_bytes: 1MiB\n")
            .expect("valid");
        assert_eq!(c.server.grace_period, Dur::millis(250));
        assert_eq!(c.server.limits.max_body_bytes, Size(1024 * 1024));
        let err = parse("server:\n  grace_period: soon\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.grace_period") && err.contains("invalid duration"),
            "{err}"
        );
    }
}

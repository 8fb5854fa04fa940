//! Semantic checks of a parsed [`Config`]: every problem is collected, each with its path
//! (`routes[2].upstream: unknown upstream "billing"`), so one `gatehouse check` run shows all.

use super::{Balance, Config, HealthCheckKind, RetryConfig, Timeouts};
use std::collections::{BTreeSet, HashMap};

mod auth;
mod upstream;
mod web;

use auth::check_auth;
use upstream::{check_retry, check_timeouts, check_upstream_tls, valid_server_name};
pub use upstream::{parse_backend_url, BackendUrl, HashKeySpec};
use web::check_web;

pub fn validate(c: &Config) -> Vec<String> {
    let mut p = Vec::new();
    let s = &c.server;
    if s.listen.0.is_empty() {
        p.push("server.listen: at least one address is required".into());
    }
    for (i, addr) in s.listen.0.iter().enumerate() {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "server.listen[{i}]: {addr:?} is not an address like 0.0.0.0:8080"
            ));
        }
    }
    if let Some(admin) = &s.admin_listen {
        if admin.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "server.admin_listen: {admin:?} is not an address like 127.0.0.1:9091"
            ));
        } else if s.listen.0.iter().any(|l| l == admin) {
            p.push(format!(
                "server.admin_listen: {admin:?} is also a public listen address"
            ));
        }
    }
    if s.threads == 0 || s.threads > 1024 {
        p.push(format!(
            "server.threads: {} is out of range (1..=1024)",
            s.threads
        ));
    }
    for (i, t) in s.trusted_proxies.iter().enumerate() {
        if parse_cidr(t).is_none() {
            p.push(format!(
                "server.trusted_proxies[{i}]: {t:?} is not an IP address or CIDR"
            ));
        }
    }
    let l = &s.limits;
    let h2 = &s.http2;
    if h2.max_concurrent_streams == 0 || h2.max_concurrent_streams > 10_000 {
        p.push("server.http2.max_concurrent_streams: must be between 1 and 10000".into());
    }
    if h2.max_header_list_size.0 < 1024 || h2.max_header_list_size.0 > 1024 * 1024 {
        p.push("server.http2.max_header_list_size: must be between 1KiB and 1MiB".into());
    }
    if h2.max_pending_reset_streams == 0 || h2.max_pending_reset_streams > 10_000 {
        p.push("server.http2.max_pending_reset_streams: must be between 1 and 10000".into());
    }
    if h2.max_error_reset_streams == 0 || h2.max_error_reset_streams > 100_000 {
        p.push("server.http2.max_error_reset_streams: must be between 1 and 100000".into());
    }
    if l.max_header_bytes.0 < 1024 || l.max_header_bytes.0 > 1024 * 1024 {
        p.push("server.limits.max_header_bytes: must be between 1KiB and 1MiB".into());
    }
    if l.write_buffer.0 > 64 * 1024 {
        p.push("server.limits.write_buffer: must be at most 64KiB".into());
    }
    if l.header_timeout.0.is_zero() {
        p.push("server.limits.header_timeout: must be greater than 0".into());
    }
    if l.keepalive_timeout.0.is_zero() {
        p.push("server.limits.keepalive_timeout: must be greater than 0".into());
    }
    p.extend(s.cache.validate("server.cache"));
    p.extend(c.telemetry.validate("telemetry"));
    p.extend(c.audit.validate("audit"));
    if !(1..=9).contains(&s.compression.level) {
        p.push("server.compression.level: must be between 1 and 9".into());
    }
    if s.grace_period.0.as_secs() > 3600 {
        p.push("server.grace_period: must be at most 1h".into());
    }
    let level = s.log.level.trim();
    let known = ["off", "error", "warn", "info", "debug", "trace"];
    if !level.contains(['=', ',']) && !known.iter().any(|k| k.eq_ignore_ascii_case(level)) {
        p.push(format!(
            "server.log.level: {level:?} is not one of off, error, warn, info, debug, trace (or a filter such as info,gatehouse=debug)"
        ));
    } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
        p.push(format!(
            "server.log.level: {level:?} is not a log level or filter: {e}"
        ));
    }

    for (name, u) in &c.upstreams {
        let at = format!("upstreams.{name}");
        if !valid_label(name) {
            p.push(format!("{at}: name must be letters, digits, '_' or '-'"));
        }
        if u.backends.0.is_empty() {
            p.push(format!("{at}.backends: at least one backend is required"));
        }
        let mut seen = BTreeSet::new();
        for (i, b) in u.backends.0.iter().enumerate() {
            match parse_backend_url(&b.url) {
                Ok(url) => {
                    if url.tls && u.tls.server_name.is_none() && !valid_server_name(&url.host) {
                        p.push(format!(
                            "{at}.backends[{i}]: {:?} is not a name TLS can verify; set {at}.tls.server_name",
                            url.host
                        ));
                    }
                    if !seen.insert((url.host, url.port)) {
                        p.push(format!("{at}.backends[{i}]: {:?} is listed twice", b.url));
                    }
                }
                Err(e) => p.push(format!("{at}.backends[{i}]: {e}")),
            }
            if b.weight == 0 || b.weight > 1000 {
                p.push(format!(
                    "{at}.backends[{i}].weight: must be between 1 and 1000"
                ));
            }
        }
        match (u.balance, &u.hash_key) {
            (Balance::ConsistentHash, Some(k)) if HashKeySpec::parse(k).is_none() => p.push(
                format!("{at}.hash_key: {k:?} must be client_ip, header:NAME or cookie:NAME"),
            ),
            (Balance::RoundRobin | Balance::Random, Some(_)) => p.push(format!(
                "{at}.hash_key: only used with balance: consistent_hash"
            )),
            _ => {}
        }
        if let Some(h) = &u.host {
            if h.is_empty()
                || h.bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                p.push(format!("{at}.host: {h:?} is not a valid Host value"));
            }
        }
        if let Some(hc) = &u.health_check {
            if hc.kind == HealthCheckKind::Http && !hc.path.starts_with('/') {
                p.push(format!("{at}.health_check.path: must start with '/'"));
            }
            if hc.expected_status.is_empty() {
                p.push(format!(
                    "{at}.health_check.expected_status: at least one status"
                ));
            }
            for (i, st) in hc.expected_status.iter().enumerate() {
                if !(100..=599).contains(st) {
                    p.push(format!(
                        "{at}.health_check.expected_status[{i}]: {st} is not an HTTP status"
                    ));
                }
            }
            if hc.interval.0.as_millis() < 100 {
                p.push(format!(
                    "{at}.health_check.interval: must be at least 100ms"
                ));
            }
            if hc.timeout.0.is_zero() {
                p.push(format!("{at}.health_check.timeout: must be greater than 0"));
            }
            if hc.rise == 0 || hc.fall == 0 {
                p.push(format!(
                    "{at}.health_check: rise and fall must be at least 1"
                ));
            }
        }
        check_upstream_tls(&mut p, &at, &u.tls);
        check_timeouts(&mut p, &format!("{at}.timeouts"), &u.timeouts);
        check_retry(&mut p, &format!("{at}.retry"), &u.retry);
        let b = &u.retry_budget;
        if !(0.0..=10.0).contains(&b.ratio) {
            p.push(format!("{at}.retry_budget.ratio: must be between 0 and 10"));
        }
        if b.window.0.as_secs() < 1 {
            p.push(format!("{at}.retry_budget.window: must be at least 1s"));
        }
        let cb = &u.circuit_breaker;
        if cb.consecutive_failures == 0 || cb.min_requests == 0 || cb.half_open_probes == 0 {
            p.push(format!(
                "{at}.circuit_breaker: consecutive_failures, min_requests and half_open_probes must be at least 1"
            ));
        }
        if !(1..=100).contains(&cb.failure_rate) {
            p.push(format!(
                "{at}.circuit_breaker.failure_rate: a percentage from 1 to 100"
            ));
        }
        if cb.window.0.as_millis() < 100
            || cb.cooldown.0.is_zero()
            || cb.max_cooldown.0 < cb.cooldown.0
        {
            p.push(format!(
                "{at}.circuit_breaker: window ≥ 100ms, cooldown > 0 and max_cooldown ≥ cooldown are required"
            ));
        }
        for (i, st) in cb.failure_statuses.iter().enumerate() {
            if !(100..=599).contains(st) {
                p.push(format!(
                    "{at}.circuit_breaker.failure_statuses[{i}]: {st} is not an HTTP status"
                ));
            }
        }
    }
    check_retry(&mut p, "defaults.retry", &c.defaults.retry);
    p.extend(c.defaults.cors.validate("defaults.cors"));
    check_auth(&mut p, &c.auth);
    check_web(&mut p, c);

    let mut keys: HashMap<(String, Vec<String>, Vec<String>), usize> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, r) in c.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if let Err(e) = check_prefix(&r.prefix) {
            p.push(format!("{at}.prefix: {e}"));
        }
        if !c.upstreams.contains_key(&r.upstream) {
            p.push(format!("{at}.upstream: unknown upstream {:?}", r.upstream));
        }
        if let Some(name) = &r.name {
            if !valid_label(name) {
                p.push(format!(
                    "{at}.name: must be letters, digits, '_', '-' or '.'"
                ));
            }
            if let Some(first) = names.insert(name, i) {
                p.push(format!(
                    "{at}.name: {name:?} is already used by routes[{first}]"
                ));
            }
        }
        let mut methods: Vec<String> = Vec::new();
        if let Some(ms) = &r.methods {
            if ms.is_empty() {
                p.push(format!(
                    "{at}.methods: empty list (omit the key to allow every method)"
                ));
            }
            for (j, m) in ms.iter().enumerate() {
                let up = m.to_ascii_uppercase();
                if http::Method::from_bytes(up.as_bytes()).is_err() {
                    p.push(format!("{at}.methods[{j}]: {m:?} is not an HTTP method"));
                } else if up == "TRACE" || up == "CONNECT" {
                    p.push(format!("{at}.methods[{j}]: {up} is never proxied"));
                }
                methods.push(up);
            }
        }
        methods.sort();
        let mut hosts: Vec<String> = Vec::new();
        if let Some(hs) = &r.hosts {
            for (j, h) in hs.iter().enumerate() {
                if h.is_empty() || h.contains([':', '/', ' ']) {
                    p.push(format!(
                        "{at}.hosts[{j}]: {h:?} must be a host name without port"
                    ));
                }
                hosts.push(h.to_ascii_lowercase());
            }
        }
        hosts.sort();
        if let Some(first) = keys.insert((r.prefix.clone(), methods, hosts), i) {
            p.push(format!(
                "{at}: same prefix, methods and hosts as routes[{first}]; it could never match"
            ));
        }
        if r.strip_prefix && r.rewrite_prefix.is_some() {
            p.push(format!(
                "{at}: strip_prefix and rewrite_prefix are exclusive"
            ));
        }
        if let Some(rw) = &r.rewrite_prefix {
            if let Err(e) = check_prefix(rw) {
                p.push(format!("{at}.rewrite_prefix: {e}"));
            }
        }
        if let Some(cache) = &r.cache {
            p.extend(cache.validate(&format!("{at}.cache")));
        }
        for (key, v) in [
            ("max_in_flight", r.max_in_flight),
            ("max_in_flight_per_client", r.max_in_flight_per_client),
        ] {
            if v == Some(0) {
                p.push(format!(
                    "{at}.{key}: must be greater than 0 (omit it for no limit)"
                ));
            }
        }
        if matches!(r.max_body_bytes, Some(s) if s.0 == 0) {
            p.push(format!("{at}.max_body_bytes: must be greater than 0"));
        }
        check_timeouts(&mut p, &format!("{at}.timeouts"), &r.timeouts);
        check_retry(&mut p, &format!("{at}.retry"), &r.retry);
        if let Some(cors) = &r.cors {
            p.extend(cors.validate(&format!("{at}.cors")));
        }
        p.extend(r.ip_rules.validate(&format!("{at}.ip_rules")));
        let mut limit_names = std::collections::HashSet::new();
        for (j, rl) in r.rate_limits.iter().enumerate() {
            let rat = format!("{at}.rate_limits[{j}]");
            p.extend(rl.validate(&rat));
            if !limit_names.insert(rl.name.as_str()) {
                p.push(format!(
                    "{rat}.name: {:?} is used twice on this route",
                    rl.name
                ));
            }
            if rl.backend == crate::edge::ratelimit::Backend::Redis
                && c.auth.redis_url.trim().is_empty()
            {
                p.push(format!("{rat}.backend: redis needs auth.redis_url"));
            }
        }
        p.extend(r.headers.validate(&format!("{at}.headers")));
        if let Some(roles) = &r.roles {
            if roles.is_empty() {
                p.push(format!(
                    "{at}.roles: empty list (omit the key to allow every role)"
                ));
            }
            for (j, role) in roles.iter().enumerate() {
                if !ROLES.contains(&role.as_str()) {
                    p.push(format!(
                        "{at}.roles[{j}]: {role:?} is not one of {}",
                        ROLES.join(", ")
                    ));
                }
            }
            if r.auth != super::AuthMode::Required {
                p.push(format!("{at}.roles: only used with auth: required"));
            }
        }
        if let Some(f) = &r.fallback {
            if !(200..=599).contains(&f.status) {
                p.push(format!(
                    "{at}.fallback.status: {} is not a response status",
                    f.status
                ));
            }
            for name in f.headers.keys() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    p.push(format!(
                        "{at}.fallback.headers: {name:?} is not a header name"
                    ));
                }
            }
            for (name, value) in &f.headers {
                if http::HeaderValue::from_str(value).is_err() {
                    p.push(format!(
                        "{at}.fallback.headers.{name}: not a valid header value"
                    ));
                }
            }
        }
    }
    p
}

/// The roles users can have.
pub const ROLES: [&str; 4] = ["patient", "doctor", "institution", "admin"];

/// What is allowed but worth saying, with its path: printed by `gatehouse check` and
/// logged at start and on reload.
pub fn warnings(c: &Config) -> Vec<String> {
    let mut w = Vec::new();
    for (name, u) in &c.upstreams {
        let at = format!("upstreams.{name}.tls");
        let any_tls = u
            .backends
            .0
            .iter()
            .any(|b| parse_backend_url(&b.url).is_ok_and(|url| url.tls));
        if !u.tls.verify && any_tls {
            w.push(format!(
                "{at}.verify: false: the certificates of this pool's https:// backends are not verified; anyone on the path can impersonate them"
            ));
        }
        if u.tls != super::UpstreamTlsConfig::default() && !any_tls {
            w.push(format!(
                "{at}: set, but no backend of upstreams.{name} is https://; it has no effect"
            ));
        }
    }
    w
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// A route prefix must already be in normal form, so what the table holds is what matches.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("{prefix:?} must start with '/'"));
    }
    if prefix.contains(['?', '#']) {
        return Err(format!(
            "{prefix:?} must be a path only, without '?' or '#'"
        ));
    }
    if prefix.len() > 1 && prefix.ends_with('/') {
        return Err(format!(
            "{prefix:?} must not end with '/' (prefixes match whole segments)"
        ));
    }
    match crate::routing::normalize_path(prefix) {
        Ok(n) if n == prefix => Ok(()),
        _ => Err(format!(
            "{prefix:?} is not a normalised path (no '//', '.', '..', '%' escapes or '?')"
        )),
    }
}

/// `10.0.0.0/8`, `::1/128` or a bare address.
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Every problem `yaml` has (none when it loads); also for the submodules' tests.
    pub(super) fn problems(yaml: &str) -> Vec<String> {
        match Config::from_yaml_str_with_env(yaml, |_| None) {
            Ok(_) => vec![],
            Err(e) => e.problems,
        }
    }

    #[test]
    fn write_buffer_is_bounded() {
        let c = crate::config::Config::from_yaml_str_with_env(
            "server:\n  limits:\n    write_buffer: 1MiB\n",
            |_| None,
        )
        .unwrap_err();
        assert!(
            c.to_string()
                .contains("server.limits.write_buffer: must be at most 64KiB"),
            "{c}"
        );
    }

    #[test]
    fn http2_bounds_are_checked_with_their_paths() {
        let p = problems(
            "server:\n  http2: {max_concurrent_streams: 0, max_header_list_size: 100B, max_pending_reset_streams: 0, max_error_reset_streams: 0}\n",
        );
        for key in [
            "server.http2.max_concurrent_streams",
            "server.http2.max_header_list_size",
            "server.http2.max_pending_reset_streams",
            "server.http2.max_error_reset_streams",
        ] {
            assert!(p.iter().any(|m| m.starts_with(key)), "{key}: {p:?}");
        }
        assert!(problems("server:\n  http2: {max_concurrent_streams: 50}\n").is_empty());
    }

    #[test]
    fn unknown_upstream_is_reported_with_route_path() {
        let p = problems(
            "upstreams:\n  a: {backends: 'http://127.0.0.1:1'}\nroutes:\n  - {prefix: /a, upstream: a}\n  - {prefix: /b, upstream: a}\n  - {prefix: /c, upstream: billing}\n",
        );
        assert_eq!(
            p,
            vec![r#"routes[2].upstream: unknown upstream "billing""#.to_string()]
        );
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let p = problems(
            "server:\n  listen: nowhere\nupstreams:\n  a: {backends: 'ftp://x:1, 127.0.0.1'}\nroutes:\n  - {prefix: 'api/', upstream: b, methods: [TRACE]}\n",
        );
        let joined = p.join("\n");
        for needle in [
            "server.listen[0]",
            "upstreams.a.backends[0]",
            "upstreams.a.backends[1]: \"127.0.0.1\": a port is required",
            "routes[0].prefix",
            "routes[0].upstream: unknown upstream \"b\"",
            "routes[0].methods[0]: TRACE is never proxied",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn prefixes_must_be_normalised() {
        for bad in ["/a/", "//a", "/a/../b", "/a/%2e", "/a?x"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
        assert!(check_prefix("/").is_ok());
        assert!(check_prefix("/api/v1/doctors").is_ok());
    }

    #[test]
    fn upstream_tls_block_defaults_and_problems() {
        let c = Config::from_yaml_str_with_env(
            "upstreams:\n  a: {backends: 'https://svc.internal:443'}\n",
            |_| None,
        )
        .expect("valid");
        let t = &c.upstreams["a"].tls;
        assert!(t.verify, "verification is on by default");
        assert_eq!(t, &crate::config::UpstreamTlsConfig::default());
        assert!(warnings(&c).is_empty());

        // Every key, and an empty value read as absent (an unset `${VAR:-}`).
        let c = Config::from_yaml_str_with_env(
            "upstreams:\n  a:\n    backends: 'https://10.0.0.5:8443'\n    tls: {ca_file: ca.pem, server_name: svc.internal, verify: true, client_cert: c.pem, client_key: k.pem}\n  b:\n    backends: 'https://10.0.0.6:8443'\n    tls: {ca_file: ''}\n",
            |_| None,
        )
        .expect("valid");
        let t = &c.upstreams["a"].tls;
        assert_eq!(t.ca_file.as_deref(), Some("ca.pem"));
        assert_eq!(t.server_name.as_deref(), Some("svc.internal"));
        assert_eq!(t.client_key.as_deref(), Some("k.pem"));
        assert_eq!(c.upstreams["b"].tls.ca_file, None);

        let p = problems(
            "upstreams:\n  a:\n    backends: 'https://127.0.0.1:1'\n    tls: {client_cert: c.pem, server_name: 'not a name'}\n  b:\n    backends: 'https://127.0.0.1:2'\n    tls: {client_key: k.pem}\n",
        );
        assert_eq!(
            p,
            vec![
                r#"upstreams.a.tls.server_name: "not a name" is not a DNS name or IP address"#
                    .to_string(),
                "upstreams.a.tls.client_key: required with upstreams.a.tls.client_cert".into(),
                "upstreams.b.tls.client_cert: required with upstreams.b.tls.client_key".into(),
            ]
        );
        assert!(problems(
            "upstreams:\n  a: {backends: 'https://127.0.0.1:1', tls: {verfy: false}}\n"
        )[0]
        .contains("unknown field `verfy`"));
    }

    #[test]
    fn verify_false_and_an_unused_tls_block_are_warned_about() {
        let c = Config::from_yaml_str_with_env(
            "upstreams:\n  a: {backends: 'https://127.0.0.1:1', tls: {verify: false}}\n  b: {backends: 'http://127.0.0.1:2', tls: {server_name: svc}}\n  c: {backends: 'http://127.0.0.1:3', tls: {verify: false}}\n",
            |_| None,
        )
        .expect("valid");
        let w = warnings(&c);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("upstreams.a.tls.verify: false: "), "{w:?}");
        assert!(
            w[1].starts_with("upstreams.b.tls: set, but no backend"),
            "{w:?}"
        );
        assert!(
            w[2].starts_with("upstreams.c.tls: set, but no backend"),
            "{w:?}"
        );
    }

    #[test]
    fn log_level_must_be_a_level_or_a_filter() {
        assert!(problems("server: {log: {level: DEBUG}}").is_empty());
        assert!(problems("server: {log: {level: 'info,gatehouse=debug'}}").is_empty());
        assert!(problems("server: {log: {level: verbose}}")[0].starts_with("server.log.level"));
    }
}

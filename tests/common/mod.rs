//! Test harness: starts the real gateway in-process on free ports, plus fake upstreams and
//! raw HTTP clients (`upstream_and_client`). Each test owns its gateway; it stops on drop.
#![allow(dead_code)]

pub mod backends;
pub mod otlp;
pub mod scripted;
pub mod upstream_and_client;
pub mod users;

pub use upstream_and_client::*;

use gatehouse::{Config, RunningGateway};
use std::time::Duration;

/// A gateway running on free ports.
pub struct Gw {
    pub port: u16,
    pub admin_port: u16,
    pub running: RunningGateway,
}

/// The `server:` block tests use: free ports, one thread, quick shutdown, no access log
/// noise. `extra` is indented YAML appended inside `server:` (e.g. limits).
pub fn server_block(port: u16, admin_port: u16, extra: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:{port}\n  admin_listen: 127.0.0.1:{admin_port}\n  threads: 1\n  grace_period: 0s\n  shutdown_timeout: 0s\n  log: {{access_log: false}}\n{extra}\n"
    )
}

impl Gw {
    /// Starts a gateway with the default test `server:` block and `rest` (upstreams, routes).
    pub fn start(rest: &str) -> Gw {
        Gw::start_with_server("", rest)
    }

    /// Same, with extra lines inside `server:` (indented two spaces).
    pub fn start_with_server(server_extra: &str, rest: &str) -> Gw {
        // Distinct: `free_port` never hands out a port twice in one process.
        let (port, admin_port) = (free_port(), free_port());
        let mut yaml = format!("{}{}", server_block(port, admin_port, server_extra), rest);
        if !rest.starts_with("auth:") && !rest.contains("\nauth:") {
            yaml.push_str(&format!(
                "\nauth:\n  database_url: \"{}\"\n",
                temp_sqlite_url(port)
            ));
        }
        let config = Config::from_yaml_str(&yaml)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{yaml}"));
        let running =
            gatehouse::spawn(config).unwrap_or_else(|e| panic!("gateway failed to build: {e}"));
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "gateway did not start listening on {port}");
        Gw {
            port,
            admin_port,
            running,
        }
    }

    /// The config `rest` (what follows the `server:` block) on this gateway's ports, with the
    /// default test `server:` block (as [`Gw::start`] uses): for reloads.
    pub fn config_for(&self, rest: &str) -> Config {
        let yaml = format!("{}{rest}", server_block(self.port, self.admin_port, ""));
        Config::from_yaml_str(&yaml)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{yaml}"))
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.port, path, &[]).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        get(self.port, path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

/// A fresh SQLite database file for one test gateway.
pub fn temp_sqlite_url(tag: u16) -> String {
    let path = std::env::temp_dir().join(format!("gatehouse-test-{}-{tag}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    format!("sqlite://{}", path.display())
}

/// YAML for one upstream pool named `name` with these backend URLs and extra indented lines.
pub fn upstream(name: &str, urls: &[String], extra: &str) -> String {
    format!("  {name}:\n    backends: \"{}\"\n{extra}", urls.join(", "))
}

/// Parses a JSON body.
pub fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

/// The sum of the series `name{…label="value"…}` on the admin `/metrics` page (0 if absent).
pub fn metric(admin_port: u16, name: &str, label: &str, value: &str) -> f64 {
    let r = get(admin_port, "/metrics", &[]).expect("GET admin /metrics");
    assert_eq!(r.status, 200, "admin /metrics: {}", r.text());
    let want = format!("{label}=\"{value}\"");
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.contains(&want)).then(|| v.trim().parse::<f64>().ok())?
        })
        .sum()
}

//! Test harness shared by every integration test file: `use common::*;` brings it all in.
//!
//! - this file: the in-process gateway ([`Gw`]) on free ports, the YAML pieces tests build
//!   configs from, the shared constants, and gateway builders more than one file uses;
//! - [`upstream_and_client`]: the scriptable fake upstream ([`FakeUpstream`]), the raw
//!   HTTP/1.1 client ([`get`], [`request`], [`Conn`]), free ports and the deadline waits
//!   ([`wait_until`], [`eventually`], [`poll_until`]);
//! - [`scripted`]: an upstream that writes exactly the bytes a test scripts;
//! - [`http`]: request shorthands and what tests read off answers (headers, JSON errors,
//!   cookies, HTML);
//! - [`users`]: seeded users, login, tokens;
//! - [`backends`]: temp files and directories, where users and sessions live,
//!   `on_both_backends!`;
//! - [`metrics`]: scraping the admin `/metrics`;
//! - [`process`]: the `gatehouse` binary as a child process, and its CLI;
//! - [`services`]: Redis and PostgreSQL from the environment, and our own `redis-server`.
//!
//! Each test owns its gateway; it stops on drop.
#![allow(dead_code, unused_imports)]

pub mod backends;
pub mod http;
pub mod metrics;
pub mod otlp;
pub mod process;
pub mod scripted;
pub mod services;
pub mod upstream_and_client;
pub mod users;

pub use backends::*;
pub use http::*;
pub use metrics::*;
pub use process::*;
pub use services::*;
pub use upstream_and_client::*;
pub use users::*;

use gatehouse::{Config, RunningGateway};
use std::time::Duration;

/// The HS256 secret of every test gateway (and of tokens tests forge).
pub const SECRET: &str = "gatehouse-tests-hs256-secret-0123456789abcdef";
/// `server:` lines that make 127.0.0.1 a trusted proxy (its X-Forwarded-For is believed).
pub const TRUST_LOCALHOST: &str = "  trusted_proxies: [127.0.0.1/32]\n";
/// What an API client sends.
pub const API_JSON: (&str, &str) = ("Accept", "application/json");
/// What a browser navigating pages sends.
pub const BROWSER: (&str, &str) = ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8");
/// Bound of polling loops (never reached when the gateway works).
pub const POLL: Duration = Duration::from_secs(5);
/// How long a client waits for bytes from a socket before failing.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway running on free ports.
pub struct Gw {
    pub port: u16,
    pub admin_port: u16,
    pub running: RunningGateway,
}

/// The `server:` block tests use: free ports, one thread, quick shutdown, no access log
/// noise. `extra` is indented YAML appended inside `server:` (e.g. limits).
pub fn server_block(port: u16, admin_port: u16, extra: &str) -> String {
    let (listen, admin) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{admin_port}"),
    );
    server_block_on(&listen, &admin, extra)
}

/// The same `server:` block for a `gatehouse` process whose listeners come from the
/// environment (`${GATEHOUSE_LISTEN}`, `${GATEHOUSE_ADMIN_LISTEN}`: see [`gatehouse_on`]).
pub fn env_server_block(extra: &str) -> String {
    server_block_on("${GATEHOUSE_LISTEN}", "${GATEHOUSE_ADMIN_LISTEN}", extra)
}

fn server_block_on(listen: &str, admin_listen: &str, extra: &str) -> String {
    format!(
        "server:\n  listen: {listen}\n  admin_listen: {admin_listen}\n  threads: 1\n  grace_period: 0s\n  shutdown_timeout: 0s\n  log: {{access_log: false}}\n{extra}\n"
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
                temp_db_url(&format!("gw-{port}"))
            ));
        }
        let config = Config::from_yaml_str(&yaml)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{yaml}"));
        let running =
            gatehouse::spawn(config).unwrap_or_else(|e| panic!("gateway failed to build: {e}"));
        // Both listeners: the admin one (metrics, probes) may come up after the proxy's, and a
        // test that scrapes first must not race it.
        for p in [port, admin_port] {
            eventually(
                Duration::from_secs(10),
                &format!("gateway listening on {p}"),
                || std::net::TcpStream::connect(("127.0.0.1", p)).is_ok(),
            );
        }
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
        get_ok(self.port, path, &[])
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        get_ok(self.port, path, headers)
    }

    /// The sum of the samples of `name` with `labels` on this gateway's `/metrics`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(self.admin_port, name, labels)
    }
}

/// YAML for one upstream pool named `name` with these backend URLs and extra indented lines.
pub fn upstream(name: &str, urls: &[String], extra: &str) -> String {
    format!("  {name}:\n    backends: \"{}\"\n{extra}", urls.join(", "))
}

/// A gateway with the one pool `pool` (backends `urls`), then `rest` (routes, auth …).
pub fn pool_gateway(pool: &str, urls: &[String], rest: &str) -> Gw {
    Gw::start(&format!("upstreams:\n{}\n{rest}", upstream(pool, urls, "")))
}

/// A gateway with pool `svc` (`pool_extra`: indented pool lines) and route `/svc`, named `svc`
/// (`route_extra`: flow-style keys appended to the route, e.g. `, retry: {retries: 0}`).
pub fn svc_gateway(urls: &[String], pool_extra: &str, route_extra: &str) -> Gw {
    Gw::start(&format!(
        "upstreams:\n{}\nroutes:\n  - {{name: svc, prefix: /svc, upstream: svc{route_extra}}}\n",
        upstream("svc", urls, pool_extra)
    ))
}

/// An Echo upstream as pool `pool`, then `rest` (routes, auth …) after the `upstreams:`
/// block, with `server_extra` lines inside `server:`.
pub fn echo_pool_gateway(pool: &str, server_extra: &str, rest: &str) -> (FakeUpstream, Gw) {
    let up = FakeUpstream::start(Behavior::Echo);
    let gw = Gw::start_with_server(
        server_extra,
        &format!("upstreams:\n{}\n{rest}", upstream(pool, &[up.url()], "")),
    );
    (up, gw)
}

/// An Echo upstream behind `/api` (any method), plus `extra_routes` (YAML list items), with
/// `server_extra` lines inside `server:`.
pub fn echo_gateway(server_extra: &str, extra_routes: &str) -> (FakeUpstream, Gw) {
    let routes = format!("routes:\n  - {{prefix: /api, upstream: api}}\n{extra_routes}");
    echo_pool_gateway("api", server_extra, &routes)
}

/// A URL on a free port where nothing listens: a dead backend.
pub fn dead_backend() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// The `web:` block: the repo's templates and assets, the public pages, the patient
/// dashboard (sources `profile` from pool `profiles` and `appointments` from pool
/// `appointments`) and the doctor dashboard (no sources). The working directory of
/// `cargo test` is the crate root, so the folders are the repo's.
pub fn web_block(data_timeout: &str) -> String {
    format!(
        "web:
  templates: templates
  assets: assets
  assets_prefix: /assets/
  data_timeout: {data_timeout}
  pages:
    - {{path: /, template: landing.html, title: Inicio}}
    - {{path: /login, template: login.html, title: Iniciar sesión}}
    - {{path: /docs, template: docs.html, title: Documentación}}
    - path: /patient/dashboard
      template: patient/dashboard.html
      title: Mi panel
      auth: required
      roles: [patient]
      data:
        profile: {{upstream: profiles, path: \"/api/v1/patients/{{user_id}}\"}}
        appointments: {{upstream: appointments, path: \"/api/v1/patients/{{user_id}}/appointments\"}}
    - {{path: /doctor/dashboard, template: doctor/dashboard.html, title: Panel médico, auth: required, roles: [doctor]}}
"
    )
}

/// Parses a JSON body.
pub fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

//! Seed parity (issue 10, items 1, 2 and 4) through the running gateway: the seeds' JSON
//! dashboards (`GET /api/web/{role}/dashboard`) built from the same page definition as the
//! HTML dashboards, with per-user data sources, role checks and failed sources marked
//! unavailable; connection limits (`server.limits.max_connections_per_ip` and
//! `max_connections`), which close excess connections at once; and a route's
//! `max_in_flight`, answered 503 `overloaded` with `Retry-After`, whose slots are released by
//! every answer (success, 503, 401, 413), and `max_in_flight_per_client`, answered 429 to one
//! client while another is served. Response caching (item 3) is tested in `tests/cache.rs`.
//!
//! Everything stays on loopback: clients on 127.0.0.1, one client bound to 127.0.0.2 to be
//! "another address". The working directory of `cargo test` is the crate root, so
//! `templates` and `assets` in the YAML are the repo's folders.

mod common;
use common::*;

use gatehouse::auth::users::Role;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

// ------------------------------------------------------------------------------------------
// Helpers: users, gateways, JSON
// ------------------------------------------------------------------------------------------

/// A gateway with the dashboards, a fresh SQLite user database and its users.
struct Site {
    gw: Gw,
    users: Vec<Account>,
}

impl Site {
    /// `profiles` and `appointments` are the backends of the data-source pools; `extra_pools`
    /// more pool YAML, `routes` a whole `routes:` block (or empty), `server_extra` lines inside
    /// `server:`.
    fn start(
        server_extra: &str,
        profiles: &str,
        appointments: &str,
        extra_pools: &str,
        routes: &str,
        users: &[(Role, &str)],
    ) -> Site {
        let db = temp_db_url("parity");
        let users = seed_users(&db, "parity.test", users);
        let rest = format!(
            "upstreams:\n{}\n{}\n{extra_pools}\n{routes}\nauth:\n  database_url: \"{db}\"\n  jwt: {{secret: \"{SECRET}\"}}\n  login: {{max_failures_per_account: 5, max_failures_per_ip: 1000, window: 15m}}\n{}",
            upstream("profiles", &[profiles.to_string()], ""),
            upstream("appointments", &[appointments.to_string()], ""),
            web_block("2s")
        );
        Site {
            gw: Gw::start_with_server(server_extra, &rest),
            users,
        }
    }

    /// Just the dashboards with these data-source backends.
    fn dashboards(profiles: &str, appointments: &str, users: &[(Role, &str)]) -> Site {
        Site::start("", profiles, appointments, "", "", users)
    }

    fn port(&self) -> u16 {
        self.gw.port
    }

    /// Logs `user` in through `POST /api/v1/auth/login`; returns the access token.
    fn login(&self, user: &Account) -> String {
        login(self.port(), &user.email)
    }

    /// GET as an API client with `Authorization: Bearer token` (none when `token` is None).
    fn api_get(&self, path: &str, token: Option<&str>) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![API_JSON];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        self.gw.get_with(path, &headers)
    }

    /// GET as a browser carrying the session cookie.
    fn browse(&self, path: &str, token: &str) -> Response {
        let cookie = format!("{SESSION_COOKIE}={token}");
        self.gw.get_with(path, &[BROWSER, ("Cookie", &cookie)])
    }
}

/// Asserts `r` is a 200 JSON answer and returns its body.
fn ok_json(r: &Response, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert!(
        content_type(r).starts_with("application/json"),
        "{what}: content type {:?}, body {}",
        r.header("content-type"),
        r.text()
    );
    json(r)
}

/// The path segments of a request target (query removed).
fn segments(target: &str) -> Vec<&str> {
    let path = target.split('?').next().unwrap_or("");
    path.split('/').filter(|s| !s.is_empty()).collect()
}

// ------------------------------------------------------------------------------------------
// 1. JSON dashboards
// ------------------------------------------------------------------------------------------

#[test]
fn json_dashboard_gives_each_patient_only_their_own_user_and_data() {
    let profiles = FakeUpstream::start(Behavior::Echo);
    let appts = FakeUpstream::start(Behavior::Echo);
    let site = Site::dashboards(
        &profiles.url(),
        &appts.url(),
        &[
            (Role::Patient, "Ana Beltrán"),
            (Role::Patient, "Bruno Castaño"),
        ],
    );
    let (ana, bruno) = (site.users[0].clone(), site.users[1].clone());
    assert_ne!(ana.id, bruno.id);

    for (me, other) in [(&ana, &bruno), (&bruno, &ana)] {
        let token = site.login(me);
        let what = format!("dashboard of {}", me.email);
        let r = site.api_get("/api/web/patient/dashboard", Some(&token));
        let v = ok_json(&r, &what);
        assert_eq!(
            r.header("cache-control"),
            Some("no-store"),
            "{what}: a per-user answer must not be cached"
        );
        assert_eq!(
            v["page"]["path"],
            json!("/patient/dashboard"),
            "{what}: {v}"
        );
        assert_eq!(v["page"]["title"], json!("Mi panel"), "{what}: {v}");
        assert_eq!(v["user"]["id"], json!(me.id), "{what}: {v}");
        assert_eq!(v["user"]["role"], json!("patient"), "{what}: {v}");
        assert_eq!(v["user"]["email"], json!(me.email), "{what}: {v}");
        assert_eq!(v["user"]["name"], json!(me.name), "{what}: {v}");

        let profile = &v["data"]["profile"];
        let target = profile["target"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: data.profile is not the upstream's echo: {v}"));
        assert!(
            target.ends_with(&format!("/api/v1/patients/{}", me.id)),
            "{what}: profile fetched for the wrong path {target}"
        );
        assert!(
            !segments(target).contains(&other.id.to_string().as_str()),
            "{what}: profile path {target} names the other patient {}",
            other.id
        );
        assert_eq!(
            echoed_header(profile, "x-user-id"),
            Some(me.id.to_string()),
            "{what}: the profile request did not carry this user's id: {profile}"
        );
        let appointments = v["data"]["appointments"]["target"].as_str();
        assert_eq!(
            appointments,
            Some(format!("/api/v1/patients/{}/appointments", me.id).as_str()),
            "{what}: {v}"
        );
    }

    // Upstream side: one profile request per dashboard, each for the signed-in user only.
    let reqs = profiles.requests();
    assert_eq!(reqs.len(), 2, "profile requests: {reqs:?}");
    for (req, who) in reqs.iter().zip([&ana, &bruno]) {
        assert_eq!(req.target, format!("/api/v1/patients/{}", who.id));
        let id = who.id.to_string();
        assert_eq!(req.header_all("x-user-id"), vec![id.as_str()], "{req:?}");
        assert_eq!(req.header_all("x-user-role"), vec!["patient"], "{req:?}");
    }
}

#[test]
fn json_dashboard_refuses_a_wrong_role_with_403_and_anonymous_clients_with_401_json() {
    let profiles = FakeUpstream::start(Behavior::Echo);
    let appts = FakeUpstream::start(Behavior::Echo);
    let site = Site::dashboards(
        &profiles.url(),
        &appts.url(),
        &[(Role::Patient, "Ana"), (Role::Doctor, "Dra. Quiroga")],
    );
    let patient = site.login(&site.users[0]);
    let doctor = site.login(&site.users[1]);

    let r = site.api_get("/api/web/doctor/dashboard", Some(&patient));
    assert_json_error(&r, 403, "forbidden", "patient on the doctor dashboard");
    let r = site.api_get("/api/web/patient/dashboard", Some(&doctor));
    assert_json_error(&r, 403, "forbidden", "doctor on the patient dashboard");

    let r = site.api_get("/api/web/patient/dashboard", None);
    assert_json_error(&r, 401, "unauthorized", "anonymous API client");
    // Under /api/ it is an API answer even for a browser's Accept: JSON, not a login redirect.
    let r = site.gw.get_with("/api/web/patient/dashboard", &[BROWSER]);
    assert_json_error(&r, 401, "unauthorized", "anonymous with a browser Accept");
    let r = site.api_get("/api/web/patient/dashboard", Some("not-a-token"));
    assert_json_error(&r, 401, "unauthorized", "bad token");

    assert_eq!(
        profiles.request_count() + appts.request_count(),
        0,
        "data sources were fetched for refused requests: {:?} {:?}",
        profiles.requests(),
        appts.requests()
    );

    // The doctor's own dashboard: its user, no sources.
    let r = site.api_get("/api/web/doctor/dashboard", Some(&doctor));
    let v = ok_json(&r, "doctor dashboard");
    assert_eq!(v["page"]["path"], json!("/doctor/dashboard"), "{v}");
    assert_eq!(v["user"]["id"], json!(site.users[1].id), "{v}");
    assert_eq!(v["user"]["role"], json!("doctor"), "{v}");
    assert_eq!(v["data"], json!({}), "{v}");

    // A role without a dashboard page is not found.
    let r = site.api_get("/api/web/nobody/dashboard", Some(&patient));
    assert_json_error(&r, 404, "not_found", "unknown role");
}

#[test]
fn json_dashboard_marks_a_failed_source_unavailable_and_still_answers_200() {
    let profiles = FakeUpstream::start(Behavior::Echo);
    let site = Site::dashboards(&profiles.url(), &dead_backend(), &[(Role::Patient, "Ana")]);
    let me = site.users[0].clone();
    let token = site.login(&me);
    let r = site.api_get("/api/web/patient/dashboard", Some(&token));
    let v = ok_json(&r, "dashboard with a dead appointments backend");
    assert_eq!(
        v["data"]["appointments"],
        json!({"unavailable": true}),
        "{v}"
    );
    assert_eq!(
        v["data"]["profile"]["target"],
        json!(format!("/api/v1/patients/{}", me.id)),
        "the working source is missing: {v}"
    );
    assert_eq!(v["user"]["id"], json!(me.id), "{v}");
}

#[test]
fn html_and_json_dashboards_come_from_the_same_page_definition() {
    let profiles = FakeUpstream::start(Behavior::Echo);
    let site = Site::dashboards(
        &profiles.url(),
        &dead_backend(),
        &[(Role::Patient, "Ana Beltrán Ocaña")],
    );
    let me = site.users[0].clone();
    let token = site.login(&me);

    let v = ok_json(
        &site.api_get("/api/web/patient/dashboard", Some(&token)),
        "JSON dashboard",
    );
    let r = site.browse("/patient/dashboard", &token);
    assert_eq!(r.status, 200, "HTML dashboard: {}", r.text());
    assert_eq!(content_type(&r), "text/html; charset=utf-8");
    let html = r.text();

    let name = v["user"]["name"].as_str().expect("user.name in JSON");
    assert_eq!(name, me.name);
    let welcome = element(&html, "welcome", "</h1>");
    assert!(
        welcome.contains(name),
        "the HTML page greets someone else than the JSON user {name}: {welcome}"
    );
    let title = v["page"]["title"].as_str().expect("page.title in JSON");
    let html_title = html
        .split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .unwrap_or_else(|| panic!("no <title> in:\n{html}"));
    assert!(
        html_title.contains(title),
        "HTML title {html_title:?} is not the JSON page title {title:?}"
    );
    let profile = unescape(element(&html, "source-profile", "</section>"));
    assert!(
        profile.contains(&format!("/api/v1/patients/{}", me.id)),
        "the HTML profile section does not show this user's source:\n{profile}"
    );
    assert!(
        !profile.contains("class=\"unavailable\""),
        "the working source is unavailable in HTML:\n{profile}"
    );
    assert_eq!(
        v["data"]["appointments"],
        json!({"unavailable": true}),
        "{v}"
    );
    let appointments = element(&html, "source-appointments", "</section>");
    assert!(
        appointments.contains("class=\"unavailable\""),
        "JSON says appointments are unavailable, HTML does not:\n{appointments}"
    );
}

// ------------------------------------------------------------------------------------------
// 2. Connection limits
// ------------------------------------------------------------------------------------------

/// A gateway with `server.limits` lines `limits` and one echo route (unused by the limits).
fn limited_gateway(limits: &str) -> (FakeUpstream, Gw) {
    let up = FakeUpstream::start(Behavior::Echo);
    let gw = Gw::start_with_server(
        &format!("  limits:\n{limits}"),
        &format!(
            "upstreams:\n{}\nroutes:\n  - {{prefix: /api, upstream: app}}\n",
            upstream("app", &[up.url()], "")
        ),
    );
    (up, gw)
}

const KEEP_ALIVE_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// One keep-alive request on a fresh 127.0.0.1 connection; the connection when it was
/// answered 200 (it stays open and idle, counted by the gateway), else the error.
fn try_keepalive_conn(port: u16) -> Result<Conn, String> {
    let mut c = Conn::open(port)?;
    c.send(KEEP_ALIVE_HEALTH)?;
    let r = c.read_response(false)?;
    if r.status != 200 {
        return Err(format!("status {}: {}", r.status, r.text()));
    }
    Ok(c)
}

/// An established idle keep-alive connection from 127.0.0.1. Retried (bounded) because the
/// gateway's start-up probe connection may still hold a slot for a moment.
fn keepalive_conn(port: u16) -> Conn {
    let (_, c) = poll_until(POLL, || try_keepalive_conn(port), Result::is_ok);
    c.unwrap_or_else(|e| panic!("no keep-alive connection could be established: {e}"))
}

/// `GET /health` with `Connection: close` from a socket bound to `source` (port 0) to
/// 127.0.0.1:`port`; the status, or an error if the connection ends without a response.
fn health_from(source: [u8; 4], port: u16) -> Result<u16, String> {
    status_from(source, port, "/health")
}

/// `GET path` (as an API client) on a new connection from `source`; the answer's status.
fn status_from(source: [u8; 4], port: u16, path: &str) -> Result<u16, String> {
    let stream = block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        let from = SocketAddr::from((source, 0));
        sock.bind(from).map_err(|e| format!("bind {from}: {e}"))?;
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let s = tokio::time::timeout(IO_TIMEOUT, sock.connect(to))
            .await
            .map_err(|_| format!("connect {to}: timed out"))?
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.into_std().map_err(|e| format!("into_std: {e}"))
    })?;
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    let set = stream.set_read_timeout(Some(IO_TIMEOUT));
    set.map_err(|e| format!("set_read_timeout: {e}"))?;
    let mut stream = stream;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let read = stream.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse::<u16>().ok());
    match (status, read) {
        (Some(s), _) => Ok(s),
        (None, Err(e)) => Err(format!("no response (read: {e})")),
        (None, Ok(_)) => Err(format!("no response, got {text:?}")),
    }
}

/// Sends a request on a fresh 127.0.0.1 connection and expects it closed without a response.
fn assert_refused_from_localhost(port: u16, what: &str) {
    let mut c = Conn::open(port).expect("TCP connect (the kernel accepts before the gateway)");
    // A write may already fail on a closed connection: that is a refusal too.
    let r = c
        .send(KEEP_ALIVE_HEALTH)
        .and_then(|_| c.read_response(false));
    assert!(r.is_err(), "{what}: the connection was served: {r:?}");
    assert!(
        c.is_closed_by_peer(IO_TIMEOUT),
        "{what}: the connection was not closed"
    );
}

#[test]
fn per_ip_limit_closes_a_fourth_connection_from_one_address_but_serves_another_address() {
    let (_up, gw) = limited_gateway("    max_connections_per_ip: 3\n");
    let mut open: Vec<Conn> = (0..3).map(|_| keepalive_conn(gw.port)).collect();

    assert_refused_from_localhost(gw.port, "4th connection from 127.0.0.1");
    assert_eq!(
        health_from([127, 0, 0, 2], gw.port),
        Ok(200),
        "a connection from 127.0.0.2 must not count against 127.0.0.1's limit"
    );

    // The three are still usable keep-alive connections.
    for (i, c) in open.iter_mut().enumerate() {
        c.send(KEEP_ALIVE_HEALTH)
            .expect("write on an admitted conn");
        let r = c.read_response(false).expect("answer on an admitted conn");
        assert_eq!(r.status, 200, "admitted connection {i}: {}", r.text());
    }

    // Closing one frees its slot: a new 127.0.0.1 connection is served again.
    drop(open.remove(0));
    let mut again = None;
    let served = wait_until(POLL, || {
        again = try_keepalive_conn(gw.port).ok();
        again.is_some()
    });
    assert!(
        served,
        "no new 127.0.0.1 connection after one of three was closed"
    );

    let per_ip = metric(
        gw.admin_port,
        "gatehouse_connections_refused_total",
        &[("limit", "per_ip")],
    );
    assert!(per_ip >= 1.0, "per_ip refusals counted: {per_ip}");
    let total = metric(
        gw.admin_port,
        "gatehouse_connections_refused_total",
        &[("limit", "total")],
    );
    assert_eq!(total, 0.0, "no total-limit refusal happened");
}

#[test]
fn total_limit_closes_a_third_connection_from_any_address() {
    let (_up, gw) = limited_gateway("    max_connections: 2\n");
    let mut open: Vec<Conn> = (0..2).map(|_| keepalive_conn(gw.port)).collect();

    assert_refused_from_localhost(gw.port, "3rd connection from 127.0.0.1");
    let other = health_from([127, 0, 0, 2], gw.port);
    assert!(
        other.is_err(),
        "3rd connection from 127.0.0.2 was served: {other:?}"
    );

    drop(open.remove(0));
    let served = wait_until(POLL, || health_from([127, 0, 0, 2], gw.port) == Ok(200));
    assert!(served, "no new connection after one of two was closed");

    let total = metric(
        gw.admin_port,
        "gatehouse_connections_refused_total",
        &[("limit", "total")],
    );
    assert!(total >= 2.0, "total refusals counted: {total}");
}

// ------------------------------------------------------------------------------------------
// 4. In-flight limit per route
// ------------------------------------------------------------------------------------------

/// A gateway whose route `/slow` (with `limit`, flow-style keys) goes to a backend that
/// answers after one second, with one request from 127.0.0.1 already in flight there.
fn one_request_in_flight(
    limit: &str,
) -> (
    FakeUpstream,
    Gw,
    std::thread::JoinHandle<Result<Response, String>>,
) {
    let slow = FakeUpstream::start(Behavior::Delay {
        delay: Duration::from_secs(1),
        status: 200,
        body: "slow".into(),
    });
    let gw = pool_gateway(
        "slow",
        &[slow.url()],
        &format!("routes:\n  - {{prefix: /slow, upstream: slow, {limit}}}\n"),
    );
    let port = gw.port;
    let first = std::thread::spawn(move || get(port, "/slow/first", &[API_JSON]));
    assert!(
        wait_until(POLL, || slow.request_count() == 1),
        "the first request never reached the upstream"
    );
    (slow, gw, first)
}

/// Asserts that a refusal carries `Retry-After` of at least one second.
fn assert_retry_after(r: &Response) {
    let retry: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("{} without Retry-After: {:?}", r.status, r.headers))
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry >= 1, "Retry-After {retry}");
}

#[test]
fn in_flight_limit_answers_503_overloaded_with_retry_after_and_frees_the_slot() {
    let (slow, gw, first) = one_request_in_flight("max_in_flight: 1");
    let port = gw.port;

    let r = gw.get_with("/slow/second", &[API_JSON]);
    assert_json_error(
        &r,
        503,
        "overloaded",
        "second request while one is in flight",
    );
    assert_retry_after(&r);
    assert_eq!(
        slow.request_count(),
        1,
        "the refused request reached the upstream"
    );

    let r = first
        .join()
        .expect("first request thread")
        .expect("first request");
    assert_eq!(r.status, 200, "first request: {}", r.text());
    assert_eq!(r.text(), "slow");

    // Its slot (and the 503's) are free again: new requests go through, one after another.
    slow.set_behavior(Behavior::Respond {
        status: 200,
        headers: vec![],
        body: "fast".into(),
    });
    let freed = wait_until(POLL, || {
        get(port, "/slow/third", &[API_JSON]).is_ok_and(|r| r.status == 200)
    });
    assert!(freed, "the slot was not released after the first request");
    for i in 0..3 {
        let mut ok = None;
        wait_until(POLL, || {
            ok = get(port, "/slow/next", &[API_JSON]).ok();
            ok.as_ref().is_some_and(|r| r.status == 200)
        });
        let r = ok.expect("answer");
        assert_eq!(r.status, 200, "sequential request {i}: {}", r.text());
        assert_eq!(r.text(), "fast");
    }
}

#[test]
fn per_client_in_flight_limit_answers_429_to_that_client_while_another_is_served() {
    let (slow, gw, first) = one_request_in_flight("max_in_flight_per_client: 1");
    let port = gw.port;

    let r = gw.get_with("/slow/second", &[API_JSON]);
    assert_json_error(&r, 429, "too_many_in_flight", "127.0.0.1's second request");
    assert_retry_after(&r);
    assert_eq!(
        status_from([127, 0, 0, 2], port, "/slow/other"),
        Ok(200),
        "another client address is not limited by 127.0.0.1's requests"
    );
    let r = first
        .join()
        .expect("first request thread")
        .expect("first request");
    assert_eq!(r.status, 200, "first request: {}", r.text());
    assert_eq!(
        slow.request_count(),
        2,
        "the refused request reached the upstream"
    );
    assert_eq!(
        metric(
            gw.admin_port,
            "gatehouse_in_flight_rejected_total",
            &[("scope", "client")]
        ),
        1.0
    );
    // The slot came back: 127.0.0.1 is served again.
    let r = gw.get_with("/slow/third", &[API_JSON]);
    assert_eq!(r.status, 200, "after the first finished: {}", r.text());
}

#[test]
fn rejected_requests_never_leak_an_in_flight_slot() {
    let app = FakeUpstream::start(Behavior::Echo);
    let routes = "routes:\n  - {prefix: /api/v1/records, upstream: app, auth: required, max_in_flight: 1, max_body_bytes: 100B}\n";
    let site = Site::start(
        "",
        &dead_backend(),
        &dead_backend(),
        &upstream("app", &[app.url()], ""),
        routes,
        &[(Role::Patient, "Ana")],
    );
    let token = site.login(&site.users[0]);
    let bearer = format!("Bearer {token}");

    for i in 0..5 {
        let r = site.api_get("/api/v1/records/1", None);
        assert_json_error(&r, 401, "unauthorized", &format!("no token #{i}"));
    }
    for i in 0..5 {
        // Only the head: the Content-Length alone is over the limit.
        let head = format!(
            "POST /api/v1/records/1 HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nAuthorization: {bearer}\r\nContent-Type: application/octet-stream\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n"
        );
        let mut c = Conn::open(site.port()).expect("connect");
        c.send(head.as_bytes()).expect("send head");
        let r = c.read_response(false).expect("413 answer");
        assert_eq!(r.status, 413, "oversized body #{i}: {}", r.text());
    }
    assert_eq!(
        app.request_count(),
        0,
        "a rejected request reached the upstream"
    );

    let mut last = None;
    let served = wait_until(POLL, || {
        last = get(
            site.port(),
            "/api/v1/records/1",
            &[API_JSON, ("Authorization", &bearer)],
        )
        .ok();
        last.as_ref().is_some_and(|r| r.status == 200)
    });
    assert!(
        served,
        "after 401s and 413s the route's only slot is still taken: {:?}",
        last.map(|r| (r.status, r.text()))
    );
    assert_eq!(app.request_count(), 1);
}

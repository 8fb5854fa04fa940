//! The access audit through the real gateway, on SQLite + the in-process store and on
//! PostgreSQL + Redis: audited requests (a proxied route and a dashboard page) appear in
//! `gatehouse audit export` with the right fields and never a query string or token, routes
//! without `audit` do not; `audit verify` passes, then names a changed row and a deleted one;
//! a purge (the command's, and the writer's own) keeps the chain verifiable; an audit
//! database outage answers 503 on `audit: required` routes while `audit: true` ones keep
//! serving and count what they drop (the table made unwritable on both databases, and our own
//! PostgreSQL stopped and started again); two gateways on one database extend one chain;
//! route modes reload.

mod common;
use common::*;
use gatehouse::auth::users::Role;
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

on_both_backends!(
    audited_requests_are_exported_and_a_changed_or_deleted_row_is_found,
    a_purge_keeps_the_chain_verifiable,
    the_writer_purges_past_the_retention_itself,
    an_audit_outage_answers_503_on_required_routes_only,
    two_gateways_on_one_database_extend_one_chain,
    route_audit_modes_reload_and_the_audit_block_needs_a_restart,
);

/// One test's database (on PostgreSQL a fresh database of its own, so that the chain it
/// checks is its own), gateway, upstream and users.
struct Site {
    db: String,
    doctor: Account,
    up: FakeUpstream,
    gw: Gw,
    /// The config after the `server:` block.
    rest: String,
    _pg: Option<OwnDatabase>,
    _dir: Option<TempDir>,
}

/// A database created for one test on the `DATABASE_URL` server, dropped at the end.
struct OwnDatabase {
    admin_url: String,
    name: String,
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        let stmt = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = block_on(exec(&self.admin_url, &stmt));
    }
}

/// Creates a database next to the one `url` names; its URL.
fn own_pg_database(url: &str) -> (String, OwnDatabase) {
    let name = format!("gatehouse_audit_{}", unique().replace('-', "_"));
    block_on(exec(url, &format!("CREATE DATABASE {name}"))).expect("create database");
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let (server, _) = base.rsplit_once('/').expect("database URL with a path");
    let own = format!("{server}/{name}{query}");
    (
        own,
        OwnDatabase {
            admin_url: url.to_string(),
            name,
        },
    )
}

/// Runs one SQL statement on the database at `url` (PostgreSQL or SQLite) directly.
async fn exec(url: &str, stmt: &str) -> Result<u64, String> {
    use sqlx::Connection;
    let e = |e: sqlx::Error| e.to_string();
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.map_err(e)?;
        let done = sqlx::query(stmt).execute(&mut c).await.map_err(e)?;
        Ok(done.rows_affected())
    } else {
        let mut c = sqlx::SqliteConnection::connect(url).await.map_err(e)?;
        let done = sqlx::query(stmt).execute(&mut c).await.map_err(e)?;
        Ok(done.rows_affected())
    }
}

fn sql(url: &str, stmt: &str) -> u64 {
    block_on(exec(url, stmt)).unwrap_or_else(|e| panic!("{stmt}: {e}"))
}

/// Two rows from seven years ago, written as the gateway writes them.
fn append_old_rows(db: &str) {
    let old = gatehouse::audit::now_ms() - 7 * 365 * 86_400_000;
    block_on(async {
        let db = gatehouse::auth::users::UserDb::connect(Some(db))
            .await
            .expect("connect");
        db.migrate().await.expect("migrate");
        let entry = |i: i64| gatehouse::audit::Entry {
            at_ms: old + i,
            request_id: format!("old-{i}"),
            user_id: None,
            role: None,
            client_ip: Some("10.0.0.1".into()),
            method: "GET".into(),
            route: "records".into(),
            path: "/api/v1/records/1".into(),
            status: 200,
            upstream: None,
        };
        gatehouse::audit::store::append(&db, &[entry(0), entry(1)])
            .await
            .expect("append");
    });
}

/// Polls until `audit: required` (`/api/v1/vital`) answers 503 `audit_unavailable` within
/// `limit`, asserting on every round that `audit: true` (`/api/v1/records`) still serves; the
/// refusal.
fn required_refused(port: u16, token: &str, limit: Duration) -> Response {
    let mut refused = None;
    let found = wait_until(limit, || {
        let r = with_bearer(port, "/api/v1/records/1", token);
        assert_eq!(r.status, 200, "audit: true keeps serving: {}", r.text());
        let r = get_ok(
            port,
            "/api/v1/vital/1",
            &[("Authorization", &bearer(token)), API_JSON],
        );
        let done = r.status == 503;
        refused = Some(r);
        done
    });
    let r = refused.expect("an answer");
    assert!(found, "audit: required still served: {}", r.text());
    assert_json_error(&r, 503, "audit_unavailable", "audit: required");
    r
}

impl Site {
    fn start(b: Backend) -> Option<Site> {
        Site::start_with(b, "retention: 10y", |_| {})
    }

    /// `audit_keys`: flow-style keys of the `audit:` block; `before`: runs on the database
    /// (migrated, users seeded) before the gateway starts.
    fn start_with(b: Backend, audit_keys: &str, before: impl FnOnce(&str)) -> Option<Site> {
        let (env_db, redis, dir) = b.urls()?;
        let (db, pg) = if b == Backend::PostgresRedis {
            let (url, own) = own_pg_database(&env_db);
            (url, Some(own))
        } else {
            (env_db, None)
        };
        let doctor = seed_users(&db, "audit.test", &[(Role::Doctor, "Doc")]).remove(0);
        before(&db);
        let up = FakeUpstream::start(Behavior::Echo);
        let rest = format!(
            "upstreams:\n{}\nroutes:\n  - {{name: records, prefix: /api/v1/records, upstream: app, auth: optional, audit: true}}\n  - {{name: vital, prefix: /api/v1/vital, upstream: app, auth: required, audit: required}}\n  - {{name: open, prefix: /open, upstream: app}}\nweb:\n  templates: {templates}\n  pages:\n    - {{path: /doctor/dashboard, template: doctor/dashboard.html, title: Panel, auth: required, roles: [doctor], audit: true}}\n    - {{path: /docs, template: docs.html, title: Docs}}\naudit: {{flush_interval: 20ms, {audit_keys}}}\nauth:\n  database_url: \"{db}\"\n  redis_url: \"{redis}\"\n  jwt: {{secret: \"{SECRET}\"}}\n",
            upstream("app", &[up.url()], ""),
            templates = concat!(env!("CARGO_MANIFEST_DIR"), "/templates"),
        );
        let gw = Gw::start(&rest);
        Some(Site {
            db,
            doctor,
            up,
            gw,
            rest,
            _pg: pg,
            _dir: dir,
        })
    }

    /// `gatehouse audit ARGS` on this site's database.
    fn audit(&self, args: &[&str]) -> Output {
        let args = [&["-c", "/nonexistent/gateway.yaml", "audit"], args].concat();
        run_cli(&args, &[("DATABASE_URL", &self.db)], "")
    }

    /// `gatehouse audit export ARGS`: the rows.
    fn export(&self, args: &[&str]) -> Vec<Value> {
        let out = self.audit(&[&["export"], args].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Waits until the export holds `n` rows; them.
    fn rows(&self, n: usize) -> Vec<Value> {
        let mut rows = Vec::new();
        let found = wait_until(POLL, || {
            rows = self.export(&[]);
            rows.len() >= n
        });
        assert!(found, "{} rows exported, not {n}: {rows:#?}", rows.len());
        rows
    }

    /// Waits until a row at `path` is exported; every row then.
    fn rows_with(&self, path: &str) -> Vec<Value> {
        let mut rows = Vec::new();
        let found = wait_until(POLL, || {
            rows = self.export(&[]);
            rows.iter().any(|r| r["path"] == path)
        });
        assert!(found, "no row for {path}: {rows:#?}");
        rows
    }

    /// `audit verify`: `Ok(stdout)` on exit 0, `Err(stderr)` on exit 1.
    fn verify(&self) -> Result<String, String> {
        let out = self.audit(&["verify"]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        match out.status.code() {
            Some(0) => Ok(stdout),
            Some(1) => Err(stderr),
            other => panic!("audit verify exited {other:?}: {stderr}"),
        }
    }
}

fn audited_requests_are_exported_and_a_changed_or_deleted_row_is_found(b: Backend) {
    let Some(site) = Site::start(b) else {
        return;
    };
    let port = site.gw.port;
    let token = login(port, &site.doctor.email);
    let auth = bearer(&token);
    let r = get_ok(
        port,
        "/api/v1/records/7?ssn=123-45-6789",
        &[
            ("Authorization", &auth),
            ("X-Request-Id", "audit-proxied-1"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_ok(port, "/open/x?q=1", &[("Authorization", &auth)]);
    assert_eq!(r.status, 200, "not audited");
    let r = get_ok(port, "/docs", &[]);
    assert_eq!(r.status, 200, "a page without audit");
    let r = get_ok(
        port,
        "/doctor/dashboard?tab=patients",
        &[
            ("Authorization", &auth),
            ("X-Request-Id", "audit-page-1"),
            BROWSER,
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_ok(
        port,
        "/api/v1/records/8",
        &[("X-Request-Id", "audit-anonymous-1")],
    );
    assert_eq!(
        r.status, 200,
        "auth: optional lets anonymous requests through"
    );

    let rows = site.rows(3);
    assert_eq!(rows.len(), 3, "only the audited requests: {rows:#?}");
    let by_id = |id: &str| {
        rows.iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("no row for {id}: {rows:#?}"))
    };
    let proxied = by_id("audit-proxied-1");
    assert_eq!(proxied["user_id"], site.doctor.id.to_string());
    assert_eq!(proxied["role"], "doctor");
    assert_eq!(proxied["client_ip"], "127.0.0.1");
    assert_eq!(proxied["method"], "GET");
    assert_eq!(proxied["route"], "records");
    assert_eq!(proxied["path"], "/api/v1/records/7", "no query string");
    assert_eq!(proxied["status"], 200);
    assert_eq!(proxied["upstream"], site.up.addr());
    assert!(proxied["at_ms"].as_i64().is_some_and(|t| t > 0));
    assert!(proxied["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    let page = by_id("audit-page-1");
    assert_eq!(page["route"], "/doctor/dashboard");
    assert_eq!(page["path"], "/doctor/dashboard");
    assert_eq!(page["user_id"], site.doctor.id.to_string());
    assert_eq!(page["upstream"], Value::Null, "the gateway answered");
    let anonymous = by_id("audit-anonymous-1");
    assert_eq!(anonymous["user_id"], Value::Null);
    assert_eq!(anonymous["role"], Value::Null);
    let text = serde_json::to_string(&rows).expect("json");
    for secret in ["123-45-6789", "tab=", "q=1", token.as_str()] {
        assert!(!text.contains(secret), "{secret:?} in the audit: {text}");
    }

    // Filters.
    let mine = site.export(&["--user", &site.doctor.email]);
    assert_eq!(mine.len(), 2, "{mine:#?}");
    assert_eq!(
        site.export(&["--user", &site.doctor.id.to_string()]).len(),
        2
    );
    assert_eq!(site.export(&["--since", "2999-01-01T00:00:00Z"]).len(), 0);
    assert_eq!(site.export(&["--until", "1000000000"]).len(), 0);
    assert_eq!(
        site.export(&[
            "--since",
            "2020-01-01",
            "--until",
            "2999-01-01T00:00:00+01:00"
        ])
        .len(),
        3
    );
    let bad = site.audit(&["export", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));

    // The chain: intact, then a changed row, then a deleted one.
    let ok = site.verify().expect("an intact chain verifies");
    assert!(ok.contains("3 rows verified"), "{ok}");
    let second = rows[1]["id"].as_i64().expect("id");
    let status = rows[1]["status"].as_i64().expect("status");
    sql(
        &site.db,
        &format!("UPDATE access_audit SET status = 204 WHERE id = {second}"),
    );
    let broken = site.verify().expect_err("a changed row is found");
    assert!(broken.contains(&format!("row {second}:")), "{broken}");
    assert!(broken.contains("hash does not match"), "{broken}");
    sql(
        &site.db,
        &format!("UPDATE access_audit SET status = {status} WHERE id = {second}"),
    );
    site.verify().expect("restored");
    sql(
        &site.db,
        &format!("DELETE FROM access_audit WHERE id = {second}"),
    );
    let broken = site.verify().expect_err("a deleted row is found");
    assert!(broken.contains(&format!("row {}:", second + 1)), "{broken}");
    assert!(broken.contains("missing"), "{broken}");
}

fn a_purge_keeps_the_chain_verifiable(b: Backend) {
    let Some(site) = Site::start(b) else {
        return;
    };
    // The gateway keeps ten years, so its own purges leave these; the command keeps the
    // default six.
    append_old_rows(&site.db);
    let token = login(site.gw.port, &site.doctor.email);
    let r = with_bearer(site.gw.port, "/api/v1/records/2", &token);
    assert_eq!(r.status, 200);
    let rows = site.rows(3);
    assert!(site.verify().is_ok());

    let out = site.audit(&["purge"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("purged 2 rows"), "{said}");
    let left = site.export(&[]);
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0]["id"], rows[2]["id"]);
    let ok = site
        .verify()
        .expect("the chain verifies from the purge anchor");
    assert!(
        ok.contains("1 rows verified") && ok.contains("anchor"),
        "{ok}"
    );
    // New rows extend the purged chain.
    let r = with_bearer(site.gw.port, "/api/v1/records/3", &token);
    assert_eq!(r.status, 200);
    site.rows_with("/api/v1/records/3");
    assert!(site.verify().is_ok());
    // A second purge finds nothing old.
    let out = site.audit(&["purge"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing"));
}

fn an_audit_outage_answers_503_on_required_routes_only(b: Backend) {
    let Some(site) = Site::start(b) else {
        return;
    };
    let port = site.gw.port;
    let token = login(port, &site.doctor.email);
    assert_eq!(with_bearer(port, "/api/v1/vital/1", &token).status, 200);
    site.rows(1);
    let dropped = || {
        site.gw
            .metric("gatehouse_audit_dropped_total", &[("reason", "database")])
    };
    assert_eq!(dropped(), 0.0);

    // The audit table cannot be written.
    sql(
        &site.db,
        "ALTER TABLE access_audit RENAME TO access_audit_away",
    );
    let r = required_refused(port, &token, Duration::from_secs(10));
    assert!(r.header("retry-after").is_some());
    eventually(POLL, "rows dropped and counted", || dropped() > 0.0);
    assert_eq!(
        site.gw.metric("gatehouse_audit_degraded", &[]),
        1.0,
        "degraded while the database fails"
    );
    // While degraded, nothing reaches the upstream on the required route (the requests sent
    // before the writer's first failure were served: the outage was not known yet).
    let vital_seen = || {
        site.up
            .requests()
            .iter()
            .filter(|q| q.target.starts_with("/api/v1/vital"))
            .count()
    };
    let before = vital_seen();
    for _ in 0..3 {
        assert_eq!(with_bearer(port, "/api/v1/vital/1", &token).status, 503);
    }
    assert_eq!(
        vital_seen(),
        before,
        "refused requests never reach the upstream"
    );

    // Back: the writer's probe notices, and required routes serve again.
    sql(
        &site.db,
        "ALTER TABLE access_audit_away RENAME TO access_audit",
    );
    eventually(
        Duration::from_secs(10),
        "audit: required serving again",
        || with_bearer(port, "/api/v1/vital/2", &token).status == 200,
    );
    // What was written before and after the outage is one intact chain.
    site.rows_with("/api/v1/vital/2");
    site.verify()
        .expect("the chain is intact across the outage");
}

/// With `audit.retention` shorter than the rows' age, the gateway's writer purges them itself
/// (at start, then every `purge_interval`), leaving a chain that verifies from the anchor.
fn the_writer_purges_past_the_retention_itself(b: Backend) {
    let Some(site) = Site::start_with(b, "retention: 6y, purge_interval: 1h", append_old_rows)
    else {
        return;
    };
    let token = login(site.gw.port, &site.doctor.email);
    assert_eq!(
        with_bearer(site.gw.port, "/api/v1/records/9", &token).status,
        200
    );
    let rows = site.rows_with("/api/v1/records/9");
    assert_eq!(rows.len(), 1, "the old rows are gone: {rows:#?}");
    assert_eq!(rows[0]["id"], 3, "ids go on after the purged rows");
    let ok = site.verify().expect("verifies from the anchor");
    assert!(ok.contains("anchor at row 2"), "{ok}");
}

/// Two gateways writing to one database at once take turns on the chain's head: every row is
/// written once, ids have no gaps, and the chain verifies.
fn two_gateways_on_one_database_extend_one_chain(b: Backend) {
    let Some(site) = Site::start(b) else {
        return;
    };
    let other = Gw::start(&site.rest);
    let per_client = 40;
    // Anonymous (the route's auth is optional): the in-process session stores of two
    // gateways do not share sessions.
    std::thread::scope(|s| {
        for (n, port) in [site.gw.port, other.port, site.gw.port, other.port]
            .into_iter()
            .enumerate()
        {
            s.spawn(move || {
                for i in 0..per_client {
                    let r = get_ok(port, &format!("/api/v1/records/{n}-{i}"), &[]);
                    assert_eq!(r.status, 200);
                }
            });
        }
    });
    let rows = site.rows(4 * per_client);
    assert_eq!(rows.len(), 4 * per_client);
    let ids: Vec<i64> = rows.iter().filter_map(|r| r["id"].as_i64()).collect();
    assert_eq!(ids, (1..=4 * per_client as i64).collect::<Vec<_>>());
    let ok = site.verify().expect("one chain");
    assert!(
        ok.contains(&format!("{} rows verified", 4 * per_client)),
        "{ok}"
    );
}

/// A route's `audit` reloads with the routes; the `audit:` block (queue, writer) needs a
/// restart and says so.
fn route_audit_modes_reload_and_the_audit_block_needs_a_restart(b: Backend) {
    let Some(site) = Site::start(b) else {
        return;
    };
    let port = site.gw.port;
    let audited_open = site.rest.replace(
        "{name: open, prefix: /open, upstream: app}",
        "{name: open, prefix: /open, upstream: app, audit: true}",
    );
    assert_ne!(audited_open, site.rest);
    let restart = site
        .gw
        .running
        .reload(site.gw.config_for(&audited_open))
        .expect("reload");
    assert!(!restart.contains(&"audit"), "{restart:?}");
    assert_eq!(get_ok(port, "/open/after-reload", &[]).status, 200);
    let rows = site.rows_with("/open/after-reload");
    assert_eq!(rows[0]["route"], "open");
    let bigger_queue = audited_open.replace("retention: 10y", "retention: 10y, queue_capacity: 5");
    let restart = site
        .gw
        .running
        .reload(site.gw.config_for(&bigger_queue))
        .expect("reload");
    assert!(restart.contains(&"audit"), "{restart:?}");
}

/// The audit database itself goes away (our own PostgreSQL, stopped and started again):
/// `audit: required` answers 503 while it is down, `audit: true` keeps serving, and both come
/// back without a restart, the chain intact.
#[test]
fn a_stopped_postgres_fails_required_routes_closed_and_they_recover() {
    let Some(mut pg) = OwnPostgres::start() else {
        return;
    };
    let db = pg.url();
    let doctor = seed_users(&db, "audit-pg.test", &[(Role::Doctor, "Doc")]).remove(0);
    let up = FakeUpstream::start(Behavior::Echo);
    let gw = Gw::start(&format!(
        "upstreams:\n{}\nroutes:\n  - {{name: records, prefix: /api/v1/records, upstream: app, auth: required, audit: true}}\n  - {{name: vital, prefix: /api/v1/vital, upstream: app, auth: required, audit: required}}\naudit: {{flush_interval: 20ms}}\nauth:\n  database_url: \"{db}\"\n  jwt: {{secret: \"{SECRET}\"}}\n",
        upstream("app", &[up.url()], ""),
    ));
    let port = gw.port;
    let token = login(port, &doctor.email);
    assert_eq!(with_bearer(port, "/api/v1/vital/1", &token).status, 200);

    pg.stop_immediately();
    required_refused(port, &token, Duration::from_secs(15));

    assert!(pg.start_server(), "PostgreSQL restarts");
    eventually(
        Duration::from_secs(20),
        "audit: required serving again",
        || with_bearer(port, "/api/v1/vital/2", &token).status == 200,
    );
    let verify = run_cli(
        &["-c", "/nonexistent/gateway.yaml", "audit", "verify"],
        &[("DATABASE_URL", db.as_str())],
        "",
    );
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    drop(gw);
}

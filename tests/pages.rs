//! Server-rendered pages through the running gateway: the repo's templates and assets,
//! security headers, auto-escaping, protected pages and their data sources (identity headers,
//! failures that never break a page), HTML-or-JSON error answers by client type, static assets
//! (validators, conditional requests, HEAD, compression, no way out of the folder), template
//! problems reported by `check`, and the logout flash message.
//!
//! The working directory of `cargo test` is the crate root, so `templates` and `assets` in the
//! YAML are the repo's folders.

mod common;
use common::*;

use gatehouse::auth::users::Role;
use serde_json::{json, Value};
use std::io::Read;
use std::time::Duration;

const CSRF_COOKIE: &str = "predicthealth_csrf";
const FLASH_COOKIE: &str = "predicthealth_flash";

// ------------------------------------------------------------------------------------------
// Helpers: users, gateways, HTML
// ------------------------------------------------------------------------------------------

/// YAML for pools of these names whose one backend is down (pages that only list them).
fn dead_pools(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| upstream(n, &[dead_backend()], "") + "\n")
        .collect()
}

struct Site {
    gw: Gw,
    users: Vec<Account>,
    /// The configuration after its `server:` block (for reloads).
    rest: String,
}

impl Site {
    /// `upstreams` is the body of `upstreams:` (must define `profiles` and `appointments`),
    /// `routes` a whole `routes:` block (or empty).
    fn start(upstreams: &str, routes: &str, data_timeout: &str, users: &[(Role, &str)]) -> Site {
        let db = temp_db_url("pages");
        let users = seed_users(&db, "pages.test", users);
        let rest = format!(
            "upstreams:\n{upstreams}\n{routes}\nauth:\n  database_url: \"{db}\"\n  jwt: {{secret: \"{SECRET}\"}}\n  login: {{max_failures_per_account: 5, max_failures_per_ip: 1000, window: 15m}}\n{}",
            web_block(data_timeout)
        );
        Site {
            gw: Gw::start(&rest),
            users,
            rest,
        }
    }

    /// Pools `profiles` and `appointments` with these backends (data sources only).
    fn with_sources(profiles: &str, appointments: &str, users: &[(Role, &str)]) -> Site {
        let ups = format!(
            "{}\n{}\n",
            upstream("profiles", &[profiles.to_string()], ""),
            upstream("appointments", &[appointments.to_string()], "")
        );
        Site::start(&ups, "", "500ms", users)
    }

    fn port(&self) -> u16 {
        self.gw.port
    }

    /// Reloads the gateway in place with `rest` (what follows the `server:` block).
    fn reload(&self, rest: &str) {
        self.gw
            .running
            .reload(self.gw.config_for(rest))
            .expect("reload");
    }

    /// Logs `user` in through `POST /api/v1/auth/login`; returns the access token.
    fn login(&self, user: &Account) -> String {
        login(self.port(), &user.email)
    }

    /// GET as a browser carrying the session cookie.
    fn browse(&self, path: &str, token: &str) -> Response {
        let cookie = format!("{SESSION_COOKIE}={token}");
        self.gw.get_with(path, &[BROWSER, ("Cookie", &cookie)])
    }
}

/// A fake upstream answering 200 JSON `body`.
fn json_upstream(body: &Value) -> FakeUpstream {
    FakeUpstream::responding(
        200,
        &[("Content-Type", "application/json")],
        &body.to_string(),
    )
}

fn appointments_json() -> Value {
    json!([{"date": "2031-04-05", "doctor": "Dra. Quiroga Ferrando", "reason": "Revisión anual"}])
}

/// The security headers every HTML answer carries.
fn assert_html_security_headers(r: &Response, what: &str) {
    let csp = r.header("content-security-policy").unwrap_or_else(|| {
        panic!(
            "{what}: no Content-Security-Policy; headers {:?}",
            r.headers
        )
    });
    assert!(
        !csp.contains("unsafe-inline"),
        "{what}: CSP allows inline code: {csp}"
    );
    assert!(
        !csp.contains("unsafe-eval"),
        "{what}: CSP allows eval: {csp}"
    );
    assert!(
        csp.contains("frame-ancestors 'none'"),
        "{what}: CSP lacks frame-ancestors 'none': {csp}"
    );
    assert!(
        csp.contains("script-src 'self'") || csp.contains("default-src 'self'"),
        "{what}: CSP does not restrict scripts: {csp}"
    );
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}: X-Content-Type-Options"
    );
    assert!(
        r.header("referrer-policy").is_some_and(|v| !v.is_empty()),
        "{what}: no Referrer-Policy; headers {:?}",
        r.headers
    );
}

/// The tags of `html` (lowercased, from `<` to `>`); text between tags is never a tag, since
/// escaped text holds no `<`.
fn tags(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = lower[from..].find('<') {
        let start = from + i;
        let end = lower[start..]
            .find('>')
            .map_or(lower.len(), |e| start + e + 1);
        out.push(lower[start..end].to_string());
        from = end;
    }
    out
}

/// Attribute names of a tag (tokens with `=` after the tag name).
fn attribute_names(tag: &str) -> Vec<&str> {
    tag.trim_start_matches('<')
        .trim_end_matches('>')
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.split_once('=').map(|(name, _)| name))
        .collect()
}

/// No inline script, no `<style>` element, no `style=` or `on…=` attribute: the CSP forbids
/// them, so the pages must not need them.
fn assert_no_inline_code(html: &str, what: &str) {
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("<script") {
        let start = from + i;
        let end = lower[start..]
            .find('>')
            .map_or(lower.len(), |e| start + e + 1);
        let tag = &lower[start..end];
        assert!(
            attribute_names(tag).contains(&"src"),
            "{what}: inline <script> without src: {}",
            &html[start..end]
        );
        assert!(
            lower[end..].trim_start().starts_with("</script>"),
            "{what}: <script src> with inline content: {}",
            &html[start..(end + 80).min(html.len())]
        );
        from = end;
    }
    for tag in tags(html) {
        assert!(!tag.starts_with("<style"), "{what}: inline <style> element");
        for name in attribute_names(&tag) {
            assert!(
                name != "style" && !name.starts_with("on"),
                "{what}: inline {name}= attribute in {tag}"
            );
        }
    }
}

/// The `value` of the `<input … name="NAME" …>` in `html`.
fn input_value<'a>(html: &'a str, name: &str) -> &'a str {
    let marker = format!("name=\"{name}\"");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no input {marker} in:\n{html}"));
    let tag_start = html[..at].rfind('<').expect("tag start");
    let tag_end = at + html[at..].find('>').expect("tag end");
    let tag = &html[tag_start..tag_end];
    let v = tag
        .find("value=\"")
        .unwrap_or_else(|| panic!("input {name} has no value: {tag}"))
        + "value=\"".len();
    let len = tag[v..].find('"').expect("value end");
    &tag[v..v + len]
}

/// Asserts `r` is the HTML error page for `status` (browser side), with the security headers.
fn assert_html_error(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(
        content_type(r),
        "text/html; charset=utf-8",
        "{what}: content type"
    );
    assert_html_security_headers(r, what);
    let html = r.text();
    assert!(
        html.contains(&status.to_string()) && html.to_ascii_lowercase().contains("<html"),
        "{what}: not the error page for {status}:\n{html}"
    );
    assert!(
        serde_json::from_slice::<Value>(&r.body).is_err(),
        "{what}: a browser got JSON"
    );
    assert_no_inline_code(&html, what);
}

// ------------------------------------------------------------------------------------------
// 1. Pages render
// ------------------------------------------------------------------------------------------

#[test]
fn public_pages_render_as_html_with_strict_security_headers_and_no_inline_code() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[]);
    for path in ["/", "/login", "/docs"] {
        let r = site.gw.get_with(path, &[BROWSER]);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        assert_eq!(content_type(&r), "text/html; charset=utf-8", "GET {path}");
        assert_html_security_headers(&r, path);
        let html = r.text();
        assert!(
            html.starts_with("<!doctype html>") || html.trim_start().starts_with("<!doctype html>"),
            "GET {path}: not an HTML document"
        );
        assert!(html.contains("</html>"), "GET {path}: truncated page");
        assert_no_inline_code(&html, path);
    }
}

/// The docs page's route list is made once per configuration, not once per process: after a
/// reload it lists the routes now in force.
#[test]
fn docs_page_lists_the_routes_of_the_configuration_in_force_after_a_reload() {
    let ups = dead_pools(&["profiles", "appointments", "doctors"]);
    let before = "routes:\n  - {name: doctors, prefix: /api/v1/doctors, upstream: doctors}\n";
    let after = "routes:\n  - {name: agenda, prefix: /api/v1/agenda, upstream: appointments}\n";
    let site = Site::start(&ups, before, "500ms", &[]);
    let docs = || {
        let r = site.gw.get_with("/docs", &[BROWSER]);
        assert_eq!(r.status, 200, "{}", r.text());
        unescape(element(&r.text(), "routes-table", "</table>"))
    };
    let first = docs();
    assert!(first.contains("<code>/api/v1/doctors</code>"), "{first}");
    assert!(!first.contains("/api/v1/agenda"), "{first}");
    // The list is made on first use; a second render shows the same.
    assert_eq!(docs(), first);

    site.reload(&site.rest.replace(before, after));
    let reloaded = docs();
    assert!(
        reloaded.contains("<code>/api/v1/agenda</code>"),
        "{reloaded}"
    );
    assert!(!reloaded.contains("/api/v1/doctors"), "{reloaded}");
}

#[test]
fn docs_page_lists_every_route_with_its_prefix_upstream_and_auth_mode() {
    let ups = dead_pools(&["profiles", "appointments", "doctors", "catalog"]);
    let routes = "routes:
  - {name: doctors, prefix: /api/v1/doctors, upstream: doctors, auth: required}
  - {name: catalog, prefix: /api/v1/catalog, upstream: catalog, auth: optional}
  - {name: public_info, prefix: /api/v1/info, upstream: appointments}
";
    let site = Site::start(&ups, routes, "500ms", &[]);
    let r = site.gw.get_with("/docs", &[BROWSER]);
    assert_eq!(r.status, 200, "{}", r.text());
    let html = r.text();
    let table = element(&html, "routes-table", "</table>");
    let table = unescape(table);
    let rows: Vec<&str> = table.split("<tr>").skip(1).collect();
    for (prefix, upstream_name, badge) in [
        ("/api/v1/doctors", "doctors", "Requerida"),
        ("/api/v1/catalog", "catalog", "Opcional"),
        ("/api/v1/info", "appointments", "Pública"),
    ] {
        let row = rows
            .iter()
            .find(|row| row.contains(&format!("<code>{prefix}</code>")))
            .unwrap_or_else(|| panic!("route {prefix} not listed in:\n{table}"));
        assert!(
            row.contains(&format!("<code>{upstream_name}</code>")),
            "route {prefix}: upstream {upstream_name} not shown in row:\n{row}"
        );
        assert!(
            row.contains(badge),
            "route {prefix}: auth mode {badge} not shown in row:\n{row}"
        );
    }
}

#[test]
fn doctor_login_form_posts_to_doctor_portal_with_the_cookie_s_csrf_token_masked() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[]);
    let r = site.gw.get_with("/login?portal=doctor", &[BROWSER]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_html_security_headers(&r, "/login?portal=doctor");
    let html = r.text();
    let form = element(&html, "login-form", "</form>");
    assert!(
        html.contains("action=\"/api/web/auth/doctor/login\""),
        "form does not post to the doctor portal:\n{form}"
    );
    assert!(
        form.contains("method=\"post\""),
        "form is not a POST:\n{form}"
    );
    let token = input_value(&html, "csrf_token");
    let line = set_cookie(&r, CSRF_COOKIE).unwrap_or_else(|| {
        panic!(
            "no {CSRF_COOKIE} cookie set; Set-Cookie: {:?}",
            r.header_all("set-cookie")
        )
    });
    assert!(!token.is_empty(), "empty csrf_token");
    let cookie = cookie_value(line).to_string();
    // Masked: the page never shows the cookie's bytes (a compressed page's size must not
    // tell them, BREACH), and every page shows other bytes for the same cookie.
    assert!(!html.contains(&cookie), "the bare token is on the page");
    assert_eq!(
        gatehouse::forms::csrf_unmask(token).as_deref(),
        Some(cookie.as_str()),
        "hidden csrf_token does not unmask to the cookie"
    );
    let again = site.gw.get_with(
        "/login?portal=doctor",
        &[BROWSER, ("Cookie", &format!("{CSRF_COOKIE}={cookie}"))],
    );
    let html2 = again.text();
    let token2 = input_value(&html2, "csrf_token");
    assert!(
        set_cookie(&again, CSRF_COOKIE).is_none(),
        "a new cookie for a valid one"
    );
    assert_ne!(token2, token, "the same masked bytes on two pages");
    assert_eq!(
        gatehouse::forms::csrf_unmask(token2).as_deref(),
        Some(cookie.as_str())
    );
}

// ------------------------------------------------------------------------------------------
// 2. Auto-escaping
// ------------------------------------------------------------------------------------------

#[test]
fn display_name_with_markup_is_escaped_on_the_dashboard() {
    let profiles = json_upstream(&json!({"full_name": "Perfil"}));
    let appts = json_upstream(&appointments_json());
    let site = Site::with_sources(
        &profiles.url(),
        &appts.url(),
        &[(Role::Patient, "<script>alert(1)</script>")],
    );
    let token = site.login(&site.users[0]);
    let r = site.browse("/patient/dashboard", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let html = r.text();
    assert!(
        !html.contains("<script>alert"),
        "the display name reached the page unescaped"
    );
    let welcome = element(&html, "welcome", "</h1>");
    assert!(
        welcome.contains("&lt;script&gt;alert(1)"),
        "the escaped display name is not in the welcome heading: {welcome}"
    );
    assert_no_inline_code(&html, "dashboard with hostile name");
}

#[test]
fn data_source_values_with_markup_are_escaped() {
    let profiles = json_upstream(&json!({"nota": "<img src=x onerror=alert(1)>"}));
    let appts = json_upstream(&appointments_json());
    let site = Site::with_sources(&profiles.url(), &appts.url(), &[(Role::Patient, "Ana")]);
    let token = site.login(&site.users[0]);
    let r = site.browse("/patient/dashboard", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let html = r.text();
    assert!(
        !html.contains("<img src=x"),
        "upstream markup reached the page unescaped"
    );
    let section = element(&html, "source-profile", "</section>");
    assert!(
        section.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "the escaped value is not shown in the profile section:\n{section}"
    );
    assert_no_inline_code(&html, "dashboard with hostile data");
}

// ------------------------------------------------------------------------------------------
// 3. Protected pages
// ------------------------------------------------------------------------------------------

#[test]
fn anonymous_browser_on_protected_page_is_redirected_to_login_with_next() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[]);
    let r = site.gw.get_with("/patient/dashboard", &[BROWSER]);
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some("/login?next=/patient/dashboard"),
        "headers {:?}",
        r.headers
    );
}

#[test]
fn anonymous_api_client_on_protected_page_gets_401_json() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[]);
    let r = site.gw.get_with("/patient/dashboard", &[API_JSON]);
    json_error(&r, 401, "anonymous API client");
    assert!(r.header("location").is_none(), "API client was redirected");
}

#[test]
fn doctor_on_patient_dashboard_gets_403_html_error_page() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[(Role::Doctor, "Doc")]);
    let token = site.login(&site.users[0]);
    let r = site.browse("/patient/dashboard", &token);
    assert_html_error(&r, 403, "doctor on patient dashboard");
    assert!(
        r.text().contains("Acceso denegado"),
        "no Spanish 403 text:\n{}",
        r.text()
    );
}

#[test]
fn signed_in_patient_sees_their_name_and_the_upstream_data() {
    let profiles = json_upstream(&json!({"full_name": "Ana Beltrán Ocaña", "blood_type": "O+"}));
    let appts = json_upstream(&appointments_json());
    let site = Site::with_sources(
        &profiles.url(),
        &appts.url(),
        &[(Role::Patient, "Ana Beltrán")],
    );
    let token = site.login(&site.users[0]);
    let r = site.browse("/patient/dashboard", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(content_type(&r), "text/html; charset=utf-8");
    assert_html_security_headers(&r, "patient dashboard");
    let html = r.text();
    let welcome = element(&html, "welcome", "</h1>");
    assert!(
        welcome.contains("Ana Beltrán"),
        "name not in welcome: {welcome}"
    );
    let profile = element(&html, "source-profile", "</section>");
    assert!(
        profile.contains("Ana Beltrán Ocaña") && profile.contains("O+"),
        "profile data not rendered:\n{profile}"
    );
    assert!(!profile.contains("class=\"unavailable\""), "{profile}");
    let appointments = element(&html, "source-appointments", "</section>");
    assert!(
        appointments.contains("Dra. Quiroga Ferrando") && appointments.contains("2031-04-05"),
        "appointments not rendered:\n{appointments}"
    );
    assert_no_inline_code(&html, "patient dashboard");
}

// ------------------------------------------------------------------------------------------
// 4. Data source failures never break the page
// ------------------------------------------------------------------------------------------

/// Renders the dashboard with `profiles` failing and a working `appointments` source.
fn assert_profile_unavailable_appointments_shown(profiles_url: &str, what: &str) {
    let appts = json_upstream(&appointments_json());
    let site = Site::with_sources(profiles_url, &appts.url(), &[(Role::Patient, "Ana")]);
    let token = site.login(&site.users[0]);
    let r = site.browse("/patient/dashboard", &token);
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert_eq!(content_type(&r), "text/html; charset=utf-8", "{what}");
    let html = r.text();
    let profile = element(&html, "source-profile", "</section>");
    assert!(
        profile.contains("class=\"unavailable\"") && profile.contains("no está disponible"),
        "{what}: the failed source does not show the unavailable notice:\n{profile}"
    );
    let appointments = element(&html, "source-appointments", "</section>");
    assert!(
        !appointments.contains("class=\"unavailable\""),
        "{what}: the working source is marked unavailable:\n{appointments}"
    );
    assert!(
        appointments.contains("Dra. Quiroga Ferrando"),
        "{what}: the working source is not rendered:\n{appointments}"
    );
    assert!(
        element(&html, "welcome", "</h1>").contains("Ana"),
        "{what}: the page lost its user"
    );
}

#[test]
fn dashboard_renders_when_a_data_backend_is_dead() {
    assert_profile_unavailable_appointments_shown(&dead_backend(), "dead backend");
}

#[test]
fn dashboard_renders_when_a_data_backend_answers_500() {
    let profiles = FakeUpstream::start(Behavior::Respond {
        status: 500,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: r#"{"detail": "boom"}"#.into(),
    });
    assert_profile_unavailable_appointments_shown(&profiles.url(), "500 backend");
}

#[test]
fn a_data_source_is_retried_on_another_backend_of_its_pool() {
    // `profiles` has a dead backend and a working one; passive health may keep the dead one
    // out after it fails, but round robin sends the first request of each to it. Every render
    // still shows the profile: a failed GET is tried again on the other backend.
    let good = json_upstream(&json!({"full_name": "Ana Beltrán Ocaña", "blood_type": "O+"}));
    let busy = FakeUpstream::start(Behavior::Respond {
        status: 503,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: r#"{"detail": "busy"}"#.into(),
    });
    let appts = json_upstream(&appointments_json());
    for (what, other) in [("dead backend", dead_backend()), ("503", busy.url())] {
        let ups = format!(
            "{}\n{}\n",
            upstream("profiles", &[other.clone(), good.url()], ""),
            upstream("appointments", &[appts.url()], "")
        );
        let site = Site::start(&ups, "", "2s", &[(Role::Patient, "Ana")]);
        let token = site.login(&site.users[0]);
        for i in 0..4 {
            let r = site.browse("/patient/dashboard", &token);
            assert_eq!(r.status, 200, "{what} #{i}: {}", r.text());
            let profile = element(&r.text(), "source-profile", "</section>").to_string();
            assert!(
                profile.contains("Ana Beltrán Ocaña") && !profile.contains("unavailable"),
                "{what} #{i}: the profile was not fetched from the working backend:\n{profile}"
            );
        }
    }
    assert!(busy.request_count() >= 1, "the 503 backend was never tried");
}

#[test]
fn dashboard_renders_when_a_data_backend_answers_non_json() {
    let profiles = FakeUpstream::start(Behavior::Respond {
        status: 200,
        headers: vec![("Content-Type".into(), "text/html".into())],
        body: "<html><body>not json</body></html>".into(),
    });
    assert_profile_unavailable_appointments_shown(&profiles.url(), "non-JSON backend");
}

#[test]
fn dashboard_renders_when_a_data_backend_hangs_past_data_timeout() {
    // The pool's own read timeout is long: only web.data_timeout (500ms) can end the wait
    // before the client gives up (10 s).
    let profiles = FakeUpstream::start(Behavior::Hang);
    let appts = json_upstream(&appointments_json());
    let ups = format!(
        "{}\n{}\n",
        upstream(
            "profiles",
            &[profiles.url()],
            "    timeouts: {connect: 2s, read: 60s, total: 120s}\n"
        ),
        upstream("appointments", &[appts.url()], "")
    );
    let site = Site::start(&ups, "", "500ms", &[(Role::Patient, "Ana")]);
    let token = site.login(&site.users[0]);
    let r = site.browse("/patient/dashboard", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let html = r.text();
    let profile = element(&html, "source-profile", "</section>");
    assert!(
        profile.contains("class=\"unavailable\"") && profile.contains("no está disponible"),
        "the hanging source does not show the unavailable notice:\n{profile}"
    );
    let appointments = element(&html, "source-appointments", "</section>");
    assert!(
        appointments.contains("Dra. Quiroga Ferrando") && !appointments.contains("unavailable"),
        "the working source is not rendered:\n{appointments}"
    );
    assert_eq!(profiles.request_count(), 1, "the hanging source was asked");
}

// ------------------------------------------------------------------------------------------
// 5. Data sources carry identity
// ------------------------------------------------------------------------------------------

#[test]
fn data_source_requests_carry_the_user_identity_and_the_filled_path() {
    let profiles = FakeUpstream::start(Behavior::Echo);
    let appts = FakeUpstream::start(Behavior::Echo);
    let site = Site::with_sources(&profiles.url(), &appts.url(), &[(Role::Patient, "Ana")]);
    let user = site.users[0].clone();
    let token = site.login(&user);
    let r = site.browse("/patient/dashboard", &token);
    assert_eq!(r.status, 200, "{}", r.text());

    for (up, target) in [
        (&profiles, format!("/api/v1/patients/{}", user.id)),
        (&appts, format!("/api/v1/patients/{}/appointments", user.id)),
    ] {
        let reqs = up.requests();
        assert_eq!(reqs.len(), 1, "{target}: requests {reqs:?}");
        let req = &reqs[0];
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, target, "placeholder not filled");
        assert_eq!(
            req.header_all("authorization"),
            vec![format!("Bearer {token}").as_str()],
            "{target}: Authorization"
        );
        assert_eq!(
            req.header_all("x-user-id"),
            vec![user.id.to_string().as_str()],
            "{target}: X-User-Id"
        );
        assert_eq!(
            req.header_all("x-user-role"),
            vec!["patient"],
            "{target}: X-User-Role"
        );
    }
}

// ------------------------------------------------------------------------------------------
// 6. Client detection for errors
// ------------------------------------------------------------------------------------------

#[test]
fn unknown_path_is_html_404_for_browsers_and_json_for_api_clients() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[]);
    let r = site.gw.get_with("/no/such/page", &[BROWSER]);
    assert_html_error(&r, 404, "browser 404");
    assert!(
        r.text().contains("no encontrada"),
        "no Spanish 404 text:\n{}",
        r.text()
    );

    let api_cases: [(&str, &[(&str, &str)]); 4] = [
        ("/api/no/such/thing", &[BROWSER]),
        ("/no/such/page", &[API_JSON]),
        (
            "/no/such/page",
            &[BROWSER, ("X-Requested-With", "XMLHttpRequest")],
        ),
        ("/no/such/page", &[]),
    ];
    for (path, headers) in api_cases {
        let r = site.gw.get_with(path, headers);
        json_error(&r, 404, &format!("API 404 {path} {headers:?}"));
    }
}

#[test]
fn wrong_method_is_html_405_for_browsers_and_json_for_api_clients() {
    let up = FakeUpstream::start(Behavior::Echo);
    let ups = format!(
        "{}\n{}\n{}\n",
        upstream("profiles", &[dead_backend()], ""),
        upstream("appointments", &[dead_backend()], ""),
        upstream("app", &[up.url()], ""),
    );
    let routes = "routes:
  - {name: readonly, prefix: /readonly, upstream: app, methods: [GET]}
  - {name: readonly_api, prefix: /api/readonly, upstream: app, methods: [GET]}
";
    let site = Site::start(&ups, routes, "500ms", &[]);
    let post = |path: &str, headers: &[(&str, &str)]| {
        request(site.port(), "POST", path, headers, b"")
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    };

    // A page and a route, from a browser.
    for path in ["/", "/readonly/x"] {
        let r = post(path, &[BROWSER]);
        assert_html_error(&r, 405, &format!("browser POST {path}"));
        assert!(
            r.header("allow").is_some(),
            "POST {path}: no Allow header; {:?}",
            r.headers
        );
    }
    // The same from API clients.
    for (path, headers) in [
        ("/", &[API_JSON][..]),
        ("/readonly/x", &[API_JSON][..]),
        ("/api/readonly/x", &[BROWSER][..]),
        ("/readonly/x", &[("X-Requested-With", "XMLHttpRequest")][..]),
    ] {
        let r = post(path, headers);
        json_error(&r, 405, &format!("API POST {path} {headers:?}"));
        assert!(r.header("allow").is_some(), "POST {path}: no Allow header");
    }
    assert_eq!(
        up.request_count(),
        0,
        "a refused method reached the upstream"
    );
}

/// A site with routes `/svc` and `/api/svc` to pool `svc` (`pool_extra` lines) with
/// `route_extra` flow-mapping entries.
fn proxy_site(backend: &str, pool_extra: &str, route_extra: &str) -> Site {
    let ups = format!(
        "{}\n{}\n{}\n",
        upstream("profiles", &[dead_backend()], ""),
        upstream("appointments", &[dead_backend()], ""),
        upstream("svc", &[backend.to_string()], pool_extra),
    );
    let routes = format!(
        "routes:
  - {{name: svc, prefix: /svc, upstream: svc{route_extra}}}
  - {{name: svc_api, prefix: /api/svc, upstream: svc{route_extra}}}
"
    );
    Site::start(&ups, &routes, "500ms", &[])
}

/// `/svc/x` from a browser → HTML `status`; from API clients → JSON `status`.
fn assert_upstream_failure_by_client(site: &Site, status: u16, what: &str) {
    let r = site.gw.get_with("/svc/x", &[BROWSER]);
    assert_html_error(&r, status, &format!("{what}: browser"));
    let api_cases: [(&str, &[(&str, &str)]); 3] = [
        ("/svc/x", &[API_JSON]),
        ("/api/svc/x", &[BROWSER]),
        ("/svc/x", &[BROWSER, ("X-Requested-With", "XMLHttpRequest")]),
    ];
    for (path, headers) in api_cases {
        let r = site.gw.get_with(path, headers);
        json_error(&r, status, &format!("{what}: API {path} {headers:?}"));
    }
}

#[test]
fn refused_backend_is_502_html_for_browsers_and_json_for_api_clients() {
    let site = proxy_site(&dead_backend(), "", ", retry: {retries: 0}");
    assert_upstream_failure_by_client(&site, 502, "connection refused");
}

#[test]
fn no_healthy_backend_is_503_html_for_browsers_and_json_for_api_clients() {
    let up = FakeUpstream::start(Behavior::Echo);
    up.health_status(500);
    let site = proxy_site(
        &up.url(),
        "    health_check: {path: /health, interval: 200ms, timeout: 1s, rise: 1, fall: 1}\n",
        "",
    );
    // The first check runs before serving; poll in case it is still settling.
    let out = wait_until(Duration::from_secs(5), || {
        site.gw.get_with("/svc/x", &[API_JSON]).status == 503
    });
    assert!(out, "the unhealthy pool never answered 503");
    assert_upstream_failure_by_client(&site, 503, "no healthy backend");
    let r = site.gw.get_with("/svc/x", &[BROWSER]);
    assert!(
        r.header("retry-after").is_some(),
        "503 page without Retry-After"
    );
    assert_eq!(up.request_count(), 0, "an unhealthy backend got traffic");
}

#[test]
fn hanging_upstream_is_504_html_for_browsers_and_json_for_api_clients() {
    let up = FakeUpstream::start(Behavior::Hang);
    let site = proxy_site(
        &up.url(),
        "",
        ", timeouts: {read: 300ms}, retry: {retries: 0}",
    );
    assert_upstream_failure_by_client(&site, 504, "hanging upstream");
}

// ------------------------------------------------------------------------------------------
// 7. Static assets
// ------------------------------------------------------------------------------------------

const CSS: &str = "/assets/css/site.css";

fn site_css_on_disk() -> Vec<u8> {
    std::fs::read("assets/css/site.css").expect("read assets/css/site.css")
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(b, 4096)
        .read_to_end(&mut out)
        .expect("brotli decode");
    out
}

/// Sends `first` then a plain `GET /assets/css/site.css` on one keep-alive connection; returns
/// both responses. The second parses only if the first carried no stray body bytes.
fn then_get_same_connection(port: u16, first: &str, head: bool) -> (Response, Response) {
    let mut c = Conn::open(port).expect("connect");
    c.send(first.as_bytes()).expect("send first");
    let a = c.read_response(head).expect("first response");
    c.send(
        format!("GET {CSS} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("send second");
    let b = c
        .read_response(false)
        .expect("second response on the same connection");
    (a, b)
}

#[test]
fn stylesheet_is_served_with_type_validators_and_cache_control() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[]);
    let r = site.gw.get_with(CSS, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        content_type(&r).starts_with("text/css"),
        "content type {:?}",
        r.header("content-type")
    );
    assert!(
        r.header("etag")
            .is_some_and(|e| e.starts_with('"') || e.starts_with("W/\"")),
        "no ETag: {:?}",
        r.headers
    );
    let lm = r.header("last-modified").expect("Last-Modified");
    assert!(
        lm.ends_with("GMT"),
        "Last-Modified is not an HTTP date: {lm}"
    );
    assert!(
        r.header("cache-control")
            .is_some_and(|v| v.contains("max-age")),
        "Cache-Control: {:?}",
        r.header("cache-control")
    );
    assert!(r.header("content-encoding").is_none(), "encoded unasked");
    assert_eq!(r.body, site_css_on_disk(), "body differs from the file");
}

#[test]
fn stylesheet_with_matching_etag_is_304_without_a_body() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[]);
    let first = site.gw.get_with(CSS, &[]);
    assert_eq!(first.status, 200);
    let etag = first.header("etag").expect("ETag").to_string();
    let (r, next) = then_get_same_connection(
        site.port(),
        &format!("GET {CSS} HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: {etag}\r\n\r\n"),
        false,
    );
    assert_eq!(r.status, 304, "headers {:?}", r.headers);
    assert!(r.body.is_empty());
    assert!(
        r.header("content-length").is_none_or(|v| v.trim() == "0"),
        "304 with a Content-Length: {:?}",
        r.header("content-length")
    );
    assert_eq!(
        r.header("etag"),
        Some(etag.as_str()),
        "304 without the ETag"
    );
    // The next response on the connection parses: the 304 had no body bytes.
    assert_eq!(next.status, 200);
    assert_eq!(next.body, first.body);
}

#[test]
fn head_of_stylesheet_has_length_but_no_body() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[]);
    let full = site.gw.get_with(CSS, &[]);
    assert_eq!(full.status, 200);
    let (r, next) = then_get_same_connection(
        site.port(),
        &format!("HEAD {CSS} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        true,
    );
    assert_eq!(r.status, 200, "headers {:?}", r.headers);
    assert_eq!(
        r.header("content-length"),
        Some(full.body.len().to_string().as_str()),
        "HEAD Content-Length"
    );
    assert!(content_type(&r).starts_with("text/css"));
    assert!(r.header("etag").is_some(), "HEAD without ETag");
    // The next response on the connection parses: HEAD sent no body bytes.
    assert_eq!(next.status, 200);
    assert_eq!(next.body, full.body);
}

/// An answer the gateway encoded whole keeps its length (and so leaves in one send).
fn assert_whole_length(r: &Response) {
    let len = r.body.len().to_string();
    assert_eq!(
        r.header("content-length"),
        Some(len.as_str()),
        "{:?}",
        r.headers
    );
}

#[test]
fn stylesheet_is_gzipped_when_asked_and_decompresses_to_the_file() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[]);
    let plain = site.gw.get_with(CSS, &[]);
    assert_eq!(
        plain.body,
        site_css_on_disk(),
        "identity body differs from the file"
    );
    let r = site.gw.get_with(CSS, &[("Accept-Encoding", "gzip")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(
        r.header("vary")
            .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")),
        "no Vary: Accept-Encoding: {:?}",
        r.headers
    );
    assert_ne!(r.body, plain.body, "labelled gzip but not compressed");
    assert_eq!(gunzip(&r.body), plain.body);
    assert_whole_length(&r);
}

/// The gateway's own answers (a rendered page) take the same coding decision as proxied ones:
/// gzip for a client that accepts it, decided from the page (HTML, larger than
/// `compression.min_size`), and `Vary: Accept-Encoding` on the identity answer too.
#[test]
fn rendered_page_is_gzipped_for_a_gzip_client_and_varies_on_accept_encoding() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[]);
    let plain = site.gw.get_with("/docs", &[BROWSER]);
    assert_eq!(plain.status, 200);
    assert!(
        plain.header("content-encoding").is_none(),
        "{:?}",
        plain.headers
    );
    assert!(plain.body.len() > 1024, "the docs page is below min_size");
    let varies = |r: &Response| {
        r.header("vary")
            .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
    };
    assert!(
        varies(&plain),
        "identity page without Vary: {:?}",
        plain.headers
    );
    let r = site.gw.get_with(
        "/docs",
        &[BROWSER, ("Accept-Encoding", "gzip, deflate, br")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-encoding"),
        Some("gzip"),
        "{:?}",
        r.headers
    );
    assert!(varies(&r), "gzip page without Vary: {:?}", r.headers);
    assert_whole_length(&r);
    // The same page, but for its request id.
    let id = |r: &Response| r.header("x-request-id").expect("request id").to_string();
    assert_eq!(
        String::from_utf8_lossy(&gunzip(&r.body)).replace(&id(&r), &id(&plain)),
        plain.text()
    );
}

#[test]
fn stylesheet_is_brotli_encoded_when_asked_and_decompresses_to_the_file() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[]);
    let plain = site.gw.get_with(CSS, &[]);
    assert_eq!(
        plain.body,
        site_css_on_disk(),
        "identity body differs from the file"
    );
    let r = site.gw.get_with(CSS, &[("Accept-Encoding", "br")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_ne!(r.body, plain.body, "labelled br but not compressed");
    assert_eq!(unbrotli(&r.body), plain.body);
}

#[test]
fn traversal_attempts_never_leave_the_assets_folder() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[]);
    let secret = std::fs::read_to_string("Cargo.toml").expect("read Cargo.toml");
    let marker = secret.lines().next().unwrap_or("[package]").to_string();
    for path in [
        "/assets/../Cargo.toml",
        "/assets/%2e%2e/Cargo.toml",
        "/assets/%2E%2E/Cargo.toml",
        "/assets/..%2fCargo.toml",
        "/assets/..%2FCargo.toml",
        "/assets/css/..%5c..%5cCargo.toml",
        "/assets/css/../../Cargo.toml",
        "/assets/%2e%2e%2f%2e%2e%2fCargo.toml",
        "/assets/%00",
        "/assets/css/",
        "/assets/css",
        "/assets/",
    ] {
        for headers in [&[][..], &[BROWSER][..]] {
            let r = site.gw.get_with(path, headers);
            assert!(
                r.status == 400 || r.status == 404,
                "GET {path} {headers:?}: status {} (want 400 or 404): {}",
                r.status,
                r.text()
            );
            let text = r.text();
            assert!(
                !text.contains(&marker) && !text.contains("[dependencies]"),
                "GET {path}: Cargo.toml content leaked"
            );
        }
    }
}

#[test]
fn fingerprinted_asset_names_get_an_immutable_cache_policy() {
    let tmp = TempDir::new("assets");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("js")).expect("mkdir");
    std::fs::write(dir.join("js/app.3f9a1c2e.js"), "console.log('v1');\n").expect("write");
    std::fs::write(dir.join("js/app.js"), "console.log('v1');\n").expect("write");
    let rest = format!(
        "upstreams:\n{}\nweb:\n  templates: templates\n  assets: \"{}\"\n  pages:\n    - {{path: /, template: landing.html, title: Inicio}}\n",
        upstream("profiles", &[dead_backend()], ""),
        dir.display()
    );
    let gw = Gw::start(&rest);
    let r = gw.get("/assets/js/app.3f9a1c2e.js");
    assert_eq!(r.status, 200, "{}", r.text());
    let cc = r.header("cache-control").unwrap_or("");
    assert!(
        cc.contains("immutable") && cc.contains("max-age=31536000"),
        "fingerprinted name: Cache-Control {cc:?}"
    );
    let r = gw.get("/assets/js/app.js");
    assert_eq!(r.status, 200);
    let cc = r.header("cache-control").unwrap_or("");
    assert!(
        !cc.contains("immutable"),
        "plain name must not be immutable: {cc:?}"
    );
}

// ------------------------------------------------------------------------------------------
// 8. Config errors
// ------------------------------------------------------------------------------------------

/// `check` on a config with these templates and `web:` pages; returns the error text.
fn check_error(templates: &std::path::Path, pages: &str) -> String {
    let yaml = format!(
        "auth:\n  database_url: \"sqlite://{}\"\nweb:\n  templates: \"{}\"\n  assets: \"{}\"\n  pages:\n{pages}",
        temp_path("check.db").display(),
        templates.display(),
        temp_path("no-assets").display(),
    );
    let config = gatehouse::Config::from_yaml_str(&yaml)
        .unwrap_or_else(|e| panic!("the YAML itself should parse: {e}\n{yaml}"));
    match gatehouse::check(config) {
        Ok(_) => panic!("check accepted a broken web config:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn template_syntax_error_is_reported_with_file_and_line() {
    let tmp = TempDir::new("templates");
    let dir = tmp.path();
    std::fs::write(dir.join("error.html"), "<p>{{ error.status }}</p>\n").expect("write");
    std::fs::write(
        dir.join("x.html"),
        "<h1>ok</h1>\n<p>line two</p>\n{% if %}\n<p>never closed</p>\n",
    )
    .expect("write");
    let err = check_error(dir, "    - {path: /x, template: x.html, title: X}\n");
    assert!(
        err.contains("x.html"),
        "error does not name the file: {err}"
    );
    assert!(err.contains("line 3"), "error does not name line 3: {err}");
}

#[test]
fn page_with_missing_template_is_reported_by_its_config_path() {
    let tmp = TempDir::new("templates");
    let dir = tmp.path();
    std::fs::write(dir.join("error.html"), "<p>{{ error.status }}</p>\n").expect("write");
    let err = check_error(
        dir,
        "    - {path: /nope, template: does-not-exist.html, title: Nope}\n",
    );
    assert!(
        err.contains("web.pages[0].template"),
        "error does not name web.pages[0].template: {err}"
    );
    assert!(
        err.contains("does-not-exist.html"),
        "error does not name the template: {err}"
    );
}

// ------------------------------------------------------------------------------------------
// 9. Flash
// ------------------------------------------------------------------------------------------

#[test]
fn logout_redirects_to_login_which_shows_the_flash_once_and_clears_it() {
    let site = Site::with_sources(&dead_backend(), &dead_backend(), &[(Role::Patient, "Ana")]);
    let token = site.login(&site.users[0]);
    let r = site.browse("/logout", &token);
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/login"));
    let flash_line = set_cookie(&r, FLASH_COOKIE).unwrap_or_else(|| {
        panic!(
            "no {FLASH_COOKIE} cookie; Set-Cookie: {:?}",
            r.header_all("set-cookie")
        )
    });
    let flash = cookie_value(flash_line).to_string();
    assert!(!flash.is_empty(), "empty flash cookie: {flash_line}");

    // The session ended: the dashboard no longer opens with that token.
    let after = site.browse("/patient/dashboard", &token);
    assert_eq!(after.status, 303, "session still valid after logout");

    let cookie = format!("{FLASH_COOKIE}={flash}");
    let r = site.gw.get_with("/login", &[BROWSER, ("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let html = r.text();
    let list = element(&html, "flash", "</p>");
    assert!(
        list.contains("Has cerrado sesión"),
        "flash message not shown:\n{html}"
    );
    let clear = set_cookie(&r, FLASH_COOKIE).unwrap_or_else(|| {
        panic!(
            "flash cookie not cleared; Set-Cookie: {:?}",
            r.header_all("set-cookie")
        )
    });
    let attrs = clear.to_ascii_lowercase();
    assert!(
        attrs.contains("max-age=0"),
        "the flash cookie is not expired: {clear}"
    );
    assert_eq!(cookie_value(clear), "", "the clearing cookie keeps a value");

    // Without the cookie, the next /login shows no flash.
    let r = site.gw.get_with("/login", &[BROWSER]);
    assert!(
        !r.text().contains("Has cerrado sesión"),
        "flash shown twice"
    );
}

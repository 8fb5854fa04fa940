//! Self-registration through the running gateway (issue 24, point 1): `POST
//! /api/v1/auth/register`, the `/register` page and its form, the password policy, the
//! per-ip limit, the switch, the metric; and the CLI refusing the same weak passwords.
//!
//! Every gateway flow runs twice: on the embedded defaults (a SQLite file and the in-process
//! session store) and, when `DATABASE_URL` and `REDIS_URL` are set (scripts/test.sh sets
//! both), on PostgreSQL and Redis.

mod common;
use common::*;

use gatehouse::auth::users::UserDb;
use serde_json::{json, Value};

const REGISTER: &str = "/api/v1/auth/register";
const METRIC: &str = "gatehouse_registrations_total";

/// A password that passes the policy for any account of these tests.
const GOOD: &str = "quiet otter ferry at dawn";

/// A gateway with the repo's templates (landing, login, the patient dashboard) and no routes.
struct Site {
    db: String,
    gw: Gw,
    /// Last: removed after the gateway has stopped.
    _dir: Option<TempDir>,
}

impl Site {
    /// `registration` is the `auth.registration` flow mapping; the client address comes from
    /// `X-Forwarded-For` when a test sends one (127.0.0.1 is a trusted proxy).
    fn start(backend: Backend, registration: &str) -> Option<Site> {
        let (db, redis, dir) = backend.urls()?;
        let rest = format!(
            "auth:
  database_url: \"{db}\"
  redis_url: \"{redis}\"
  jwt: {{secret: \"{SECRET}\"}}
  login: {{max_failures_per_ip: 1000}}
  registration: {registration}
web:
  templates: templates
  assets: assets
  assets_prefix: /assets/
  pages:
    - {{path: /, template: landing.html, title: Inicio}}
    - {{path: /login, template: login.html, title: Iniciar sesión}}
    - {{path: /patient/dashboard, template: patient/dashboard.html, title: Mi panel, auth: required, roles: [patient]}}
"
        );
        let gw = Gw::start_with_server(TRUST_LOCALHOST, &rest);
        Some(Site { db, gw, _dir: dir })
    }

    /// Registration on, and a limit no test reaches: with Redis the per-ip counter of
    /// 127.0.0.1 is shared by every test and every run.
    fn open(backend: Backend) -> Option<Site> {
        Site::start(backend, "{max_per_ip: 1000000}")
    }

    fn port(&self) -> u16 {
        self.gw.port
    }

    fn register(&self, body: &Value, headers: &[(&str, &str)]) -> Response {
        post_json(self.port(), REGISTER, body, headers)
    }

    fn count(&self, outcome: &str) -> f64 {
        self.gw.metric(METRIC, &[("outcome", outcome)])
    }

    /// The stored user with this email, if any.
    fn stored(&self, email: &str) -> Option<gatehouse::auth::users::User> {
        block_on(async {
            let udb = UserDb::connect(Some(&self.db)).await.expect("connect");
            udb.find_by_email(email).await.expect("find")
        })
    }
}

fn new_email() -> String {
    format!("reg-{}@registration.test", unique())
}

/// A browser's post of the registration form: the page's CSRF token as a field and a
/// cookie (`None`: no token at all), from the gateway's own origin unless `extra` says
/// otherwise.
fn post_form(
    port: u16,
    fields: &[(&str, &str)],
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Response {
    let mut body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect();
    let jar = token.map(|t| format!("predicthealth_csrf={t}"));
    if let Some(t) = token {
        body.push(format!("csrf_token={t}"));
    }
    let mut h = vec![
        BROWSER,
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("origin")) {
        h.push(("Origin", "http://localhost"));
    }
    if let Some(j) = &jar {
        h.push(("Cookie", j.as_str()));
    }
    h.extend_from_slice(extra);
    request_ok(port, "POST", "/register", &h, body.join("&").as_bytes())
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

// ------------------------------------------------------------------------------------------
// The JSON endpoint
// ------------------------------------------------------------------------------------------

on_both_backends!(
    a_new_patient_registers_then_signs_in_separately,
    an_existing_email_is_409_and_says_nothing_more,
    weak_passwords_and_bad_fields_are_400_naming_the_field,
    cross_site_registration_is_refused,
    registration_can_be_turned_off,
    registrations_are_limited_per_client_ip,
    a_role_is_chosen_only_from_the_configured_list,
    the_page_renders_in_spanish_and_its_form_registers,
    the_form_shows_the_field_at_fault_again,
);

fn a_new_patient_registers_then_signs_in_separately(b: Backend) {
    let Some(site) = Site::open(b) else { return };
    let email = new_email();
    let shouted = email.to_uppercase();
    let r = site.register(
        &json!({"email": format!("  {shouted} "), "password": GOOD, "name": " Lucía Fernández "}),
        &[API_JSON],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v = json(&r);
    let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["user"], "only the user: {v}");
    let user = &v["user"];
    let mut fields: Vec<&String> = user.as_object().expect("user").keys().collect();
    fields.sort();
    assert_eq!(fields, ["email", "id", "name", "role"], "{v}");
    assert_eq!(user["email"], json!(email), "stored lowercased and trimmed");
    assert_eq!(user["name"], json!("Lucía Fernández"));
    assert_eq!(user["role"], json!("patient"));
    assert!(!r.text().contains(GOOD), "the password is never echoed");
    assert!(
        !r.text().contains("token") && !r.text().contains("hash"),
        "{v}"
    );
    assert!(
        r.header_all("set-cookie").is_empty(),
        "no session: {:?}",
        r.headers
    );
    let stored = site.stored(&email).expect("stored");
    assert_eq!(json!(stored.id), user["id"]);
    assert_eq!(stored.role.as_str(), "patient");
    // Signing in is a separate step, with the password just chosen.
    let login = login_as(site.port(), &email, GOOD, &[]);
    assert_eq!(login.status, 200, "{}", login.text());
    assert_eq!(json(&login)["user"]["id"], user["id"]);
    assert_eq!(site.count("created"), 1.0);
    assert_eq!(site.count("duplicate"), 0.0, "every outcome is exported");
}

fn an_existing_email_is_409_and_says_nothing_more(b: Backend) {
    let Some(site) = Site::open(b) else { return };
    let email = new_email();
    let first = site.register(
        &json!({"email": email, "password": GOOD, "name": "Primera Persona"}),
        &[],
    );
    assert_eq!(first.status, 201, "{}", first.text());
    let again = site.register(
        &json!({"email": email.to_uppercase(), "password": "another fine passphrase", "name": "Segunda Persona"}),
        &[],
    );
    let e = json_error(&again, 409, "duplicate");
    assert_eq!(e["code"], json!("email_unavailable"));
    assert_eq!(e["message"], json!("This email cannot be registered."));
    let mut keys: Vec<&String> = e.as_object().expect("error").keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["code", "message", "reason", "request_id", "status"],
        "no id, no role, no field: {e}"
    );
    assert!(json(&again).get("user").is_none());
    // The first account is untouched.
    assert_eq!(login_as(site.port(), &email, GOOD, &[]).status, 200);
    assert_eq!(
        login_as(site.port(), &email, "another fine passphrase", &[]).status,
        401
    );
    assert_eq!(site.count("duplicate"), 1.0);
    assert_eq!(site.count("created"), 1.0);
}

fn weak_passwords_and_bad_fields_are_400_naming_the_field(b: Backend) {
    let Some(site) = Site::open(b) else { return };
    let email = new_email();
    let local = email.split('@').next().expect("local part").to_string();
    let name = "Valentina Rosales";
    let too_long: String = "marea-alta-".repeat(24)[..257].to_string();
    let with_email = format!("{local} my secret");
    let cases: Vec<(Value, &str, &str, &str)> = vec![
        (
            json!({"email": email, "password": "short pass", "name": name}),
            "password",
            "too_short",
            "weak_password",
        ),
        (
            json!({"email": email, "password": "Qwerty123456", "name": name}),
            "password",
            "common",
            "weak_password",
        ),
        (
            json!({"email": email, "password": "Sunshine2024!!!", "name": name}),
            "password",
            "common",
            "weak_password",
        ),
        (
            json!({"email": email, "password": with_email, "name": name}),
            "password",
            "personal",
            "weak_password",
        ),
        (
            json!({"email": email, "password": "valentina rosales 1990", "name": name}),
            "password",
            "personal",
            "weak_password",
        ),
        (
            json!({"email": email, "password": too_long, "name": name}),
            "password",
            "too_long",
            "weak_password",
        ),
        (
            json!({"email": email, "password": "abcabcabcabc", "name": name}),
            "password",
            "repetitive",
            "weak_password",
        ),
        (
            json!({"email": email, "name": name}),
            "password",
            "required",
            "weak_password",
        ),
        (
            json!({"email": "not-an-email", "password": GOOD, "name": name}),
            "email",
            "invalid",
            "invalid_email",
        ),
        (
            json!({"email": "two@@registration.test", "password": GOOD, "name": name}),
            "email",
            "invalid",
            "invalid_email",
        ),
        (
            json!({"password": GOOD, "name": name}),
            "email",
            "required",
            "invalid_email",
        ),
        (
            json!({"email": email, "password": GOOD, "name": "  "}),
            "name",
            "required",
            "invalid_name",
        ),
        (
            json!({"email": email, "password": GOOD, "name": "a\u{7}b"}),
            "name",
            "invalid",
            "invalid_name",
        ),
        (
            json!({"email": email, "password": GOOD, "name": name, "role": "admin"}),
            "role",
            "invalid",
            "invalid_role",
        ),
    ];
    for (body, field, reason, code) in &cases {
        let r = site.register(body, &[]);
        let what = format!("{field}/{reason}");
        let e = json_error(&r, 400, &what);
        assert_eq!(e["code"], json!(code), "{what}: {e}");
        assert_eq!(e["field"], json!(field), "{what}: {e}");
        assert_eq!(e["reason"], json!(reason), "{what}: {e}");
        if let Some(pw) = body["password"].as_str() {
            assert!(!r.text().contains(pw), "{what}: the password is echoed");
        }
    }
    let short = json(&site.register(&cases[0].0, &[]));
    assert_eq!(
        short["error"]["message"],
        json!("password must have at least 12 characters")
    );
    // Not JSON: refused before any field is read.
    let form = request_ok(
        site.port(),
        "POST",
        REGISTER,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("email={}&password=x&name=y", form_encode(&email)).as_bytes(),
    );
    assert_json_error(
        &form,
        415,
        "unsupported_media_type",
        "a form to the JSON endpoint",
    );
    let not_object = request_ok(
        site.port(),
        "POST",
        REGISTER,
        &[("Content-Type", "application/json")],
        b"[1, 2]",
    );
    assert_json_error(&not_object, 400, "bad_request", "a JSON array");
    let wrong_method = get_ok(site.port(), REGISTER, &[API_JSON]);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));

    assert!(site.stored(&email).is_none(), "nothing was created");
    assert_eq!(site.count("invalid"), (cases.len() + 3) as f64);
    assert_eq!(site.count("created"), 0.0);
    // The same email registers once the password is fine.
    let ok = site.register(
        &json!({"email": email, "password": GOOD, "name": name}),
        &[],
    );
    assert_eq!(ok.status, 201, "{}", ok.text());
}

fn cross_site_registration_is_refused(b: Backend) {
    let Some(site) = Site::open(b) else { return };
    let email = new_email();
    let body = json!({"email": email, "password": GOOD, "name": "Cruz Sitio"});
    for (what, headers) in [
        ("foreign Origin", vec![("Origin", "https://evil.example")]),
        ("Origin null", vec![("Origin", "null")]),
        ("cross-site fetch", vec![("Sec-Fetch-Site", "cross-site")]),
        (
            "own Origin, cross-site fetch",
            vec![
                ("Origin", "http://localhost"),
                ("Sec-Fetch-Site", "cross-site"),
            ],
        ),
    ] {
        let r = site.register(&body, &headers);
        assert_json_error(&r, 403, "csrf", what);
    }
    // The form from another site's page, even with a valid-looking token pair.
    let fields = [
        ("email", email.as_str()),
        ("password", GOOD),
        ("name", "Cruz Sitio"),
    ];
    let r = post_form(
        site.port(),
        &fields,
        Some(TOKEN),
        &[("Origin", "https://evil.example")],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = post_form(
        site.port(),
        &fields,
        Some(TOKEN),
        &[("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(site.stored(&email).is_none(), "nothing was created");
    assert_eq!(site.count("refused"), 6.0);
    // The page itself may be linked from anywhere.
    let page = get_ok(
        site.port(),
        "/register",
        &[BROWSER, ("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(page.status, 200);
    // From the gateway's own origin, or an API client sending neither header, it works.
    let same = site.register(&body, &[("Origin", "http://localhost")]);
    assert_eq!(same.status, 201, "{}", same.text());
    let api = site.register(
        &json!({"email": new_email(), "password": GOOD, "name": "Cliente API"}),
        &[],
    );
    assert_eq!(api.status, 201, "{}", api.text());
}

fn registration_can_be_turned_off(b: Backend) {
    let Some(site) = Site::start(b, "{enabled: false}") else {
        return;
    };
    let email = new_email();
    let r = site.register(
        &json!({"email": email, "password": GOOD, "name": "Nadie"}),
        &[],
    );
    assert_json_error(&r, 404, "not_found", "the endpoint");
    let page = get_ok(site.port(), "/register", &[BROWSER]);
    assert_eq!(page.status, 404);
    assert!(
        content_type(&page).starts_with("text/html"),
        "the error page"
    );
    assert!(
        page.text().contains("Página no encontrada"),
        "{}",
        page.text()
    );
    let fields = [
        ("email", email.as_str()),
        ("password", GOOD),
        ("name", "Nadie"),
    ];
    let form = post_form(site.port(), &fields, Some(TOKEN), &[]);
    assert_eq!(form.status, 404);
    // Not even a 405 for another method: nothing says the endpoint exists.
    let wrong_method = get_ok(site.port(), REGISTER, &[API_JSON]);
    assert_json_error(&wrong_method, 404, "not_found", "GET of the endpoint");
    let put = request_ok(site.port(), "PUT", "/register", &[BROWSER], b"");
    assert_eq!(put.status, 404);
    assert!(site.stored(&email).is_none());
    // The login page no longer offers it.
    let login = get_ok(site.port(), "/login", &[BROWSER]);
    assert_eq!(login.status, 200);
    assert!(!login.text().contains("href=\"/register\""), "no link");
    assert_eq!(site.count("disabled"), 2.0);
}

fn registrations_are_limited_per_client_ip(b: Backend) {
    let Some(site) = Site::start(b, "{max_per_ip: 2, window: 10m}") else {
        return;
    };
    // Addresses no other test or run uses: with Redis the counters are shared and live on.
    let ip = format!(
        "2001:db8::{:x}:{:x}",
        rand::random::<u16>(),
        rand::random::<u16>()
    );
    let other_ip = format!("{ip}:1");
    let from = |ip: &str, body: &Value| site.register(body, &[("X-Forwarded-For", ip)]);
    let email = new_email();
    // Refused fields do not count.
    for _ in 0..3 {
        let weak = from(
            &ip,
            &json!({"email": email, "password": "short", "name": "Ana Límite"}),
        );
        assert_eq!(weak.status, 400);
    }
    let created = from(
        &ip,
        &json!({"email": email, "password": GOOD, "name": "Ana Límite"}),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    // A duplicate counts (it is how an address would probe for accounts).
    let dup = from(
        &ip,
        &json!({"email": email, "password": GOOD, "name": "Ana Límite"}),
    );
    assert_eq!(dup.status, 409, "{}", dup.text());
    let third = new_email();
    let limited = from(
        &ip,
        &json!({"email": third, "password": GOOD, "name": "Ana Límite"}),
    );
    assert_json_error(
        &limited,
        429,
        "too_many_registrations",
        "third from one address",
    );
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=600).contains(&retry), "Retry-After {retry}");
    assert!(site.stored(&third).is_none(), "nothing was created");
    // Another address is not affected.
    let other = from(
        &other_ip,
        &json!({"email": third, "password": GOOD, "name": "Ana Límite"}),
    );
    assert_eq!(other.status, 201, "{}", other.text());
    assert_eq!(site.count("rate_limited"), 1.0);
}

fn a_role_is_chosen_only_from_the_configured_list(b: Backend) {
    let Some(site) = Site::start(b, "{roles: [patient, doctor], max_per_ip: 1000000}") else {
        return;
    };
    let register = |role: Option<&str>| {
        let mut body = json!({"email": new_email(), "password": GOOD, "name": "Rol Elegido"});
        if let Some(r) = role {
            body["role"] = json!(r);
        }
        site.register(&body, &[])
    };
    let default = register(None);
    assert_eq!(default.status, 201, "{}", default.text());
    assert_eq!(
        json(&default)["user"]["role"],
        json!("patient"),
        "the first is the default"
    );
    let doctor = register(Some("doctor"));
    assert_eq!(doctor.status, 201, "{}", doctor.text());
    assert_eq!(json(&doctor)["user"]["role"], json!("doctor"));
    for role in ["admin", "institution", "nurse"] {
        let e = json_error(&register(Some(role)), 400, role);
        assert_eq!(e["field"], json!("role"), "{role}: {e}");
    }
    // The page offers the list.
    let page = get_ok(site.port(), "/register", &[BROWSER]);
    let select = element(&page.text(), "role", "</select>").to_string();
    assert!(
        select.contains("value=\"patient\"") && select.contains("value=\"doctor\""),
        "{select}"
    );
    assert!(!select.contains("admin"), "{select}");
}

// ------------------------------------------------------------------------------------------
// The page and its form
// ------------------------------------------------------------------------------------------

/// The hidden `csrf_token` field of a rendered form.
fn csrf_field(html: &str) -> String {
    let at = html
        .find("name=\"csrf_token\" value=\"")
        .unwrap_or_else(|| panic!("no csrf_token field in:\n{html}"));
    let rest = &html[at + "name=\"csrf_token\" value=\"".len()..];
    rest[..rest.find('"').expect("end of value")].to_string()
}

fn the_page_renders_in_spanish_and_its_form_registers(b: Backend) {
    let Some(site) = Site::open(b) else { return };
    let page = get_ok(site.port(), "/register", &[BROWSER]);
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(content_type(&page).starts_with("text/html"));
    assert!(page.header("content-security-policy").is_some());
    let html = unescape(&page.text());
    assert!(html.contains("<html lang=\"es\""), "Spanish page");
    for text in [
        "Crear una cuenta",
        "Correo electrónico",
        "Contraseña",
        "Al menos 12 caracteres",
    ] {
        assert!(html.contains(text), "{text:?} missing");
    }
    let form = element(&html, "register-form", "</form>");
    assert!(
        form.contains("method=\"post\"") && form.contains("action=\"/register\""),
        "{form}"
    );
    assert!(!form.contains("id=\"role\""), "one role: no choice offered");
    // The double-submit token: the cookie's value, masked in the field (as every page masks
    // it afresh: `forms::csrf_mask`).
    let field = csrf_field(&html);
    let cookie = set_cookie(&page, "predicthealth_csrf").expect("CSRF cookie");
    let token = cookie_value(cookie).to_string();
    assert_eq!(token.len(), 32);
    assert_eq!(field.len(), 64);
    assert_eq!(gatehouse::forms::csrf_unmask(&field), Some(token.clone()));
    // The login page links to it.
    let login = get_ok(site.port(), "/login", &[BROWSER]);
    assert!(
        login
            .text()
            .contains("<a href=\"/register\" id=\"register-link\">"),
        "{}",
        login.text()
    );

    let email = new_email();
    let fields = [
        ("name", "Paula Gómez"),
        ("email", email.as_str()),
        ("password", GOOD),
    ];
    let r = post_form(site.port(), &fields, Some(&token), &[]);
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/login?portal=patient"));
    let flash = set_cookie(&r, "predicthealth_flash").expect("flash cookie");
    assert_eq!(cookie_value(flash), "success:registered");
    assert!(set_cookie(&r, SESSION_COOKIE).is_none(), "not signed in");
    // The login page shows the notice once.
    let jar = format!("predicthealth_flash={}", cookie_value(flash));
    let notice = get_ok(
        site.port(),
        "/login?portal=patient",
        &[BROWSER, ("Cookie", &jar)],
    );
    assert!(
        unescape(&notice.text()).contains("Tu cuenta está creada. Ya puedes iniciar sesión."),
        "{}",
        notice.text()
    );
    let stored = site.stored(&email).expect("stored");
    assert_eq!(stored.display_name, "Paula Gómez");
    assert_eq!(stored.role.as_str(), "patient");
    // Then the patient portal signs the new account in.
    let body = format!(
        "email={}&password={}&csrf_token={TOKEN}",
        form_encode(&email),
        form_encode(GOOD)
    );
    let jar = format!("predicthealth_csrf={TOKEN}");
    let signed_in = request_ok(
        site.port(),
        "POST",
        "/api/web/auth/patient/login",
        &[
            BROWSER,
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", "http://localhost"),
            ("Cookie", &jar),
        ],
        body.as_bytes(),
    );
    assert_eq!(signed_in.status, 303, "{}", signed_in.text());
    assert_eq!(signed_in.header("location"), Some("/patient/dashboard"));
    assert!(set_cookie(&signed_in, SESSION_COOKIE).is_some());
    assert_eq!(site.count("created"), 1.0);
}

fn the_form_shows_the_field_at_fault_again(b: Backend) {
    let Some(site) = Site::open(b) else { return };
    let email = new_email();
    let weak = "Password123!";
    let r = post_form(
        site.port(),
        &[
            ("name", "Tomás Ruiz"),
            ("email", &email),
            ("password", weak),
        ],
        Some(TOKEN),
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(content_type(&r).starts_with("text/html"));
    let html = unescape(&r.text());
    let error = element(&html, "error-password", "</p>");
    assert!(error.contains("demasiado común"), "{error}");
    let input = element(&html, "email", ">");
    assert!(
        input.contains(&format!("value=\"{email}\"")),
        "email kept: {input}"
    );
    assert!(
        element(&html, "name", ">").contains("value=\"Tomás Ruiz\""),
        "name kept"
    );
    assert!(!html.contains(weak), "the password is never shown again");
    assert!(element(&html, "password", ">").contains("aria-invalid=\"true\""));

    let short = post_form(
        site.port(),
        &[
            ("name", "Tomás Ruiz"),
            ("email", &email),
            ("password", "corta"),
        ],
        Some(TOKEN),
        &[],
    );
    assert_eq!(short.status, 400);
    assert!(unescape(&short.text()).contains("al menos 12 caracteres"));

    let bad_email = post_form(
        site.port(),
        &[
            ("name", "Tomás Ruiz"),
            ("email", "tomás en casa"),
            ("password", GOOD),
        ],
        Some(TOKEN),
        &[],
    );
    assert_eq!(bad_email.status, 400);
    assert!(element(&bad_email.text(), "error-email", "</p>").contains("válido"));

    // A duplicate: the same words as the API, at the email.
    assert_eq!(
        site.register(
            &json!({"email": email, "password": GOOD, "name": "Tomás Ruiz"}),
            &[]
        )
        .status,
        201
    );
    let dup = post_form(
        site.port(),
        &[
            ("name", "Otro Tomás"),
            ("email", &email),
            ("password", "yet another passphrase"),
        ],
        Some(TOKEN),
        &[],
    );
    assert_eq!(dup.status, 409, "{}", dup.text());
    let error = unescape(element(&dup.text(), "error-email", "</p>"));
    assert!(
        error.contains("No se puede crear una cuenta con este correo"),
        "{error}"
    );

    // Without the page's token (or with a token the cookie does not match): the form again,
    // 403, nothing created.
    let other = new_email();
    let fields = [
        ("name", "Sin Token"),
        ("email", other.as_str()),
        ("password", GOOD),
    ];
    let missing = post_form(site.port(), &fields, None, &[]);
    assert_eq!(missing.status, 403, "{}", missing.text());
    assert!(element(&missing.text(), "register-error", "</div>").contains("formulario"));
    let mut body = format!(
        "name=Sin+Token&email={}&password={}&csrf_token={TOKEN}",
        form_encode(&other),
        form_encode(GOOD)
    );
    let mismatched = request_ok(
        site.port(),
        "POST",
        "/register",
        &[
            BROWSER,
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", "http://localhost"),
            (
                "Cookie",
                "predicthealth_csrf=ffffffffffffffffffffffffffffffff",
            ),
        ],
        body.as_bytes(),
    );
    assert_eq!(mismatched.status, 403, "{}", mismatched.text());
    assert!(site.stored(&other).is_none());
    // An API client posting the form gets the JSON answers.
    body.push_str("&x=1");
    let api = request_ok(
        site.port(),
        "POST",
        "/register",
        &[
            API_JSON,
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &format!("predicthealth_csrf={TOKEN}")),
        ],
        body.as_bytes(),
    );
    assert_eq!(api.status, 201, "{}", api.text());
    assert_eq!(json(&api)["user"]["email"], json!(other));
    assert_eq!(site.count("invalid"), 3.0);
    assert_eq!(site.count("duplicate"), 1.0);
    assert_eq!(site.count("refused"), 2.0);
}

// ------------------------------------------------------------------------------------------
// The CLI applies the same policy
// ------------------------------------------------------------------------------------------

#[test]
fn the_cli_refuses_the_passwords_registration_refuses() {
    let dir = TempDir::new("reg-cli");
    let db = dir.sqlite_url();
    let no_config = "/nonexistent/gateway.yaml";
    let add = |email: &str, name: &str, password: &str, config: &str| {
        run_cli(
            &[
                "-c", config, "user", "add", "--email", email, "--role", "doctor", "--name", name,
            ],
            &[("DATABASE_URL", db.as_str())],
            &format!("{password}\n"),
        )
    };
    let email = "dra.montoya@registration.test";
    for (password, why) in [
        ("short", "at least 12 characters"),
        ("Password123!", "common"),
        ("montoya-es-mi-clave", "email or the name"),
        ("carmen montoya 99", "email or the name"),
    ] {
        let out = add(email, "Carmen Montoya", password, no_config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{password}: {err}");
        assert!(
            err.contains("refused") && err.contains(why),
            "{password}: {err}"
        );
    }
    // `auth.passwords.min_length` of the config file applies.
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, "auth:\n  passwords: {min_length: 30}\n").expect("config");
    let out = add(email, "Carmen Montoya", GOOD, cfg.to_str().expect("path"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 30 characters"));
    let out = add(email, "Carmen Montoya", GOOD, no_config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // set-password compares with the stored name too.
    let set = |password: &str| {
        run_cli(
            &["-c", no_config, "user", "set-password", "--email", email],
            &[("DATABASE_URL", db.as_str())],
            &format!("{password}\n"),
        )
    };
    let out = set("Carmen Montoya 2025");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("email or the name"));
    let out = set("iloveyou1234");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("common"));
    let out = set("another quiet otter ferry");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = set("");
    assert_eq!(out.status.code(), Some(1), "no password on stdin");
}

//! The browser side of the request filter: static assets, rendered pages (with their data
//! sources), and the choice between an HTML error page and a JSON error body.

use super::admission::Admit;
use super::{Ctx, Gateway};
use crate::answer::Answer;
use crate::auth::cookies;
use crate::errors::Reject;
use crate::pages::data::{self, Fetch};
use crate::pages::{html_headers, PageDef, RequestView};
use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde_json::{json, Value};
use std::sync::Arc;

pub use crate::auth::cookies::{CSRF_COOKIE, FLASH_COOKIE};

/// What a built-in page adds to a render of [`Gateway::serve_page_with`].
#[derive(Default)]
pub(super) struct PageExtra {
    /// Template context keys the page's template reads (under names of its own: `data`,
    /// `registration_open` and the shared keys are set over them).
    pub context: serde_json::Map<String, Value>,
    /// The status of a successful render (default 200).
    pub status: Option<u16>,
    /// More response headers (e.g. `Retry-After`).
    pub headers: Vec<(String, String)>,
}

/// The Spanish text of a flash code.
fn flash_message(code: &str) -> Option<&'static str> {
    match code {
        "logged_out" => Some("Has cerrado sesión correctamente."),
        "registered" => Some("Tu cuenta está creada. Ya puedes iniciar sesión."),
        "session_expired" => Some("Tu sesión ha terminado. Inicia sesión de nuevo."),
        _ => None,
    }
}

/// The auth endpoints, for the docs page, as a template value made once per process.
fn endpoint_docs() -> minijinja::Value {
    static DOCS: std::sync::OnceLock<minijinja::Value> = std::sync::OnceLock::new();
    DOCS.get_or_init(|| {
        let docs = json!([
            {"method": "POST", "path": "/api/v1/auth/login", "description": "Inicia sesión con email y contraseña; devuelve tokens de acceso y de refresco."},
            {"method": "POST", "path": "/api/web/auth/{patient|doctor|institution}/login", "description": "Inicio de sesión desde el portal de cada tipo de usuario."},
            {"method": "GET", "path": "/api/v1/auth/validate", "description": "Comprueba un token y devuelve sus datos."},
            {"method": "POST", "path": "/api/v1/auth/refresh", "description": "Cambia un token de refresco por un par nuevo."},
            {"method": "POST", "path": "/api/v1/auth/logout", "description": "Cierra la sesión (?all=true: todas las sesiones)."},
            {"method": "POST", "path": "/api/v1/auth/register", "description": "Crea una cuenta (email, contraseña y nombre); no inicia sesión."},
            {"method": "GET", "path": "/health", "description": "Estado del gateway."},
            {"method": "GET", "path": "/api/v1/health", "description": "Rutas y salud de cada servicio."},
        ]);
        minijinja::Value::from(minijinja::value::Serde(&docs))
    })
    .clone()
}

impl Gateway {
    /// A request view for templates, from the context (no database lookups).
    fn view<'a>(&self, query: Option<&'a str>, ctx: &'a Ctx, csrf: &'a str) -> RequestView<'a> {
        let user = ctx
            .identity
            .as_ref()
            .map(|i| json!({"id": i.claims.sub, "role": i.claims.role, "name": "", "email": ""}));
        RequestView {
            path: ctx.path.as_deref().unwrap_or("/"),
            query,
            request_id: &ctx.request_id,
            user,
            csrf_token: csrf,
            flash: Vec::new(),
        }
    }

    /// The answer `r` is for this request: an HTML page for browsers, JSON for API clients.
    pub(super) fn reject_answer(&self, ctx: &Ctx, r: &Reject, query: Option<&str>) -> Answer {
        let pages = &ctx.snapshot.pages;
        let (body, mut headers) = if ctx.api_client || !pages.has_template("error.html") {
            (r.body(&ctx.request_id), r.headers.clone())
        } else {
            let template = r
                .template
                .as_deref()
                .filter(|t| pages.has_template(t))
                .unwrap_or("error.html");
            let html = pages.render_error_with(r.status, template, &self.view(query, ctx, ""));
            let mut headers = html_headers();
            // Keep the protocol headers (Allow, Retry-After, WWW-Authenticate, Location …),
            // not a fallback's JSON content type.
            headers.extend(
                r.headers
                    .iter()
                    .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
                    .cloned(),
            );
            (Bytes::from(html), headers)
        };
        headers.push(("Vary".into(), "Accept".into()));
        Answer::json(r.status, headers, body)
    }

    /// Renders a page: access rules, data sources, context, security headers, cookies.
    pub(super) async fn serve_page(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        page: Arc<PageDef>,
        as_json: bool,
    ) -> Result<bool> {
        self.serve_page_with(session, ctx, page, as_json, PageExtra::default())
            .await
    }

    /// [`Gateway::serve_page`] with what a built-in page adds (the `/register` form again).
    pub(super) async fn serve_page_with(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        page: Arc<PageDef>,
        as_json: bool,
        more: PageExtra,
    ) -> Result<bool> {
        let pages = ctx.snapshot.pages.clone();
        let decision = self
            .protect(
                session,
                ctx,
                page.auth,
                page.roles.as_deref(),
                crate::config::StoreFailure::FailClosed,
            )
            .await;
        if let Admit::Answered = self.admit_identity(session, ctx, decision).await? {
            return Ok(true);
        }

        let mut set_cookies = Vec::new();
        let headers = &session.req_header().headers;
        let c = &self.auth.config.cookies;
        let csrf = match cookies::get(headers, CSRF_COOKIE)
            .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            Some(v) => v.to_string(),
            None => {
                let v = format!("{:032x}", rand::random::<u128>());
                set_cookies.push(cookies::set(c, CSRF_COOKIE, &v, "/", 86_400, ctx.tls));
                v
            }
        };
        let mut flash = Vec::new();
        if let Some(f) = cookies::get(headers, FLASH_COOKIE) {
            if let Some((kind, code)) = f.split_once(':') {
                if let Some(message) = flash_message(code) {
                    let kind = if ["info", "success", "error"].contains(&kind) {
                        kind
                    } else {
                        "info"
                    };
                    flash.push(json!({"kind": kind, "message": message}));
                }
            }
            set_cookies.push(cookies::clear(c, FLASH_COOKIE, "/", ctx.tls));
        }

        // Ends when this function returns (a span ends when dropped).
        let mut render = ctx.trace.internal("render page");
        // The signed-in user's profile from the database; identity alone if it is down.
        let user = match &ctx.identity {
            None => None,
            Some(id) => {
                let by_db = match id.claims.sub.parse::<i64>() {
                    Ok(uid) => {
                        let mut span = ctx.trace.db(self.auth.users.db_system(), "SELECT");
                        let found = self.auth.users.find_by_id(uid).await;
                        if let Err(e) = &found {
                            span.set_error("db_error", &e.to_string());
                        }
                        span.end();
                        found.ok().flatten()
                    }
                    Err(_) => None,
                };
                Some(match by_db {
                    Some(u) => {
                        json!({"id": u.id, "email": u.email, "name": u.display_name, "role": u.role.as_str()})
                    }
                    None => {
                        json!({"id": id.claims.sub, "email": "", "name": "", "role": id.claims.role})
                    }
                })
            }
        };

        let data = match (&ctx.identity, page.data.is_empty()) {
            (Some(who), false) => {
                let fetches = page
                    .data
                    .iter()
                    .map(|(name, pool, path)| Fetch {
                        name: name.clone(),
                        pool: pool.clone(),
                        path: data::fill_path(path, who),
                    })
                    .collect();
                data::fetch_all_traced(
                    &pages.connector,
                    fetches,
                    who,
                    &ctx.request_id,
                    pages.data_timeout,
                    &render.context(),
                )
                .await
            }
            // Sources need a user; anonymous renders mark them unavailable.
            (None, false) => page
                .data
                .iter()
                .map(|(n, _, _)| (n.clone(), json!({"unavailable": true})))
                .collect(),
            (_, true) => serde_json::Map::new(),
        };

        if as_json {
            // `/api/web/{role}/dashboard`: the page's user and data sources as JSON; a failed
            // source is `{"unavailable": true}` rather than a failed answer.
            let body = json!({
                "page": {"path": page.path, "title": page.title},
                "user": user,
                "data": Value::Object(data),
            });
            let mut headers = vec![("Cache-Control".to_string(), "no-store".to_string())];
            if let Some(cookie) = ctx.identity.as_ref().and_then(|i| i.renewed_cookie.clone()) {
                headers.push(("Set-Cookie".into(), cookie));
            }
            let answer = Answer::json(200, headers, Bytes::from(body.to_string()));
            self.send_answer(session, ctx, answer).await?;
            return Ok(true);
        }
        let snapshot = ctx.snapshot.clone();
        let mut extra = more.context;
        extra.insert("data".into(), Value::Object(data));
        // Pages may offer the `/register` page (the login page's link).
        extra.insert(
            "registration_open".into(),
            Value::Bool(self.auth.config.registration.enabled),
        );
        // Live backend health; the route list and the endpoint list are made once.
        extra.insert(
            "upstreams".into(),
            Value::Object(crate::builtin::upstream_health(&snapshot).0),
        );
        let shared = vec![
            (
                "routes",
                pages.routes_doc(|| crate::builtin::route_docs(&snapshot)),
            ),
            ("endpoints", endpoint_docs()),
        ];
        let view = RequestView {
            path: ctx.path.as_deref().unwrap_or("/"),
            query: session.req_header().uri.query(),
            request_id: &ctx.request_id,
            user,
            csrf_token: &csrf,
            flash,
        };
        let context = pages.context_with(&view, &page.title, extra, shared);
        let (status, html) = match pages.render(&page.template, &context) {
            Ok(html) => (more.status.unwrap_or(200), html),
            Err(e) => {
                tracing::error!(request_id = %ctx.request_id, template = %page.template, error = %e, "page failed to render");
                render.set_error("template_error", "page failed to render");
                (500, pages.render_error(500, &view))
            }
        };
        let mut headers = html_headers();
        headers.extend(more.headers);
        headers.extend(
            set_cookies
                .into_iter()
                .map(|v| ("Set-Cookie".to_string(), v)),
        );
        if let Some(cookie) = ctx.identity.as_ref().and_then(|i| i.renewed_cookie.clone()) {
            headers.push(("Set-Cookie".into(), cookie));
        }
        self.send_answer(
            session,
            ctx,
            Answer::new(status, headers, Bytes::from(html)),
        )
        .await?;
        Ok(true)
    }
}

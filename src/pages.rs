//! Server-rendered pages: a minijinja environment over `web.templates` (auto-escaping every
//! template, whatever its name), the page table from `web.pages`, the template context,
//! HTML error pages, and the security headers every HTML answer carries.
//!
//! Built with the snapshot, so a reload recompiles templates and reloads assets. Rendering
//! never panics and never leaks internals: a template failure becomes the 500 page, and if
//! even that fails, a fixed minimal page.
//!
//! Layer: above `config`, `upstream` and `forms`; built by `state`, so must not import `state`,
//! `metrics`, `auth`, `plan` or `proxy` (`pages::data`, a step of the lane, has its own line).

pub mod assets;
pub mod data;

use crate::config::{AuthMode, Config, ConfigError};
use crate::forms::{query_param, safe_next};
use crate::upstream::Pool;
use assets::Assets;
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, Value as MjValue};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A page from `web.pages`, resolved.
pub struct PageDef {
    pub path: String,
    pub template: String,
    pub title: String,
    pub auth: AuthMode,
    pub roles: Option<Vec<String>>,
    /// name → (pool, path template)
    pub data: Vec<(String, Arc<Pool>, String)>,
    /// `audit`: its requests are recorded in the access audit.
    pub audit: crate::config::AuditMode,
}

/// Templates, pages and assets of one snapshot.
pub struct Pages {
    env: Environment<'static>,
    pub assets: Option<Assets>,
    pages: HashMap<String, Arc<PageDef>>,
    /// `web.site` as a template value, made once: every render shares it.
    site: MjValue,
    /// The docs page's route list as a template value, made on first use. `Pages` is built
    /// with each configuration snapshot, so this is the list of the snapshot that serves it.
    routes_doc: std::sync::OnceLock<MjValue>,
    pub data_timeout: Duration,
    pub connector: Arc<pingora::connectors::http::Connector>,
}

/// The Content-Security-Policy of every HTML answer: no inline script or style.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     font-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'";

/// Headers for HTML answers.
pub fn html_headers() -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "text/html; charset=utf-8".into()),
        ("Content-Security-Policy".into(), CSP.into()),
        ("X-Content-Type-Options".into(), "nosniff".into()),
        (
            "Referrer-Policy".into(),
            "strict-origin-when-cross-origin".into(),
        ),
        ("X-Frame-Options".into(), "DENY".into()),
        ("Cache-Control".into(), "no-store".into()),
    ]
}

/// Spanish title and message of each error status the gateway answers.
pub fn error_text(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("Solicitud incorrecta", "No pudimos entender la solicitud. Revisa la dirección e inténtalo de nuevo."),
        401 => ("Inicia sesión", "Necesitas iniciar sesión para ver esta página."),
        403 => ("Acceso denegado", "Tu cuenta no tiene permiso para acceder a este recurso."),
        404 => ("Página no encontrada", "La página que buscas no existe o ha cambiado de dirección."),
        405 => ("Método no permitido", "Esta dirección no admite esa operación."),
        408 => ("Tiempo agotado", "La solicitud tardó demasiado en llegar."),
        413 => ("Contenido demasiado grande", "Lo que enviaste supera el tamaño permitido."),
        429 => ("Demasiadas solicitudes", "Has hecho demasiados intentos. Espera un momento y vuelve a intentarlo."),
        502 => ("Servicio con problemas", "Uno de nuestros servicios no respondió correctamente. Inténtalo de nuevo en unos minutos."),
        503 => ("Servicio no disponible", "El servicio no está disponible en este momento. Inténtalo de nuevo en unos minutos."),
        504 => ("Tiempo de espera agotado", "Uno de nuestros servicios tardó demasiado en responder. Inténtalo de nuevo."),
        s if s >= 500 => ("Error interno", "Algo salió mal de nuestro lado. Ya estamos trabajando en ello."),
        _ => ("Solicitud rechazada", "No pudimos atender la solicitud."),
    }
}

/// What the template context needs from the request.
pub struct RequestView<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub request_id: &'a str,
    /// `{id, email, name, role}` of the signed-in user, if any.
    pub user: Option<Value>,
    pub csrf_token: &'a str,
    pub flash: Vec<Value>,
}

/// Loads every template under `dir` (names are paths relative to it, with `/`).
fn load_templates(env: &mut Environment<'static>, dir: &Path) -> Result<usize, ConfigError> {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| {
            ConfigError::one(format!("web.templates: cannot read {}: {e}", d.display()))
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            let source = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::one(format!(
                    "web.templates: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            env.add_template_owned(rel.clone(), source).map_err(|e| {
                ConfigError::one(format!(
                    "web.templates: {} line {}: {}",
                    path.display(),
                    e.line().unwrap_or(0),
                    e.detail().unwrap_or("syntax error")
                ))
            })?;
            count += 1;
        }
    }
    Ok(count)
}

impl Pages {
    /// Compiles the templates, loads the assets, and resolves the pages against `pools`.
    /// Every page's template and `error.html` must exist.
    pub fn build(cfg: &Config, pools: &BTreeMap<String, Arc<Pool>>) -> Result<Pages, ConfigError> {
        let w = &cfg.web;
        let mut env = Environment::new();
        // Escape every template, not only *.html (minijinja's default).
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
        env.add_filter("keys_by", keys_by);
        env.add_test("table", is_table);
        let tdir = cfg.resolve(&w.templates);
        let mut problems = Vec::new();
        if tdir.is_dir() {
            if let Err(e) = load_templates(&mut env, &tdir) {
                problems.extend(e.problems);
            }
        } else if !w.pages.is_empty() {
            problems.push(format!("web.templates: {} is not a folder", tdir.display()));
        }
        let mut pages = HashMap::new();
        for (i, p) in w.pages.iter().enumerate() {
            if env.get_template(&p.template).is_err() {
                problems.push(format!(
                    "web.pages[{i}].template: no template {:?} in {}",
                    p.template,
                    tdir.display()
                ));
            }
            let data = p
                .data
                .iter()
                .filter_map(|(name, src)| {
                    pools
                        .get(&src.upstream)
                        .map(|pool| (name.clone(), pool.clone(), src.path.clone()))
                })
                .collect();
            pages.insert(
                p.path.clone(),
                Arc::new(PageDef {
                    path: p.path.clone(),
                    template: p.template.clone(),
                    title: p.title.clone(),
                    auth: p.auth,
                    roles: p.roles.clone(),
                    data,
                    audit: p.audit,
                }),
            );
        }
        if !w.pages.is_empty() && env.get_template("error.html").is_err() {
            problems.push(format!(
                "web.templates: error.html is required in {}",
                tdir.display()
            ));
        }
        let adir = cfg.resolve(&w.assets);
        let assets = if adir.is_dir() {
            match Assets::load(&adir, &w.assets_prefix) {
                Ok(a) => Some(a),
                Err(e) => {
                    problems.push(format!("web.{e}"));
                    None
                }
            }
        } else {
            None
        };
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Pages {
            env,
            assets,
            pages,
            site: MjValue::from(Serde(&w.site)),
            routes_doc: std::sync::OnceLock::new(),
            data_timeout: w.data_timeout.0,
            connector: Arc::new(pingora::connectors::http::Connector::new(None)),
        })
    }

    pub fn find(&self, path: &str) -> Option<Arc<PageDef>> {
        self.pages.get(path).cloned()
    }

    pub fn has_template(&self, name: &str) -> bool {
        self.env.get_template(name).is_ok()
    }

    /// The context every template gets, plus `extra` keys (which win over the shared ones).
    /// Built as template values directly: going through a `serde_json` object first cost
    /// a conversion of every key and value on each render.
    pub fn context(
        &self,
        req: &RequestView<'_>,
        title: &str,
        extra: serde_json::Map<String, Value>,
    ) -> MjValue {
        self.context_with(req, title, extra, Vec::new())
    }

    /// [`Pages::context`] plus keys that already are template values (made once and shared,
    /// like [`Pages::routes_doc`]); these win over everything else.
    pub fn context_with(
        &self,
        req: &RequestView<'_>,
        title: &str,
        extra: serde_json::Map<String, Value>,
        values: Vec<(&'static str, MjValue)>,
    ) -> MjValue {
        let portal = query_param(req.query, "portal")
            .filter(|p| ["patient", "doctor", "institution"].contains(&p.as_str()))
            .unwrap_or_else(|| "patient".into());
        let next = query_param(req.query, "next").filter(|n| safe_next(n));
        let error = query_param(req.query, "error")
            .filter(|e| ["invalid", "locked", "forbidden"].contains(&e.as_str()));
        let mut ctx: BTreeMap<String, MjValue> = BTreeMap::new();
        ctx.insert("site".into(), self.site.clone());
        ctx.insert(
            "request".into(),
            minijinja::context! {
                path => req.path,
                query => req.query.unwrap_or(""),
                request_id => req.request_id,
            },
        );
        ctx.insert("user".into(), MjValue::from(Serde(&req.user)));
        ctx.insert(
            "page".into(),
            minijinja::context! { path => req.path, title => title },
        );
        // Masked afresh for every page (`forms::csrf_mask`): the token's bytes never repeat
        // in a compressed page.
        ctx.insert(
            "csrf_token".into(),
            MjValue::from(crate::forms::csrf_mask(req.csrf_token)),
        );
        ctx.insert("flash".into(), MjValue::from(Serde(&req.flash)));
        ctx.insert("portal".into(), MjValue::from(portal));
        ctx.insert("next".into(), MjValue::from(next));
        ctx.insert("error".into(), MjValue::from(error));
        for (k, v) in extra {
            ctx.insert(k, MjValue::from(Serde(&v)));
        }
        for (k, v) in values {
            ctx.insert(k.to_string(), v);
        }
        MjValue::from(ctx)
    }

    /// The route list for the docs page (`make` gives it as JSON), converted once per snapshot.
    pub fn routes_doc(&self, make: impl FnOnce() -> Value) -> MjValue {
        self.routes_doc
            .get_or_init(|| MjValue::from(Serde(&make())))
            .clone()
    }

    /// Renders `template` with `ctx` (from [`Pages::context`]).
    pub fn render(&self, template: &str, ctx: &MjValue) -> Result<String, minijinja::Error> {
        self.env.get_template(template)?.render(ctx)
    }

    /// The HTML error page for `status`; a fixed minimal page if the template fails.
    pub fn render_error(&self, status: u16, req: &RequestView<'_>) -> String {
        self.render_error_with(status, "error.html", req)
    }

    /// [`Pages::render_error`] with another template (route fallbacks).
    pub fn render_error_with(&self, status: u16, template: &str, req: &RequestView<'_>) -> String {
        let (title, message) = error_text(status);
        let mut extra = serde_json::Map::new();
        extra.insert(
            "error".into(),
            json!({"status": status, "title": title, "message": message}),
        );
        let ctx = self.context(req, title, extra);
        match self.render(template, &ctx) {
            Ok(html) => html,
            Err(e) => {
                tracing::error!(request_id = req.request_id, error = %e, "error page template failed");
                minimal_error_page(status, title, message, req.request_id)
            }
        }
    }
}

/// The page of last resort: no template involved.
pub fn minimal_error_page(status: u16, title: &str, message: &str, request_id: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#x27;")
    };
    format!(
        "<!doctype html><html lang=\"es\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{status} · {}</title></head><body><main><h1>{status} — {}</h1><p>{}</p><p><a href=\"/\">Volver al inicio</a></p><p><small>ID de solicitud: {}</small></p></main></body></html>",
        esc(title),
        esc(title),
        esc(message),
        esc(request_id)
    )
}

/// The `keys_by` template filter: `obj|keys_by(priority)` gives a mapping's keys, those listed
/// in `priority` first and in its order, then the others in the mapping's order, `id` last
/// (the dashboards' field order, `templates/partials/data.html`). Not a mapping: no keys. One
/// pass in Rust instead of `select`/`reject` with `in` tests, which cost a dashboard render a
/// fifth of its time.
fn keys_by(obj: MjValue, priority: MjValue) -> Result<MjValue, minijinja::Error> {
    let map = match obj.as_object() {
        Some(o) if obj.kind() == minijinja::value::ValueKind::Map => o,
        _ => return Ok(MjValue::from(Vec::<MjValue>::new())),
    };
    // What the templates' `key in obj` tests.
    let has = |k: &MjValue| map.get_value(k).is_some();
    let first: Vec<MjValue> = priority.try_iter()?.filter(|k| has(k)).collect();
    let id = MjValue::from("id");
    let mut keys = first.clone();
    keys.extend(obj.try_iter()?.filter(|k| *k != id && !first.contains(k)));
    if has(&id) && !first.contains(&id) {
        keys.push(id);
    }
    Ok(MjValue::from(keys))
}

/// The `table` template test: `v is table` for a non-empty list whose first item is a
/// mapping (rendered as a table by `templates/partials/data.html`). A test instead of a
/// macro: a macro call costs a render thousands of instructions.
fn is_table(v: MjValue) -> bool {
    use minijinja::value::ValueKind;
    v.kind() == ValueKind::Seq
        && v.get_item_by_index(0)
            .is_ok_and(|first| first.kind() == ValueKind::Map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_a_non_empty_list_of_mappings() {
        let v = |j: Value| MjValue::from(Serde(j));
        assert!(is_table(v(json!([{"a": 1}, 2]))));
        assert!(!is_table(v(json!([]))));
        assert!(!is_table(v(json!([1, {"a": 1}]))));
        assert!(!is_table(v(json!({"a": [1]}))));
        assert!(!is_table(v(json!("text"))));
    }

    #[test]
    fn keys_by_puts_priority_keys_first_then_the_rest_then_id() {
        let obj = MjValue::from(Serde(
            json!({"id": 7, "zeta": 1, "name": "Ana", "alpha": 2, "date": "x"}),
        ));
        let priority = MjValue::from(vec!["name", "title", "date"]);
        let keys = keys_by(obj, priority.clone()).expect("keys");
        let keys: Vec<String> = keys
            .try_iter()
            .expect("list")
            .map(|k| k.to_string())
            .collect();
        assert_eq!(keys, ["name", "date", "alpha", "zeta", "id"]);
        let none = keys_by(MjValue::from(vec![1, 2]), priority).expect("keys");
        assert_eq!(none.len(), Some(0), "not a mapping: no keys");
    }

    #[test]
    fn every_template_is_escaped_whatever_its_name() {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        env.add_template_owned("plain.txt".to_string(), "{{ x }}".to_string())
            .expect("template");
        let out = env
            .get_template("plain.txt")
            .expect("t")
            .render(minijinja::context! { x => "<script>" })
            .expect("render");
        assert_eq!(out, "&lt;script&gt;");
    }

    #[test]
    fn minimal_page_escapes() {
        let html = minimal_error_page(500, "a<b", "c&d", "id\"");
        assert!(html.contains("a&lt;b") && html.contains("c&amp;d") && html.contains("id&quot;"));
    }

    #[test]
    fn every_error_status_has_spanish_text() {
        for s in [400, 401, 403, 404, 405, 413, 429, 500, 502, 503, 504] {
            let (t, m) = error_text(s);
            assert!(!t.is_empty() && !m.is_empty());
        }
    }
}

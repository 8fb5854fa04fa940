//! The admin listener (`server.admin_listen`, default `127.0.0.1:9091`): `GET /health` for
//! liveness probes, `GET /ready` (configuration loaded; session store and database reachable)
//! `GET /metrics` in the Prometheus text format, and the response cache: `GET /cache` (its
//! size) and `POST /cache/purge` (`?route=NAME`, `?prefix=/path`, both, or `?all=true`).

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub struct Admin {
    pub state: crate::state::SharedState,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub auth: std::sync::Arc<crate::auth::Auth>,
    pub cache: crate::cache::Cache,
}

fn error_body(status: u16, code: &str, message: &str) -> String {
    serde_json::json!({"error": {"status": status, "code": code, "message": message}}).to_string()
}

impl Admin {
    /// Ready when the configuration is loaded and the session store and database answer.
    async fn ready(&self) -> (u16, String) {
        let timeout = std::time::Duration::from_secs(2);
        let store = tokio::time::timeout(timeout, self.auth.sessions.store.ping()).await;
        let db = tokio::time::timeout(timeout, self.auth.users.ping()).await;
        let store_ok = matches!(store, Ok(Ok(())));
        let db_ok = matches!(db, Ok(Ok(())));
        let ok = store_ok && db_ok;
        let body = serde_json::json!({
            "status": if ok { "ready" } else { "not_ready" },
            "checks": {
                "config": "ok",
                "session_store": {"kind": self.auth.sessions.store.kind(), "ok": store_ok},
                "database": {"kind": self.auth.users.backend(), "ok": db_ok},
            },
        });
        (if ok { 200 } else { 503 }, body.to_string())
    }

    /// `POST /cache/purge`: removes the answers the query selects.
    fn purge(&self, method: &http::Method, query: Option<&str>) -> (u16, String) {
        use crate::cache::store::Selector;
        if method != http::Method::POST {
            return (
                405,
                error_body(405, "method_not_allowed", "Use POST to purge."),
            );
        }
        let param = |n| crate::pages::query_param(query, n).filter(|v| !v.is_empty());
        let (route, prefix) = (param("route"), param("prefix"));
        let all = param("all").is_some_and(|v| v == "true");
        if prefix.as_ref().is_some_and(|p| !p.starts_with('/')) {
            return (
                400,
                error_body(400, "bad_request", "prefix must start with '/'."),
            );
        }
        let selector = match (route, prefix, all) {
            (None, None, true) => Selector::All,
            (Some(r), None, false) => Selector::Route(r),
            (route, Some(prefix), false) => Selector::Prefix { prefix, route },
            _ => {
                return (
                    400,
                    error_body(
                        400,
                        "bad_request",
                        "Say what to purge: ?route=NAME, ?prefix=/path (with or without route), or ?all=true.",
                    ),
                )
            }
        };
        let purged = self.cache.store.purge_matching(&selector);
        self.metrics.cache_purged_total.inc_by(purged as u64);
        tracing::info!(?selector, purged, "cache purged");
        (200, serde_json::json!({ "purged": purged }).to_string())
    }

    /// `GET /cache`: what the store holds.
    fn cache_stats(&self) -> (u16, String) {
        let st = self.cache.store.stats();
        let c = &self.state.load().config.server.cache;
        let body = serde_json::json!({
            "entries": st.entries,
            "bytes": st.bytes,
            "evictions": st.evictions,
            "max_size": c.max_size.0,
            "max_object_size": c.max_object_size.0,
        });
        (200, body.to_string())
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let method = req.method.clone();
        let mut content_type = "application/json";
        let (status, body) = match path.as_str() {
            "/health" => (200, crate::builtin::liveness().to_string()),
            "/ready" => self.ready().await,
            "/metrics" => {
                content_type = "text/plain; version=0.0.4; charset=utf-8";
                let cache = Some(self.cache.store.stats());
                (200, self.metrics.render(&self.state.load(), cache))
            }
            "/cache" => self.cache_stats(),
            "/cache/purge" => self.purge(&method, query.as_deref()),
            _ => (404, error_body(404, "not_found", "Unknown admin endpoint.")),
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body.into_bytes())
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

//! The admin listener (`server.admin_listen`, default `127.0.0.1:9091`): `GET /health` for
//! liveness probes, `GET /ready` (configuration loaded; session store and database reachable)
//! and `GET /metrics` in the Prometheus text format.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub struct Admin {
    pub state: crate::state::SharedState,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub auth: std::sync::Arc<crate::auth::Auth>,
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
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let mut content_type = "application/json";
        let (status, body) = match path.as_str() {
            "/health" => (200, crate::builtin::liveness().to_string()),
            "/ready" => self.ready().await,
            "/metrics" => {
                content_type = "text/plain; version=0.0.4; charset=utf-8";
                (200, self.metrics.render(&self.state.load()))
            }
            _ => (404, r#"{"error":{"status":404,"code":"not_found","message":"Unknown admin endpoint."}}"#.to_string()),
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body.into_bytes())
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

//! The admin listener (`server.admin_listen`, default `127.0.0.1:9091`): `GET /health` for
//! liveness probes and `GET /metrics` in the Prometheus text format. Readiness joins it with
//! the operations work.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub struct Admin {
    pub state: crate::state::SharedState,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let mut content_type = "application/json";
        let (status, body) = match path.as_str() {
            "/health" => (200, crate::builtin::liveness().to_string()),
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

//! The admin listener (`server.admin_listen`, default `127.0.0.1:9091`): `GET /health` for
//! liveness probes, `GET /ready` (configuration loaded; proxy listeners accepting; session store
//! and database reachable),
//! `GET /metrics` in the Prometheus text format, and the response cache: `GET /cache` (its
//! size) and `POST /cache/purge` (`?route=NAME`, `?prefix=/path`, both, or `?all=true`).
//!
//! Layer: beside the lanes (its own listener), above `state`, `auth`, `metrics` and `cache`; must
//! not import `proxy`, `plan` or `reload`.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub struct Admin {
    pub state: crate::state::SharedState,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub auth: std::sync::Arc<crate::auth::Auth>,
    pub cache: crate::cache::Cache,
    /// Set once every proxy listener has accepted a connection (see [`Admin::proxy_listening`]).
    pub listening: std::sync::atomic::AtomicBool,
}

/// Whether a TCP connection to listen address `addr` succeeds within a second (an unspecified
/// address, `0.0.0.0` or `[::]`, is tried on the loopback address of its family).
pub async fn accepts(addr: &str) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let target = match addr.parse::<SocketAddr>() {
        Ok(mut a) if a.ip().is_unspecified() => {
            a.set_ip(match a.ip() {
                IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
            a.to_string()
        }
        _ => addr.to_string(),
    };
    let connect = tokio::net::TcpStream::connect(target);
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(1), connect).await,
        Ok(Ok(_))
    )
}

fn error_body(status: u16, code: &str, message: &str) -> String {
    serde_json::json!({"error": {"status": status, "code": code, "message": message}}).to_string()
}

impl Admin {
    /// Ready when the configuration is loaded, the proxy listeners accept connections and the
    /// session store and database answer.
    async fn ready(&self) -> (u16, String) {
        let timeout = std::time::Duration::from_secs(2);
        let store = tokio::time::timeout(timeout, self.auth.sessions.store.ping()).await;
        let db = tokio::time::timeout(timeout, self.auth.users.ping()).await;
        let store_ok = matches!(store, Ok(Ok(())));
        let db_ok = matches!(db, Ok(Ok(())));
        let listener_ok = self.proxy_listening().await;
        let ok = store_ok && db_ok && listener_ok;
        let body = serde_json::json!({
            "status": if ok { "ready" } else { "not_ready" },
            "checks": {
                "config": "ok",
                "listener": {"ok": listener_ok},
                "session_store": {"kind": self.auth.sessions.store.kind(), "ok": store_ok},
                "database": {"kind": self.auth.users.backend(), "ok": db_ok},
            },
        });
        (if ok { 200 } else { 503 }, body.to_string())
    }

    /// Whether every proxy listener (`server.listen`, `server.tls.listen`) accepts connections.
    /// Pingora binds each service's listeners when that service starts, on its own thread, so
    /// the admin listener can answer before the proxy's are bound: without this, `/ready` could
    /// send traffic to an instance that refuses it. Checked by connecting until it holds once.
    async fn proxy_listening(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.listening.load(Ordering::Acquire) {
            return true;
        }
        let addrs: Vec<String> = {
            let snap = self.state.load();
            let s = &snap.config.server;
            s.listen.0.iter().chain(&s.tls.listen).cloned().collect()
        };
        for addr in &addrs {
            if !accepts(addr).await {
                return false;
            }
        }
        self.listening.store(true, Ordering::Release);
        true
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
        let param = |n| crate::forms::query_param(query, n).filter(|v| !v.is_empty());
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

#[cfg(test)]
mod tests {
    use super::accepts;

    #[tokio::test]
    async fn a_listen_address_accepts_only_while_something_listens_on_it() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert!(accepts(&format!("127.0.0.1:{port}")).await);
        assert!(
            accepts(&format!("0.0.0.0:{port}")).await,
            "an unspecified address is tried on loopback"
        );
        drop(l);
        assert!(!accepts(&format!("127.0.0.1:{port}")).await);
    }
}

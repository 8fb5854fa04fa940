//! The floor under gatehouse's proxy path: Pingora 0.9.1's HTTP proxy with nothing of
//! gatehouse in it (no filters, no limits, no metrics, no logging), one upstream, on one
//! current-thread worker like `gatehouse run` with `server.threads: 1`. For load comparisons
//! against gatehouse and nginx (benches/load/run.sh's setup); see the Benchmarks section of
//! the README.
//!
//! ```sh
//! cargo build --release --example bare_pingora
//! taskset -c 0 target/release/examples/bare_pingora 127.0.0.1:8081 127.0.0.1:8080
//! ```
//! The first argument is where it listens, the second the upstream (`host:port`, plain HTTP).
//! With a third argument `headers`, it also sets the forwarding headers gatehouse and the
//! harness's nginx set (`X-Forwarded-For`, `-Proto`, `-Host`, `X-Real-IP`, `X-Request-Id`).

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, Opt, Result};
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

// The same allocator as the gatehouse binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
    headers: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut pingora::http::RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if !self.headers {
            return Ok(());
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let host = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .cloned();
        up.insert_header("x-forwarded-for", peer.as_str())?;
        up.insert_header("x-real-ip", peer)?;
        up.insert_header("x-forwarded-proto", "http")?;
        if let Some(h) = host {
            up.insert_header("x-forwarded-host", h)?;
        }
        up.insert_header("x-request-id", format!("{:032x}", rand::random::<u128>()))?;
        Ok(())
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN_ADDR UPSTREAM_ADDR [headers]");
        std::process::exit(2);
    };
    let headers = args.next().as_deref() == Some("headers");
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        // A bench tool: SIGTERM stops it at once.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut service =
        pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream, headers });
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}

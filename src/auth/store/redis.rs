//! [`RedisStore`]: the [`SessionStore`] shared by gateways, via `fred`.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, SetsInterface};
use fred::prelude::{Builder, Config, Error as FredError, ErrorKind, Expiration, Options};
use fred::types::config::{ReconnectPolicy, UnresponsiveConfig};
use fred::types::{ClusterHash, CustomCommand, FromValue};

use super::{ttl_millis, SessionStore, StoreError};

/// The operation timeout callers use unless configured otherwise.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(500);

/// Extra time allowed past the op timeout before our own guard gives up on a command that fred
/// has not answered.
const GUARD_MARGIN: Duration = Duration::from_millis(200);

/// `SADD` + `PEXPIRE`, atomically.
const SET_ADD_SCRIPT: &str = "redis.call('SADD', KEYS[1], ARGV[1]) \
     redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1";

/// `INCR`, setting the TTL when the counter is created (or somehow has none): a fixed window.
const INCR_SCRIPT: &str = "local v = redis.call('INCR', KEYS[1]) \
     if v == 1 or redis.call('PTTL', KEYS[1]) == -1 then \
     redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return v";

/// Whether `scheme` is one of fred's: `redis`, `rediss`, `valkey` or `valkeys`, optionally
/// followed by `-cluster` or `-sentinel`.
fn known_scheme(scheme: &str) -> bool {
    let base = scheme
        .strip_suffix("-cluster")
        .or_else(|| scheme.strip_suffix("-sentinel"))
        .unwrap_or(scheme);
    matches!(base, "redis" | "rediss" | "valkey" | "valkeys")
}

/// Redis (or Valkey) via fred.
///
/// URL forms (fred's `Config::from_url`):
/// * `redis://[[user:]pass@]host[:port][/db]` — one server (port 6379 by default);
/// * `redis-cluster://[[user:]pass@]host:port[?node=host2:port2&node=...]` — a cluster, seeded
///   from the listed nodes;
/// * `redis-sentinel://[[user:]pass@]host[:port][/db]?sentinelServiceName=NAME[&node=host2:port2...]`
///   — a primary behind sentinels (the hosts are the sentinels, port 26379 by default);
/// * the same with `valkey` in place of `redis`.
///
/// TLS schemes (`rediss`, `valkeys`, `rediss-cluster`, ...) are refused unless fred is built
/// with one of its TLS features (`enable-rustls-ring`, `enable-rustls`, `enable-native-tls`).
///
/// Needs Redis 6.2 or later (`GETDEL`). While the connection is down, commands fail at once
/// (fred's per-command `fail_fast`) rather than queue; a hung server costs each command the
/// op timeout, then [`StoreError::Timeout`]. A command that timed out may still have run.
pub struct RedisStore {
    client: Client,
    options: Options,
    op_timeout: Duration,
}

impl RedisStore {
    /// Connects lazily-but-promptly: returns Ok even if Redis is down at start (the gateway must start and serve public routes), with reconnect policy so it recovers when Redis comes back. `op_timeout` bounds every command (default callers pass 500 ms).
    ///
    /// Waits at most `op_timeout` for the first connection. A zero `op_timeout` means
    /// [`DEFAULT_OP_TIMEOUT`]. Fails only for an invalid or unsupported URL.
    pub async fn connect(url: &str, op_timeout: Duration) -> Result<RedisStore, StoreError> {
        let op_timeout = if op_timeout.is_zero() {
            DEFAULT_OP_TIMEOUT
        } else {
            op_timeout
        };
        let scheme = url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default();
        if !known_scheme(&scheme) {
            return Err(StoreError::Other(format!(
                "invalid Redis URL: unsupported scheme {scheme:?} (expected redis://, \
                 redis-cluster:// or redis-sentinel://)"
            )));
        }
        // fred's errors do not echo the URL, so credentials stay out of the message.
        let mut config = Config::from_url(url)
            .map_err(|e| StoreError::Other(format!("invalid Redis URL: {e}")))?;
        if (scheme.starts_with("rediss") || scheme.starts_with("valkeys")) && !config.uses_tls() {
            return Err(StoreError::Other(format!(
                "invalid Redis URL: {scheme}:// needs TLS, which this build does not include \
                 (fred's TLS features are off)"
            )));
        }
        // Run the reconnect policy for the first connection too, instead of failing on it.
        config.fail_fast = false;

        let connect_timeout =
            (op_timeout * 4).clamp(Duration::from_secs(1), Duration::from_secs(10));
        let unresponsive = (op_timeout * 4).max(Duration::from_secs(1));
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = connect_timeout;
                c.internal_command_timeout = connect_timeout;
                // A connection that has had no reply for this long since its last write is
                // dropped and rebuilt (then commands fail at once). Under steady traffic fred's
                // check rarely fires; each command is still bounded by `op_timeout`.
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(unresponsive),
                    interval: (unresponsive / 4).max(Duration::from_millis(50)),
                };
            })
            .with_performance_config(|p| p.default_command_timeout = op_timeout)
            // Retry forever: 100 ms, doubling, at most 2 s apart.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let client = builder
            .build()
            .map_err(|e| StoreError::Other(format!("invalid Redis configuration: {e}")))?;

        let down = Arc::new(AtomicBool::new(false));
        let on_error = down.clone();
        client.on_error(move |(error, server)| {
            let server = server.map(|s| s.to_string()).unwrap_or_default();
            if on_error.swap(true, Ordering::Relaxed) {
                tracing::debug!(%server, %error, "session store: redis connection error");
            } else {
                tracing::warn!(%server, %error, "session store: redis unreachable, retrying");
            }
            async { Ok(()) }
        });
        let on_reconnect = down;
        client.on_reconnect(move |server| {
            if on_reconnect.swap(false, Ordering::Relaxed) {
                tracing::info!(server = %server, "session store: redis connection restored");
            }
            async { Ok(()) }
        });

        // The connection task runs (and reconnects) until `shutdown`.
        let _task = client.connect();
        match tokio::time::timeout(op_timeout, client.wait_for_connect()).await {
            Ok(Ok(())) => tracing::info!("session store: connected to redis"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "session store: redis not reachable yet, retrying")
            }
            Err(_) => tracing::warn!("session store: redis not reachable yet, retrying"),
        }

        let options = Options {
            timeout: Some(op_timeout),
            // Fail at once while the connection is down instead of queueing until it is back.
            fail_fast: true,
            ..Options::default()
        };
        Ok(RedisStore {
            client,
            options,
            op_timeout,
        })
    }

    /// The underlying fred client, for callers that need pub/sub later.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The timeout that bounds every operation.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// Closes the connection and stops reconnecting; later operations fail.
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(self.op_timeout, self.client.quit()).await;
    }

    fn cmd(&self) -> fred::clients::WithOptions<Client> {
        self.client.with_options(&self.options)
    }

    /// `EVAL script 1 key args...`, sent as a custom command: fred 10.1 does not implement
    /// `LuaInterface` for `WithOptions`, so `eval` there would silently drop the per-command
    /// options (and with them fail-fast).
    async fn eval<R>(
        &self,
        op: &'static str,
        script: &str,
        key: &str,
        args: &[&str],
    ) -> Result<R, StoreError>
    where
        R: FromValue + Send,
    {
        let slot = ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes()));
        let cmd = CustomCommand::new_static("EVAL", slot, false);
        let mut argv = vec![script, "1", key];
        argv.extend_from_slice(args);
        let c = self.cmd();
        self.run(op, c.custom::<R, &str>(cmd, argv)).await
    }

    /// Runs one command under our own guard (in case fred's timeout does not fire) and maps
    /// its error.
    async fn run<T, F>(&self, op: &'static str, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, FredError>> + Send,
    {
        match tokio::time::timeout(self.op_timeout + GUARD_MARGIN, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::debug!(op, error = %e, "session store: redis command failed");
                Err(map_error(&e))
            }
            Err(_) => {
                tracing::debug!(op, "session store: redis command timed out");
                Err(StoreError::Timeout)
            }
        }
    }
}

fn map_error(e: &FredError) -> StoreError {
    match e.kind() {
        ErrorKind::Timeout => StoreError::Timeout,
        ErrorKind::IO
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Routing
        | ErrorKind::Cluster
        | ErrorKind::Sentinel
        | ErrorKind::Auth => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Other(e.to_string()),
    }
}

/// A TTL as the `i64` milliseconds Redis takes.
fn ttl_px(ttl: Duration) -> i64 {
    i64::try_from(ttl_millis(ttl)).unwrap_or(i64::MAX)
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("op_timeout", &self.op_timeout)
            .field("connected", &self.client.is_connected())
            .finish()
    }
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let c = self.cmd();
        let px = Some(Expiration::PX(ttl_px(ttl)));
        self.run("set", c.set::<(), _, _>(key, value, px, None, false))
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let c = self.cmd();
        self.run("get", c.get::<Option<String>, _>(key)).await
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let c = self.cmd();
        let ms = self.run("pttl", c.pttl::<i64, _>(key)).await?;
        Ok(match ms {
            -1 => Some(Duration::MAX), // a key without expiry (not written by this store)
            ms => u64::try_from(ms).ok().map(Duration::from_millis),
        })
    }

    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let c = self.cmd();
        let n = self
            .run("pexpire", c.pexpire::<i64, _>(key, ttl_px(ttl), None))
            .await?;
        Ok(n == 1)
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let c = self.cmd();
        if !self.client.is_clustered() {
            return self.run("del", c.del::<u64, _>(keys.to_vec())).await;
        }
        // Keys may hash to different slots: one DEL each, all under one guard.
        let all = async {
            let mut n = 0;
            for key in keys {
                n += c.del::<u64, _>(key.as_str()).await?;
            }
            Ok(n)
        };
        self.run("del", all).await
    }

    async fn take(&self, key: &str) -> Result<Option<String>, StoreError> {
        let c = self.cmd();
        self.run("getdel", c.getdel::<Option<String>, _>(key)).await
    }

    async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        let px = ttl_px(ttl).to_string();
        self.eval("sadd", SET_ADD_SCRIPT, key, &[member, &px]).await
    }

    async fn set_remove(&self, key: &str, member: &str) -> Result<(), StoreError> {
        let c = self.cmd();
        self.run("srem", c.srem::<(), _, _>(key, member)).await
    }

    async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let c = self.cmd();
        self.run("smembers", c.smembers::<Vec<String>, _>(key))
            .await
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        let px = ttl_px(ttl).to_string();
        let n: i64 = self.eval("incr", INCR_SCRIPT, key, &[&px]).await?;
        u64::try_from(n).map_err(|_| StoreError::Other("value is not a counter".into()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let c = self.cmd();
        self.run("ping", c.ping::<()>(None)).await
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check_all, sleeper, LONG, MS};
    use super::*;

    fn redis_url() -> Option<String> {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                eprintln!("note: REDIS_URL is not set; skipping Redis test");
                None
            }
        }
    }

    /// A port on 127.0.0.1 with nothing listening (right now).
    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// Well under the 500 ms op timeout: the command was refused, not timed out.
    const AT_ONCE: Duration = Duration::from_millis(250);

    const WITHIN_1S: Duration = Duration::from_secs(1);

    /// Asserts that `op` fails within `limit`.
    async fn fails_fast<T: fmt::Debug>(
        what: &str,
        limit: Duration,
        op: impl Future<Output = Result<T, StoreError>>,
    ) {
        let start = std::time::Instant::now();
        let r = op.await;
        let took = start.elapsed();
        assert!(r.is_err(), "{what}: expected an error, got {r:?}");
        assert!(took < limit, "{what}: took {took:?} ({r:?})");
    }

    /// Every operation fails within `limit`. Uses its own keys: a command that timed out may
    /// still run once a hung server resumes.
    async fn all_ops_fail_fast(s: &RedisStore, limit: Duration) {
        fails_fast("set", limit, s.set("ff:k", "v", LONG)).await;
        fails_fast("get", limit, s.get("ff:k")).await;
        fails_fast("ttl", limit, s.ttl("ff:k")).await;
        fails_fast("expire", limit, s.expire("ff:k", LONG)).await;
        fails_fast("delete", limit, s.delete(&["ff:k".to_owned()])).await;
        fails_fast("take", limit, s.take("ff:k")).await;
        fails_fast("set_add", limit, s.set_add("ff:s", "m", LONG)).await;
        fails_fast("set_remove", limit, s.set_remove("ff:s", "m")).await;
        fails_fast("set_members", limit, s.set_members("ff:s")).await;
        fails_fast("incr", limit, s.incr("ff:c", LONG)).await;
        fails_fast("ping", limit, s.ping()).await;
    }

    /// Polls `ping` until it succeeds (the reconnect backoff is at most 2 s).
    async fn wait_until_up(s: &RedisStore) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.ping().await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "store did not recover"
            );
            tokio::time::sleep(MS(100)).await;
        }
    }

    /// A throwaway redis-server on 127.0.0.1, killed on drop.
    struct RedisServer {
        child: std::process::Child,
        dir: std::path::PathBuf,
    }

    impl RedisServer {
        fn binary() -> Option<String> {
            let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
            let found = std::process::Command::new(&bin)
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                eprintln!("note: {bin} not found; skipping test that runs its own Redis");
            }
            found.then_some(bin)
        }

        fn start(bin: &str, port: u16) -> RedisServer {
            let dir = std::env::temp_dir().join(format!(
                "gatehouse-store-redis-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let child = std::process::Command::new(bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let server = RedisServer { child, dir };
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            while std::net::TcpStream::connect_timeout(&addr, MS(100)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "redis-server did not start"
                );
                std::thread::sleep(MS(20));
            }
            server
        }

        fn signal(&self, sig: &str) {
            let status = std::process::Command::new("kill")
                .args([sig, &self.child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_semantics() {
        let Some(url) = redis_url() else { return };
        let s = RedisStore::connect(&url, DEFAULT_OP_TIMEOUT).await.unwrap();
        assert_eq!(s.kind(), "redis");
        s.ping().await.unwrap();
        check_all(Arc::new(s), sleeper()).await;
    }

    #[tokio::test]
    async fn redis_invalid_urls_are_refused() {
        for url in [
            "",
            "not a url",
            "localhost:6379",
            "http://127.0.0.1:6379",
            "redis://",
            "redis://127.0.0.1:notaport",
            "redis://127.0.0.1:6379/notadb",
            "redis-sentinel://127.0.0.1:26379",
            "rediss://127.0.0.1:6379",
            "rediss-cluster://127.0.0.1:6379",
        ] {
            let r = RedisStore::connect(url, MS(200)).await;
            assert!(matches!(r, Err(StoreError::Other(_))), "{url}: {r:?}");
        }
    }

    #[tokio::test]
    async fn redis_url_forms_connect_lazily() {
        // Nothing listens on these ports: connect still returns Ok, promptly.
        let port = free_port();
        for url in [
            format!("redis://127.0.0.1:{port}"),
            format!("redis://user:secret@127.0.0.1:{port}/2"),
            format!("valkey://:secret@127.0.0.1:{port}"),
            format!(
                "redis-cluster://127.0.0.1:{port}?node=127.0.0.1:{}",
                port + 1
            ),
            format!("redis-sentinel://127.0.0.1:{port}/1?sentinelServiceName=mymaster"),
        ] {
            let start = std::time::Instant::now();
            let s = RedisStore::connect(&url, MS(200)).await.unwrap();
            assert!(start.elapsed() < Duration::from_secs(1), "{url}");
            fails_fast(&url, WITHIN_1S, s.get("k")).await;
            s.shutdown().await;
        }
    }

    #[tokio::test]
    async fn redis_down_at_start_fails_fast_then_recovers() {
        let port = free_port();
        let s = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), DEFAULT_OP_TIMEOUT)
            .await
            .unwrap();
        all_ops_fail_fast(&s, AT_ONCE).await;
        if redis_url().is_none() {
            return;
        }
        let Some(bin) = RedisServer::binary() else {
            return;
        };
        let _server = RedisServer::start(&bin, port);
        wait_until_up(&s).await;
        s.set("k", "v", LONG).await.unwrap();
        assert_eq!(s.get("k").await.unwrap().as_deref(), Some("v"));
    }

    #[tokio::test]
    async fn redis_outage_and_recovery() {
        if redis_url().is_none() {
            return;
        }
        let Some(bin) = RedisServer::binary() else {
            return;
        };
        let port = free_port();
        let server = RedisServer::start(&bin, port);
        let s = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), DEFAULT_OP_TIMEOUT)
            .await
            .unwrap();
        s.set("k", "v", LONG).await.unwrap();

        // A hung server (stopped, not dead): commands time out instead of waiting.
        server.signal("-STOP");
        all_ops_fail_fast(&s, WITHIN_1S).await;
        server.signal("-CONT");
        wait_until_up(&s).await;
        assert_eq!(s.get("k").await.unwrap().as_deref(), Some("v"));

        // A dead server: commands fail, immediately after the kill and while it stays down.
        drop(server);
        all_ops_fail_fast(&s, WITHIN_1S).await;
        // Once the loss is noticed, commands are refused at once instead of queued.
        tokio::time::sleep(MS(700)).await;
        all_ops_fail_fast(&s, AT_ONCE).await;

        // Back on the same port (empty, no persistence): the same store works again.
        let _server = RedisServer::start(&bin, port);
        wait_until_up(&s).await;
        assert_eq!(s.get("k").await.unwrap(), None);
        s.set("k", "v2", LONG).await.unwrap();
        assert_eq!(s.take("k").await.unwrap().as_deref(), Some("v2"));
        assert_eq!(s.incr("c", LONG).await.unwrap(), 1);
    }
}

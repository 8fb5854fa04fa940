//! Services from the environment (`DATABASE_URL`, `REDIS_URL`: scripts/test.sh starts
//! throwaway ones) and our own `redis-server` child for outage tests (never the shared one).

use super::backends::TempDir;
use super::upstream_and_client::{free_port, wait_until};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The environment variable `name` when it is set and not blank.
pub fn env_url(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The values of the environment variables `names` (service URLs a test needs), or `None`
/// with a note saying `what` is skipped; under CI (`CI` set) a missing one fails the test
/// instead, since skipping there would hide it.
pub fn required_services(names: &[&str], what: &str) -> Option<Vec<String>> {
    let values: Option<Vec<String>> = names.iter().map(|n| env_url(n)).collect();
    if values.is_none() {
        let names = names.join(" and ");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but {names} not all set: {what} needs them (scripts/test.sh starts \
             throwaway ones)"
        );
        eprintln!("note: {names} not all set; skipping {what}");
    }
    values
}

/// Where `redis-server` is installed (Debian's package).
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// Whether a Redis on 127.0.0.1:`port` answers `PING` (within about 0.7 s).
pub fn redis_pings(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A `redis-server` child on a free loopback port, without persistence; killed on drop.
pub struct OwnRedis {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    /// `None` (with a note) when redis-server is missing or does not come up.
    pub fn start() -> Option<OwnRedis> {
        if !Path::new(REDIS_SERVER).exists() {
            eprintln!("note: {REDIS_SERVER} not found; skipping");
            return None;
        }
        let mut r = OwnRedis {
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
        };
        if r.spawn() {
            Some(r)
        } else {
            eprintln!("note: redis-server did not start; skipping");
            None
        }
    }

    /// Starts the server on `self.port` (again); true once it answers PING. The port may take
    /// a moment to be free again after a kill: retried for up to 10 s.
    pub fn spawn(&mut self) -> bool {
        wait_until(Duration::from_secs(10), || self.try_spawn())
    }

    fn try_spawn(&mut self) -> bool {
        let port = self.port;
        let spawned = Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = spawned else {
            return false;
        };
        let up = wait_until(Duration::from_secs(5), || {
            redis_pings(port) || !matches!(child.try_wait(), Ok(None))
        });
        if up && redis_pings(port) {
            self.child = Some(child);
            return true;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL: the store vanishes without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

//! Services from the environment (`DATABASE_URL`, `REDIS_URL`: scripts/test.sh starts
//! throwaway ones), and our own `redis-server` child and PostgreSQL cluster for outage tests
//! (never the shared ones).

use super::backends::{temp_path, TempDir};
use super::upstream_and_client::{free_port, wait_until};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
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

/// A throwaway PostgreSQL cluster on a free loopback port (like scripts/test.sh), run as
/// the `postgres` user when we are root; stopped (immediately) and removed on drop.
pub struct OwnPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_root: bool,
    running: bool,
}

pub fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

pub fn quiet(c: &mut Command) -> bool {
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl OwnPostgres {
    /// `None` (with a note) when the PostgreSQL binaries are missing or it fails to start.
    pub fn start() -> Option<OwnPostgres> {
        let Some(bin) = postgres_bin() else {
            eprintln!("note: PostgreSQL binaries not found under /usr/lib/postgresql; skipping");
            return None;
        };
        let uid = Command::new("id").arg("-u").output().ok()?;
        let as_root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir = temp_path("pg");
        std::fs::create_dir_all(dir.join("sock")).expect("pg dir");
        let mut pg = OwnPostgres {
            bin,
            dir,
            port: free_port(),
            as_root,
            running: false,
        };
        if as_root && !quiet(Command::new("chown").args(["-R", "postgres"]).arg(&pg.dir)) {
            eprintln!("note: cannot hand a directory to the postgres user; skipping");
            return None;
        }
        let data = pg.dir.join("data");
        let initdb =
            quiet(
                pg.tool("initdb")
                    .arg("-D")
                    .arg(&data)
                    .args(["-U", "postgres", "--auth=trust"]),
            );
        if !(initdb && pg.start_server()) {
            eprintln!("note: the throwaway PostgreSQL did not start; skipping");
            return None;
        }
        let port = pg.port.to_string();
        let created = quiet(pg.tool("createdb").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "gatehouse_test",
        ]));
        if !created {
            eprintln!("note: createdb failed; skipping");
            return None;
        }
        Some(pg)
    }

    pub fn tool(&self, name: &str) -> Command {
        if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(name));
            c
        } else {
            Command::new(self.bin.join(name))
        }
    }

    pub fn start_server(&mut self) -> bool {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.join("sock").display()
        );
        let data = self.dir.join("data");
        let log = self.dir.join("pg.log");
        self.running = quiet(
            self.tool("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-o", &opts, "start"]),
        );
        self.running
    }

    pub fn stop_immediately(&mut self) {
        let data = self.dir.join("data");
        quiet(
            self.tool("pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "stop"]),
        );
        self.running = false;
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/gatehouse_test", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.running {
            self.stop_immediately();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! Scale-out: two `gatehouse` PROCESSES (the real binary, as a replica set would run it) on
//! one Redis and one PostgreSQL, with the same JWT secret. A user seeded with `user add`
//! signs in through A and is accepted by B; a logout through A is refused by B on the very
//! next request; a `backend: redis` rate limit is one budget shared by both.
//!
//! Needs `DATABASE_URL` (PostgreSQL) and `REDIS_URL`, which `scripts/test.sh` exports for its
//! throwaway instances. Without them that test is skipped with a note — unless `CI` is set,
//! where skipping would hide the scale-out story, so it fails.
//!
//! Also here, since deploy/k8s relies on it: a config file in a ConfigMap volume's layout is
//! reloaded by `server.watch_config` when the kubelet's symlink swap replaces it.

mod common;
use common::*;

use std::path::PathBuf;
use std::time::Duration;

/// The replicas' config: the same file for both, everything shared read from the
/// environment as in the default gateway.yaml; only the listeners, pid file and upgrade
/// socket differ (from the environment too), since both run on one machine.
fn replica_config(upstream_url: &str, limiter: &str) -> String {
    format!(
        "{}auth:
  database_url: ${{DATABASE_URL}}
  redis_url: ${{REDIS_URL}}
  jwt: {{algorithm: HS256, secret: ${{JWT_SECRET_KEY}}}}
  login: {{max_failures_per_ip: 1000}}
upstreams:
  app: {{backends: \"{upstream_url}\"}}
routes:
  - {{name: private, prefix: /private, upstream: app, auth: required}}
  - name: limited
    prefix: /limited
    upstream: app
    rate_limits: [{{name: {limiter}, rate: \"4/1m\", backend: redis}}]
",
        replica_server("")
    )
}

/// The replicas' `server:` block: listeners, pid file and upgrade socket from the environment
/// (both run on one machine), plus `extra` lines.
fn replica_server(extra: &str) -> String {
    env_server_block(&format!(
        "  pid_file: ${{TEST_PID_FILE}}\n  upgrade_sock: ${{TEST_UPGRADE_SOCK}}\n{extra}"
    ))
}

/// Files of one test run, removed on drop.
struct TempFiles(Vec<PathBuf>);

impl TempFiles {
    fn path(&mut self, name: &str) -> PathBuf {
        let p = temp_path(name);
        self.0.push(p.clone());
        p
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            for suffix in ["", "-wal", "-shm"] {
                let mut name = p.clone().into_os_string();
                name.push(suffix);
                let _ = std::fs::remove_file(name);
            }
        }
    }
}

/// One `gatehouse run` process on free ports, named for failure messages. Killed on drop.
struct Replica {
    name: &'static str,
    p: Process,
}

impl Replica {
    fn start(name: &'static str, config: &PathBuf, files: &mut TempFiles) -> Replica {
        let (port, admin_port) = (free_port(), free_port());
        let mut cmd = gatehouse_on(port, admin_port);
        cmd.args(["run", "-c"])
            .arg(config)
            .env("TEST_PID_FILE", files.path(&format!("{name}.pid")))
            .env("TEST_UPGRADE_SOCK", files.path(&format!("{name}.sock")))
            .env("JWT_SECRET_KEY", SECRET);
        let replica = Replica {
            name,
            p: Process::spawn(&mut cmd, port, admin_port),
        };
        // Ready = listening, and the admin listener says the store and database answer.
        let ready = wait_until(Duration::from_secs(20), || {
            get(admin_port, "/ready", &[]).is_ok_and(|r| r.status == 200)
        });
        assert!(
            ready,
            "replica {name} never became ready{}",
            replica.log_tail()
        );
        replica
    }

    fn log_tail(&self) -> String {
        format!("; {} log:\n{}", self.name, self.p.log_tail(40))
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        get(self.p.port, path, headers)
            .unwrap_or_else(|e| panic!("GET {path} via {}: {e}{}", self.name, self.log_tail()))
    }

    fn bearer(&self, path: &str, token: &str) -> Response {
        self.get(path, &[("Authorization", &bearer(token))])
    }

    fn login(&self, email: &str) -> String {
        login(self.p.port, email)
    }

    fn logout(&self, token: &str) {
        let r = logout(self.p.port, token, false);
        assert_eq!(r.status, 200, "logout via {}: {}", self.name, r.text());
    }
}

#[test]
fn two_processes_share_sessions_logouts_and_redis_rate_limits() {
    let Some(services) = required_services(&["DATABASE_URL", "REDIS_URL"], "scale_out") else {
        return;
    };
    let db = &services[0];
    let mut files = TempFiles(Vec::new());
    let email = format!("scale-{}@scale-out.test", unique());
    add_user_cli(db, &email, "patient", PASSWORD);

    let up = FakeUpstream::start(Behavior::Echo);
    // Unique per run: the limit's key lives in the shared Redis, which other runs may reuse.
    let limiter = format!("scale-{:016x}", rand::random::<u64>());
    let config = files.path("gateway.yaml");
    std::fs::write(&config, replica_config(&up.url(), &limiter)).expect("write config");

    // Two processes: sessions, logouts and limits hold across them.
    let a = Replica::start("A", &config, &mut files);
    let b = Replica::start("B", &config, &mut files);

    // Signed in through A, accepted by B on a protected route to the upstream.
    let token = a.login(&email);
    let before = up.request_count();
    let r = b.bearer("/private/records", &token);
    assert_eq!(r.status, 200, "A's token through B: {}", r.text());
    assert_eq!(up.request_count(), before + 1, "B forwarded the request");
    let seen = &up.requests()[before];
    assert_eq!(seen.header("x-user-role"), Some("patient"));
    assert!(
        seen.header("x-user-id").is_some(),
        "identity headers upstream"
    );
    assert_eq!(a.bearer("/private/records", &token).status, 200);

    // Logged out through A: B refuses the same token on its next request.
    a.logout(&token);
    let r = b.bearer("/private/records", &token);
    assert_eq!(r.status, 401, "logout through A holds at B: {}", r.text());
    assert_eq!(a.bearer("/private/records", &token).status, 401);
    assert_eq!(b.bearer("/api/v1/auth/validate", &token).status, 401);
    assert_eq!(
        up.request_count(),
        before + 2,
        "nothing forwarded after logout"
    );

    // One Redis budget of 4 for both replicas: A, B, A, B pass; the fifth is 429 on either.
    let before = up.request_count();
    for (i, replica) in [&a, &b, &a, &b].into_iter().enumerate() {
        let r = replica.get("/limited/x", &[]);
        assert_eq!(
            r.status,
            200,
            "request {} via {}: {}",
            i + 1,
            replica.name,
            r.text()
        );
    }
    for replica in [&a, &b] {
        let r = replica.get("/limited/x", &[]);
        assert_eq!(
            r.status,
            429,
            "over the shared limit via {}: {}",
            replica.name,
            r.text()
        );
        assert!(r.header("retry-after").is_some(), "429 carries Retry-After");
    }
    assert_eq!(
        up.request_count(),
        before + 4,
        "exactly 4 reached the upstream"
    );
}

/// A config in Kubernetes' ConfigMap-volume layout: `gateway.yaml -> ..data/gateway.yaml`,
/// `..data -> ..<version>/`; an update writes a new version folder and swaps `..data`
/// atomically (a rename over the old link), as the kubelet does.
struct ConfigMapDir {
    root: PathBuf,
    versions: usize,
}

impl ConfigMapDir {
    fn new(text: &str) -> ConfigMapDir {
        let root = std::env::temp_dir().join(format!("gatehouse-scale-out-{}-cm", unique()));
        std::fs::create_dir_all(&root).expect("configmap dir");
        let mut dir = ConfigMapDir { root, versions: 0 };
        dir.publish(text);
        std::os::unix::fs::symlink("..data/gateway.yaml", dir.config()).expect("gateway.yaml link");
        dir
    }

    fn config(&self) -> PathBuf {
        self.root.join("gateway.yaml")
    }

    /// Writes `text` as a new version and points `..data` at it in one rename.
    fn publish(&mut self, text: &str) {
        self.versions += 1;
        let version = format!("..2026_01_01_00_00_0{}.000000001", self.versions);
        std::fs::create_dir_all(self.root.join(&version)).expect("version dir");
        std::fs::write(self.root.join(&version).join("gateway.yaml"), text).expect("write");
        let tmp = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).expect("..data_tmp link");
        std::fs::rename(&tmp, self.root.join("..data")).expect("swap ..data");
    }
}

impl Drop for ConfigMapDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// deploy/k8s mounts gateway.yaml from a ConfigMap folder with `server.watch_config: true`:
/// the kubelet's symlink swap must be seen (the file's mtime is read through the links), so
/// a ConfigMap update reloads every replica without a rollout.
#[test]
fn a_configmap_symlink_swap_is_reloaded_by_watch_config() {
    let mut files = TempFiles(Vec::new());
    let db = files.path("users.db");
    let up = FakeUpstream::start(Behavior::Echo);
    let config = |routes: &str| {
        format!(
            "{}auth: {{database_url: \"sqlite://{}\"}}
upstreams:
  app: {{backends: \"{}\"}}
routes:
{routes}",
            replica_server("  watch_config: true\n"),
            db.display(),
            up.url()
        )
    };
    let mut cm = ConfigMapDir::new(&config("  - {name: one, prefix: /one, upstream: app}\n"));
    let replica = Replica::start("C", &cm.config(), &mut files);
    assert_eq!(replica.get("/one/x", &[]).status, 200);
    assert_eq!(replica.get("/two/x", &[]).status, 404);

    cm.publish(&config(
        "  - {name: one, prefix: /one, upstream: app}\n  - {name: two, prefix: /two, upstream: app}\n",
    ));
    let reloaded = wait_until(Duration::from_secs(10), || {
        get(replica.p.port, "/two/x", &[]).is_ok_and(|r| r.status == 200)
    });
    assert!(
        reloaded,
        "the swapped ConfigMap was not reloaded{}",
        replica.log_tail()
    );
    assert_eq!(replica.get("/one/x", &[]).status, 200);
}

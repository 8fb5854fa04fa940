//! The `gatehouse` binary under test as a child process (stderr collected for failure
//! messages, killed on drop), and its CLI.

use super::upstream_and_client::wait_until;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// The binary with its listeners on 127.0.0.1:`port` and :`admin_port`, through
/// `${GATEHOUSE_LISTEN}` and `${GATEHOUSE_ADMIN_LISTEN}` (as the default gateway.yaml reads).
pub fn gatehouse_on(port: u16, admin_port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("GATEHOUSE_LISTEN", format!("127.0.0.1:{port}"))
        .env("GATEHOUSE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"));
    cmd
}

/// A running `gatehouse` process listening (once up) on `port` and `admin_port`; its
/// stderr lines are collected. Killed on drop.
pub struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    pub port: u16,
    pub admin_port: u16,
}

impl Process {
    /// Spawns `cmd` (stdout discarded, stderr collected). `port` and `admin_port` say where
    /// it will listen (the caller's config or environment decides that).
    pub fn spawn(cmd: &mut Command, port: u16, admin_port: u16) -> Process {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gatehouse");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Process {
            child,
            log,
            port,
            admin_port,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (e.g. `-TERM`) with `kill`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {}", self.pid());
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit; how long it took, or None after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        wait_until(limit, || self.exited().is_some()).then(|| start.elapsed())
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log_lines();
        log[log.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` with `stdin` written to it; its output.
pub fn output_with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("child output")
}

/// Runs `cmd` to completion; its output, after failing the test (with its stderr) unless it
/// exited successfully.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `gatehouse ARGS` with these environment variables and `stdin`; its output.
pub fn run_cli(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    output_with_stdin(&mut cmd, stdin)
}

/// [`run_cli`], failing the test (with the command's stderr) unless it exited successfully.
pub fn run_cli_ok(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let out = run_cli(args, env, stdin);
    assert!(
        out.status.success(),
        "gatehouse {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An `MFA_ENCRYPTION_KEY` (32 bytes, base64): the shipped config requires one wherever
/// `REDIS_URL` is set, as it is under the test command.
pub const TEST_MFA_KEY: &str = "Y2xpLXRlc3RzLW1mYS1rZXktMDEyMzQ1Njc4OWFiY2Q=";

/// Adds a user with `gatehouse user add`, as an operator would (password on stdin).
pub fn add_user_cli(database_url: &str, email: &str, role: &str, password: &str) {
    run_cli_ok(
        &[
            "user",
            "add",
            "--email",
            email,
            "--role",
            role,
            "--name",
            "Test User",
        ],
        &[
            ("DATABASE_URL", database_url),
            ("MFA_ENCRYPTION_KEY", TEST_MFA_KEY),
        ],
        &format!("{password}\n"),
    );
}

//! The HTTPS listener: certificates chosen by SNI, HTTP/2 by ALPN, HSTS, the HTTP→HTTPS
//! redirect, and certificate reload without a restart. Certificates are made with
//! `openssl` at test time; the client is `curl` (both Debian tools on these machines).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tools_present() -> bool {
    let ok = |c: &str| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let present = ok("curl")
        && Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "curl and openssl are required under CI"
        );
        eprintln!("skipping TLS test: curl or openssl missing");
    }
    present
}

/// A self-signed P-256 certificate for `host` in `dir`; returns (cert, key) paths.
fn make_cert(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (
        dir.join(format!("{host}.crt")),
        dir.join(format!("{host}.key")),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .args([
                "-subj",
                &format!("/CN={host}"),
                "-addext",
                &format!("subjectAltName=DNS:{host}"),
            ]),
    );
    (crt, key)
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gatehouse-tls-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// curl over HTTPS to `host` resolved to loopback; returns (verbose stderr, headers+body).
fn curl(port: u16, host: &str, path: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sk", "-D", "-", "--max-time", "10", "-v"])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl");
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn tls_gateway(dir: &Path, extra_tls: &str) -> (Gw, u16) {
    let tls_port = free_port();
    let (a_crt, a_key) = make_cert(dir, "a.test");
    let (b_crt, b_key) = make_cert(dir, "b.test");
    let server = format!(
        "  tls:\n    listen: [127.0.0.1:{tls_port}]\n    certificates:\n      - {{cert: {}, key: {}, hosts: [a.test]}}\n      - {{cert: {}, key: {}, hosts: [b.test, \"*.b.test\"]}}\n{extra_tls}",
        a_crt.display(),
        a_key.display(),
        b_crt.display(),
        b_key.display()
    );
    let gw = Gw::start_with_server(&server, "");
    let up = wait_until(std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    assert!(up, "TLS listener did not start");
    (gw, tls_port)
}

#[test]
fn certificates_are_chosen_by_sni_with_wildcards_and_a_default() {
    if !tools_present() {
        return;
    }
    let dir = temp_dir("sni");
    let (_gw, port) = tls_gateway(&dir, "");
    for (host, expect) in [
        ("a.test", "CN=a.test"),
        ("b.test", "CN=b.test"),
        ("x.b.test", "CN=b.test"),
        ("other.test", "CN=a.test"),
    ] {
        let (verbose, body) = curl(port, host, "/health", &[]);
        assert!(
            verbose.contains(&format!("subject: {expect}")),
            "{host}: {verbose}"
        );
        assert!(body.contains("\"healthy\""), "{host}: {body}");
    }
}

#[test]
fn http2_is_offered_by_alpn_and_forwarded_proto_is_https() {
    if !tools_present() {
        return;
    }
    let dir = temp_dir("h2");
    let up = FakeUpstream::start(Behavior::Echo);
    let tls_port = free_port();
    let (crt, key) = make_cert(&dir, "a.test");
    let gw = Gw::start_with_server(
        &format!("  tls:\n    listen: [127.0.0.1:{tls_port}]\n    certificates: [{{cert: {}, key: {}}}]\n", crt.display(), key.display()),
        &format!("upstreams:\n{}\nroutes:\n  - {{prefix: /api, upstream: svc}}\n", upstream("svc", &[up.url()], "")),
    );
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    }));
    let (verbose, out) = curl(tls_port, "a.test", "/api/x", &["--http2"]);
    assert!(verbose.contains("ALPN: server accepted h2"), "{verbose}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    drop(gw);
}

#[test]
fn hsts_is_sent_over_https_only() {
    if !tools_present() {
        return;
    }
    let dir = temp_dir("hsts");
    let (gw, port) = tls_gateway(&dir, "    hsts: {max_age: 1d, include_subdomains: true}\n");
    let (_, out) = curl(port, "a.test", "/health", &[]);
    assert!(
        out.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=86400; includesubdomains"),
        "{out}"
    );
    let plain = gw.get("/health");
    assert!(plain.header("strict-transport-security").is_none());
}

#[test]
fn plain_http_is_redirected_to_https_but_health_stays_reachable() {
    if !tools_present() {
        return;
    }
    let dir = temp_dir("redirect");
    let (gw, port) = tls_gateway(&dir, "    redirect_http: true\n");
    let r = gw.get_with("/docs?page=2", &[("Host", "a.test:8080")]);
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://a.test:{port}/docs?page=2").as_str())
    );
    assert_eq!(
        gw.get("/health").status,
        200,
        "probes keep working over HTTP"
    );
    let (_, out) = curl(port, "a.test", "/nothing", &[]);
    assert!(
        out.starts_with("HTTP/2 404") || out.starts_with("HTTP/1.1 404"),
        "HTTPS is not redirected: {out}"
    );
}

#[test]
fn certificates_are_reloaded_without_a_restart() {
    if !tools_present() {
        return;
    }
    let dir = temp_dir("reload");
    let (gw, port) = tls_gateway(&dir, "");
    let (verbose, _) = curl(port, "a.test", "/health", &[]);
    assert!(verbose.contains("subject: CN=a.test"), "{verbose}");
    // Replace a.test's files with a new certificate, then reload the same configuration.
    let fresh = dir.join("fresh");
    std::fs::create_dir_all(&fresh).expect("dir");
    let (crt, key) = make_cert(&fresh, "renewed.a.test");
    std::fs::copy(&crt, dir.join("a.test.crt")).expect("copy");
    std::fs::copy(&key, dir.join("a.test.key")).expect("copy");
    let config = (*gw.running.state.load().config).clone();
    gw.running.reload(config).expect("reload");
    let (verbose, _) = curl(port, "a.test", "/health", &[]);
    assert!(verbose.contains("subject: CN=renewed.a.test"), "{verbose}");
}

#[test]
fn unreadable_certificates_are_reported_by_check() {
    let yaml = "server:\n  tls:\n    listen: [127.0.0.1:1]\n    certificates: [{cert: /nonexistent.crt, key: /nonexistent.key}]\n";
    let config = gatehouse::Config::from_yaml_str(yaml).expect("parses");
    let err = gatehouse::check(config)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("server.tls.certificates[0]"), "{err}");
}

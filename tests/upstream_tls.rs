//! TLS to upstreams (`https://` backends, `upstreams.NAME.tls`): verification against a CA
//! file, the name checked, `verify: false`, mutual TLS, health checks over TLS, what
//! `gatehouse check` says about the files, and files re-read on reload.
//!
//! Certificates are made here with rcgen: a CA, a server certificate for `localhost` and
//! `127.0.0.1` signed by it, an unrelated second CA, and a client certificate. The TLS
//! upstream is a small in-test TLS front (Pingora's rustls through `pingora::tls`) that
//! forwards the decrypted bytes to a plain [`FakeUpstream`], so every behaviour of the
//! fake (answers, `/health` status, recorded requests) is there over TLS too.

mod common;
use common::backends::TempDir;
use common::*;
use pingora::tls::{
    CertificateDer, PrivateKeyDer, RootCertStore, ServerConfig, TlsAcceptor, WebPkiClientVerifier,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

/// A certificate and its key, as PEM files.
struct Pem {
    cert: PathBuf,
    key: PathBuf,
}

/// The certificates of one test, in its own directory.
struct Pki {
    dir: TempDir,
    /// The CA that signs `server` and `client`.
    ca: Pem,
    /// A CA that signs nothing here.
    other_ca: Pem,
    /// For `localhost` and `127.0.0.1`.
    server: Pem,
    client: Pem,
    /// A second client key, of no certificate.
    stray_key: PathBuf,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn ca(dir: &Path, name: &str) -> (Pem, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("CA certificate");
    let pem = Pem {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    write(&pem.cert, &cert.pem());
    write(&pem.key, &key.serialize_pem());
    (pem, Issuer::new(params, key))
}

fn leaf(dir: &Path, name: &str, sans: &[&str], issuer: &Issuer<'static, KeyPair>) -> Pem {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.signed_by(&key, issuer).expect("certificate");
    let pem = Pem {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    write(&pem.cert, &cert.pem());
    write(&pem.key, &key.serialize_pem());
    pem
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = TempDir::new(&format!("upstream-tls-{tag}"));
        let (ca_pem, issuer) = ca(dir.path(), "ca");
        let (other_ca, _) = ca(dir.path(), "other-ca");
        let server = leaf(dir.path(), "server", &["localhost", "127.0.0.1"], &issuer);
        let client = leaf(dir.path(), "client", &["client.test"], &issuer);
        let stray_key = dir.path().join("stray.key");
        write(
            &stray_key,
            &KeyPair::generate().expect("stray key").serialize_pem(),
        );
        Pki {
            dir,
            ca: ca_pem,
            other_ca,
            server,
            client,
            stray_key,
        }
    }
}

fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let bytes = std::fs::read(path).expect("read certificate");
    x509_parser::pem::Pem::iter_from_buffer(&bytes)
        .map(|p| CertificateDer::from(p.expect("PEM").contents))
        .collect()
}

fn read_key(path: &Path) -> PrivateKeyDer<'static> {
    let bytes = std::fs::read(path).expect("read key");
    let pem = x509_parser::pem::Pem::iter_from_buffer(&bytes)
        .next()
        .expect("a PEM block")
        .expect("PEM");
    PrivateKeyDer::try_from(pem.contents).expect("private key")
}

/// A TLS server on 127.0.0.1 that hands each connection's plaintext to `backend`. With
/// `client_ca`, it requires a client certificate signed by that CA.
struct TlsFront {
    port: u16,
    /// Handshakes that failed on this side (e.g. no client certificate).
    refused: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFront {
    fn start(pki: &Pki, client_ca: Option<&Path>, backend: &FakeUpstream) -> TlsFront {
        pingora::tls::install_default_crypto_provider();
        let builder = ServerConfig::builder();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(ca) {
                    roots.add(c).expect("client CA");
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(read_certs(&pki.server.cert), read_key(&pki.server.key))
            .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind TLS front");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local addr").port();
        let backend_port = backend.port();
        let refused = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let counter = refused.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let tcp = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((tcp, _)) => tcp,
                            Err(_) => continue,
                        },
                    };
                    let (acceptor, counter) = (acceptor.clone(), counter.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            counter.fetch_add(1, SeqCst);
                            return;
                        };
                        if let Ok(mut plain) =
                            tokio::net::TcpStream::connect(("127.0.0.1", backend_port)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                    });
                }
            });
        });
        TlsFront {
            port,
            refused,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `upstreams: app` with `backends` and the indented `extra` lines, and a route `/` to it.
fn app(backends: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  app:\n    backends: \"{backends}\"\n    retry: {{retries: 0}}\n{extra}routes:\n  - {{prefix: /, upstream: app}}\n"
    )
}

/// `    tls:` with these keys and YAML values.
fn tls_block(lines: &[(&str, String)]) -> String {
    let mut s = String::from("    tls:\n");
    for (k, v) in lines {
        s.push_str(&format!("      {k}: {v}\n"));
    }
    s
}

/// A path as a quoted YAML value.
fn path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn ok_backend() -> FakeUpstream {
    FakeUpstream::start(Behavior::Respond {
        status: 200,
        headers: vec![],
        body: "over tls".into(),
    })
}

#[test]
fn a_backend_whose_certificate_chains_to_ca_file_is_reached() {
    let pki = Pki::new("verified");
    let backend = ok_backend();
    let front = TlsFront::start(&pki, None, &backend);
    // The URL's host (an IP here) is the name sent and verified: the certificate has it.
    let gw = Gw::start(&app(
        &front.url(),
        &tls_block(&[("ca_file", path(&pki.ca.cert))]),
    ));
    let r = gw.get("/x");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "over tls");
    assert_eq!(backend.requests()[0].target, "/x");
    // `server_name` replaces the URL's host; the certificate is valid for it too.
    let gw = Gw::start(&app(
        &front.url(),
        &tls_block(&[
            ("ca_file", path(&pki.ca.cert)),
            ("server_name", "localhost".into()),
        ]),
    ));
    assert_eq!(gw.get("/y").status, 200);
}

#[test]
fn an_unknown_ca_is_a_502_counted_for_the_backend_and_fed_to_its_breaker() {
    let pki = Pki::new("unknown-ca");
    let backend = ok_backend();
    let front = TlsFront::start(&pki, None, &backend);
    let gw = Gw::start(&app(
        &front.url(),
        &format!(
            "{}    circuit_breaker: {{consecutive_failures: 2, cooldown: 60s}}\n",
            tls_block(&[("ca_file", path(&pki.other_ca.cert))])
        ),
    ));
    for _ in 0..2 {
        let r = gw.get("/x");
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(json(&r)["error"]["code"], "upstream_error", "{}", r.text());
    }
    assert_eq!(backend.request_count(), 0, "nothing reached the upstream");
    let failed = metric(
        gw.admin_port,
        "gatehouse_upstream_requests_total",
        &[("backend", &format!("127.0.0.1:{}", front.port))],
    );
    assert_eq!(failed, 2.0, "both failures counted for the backend");
    assert_eq!(
        metric(
            gw.admin_port,
            "gatehouse_upstream_requests_total",
            &[("outcome", "connect_error")]
        ),
        2.0
    );
    // Two handshake failures opened the breaker, as two connect failures would.
    let r = gw.get("/x");
    assert_eq!(r.status, 503, "breaker open: {}", r.text());
}

#[test]
fn a_certificate_for_another_name_is_a_502() {
    let pki = Pki::new("wrong-name");
    let backend = ok_backend();
    let front = TlsFront::start(&pki, None, &backend);
    let gw = Gw::start(&app(
        &front.url(),
        &tls_block(&[
            ("ca_file", path(&pki.ca.cert)),
            ("server_name", "billing.internal".into()),
        ]),
    ));
    let r = gw.get("/x");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(backend.request_count(), 0);
}

#[test]
fn verify_false_reaches_an_unknown_ca_and_is_warned_about() {
    let pki = Pki::new("no-verify");
    let backend = ok_backend();
    let front = TlsFront::start(&pki, None, &backend);
    let rest = app(
        &front.url(),
        &tls_block(&[
            ("verify", "false".into()),
            ("server_name", "billing.internal".into()),
        ]),
    );
    let gw = Gw::start(&rest);
    let r = gw.get("/x");
    assert_eq!(r.status, 200, "{}", r.text());
    // `gatehouse check` accepts the file and says what it means.
    let file = pki.dir.path().join("gateway.yaml");
    write(&file, &rest);
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("run check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: upstreams.app.tls.verify: false"),
        "{err}"
    );

    // `gatehouse run` says it in its log at start, and serves.
    let port = free_port();
    let run_file = pki.dir.path().join("run.yaml");
    let db = pki.dir.path().join("run.db");
    write(
        &run_file,
        &format!(
            "server:\n  listen: 127.0.0.1:{port}\n  admin_listen: null\n  log: {{level: warn}}\n  pid_file: {}\n  upgrade_sock: {}\n{rest}auth: {{database_url: \"sqlite://{}\"}}\n",
            pki.dir.path().join("run.pid").display(),
            pki.dir.path().join("run.sock").display(),
            db.display()
        ),
    );
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&run_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let served = wait_until(Duration::from_secs(20), || {
        get(port, "/x", &[]).is_ok_and(|r| r.status == 200)
    });
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(served, "gateway did not serve: {log}");
    assert!(log.contains("upstreams.app.tls.verify: false"), "{log}");
}

#[test]
fn mutual_tls_is_accepted_with_the_client_certificate_and_refused_without() {
    let pki = Pki::new("mtls");
    let backend = ok_backend();
    let front = TlsFront::start(&pki, Some(&pki.ca.cert), &backend);
    let ca = ("ca_file", path(&pki.ca.cert));
    let with_cert = Gw::start(&app(
        &front.url(),
        &tls_block(&[
            ca.clone(),
            ("client_cert", path(&pki.client.cert)),
            ("client_key", path(&pki.client.key)),
        ]),
    ));
    let r = with_cert.get("/x");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(front.refused.load(SeqCst), 0);

    let without = Gw::start(&app(&front.url(), &tls_block(&[ca])));
    let r = without.get("/x");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        backend.request_count(),
        1,
        "only the request with the certificate"
    );
    assert!(
        front.refused.load(SeqCst) >= 1,
        "the upstream refused the handshake"
    );
    // With TLS 1.3 the client's side of the handshake is over before the upstream judges
    // the (missing) certificate: the refusal arrives on the first read.
    assert_eq!(
        metric(
            without.admin_port,
            "gatehouse_upstream_requests_total",
            &[("outcome", "reset")]
        ),
        1.0
    );
}

#[test]
fn health_checks_use_the_pools_tls_settings() {
    let pki = Pki::new("health");
    let backend = ok_backend();
    let front = TlsFront::start(&pki, Some(&pki.ca.cert), &backend);
    let check = "    health_check: {interval: 100ms, timeout: 1s, rise: 1, fall: 1}\n";
    let tls = tls_block(&[
        ("ca_file", path(&pki.ca.cert)),
        ("client_cert", path(&pki.client.cert)),
        ("client_key", path(&pki.client.key)),
    ]);
    let gw = Gw::start(&app(&front.url(), &format!("{tls}{check}")));
    assert_eq!(gw.get("/x").status, 200);
    let probes = backend.health_probe_count();
    assert!(probes >= 1, "the health check went through TLS to /health");
    backend.health_status(503);
    assert!(
        wait_until(Duration::from_secs(10), || gw.get("/x").status == 503),
        "a failing check over TLS takes the backend out"
    );
    backend.health_status(200);
    assert!(
        wait_until(Duration::from_secs(10), || gw.get("/x").status == 200),
        "a passing check over TLS brings it back"
    );

    // A check that cannot verify the backend fails (http and tcp alike): the backend is out
    // from the first request (503, no backend), not tried (502).
    for kind in ["http", "tcp"] {
        let tls = tls_block(&[
            ("ca_file", path(&pki.other_ca.cert)),
            ("client_cert", path(&pki.client.cert)),
            ("client_key", path(&pki.client.key)),
        ]);
        let check = format!(
            "    health_check: {{type: {kind}, interval: 100ms, timeout: 1s, rise: 1, fall: 1}}\n"
        );
        let gw = Gw::start(&app(&front.url(), &format!("{tls}{check}")));
        let r = gw.get("/x");
        assert_eq!(r.status, 503, "{kind}: {}", r.text());
    }
}

fn check_file(pki: &Pki, name: &str, rest: &str) -> (bool, String) {
    let file = pki.dir.path().join(name);
    write(&file, rest);
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("run check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_names_unreadable_and_mismatched_files_with_their_paths() {
    let pki = Pki::new("check");
    let missing = pki.dir.path().join("missing-ca.pem");
    let (ok, err) = check_file(
        &pki,
        "missing.yaml",
        &app(
            "https://127.0.0.1:1",
            &tls_block(&[("ca_file", path(&missing))]),
        ),
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!(
            "upstreams.app.tls.ca_file: cannot read {}",
            missing.display()
        )),
        "{err}"
    );

    let (ok, err) = check_file(
        &pki,
        "mismatch.yaml",
        &app(
            "https://127.0.0.1:1",
            &tls_block(&[
                ("client_cert", path(&pki.client.cert)),
                ("client_key", path(&pki.stray_key)),
            ]),
        ),
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!(
            "upstreams.app.tls.client_key: {} is not the key of the certificate in {}",
            pki.stray_key.display(),
            pki.client.cert.display()
        )),
        "{err}"
    );

    // A key file given as the CA file: not a certificate.
    let (ok, err) = check_file(
        &pki,
        "not-a-cert.yaml",
        &app(
            "https://127.0.0.1:1",
            &tls_block(&[("ca_file", path(&pki.ca.key))]),
        ),
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!(
            "upstreams.app.tls.ca_file: {} holds no PEM certificate",
            pki.ca.key.display()
        )),
        "{err}"
    );

    // Relative paths are read next to the config file.
    let (ok, err) = check_file(
        &pki,
        "relative.yaml",
        &app(
            "https://127.0.0.1:1",
            &tls_block(&[
                ("ca_file", "ca.crt".into()),
                ("client_cert", "client.crt".into()),
                ("client_key", "client.key".into()),
            ]),
        ),
    );
    assert!(ok, "{err}");
}

#[test]
fn reload_rereads_a_replaced_ca_file() {
    let pki = Pki::new("reload");
    let backend = ok_backend();
    let front = TlsFront::start(&pki, None, &backend);
    let ca_file = pki.dir.path().join("trusted.pem");
    std::fs::copy(&pki.ca.cert, &ca_file).expect("copy CA");
    let rest = app(&front.url(), &tls_block(&[("ca_file", path(&ca_file))]));
    let gw = Gw::start(&rest);
    assert_eq!(gw.get("/x").status, 200);

    // The same configuration, the file now holding a CA that did not sign the backend: the
    // reload reads it, and no connection verified with the old CA is reused.
    std::fs::copy(&pki.other_ca.cert, &ca_file).expect("replace CA");
    gw.running.reload(gw.config_for(&rest)).expect("reload");
    assert_eq!(gw.get("/x").status, 502);

    std::fs::copy(&pki.ca.cert, &ca_file).expect("restore CA");
    gw.running.reload(gw.config_for(&rest)).expect("reload");
    assert_eq!(gw.get("/x").status, 200);
    assert_eq!(backend.request_count(), 2);
}

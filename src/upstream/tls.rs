//! TLS to upstreams: the material of one pool's `upstreams.NAME.tls` block (CA file,
//! client certificate and key), read from disk whenever the pool is built — at start, by
//! `gatehouse check`, and on every reload — and how it is set on Pingora's peers.
//!
//! Pingora's rustls connector does the handshakes; this module only fills in the peer:
//! TLS on, SNI, verification flags, the CA list and the client certificate. It does not
//! decide what a failed handshake means for the request (that is the retry and breaker
//! code, which sees it as a connect failure).

use crate::config::UpstreamTlsConfig;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, CryptoProvider, PrivateKeyDer};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use x509_parser::pem::Pem;

/// The TLS settings of one pool, with its files loaded.
#[derive(Clone)]
pub struct UpstreamTls {
    verify: bool,
    server_name: Option<String>,
    /// `ca_file`'s certificates; `None`: the system roots (Pingora's connector default).
    ca: Option<Arc<[WrappedX509]>>,
    client: Option<Arc<CertKey>>,
    /// A hash of the settings and of every byte read from the files. Two loads that give
    /// the same value hold the same material: a reload keeps the pool (and its health and
    /// breaker state) only then. It is also the peers' `group_key`, so a pooled connection
    /// made with other material (an older CA, another client certificate) is never reused.
    fingerprint: u64,
}

impl Default for UpstreamTls {
    /// Verification on, against the system roots; no client certificate.
    fn default() -> Self {
        UpstreamTls {
            verify: true,
            server_name: None,
            ca: None,
            client: None,
            fingerprint: 0,
        }
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("verify", &self.verify)
            .field("server_name", &self.server_name)
            .field("ca_certificates", &self.ca.as_ref().map(|c| c.len()))
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl UpstreamTls {
    /// Reads the files of `cfg` (relative paths against `base`). `at` is the config path of
    /// the block (`upstreams.NAME.tls`); every problem names its key and file.
    pub fn load(
        at: &str,
        cfg: &UpstreamTlsConfig,
        base: &Path,
    ) -> Result<UpstreamTls, Vec<String>> {
        let mut problems = Vec::new();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (cfg.verify, &cfg.server_name).hash(&mut hasher);
        let ca = match &cfg.ca_file {
            None => None,
            Some(file) => match load_ca(&resolve(base, file)) {
                Ok((certs, bytes)) => {
                    bytes.hash(&mut hasher);
                    Some(certs)
                }
                Err(e) => {
                    problems.push(format!("{at}.ca_file: {e}"));
                    None
                }
            },
        };
        let client = match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), Some(key)) => {
                match load_client(&resolve(base, cert), &resolve(base, key)) {
                    Ok((ck, bytes)) => {
                        bytes.hash(&mut hasher);
                        Some(Arc::new(ck))
                    }
                    Err((key_name, e)) => {
                        problems.push(format!("{at}.{key_name}: {e}"));
                        None
                    }
                }
            }
            // Validation reports a lone client_cert or client_key.
            _ => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(UpstreamTls {
            verify: cfg.verify,
            server_name: cfg.server_name.clone(),
            ca,
            client,
            fingerprint: hasher.finish(),
        })
    }

    /// The SNI (and name verified) for a backend whose URL names `host`.
    pub fn server_name_for(&self, host: &str) -> String {
        self.server_name.clone().unwrap_or_else(|| host.to_string())
    }

    /// Sets verification, CA list, client certificate and the reuse group on a TLS peer.
    pub fn apply(&self, peer: &mut HttpPeer) {
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
        peer.group_key = self.fingerprint;
    }
}

fn resolve(base: &Path, p: &str) -> std::path::PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Every PEM block of `bytes` as (label, DER).
fn pem_blocks(bytes: &[u8], path: &Path) -> Result<Vec<Pem>, String> {
    Pem::iter_from_buffer(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", path.display()))
}

/// The certificates of a PEM file, each checked to parse (Pingora's X.509 wrapper panics
/// on one that does not).
fn certificates(path: &Path, bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for (i, pem) in pem_blocks(bytes, path)?.into_iter().enumerate() {
        if pem.label != "CERTIFICATE" {
            continue;
        }
        pem.parse_x509().map_err(|e| {
            format!(
                "{}: certificate {} does not parse: {e}",
                path.display(),
                i + 1
            )
        })?;
        out.push(pem.contents);
    }
    if out.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(out)
}

fn load_ca(path: &Path) -> Result<(Arc<[WrappedX509]>, Vec<u8>), String> {
    let bytes = read(path)?;
    let ders = certificates(path, &bytes)?;
    // The same check rustls makes when it builds the verifier, now rather than at the
    // first handshake: a certificate that cannot be a trust anchor is a config problem.
    let mut store = pingora::tls::RootCertStore::empty();
    for (i, der) in ders.iter().enumerate() {
        store.add(CertificateDer::from(der.clone())).map_err(|e| {
            format!(
                "{}: certificate {} is not a usable CA: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    let certs: Arc<[WrappedX509]> = ders
        .into_iter()
        .map(|der| WrappedX509::new(der, pingora::utils::tls::parse_x509))
        .collect();
    Ok((certs, bytes))
}

/// The client certificate chain and key; on error, which key is at fault.
fn load_client(cert: &Path, key: &Path) -> Result<(CertKey, Vec<u8>), (&'static str, String)> {
    let cert_bytes = read(cert).map_err(|e| ("client_cert", e))?;
    let ders = certificates(cert, &cert_bytes).map_err(|e| ("client_cert", e))?;
    let key_bytes = read(key).map_err(|e| ("client_key", e))?;
    let key_der = pem_blocks(&key_bytes, key)
        .map_err(|e| ("client_key", e))?
        .into_iter()
        .find(|p| p.label.ends_with("PRIVATE KEY"))
        .map(|p| p.contents)
        .ok_or_else(|| {
            (
                "client_key",
                format!("{} holds no PEM private key", key.display()),
            )
        })?;
    // Pingora turns the key into rustls' type with an unwrap at each handshake: make sure
    // it converts, and that it is the key of the certificate, here.
    let private = PrivateKeyDer::try_from(key_der.clone()).map_err(|e| {
        (
            "client_key",
            format!("{}: not a PKCS#8, PKCS#1 or SEC1 key: {e}", key.display()),
        )
    })?;
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or(("client_key", "no TLS crypto provider".to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| {
            (
                "client_key",
                format!("{}: unusable private key: {e}", key.display()),
            )
        })?;
    let chain = ders.iter().cloned().map(CertificateDer::from).collect();
    CertifiedKey::new(chain, signing)
        .keys_match()
        .map_err(|e| {
            (
                "client_key",
                format!(
                    "{} is not the key of the certificate in {}: {e}",
                    key.display(),
                    cert.display()
                ),
            )
        })?;
    let mut bytes = cert_bytes;
    bytes.extend_from_slice(&key_bytes);
    Ok((CertKey::new(ders, key_der), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::upstreams::peer::Peer;

    /// A directory of its own for one test's files.
    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "gatehouse-upstream-tls-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    /// A self-signed certificate and its key, as `NAME.crt` and `NAME.key` in `d`.
    fn cert(d: &Path, name: &str) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![format!("{name}.test")])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        std::fs::write(d.join(format!("{name}.crt")), cert.pem()).expect("write");
        std::fs::write(d.join(format!("{name}.key")), key.serialize_pem()).expect("write");
    }

    fn cfg(ca: Option<&str>, client: Option<(&str, &str)>) -> UpstreamTlsConfig {
        UpstreamTlsConfig {
            ca_file: ca.map(String::from),
            client_cert: client.map(|c| c.0.to_string()),
            client_key: client.map(|c| c.1.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn files_load_relative_to_the_config_and_are_set_on_the_peer() {
        let d = dir("load");
        cert(&d, "a");
        cert(&d, "b");
        let tls = UpstreamTls::load(
            "upstreams.x.tls",
            &cfg(Some("a.crt"), Some(("b.crt", "b.key"))),
            &d,
        )
        .expect("loads");
        let mut peer = HttpPeer::new("127.0.0.1:1", true, tls.server_name_for("svc.internal"));
        tls.apply(&mut peer);
        assert_eq!(peer.sni(), "svc.internal");
        assert!(peer.verify_cert() && peer.verify_hostname());
        assert_eq!(peer.get_ca().map(|c| c.len()), Some(1));
        assert!(peer.get_client_cert_key().is_some());
        assert_ne!(peer.group_key, 0);

        // The same files load to the same material; another file's bytes do not.
        let again = UpstreamTls::load(
            "upstreams.x.tls",
            &cfg(Some("a.crt"), Some(("b.crt", "b.key"))),
            &d,
        )
        .expect("loads");
        assert_eq!(tls, again);
        std::fs::copy(d.join("b.crt"), d.join("a.crt")).expect("replace");
        let replaced = UpstreamTls::load(
            "upstreams.x.tls",
            &cfg(Some("a.crt"), Some(("b.crt", "b.key"))),
            &d,
        )
        .expect("loads");
        assert_ne!(tls, replaced);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unreadable_mismatched_and_wrong_kind_files_are_named() {
        let d = dir("problems");
        cert(&d, "a");
        cert(&d, "b");
        let load = |c: UpstreamTlsConfig| {
            UpstreamTls::load("upstreams.x.tls", &c, &d).expect_err("a problem")
        };
        let missing = d.join("nope.crt");
        assert_eq!(
            load(cfg(Some("nope.crt"), None)),
            vec![format!(
                "upstreams.x.tls.ca_file: cannot read {}: No such file or directory (os error 2)",
                missing.display()
            )]
        );
        let p = load(cfg(Some("a.key"), Some(("a.crt", "b.key"))));
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            p[0],
            format!(
                "upstreams.x.tls.ca_file: {} holds no PEM certificate",
                d.join("a.key").display()
            )
        );
        assert!(
            p[1].starts_with(&format!(
                "upstreams.x.tls.client_key: {} is not the key of the certificate in {}",
                d.join("b.key").display(),
                d.join("a.crt").display()
            )),
            "{p:?}"
        );
        let p = load(cfg(None, Some(("a.key", "a.key"))));
        assert!(p[0].starts_with("upstreams.x.tls.client_cert: "), "{p:?}");
        let p = load(cfg(None, Some(("a.crt", "a.crt"))));
        assert!(p[0].contains("holds no PEM private key"), "{p:?}");
        std::fs::write(
            d.join("junk.pem"),
            "-----BEGIN CERTIFICATE-----\nnot base64\n",
        )
        .expect("write");
        let p = load(cfg(Some("junk.pem"), None));
        assert!(p[0].starts_with("upstreams.x.tls.ca_file: "), "{p:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn verify_false_turns_both_checks_off_and_server_name_replaces_the_host() {
        let c = UpstreamTlsConfig {
            verify: false,
            server_name: Some("svc.internal".into()),
            ..Default::default()
        };
        let tls = UpstreamTls::load("upstreams.x.tls", &c, Path::new(".")).expect("no files");
        assert_eq!(tls.server_name_for("10.0.0.5"), "svc.internal");
        let mut peer = HttpPeer::new("127.0.0.1:1", true, "x".into());
        tls.apply(&mut peer);
        assert!(!peer.verify_cert() && !peer.verify_hostname());
        assert!(peer.get_ca().is_none() && peer.get_client_cert_key().is_none());
        assert_eq!(
            UpstreamTls::default().server_name_for("10.0.0.5"),
            "10.0.0.5"
        );
    }
}

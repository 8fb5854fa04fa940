//! TLS termination (rustls through Pingora): an optional HTTPS listener with certificate
//! and key files, several certificates chosen by SNI, HTTP/2 by ALPN, and certificates that
//! are re-read on reload without a restart (the resolver swaps its table in place).
//!
//! The settings (`server.tls`) are part of the file format: [`crate::config::tls`]; checking
//! that the certificates load ([`TlsConfig::validate`]) is here, where they are loaded.

use crate::config::tls::{CertConfig, TlsConfig};
use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use std::collections::HashMap;
use std::sync::Arc;

impl TlsConfig {
    /// Problems with paths, plus whether each certificate loads.
    pub fn validate(&self, base: &std::path::Path) -> Vec<String> {
        let mut p = Vec::new();
        for (i, addr) in self.listen.iter().enumerate() {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                p.push(format!(
                    "server.tls.listen[{i}]: {addr:?} is not an address like 0.0.0.0:443"
                ));
            }
        }
        if !self.listen.is_empty() && self.certificates.is_empty() {
            p.push("server.tls.certificates: at least one certificate is required with server.tls.listen".into());
        }
        if self.certificates.len() > 1 {
            for (i, c) in self.certificates.iter().enumerate().skip(1) {
                if c.hosts.is_empty() {
                    p.push(format!("server.tls.certificates[{i}].hosts: required for every certificate but the first (the default)"));
                }
            }
        }
        for (i, c) in self.certificates.iter().enumerate() {
            if let Err(e) = load_one(c, base) {
                p.push(format!("server.tls.certificates[{i}]: {e}"));
            }
        }
        if self.redirect_http && self.listen.is_empty() {
            p.push("server.tls.redirect_http: needs server.tls.listen".into());
        }
        p
    }
}

fn resolve_path(base: &std::path::Path, p: &str) -> String {
    let path = std::path::Path::new(p);
    if path.is_absolute() {
        p.to_string()
    } else {
        base.join(path).to_string_lossy().into_owned()
    }
}

/// Loads one certificate and key into a rustls `CertifiedKey`.
fn load_one(c: &CertConfig, base: &std::path::Path) -> Result<Arc<CertifiedKey>, String> {
    pingora::tls::install_default_crypto_provider();
    let (cert, key) = (resolve_path(base, &c.cert), resolve_path(base, &c.key));
    let (certs, key) = pingora::tls::load_certs_and_key_files(&cert, &key)
        .map_err(|e| format!("cannot read {cert:?} / {key:?}: {e}"))?
        .ok_or_else(|| format!("{cert:?} holds no certificate or {key:?} no private key"))?;
    let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider")?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable private key {:?}: {e}", c.key))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

struct Table {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `example.com` → key for `*.example.com`
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

/// Chooses a certificate by SNI; the table can be swapped while serving.
pub struct SniResolver {
    table: ArcSwap<Table>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.table.load();
        f.debug_struct("SniResolver")
            .field("hosts", &t.exact.len())
            .field("wildcards", &t.wildcard.len())
            .finish()
    }
}

fn build_table(cfg: &TlsConfig, base: &std::path::Path) -> Result<Table, String> {
    let mut default = None;
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for (i, c) in cfg.certificates.iter().enumerate() {
        let key = load_one(c, base).map_err(|e| format!("server.tls.certificates[{i}]: {e}"))?;
        if default.is_none() {
            default = Some(key.clone());
        }
        for h in &c.hosts {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(rest) => wildcard.insert(rest.to_string(), key.clone()),
                None => exact.insert(h, key.clone()),
            };
        }
    }
    let default = default.ok_or("server.tls.certificates: none configured")?;
    Ok(Table {
        default,
        exact,
        wildcard,
    })
}

impl SniResolver {
    pub fn new(cfg: &TlsConfig, base: &std::path::Path) -> Result<SniResolver, String> {
        Ok(SniResolver {
            table: ArcSwap::from_pointee(build_table(cfg, base)?),
        })
    }

    /// Re-reads the certificate files; on any error the current table stays.
    pub fn reload(&self, cfg: &TlsConfig, base: &std::path::Path) -> Result<(), String> {
        let t = build_table(cfg, base)?;
        self.table.store(Arc::new(t));
        Ok(())
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let t = self.table.load();
        if let Some(name) = sni.map(str::to_ascii_lowercase) {
            if let Some(k) = t.exact.get(&name) {
                return k.clone();
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = t.wildcard.get(parent) {
                    return k.clone();
                }
            }
        }
        t.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Pingora listener settings for `cfg`, with the resolver installed.
pub fn listener_settings(
    cfg: &TlsConfig,
    base: &std::path::Path,
    resolver: Arc<SniResolver>,
) -> Result<pingora::listeners::tls::TlsSettings, String> {
    let first = cfg
        .certificates
        .first()
        .ok_or("server.tls.certificates: none configured")?;
    let mut settings = pingora::listeners::tls::TlsSettings::intermediate(
        &resolve_path(base, &first.cert),
        &resolve_path(base, &first.key),
    )
    .map_err(|e| format!("server.tls.certificates[0]: {e}"))?;
    settings.set_cert_resolver(resolver);
    if cfg.http2 {
        settings.enable_h2();
    }
    Ok(settings)
}

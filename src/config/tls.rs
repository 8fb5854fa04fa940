//! `server.tls:`: the TLS listener's part of the file format. Loading the certificates, and
//! checking that they load, is `edge::tls`'s business.

use super::Dur;
use serde::Deserialize;

/// `server.tls:`
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// HTTPS listen addresses, e.g. `0.0.0.0:443`. Empty: no TLS listener.
    pub listen: Vec<String>,
    /// Certificates; the first is the default for clients without (or with an unknown) SNI.
    pub certificates: Vec<CertConfig>,
    /// Offer HTTP/2 by ALPN. Default true.
    #[serde(default = "yes")]
    pub http2: bool,
    /// `Strict-Transport-Security` on HTTPS answers; absent: not sent.
    pub hsts: Option<HstsConfig>,
    /// Answer plain-HTTP requests with a 308 to the HTTPS address. Default false.
    pub redirect_http: bool,
}

fn yes() -> bool {
    true
}

/// `server.tls.certificates[i]:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// PEM certificate chain file.
    pub cert: String,
    /// PEM private key file (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Host names served with this certificate (`*.example.com` wildcards allowed).
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// `server.tls.hsts:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    pub max_age: Dur,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

impl HstsConfig {
    pub fn header_value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age.0.as_secs());
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }
}

//! `web:` — server-rendered pages, their data sources and the site settings templates get.

use serde::Deserialize;
use std::collections::BTreeMap;

use super::{AuthMode, Dur};

/// `web:` — pages rendered with minijinja, and static assets.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Template folder (relative to the config file). Default `templates`.
    pub templates: String,
    /// Asset folder served under `assets_prefix`. Default `assets`.
    pub assets: String,
    /// URL prefix of the assets. Default `/assets/`.
    pub assets_prefix: String,
    pub site: SiteConfig,
    pub pages: Vec<PageConfig>,
    /// Timeout of one page data source. Default 3s.
    pub data_timeout: Dur,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            templates: "templates".into(),
            assets: "assets".into(),
            assets_prefix: "/assets/".into(),
            site: SiteConfig::default(),
            pages: Vec::new(),
            data_timeout: Dur::secs(3),
        }
    }
}

/// `web.site:` — given to every template as `site`.
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    pub name: String,
    pub lang: String,
    pub tagline: String,
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            name: "PredictHealth".into(),
            lang: "es".into(),
            tagline: "Salud predictiva para pacientes, médicos e instituciones".into(),
        }
    }
}

/// `web.pages[i]:` — a page: path → template, with access rules and data sources.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PageConfig {
    /// Exact path (normalised form).
    pub path: String,
    /// Template name under `web.templates`.
    pub template: String,
    pub title: String,
    #[serde(default)]
    pub auth: AuthMode,
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// Data sources: name → GET to an upstream pool path; `{user_id}`, `{role}` and
    /// `{session_id}` are replaced with the signed-in user's values.
    #[serde(default)]
    pub data: BTreeMap<String, DataSourceConfig>,
    /// Record this page's requests in the access audit (as `routes[i].audit`).
    #[serde(default)]
    pub audit: super::AuditMode,
}

/// `web.pages[i].data.NAME:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSourceConfig {
    pub upstream: String,
    pub path: String,
}

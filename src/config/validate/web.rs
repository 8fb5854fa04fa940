//! Checks of `web:`: the assets prefix, the pages, their access rules and data sources.

use super::super::AuthMode;
use super::{Config, ROLES};
use std::collections::HashMap;

pub(super) fn check_web(p: &mut Vec<String>, c: &Config) {
    let w = &c.web;
    if !(w.assets_prefix.starts_with('/')
        && w.assets_prefix.ends_with('/')
        && w.assets_prefix.len() > 1)
    {
        p.push(format!(
            "web.assets_prefix: {:?} must start and end with '/', e.g. /assets/",
            w.assets_prefix
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, page) in w.pages.iter().enumerate() {
        let at = format!("web.pages[{i}]");
        match crate::routing::normalize_path(&page.path) {
            Ok(n) if n == page.path && !page.path.contains(['?', '#']) => {}
            _ => p.push(format!(
                "{at}.path: {:?} must be a normalised path",
                page.path
            )),
        }
        if let Some(first) = seen.insert(page.path.as_str(), i) {
            p.push(format!(
                "{at}.path: {:?} is already web.pages[{first}]",
                page.path
            ));
        }
        if page.template.contains("..") || page.template.starts_with('/') {
            p.push(format!(
                "{at}.template: {:?} must be a name inside web.templates",
                page.template
            ));
        }
        if let Some(roles) = &page.roles {
            for (j, role) in roles.iter().enumerate() {
                if !ROLES.contains(&role.as_str()) {
                    p.push(format!(
                        "{at}.roles[{j}]: {role:?} is not one of {}",
                        ROLES.join(", ")
                    ));
                }
            }
            if page.auth != AuthMode::Required {
                p.push(format!("{at}.roles: only used with auth: required"));
            }
        }
        for (name, src) in &page.data {
            if !c.upstreams.contains_key(&src.upstream) {
                p.push(format!(
                    "{at}.data.{name}.upstream: unknown upstream {:?}",
                    src.upstream
                ));
            }
            if !src.path.starts_with('/') {
                p.push(format!("{at}.data.{name}.path: must start with '/'"));
            }
        }
    }
}

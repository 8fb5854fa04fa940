//! The README's reference cannot drift from the code (issue 23): every `gatehouse_*` metric the
//! README's metrics table names is one the code registers, and the reverse; every config key
//! in the README's "Configuration reference" tables is one the config accepts, and every key
//! the config accepts, at every level the README documents, is in those tables.
//!
//! The config side asks the parser itself: a YAML with an unknown key at a level fails with
//! serde's "unknown field `…`, expected one of `…`", which lists every key of that level.

mod common;
use common::repo_file;
use std::collections::BTreeSet;

/// The text of a file of this repository.
fn repo_text(rel: &str) -> String {
    let p = repo_file(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The README's text between two headings (`from` included, `to` excluded).
fn between<'a>(text: &'a str, from: &str, to: &str) -> &'a str {
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("README: no {from:?}"));
    let end = text[start..].find(to).map_or(text.len(), |e| start + e);
    &text[start..end]
}

/// The backquoted words of `s`.
fn quoted(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

// ------------------------------------------------------------------------------------------
// Metrics
// ------------------------------------------------------------------------------------------

/// Metric names the code registers: the names given to `src/metrics.rs`'s helpers (with the
/// `gatehouse_` prefix they add) and the full names it spells out.
fn metrics_in_code() -> BTreeSet<String> {
    let file = repo_text("src/metrics.rs");
    // Not the unit tests' own registries.
    let src = file.split("#[cfg(test)]").next().unwrap_or_default();
    let mut names = BTreeSet::new();
    for helper in [
        "counter(",
        "gauge(",
        "histogram(",
        "single_counter(",
        "single_gauge(",
        "single_int_gauge(",
    ] {
        for (i, _) in src.match_indices(helper) {
            // `helper(&r, "name", …` (across lines): the first string literal after it.
            let rest = &src[i + helper.len()..];
            if !rest.trim_start().starts_with("&r") {
                continue;
            }
            if let Some(name) = rest.split('"').nth(1) {
                names.insert(format!("gatehouse_{name}"));
            }
        }
    }
    for piece in src.split('"').skip(1).step_by(2) {
        if piece.starts_with("gatehouse_") && !piece.contains(' ') && !piece.contains('{') {
            names.insert(piece.to_string());
        }
    }
    names
}

/// Metric names in the README's metrics table (first column).
fn metrics_in_readme() -> BTreeSet<String> {
    let readme = repo_text("README.md");
    let section = between(&readme, "### Metrics and alerts", "\n## ");
    section
        .lines()
        .filter(|l| l.starts_with("| `gatehouse_"))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| quoted(cell).into_iter().map(str::to_string))
        .filter(|n| n.starts_with("gatehouse_"))
        .collect()
}

#[test]
fn every_metric_in_the_readme_exists_in_the_code_and_the_reverse() {
    let code = metrics_in_code();
    let readme = metrics_in_readme();
    assert!(
        code.len() > 20,
        "metrics read from src/metrics.rs: {code:?}"
    );
    let undocumented: Vec<_> = code.difference(&readme).collect();
    let unknown: Vec<_> = readme.difference(&code).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "registered but not in the README's metrics table: {undocumented:?}\nin the README but not registered: {unknown:?}"
    );
}

// ------------------------------------------------------------------------------------------
// Config keys
// ------------------------------------------------------------------------------------------

/// Every key path the README's reference tables document, e.g. `server.limits.write_buffer`,
/// `routes[i].retry.retries`, `upstreams.NAME.timeouts.read`.
fn keys_in_readme() -> Vec<String> {
    let readme = repo_text("README.md");
    let reference = between(
        &readme,
        "## Configuration reference",
        "\n## Request handling",
    );
    let mut keys = Vec::new();
    for section in reference.split("\n### `").skip(1) {
        let prefix = section.split('`').next().unwrap_or_default().to_string();
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let cell = row.split('|').nth(1).unwrap_or_default();
            let mut last = String::new();
            for k in quoted(cell) {
                // `.key` continues the previous key's parent (`tls.hsts.max_age`, `.preload`).
                let key = match k.strip_prefix('.') {
                    Some(tail) => match last.rsplit_once('.') {
                        Some((parent, _)) => format!("{parent}.{tail}"),
                        None => tail.to_string(),
                    },
                    None => k.to_string(),
                };
                keys.push(format!("{prefix}.{key}"));
                last = key;
            }
        }
    }
    keys
}

/// The components of a key path: `routes[i].retry.retries` → `routes`, `[i]`, `retry`, ….
fn components(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in path.split('.') {
        match part.split_once('[') {
            Some((name, _)) => {
                out.push(name.to_string());
                out.push("[i]".to_string());
            }
            None => out.push(part.to_string()),
        }
    }
    out
}

/// YAML with `zz_unknown: 1` at the level named by `comps` (lists get one element, map
/// placeholders such as `NAME` and `ROLE` become a key of that name).
fn yaml_at(comps: &[String]) -> String {
    let mut inner = "{zz_unknown: 1}".to_string();
    for c in comps.iter().rev() {
        inner = if c == "[i]" {
            format!("[{inner}]")
        } else {
            format!("{{{c}: {inner}}}")
        };
    }
    inner
}

/// The keys the config accepts at the level `comps`, or `None` when it is not a struct (a map,
/// a list of values, a scalar).
fn keys_at(comps: &[String]) -> Option<Vec<String>> {
    let yaml = yaml_at(comps);
    let err = match gatehouse::Config::from_yaml_str(&yaml) {
        Ok(_) => return None,
        Err(e) => e.to_string(),
    };
    let line = err
        .lines()
        .find(|l| l.contains("unknown field `zz_unknown`"))?;
    let expected = line.split_once("expected")?.1;
    let expected = expected.split(" at line").next().unwrap_or(expected);
    Some(quoted(expected).into_iter().map(str::to_string).collect())
}

#[test]
fn every_config_key_in_the_readme_is_accepted_and_every_accepted_key_is_documented() {
    let keys = keys_in_readme();
    assert!(keys.len() > 100, "keys read from the README: {keys:?}");
    let mut problems = Vec::new();
    let mut levels: BTreeSet<Vec<String>> = BTreeSet::new();
    for key in &keys {
        let comps = components(key);
        for depth in 0..comps.len() {
            let (parent, name) = (&comps[..depth], &comps[depth]);
            // A list element or a map key the user names (`NAME`, `ROLE`): nothing to check.
            if name == "[i]" || name.chars().all(|c| c.is_ascii_uppercase()) {
                continue;
            }
            let Some(accepted) = keys_at(parent) else {
                // A map (`NAME`, `ROLE`) or a value below here: nothing more to check.
                if depth == 0 {
                    problems.push(format!("{key}: no such section"));
                }
                break;
            };
            levels.insert(parent.to_vec());
            if !accepted.iter().any(|a| a == name) {
                problems.push(format!(
                    "{key}: `{name}` is not accepted here (accepted: {accepted:?})"
                ));
                break;
            }
        }
    }
    // The reverse: every key of every documented level is in the tables.
    let documented: BTreeSet<Vec<String>> = keys.iter().map(|k| components(k)).collect();
    for level in &levels {
        let Some(accepted) = keys_at(level) else {
            continue;
        };
        for field in accepted {
            let mut path = level.clone();
            path.push(field);
            let covered = documented
                .iter()
                .any(|d| d.len() >= path.len() && d[..path.len()] == path[..]);
            if !covered {
                problems.push(format!(
                    "{} is accepted but not in the README's reference",
                    path.join(".").replace(".[i]", "[i]")
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

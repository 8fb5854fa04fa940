//! Dependencies point one way (issue 22 point 1): the module graph of `src/` has no cycle,
//! there is no `mod.rs`, and each top-level module's "must not import" line is true.
//!
//! The graph is computed from the source text, not from the compiler: every `.rs` file under
//! `src/` is a node named by its module path (`src/auth/store.rs` is `auth::store`);
//! `src/lib.rs` and `src/main.rs` are the crate root, which wires everything and is left out.
//! Every `crate::…` path in code (`use crate::a::b;`, groups `use crate::{a, b::{c, d}}`, and
//! inline paths such as `crate::state::Route`) adds an edge from its file to the longest prefix
//! of the path that is a module file and, when that module re-exports the item from a child
//! (`pub use child::Item;`), to the child that defines it as well. Comments (doc links included),
//! string literals and `#[cfg(test)] mod … { … }` blocks are ignored; a child's `super::` paths
//! are not counted, while a parent naming its own child as `crate::parent::child` is.
//!
//! A cycle fails the test with every edge inside it and the names behind each edge, so it is
//! clear what to move (types down into the layer that owns them, helpers into a leaf).
//!
//! Layers, leaves first: `config` → edge policies and `upstream` → `state` → `auth` → the
//! request plan (`plan`) → gateway steps → lanes (`proxy`) → listener (`edge::listener`) →
//! `lib`/`main`. A module's `//!` paragraph starting `Layer:` names, after "must not import",
//! the modules it may not use (nor its children, unless a child has a `Layer:` paragraph of
//! its own); every top-level module has one, and the test checks them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Module path → (file, scrubbed source without test modules, raw source).
struct Module {
    file: String,
    code: String,
    raw: String,
}

/// From → to → the `crate::` paths behind the edge.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn main_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `auth/store.rs` → `auth::store`; `lib.rs` and `main.rs` → `crate`.
fn module_path(rel: &Path) -> String {
    let s = rel.to_string_lossy().replace('\\', "/");
    let s = s.strip_suffix(".rs").unwrap_or(&s);
    if s == "lib" || s == "main" {
        return "crate".to_string();
    }
    s.replace('/', "::")
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The source with comments and the contents of string and character literals replaced by
/// spaces (newlines kept), so that paths in docs or strings are not dependencies.
fn scrub(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let prev_ident = i > 0 && is_ident_char(c[i - 1]);
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if let Some((j, hashes)) = raw_string_open(&c, i, prev_ident) {
            // Raw string: r"…", r#"…"#, br"…".
            for &ch in &c[i..=j] {
                out.push(ch);
            }
            i = j + 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    for &ch in &c[i..=i + hashes] {
                        out.push(ch);
                    }
                    i += hashes + 1;
                    break;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' && i + 1 < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
            if i < c.len() {
                out.push('"');
                i += 1;
            }
        } else if c[i] == '\'' {
            // A character literal ('x', '\n', '\u{1F600}') or a lifetime ('a, 'static).
            let end = if c.get(i + 1) == Some(&'\\') {
                (i + 3..c.len()).find(|&j| c[j] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.push('\'');
                    for _ in i + 1..e {
                        out.push(' ');
                    }
                    out.push('\'');
                    i = e + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// At a raw string's `r`/`br`: the index of its opening `"` and its number of `#`.
fn raw_string_open(c: &[char], i: usize, prev_ident: bool) -> Option<(usize, usize)> {
    if prev_ident {
        return None;
    }
    let mut j = match (c[i], c.get(i + 1)) {
        ('r', _) => i + 1,
        ('b', Some('r')) => i + 2,
        _ => return None,
    };
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some((j, hashes))
}

/// Blanks every `#[cfg(test)]` module (`#[cfg(test)]`, other attributes, `mod name { … }`),
/// wherever it sits in the file. Expects scrubbed code (no braces in strings or comments).
fn strip_test_modules(code: &str) -> String {
    let c: Vec<char> = code.chars().collect();
    let mut out: Vec<char> = c.clone();
    let pat: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i + pat.len() <= c.len() {
        if c[i..i + pat.len()] != pat[..] {
            i += 1;
            continue;
        }
        let start = i;
        let mut j = i + pat.len();
        // Further attributes and whitespace.
        loop {
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            if c.get(j) == Some(&'#') && c.get(j + 1) == Some(&'[') {
                let mut depth = 0;
                while j < c.len() {
                    match c[j] {
                        '[' => depth += 1,
                        ']' => {
                            depth -= 1;
                            if depth == 0 {
                                j += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
            } else {
                break;
            }
        }
        let rest: String = c[j..c.len().min(j + 4)].iter().collect();
        if rest != "mod " {
            i += pat.len();
            continue;
        }
        let Some(open) = (j..c.len()).find(|&k| c[k] == '{' || c[k] == ';') else {
            break;
        };
        if c[open] == ';' {
            i = open;
            continue;
        }
        let mut depth = 0;
        let mut end = c.len();
        for (k, &ch) in c.iter().enumerate().skip(open) {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        for ch in &mut out[start..end] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        i = end;
    }
    out.into_iter().collect()
}

/// A tiny cursor over scrubbed code for use trees and paths.
struct Cursor<'a> {
    c: &'a [char],
    i: usize,
}

impl Cursor<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.c.len() && self.c[self.i].is_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, s: &str) -> bool {
        self.skip_ws();
        let s: Vec<char> = s.chars().collect();
        if self.c.len() >= self.i + s.len() && self.c[self.i..self.i + s.len()] == s[..] {
            self.i += s.len();
            true
        } else {
            false
        }
    }
    fn ident(&mut self) -> Option<String> {
        self.skip_ws();
        let start = self.i;
        if self.c.get(self.i) == Some(&'r') && self.c.get(self.i + 1) == Some(&'#') {
            self.i += 2;
        }
        let first = self.i;
        while self.i < self.c.len() && is_ident_char(self.c[self.i]) {
            self.i += 1;
        }
        if self.i == first || self.c[first].is_ascii_digit() {
            self.i = start;
            return None;
        }
        Some(self.c[first..self.i].iter().collect())
    }

    /// One use tree after `prefix::`: `a::b`, `a::{b, c::d}`, `a::*`, `a as b`, `self`.
    /// Pushes each complete path (with the name it is known by) to `out`.
    fn tree(&mut self, prefix: Vec<String>, out: &mut Vec<(Vec<String>, Option<String>)>) {
        let mut path = prefix;
        loop {
            if self.eat("{") {
                loop {
                    if self.eat("}") {
                        return;
                    }
                    self.tree(path.clone(), out);
                    if !self.eat(",") {
                        self.eat("}");
                        return;
                    }
                }
            }
            if self.eat("*") {
                out.push((path, None));
                return;
            }
            let Some(id) = self.ident() else {
                out.push((path, None));
                return;
            };
            if id != "self" {
                path.push(id);
            }
            let save = self.i;
            if self.eat("::") {
                self.skip_ws();
                if self.c.get(self.i) == Some(&'<') {
                    // Turbofish: the path ends here.
                    self.i = save;
                    out.push((path, None));
                    return;
                }
                continue;
            }
            let alias = if self.eat("as ") { self.ident() } else { None };
            out.push((path, alias));
            return;
        }
    }
}

/// Every path that starts with `crate::` in scrubbed code, as its segments after `crate`.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = find(&c, i, "crate") {
        i = pos + 5;
        let before = if pos == 0 { ' ' } else { c[pos - 1] };
        if is_ident_char(before) || before == '$' {
            continue;
        }
        let mut cur = Cursor { c: &c, i };
        if c.get(i).is_some_and(|&ch| is_ident_char(ch)) || !cur.eat("::") {
            continue;
        }
        let mut found = Vec::new();
        cur.tree(Vec::new(), &mut found);
        out.extend(found.into_iter().map(|(p, _)| p).filter(|p| !p.is_empty()));
        i = cur.i;
    }
    out
}

/// `pub use child::{A, B as C};` in a file: the names it re-exports from which child module
/// (relative paths only; `crate::` re-exports are ordinary edges).
fn reexports(code: &str) -> Vec<(String, String)> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = find(&c, i, "use ") {
        i = pos + 4;
        let head: String = c[..pos].iter().collect();
        let head = head.trim_end();
        if !(head.ends_with("pub") || head.ends_with(')')) {
            continue;
        }
        let mut cur = Cursor { c: &c, i };
        let mut found = Vec::new();
        cur.tree(Vec::new(), &mut found);
        for (path, alias) in found {
            let Some(first) = path.first() else { continue };
            if ["crate", "super", "std", "core", "alloc"].contains(&first.as_str()) {
                continue;
            }
            if let Some(last) = path.last() {
                if path.len() >= 2 {
                    out.push((alias.unwrap_or_else(|| last.clone()), first.clone()));
                }
            }
        }
        i = cur.i;
    }
    out
}

fn find(c: &[char], from: usize, pat: &str) -> Option<usize> {
    let p: Vec<char> = pat.chars().collect();
    (from..c.len().saturating_sub(p.len() - 1)).find(|&k| c[k..k + p.len()] == p[..])
}

fn load() -> BTreeMap<String, Module> {
    let src = main_src();
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut mods = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src").to_path_buf();
        let raw = std::fs::read_to_string(&f).expect("read source");
        let code = strip_test_modules(&scrub(&raw));
        let name = module_path(&rel);
        let file = format!("src/{}", rel.to_string_lossy().replace('\\', "/"));
        if name == "crate" {
            continue;
        }
        mods.insert(name, Module { file, code, raw });
    }
    mods
}

/// The longest prefix of `path` that is a module and, when that module re-exports the next
/// name from a child (`pub use child::Item;`), that child too: using `crate::upstream::Pool`
/// depends on `upstream` and on `upstream::pool`, where `Pool` is defined.
fn resolve(
    path: &[String],
    mods: &BTreeSet<String>,
    reexp: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<String> {
    for k in (1..=path.len()).rev() {
        let cand = path[..k].join("::");
        if mods.contains(&cand) {
            let mut out = vec![cand.clone()];
            if let Some(next) = path.get(k) {
                if let Some(child) = reexp.get(&cand).and_then(|m| m.get(next)) {
                    let child = format!("{cand}::{child}");
                    if mods.contains(&child) {
                        out.push(child);
                    }
                }
            }
            return out;
        }
    }
    Vec::new()
}

fn graph_of(sources: &BTreeMap<String, String>) -> Graph {
    let names: BTreeSet<String> = sources.keys().cloned().collect();
    let reexp: BTreeMap<String, BTreeMap<String, String>> = sources
        .iter()
        .map(|(m, code)| (m.clone(), reexports(code).into_iter().collect()))
        .collect();
    let mut g: Graph = names.iter().map(|m| (m.clone(), BTreeMap::new())).collect();
    for (m, code) in sources {
        for p in crate_paths(code) {
            for to in resolve(&p, &names, &reexp) {
                if &to != m {
                    g.get_mut(m)
                        .expect("node")
                        .entry(to)
                        .or_default()
                        .insert(format!("crate::{}", p.join("::")));
                }
            }
        }
    }
    g
}

/// Strongly connected components with more than one node (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g[v].keys() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("low");
                    *lv = (*lv).min(lw);
                } else if self.on.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("low");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                loop {
                    let w = self.stack.pop().expect("stack");
                    self.on.remove(w);
                    comp.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out.sort();
    t.out
}

fn describe_cycles(g: &Graph, comps: &[Vec<String>], files: &BTreeMap<String, String>) -> String {
    let mut s = String::new();
    for comp in comps {
        let _ = writeln!(s, "import cycle among {} modules:", comp.len());
        for from in comp {
            for (to, names) in &g[from] {
                if comp.contains(to) {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    let _ = writeln!(
                        s,
                        "  {from} ({}) -> {to} ({}): {}",
                        files.get(from).map_or("?", String::as_str),
                        files.get(to).map_or("?", String::as_str),
                        names.join(", ")
                    );
                }
            }
        }
    }
    s.push_str(
        "Break it by moving the named items to the lower layer that owns them (file-format \
         types into `config`, small pure helpers into a leaf), see tests/layers.rs.\n",
    );
    s
}

/// The modules a top-level module's `Layer:` paragraph says it must not import.
fn must_not_import(raw: &str) -> Option<Vec<String>> {
    let doc: Vec<&str> = raw
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.trim_start_matches("//!").trim())
        .collect();
    let start = doc.iter().position(|l| l.starts_with("Layer:"))?;
    let para: Vec<&str> = doc[start..]
        .iter()
        .take_while(|l| !l.is_empty())
        .copied()
        .collect();
    let para = para.join(" ");
    let at = para.to_lowercase().find("must not import")? + "must not import".len();
    // The sentence after "must not import", up to its full stop outside backticks.
    let mut sentence = String::new();
    let mut quoted = false;
    let mut chars = para[at..].chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '`' {
            quoted = !quoted;
        } else if ch == '.' && !quoted && chars.peek().is_none_or(|n| n.is_whitespace()) {
            break;
        }
        sentence.push(ch);
    }
    Some(
        sentence
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|s| s.trim().to_string())
            .collect(),
    )
}

fn in_module(m: &str, top: &str) -> bool {
    m == top || m.starts_with(&format!("{top}::"))
}

#[test]
fn no_mod_rs_under_src() {
    let mut files = Vec::new();
    rs_files(&main_src(), &mut files);
    let bad: Vec<String> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "mod.rs"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        bad.is_empty(),
        "use `src/x.rs` next to `src/x/`, not mod.rs: {bad:?}"
    );
}

#[test]
fn module_graph_has_no_cycle() {
    let mods = load();
    let sources: BTreeMap<String, String> = mods
        .iter()
        .map(|(m, x)| (m.clone(), x.code.clone()))
        .collect();
    let files: BTreeMap<String, String> = mods
        .iter()
        .map(|(m, x)| (m.clone(), x.file.clone()))
        .collect();
    let g = graph_of(&sources);
    assert!(g.len() > 20, "found only {} modules under src/", g.len());
    let comps = cycles(&g);
    assert!(
        comps.is_empty(),
        "\n{}",
        describe_cycles(&g, &comps, &files)
    );
}

/// The nearest module, `m` itself or an ancestor, whose `//!` has a `Layer:` paragraph.
fn governing<'a>(m: &'a str, layers: &BTreeMap<String, Vec<String>>) -> Option<&'a str> {
    let mut cur = m;
    loop {
        if layers.contains_key(cur) {
            return Some(cur);
        }
        cur = &cur[..cur.rfind("::")?];
    }
}

#[test]
fn layer_docs_are_true() {
    let mods = load();
    let sources: BTreeMap<String, String> = mods
        .iter()
        .map(|(m, x)| (m.clone(), x.code.clone()))
        .collect();
    let g = graph_of(&sources);
    let layers: BTreeMap<String, Vec<String>> = mods
        .iter()
        .filter_map(|(m, x)| must_not_import(&x.raw).map(|b| (m.clone(), b)))
        .collect();
    let mut problems = Vec::new();
    for (m, x) in mods.iter().filter(|(name, _)| !name.contains("::")) {
        if !layers.contains_key(m) {
            problems.push(format!(
                "{}: no `//! Layer: …; must not import: …` paragraph",
                x.file
            ));
        }
    }
    for (owner, banned) in &layers {
        for b in banned {
            if ["lib", "main", "crate"].contains(&b.as_str()) {
                continue; // the crate root is not a node: no module can import it
            }
            if !mods.contains_key(b) {
                problems.push(format!(
                    "{}: must not import `{b}`, which is not a module",
                    mods[owner].file
                ));
                continue;
            }
            // The owner and its descendants that have no Layer paragraph of their own.
            let governed = g
                .iter()
                .filter(|(f, _)| governing(f, &layers) == Some(owner.as_str()));
            for (from, tos) in governed {
                for (to, names) in tos.iter().filter(|(t, _)| in_module(t, b)) {
                    problems.push(format!(
                        "{}: says it must not import `{b}`, but {from} uses {to}: {}",
                        mods[owner].file,
                        names.iter().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The graph as text, for a newcomer: `cargo test --test layers -- --nocapture print_graph`.
#[test]
fn print_graph() {
    let mods = load();
    let sources: BTreeMap<String, String> = mods
        .iter()
        .map(|(m, x)| (m.clone(), x.code.clone()))
        .collect();
    let g = graph_of(&sources);
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_string();
    let mut tops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &g {
        let e = tops.entry(top(from)).or_default();
        for to in tos.keys() {
            if top(to) != top(from) {
                e.insert(top(to));
            }
        }
    }
    for (m, deps) in &tops {
        println!(
            "{m} -> {}",
            deps.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
}

// ---- the parser itself -----------------------------------------------------------------

fn paths(code: &str) -> Vec<String> {
    crate_paths(&strip_test_modules(&scrub(code)))
        .into_iter()
        .map(|p| p.join("::"))
        .collect()
}

#[test]
fn parses_use_lines_groups_and_inline_paths() {
    let src = r#"
use crate::config::{Config, ConfigError};
use crate::{answer::Answer, edge::{cors::Cors, forwarding}, routing};
use crate::auth::guard::Identity as Who;
pub(crate) use crate::metrics::*;
fn f(x: &crate::state::Route) -> crate::upstream::Pool {
    let p = crate::cache::Policy::<u8>::new();
    crate::errors::from_status(404)
}
"#;
    assert_eq!(
        paths(src),
        [
            "config::Config",
            "config::ConfigError",
            "answer::Answer",
            "edge::cors::Cors",
            "edge::forwarding",
            "routing",
            "auth::guard::Identity",
            "metrics",
            "state::Route",
            "upstream::Pool",
            "cache::Policy",
            "errors::from_status",
        ]
    );
}

#[test]
fn ignores_comments_strings_macros_and_visibility() {
    let src = r####"
//! Built by [`crate::state`].
/// See [`crate::proxy::Gateway`].
/* crate::plan::plan /* nested crate::x */ */
pub(crate) fn f() -> &'static str {
    let c = '"';
    let s = "crate::admin::x \" crate::logging";
    let r = r#"crate::reload "quoted" crate::builtin"#;
    let l: &'static str = "";
    $crate::macro_only::x;
    my_crate::other::y;
    crate::edge::hygiene::check()
}
"####;
    assert_eq!(paths(src), ["edge::hygiene::check"]);
}

#[test]
fn drops_cfg_test_modules_wherever_they_are() {
    let src = r#"
use crate::config::Dur;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::state::Snapshot;
    fn g() { let s = "}"; { crate::proxy::x(); } }
}
#[cfg(test)]
fn only_in_tests() { crate::metrics::y(); }
fn after() { crate::routing::normalize_path("/"); }
"#;
    assert_eq!(
        paths(src),
        ["config::Dur", "metrics::y", "routing::normalize_path"]
    );
}

#[test]
fn maps_files_to_modules() {
    assert_eq!(module_path(Path::new("auth/store.rs")), "auth::store");
    assert_eq!(
        module_path(Path::new("auth/users/accounts.rs")),
        "auth::users::accounts"
    );
    assert_eq!(module_path(Path::new("config.rs")), "config");
    assert_eq!(module_path(Path::new("lib.rs")), "crate");
    assert_eq!(module_path(Path::new("main.rs")), "crate");
}

fn graph_from(files: &[(&str, &str)]) -> Graph {
    let sources = files
        .iter()
        .map(|(m, s)| (m.to_string(), strip_test_modules(&scrub(s))))
        .collect();
    graph_of(&sources)
}

fn edges(g: &Graph) -> Vec<String> {
    g.iter()
        .flat_map(|(f, tos)| tos.keys().map(move |t| format!("{f}->{t}")))
        .collect()
}

#[test]
fn resolves_to_the_longest_module_prefix_and_through_reexports() {
    let g = graph_from(&[
        (
            "upstream",
            "mod pool;\npub use pool::{Pool, PoolError as E};",
        ),
        ("upstream::pool", "use super::X;"),
        (
            "state",
            "use crate::upstream::Pool; fn f() -> crate::upstream::E {}",
        ),
        (
            "auth",
            "use crate::auth::guard::Identity; fn g(_: crate::auth::Auth) {}",
        ),
        (
            "auth::guard",
            "use crate::config::Dur; use crate::auth::Auth;",
        ),
        ("config", "pub struct Dur;"),
        (
            "plan",
            "use crate::state; fn h(_: crate::upstream::Other) {}",
        ),
    ]);
    assert_eq!(
        edges(&g),
        [
            "auth->auth::guard",
            "auth::guard->auth",
            "auth::guard->config",
            "plan->state",
            "plan->upstream",
            "state->upstream",
            "state->upstream::pool",
        ]
    );
    assert_eq!(
        cycles(&g),
        [vec!["auth".to_string(), "auth::guard".to_string()]]
    );
}

#[test]
fn reports_each_cycle_with_its_edges_and_names() {
    let g = graph_from(&[
        ("a", "use crate::b::X;"),
        ("b", "fn f() { crate::c::y() }"),
        ("c", "use crate::{a::Z, d};"),
        ("d", "use crate::a::W;"),
        ("e", "use crate::a::Z;"),
    ]);
    let comps = cycles(&g);
    assert_eq!(comps, [vec!["a", "b", "c", "d"]]);
    let files = BTreeMap::new();
    let text = describe_cycles(&g, &comps, &files);
    assert!(text.contains("a (?) -> b (?): crate::b::X"), "{text}");
    assert!(text.contains("c (?) -> a (?): crate::a::Z"), "{text}");
    assert!(!text.contains("e (?)"), "{text}");
}

#[test]
fn reads_the_layer_line() {
    let raw = "//! Owns x.\n//!\n//! Layer: bottom; must not import: `state`,\n//! `proxy` or `lib`.\n//!\n//! Not `this`.\nuse x;";
    assert_eq!(must_not_import(raw).unwrap(), ["state", "proxy", "lib"]);
    let raw = "//! Layer: above `a`. Must not import `b::c` (which wraps it), `d`. Not `e`.\n";
    assert_eq!(must_not_import(raw).unwrap(), ["b::c", "d"]);
    assert_eq!(must_not_import("//! nothing\n"), None);
}

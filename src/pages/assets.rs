//! Static assets served under a URL prefix (by default `/assets/`) from a folder on disk.
//!
//! Everything is read into memory by [`Assets::load`], at start and on each reload: the site's
//! assets are small, and with no filesystem access at request time a request cannot escape the
//! folder — [`Assets::serve`] only looks up exact keys in a map built at load time.
//!
//! At load: the folder is walked recursively; dot-files and dot-folders are skipped; symlinks to
//! files are followed only when their target resolves inside the folder (symlinked folders are
//! never followed, so there are no cycles); `x.gz` and `x.br` beside a file `x` become its
//! precompressed variants (kept only if they decompress to `x` and are smaller); compressible
//! types of at least 256 bytes get gzip (level 6) and brotli (quality 5) computed for the
//! encodings not precompressed, kept only when smaller than the original.
//!
//! At request time it answers GET and HEAD with content negotiation (`Accept-Encoding`),
//! strong ETags, `Last-Modified`, conditional requests (`If-None-Match`, `If-Modified-Since`)
//! and `Cache-Control` (immutable for fingerprinted names such as `app.3f9a1c2e.js`).
//!
//! Not its business: Pingora types (the proxy writes the [`AssetResponse`]), error pages for 404
//! and 405 (the gateway renders them), range requests (a full 200 is always a valid answer),
//! and watching the folder for changes (reload builds a new [`Assets`]). Loading compresses and
//! reads files synchronously: call it off the async runtime (`spawn_blocking`) on reload.

use bytes::Bytes;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// Largest file accepted at load (8 MiB).
pub const MAX_FILE_SIZE: u64 = 8 * 1024 * 1024;
/// Most files accepted at load, precompressed siblings included.
pub const MAX_FILES: usize = 10_000;
/// Files smaller than this are never compressed at load.
const MIN_COMPRESS_SIZE: usize = 256;
/// `Cache-Control` for fingerprinted names: the content behind the name never changes.
pub const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` for every other asset.
pub const CACHE_DEFAULT: &str = "public, max-age=3600";

/// Why the assets folder could not be loaded. Each variant names the offending path.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// Reading the folder or one of its files failed.
    #[error("assets: cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configured assets path exists but is not a directory.
    #[error("assets: {path} is not a directory")]
    NotADirectory { path: PathBuf },
    /// A file is over [`MAX_FILE_SIZE`].
    #[error("assets: {path} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// The folder holds more than [`MAX_FILES`] files.
    #[error("assets: {dir} holds more than {limit} files (limit reached at {path})")]
    TooManyFiles {
        dir: PathBuf,
        path: PathBuf,
        limit: usize,
    },
    /// The URL prefix must start with `/`.
    #[error("assets: URL prefix {prefix:?} must start with '/'")]
    BadPrefix { prefix: String },
}

/// The answer to one request under the prefix, written out by the proxy as it is.
#[derive(Debug, Clone)]
pub struct AssetResponse {
    /// 200, 304, 404 (no such file, or a directory) or 405 (method other than GET/HEAD).
    pub status: u16,
    /// Response headers. 200: `Content-Type`, `Content-Length` (of the representation, also
    /// for HEAD), `ETag`, `Last-Modified`, `Cache-Control`, `X-Content-Type-Options`, `Vary`
    /// (when compressed variants exist) and `Content-Encoding` (when compressed). 304: the
    /// same without `Content-Type`, `Content-Length` and `Content-Encoding`. 405: `Allow`.
    pub headers: Vec<(&'static str, String)>,
    /// The content; empty for HEAD, 304, 404 and 405 (the gateway renders its error pages).
    pub body: Bytes,
}

/// One encoding of an asset's content.
#[derive(Debug)]
struct Representation {
    body: Bytes,
    etag: String,
}

#[derive(Debug)]
struct Asset {
    content_type: &'static str,
    cache_control: &'static str,
    /// Seconds since the epoch, and its HTTP-date; `None` when the mtime is unusable.
    modified: Option<(u64, String)>,
    identity: Representation,
    gzip: Option<Representation>,
    br: Option<Representation>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Br,
}

/// Limits checked at load; the constants in production, smaller ones in tests.
#[derive(Clone, Copy)]
struct Limits {
    max_file_size: u64,
    max_files: usize,
}

/// The loaded assets folder: an immutable map from request key to content, cheap to share.
#[derive(Debug)]
pub struct Assets {
    prefix: String,
    files: HashMap<String, Asset>,
}

impl Assets {
    /// Loads `dir` (must exist and be a directory); `prefix` is the URL prefix, e.g.
    /// `"/assets/"` (a missing trailing `/` is added). Fails on unreadable entries, files over
    /// [`MAX_FILE_SIZE`] and more than [`MAX_FILES`] files; skipped entries are logged.
    pub fn load(dir: &Path, prefix: &str) -> Result<Assets, AssetError> {
        let limits = Limits {
            max_file_size: MAX_FILE_SIZE,
            max_files: MAX_FILES,
        };
        Self::load_with(dir, prefix, limits)
    }

    fn load_with(dir: &Path, prefix: &str, limits: Limits) -> Result<Assets, AssetError> {
        if !prefix.starts_with('/') {
            return Err(AssetError::BadPrefix {
                prefix: prefix.to_string(),
            });
        }
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AssetError::Io { path, source }
        };
        let root = std::fs::canonicalize(dir).map_err(io(dir))?;
        if !std::fs::metadata(&root).map_err(io(dir))?.is_dir() {
            return Err(AssetError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        let raw = read_tree(&root, dir, limits)?;
        let mut files = build_assets(raw);
        files.shrink_to_fit();
        tracing::info!(dir = %dir.display(), files = files.len(), "assets loaded");
        Ok(Assets { prefix, files })
    }

    /// The URL prefix, always ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether [`Assets::serve`] answers `path` (a path without its query).
    pub fn claims(&self, path: &str) -> bool {
        path.starts_with(self.prefix.as_str()) || path == self.prefix.trim_end_matches('/')
    }

    /// Number of servable assets (precompressed siblings are not counted).
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when no asset was loaded.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Answers a GET or HEAD for `path` with the request `headers`. Returns `None` when `path`
    /// is not under the prefix (the gateway then routes normally); the prefix without its
    /// trailing `/` counts as under it (and is a 404). Percent-escapes after the prefix are
    /// decoded once; keys with `.`/`..`/empty segments, `\`, NUL or control characters are 404.
    pub fn serve(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<AssetResponse> {
        // A query never names a file; a literal '?' in a file name arrives escaped.
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let rest = match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest,
            None if path == self.prefix.trim_end_matches('/') => "",
            None => return None,
        };
        if method != http::Method::GET && method != http::Method::HEAD {
            return Some(AssetResponse {
                status: 405,
                headers: vec![("Allow", "GET, HEAD".to_string())],
                body: Bytes::new(),
            });
        }
        let asset = percent_decode(rest)
            .filter(|key| valid_key(key))
            .and_then(|key| self.files.get(&key));
        let Some(asset) = asset else {
            return Some(AssetResponse {
                status: 404,
                headers: Vec::new(),
                body: Bytes::new(),
            });
        };
        Some(asset.respond(method == http::Method::HEAD, headers))
    }
}

impl Asset {
    fn respond(&self, head: bool, req: &http::HeaderMap) -> AssetResponse {
        let coding = negotiate(req, self.gzip.is_some(), self.br.is_some());
        let rep = match coding {
            Coding::Gzip => self.gzip.as_ref(),
            Coding::Br => self.br.as_ref(),
            Coding::Identity => None,
        }
        .unwrap_or(&self.identity);
        let mut headers = vec![("ETag", rep.etag.clone())];
        if let Some((_, date)) = &self.modified {
            headers.push(("Last-Modified", date.clone()));
        }
        headers.push(("Cache-Control", self.cache_control.to_string()));
        headers.push(("X-Content-Type-Options", "nosniff".to_string()));
        if self.gzip.is_some() || self.br.is_some() {
            headers.push(("Vary", "Accept-Encoding".to_string()));
        }
        if self.not_modified(&rep.etag, req) {
            return AssetResponse {
                status: 304,
                headers,
                body: Bytes::new(),
            };
        }
        headers.push(("Content-Type", self.content_type.to_string()));
        headers.push(("Content-Length", rep.body.len().to_string()));
        match coding {
            Coding::Gzip => headers.push(("Content-Encoding", "gzip".to_string())),
            Coding::Br => headers.push(("Content-Encoding", "br".to_string())),
            Coding::Identity => {}
        }
        AssetResponse {
            status: 200,
            headers,
            body: if head { Bytes::new() } else { rep.body.clone() },
        }
    }

    /// RFC 9110 §13.2.2: If-None-Match (weak comparison) wins; If-Modified-Since only without it.
    fn not_modified(&self, etag: &str, req: &http::HeaderMap) -> bool {
        let inm: Vec<&str> = req
            .get_all(http::header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !inm.is_empty() {
            return inm.iter().any(|v| etag_list_matches(v, etag));
        }
        let (Some((modified, _)), Some(since)) = (
            &self.modified,
            req.get(http::header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v.trim()).ok()),
        ) else {
            return false;
        };
        since
            .duration_since(UNIX_EPOCH)
            .is_ok_and(|since| *modified <= since.as_secs())
    }
}

/// Does the `If-None-Match` value (a list, or `*`) match `etag` under weak comparison?
fn etag_list_matches(value: &str, etag: &str) -> bool {
    let opaque = etag.trim_start_matches("W/");
    let mut rest = value.trim();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('*') {
            if after.trim_start().is_empty() || after.trim_start().starts_with(',') {
                return true;
            }
        }
        let tag = rest.strip_prefix("W/").unwrap_or(rest);
        let Some(inner) = tag.strip_prefix('"') else {
            return false; // malformed: match nothing rather than guess
        };
        let Some(end) = inner.find('"') else {
            return false;
        };
        // The quotes are part of the opaque tag.
        if tag.get(..end + 2) == Some(opaque) {
            return true;
        }
        rest = inner[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    false
}

/// Picks the coding to send: the highest q among those with a variant, br winning ties with
/// gzip; identity when nothing better is acceptable. The negotiation is the gateway's one
/// (`edge::coding::preferred`), with the variants this asset has.
fn negotiate(req: &http::HeaderMap, has_gzip: bool, has_br: bool) -> Coding {
    use crate::edge::coding::{preferred, Preferred, Ties};
    let offered: &[Preferred] = match (has_br, has_gzip) {
        (true, true) => &[Preferred::Br, Preferred::Gzip],
        (true, false) => &[Preferred::Br],
        (false, true) => &[Preferred::Gzip],
        (false, false) => return Coding::Identity,
    };
    let values = req
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .map(|v| v.as_bytes());
    match preferred(values, offered, Ties::Offered) {
        Some(Preferred::Br) => Coding::Br,
        Some(Preferred::Gzip) => Coding::Gzip,
        Some(Preferred::Zstd) | None => Coding::Identity,
    }
}

/// Decodes every `%XX` once; `None` on a bad escape or when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let digit = |b: u8| char::from(b).to_digit(16);
            out.push(u8::try_from(digit(hex[0])? << 4 | digit(hex[1])?).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A key names a file: non-empty `/`-separated segments, none `.`/`..`, no `\` or control char.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.chars().any(|c| c == '\\' || c.is_control())
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

mod load;
use load::*;

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method};
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A fresh folder under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "gatehouse-assets-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, rel: &str, body: &[u8]) -> PathBuf {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, body).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Compressible text well over the 256-byte threshold.
    fn css() -> Vec<u8> {
        "body { margin: 0; padding: 0; color: #333; }\n"
            .repeat(40)
            .into_bytes()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn get(assets: &Assets, path: &str, pairs: &[(&'static str, &str)]) -> AssetResponse {
        assets.serve(&Method::GET, path, &headers(pairs)).unwrap()
    }

    fn header<'a>(resp: &'a AssetResponse, name: &str) -> Option<&'a str> {
        resp.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn site() -> (TempDir, Assets) {
        let dir = TempDir::new();
        dir.write("css/site.css", &css());
        dir.write("img/logo.png", b"\x89PNG not really");
        dir.write("app.3f9a1c2e.js", &css());
        dir.write("notes.txt", b"short");
        let assets = Assets::load(&dir.0, "/assets/").unwrap();
        (dir, assets)
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn unbrotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        brotli::Decompressor::new(data, 4096)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn content_type_follows_extension() {
        let cases = [
            ("a.css", "text/css; charset=utf-8"),
            ("a.js", "text/javascript; charset=utf-8"),
            ("a.MJS", "text/javascript; charset=utf-8"),
            ("a.html", "text/html; charset=utf-8"),
            ("a.json", "application/json"),
            ("a.js.map", "application/json"),
            ("a.svg", "image/svg+xml"),
            ("a.png", "image/png"),
            ("a.jpg", "image/jpeg"),
            ("a.jpeg", "image/jpeg"),
            ("a.gif", "image/gif"),
            ("a.webp", "image/webp"),
            ("a.ico", "image/x-icon"),
            ("a.woff", "font/woff"),
            ("a.woff2", "font/woff2"),
            ("a.ttf", "font/ttf"),
            ("a.txt", "text/plain; charset=utf-8"),
            ("a.xml", "application/xml"),
            ("a.wasm", "application/wasm"),
            ("a.pdf", "application/pdf"),
            ("a.bin", "application/octet-stream"),
            ("README", "application/octet-stream"),
        ];
        for (name, want) in cases {
            assert_eq!(content_type(name).0, want, "{name}");
        }
        let (_dir, assets) = site();
        let resp = get(&assets, "/assets/img/logo.png", &[]);
        assert_eq!(resp.status, 200);
        assert_eq!(header(&resp, "Content-Type"), Some("image/png"));
        assert_eq!(header(&resp, "X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(&resp.body[..], b"\x89PNG not really");
        assert_eq!(header(&resp, "Content-Length"), Some("15"));
        // Not compressible: no variants, no Vary.
        assert_eq!(header(&resp, "Vary"), None);
    }

    #[test]
    fn etag_is_stable_across_loads_and_differs_per_content() {
        let (dir, first) = site();
        let second = Assets::load(&dir.0, "/assets/").unwrap();
        let etag = |a: &Assets, p: &str| header(&get(a, p, &[]), "ETag").unwrap().to_string();
        let css_tag = etag(&first, "/assets/css/site.css");
        assert!(css_tag.starts_with('"') && css_tag.ends_with('"'));
        assert!(!css_tag.starts_with("W/"));
        assert_eq!(css_tag, etag(&second, "/assets/css/site.css"));
        assert_ne!(css_tag, etag(&first, "/assets/notes.txt"));
        // Same content under two names: same tag; changed content: new tag.
        assert_eq!(
            etag(&first, "/assets/app.3f9a1c2e.js"),
            etag(&first, "/assets/css/site.css")
        );
        dir.write("css/site.css", b"changed");
        let third = Assets::load(&dir.0, "/assets/").unwrap();
        assert_ne!(css_tag, etag(&third, "/assets/css/site.css"));
    }

    #[test]
    fn if_none_match_answers_304_for_tag_list_weak_tag_and_star() {
        let (_dir, assets) = site();
        let full = get(&assets, "/assets/css/site.css", &[]);
        let etag = header(&full, "ETag").unwrap().to_string();
        let list = format!("\"nope\", {etag}");
        let weak = format!("W/{etag}");
        for value in [etag.as_str(), list.as_str(), weak.as_str(), "*"] {
            let resp = get(&assets, "/assets/css/site.css", &[("if-none-match", value)]);
            assert_eq!(resp.status, 304, "{value}");
            assert!(resp.body.is_empty());
            assert_eq!(header(&resp, "ETag"), Some(etag.as_str()));
            assert_eq!(header(&resp, "Cache-Control"), Some(CACHE_DEFAULT));
            assert_eq!(header(&resp, "Vary"), Some("Accept-Encoding"));
            assert!(header(&resp, "Last-Modified").is_some());
            assert_eq!(header(&resp, "Content-Length"), None);
        }
        let resp = get(
            &assets,
            "/assets/css/site.css",
            &[("if-none-match", "\"other\"")],
        );
        assert_eq!(resp.status, 200);
        // The identity tag does not validate the gzip representation.
        let resp = get(
            &assets,
            "/assets/css/site.css",
            &[("if-none-match", &etag), ("accept-encoding", "gzip")],
        );
        assert_eq!(resp.status, 200);
        let gz_tag = header(&resp, "ETag").unwrap().to_string();
        assert_eq!(gz_tag, format!("{}-gz\"", etag.trim_end_matches('"')));
        let resp = get(
            &assets,
            "/assets/css/site.css",
            &[("if-none-match", &gz_tag), ("accept-encoding", "gzip")],
        );
        assert_eq!(resp.status, 304);
        assert_eq!(header(&resp, "ETag"), Some(gz_tag.as_str()));
    }

    #[test]
    fn if_modified_since_answers_304_only_without_if_none_match() {
        let dir = TempDir::new();
        let path = dir.write("a.txt", b"hello");
        let mtime = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let assets = Assets::load(&dir.0, "/assets").unwrap();
        let date = "Tue, 14 Nov 2023 22:13:20 GMT";
        let resp = get(&assets, "/assets/a.txt", &[]);
        assert_eq!(header(&resp, "Last-Modified"), Some(date));
        let resp = get(&assets, "/assets/a.txt", &[("if-modified-since", date)]);
        assert_eq!(resp.status, 304);
        assert_eq!(header(&resp, "Last-Modified"), Some(date));
        let later = "Wed, 15 Nov 2023 00:00:00 GMT";
        assert_eq!(
            get(&assets, "/assets/a.txt", &[("if-modified-since", later)]).status,
            304
        );
        let earlier = "Tue, 14 Nov 2023 22:13:19 GMT";
        assert_eq!(
            get(&assets, "/assets/a.txt", &[("if-modified-since", earlier)]).status,
            200
        );
        assert_eq!(
            get(
                &assets,
                "/assets/a.txt",
                &[("if-modified-since", "garbage")]
            )
            .status,
            200
        );
        let resp = get(
            &assets,
            "/assets/a.txt",
            &[("if-none-match", "\"other\""), ("if-modified-since", later)],
        );
        assert_eq!(resp.status, 200);
    }

    #[test]
    fn head_has_no_body_but_the_headers_of_get() {
        let (_dir, assets) = site();
        for ae in ["", "gzip", "br"] {
            let h = headers(&[("accept-encoding", ae)]);
            let get = assets
                .serve(&Method::GET, "/assets/css/site.css", &h)
                .unwrap();
            let head = assets
                .serve(&Method::HEAD, "/assets/css/site.css", &h)
                .unwrap();
            assert_eq!(head.status, 200);
            assert!(head.body.is_empty());
            assert!(!get.body.is_empty());
            assert_eq!(head.headers, get.headers);
            assert_eq!(
                header(&head, "Content-Length"),
                Some(get.body.len().to_string().as_str())
            );
        }
    }

    #[test]
    fn accept_encoding_picks_br_then_gzip_and_variants_decompress_to_the_original() {
        let (_dir, assets) = site();
        let path = "/assets/css/site.css";
        let pick = |ae: &str| {
            let resp = get(&assets, path, &[("accept-encoding", ae)]);
            assert_eq!(header(&resp, "Vary"), Some("Accept-Encoding"));
            assert_eq!(
                header(&resp, "Content-Type"),
                Some("text/css; charset=utf-8")
            );
            resp
        };
        let br = pick("gzip, deflate, br");
        assert_eq!(header(&br, "Content-Encoding"), Some("br"));
        assert!(header(&br, "ETag").unwrap().ends_with("-br\""));
        assert_eq!(unbrotli(&br.body), css());
        assert!(br.body.len() < css().len());
        assert_eq!(
            header(&br, "Content-Length"),
            Some(br.body.len().to_string().as_str())
        );

        let gz = pick("gzip");
        assert_eq!(header(&gz, "Content-Encoding"), Some("gzip"));
        assert_eq!(gunzip(&gz.body), css());
        assert_eq!(header(&pick("x-gzip"), "Content-Encoding"), Some("gzip"));
        assert_eq!(
            header(&pick("GZIP;q=0.8, br;q=0.5"), "Content-Encoding"),
            Some("gzip")
        );
        assert_eq!(
            header(&pick("gzip;q=0.5, br;q=0.5"), "Content-Encoding"),
            Some("br")
        );
        assert_eq!(header(&pick("*"), "Content-Encoding"), Some("br"));
        assert_eq!(header(&pick("*, br;q=0"), "Content-Encoding"), Some("gzip"));

        // Refused or unknown codings fall back to identity.
        for ae in [
            "",
            "identity",
            "deflate",
            "br;q=0, gzip;q=0",
            "gzip;q=0",
            "br;q=0.0",
            "*;q=0",
            "gzip;q=2",
        ] {
            let resp = pick(ae);
            assert_eq!(header(&resp, "Content-Encoding"), None, "{ae:?}");
            assert_eq!(&resp.body[..], &css()[..], "{ae:?}");
        }
        // Two header lines are one list.
        let resp = get(
            &assets,
            path,
            &[("accept-encoding", "identity"), ("accept-encoding", "gzip")],
        );
        assert_eq!(header(&resp, "Content-Encoding"), Some("gzip"));
    }

    #[test]
    fn small_or_incompressible_files_get_no_variants() {
        let (_dir, assets) = site();
        let resp = get(
            &assets,
            "/assets/notes.txt",
            &[("accept-encoding", "br, gzip")],
        );
        assert_eq!(header(&resp, "Content-Encoding"), None);
        assert_eq!(header(&resp, "Vary"), None);
        assert_eq!(&resp.body[..], b"short");
    }

    #[test]
    fn precompressed_br_sibling_is_served_as_is() {
        let dir = TempDir::new();
        dir.write("site.css", &css());
        let mut sibling = Vec::new();
        let params = brotli::enc::BrotliEncoderParams {
            quality: 11,
            lgwin: 16,
            ..Default::default()
        };
        brotli::BrotliCompress(&mut &css()[..], &mut sibling, &params).unwrap();
        dir.write("site.css.br", &sibling);
        assert_ne!(compress_with(Coding::Br, &css()), Some(sibling.clone()));
        // A lone archive is an ordinary file, not a variant.
        dir.write("bundle.tar.gz", b"\x1f\x8b not a variant");
        let assets = Assets::load(&dir.0, "/assets/").unwrap();
        assert_eq!(assets.len(), 2);
        let resp = get(&assets, "/assets/site.css", &[("accept-encoding", "br")]);
        assert_eq!(header(&resp, "Content-Encoding"), Some("br"));
        assert_eq!(&resp.body[..], &sibling[..]);
        // gzip is still computed, since only br was precompressed.
        let resp = get(&assets, "/assets/site.css", &[("accept-encoding", "gzip")]);
        assert_eq!(gunzip(&resp.body), css());
        assert_eq!(get(&assets, "/assets/site.css.br", &[]).status, 404);
        let resp = get(&assets, "/assets/bundle.tar.gz", &[]);
        assert_eq!(resp.status, 200);
        assert_eq!(header(&resp, "Content-Encoding"), None);
    }

    #[test]
    fn stale_precompressed_sibling_is_ignored() {
        let dir = TempDir::new();
        dir.write("site.css", &css());
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(b"an older version of the stylesheet")
            .unwrap();
        dir.write("site.css.gz", &enc.finish().unwrap());
        let assets = Assets::load(&dir.0, "/assets/").unwrap();
        let resp = get(&assets, "/assets/site.css", &[("accept-encoding", "gzip")]);
        assert_eq!(header(&resp, "Content-Encoding"), Some("gzip"));
        assert_eq!(gunzip(&resp.body), css());
    }

    #[test]
    fn fingerprinted_names_are_immutable() {
        let (_dir, assets) = site();
        let resp = get(&assets, "/assets/app.3f9a1c2e.js", &[]);
        assert_eq!(header(&resp, "Cache-Control"), Some(CACHE_IMMUTABLE));
        let resp = get(&assets, "/assets/css/site.css", &[]);
        assert_eq!(header(&resp, "Cache-Control"), Some("public, max-age=3600"));
        assert!(fingerprinted("app.3F9A1C2E.min.js"));
        assert!(fingerprinted("app.0123456789abcdef.css"));
        assert!(!fingerprinted("app.3f9a1c2.js"));
        assert!(!fingerprinted("3f9a1c2e.js"));
        assert!(!fingerprinted("app.3f9a1c2g.js"));
        assert!(!fingerprinted("app.js"));
    }

    #[test]
    fn traversal_attempts_are_never_served() {
        let outer = TempDir::new();
        outer.write("Cargo.toml", b"[package] secret");
        outer.write("secret.txt", b"secret");
        let dir = outer.0.join("assets");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.css"), b"a{}").unwrap();
        std::fs::write(dir.join(".env"), b"SECRET=1").unwrap();
        std::fs::create_dir_all(dir.join(".git")).unwrap();
        std::fs::write(dir.join(".git/config"), b"secret").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outer.0.join("secret.txt"), dir.join("leak.txt")).unwrap();
            std::os::unix::fs::symlink(&outer.0, dir.join("up")).unwrap();
            std::os::unix::fs::symlink(dir.join("a.css"), dir.join("alias.css")).unwrap();
            std::os::unix::fs::symlink(dir.join("missing"), dir.join("dangling.css")).unwrap();
        }
        let assets = Assets::load(&dir, "/assets/").unwrap();
        for path in [
            "/assets/../Cargo.toml",
            "/assets/../secret.txt",
            "/assets/%2e%2e/Cargo.toml",
            "/assets/%2E%2E/secret.txt",
            "/assets/..%2fsecret.txt",
            "/assets/a\\b",
            "/assets/..\\secret.txt",
            "/assets/a%00",
            "/assets/a.css%00",
            "/assets/a%0a.css",
            "/assets/./a.css",
            "/assets//a.css",
            "/assets/a.css/",
            "/assets/%zz",
            "/assets/%ff",
            "/assets/.env",
            "/assets/.git/config",
            "/assets/leak.txt",
            "/assets/up/secret.txt",
            "/assets/dangling.css",
        ] {
            let resp = get(&assets, path, &[]);
            assert_eq!(resp.status, 404, "{path}");
            assert!(resp.body.is_empty(), "{path}");
        }
        #[cfg(unix)]
        assert_eq!(&get(&assets, "/assets/alias.css", &[]).body[..], b"a{}");
        assert_eq!(get(&assets, "/assets/a.css?v=1", &[]).status, 200);
    }

    #[test]
    fn escaped_names_are_decoded_once() {
        let dir = TempDir::new();
        dir.write("my file.txt", b"space");
        dir.write("100%.txt", b"percent");
        dir.write("café.txt", b"accent");
        let assets = Assets::load(&dir.0, "/assets/").unwrap();
        assert_eq!(
            &get(&assets, "/assets/my%20file.txt", &[]).body[..],
            b"space"
        );
        assert_eq!(
            &get(&assets, "/assets/100%25.txt", &[]).body[..],
            b"percent"
        );
        assert_eq!(
            &get(&assets, "/assets/caf%C3%A9.txt", &[]).body[..],
            b"accent"
        );
        assert_eq!(&get(&assets, "/assets/café.txt", &[]).body[..], b"accent");
        assert_eq!(get(&assets, "/assets/100%2525.txt", &[]).status, 404);
    }

    #[test]
    fn directories_and_the_prefix_itself_are_404() {
        let (_dir, assets) = site();
        for path in [
            "/assets/css/",
            "/assets/css",
            "/assets/",
            "/assets",
            "/assets/nope.css",
        ] {
            let resp = get(&assets, path, &[]);
            assert_eq!(resp.status, 404, "{path}");
            assert!(resp.headers.is_empty());
        }
    }

    #[test]
    fn other_methods_are_405_with_allow() {
        let (_dir, assets) = site();
        for method in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
            Method::PATCH,
        ] {
            let resp = assets
                .serve(&method, "/assets/css/site.css", &HeaderMap::new())
                .unwrap();
            assert_eq!(resp.status, 405);
            assert_eq!(header(&resp, "Allow"), Some("GET, HEAD"));
            assert!(resp.body.is_empty());
        }
    }

    #[test]
    fn paths_outside_the_prefix_are_left_to_the_router() {
        let (_dir, assets) = site();
        for path in [
            "/",
            "/assetsx/css/site.css",
            "/api/assets/css/site.css",
            "/css/site.css",
            "",
        ] {
            assert!(
                assets
                    .serve(&Method::GET, path, &HeaderMap::new())
                    .is_none(),
                "{path}"
            );
        }
        assert_eq!(assets.prefix(), "/assets/");
        assert_eq!(assets.len(), 4);
        assert!(!assets.is_empty());
    }

    #[test]
    fn load_refuses_a_file_over_8_mib() {
        let dir = TempDir::new();
        dir.write("ok.txt", b"fine");
        let big = dir.write("big/huge.bin", b"");
        // Sparse: nothing is written or read.
        std::fs::File::options()
            .write(true)
            .open(&big)
            .unwrap()
            .set_len(MAX_FILE_SIZE + 1)
            .unwrap();
        let err = Assets::load(&dir.0, "/assets/").unwrap_err();
        assert!(matches!(err, AssetError::TooLarge { size, .. } if size == MAX_FILE_SIZE + 1));
        assert!(err.to_string().contains("huge.bin"), "{err}");
    }

    #[test]
    fn load_refuses_too_many_files() {
        let dir = TempDir::new();
        for i in 0..4 {
            dir.write(&format!("f{i}.txt"), b"x");
        }
        dir.write(".hidden", b"not counted");
        let limits = |max_files| Limits {
            max_file_size: MAX_FILE_SIZE,
            max_files,
        };
        assert_eq!(
            Assets::load_with(&dir.0, "/a/", limits(4)).unwrap().len(),
            4
        );
        let err = Assets::load_with(&dir.0, "/a/", limits(3)).unwrap_err();
        assert!(matches!(err, AssetError::TooManyFiles { limit: 3, .. }));
        assert!(
            err.to_string().contains(&dir.0.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn load_reports_a_missing_folder_a_file_and_a_bad_prefix() {
        let dir = TempDir::new();
        let missing = dir.0.join("nope");
        let err = Assets::load(&missing, "/assets/").unwrap_err();
        assert!(matches!(err, AssetError::Io { .. }));
        assert!(err.to_string().contains("nope"), "{err}");
        let file = dir.write("file.txt", b"x");
        assert!(matches!(
            Assets::load(&file, "/assets/").unwrap_err(),
            AssetError::NotADirectory { .. }
        ));
        assert!(matches!(
            Assets::load(&dir.0, "assets/").unwrap_err(),
            AssetError::BadPrefix { .. }
        ));
        let assets = Assets::load(&dir.0, "/static").unwrap();
        assert_eq!(assets.prefix(), "/static/");
        assert_eq!(get(&assets, "/static/file.txt", &[]).status, 200);
    }

    #[test]
    fn etag_lists_parse_strictly() {
        assert!(etag_list_matches("\"a\",W/\"b\" , \"c\"", "\"b\""));
        assert!(etag_list_matches("\"a,b\", \"c\"", "\"c\""));
        assert!(!etag_list_matches("\"a,b\"", "\"b\""));
        assert!(!etag_list_matches("a", "\"a\""));
        assert!(!etag_list_matches("\"a", "\"a\""));
        assert!(!etag_list_matches("", "\"a\""));
        assert!(!etag_list_matches("*x", "\"a\""));
    }

    #[test]
    fn unusable_mtimes_give_no_last_modified() {
        assert_eq!(http_date(UNIX_EPOCH - Duration::from_secs(1)), None);
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(253_402_300_800)),
            None
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_millis(1_500)).map(|(s, _)| s),
            Some(1)
        );
    }
}

//! Loading the asset folder: the walk (dot-files skipped, symlinks followed only inside the
//! folder, limits), precompressed siblings checked, gzip and brotli computed, ETags, content
//! types and cache lifetimes. Runs at start and on reload, never per request.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{
    valid_key, Asset, AssetError, Coding, Limits, Representation, CACHE_DEFAULT, CACHE_IMMUTABLE,
    MIN_COMPRESS_SIZE,
};

/// A file as read from disk, before siblings are attached.
pub(super) struct RawFile {
    body: Vec<u8>,
    modified: Option<SystemTime>,
}

/// Walks `root` (canonical) iteratively; `shown` is the path as configured, for messages.
pub(super) fn read_tree(
    root: &Path,
    shown: &Path,
    limits: Limits,
) -> Result<HashMap<String, RawFile>, AssetError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AssetError::Io { path, source }
    };
    let mut files = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                tracing::warn!(path = %path.display(), "asset skipped: name is not UTF-8");
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let key = format!("{rel}{name}");
            let file_type = entry.file_type().map_err(io(&path))?;
            let source = if file_type.is_symlink() {
                match std::fs::canonicalize(&path) {
                    Ok(target) if target.starts_with(root) => target,
                    _ => {
                        tracing::warn!(path = %path.display(), "asset skipped: symlink leads outside the folder or nowhere");
                        continue;
                    }
                }
            } else {
                path.clone()
            };
            let meta = std::fs::metadata(&source).map_err(io(&path))?;
            if meta.is_dir() {
                if file_type.is_symlink() {
                    tracing::warn!(path = %path.display(), "asset skipped: symlinked folders are not followed");
                } else {
                    stack.push((path, format!("{key}/")));
                }
                continue;
            }
            if !meta.is_file() || !valid_key(&key) {
                tracing::warn!(path = %path.display(), "asset skipped: not a regular file or not addressable");
                continue;
            }
            if files.len() >= limits.max_files {
                return Err(AssetError::TooManyFiles {
                    dir: shown.to_path_buf(),
                    path,
                    limit: limits.max_files,
                });
            }
            let too_large = |size| AssetError::TooLarge {
                path: path.clone(),
                size,
                limit: limits.max_file_size,
            };
            if meta.len() > limits.max_file_size {
                return Err(too_large(meta.len()));
            }
            let mut body = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
            std::fs::File::open(&source)
                .and_then(|f| f.take(limits.max_file_size + 1).read_to_end(&mut body))
                .map_err(io(&path))?;
            // The file may have grown since `metadata`.
            if body.len() as u64 > limits.max_file_size {
                return Err(too_large(body.len() as u64));
            }
            let modified = meta.modified().ok();
            files.insert(key, RawFile { body, modified });
        }
    }
    Ok(files)
}

/// Attaches `.gz`/`.br` siblings, computes missing variants, and builds the served map.
pub(super) fn build_assets(mut raw: HashMap<String, RawFile>) -> HashMap<String, Asset> {
    let siblings: Vec<String> = raw
        .keys()
        .filter(|k| {
            [".gz", ".br"].iter().any(|ext| {
                k.strip_suffix(ext)
                    .is_some_and(|base| !base.is_empty() && raw.contains_key(base))
            })
        })
        .cloned()
        .collect();
    let mut pre: HashMap<String, RawFile> = HashMap::new();
    for key in siblings {
        if let Some(file) = raw.remove(&key) {
            pre.insert(key, file);
        }
    }
    let mut out = HashMap::with_capacity(raw.len());
    for (key, file) in raw {
        let name = key.rsplit('/').next().unwrap_or(&key);
        let (content_type, compressible) = content_type(name);
        let hash = format!("{:016x}", fnv1a64(&file.body));
        let original = file.body.len();
        let compress = compressible && original >= MIN_COMPRESS_SIZE;
        let variant = |coding: Coding, ext: &str, suffix: &str| -> Option<Representation> {
            let body = match pre.get(&format!("{key}{ext}")) {
                Some(sibling) if decodes_to(coding, &sibling.body, &file.body) => {
                    Some(sibling.body.clone())
                }
                Some(_) => {
                    tracing::warn!(asset = %key, sibling = ext, "precompressed sibling ignored: it does not decompress to the file");
                    compress
                        .then(|| compress_with(coding, &file.body))
                        .flatten()
                }
                None => compress
                    .then(|| compress_with(coding, &file.body))
                    .flatten(),
            }?;
            (body.len() < original).then(|| Representation {
                body: Bytes::from(body),
                etag: format!("\"{hash}-{suffix}\""),
            })
        };
        let asset = Asset {
            content_type,
            cache_control: if fingerprinted(name) {
                CACHE_IMMUTABLE
            } else {
                CACHE_DEFAULT
            },
            modified: file.modified.and_then(http_date),
            gzip: variant(Coding::Gzip, ".gz", "gz"),
            br: variant(Coding::Br, ".br", "br"),
            identity: Representation {
                etag: format!("\"{hash}\""),
                body: Bytes::from(file.body),
            },
        };
        out.insert(key, asset);
    }
    out
}

/// Whole seconds since the epoch and the HTTP-date; `None` outside 1970..=9999.
pub(super) fn http_date(t: SystemTime) -> Option<(u64, String)> {
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    // httpdate panics from year 10000 on.
    if secs >= 253_402_300_800 {
        return None;
    }
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    Some((secs, httpdate::fmt_http_date(t)))
}

pub(super) fn compress_with(coding: Coding, data: &[u8]) -> Option<Vec<u8>> {
    let result = match coding {
        Coding::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            enc.write_all(data).and_then(|()| enc.finish())
        }
        Coding::Br => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: 5,
                ..Default::default()
            };
            let mut out = Vec::new();
            brotli::BrotliCompress(&mut &data[..], &mut out, &params).map(|_| out)
        }
        Coding::Identity => return None,
    };
    result
        .map_err(|e| tracing::warn!(error = %e, "asset compression failed"))
        .ok()
}

/// Does `compressed` decode to exactly `original`? Reads at most one byte past it.
pub(super) fn decodes_to(coding: Coding, compressed: &[u8], original: &[u8]) -> bool {
    let limit = original.len() as u64 + 1;
    let mut out = Vec::with_capacity(original.len());
    let read = match coding {
        Coding::Gzip => flate2::read::MultiGzDecoder::new(compressed)
            .take(limit)
            .read_to_end(&mut out),
        Coding::Br => brotli::Decompressor::new(compressed, 4096)
            .take(limit)
            .read_to_end(&mut out),
        Coding::Identity => return compressed == original,
    };
    read.is_ok() && out == original
}

/// A name like `app.3f9a1c2e.js`: a middle `.`-segment of 8 or more hex digits.
pub(super) fn fingerprinted(name: &str) -> bool {
    let segments: Vec<&str> = name.split('.').collect();
    segments.len() >= 3
        && segments[1..segments.len() - 1]
            .iter()
            .any(|s| s.len() >= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Content type by extension (case-insensitive), and whether compressing it is worthwhile.
pub(super) fn content_type(name: &str) -> (&'static str, bool) {
    let ext = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => String::new(),
    };
    match ext.as_str() {
        "css" => ("text/css; charset=utf-8", true),
        "js" | "mjs" => ("text/javascript; charset=utf-8", true),
        "html" | "htm" => ("text/html; charset=utf-8", true),
        "txt" => ("text/plain; charset=utf-8", true),
        "json" | "map" => ("application/json", true),
        "xml" => ("application/xml", true),
        "svg" => ("image/svg+xml", true),
        "wasm" => ("application/wasm", true),
        "ttf" => ("font/ttf", true),
        "ico" => ("image/x-icon", true),
        "png" => ("image/png", false),
        "jpg" | "jpeg" => ("image/jpeg", false),
        "gif" => ("image/gif", false),
        "webp" => ("image/webp", false),
        "woff" => ("font/woff", false),
        "woff2" => ("font/woff2", false),
        "pdf" => ("application/pdf", false),
        _ => ("application/octet-stream", false),
    }
}

/// 64-bit FNV-1a: enough to tell versions of one file apart, which is all an ETag needs.
pub(super) fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

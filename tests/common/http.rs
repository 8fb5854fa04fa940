//! Request shorthands that fail the test on a transport error, and what tests read off
//! answers: single headers, header tokens, JSON errors, cookies, HTML text.

use super::upstream_and_client::{get, request, FakeUpstream, RecordedRequest, Response};
use super::{json, Gw};
use serde_json::{json, Value};
use std::io::Read;

/// [`get`], failing the test on a transport error.
pub fn get_ok(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    get(port, path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// [`request`], failing the test on a transport error.
pub fn request_ok(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    request(port, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// `POST path` with `body` as JSON (and `headers`).
pub fn post_json(port: u16, path: &str, body: &Value, headers: &[(&str, &str)]) -> Response {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    request_ok(port, "POST", path, &h, body.to_string().as_bytes())
}

/// GETs `path` with `headers` through `gw` (must be proxied: 200) and returns the response
/// together with the one request `up` saw for it.
pub fn forwarded(
    gw: &Gw,
    up: &FakeUpstream,
    path: &str,
    headers: &[(&str, &str)],
) -> (Response, RecordedRequest) {
    let before = up.request_count();
    let r = gw.get_with(path, headers);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    let reqs = up.requests();
    assert_eq!(
        reqs.len(),
        before + 1,
        "{path}: expected exactly one upstream request"
    );
    (r, reqs[before].clone())
}

/// The single value of header `name` (fails on none or several).
pub fn one<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    let all: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    match all.as_slice() {
        [v] => v,
        other => panic!("expected exactly one {name}, got {other:?} in {headers:?}"),
    }
}

/// Comma-separated tokens of every `name` header, trimmed and lower-cased.
pub fn header_tokens(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The response's `Content-Type`, lowercased.
pub fn content_type(r: &Response) -> String {
    r.header("content-type").unwrap_or("").to_ascii_lowercase()
}

/// The `error.code` of one of the gateway's JSON errors.
pub fn error_code(r: &Response) -> String {
    json(r)["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code in {}", r.text()))
        .to_string()
}

/// Asserts `r` is one of the gateway's own JSON errors with this status:
/// `Content-Type: application/json` and `{"error": {"status", "code", "request_id", ..}}`
/// whose request id is also the `X-Request-Id` header. Returns the `error` object.
pub fn json_error(r: &Response, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{what}: body {}",
        r.text()
    );
    let v = json(r);
    assert_eq!(v["error"]["status"], json!(status), "{what}: {v}");
    assert!(v["error"]["code"].is_string(), "{what}: no error.code: {v}");
    let id = v["error"]["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error.request_id: {v}"));
    assert_eq!(r.header("x-request-id"), Some(id), "{what}: X-Request-Id");
    v["error"].clone()
}

/// [`json_error`] with this `code`.
pub fn assert_json_error(r: &Response, status: u16, code: &str, what: &str) {
    let e = json_error(r, status, what);
    assert_eq!(e["code"], json!(code), "{what}: {e}");
}

/// The `Set-Cookie` line that sets `name`.
pub fn set_cookie<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.header_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
}

/// The value of a `Set-Cookie` line (`name=VALUE; attributes`).
pub fn cookie_value(line: &str) -> &str {
    let first = line.split(';').next().unwrap_or("");
    first.split_once('=').map_or("", |(_, v)| v)
}

/// The value of header `name` in an Echo body's `headers` list (`[[name, value], …]`).
pub fn echoed_header(echo: &Value, name: &str) -> Option<String> {
    echo["headers"].as_array()?.iter().find_map(|pair| {
        let k = pair.get(0)?.as_str()?;
        let v = pair.get(1)?.as_str()?;
        k.eq_ignore_ascii_case(name).then(|| v.to_string())
    })
}

/// Undoes the HTML escaping minijinja applies (`&lt;`, `&#x2f;`, …), for comparing text.
pub fn unescape(html: &str) -> String {
    html.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#x2f;", "/")
        .replace("&#x2F;", "/")
        .replace("&amp;", "&")
}

/// The text from `id="ID"` to the first `end` after it (e.g. `</section>`).
pub fn element<'a>(html: &'a str, id: &str, end: &str) -> &'a str {
    let marker = format!("id=\"{id}\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no element with {marker} in:\n{html}"));
    let stop = html[start..]
        .find(end)
        .map_or(html.len(), |e| start + e + end.len());
    &html[start..stop]
}

/// Decompresses a gzip body.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

/// A form field value, percent-encoded as `application/x-www-form-urlencoded` wants it
/// (unreserved characters as they are, every other byte `%XX`).
pub fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

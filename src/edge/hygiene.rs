//! Request hygiene that nginx applies by default and Pingora does not (PINGORA.md):
//! HTTP/1.1 without `Host`, a `Host` that is not a host, more than one `Content-Length`,
//! `Content-Length` together with `Transfer-Encoding`, `TRACE`.
//! Pure checks on the parsed head (plus the raw header bytes where Pingora has already
//! dropped `Content-Length`).

use crate::errors::Reject;
use http::{Method, Version};

/// Checks one request head. `raw` is the header block as received (HTTP/1 only).
pub fn check(
    req: &http::request::Parts,
    raw: impl FnOnce() -> Option<bytes::Bytes>,
) -> Result<(), Reject> {
    if req.method == Method::TRACE || req.method.as_str() == "TRACK" {
        return Err(Reject::new(
            405,
            "method_not_allowed",
            "This method is not allowed here.",
        ));
    }
    if req.version == Version::HTTP_11 && !req.headers.contains_key(http::header::HOST) {
        return Err(Reject::bad_request(
            "HTTP/1.1 requests must carry a Host header.",
        ));
    }
    // A `Host` must be a host (RFC 9110 §7.2: uri-host [":" port]); Pingora refuses `@` but
    // forwards e.g. spaces, which an upstream may read as another host or path.
    if let Some(host) = req.headers.get(http::header::HOST) {
        if !valid_host(host.as_bytes()) {
            return Err(Reject::bad_request("The Host header is not a valid host."));
        }
    }
    // One Content-Length only (RFC 9110 §8.6: a recipient must reject duplicates or collapse
    // them; Pingora refuses differing values and forwards equal ones as sent, twice).
    let lengths = req.headers.get_all(http::header::CONTENT_LENGTH);
    if lengths.iter().count() > 1 || lengths.iter().any(|v| v.as_bytes().contains(&b',')) {
        return Err(Reject::bad_request(
            "A request must carry at most one Content-Length.",
        ));
    }
    if req.version <= Version::HTTP_11 && req.headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        // Pingora removes Content-Length when both are present; look at what was sent.
        if raw().is_some_and(|r| has_content_length(&r)) {
            return Err(Reject::bad_request(
                "Content-Length and Transfer-Encoding must not be sent together.",
            ));
        }
    }
    Ok(())
}

/// `uri-host [":" port]` in RFC 3986's characters, without userinfo (`@`): letters, digits,
/// `-._~`, sub-delims, `%` escapes, `:` and the brackets of an IPv6 literal. Empty is allowed
/// (RFC 9112 §3.2: a request whose target has no authority sends an empty Host).
fn valid_host(host: &[u8]) -> bool {
    host.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b))
}

fn has_content_length(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;

    fn req(method: &str, version: Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/", None).expect("req");
        r.set_version(version);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn trace_is_refused() {
        let r = req("TRACE", Version::HTTP_11, &[("host", "x")]);
        assert_eq!(check(&r, || None).unwrap_err().status, 405);
    }

    #[test]
    fn http11_without_host_is_400_but_http10_is_fine() {
        assert_eq!(
            check(&req("GET", Version::HTTP_11, &[]), || None)
                .unwrap_err()
                .status,
            400
        );
        assert!(check(&req("GET", Version::HTTP_10, &[]), || None).is_ok());
    }

    #[test]
    fn a_host_that_is_not_a_host_is_400() {
        for ok in [
            "localhost",
            "localhost:8080",
            "a.example",
            "[::1]:80",
            "127.0.0.1",
            "",
        ] {
            let r = req("GET", Version::HTTP_11, &[("host", ok)]);
            assert!(check(&r, || None).is_ok(), "{ok:?}");
        }
        for bad in [
            "local host",
            "a.example/evil",
            "user@a.example",
            "a\\b",
            "a\"b",
            "a?b",
            "a#b",
        ] {
            let r = req("GET", Version::HTTP_11, &[("host", bad)]);
            let e = check(&r, || None).expect_err(bad);
            assert_eq!(e.status, 400, "{bad:?}");
        }
    }

    #[test]
    fn more_than_one_content_length_is_400_even_when_equal() {
        let one = req(
            "POST",
            Version::HTTP_11,
            &[("host", "a"), ("content-length", "5")],
        );
        assert!(check(&one, || None).is_ok());
        let twice = req(
            "POST",
            Version::HTTP_11,
            &[
                ("host", "a"),
                ("content-length", "5"),
                ("content-length", "5"),
            ],
        );
        assert_eq!(check(&twice, || None).expect_err("twice").status, 400);
        let list = req(
            "POST",
            Version::HTTP_11,
            &[("host", "a"), ("content-length", "5, 5")],
        );
        assert_eq!(check(&list, || None).expect_err("list").status, 400);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_400() {
        let r = req(
            "POST",
            Version::HTTP_11,
            &[("host", "x"), ("transfer-encoding", "chunked")],
        );
        let raw = bytes::Bytes::from_static(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(check(&r, || Some(raw)).unwrap_err().status, 400);
        let raw = bytes::Bytes::from_static(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(check(&r, || Some(raw)).is_ok());
    }
}

//! Request hygiene that nginx applies by default and Pingora does not (PINGORA.md):
//! HTTP/1.1 without `Host`, `Content-Length` together with `Transfer-Encoding`, `TRACE`.
//! Pure checks on the parsed head (plus the raw header bytes where Pingora has already
//! dropped `Content-Length`).

use crate::errors::Reject;
use http::{Method, Version};
use pingora::http::RequestHeader;

/// Checks one request head. `raw` is the header block as received (HTTP/1 only).
pub fn check(
    req: &RequestHeader,
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

fn has_content_length(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! What the client sees when the gateway, not an upstream, answers with an error.
//!
//! Every module keeps its own error enum; this is the one place that decides the status,
//! a stable machine-readable `code`, and a public message. The body is
//! `{"error": {"status", "code", "message", "request_id"}}`; internals (addresses, causes)
//! go to the log with the request id, never to the client.
//!
//! Layer: a leaf (Pingora's error types only); must not import `config`, `state`, `auth`, `pages`,
//! `plan` or `proxy`.

use pingora::{ErrorSource, ErrorType};
use serde_json::json;

/// A response the gateway produces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
    /// Extra response headers (e.g. `Allow`, `Retry-After`).
    pub headers: Vec<(String, String)>,
    /// A configured body (route fallbacks) instead of the standard error body.
    pub custom_body: Option<bytes::Bytes>,
    /// A configured template for browsers (route fallbacks) instead of the error page.
    pub template: Option<String>,
}

/// A route's configured fallback answer.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<bytes::Bytes>,
    pub template: Option<String>,
}

impl Reject {
    pub fn new(status: u16, code: &'static str, message: &'static str) -> Reject {
        Reject {
            status,
            code,
            message,
            headers: Vec::new(),
            custom_body: None,
            template: None,
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Reject {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn bad_request(message: &'static str) -> Reject {
        Reject::new(400, "bad_request", message)
    }

    pub fn not_found() -> Reject {
        Reject::new(404, "not_found", "No route matches this path.")
    }

    pub fn no_backend() -> Reject {
        Reject::new(
            503,
            "upstream_unavailable",
            "The service is temporarily unavailable.",
        )
        .with_header("Retry-After", "5")
    }

    /// What a route answers when no backend can take a request: its configured fallback,
    /// else 503 with `Retry-After`. Either way marked `X-Gatehouse-Fallback: 1`.
    pub fn fallback(f: Option<&Fallback>) -> Reject {
        let mut r = match f {
            None => Reject::no_backend(),
            Some(f) => {
                let mut r = from_status(f.status);
                r.headers = f.headers.clone();
                r.custom_body = f.body.clone();
                r.template = f.template.clone();
                r
            }
        };
        r.headers.push(("X-Gatehouse-Fallback".into(), "1".into()));
        r
    }

    /// JSON body for this error.
    pub fn body(&self, request_id: &str) -> bytes::Bytes {
        if let Some(b) = &self.custom_body {
            return b.clone();
        }
        let v = json!({"error": {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "request_id": request_id,
        }});
        bytes::Bytes::from(v.to_string())
    }

    /// Maps a Pingora error (from a filter or the upstream exchange) to what the client sees:
    /// timeouts are 504, other upstream failures 502, our own statuses pass through.
    pub fn from_pingora(e: &pingora::Error) -> Reject {
        match e.etype() {
            ErrorType::HTTPStatus(code) => from_status(*code),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Reject::new(
                    504,
                    "upstream_timeout",
                    "The upstream service did not answer in time.",
                )
            }
            _ => match e.esource() {
                ErrorSource::Upstream => Reject::new(
                    502,
                    "upstream_error",
                    "The upstream service failed to answer.",
                ),
                ErrorSource::Downstream => Reject::bad_request("The request could not be read."),
                ErrorSource::Internal | ErrorSource::Unset => Reject::new(
                    500,
                    "internal_error",
                    "The gateway failed to handle the request.",
                ),
            },
        }
    }
}

/// The public face of a status raised as `HTTPStatus(code)` somewhere in a filter.
pub fn from_status(code: u16) -> Reject {
    match code {
        400 => Reject::bad_request("The request is malformed."),
        404 => Reject::not_found(),
        405 => Reject::new(
            405,
            "method_not_allowed",
            "This method is not allowed here.",
        ),
        408 => Reject::new(
            408,
            "request_timeout",
            "The request took too long to arrive.",
        ),
        413 => Reject::new(413, "payload_too_large", "The request body is too large."),
        431 => Reject::new(
            431,
            "headers_too_large",
            "The request headers are too large.",
        ),
        502 => Reject::new(
            502,
            "upstream_error",
            "The upstream service failed to answer.",
        ),
        503 => Reject::no_backend(),
        504 => Reject::new(
            504,
            "upstream_timeout",
            "The upstream service did not answer in time.",
        ),
        c if (400..500).contains(&c) => Reject::new(c, "client_error", "The request was refused."),
        c => Reject::new(
            c.clamp(500, 599),
            "internal_error",
            "The gateway failed to handle the request.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::Error;

    #[test]
    fn timeouts_are_504_and_refusals_502() {
        let mut e = Error::new(ErrorType::ReadTimedout);
        e.as_up();
        assert_eq!(Reject::from_pingora(&e).status, 504);
        let mut e = Error::new(ErrorType::ConnectTimedout);
        e.as_up();
        assert_eq!(Reject::from_pingora(&e).status, 504);
        let mut e = Error::new(ErrorType::ConnectRefused);
        e.as_up();
        assert_eq!(Reject::from_pingora(&e).status, 502);
        let mut e = Error::new(ErrorType::ConnectionClosed);
        e.as_up();
        assert_eq!(Reject::from_pingora(&e).status, 502);
    }

    #[test]
    fn body_carries_request_id_and_no_internals() {
        let body = Reject::no_backend().body("abc");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["status"], 503);
        assert_eq!(v["error"]["code"], "upstream_unavailable");
        assert_eq!(v["error"]["request_id"], "abc");
    }
}

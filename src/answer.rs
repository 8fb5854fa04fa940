//! One value for every answer the gateway writes itself (JSON, HTML, assets, redirects,
//! preflights, errors once rendered): status, headers, body. The lane's writer
//! (`proxy::answer`) adds what every answer carries — length, request id, CORS, HSTS,
//! compression — so no producer of an answer decides those.
//!
//! Layer: a leaf; must not import any gatehouse module (`config`, `errors`, `state`, `plan`,
//! `proxy`, …).

use bytes::Bytes;

/// An answer the gateway writes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Exactly these headers (the writer adds length and request id). `Set-Cookie` lines
    /// are appended; other names replace.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Answer {
    /// An answer with exactly these headers.
    pub fn new(status: u16, headers: Vec<(String, String)>, body: Bytes) -> Answer {
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A JSON answer: `Content-Type: application/json` unless `headers` name a type (or the
    /// body is empty).
    pub fn json(status: u16, mut headers: Vec<(String, String)>, body: Bytes) -> Answer {
        let has_type = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if !has_type && !body.is_empty() {
            headers.insert(0, ("Content-Type".into(), "application/json".into()));
        }
        Answer::new(status, headers, body)
    }

    /// An empty answer sending the client to `location` (e.g. 303 after a form, 308 to HTTPS).
    pub fn redirect(status: u16, location: String) -> Answer {
        let headers = vec![
            ("Location".to_string(), location),
            ("Cache-Control".to_string(), "no-store".to_string()),
        ];
        Answer::new(status, headers, Bytes::new())
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Answer {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Whether `name` is among the headers (ASCII case-insensitive).
    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_gets_its_type_unless_one_is_given_or_the_body_is_empty() {
        let a = Answer::json(200, Vec::new(), Bytes::from_static(b"{}"));
        assert_eq!(a.headers[0].1, "application/json");
        let a = Answer::json(
            200,
            vec![("content-type".into(), "text/html".into())],
            Bytes::from_static(b"<p>"),
        );
        assert_eq!(a.headers.len(), 1);
        assert_eq!(a.headers[0].1, "text/html");
        let a = Answer::json(204, Vec::new(), Bytes::new());
        assert!(a.headers.is_empty());
    }

    #[test]
    fn a_redirect_is_not_stored() {
        let a = Answer::redirect(303, "/login".into());
        assert!(a.has_header("location"));
        assert!(a.has_header("Cache-Control"));
        assert!(a.body.is_empty());
    }
}

//! Client detection (the seeds' `client_detector`): does this request come from a browser
//! navigating pages, or from an API client? Browsers get HTML error pages and login
//! redirects; API clients get JSON and `WWW-Authenticate`.

use http::{HeaderMap, HeaderName};

/// True for API clients: paths under `/api/`, `Accept` preferring JSON, or
/// `X-Requested-With` (XHR). Otherwise a request that accepts `text/html` or navigates
/// (`Sec-Fetch-Mode: navigate`) is a browser. Anything else is treated as an API client.
pub fn is_api_client(path: &str, headers: &HeaderMap) -> bool {
    if path == "/api" || path.starts_with("/api/") {
        return true;
    }
    let (html, accept) = asks_for_html(headers);
    // A browser that asks for JSON before HTML is an API call all the same.
    !html || (accept.contains("application/json") && !accept.contains("text/html"))
}

/// True when the request is a browser navigation or form post expecting HTML (used where
/// the path says nothing, e.g. the web login endpoints under `/api/web/`).
pub fn wants_html(headers: &HeaderMap) -> bool {
    asks_for_html(headers).0
}

const X_REQUESTED_WITH: HeaderName = HeaderName::from_static("x-requested-with");
const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");

/// [`wants_html`], with the `Accept` header it read (looked up once, by name constants:
/// a lookup by `&str` parses the name first).
fn asks_for_html(headers: &HeaderMap) -> (bool, &str) {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if headers.contains_key(X_REQUESTED_WITH) {
        return (false, accept);
    }
    let navigates = headers
        .get(SEC_FETCH_MODE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("navigate"));
    (navigates || accept.contains("text/html"), accept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().expect("value"));
        }
        m
    }

    #[test]
    fn api_paths_and_json_clients_are_api() {
        assert!(is_api_client(
            "/api/v1/doctors",
            &h(&[("accept", "text/html")])
        ));
        assert!(is_api_client(
            "/patient/dashboard",
            &h(&[("accept", "application/json")])
        ));
        assert!(is_api_client(
            "/patient/dashboard",
            &h(&[("x-requested-with", "XMLHttpRequest")])
        ));
        assert!(is_api_client("/patient/dashboard", &h(&[])));
    }

    #[test]
    fn form_posts_from_browsers_want_html() {
        assert!(wants_html(&h(&[("accept", "text/html,*/*")])));
        assert!(!wants_html(&h(&[("accept", "application/json")])));
        assert!(!wants_html(&h(&[
            ("accept", "text/html"),
            ("x-requested-with", "XMLHttpRequest")
        ])));
    }

    #[test]
    fn navigating_browsers_are_not_api() {
        assert!(!is_api_client(
            "/patient/dashboard",
            &h(&[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")])
        ));
        assert!(!is_api_client("/", &h(&[("sec-fetch-mode", "navigate")])));
    }
}

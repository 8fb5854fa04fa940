//! Query strings, form bodies and redirect targets: small pure helpers that the pages, the
//! auth endpoints and the admin listener share.
//!
//! Layer: a leaf; must not import any other gatehouse module (`config`, `state`, `auth`,
//! `pages`, `plan`, `proxy`, …).

/// The form-decoded value of query parameter `name`.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| form_decode(v))
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte); bad
/// escapes are kept as they are.
pub fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A local, single-slash path that is safe to redirect to after login.
pub fn safe_next(next: &str) -> bool {
    next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\')
        && next.len() <= 2048
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param(Some("next=%2Fpatient%2Fdashboard&x=1"), "next").as_deref(),
            Some("/patient/dashboard")
        );
        assert_eq!(query_param(Some("a=b"), "next"), None);
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%40c.d"), "a b@c.d");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz"), "%zz");
    }

    #[test]
    fn next_must_be_a_local_single_slash_path() {
        assert!(safe_next("/patient/dashboard?x=1"));
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "evil",
            "/a\nb",
        ] {
            assert!(!safe_next(bad), "{bad}");
        }
    }
}

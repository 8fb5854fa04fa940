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

/// The CSRF token as a page carries it: a fresh random pad and the token XOR that pad, in hex
/// (64 digits for the 32-digit cookie token). Every rendered page shows different bytes, so a
/// compressed page's size says nothing about the token to someone who can add text to the page
/// and watch the sizes (BREACH); [`csrf_unmask`] recovers the token from a posted form. A token
/// that is not hex is returned as it is (an empty one, for pages without a form).
pub fn csrf_mask(token: &str) -> String {
    let Ok(bytes) = hex::decode(token) else {
        return token.to_string();
    };
    if bytes.is_empty() {
        return String::new();
    }
    let pad: Vec<u8> = (0..bytes.len()).map(|_| rand::random::<u8>()).collect();
    let masked: Vec<u8> = bytes.iter().zip(&pad).map(|(b, p)| b ^ p).collect();
    format!("{}{}", hex::encode(pad), hex::encode(masked))
}

/// The token a [`csrf_mask`]ed form field carries; `None` when `sent` is not a masked token.
pub fn csrf_unmask(sent: &str) -> Option<String> {
    if sent.is_empty() || !sent.len().is_multiple_of(4) {
        return None;
    }
    let bytes = hex::decode(sent).ok()?;
    let (pad, masked) = bytes.split_at(bytes.len() / 2);
    Some(hex::encode(
        pad.iter()
            .zip(masked)
            .map(|(p, m)| p ^ m)
            .collect::<Vec<u8>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_csrf_token_differs_on_every_page_and_unmasks_to_the_cookie() {
        let token = "0123456789abcdef0123456789abcdef";
        let (a, b) = (csrf_mask(token), csrf_mask(token));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b, "the same bytes on two pages");
        assert!(!a.contains(token) && !b.contains(token));
        assert_eq!(csrf_unmask(&a).as_deref(), Some(token));
        assert_eq!(csrf_unmask(&b).as_deref(), Some(token));
        assert_eq!(csrf_mask(""), "");
        assert_eq!(csrf_mask("not hex"), "not hex");
        for bad in ["", "abc", "zz", token, &a[..63], "g".repeat(64).as_str()] {
            assert_ne!(csrf_unmask(bad).as_deref(), Some(token), "{bad:?}");
        }
        assert_eq!(csrf_unmask("abc"), None);
        assert_eq!(csrf_unmask(&"g".repeat(64)), None);
    }

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

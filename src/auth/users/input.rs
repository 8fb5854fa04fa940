//! What callers hand in: the shape of emails, passwords and display names, and audit fields
//! made safe to store.

use super::UserError;

pub(super) const MAX_EMAIL_CHARS: usize = 254;
pub(super) const MIN_PASSWORD_CHARS: usize = 8;
pub(super) const MAX_PASSWORD_BYTES: usize = 1024;
pub(super) const MAX_DISPLAY_NAME_CHARS: usize = 200;
/// Longest stored audit field (attempted email, client ip, user agent), in bytes.
pub(super) const MAX_EVENT_FIELD_BYTES: usize = 512;

/// Trims and lowercases an email and checks its shape.
pub fn normalize_email(email: &str) -> Result<String, UserError> {
    let email = email.trim().to_lowercase();
    let valid = email.chars().count() <= MAX_EMAIL_CHARS
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if valid {
        Ok(email)
    } else {
        Err(UserError::InvalidInput(format!(
            "email must look like name@domain, without spaces, at most {MAX_EMAIL_CHARS} characters"
        )))
    }
}

pub(super) fn check_password(password: &str) -> Result<(), UserError> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(UserError::InvalidInput(format!(
            "password must have at least {MIN_PASSWORD_CHARS} characters and at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A display name, trimmed: at most `MAX_DISPLAY_NAME_CHARS` characters, no control
/// characters (it may be empty).
pub fn display_name(name: &str) -> Result<&str, UserError> {
    let name = name.trim();
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(UserError::InvalidInput(format!(
            "display name must be at most {MAX_DISPLAY_NAME_CHARS} characters, without control characters"
        )));
    }
    Ok(name)
}

/// An audit field: control characters (PostgreSQL rejects NUL in TEXT) replaced, cut to
/// `MAX_EVENT_FIELD_BYTES` on a character boundary.
pub(super) fn clean(field: &str) -> String {
    let mut out = String::with_capacity(field.len().min(MAX_EVENT_FIELD_BYTES));
    for c in field
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
    {
        if out.len() + c.len_utf8() > MAX_EVENT_FIELD_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_fields_are_cleaned_and_bounded() {
        assert_eq!(clean("a\0b\nc"), "a\u{FFFD}b\u{FFFD}c");
        let long = clean(&"é".repeat(1000));
        assert!(long.len() <= MAX_EVENT_FIELD_BYTES && long.chars().all(|c| c == 'é'));
    }
}

//! `${VAR}` and `${VAR:-default}` expansion of the raw config text, before YAML parsing.
//!
//! The seeds configure everything through environment variables; this keeps that contract
//! while the file stays the single place an SRE reads. `$$` writes a literal `$`. Lines
//! whose first non-blank character is `#` are left alone, so comments may mention variables.
//! A `${VAR}` without default whose variable is unset is an error naming the line.

/// Expands variables using `lookup`; returns every unset variable as a separate problem.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
            } else if let Some(body) = after.strip_prefix('{') {
                let Some(end) = body.find('}') else {
                    problems.push(format!("line {}: unterminated \"${{\"", idx + 1));
                    out.push('$');
                    rest = after;
                    continue;
                };
                let expr = &body[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                if !valid_name(name) {
                    problems.push(format!("line {}: invalid variable name {name:?}", idx + 1));
                } else {
                    match (lookup(name), default) {
                        (Some(v), _) if !(v.is_empty() && default.is_some()) => out.push_str(&v),
                        (_, Some(d)) => out.push_str(d),
                        (Some(v), None) => out.push_str(&v),
                        (None, None) => problems.push(format!(
                            "line {}: environment variable {name} is not set (write ${{{name}:-default}} to give a default)",
                            idx + 1
                        )),
                    }
                }
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        let out = expand("a: ${SET}\nb: ${UNSET:-fallback}\nc: ${SET:-x}\n", env);
        assert_eq!(out.as_deref(), Ok("a: value\nb: fallback\nc: value\n"));
    }

    #[test]
    fn empty_variable_takes_the_default_like_a_shell() {
        assert_eq!(expand("${EMPTY:-d}", env).as_deref(), Ok("d"));
    }

    #[test]
    fn unset_without_default_names_the_line() {
        let err = expand("ok: 1\nx: ${MISSING}\n", env).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(err[0].starts_with("line 2: environment variable MISSING is not set"));
    }

    #[test]
    fn comments_and_dollar_escapes_are_left_alone() {
        let out = expand("# uses ${MISSING}\nprice: $$5 and $x\n", env);
        assert_eq!(out.as_deref(), Ok("# uses ${MISSING}\nprice: $5 and $x\n"));
    }
}

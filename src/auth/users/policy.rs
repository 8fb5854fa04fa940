//! The password policy (NIST SP 800-63B §5.1.1.2): what a new password must be, whichever
//! way it is set — self-registration, `gatehouse user add`, `gatehouse user set-password`.
//! Decided here once; [`PasswordPolicy::check`] is the one check they all call.
//!
//! A password is refused when it has fewer than `auth.passwords.min_length` characters
//! (Unicode scalar values; default 12) or more than [`MAX_CHARS`] (256). There are no
//! composition rules (no required digits, cases or symbols) and spaces are allowed. Within
//! those lengths it is refused when, compared in lowercase, it is:
//!
//! - **common**: in the bundled list of common and breached passwords
//!   (`data/common-passwords.txt`, about 40 000), as it is or once the digits, punctuation
//!   and spaces at its ends are taken off and at least 4 characters remain
//!   (`Dragon2024!!!!` is `dragon`);
//! - **repetitive**: one unit of up to 4 characters repeated (`aaaaaaaaaaaa`,
//!   `abcabcabcabc`), or one run of consecutive characters, up or down (`123456789012`,
//!   `zyxwvutsrqpo`);
//! - **personal**: containing, with its spaces taken out, the account's email, the email's
//!   part before `@`, the name with its spaces taken out, or any run of at least 4 letters or
//!   digits of the part before `@` or of the name. Shorter words are not compared (too many
//!   good passwords contain them by chance).
//!
//! The user database keeps its own floor (8 characters, 1024 bytes: `input::check_password`)
//! so that nothing stores an empty or unbounded password; this policy is always stricter.

use std::collections::HashSet;
use std::sync::LazyLock;

/// The fewest characters `auth.passwords.min_length` may ask for (NIST: at least 8).
pub const MIN_LENGTH_FLOOR: usize = 8;
/// The most characters a password may have (NIST: at least 64 must be allowed).
pub const MAX_CHARS: usize = 256;
/// Shortest word of the email or name that a password may not contain.
const MIN_PERSONAL_WORD: usize = 4;

/// The bundled list: lowercase, one a line (sources and licences in `data/README.md`).
static COMMON_LIST: &str = include_str!("../../../data/common-passwords.txt");
// The user database's own floor is never stricter than the policy.
const _: () = assert!(
    super::input::MIN_PASSWORD_CHARS == MIN_LENGTH_FLOOR
        && MAX_CHARS * 4 <= super::input::MAX_PASSWORD_BYTES
);

/// Built on first use (a few milliseconds), then shared.
static COMMON: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| COMMON_LIST.lines().filter(|l| !l.is_empty()).collect());

/// Why a password was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weakness {
    /// Fewer characters than the policy's minimum.
    TooShort { min: usize },
    /// More than [`MAX_CHARS`] characters.
    TooLong { max: usize },
    /// On the list of common and breached passwords.
    Common,
    /// A repeated unit or a run of consecutive characters.
    Repetitive,
    /// Contains the account's email or name.
    Personal,
}

impl Weakness {
    /// A stable code for clients and templates: `too_short`, `too_long`, `common`,
    /// `repetitive`, `personal`.
    pub fn code(&self) -> &'static str {
        match self {
            Weakness::TooShort { .. } => "too_short",
            Weakness::TooLong { .. } => "too_long",
            Weakness::Common => "common",
            Weakness::Repetitive => "repetitive",
            Weakness::Personal => "personal",
        }
    }
}

impl std::fmt::Display for Weakness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Weakness::TooShort { min } => write!(f, "password must have at least {min} characters"),
            Weakness::TooLong { max } => write!(f, "password must have at most {max} characters"),
            Weakness::Common => f.write_str(
                "password is too common: it is on the list of common and breached passwords",
            ),
            Weakness::Repetitive => {
                f.write_str("password is a repeated pattern or a run of consecutive characters")
            }
            Weakness::Personal => f.write_str("password must not contain the email or the name"),
        }
    }
}

impl std::error::Error for Weakness {}

/// The policy in force (`auth.passwords`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordPolicy {
    min_length: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy { min_length: 12 }
    }
}

impl PasswordPolicy {
    /// `min_length` is kept within [`MIN_LENGTH_FLOOR`]..=[`MAX_CHARS`] (the config refuses
    /// anything else).
    pub fn new(min_length: usize) -> PasswordPolicy {
        PasswordPolicy {
            min_length: min_length.clamp(MIN_LENGTH_FLOOR, MAX_CHARS),
        }
    }

    /// From `auth.passwords`.
    pub fn from_config(c: &crate::config::PasswordsConfig) -> PasswordPolicy {
        PasswordPolicy::new(c.min_length)
    }

    pub fn min_length(&self) -> usize {
        self.min_length
    }

    /// Checks a new password for the account with this email and display name (either may
    /// be empty). The first rule broken, in the order of the module docs.
    pub fn check(&self, password: &str, email: &str, name: &str) -> Result<(), Weakness> {
        let chars = password.chars().count();
        if chars < self.min_length {
            return Err(Weakness::TooShort {
                min: self.min_length,
            });
        }
        if chars > MAX_CHARS {
            return Err(Weakness::TooLong { max: MAX_CHARS });
        }
        let lower = password.to_lowercase();
        if is_common(&lower) {
            return Err(Weakness::Common);
        }
        if is_repetitive(&lower) {
            return Err(Weakness::Repetitive);
        }
        let squeezed: String = lower.chars().filter(|c| !c.is_whitespace()).collect();
        if personal_words(email, name)
            .iter()
            .any(|w| squeezed.contains(w.as_str()))
        {
            return Err(Weakness::Personal);
        }
        Ok(())
    }
}

/// `lower` (lowercase) is on the list, as it is or without the non-letters at its ends.
fn is_common(lower: &str) -> bool {
    if COMMON.contains(lower) {
        return true;
    }
    let core = lower.trim_matches(|c: char| !c.is_alphabetic());
    core.len() != lower.len() && core.chars().count() >= 4 && COMMON.contains(core)
}

/// One unit of up to 4 characters repeated, or one run of consecutive characters.
fn is_repetitive(lower: &str) -> bool {
    let c: Vec<char> = lower.chars().collect();
    let repeated = (1..=4).any(|unit| {
        c.len() > unit && c.len().is_multiple_of(unit) && c.chunks(unit).all(|ch| ch == &c[..unit])
    });
    let step = |a: char, b: char| -> i64 {
        match (a, b) {
            ('9', '0') => 1,
            ('0', '9') => -1,
            _ => i64::from(u32::from(b)) - i64::from(u32::from(a)),
        }
    };
    let run = |dir: i64| c.windows(2).all(|w| step(w[0], w[1]) == dir);
    repeated || (c.len() >= 3 && (run(1) || run(-1)))
}

/// The words of the account a password may not contain: lowercase, without spaces, at least
/// [`MIN_PERSONAL_WORD`] characters.
fn personal_words(email: &str, name: &str) -> Vec<String> {
    let email = email.trim().to_lowercase();
    let local = email.split('@').next().unwrap_or("").to_string();
    let name = name.to_lowercase();
    let mut words = vec![
        email.clone(),
        local.clone(),
        name.chars().filter(|c| !c.is_whitespace()).collect(),
    ];
    for text in [&local, &name] {
        words.extend(
            text.split(|c: char| !c.is_alphanumeric())
                .map(str::to_string),
        );
    }
    words.retain(|w| w.chars().count() >= MIN_PERSONAL_WORD);
    words.sort();
    words.dedup();
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pw: &str) -> Result<(), Weakness> {
        PasswordPolicy::default().check(pw, "maria.lopez@example.org", "María López")
    }

    #[test]
    fn length_is_counted_in_characters_between_the_minimum_and_256() {
        assert_eq!(check("short pass"), Err(Weakness::TooShort { min: 12 }));
        assert_eq!(check(""), Err(Weakness::TooShort { min: 12 }));
        // Eleven characters but more than twelve bytes: still too short.
        assert_eq!(check("ñandú ñandú"), Err(Weakness::TooShort { min: 12 }));
        assert_eq!(check("quiet otter ferry"), Ok(()));
        let longest: String = "tortuga-de-mar-".repeat(18)[..MAX_CHARS].to_string();
        assert_eq!(longest.chars().count(), MAX_CHARS);
        assert_eq!(check(&longest), Ok(()));
        let over = format!("{longest}x");
        assert_eq!(check(&over), Err(Weakness::TooLong { max: MAX_CHARS }));
        // No composition rules: lowercase letters and spaces only is fine.
        assert_eq!(check("lluvia sobre el tejado"), Ok(()));
    }

    #[test]
    fn the_minimum_is_configurable_within_its_bounds() {
        let p = PasswordPolicy::new(16);
        assert_eq!(
            p.check("quiet otter ferry", "", ""),
            Ok(()),
            "17 characters"
        );
        assert_eq!(
            p.check("quiet otter fer", "", ""),
            Err(Weakness::TooShort { min: 16 })
        );
        assert_eq!(PasswordPolicy::new(3).min_length(), MIN_LENGTH_FLOOR);
        assert_eq!(PasswordPolicy::new(10_000).min_length(), MAX_CHARS);
    }

    #[test]
    fn common_passwords_are_refused_in_any_case_and_with_digits_or_symbols_around() {
        assert!(COMMON.len() > 30_000, "{} entries", COMMON.len());
        let p = PasswordPolicy::new(8);
        for pw in [
            "password",
            "PASSWORD",
            "iloveyou",
            "Password123",
            "baseball",
            "Dragon2024!!!!",
            "123!!Sunshine!!",
        ] {
            assert_eq!(p.check(pw, "", ""), Err(Weakness::Common), "{pw}");
        }
        for pw in ["qwerty123456", "Qwertyuiop123", "QWERTYUIOP12345!"] {
            assert_eq!(check(pw), Err(Weakness::Common), "{pw}");
        }
        assert_eq!(check("correct-horse-battery-staple"), Ok(()));
        // The core must keep 4 characters: a short word with digits around is not refused
        // for it (it may be for its length).
        assert_eq!(p.check("1234abc!5678", "", ""), Ok(()));
    }

    #[test]
    fn repeated_units_and_runs_are_refused() {
        for pw in [
            "aaaaaaaaaaaa",
            "abababababab",
            "abcabcabcabc",
            "abcdabcdabcd",
            "ñññññññññññññ",
            "123456789012",
            "210987654321",
            "abcdefghijklm",
            "zyxwvutsrqpo",
        ] {
            assert_eq!(check(pw), Err(Weakness::Repetitive), "{pw}");
        }
        // A unit of five repeated is not refused by this rule.
        assert_eq!(check("abcdeabcdeabcde"), Ok(()));
    }

    #[test]
    fn the_email_and_name_are_refused_inside_a_password() {
        for pw in [
            "maria.lopez@example.org",
            "MARIA.LOPEZ.forever",
            "my secret lopez 77",
            "marialópez-is-here",
            "María López 2024",
            "xx maria yy zz",
        ] {
            assert_eq!(check(pw), Err(Weakness::Personal), "{pw}");
        }
        // Words under four characters are not compared.
        let p = PasswordPolicy::default();
        assert_eq!(
            p.check("bananas in pyjamas", "ana@example.org", "Ana"),
            Ok(())
        );
        assert_eq!(
            p.check("ana@example.org!!", "ana@example.org", "Ana"),
            Err(Weakness::Personal)
        );
        // Without an email or a name, nothing is personal.
        assert_eq!(p.check("quiet otter ferry", "", ""), Ok(()));
    }

    #[test]
    fn codes_and_messages_say_what_is_wrong() {
        assert_eq!(Weakness::TooShort { min: 12 }.code(), "too_short");
        assert_eq!(
            Weakness::TooShort { min: 12 }.to_string(),
            "password must have at least 12 characters"
        );
        assert_eq!(Weakness::Common.code(), "common");
        assert!(Weakness::Personal.to_string().contains("email"));
    }

    #[test]
    fn the_bundled_list_is_lowercase_one_a_line() {
        for line in COMMON_LIST.lines() {
            assert!(!line.is_empty() && line == line.to_lowercase() && line.trim() == line);
        }
    }
}

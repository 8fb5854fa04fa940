//! `gatehouse user import`: users brought over from the seeds' Flask stack with the password
//! hashes it made, so that they sign in with their old passwords (the first successful login
//! replaces the hash with argon2id, see `UserDb::authenticate`).
//!
//! Owns: reading the input (CSV with the header `email,role,name,password_hash`, RFC 4180
//! quoting, or JSON lines `{"email", "role", "name", "password_hash"}`), checking every row
//! (email shape, known role, display name, hash format and cost bounds — see `formats`),
//! and storing the good rows in one transaction.
//!
//! Does not own: what the command prints (the CLI does), nor ending sessions in a shared
//! store (the CLI does it for updated users, as for any account change).

use std::collections::HashMap;
use std::time::Duration;

use super::formats::Stored;
use super::{
    bounded, display_name, normalize_email, unix_now, unix_now_ms, Applied, EventKind, Pool, Role,
    UserDb, UserError, INSERT_USER,
};

/// The only CSV header accepted.
pub const CSV_HEADER: [&str; 4] = ["email", "role", "name", "password_hash"];
/// Upper bound on the whole import transaction.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);

/// How the input is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with the header [`CSV_HEADER`].
    Csv,
    /// One JSON object per line.
    JsonLines,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "csv" => Ok(Format::Csv),
            "jsonl" => Ok(Format::JsonLines),
            other => Err(format!("unknown format {other:?}; use csv or jsonl")),
        }
    }
}

/// A checked row, ready to store.
#[derive(Clone)]
pub struct Row {
    /// Where it starts in the input (1-based).
    pub line: u64,
    /// Trimmed and lowercased.
    pub email: String,
    pub role: Role,
    pub name: String,
    /// Never printed.
    password_hash: String,
}

impl std::fmt::Debug for Row {
    /// Without the hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("line", &self.line)
            .field("email", &self.email)
            .field("role", &self.role)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The input, checked.
#[derive(Debug, Default)]
pub struct Parsed {
    pub rows: Vec<Row>,
    /// `(line, reason)` of each bad row, in input order.
    pub invalid: Vec<(u64, String)>,
}

/// What an import stored.
#[derive(Debug, Default)]
pub struct Report {
    pub imported: u64,
    /// Existing users whose role, name or hash were replaced (`--update`); those whose role or
    /// hash changed have a revocation recorded (their sessions end).
    pub updated: u64,
    /// The revocations of updated users, for ending their sessions in a shared store.
    pub revoked: Vec<Applied>,
    /// Existing users left alone (without `--update`, or with nothing to change).
    pub skipped: u64,
}

/// One JSON line.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    email: String,
    role: String,
    #[serde(default)]
    name: String,
    password_hash: String,
}

/// Reads and checks `text`: the format is `format`, else JSON lines when the first non-blank
/// line starts with `{`, else CSV. `Err` (with its line) when the input cannot be read as a
/// whole: an empty input or a CSV header other than [`CSV_HEADER`].
pub fn parse(text: &str, format: Option<Format>) -> Result<Parsed, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.lines().find(|l| !l.trim().is_empty());
    let Some(first) = first else {
        return Err("the input is empty".into());
    };
    let format = format.unwrap_or(if first.trim_start().starts_with('{') {
        Format::JsonLines
    } else {
        Format::Csv
    });
    let mut parsed = Parsed::default();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut add = |line: u64, fields: Result<[String; 4], String>| match fields
        .and_then(|f| check_row(line, f))
    {
        Ok(row) => {
            if let Some(first) = seen.get(&row.email) {
                parsed
                    .invalid
                    .push((line, format!("email already on line {first}")));
            } else {
                seen.insert(row.email.clone(), line);
                parsed.rows.push(row);
            }
        }
        Err(reason) => parsed.invalid.push((line, reason)),
    };
    match format {
        Format::JsonLines => {
            for (i, l) in text.lines().enumerate() {
                if l.trim().is_empty() {
                    continue;
                }
                let fields = serde_json::from_str::<JsonRow>(l)
                    .map(|r| [r.email, r.role, r.name, r.password_hash])
                    .map_err(|e| {
                        format!("not a JSON object with email, role, name and password_hash: {e}")
                    });
                add(i as u64 + 1, fields);
            }
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(text.as_bytes());
            let mut header_seen = false;
            for record in reader.records() {
                let record = match record {
                    Ok(r) => r,
                    Err(e) => {
                        let line = e.position().map_or(0, |p| p.line());
                        if !header_seen {
                            return Err(format!("line {line}: unreadable CSV header"));
                        }
                        add(line, Err(format!("unreadable CSV: {}", e.kind_name())));
                        continue;
                    }
                };
                let line = record.position().map_or(0, |p| start_line(text, p));
                if !header_seen {
                    header_seen = true;
                    if record.iter().map(str::trim).ne(CSV_HEADER) {
                        return Err(format!(
                            "line {line}: the CSV header must be exactly {}",
                            CSV_HEADER.join(",")
                        ));
                    }
                    continue;
                }
                let fields = match record.iter().collect::<Vec<_>>()[..] {
                    [email, role, name, hash] => Ok([email, role, name, hash].map(str::to_string)),
                    ref other => Err(format!(
                        "expected 4 fields ({}), found {}{}",
                        CSV_HEADER.join(","),
                        other.len(),
                        if other.get(3).is_some_and(|h| h.starts_with("$argon2")) {
                            " (argon2 hashes hold commas: quote the field)"
                        } else {
                            ""
                        }
                    )),
                };
                add(line, fields);
            }
        }
    }
    Ok(parsed)
}

/// The line a CSV record starts on: the csv crate's position of a record that follows blank
/// lines is the first blank line's.
fn start_line(text: &str, pos: &csv::Position) -> u64 {
    let from = usize::try_from(pos.byte()).unwrap_or(usize::MAX);
    let blank_lines = text.as_bytes().get(from..).unwrap_or_default();
    let skipped = blank_lines
        .iter()
        .take_while(|b| matches!(b, b'\n' | b'\r'))
        .filter(|&&b| b == b'\n')
        .count();
    pos.line() + skipped as u64
}

/// Names the error kinds of the csv crate without echoing the input.
trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for csv::Error {
    fn kind_name(&self) -> &'static str {
        match self.kind() {
            csv::ErrorKind::Utf8 { .. } => "not UTF-8",
            csv::ErrorKind::Io(_) => "read error",
            _ => "malformed record",
        }
    }
}

fn check_row(line: u64, [email, role, name, hash]: [String; 4]) -> Result<Row, String> {
    let email = normalize_email(&email).map_err(reason)?;
    let role: Role = role.parse().map_err(reason)?;
    let name = display_name(&name).map_err(reason)?.to_string();
    let hash = hash.trim();
    Stored::parse(hash).map_err(|e| format!("password_hash: {e}"))?;
    Ok(Row {
        line,
        email,
        role,
        name,
        password_hash: hash.to_string(),
    })
}

/// The message of an input error, without the "invalid input: " prefix.
fn reason(e: UserError) -> String {
    match e {
        UserError::InvalidInput(m) => m,
        other => other.to_string(),
    }
}

/// Renders the bad rows as `line N: reason`, one per line.
pub fn describe_invalid(invalid: &[(u64, String)]) -> String {
    invalid
        .iter()
        .map(|(line, why)| format!("line {line}: {why}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The body of [`UserDb::import_users`] for one pool type (the two arms differ only in it).
macro_rules! import_rows {
    ($pool:expr, $rows:expr, $update:expr, $now:expr, $at_ms:expr) => {{
        async {
            let mut report = Report::default();
            let mut tx = $pool.begin().await?;
            for row in $rows {
                let existing: Option<(i64, String, String, String)> = sqlx::query_as(
                    "SELECT id, role, display_name, password_hash FROM users WHERE email = $1",
                )
                .bind(&row.email)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((id, role, name, hash)) = existing else {
                    sqlx::query(INSERT_USER)
                        .bind(&row.email)
                        .bind(&row.password_hash)
                        .bind(row.role.as_str())
                        .bind(&row.name)
                        .bind($now)
                        .execute(&mut *tx)
                        .await?;
                    report.imported += 1;
                    continue;
                };
                let (role_changed, hash_changed) =
                    (role != row.role.as_str(), hash != row.password_hash);
                if !$update || (!role_changed && !hash_changed && name == row.name) {
                    report.skipped += 1;
                    continue;
                }
                sqlx::query(
                    "UPDATE users SET role = $1, display_name = $2, password_hash = $3, \
                     updated_at = $4 WHERE id = $5",
                )
                .bind(row.role.as_str())
                .bind(&row.name)
                .bind(&row.password_hash)
                .bind($now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                report.updated += 1;
                if role_changed || hash_changed {
                    let kind = if hash_changed {
                        EventKind::PasswordChanged
                    } else {
                        EventKind::RoleChanged
                    }
                    .as_str();
                    let event_id: i64 = sqlx::query_scalar(super::accounts::INSERT_EVENT)
                        .bind($now)
                        .bind(id)
                        .bind(&row.email)
                        .bind(kind)
                        .bind(super::Source::Cli.as_str())
                        .bind(0_i64)
                        .fetch_one(&mut *tx)
                        .await?;
                    sqlx::query(super::accounts::INSERT_REVOCATION)
                        .bind(id)
                        .bind($at_ms)
                        .bind(kind)
                        .bind(event_id)
                        .execute(&mut *tx)
                        .await?;
                    report.revoked.push(Applied {
                        user_id: id,
                        at_ms: $at_ms,
                        event_id,
                    });
                }
            }
            tx.commit().await?;
            Ok(report)
        }
        .await
    }};
}

impl UserDb {
    /// Stores `rows` in one transaction: a new email is inserted (enabled, with its hash as
    /// given); an existing one is skipped, or with `update` gets the row's role, name and
    /// hash — and when its role or hash changes, an audit event (`password_changed` or
    /// `role_changed`, source `cli`) and a revocation that ends its sessions, as
    /// `change_account` records them. Nothing is stored when anything fails.
    pub async fn import_users(&self, rows: &[Row], update: bool) -> Result<Report, UserError> {
        let (now, at_ms) = (unix_now(), unix_now_ms());
        let run = async {
            let result: Result<Report, UserError> = match &self.pool {
                Pool::Pg(pool) => import_rows!(pool, rows, update, now, at_ms),
                Pool::Sqlite(pool) => import_rows!(pool, rows, update, now, at_ms),
            };
            result
        };
        let report = bounded(IMPORT_TIMEOUT, run).await?;
        tracing::info!(
            imported = report.imported,
            updated = report.updated,
            skipped = report.skipped,
            "users imported"
        );
        Ok(report)
    }
}

/// What `gatehouse user import` did.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    /// The bad rows left out (`--skip-invalid`).
    pub invalid: Vec<(u64, String)>,
}

impl Outcome {
    /// `imported N, updated N, skipped (existing) N, invalid N`.
    pub fn summary(&self) -> String {
        let r = &self.report;
        format!(
            "imported {}, updated {}, skipped (existing) {}, invalid {}",
            r.imported,
            r.updated,
            r.skipped,
            self.invalid.len()
        )
    }
}

/// The input of `--file`: the file, or standard input for `-`. Must be UTF-8.
pub fn read_input(file: &std::path::Path) -> Result<String, String> {
    let bytes = if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        buf
    } else {
        std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?
    };
    String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        format!("line {line}: the input is not UTF-8")
    })
}

/// Checks `text` and, unless a row is bad and `skip_invalid` is off, imports its good rows.
/// `Err` lists every bad row (`line N: reason`) and says that nothing was imported.
pub async fn run(
    db: &UserDb,
    text: &str,
    format: Option<Format>,
    skip_invalid: bool,
    update: bool,
) -> Result<Outcome, String> {
    let parsed = parse(text, format)?;
    if !parsed.invalid.is_empty() && !skip_invalid {
        return Err(format!(
            "{}\nnothing imported: {} invalid row(s) (fix them, or pass --skip-invalid to import the {} others)",
            describe_invalid(&parsed.invalid),
            parsed.invalid.len(),
            parsed.rows.len()
        ));
    }
    let report = db
        .import_users(&parsed.rows, update)
        .await
        .map_err(|e| match e {
            UserError::Duplicate => {
                "nothing imported: a user with one of these emails was added meanwhile; run the import again".to_string()
            }
            other => format!("nothing imported: {other}"),
        })?;
    Ok(Outcome {
        report,
        invalid: parsed.invalid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCRYPT: &str = "$2b$05$uzOW5902hR5XaR5emq91DOU259wc3WPJddUqF8XC5P3MN3yubZR/O";

    async fn sqlite() -> (UserDb, std::path::PathBuf) {
        super::super::temp_sqlite("import").await
    }

    const OLD_PASSWORD: &str = "flask-era password 1";

    #[tokio::test]
    async fn the_first_login_replaces_the_hash_unless_it_changed_meanwhile() {
        let (db, path) = sqlite().await;
        let text = format!(
            "{CSV}ana@example.org,patient,Ana,{BCRYPT}\nbo@example.org,doctor,Bo,{BCRYPT}\n",
            CSV = "email,role,name,password_hash\n"
        );
        let parsed = parse(&text, None).expect("parsed");
        let report = db.import_users(&parsed.rows, false).await.expect("import");
        assert_eq!((report.imported, report.updated, report.skipped), (2, 0, 0));
        let stored = |email: &'static str| {
            let db = db.clone();
            async move { db.fetch_by_email(email).await.expect("db").expect("user") }
        };

        assert!(db
            .authenticate("ana@example.org", "wrong password")
            .await
            .expect("db")
            .is_none());
        assert_eq!(stored("ana@example.org").await.1, BCRYPT);
        assert!(db
            .authenticate("ana@example.org", OLD_PASSWORD)
            .await
            .expect("db")
            .is_some());
        let (ana, hash) = stored("ana@example.org").await;
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert_eq!(
            db.sessions_valid_after(ana.id).await.expect("db"),
            0,
            "no revocation"
        );

        // A new password set between Bo's verification and the upgrade is kept.
        let (bo, _) = stored("bo@example.org").await;
        db.set_password("bo@example.org", "a brand new password")
            .await
            .expect("set");
        db.upgrade_hash(bo.id, BCRYPT, OLD_PASSWORD).await;
        assert!(db
            .authenticate("bo@example.org", OLD_PASSWORD)
            .await
            .expect("db")
            .is_none());
        assert!(db
            .authenticate("bo@example.org", "a brand new password")
            .await
            .expect("db")
            .is_some());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn csv_rows_are_checked_with_their_line_numbers() {
        let text = format!(
            "email,role,name,password_hash\n\
             Ana@Example.org ,patient,\"Ana, María\",{BCRYPT}\n\
             \n\
             bo@example.org,nurse,Bo,{BCRYPT}\n\
             \"cy@example.org\",doctor,\"Dr \"\"Cy\"\"\nSecond line\",md5$x$y\n\
             no-at-sign,admin,,{BCRYPT}\n\
             ana@example.org,admin,,{BCRYPT}\n\
             dee@example.org,admin\n\
             \n\r\n\
             eve@example.org,admin,Eve,md5$x$y\n\
             fay@example.org,admin,Fay,$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA\n"
        );
        let parsed = parse(&text, None).expect("parsed");
        assert_eq!(parsed.rows.len(), 1);
        let ana = &parsed.rows[0];
        assert_eq!(
            (ana.line, ana.email.as_str(), ana.role, ana.name.as_str()),
            (2, "ana@example.org", Role::Patient, "Ana, María")
        );
        let lines: Vec<u64> = parsed.invalid.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [4, 5, 7, 8, 9, 12, 13], "{:?}", parsed.invalid);
        let text = describe_invalid(&parsed.invalid);
        for want in [
            "line 4: unknown role \"nurse\"",
            "line 5: display name must be at most 200 characters, without control characters",
            "line 7: email must look like",
            "line 8: email already on line 2",
            "line 9: expected 4 fields",
            "line 12: password_hash: unknown password hash format",
            "line 13: expected 4 fields (email,role,name,password_hash), found 6 (argon2 hashes hold commas: quote the field)",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        assert!(!text.contains("uzOW"), "{text}");
    }

    #[test]
    fn json_lines_are_detected_and_checked() {
        let text = format!(
            "{{\"email\":\"a@example.org\",\"role\":\"doctor\",\"name\":\"A\",\"password_hash\":\"{BCRYPT}\"}}\n\
             \n\
             {{\"email\":\"b@example.org\",\"role\":\"admin\",\"password_hash\":\"{BCRYPT}\"}}\n\
             {{\"email\":\"c@example.org\",\"role\":\"admin\",\"pasword_hash\":\"x\"}}\n\
             not json\n"
        );
        let parsed = parse(&text, None).expect("parsed");
        assert_eq!(parsed.rows.len(), 2);
        assert_eq!(parsed.rows[1].line, 3);
        assert_eq!(parsed.rows[1].name, "");
        let lines: Vec<u64> = parsed.invalid.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [4, 5]);
        // Forced CSV reading of the same text fails on its header.
        let err = parse(&text, Some(Format::Csv)).expect_err("not csv");
        assert!(err.starts_with("line 1: the CSV header"), "{err}");
    }

    #[test]
    fn a_wrong_header_or_an_empty_input_is_refused_as_a_whole() {
        let err = parse("email,name,role,password_hash\n", None).expect_err("header");
        assert!(err.contains("email,role,name,password_hash"), "{err}");
        assert_eq!(
            parse(" \n\n", None).expect_err("empty"),
            "the input is empty"
        );
        let bom =
            format!("\u{feff}email,role,name,password_hash\r\nx@example.org,admin,X,{BCRYPT}\r\n");
        let parsed = parse(&bom, None).expect("bom and crlf");
        assert_eq!(parsed.rows.len(), 1, "{:?}", parsed.invalid);
        assert_eq!("jsonl".parse::<Format>(), Ok(Format::JsonLines));
        assert!("xml".parse::<Format>().is_err());
    }
}

//! `gatehouse audit verify | export | purge`: the audit read back by an operator. The
//! database comes from `DATABASE_URL`, else the config's `auth.database_url` (as `user`
//! commands); migrations are applied first.

use super::chain::Verifier;
use super::store::{self, Filter};
use super::Stored;
use crate::auth::users::UserDb;
use crate::config::AuditConfig;
use crate::Config;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Rows read per query.
const PAGE: i64 = 1000;

/// `gatehouse audit …`
#[derive(Debug, clap::Subcommand)]
pub enum AuditAction {
    /// Check the access audit's hash chain: exit 0 with a summary, or exit 1 naming the first
    /// row that does not match.
    Verify,
    /// Print access audit rows as JSON lines, oldest first.
    Export {
        /// Only this user's rows: an email, or a user id.
        #[arg(long)]
        user: Option<String>,
        /// From this time (RFC 3339, e.g. 2026-01-31T00:00:00Z, or unix seconds), inclusive.
        #[arg(long)]
        since: Option<String>,
        /// Up to this time (same forms), inclusive.
        #[arg(long)]
        until: Option<String>,
    },
    /// Delete rows older than `audit.retention`, keeping the chain verifiable from the last
    /// deleted row's hash.
    Purge,
}

/// Runs `action`; the process's exit code.
pub fn run(config: &Path, action: AuditAction) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    let result = rt.block_on(async {
        let db = UserDb::connect(cfg.0.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        db.migrate()
            .await
            .map_err(|e| format!("migrations failed: {e}"))?;
        match action {
            AuditAction::Verify => verify(&db).await,
            AuditAction::Export { user, since, until } => {
                export(&db, user.as_deref(), since.as_deref(), until.as_deref()).await
            }
            AuditAction::Purge => purge(&db, &cfg.1).await,
        }
    });
    match result {
        Ok(msg) => {
            if !msg.is_empty() {
                println!("{msg}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("gatehouse: {msg}");
    ExitCode::FAILURE
}

/// The database URL (`DATABASE_URL` wins) and the `audit:` block (defaults without a file).
fn load(config: &Path) -> Result<(Option<String>, AuditConfig), String> {
    let file = if config.exists() {
        Some(Config::load(config).map_err(|e| format!("{}: {e}", config.display()))?)
    } else {
        None
    };
    let url = match std::env::var("DATABASE_URL") {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ => file
            .as_ref()
            .map(|c| c.auth.database_url.trim().to_string())
            .filter(|u| !u.is_empty()),
    };
    Ok((url, file.map(|c| c.audit).unwrap_or_default()))
}

async fn verify(db: &UserDb) -> Result<String, String> {
    let head = store::head(db).await?;
    let mut v = Verifier::new(head.anchor_id, &head.anchor_hash);
    loop {
        let rows = store::rows_between(db, v.last_id(), head.last_id, PAGE).await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            v.next(row)
                .map_err(|b| format!("access audit chain broken at {b}"))?;
        }
    }
    v.finish(head.last_id, &head.last_hash)
        .map_err(|b| format!("access audit chain broken at {b}"))?;
    Ok(if head.anchor_id > 0 {
        format!(
            "access audit ok: {} rows verified (rows {} to {}), from the purge anchor at row {}",
            v.checked,
            head.anchor_id + 1,
            head.last_id,
            head.anchor_id
        )
    } else {
        format!("access audit ok: {} rows verified", v.checked)
    })
}

async fn export(
    db: &UserDb,
    user: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<String, String> {
    let user_id = match user.map(str::trim) {
        None => None,
        Some(u) if !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit()) => Some(u.to_string()),
        Some(email) => match db.find_by_email(email).await.map_err(|e| e.to_string())? {
            Some(found) => Some(found.id.to_string()),
            None => return Err(format!("no user {email}")),
        },
    };
    let filter = Filter {
        user_id,
        since_ms: since.map(|t| parse_time(t, "--since")).transpose()?,
        until_ms: until.map(|t| parse_time(t, "--until")).transpose()?,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after = 0;
    loop {
        let rows = store::export_page(db, &filter, after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        for row in &rows {
            writeln!(out, "{}", json_line(row)).map_err(|e| e.to_string())?;
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(String::new())
}

async fn purge(db: &UserDb, cfg: &AuditConfig) -> Result<String, String> {
    let retention = i64::try_from(cfg.retention.0.as_millis()).unwrap_or(i64::MAX);
    let p = store::purge(db, super::now_ms().saturating_sub(retention)).await?;
    Ok(if p.rows == 0 {
        format!("nothing older than {} to purge", cfg.retention)
    } else {
        format!(
            "purged {} rows older than {}; the chain now starts after row {}",
            p.rows, cfg.retention, p.anchor_id
        )
    })
}

/// One exported row.
pub fn json_line(row: &Stored) -> String {
    let e = &row.entry;
    serde_json::json!({
        "id": row.id,
        "time": format_time(e.at_ms),
        "at_ms": e.at_ms,
        "request_id": e.request_id,
        "user_id": e.user_id,
        "role": e.role,
        "client_ip": e.client_ip,
        "method": e.method,
        "route": e.route,
        "path": e.path,
        "status": e.status,
        "upstream": e.upstream,
        "hash": row.hash,
    })
    .to_string()
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix ms as RFC 3339 in UTC with milliseconds, e.g. `2026-12-07T20:59:21.123Z`.
pub fn format_time(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, milli) = (
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000,
    );
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Unix seconds, or RFC 3339 (`2026-01-31T10:00:00Z`, `…T10:00:00.5+01:00`, or a bare date
/// `2026-01-31`, meaning its midnight UTC), as unix ms.
pub fn parse_time(text: &str, what: &str) -> Result<i64, String> {
    let t = text.trim();
    let bad = || {
        format!("{what}: {t:?} is not a time: use RFC 3339 (2026-01-31T10:00:00Z) or unix seconds")
    };
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<i64>()
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(bad);
    }
    let num = |s: &str| -> Result<i64, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<i64>().map_err(|_| bad())
    };
    let (date, time) = match t.split_once(['T', 't', ' ']) {
        Some((d, rest)) => (d, Some(rest)),
        None => (t, None),
    };
    let mut parts = date.splitn(3, '-');
    let (y, mo, d) = match (parts.next(), parts.next(), parts.next()) {
        (Some(y), Some(m), Some(d)) if y.len() == 4 && m.len() == 2 && d.len() == 2 => {
            (num(y)?, num(m)?, num(d)?)
        }
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let mut ms = days_from_civil(y, mo, d) * 86_400_000;
    if let Some(time) = time {
        let (clock, offset_ms) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
            (c, 0)
        } else if let Some(i) = time.rfind(['+', '-']) {
            let (c, off) = time.split_at(i);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (oh, om) = off[1..].split_once(':').ok_or_else(bad)?;
            let (oh, om) = (num(oh)?, num(om)?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            (c, sign * (oh * 3_600_000 + om * 60_000))
        } else {
            return Err(bad());
        };
        let (hms, frac) = match clock.split_once('.') {
            Some((a, f)) => (a, Some(f)),
            None => (clock, None),
        };
        let mut p = hms.splitn(3, ':');
        let (h, mi, s) = match (p.next(), p.next(), p.next()) {
            (Some(h), Some(m), Some(s)) if h.len() == 2 && m.len() == 2 && s.len() == 2 => {
                (num(h)?, num(m)?, num(s)?)
            }
            _ => return Err(bad()),
        };
        if h > 23 || mi > 59 || s > 60 {
            return Err(bad());
        }
        let milli = match frac {
            None => 0,
            Some(f) => {
                num(f)?;
                let digits: String = f.chars().chain("000".chars()).take(3).collect();
                num(&digits)?
            }
        };
        ms += h * 3_600_000 + mi * 60_000 + s * 1000 + milli - offset_ms;
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc_3339_or_unix_seconds() {
        assert_eq!(parse_time("0", "t"), Ok(0));
        assert_eq!(parse_time("1700000000", "t"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z", "t"), Ok(0));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", "t"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00", "t"),
            Ok(1_700_000_000_500)
        );
        assert_eq!(parse_time("2024-02-29", "t"), Ok(1_709_164_800_000));
        for bad in [
            "",
            "yesterday",
            "2023-13-01",
            "2023-11-14T22:13",
            "2023-11-14T22:13:20",
        ] {
            let e = parse_time(bad, "--since").unwrap_err();
            assert!(e.starts_with("--since:"), "{bad}: {e}");
        }
    }

    #[test]
    fn times_format_back_to_what_they_parse_from() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        for ms in [0, 951_782_400_000, 1_709_164_800_001, 4_102_444_799_999] {
            assert_eq!(parse_time(&format_time(ms), "t"), Ok(ms));
        }
    }
}

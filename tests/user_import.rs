//! The seeds' users brought over: `gatehouse user import` (the real binary, in its own
//! process) stores users with the hashes the Flask stack made — bcrypt `$2a$`/`$2b$`/`$2y$`,
//! werkzeug pbkdf2 (sha256, sha512) and scrypt, argon2id — and they sign in through the real
//! gateway with their old passwords; that first login replaces the hash with argon2id
//! without ending the session. Bad rows are listed by line and nothing is imported unless
//! `--skip-invalid`; existing emails are skipped and counted, or updated with `--update`
//! (which ends their sessions); standard input and JSON lines.
//!
//! Each flow runs on the embedded defaults (SQLite and the in-process store) and, when
//! `DATABASE_URL` and `REDIS_URL` are set (scripts/test.sh sets both), on PostgreSQL and
//! Redis.

mod common;
use common::*;

use gatehouse::auth::users::{Role, UserDb};
use std::process::Output;
use std::time::Duration;

/// The password behind every vector below.
const OLD_PASSWORD: &str = "flask-era password 1";

/// Hashes of [`OLD_PASSWORD`] made once with werkzeug 3.1.9 (`generate_password_hash`),
/// bcrypt 5.0.0 (`hashpw`; `$2y$` is the same hash under PHP's name) and argon2-cffi 25.1.0
/// (`PasswordHasher().hash`), in Python; Python is not needed to run the tests.
const VECTORS: [(&str, &str); 10] = [
    (
        "bcrypt-2b",
        "$2b$05$uzOW5902hR5XaR5emq91DOU259wc3WPJddUqF8XC5P3MN3yubZR/O",
    ),
    (
        "bcrypt-2a",
        "$2a$05$9T9UU6ASq9/agJOKAniW4e/MdAQrE9v8fr8vNg.X5MJ5nE9md2/yy",
    ),
    (
        "bcrypt-2y",
        "$2y$05$RLAz66ZjoWC7SNPzH5skOeVyszHkGs2hXV8oZ7q5KhTGihpPFrwQy",
    ),
    (
        "bcrypt-12",
        "$2b$12$rAT2foPVyLUt4NCAFhgbsuNxobDtpExSh4I/YiMLfZdjyUDy4r0Ha",
    ),
    (
        "pbkdf2-default",
        "pbkdf2:sha256:1000000$HalmbSEnUuvjtqu3$0245ff59cf86a3bf21e7c4dd9918db8cee722cc6ab7e4968950770f482686377",
    ),
    (
        "pbkdf2-sha256",
        "pbkdf2:sha256:1000$vlc6r3fetkfmZoMK$49ed491bd002eb6e43e01756e069530037091eebc486af86d097080c6ee154ef",
    ),
    (
        "pbkdf2-sha512",
        "pbkdf2:sha512:1000$TOrnV1n3Amy5XCKS$930562398233d980378acdc11c87583b6d4546fe999235b5c209fd5cdae3ebf36cf0ab43c285ccc084f106c6bd418fc8904ea80d6cdd1f7e7a3d4fee1a34eb54",
    ),
    (
        "scrypt-default",
        "scrypt:32768:8:1$EWby2WDkaRIUdfME$26debd36fb002c0550d186ba358b084b50e86a42d456f9ad4e1a135778add7bda2f9b7fbcbc133717d0fbefb7a7dbbb6760667cc6fb02c5355722f97f22c739c",
    ),
    (
        "scrypt-small",
        "scrypt:1024:8:1$Tf0MOafxBKB2U36u$cdcb9a0a55d0e053e758bbeb62cf30508b6c5a953f8a76e31d8e6203e6f2911c7c91c96f29a921ff643eb39a444094cd231ec79577830e4a539140cd50ad227d",
    ),
    (
        "argon2id",
        "$argon2id$v=19$m=65536,t=3,p=4$fXm/umjV1VNXJqrqI6yIZA$tFF/Wok9WfO9ov99qonAwesKooMlPLqmoZE5J+0gQtQ",
    ),
];

/// werkzeug `pbkdf2:sha256:1000` of [`NEW_PASSWORD`] (made with the same tools).
const NEW_PASSWORD: &str = "brand new password 2";
const NEW_HASH: &str = "pbkdf2:sha256:1000$8zOOnt3y4nozRsrV$119ecb08bd28c95c2592cd414d01de2742dc47eac2f6b1b199e2fef77dda28fe";

const HEADER: &str = "email,role,name,password_hash\n";

/// How long an ended session may take to be refused by the gateway (it polls revocations
/// every 250 ms; the bound leaves room for a loaded machine, not a speed test).
const REACH: Duration = Duration::from_secs(3);

/// A gateway on this backend's user database and store.
struct Site {
    db: String,
    redis: String,
    gw: Gw,
    _up: FakeUpstream,
    /// Last: removed after the gateway has stopped.
    _dir: Option<TempDir>,
}

impl Site {
    fn start(b: Backend) -> Option<Site> {
        let (db, redis, dir) = b.urls()?;
        block_on(async {
            let udb = UserDb::connect(Some(&db)).await.expect("connect");
            udb.migrate().await.expect("migrate");
        });
        let up = FakeUpstream::start(Behavior::Echo);
        let gw = Gw::start(&format!(
            "upstreams:\n{}\nroutes:\n  - {{name: signed_in, prefix: /private, upstream: app, auth: required}}\nauth:\n  database_url: \"{db}\"\n  redis_url: \"{redis}\"\n  jwt: {{secret: \"{SECRET}\"}}\n  login: {{max_failures_per_ip: 1000}}\n",
            upstream("app", &[up.url()], ""),
        ));
        Some(Site {
            db,
            redis,
            gw,
            _up: up,
            _dir: dir,
        })
    }

    /// `gatehouse user import ARGS` in its own process, on this site's database and store.
    fn import(&self, args: &[&str], stdin: &str) -> Output {
        let args = [&["-c", "/nonexistent/gateway.yaml", "user", "import"], args].concat();
        run_cli(
            &args,
            &[("DATABASE_URL", &self.db), ("REDIS_URL", &self.redis)],
            stdin,
        )
    }

    /// Imports `text` from a file with `args`; the output.
    fn import_file(&self, text: &str, args: &[&str]) -> Output {
        let path = temp_path("import.csv");
        std::fs::write(&path, text).expect("write import file");
        let file = path.to_str().expect("utf-8 path");
        let out = self.import(&[&["--file", file], args].concat(), "");
        let _ = std::fs::remove_file(&path);
        out
    }

    fn login_status(&self, email: &str, password: &str) -> u16 {
        login_as(self.gw.port, email, password, &[]).status
    }

    /// Signs in; the access token.
    fn sign_in(&self, email: &str, password: &str) -> String {
        let r = login_as(self.gw.port, email, password, &[]);
        assert_eq!(r.status, 200, "login {email}: {}", r.text());
        json(&r)["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    fn token_works(&self, token: &str) -> bool {
        with_bearer(self.gw.port, "/private/x", token).status == 200
    }

    /// The stored hash of `email`, read straight from the database.
    fn stored_hash(&self, email: &str) -> Option<String> {
        let sql = "SELECT password_hash FROM users WHERE email = $1";
        block_on(async {
            if self.db.starts_with("postgres") {
                let pool = sqlx::PgPool::connect(&self.db).await.expect("pg");
                sqlx::query_scalar(sql)
                    .bind(email)
                    .fetch_optional(&pool)
                    .await
                    .expect("select")
            } else {
                let pool = sqlx::SqlitePool::connect(&self.db).await.expect("sqlite");
                sqlx::query_scalar(sql)
                    .bind(email)
                    .fetch_optional(&pool)
                    .await
                    .expect("select")
            }
        })
    }

    /// When `email`'s sessions were last ended (unix ms, 0 for never).
    fn revoked_at(&self, email: &str) -> i64 {
        block_on(async {
            let udb = UserDb::connect(Some(&self.db)).await.expect("connect");
            let u = udb.find_by_email(email).await.expect("find").expect("user");
            udb.sessions_valid_after(u.id).await.expect("revocations")
        })
    }

    fn role_and_name(&self, email: &str) -> Option<(Role, String)> {
        block_on(async {
            let udb = UserDb::connect(Some(&self.db)).await.expect("connect");
            let u = udb.find_by_email(email).await.expect("find");
            u.map(|u| (u.role, u.display_name))
        })
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn assert_ok(out: &Output, summary: &str) {
    assert!(out.status.success(), "import failed: {}", stderr(out));
    assert_eq!(stdout(out), summary, "stderr: {}", stderr(out));
}

/// An email no other test (or run) uses; PostgreSQL is shared by every test.
fn email(tag: &str) -> String {
    format!("{tag}-{}@import.test", unique())
}

fn each_hash_kind_signs_in_and_becomes_argon2id(b: Backend) {
    let Some(site) = Site::start(b) else { return };
    let users: Vec<(String, &str)> = VECTORS.iter().map(|(t, h)| (email(t), *h)).collect();
    let mut csv = HEADER.to_string();
    for (i, (e, h)) in users.iter().enumerate() {
        // Mixed-case emails are stored lowercased; names and argon2 hashes (which hold
        // commas) are quoted.
        let e = e.to_uppercase();
        csv.push_str(&format!("{e},patient,\"Imported, No {i}\",\"{h}\"\n"));
    }
    let out = site.import_file(&csv, &[]);
    assert_ok(
        &out,
        "imported 10, updated 0, skipped (existing) 0, invalid 0",
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("uzOW") && !all.contains("pbkdf2:"), "{all}");

    for ((tag, hash), (e, _)) in VECTORS.iter().zip(&users) {
        assert_eq!(
            site.role_and_name(e),
            Some((Role::Patient, format!("Imported, No {}", tag_index(tag))))
        );
        // A wrong password fails and leaves the imported hash alone.
        assert_eq!(site.login_status(e, "flask-era password 2"), 401, "{tag}");
        assert_eq!(site.stored_hash(e).as_deref(), Some(*hash), "{tag}");

        let first = site.sign_in(e, OLD_PASSWORD);
        let stored = site.stored_hash(e).expect("stored");
        if *tag == "argon2id" {
            assert_eq!(stored, *hash, "an argon2id hash is kept as it is");
        } else {
            assert!(stored.starts_with("$argon2id$"), "{tag}: {stored}");
        }
        // The replacement is not a password change: the session goes on, and the same
        // password still signs in (now against argon2id); a wrong one still fails.
        let second = site.sign_in(e, OLD_PASSWORD);
        assert_eq!(site.stored_hash(e).as_deref(), Some(stored.as_str()));
        assert!(site.token_works(&first), "{tag}: first session ended");
        assert!(site.token_works(&second), "{tag}");
        assert_eq!(site.login_status(e, "flask-era password 2"), 401, "{tag}");
    }
}

fn tag_index(tag: &str) -> usize {
    VECTORS.iter().position(|(t, _)| *t == tag).expect("tag")
}

fn bad_rows_are_listed_and_nothing_is_imported(b: Backend) {
    let Some(site) = Site::start(b) else { return };
    let (good, other, dup) = (email("good"), email("other"), email("dup"));
    let bcrypt = VECTORS[0].1;
    let csv = format!(
        "{HEADER}{good},doctor,Good,{bcrypt}\n{other},nurse,Other,{bcrypt}\n{dup},admin,Dup,md5$abc$def\n\n{dup},admin,Dup,{bcrypt}\n{dup},admin,Again,{bcrypt}\nnot-an-email,admin,,{bcrypt}\n"
    );
    let out = site.import_file(&csv, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    for want in [
        "line 3: unknown role \"nurse\"",
        "line 4: password_hash: unknown password hash format",
        "line 7: email already on line 6",
        "line 8: email must look like",
        "nothing imported: 4 invalid row(s)",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
    assert!(!err.contains("uzOW") && !err.contains("abc$def"), "{err}");
    assert!(site.role_and_name(&good).is_none());
    assert_eq!(site.login_status(&good, OLD_PASSWORD), 401);

    let out = site.import_file(&csv, &["--skip-invalid"]);
    assert_ok(
        &out,
        "imported 2, updated 0, skipped (existing) 0, invalid 4",
    );
    assert!(
        stderr(&out).contains("line 3: unknown role"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        site.role_and_name(&good),
        Some((Role::Doctor, "Good".into()))
    );
    assert_eq!(site.role_and_name(&dup), Some((Role::Admin, "Dup".into())));
    assert!(site.role_and_name(&other).is_none());
    site.sign_in(&good, OLD_PASSWORD);

    // A wrong header is refused as a whole, whatever the flags.
    let out = site.import_file("email,name,role,password_hash\n", &["--skip-invalid"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("line 1: the CSV header must be exactly email,role,name,password_hash"),
        "{}",
        stderr(&out)
    );
}

fn existing_emails_are_skipped_or_updated(b: Backend) {
    let Some(site) = Site::start(b) else { return };
    let (ana, bo) = (email("ana"), email("bo"));
    let first = format!(
        "{HEADER}{ana},patient,Ana,{}\n{bo},patient,Bo,{}\n",
        VECTORS[0].1, VECTORS[5].1
    );
    assert_ok(
        &site.import_file(&first, &[]),
        "imported 2, updated 0, skipped (existing) 0, invalid 0",
    );
    let ana_token = site.sign_in(&ana, OLD_PASSWORD);
    let bo_token = site.sign_in(&bo, OLD_PASSWORD);

    // Again, with a new hash for Ana: existing emails are skipped and counted.
    let second = format!(
        "{HEADER}{ana},doctor,Ana Doctor,{NEW_HASH}\n{bo},patient,Bo,{}\n",
        VECTORS[5].1
    );
    assert_ok(
        &site.import_file(&second, &[]),
        "imported 0, updated 0, skipped (existing) 2, invalid 0",
    );
    assert_eq!(
        site.role_and_name(&ana),
        Some((Role::Patient, "Ana".into()))
    );
    assert_eq!(site.login_status(&ana, NEW_PASSWORD), 401);

    // With --update Ana gets the new role, name and hash and her sessions end; Bo (already
    // signed in, so his stored hash is argon2id now) is updated back to his imported hash,
    // which ends his sessions too; a third run changes nothing.
    assert_ok(
        &site.import_file(&second, &["--update"]),
        "imported 0, updated 2, skipped (existing) 0, invalid 0",
    );
    assert_eq!(
        site.role_and_name(&ana),
        Some((Role::Doctor, "Ana Doctor".into()))
    );
    eventually(REACH, "Ana's session ends", || {
        !site.token_works(&ana_token)
    });
    eventually(REACH, "Bo's session ends", || !site.token_works(&bo_token));
    assert_eq!(site.login_status(&ana, OLD_PASSWORD), 401);
    site.sign_in(&ana, NEW_PASSWORD);
    assert!(site
        .stored_hash(&ana)
        .is_some_and(|h| h.starts_with("$argon2id$")));
    let bo_token = site.sign_in(&bo, OLD_PASSWORD);

    let third = format!("{HEADER}{bo},patient,Bo,{}\n", VECTORS[5].1);
    let out = site.import_file(&third, &["--update"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Bo's stored hash became argon2id at his last login, so the file's differs again.
    assert_eq!(
        stdout(&out),
        "imported 0, updated 1, skipped (existing) 0, invalid 0"
    );
    eventually(REACH, "Bo's new session ends", || {
        !site.token_works(&bo_token)
    });
    let name_only = format!("{HEADER}{bo},patient,Bo Renamed,\"{}\"\n", VECTORS[5].1);
    let bo_token = site.sign_in(&bo, OLD_PASSWORD);
    let rehashed = site.stored_hash(&bo).expect("hash");
    let name_only = name_only.replace(VECTORS[5].1, &rehashed);
    let revoked_before = site.revoked_at(&bo);
    assert!(revoked_before > 0);
    assert_ok(
        &site.import_file(&name_only, &["--update"]),
        "imported 0, updated 1, skipped (existing) 0, invalid 0",
    );
    // A new display name alone ends no session: no revocation is recorded.
    assert_eq!(site.revoked_at(&bo), revoked_before);
    assert!(site.token_works(&bo_token));
    assert_eq!(
        site.role_and_name(&bo),
        Some((Role::Patient, "Bo Renamed".into()))
    );
}

fn json_lines_from_standard_input(b: Backend) {
    let Some(site) = Site::start(b) else { return };
    let (cy, di) = (email("cy"), email("di"));
    let input = format!(
        "{{\"email\":\"{cy}\",\"role\":\"institution\",\"name\":\"Cy\",\"password_hash\":\"{}\"}}\n\n{{\"email\":\"{di}\",\"role\":\"admin\",\"password_hash\":\"{}\"}}\n",
        VECTORS[7].1, VECTORS[2].1
    );
    let out = site.import(&["--file", "-"], &input);
    assert_ok(
        &out,
        "imported 2, updated 0, skipped (existing) 0, invalid 0",
    );
    assert_eq!(
        site.role_and_name(&cy),
        Some((Role::Institution, "Cy".into()))
    );
    assert_eq!(site.role_and_name(&di), Some((Role::Admin, String::new())));
    // The portal login replaces the imported hash too.
    let r = post_json(
        site.gw.port,
        "/api/web/auth/institution/login",
        &serde_json::json!({"email": cy, "password": OLD_PASSWORD}),
        &[API_JSON],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(site
        .stored_hash(&cy)
        .is_some_and(|h| h.starts_with("$argon2id$")));
    site.sign_in(&cy, OLD_PASSWORD);
    site.sign_in(&di, OLD_PASSWORD);

    // A JSON line with a misspelt key is a bad row with its line number.
    let bad = format!(
        "{{\"email\":\"{}\",\"role\":\"admin\",\"pasword_hash\":\"x\"}}\n",
        email("ed")
    );
    let out = site.import(&["--file", "-", "--format", "jsonl"], &bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("line 1: not a JSON object"),
        "{}",
        stderr(&out)
    );
}

on_both_backends!(
    each_hash_kind_signs_in_and_becomes_argon2id,
    bad_rows_are_listed_and_nothing_is_imported,
    existing_emails_are_skipped_or_updated,
    json_lines_from_standard_input,
);

#[test]
fn a_missing_file_or_an_unknown_format_is_refused() {
    let dir = TempDir::new("import");
    let db = dir.sqlite_url();
    let out = run_cli(
        &[
            "-c",
            "/nonexistent/gateway.yaml",
            "user",
            "import",
            "--file",
            "/nonexistent/users.csv",
        ],
        &[("DATABASE_URL", &db)],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read /nonexistent/users.csv"),
        "{}",
        stderr(&out)
    );
    let out = run_cli(
        &[
            "-c",
            "/nonexistent/gateway.yaml",
            "user",
            "import",
            "--file",
            "-",
            "--format",
            "xml",
        ],
        &[("DATABASE_URL", &db)],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown format \"xml\""),
        "{}",
        stderr(&out)
    );
}

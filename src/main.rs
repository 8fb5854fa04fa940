//! The `gatehouse` command line: `run` (default), `check`, `--version`.

use clap::{Parser, Subcommand};
use gatehouse::{Config, RunOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the proxy path makes ~100 small allocations per request
/// (most of them Pingora's), and glibc kept every freed byte of idle connections resident.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "A programmable edge gateway on Pingora"
)]
struct Cli {
    /// Config file.
    #[arg(
        short,
        long,
        global = true,
        env = "GATEHOUSE_CONFIG",
        default_value = "gateway.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run {
        /// Take over the listening sockets of a running gatehouse (zero-downtime upgrade).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Load, validate and build the config without binding sockets; exit 1 listing every problem.
    Check,
    /// Apply pending database migrations (database from DATABASE_URL, else the config).
    Migrate,
    /// Manage users (database from DATABASE_URL, else the config).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// The access audit: verify its hash chain, export it, purge it (database from
    /// DATABASE_URL, else the config).
    Audit {
        #[command(subcommand)]
        action: gatehouse::audit::cli::AuditAction,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Add a user; the password is read from standard input (first line).
    Add {
        #[arg(long)]
        email: String,
        /// patient, doctor, institution or admin.
        #[arg(long)]
        role: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List users.
    List,
    /// Disable a user: they can no longer sign in, and every session of theirs ends.
    Disable {
        #[arg(long)]
        email: String,
    },
    /// Set a user's password, read from standard input (first line); their sessions end.
    SetPassword {
        #[arg(long)]
        email: String,
    },
    /// Change a user's role; their sessions end (tokens carry the role).
    SetRole {
        #[arg(long)]
        email: String,
        /// patient, doctor, institution or admin.
        #[arg(long)]
        role: String,
    },
    /// Delete a user; their sessions end (the audit trail keeps their id).
    Delete {
        #[arg(long)]
        email: String,
    },
    /// End every session of a user, changing nothing else.
    RevokeSessions {
        #[arg(long)]
        email: String,
    },
    /// Import users with their password hashes (bcrypt, werkzeug pbkdf2/scrypt, argon2id):
    /// CSV with the header email,role,name,password_hash, or JSON lines. Bad rows are listed
    /// by line and nothing is imported unless --skip-invalid; existing emails are skipped
    /// (updated with --update, which ends their sessions when the role or hash changes).
    Import {
        /// The file, or - for standard input.
        #[arg(long)]
        file: PathBuf,
        /// csv or jsonl (default: JSON lines when the first line starts with `{`, else CSV).
        #[arg(long)]
        format: Option<gatehouse::auth::users::import::Format>,
        /// Import the good rows even when some are bad (they are listed on stderr).
        #[arg(long)]
        skip_invalid: bool,
        /// Replace the role, name and hash of existing users instead of skipping them.
        #[arg(long)]
        update: bool,
    },
    /// A user's second factor (TOTP): enroll, recovery-codes, reset.
    Mfa {
        #[command(subcommand)]
        action: gatehouse::auth::mfa::cli::MfaAction,
    },
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("gatehouse: {msg}");
    ExitCode::FAILURE
}

fn read_password() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        return Err(
            "no password on stdin (pipe it in: echo \"$PW\" | gatehouse user add ...)".into(),
        );
    }
    Ok(pw)
}

/// The database URL for CLI commands: DATABASE_URL wins, else the config's.
fn database_url(config: &std::path::Path) -> Result<Option<String>, String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.trim().is_empty() {
            return Ok(Some(url));
        }
    }
    if config.exists() {
        let c = Config::load(config).map_err(|e| format!("{}: {e}", config.display()))?;
        let url = c.auth.database_url.trim().to_string();
        return Ok((!url.is_empty()).then_some(url));
    }
    Ok(None)
}

/// The session store URL for CLI commands: REDIS_URL wins, else the config's (empty: the
/// in-process store of a running gateway, which the CLI cannot reach).
fn redis_url(config: &std::path::Path) -> Result<String, String> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Ok(url.trim().to_string());
    }
    Ok(auth_config(config)?.redis_url.trim().to_string())
}

/// The config's `auth` section (defaults when the file does not exist).
fn auth_config(config: &std::path::Path) -> Result<gatehouse::config::AuthConfig, String> {
    if !config.exists() {
        return Ok(Default::default());
    }
    Config::load(config)
        .map(|c| c.auth)
        .map_err(|e| format!("{}: {e}", config.display()))
}

/// The password policy of `auth.passwords` (the defaults when the file does not exist): the
/// same check as self-registration's.
fn password_policy(
    config: &std::path::Path,
) -> Result<gatehouse::auth::users::PasswordPolicy, String> {
    auth_config(config).map(|a| gatehouse::auth::users::PasswordPolicy::from_config(&a.passwords))
}

/// An account change that ends the user's sessions: applied and recorded in the database in
/// one transaction (the gateways read it and end the sessions in their stores within about
/// a second), then, with a shared Redis store, the sessions are ended from here at once and
/// counted. When Redis cannot be reached the command says exactly what was applied and
/// exits 1.
fn account_command(
    config: &std::path::Path,
    email: String,
    change: gatehouse::auth::users::AccountChange,
    done: &'static str,
) -> ExitCode {
    use gatehouse::auth::users::Source;
    let (auth, redis) = match auth_config(config).and_then(|a| Ok((a, redis_url(config)?))) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    db_command(config, async move |db| {
        let applied = db
            .change_account(&email, change, Source::Cli)
            .await
            .map_err(|e| match e {
                gatehouse::auth::users::UserError::NotFound => format!("no user {email}"),
                other => other.to_string(),
            })?;
        let ended = gatehouse::auth::end_sessions_in_shared_store(
            &auth,
            &redis,
            applied.user_id,
            applied.at_ms,
        )
        .await;
        match ended {
            Ok(None) => Ok(format!(
                "{done} {email}; its sessions end on the running gateway within 1 s (in-process session store)"
            )),
            Ok(Some(n)) => {
                if let Err(e) = db.add_sessions_ended(applied.event_id, n).await {
                    eprintln!("gatehouse: warning: {n} sessions ended but not counted in auth_events: {e}");
                }
                Ok(format!(
                    "{done} {email}; {n} sessions ended here (running gateways end any other within 1 s)"
                ))
            }
            Err(e) => Err(format!(
                "{done} {email} in the database, and the change is recorded for the gateways (they end its sessions as soon as they reach Redis); but its sessions could not be ended in Redis from here: {e}"
            )),
        }
    })
}

fn db_command(
    config: &std::path::Path,
    f: impl AsyncFnOnce(gatehouse::auth::users::UserDb) -> Result<String, String>,
) -> ExitCode {
    let url = match database_url(config) {
        Ok(u) => u,
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
        let db = gatehouse::auth::users::UserDb::connect(url.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        db.migrate()
            .await
            .map_err(|e| format!("migrations failed: {e}"))?;
        f(db).await
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

fn user_command(config: &std::path::Path, action: UserAction) -> ExitCode {
    use gatehouse::auth::users::{AccountChange, Role};
    match action {
        UserAction::Add { email, role, name } => {
            let role: Role = match role.parse() {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let pw = match read_password() {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            if let Err(e) = password_policy(config).and_then(|p| {
                p.check(&pw, &email, &name)
                    .map_err(|w| format!("refused: {w}"))
            }) {
                return fail(e);
            }
            db_command(config, async move |db| {
                let u = db
                    .add_user(&email, &pw, role, &name)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!(
                    "added user {} ({}, id {})",
                    u.email,
                    u.role.as_str(),
                    u.id
                ))
            })
        }
        UserAction::List => db_command(config, async |db| {
            let users = db.list_users().await.map_err(|e| e.to_string())?;
            let mut out = format!(
                "{:<6} {:<32} {:<12} {:<8} NAME",
                "ID", "EMAIL", "ROLE", "STATUS"
            );
            for u in users {
                out.push_str(&format!(
                    "\n{:<6} {:<32} {:<12} {:<8} {}",
                    u.id,
                    u.email,
                    u.role.as_str(),
                    if u.disabled { "disabled" } else { "active" },
                    u.display_name
                ));
            }
            Ok(out)
        }),
        UserAction::Disable { email } => {
            account_command(config, email, AccountChange::Disable, "disabled")
        }
        UserAction::SetPassword { email } => {
            let pw = match read_password() {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            let policy = match password_policy(config) {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            // The policy compares the password with the account's name: read it first.
            let checked = db_command(config, async |db| {
                let user = db
                    .find_by_email(&email)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("no user {email}"))?;
                policy
                    .check(&pw, &user.email, &user.display_name)
                    .map_err(|w| format!("refused: {w}"))?;
                Ok(String::new())
            });
            if checked != ExitCode::SUCCESS {
                return checked;
            }
            let change = AccountChange::SetPassword(pw);
            account_command(config, email, change, "password set for")
        }
        UserAction::SetRole { email, role } => {
            let role: Role = match role.parse() {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            account_command(
                config,
                email,
                AccountChange::SetRole(role),
                "role changed for",
            )
        }
        UserAction::Delete { email } => {
            account_command(config, email, AccountChange::Delete, "deleted")
        }
        UserAction::RevokeSessions { email } => {
            let change = AccountChange::RevokeSessions;
            account_command(config, email, change, "sessions revoked for")
        }
        UserAction::Import {
            file,
            format,
            skip_invalid,
            update,
        } => {
            use gatehouse::auth::users::import;
            let input = import::read_input(&file)
                .and_then(|text| Ok((text, auth_config(config)?, redis_url(config)?)));
            let (text, auth, redis) = match input {
                Ok(v) => v,
                Err(e) => return fail(e),
            };
            db_command(config, async move |db| {
                let done = import::run(&db, &text, format, skip_invalid, update).await?;
                if !done.invalid.is_empty() {
                    eprintln!("{}", import::describe_invalid(&done.invalid));
                }
                // Updated users' sessions end as after `set-password`: here in a shared
                // store, and by every gateway from the recorded revocations.
                let mut unreached = None;
                for a in &done.report.revoked {
                    let ended = gatehouse::auth::end_sessions_in_shared_store(
                        &auth, &redis, a.user_id, a.at_ms,
                    );
                    match ended.await {
                        Ok(Some(n)) => drop(db.add_sessions_ended(a.event_id, n).await),
                        Ok(None) => {}
                        Err(e) => unreached = Some(e),
                    }
                }
                match unreached {
                    None => Ok(done.summary()),
                    Some(e) => Err(format!("{}; but the sessions of updated users could not be ended in Redis from here (the gateways end them as soon as they reach it): {e}", done.summary())),
                }
            })
        }
        UserAction::Mfa { action } => {
            use gatehouse::auth::mfa::cli::{self as mfa, MfaAction};
            match action {
                MfaAction::Reset { email } => {
                    let change = AccountChange::ResetMfa;
                    account_command(config, email, change, "second factor removed for")
                }
                MfaAction::Enroll { email } => match auth_config(config) {
                    Ok(auth) => db_command(config, async move |db| {
                        mfa::enroll(&db, &auth, &email).await
                    }),
                    Err(e) => fail(e),
                },
                MfaAction::RecoveryCodes { email } => db_command(config, async move |db| {
                    mfa::recovery_codes(&db, &email).await
                }),
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run { upgrade: false }) {
        Command::Check => match Config::load(&cli.config).and_then(|c| {
            // Allowed but risky settings (e.g. `tls.verify: false`): said, not refused.
            for w in gatehouse::config::validate::warnings(&c) {
                eprintln!("{}: warning: {w}", cli.config.display());
            }
            gatehouse::check(c)
        }) {
            Ok(snap) => {
                println!(
                    "{}: ok ({} routes, {} upstreams)",
                    cli.config.display(),
                    snap.routes.len(),
                    snap.pools.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid configuration", cli.config.display());
                for p in &e.problems {
                    eprintln!("  {p}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Migrate => db_command(&cli.config, async |db| {
            Ok(format!("migrations applied ({})", db.backend()))
        }),
        Command::User { action } => user_command(&cli.config, action),
        Command::Audit { action } => gatehouse::audit::cli::run(&cli.config, action),
        Command::Run { upgrade } => {
            let config = match Config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: invalid configuration", cli.config.display());
                    for p in &e.problems {
                        eprintln!("  {p}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            gatehouse::logging::init(&config.server.log);
            tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %cli.config.display(), "starting gatehouse");
            let opts = RunOptions {
                upgrade,
                config_path: Some(cli.config.clone()),
                sole_server: true,
            };
            match gatehouse::run(config, opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    for p in &e.problems {
                        tracing::error!("{p}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}

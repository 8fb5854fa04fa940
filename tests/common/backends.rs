//! Temp files and directories, and where a test's users and sessions live: the embedded
//! defaults (a fresh SQLite file and the in-process store) or PostgreSQL and Redis
//! (`DATABASE_URL`, `REDIS_URL`: scripts/test.sh starts throwaway ones), and
//! `on_both_backends!`, which runs a flow on each.

use super::services::env_url;
use super::users::unique;
use std::path::{Path, PathBuf};

/// A path under the system temp dir that no other test (or run) uses; nothing is created.
pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("gatehouse-{}-{name}", unique()))
}

/// A file of this repository (`rel` from the crate root).
pub fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A fresh SQLite database URL in the temp folder (the file is created on first use).
pub fn temp_db_url(tag: &str) -> String {
    format!(
        "sqlite://{}",
        temp_path(&format!("{tag}-users.db")).display()
    )
}

/// A directory under the system temp dir, removed with its contents on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = temp_path(name);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A SQLite database in this directory.
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.0.join("users.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where users and sessions live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file and the in-process store.
    Embedded,
    /// `DATABASE_URL` (PostgreSQL, shared by every test: unique emails) and `REDIS_URL`.
    PostgresRedis,
}

impl Backend {
    /// `(database_url, redis_url, the SQLite file's directory)`, or `None` (with a note)
    /// when the services are not set.
    pub fn urls(self) -> Option<(String, String, Option<TempDir>)> {
        match self {
            Backend::Embedded => {
                let dir = TempDir::new("db");
                Some((dir.sqlite_url(), String::new(), Some(dir)))
            }
            Backend::PostgresRedis => match (env_url("DATABASE_URL"), env_url("REDIS_URL")) {
                (Some(db), Some(redis)) => Some((db, redis, None)),
                _ => {
                    eprintln!(
                        "note: DATABASE_URL and REDIS_URL are not both set; skipping the \
                             PostgreSQL + Redis variant (scripts/test.sh starts both)"
                    );
                    None
                }
            },
        }
    }
}

/// For each flow `f(Backend)`, a module `f` with one test per backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($flow:ident),* $(,)?) => {$(
        mod $flow {
            #[test]
            fn sqlite_and_memory_store() {
                super::$flow(super::Backend::Embedded)
            }
            #[test]
            fn postgres_and_redis() {
                super::$flow(super::Backend::PostgresRedis)
            }
        }
    )*};
}

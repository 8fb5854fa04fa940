//! The audit tables in the users database: append a batch (extending the chain under a lock
//! on the head row), read rows back, purge past the retention leaving an anchor.
//!
//! Appends from several gateway processes sharing one database take turns: the transaction
//! starts by updating the one `access_audit_head` row (`UPDATE … RETURNING`), which takes its
//! row lock in PostgreSQL and the database's write lock in SQLite, then reads the chain's end
//! from it, inserts the rows with ids `last_id + 1 …` and their hashes, and moves the head.
//! A second writer waits for the first to commit and then continues from its end: the chain
//! never forks.

use super::chain;
use super::{Entry, Stored};
use crate::auth::users::{DbPool, UserDb};
use std::time::Duration;

/// Upper bound on one audit transaction, so a silent database cannot hang the writer.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

const LOCK_HEAD: &str = "UPDATE access_audit_head SET last_id = last_id WHERE singleton = 1 \
     RETURNING last_id, last_hash, anchor_id, anchor_hash";
const READ_HEAD: &str =
    "SELECT last_id, last_hash, anchor_id, anchor_hash FROM access_audit_head WHERE singleton = 1";
const MOVE_HEAD: &str =
    "UPDATE access_audit_head SET last_id = $1, last_hash = $2 WHERE singleton = 1";
const MOVE_ANCHOR: &str =
    "UPDATE access_audit_head SET anchor_id = $1, anchor_hash = $2 WHERE singleton = 1";
const INSERT: &str = "INSERT INTO access_audit \
     (id, at_ms, request_id, user_id, role, client_ip, method, route, path, status, upstream, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
macro_rules! columns {
    () => {
        "SELECT id, at_ms, request_id, user_id, role, client_ip, method, route, path, status, \
         upstream, hash FROM access_audit "
    };
}
const ROWS_BETWEEN: &str = concat!(
    columns!(),
    "WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3"
);
const EXPORT_ALL: &str = concat!(
    columns!(),
    "WHERE id > $1 AND at_ms >= $2 AND at_ms <= $3 ORDER BY id LIMIT $4"
);
const EXPORT_USER: &str = concat!(
    columns!(),
    "WHERE id > $1 AND at_ms >= $2 AND at_ms <= $3 AND user_id = $4 ORDER BY id LIMIT $5"
);

/// The chain's end and the purge anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub last_id: i64,
    pub last_hash: String,
    /// Rows up to this id were purged; `anchor_hash` is the hash of that row.
    pub anchor_id: i64,
    pub anchor_hash: String,
}

/// What a purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub rows: u64,
    /// The new anchor (the last purged row).
    pub anchor_id: i64,
}

type HeadRow = (i64, String, i64, String);
type Row = (
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    i32,
    Option<String>,
    String,
);

fn head_of((last_id, last_hash, anchor_id, anchor_hash): HeadRow) -> Head {
    Head {
        last_id,
        last_hash,
        anchor_id,
        anchor_hash,
    }
}

fn stored(r: Row) -> Stored {
    let (id, at_ms, request_id, user_id, role, client_ip, method, route, path, status, up, hash) =
        r;
    Stored {
        id,
        entry: Entry {
            at_ms,
            request_id,
            user_id,
            role,
            client_ip,
            method,
            route,
            path,
            status: u16::try_from(status).unwrap_or(0),
            upstream: up,
        },
        hash,
    }
}

/// Runs `body` against whichever pool `db` has (each arm type-checked on its own), within
/// [`OPERATION_TIMEOUT`]; errors become their text (never holding the database URL).
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        async {
            let run = async {
                let result: Result<_, sqlx::Error> = match $db.pool() {
                    DbPool::Pg($pool) => $body,
                    DbPool::Sqlite($pool) => $body,
                };
                result
            };
            match tokio::time::timeout(OPERATION_TIMEOUT, run).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "no answer within {} ms",
                    OPERATION_TIMEOUT.as_millis()
                )),
            }
        }
    };
}

/// Appends `entries` to the chain in one transaction; the id of the last one.
pub async fn append(db: &UserDb, entries: &[Entry]) -> Result<i64, String> {
    on_pool!(db, |pool| {
        let mut tx = pool.begin().await?;
        let head: HeadRow = sqlx::query_as(LOCK_HEAD).fetch_one(&mut *tx).await?;
        let (mut id, mut prev) = (head.0, head.1);
        for e in entries {
            id += 1;
            let hash = chain::hash(&prev, id, e);
            sqlx::query(INSERT)
                .bind(id)
                .bind(e.at_ms)
                .bind(&e.request_id)
                .bind(e.user_id.as_deref())
                .bind(e.role.as_deref())
                .bind(e.client_ip.as_deref())
                .bind(&e.method)
                .bind(&e.route)
                .bind(&e.path)
                .bind(i32::from(e.status))
                .bind(e.upstream.as_deref())
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
            prev = hash;
        }
        sqlx::query(MOVE_HEAD)
            .bind(id)
            .bind(&prev)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    })
    .await
}

/// Checks that a row could be appended now (the head can be locked and a row inserted),
/// changing nothing: the transaction is rolled back.
pub async fn probe(db: &UserDb) -> Result<(), String> {
    on_pool!(db, |pool| {
        let mut tx = pool.begin().await?;
        let head: HeadRow = sqlx::query_as(LOCK_HEAD).fetch_one(&mut *tx).await?;
        sqlx::query(INSERT)
            .bind(head.0 + 1)
            .bind(0_i64)
            .bind("probe")
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind("GET")
            .bind("probe")
            .bind("/")
            .bind(0_i32)
            .bind(None::<&str>)
            .bind(chain::GENESIS)
            .execute(&mut *tx)
            .await?;
        tx.rollback().await?;
        Ok(())
    })
    .await
}

/// The chain's end and the purge anchor.
pub async fn head(db: &UserDb) -> Result<Head, String> {
    on_pool!(db, |pool| {
        let h: HeadRow = sqlx::query_as(READ_HEAD).fetch_one(pool).await?;
        Ok(head_of(h))
    })
    .await
}

/// Rows with `after < id <= up_to`, oldest first, at most `limit`.
pub async fn rows_between(
    db: &UserDb,
    after: i64,
    up_to: i64,
    limit: i64,
) -> Result<Vec<Stored>, String> {
    on_pool!(db, |pool| {
        let rows: Vec<Row> = sqlx::query_as(ROWS_BETWEEN)
            .bind(after)
            .bind(up_to)
            .bind(limit)
            .fetch_all(pool)
            .await?;
        Ok(rows.into_iter().map(stored).collect())
    })
    .await
}

/// What `audit export` selects.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this user's rows (`users.id`).
    pub user_id: Option<String>,
    /// Unix ms, inclusive.
    pub since_ms: Option<i64>,
    /// Unix ms, inclusive.
    pub until_ms: Option<i64>,
}

/// Rows after `after` matching `f`, oldest first, at most `limit`.
pub async fn export_page(
    db: &UserDb,
    f: &Filter,
    after: i64,
    limit: i64,
) -> Result<Vec<Stored>, String> {
    let (since, until) = (
        f.since_ms.unwrap_or(i64::MIN),
        f.until_ms.unwrap_or(i64::MAX),
    );
    on_pool!(db, |pool| {
        let rows: Vec<Row> = match &f.user_id {
            None => {
                sqlx::query_as(EXPORT_ALL)
                    .bind(after)
                    .bind(since)
                    .bind(until)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
            Some(user) => {
                sqlx::query_as(EXPORT_USER)
                    .bind(after)
                    .bind(since)
                    .bind(until)
                    .bind(user)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(stored).collect())
    })
    .await
}

/// Deletes the oldest rows, up to (not including) the first one at or after `before_ms`, and
/// records the last deleted row's hash as the anchor verification starts from. Rows are
/// deleted as a prefix of the chain only, so a row newer than `before_ms` is never deleted
/// (an older one written after it by another gateway waits for a later purge).
pub async fn purge(db: &UserDb, before_ms: i64) -> Result<Purged, String> {
    on_pool!(db, |pool| {
        let mut tx = pool.begin().await?;
        let head: HeadRow = sqlx::query_as(LOCK_HEAD).fetch_one(&mut *tx).await?;
        let (last_id, anchor_id) = (head.0, head.2);
        let first_kept: Option<i64> =
            sqlx::query_scalar("SELECT MIN(id) FROM access_audit WHERE at_ms >= $1")
                .bind(before_ms)
                .fetch_one(&mut *tx)
                .await?;
        let new_anchor = first_kept.map_or(last_id, |id| id - 1);
        if new_anchor <= anchor_id {
            tx.rollback().await?;
            return Ok(Purged {
                rows: 0,
                anchor_id,
            });
        }
        let hash: Option<String> =
            sqlx::query_scalar("SELECT hash FROM access_audit WHERE id = $1")
                .bind(new_anchor)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(hash) = hash else {
            tx.rollback().await?;
            return Err(sqlx::Error::Protocol(format!(
                "row {new_anchor} is missing: the chain is broken there (run `gatehouse audit verify`); nothing purged"
            )));
        };
        let done = sqlx::query("DELETE FROM access_audit WHERE id <= $1")
            .bind(new_anchor)
            .execute(&mut *tx)
            .await?;
        sqlx::query(MOVE_ANCHOR)
            .bind(new_anchor)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Purged {
            rows: done.rows_affected(),
            anchor_id: new_anchor,
        })
    })
    .await
}

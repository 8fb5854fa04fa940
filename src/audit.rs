//! The access audit: who accessed what through the gateway, kept tamper-evident.
//!
//! Routes and pages with `audit: true` or `audit: "required"` have each finished request
//! recorded (the lane's `logging` phase builds an [`Entry`]): time, request id, user id and
//! role, client address, method, route, path without its query string, status, and the
//! backend that answered. Never a body, query string, cookie or token.
//!
//! - `sink`: the bounded queue the request path hands rows to (never waiting), the health
//!   flag `audit: required` routes consult, and the one writer task per process that appends
//!   batches, retries, purges past `audit.retention`, and counts what it drops;
//! - `chain`: each row's hash, chained to the previous one, and the check of a chain;
//! - `store`: the `access_audit` and `access_audit_head` tables in the users database
//!   (PostgreSQL or SQLite): appends under a lock on the head row, so several gateways
//!   sharing one database extend one chain; purges that leave an anchor to verify from;
//! - `cli`: `gatehouse audit verify | export | purge`.
//!
//! Layer: above `config`, `metrics` and `auth` (it writes to the users database); must not
//! import `state`, `pages`, `edge`, `plan` or `proxy`.

pub mod chain;
pub mod cli;
pub mod sink;
pub mod store;

pub use sink::{AuditService, AuditSink};

/// One audited request, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Unix milliseconds when the request finished.
    pub at_ms: i64,
    pub request_id: String,
    /// The token's subject (`users.id`); `None` for anonymous requests.
    pub user_id: Option<String>,
    pub role: Option<String>,
    pub client_ip: Option<String>,
    pub method: String,
    /// The route's name, or the page's path.
    pub route: String,
    /// The normalised path, without the query string.
    pub path: String,
    pub status: u16,
    /// The backend that answered (`host:port`); `None` for the gateway's own answers.
    pub upstream: Option<String>,
}

/// A row as stored: its sequence id and chained hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: i64,
    pub entry: Entry,
    pub hash: String,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    crate::auth::users::unix_now_ms()
}

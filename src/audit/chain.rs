//! The hash chain of the access audit: what a row's hash covers, and the check of a run of
//! rows against it. Pure: no I/O.
//!
//! `hash = hex(SHA-256(prev_hash || canonical(row)))`, where `prev_hash` is the previous
//! row's hash as its 64 hex characters ([`GENESIS`] before the first row, or the purge anchor
//! after a purge) and `canonical(row)` is the JSON array
//! `[id, at_ms, request_id, user_id, role, client_ip, method, route, path, status, upstream]`
//! (absent values are `null`) as `serde_json` writes it: compact, strings escaped one way.
//! The sequence id is inside the hash, so a row cannot be moved, and ids have no gaps, so a
//! deleted row shows twice: as a gap, and as the next row's hash not matching.

use super::{Entry, Stored};
use sha2::{Digest, Sha256};

/// The hash before the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The bytes a row's hash covers after the previous hash.
pub fn canonical(id: i64, e: &Entry) -> Vec<u8> {
    let v = serde_json::json!([
        id,
        e.at_ms,
        e.request_id,
        e.user_id,
        e.role,
        e.client_ip,
        e.method,
        e.route,
        e.path,
        e.status,
        e.upstream,
    ]);
    v.to_string().into_bytes()
}

/// The hash of row `id` holding `e`, after a row whose hash is `prev`.
pub fn hash(prev: &str, id: i64, e: &Entry) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(canonical(id, e));
    hex::encode(h.finalize())
}

/// Where a chain stops matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The first row that does not match (for a missing row: the row after the gap; for
    /// rows missing at the end: the last id the head names).
    pub id: i64,
    pub reason: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "row {}: {}", self.id, self.reason)
    }
}

/// Checks rows in id order, page by page: the running state between pages.
#[derive(Debug, Clone)]
pub struct Verifier {
    prev_id: i64,
    prev_hash: String,
    /// Rows checked so far.
    pub checked: u64,
}

impl Verifier {
    /// Starts after the anchor (`0` and [`GENESIS`] when nothing was purged).
    pub fn new(anchor_id: i64, anchor_hash: &str) -> Verifier {
        Verifier {
            prev_id: anchor_id,
            prev_hash: anchor_hash.to_string(),
            checked: 0,
        }
    }

    /// The last id checked (the anchor before any row).
    pub fn last_id(&self) -> i64 {
        self.prev_id
    }

    /// Checks the next row.
    pub fn next(&mut self, row: &Stored) -> Result<(), Break> {
        let fail = |reason: String| Err(Break { id: row.id, reason });
        if row.id != self.prev_id + 1 {
            return fail(if row.id <= self.prev_id {
                format!("out of order after row {}", self.prev_id)
            } else if self.prev_id + 1 == row.id - 1 {
                format!("the row before it ({}) is missing", self.prev_id + 1)
            } else {
                format!("rows {} to {} are missing", self.prev_id + 1, row.id - 1)
            });
        }
        let expected = hash(&self.prev_hash, row.id, &row.entry);
        if expected != row.hash {
            return fail("its hash does not match its contents and the row before it".into());
        }
        self.prev_id = row.id;
        self.prev_hash = expected;
        self.checked += 1;
        Ok(())
    }

    /// Checks that the rows ended where the head says the chain ends.
    pub fn finish(&self, last_id: i64, last_hash: &str) -> Result<(), Break> {
        if self.prev_id != last_id {
            let reason = if self.prev_id < last_id {
                format!(
                    "missing: the chain's head names row {last_id} but the rows end at {}",
                    self.prev_id
                )
            } else {
                format!("after the chain's head (row {last_id})")
            };
            return Err(Break {
                id: last_id.max(self.prev_id),
                reason,
            });
        }
        if self.prev_hash != last_hash {
            return Err(Break {
                id: last_id,
                reason: "its hash is not the one the chain's head recorded".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(status: u16) -> Entry {
        Entry {
            at_ms: 1_700_000_000_000,
            request_id: "req-1".into(),
            user_id: Some("7".into()),
            role: Some("doctor".into()),
            client_ip: Some("10.0.0.1".into()),
            method: "GET".into(),
            route: "doctors".into(),
            path: "/api/v1/doctors/7".into(),
            status,
            upstream: Some("127.0.0.1:8000".into()),
        }
    }

    fn chain(n: i64) -> Vec<Stored> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|id| {
                let e = entry(200 + id as u16);
                let h = hash(&prev, id, &e);
                prev = h.clone();
                Stored {
                    id,
                    entry: e,
                    hash: h,
                }
            })
            .collect()
    }

    fn verify(rows: &[Stored], anchor: (i64, &str), head: (i64, &str)) -> Result<u64, Break> {
        let mut v = Verifier::new(anchor.0, anchor.1);
        for r in rows {
            v.next(r)?;
        }
        v.finish(head.0, head.1)?;
        Ok(v.checked)
    }

    #[test]
    fn a_hash_covers_every_field_and_the_previous_hash() {
        let e = entry(200);
        let h = hash(GENESIS, 1, &e);
        assert_eq!(h.len(), 64);
        assert_eq!(h, hash(GENESIS, 1, &e), "deterministic");
        assert_ne!(h, hash(GENESIS, 2, &e), "the id is covered");
        assert_ne!(h, hash(&h, 1, &e), "the previous hash is covered");
        let mut other = e.clone();
        other.user_id = None;
        assert_ne!(h, hash(GENESIS, 1, &other));
        let mut other = e.clone();
        other.path.push('x');
        assert_ne!(h, hash(GENESIS, 1, &other));
        // Field boundaries are unambiguous: moving a character between fields changes it.
        let (mut a, mut b) = (e.clone(), e.clone());
        a.method = "GETx".into();
        a.route = "doctors".into();
        b.method = "GET".into();
        b.route = "xdoctors".into();
        assert_ne!(hash(GENESIS, 1, &a), hash(GENESIS, 1, &b));
    }

    #[test]
    fn an_intact_chain_verifies() {
        let rows = chain(5);
        let last = rows[4].hash.clone();
        assert_eq!(verify(&rows, (0, GENESIS), (5, &last)), Ok(5));
        assert_eq!(verify(&[], (0, GENESIS), (0, GENESIS)), Ok(0));
    }

    #[test]
    fn a_changed_row_is_named() {
        let mut rows = chain(5);
        let last = rows[4].hash.clone();
        rows[2].entry.status = 500;
        let e = verify(&rows, (0, GENESIS), (5, &last)).unwrap_err();
        assert_eq!(e.id, 3);
        assert!(e.reason.contains("hash does not match"), "{e}");
    }

    #[test]
    fn a_deleted_row_is_found_in_the_middle_and_at_the_end() {
        let mut rows = chain(5);
        let last = rows[4].hash.clone();
        rows.remove(1);
        let e = verify(&rows, (0, GENESIS), (5, &last)).unwrap_err();
        assert_eq!(e.id, 3);
        assert!(e.reason.contains("(2) is missing"), "{e}");
        let mut rows = chain(5);
        rows.pop();
        let e = verify(&rows, (0, GENESIS), (5, &last)).unwrap_err();
        assert_eq!(e.id, 5);
        assert!(e.reason.contains("missing"), "{e}");
    }

    #[test]
    fn a_chain_verifies_from_its_purge_anchor() {
        let rows = chain(6);
        let last = rows[5].hash.clone();
        let anchor = rows[2].hash.clone();
        assert_eq!(verify(&rows[3..], (3, &anchor), (6, &last)), Ok(3));
        // A wrong anchor breaks the first row after it.
        let e = verify(&rows[3..], (3, GENESIS), (6, &last)).unwrap_err();
        assert_eq!(e.id, 4);
    }
}

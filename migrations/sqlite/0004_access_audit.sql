-- The access audit (SQLite): who accessed what, one row per audited request, each row's
-- hash chained to the previous one. Keep in step with migrations/postgres/0004_access_audit.sql.
-- README "Access audit" describes the chain; src/audit/chain.rs computes it.

-- Rows are numbered by the writer (head.last_id + 1, no gaps), so a deleted row shows as a
-- gap as well as a broken chain. No request body, query string, cookie or token is stored.
CREATE TABLE access_audit (
    id         INTEGER PRIMARY KEY,
    -- unix milliseconds
    at_ms      INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    -- the token's subject (users.id); NULL for anonymous requests
    user_id    TEXT NULL,
    role       TEXT NULL,
    client_ip  TEXT NULL,
    method     TEXT NOT NULL,
    -- the route's name, or the page's path
    route      TEXT NOT NULL,
    -- the normalised path, without the query string
    path       TEXT NOT NULL,
    status     INTEGER NOT NULL,
    -- the backend that answered; NULL for the gateway's own answers
    upstream   TEXT NULL,
    -- hex SHA-256 of the previous row's hash and this row's fields (src/audit/chain.rs)
    hash       TEXT NOT NULL
) STRICT;

CREATE INDEX access_audit_at_ms ON access_audit (at_ms);
CREATE INDEX access_audit_user_id ON access_audit (user_id, at_ms);

-- One row: the end of the chain, locked by every append (so that writers in several gateway
-- processes take turns instead of forking the chain), and the anchor left by purges: rows up
-- to anchor_id are gone and anchor_hash is the hash of row anchor_id (the genesis value when
-- nothing was purged), where verification starts.
CREATE TABLE access_audit_head (
    singleton   INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_id     INTEGER NOT NULL,
    last_hash   TEXT NOT NULL,
    anchor_id   INTEGER NOT NULL,
    anchor_hash TEXT NOT NULL
) STRICT;

INSERT INTO access_audit_head (singleton, last_id, last_hash, anchor_id, anchor_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000',
        0, '0000000000000000000000000000000000000000000000000000000000000000');

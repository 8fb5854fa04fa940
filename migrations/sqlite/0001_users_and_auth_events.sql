-- Users and the authentication audit trail (SQLite).
-- Keep in step with migrations/postgres/0001_users_and_auth_events.sql: same tables, same rules.
-- STRICT tables reject values of the wrong type, as PostgreSQL does; INTEGER is 64-bit here.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    -- stored trimmed and lowercased by the application, so UNIQUE is case-insensitive
    email         TEXT NOT NULL UNIQUE,
    -- argon2id PHC string
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('patient', 'doctor', 'institution', 'admin')),
    display_name  TEXT NOT NULL DEFAULT '',
    -- boolean: 0 or 1
    disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    -- unix seconds
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE auth_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    -- unix seconds
    at         INTEGER NOT NULL,
    user_id    INTEGER NULL REFERENCES users (id),
    -- the email as attempted, which may belong to no user
    email      TEXT NULL,
    kind       TEXT NOT NULL
               CHECK (kind IN ('login_ok', 'login_failed', 'logout', 'refresh', 'refresh_reuse', 'locked')),
    client_ip  TEXT NULL,
    user_agent TEXT NULL
) STRICT;

CREATE INDEX auth_events_user_id_at ON auth_events (user_id, at);
CREATE INDEX auth_events_at ON auth_events (at);

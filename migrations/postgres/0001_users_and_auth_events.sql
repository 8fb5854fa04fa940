-- Users and the authentication audit trail (PostgreSQL).
-- Keep in step with migrations/sqlite/0001_users_and_auth_events.sql: same tables, same rules.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    -- stored trimmed and lowercased by the application, so UNIQUE is case-insensitive
    email         TEXT NOT NULL UNIQUE,
    -- argon2id PHC string
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('patient', 'doctor', 'institution', 'admin')),
    display_name  TEXT NOT NULL DEFAULT '',
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    -- unix seconds
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE auth_events (
    id         BIGSERIAL PRIMARY KEY,
    -- unix seconds
    at         BIGINT NOT NULL,
    user_id    BIGINT NULL REFERENCES users (id),
    -- the email as attempted, which may belong to no user
    email      TEXT NULL,
    kind       TEXT NOT NULL
               CHECK (kind IN ('login_ok', 'login_failed', 'logout', 'refresh', 'refresh_reuse', 'locked')),
    client_ip  TEXT NULL,
    user_agent TEXT NULL
);

CREATE INDEX auth_events_user_id_at ON auth_events (user_id, at);
CREATE INDEX auth_events_at ON auth_events (at);

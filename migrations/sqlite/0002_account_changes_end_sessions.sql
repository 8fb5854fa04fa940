-- Account changes that end sessions, and who made them (SQLite).
-- Keep in step with migrations/postgres/0002_account_changes_end_sessions.sql.

-- One row per account change that ends a user's sessions (disable, password, role, delete,
-- revoke): every gateway reads new rows (it polls) and ends the sessions of `user_id` that
-- started before `at_ms`, in whichever session store it uses; a refresh of such a session is
-- refused. No foreign key: the row outlives a deleted user.
CREATE TABLE session_revocations (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id  INTEGER NOT NULL,
    -- unix milliseconds: sessions started before this end
    at_ms    INTEGER NOT NULL,
    reason   TEXT NOT NULL,
    -- the auth_events row that records the change (its sessions_ended is added to)
    event_id INTEGER NULL
) STRICT;

CREATE INDEX session_revocations_user_id_at_ms ON session_revocations (user_id, at_ms);

-- SQLite cannot change a CHECK or drop a foreign key in place: the table is rebuilt. The
-- audit trail keeps a deleted user's id, so user_id no longer references users.
CREATE TABLE auth_events_new (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    -- unix seconds
    at             INTEGER NOT NULL,
    user_id        INTEGER NULL,
    -- the email as attempted, which may belong to no user
    email          TEXT NULL,
    kind           TEXT NOT NULL CHECK (kind IN (
                       'login_ok', 'login_failed', 'logout', 'refresh', 'refresh_reuse', 'locked',
                       'user_disabled', 'password_changed', 'role_changed', 'user_deleted',
                       'sessions_revoked')),
    client_ip      TEXT NULL,
    user_agent     TEXT NULL,
    -- who acted: 'cli' (the gatehouse command) or 'api' (a request to the gateway)
    source         TEXT NULL,
    -- sessions the event ended (account changes and mass revocation)
    sessions_ended INTEGER NULL
) STRICT;

INSERT INTO auth_events_new (id, at, user_id, email, kind, client_ip, user_agent)
    SELECT id, at, user_id, email, kind, client_ip, user_agent FROM auth_events;
DROP TABLE auth_events;
ALTER TABLE auth_events_new RENAME TO auth_events;

CREATE INDEX auth_events_user_id_at ON auth_events (user_id, at);
CREATE INDEX auth_events_at ON auth_events (at);

-- Account changes that end sessions, and who made them (PostgreSQL).
-- Keep in step with migrations/sqlite/0002_account_changes_end_sessions.sql.

-- One row per account change that ends a user's sessions (disable, password, role, delete,
-- revoke): every gateway reads new rows (it polls) and ends the sessions of `user_id` that
-- started before `at_ms`, in whichever session store it uses; a refresh of such a session is
-- refused. No foreign key: the row outlives a deleted user.
CREATE TABLE session_revocations (
    id       BIGSERIAL PRIMARY KEY,
    user_id  BIGINT NOT NULL,
    -- unix milliseconds: sessions started before this end
    at_ms    BIGINT NOT NULL,
    reason   TEXT NOT NULL,
    -- the auth_events row that records the change (its sessions_ended is added to)
    event_id BIGINT NULL
);

CREATE INDEX session_revocations_user_id_at_ms ON session_revocations (user_id, at_ms);

-- The audit trail keeps a deleted user's id: no foreign key to users.
ALTER TABLE auth_events DROP CONSTRAINT auth_events_user_id_fkey;
ALTER TABLE auth_events DROP CONSTRAINT auth_events_kind_check;
ALTER TABLE auth_events ADD CONSTRAINT auth_events_kind_check CHECK (kind IN (
    'login_ok', 'login_failed', 'logout', 'refresh', 'refresh_reuse', 'locked',
    'user_disabled', 'password_changed', 'role_changed', 'user_deleted', 'sessions_revoked'));
-- who acted: 'cli' (the gatehouse command) or 'api' (a request to the gateway)
ALTER TABLE auth_events ADD COLUMN source TEXT NULL;
-- sessions the event ended (account changes and mass revocation)
ALTER TABLE auth_events ADD COLUMN sessions_ended BIGINT NULL;

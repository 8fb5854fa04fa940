-- The second factor: TOTP secrets and recovery codes (SQLite).
-- Keep in step with migrations/postgres/0003_mfa.sql.

-- One row per user with a TOTP factor. `secret_enc` is `v1:NONCE:CIPHERTEXT` (base64,
-- AES-256-GCM under auth.mfa.encryption_key, the user id as associated data): never the
-- secret itself. `enabled_at` NULL: enrolment begun on the page, not yet confirmed with a
-- first code (the factor is not asked for). `last_step`: the latest accepted TOTP time step;
-- a code of that step or an earlier one is a replay.
CREATE TABLE user_mfa (
    user_id    INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret_enc TEXT NOT NULL,
    -- unix seconds
    created_at INTEGER NOT NULL,
    enabled_at INTEGER NULL,
    last_step  INTEGER NOT NULL DEFAULT 0
) STRICT;

-- One-time recovery codes: SHA-256 (hex) of a random 80-bit code, so a stolen table does
-- not give them away; `used_at` is set when one is spent.
CREATE TABLE mfa_recovery_codes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    used_at    INTEGER NULL
) STRICT;

CREATE INDEX mfa_recovery_codes_user_id ON mfa_recovery_codes (user_id);

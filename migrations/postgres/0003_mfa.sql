-- The second factor: TOTP secrets and recovery codes (PostgreSQL).
-- Keep in step with migrations/sqlite/0003_mfa.sql.

-- One row per user with a TOTP factor. `secret_enc` is `v1:NONCE:CIPHERTEXT` (base64,
-- AES-256-GCM under auth.mfa.encryption_key, the user id as associated data): never the
-- secret itself. `enabled_at` NULL: enrolment begun on the page, not yet confirmed with a
-- first code (the factor is not asked for). `last_step`: the latest accepted TOTP time step;
-- a code of that step or an earlier one is a replay.
CREATE TABLE user_mfa (
    user_id    BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret_enc TEXT NOT NULL,
    -- unix seconds
    created_at BIGINT NOT NULL,
    enabled_at BIGINT NULL,
    last_step  BIGINT NOT NULL DEFAULT 0
);

-- One-time recovery codes: SHA-256 (hex) of a random 80-bit code, so a stolen table does
-- not give them away; `used_at` is set when one is spent.
CREATE TABLE mfa_recovery_codes (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    used_at    BIGINT NULL
);

CREATE INDEX mfa_recovery_codes_user_id ON mfa_recovery_codes (user_id);

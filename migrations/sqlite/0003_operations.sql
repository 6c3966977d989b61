-- Operator tools: disabled and deleted accounts, and invite codes for the
-- `invite` registration mode.

-- Set (unix milliseconds) while an account is disabled: it cannot log in
-- and its sessions are gone. A deleted account keeps its row as a
-- tombstone (renamed, no password, no keys) so the log's sender ids stay
-- valid; deleted_at marks it.
ALTER TABLE users ADD COLUMN disabled_at INTEGER;
ALTER TABLE users ADD COLUMN deleted_at INTEGER;

-- Single-use registration codes. A code is 32 random bytes shown once as
-- URL-safe base64; its first 8 bytes are the lookup key, and only the
-- SHA-256 of all 32 is kept, compared in constant time.
CREATE TABLE invite_codes (
    lookup      BLOB    PRIMARY KEY,    -- first 8 bytes of the code
    code_hash   BLOB    NOT NULL,       -- SHA-256 of the whole code
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    used_by     INTEGER REFERENCES users(id) ON DELETE SET NULL
);

-- Retention prunes old messages by time.
CREATE INDEX entries_by_ts ON entries(ts) WHERE kind = 'message';

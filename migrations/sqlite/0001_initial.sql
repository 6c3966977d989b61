-- Users, their identity keys (with history), login sessions and
-- registration challenges.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,         -- argon2id PHC string
    created_at    INTEGER NOT NULL          -- unix milliseconds
);

-- Every key a user has had. The current one has replaced_at NULL.
-- rotation_signature is the previous key's signature over the rotation
-- statement (NULL for the key the user registered with).
CREATE TABLE user_keys (
    id                 INTEGER PRIMARY KEY,
    user_id            INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    public_key         BLOB    NOT NULL,    -- SPKI DER
    fingerprint        TEXT    NOT NULL,    -- hex SHA-256 of public_key
    created_at         INTEGER NOT NULL,
    replaced_at        INTEGER,
    rotation_signature BLOB
);
CREATE INDEX user_keys_by_user ON user_keys(user_id, id);
CREATE UNIQUE INDEX one_current_key ON user_keys(user_id) WHERE replaced_at IS NULL;

-- Session tokens are stored only as SHA-256 hashes.
CREATE TABLE sessions (
    token_hash BLOB    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_by_user ON sessions(user_id);

CREATE TABLE challenges (
    challenge  BLOB    PRIMARY KEY,
    expires_at INTEGER NOT NULL
);

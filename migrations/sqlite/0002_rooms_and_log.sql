-- Rooms (groups and DMs), memberships over time, invitations, and the
-- per-room log of entries: messages (opaque ciphertext) and membership and
-- key events, ordered by a gap-free per-room sequence number.
CREATE TABLE rooms (
    id         INTEGER PRIMARY KEY,
    kind       TEXT    NOT NULL CHECK (kind IN ('group', 'dm')),
    name       TEXT,
    creator_id INTEGER NOT NULL REFERENCES users(id),
    dm_pair    TEXT    UNIQUE,              -- "<low user id>:<high user id>" for DMs
    last_seq   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

-- A membership covers the entries start_seq..=end_seq (end_seq NULL while
-- the user is still a member). Leaving and rejoining makes a second row.
CREATE TABLE memberships (
    room_id   INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id   INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    start_seq INTEGER NOT NULL,
    end_seq   INTEGER,
    PRIMARY KEY (room_id, user_id, start_seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX one_open_membership ON memberships(room_id, user_id) WHERE end_seq IS NULL;
CREATE INDEX open_memberships_by_user ON memberships(user_id, room_id) WHERE end_seq IS NULL;

CREATE TABLE invitations (
    room_id    INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    invited_by INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;

CREATE TABLE entries (
    room_id    INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    ts         INTEGER NOT NULL,             -- unix milliseconds, server clock
    kind       TEXT    NOT NULL,             -- message, create, invite, join, leave, remove, key
    sender_id  INTEGER NOT NULL REFERENCES users(id),
    subject_id INTEGER REFERENCES users(id), -- the user an event is about
    client_id  TEXT,                         -- sender-chosen id, for idempotent resends
    body       BLOB,                         -- opaque ciphertext (messages only)
    detail     TEXT,                         -- event detail, e.g. a new key's fingerprint
    PRIMARY KEY (room_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX entries_by_client_id ON entries(room_id, sender_id, client_id) WHERE client_id IS NOT NULL;

-- Conversation features (PROTOCOL.md §21): blocks, message-request states
-- of direct conversations, room admins, the disappearing-messages timer,
-- and per-message expiry. Tombstones need no new column: an erased entry
-- has kind 'erased', its reason ('deleted' or 'expired') in detail, and a
-- NULL body.

-- blocker_id does not want to hear from blocked_id.
CREATE TABLE blocks (
    blocker_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    blocked_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
) WITHOUT ROWID;
CREATE INDEX blocks_by_blocked ON blocks(blocked_id, blocker_id);

-- A direct conversation opened by a user who shared no group room with
-- its peer: the peer's (user_id's) answer. No row: not a request.
CREATE TABLE dm_requests (
    room_id    INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    state      TEXT    NOT NULL CHECK (state IN ('pending', 'declined', 'accepted')),
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;

-- Admins of a group room other than its creator.
CREATE TABLE room_admins (
    room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;

-- The room's disappearing-messages duration in seconds (0 = off) and the
-- seq of the timer entry that set it (0: none yet).
ALTER TABLE rooms ADD COLUMN ttl INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN timer_seq INTEGER NOT NULL DEFAULT 0;

-- When a message becomes an 'expired' tombstone (unix ms; NULL: never).
ALTER TABLE entries ADD COLUMN expires_at INTEGER;
CREATE INDEX entries_by_expiry ON entries(expires_at) WHERE expires_at IS NOT NULL;

-- The client's local store (keys/USER.store), not the server's database:
-- embedded by src/client/store/mod.rs with sqlx::migrate!("./migrations/client").
-- Columns named `sealed` hold AES-256-GCM ciphertext (LocalKeys, purpose
-- "store"); everything else is readable on disk (docs/SECURITY.md).

-- One sealed known value: opening it proves the store was written by this
-- identity and that the key derivation still matches.
CREATE TABLE canary (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sealed BLOB NOT NULL
);

-- Servers this key store talks to: room ids are per server. The URL is
-- sealed; a server is found by opening each row (there are few).
CREATE TABLE servers (
    id INTEGER PRIMARY KEY,
    sealed BLOB NOT NULL
);

-- Per room: the cursor (last seq read from the server log) and the sealed
-- state needed to judge the next entries exactly as a full replay would
-- (sender keys, replay counters, own chains, retired keys), and the room's
-- label, sealed, for `hush search --room` offline.
CREATE TABLE rooms (
    server INTEGER NOT NULL REFERENCES servers (id),
    room INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    sealed_state BLOB NOT NULL,
    sealed_label BLOB NOT NULL,
    PRIMARY KEY (server, room)
) WITHOUT ROWID;

-- What each log entry meant to this user (decrypted message, event,
-- rejection with its reason), sealed. Sender-key distributions have no row.
-- `kind`: message, unsupported, event, rejected. `file_size`: an
-- attachment's size in bytes.
CREATE TABLE entries (
    server INTEGER NOT NULL,
    room INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    file_size INTEGER,
    sealed BLOB NOT NULL,
    PRIMARY KEY (server, room, seq)
) WITHOUT ROWID;

CREATE INDEX entries_by_time ON entries (server, room, ts);

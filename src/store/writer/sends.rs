//! The writer's fast path for messages.
//!
//! The writer is the only task that changes rooms, memberships and log
//! entries, so it can keep an authoritative in-memory view of each room it
//! has touched (its last sequence number and current members) instead of
//! asking SQLite for them on every message. Messages are validated against
//! that view and written as multi-row statements: per chunk of up to
//! `chunk(backend)` messages one lookup for resent client ids, one INSERT
//! and one UPDATE of the rooms' positions, instead of ~7 statements per
//! message. On SQLite they are `VALUES` lists; on PostgreSQL each column is
//! one array parameter (`UNNEST`), so each statement has a single text that
//! the connection parses and plans once, whatever the number of rows (a
//! `VALUES` list of a new length costs a parse, a plan and a round trip).
//!
//! Any other operation invalidates the rooms it touches (they are reloaded
//! from inside the transaction on next use), and a failed transaction
//! forgets everything, since its sequence numbers were never stored.
//!
//! On PostgreSQL several nodes share the database, each with a writer of
//! its own, so the view is authoritative only while the writer holds the
//! room's row lock (taken at the start of each batch, `writer::lock_rooms`).
//! After locking, a room whose `last_seq` or `state_version` is not the
//! cached one changed on another node and is reloaded (`revalidate`).
//! `state_version` counts the changes to a room that append no entry
//! (blocks, message-request answers); without that column (an older
//! schema) every direct conversation is reloaded in each batch instead.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Applied, Committed, Done};
use crate::store::db::{self, Backend, PgArray, Tx};
use crate::store::{Entry, EntryKind, Result, RoomId, StoreError, UserId, UserRef, now_ms};

/// Messages per multi-row statement on SQLite (8 bound values each, far
/// below its 32766-variable limit).
const SQLITE_CHUNK: usize = 128;
/// On PostgreSQL, where a chunk's columns are arrays.
const POSTGRES_CHUNK: usize = 2048;

/// Messages per multi-row statement.
pub fn chunk(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => SQLITE_CHUNK,
        Backend::Postgres => POSTGRES_CHUNK,
    }
}
/// Rooms remembered before the view is dropped and rebuilt on demand.
const MAX_CACHED_ROOMS: usize = 100_000;

struct RoomState {
    last_seq: i64,
    members: Arc<[UserId]>,
    /// Members who get the room's entries live: all of them but a direct
    /// conversation's peer who declined it (§21, message requests).
    recipients: Arc<[UserId]>,
    /// Members whose messages are refused: in a direct conversation, the
    /// one the other member blocks.
    refused: Vec<UserId>,
    /// The disappearing-messages duration in milliseconds (0: off).
    ttl_ms: i64,
    /// The room's `state_version` when loaded (PostgreSQL; 0 on SQLite).
    version: i64,
    /// A direct conversation (only known on PostgreSQL).
    dm: bool,
}

/// The writer's view of the rooms it has touched.
#[derive(Default)]
pub struct RoomCache {
    rooms: HashMap<RoomId, RoomState>,
    /// PostgreSQL only: `rooms` has the `state_version` column.
    pub versioned: bool,
}

impl RoomCache {
    /// PostgreSQL: drops every cached room that another node changed since
    /// it was cached, given the rows this batch locked (id, last_seq,
    /// state_version).
    pub fn revalidate(&mut self, locked: &[(RoomId, i64, i64)]) {
        let versioned = self.versioned;
        for (room, last_seq, version) in locked {
            let stale = self.rooms.get(room).is_some_and(|state| {
                state.last_seq != *last_seq || state.version != *version || (!versioned && state.dm)
            });
            if stale {
                self.rooms.remove(room);
            }
        }
    }

    /// Whether the view holds `room` (a message to it needs no read).
    pub fn knows(&self, room: RoomId) -> bool {
        self.rooms.contains_key(&room)
    }

    pub fn forget(&mut self, room: RoomId) {
        self.rooms.remove(&room);
    }

    pub fn forget_all(&mut self) {
        self.rooms.clear();
    }

    /// Loads `room` from inside the writer's transaction if it is not
    /// cached. `None` if there is no such room.
    async fn load(&mut self, tx: &mut Tx<'_>, room: RoomId) -> Result<Option<&mut RoomState>> {
        if !self.rooms.contains_key(&room) {
            let found: Option<(i64, i64, i64, bool)> = match tx.backend() {
                Backend::Sqlite => db::query("SELECT last_seq, ttl FROM rooms WHERE id = ?")
                    .bind(room)
                    .fetch_optional::<(i64, i64)>(&mut *tx)
                    .await?
                    .map(|(last_seq, ttl)| (last_seq, ttl, 0, false)),
                Backend::Postgres => db::query(if self.versioned {
                    "SELECT last_seq, ttl, state_version, kind FROM rooms WHERE id = ?"
                } else {
                    "SELECT last_seq, ttl, CAST(0 AS BIGINT), kind FROM rooms WHERE id = ?"
                })
                .bind(room)
                .fetch_optional::<(i64, i64, i64, String)>(&mut *tx)
                .await?
                .map(|(last_seq, ttl, version, kind)| (last_seq, ttl, version, kind == "dm")),
            };
            let Some((last_seq, ttl, version, dm)) = found else {
                return Ok(None);
            };
            let members: Vec<UserId> =
                db::query("SELECT user_id FROM memberships WHERE room_id = ? AND end_seq IS NULL")
                    .bind(room)
                    .fetch_all_scalars(&mut *tx)
                    .await?;
            let recipients = super::recipient_ids(tx, room).await?;
            let refused = super::refused_senders(tx, room).await?;
            if self.rooms.len() >= MAX_CACHED_ROOMS {
                self.rooms.clear();
            }
            self.rooms.insert(
                room,
                RoomState {
                    last_seq,
                    members: members.into(),
                    recipients: recipients.into(),
                    refused,
                    ttl_ms: ttl.saturating_mul(1000),
                    version,
                    dm,
                },
            );
        }
        Ok(self.rooms.get_mut(&room))
    }
}

/// One message to store.
pub struct NewMessage<'a> {
    pub room: RoomId,
    pub sender: &'a UserRef,
    pub client_id: &'a str,
    pub body: &'a [u8],
}

/// A message's room, sender and client id: what makes a resend a duplicate.
pub type Key<'a> = (RoomId, UserId, &'a str);

/// Stores up to `chunk()` messages in order and returns each one's outcome.
/// An `Err` from this function (a database error) fails the transaction.
pub async fn store_messages(
    tx: &mut Tx<'_>,
    cache: &mut RoomCache,
    messages: &[NewMessage<'_>],
) -> Result<Vec<Result<Done>>> {
    debug_assert!(messages.len() <= chunk(tx.backend()));
    // Membership first, as the per-message path did: a non-member learns
    // nothing, not even whether their client id was used.
    let mut allowed = Vec::with_capacity(messages.len());
    for m in messages {
        let member = match cache.load(tx, m.room).await? {
            Some(state) => state.members.contains(&m.sender.id),
            None => false,
        };
        allowed.push(member);
    }
    let stored = stored_client_ids(tx, &candidates(messages, &allowed)).await?;
    let planned = plan(cache, messages, &allowed, stored);
    append(
        tx,
        &planned.rows,
        &planned.seqs,
        planned.ts,
        &planned.positions,
    )
    .await?;
    Ok(planned.outcomes)
}

/// What storing a run of messages writes and answers.
pub struct Planned<'m, 'a> {
    pub outcomes: Vec<Result<Done>>,
    /// The messages to insert, with their `seqs` (seq, expiry).
    pub rows: Vec<&'m NewMessage<'a>>,
    pub seqs: Vec<(i64, Option<i64>)>,
    pub ts: i64,
    /// Each room's new `last_seq`.
    pub positions: HashMap<RoomId, i64>,
}

/// Whether the sender of each message is a member of its room, as the view
/// has it; a room the view does not hold allows nobody.
pub fn members_allowed(cache: &RoomCache, messages: &[NewMessage<'_>]) -> Vec<bool> {
    messages
        .iter()
        .map(|m| {
            cache
                .rooms
                .get(&m.room)
                .is_some_and(|state| state.members.contains(&m.sender.id))
        })
        .collect()
}

/// The client ids to look up: those of the allowed messages.
pub fn candidates<'a>(messages: &[NewMessage<'a>], allowed: &[bool]) -> Vec<Key<'a>> {
    messages
        .iter()
        .zip(allowed)
        .filter(|(_, ok)| **ok)
        .map(|(m, _)| (m.room, m.sender.id, m.client_id))
        .collect()
}

/// Decides each message's outcome from the view (whose rooms must hold
/// every allowed message's room) and the client ids already stored, and
/// advances the view's positions: a refusal, a duplicate of the stored
/// entry, or a new entry to insert.
pub fn plan<'m, 'a>(
    cache: &mut RoomCache,
    messages: &'m [NewMessage<'a>],
    allowed: &[bool],
    mut stored: HashMap<Key<'a>, (i64, i64)>,
) -> Planned<'m, 'a> {
    let now = now_ms();
    let mut planned = Planned {
        outcomes: Vec::with_capacity(messages.len()),
        rows: Vec::with_capacity(messages.len()),
        seqs: Vec::with_capacity(messages.len()),
        ts: now,
        positions: HashMap::new(),
    };
    for (m, ok) in messages.iter().zip(allowed) {
        if !ok {
            planned.outcomes.push(Err(StoreError::NotFound));
            continue;
        }
        let key = (m.room, m.sender.id, m.client_id);
        let mut entry = Entry {
            room: m.room,
            seq: 0,
            ts: now,
            kind: EntryKind::Message,
            sender: m.sender.name.clone(),
            subject: None,
            client_id: Some(m.client_id.to_owned()),
            body: None,
            detail: None,
            expires: None,
        };
        if let Some(&(seq, ts)) = stored.get(&key) {
            entry.seq = seq;
            entry.ts = ts;
            let applied = Applied {
                room: m.room,
                entry: Some(entry),
                duplicate: true,
            };
            planned.outcomes.push(Ok((applied, Vec::new())));
            continue;
        }
        let state = cache
            .rooms
            .get_mut(&m.room)
            .expect("rooms of allowed messages were loaded above");
        if state.refused.contains(&m.sender.id) {
            planned.outcomes.push(Err(StoreError::Blocked));
            continue;
        }
        state.last_seq += 1;
        entry.expires = (state.ttl_ms > 0).then(|| now.saturating_add(state.ttl_ms));
        entry.seq = state.last_seq;
        planned.positions.insert(m.room, state.last_seq);
        stored.insert(key, (entry.seq, now));
        planned.rows.push(m);
        planned.seqs.push((entry.seq, entry.expires));
        let applied = Applied {
            room: m.room,
            entry: Some(entry.clone()),
            duplicate: false,
        };
        entry.body = Some(m.body.to_vec());
        let committed = Committed {
            entry,
            recipients: state.recipients.clone(),
            notify: None,
        };
        planned.outcomes.push(Ok((applied, vec![committed])));
    }
    planned
}

/// Stores one message that also erases an earlier one of its sender
/// (`erase`, §21): the target becomes a tombstone in the same transaction,
/// or, if it may not be erased, nothing is written at all. A resend of a
/// message already stored is a duplicate and erases nothing again.
pub async fn store_erasing(
    tx: &mut Tx<'_>,
    cache: &mut RoomCache,
    message: &NewMessage<'_>,
    target: i64,
) -> Result<Result<Done>> {
    let refusal = match cache.load(tx, message.room).await? {
        Some(state) if !state.members.contains(&message.sender.id) => Some(StoreError::NotFound),
        Some(state) if state.refused.contains(&message.sender.id) => Some(StoreError::Blocked),
        Some(_) => None,
        None => Some(StoreError::NotFound),
    };
    if let Some(refusal) = refusal {
        return Ok(Err(refusal));
    }
    let key = (message.room, message.sender.id, message.client_id);
    if stored_client_ids(tx, &[key]).await?.is_empty()
        && let Err(refusal) = erase(tx, message.room, message.sender.id, target).await?
    {
        return Ok(Err(refusal));
    }
    let mut outcomes = store_messages(tx, cache, std::slice::from_ref(message)).await?;
    Ok(outcomes.pop().expect("one outcome per message"))
}

/// Turns the sender's message at `seq` into a `deleted` tombstone; an
/// existing tombstone stays as it is.
async fn erase(tx: &mut Tx<'_>, room: RoomId, sender: UserId, seq: i64) -> Result<Result<()>> {
    let target: Option<(String, UserId)> =
        db::query("SELECT kind, sender_id FROM entries WHERE room_id = ? AND seq = ?")
            .bind(room)
            .bind(seq)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((kind, owner)) = target else {
        return Ok(Err(StoreError::NotFound));
    };
    if owner != sender || !(kind == "message" || kind == "erased") {
        return Ok(Err(StoreError::Forbidden(
            "only your own messages can be erased",
        )));
    }
    db::query(
        "UPDATE entries SET kind = 'erased', body = NULL, detail = 'deleted', expires_at = NULL
         WHERE room_id = ? AND seq = ? AND kind = 'message'",
    )
    .bind(room)
    .bind(seq)
    .execute(&mut *tx)
    .await?;
    Ok(Ok(()))
}

/// Positions of messages already stored under these client ids.
async fn stored_client_ids<'a>(
    tx: &mut Tx<'_>,
    keys: &[Key<'a>],
) -> Result<HashMap<Key<'a>, (i64, i64)>> {
    let mut found = HashMap::new();
    if keys.is_empty() {
        return Ok(found);
    }
    // A join (not a row-value IN, which scans the whole index) with
    // `client_id IS NOT NULL` so the partial unique index is searched once
    // per key.
    let query = match tx.backend() {
        Backend::Sqlite => {
            let values = vec!["(?, ?, ?)"; keys.len()].join(", ");
            let sql = format!(
                "SELECT e.room_id, e.sender_id, e.client_id, e.seq, e.ts
                 FROM (VALUES {values}) AS k
                 JOIN entries e ON e.room_id = k.column1 AND e.sender_id = k.column2
                      AND e.client_id = k.column3
                 WHERE e.client_id IS NOT NULL"
            );
            let mut query = db::query_built(sql);
            for (room, sender, client_id) in keys {
                query = query.bind(*room).bind(*sender).bind(*client_id);
            }
            query
        }
        Backend::Postgres => db::query(
            "SELECT e.room_id, e.sender_id, e.client_id, e.seq, e.ts
             FROM UNNEST(CAST(? AS BIGINT[]), CAST(? AS BIGINT[]), CAST(? AS TEXT[]))
                  AS k(room_id, sender_id, client_id)
             JOIN entries e ON e.room_id = k.room_id AND e.sender_id = k.sender_id
                  AND e.client_id = k.client_id
             WHERE e.client_id IS NOT NULL",
        )
        .bind(PgArray(keys.iter().map(|k| k.0.0).collect::<Vec<i64>>()))
        .bind(PgArray(keys.iter().map(|k| k.1.0).collect::<Vec<i64>>()))
        .bind(PgArray(keys.iter().map(|k| k.2).collect::<Vec<&str>>())),
    };
    let rows: Vec<(RoomId, UserId, String, i64, i64)> = query.fetch_all(&mut *tx).await?;
    for (room, sender, client_id, seq, ts) in rows {
        if let Some(key) = keys
            .iter()
            .find(|k| k.0 == room && k.1 == sender && k.2 == client_id)
        {
            found.insert(*key, (seq, ts));
        }
    }
    Ok(found)
}

/// Inserts the new rows and moves their rooms' positions.
async fn append(
    tx: &mut Tx<'_>,
    rows: &[&NewMessage<'_>],
    seqs: &[(i64, Option<i64>)],
    ts: i64,
    positions: &HashMap<RoomId, i64>,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    if tx.backend() == Backend::Postgres {
        insert_rows_pg(tx, rows, seqs, ts).await?;
        return update_positions_pg(tx, positions).await;
    }
    // SQLite: both statements in one request. Each request is a round trip
    // to sqlx's thread for the connection (two context switches), the
    // larger part of what a lightly loaded server spends per message.
    let values = vec!["(?, ?, ?, 'message', ?, ?, ?, ?)"; rows.len()].join(", ");
    let moves = vec!["(?, ?)"; positions.len()].join(", ");
    let sql = format!(
        "INSERT INTO entries (room_id, seq, ts, kind, sender_id, client_id, body, expires_at) VALUES {values};
         UPDATE rooms SET last_seq = v.column2 FROM (VALUES {moves}) AS v WHERE rooms.id = v.column1"
    );
    let mut query = db::query_built(sql);
    for (m, (seq, expires)) in rows.iter().zip(seqs) {
        query = query
            .bind(m.room)
            .bind(*seq)
            .bind(ts)
            .bind(m.sender.id)
            .bind(m.client_id)
            .bind(m.body)
            .bind(*expires);
    }
    for (room, seq) in positions {
        query = query.bind(*room).bind(*seq);
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

async fn insert_rows_pg(
    tx: &mut Tx<'_>,
    rows: &[&NewMessage<'_>],
    seqs: &[(i64, Option<i64>)],
    ts: i64,
) -> Result<()> {
    db::query(
        "INSERT INTO entries (room_id, seq, ts, kind, sender_id, client_id, body, expires_at)
         SELECT room_id, seq, ?, 'message', sender_id, client_id, body, expires_at
         FROM UNNEST(CAST(? AS BIGINT[]), CAST(? AS BIGINT[]), CAST(? AS BIGINT[]),
                     CAST(? AS TEXT[]), CAST(? AS BYTEA[]), CAST(? AS BIGINT[]))
              AS v(room_id, seq, sender_id, client_id, body, expires_at)",
    )
    .bind(ts)
    .bind(PgArray(rows.iter().map(|m| m.room.0).collect::<Vec<i64>>()))
    .bind(PgArray(seqs.iter().map(|s| s.0).collect::<Vec<i64>>()))
    .bind(PgArray(
        rows.iter().map(|m| m.sender.id.0).collect::<Vec<i64>>(),
    ))
    .bind(PgArray(
        rows.iter().map(|m| m.client_id).collect::<Vec<&str>>(),
    ))
    .bind(PgArray(rows.iter().map(|m| m.body).collect::<Vec<&[u8]>>()))
    .bind(PgArray(
        seqs.iter().map(|s| s.1).collect::<Vec<Option<i64>>>(),
    ))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn update_positions_pg(tx: &mut Tx<'_>, positions: &HashMap<RoomId, i64>) -> Result<()> {
    let (rooms, seqs): (Vec<i64>, Vec<i64>) =
        positions.iter().map(|(room, seq)| (room.0, *seq)).unzip();
    db::query(
        "UPDATE rooms SET last_seq = v.seq
         FROM UNNEST(CAST(? AS BIGINT[]), CAST(? AS BIGINT[])) AS v(id, seq)
         WHERE rooms.id = v.id",
    )
    .bind(PgArray(rooms))
    .bind(PgArray(seqs))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

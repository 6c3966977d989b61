//! The writer's fast path for messages.
//!
//! The writer is the only task that changes rooms, memberships and log
//! entries, so it can keep an authoritative in-memory view of each room it
//! has touched (its last sequence number and current members) instead of
//! asking SQLite for them on every message. Messages are validated against
//! that view and written as multi-row statements: per chunk of up to
//! `CHUNK` messages one lookup for resent client ids, one INSERT and one
//! UPDATE of the rooms' positions, instead of ~7 statements per message.
//!
//! Any other operation invalidates the rooms it touches (they are reloaded
//! from inside the transaction on next use), and a failed transaction
//! forgets everything, since its sequence numbers were never stored.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::SqliteConnection;

use super::{Applied, Committed, Done};
use crate::store::{Entry, EntryKind, Result, RoomId, StoreError, UserId, UserRef, now_ms};

/// Messages per multi-row statement (8 bound values each, far below
/// SQLite's 32766-variable limit).
pub const CHUNK: usize = 128;
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
}

/// The writer's view of the rooms it has touched.
#[derive(Default)]
pub struct RoomCache {
    rooms: HashMap<RoomId, RoomState>,
}

impl RoomCache {
    pub fn forget(&mut self, room: RoomId) {
        self.rooms.remove(&room);
    }

    pub fn forget_all(&mut self) {
        self.rooms.clear();
    }

    /// Loads `room` from inside the writer's transaction if it is not
    /// cached. `None` if there is no such room.
    async fn load(
        &mut self,
        conn: &mut SqliteConnection,
        room: RoomId,
    ) -> Result<Option<&mut RoomState>> {
        if !self.rooms.contains_key(&room) {
            let found: Option<(i64, i64)> =
                sqlx::query_as("SELECT last_seq, ttl FROM rooms WHERE id = ?")
                    .bind(room)
                    .fetch_optional(&mut *conn)
                    .await?;
            let Some((last_seq, ttl)) = found else {
                return Ok(None);
            };
            let members: Vec<UserId> = sqlx::query_scalar(
                "SELECT user_id FROM memberships WHERE room_id = ? AND end_seq IS NULL",
            )
            .bind(room)
            .fetch_all(&mut *conn)
            .await?;
            let recipients = super::recipient_ids(conn, room).await?;
            let refused = super::refused_senders(conn, room).await?;
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

type Key<'a> = (RoomId, UserId, &'a str);

/// Stores up to `CHUNK` messages in order and returns each one's outcome.
/// An `Err` from this function (a database error) fails the transaction.
pub async fn store_messages(
    conn: &mut SqliteConnection,
    cache: &mut RoomCache,
    messages: &[NewMessage<'_>],
) -> Result<Vec<Result<Done>>> {
    debug_assert!(messages.len() <= CHUNK);
    // Membership first, as the per-message path did: a non-member learns
    // nothing, not even whether their client id was used.
    let mut allowed = Vec::with_capacity(messages.len());
    for m in messages {
        let member = match cache.load(conn, m.room).await? {
            Some(state) => state.members.contains(&m.sender.id),
            None => false,
        };
        allowed.push(member);
    }
    let candidates: Vec<Key<'_>> = messages
        .iter()
        .zip(&allowed)
        .filter(|(_, ok)| **ok)
        .map(|(m, _)| (m.room, m.sender.id, m.client_id))
        .collect();
    let mut stored = stored_client_ids(conn, &candidates).await?;

    let now = now_ms();
    let mut outcomes = Vec::with_capacity(messages.len());
    let mut rows: Vec<&NewMessage<'_>> = Vec::with_capacity(messages.len());
    let mut seqs = Vec::with_capacity(messages.len());
    let mut positions: HashMap<RoomId, i64> = HashMap::new();
    for (m, ok) in messages.iter().zip(allowed) {
        if !ok {
            outcomes.push(Err(StoreError::NotFound));
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
            outcomes.push(Ok((applied, Vec::new())));
            continue;
        }
        let state = cache
            .rooms
            .get_mut(&m.room)
            .expect("rooms of allowed messages were loaded above");
        if state.refused.contains(&m.sender.id) {
            outcomes.push(Err(StoreError::Blocked));
            continue;
        }
        state.last_seq += 1;
        entry.expires = (state.ttl_ms > 0).then(|| now.saturating_add(state.ttl_ms));
        entry.seq = state.last_seq;
        positions.insert(m.room, state.last_seq);
        stored.insert(key, (entry.seq, now));
        rows.push(m);
        seqs.push((entry.seq, entry.expires));
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
        outcomes.push(Ok((applied, vec![committed])));
    }
    insert_rows(conn, &rows, &seqs, now).await?;
    update_positions(conn, &positions).await?;
    Ok(outcomes)
}

/// Stores one message that also erases an earlier one of its sender
/// (`erase`, §21): the target becomes a tombstone in the same transaction,
/// or, if it may not be erased, nothing is written at all. A resend of a
/// message already stored is a duplicate and erases nothing again.
pub async fn store_erasing(
    conn: &mut SqliteConnection,
    cache: &mut RoomCache,
    message: &NewMessage<'_>,
    target: i64,
) -> Result<Result<Done>> {
    let refusal = match cache.load(conn, message.room).await? {
        Some(state) if !state.members.contains(&message.sender.id) => Some(StoreError::NotFound),
        Some(state) if state.refused.contains(&message.sender.id) => Some(StoreError::Blocked),
        Some(_) => None,
        None => Some(StoreError::NotFound),
    };
    if let Some(refusal) = refusal {
        return Ok(Err(refusal));
    }
    let key = (message.room, message.sender.id, message.client_id);
    if stored_client_ids(conn, &[key]).await?.is_empty()
        && let Err(refusal) = erase(conn, message.room, message.sender.id, target).await?
    {
        return Ok(Err(refusal));
    }
    let mut outcomes = store_messages(conn, cache, std::slice::from_ref(message)).await?;
    Ok(outcomes.pop().expect("one outcome per message"))
}

/// Turns the sender's message at `seq` into a `deleted` tombstone; an
/// existing tombstone stays as it is.
async fn erase(
    conn: &mut SqliteConnection,
    room: RoomId,
    sender: UserId,
    seq: i64,
) -> Result<Result<()>> {
    let target: Option<(String, UserId)> =
        sqlx::query_as("SELECT kind, sender_id FROM entries WHERE room_id = ? AND seq = ?")
            .bind(room)
            .bind(seq)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((kind, owner)) = target else {
        return Ok(Err(StoreError::NotFound));
    };
    if owner != sender || !(kind == "message" || kind == "erased") {
        return Ok(Err(StoreError::Forbidden(
            "only your own messages can be erased",
        )));
    }
    sqlx::query(
        "UPDATE entries SET kind = 'erased', body = NULL, detail = 'deleted', expires_at = NULL
         WHERE room_id = ? AND seq = ? AND kind = 'message'",
    )
    .bind(room)
    .bind(seq)
    .execute(&mut *conn)
    .await?;
    Ok(Ok(()))
}

/// Positions of messages already stored under these client ids.
async fn stored_client_ids<'a>(
    conn: &mut SqliteConnection,
    keys: &[Key<'a>],
) -> Result<HashMap<Key<'a>, (i64, i64)>> {
    let mut found = HashMap::new();
    if keys.is_empty() {
        return Ok(found);
    }
    let values = vec!["(?, ?, ?)"; keys.len()].join(", ");
    // A join (not a row-value IN, which scans the whole index) with
    // `client_id IS NOT NULL` so SQLite searches the partial unique index
    // once per key.
    let sql = format!(
        "SELECT e.room_id, e.sender_id, e.client_id, e.seq, e.ts
         FROM (VALUES {values}) AS k
         JOIN entries e ON e.room_id = k.column1 AND e.sender_id = k.column2
              AND e.client_id = k.column3
         WHERE e.client_id IS NOT NULL"
    );
    let mut query =
        sqlx::query_as::<_, (RoomId, UserId, String, i64, i64)>(sqlx::AssertSqlSafe(sql));
    for (room, sender, client_id) in keys {
        query = query.bind(*room).bind(*sender).bind(*client_id);
    }
    for (room, sender, client_id, seq, ts) in query.fetch_all(&mut *conn).await? {
        if let Some(key) = keys
            .iter()
            .find(|k| k.0 == room && k.1 == sender && k.2 == client_id)
        {
            found.insert(*key, (seq, ts));
        }
    }
    Ok(found)
}

async fn insert_rows(
    conn: &mut SqliteConnection,
    rows: &[&NewMessage<'_>],
    seqs: &[(i64, Option<i64>)],
    ts: i64,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let values = vec!["(?, ?, ?, 'message', ?, ?, ?, ?)"; rows.len()].join(", ");
    let sql = format!(
        "INSERT INTO entries (room_id, seq, ts, kind, sender_id, client_id, body, expires_at) VALUES {values}"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
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
    query.execute(&mut *conn).await?;
    Ok(())
}

async fn update_positions(
    conn: &mut SqliteConnection,
    positions: &HashMap<RoomId, i64>,
) -> Result<()> {
    if positions.is_empty() {
        return Ok(());
    }
    let values = vec!["(?, ?)"; positions.len()].join(", ");
    let sql = format!(
        "UPDATE rooms SET last_seq = v.column2 FROM (VALUES {values}) AS v WHERE rooms.id = v.column1"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (room, seq) in positions {
        query = query.bind(*room).bind(*seq);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

//! SQLite: runs of messages stored through SQLite's C API on the writer's
//! own thread.
//!
//! Through sqlx, each statement of a transaction is a round trip to the
//! thread sqlx keeps for the connection: a lightly loaded server paid four
//! of them per message (BEGIN, the client-id lookup, the insert, COMMIT),
//! each waking that thread and then the writer's (issue 18). While the
//! batches are plain messages to rooms the writer's view already holds
//! (the everyday case), the writer instead borrows the connection's handle
//! from sqlx (`lock_handle`) and runs the same statements itself, batch
//! after batch; the first batch that needs anything else (a room to load,
//! an erasure, a membership change) gives the handle back and goes through
//! sqlx as before. Which messages are refused, duplicates or new is decided
//! by the same code either way (`sends::plan`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use rusqlite::{Connection, params};
use sqlx::SqliteConnection;
use sqlx::error::{DatabaseError, ErrorKind};
use tokio::sync::mpsc;

use super::sends::{self, NewMessage, RoomCache};
use super::{Command, Done, Op, Pending, Settled, receive, refuse_all};
use crate::store::{Result, Store, StoreError};

/// Whether every op of `batch` is a message this module can store: no
/// erasure, and a room the view holds.
pub fn can_store(batch: &[Pending], cache: &RoomCache) -> bool {
    batch
        .iter()
        .all(|(op, _)| plain_message(op).is_some_and(|message| cache.knows(message.room)))
}

/// A send that erases nothing, as the message to store.
fn plain_message(op: &Op) -> Option<NewMessage<'_>> {
    op.message()
        .and_then(|(message, erase)| erase.is_none().then_some(message))
}

/// How a run of direct batches ended.
pub enum Ended {
    /// `batch` holds the next batch for sqlx, or nothing when the queue has
    /// ended.
    Handed,
    /// A transaction failed (its callers were answered): open a fresh
    /// connection before the next batch.
    Failed,
}

/// Stores `batch`, and each batch after it while `can_store` says so,
/// holding the connection's handle throughout. `stopping` is set when the
/// queue asked to stop.
pub async fn store_while_plain(
    store: &Store,
    conn: &mut SqliteConnection,
    cache: &mut RoomCache,
    rx: &mut mpsc::Receiver<Command>,
    batch: &mut Vec<Pending>,
    settled: &mpsc::Sender<Vec<Settled>>,
    stopping: &mut bool,
) -> Result<Ended> {
    let mut locked = conn.lock_handle().await?;
    // SAFETY: the handle stays locked (sqlx's thread waits for it) until
    // `locked` drops, and `db`, declared after it, drops first. `db` does
    // not close the handle, and finalizes its statements when it drops.
    let db = unsafe { Connection::from_handle(locked.as_raw_handle().as_ptr()) }
        .map_err(into_store_error)?;
    loop {
        let (outcomes, failed) = match store_batch(&db, cache, batch) {
            Ok(results) => {
                let outcomes = batch
                    .drain(..)
                    .map(|(_, reply)| reply)
                    .zip(results)
                    .collect();
                (outcomes, false)
            }
            Err(err) => {
                // The cached positions include sequence numbers that were
                // never stored.
                cache.forget_all();
                (refuse_all(store, batch, &into_store_error(err)), true)
            }
        };
        if settled.send(outcomes).await.is_err() {
            *stopping = true;
            return Ok(Ended::Handed);
        }
        if failed {
            return Ok(Ended::Failed);
        }
        if *stopping {
            return Ok(Ended::Handed);
        }
        *stopping = receive(rx, batch).await;
        if batch.is_empty() || !can_store(batch, cache) {
            return Ok(Ended::Handed);
        }
    }
}

/// One transaction for the batch, rolled back on any error.
fn store_batch(
    db: &Connection,
    cache: &mut RoomCache,
    batch: &[Pending],
) -> rusqlite::Result<Vec<Result<Done>>> {
    let messages: Vec<NewMessage<'_>> = batch
        .iter()
        .map(|(op, _)| plain_message(op).expect("can_store admits plain messages only"))
        .collect();
    // IMMEDIATE: see `try_batch`.
    db.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let stored = append(db, cache, &messages).and_then(|outcomes| {
        crate::store::commit_timing::time_direct_commit(|| {
            db.prepare_cached("COMMIT")?.execute([])
        })?;
        Ok(outcomes)
    });
    if stored.is_err() && !db.is_autocommit() {
        let _ = db.execute_batch("ROLLBACK");
    }
    stored
}

/// The statements of `sends::store_messages`, one row at a time: without a
/// thread between, a prepared statement run per row costs less than
/// building and parsing a multi-row one.
fn append(
    db: &Connection,
    cache: &mut RoomCache,
    messages: &[NewMessage<'_>],
) -> rusqlite::Result<Vec<Result<Done>>> {
    let allowed = sends::members_allowed(cache, messages);
    let mut stored = HashMap::new();
    let mut lookup = db.prepare_cached(
        "SELECT seq, ts FROM entries
         WHERE room_id = ?1 AND sender_id = ?2 AND client_id = ?3 AND client_id IS NOT NULL",
    )?;
    for key @ (room, sender, client_id) in sends::candidates(messages, &allowed) {
        let mut rows = lookup.query(params![room.0, sender.0, client_id])?;
        if let Some(row) = rows.next()? {
            stored.insert(key, (row.get(0)?, row.get(1)?));
        }
    }
    let planned = sends::plan(cache, messages, &allowed, stored);
    let mut insert = db.prepare_cached(
        "INSERT INTO entries (room_id, seq, ts, kind, sender_id, client_id, body, expires_at)
         VALUES (?1, ?2, ?3, 'message', ?4, ?5, ?6, ?7)",
    )?;
    for (m, (seq, expires)) in planned.rows.iter().zip(&planned.seqs) {
        insert.execute(params![
            m.room.0,
            seq,
            planned.ts,
            m.sender.id.0,
            m.client_id,
            m.body,
            expires
        ])?;
    }
    let mut advance = db.prepare_cached("UPDATE rooms SET last_seq = ?2 WHERE id = ?1")?;
    for (room, seq) in &planned.positions {
        advance.execute(params![room.0, seq])?;
    }
    Ok(planned.outcomes)
}

/// A failure of SQLite's, as the rest of the store sees sqlx's: a database
/// error whose code is SQLite's extended result code, so that
/// `faults::classify` tells a full disk or a lock from a bug alike.
fn into_store_error(err: rusqlite::Error) -> StoreError {
    match err {
        rusqlite::Error::SqliteFailure(failure, message) => {
            StoreError::Db(sqlx::Error::Database(Box::new(SqliteFailure {
                code: failure.extended_code,
                message: message.unwrap_or_else(|| failure.to_string()),
            })))
        }
        other => StoreError::Db(sqlx::Error::Protocol(other.to_string())),
    }
}

#[derive(Debug)]
struct SqliteFailure {
    code: i32,
    message: String,
}

impl fmt::Display for SqliteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(code: {}) {}", self.code, self.message)
    }
}

impl std::error::Error for SqliteFailure {}

impl DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use crate::store::commit_timing::direct_commits;
    use crate::store::{RoomId, Store, StoreError, UserRef};

    async fn user(store: &Store, name: &str) -> UserRef {
        let id = store
            .create_user(name, "$argon2id$not-a-real-hash", name.as_bytes(), name)
            .await
            .expect("a new user");
        UserRef {
            id,
            name: name.to_owned(),
        }
    }

    /// Sends `count` messages at once, so that several share a batch.
    async fn burst(
        writer: &super::super::Writer,
        room: RoomId,
        from: &UserRef,
        tag: &str,
        count: usize,
    ) {
        let sends = (0..count).map(|i| {
            writer.send_message(
                room,
                from.clone(),
                format!("{tag}{i}"),
                format!("{tag}{i}").into_bytes(),
            )
        });
        for sent in futures_util::future::join_all(sends).await {
            let applied = sent.expect("stored");
            assert!(!applied.duplicate);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_between_membership_changes_go_direct_and_read_back_with_no_gap() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(&dir.path().join("hush.db"))
            .await
            .expect("store");
        let (alice, bob, carol) = (
            user(&store, "alice").await,
            user(&store, "bob").await,
            user(&store, "carol").await,
        );
        let announced = Arc::new(Mutex::new(Vec::new()));
        let seen = announced.clone();
        let (writer, task) = store.spawn_writer(Box::new(move |c| {
            seen.lock()
                .expect("announced")
                .push((c.entry.seq, c.entry.client_id.clone()));
        }));
        let room = writer
            .create_group(alice.clone(), "direct".into())
            .await
            .expect("room")
            .room;
        writer
            .invite(room, alice.clone(), bob.clone())
            .await
            .expect("invite");
        writer.join(room, bob.clone()).await.expect("join");

        let direct_before = direct_commits();
        // The first message loads the room through sqlx; those after it
        // find it in the view and go direct.
        burst(&writer, room, &alice, "a", 1).await;
        burst(&writer, room, &alice, "b", 40).await;
        burst(&writer, room, &bob, "c", 40).await;
        assert!(
            direct_commits() > direct_before,
            "no batch went through the direct path"
        );

        // A resend is the stored entry again; a non-member learns nothing.
        let first = writer
            .send_message(room, alice.clone(), "b7".into(), b"again".to_vec())
            .await
            .expect("resend");
        assert!(first.duplicate);
        let stored_b7 = announced
            .lock()
            .expect("announced")
            .iter()
            .find(|(_, id)| id.as_deref() == Some("b7"))
            .map(|(seq, _)| *seq);
        assert_eq!(first.entry.as_ref().map(|e| e.seq), stored_b7);
        let refused = writer
            .send_message(room, carol.clone(), "x".into(), b"x".to_vec())
            .await;
        assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");

        // A change (through sqlx) between two runs of direct batches: the
        // new member's messages are taken, the leaver's refused.
        writer
            .invite(room, alice.clone(), carol.clone())
            .await
            .expect("invite");
        writer.join(room, carol.clone()).await.expect("join");
        writer.leave(room, bob.clone()).await.expect("leave");
        burst(&writer, room, &carol, "d", 20).await;
        let refused = writer
            .send_message(room, bob.clone(), "late".into(), b"late".to_vec())
            .await;
        assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");

        writer.stop().await;
        task.await.expect("writer ends");

        // What was announced is what was stored: every entry once, in seq
        // order, no gap, each message's body intact.
        let mut stored = Vec::new();
        store
            .visit_entries_after(room, alice.id, 0, 10_000, |entry| {
                stored.push(entry);
                std::ops::ControlFlow::Continue(())
            })
            .await
            .expect("read back");
        let seqs: Vec<i64> = stored.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
        let announced = announced.lock().expect("announced").clone();
        let stored_pairs: Vec<(i64, Option<String>)> = stored
            .iter()
            .map(|e| (e.seq, e.client_id.clone()))
            .collect();
        assert_eq!(announced, stored_pairs);
        let messages: Vec<&str> = stored
            .iter()
            .filter_map(|e| e.client_id.as_deref())
            .collect();
        assert_eq!(messages.len(), 101, "1 + 40 + 40 + 20 messages, each once");
        for entry in stored.iter().filter(|e| e.client_id.is_some()) {
            let id = entry.client_id.as_deref().expect("a message");
            assert_eq!(entry.body.as_deref(), Some(id.as_bytes()), "body of {id}");
        }
    }
}

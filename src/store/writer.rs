//! The single writer of room logs.
//!
//! Every change that appends to a room's log (messages, membership changes,
//! key rotations) is sent here as an `Op`. One thread applies them in
//! arrival order, many per transaction, on a connection of its own; only
//! after a transaction commits does the announcer, a task on the server's
//! runtime, answer each caller and hand each new entry to `on_commit`, in
//! commit order, while the writer stores the next batch. That is what lets
//! sessions deliver live entries without gaps: an entry is never announced
//! before it can be read back, and never announced out of order. On SQLite,
//! batches of plain messages to rooms the writer already knows skip sqlx
//! and its thread (`direct`).

mod direct;
mod relations;
mod sends;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::db::{self, Backend, Tx};
use super::{
    Entry, EntryKind, Result, RoomId, Store, StoreError, UserId, UserRef, now_ms, unique_violation,
};

/// Most operations applied in one transaction. Large, because each commit
/// costs an fsync (synchronous=FULL), which a busy disk makes slow, and
/// because a batch to many rooms writes each room's last pages once: with
/// 500 busy rooms, 8,192 rather than 4,096 took `dm` from ~23k to ~29k
/// msgs/s.
const MAX_BATCH: usize = 8192;
/// Operations that may wait for the writer before callers are slowed down.
const QUEUE_DEPTH: usize = 8192;
/// Committed batches that may wait for their announcement before the
/// writer stops to let the announcer catch up.
const SETTLED_DEPTH: usize = 2;
/// Entries announced before the announcer lets other tasks run.
const ANNOUNCE_RUN: usize = 256;
/// Times a batch is tried on PostgreSQL when it lost a race with another
/// node's writer (a deadlock, a serialization failure, a unique index).
const PG_ATTEMPTS: usize = 3;

/// A committed entry and who may see it live.
#[derive(Debug, Clone)]
pub struct Committed {
    pub entry: Entry,
    /// Members at the entry's position (a leaver or removed user included).
    pub recipients: Arc<[UserId]>,
    /// A user told about the entry without being a member (an invitee).
    pub notify: Option<UserId>,
}

/// What an operation did, for its caller.
#[derive(Debug, Clone)]
pub struct Applied {
    pub room: RoomId,
    /// The entry this operation appended (or, for a duplicate send, the one
    /// it appended the first time). `None` when nothing was appended.
    pub entry: Option<Entry>,
    /// A resend of a message already stored: nothing new was written.
    pub duplicate: bool,
}

pub type OnCommit = Box<dyn Fn(&Committed) + Send + Sync>;

enum Op {
    Send {
        room: RoomId,
        sender: UserRef,
        client_id: String,
        body: Vec<u8>,
        /// A seq of the sender's to turn into a tombstone in the same
        /// transaction (§21, `erase`).
        erase: Option<i64>,
    },
    Change(Change),
}

impl Op {
    /// A send as the message to store and the seq it erases, if any.
    fn message(&self) -> Option<(sends::NewMessage<'_>, Option<i64>)> {
        let Op::Send {
            room,
            sender,
            client_id,
            body,
            erase,
        } = self
        else {
            return None;
        };
        let message = sends::NewMessage {
            room: *room,
            sender,
            client_id,
            body,
        };
        Some((message, *erase))
    }
}

/// Every op other than a message: rarer, and applied one at a time.
enum Change {
    CreateGroup {
        creator: UserRef,
        name: String,
    },
    OpenDm {
        me: UserRef,
        peer: UserRef,
    },
    Invite {
        room: RoomId,
        by: UserRef,
        user: UserRef,
    },
    Join {
        room: RoomId,
        user: UserRef,
    },
    Leave {
        room: RoomId,
        user: UserRef,
    },
    Remove {
        room: RoomId,
        by: UserRef,
        user: UserRef,
    },
    RotateKey {
        user: UserRef,
        old_fingerprint: String,
        new_key: NewKey,
    },
    Block {
        user: UserRef,
        blocked: UserRef,
    },
    Unblock {
        user: UserRef,
        blocked: UserRef,
    },
    Accept {
        room: RoomId,
        user: UserRef,
    },
    Decline {
        room: RoomId,
        user: UserRef,
    },
    Promote {
        room: RoomId,
        by: UserRef,
        user: UserRef,
    },
    Demote {
        room: RoomId,
        by: UserRef,
        user: UserRef,
    },
    SetTimer {
        room: RoomId,
        user: UserRef,
        timer: NewTimer,
    },
}

/// A timer statement whose framing, fields and signature the caller checked.
#[derive(Debug, Clone)]
pub struct NewTimer {
    pub ttl_secs: u32,
    /// The `after` of the statement: the newest seq its setter had seen.
    pub after: i64,
    pub statement: Vec<u8>,
}

/// A replacement identity key, already verified by the caller.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub public_key: Vec<u8>,
    pub fingerprint: String,
    pub rotation_signature: Vec<u8>,
}

enum Command {
    Apply(Op, oneshot::Sender<Result<Applied>>),
    Stop,
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
}

impl Store {
    /// Starts the writer. `on_commit` runs on the announcer task for each
    /// new entry, in commit order: it must not block. Call from within the
    /// server's runtime.
    pub fn spawn_writer(&self, on_commit: OnCommit) -> (Writer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (settled_tx, settled_rx) = mpsc::channel(SETTLED_DEPTH);
        let store = self.clone();
        // Its own thread, not a task on the shared runtime: behind a
        // thousand busy sessions, each of the writer's many awaits per
        // batch would wait its turn on the run queue.
        let backend = self.db.backend();
        let writer = tokio::task::spawn_blocking(move || {
            let mut runtime = tokio::runtime::Builder::new_current_thread();
            match backend {
                // SQLite's connection needs no sockets: without an I/O
                // driver the thread sleeps on a futex instead of in
                // `epoll_wait`, and a wake-up costs no `eventfd` write.
                Backend::Sqlite => runtime.enable_time(),
                Backend::Postgres => runtime.enable_all(),
            };
            let runtime = runtime.build().expect("building the writer's runtime");
            runtime.block_on(run(store, rx, settled_tx));
        });
        // The announcer is a task on the server's runtime, not a thread of
        // its own: the sessions it wakes (a hundred for one message to a
        // hundred members) are then put on its worker's own run queue,
        // instead of each wake-up from a foreign thread going through the
        // shared queue and waking a sleeping worker (issue 18).
        let announcer = tokio::spawn(announce(settled_rx, on_commit));
        let task = tokio::spawn(async move {
            let _ = writer.await;
            let _ = announcer.await;
        });
        (Writer { tx }, task)
    }
}

impl Writer {
    async fn apply(&self, op: Op) -> Result<Applied> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send(Command::Apply(op, reply_tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        reply_rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Finishes everything queued so far, then stops the task.
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }

    /// A place in the writer's queue if one is free right now; `Ok(None)`
    /// while the queue is full (the writer is saturated).
    pub fn try_reserve(&self) -> Result<Option<QueueSlot>> {
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => Ok(Some(QueueSlot(permit))),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(None),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::Closed),
        }
    }

    /// Waits for a place in the writer's queue. A session waiting here stops
    /// reading its socket, which is how senders are slowed.
    pub async fn reserve(self) -> Result<QueueSlot> {
        self.tx
            .reserve_owned()
            .await
            .map(QueueSlot)
            .map_err(|_| StoreError::Closed)
    }

    /// Appends a message. A resend with the same `client_id` by the same
    /// sender in the same room returns the original entry, marked duplicate.
    pub async fn send_message(
        &self,
        room: RoomId,
        sender: UserRef,
        client_id: String,
        body: Vec<u8>,
    ) -> Result<Applied> {
        self.apply(Op::Send {
            room,
            sender,
            client_id,
            body,
            erase: None,
        })
        .await
    }

    /// `user` blocks `blocked` (idempotent); declines `user`'s pending
    /// request from `blocked`, if any.
    pub async fn block(&self, user: UserRef, blocked: UserRef) -> Result<Applied> {
        self.apply(Op::Change(Change::Block { user, blocked }))
            .await
    }

    pub async fn unblock(&self, user: UserRef, blocked: UserRef) -> Result<Applied> {
        self.apply(Op::Change(Change::Unblock { user, blocked }))
            .await
    }

    /// Accepts a direct-conversation request (or joins on an invitation).
    pub async fn accept(&self, room: RoomId, user: UserRef) -> Result<Applied> {
        self.apply(Op::Change(Change::Accept { room, user })).await
    }

    /// Declines a direct-conversation request or a group invitation.
    pub async fn decline(&self, room: RoomId, user: UserRef) -> Result<Applied> {
        self.apply(Op::Change(Change::Decline { room, user })).await
    }

    pub async fn promote(&self, room: RoomId, by: UserRef, user: UserRef) -> Result<Applied> {
        self.apply(Op::Change(Change::Promote { room, by, user }))
            .await
    }

    pub async fn demote(&self, room: RoomId, by: UserRef, user: UserRef) -> Result<Applied> {
        self.apply(Op::Change(Change::Demote { room, by, user }))
            .await
    }

    /// Appends a `timer` entry and makes its duration the room's.
    pub async fn set_timer(&self, room: RoomId, user: UserRef, timer: NewTimer) -> Result<Applied> {
        self.apply(Op::Change(Change::SetTimer { room, user, timer }))
            .await
    }

    pub async fn create_group(&self, creator: UserRef, name: String) -> Result<Applied> {
        self.apply(Op::Change(Change::CreateGroup { creator, name }))
            .await
    }

    /// Finds or creates the DM between two users.
    pub async fn open_dm(&self, me: UserRef, peer: UserRef) -> Result<Applied> {
        self.apply(Op::Change(Change::OpenDm { me, peer })).await
    }

    pub async fn invite(&self, room: RoomId, by: UserRef, user: UserRef) -> Result<Applied> {
        self.apply(Op::Change(Change::Invite { room, by, user }))
            .await
    }

    pub async fn join(&self, room: RoomId, user: UserRef) -> Result<Applied> {
        self.apply(Op::Change(Change::Join { room, user })).await
    }

    pub async fn leave(&self, room: RoomId, user: UserRef) -> Result<Applied> {
        self.apply(Op::Change(Change::Leave { room, user })).await
    }

    pub async fn remove(&self, room: RoomId, by: UserRef, user: UserRef) -> Result<Applied> {
        self.apply(Op::Change(Change::Remove { room, by, user }))
            .await
    }

    /// Replaces `user`'s current key (which must still have
    /// `old_fingerprint`) and records a `key` entry in each of their rooms.
    pub async fn rotate_key(
        &self,
        user: UserRef,
        old_fingerprint: String,
        new_key: NewKey,
    ) -> Result<Applied> {
        self.apply(Op::Change(Change::RotateKey {
            user,
            old_fingerprint,
            new_key,
        }))
        .await
    }
}

/// A reserved place in the writer's queue, for one message.
pub struct QueueSlot(mpsc::OwnedPermit<Command>);

impl QueueSlot {
    /// Queues a message and returns at once with the receiver of its
    /// outcome, so one connection can have many messages in flight while
    /// their order is fixed by the order of these calls.
    pub fn enqueue_message(
        self,
        room: RoomId,
        sender: UserRef,
        client_id: String,
        body: Vec<u8>,
        erase: Option<i64>,
    ) -> oneshot::Receiver<Result<Applied>> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let op = Op::Send {
            room,
            sender,
            client_id,
            body,
            erase,
        };
        self.0.send(Command::Apply(op, reply_tx));
        reply_rx
    }
}

/// The outcome of one op, waiting to be told to its caller.
type Settled = (oneshot::Sender<Result<Applied>>, Result<Done>);
/// An op and where its outcome goes.
type Pending = (Op, oneshot::Sender<Result<Applied>>);

/// Waits for the next op, then takes whatever else is queued, up to
/// `MAX_BATCH`, into `batch`. True when the queue asked to stop or ended
/// (`batch` then holds what came before).
async fn receive(rx: &mut mpsc::Receiver<Command>, batch: &mut Vec<Pending>) -> bool {
    match rx.recv().await {
        Some(Command::Apply(op, reply)) => batch.push((op, reply)),
        Some(Command::Stop) | None => return true,
    }
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(Command::Apply(op, reply)) => batch.push((op, reply)),
            Ok(Command::Stop) => return true,
            Err(_) => break,
        }
    }
    false
}

async fn run(store: Store, mut rx: mpsc::Receiver<Command>, settled: mpsc::Sender<Vec<Settled>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut cache = sends::RoomCache::default();
    let mut conn: Option<db::Conn> = None;
    let mut stopping = false;
    loop {
        if batch.is_empty() {
            if stopping {
                break;
            }
            stopping = receive(&mut rx, &mut batch).await;
            if batch.is_empty() {
                break;
            }
        }
        let outcomes = match connection(&store, &mut conn, &mut cache).await {
            Ok(db::Conn::Sqlite(sqlite)) if direct::can_store(&batch, &cache) => {
                let ended = direct::store_while_plain(
                    &store,
                    sqlite,
                    &mut cache,
                    &mut rx,
                    &mut batch,
                    &settled,
                    &mut stopping,
                )
                .await;
                match ended {
                    Ok(direct::Ended::Handed) => continue,
                    Ok(direct::Ended::Failed) => {
                        conn = None;
                        continue;
                    }
                    Err(err) => {
                        // The handle could not be had (nothing was stored):
                        // the connection is gone; answer this batch and
                        // start afresh.
                        conn = None;
                        refuse_all(&store, &mut batch, &err)
                    }
                }
            }
            Ok(open) => {
                let outcomes = commit_batch(&store, open, &mut cache, &mut batch).await;
                if outcomes.failed {
                    // Start the next batch on a fresh connection, in case
                    // the fault left this one unusable.
                    conn = None;
                }
                outcomes.settled
            }
            Err(err) => refuse_all(&store, &mut batch, &err),
        };
        if settled.send(outcomes).await.is_err() {
            break;
        }
    }
}

/// The writer's connection, opened on first use and again after a failed
/// transaction.
async fn connection<'c>(
    store: &Store,
    conn: &'c mut Option<db::Conn>,
    cache: &mut sends::RoomCache,
) -> Result<&'c mut db::Conn> {
    if conn.is_none() {
        let mut opened = store.open_writer_conn().await?;
        if opened.backend() == Backend::Postgres {
            cache.versioned = has_state_version(&mut opened).await?;
        }
        *conn = Some(opened);
    }
    Ok(conn.as_mut().expect("opened above"))
}

/// PostgreSQL: whether `rooms` has the `state_version` column (see
/// `sends`); without it the writer still works, reloading direct
/// conversations in every batch.
async fn has_state_version(conn: &mut db::Conn) -> Result<bool> {
    let found: i64 = db::query(
        "SELECT COUNT(*) FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = 'rooms'
           AND column_name = 'state_version'",
    )
    .fetch_scalar(&mut *conn)
    .await?;
    if found == 0 {
        tracing::warn!(
            "rooms.state_version is missing: direct conversations are reloaded in every batch"
        );
    }
    Ok(found > 0)
}

/// Answers every op of a batch that could not be stored.
fn refuse_all(store: &Store, batch: &mut Vec<Pending>, err: &StoreError) -> Vec<Settled> {
    let fault = store.fault_of(err);
    tracing::error!(error = %err, ops = batch.len(), "log transaction failed; nothing in it was stored");
    batch
        .drain(..)
        .map(|(_, reply)| (reply, Err(StoreError::Unavailable(fault))))
        .collect()
}

/// What became of a batch.
struct Outcomes {
    settled: Vec<Settled>,
    /// The transaction failed and nothing in it was stored.
    failed: bool,
}

/// Answers callers and announces new entries, batch after batch in commit
/// order, while the writer stores the next batch.
async fn announce(mut settled: mpsc::Receiver<Vec<Settled>>, on_commit: OnCommit) {
    while let Some(outcomes) = settled.recv().await {
        let mut since_yield = 0;
        for (reply, result) in outcomes {
            let reply_value = result.map(|(applied, committed)| {
                for c in &committed {
                    on_commit(c);
                }
                since_yield += committed.len();
                applied
            });
            let _ = reply.send(reply_value);
            // A batch can hold thousands of entries: let the worker's
            // other tasks (the sessions writing them out) run between.
            if since_yield >= ANNOUNCE_RUN {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Applies a batch in one transaction (see `try_batch`). On PostgreSQL a
/// batch that lost a race with another node's writer is tried again, up to
/// `PG_ATTEMPTS` times in all, rather than failing its callers.
async fn commit_batch(
    store: &Store,
    conn: &mut db::Conn,
    cache: &mut sends::RoomCache,
    batch: &mut Vec<Pending>,
) -> Outcomes {
    let attempts = match conn.backend() {
        Backend::Sqlite => 1,
        Backend::Postgres => PG_ATTEMPTS,
    };
    let mut attempt = 1;
    let outcome = loop {
        match try_batch(conn, cache, batch).await {
            Ok(done) => break Ok(done),
            Err(err) => {
                // The cached positions include sequence numbers that were
                // never stored.
                cache.forget_all();
                if attempt < attempts && lost_a_race(&err) {
                    tracing::info!(error = %err, attempt, ops = batch.len(), "log transaction lost a race with another writer; trying again");
                    attempt += 1;
                    continue;
                }
                break Err(err);
            }
        }
    };
    match outcome {
        Ok((results, erased)) => {
            if erased {
                store.erased();
            }
            Outcomes {
                settled: batch
                    .drain(..)
                    .map(|(_, reply)| reply)
                    .zip(results)
                    .collect(),
                failed: false,
            }
        }
        Err(err) => Outcomes {
            settled: refuse_all(store, batch, &err),
            failed: true,
        },
    }
}

/// Whether a PostgreSQL transaction failed only because another node's
/// writer got there first: a deadlock (40P01), a serialization failure
/// (40001), or a unique index (23505, e.g. the same client id stored by
/// another node between our lookup and our insert). Tried again, the batch
/// sees the other node's committed rows.
fn lost_a_race(err: &StoreError) -> bool {
    match err {
        StoreError::Db(sqlx::Error::Database(e)) => {
            matches!(e.code().as_deref(), Some("40P01" | "40001" | "23505"))
        }
        _ => false,
    }
}

/// Applies a batch in one transaction. Runs of messages go through the
/// multi-row fast path (`sends`); every other op runs inside its own
/// savepoint so that one op's refusal leaves the others intact. Returns
/// each op's outcome and whether a message was erased.
async fn try_batch(
    conn: &mut db::Conn,
    cache: &mut sends::RoomCache,
    batch: &[Pending],
) -> Result<(Vec<Result<Done>>, bool)> {
    let mut results: Vec<Result<Done>> = Vec::with_capacity(batch.len());
    let mut erased = false;
    // On SQLite, IMMEDIATE takes the write lock up front, waiting out the
    // busy timeout: a deferred transaction that read first would fail at
    // once (SQLITE_BUSY_SNAPSHOT) whenever a pool write (a login, a
    // registration) committed between its read and its first write.
    let mut tx = conn.begin_write().await?;
    let versions = match tx.backend() {
        Backend::Sqlite => Versions(false),
        Backend::Postgres => {
            // Other nodes' writers append to the same rooms: hold every
            // room this batch will touch until it commits, then drop what
            // they changed from the cache.
            let rooms = rooms_to_lock(&mut tx, batch).await?;
            let locked = lock_rooms(&mut tx, &rooms, cache.versioned).await?;
            cache.revalidate(&locked);
            Versions(cache.versioned)
        }
    };
    let chunk = sends::chunk(tx.backend());
    let mut run: Vec<sends::NewMessage<'_>> = Vec::with_capacity(chunk);
    for (op, _) in batch.iter() {
        if let Some((message, erase)) = op.message() {
            let Some(target) = erase else {
                run.push(message);
                if run.len() == chunk {
                    results.extend(sends::store_messages(&mut tx, cache, &run).await?);
                    run.clear();
                }
                continue;
            };
            if !run.is_empty() {
                results.extend(sends::store_messages(&mut tx, cache, &run).await?);
                run.clear();
            }
            let done = sends::store_erasing(&mut tx, cache, &message, target).await?;
            erased |= matches!(&done, Ok((applied, _)) if !applied.duplicate);
            results.push(done);
            continue;
        }
        let Op::Change(change) = op else {
            unreachable!("an op that is not a message is a change");
        };
        if !run.is_empty() {
            results.extend(sends::store_messages(&mut tx, cache, &run).await?);
            run.clear();
        }
        db::query("SAVEPOINT op").execute(&mut tx).await?;
        match apply(&mut tx, versions, change).await {
            Ok(done) => {
                db::query("RELEASE op").execute(&mut tx).await?;
                forget_touched(cache, change, &done);
                results.push(Ok(done));
            }
            Err(StoreError::Db(e)) => return Err(StoreError::Db(e)),
            Err(refused) => {
                db::query("ROLLBACK TO op").execute(&mut tx).await?;
                db::query("RELEASE op").execute(&mut tx).await?;
                results.push(Err(refused));
            }
        }
    }
    if !run.is_empty() {
        results.extend(sends::store_messages(&mut tx, cache, &run).await?);
    }
    super::commit_timing::time_commit(tx.commit()).await?;
    Ok((results, erased))
}

/// PostgreSQL: every room the batch names, and the rooms its changes will
/// find while running (a key rotation's rooms, a block's or an open_dm's
/// direct conversation), in id order. A room found later still gets locked
/// by the statement that changes it, out of order; the rare deadlock that
/// can cause is tried again (`lost_a_race`).
async fn rooms_to_lock(tx: &mut Tx<'_>, batch: &[Pending]) -> Result<Vec<RoomId>> {
    let mut rooms = std::collections::BTreeSet::new();
    for (op, _) in batch {
        let change = match op {
            Op::Send { room, .. } => {
                rooms.insert(*room);
                continue;
            }
            Op::Change(change) => change,
        };
        match change {
            Change::Invite { room, .. }
            | Change::Join { room, .. }
            | Change::Leave { room, .. }
            | Change::Remove { room, .. }
            | Change::Accept { room, .. }
            | Change::Decline { room, .. }
            | Change::Promote { room, .. }
            | Change::Demote { room, .. }
            | Change::SetTimer { room, .. } => {
                rooms.insert(*room);
            }
            Change::Block {
                user,
                blocked: peer,
            }
            | Change::Unblock {
                user,
                blocked: peer,
            }
            | Change::OpenDm { me: user, peer } => {
                let found: Option<RoomId> = db::query("SELECT id FROM rooms WHERE dm_pair = ?")
                    .bind(dm_pair(user.id, peer.id))
                    .fetch_optional_scalar(&mut *tx)
                    .await?;
                rooms.extend(found);
            }
            Change::RotateKey { user, .. } => {
                let found: Vec<RoomId> = db::query(
                    "SELECT room_id FROM memberships WHERE user_id = ? AND end_seq IS NULL",
                )
                .bind(user.id)
                .fetch_all_scalars(&mut *tx)
                .await?;
                rooms.extend(found);
            }
            Change::CreateGroup { .. } => {}
        }
    }
    Ok(rooms.into_iter().collect())
}

/// PostgreSQL: locks `rooms` (sorted) in id order, so that two nodes'
/// writers never wait for each other in a cycle, and returns each one's
/// (id, last_seq, state_version) as locked. `FOR NO KEY UPDATE` is the
/// lock an UPDATE of `last_seq` takes anyway: it keeps other writers out
/// but not inserts elsewhere that merely reference the room.
async fn lock_rooms(
    tx: &mut Tx<'_>,
    rooms: &[RoomId],
    versioned: bool,
) -> Result<Vec<(RoomId, i64, i64)>> {
    let version = if versioned {
        "state_version"
    } else {
        "CAST(0 AS BIGINT)"
    };
    // One array parameter: one statement text however many rooms.
    let sql = format!(
        "SELECT id, last_seq, {version} FROM rooms WHERE id = ANY(CAST(? AS BIGINT[]))
         ORDER BY id FOR NO KEY UPDATE"
    );
    let ids: Vec<i64> = rooms.iter().map(|room| room.0).collect();
    Ok(db::query_built(sql)
        .bind(db::PgArray(ids))
        .fetch_all::<(RoomId, i64, i64)>(&mut *tx)
        .await?)
}

/// Counts, on PostgreSQL, the changes to a room that append no entry but
/// change who may send to it or hear from it (`rooms.state_version`), so
/// that other nodes' writers reload it (`sends::RoomCache::revalidate`).
/// Does nothing on SQLite (one writer, whose own cache follows every
/// change) or without the column.
#[derive(Debug, Clone, Copy)]
pub(super) struct Versions(bool);

impl Versions {
    async fn bump_room(self, tx: &mut Tx<'_>, room: RoomId) -> Result<()> {
        if self.0 {
            db::query("UPDATE rooms SET state_version = state_version + 1 WHERE id = ?")
                .bind(room)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    async fn bump_pair(self, tx: &mut Tx<'_>, pair: &str) -> Result<()> {
        if self.0 {
            db::query("UPDATE rooms SET state_version = state_version + 1 WHERE dm_pair = ?")
                .bind(pair)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

/// The `dm_pair` of two users' direct conversation.
fn dm_pair(a: UserId, b: UserId) -> String {
    format!("{}:{}", a.0.min(b.0), a.0.max(b.0))
}

/// Drops the cached view of every room a non-message op changed.
fn forget_touched(cache: &mut sends::RoomCache, change: &Change, done: &Done) {
    match change {
        Change::Invite { room, .. }
        | Change::Join { room, .. }
        | Change::Leave { room, .. }
        | Change::Remove { room, .. }
        | Change::Accept { room, .. }
        | Change::Decline { room, .. }
        | Change::SetTimer { room, .. } => cache.forget(*room),
        // Who may send to whom changed in some direct conversation.
        Change::Block { .. } | Change::Unblock { .. } => cache.forget_all(),
        _ => {}
    }
    cache.forget(done.0.room);
    for committed in &done.1 {
        cache.forget(committed.entry.room);
    }
}

type Done = (Applied, Vec<Committed>);

async fn apply(tx: &mut Tx<'_>, versions: Versions, change: &Change) -> Result<Done> {
    match change {
        Change::CreateGroup { creator, name } => create_group(tx, creator, name).await,
        Change::OpenDm { me, peer } => open_dm(tx, versions, me, peer).await,
        Change::Invite { room, by, user } => invite(tx, *room, by, user).await,
        Change::Join { room, user } => join(tx, *room, user).await,
        Change::Leave { room, user } => leave(tx, *room, user).await,
        Change::Remove { room, by, user } => remove(tx, *room, by, user).await,
        Change::RotateKey {
            user,
            old_fingerprint,
            new_key,
        } => rotate_key(tx, user, old_fingerprint, new_key).await,
        Change::Block { user, blocked } => relations::block(tx, versions, user, blocked).await,
        Change::Unblock { user, blocked } => relations::unblock(tx, versions, user, blocked).await,
        Change::Accept { room, user } => relations::accept(tx, versions, *room, user).await,
        Change::Decline { room, user } => relations::decline(tx, versions, *room, user).await,
        Change::Promote { room, by, user } => relations::promote(tx, *room, by, user).await,
        Change::Demote { room, by, user } => relations::demote(tx, *room, by, user).await,
        Change::SetTimer { room, user, timer } => {
            relations::set_timer(tx, *room, user, timer).await
        }
    }
}

async fn create_group(tx: &mut Tx<'_>, creator: &UserRef, name: &str) -> Result<Done> {
    let now = now_ms();
    let room: RoomId = db::query("INSERT INTO rooms (kind, name, creator_id, created_at) VALUES ('group', ?, ?, ?) RETURNING id")
        .bind(name)
        .bind(creator.id)
        .bind(now)
        .fetch_scalar(&mut *tx)
        .await?;
    let entry = append(
        tx,
        new_entry(room, 0, now, EntryKind::Create, creator, None),
        creator.id,
        None,
    )
    .await?;
    start_membership(tx, room, creator.id, entry.seq).await?;
    Ok(appended(entry, vec![creator.id], None))
}

async fn open_dm(
    tx: &mut Tx<'_>,
    versions: Versions,
    me: &UserRef,
    peer: &UserRef,
) -> Result<Done> {
    if me.id == peer.id {
        return Err(StoreError::Conflict(
            "a direct conversation needs two different users",
        ));
    }
    if relations::blocks(tx, peer.id, me.id).await? {
        return Err(StoreError::Blocked);
    }
    let pair = dm_pair(me.id, peer.id);
    let existing: Option<RoomId> = db::query("SELECT id FROM rooms WHERE dm_pair = ?")
        .bind(&pair)
        .fetch_optional_scalar(&mut *tx)
        .await?;
    if let Some(room) = existing {
        return open_existing_dm(tx, versions, room, me).await;
    }
    let is_request = !relations::share_a_group(tx, me.id, peer.id).await?;
    let now = now_ms();
    // Another node's writer may create the same conversation meanwhile
    // (PostgreSQL waits for it to commit, then skips the row): then it is
    // an existing one.
    let created: Option<RoomId> = db::query(
        "INSERT INTO rooms (kind, creator_id, dm_pair, created_at) VALUES ('dm', ?, ?, ?)
         ON CONFLICT (dm_pair) DO NOTHING RETURNING id",
    )
    .bind(me.id)
    .bind(&pair)
    .bind(now)
    .fetch_optional_scalar(&mut *tx)
    .await?;
    let Some(room) = created else {
        let room: RoomId = db::query("SELECT id FROM rooms WHERE dm_pair = ?")
            .bind(&pair)
            .fetch_scalar(&mut *tx)
            .await?;
        return open_existing_dm(tx, versions, room, me).await;
    };
    let entry = append(
        tx,
        new_entry(room, 0, now, EntryKind::Create, me, Some(peer)),
        me.id,
        Some(peer.id),
    )
    .await?;
    start_membership(tx, room, me.id, entry.seq).await?;
    start_membership(tx, room, peer.id, entry.seq).await?;
    if is_request {
        relations::open_request(tx, room, peer.id).await?;
    }
    Ok(appended(
        entry,
        vec![me.id, peer.id],
        is_request.then_some(peer.id),
    ))
}

/// `open_dm` of a conversation that exists: the peer of a request opening
/// it themself accepts it.
async fn open_existing_dm(
    tx: &mut Tx<'_>,
    versions: Versions,
    room: RoomId,
    me: &UserRef,
) -> Result<Done> {
    relations::settle_request(tx, versions, room, me.id, "accepted").await?;
    Ok((
        Applied {
            room,
            entry: None,
            duplicate: true,
        },
        vec![],
    ))
}

async fn invite(tx: &mut Tx<'_>, room: RoomId, by: &UserRef, user: &UserRef) -> Result<Done> {
    require_member(tx, room, by.id).await?;
    require_group(tx, room).await?;
    if relations::blocks(tx, user.id, by.id).await? {
        return Err(StoreError::Blocked);
    }
    if is_member(tx, room, user.id).await? {
        return Err(StoreError::Conflict("already a member"));
    }
    db::query(
        "INSERT INTO invitations (room_id, user_id, invited_by, created_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (room_id, user_id)
         DO UPDATE SET invited_by = excluded.invited_by, created_at = excluded.created_at",
    )
    .bind(room)
    .bind(user.id)
    .bind(by.id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    let entry = append(
        tx,
        new_entry(room, 0, now_ms(), EntryKind::Invite, by, Some(user)),
        by.id,
        Some(user.id),
    )
    .await?;
    let recipients = member_ids(tx, room).await?;
    Ok(appended(entry, recipients, Some(user.id)))
}

async fn join(tx: &mut Tx<'_>, room: RoomId, user: &UserRef) -> Result<Done> {
    if is_member(tx, room, user.id).await? {
        return Err(StoreError::Conflict("already a member"));
    }
    let invited = db::query("DELETE FROM invitations WHERE room_id = ? AND user_id = ?")
        .bind(room)
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    if invited == 0 {
        // Not invited, or no such room: indistinguishable on purpose.
        return Err(StoreError::NotFound);
    }
    let entry = append(
        tx,
        new_entry(room, 0, now_ms(), EntryKind::Join, user, None),
        user.id,
        None,
    )
    .await?;
    start_membership(tx, room, user.id, entry.seq).await?;
    let recipients = member_ids(tx, room).await?;
    Ok(appended(entry, recipients, None))
}

async fn leave(tx: &mut Tx<'_>, room: RoomId, user: &UserRef) -> Result<Done> {
    require_member(tx, room, user.id).await?;
    require_group(tx, room).await?;
    let entry = append(
        tx,
        new_entry(room, 0, now_ms(), EntryKind::Leave, user, None),
        user.id,
        None,
    )
    .await?;
    let recipients = member_ids(tx, room).await?;
    end_membership(tx, room, user.id, entry.seq).await?;
    relations::drop_admin(tx, room, user.id).await?;
    Ok(appended(entry, recipients, None))
}

async fn remove(tx: &mut Tx<'_>, room: RoomId, by: &UserRef, user: &UserRef) -> Result<Done> {
    require_member(tx, room, by.id).await?;
    require_group(tx, room).await?;
    let creator: UserId = db::query("SELECT creator_id FROM rooms WHERE id = ?")
        .bind(room)
        .fetch_scalar(&mut *tx)
        .await?;
    if creator != by.id && !relations::is_admin(tx, room, by.id).await? {
        return Err(StoreError::Forbidden(
            "only the room's creator and admins can remove members",
        ));
    }
    if by.id == user.id {
        return Err(StoreError::Conflict("use leave to leave a room"));
    }
    if creator != by.id && (user.id == creator || relations::is_admin(tx, room, user.id).await?) {
        return Err(StoreError::Forbidden(
            "an admin cannot remove the creator or another admin",
        ));
    }
    if !is_member(tx, room, user.id).await? {
        return Err(StoreError::Conflict("not a member"));
    }
    let entry = append(
        tx,
        new_entry(room, 0, now_ms(), EntryKind::Remove, by, Some(user)),
        by.id,
        Some(user.id),
    )
    .await?;
    let recipients = member_ids(tx, room).await?;
    end_membership(tx, room, user.id, entry.seq).await?;
    relations::drop_admin(tx, room, user.id).await?;
    Ok(appended(entry, recipients, None))
}

async fn rotate_key(
    tx: &mut Tx<'_>,
    user: &UserRef,
    old_fingerprint: &str,
    new_key: &NewKey,
) -> Result<Done> {
    let now = now_ms();
    let replaced = db::query("UPDATE user_keys SET replaced_at = ? WHERE user_id = ? AND replaced_at IS NULL AND fingerprint = ?")
        .bind(now)
        .bind(user.id)
        .bind(old_fingerprint)
        .execute(&mut *tx)
        .await?;
    if replaced != 1 {
        return Err(StoreError::Conflict("the current key changed meanwhile"));
    }
    db::query(
        "INSERT INTO user_keys (user_id, public_key, fingerprint, created_at, rotation_signature) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(user.id)
    .bind(&new_key.public_key)
    .bind(&new_key.fingerprint)
    .bind(now)
    .bind(&new_key.rotation_signature)
    .execute(&mut *tx)
    .await?;
    let rooms: Vec<RoomId> = db::query(
        "SELECT room_id FROM memberships WHERE user_id = ? AND end_seq IS NULL ORDER BY room_id",
    )
    .bind(user.id)
    .fetch_all_scalars(&mut *tx)
    .await?;
    let mut committed = Vec::with_capacity(rooms.len());
    for room in rooms {
        let mut entry = new_entry(room, 0, now, EntryKind::Key, user, None);
        entry.detail = Some(new_key.fingerprint.clone());
        let entry = append(tx, entry, user.id, None).await?;
        let recipients = recipient_ids(tx, room).await?;
        committed.push(Committed {
            entry,
            recipients: recipients.into(),
            notify: None,
        });
    }
    Ok((
        Applied {
            room: RoomId(0),
            entry: None,
            duplicate: false,
        },
        committed,
    ))
}

fn new_entry(
    room: RoomId,
    seq: i64,
    ts: i64,
    kind: EntryKind,
    sender: &UserRef,
    subject: Option<&UserRef>,
) -> Entry {
    Entry {
        room,
        seq,
        ts,
        kind,
        sender: sender.name.clone(),
        subject: subject.map(|s| s.name.clone()),
        client_id: None,
        body: None,
        detail: None,
        expires: None,
    }
}

fn appended(entry: Entry, recipients: Vec<UserId>, notify: Option<UserId>) -> Done {
    let applied = Applied {
        room: entry.room,
        entry: Some(entry.clone()),
        duplicate: false,
    };
    (
        applied,
        vec![Committed {
            entry,
            recipients: recipients.into(),
            notify,
        }],
    )
}

/// Gives `entry` the room's next sequence number and stores it.
async fn append(
    tx: &mut Tx<'_>,
    mut entry: Entry,
    sender: UserId,
    subject: Option<UserId>,
) -> Result<Entry> {
    entry.seq =
        db::query("UPDATE rooms SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq")
            .bind(entry.room)
            .fetch_optional_scalar(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
    db::query(
        "INSERT INTO entries (room_id, seq, ts, kind, sender_id, subject_id, client_id, body, detail)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(entry.room)
    .bind(entry.seq)
    .bind(entry.ts)
    .bind(entry.kind.as_str())
    .bind(sender)
    .bind(subject)
    .bind(entry.client_id.as_deref())
    .bind(entry.body.as_deref())
    .bind(entry.detail.as_deref())
    .execute(&mut *tx)
    .await
    .map_err(|e| unique_violation(e, StoreError::Conflict("duplicate client id")))?;
    Ok(entry)
}

async fn is_member(tx: &mut Tx<'_>, room: RoomId, user: UserId) -> Result<bool> {
    let found: Option<UserId> = db::query(
        "SELECT user_id FROM memberships WHERE room_id = ? AND user_id = ? AND end_seq IS NULL",
    )
    .bind(room)
    .bind(user)
    .fetch_optional_scalar(&mut *tx)
    .await?;
    Ok(found.is_some())
}

async fn require_member(tx: &mut Tx<'_>, room: RoomId, user: UserId) -> Result<()> {
    if is_member(tx, room, user).await? {
        Ok(())
    } else {
        Err(StoreError::NotFound)
    }
}

async fn require_group(tx: &mut Tx<'_>, room: RoomId) -> Result<()> {
    let kind: String = db::query("SELECT kind FROM rooms WHERE id = ?")
        .bind(room)
        .fetch_optional_scalar(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
    if kind == "group" {
        Ok(())
    } else {
        Err(StoreError::Forbidden(
            "a direct conversation always has its two members",
        ))
    }
}

async fn member_ids(tx: &mut Tx<'_>, room: RoomId) -> Result<Vec<UserId>> {
    Ok(
        db::query("SELECT user_id FROM memberships WHERE room_id = ? AND end_seq IS NULL")
            .bind(room)
            .fetch_all_scalars(&mut *tx)
            .await?,
    )
}

/// Members who get a room's entries live: all but a direct conversation's
/// peer who declined it.
async fn recipient_ids(tx: &mut Tx<'_>, room: RoomId) -> Result<Vec<UserId>> {
    Ok(db::query(
        "SELECT m.user_id FROM memberships m WHERE m.room_id = ?1 AND m.end_seq IS NULL
         AND NOT EXISTS (SELECT 1 FROM dm_requests d
                         WHERE d.room_id = ?1 AND d.user_id = m.user_id AND d.state = 'declined')",
    )
    .bind(room)
    .fetch_all_scalars(&mut *tx)
    .await?)
}

/// Members of a direct conversation whose messages the other member
/// refuses (blocks); always empty for a group.
async fn refused_senders(tx: &mut Tx<'_>, room: RoomId) -> Result<Vec<UserId>> {
    Ok(db::query(
        "SELECT b.blocked_id FROM rooms r
         JOIN memberships s ON s.room_id = r.id AND s.end_seq IS NULL
         JOIN memberships o ON o.room_id = r.id AND o.end_seq IS NULL AND o.user_id != s.user_id
         JOIN blocks b ON b.blocker_id = o.user_id AND b.blocked_id = s.user_id
         WHERE r.id = ? AND r.kind = 'dm'",
    )
    .bind(room)
    .fetch_all_scalars(&mut *tx)
    .await?)
}

async fn start_membership(tx: &mut Tx<'_>, room: RoomId, user: UserId, seq: i64) -> Result<()> {
    db::query("INSERT INTO memberships (room_id, user_id, start_seq) VALUES (?, ?, ?)")
        .bind(room)
        .bind(user)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn end_membership(tx: &mut Tx<'_>, room: RoomId, user: UserId, seq: i64) -> Result<()> {
    db::query(
        "UPDATE memberships SET end_seq = ? WHERE room_id = ? AND user_id = ? AND end_seq IS NULL",
    )
    .bind(seq)
    .bind(room)
    .bind(user)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

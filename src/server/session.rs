//! One WebSocket connection, from `auth` to close.
//!
//! A single task owns the connection's state and `select!`s over: frames
//! from the client, frames the hub queued for it, acknowledgements coming
//! back from the writer, the heartbeat, and pending sync work. A server
//! shutdown arrives through the hub's queue (`Hub::shut_down`).
//! While the session is idle the hub may write frames to the socket itself
//! (`outlet`), which is why the room cursors live in the outlet.
//! Frames from the client are read at most at `--frame-rate` (`pacing`);
//! while reading waits, everything else goes on.
//!
//! Gap-free sync: while a room is being synced, live entries for it are
//! dropped (they are committed before they are announced, so a later page
//! will contain them); once the last page is sent the room goes live with
//! its cursor, and any live entry at or below the cursor is a duplicate.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::AppState;
use super::auth::token_hash;
use super::frame_queue::Popped;
use super::hub::{ConnShared, Outbound};
use super::outlet::{Outlet, RoomCursor};
use super::pacing::ReadPacer;
use super::read_wake::ReadWake;
use super::send_hold::InFlight;
use super::upgrade::WebSocket;
use crate::protocol::{
    ClientFrame, Cursor, EntriesJson, Incoming, Outgoing, PROTOCOL_VERSION, ServerFrame,
    SignalKind, b64, close, entry_frame, history_frame, history_start,
};
use crate::store::writer::{Applied, QueueSlot};
use crate::store::{Page, RoomId, StoreError, UserRecord, now_ms};

const MAX_CLIENT_ID_CHARS: usize = 64;
const MAX_HISTORY_LIMIT: u32 = 500;
const DEFAULT_HISTORY_LIMIT: u32 = 50;
/// When to retry a write refused by a storage fault.
const STORAGE_RETRY_MS: u64 = 1000;
/// Longest wait for the client to take a frame before it counts as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages of one connection waiting for their commit before the session
/// stops reading that connection's socket (TCP then slows the sender).
const MAX_UNACKED: usize = 256;
/// Frames written to the socket before one flush.
const MAX_FRAMES_PER_FLUSH: usize = 64;

type AckFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Option<String>, Result<Applied, StoreError>)> + Send>,
>;

struct Session {
    state: Arc<AppState>,
    user: UserRecord,
    socket: WebSocket,
    /// Text frames waiting for the next flush (`wire`); empty, and
    /// holding no memory, between writes.
    unflushed: Vec<Utf8Bytes>,
    /// A ping came since the last flush: tungstenite may hold its pong.
    pong_owed: bool,
    /// This connection as the hub sees it.
    conn: Arc<ConnShared>,
    /// Where the hub writes to this socket directly while the session is
    /// idle; it holds the room cursors.
    outlet: Arc<Outlet>,
    sync_queue: VecDeque<RoomId>,
    /// The room whose page is being read, and its live entries that came
    /// meanwhile: the read may or may not include them.
    fetch_stash: Option<FetchStash>,
    acks: FuturesOrdered<AckFuture>,
    /// A validated message waiting for room in the writer's queue (boxed:
    /// rare, and an idle connection should not pay for it).
    blocked: Option<Box<BlockedSend>>,
    /// This connection's allowance of `send` frames.
    send_rate: super::limits::TokenBucket,
    /// This connection's allowance of `signal` frames.
    signal_rate: super::limits::TokenBucket,
    /// This connection's id in the hub: its own signals skip it.
    conn_id: u64,
    /// A send refused for now that later sends must wait behind (boxed:
    /// rare, and an idle connection should not pay for it).
    held_behind: Option<Box<HeldBehind>>,
    /// When the session token stops being valid; the socket closes then.
    expires: tokio::time::Instant,
    /// Held while the session lives: its place among the user's sessions,
    /// and its count in the metrics.
    _held: (
        super::limits::Slot<crate::store::UserId>,
        super::metrics::GaugeGuard,
    ),
}

/// A message the writer had no room for yet.
struct BlockedSend {
    id: Option<String>,
    room: RoomId,
    client_id: String,
    body: Vec<u8>,
    erase: Option<i64>,
}

/// The first send of this connection refused for now. Until it comes again
/// (its resend, same room and `client_id`) every later send is refused too,
/// so a client that resends in refusal order keeps the log in the order it
/// sent: a refused message is never overtaken by the ones behind it.
struct HeldBehind {
    room: RoomId,
    client_id: String,
    /// When the refused send may go again.
    retry_at: Instant,
    /// A client that never resends it is not held for ever.
    lapses_at: Instant,
}

/// How long sends stay held behind one that is never resent.
const HOLD_LAPSE: Duration = Duration::from_secs(30);

/// Live entries of the room whose page is being read (see `wants`).
struct FetchStash {
    room: RoomId,
    entries: Vec<Arc<Outbound>>,
    /// More came than the stash holds; the room needs one more read.
    overflowed: bool,
}

/// Most live entries kept for a room while its page is read.
const MAX_STASHED: usize = 1024;

/// One sync page being read from the store: the room, the cursor it was
/// read after, and what was read.
type PageFetch = std::pin::Pin<
    Box<dyn std::future::Future<Output = (RoomId, i64, Result<FetchedPage, StoreError>)> + Send>,
>;

/// What is left to write of a page once it is read.
enum PageReply {
    /// The client asked again meanwhile; its new request is queued.
    Stale,
    Failed(ServerFrame),
    Page {
        room: RoomId,
        frame: Option<String>,
        /// For the room's last page: the seq it went live at and the live
        /// entries kept during the read.
        live: Option<(i64, Vec<Arc<Outbound>>)>,
    },
}

struct FetchedPage {
    /// The `page` frame, unless no entry follows the cursor.
    frame: Option<String>,
    has_more: bool,
    /// The seq the room stands at after this page.
    last: i64,
}

type Reservation = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(QueueSlot, InFlight), StoreError>> + Send>,
>;

/// Something ready to be written to the client.
enum Ready {
    Hub(Arc<Outbound>),
    Ack(Option<String>, Result<Applied, StoreError>),
}

/// Why the loop ended; decides the close frame.
enum End {
    Closed,
    Close(u16, &'static str),
}

/// Serves one upgraded connection until it closes.
///
/// The rarely taken, store-bound steps below are boxed: the session's
/// future is allocated once per connection, for its whole life, and an idle
/// connection should cost a few KiB, not the size of its largest possible
/// step.
pub fn run(
    socket: WebSocket,
    state: Arc<AppState>,
) -> impl std::future::Future<Output = ()> + Send {
    // One boxed argument: an async fn keeps a slot for each argument for
    // its whole life, even after the argument has been moved out.
    run_boxed(Box::new((socket, state)))
}

async fn run_boxed(parts: Box<(WebSocket, Arc<AppState>)>) {
    let _connection = super::metrics::connection_opened();
    // Opening and closing are boxed: their steps need room only while they
    // run, and the socket lives inside the session from the start.
    let Some(mut session) = Box::pin(open(parts)).await else {
        return;
    };
    let end = session.serve().await;
    Box::pin(session.close(end)).await;
}

/// Authenticates the connection, registers it and says `ready`; `None`
/// once the connection was refused (and closed).
async fn open(parts: Box<(WebSocket, Arc<AppState>)>) -> Option<Session> {
    let (mut socket, state) = *parts;
    let (user, token, expires, auth_id) = match authenticate(&state, &mut socket).await {
        Some(found) => found,
        None => {
            let _ = socket
                .send(close_frame(close::UNAUTHORIZED, "unauthorized"))
                .await;
            return None;
        }
    };
    let Some(slot) = state.limits.session_slot(user.id) else {
        super::metrics::rate_limited("sessions_per_user");
        let frame = error_frame(
            "too_many_sessions",
            "too many open connections for this account",
        );
        let _ = socket
            .send(Message::text(Outgoing::new(auth_id, frame).to_json()))
            .await;
        let _ = socket
            .send(close_frame(close::TOO_MANY_SESSIONS, "too many sessions"))
            .await;
        return None;
    };
    let counted = super::metrics::session_started();
    let registration = state
        .presence
        .connect(&state.hub, user.id, &user.username, token);
    let conn_id = registration.id;
    let outlet = socket.get_ref().outlet().clone();
    let _ = registration.shared.outlet.set(outlet.clone());
    // With several nodes: follow this user's rooms from here on, before the
    // client can ask to sync (a no-op on a single node).
    state.fanout.track_user(user.id).await;
    tracing::debug!(user = %user.username, conn = conn_id, "connected");
    let ready = ServerFrame::Ready {
        user: user.username.clone(),
        heartbeat_ms: state.config.heartbeat_interval.as_millis() as u64,
        max_body_bytes: state.config.max_body_bytes,
        server_time: now_ms(),
    };
    let mut session = Session {
        send_rate: state.limits.connection_bucket(),
        signal_rate: super::limits::TokenBucket::new(
            state.limits.config.signals_per_connection,
            Instant::now(),
        ),
        conn_id,
        held_behind: None,
        state,
        user,
        socket,
        unflushed: Vec::new(),
        pong_owed: false,
        conn: registration.shared,
        outlet,
        sync_queue: VecDeque::new(),
        fetch_stash: None,
        acks: FuturesOrdered::new(),
        blocked: None,
        expires,
        _held: (slot, counted),
    };
    if session.send(auth_id, ready).await {
        Some(session)
    } else {
        Box::pin(session.close(End::Closed)).await;
        None
    }
}

/// Waits for the `auth` frame. Returns the user, their token's hash, when
/// the token expires, and the frame's id.
async fn authenticate(
    state: &AppState,
    socket: &mut WebSocket,
) -> Option<(UserRecord, [u8; 32], tokio::time::Instant, Option<String>)> {
    let first = tokio::time::timeout(state.config.auth_timeout, async {
        loop {
            match socket.next().await {
                Some(Ok(msg)) if msg.is_text() => return Some(msg),
                Some(Ok(msg)) if msg.is_ping() || msg.is_pong() => continue,
                _ => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()?;
    let text = first.to_text().ok()?;
    let incoming: Result<Incoming, _> = serde_json::from_str(text);
    let (id, token) = match incoming {
        Ok(Incoming {
            v: PROTOCOL_VERSION,
            id,
            frame: ClientFrame::Auth { token },
        }) => (id, token),
        _ => {
            let frame = error_frame(
                "unauthorized",
                "the first frame must be {\"v\":1,\"type\":\"auth\",\"token\":…}",
            );
            let _ = socket
                .send(Message::text(Outgoing::new(None, frame).to_json()))
                .await;
            return None;
        }
    };
    let hash = token_hash(&token);
    let session = match hash {
        Some(hash) => state.store.live_session(&hash).await.ok(),
        None => None,
    };
    match (session, hash) {
        (Some((user, expires_at)), Some(hash)) => Some((user, hash, deadline(expires_at), id)),
        _ => {
            let frame = error_frame("unauthorized", "invalid or expired session token");
            let _ = socket
                .send(Message::text(Outgoing::new(id, frame).to_json()))
                .await;
            None
        }
    }
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// The instant a token expiring at `expires_at` (Unix ms) expires.
fn deadline(expires_at: i64) -> tokio::time::Instant {
    let left = u64::try_from(expires_at - now_ms()).unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_millis(left)
}

fn error_frame(code: &str, message: impl Into<String>) -> ServerFrame {
    super::metrics::error(code);
    ServerFrame::Error {
        code: code.to_owned(),
        message: message.into(),
        retry_after_ms: None,
    }
}

fn store_error_frame(err: &StoreError) -> ServerFrame {
    match err {
        StoreError::NotFound => error_frame("not_found", "no such room, or you are not a member"),
        StoreError::Forbidden(why) => error_frame("forbidden", *why),
        StoreError::Conflict(why) => error_frame("conflict", *why),
        StoreError::Blocked => error_frame("blocked", "the other member blocks you"),
        StoreError::Invalid(why) => error_frame("bad_frame", *why),
        StoreError::UsernameTaken | StoreError::UsernameConfusable => {
            error_frame("conflict", "username taken")
        }
        StoreError::Closed => error_frame(
            "unavailable",
            "the server is shutting down; retry after reconnecting",
        ),
        StoreError::Unavailable(fault) => ServerFrame::Error {
            code: "storage_unavailable".to_owned(),
            message: format!("not stored: {fault}; retry with the same client_id"),
            retry_after_ms: Some(STORAGE_RETRY_MS),
        },
        StoreError::Db(db) if crate::store::faults::classify(db).is_some() => {
            let fault = crate::store::faults::of_store_error(err);
            store_error_frame(&StoreError::Unavailable(fault))
        }
        StoreError::Db(_) | StoreError::Migrate(_) => {
            tracing::error!(error = %err, "database error in a session");
            error_frame("unavailable", "the message was not stored; retry")
        }
    }
}

impl Session {
    async fn serve(&mut self) -> End {
        let conn = self.conn.clone();
        let outlet = self.outlet.clone();
        let heartbeat_interval = self.state.config.heartbeat_interval;
        let mut next_heartbeat = tokio::time::Instant::now() + heartbeat_interval;
        let mut last_heard = Instant::now();
        let mut reservation: Option<Reservation> = None;
        // Read while the loop goes on, so frames queued for this connection
        // are taken (and those of syncing rooms dropped) during the read.
        let mut fetching: Option<PageFetch> = None;
        let mut pacer = ReadPacer::new(self.state.limits.config.frames_per_connection);
        let read_wake = ReadWake::new();
        // One timer for the heartbeat and the session's expiry, whichever
        // comes first: every pass of the loop polls it, and a light load
        // makes two passes per frame delivered (issue 18).
        let timer = tokio::time::sleep_until(next_heartbeat.min(self.expires));
        tokio::pin!(timer);
        loop {
            // Idle from here on, unless tungstenite holds part of a pong or
            // the hub left the end of a frame: those go out first.
            while self.pong_owed || !self.outlet.try_open() {
                if !Box::pin(self.flush()).await {
                    return End::Closed;
                }
            }
            if let Some(blocked) = self.blocked.as_ref().filter(|_| reservation.is_none()) {
                let resumed = self.state.hub.senders_resumed();
                let admitted = self.state.hub.admit(blocked.room);
                let writer = self.state.writer.clone();
                reservation = Some(Box::pin(async move {
                    resumed.await;
                    let in_flight = admitted.await;
                    Ok((writer.reserve().await?, in_flight))
                }));
            }
            let reading =
                self.blocked.is_none() && self.acks.len() < MAX_UNACKED && pacer.may_read();
            tokio::select! {
                biased;
                _ = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if now >= self.expires {
                        Box::pin(self.finish_acks()).await;
                        return End::Close(close::UNAUTHORIZED, "session expired");
                    }
                    if now >= next_heartbeat {
                        next_heartbeat = now + heartbeat_interval;
                        if !reading {
                            // Not reading is our doing, not the client's silence.
                            last_heard = Instant::now();
                        }
                        if last_heard.elapsed() > self.state.config.heartbeat_timeout {
                            return End::Close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                        }
                        if !Box::pin(self.send_control(Message::Ping(Default::default()))).await { return End::Closed }
                    }
                    timer.as_mut().reset(next_heartbeat.min(self.expires));
                }
                out = conn.queue.pop_after(|| outlet.shut()) => match out {
                    Popped::Frame(out) => if !Box::pin(self.write_ready(Ready::Hub(out))).await { return End::Closed },
                    // The top of the loop writes what the hub left.
                    Popped::Nudged => {}
                    Popped::Closed => {
                        let code = self.conn.cut_reason.load(Ordering::Relaxed);
                        if code == close::GOING_AWAY {
                            Box::pin(self.finish_acks()).await;
                            return End::Close(close::GOING_AWAY, "server shutting down");
                        }
                        let reason = if code == close::UNAUTHORIZED { "session revoked" } else { "too slow; reconnect and sync" };
                        return End::Close(if code == 0 { close::TOO_SLOW } else { code }, reason);
                    }
                },
                Some((id, result)) = self.acks.next(), if !self.acks.is_empty() => {
                    if !Box::pin(self.write_ready(Ready::Ack(id, result))).await { return End::Closed }
                }
                slot = async { reservation.as_mut().expect("guarded by is_some").await }, if reservation.is_some() => {
                    reservation = None;
                    let blocked = self.blocked.take().expect("a reservation is made for a blocked send");
                    match slot {
                        Ok((slot, in_flight)) => self.enqueue(slot, in_flight, *blocked),
                        Err(err) => if !Box::pin(self.refuse_unstored(*blocked, &err)).await { return End::Closed },
                    }
                }
                _ = pacer.resumed(), if pacer.is_paused() => {}
                msg = std::future::poll_fn(|cx| read_wake.poll_next(&mut self.socket, cx)), if reading => {
                    pacer.spend();
                    last_heard = Instant::now();
                    match msg {
                        Some(Ok(msg)) if msg.is_text() => {
                            let text = msg.to_text().unwrap_or_default();
                            if !Box::pin(self.handle_text(text)).await { return End::Closed }
                        }
                        Some(Ok(msg)) if msg.is_binary() => {
                            let frame = error_frame("bad_frame", "binary frames are not supported; send JSON text frames");
                            if !Box::pin(self.send(None, frame)).await { return End::Closed }
                        }
                        Some(Ok(msg)) if msg.is_close() => return End::Closed,
                        // Liveness only; tungstenite queues the pong to a ping.
                        Some(Ok(msg)) => self.pong_owed |= msg.is_ping(),
                        Some(Err(err)) => {
                            tracing::debug!(user = %self.user.username, error = %err, "websocket read failed");
                            return End::Close(close::TOO_BIG, "frame rejected");
                        }
                        None => return End::Closed,
                    }
                }
                fetched = async { fetching.as_mut().expect("guarded by is_some").await }, if fetching.is_some() => {
                    let reply = self.take_page(fetched);
                    // The next page is read while this one is written.
                    fetching = self.fetch_next_page();
                    if !Box::pin(self.write_page(reply)).await { return End::Closed }
                }
                _ = std::future::ready(()), if fetching.is_none() && !self.sync_queue.is_empty() => {
                    fetching = self.fetch_next_page();
                }
            }
        }
    }

    /// Says why the connection ends (unless the client went first), closes
    /// it, and leaves the hub.
    async fn close(mut self, end: End) {
        self.outlet.shut();
        if let End::Close(code, reason) = end {
            let _ = tokio::time::timeout(SEND_TIMEOUT, self.socket.send(close_frame(code, reason)))
                .await;
        }
        let _ = tokio::time::timeout(SEND_TIMEOUT, self.socket.close(None)).await;
        self.conn.queue.abandon();
        if self.state.hub.unregister(self.user.id, self.conn_id) {
            self.state
                .presence
                .disconnected(self.user.id, &self.user.username);
        }
        tracing::debug!(user = %self.user.username, conn = self.conn_id, "disconnected");
    }

    /// Sends the acknowledgements still owed before closing for shutdown.
    async fn finish_acks(&mut self) {
        let deadline = tokio::time::sleep(SEND_TIMEOUT);
        tokio::pin!(deadline);
        while !self.acks.is_empty() {
            tokio::select! {
                Some((id, result)) = self.acks.next() => {
                    if !self.write_ready(Ready::Ack(id, result)).await { return }
                }
                _ = &mut deadline => return,
            }
        }
    }

    /// Writes a control frame (a ping) through tungstenite.
    async fn send_control(&mut self, msg: Message) -> bool {
        matches!(
            tokio::time::timeout(SEND_TIMEOUT, self.socket.send(msg)).await,
            Ok(Ok(()))
        )
    }

    /// Writes one text frame now.
    fn send_text(
        &mut self,
        text: impl Into<Utf8Bytes>,
    ) -> impl std::future::Future<Output = bool> + Send + '_ {
        self.queue(text.into());
        self.flush()
    }

    /// Not an `async fn`: one would keep the frame in every session's
    /// future for its whole life, not just while it is being built.
    fn send(
        &mut self,
        id: Option<String>,
        frame: ServerFrame,
    ) -> impl std::future::Future<Output = bool> + Send + '_ {
        self.send_text(Outgoing::new(id, frame).to_json())
    }

    /// Writes `first` and whatever else is ready to go out, frames from the
    /// hub and acknowledgements alike (up to a limit), with one flush: a
    /// sender's ack and the echo of its message become ready together, and
    /// one write for both halves the system calls.
    async fn write_ready(&mut self, first: Ready) -> bool {
        // Frames are taken from the queue below: the hub must not write
        // past one taken but not yet written (woken for an ack, the
        // outlet is still open).
        self.outlet.shut();
        let mut next = Some(first);
        let mut written = 0;
        while let Some(ready) = next.take() {
            let frame = match ready {
                Ready::Hub(out) => self.wants(&out).then(|| out.json.clone()),
                Ready::Ack(id, result) => {
                    Some(Outgoing::new(id, ack_frame(result)).to_json().into())
                }
            };
            if let Some(frame) = frame {
                self.queue(frame);
                written += 1;
            }
            if written < MAX_FRAMES_PER_FLUSH {
                next = match self.conn.queue.try_pop() {
                    Ok(Some(out)) => Some(Ready::Hub(out)),
                    _ if self.acks.is_empty() => None,
                    _ => self.ready_ack().map(|(id, result)| Ready::Ack(id, result)),
                };
            }
        }
        let flushed = self.flush().await;
        self.state.hub.wrote(&self.conn);
        flushed
    }

    /// An acknowledgement that is ready now, without waiting. (Polling with
    /// a no-op waker is fine here: the main loop polls `acks` again with
    /// the task's own waker before it sleeps.)
    fn ready_ack(&mut self) -> Option<(Option<String>, Result<Applied, StoreError>)> {
        self.acks.next().now_or_never().flatten()
    }

    /// Queues a text frame for the next flush.
    fn queue(&mut self, frame: Utf8Bytes) {
        self.unflushed.push(frame);
    }

    /// Writes the queued frames; false if the client stopped taking them.
    async fn flush(&mut self) -> bool {
        let frames = std::mem::take(&mut self.unflushed);
        let pong_owed = std::mem::take(&mut self.pong_owed);
        let socket = &mut self.socket;
        let write = async move {
            // Whatever tungstenite holds (a pong) goes first, whole. It
            // holds nothing else: pings and closes are flushed when sent.
            if pong_owed {
                socket.flush().await.map_err(std::io::Error::other)?;
            }
            super::wire::write_text_frames(socket.get_mut(), &frames).await
        };
        let mut write = std::pin::pin!(write);
        // Most writes finish at once: the timeout (a timer entry and a
        // clock read) is only armed for one that has to wait.
        if let std::task::Poll::Ready(written) = futures_util::poll!(write.as_mut()) {
            return written.is_ok();
        }
        matches!(tokio::time::timeout(SEND_TIMEOUT, write).await, Ok(Ok(())))
    }

    /// Whether a frame from the hub should go out, unless this connection
    /// already has it (or will get it from a sync page).
    fn wants(&mut self, out: &Arc<Outbound>) -> bool {
        if let Some((room, seq)) = out.position {
            let cursor = self.outlet.cursors().get(&room).copied();
            match cursor {
                Some(RoomCursor::Syncing { .. }) => {
                    // A page of this room is being read: this entry may be
                    // after it, and is needed if that page is the last.
                    if let Some(stash) = self.fetch_stash.as_mut().filter(|s| s.room == room) {
                        if stash.entries.len() < MAX_STASHED {
                            stash.entries.push(out.clone());
                        } else {
                            stash.overflowed = true;
                        }
                    }
                    return false;
                }
                Some(RoomCursor::Live { seq: have }) if seq <= have => return false,
                Some(RoomCursor::Live { seq: have }) if seq > have + 1 => {
                    // Something between was missed: fetch it from the store.
                    self.start_sync(Cursor { room, after: have });
                    return false;
                }
                Some(RoomCursor::Live { .. }) => {
                    self.outlet.cursors().insert(room, RoomCursor::Live { seq });
                }
                None => {}
            }
        }
        true
    }

    async fn handle_text(&mut self, text: &str) -> bool {
        let incoming: Incoming = match serde_json::from_str(text) {
            Ok(incoming) => incoming,
            Err(err) => {
                let id = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned));
                return self
                    .send(
                        id,
                        error_frame("bad_frame", format!("invalid frame: {err}")),
                    )
                    .await;
            }
        };
        let id = incoming.id;
        if incoming.v != PROTOCOL_VERSION {
            let message = format!(
                "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
                incoming.v
            );
            return self
                .send(id, error_frame("unsupported_version", message))
                .await;
        }
        match incoming.frame {
            ClientFrame::Auth { .. } => {
                self.send(id, error_frame("bad_frame", "already authenticated"))
                    .await
            }
            ClientFrame::Send {
                room,
                client_id,
                body,
                erase,
            } => self.handle_send(id, room, client_id, body, erase).await,
            ClientFrame::Signal { room, kind, body } => {
                Box::pin(self.handle_signal(id, room, kind, body)).await
            }
            ClientFrame::Sync { rooms } => {
                for cursor in rooms {
                    self.start_sync(cursor);
                }
                true
            }
            ClientFrame::History {
                room,
                before,
                limit,
            } => Box::pin(self.handle_history(id, room, before, limit)).await,
            ClientFrame::Who { room } => Box::pin(self.handle_who(id, room)).await,
            ClientFrame::Ping => self.send(id, ServerFrame::Pong).await,
        }
    }

    async fn handle_send(
        &mut self,
        id: Option<String>,
        room: RoomId,
        client_id: String,
        body: String,
        erase: Option<i64>,
    ) -> bool {
        if let Some(wait) = self.is_held(room, &client_id) {
            super::metrics::rate_limited("held_sends");
            let frame = ServerFrame::Error {
                code: "rate_limited".to_owned(),
                message: "held behind an earlier refused send; resend that one first".to_owned(),
                retry_after_ms: Some(wait.as_millis().max(1) as u64),
            };
            return self.send(id, frame).await;
        }
        let limits = &self.state.limits;
        if let Err(wait) = limits.take_message(&mut self.send_rate, self.user.id) {
            super::metrics::rate_limited("messages");
            self.hold_behind(room, &client_id, wait);
            let frame = ServerFrame::Error {
                code: "rate_limited".to_owned(),
                message: "too many messages; wait and resend with the same client_id".to_owned(),
                retry_after_ms: Some(wait.as_millis().max(1) as u64),
            };
            return self.send(id, frame).await;
        }
        if client_id.is_empty() || client_id.chars().count() > MAX_CLIENT_ID_CHARS {
            let message = format!("client_id must be 1 to {MAX_CLIENT_ID_CHARS} characters");
            return self.send(id, error_frame("bad_frame", message)).await;
        }
        let max = self.state.config.max_body_bytes;
        if body.len() > max.div_ceil(3) * 4 {
            return self
                .send(
                    id,
                    error_frame("too_large", format!("message body exceeds {max} bytes")),
                )
                .await;
        }
        let Ok(body) = b64::decode(&body) else {
            return self
                .send(id, error_frame("bad_body", "body is not valid base64"))
                .await;
        };
        if body.is_empty() {
            return self
                .send(id, error_frame("bad_body", "message body is empty"))
                .await;
        }
        if body.len() > max {
            let message = format!("message body exceeds {max} bytes");
            return self.send(id, error_frame("too_large", message)).await;
        }
        let blocked = BlockedSend {
            id,
            room,
            client_id,
            body,
            erase,
        };
        // Most recipients behind, or this room's quota of messages on
        // their way: wait (`send_hold`).
        let admitted = (!self.state.hub.holds_senders())
            .then(|| self.state.hub.try_admit(blocked.room))
            .flatten();
        let Some(in_flight) = admitted else {
            self.blocked = Some(Box::new(blocked));
            return true;
        };
        match self.state.writer.try_reserve() {
            Ok(Some(slot)) => {
                self.enqueue(slot, in_flight, blocked);
                true
            }
            Ok(None) => {
                self.blocked = Some(Box::new(blocked));
                true
            }
            Err(err) => self.refuse_unstored(blocked, &err).await,
        }
    }

    /// Answers a send the store could not take; one that may be resent
    /// holds the later ones behind it.
    fn refuse_unstored(
        &mut self,
        send: BlockedSend,
        err: &StoreError,
    ) -> impl std::future::Future<Output = bool> + Send + '_ {
        let frame = store_error_frame(err);
        if let ServerFrame::Error {
            retry_after_ms: Some(ms),
            ..
        } = &frame
        {
            self.hold_behind(send.room, &send.client_id, Duration::from_millis(*ms));
        }
        self.send(send.id, frame)
    }

    /// Whether a send must wait behind an earlier refused one, and for how
    /// long at least. The refused send itself, coming again, lifts the hold.
    fn is_held(&mut self, room: RoomId, client_id: &str) -> Option<Duration> {
        let hold = self.held_behind.as_ref()?;
        let now = Instant::now();
        if (hold.room == room && hold.client_id == client_id) || now >= hold.lapses_at {
            self.held_behind = None;
            return None;
        }
        Some(hold.retry_at.saturating_duration_since(now))
    }

    /// Makes later sends wait behind this refused one (the first refused
    /// one, if several are).
    fn hold_behind(&mut self, room: RoomId, client_id: &str, wait: Duration) {
        if self.held_behind.is_some() {
            return;
        }
        let now = Instant::now();
        self.held_behind = Some(Box::new(HeldBehind {
            room,
            client_id: client_id.to_owned(),
            retry_at: now + wait,
            lapses_at: now + wait.max(HOLD_LAPSE),
        }));
    }

    fn enqueue(&mut self, slot: QueueSlot, in_flight: InFlight, send: BlockedSend) {
        let BlockedSend {
            id,
            room,
            client_id,
            body,
            erase,
        } = send;
        let reply = slot.enqueue_message(room, self.user.as_ref(), client_id, body, erase);
        self.acks.push_back(Box::pin(async move {
            let result = reply.await.unwrap_or(Err(StoreError::Closed));
            // The hub has the entry now (the writer answers after that).
            drop(in_flight);
            (id, result)
        }));
    }

    fn start_sync(&mut self, cursor: Cursor) {
        self.outlet.cursors().insert(
            cursor.room,
            RoomCursor::Syncing {
                after: cursor.after.max(0),
            },
        );
        if !self.sync_queue.contains(&cursor.room) {
            self.sync_queue.push_back(cursor.room);
        }
    }

    /// Starts reading the next page of the next syncing room, taking rooms
    /// in turn.
    fn fetch_next_page(&mut self) -> Option<PageFetch> {
        let room = self.sync_queue.pop_front()?;
        let Some(RoomCursor::Syncing { after }) = self.outlet.cursors().get(&room).copied() else {
            return None;
        };
        self.fetch_stash = Some(FetchStash {
            room,
            entries: Vec::new(),
            overflowed: false,
        });
        let store = self.state.store.clone();
        let (user, limit) = (self.user.id, self.state.config.page_size);
        // A task of its own, so the read goes on while the session writes
        // the previous page.
        let read = tokio::spawn(async move {
            // Each entry is written into the frame as its row arrives, so
            // the database thread reads on while this task serialises.
            let mut frame = EntriesJson::page(room);
            let mut last = None;
            let mut count = 0u64;
            let read = async {
                let has_more = store
                    .visit_entries_after(room, user, after, limit, |entry| {
                        last = Some(entry.seq);
                        count += 1;
                        frame.push(&entry);
                        if frame.is_full() {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    })
                    .await?;
                super::metrics::entries_synced(count);
                let last = match last {
                    Some(seq) => seq,
                    // Nothing after the cursor: never go live above the
                    // room's end, or a client's bogus cursor would hide
                    // the next entries.
                    None => after.min(store.last_seq(room).await?),
                };
                Ok((has_more, last))
            };
            let read = read.await.map(|(has_more, last)| FetchedPage {
                frame: (!frame.is_empty()).then(|| frame.finish(has_more)),
                has_more,
                last,
            });
            (room, after, read)
        });
        let read = tokio_util::task::AbortOnDropHandle::new(read);
        Some(Box::pin(async move {
            read.await
                .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
        }))
    }

    /// Takes in a page read by `fetch_next_page`: either queues the room's
    /// next page or, at the end, puts the room live. What is left to write
    /// is returned, so the next read can start before it is written.
    fn take_page(&mut self, fetched: (RoomId, i64, Result<FetchedPage, StoreError>)) -> PageReply {
        let (room, after, read) = fetched;
        let stash = self.fetch_stash.take();
        let cursor = self.outlet.cursors().get(&room).copied();
        if cursor != Some(RoomCursor::Syncing { after }) {
            return PageReply::Stale;
        }
        let FetchedPage {
            frame,
            has_more,
            last,
        } = match read {
            Ok(read) => read,
            Err(err) => {
                self.outlet.cursors().remove(&room);
                return PageReply::Failed(match err {
                    StoreError::NotFound => error_frame(
                        "not_found",
                        format!(
                            "cannot sync room {}: no such room, or you are not a member",
                            room.0
                        ),
                    ),
                    other => store_error_frame(&other),
                });
            }
        };
        let stash = stash.filter(|s| s.room == room && !s.overflowed);
        let live = match stash.filter(|_| !has_more) {
            Some(stash) => {
                self.outlet
                    .cursors()
                    .insert(room, RoomCursor::Live { seq: last });
                Some((last, stash.entries))
            }
            None => {
                self.outlet
                    .cursors()
                    .insert(room, RoomCursor::Syncing { after: last });
                // Already queued if the client asked again during the read.
                if !self.sync_queue.contains(&room) {
                    self.sync_queue.push_back(room);
                }
                None
            }
        };
        PageReply::Page { room, frame, live }
    }

    /// Writes what `take_page` left: the page, and for a room now live its
    /// `synced` and the live entries that came during the read and were not
    /// in it.
    async fn write_page(&mut self, reply: PageReply) -> bool {
        let (room, frame, live) = match reply {
            PageReply::Stale => return true,
            PageReply::Failed(frame) => return self.send(None, frame).await,
            PageReply::Page { room, frame, live } => (room, frame, live),
        };
        if let Some(frame) = frame
            && !self.send_text(frame).await
        {
            return false;
        }
        let Some((last, stashed)) = live else {
            return true;
        };
        if !self
            .send(None, ServerFrame::Synced { room, seq: last })
            .await
        {
            return false;
        }
        Box::pin(self.queue_kept_receipts(room)).await;
        for out in stashed {
            if self.wants(&out) {
                self.queue(out.json.clone());
            }
        }
        self.flush().await
    }

    /// After a room's `synced`: the latest receipt of each other member
    /// (and of the caller's other devices) that the server keeps in
    /// memory, but not of users the caller blocks.
    async fn queue_kept_receipts(&mut self, room: RoomId) {
        let kept = self.state.receipts.of_room(room, self.conn_id);
        if kept.is_empty() {
            return;
        }
        let blocked = match self.state.store.blocked_names(self.user.id).await {
            Ok(blocked) => blocked,
            // Receipts are hints: without the block list, send none.
            Err(_) => return,
        };
        for (sender, frame) in kept {
            if !blocked.contains(&sender) {
                self.queue(frame.json.clone());
            }
        }
    }

    /// `signal`: relayed at once to every other connection of the room's
    /// members (but those who block the sender), never stored; a receipt
    /// is also kept in memory (`signals`).
    async fn handle_signal(
        &mut self,
        id: Option<String>,
        room: RoomId,
        kind: SignalKind,
        body: String,
    ) -> bool {
        if let Err(wait) = self.signal_rate.take(Instant::now()) {
            super::metrics::rate_limited("signals");
            let frame = ServerFrame::Error {
                code: "rate_limited".to_owned(),
                message: "too many signals; this one was dropped".to_owned(),
                retry_after_ms: Some(wait.as_millis().max(1) as u64),
            };
            return self.send(id, frame).await;
        }
        let max = super::signals::MAX_SIGNAL_BYTES;
        let too_large =
            || error_frame("too_large", format!("a signal body is at most {max} bytes"));
        if body.len() > max.div_ceil(3) * 4 {
            return self.send(id, too_large()).await;
        }
        let decoded_len = match b64::decode(&body) {
            Ok(decoded) if decoded.is_empty() => {
                return self
                    .send(id, error_frame("bad_body", "signal body is empty"))
                    .await;
            }
            Ok(decoded) => decoded.len(),
            Err(_) => {
                return self
                    .send(id, error_frame("bad_body", "body is not valid base64"))
                    .await;
            }
        };
        if decoded_len > max {
            return self.send(id, too_large()).await;
        }
        let audience = match self.state.store.signal_audience(room, self.user.id).await {
            Ok(audience) => audience,
            Err(err) => return self.send(id, store_error_frame(&err)).await,
        };
        if let Some(cluster) = &self.state.cluster {
            let receipt = kind == SignalKind::Receipt;
            cluster.signal(room, self.user.id, &self.user.username, receipt, &body);
        }
        let out = super::signals::signal_frame(room, &self.user.username, kind, body);
        let me = self.conn_id;
        self.state
            .hub
            .deliver_with(&audience, |conn| (conn != me).then(|| out.clone()));
        if kind == SignalKind::Receipt {
            self.state.receipts.keep(room, &self.user.username, me, out);
        }
        true
    }

    async fn handle_history(
        &mut self,
        id: Option<String>,
        room: RoomId,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> bool {
        let limit = limit
            .unwrap_or(DEFAULT_HISTORY_LIMIT)
            .clamp(1, MAX_HISTORY_LIMIT);
        let before = before.unwrap_or(i64::MAX);
        match self
            .state
            .store
            .entries_before(room, self.user.id, before, limit)
            .await
        {
            Ok(Page { entries, has_more }) => {
                let start = history_start(&entries);
                let has_more = has_more || start > 0;
                let history = history_frame(id.as_deref(), room, &entries[start..], has_more);
                self.send_text(history).await
            }
            Err(err) => self.send(id, store_error_frame(&err)).await,
        }
    }

    async fn handle_who(&mut self, id: Option<String>, room: Option<RoomId>) -> bool {
        let people = match room {
            Some(room) => match self.state.store.require_member(room, self.user.id).await {
                Ok(()) => self.state.store.members_with_names(room).await,
                Err(err) => Err(err),
            },
            None => self
                .state
                .store
                .co_members(self.user.id)
                .await
                .map(|mut people| {
                    people.push((self.user.id, self.user.username.clone()));
                    people
                }),
        };
        match people {
            Ok(people) => {
                let users = self.state.presence.online_among(people, self.user.id);
                self.send(id, ServerFrame::Online { room, users }).await
            }
            Err(err) => self.send(id, store_error_frame(&err)).await,
        }
    }
}

/// Frame the hub delivers for a committed entry, serialised once.
pub fn entry_outbound(entry: &crate::store::Entry) -> Outbound {
    Outbound {
        position: Some((entry.room, entry.seq)),
        json: entry_frame(entry).into(),
    }
}

/// Frame telling a user that a new direct conversation is a request.
pub fn request_outbound(room: RoomId, by: &str) -> Outbound {
    let frame = ServerFrame::Request {
        room,
        by: by.to_owned(),
    };
    Outbound {
        position: None,
        json: Outgoing::new(None, frame).to_json().into(),
    }
}

/// Frame telling a user they were invited to a room.
pub fn invited_outbound(room: RoomId, by: &str) -> Outbound {
    let frame = ServerFrame::Invited {
        room,
        by: by.to_owned(),
    };
    Outbound {
        position: None,
        json: Outgoing::new(None, frame).to_json().into(),
    }
}

fn ack_frame(result: Result<Applied, StoreError>) -> ServerFrame {
    match result {
        Ok(Applied {
            room,
            entry: Some(entry),
            duplicate,
        }) => ServerFrame::Ack {
            room,
            client_id: entry.client_id.unwrap_or_default(),
            seq: entry.seq,
            ts: entry.ts,
            duplicate,
        },
        Ok(_) => error_frame("unavailable", "the message was not stored; retry"),
        Err(err) => store_error_frame(&err),
    }
}

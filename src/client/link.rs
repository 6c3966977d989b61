//! A WebSocket link to the server that survives the server going away.
//!
//! `Link::start` spawns one task that connects, authenticates, syncs every
//! followed room from the last position it delivered, and resends whatever
//! is still unacknowledged (the server deduplicates by `client_id`, so a
//! resend is stored once). When the connection drops it reconnects with
//! exponential backoff and jitter. The caller sees one ordered stream of
//! `Event`s with no duplicate entries.
//!
//! Messages are stored in the order they were given to `send` (PROTOCOL
//! §11): up to a window of sends is in flight at once. When the server
//! refuses one for now (`rate_limited`, `unavailable`,
//! `storage_unavailable`) it also refuses every later send of the
//! connection until that one comes again, so the link stops sending, waits
//! as long as it was told, and sends again from the first refused message
//! on, one at a time at first and one more per ack (like TCP's slow start):
//! a 2,000-message burst at 20 messages a second costs about one refusal
//! per message stored, not hundreds of held frames per round.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::protocol::{
    ClientFrame, Cursor, Outgoing, PROTOCOL_VERSION, ServerFrame, SignalKind, WireEntry, close,
};
use crate::store::RoomId;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long without any frame from the server before the link is presumed dead.
const SILENCE_LIMIT_FACTOR: u32 = 3;
/// How long a send refused for now waits to go again when the server did
/// not say.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// Most sends in flight (written, not answered) at once.
const MAX_WINDOW: usize = 64;

#[derive(Debug, Clone)]
pub enum Event {
    /// Authenticated; `resumed` is false the first time.
    Connected {
        resumed: bool,
    },
    Disconnected {
        reason: String,
    },
    /// A log entry, in order per room, never twice.
    Entry(WireEntry),
    /// Everything up to `seq` in `room` has been delivered.
    Synced {
        room: RoomId,
        seq: i64,
    },
    Acked {
        room: RoomId,
        client_id: String,
        seq: i64,
        duplicate: bool,
    },
    /// A send the server refused for now; the link sends it again, in
    /// order, after `retry_after`. Nothing for the user to do.
    Retrying {
        client_id: String,
        code: String,
        retry_after: Duration,
    },
    /// A send the server refused for good (it will not be retried).
    SendFailed {
        client_id: String,
        code: String,
        message: String,
    },
    Presence {
        user: String,
        online: bool,
    },
    Online {
        room: Option<RoomId>,
        users: Vec<String>,
    },
    Invited {
        room: RoomId,
        by: String,
    },
    History {
        room: RoomId,
        entries: Vec<WireEntry>,
        has_more: bool,
    },
    /// A member's signal (receipt or typing), still sealed.
    Signal {
        room: RoomId,
        sender: String,
        kind: SignalKind,
        body: String,
    },
    /// A message request: `by` opened a DM with this user.
    Request {
        room: RoomId,
        by: String,
    },
    Error {
        code: String,
        message: String,
    },
    /// The session token was refused: the link stops.
    Unauthorized,
}

enum Command {
    Follow(Cursor),
    Send {
        room: RoomId,
        client_id: String,
        body: String,
        erase: Option<i64>,
    },
    Who(Option<RoomId>),
    History {
        room: RoomId,
        before: Option<i64>,
        limit: u32,
    },
    Signal {
        room: RoomId,
        kind: SignalKind,
        body: String,
    },
}

/// Handle to a running link. Dropping it stops the link.
pub struct Link {
    commands: mpsc::Sender<Command>,
    pub events: mpsc::Receiver<Event>,
}

struct Pending {
    room: RoomId,
    client_id: String,
    body: String,
    /// The sender's own earlier message the server erases with this one
    /// (a delete for everyone, §21).
    erase: Option<i64>,
    /// Written on this connection and not answered yet.
    is_sent: bool,
}

impl Pending {
    fn frame(&self) -> Message {
        let send = ClientFrame::Send {
            room: self.room,
            client_id: self.client_id.clone(),
            body: self.body.clone(),
            erase: self.erase,
        };
        frame(Some(self.client_id.clone()), send)
    }
}

impl Link {
    /// `server` is the base URL (`http://host:port`); the link uses `/ws`.
    pub fn start(server: &str, token: String) -> Self {
        let (commands, command_rx) = mpsc::channel(1024);
        let (event_tx, events) = mpsc::channel(4096);
        let url = websocket_url(server);
        tokio::spawn(run(url, token, command_rx, event_tx));
        Self { commands, events }
    }

    /// Delivers `room` from `after` on (0 for everything visible), then live.
    pub async fn follow(&self, room: RoomId, after: i64) {
        let _ = self
            .commands
            .send(Command::Follow(Cursor { room, after }))
            .await;
    }

    /// Queues a message body (already base64) until the server acknowledges it.
    pub async fn send(&self, room: RoomId, client_id: String, body: String) {
        self.send_erasing(room, client_id, body, None).await;
    }

    /// Like `send`, asking the server to erase the sender's own message
    /// at seq `erase` in the same transaction (PROTOCOL §21).
    pub async fn send_erasing(
        &self,
        room: RoomId,
        client_id: String,
        body: String,
        erase: Option<i64>,
    ) {
        let _ = self
            .commands
            .send(Command::Send {
                room,
                client_id,
                body,
                erase,
            })
            .await;
    }

    pub async fn who(&self, room: Option<RoomId>) {
        let _ = self.commands.send(Command::Who(room)).await;
    }

    /// Sends a sealed signal (base64) now if connected; signals are fire
    /// and forget, so one given while offline is dropped.
    pub async fn signal(&self, room: RoomId, kind: SignalKind, body: String) {
        let _ = self
            .commands
            .send(Command::Signal { room, kind, body })
            .await;
    }

    pub async fn history(&self, room: RoomId, before: Option<i64>, limit: u32) {
        let _ = self
            .commands
            .send(Command::History {
                room,
                before,
                limit,
            })
            .await;
    }
}

/// `http://h:p` → `ws://h:p/ws`, `https://` → `wss://`.
pub fn websocket_url(server: &str) -> String {
    let base = server.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/ws")
}

struct State {
    token: String,
    cursors: HashMap<RoomId, i64>,
    /// Rooms with a `sync` in flight. Live entries for them are ignored:
    /// the pages will carry them, in order (they are committed before they
    /// are pushed), so taking a live one early could skip the pages below it.
    syncing: HashSet<RoomId>,
    /// Every send not acknowledged yet, in the order given to `send`.
    outbox: VecDeque<Pending>,
    /// Sends of the outbox written on this connection and not answered.
    in_flight: usize,
    /// How many may be in flight now: `MAX_WINDOW`, back to 1 after a
    /// refusal, one more per ack.
    window: usize,
    /// After a refusal for now: no send goes out before this.
    paused_until: Option<tokio::time::Instant>,
    events: mpsc::Sender<Event>,
    connected_before: bool,
}

async fn run(
    url: String,
    token: String,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) {
    let mut state = State {
        token,
        cursors: HashMap::new(),
        syncing: HashSet::new(),
        outbox: VecDeque::new(),
        in_flight: 0,
        window: MAX_WINDOW,
        paused_until: None,
        events,
        connected_before: false,
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let outcome = session(&url, &mut state, &mut commands).await;
        match outcome {
            Outcome::Stopped => return,
            Outcome::Unauthorized => {
                let _ = state.events.send(Event::Unauthorized).await;
                return;
            }
            Outcome::Lost { reason, was_up } => {
                if state
                    .events
                    .send(Event::Disconnected { reason })
                    .await
                    .is_err()
                {
                    return;
                }
                if was_up {
                    backoff = FIRST_BACKOFF;
                }
            }
        }
        // Keep taking commands while waiting, so sends made offline are kept.
        let wait = with_jitter(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => state.absorb_offline(cmd),
                    None => return,
                },
            }
        }
    }
}

enum Outcome {
    Stopped,
    Unauthorized,
    Lost { reason: String, was_up: bool },
}

impl State {
    /// A command received while disconnected: remember it for the next connection.
    fn absorb_offline(&mut self, cmd: Command) {
        match cmd {
            Command::Follow(cursor) => {
                self.cursors.insert(cursor.room, cursor.after);
            }
            Command::Send {
                room,
                client_id,
                body,
                erase,
            } => self.outbox.push_back(Pending {
                room,
                client_id,
                body,
                erase,
                is_sent: false,
            }),
            Command::Who(_) | Command::History { .. } | Command::Signal { .. } => {}
        }
    }
}

fn frame(id: Option<String>, frame: ClientFrame) -> Message {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        v: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(flatten)]
        frame: &'a ClientFrame,
    }
    let json = serde_json::to_string(&Out {
        v: PROTOCOL_VERSION,
        id,
        frame: &frame,
    })
    .expect("client frames serialise");
    Message::text(json)
}

async fn session(url: &str, state: &mut State, commands: &mut mpsc::Receiver<Command>) -> Outcome {
    let lost = |reason: String| Outcome::Lost {
        reason,
        was_up: false,
    };
    let connector = tokio_tungstenite::Connector::Rustls(super::tls::config());
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector));
    let (ws, _) = match connecting.await {
        Ok(ok) => ok,
        Err(err) => return lost(format!("cannot connect: {err}")),
    };
    let (mut sink, mut stream) = ws.split();
    if sink
        .send(frame(
            None,
            ClientFrame::Auth {
                token: state.token.clone(),
            },
        ))
        .await
        .is_err()
    {
        return lost("connection closed during auth".into());
    }
    let heartbeat = loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<Outgoing>(&text) {
                Ok(Outgoing {
                    frame: ServerFrame::Ready { heartbeat_ms, .. },
                    ..
                }) => {
                    break Duration::from_millis(heartbeat_ms.max(100));
                }
                Ok(Outgoing {
                    frame: ServerFrame::Error { code, .. },
                    ..
                }) if code == "unauthorized" => {
                    return Outcome::Unauthorized;
                }
                _ => return lost("unexpected first frame".into()),
            },
            Ok(Some(Ok(Message::Close(Some(cf))))) if u16::from(cf.code) == close::UNAUTHORIZED => {
                return Outcome::Unauthorized;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(_) => return lost("connection closed during auth".into()),
            Err(_) => return lost("no reply to auth".into()),
        }
    };
    let resumed = state.connected_before;
    state.connected_before = true;
    if state
        .events
        .send(Event::Connected { resumed })
        .await
        .is_err()
    {
        return Outcome::Stopped;
    }
    let rooms: Vec<Cursor> = state
        .cursors
        .iter()
        .map(|(room, after)| Cursor {
            room: *room,
            after: *after,
        })
        .collect();
    state.syncing = rooms.iter().map(|c| c.room).collect();
    if !rooms.is_empty()
        && sink
            .send(frame(None, ClientFrame::Sync { rooms }))
            .await
            .is_err()
    {
        return Outcome::Lost {
            reason: "connection lost".into(),
            was_up: true,
        };
    }
    // The whole outbox goes again, in order, refused sends included (with
    // their client ids: what the last connection stored is acked as a
    // duplicate).
    for p in &mut state.outbox {
        p.is_sent = false;
    }
    state.in_flight = 0;
    state.window = MAX_WINDOW;
    state.paused_until = None;
    if state.pump(&mut sink).await.is_err() {
        return Outcome::Lost {
            reason: "connection lost".into(),
            was_up: true,
        };
    }

    let silence_limit = heartbeat * SILENCE_LIMIT_FACTOR;
    let mut ping = tokio::time::interval(heartbeat);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { let _ = sink.send(Message::Close(None)).await; return Outcome::Stopped };
                let msg = match cmd {
                    Command::Follow(cursor) => {
                        // The follower's position is the truth: syncing from
                        // an older cursor of ours would hand it entries it
                        // has read, from a newer one would skip some.
                        let after = cursor.after;
                        state.cursors.insert(cursor.room, after);
                        state.syncing.insert(cursor.room);
                        Some(frame(None, ClientFrame::Sync { rooms: vec![Cursor { room: cursor.room, after }] }))
                    }
                    // Queued behind every earlier send; `pump` below sends it
                    // when its turn and the window allow.
                    Command::Send { room, client_id, body, erase } => {
                        state.outbox.push_back(Pending { room, client_id, body, erase, is_sent: false });
                        None
                    }
                    Command::Who(room) => Some(frame(None, ClientFrame::Who { room })),
                    Command::History { room, before, limit } => Some(frame(None, ClientFrame::History { room, before, limit: Some(limit) })),
                    Command::Signal { room, kind, body } => Some(frame(None, ClientFrame::Signal { room, kind, body })),
                };
                if let Some(msg) = msg && sink.send(msg).await.is_err() {
                    return Outcome::Lost { reason: "connection lost".into(), was_up: true };
                }
            }
            msg = stream.next() => {
                last_heard = tokio::time::Instant::now();
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(outcome) = state.handle(&text).await { return outcome; }
                    }
                    Some(Ok(Message::Close(cf))) => {
                        let code = cf.as_ref().map(|c| u16::from(c.code)).unwrap_or(1005);
                        if code == close::UNAUTHORIZED { return Outcome::Unauthorized; }
                        let reason = cf.map(|c| c.reason.to_string()).unwrap_or_default();
                        return Outcome::Lost { reason: format!("server closed the connection ({code} {reason})"), was_up: true };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return Outcome::Lost { reason: format!("connection lost: {err}"), was_up: true },
                    None => return Outcome::Lost { reason: "connection lost".into(), was_up: true },
                }
            }
            _ = tokio::time::sleep_until(state.paused_until.unwrap_or_else(tokio::time::Instant::now)), if state.paused_until.is_some() => {
                state.paused_until = None;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > silence_limit {
                    return Outcome::Lost { reason: "server stopped answering".into(), was_up: true };
                }
                if sink.send(frame(None, ClientFrame::Ping)).await.is_err() {
                    return Outcome::Lost { reason: "connection lost".into(), was_up: true };
                }
            }
        }
        // Whatever happened (a new send, an ack, a wait over), send what
        // the window now allows.
        if state.pump(&mut sink).await.is_err() {
            return Outcome::Lost {
                reason: "connection lost".into(),
                was_up: true,
            };
        }
    }
}

impl State {
    async fn emit(&self, event: Event) -> Result<(), Outcome> {
        self.events.send(event).await.map_err(|_| Outcome::Stopped)
    }

    /// Handles one server frame; `Err` ends the session.
    async fn handle(&mut self, text: &str) -> Result<(), Outcome> {
        let Ok(Outgoing { id, frame, .. }) = serde_json::from_str::<Outgoing>(text) else {
            return self
                .emit(Event::Error {
                    code: "protocol".into(),
                    message: "unreadable frame from server".into(),
                })
                .await;
        };
        match frame {
            ServerFrame::Entry { entry } if self.syncing.contains(&entry.room) => {}
            ServerFrame::Entry { entry } => self.deliver(entry).await?,
            ServerFrame::Page { entries, .. } => {
                for entry in entries {
                    self.deliver(entry).await?;
                }
            }
            ServerFrame::Synced { room, seq } => {
                self.syncing.remove(&room);
                let cursor = self.cursors.entry(room).or_insert(seq);
                *cursor = (*cursor).max(seq);
                self.emit(Event::Synced { room, seq }).await?;
            }
            ServerFrame::Ack {
                room,
                client_id,
                seq,
                duplicate,
                ..
            } => {
                if self.take_answered(&client_id) {
                    self.window = (self.window + 1).min(MAX_WINDOW);
                }
                self.emit(Event::Acked {
                    room,
                    client_id,
                    seq,
                    duplicate,
                })
                .await?;
            }
            ServerFrame::Error {
                code,
                message,
                retry_after_ms,
            } => {
                let failed_send = id.filter(|id| self.outbox.iter().any(|p| &p.client_id == id));
                let not_stored_yet = matches!(
                    code.as_str(),
                    "unavailable" | "storage_unavailable" | "rate_limited"
                );
                match failed_send {
                    Some(client_id) if not_stored_yet => {
                        let retry_after = self.retry_later(&client_id, retry_after_ms);
                        self.emit(Event::Retrying {
                            client_id,
                            code,
                            retry_after,
                        })
                        .await?;
                    }
                    Some(client_id) => {
                        self.take_answered(&client_id);
                        self.emit(Event::SendFailed {
                            client_id,
                            code,
                            message,
                        })
                        .await?;
                    }
                    None => self.emit(Event::Error { code, message }).await?,
                }
            }
            // A room's snapshot reads as a `who` answer; changes as one
            // event per user (PROTOCOL.md §12).
            ServerFrame::Presence {
                room,
                online,
                snapshot: true,
                ..
            } => {
                let room = Some(room);
                self.emit(Event::Online {
                    room,
                    users: online,
                })
                .await?
            }
            ServerFrame::Presence {
                online, offline, ..
            } => {
                let changes = online
                    .into_iter()
                    .map(|user| (user, true))
                    .chain(offline.into_iter().map(|user| (user, false)));
                for (user, online) in changes {
                    self.emit(Event::Presence { user, online }).await?
                }
            }
            ServerFrame::Online { room, users } => self.emit(Event::Online { room, users }).await?,
            ServerFrame::Invited { room, by } => self.emit(Event::Invited { room, by }).await?,
            ServerFrame::Signal {
                room,
                sender,
                kind,
                body,
            } => {
                self.emit(Event::Signal {
                    room,
                    sender,
                    kind,
                    body,
                })
                .await?
            }
            ServerFrame::Request { room, by } => self.emit(Event::Request { room, by }).await?,
            ServerFrame::History {
                room,
                entries,
                has_more,
            } => {
                self.emit(Event::History {
                    room,
                    entries,
                    has_more,
                })
                .await?
            }
            ServerFrame::Ready { .. } | ServerFrame::Pong => {}
        }
        Ok(())
    }

    /// A send refused for now: it goes again, with everything after it,
    /// once the server's wait (or `DEFAULT_RETRY` if it named none) is
    /// over, one at a time at first. Returns the wait.
    fn retry_later(&mut self, client_id: &str, retry_after_ms: Option<u64>) -> Duration {
        if let Some(p) = self.outbox.iter_mut().find(|p| p.client_id == client_id)
            && p.is_sent
        {
            p.is_sent = false;
            self.in_flight -= 1;
        }
        let wait = retry_after_ms.map_or(DEFAULT_RETRY, Duration::from_millis);
        let at = tokio::time::Instant::now() + wait;
        self.paused_until = Some(self.paused_until.map_or(at, |was| was.max(at)));
        self.window = 1;
        wait
    }

    /// Removes an answered send from the outbox; false if it was not there.
    fn take_answered(&mut self, client_id: &str) -> bool {
        let Some(at) = self.outbox.iter().position(|p| p.client_id == client_id) else {
            return false;
        };
        if self.outbox.remove(at).is_some_and(|p| p.is_sent) {
            self.in_flight -= 1;
        }
        true
    }

    /// Writes the next sends of the outbox, in order, while the window
    /// allows and no refusal is being waited out. `Err` if the connection
    /// failed.
    async fn pump<S>(&mut self, sink: &mut S) -> Result<(), S::Error>
    where
        S: futures_util::Sink<Message> + Unpin,
    {
        if self.paused_until.is_some() {
            return Ok(());
        }
        let mut is_fed = false;
        while self.in_flight < self.window {
            let Some(p) = self.outbox.iter_mut().find(|p| !p.is_sent) else {
                break;
            };
            p.is_sent = true;
            self.in_flight += 1;
            sink.feed(p.frame()).await?;
            is_fed = true;
        }
        if is_fed {
            sink.flush().await?;
        }
        Ok(())
    }

    /// Passes an entry on unless it was already delivered. The server also
    /// sends live entries of rooms this connection has not synced; those
    /// are dropped: handed over before `follow`, an entry would overtake
    /// the ones the follow's sync brings before it (a gap for a follower
    /// that takes entries in order).
    async fn deliver(&mut self, entry: WireEntry) -> Result<(), Outcome> {
        let Some(cursor) = self.cursors.get_mut(&entry.room) else {
            return Ok(());
        };
        if entry.seq <= *cursor {
            return Ok(());
        }
        *cursor = entry.seq;
        self.emit(Event::Entry(entry)).await
    }
}

/// `base` plus up to 50 % random extra, so clients do not reconnect in lockstep.
fn with_jitter(base: Duration) -> Duration {
    let mut byte = [0u8; 2];
    let _ = getrandom::fill(&mut byte);
    let fraction = f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX) / 2.0;
    base + base.mul_f64(fraction)
}

//! Where a connection's frames leave: the hub writes a frame straight to
//! an idle session's socket; everything else goes through the session.
//!
//! At a light load each frame the hub handed to a session woke its task,
//! which ran its loop twice (once to write, once to find nothing more) and
//! wrote: at 10k deliveries/s the task wake-ups and loop passes cost more
//! CPU than the bare relay spends in all (issue 18). So while a session on
//! a plain TCP socket is idle (parked in its loop with nothing of its own
//! to write), the hub writes a frame for it in one non-blocking write from
//! the thread that delivers it, and the session is not woken at all.
//!
//! What keeps the wire in order:
//! - The hub writes only while the outlet is open and the connection's
//!   queue is empty (so nothing queued is overtaken), under the outlet's
//!   lock, and only a frame the session would send next: an entry that
//!   directly follows its room's cursor, or a frame with no place in a log.
//!   A room being synced, a gap, a full socket or a busy session: the
//!   frame goes to the queue and the session decides, as before.
//! - The session closes the outlet before it takes a frame from its queue
//!   (so the hub cannot write past a frame taken but not yet written), and
//!   every change the session makes to its cursors closes it too. Every
//!   write the session makes goes through `OutletIo`, which closes it as
//!   well and first writes out the end of a frame that a direct write
//!   could not finish. The session opens it again at the top of its loop,
//!   once nothing of its own is half written.
//!
//! Only a lightly loaded connection is written this way: a frame within
//! `BUSY_GAP` of the last direct write is queued, so a busy session still
//! writes several frames per system call, on whichever worker is free.
//! TLS connections (whose bytes need the session's TLS state) have no
//! socket here; their frames always go through the session.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use warp::hyper::upgrade::Upgraded;

use super::frame_queue::FrameQueue;
use super::hub::Outbound;
use crate::store::RoomId;

/// Where one room stands for this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomCursor {
    /// Pages are being sent from the store; live entries are dropped.
    Syncing { after: i64 },
    /// Caught up to `seq`; live entries above it are forwarded.
    Live { seq: i64 },
}

pub struct Outlet {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The plain TCP socket the hub may write to; `None` for TLS, and once
    /// the session's side is gone.
    socket: Option<Arc<TcpStream>>,
    /// The session is idle: the hub may write.
    open: bool,
    /// When the hub last wrote here.
    last_written: Option<Instant>,
    /// The end of a frame a direct write could not finish: it goes out
    /// before anything else.
    unfinished: Option<Vec<u8>>,
    cursors: HashMap<RoomId, RoomCursor>,
}

/// A frame within this long of the hub's last direct write to the same
/// connection is queued instead (`offer`). At 10k deliveries/s to 100
/// connections each gets a frame every 10 ms; under `ramp`'s load, one
/// every few hundred µs, and writing each on its own from the hub's one
/// thread cut the sustained rate to a third.
const BUSY_GAP: Duration = Duration::from_millis(1);

/// Frames up to this size are laid out in one buffer and sent whole.
const LAID_OUT_MAX: usize = 16 * 1024;

thread_local! {
    /// One per thread, not per connection: an idle connection keeps none.
    static LAID_OUT: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(LAID_OUT_MAX));
}

/// Writes `json` as a text frame if the socket takes it now; what it did
/// not take (`None`: all taken). A frame of common size is copied behind
/// its header and sent with one `send(2)`, which costs less than a
/// `writev(2)` of the two (no file-position lock, no vector to import).
fn try_send(socket: &TcpStream, json: &Utf8Bytes) -> io::Result<Option<Vec<u8>>> {
    let (header, used) = super::wire::header(json.len());
    let parts = [&header[..used], json.as_bytes()];
    let total = used + json.len();
    // Straight to the socket, not through tokio's readiness: a write that
    // cannot go leaves tokio believing the socket writable, which costs
    // the session's next write one failed try before it waits.
    let socket = socket2::SockRef::from(socket);
    let sent = if total > LAID_OUT_MAX {
        socket.send_vectored(&parts.map(IoSlice::new))?
    } else {
        LAID_OUT.with_borrow_mut(|bytes| {
            bytes.clear();
            bytes.extend_from_slice(parts[0]);
            bytes.extend_from_slice(parts[1]);
            socket.send(bytes)
        })?
    };
    Ok((sent < total).then(|| parts.concat().split_off(sent)))
}

/// What became of a frame offered for a direct write.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// On its way to the client (or, cut short, queued ahead of all else).
    Written,
    /// The client has it already (a sync page carried it).
    Unwanted,
    /// Not now: queue it for the session.
    Declined,
}

impl Outlet {
    pub fn new(socket: Option<Arc<TcpStream>>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                socket,
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("outlet lock poisoned")
    }

    /// Writes `frame` now if the session is idle and would send it next.
    /// A frame cut short by a full socket wakes the session (`nudge`) to
    /// write the rest.
    pub fn offer(&self, frame: &Outbound, queue: &FrameQueue) -> Offered {
        let mut state = self.lock();
        if !state.open || !queue.is_empty() {
            return Offered::Declined;
        }
        let advances = match frame.position {
            Some((room, seq)) => match state.cursors.get(&room) {
                Some(RoomCursor::Live { seq: have }) if seq <= *have => return Offered::Unwanted,
                Some(RoomCursor::Live { seq: have }) if seq == *have + 1 => Some((room, seq)),
                // Syncing, or a gap to fetch: the session's call.
                Some(_) => return Offered::Declined,
                None => None,
            },
            None => None,
        };
        // Frames this close together are a busy connection's: queued, its
        // session writes them several to a system call, on whichever
        // worker is free, instead of one each on the hub's thread.
        let now = Instant::now();
        if state
            .last_written
            .is_some_and(|at| now.duration_since(at) < BUSY_GAP)
        {
            return Offered::Declined;
        }
        let Some(socket) = &state.socket else {
            return Offered::Declined;
        };
        let Ok(unfinished) = try_send(socket, &frame.json) else {
            // Full, or broken: the session's own write waits or finds out.
            state.open = false;
            return Offered::Declined;
        };
        state.last_written = Some(now);
        if let Some((room, seq)) = advances {
            state.cursors.insert(room, RoomCursor::Live { seq });
        }
        if unfinished.is_some() {
            state.unfinished = unfinished;
            state.open = false;
            drop(state);
            queue.nudge();
        }
        Offered::Written
    }

    /// Opens the outlet to the hub, unless a direct write left the end of
    /// a frame to write first (false: flush, then try again).
    pub fn try_open(&self) -> bool {
        let mut state = self.lock();
        state.open = state.unfinished.is_none();
        state.open
    }

    /// Closes the outlet until the session opens it again (for good if
    /// the session is ending).
    pub fn shut(&self) {
        self.lock().open = false;
    }

    /// Closes the outlet; what a direct write left unfinished, to be
    /// written before anything else.
    fn close(&self) -> Option<Vec<u8>> {
        let mut state = self.lock();
        state.open = false;
        state.unfinished.take()
    }

    /// The room cursors, with the outlet closed: the session is changing
    /// what it has sent.
    pub fn cursors(&self) -> Cursors<'_> {
        let mut state = self.lock();
        state.open = false;
        Cursors(state)
    }
}

pub struct Cursors<'a>(MutexGuard<'a, State>);

impl Deref for Cursors<'_> {
    type Target = HashMap<RoomId, RoomCursor>;

    fn deref(&self) -> &Self::Target {
        &self.0.cursors
    }
}

impl DerefMut for Cursors<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0.cursors
    }
}

/// The session's side of the socket: every write closes the outlet first
/// and finishes what a direct write started. Once it is dropped the hub
/// lets go of the socket too.
pub struct OutletIo<T = TokioIo<Upgraded>> {
    io: T,
    outlet: Arc<Outlet>,
    /// The hub may write to this socket too. Without (TLS, the bench's
    /// relay) a write has nothing to claim and skips the outlet's lock.
    shared: bool,
    /// The end of a direct write being written, and how much of it is out.
    finishing: Option<(Vec<u8>, usize)>,
}

impl<T: AsyncWrite + Unpin> OutletIo<T> {
    pub fn new(io: T, outlet: Arc<Outlet>) -> Self {
        let shared = outlet.lock().socket.is_some();
        Self {
            io,
            outlet,
            shared,
            finishing: None,
        }
    }

    pub fn outlet(&self) -> &Arc<Outlet> {
        &self.outlet
    }

    /// Ready once the session may write: the outlet closed and nothing of
    /// a direct write left.
    fn poll_claim(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shared {
            return Poll::Ready(Ok(()));
        }
        if self.finishing.is_none() {
            self.finishing = self.outlet.close().map(|rest| (rest, 0));
        }
        while let Some((rest, done)) = &mut self.finishing {
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, &rest[*done..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += written;
            if *done == rest.len() {
                self.finishing = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T> Drop for OutletIo<T> {
    fn drop(&mut self) {
        let mut state = self.outlet.lock();
        state.open = false;
        state.socket = None;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for OutletIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for OutletIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_claim(cx))?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_claim(cx))?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_claim(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_claim(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::net::TcpListener;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

    use super::*;
    use crate::server::frame_queue::Popped;
    use crate::server::shared_tcp::SharedTcp;

    /// A server-side socket with its outlet, and the client's end.
    async fn connected() -> (Arc<TcpStream>, Arc<Outlet>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let server = Arc::new(accepted.expect("accepted").0);
        (
            server.clone(),
            Outlet::new(Some(server)),
            client.expect("connected"),
        )
    }

    fn entry(room: i64, seq: i64) -> Outbound {
        Outbound {
            position: Some((RoomId(room), seq)),
            json: format!("{room}/{seq}").into(),
        }
    }

    async fn next_text(client: &mut WebSocketStream<TcpStream>) -> String {
        match tokio::time::timeout(Duration::from_secs(10), client.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The hub writes only to an open outlet with an empty queue, only the
    /// next entry of a live room (or one of a room without a cursor, or a
    /// frame outside any log); the client reads exactly those, in order.
    #[tokio::test]
    async fn writes_only_what_the_idle_session_would_send_next() {
        let (_server, outlet, client) = connected().await;
        let queue = FrameQueue::default();
        assert_eq!(
            outlet.offer(&entry(1, 6), &queue),
            Offered::Declined,
            "closed at first"
        );
        outlet
            .cursors()
            .insert(RoomId(1), RoomCursor::Live { seq: 5 });
        outlet
            .cursors()
            .insert(RoomId(3), RoomCursor::Syncing { after: 0 });
        assert_eq!(
            outlet.offer(&entry(1, 6), &queue),
            Offered::Declined,
            "cursors close it"
        );
        assert!(outlet.try_open());
        assert_eq!(outlet.offer(&entry(1, 6), &queue), Offered::Written);
        assert_eq!(outlet.offer(&entry(1, 6), &queue), Offered::Unwanted);
        assert_eq!(outlet.offer(&entry(1, 4), &queue), Offered::Unwanted);
        assert_eq!(
            outlet.offer(&entry(1, 8), &queue),
            Offered::Declined,
            "a gap"
        );
        assert_eq!(
            outlet.offer(&entry(3, 1), &queue),
            Offered::Declined,
            "syncing"
        );
        // Right after a direct write the connection counts as busy.
        assert_eq!(
            outlet.offer(&entry(2, 40), &queue),
            Offered::Declined,
            "busy"
        );
        tokio::time::sleep(BUSY_GAP * 2).await;
        assert_eq!(outlet.offer(&entry(2, 40), &queue), Offered::Written);
        tokio::time::sleep(BUSY_GAP * 2).await;
        let presence = Outbound {
            position: None,
            json: "presence".into(),
        };
        assert_eq!(outlet.offer(&presence, &queue), Offered::Written);
        tokio::time::sleep(BUSY_GAP * 2).await;
        queue.push(Arc::new(entry(1, 7)), 8).expect("room");
        assert_eq!(
            outlet.offer(&entry(1, 7), &queue),
            Offered::Declined,
            "queue first"
        );
        assert_eq!(
            outlet.cursors().get(&RoomId(1)),
            Some(&RoomCursor::Live { seq: 6 })
        );
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        for want in ["1/6", "2/40", "presence"] {
            assert_eq!(next_text(&mut client).await, want);
        }
    }

    /// A TLS connection (no socket for the hub) never gets a direct write.
    #[test]
    fn without_a_socket_everything_goes_through_the_session() {
        let outlet = Outlet::new(None);
        assert!(outlet.try_open());
        let queue = FrameQueue::default();
        assert_eq!(outlet.offer(&entry(1, 1), &queue), Offered::Declined);
    }

    /// A frame the socket takes only part of wakes the session, and the
    /// session's next write sends the rest of it first: the client reads
    /// every frame whole and in order. (Only a frame past `LAID_OUT_MAX`
    /// is sure to be cut short; the rest is built the same way for both.)
    #[tokio::test]
    async fn a_frame_cut_short_is_finished_before_the_session_writes() {
        let (server, outlet, client) = connected().await;
        // Small buffers, and a client that reads nothing for now.
        socket2::SockRef::from(&*server)
            .set_send_buffer_size(8 * 1024)
            .expect("a small send buffer");
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(8 * 1024)
            .expect("a small receive buffer");
        let queue = FrameQueue::default();
        assert!(outlet.try_open());
        let small = Outbound {
            position: None,
            json: "small".into(),
        };
        let big = Outbound {
            position: None,
            json: "é".repeat(150_000).into(),
        };
        assert_eq!(outlet.offer(&small, &queue), Offered::Written);
        // Big frames until one does not fit whole.
        let mut bigs = 0;
        while outlet.lock().unfinished.is_none() {
            tokio::time::sleep(BUSY_GAP * 2).await;
            assert_eq!(outlet.offer(&big, &queue), Offered::Written, "after {bigs}");
            bigs += 1;
        }
        let left = outlet.lock().unfinished.as_ref().map(Vec::len);
        assert!(
            left.is_some_and(|left| left > 0 && left < big.json.len()),
            "cut short: {left:?} of {} bytes left",
            big.json.len()
        );
        let popped = tokio::time::timeout(Duration::from_secs(5), queue.pop())
            .await
            .expect("the session is woken");
        assert!(matches!(popped, Popped::Nudged), "got {popped:?}");
        assert!(!outlet.try_open(), "shut until the rest is out");
        assert_eq!(outlet.offer(&small, &queue), Offered::Declined);
        // The session writes a frame of its own while the client reads.
        let mut io = OutletIo::new(SharedTcp(server.clone()), outlet.clone());
        let writer = tokio::spawn(async move {
            crate::server::wire::write_text_frames(&mut io, &[Utf8Bytes::from("after")])
                .await
                .expect("written");
            io
        });
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        assert_eq!(next_text(&mut client).await, "small");
        for _ in 0..bigs {
            assert_eq!(next_text(&mut client).await, big.json.as_str());
        }
        assert_eq!(next_text(&mut client).await, "after");
        let io = writer.await.expect("the writer finished");
        assert!(outlet.try_open(), "nothing left over");
        tokio::time::sleep(BUSY_GAP * 2).await;
        assert_eq!(outlet.offer(&small, &queue), Offered::Written);
        assert_eq!(next_text(&mut client).await, "small");
        // The session's side gone, the hub lets go of the socket too.
        drop(io);
        assert!(outlet.try_open());
        assert_eq!(outlet.offer(&small, &queue), Offered::Declined);
    }
}

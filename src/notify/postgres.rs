//! The channel on PostgreSQL: LISTEN/NOTIFY on the store's own pool.
//!
//! Sending: notices are queued without blocking (`announce` runs on the
//! log writer's announcer thread) and a task sends whatever has gathered,
//! coalesced (`wire::encode`), as `SELECT pg_notify('hush', p) FROM
//! unnest($1)` — its own small autocommit statement on a connection of its
//! own, after the data transaction committed, never inside it. PostgreSQL
//! lets one notifying transaction commit at a time in the whole cluster,
//! holding a lock until its commit record is flushed; this connection runs
//! with `synchronous_commit = off`, so a notify's commit does not wait for
//! an fsync under that lock and the data commits never wait for notifies.
//! (Losing a notify in a crash costs nothing: the catch-up reads the store.)
//!
//! Receiving: one `PgListener` connection. Its notifications are decoded and
//! handed to the subscriber in the order PostgreSQL delivered them (commit
//! order). sqlx reconnects a listener by itself, but what was sent while it
//! was away is gone; so this loop owns reconnection instead: on any error it
//! drops the listener, connects a new one, LISTENs, and bumps the link's
//! `epoch`, which tells the server to catch up from the store. A listener
//! that hears nothing for `SILENCE` — not even this node's own heartbeat,
//! which it also receives — counts as dead too (a connection that vanished
//! without a reset).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgListener};
use sqlx::{Connection, PgPool};
use tokio::sync::{mpsc, watch};

use super::wire;
use super::{Channel, Heard, Link, NodeId, Notice, stats};

/// The NOTIFY channel's name.
pub const CHANNEL: &str = "hush";
/// How often each node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A listener that hears nothing for this long reconnects.
const SILENCE: Duration = Duration::from_secs(10);
/// Longest wait between attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Notices sent in one statement at most.
const MAX_NOTICES_PER_SEND: usize = 20_000;

pub struct PgChannel {
    node: NodeId,
    outbox: mpsc::UnboundedSender<Vec<Notice>>,
    heard: Mutex<Option<mpsc::UnboundedReceiver<Heard>>>,
    link: watch::Sender<Link>,
}

impl PgChannel {
    /// The channel, and the task that runs it until `shutdown`.
    pub fn start(
        pool: PgPool,
        shutdown: watch::Receiver<bool>,
    ) -> (
        Arc<Self>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        let (heard_tx, heard_rx) = mpsc::unbounded_channel();
        let channel = Arc::new(Self {
            node: NodeId::random(),
            outbox,
            heard: Mutex::new(Some(heard_rx)),
            link: watch::channel(Link::default()).0,
        });
        let node = channel.node;
        let link = channel.link.clone();
        let task = async move {
            tokio::join!(
                send_loop(pool.clone(), node, outbox_rx, shutdown.clone()),
                listen_loop(pool, node, heard_tx, link, shutdown),
            );
        };
        (channel, task)
    }
}

impl Channel for PgChannel {
    fn node(&self) -> NodeId {
        self.node
    }

    fn announce(&self, notices: Vec<Notice>) {
        if !notices.is_empty() {
            let _ = self.outbox.send(notices);
        }
    }

    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<Heard>> {
        self.heard.lock().expect("channel lock poisoned").take()
    }

    fn link(&self) -> watch::Receiver<Link> {
        self.link.subscribe()
    }

    fn is_shared(&self) -> bool {
        true
    }
}

/// A connection of the sender's own, outside the pool's rotation.
async fn sender_connection(pool: &PgPool) -> sqlx::Result<PgConnection> {
    let mut conn = pool.acquire().await?.detach();
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

async fn send_loop(
    pool: PgPool,
    node: NodeId,
    mut outbox: mpsc::UnboundedReceiver<Vec<Notice>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn: Option<PgConnection> = None;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut notices = tokio::select! {
            _ = shutdown.wait_for(|stopping| *stopping) => break,
            _ = heartbeat.tick() => vec![Notice::Heartbeat],
            batch = outbox.recv() => match batch {
                Some(batch) => batch,
                None => break,
            },
        };
        while notices.len() < MAX_NOTICES_PER_SEND {
            match outbox.try_recv() {
                Ok(more) => notices.extend(more),
                Err(_) => break,
            }
        }
        let payloads = wire::encode(node, &notices);
        let mut sent = false;
        for attempt in 0..2 {
            if conn.is_none() {
                match sender_connection(&pool).await {
                    Ok(fresh) => conn = Some(fresh),
                    Err(err) => {
                        tracing::warn!(error = %err, "notify: cannot connect to send");
                        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            match sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                .bind(CHANNEL)
                .bind(&payloads)
                .execute(&mut *c)
                .await
            {
                Ok(_) => {
                    sent = true;
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "notify: sending failed");
                    if let Some(dead) = conn.take() {
                        let _ = dead.close().await;
                    }
                }
            }
        }
        if sent {
            stats::PAYLOADS_SENT.add(payloads.len() as u64);
        } else {
            stats::SEND_FAILURES.add(payloads.len() as u64);
        }
    }
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
}

async fn listen_loop(
    pool: PgPool,
    node: NodeId,
    heard: mpsc::UnboundedSender<Heard>,
    link: watch::Sender<Link>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut epoch = 0u64;
    let mut backoff = Duration::from_millis(50);
    let mut assembler = wire::Assembler::default();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.eager_reconnect(false);
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let connected = tokio::select! {
            _ = shutdown.wait_for(|stopping| *stopping) => None,
            connected = listener => Some(connected),
        };
        let mut listener = match connected {
            None => break,
            Some(Ok(listener)) => listener,
            Some(Err(err)) => {
                tracing::warn!(error = %err, "notify: listener cannot connect; retrying");
                let stop = tokio::select! {
                    _ = shutdown.wait_for(|stopping| *stopping) => true,
                    _ = tokio::time::sleep(backoff) => false,
                };
                if stop {
                    break;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        epoch += 1;
        if epoch > 1 {
            stats::LISTENER_RECONNECTS.add(1);
            tracing::info!(epoch, "notify: listener connected again; catching up");
        }
        stats::set_listener_up(true);
        link.send_replace(Link { up: true, epoch });
        loop {
            let received = tokio::select! {
                _ = shutdown.wait_for(|stopping| *stopping) => None,
                received = tokio::time::timeout(SILENCE, listener.try_recv()) => Some(received),
            };
            let Some(received) = received else {
                stats::set_listener_up(false);
                link.send_replace(Link { up: false, epoch });
                return;
            };
            let notification = match received {
                Ok(Ok(Some(notification))) => notification,
                Ok(Ok(None)) => {
                    tracing::warn!("notify: listener connection lost");
                    break;
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "notify: listener failed");
                    break;
                }
                Err(_) => {
                    tracing::warn!("notify: listener heard nothing, not even itself; reconnecting");
                    break;
                }
            };
            let Some((from, lines)) = wire::decode(notification.payload()) else {
                continue;
            };
            if from == node {
                continue;
            }
            stats::PAYLOADS_RECEIVED.add(1);
            for one in assembler.heard(from, lines) {
                stats::NOTICES_RECEIVED.add(1);
                let _ = heard.send(one);
            }
        }
        stats::set_listener_up(false);
        link.send_replace(Link { up: false, epoch });
        assembler.reset();
        drop(listener);
    }
    stats::set_listener_up(false);
}

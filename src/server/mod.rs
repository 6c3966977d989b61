//! The hush server: HTTP API, WebSocket sessions, hub and log writer wired
//! together. `run` takes an already bound listener and a shutdown future so
//! tests can start it on an ephemeral port.

mod argon_memory;
mod auth;
mod cluster;
mod conversation;
mod error;
mod fanout;
mod frame_queue;
pub mod health;
mod hub;
pub mod limits;
mod listener;
mod maintenance;
mod memory;
pub mod metrics;
mod outlet;
mod pacing;
mod presence;
mod read_wake;
mod routes;
mod send_hold;
mod session;
mod shared_tcp;
mod signals;
mod tls;
pub mod upgrade;
mod web;
mod wire;

use std::future::Future;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use warp::Filter;

use crate::config::ServerConfig;
use crate::notify::{self, Channel, postgres::PgChannel};
use crate::store::Store;
use crate::store::writer::Writer;

pub use listener::PeerAddr;
pub use routes::validate_username;

/// What every route and session shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub writer: Writer,
    pub hub: hub::Hub,
    presence: presence::Presence,
    /// Hands committed entries to the hub (in order across nodes).
    fanout: fanout::Fanout,
    /// The other nodes, when the store is shared (PostgreSQL).
    cluster: Option<Arc<cluster::Cluster>>,
    pub config: Arc<ServerConfig>,
    /// The cross-node listener's state, for `/healthz` (`NotApplicable`
    /// until a listener sets it).
    pub listener_health: Arc<health::ListenerHealth>,
    passwords: auth::Passwords,
    login_throttle: Arc<auth::LoginThrottle>,
    limits: Arc<limits::Limiter>,
    /// The latest receipt signal per (room, sender), in memory only.
    receipts: Arc<signals::KeptReceipts>,
    /// Flips to true when the server starts shutting down.
    shutdown: watch::Receiver<bool>,
    sessions: TaskTracker,
}

/// Binds the server's listening socket with TCP_NODELAY set. Linux copies
/// the option to every socket it accepts, and warp 0.4 offers no way to set
/// it per connection; without it, delayed ACKs hold small frames back and
/// a busy room's p99 latency sits around 30 ms instead of a few.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves until `shutdown` resolves, then stops accepting, lets each
/// session flush its acknowledgements and close with 1001, lets the writer
/// finish what is queued, and returns.
pub async fn run(
    listener: TcpListener,
    store: Store,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(err) = store.reserve_wal().await {
        tracing::warn!(error = %err, "could not reserve the write-ahead log's space; commits will grow it");
    }
    let hub = hub::Hub::new(config.outbound_queue);
    let receipts = Arc::new(signals::KeptReceipts::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let background = TaskTracker::new();
    // One node (SQLite): own commits are delivered as they commit. On
    // PostgreSQL, other nodes may share the store: LISTEN/NOTIFY tells them.
    let channel: Arc<dyn Channel> = match store.postgres_pool() {
        Some(pool) => {
            let (channel, task) = PgChannel::start(pool, shutdown_rx.clone());
            background.spawn(task);
            tracing::info!(node = %channel.node(), "cross-node delivery over PostgreSQL LISTEN/NOTIFY");
            channel
        }
        None => notify::Local::new(),
    };
    let fanout = fanout::Fanout::new(
        hub.clone(),
        receipts.clone(),
        channel.clone(),
        store.clone(),
    );
    let on_commit = fanout.clone();
    let (writer, writer_task) =
        store.spawn_writer(Box::new(move |committed| on_commit.on_commit(committed)));
    let cluster = channel
        .is_shared()
        .then(|| cluster::Cluster::new(channel.clone()));
    let presence = match &cluster {
        Some(cluster) => presence::Presence::with_cluster(cluster.clone()),
        None => presence::Presence::new(),
    };
    let state = AppState {
        store: store.clone(),
        writer: writer.clone(),
        hub,
        presence,
        fanout: fanout.clone(),
        cluster: cluster.clone(),
        passwords: auth::Passwords::new(config.hashing_slots, config.limits.hashing_queue),
        login_throttle: Arc::new(auth::LoginThrottle::new(config.login_failures_before_delay)),
        limits: Arc::new(limits::Limiter::new(config.limits.clone())),
        receipts,
        listener_health: Arc::new(health::ListenerHealth::default()),
        config: Arc::new(config),
        shutdown: shutdown_rx,
        sessions: TaskTracker::new(),
    };

    tracing::info!(node = %state.config.node_id, channel_node = %channel.node(), "node {} serving", state.config.node_id);
    if channel.is_shared() {
        background.spawn(report_listener(
            channel.link(),
            state.listener_health.clone(),
            state.shutdown.clone(),
        ));
    }
    warn_if_open_to_the_world(&listener, &state.config);
    if let Some(cluster) = cluster {
        background.spawn(cluster.run(
            fanout.clone(),
            state.presence.clone(),
            store.clone(),
            state.hub.clone(),
            state.receipts.clone(),
            state.shutdown.clone(),
        ));
        background.spawn(fanout.run(state.config.catchup_interval, state.shutdown.clone()));
    }
    background.spawn(maintenance::sweep_sessions(
        store.clone(),
        state.hub.clone(),
        state.config.session_check_interval,
        state.shutdown.clone(),
    ));
    background.spawn(maintenance::retention(
        store.clone(),
        state.config.clone(),
        state.shutdown.clone(),
    ));
    background.spawn(maintenance::expire(
        store.clone(),
        state.config.expiry_interval,
        state.shutdown.clone(),
    ));
    background.spawn(maintenance::scrub(
        store.clone(),
        state.config.erase_checkpoint_delay,
        state.shutdown.clone(),
    ));
    background.spawn(state.presence.clone().run(
        store.clone(),
        state.hub.clone(),
        state.shutdown.clone(),
    ));
    if let Some(tls) = state.config.tls.clone() {
        background.spawn(tls::watch(tls, state.shutdown.clone()));
    }
    background.close();

    let routes = websocket(state.clone())
        .or(metrics::route(
            state.config.metrics_token.clone(),
            state.config.node_id.clone(),
        ))
        .or(routes::api(state.clone()))
        .or(web::routes())
        .recover(error::recover);
    let hub = state.hub.clone();
    let signal = async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
        hub.shut_down();
    };
    listener::serve(
        listener,
        state.config.tls.clone(),
        warp::service(routes),
        signal,
    )
    .await;
    background.wait().await;

    state.sessions.close();
    state.sessions.wait().await;
    writer.stop().await;
    let _ = writer_task.await;
    store.close().await;
}

/// Open registration on a public address lets anyone create accounts: say
/// so at start, once, where the operator will see it.
fn warn_if_open_to_the_world(listener: &TcpListener, config: &ServerConfig) {
    let public = listener
        .local_addr()
        .is_ok_and(|addr| !addr.ip().is_loopback());
    if public && config.registration == crate::config::RegistrationMode::Open {
        tracing::warn!(
            "registration is open and the server listens beyond loopback: anyone who can reach it can create an account; consider --registration invite"
        );
    }
}

/// GET /ws — the WebSocket endpoint (upgrade; authenticate with the first frame).
fn websocket(
    state: AppState,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    let client_ip = limits::client_ip(&state);
    // One copy for every session: each holds a pointer, not its own copy
    // of the twenty-odd handles in `AppState`.
    let state = Arc::new(state);
    warp::path!("ws")
        .and(upgrade::upgrade_request())
        .and(warp::ext::optional::<shared_tcp::SharedTcp>())
        .and(client_ip)
        .and_then(
            move |key: String,
                  on_upgrade: Option<warp::hyper::upgrade::OnUpgrade>,
                  direct: Option<shared_tcp::SharedTcp>,
                  ip| {
                let state = state.clone();
                let slot = state.limits.connection_slot(ip);
                async move {
                    let slot =
                        slot.ok_or_else(|| warp::reject::custom(error::too_many_connections()))?;
                    let tracker = state.sessions.clone();
                    let config = upgrade::socket_config(&state.config);
                    Ok::<_, warp::Rejection>(upgrade::accept(
                        &key,
                        on_upgrade,
                        config,
                        direct.map(|tcp| tcp.0),
                        |task| drop(tracker.spawn(task)),
                        // A combinator, not an async block: a block would
                        // keep a second copy of the session's future (or of
                        // the socket) for the connection's whole life.
                        move |socket| session::run(socket, state).map(move |()| drop(slot)),
                    ))
                }
            },
        )
}

/// Keeps `/healthz`'s `listener` field in step with the cross-node link.
async fn report_listener(
    mut link: watch::Receiver<notify::Link>,
    health: Arc<health::ListenerHealth>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let up = link.borrow_and_update().up;
        health.set(if up {
            health::ListenerState::Up
        } else {
            health::ListenerState::Down
        });
        tokio::select! {
            changed = link.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn accepted_sockets_inherit_tcp_nodelay_from_the_listener() -> std::io::Result<()> {
        let listener = super::bind("127.0.0.1:0".parse().expect("a valid address"))?;
        let addr = listener.local_addr()?;
        let _client = tokio::net::TcpStream::connect(addr).await?;
        let (accepted, _) = listener.accept().await?;
        assert!(accepted.nodelay()?, "the accepted socket has TCP_NODELAY");
        Ok(())
    }
}

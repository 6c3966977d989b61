//! The bare relay baseline: hush's own WebSocket stack with no auth and no
//! storage. The upgrade is answered by `hush::server::upgrade` (the code
//! `hush serve` runs) and each socket gets the `WebSocketConfig` of hush's
//! default settings, so the relay and hush differ only in what they do
//! with a frame, not in how they read and write it. Every text frame a
//! client sends is broadcast, unchanged, to every connected client (the
//! sender included, as hush does). Each client has a bounded queue (1024
//! frames, like hush); a client whose queue is full is dropped, which the
//! bench sees as loss. Accepted sockets get TCP_NODELAY (inherited from
//! the listener).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use hush::config::ServerConfig;
use hush::server::upgrade::{self, WebSocket};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use warp::Filter;

const QUEUE: usize = 1024;

type Clients = Arc<Mutex<HashMap<u64, mpsc::Sender<Message>>>>;

pub struct Relay {
    pub ws_url: String,
    shutdown_tx: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl Relay {
    pub async fn start() -> Result<Self> {
        // warp 0.4 cannot set TCP_NODELAY per accepted socket, but Linux
        // copies it from the listening socket to every accepted one.
        let socket = TcpSocket::new_v4()?;
        socket.set_nodelay(true)?;
        socket.bind("127.0.0.1:0".parse().expect("a valid socket address"))?;
        let listener = socket.listen(1024)?;
        let addr: SocketAddr = listener.local_addr()?;
        let clients: Clients = Arc::default();
        let next_id = Arc::new(AtomicU64::new(0));
        let config = upgrade::socket_config(&ServerConfig::default());
        let route = warp::path!("ws").and(upgrade::upgrade_request()).map(
            move |key: String, on_upgrade| {
                let clients = clients.clone();
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                upgrade::accept(
                    &key,
                    on_upgrade,
                    config,
                    None,
                    |task| drop(tokio::spawn(task)),
                    move |socket| serve_client(socket, id, clients),
                )
            },
        );
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async move {
                    let _ = shutdown_rx.await;
                })
                .run(),
        );
        Ok(Self {
            ws_url: format!("ws://{addr}/ws"),
            shutdown_tx,
            server,
        })
    }

    pub async fn stop(self) {
        let _ = self.shutdown_tx.send(());
        let mut server = self.server;
        // Upgraded sockets may keep a graceful shutdown waiting; the bench
        // has closed its clients already, so do not wait long.
        if tokio::time::timeout(Duration::from_secs(5), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
    }
}

async fn serve_client(socket: WebSocket, id: u64, clients: Clients) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    clients.lock().expect("relay lock poisoned").insert(id, tx);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.send(msg).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    while let Some(Ok(msg)) = stream.next().await {
        if msg.is_close() {
            break;
        }
        if !msg.is_text() {
            continue;
        }
        let mut clients = clients.lock().expect("relay lock poisoned");
        clients.retain(|_, tx| tx.try_send(msg.clone()).is_ok());
    }
    clients.lock().expect("relay lock poisoned").remove(&id);
    writer.abort();
}

/// The relay in a child process (`hush-bench serve-relay`): its CPU time
/// and memory are then its own, and its sockets do not count against this
/// process's descriptor limit (10,000 connections need 20,000 of them when
/// both ends live in one process).
pub struct RelayChild {
    pub ws_url: String,
    child: tokio::process::Child,
}

impl RelayChild {
    pub async fn start() -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("serve-relay")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ws_url = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("the relay child did not start within 30 s"))??
            .ok_or_else(|| anyhow::anyhow!("the relay child exited before it started"))?;
        Ok(Self { ws_url, child })
    }

    pub fn cpu_secs(&self) -> Option<f64> {
        crate::target::cpu_secs(&self.child.id()?.to_string())
    }

    pub fn rss_kib(&self) -> Option<u64> {
        crate::target::rss_kib(&self.child.id()?.to_string())
    }

    /// Closes its stdin (it stops then), killing it if it lingers.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// `hush-bench serve-relay`: runs the relay, prints its URL, and stops when
/// stdin closes (the parent bench ended or dropped it).
pub async fn serve_until_stdin_closes() -> Result<()> {
    use tokio::io::AsyncReadExt;
    let relay = Relay::start().await?;
    println!("{}", relay.ws_url);
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while stdin.read(&mut sink).await? > 0 {}
    relay.stop().await;
    Ok(())
}

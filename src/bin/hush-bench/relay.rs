//! The bare relay baseline: warp 0.4 WebSockets with no auth and no
//! storage. Every text frame a client sends is broadcast, unchanged, to
//! every connected client (the sender included, as hush does). Each
//! client has a bounded queue (1024 frames, like hush); a client whose
//! queue is full is dropped, which the bench sees as loss. Accepted
//! sockets get TCP_NODELAY (inherited from the listener).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use warp::Filter;
use warp::ws::{Message, WebSocket};

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
        let route = warp::path!("ws")
            .and(warp::ws())
            .map(move |ws: warp::ws::Ws| {
                let clients = clients.clone();
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                ws.on_upgrade(move |socket| serve_client(socket, id, clients))
            });
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

//! Our own accept loop in front of warp's routes, for plain TCP and TLS.
//!
//! warp 0.4 serves only a bare TCP or Unix listener, so TLS needs a loop of
//! our own; using it for plain HTTP too keeps one code path. Each accepted
//! socket gets its own task: the TLS handshake runs there under a timeout,
//! so a client that stalls or fails its handshake never holds up the loop.
//! Connections are served by hyper (HTTP/1.1 with upgrades, as warp does)
//! and watched for graceful shutdown: once `shutdown` resolves the listener
//! closes, idle keep-alive connections end, and requests in flight finish.
//! Upgraded WebSockets are not hyper's any more; the sessions' own
//! shutdown handles them.
//!
//! The peer address is put in each request's extensions as `PeerAddr`
//! (warp's own `addr::remote()` only works under warp's server), and a
//! plain TCP connection's socket as `SharedTcp`, for the hub's direct
//! writes to WebSocket sessions (`outlet`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower_service::Service;

use super::shared_tcp::SharedTcp;
use crate::certificate::TlsReloader;

/// Longest a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TCP peer of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Serves `service` on `listener` (over TLS if `tls` is set) until
/// `shutdown` resolves; returns once open HTTP requests have finished.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<TlsReloader>,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    if !is_per_connection(&err) {
                        // Out of file descriptors, typically: back off so the
                        // loop does not spin, and keep serving when it clears.
                        tracing::error!(error = %err, "accept failed");
                        super::metrics::error("accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let watcher = graceful.watcher();
        let service = service.clone();
        match &tls {
            None => {
                let shared = SharedTcp(Arc::new(tcp));
                let direct = Some(shared.clone());
                tokio::spawn(serve_connection(shared, peer, direct, service, watcher));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, None, service, watcher).await;
                        }
                        Ok(Err(err)) => {
                            super::metrics::error("tls_handshake");
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        }
                        Err(_) => {
                            super::metrics::error("tls_handshake");
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// `direct`: the plain TCP socket under `io`, for the hub's direct writes
/// (`outlet`); put in each request's extensions.
async fn serve_connection<I, S, B>(
    io: I,
    peer: SocketAddr,
    direct: Option<SharedTcp>,
    service: S,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(PeerAddr(peer));
        if let Some(direct) = &direct {
            request.extensions_mut().insert(direct.clone());
        }
        service.clone().call(request)
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(err) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}

/// Errors about one incoming connection that the accept loop just skips.
fn is_per_connection(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

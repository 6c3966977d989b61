//! The WebSocket upgrade, done with tokio-tungstenite directly.
//!
//! warp 0.4's `ws()` filter builds every socket with tungstenite's default
//! 128 KiB read buffer, zero-filled per connection, and offers no way to
//! shrink it: ~135 KiB of resident memory for each idle connection. Here
//! the handshake is answered by hand and the upgraded connection is
//! wrapped with a `WebSocketConfig` sized for chat frames.

use std::future::Future;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::Filter;
use warp::http::{Response, StatusCode, header};
use warp::hyper::upgrade::OnUpgrade;

use super::outlet::{Outlet, OutletIo};
use crate::config::ServerConfig;

/// A server-side WebSocket over hyper's upgraded connection, written
/// through its outlet (`outlet`).
pub type WebSocket = WebSocketStream<OutletIo>;

/// The tungstenite settings for one connection.
pub fn socket_config(config: &ServerConfig) -> WebSocketConfig {
    let max = config.max_frame_bytes();
    WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer_bytes)
        // Sessions write text frames themselves (`wire`), so this buffer
        // only gathers control frames; unbounded (tungstenite's default).
        .write_buffer_size(config.ws_write_buffer_bytes)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// Matches a WebSocket upgrade request (GET, `Connection: upgrade`,
/// `Upgrade: websocket`, version 13) and yields its `Sec-WebSocket-Key`
/// and hyper's handle on the connection.
pub fn upgrade_request()
-> impl Filter<Extract = (String, Option<OnUpgrade>), Error = warp::Rejection> + Clone {
    warp::get()
        .and(warp::header::<String>("connection"))
        .and_then(|connection: String| async move {
            let asks_upgrade = connection
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
            if asks_upgrade {
                Ok(())
            } else {
                Err(warp::reject::reject())
            }
        })
        .untuple_one()
        .and(warp::header::exact_ignore_case("upgrade", "websocket"))
        .and(warp::header::exact("sec-websocket-version", "13"))
        .and(warp::header::<String>("sec-websocket-key"))
        .and(warp::ext::optional::<OnUpgrade>())
}

/// Answers the handshake with 101 and, once hyper hands the connection
/// over, runs `serve` on the socket inside `spawn`. `direct`: the plain
/// TCP socket under the connection, which the hub may then write to.
pub fn accept<F, Fut>(
    key: &str,
    on_upgrade: Option<OnUpgrade>,
    config: WebSocketConfig,
    direct: Option<Arc<TcpStream>>,
    spawn: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>),
    serve: F,
) -> Response<String>
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match on_upgrade {
        Some(on_upgrade) => spawn(Box::pin(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = OutletIo::new(TokioIo::new(upgraded), Outlet::new(direct));
                    let socket =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    serve(socket).await;
                }
                Err(err) => tracing::debug!(error = %err, "websocket upgrade failed"),
            }
        })),
        None => tracing::debug!("websocket request without an upgradable connection"),
    }
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.trim().as_bytes()),
        )
        .body(String::new())
        .expect("a static 101 response is valid")
}

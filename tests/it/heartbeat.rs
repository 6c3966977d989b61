//! Heartbeat: the server pings; a client that never answers is closed with
//! 4008, a client that keeps reading (and so answers) stays.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hush::config::ServerConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(1);

fn config() -> ServerConfig {
    ServerConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: TIMEOUT,
        ..ServerConfig::default()
    }
}

/// A WebSocket client on a bare TCP stream that reads but never writes
/// after its `auth` frame: it never answers a ping.
struct MuteClient {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl MuteClient {
    async fn connect(app: &TestApp, token: &str) -> Result<Self> {
        let mut tcp = TcpStream::connect(app.addr).await?;
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            app.addr
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut client = Self {
            tcp,
            buf: Vec::new(),
        };
        let head_end = loop {
            if let Some(at) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            client.fill().await?;
        };
        let head = String::from_utf8_lossy(&client.buf[..head_end]).to_string();
        anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "upgrade failed: {head}");
        client.buf.drain(..head_end);

        let payload = json!({ "v": 1, "type": "auth", "token": token }).to_string();
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![
            0x81,
            0x80 | 126,
            (payload.len() >> 8) as u8,
            payload.len() as u8,
        ];
        frame.extend_from_slice(&mask);
        frame.extend(payload.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        client.tcp.write_all(&frame).await?;
        Ok(client)
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(FRAME_TIMEOUT, self.tcp.read(&mut chunk))
            .await
            .context("read timed out")??;
        anyhow::ensure!(n > 0, "connection ended");
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The next frame from the server: (opcode, payload).
    async fn frame(&mut self) -> Result<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let (len, header) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= header + len {
                    let payload = self.buf[header..header + len].to_vec();
                    self.buf.drain(..header + len);
                    return Ok((opcode, payload));
                }
            }
            self.fill().await?;
        }
    }
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed() -> Result<()> {
    let app = spawn_app_with(config()).await?;
    let token = app.user("alice").await?;
    let mut mute = MuteClient::connect(&app, &token).await?;
    let start = Instant::now();
    let mut pings = 0;
    for _ in 0..1000 {
        let (opcode, payload) = mute.frame().await?;
        match opcode {
            0x1 => {} // ready
            0x9 => pings += 1,
            0x8 => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                assert_eq!(code, 4008, "close code");
                assert!(pings >= 1, "the server pinged before giving up");
                assert!(
                    start.elapsed() >= TIMEOUT,
                    "closed after {:?}, before the timeout",
                    start.elapsed()
                );
                return Ok(());
            }
            other => bail!("unexpected opcode {other}"),
        }
    }
    bail!("never closed")
}

#[tokio::test]
async fn a_client_that_keeps_reading_stays_connected_past_the_timeout() -> Result<()> {
    let app = spawn_app_with(config()).await?;
    let token = app.user("alice").await?;
    let mut ws = app.connect_ws(&token).await?;
    assert_eq!(ws.ready["heartbeat_ms"], 200);
    let start = Instant::now();
    let mut pings = 0;
    // Wait on the server's own pings (answered automatically as they are
    // read) until well past the timeout.
    while start.elapsed() < TIMEOUT * 3 {
        let msg = tokio::time::timeout(FRAME_TIMEOUT, ws.ws.next())
            .await?
            .context("ended")??;
        match msg {
            Message::Ping(_) => pings += 1,
            other => bail!("unexpected {other:?}"),
        }
        anyhow::ensure!(pings < 1000, "too many pings");
    }
    assert!(pings >= 5, "only {pings} pings");
    ws.ws.flush().await?;
    ws.ping().await?;
    Ok(())
}

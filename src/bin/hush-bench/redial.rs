//! Bringing back a bench client whose connection closed, as a real client
//! does (`hush::client::link`): wait a back-off with jitter, connect,
//! `auth` with the same user's token, then `sync` the room from the last
//! `seq` the client has. The caller reads the pages and the `synced` that
//! follow on the returned stream.
//!
//! The back-off starts like the real client's (250 ms) but stops growing
//! at 2 s instead of 10 s: the bench measures how fast the server lets
//! clients back in, not how patient a client is.

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Ws, connect_authenticated, sync_frame};

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// One attempt (connect, `auth`, `ready`, `sync` sent) gives up after this.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How one client gets back in.
#[derive(Clone)]
pub struct Redial {
    pub ws_url: String,
    pub token: String,
    pub room: i64,
}

/// A new connection whose `sync` is on its way.
pub struct Redialed {
    pub sink: SplitSink<Ws, Message>,
    pub stream: SplitStream<Ws>,
    /// Attempts that failed before this one.
    pub failed: u64,
}

impl Redial {
    /// Tries until a connection is authenticated and its `sync` (from
    /// `after`) is sent, or `keep_trying` says stop (checked after each
    /// wait); `None` then.
    pub async fn dial(&self, after: i64, keep_trying: impl Fn() -> bool) -> Option<Redialed> {
        let mut backoff = FIRST_BACKOFF;
        let mut failed = 0;
        loop {
            tokio::time::sleep(with_jitter(backoff)).await;
            if !keep_trying() {
                return None;
            }
            let attempt = async {
                let ws = connect_authenticated(&self.ws_url, &self.token, false).await?;
                let (mut sink, stream) = ws.split();
                sink.send(Message::text(sync_frame(self.room, after)))
                    .await?;
                Ok::<_, anyhow::Error>((sink, stream))
            };
            match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                Ok(Ok((sink, stream))) => {
                    return Some(Redialed {
                        sink,
                        stream,
                        failed,
                    });
                }
                Ok(Err(_)) | Err(_) => failed += 1,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// `base` plus up to 50 % random extra, so the clients cut off together do
/// not all come back in the same instant.
fn with_jitter(base: Duration) -> Duration {
    let mut bytes = [0u8; 2];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    let fraction = f64::from(u16::from_le_bytes(bytes)) / f64::from(u16::MAX) / 2.0;
    base + base.mul_f64(fraction)
}

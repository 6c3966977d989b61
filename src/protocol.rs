//! The wire contract shared by the server, the terminal client and the
//! browser: the JSON bodies of the HTTP API and every WebSocket frame.
//! `docs/PROTOCOL.md` documents the same types for other implementers.
//!
//! Every frame carries `"v": 1` and a `"type"`. A client may put an `"id"`
//! (any short string) on a frame; the server echoes it on the reply.

use serde::{Deserialize, Serialize};

use crate::store::{Entry, EntryKind, RoomId};

mod entry_json;
pub use entry_json::{EntriesJson, PAGE_JSON_BUDGET, entry_frame, history_frame, history_start};

pub const PROTOCOL_VERSION: u32 = 1;

/// Base64 (standard alphabet, padded) used for every binary field.
pub mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    pub fn encode(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
        STANDARD.decode(text)
    }
}

// ----- HTTP bodies -----

#[derive(Debug, Serialize, Deserialize)]
pub struct ChallengeResponse {
    pub challenge: String,
    pub expires_in_secs: u64,
}

/// `password` is deliberately absent from `Debug` output.
#[derive(Serialize, Deserialize)]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
    /// SPKI DER, base64.
    pub public_key: String,
    pub challenge: String,
    /// RSA-PSS-SHA256 over `statements::registration_proof`, base64.
    pub signature: String,
    /// Invite code from `hush admin invite`; required in `invite` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub username: String,
    pub fingerprint: String,
}

#[derive(Serialize, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, Deserialize)]
pub struct LoginResponse {
    pub token: String,
    pub username: String,
    /// Unix milliseconds.
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyInfo {
    pub public_key: String,
    pub fingerprint: String,
    pub created_at: i64,
    pub replaced_at: Option<i64>,
    /// The previous key's signature over the rotation statement.
    pub rotation_signature: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KeysResponse {
    pub username: String,
    pub current: KeyInfo,
    /// Oldest first, the current key last.
    pub history: Vec<KeyInfo>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RotateKeyRequest {
    pub public_key: String,
    /// RSA-PSS-SHA256 by the current key over `statements::key_rotation`.
    pub signature: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreateRoomRequest {
    pub name: String,
}

/// `POST /api/v1/rooms/{id}/timer`: a timer statement (§21), base64.
#[derive(Debug, Serialize, Deserialize)]
pub struct TimerRequest {
    pub body: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UserRequest {
    pub username: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

// ----- WebSocket frames -----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursor {
    pub room: RoomId,
    /// Highest `seq` the client already has (0 for none).
    pub after: i64,
}

/// A frame from a client, with its envelope fields.
#[derive(Debug, Deserialize)]
pub struct Incoming {
    pub v: u32,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(flatten)]
    pub frame: ClientFrame,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Must be the first frame on a connection.
    Auth {
        token: String,
    },
    Send {
        room: RoomId,
        client_id: String,
        body: String,
        /// A seq of the sender's own message to erase in the same
        /// transaction (§21, deleting for everyone).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        erase: Option<i64>,
    },
    /// An ephemeral signal (receipt or typing) relayed to the room's other
    /// connections and never stored (§21).
    Signal {
        room: RoomId,
        kind: SignalKind,
        body: String,
    },
    Sync {
        rooms: Vec<Cursor>,
    },
    History {
        room: RoomId,
        before: Option<i64>,
        limit: Option<u32>,
    },
    Who {
        room: Option<RoomId>,
    },
    Ping,
}

/// What a `signal` carries; the server keeps the latest receipt per
/// (room, sender) in memory, never a typing signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    Receipt,
    Typing,
}

/// A log entry on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireEntry {
    pub room: RoomId,
    pub seq: i64,
    pub ts: i64,
    pub kind: String,
    pub sender: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// A message under a disappearing-messages timer: when it expires (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// A `timer` entry's duration in seconds (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// Why an `erased` entry lost its body: `deleted` or `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&Entry> for WireEntry {
    fn from(e: &Entry) -> Self {
        Self {
            room: e.room,
            seq: e.seq,
            ts: e.ts,
            kind: e.kind.as_str().to_owned(),
            sender: e.sender.clone(),
            subject: e.subject.clone(),
            client_id: e.client_id.clone().filter(|_| e.kind != EntryKind::Erased),
            body: e.body.as_deref().map(b64::encode),
            fingerprint: if e.kind == EntryKind::Key {
                e.detail.clone()
            } else {
                None
            },
            expires: e.expires,
            ttl: e
                .detail
                .as_deref()
                .filter(|_| e.kind == EntryKind::Timer)
                .and_then(|d| d.parse().ok()),
            reason: e.detail.clone().filter(|_| e.kind == EntryKind::Erased),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Ready {
        user: String,
        heartbeat_ms: u64,
        max_body_bytes: usize,
        server_time: i64,
    },
    Ack {
        room: RoomId,
        client_id: String,
        seq: i64,
        ts: i64,
        duplicate: bool,
    },
    Entry {
        entry: WireEntry,
    },
    Page {
        room: RoomId,
        entries: Vec<WireEntry>,
        has_more: bool,
    },
    Synced {
        room: RoomId,
        seq: i64,
    },
    History {
        room: RoomId,
        entries: Vec<WireEntry>,
        has_more: bool,
    },
    /// Who came online and who went offline in one room since the last
    /// `presence` frame for it; with `snapshot`, everyone online in it
    /// (PROTOCOL.md §12).
    Presence {
        room: RoomId,
        online: Vec<String>,
        offline: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        snapshot: bool,
    },
    Online {
        room: Option<RoomId>,
        users: Vec<String>,
    },
    Invited {
        room: RoomId,
        by: String,
    },
    /// A signal relayed from another connection (§21).
    Signal {
        room: RoomId,
        sender: String,
        kind: SignalKind,
        body: String,
    },
    /// A new direct conversation is a request for this user (§21).
    Request {
        room: RoomId,
        by: String,
    },
    Pong,
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// A server frame with its envelope fields, as sent.
#[derive(Debug, Serialize, Deserialize)]
pub struct Outgoing {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(flatten)]
    pub frame: ServerFrame,
}

impl Outgoing {
    pub fn new(id: Option<String>, frame: ServerFrame) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            frame,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }
}

/// Close codes the server uses besides the standard ones.
pub mod close {
    /// Going away: the server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A message larger than the WebSocket frame limit.
    pub const TOO_BIG: u16 = 1009;
    /// No valid `auth` frame, or the session was revoked or expired.
    pub const UNAUTHORIZED: u16 = 4001;
    /// No frame or pong within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4008;
    /// The client did not read fast enough; reconnect and sync.
    pub const TOO_SLOW: u16 = 4009;
    /// The account already has the most connections allowed.
    pub const TOO_MANY_SESSIONS: u16 = 4029;
}

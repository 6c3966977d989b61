//! The HTTP half of the protocol, for every client command: register,
//! login, keys, rooms. Thin typed wrappers over `protocol` bodies.
//!
//! A request the server turns away for now (429 or 503 with a wait, PROTOCOL
//! §1 "Errors over HTTP") is sent again after the wait, with a word on
//! stderr, a bounded number of times: these replies mean nothing was done,
//! so sending again is safe for every endpoint.

use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::crypto::statements;
use crate::protocol::{
    ChallengeResponse, CreateRoomRequest, ErrorBody, KeyInfo, KeysResponse, LoginRequest,
    LoginResponse, RegisterRequest, RegisterResponse, RotateKeyRequest, UserRequest, b64,
};
use crate::store::RoomId;

mod social;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("cannot reach the server: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("{message} ({code}, HTTP {status})")]
    Refused {
        status: u16,
        code: String,
        message: String,
        retry_after_secs: Option<u64>,
    },
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
    /// Still turned away after as much waiting as a command does.
    #[error("{}", still_throttled(last, *wait_secs, *waits, *waited_secs))]
    StillThrottled {
        last: Box<ApiError>,
        wait_secs: u64,
        waits: u32,
        waited_secs: u64,
    },
}

impl ApiError {
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            Self::StillThrottled { last, .. } => last.code(),
            _ => None,
        }
    }

    /// The server's HTTP status, if it answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            Self::StillThrottled { last, .. } => last.status(),
            _ => None,
        }
    }

    /// A 401: the session token is missing, unknown, expired or logged out.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(401)
    }
}

pub type Result<T> = std::result::Result<T, ApiError>;

fn still_throttled(last: &ApiError, wait_secs: u64, waits: u32, waited_secs: u64) -> String {
    if waits == 0 {
        format!(
            "{last}; the server asks us to wait {wait_secs} s, longer than a command waits ({MAX_WAIT_SECS} s): try again later"
        )
    } else {
        format!(
            "{last}, still after waiting {waited_secs} s ({waits} time(s)); the server asks for {wait_secs} s more: try again later"
        )
    }
}

/// How many times one request waits out "wait and retry" before failing.
const MAX_WAITS: u32 = 5;
/// The most one request waits in all before failing.
const MAX_WAIT_SECS: u64 = 60;

/// A room as the server describes it to a member.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct Room {
    pub id: RoomId,
    pub kind: String,
    pub name: Option<String>,
    pub creator: String,
    pub members: Vec<String>,
    pub last_seq: i64,
    pub joined_seq: i64,
    /// A DM request from the other member, not accepted yet (PROTOCOL §21).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub request: bool,
    /// Admins other than the creator.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Disappearing messages: the room's current duration in seconds
    /// (0 = off), as the server applies it (§21).
    #[serde(default)]
    pub ttl: u32,
}

impl Room {
    pub fn is_dm(&self) -> bool {
        self.kind == "dm"
    }

    /// A name for people: the room's name, or the other person of a DM.
    pub fn label(&self, me: &str) -> String {
        match &self.name {
            Some(name) => format!("#{name}"),
            None => {
                let peer = self
                    .members
                    .iter()
                    .find(|m| *m != me)
                    .cloned()
                    .unwrap_or_else(|| me.to_owned());
                format!("@{peer}")
            }
        }
    }
}

/// An invitation waiting for the caller.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct Invitation {
    pub room: RoomId,
    pub name: Option<String>,
    pub invited_by: String,
    pub created_at: i64,
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// `server` is the server's base URL, e.g. `http://127.0.0.1:7878`.
    pub fn new(server: &str) -> Self {
        Self {
            http: super::tls::http_client(),
            base: server.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    pub fn with_token(mut self, token: String) -> Self {
        self.token = Some(token);
        self
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    /// Registers `username` with `public_key` (SPKI DER); `sign` must return
    /// the identity key's RSA-PSS-SHA256 signature over its argument.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        public_key: &[u8],
        invite: Option<&str>,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<RegisterResponse> {
        let challenge: ChallengeResponse = self
            .post("/api/v1/register/challenge", &serde_json::json!({}))
            .await?;
        let raw = b64::decode(&challenge.challenge)
            .map_err(|_| ApiError::Protocol("challenge is not base64".into()))?;
        let signature = sign(&statements::registration_proof(username, &raw));
        let request = RegisterRequest {
            username: username.to_owned(),
            password: password.to_owned(),
            public_key: b64::encode(public_key),
            challenge: challenge.challenge,
            signature: b64::encode(&signature),
            invite: invite.map(str::to_owned),
        };
        self.post("/api/v1/register", &request).await
    }

    /// Logs in and returns a client carrying the session token.
    pub async fn login(&self, username: &str, password: &str) -> Result<(Self, LoginResponse)> {
        let request = LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let reply: LoginResponse = self.post("/api/v1/login", &request).await?;
        Ok((self.clone().with_token(reply.token.clone()), reply))
    }

    pub async fn logout(&self) -> Result<()> {
        self.post_empty("/api/v1/logout", &serde_json::json!({}))
            .await
    }

    pub async fn keys_of(&self, username: &str) -> Result<KeysResponse> {
        self.get(&format!("/api/v1/users/{username}/keys")).await
    }

    /// Publishes a new key; `signature` is the old key's over the rotation statement.
    pub async fn rotate_key(&self, public_key: &[u8], signature: &[u8]) -> Result<KeyInfo> {
        let request = RotateKeyRequest {
            public_key: b64::encode(public_key),
            signature: b64::encode(signature),
        };
        self.post("/api/v1/keys/rotate", &request).await
    }

    pub async fn rooms(&self) -> Result<Vec<Room>> {
        self.get("/api/v1/rooms").await
    }

    pub async fn room(&self, room: RoomId) -> Result<Room> {
        self.get(&format!("/api/v1/rooms/{}", room.0)).await
    }

    /// `POST /api/v1/rooms/{id}/timer`: posts a signed timer statement
    /// (disappearing messages, §21); the server appends a `timer` entry.
    pub async fn set_timer(&self, room: RoomId, statement: &[u8]) -> Result<Room> {
        #[derive(Serialize)]
        struct TimerRequest {
            body: String,
        }
        self.post(
            &format!("/api/v1/rooms/{}/timer", room.0),
            &TimerRequest {
                body: crate::protocol::b64::encode(statement),
            },
        )
        .await
    }

    pub async fn create_room(&self, name: &str) -> Result<Room> {
        self.post(
            "/api/v1/rooms",
            &CreateRoomRequest {
                name: name.to_owned(),
            },
        )
        .await
    }

    pub async fn invite(&self, room: RoomId, username: &str) -> Result<()> {
        self.post_empty(
            &format!("/api/v1/rooms/{}/invite", room.0),
            &UserRequest {
                username: username.to_owned(),
            },
        )
        .await
    }

    pub async fn join(&self, room: RoomId) -> Result<Room> {
        self.post(
            &format!("/api/v1/rooms/{}/join", room.0),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn leave(&self, room: RoomId) -> Result<()> {
        self.post_empty(
            &format!("/api/v1/rooms/{}/leave", room.0),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn remove(&self, room: RoomId, username: &str) -> Result<()> {
        self.post_empty(
            &format!("/api/v1/rooms/{}/remove", room.0),
            &UserRequest {
                username: username.to_owned(),
            },
        )
        .await
    }

    pub async fn open_dm(&self, username: &str) -> Result<Room> {
        self.post(
            "/api/v1/dm",
            &UserRequest {
                username: username.to_owned(),
            },
        )
        .await
    }

    pub async fn invitations(&self) -> Result<Vec<Invitation>> {
        self.get("/api/v1/invitations").await
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        decode(
            self.send(|| self.request(reqwest::Method::GET, path))
                .await?,
        )
        .await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        decode(
            self.send(|| self.request(reqwest::Method::POST, path).json(body))
                .await?,
        )
        .await
    }

    async fn post_empty(&self, path: &str, body: &impl Serialize) -> Result<()> {
        self.send(|| self.request(reqwest::Method::POST, path).json(body))
            .await?;
        Ok(())
    }

    /// Sends the request `build` makes until the server takes it: a
    /// success comes back as is, a refusal as `Refused`, except that "wait
    /// and retry" is waited out and sent again (at most `MAX_WAITS` times
    /// and `MAX_WAIT_SECS` in all).
    async fn send(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let mut waits = 0;
        let mut waited_secs: u64 = 0;
        loop {
            let response = build().send().await?;
            if response.status().is_success() {
                return Ok(response);
            }
            let refused = refusal(response).await;
            let Some(wait_secs) = wait_asked(&refused) else {
                return Err(refused);
            };
            if waits >= MAX_WAITS || waited_secs.saturating_add(wait_secs) > MAX_WAIT_SECS {
                return Err(ApiError::StillThrottled {
                    last: Box::new(refused),
                    wait_secs,
                    waits,
                    waited_secs,
                });
            }
            if let ApiError::Refused { message, .. } = &refused {
                eprintln!("hush: the server asks us to wait {wait_secs} s ({message}); retrying");
            }
            tokio::time::sleep(std::time::Duration::from_secs(wait_secs)).await;
            waits += 1;
            waited_secs += wait_secs;
        }
    }
}

/// How long to wait before sending again, if `err` is the server saying
/// "not now" (429, or 503 with a wait) rather than "no".
fn wait_asked(err: &ApiError) -> Option<u64> {
    match err {
        ApiError::Refused {
            status: 429 | 503,
            retry_after_secs: Some(secs),
            ..
        } => Some((*secs).max(1)),
        _ => None,
    }
}

async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T> {
    let bytes = response.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Protocol(e.to_string()))
}

async fn refusal(response: reqwest::Response) -> ApiError {
    let status = response.status();
    // The body's `retry_after_secs` is the contract; the header is read too,
    // for a proxy or an error body that is not ours.
    let header_wait = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = response.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(err) => ApiError::Refused {
            status: status.as_u16(),
            code: err.error.code,
            message: err.error.message,
            retry_after_secs: err.error.retry_after_secs.or(header_wait),
        },
        Err(_) => ApiError::Refused {
            status: status.as_u16(),
            code: if status == StatusCode::NOT_FOUND {
                "not_found".into()
            } else {
                "http_error".into()
            },
            message: String::from_utf8_lossy(&body).chars().take(200).collect(),
            retry_after_secs: header_wait,
        },
    }
}

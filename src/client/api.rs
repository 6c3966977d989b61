//! The HTTP half of the protocol, for every client command: register,
//! login, keys, rooms. Thin typed wrappers over `protocol` bodies.

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
}

impl ApiError {
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ApiError>;

/// The longest a login waits out the server's throttling before giving up.
const MAX_LOGIN_WAIT_SECS: u64 = 90;

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
        let mut waited = 0;
        let reply: LoginResponse = loop {
            match self.post("/api/v1/login", &request).await {
                Err(ApiError::Refused {
                    status: 429 | 503,
                    message,
                    retry_after_secs: Some(wait),
                    ..
                }) if waited + wait <= MAX_LOGIN_WAIT_SECS => {
                    // Throttled or busy, not refused: wait as told, then try again.
                    eprintln!("hush: the server asks us to wait {wait} s ({message}); retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
                    waited += wait.max(1);
                }
                other => break other?,
            }
        };
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
        decode(self.request(reqwest::Method::GET, path).send().await?).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        decode(
            self.request(reqwest::Method::POST, path)
                .json(body)
                .send()
                .await?,
        )
        .await
    }

    async fn post_empty(&self, path: &str, body: &impl Serialize) -> Result<()> {
        let response = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(refusal(response).await)
        }
    }
}

async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T> {
    if !response.status().is_success() {
        return Err(refusal(response).await);
    }
    let bytes = response.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Protocol(e.to_string()))
}

async fn refusal(response: reqwest::Response) -> ApiError {
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(err) => ApiError::Refused {
            status: status.as_u16(),
            code: err.error.code,
            message: err.error.message,
            retry_after_secs: err.error.retry_after_secs,
        },
        Err(_) => ApiError::Refused {
            status: status.as_u16(),
            code: if status == StatusCode::NOT_FOUND {
                "not_found".into()
            } else {
                "http_error".into()
            },
            message: String::from_utf8_lossy(&body).chars().take(200).collect(),
            retry_after_secs: None,
        },
    }
}

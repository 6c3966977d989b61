//! The HTTP API: registration, login, keys, rooms. Every body is JSON;
//! errors are `{"error": {"code", "message"}}` (see `error`).

use std::time::Duration;

use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::AppState;
use super::auth::{MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS, Saturated, new_token, token_hash};
use super::error::{ApiError, hashing_saturated};
use super::limits;
use crate::admin::invite::InviteCode;
use crate::config::RegistrationMode;
use crate::crypto::identity::IdentityKey;
use crate::crypto::statements;
use crate::protocol::{
    ChallengeResponse, CreateRoomRequest, KeyInfo, KeysResponse, LoginRequest, LoginResponse,
    RegisterRequest, RegisterResponse, RotateKeyRequest, UserRequest, b64,
};
use crate::store::writer::NewKey;
use crate::store::{KeyRecord, RoomId, StoreError, UserRecord, now_ms};
use crate::username;

const MAX_JSON_BODY: u64 = 64 * 1024;
const CHALLENGE_TTL: Duration = Duration::from_secs(300);

type Resp = Result<warp::reply::Response, Rejection>;

/// Every `/healthz` and `/api/v1/…` route.
///
/// Boxed: the chain of `or`s is deep enough that leaving its type open
/// overflows the compiler's recursion limit where the server is built.
pub fn api(state: AppState) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .and(with_state(&state))
        .and_then(healthz);
    let v1 = warp::path("api").and(warp::path("v1"));

    let challenge = warp::path!("register" / "challenge")
        .and(warp::post())
        .and(limits::admit_registration(&state))
        .and(with_state(&state))
        .and_then(challenge);
    let register = warp::path!("register")
        .and(warp::post())
        .and(limits::admit_registration(&state))
        .and(with_state(&state))
        .and(json())
        .and_then(register);
    let login = warp::path!("login")
        .and(warp::post())
        .and(limits::admit_login(&state))
        .and(with_state(&state))
        .and(json())
        .and_then(login);
    let logout = warp::path!("logout")
        .and(warp::post())
        .and(with_state(&state))
        .and(authed(&state))
        .and_then(logout);
    let keys = warp::path!("users" / String / "keys")
        .and(warp::get())
        .and(with_state(&state))
        .and(authed(&state))
        .and_then(user_keys);
    let rotate = warp::path!("keys" / "rotate")
        .and(warp::post())
        .and(with_state(&state))
        .and(authed(&state))
        .and(json())
        .and_then(rotate_key);
    let list_rooms = warp::path!("rooms")
        .and(warp::get())
        .and(with_state(&state))
        .and(authed(&state))
        .and_then(list_rooms);
    let create_room = warp::path!("rooms")
        .and(warp::post())
        .and(with_state(&state))
        .and(authed(&state))
        .and(json())
        .and_then(create_room);
    let get_room = warp::path!("rooms" / i64)
        .and(warp::get())
        .and(with_state(&state))
        .and(authed(&state))
        .and_then(get_room);
    let invite = warp::path!("rooms" / i64 / "invite")
        .and(warp::post())
        .and(with_state(&state))
        .and(authed(&state))
        .and(json())
        .and_then(invite);
    let join = warp::path!("rooms" / i64 / "join")
        .and(warp::post())
        .and(with_state(&state))
        .and(authed(&state))
        .and_then(join);
    let leave = warp::path!("rooms" / i64 / "leave")
        .and(warp::post())
        .and(with_state(&state))
        .and(authed(&state))
        .and_then(leave);
    let remove = warp::path!("rooms" / i64 / "remove")
        .and(warp::post())
        .and(with_state(&state))
        .and(authed(&state))
        .and(json())
        .and_then(remove);
    let dm = warp::path!("dm")
        .and(warp::post())
        .and(with_state(&state))
        .and(authed(&state))
        .and(json())
        .and_then(open_dm);
    let invitations = warp::path!("invitations")
        .and(warp::get())
        .and(with_state(&state))
        .and(authed(&state))
        .and_then(invitations);

    let api = v1.and(
        challenge
            .or(register)
            .unify()
            .or(login)
            .unify()
            .or(logout)
            .unify()
            .or(keys)
            .unify()
            .or(rotate)
            .unify()
            .or(list_rooms)
            .unify()
            .or(create_room)
            .unify()
            .or(get_room)
            .unify()
            .or(invite)
            .unify()
            .or(join)
            .unify()
            .or(leave)
            .unify()
            .or(remove)
            .unify()
            .or(dm)
            .unify()
            .or(invitations)
            .unify()
            .or(super::conversation::routes(&state))
            .unify(),
    );
    healthz.or(api).unify().boxed()
}

pub(super) fn with_state(
    state: &AppState,
) -> impl Filter<Extract = (AppState,), Error = std::convert::Infallible> + Clone + use<> {
    let state = state.clone();
    warp::any().map(move || state.clone())
}

pub(super) fn json<T: serde::de::DeserializeOwned + Send>()
-> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::body::content_length_limit(MAX_JSON_BODY).and(warp::body::json())
}

/// The caller of an authenticated route, from `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Caller {
    pub user: UserRecord,
    pub token_hash: [u8; 32],
}

pub(super) fn authed(
    state: &AppState,
) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone + use<> {
    // Read as raw bytes: a header that is not visible ASCII is simply not
    // a valid token (401), not a malformed request.
    with_state(state)
        .and(warp::header::headers_cloned())
        .and_then(
            |state: AppState, headers: warp::http::HeaderMap| async move {
                let token = headers
                    .get(warp::http::header::AUTHORIZATION)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .ok_or_else(ApiError::unauthorized)?;
                let hash = token_hash(token).ok_or_else(ApiError::unauthorized)?;
                let user = state.store.session_user(&hash).await.map_err(|e| match e {
                    StoreError::NotFound => ApiError::unauthorized(),
                    other => ApiError::from(other),
                })?;
                Ok::<_, Rejection>(Caller {
                    user,
                    token_hash: hash,
                })
            },
        )
}

pub(super) fn ok_json<T: serde::Serialize>(status: StatusCode, body: &T) -> Resp {
    Ok(warp::reply::with_status(warp::reply::json(body), status).into_response())
}

/// How long `/healthz` waits for the database before it reports it down
/// (a load balancer's check gives up after a few seconds anyway).
const HEALTH_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// GET /healthz — this node, its database and its cross-node listener:
/// 200 while the database answers (`"degraded"` if the listener is down:
/// the node still serves, other nodes' entries reach it by catch-up), 503
/// when it does not. The route needs no authentication, so a database
/// error is named by its kind only; the details go to the log.
async fn healthz(state: AppState) -> Resp {
    use super::health::ListenerState;
    let store = match tokio::time::timeout(HEALTH_PING_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "health check: the database did not answer");
            Some(health_fault(&err))
        }
        Err(_) => Some("timed out"),
    };
    let listener = state.listener_health.get();
    let status = if store.is_none() && listener != ListenerState::Down {
        "ok"
    } else {
        "degraded"
    };
    let code = if store.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    ok_json(
        code,
        &serde_json::json!({
            "status": status,
            "protocol": crate::protocol::PROTOCOL_VERSION,
            "node": state.config.node_id,
            "store": store.map_or_else(|| "ok".to_owned(), |fault| format!("error: {fault}")),
            "listener": listener.as_str(),
        }),
    )
}

/// A database error as `/healthz` names it: its kind, never its text
/// (which can hold host names and file paths).
fn health_fault(err: &StoreError) -> &'static str {
    match err {
        StoreError::Db(sqlx::Error::PoolTimedOut) => "timed out",
        StoreError::Closed => "shutting down",
        StoreError::Db(db) => {
            crate::store::faults::classify(db).map_or("database error", |f| f.as_str())
        }
        StoreError::Unavailable(fault) => fault.as_str(),
        _ => "database error",
    }
}

/// POST /api/v1/register/challenge — a single-use nonce to sign when registering.
async fn challenge(state: AppState) -> Resp {
    let mut challenge = [0u8; 32];
    getrandom::fill(&mut challenge).expect("the OS random source works");
    let expires_at = now_ms() + CHALLENGE_TTL.as_millis() as i64;
    let stored = state
        .store
        .insert_challenge(
            &challenge,
            expires_at,
            state.limits.config.pending_challenges,
        )
        .await
        .map_err(ApiError::from)?;
    if !stored {
        super::metrics::rate_limited("pending_challenges");
        let mut err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many registrations in progress; retry later",
        );
        err.retry_after_secs = Some(CHALLENGE_TTL.as_secs() / 10);
        return Err(err.into());
    }
    ok_json(
        StatusCode::OK,
        &ChallengeResponse {
            challenge: b64::encode(&challenge),
            expires_in_secs: CHALLENGE_TTL.as_secs(),
        },
    )
}

/// POST /api/v1/register — create an account with a password and a public
/// key, proven by a signature over a fresh challenge.
async fn register(state: AppState, req: RegisterRequest) -> Resp {
    let invite = registration_allowed(&state, req.invite.as_deref()).await?;
    validate_username(&req.username)?;
    validate_password(&req.password)?;
    let der = b64::decode(&req.public_key)
        .map_err(|_| ApiError::bad_request("invalid_key", "public_key is not valid base64"))?;
    let key = IdentityKey::from_spki_der(&der)
        .map_err(|e| ApiError::bad_request("invalid_key", e.to_string()))?;
    let challenge = b64::decode(&req.challenge)
        .map_err(|_| ApiError::bad_request("invalid_proof", "challenge is not valid base64"))?;
    let signature = b64::decode(&req.signature)
        .map_err(|_| ApiError::bad_request("invalid_proof", "signature is not valid base64"))?;
    if !state
        .store
        .take_challenge(&challenge)
        .await
        .map_err(ApiError::from)?
    {
        return Err(
            ApiError::bad_request("invalid_proof", "unknown, used or expired challenge").into(),
        );
    }
    key.verify(
        &statements::registration_proof(&req.username, &challenge),
        &signature,
    )
    .map_err(|_| {
        ApiError::bad_request(
            "invalid_proof",
            "the signature does not prove possession of the key",
        )
    })?;
    let hash = state.passwords.hash(req.password).await.map_err(|e| {
        if e.is::<Saturated>() {
            return hashing_saturated();
        }
        tracing::error!(error = %e, "password hashing failed");
        ApiError::internal()
    })?;
    let fingerprint = key.fingerprint().to_hex();
    match &invite {
        None => state
            .store
            .create_user(&req.username, &hash, key.spki_der(), &fingerprint)
            .await
            .map_err(ApiError::from)?,
        Some(code) => state
            .store
            .create_user_with_invite(
                &req.username,
                &hash,
                key.spki_der(),
                &fingerprint,
                code.proof(),
            )
            .await
            .map_err(|e| match e {
                StoreError::Forbidden(_) => invalid_invite(),
                other => ApiError::from(other),
            })?,
    };
    tracing::info!(username = %req.username, "user registered");
    ok_json(
        StatusCode::CREATED,
        &RegisterResponse {
            username: req.username,
            fingerprint,
        },
    )
}

/// Refuses registration the mode does not allow; in `invite` mode returns
/// the (checked, not yet spent) invite code.
async fn registration_allowed(
    state: &AppState,
    invite: Option<&str>,
) -> Result<Option<InviteCode>, Rejection> {
    match state.config.registration {
        RegistrationMode::Open => Ok(None),
        RegistrationMode::Closed => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "registration_closed",
            "this server does not accept new accounts",
        )
        .into()),
        RegistrationMode::Invite => {
            let Some(text) = invite else {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "invite_required",
                    "this server needs an invite code to register",
                )
                .into());
            };
            let code = InviteCode::parse(text).ok_or_else(invalid_invite)?;
            if !state
                .store
                .invite_is_usable(code.proof())
                .await
                .map_err(ApiError::from)?
            {
                return Err(invalid_invite().into());
            }
            Ok(Some(code))
        }
    }
}

fn invalid_invite() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "invalid_invite",
        "unknown, used or expired invite code",
    )
}

/// POST /api/v1/login — exchange username and password for a session token.
async fn login(ip: std::net::IpAddr, state: AppState, req: LoginRequest) -> Resp {
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong username or password",
        )
    };
    let username = username::fold(&req.username);
    if let Err(wait) = state.login_throttle.check(&username) {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed logins; wait and retry",
        );
        err.retry_after_secs = Some(wait.as_secs().max(1));
        super::metrics::rate_limited("login");
        return Err(err.into());
    }
    let found = state
        .store
        .find_credentials(&username)
        .await
        .map_err(ApiError::from)?;
    let (user, stored) = match found {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    let matches = req.password.len() <= MAX_PASSWORD_BYTES
        && state
            .passwords
            .verify(stored, req.password)
            .await
            .map_err(|Saturated| hashing_saturated())?;
    let Some(user) = user.filter(|_| matches) else {
        state.login_throttle.record_failure(&username);
        state
            .limits
            .login_failures_by_ip
            .record_failure(&ip.to_string());
        return Err(invalid().into());
    };
    state.login_throttle.record_success(&username);
    if state
        .store
        .is_disabled(user.id)
        .await
        .map_err(ApiError::from)?
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "account_disabled",
            "this account is disabled; ask the server's operator",
        )
        .into());
    }
    let (token, hash) = new_token();
    let expires_at = now_ms() + state.config.session_ttl.as_millis() as i64;
    state
        .store
        .create_session(user.id, &hash, expires_at)
        .await
        .map_err(ApiError::from)?;
    ok_json(
        StatusCode::OK,
        &LoginResponse {
            token,
            username: user.username,
            expires_at,
        },
    )
}

/// POST /api/v1/logout — revoke this session token and close its sockets.
async fn logout(state: AppState, caller: Caller) -> Resp {
    state
        .store
        .delete_session(&caller.token_hash)
        .await
        .map_err(ApiError::from)?;
    state.hub.revoke(caller.user.id, &caller.token_hash);
    if let Some(cluster) = &state.cluster {
        cluster.sessions_changed(caller.user.id);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// GET /api/v1/users/{username}/keys — a user's current key and key history.
async fn user_keys(username: String, state: AppState, _caller: Caller) -> Resp {
    // Usernames are stored lowercase (see `validate_username`).
    let user = state
        .store
        .find_user(&username.to_ascii_lowercase())
        .await
        .map_err(ApiError::from)?;
    let history = state
        .store
        .key_history(user.id)
        .await
        .map_err(ApiError::from)?;
    let history: Vec<KeyInfo> = history.iter().map(key_info).collect();
    let current = history
        .iter()
        .find(|k| k.replaced_at.is_none())
        .cloned()
        .ok_or_else(ApiError::internal)?;
    ok_json(
        StatusCode::OK,
        &KeysResponse {
            username: user.username,
            current,
            history,
        },
    )
}

fn key_info(k: &KeyRecord) -> KeyInfo {
    KeyInfo {
        public_key: b64::encode(&k.public_key),
        fingerprint: k.fingerprint.clone(),
        created_at: k.created_at,
        replaced_at: k.replaced_at,
        rotation_signature: k.rotation_signature.as_deref().map(b64::encode),
    }
}

/// POST /api/v1/keys/rotate — replace the caller's key; the request must be
/// signed by the current key.
async fn rotate_key(state: AppState, caller: Caller, req: RotateKeyRequest) -> Resp {
    let der = b64::decode(&req.public_key)
        .map_err(|_| ApiError::bad_request("invalid_key", "public_key is not valid base64"))?;
    let new_key = IdentityKey::from_spki_der(&der)
        .map_err(|e| ApiError::bad_request("invalid_key", e.to_string()))?;
    let signature = b64::decode(&req.signature)
        .map_err(|_| ApiError::bad_request("invalid_proof", "signature is not valid base64"))?;
    let current = state
        .store
        .current_key(caller.user.id)
        .await
        .map_err(ApiError::from)?;
    let old_key =
        IdentityKey::from_spki_der(&current.public_key).map_err(|_| ApiError::internal())?;
    if old_key.spki_der() == new_key.spki_der() {
        return Err(ApiError::bad_request("invalid_key", "the new key is the current key").into());
    }
    let statement = statements::key_rotation(
        &caller.user.username,
        &old_key.fingerprint().0,
        new_key.spki_der(),
    );
    old_key.verify(&statement, &signature).map_err(|_| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_proof",
            "the rotation statement is not signed by your current key",
        )
    })?;
    let new = NewKey {
        public_key: new_key.spki_der().to_vec(),
        fingerprint: new_key.fingerprint().to_hex(),
        rotation_signature: signature,
    };
    state
        .writer
        .rotate_key(caller.user.as_ref(), current.fingerprint, new)
        .await
        .map_err(ApiError::from)?;
    let current = state
        .store
        .current_key(caller.user.id)
        .await
        .map_err(ApiError::from)?;
    ok_json(StatusCode::OK, &key_info(&current))
}

/// GET /api/v1/rooms — the caller's rooms and DMs.
async fn list_rooms(state: AppState, caller: Caller) -> Resp {
    let rooms = state
        .store
        .rooms_of(caller.user.id)
        .await
        .map_err(ApiError::from)?;
    ok_json(StatusCode::OK, &rooms)
}

/// POST /api/v1/rooms — create a group room; the caller is its creator.
async fn create_room(state: AppState, caller: Caller, req: CreateRoomRequest) -> Resp {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "bad_request",
            "a room name is 1 to 64 printable characters",
        )
        .into());
    }
    let applied = state
        .writer
        .create_group(caller.user.as_ref(), name.to_owned())
        .await
        .map_err(ApiError::from)?;
    room_reply(&state, &caller, applied.room, StatusCode::CREATED).await
}

pub(super) async fn room_reply(
    state: &AppState,
    caller: &Caller,
    room: RoomId,
    status: StatusCode,
) -> Resp {
    let info = state
        .store
        .room_for_member(room, caller.user.id)
        .await
        .map_err(ApiError::from)?;
    ok_json(status, &info)
}

/// GET /api/v1/rooms/{id} — one room, for its members only.
async fn get_room(room: i64, state: AppState, caller: Caller) -> Resp {
    room_reply(&state, &caller, RoomId(room), StatusCode::OK).await
}

/// POST /api/v1/rooms/{id}/invite — a member invites a user to a group room.
async fn invite(room: i64, state: AppState, caller: Caller, req: UserRequest) -> Resp {
    let user = state
        .store
        .find_user(&req.username)
        .await
        .map_err(ApiError::from)?;
    state
        .writer
        .invite(RoomId(room), caller.user.as_ref(), user.as_ref())
        .await
        .map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// POST /api/v1/rooms/{id}/join — accept an invitation.
async fn join(room: i64, state: AppState, caller: Caller) -> Resp {
    state
        .writer
        .join(RoomId(room), caller.user.as_ref())
        .await
        .map_err(ApiError::from)?;
    room_reply(&state, &caller, RoomId(room), StatusCode::OK).await
}

/// POST /api/v1/rooms/{id}/leave — stop being a member of a group room.
async fn leave(room: i64, state: AppState, caller: Caller) -> Resp {
    state
        .writer
        .leave(RoomId(room), caller.user.as_ref())
        .await
        .map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// POST /api/v1/rooms/{id}/remove — the room's creator removes a member.
async fn remove(room: i64, state: AppState, caller: Caller, req: UserRequest) -> Resp {
    let user = state
        .store
        .find_user(&req.username)
        .await
        .map_err(ApiError::from)?;
    state
        .writer
        .remove(RoomId(room), caller.user.as_ref(), user.as_ref())
        .await
        .map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// POST /api/v1/dm — find or create the direct conversation with a user.
async fn open_dm(state: AppState, caller: Caller, req: UserRequest) -> Resp {
    let peer = state
        .store
        .find_user(&req.username)
        .await
        .map_err(ApiError::from)?;
    let applied = state
        .writer
        .open_dm(caller.user.as_ref(), peer.as_ref())
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(why) => ApiError::bad_request("bad_request", why),
            other => ApiError::from(other),
        })?;
    let status = if applied.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    room_reply(&state, &caller, applied.room, status).await
}

/// GET /api/v1/invitations — invitations waiting for the caller.
async fn invitations(state: AppState, caller: Caller) -> Resp {
    let list = state
        .store
        .invitations_for(caller.user.id)
        .await
        .map_err(ApiError::from)?;
    ok_json(StatusCode::OK, &list)
}

/// Usernames: 3 to 32 of `a-z 0-9 _ . -`, starting with a letter or digit.
pub fn validate_username(name: &str) -> Result<(), ApiError> {
    if username::is_valid(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request("invalid_username", username::RULE))
    }
}

fn validate_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::bad_request(
            "weak_password",
            format!(
                "a password is at least {MIN_PASSWORD_CHARS} characters and at most {MAX_PASSWORD_BYTES} bytes"
            ),
        ));
    }
    Ok(())
}

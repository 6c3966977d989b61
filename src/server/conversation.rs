//! The HTTP API of §21 (conversation features): blocks, accepting and
//! declining requests and invitations, room admins, and the
//! disappearing-messages timer. Everything that changes a room goes through
//! the log writer; the timer statement's signature is checked here, off the
//! runtime's threads.

use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::AppState;
use super::error::ApiError;
use super::routes::{Caller, authed, json, ok_json, room_reply, with_state};
use crate::crypto::identity::IdentityKey;
use crate::crypto::room_timer;
use crate::protocol::{TimerRequest, UserRequest, b64};
use crate::store::writer::NewTimer;
use crate::store::{RoomId, UserRecord};

/// Largest timer statement accepted (a 4096-bit signature and the longest
/// username fit well below it).
const MAX_TIMER_BYTES: usize = 1024;

type Resp = Result<warp::reply::Response, Rejection>;

/// Every route of this module, under `/api/v1`. Boxed: one more level of
/// `or` in the API's filter type overflows the compiler's recursion limit.
pub fn routes(state: &AppState) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let list_blocks = warp::path!("blocks")
        .and(warp::get())
        .and(with_state(state))
        .and(authed(state))
        .and_then(list_blocks);
    let block = warp::path!("blocks" / String)
        .and(warp::put())
        .and(with_state(state))
        .and(authed(state))
        .and_then(block);
    let unblock = warp::path!("blocks" / String)
        .and(warp::delete())
        .and(with_state(state))
        .and(authed(state))
        .and_then(unblock);
    let accept = warp::path!("rooms" / i64 / "accept")
        .and(warp::post())
        .and(with_state(state))
        .and(authed(state))
        .and_then(accept);
    let decline = warp::path!("rooms" / i64 / "decline")
        .and(warp::post())
        .and(with_state(state))
        .and(authed(state))
        .and_then(decline);
    let promote = warp::path!("rooms" / i64 / "admins")
        .and(warp::post())
        .and(with_state(state))
        .and(authed(state))
        .and(json())
        .and_then(promote);
    let demote = warp::path!("rooms" / i64 / "admins" / String)
        .and(warp::delete())
        .and(with_state(state))
        .and(authed(state))
        .and_then(demote);
    let timer = warp::path!("rooms" / i64 / "timer")
        .and(warp::post())
        .and(with_state(state))
        .and(authed(state))
        .and(json())
        .and_then(set_timer);
    list_blocks
        .or(block)
        .unify()
        .or(unblock)
        .unify()
        .or(accept)
        .unify()
        .or(decline)
        .unify()
        .or(promote)
        .unify()
        .or(demote)
        .unify()
        .or(timer)
        .unify()
        .boxed()
}

async fn find(state: &AppState, username: &str) -> Result<UserRecord, Rejection> {
    // Usernames are stored lowercase (see `validate_username`).
    Ok(state
        .store
        .find_user(&username.to_ascii_lowercase())
        .await
        .map_err(ApiError::from)?)
}

fn no_content() -> Resp {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// GET /api/v1/blocks — the usernames the caller blocks, sorted.
async fn list_blocks(state: AppState, caller: Caller) -> Resp {
    let names = state
        .store
        .blocked_names(caller.user.id)
        .await
        .map_err(ApiError::from)?;
    ok_json(StatusCode::OK, &names)
}

/// PUT /api/v1/blocks/{username} — block a user (idempotent).
async fn block(username: String, state: AppState, caller: Caller) -> Resp {
    let user = find(&state, &username).await?;
    state
        .writer
        .block(caller.user.as_ref(), user.as_ref())
        .await
        .map_err(ApiError::from)?;
    no_content()
}

/// DELETE /api/v1/blocks/{username} — stop blocking a user (idempotent).
async fn unblock(username: String, state: AppState, caller: Caller) -> Resp {
    let user = find(&state, &username).await?;
    state
        .writer
        .unblock(caller.user.as_ref(), user.as_ref())
        .await
        .map_err(ApiError::from)?;
    no_content()
}

/// POST /api/v1/rooms/{id}/accept — accept a direct-conversation request
/// (or, for a group invitation, join); replies with the Room.
async fn accept(room: i64, state: AppState, caller: Caller) -> Resp {
    state
        .writer
        .accept(RoomId(room), caller.user.as_ref())
        .await
        .map_err(ApiError::from)?;
    room_reply(&state, &caller, RoomId(room), StatusCode::OK).await
}

/// POST /api/v1/rooms/{id}/decline — decline a direct-conversation request
/// or a group invitation.
async fn decline(room: i64, state: AppState, caller: Caller) -> Resp {
    state
        .writer
        .decline(RoomId(room), caller.user.as_ref())
        .await
        .map_err(ApiError::from)?;
    no_content()
}

/// POST /api/v1/rooms/{id}/admins — the creator makes a member an admin.
async fn promote(room: i64, state: AppState, caller: Caller, req: UserRequest) -> Resp {
    let user = find(&state, &req.username).await?;
    state
        .writer
        .promote(RoomId(room), caller.user.as_ref(), user.as_ref())
        .await
        .map_err(ApiError::from)?;
    no_content()
}

/// DELETE /api/v1/rooms/{id}/admins/{username} — the creator takes a
/// member's admin rights away.
async fn demote(room: i64, username: String, state: AppState, caller: Caller) -> Resp {
    let user = find(&state, &username).await?;
    state
        .writer
        .demote(RoomId(room), caller.user.as_ref(), user.as_ref())
        .await
        .map_err(ApiError::from)?;
    no_content()
}

fn bad(message: impl Into<String>) -> Rejection {
    ApiError::bad_request("bad_request", message).into()
}

/// POST /api/v1/rooms/{id}/timer — set the room's disappearing-messages
/// duration with a timer statement signed by the caller's current key.
async fn set_timer(room: i64, state: AppState, caller: Caller, req: TimerRequest) -> Resp {
    let body = b64::decode(&req.body).map_err(|_| bad("body is not valid base64"))?;
    if body.len() > MAX_TIMER_BYTES {
        return Err(bad("not a timer statement"));
    }
    let parsed = room_timer::parse(&body).map_err(|_| bad("not a timer statement"))?;
    let statement = parsed.statement;
    if statement.room != room {
        return Err(bad("the statement names another room"));
    }
    if statement.sender != caller.user.username {
        return Err(bad("the statement names another sender"));
    }
    let ttl = statement.duration_secs;
    let min = state.config.min_disappearing_secs;
    if ttl != 0 && !(min..=room_timer::MAX_DURATION_SECS).contains(&ttl) {
        return Err(bad(format!(
            "the duration must be 0 (off) or {min} to {} seconds",
            room_timer::MAX_DURATION_SECS
        )));
    }
    let (last_seq, timer_seq) = state
        .store
        .timer_position(RoomId(room), caller.user.id)
        .await
        .map_err(ApiError::from)?;
    let after = i64::try_from(statement.after).unwrap_or(i64::MAX);
    if after > last_seq {
        return Err(bad(
            "the statement's `after` is beyond the room's newest entry",
        ));
    }
    if after < timer_seq {
        return Err(bad(
            "the statement's `after` is below the room's latest timer entry",
        ));
    }
    let current = state
        .store
        .current_key(caller.user.id)
        .await
        .map_err(ApiError::from)?;
    let checked = body.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let key = IdentityKey::from_spki_der(&current.public_key)?;
        room_timer::verify(&checked, &key)
    })
    .await
    .map_err(|_| ApiError::internal())?;
    if verified.is_err() {
        return Err(bad("the statement is not signed by your current key"));
    }
    let timer = NewTimer {
        ttl_secs: ttl,
        after,
        statement: body,
    };
    state
        .writer
        .set_timer(RoomId(room), caller.user.as_ref(), timer)
        .await
        .map_err(ApiError::from)?;
    room_reply(&state, &caller, RoomId(room), StatusCode::OK).await
}

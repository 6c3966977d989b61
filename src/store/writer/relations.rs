//! The writer's side of §21's relations between people and rooms: blocks,
//! direct-conversation requests, declined invitations, room admins and the
//! disappearing-messages timer. They go through the writer like every other
//! change, because they change who may send to a room and who hears from
//! it, which the writer's cached view of rooms (`sends`) must follow.

use super::{
    Applied, Done, NewTimer, Versions, append, appended, is_member, join, member_ids, new_entry,
    recipient_ids, require_group, require_member,
};
use crate::store::db::{self, Tx};
use crate::store::{EntryKind, Result, RoomId, StoreError, UserId, UserRef, now_ms};

/// What a change that appends nothing reports.
fn nothing_appended(room: RoomId) -> Done {
    (
        Applied {
            room,
            entry: None,
            duplicate: false,
        },
        Vec::new(),
    )
}

/// Whether `blocker` blocks `blocked`.
pub(super) async fn blocks(tx: &mut Tx<'_>, blocker: UserId, blocked: UserId) -> Result<bool> {
    let found: Option<UserId> =
        db::query("SELECT blocker_id FROM blocks WHERE blocker_id = ? AND blocked_id = ?")
            .bind(blocker)
            .bind(blocked)
            .fetch_optional_scalar(&mut *tx)
            .await?;
    Ok(found.is_some())
}

pub(super) async fn block(
    tx: &mut Tx<'_>,
    versions: Versions,
    user: &UserRef,
    blocked: &UserRef,
) -> Result<Done> {
    if user.id == blocked.id {
        return Err(StoreError::Invalid("you cannot block yourself"));
    }
    db::query(
        "INSERT INTO blocks (blocker_id, blocked_id, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(user.id)
    .bind(blocked.id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    // A pending request from the blocked user is declined.
    let pair = format!(
        "{}:{}",
        user.id.0.min(blocked.id.0),
        user.id.0.max(blocked.id.0)
    );
    db::query(
        "UPDATE dm_requests SET state = 'declined', updated_at = ?
         WHERE user_id = ? AND state = 'pending'
           AND room_id IN (SELECT id FROM rooms WHERE dm_pair = ?)",
    )
    .bind(now_ms())
    .bind(user.id)
    .bind(&pair)
    .execute(&mut *tx)
    .await?;
    // Who may send in their direct conversation changed, with no entry.
    versions.bump_pair(tx, &pair).await?;
    Ok(nothing_appended(RoomId(0)))
}

pub(super) async fn unblock(
    tx: &mut Tx<'_>,
    versions: Versions,
    user: &UserRef,
    blocked: &UserRef,
) -> Result<Done> {
    if user.id == blocked.id {
        return Err(StoreError::Invalid("you cannot block yourself"));
    }
    let unblocked = db::query("DELETE FROM blocks WHERE blocker_id = ? AND blocked_id = ?")
        .bind(user.id)
        .bind(blocked.id)
        .execute(&mut *tx)
        .await?;
    if unblocked > 0 {
        let pair = format!(
            "{}:{}",
            user.id.0.min(blocked.id.0),
            user.id.0.max(blocked.id.0)
        );
        versions.bump_pair(tx, &pair).await?;
    }
    Ok(nothing_appended(RoomId(0)))
}

/// Whether two users are both current members of at least one group room.
pub(super) async fn share_a_group(tx: &mut Tx<'_>, a: UserId, b: UserId) -> Result<bool> {
    let found: Option<RoomId> = db::query(
        "SELECT ma.room_id FROM memberships ma
         JOIN memberships mb ON mb.room_id = ma.room_id AND mb.user_id = ? AND mb.end_seq IS NULL
         JOIN rooms r ON r.id = ma.room_id AND r.kind = 'group'
         WHERE ma.user_id = ? AND ma.end_seq IS NULL LIMIT 1",
    )
    .bind(b)
    .bind(a)
    .fetch_optional_scalar(&mut *tx)
    .await?;
    Ok(found.is_some())
}

/// Makes a new direct conversation a pending request for `peer`.
pub(super) async fn open_request(tx: &mut Tx<'_>, room: RoomId, peer: UserId) -> Result<()> {
    db::query(
        "INSERT INTO dm_requests (room_id, user_id, state, updated_at) VALUES (?, ?, 'pending', ?)",
    )
    .bind(room)
    .bind(peer)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Moves `user`'s request of `room` (if there is one) to `state`.
pub(super) async fn settle_request(
    tx: &mut Tx<'_>,
    versions: Versions,
    room: RoomId,
    user: UserId,
    state: &'static str,
) -> Result<()> {
    let settled = db::query(
        "UPDATE dm_requests SET state = ?1, updated_at = ?2
         WHERE room_id = ?3 AND user_id = ?4 AND state != ?1",
    )
    .bind(state)
    .bind(now_ms())
    .bind(room)
    .bind(user)
    .execute(&mut *tx)
    .await?;
    if settled > 0 {
        // Who hears from the room changed, with no entry.
        versions.bump_room(tx, room).await?;
    }
    Ok(())
}

async fn request_state(tx: &mut Tx<'_>, room: RoomId, user: UserId) -> Result<Option<String>> {
    Ok(
        db::query("SELECT state FROM dm_requests WHERE room_id = ? AND user_id = ?")
            .bind(room)
            .bind(user)
            .fetch_optional_scalar(&mut *tx)
            .await?,
    )
}

async fn is_invited(tx: &mut Tx<'_>, room: RoomId, user: UserId) -> Result<bool> {
    let found: Option<UserId> =
        db::query("SELECT user_id FROM invitations WHERE room_id = ? AND user_id = ?")
            .bind(room)
            .bind(user)
            .fetch_optional_scalar(&mut *tx)
            .await?;
    Ok(found.is_some())
}

/// Accepts a direct-conversation request; on a group invitation, joins.
pub(super) async fn accept(
    tx: &mut Tx<'_>,
    versions: Versions,
    room: RoomId,
    user: &UserRef,
) -> Result<Done> {
    match request_state(tx, room, user.id).await?.as_deref() {
        Some("accepted") => Err(StoreError::Conflict("already accepted")),
        Some(_) => {
            settle_request(tx, versions, room, user.id, "accepted").await?;
            Ok(nothing_appended(room))
        }
        None if is_invited(tx, room, user.id).await? => join(tx, room, user).await,
        None if is_member(tx, room, user.id).await? => {
            Err(StoreError::Conflict("already accepted"))
        }
        None => Err(StoreError::NotFound),
    }
}

/// Declines a direct-conversation request (it stays declined until
/// accepted), or a group invitation (deleted, and a `decline` entry tells
/// the members).
pub(super) async fn decline(
    tx: &mut Tx<'_>,
    versions: Versions,
    room: RoomId,
    user: &UserRef,
) -> Result<Done> {
    match request_state(tx, room, user.id).await?.as_deref() {
        Some("accepted") => return Err(StoreError::Conflict("already accepted")),
        Some(_) => {
            settle_request(tx, versions, room, user.id, "declined").await?;
            return Ok(nothing_appended(room));
        }
        None => {}
    }
    if !is_invited(tx, room, user.id).await? {
        return Err(if is_member(tx, room, user.id).await? {
            StoreError::Conflict("already accepted")
        } else {
            StoreError::NotFound
        });
    }
    db::query("DELETE FROM invitations WHERE room_id = ? AND user_id = ?")
        .bind(room)
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    let entry = append(
        tx,
        new_entry(room, 0, now_ms(), EntryKind::Decline, user, None),
        user.id,
        None,
    )
    .await?;
    let recipients = member_ids(tx, room).await?;
    Ok(appended(entry, recipients, None))
}

pub(super) async fn is_admin(tx: &mut Tx<'_>, room: RoomId, user: UserId) -> Result<bool> {
    let found: Option<UserId> =
        db::query("SELECT user_id FROM room_admins WHERE room_id = ? AND user_id = ?")
            .bind(room)
            .bind(user)
            .fetch_optional_scalar(&mut *tx)
            .await?;
    Ok(found.is_some())
}

/// Ends `user`'s admin rights in `room` (they left or were removed).
pub(super) async fn drop_admin(tx: &mut Tx<'_>, room: RoomId, user: UserId) -> Result<()> {
    db::query("DELETE FROM room_admins WHERE room_id = ? AND user_id = ?")
        .bind(room)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Checks that `by` is the creator of the group `room` and `user` a member
/// other than the creator.
async fn require_creator_over(
    tx: &mut Tx<'_>,
    room: RoomId,
    by: &UserRef,
    user: &UserRef,
) -> Result<()> {
    require_member(tx, room, by.id).await?;
    require_group(tx, room).await?;
    let creator: UserId = db::query("SELECT creator_id FROM rooms WHERE id = ?")
        .bind(room)
        .fetch_scalar(&mut *tx)
        .await?;
    if creator != by.id {
        return Err(StoreError::Forbidden(
            "only the room's creator can make and unmake admins",
        ));
    }
    if user.id == creator {
        return Err(StoreError::Conflict("the creator has every right already"));
    }
    Ok(())
}

pub(super) async fn promote(
    tx: &mut Tx<'_>,
    room: RoomId,
    by: &UserRef,
    user: &UserRef,
) -> Result<Done> {
    require_creator_over(tx, room, by, user).await?;
    if !is_member(tx, room, user.id).await? {
        return Err(StoreError::Conflict("not a member"));
    }
    if is_admin(tx, room, user.id).await? {
        return Ok(nothing_appended(room));
    }
    db::query("INSERT INTO room_admins (room_id, user_id) VALUES (?, ?)")
        .bind(room)
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    let entry = append(
        tx,
        new_entry(room, 0, now_ms(), EntryKind::Promote, by, Some(user)),
        by.id,
        Some(user.id),
    )
    .await?;
    let recipients = member_ids(tx, room).await?;
    Ok(appended(entry, recipients, None))
}

pub(super) async fn demote(
    tx: &mut Tx<'_>,
    room: RoomId,
    by: &UserRef,
    user: &UserRef,
) -> Result<Done> {
    require_creator_over(tx, room, by, user).await?;
    if !is_admin(tx, room, user.id).await? {
        return Ok(nothing_appended(room));
    }
    drop_admin(tx, room, user.id).await?;
    let entry = append(
        tx,
        new_entry(room, 0, now_ms(), EntryKind::Demote, by, Some(user)),
        by.id,
        Some(user.id),
    )
    .await?;
    let recipients = member_ids(tx, room).await?;
    Ok(appended(entry, recipients, None))
}

/// Appends a `timer` entry (checked again here, in order with every other
/// change: `after` must not be below the latest timer entry, nor above the
/// room's end) and makes its duration the room's.
pub(super) async fn set_timer(
    tx: &mut Tx<'_>,
    room: RoomId,
    user: &UserRef,
    timer: &NewTimer,
) -> Result<Done> {
    require_member(tx, room, user.id).await?;
    let (last_seq, timer_seq): (i64, i64) =
        db::query("SELECT last_seq, timer_seq FROM rooms WHERE id = ?")
            .bind(room)
            .fetch_one(&mut *tx)
            .await?;
    if timer.after > last_seq {
        return Err(StoreError::Invalid(
            "the statement's `after` is beyond the room's newest entry",
        ));
    }
    if timer.after < timer_seq {
        return Err(StoreError::Invalid(
            "the statement's `after` is below the room's latest timer entry",
        ));
    }
    let mut entry = new_entry(room, 0, now_ms(), EntryKind::Timer, user, None);
    entry.body = Some(timer.statement.clone());
    entry.detail = Some(timer.ttl_secs.to_string());
    let entry = append(tx, entry, user.id, None).await?;
    db::query("UPDATE rooms SET ttl = ?, timer_seq = ? WHERE id = ?")
        .bind(i64::from(timer.ttl_secs))
        .bind(entry.seq)
        .bind(room)
        .execute(&mut *tx)
        .await?;
    let recipients = recipient_ids(tx, room).await?;
    Ok(appended(entry, recipients, None))
}

//! The HTTP calls of PROTOCOL §21's social parts: blocks, message requests
//! (accept, decline) and room admins. A child of `api` so it uses the same
//! request and retry code without making it public.

use super::{Api, Result, Room};
use crate::protocol::UserRequest;
use crate::store::RoomId;

impl Api {
    /// `GET /api/v1/blocks`: the usernames the caller blocks, sorted.
    pub async fn blocks(&self) -> Result<Vec<String>> {
        self.get("/api/v1/blocks").await
    }

    /// `PUT /api/v1/blocks/{username}` (idempotent).
    pub async fn block(&self, username: &str) -> Result<()> {
        let path = format!("/api/v1/blocks/{username}");
        self.send(|| self.request(reqwest::Method::PUT, &path))
            .await?;
        Ok(())
    }

    /// `DELETE /api/v1/blocks/{username}` (idempotent).
    pub async fn unblock(&self, username: &str) -> Result<()> {
        let path = format!("/api/v1/blocks/{username}");
        self.send(|| self.request(reqwest::Method::DELETE, &path))
            .await?;
        Ok(())
    }

    /// `POST /api/v1/rooms/{id}/accept`: accepts a DM request.
    pub async fn accept(&self, room: RoomId) -> Result<Room> {
        self.post(
            &format!("/api/v1/rooms/{}/accept", room.0),
            &serde_json::json!({}),
        )
        .await
    }

    /// `POST /api/v1/rooms/{id}/decline`: declines a DM request or a group
    /// invitation.
    pub async fn decline(&self, room: RoomId) -> Result<()> {
        self.post_empty(
            &format!("/api/v1/rooms/{}/decline", room.0),
            &serde_json::json!({}),
        )
        .await
    }

    /// `POST /api/v1/rooms/{id}/admins`: the creator makes a member an admin.
    pub async fn promote(&self, room: RoomId, username: &str) -> Result<()> {
        self.post_empty(
            &format!("/api/v1/rooms/{}/admins", room.0),
            &UserRequest {
                username: username.to_owned(),
            },
        )
        .await
    }

    /// `DELETE /api/v1/rooms/{id}/admins/{username}`.
    pub async fn demote(&self, room: RoomId, username: &str) -> Result<()> {
        let path = format!("/api/v1/rooms/{}/admins/{username}", room.0);
        self.send(|| self.request(reqwest::Method::DELETE, &path))
            .await?;
        Ok(())
    }
}

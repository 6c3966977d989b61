//! Rooms and entries in the store: saving what a sync read (entries, the
//! room's state and cursor, in one transaction) and reading it back as
//! `Shown`, sealed row by row. Each sealed value is bound to its place
//! (server, room, seq and time for an entry), so rows cannot be swapped or
//! re-dated on disk without failing to open.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use zeroize::Zeroizing;

use super::ClientStore;
use crate::client::conversation::{SavedState, Shown};
use crate::client::relations::{self, Applied, MessageState, Relation, Removal};
use crate::crypto::device::DeviceId;
use crate::crypto::envelope::Payload;
use crate::store::RoomId;

/// Which entries of a room to read back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    /// Only the newest this many.
    pub last: Option<usize>,
    /// Only those stored by the server at or after this time (Unix ms).
    pub since_ms: Option<i64>,
}

/// What an entry meant, as sealed in its row (seq and time are columns).
/// No `Debug`: it holds plaintext.
#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
enum Item {
    Message {
        sender: String,
        device: Option<String>,
        payload: Payload,
        verified: bool,
        late: bool,
        #[serde(default)]
        state: MessageState,
    },
    Relation {
        sender: String,
        device: Option<String>,
        relation: Relation,
        verified: bool,
        late: bool,
    },
    Removed {
        sender: String,
        why: Removal,
    },
    Unsupported {
        sender: String,
        device: Option<String>,
    },
    Event {
        text: String,
    },
    Rejected {
        sender: String,
        reason: String,
    },
}

/// One entry's row before sealing: seq, time, kind, attachment size and
/// the plaintext to seal.
type PlainRow = (i64, i64, &'static str, Option<i64>, Zeroizing<Vec<u8>>);

/// The row of one item (`None` for what is not stored).
fn to_row(shown: &Shown) -> anyhow::Result<Option<PlainRow>> {
    let (seq, ts, kind, size, item) = match shown {
        Shown::Quiet { .. } => return Ok(None),
        Shown::Message {
            seq,
            ts,
            sender,
            device,
            payload,
            is_sender_verified,
            is_late,
            state,
        } => {
            let size = match payload {
                Payload::File { data, .. } => Some(data.len() as i64),
                _ => None,
            };
            let item = Item::Message {
                sender: sender.clone(),
                device: device.map(|d| d.to_hex()),
                payload: payload.clone(),
                verified: *is_sender_verified,
                late: *is_late,
                state: state.clone(),
            };
            (*seq, *ts, "message", size, item)
        }
        Shown::Relation {
            seq,
            ts,
            sender,
            device,
            relation,
            is_sender_verified,
            is_late,
        } => {
            let item = Item::Relation {
                sender: sender.clone(),
                device: device.map(|d| d.to_hex()),
                relation: relation.clone(),
                verified: *is_sender_verified,
                late: *is_late,
            };
            (*seq, *ts, relation.kind(), None, item)
        }
        Shown::Removed {
            seq,
            ts,
            sender,
            why,
        } => {
            let item = Item::Removed {
                sender: sender.clone(),
                why: *why,
            };
            (*seq, *ts, "removed", None, item)
        }
        Shown::Unsupported {
            seq,
            ts,
            sender,
            device,
        } => {
            let item = Item::Unsupported {
                sender: sender.clone(),
                device: device.map(|d| d.to_hex()),
            };
            (*seq, *ts, "unsupported", None, item)
        }
        Shown::Event { seq, ts, text } => {
            (*seq, *ts, "event", None, Item::Event { text: text.clone() })
        }
        Shown::Rejected {
            seq,
            ts,
            sender,
            reason,
        } => {
            let item = Item::Rejected {
                sender: sender.clone(),
                reason: reason.clone(),
            };
            (*seq, *ts, "rejected", None, item)
        }
    };
    let plaintext = Zeroizing::new(serde_json::to_vec(&item).context("encoding an entry")?);
    Ok(Some((seq, ts, kind, size, plaintext)))
}

/// Whether an entry expires with a disappearing-messages timer: what was
/// a message of the log (text, file, relation, unsupported, or what is
/// left of a deleted one).
fn expires_with_row(shown: &Shown) -> bool {
    matches!(
        shown,
        Shown::Message { .. }
            | Shown::Relation { .. }
            | Shown::Unsupported { .. }
            | Shown::Removed { .. }
    )
}

fn from_item(seq: i64, ts: i64, item: Item) -> anyhow::Result<Shown> {
    let device = |hex: Option<String>| -> anyhow::Result<Option<DeviceId>> {
        hex.map(|h| DeviceId::from_hex(&h).context("a stored device id is malformed"))
            .transpose()
    };
    Ok(match item {
        Item::Message {
            sender,
            device: d,
            payload,
            verified,
            late,
            state,
        } => Shown::Message {
            seq,
            ts,
            sender,
            device: device(d)?,
            payload,
            is_sender_verified: verified,
            is_late: late,
            state,
        },
        Item::Relation {
            sender,
            device: d,
            relation,
            verified,
            late,
        } => Shown::Relation {
            seq,
            ts,
            sender,
            device: device(d)?,
            relation,
            is_sender_verified: verified,
            is_late: late,
        },
        Item::Removed { sender, why } => Shown::Removed {
            seq,
            ts,
            sender,
            why,
        },
        Item::Unsupported { sender, device: d } => Shown::Unsupported {
            seq,
            ts,
            sender,
            device: device(d)?,
        },
        Item::Event { text } => Shown::Event { seq, ts, text },
        Item::Rejected { sender, reason } => Shown::Rejected {
            seq,
            ts,
            sender,
            reason,
        },
    })
}

impl ClientStore {
    fn entry_context(&self, room: RoomId, seq: i64, ts: i64) -> Vec<u8> {
        format!("entry:{}:{}:{seq}:{ts}", self.server, room.0).into_bytes()
    }

    fn room_context(&self, what: &str, room: RoomId) -> Vec<u8> {
        format!("{what}:{}:{}", self.server, room.0).into_bytes()
    }

    /// The saved state of `room`, if it was read before.
    pub async fn room_state(&self, room: RoomId) -> anyhow::Result<Option<SavedState>> {
        let row = sqlx::query("SELECT sealed_state FROM rooms WHERE server = ? AND room = ?")
            .bind(self.server)
            .bind(room.0)
            .fetch_optional(&self.pool)
            .await
            .context("reading a room from the local store")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let sealed: Vec<u8> = row.try_get("sealed_state")?;
        let Some(json) = self
            .seal
            .open_bound(&sealed, &self.room_context("state", room))
        else {
            bail!(self.damaged("a room's saved state"));
        };
        Ok(Some(
            serde_json::from_slice(&json).context("a room's saved state is malformed")?,
        ))
    }

    /// Saves what a sync read: `items` (entries after the stored cursor)
    /// and the state after them, in one transaction. A state is only
    /// replaced by one further along (another process may have got there
    /// first); entries already stored are kept as they are.
    pub async fn save(
        &self,
        room: RoomId,
        label: &str,
        state: &SavedState,
        items: &[Shown],
    ) -> anyhow::Result<()> {
        let state_json =
            Zeroizing::new(serde_json::to_vec(state).context("encoding a room state")?);
        let sealed_state = self
            .seal
            .seal_bound(&state_json, &self.room_context("state", room))?;
        let sealed_label = self
            .seal
            .seal_bound(label.as_bytes(), &self.room_context("label", room))?;
        let mut rows = Vec::with_capacity(items.len());
        for shown in items {
            if let Some((seq, ts, kind, size, plaintext)) = to_row(shown)? {
                let sealed = self
                    .seal
                    .seal_bound(&plaintext, &self.entry_context(room, seq, ts))?;
                let expires = expires_with_row(shown)
                    .then(|| state.expires_at(seq, ts))
                    .flatten();
                rows.push((shown, seq, ts, kind, size, expires, sealed));
            }
        }
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .context("writing to the local store")?;
        let mut is_erasing = false;
        for (shown, seq, ts, kind, size, expires, sealed) in rows {
            let inserted = sqlx::query(
                "INSERT OR IGNORE INTO entries
                     (server, room, seq, ts, kind, file_size, sealed, expires)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(self.server)
            .bind(room.0)
            .bind(seq)
            .bind(ts)
            .bind(kind)
            .bind(size)
            .bind(sealed)
            .bind(expires)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // A relation already stored was applied by whoever stored it.
            if let (
                1,
                Shown::Relation {
                    relation, sender, ..
                },
            ) = (inserted, shown)
            {
                is_erasing |= self.apply_relation(&mut tx, room, relation, sender).await?;
            }
        }
        sqlx::query(
            "INSERT INTO rooms (server, room, last_seq, sealed_state, sealed_label)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (server, room) DO UPDATE SET
                 last_seq = excluded.last_seq,
                 sealed_state = excluded.sealed_state,
                 sealed_label = excluded.sealed_label
             WHERE excluded.last_seq >= rooms.last_seq",
        )
        .bind(self.server)
        .bind(room.0)
        .bind(state.last_seq())
        .bind(sealed_state)
        .bind(sealed_label)
        .execute(&mut *tx)
        .await?;
        tx.commit().await.context("writing to the local store")?;
        if is_erasing {
            self.push_out_erased().await;
        }
        Ok(())
    }

    /// Applies a valid relation, just stored, to its target's row (§21):
    /// an edit replaces the text, a reaction sets the sender's, a delete
    /// replaces the target's row with one that holds only its sender and
    /// drops the edits and reactions of it. Returns whether plaintext was
    /// erased.
    async fn apply_relation(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        room: RoomId,
        relation: &Relation,
        by: &str,
    ) -> anyhow::Result<bool> {
        let of = relation.of();
        let row = sqlx::query(
            "SELECT seq, ts, sealed FROM entries
             WHERE server = ? AND room = ? AND seq = ? AND kind IN ('message', 'removed')",
        )
        .bind(self.server)
        .bind(room.0)
        .bind(of)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let mut target = self.open_row(room, &row)?;
        if let Applied::Nothing = relations::apply(&mut target, relation, by) {
            return Ok(false);
        }
        self.rewrite(tx, room, &target).await?;
        let Relation::Delete { .. } = relation else {
            return Ok(false);
        };
        // The edits and reactions of a deleted message go too.
        let later = sqlx::query(
            "SELECT seq, ts, sealed FROM entries
             WHERE server = ? AND room = ? AND seq > ? AND kind IN ('edit', 'react')",
        )
        .bind(self.server)
        .bind(room.0)
        .bind(of)
        .fetch_all(&mut **tx)
        .await?;
        for row in &later {
            if let Shown::Relation { seq, relation, .. } = self.open_row(room, row)?
                && relation.of() == of
            {
                sqlx::query("DELETE FROM entries WHERE server = ? AND room = ? AND seq = ?")
                    .bind(self.server)
                    .bind(room.0)
                    .bind(seq)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(true)
    }

    /// Writes `shown` over the row at its seq (same time), with its new
    /// kind and attachment size.
    async fn rewrite(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        room: RoomId,
        shown: &Shown,
    ) -> anyhow::Result<()> {
        let Some((seq, ts, kind, size, plaintext)) = to_row(shown)? else {
            return Ok(());
        };
        let sealed = self
            .seal
            .seal_bound(&plaintext, &self.entry_context(room, seq, ts))?;
        let is_gone = matches!(shown, Shown::Removed { .. });
        sqlx::query(
            "UPDATE entries SET kind = ?, file_size = ?, sealed = ?,
                 expires = CASE WHEN ? THEN NULL ELSE expires END
             WHERE server = ? AND room = ? AND seq = ?",
        )
        .bind(kind)
        .bind(size)
        .bind(sealed)
        .bind(is_gone)
        .bind(self.server)
        .bind(room.0)
        .bind(seq)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Replaces every stored entry whose disappearing-messages time has
    /// come (in `room`, or everywhere) with "message expired", keeping
    /// who sent it, so a read shows no gap. Done before anything is read
    /// back from the store.
    pub async fn expire(&self, room: Option<RoomId>) -> anyhow::Result<()> {
        let now = relations::now_ms();
        let rows = sqlx::query(
            "SELECT room, seq, ts, sealed FROM entries
             WHERE server = ? AND expires <= ? AND (? IS NULL OR room = ?)",
        )
        .bind(self.server)
        .bind(now)
        .bind(room.map(|r| r.0))
        .bind(room.map(|r| r.0))
        .fetch_all(&self.pool)
        .await
        .context("reading the local store")?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .context("writing to the local store")?;
        for row in &rows {
            let room = RoomId(row.try_get("room")?);
            let mut items = [self.open_row(room, row)?];
            relations::expire(&mut items, |_, _| Some(now), now);
            if let Shown::Removed { .. } = &items[0] {
                self.rewrite(&mut tx, room, &items[0]).await?;
            } else {
                // Nothing of it is kept (an event, a rejection).
                sqlx::query(
                    "UPDATE entries SET expires = NULL WHERE server = ? AND room = ? AND seq = ?",
                )
                .bind(self.server)
                .bind(room.0)
                .bind(items[0].seq())
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await.context("writing to the local store")?;
        self.push_out_erased().await;
        Ok(())
    }

    /// After plaintext was erased: moves the write-ahead log's copies of
    /// the old rows into the database file (where `secure_delete` zeroes
    /// freed space) and truncates it. Best effort: another process of
    /// this identity reading at that moment keeps the log until its next
    /// checkpoint.
    async fn push_out_erased(&self) {
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await;
    }

    /// The stored entry at `seq` of `room`, if any (expired ones already
    /// replaced).
    pub async fn entry(&self, room: RoomId, seq: i64) -> anyhow::Result<Option<Shown>> {
        self.expire(Some(room)).await?;
        let row = sqlx::query(
            "SELECT seq, ts, sealed FROM entries WHERE server = ? AND room = ? AND seq = ?",
        )
        .bind(self.server)
        .bind(room.0)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await
        .context("reading the local store")?;
        row.map(|row| self.open_row(room, &row)).transpose()
    }

    /// The stored entries of `room` in `window`, oldest first.
    pub async fn shown(&self, room: RoomId, window: Window) -> anyhow::Result<Vec<Shown>> {
        self.expire(Some(room)).await?;
        let limit = window
            .last
            .map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let rows = sqlx::query(
            "SELECT seq, ts, sealed FROM entries
             WHERE server = ? AND room = ? AND ts >= ?
             ORDER BY seq DESC LIMIT ?",
        )
        .bind(self.server)
        .bind(room.0)
        .bind(window.since_ms.unwrap_or(i64::MIN))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("reading the local store")?;
        let mut shown = rows
            .iter()
            .map(|row| self.open_row(room, row))
            .collect::<anyhow::Result<Vec<_>>>()?;
        shown.reverse();
        Ok(shown)
    }

    /// Every stored message of `room` (or of every room), for search:
    /// (room, shown), in room and seq order.
    pub(super) async fn messages(
        &self,
        room: Option<RoomId>,
    ) -> anyhow::Result<Vec<(RoomId, Shown)>> {
        self.expire(room).await?;
        let rows = sqlx::query(
            "SELECT room, seq, ts, sealed FROM entries
             WHERE server = ? AND kind = 'message' AND (? IS NULL OR room = ?)
             ORDER BY room, seq",
        )
        .bind(self.server)
        .bind(room.map(|r| r.0))
        .bind(room.map(|r| r.0))
        .fetch_all(&self.pool)
        .await
        .context("reading the local store")?;
        rows.iter()
            .map(|row| {
                let room = RoomId(row.try_get("room")?);
                Ok((room, self.open_row(room, row)?))
            })
            .collect()
    }

    /// The rooms stored for this server, with their labels.
    pub async fn rooms(&self) -> anyhow::Result<Vec<(RoomId, String)>> {
        let rows =
            sqlx::query("SELECT room, sealed_label FROM rooms WHERE server = ? ORDER BY room")
                .bind(self.server)
                .fetch_all(&self.pool)
                .await
                .context("reading the local store")?;
        rows.iter()
            .map(|row| {
                let room = RoomId(row.try_get("room")?);
                let sealed: Vec<u8> = row.try_get("sealed_label")?;
                let label = self
                    .seal
                    .open_bound(&sealed, &self.room_context("label", room))
                    .with_context(|| self.damaged("a room's label"))?;
                Ok((room, String::from_utf8_lossy(&label).into_owned()))
            })
            .collect()
    }

    fn open_row(&self, room: RoomId, row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<Shown> {
        let seq: i64 = row.try_get("seq")?;
        let ts: i64 = row.try_get("ts")?;
        let sealed: Vec<u8> = row.try_get("sealed")?;
        let plaintext = self
            .seal
            .open_bound(&sealed, &self.entry_context(room, seq, ts))
            .with_context(|| self.damaged("an entry"))?;
        let item: Item =
            serde_json::from_slice(&plaintext).context("a stored entry is malformed")?;
        from_item(seq, ts, item)
    }

    /// The message for a sealed value that does not open.
    fn damaged(&self, what: &str) -> String {
        format!(
            "{what} in the local store {} does not open; delete that file (it is rebuilt from the server)",
            self.path.display()
        )
    }
}

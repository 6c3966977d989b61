//! The frames that carry log entries (`entry`, `page`, `history`), written
//! straight from the stored entries, a `page` while its rows are read.
//! They are the same JSON as `Outgoing` with `ServerFrame::{Entry, Page,
//! History}` of `WireEntry`s (the tests below hold the two to the same
//! bytes), but no field is copied into an owned string first, and a body's
//! base64 is written as it is: its alphabet never needs escaping, and
//! serde_json's byte-by-byte escape scan of it took ~9 % of the server's
//! CPU while replaying a sync.

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::value::RawValue;

use super::PROTOCOL_VERSION;
use crate::store::{Entry, EntryKind, RoomId};

/// The JSON a sync or history page is filled to; the entry that crosses it
/// is the page's last. Without it a page of 500 one-megabyte files would be
/// a ~700 MB frame, and tungstenite's clients refuse frames over 16 MiB.
pub const PAGE_JSON_BUDGET: usize = 4 * 1024 * 1024;

/// The `entry` frame the hub delivers for a committed entry.
pub fn entry_frame(entry: &Entry) -> String {
    let mut json = format!(r#"{{"v":{PROTOCOL_VERSION},"type":"entry","entry":"#).into_bytes();
    write_entry(&mut json, entry);
    json.push(b'}');
    String::from_utf8(json).expect("serde_json writes UTF-8")
}

/// The reply to a `history` request.
pub fn history_frame(id: Option<&str>, room: RoomId, entries: &[Entry], has_more: bool) -> String {
    let mut frame = EntriesJson::start(id, "history", room);
    for entry in entries {
        frame.push(entry);
    }
    frame.finish(has_more)
}

/// Where a history page of `entries` (oldest first) starts so that it
/// stays within `PAGE_JSON_BUDGET`, counting from the newest entry, which
/// is always kept.
pub fn history_start(entries: &[Entry]) -> usize {
    let mut bytes = 0;
    for (index, entry) in entries.iter().enumerate().rev() {
        bytes += entry_json_bound(entry);
        if bytes > PAGE_JSON_BUDGET {
            return index + 1;
        }
    }
    0
}

/// An upper bound of the JSON an entry takes in a page: every text field
/// fully escaped, the body in base64, and the field names and numbers.
fn entry_json_bound(e: &Entry) -> usize {
    let texts = e.sender.len()
        + [&e.subject, &e.client_id, &e.detail]
            .into_iter()
            .map(|t| t.as_deref().map_or(0, str::len))
            .sum::<usize>();
    let body = e.body.as_deref().map_or(0, |b| b.len().div_ceil(3) * 4);
    256 + 6 * texts + body
}

/// A frame with a list of entries (`page` or `history`), built entry by
/// entry: a sync's page while its rows are read.
pub struct EntriesJson {
    json: Vec<u8>,
    entries: usize,
}

impl EntriesJson {
    /// A sync's `page` of `room`.
    pub fn page(room: RoomId) -> Self {
        Self::start(None, "page", room)
    }

    /// The fields in `Outgoing`'s order: `v`, `id`, then the frame's own.
    fn start(id: Option<&str>, kind: &str, room: RoomId) -> Self {
        let mut json = format!(r#"{{"v":{PROTOCOL_VERSION}"#).into_bytes();
        if let Some(id) = id {
            json.extend_from_slice(br#","id":"#);
            serde_json::to_writer(&mut json, id).expect("a string always serialises");
        }
        write!(json, r#","type":"{kind}","room":{},"entries":["#, room.0)
            .expect("writing to a Vec cannot fail");
        Self { json, entries: 0 }
    }

    pub fn push(&mut self, entry: &Entry) {
        if self.entries > 0 {
            self.json.push(b',');
        }
        write_entry(&mut self.json, entry);
        self.entries += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Whether the frame has reached `PAGE_JSON_BUDGET`.
    pub fn is_full(&self) -> bool {
        self.json.len() >= PAGE_JSON_BUDGET
    }

    pub fn finish(mut self, has_more: bool) -> String {
        self.json.extend_from_slice(br#"],"has_more":"#);
        self.json
            .extend_from_slice(if has_more { b"true}" } else { b"false}" });
        String::from_utf8(self.json).expect("serde_json writes UTF-8")
    }
}

fn write_entry(json: &mut Vec<u8>, entry: &Entry) {
    serde_json::to_writer(json, &EntryOut::from(entry)).expect("entries always serialise");
}

/// `WireEntry`'s fields, borrowed.
#[derive(Serialize)]
struct EntryOut<'a> {
    room: RoomId,
    seq: i64,
    ts: i64,
    kind: &'static str,
    sender: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Base64<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl<'a> From<&'a Entry> for EntryOut<'a> {
    fn from(e: &'a Entry) -> Self {
        Self {
            room: e.room,
            seq: e.seq,
            ts: e.ts,
            kind: e.kind.as_str(),
            sender: &e.sender,
            subject: e.subject.as_deref(),
            // A tombstone keeps its client id in the store (so a resend
            // is still a duplicate) but does not show it.
            client_id: e
                .client_id
                .as_deref()
                .filter(|_| e.kind != EntryKind::Erased),
            body: e.body.as_deref().map(Base64),
            fingerprint: e.detail.as_deref().filter(|_| e.kind == EntryKind::Key),
            expires: e.expires,
            ttl: e
                .detail
                .as_deref()
                .filter(|_| e.kind == EntryKind::Timer)
                .and_then(|d| d.parse().ok()),
            reason: e.detail.as_deref().filter(|_| e.kind == EntryKind::Erased),
        }
    }
}

/// Bytes written as a base64 JSON string.
struct Base64<'a>(&'a [u8]);

impl Serialize for Base64<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut quoted = String::with_capacity(self.0.len().div_ceil(3) * 4 + 2);
        quoted.push('"');
        STANDARD.encode_string(self.0, &mut quoted);
        quoted.push('"');
        // Checking that this is one JSON string is a word-at-a-time scan,
        // unlike escaping it.
        let raw: &RawValue = serde_json::from_str(&quoted).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Outgoing, ServerFrame, WireEntry};

    fn entry(seq: i64, kind: EntryKind) -> Entry {
        Entry {
            room: RoomId(7),
            seq,
            ts: 1_700_000_000_000 + seq,
            kind,
            sender: "alice".into(),
            subject: None,
            client_id: None,
            body: None,
            detail: None,
            expires: None,
        }
    }

    /// Every field shape: escapes in user-chosen text, every body length
    /// modulo 3 (base64 padding), an empty body, a key event's fingerprint,
    /// and a detail that is not a fingerprint.
    fn entries() -> Vec<Entry> {
        let mut all = Vec::new();
        for len in [0usize, 1, 2, 3, 255, 256] {
            let mut e = entry(all.len() as i64 + 1, EntryKind::Message);
            e.client_id = Some(format!("c\"{len}\\\n\u{1}é😀"));
            e.body = Some((0..len).map(|i| (i * 37 % 256) as u8).collect());
            all.push(e);
        }
        let mut key = entry(20, EntryKind::Key);
        key.detail = Some("ab12".into());
        all.push(key);
        let mut invite = entry(21, EntryKind::Invite);
        invite.subject = Some("bob".into());
        invite.detail = Some("not a fingerprint".into());
        all.push(invite);
        for kind in [
            EntryKind::Create,
            EntryKind::Join,
            EntryKind::Leave,
            EntryKind::Remove,
            EntryKind::Decline,
        ] {
            all.push(entry(all.len() as i64 + 30, kind));
        }
        let mut erased = entry(40, EntryKind::Erased);
        erased.client_id = Some("kept but not shown".into());
        erased.detail = Some("expired".into());
        all.push(erased);
        let mut timer = entry(41, EntryKind::Timer);
        timer.body = Some(b"HUSH\x02\x04".to_vec());
        timer.detail = Some("86400".into());
        all.push(timer);
        let mut promote = entry(42, EntryKind::Promote);
        promote.subject = Some("bob".into());
        all.push(promote);
        let mut expiring = entry(43, EntryKind::Message);
        expiring.body = Some(vec![1, 2, 3]);
        expiring.expires = Some(1_800_000_000_000);
        all.push(expiring);
        all
    }

    fn wire(entries: &[Entry]) -> Vec<WireEntry> {
        entries.iter().map(WireEntry::from).collect()
    }

    #[test]
    fn entry_frames_are_the_bytes_of_the_owned_frames() {
        for e in entries() {
            let owned = Outgoing::new(
                None,
                ServerFrame::Entry {
                    entry: WireEntry::from(&e),
                },
            );
            assert_eq!(entry_frame(&e), owned.to_json());
        }
    }

    #[test]
    fn page_and_history_frames_are_the_bytes_of_the_owned_frames() {
        let all = entries();
        for (slice, has_more) in [(&all[..], false), (&all[..3], true), (&all[..0], false)] {
            let page = Outgoing::new(
                None,
                ServerFrame::Page {
                    room: RoomId(7),
                    entries: wire(slice),
                    has_more,
                },
            );
            let mut built = EntriesJson::page(RoomId(7));
            for entry in slice {
                built.push(entry);
            }
            assert_eq!(built.is_empty(), slice.is_empty());
            assert_eq!(built.finish(has_more), page.to_json());
            let history = Outgoing::new(
                Some("h\"1".into()),
                ServerFrame::History {
                    room: RoomId(7),
                    entries: wire(slice),
                    has_more,
                },
            );
            assert_eq!(
                history_frame(Some("h\"1"), RoomId(7), slice, has_more),
                history.to_json()
            );
        }
    }
}

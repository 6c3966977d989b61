//! Notices as text payloads of at most `MAX_PAYLOAD` bytes (PostgreSQL's
//! NOTIFY takes up to 8,000).
//!
//! A payload is a header line `hush1 <node id in hex>` and one line per
//! notice:
//! - `L <room> <first> <last>`: entries appended (`M` instead of `L`: one
//!   of them changed membership);
//! - `P +<user> -<user> ...`: presence changes;
//! - `S <more> <user> ...`: a presence snapshot, in as many lines as it
//!   takes; every line but the last has `more` = 1;
//! - `Q`: presence query; `H`: heartbeat;
//! - `K <user> ...`: sessions changed;
//! - `G <room> <user> <username> <r|t> <base64 body>`: a receipt or typing
//!   signal (bodies are at most 4,096 bytes, 5,464 in base64: one fits a
//!   payload).
//!
//! `encode` coalesces a batch first: the `Appended` notices of one room
//! become one line covering all of them, so a busy writer's thousands of
//! commits per second cost a few lines per room, not one per entry.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::{Heard, NodeId, Notice};
use crate::store::{RoomId, UserId};

/// Largest payload, under PostgreSQL's 8,000-byte limit.
pub const MAX_PAYLOAD: usize = 7900;
/// Users per presence or sessions line.
const USERS_PER_LINE: usize = 400;
const HEADER: &str = "hush1";

/// Coalesces `notices` (per room: the lowest first and highest last) and
/// packs them into payloads, in order of each room's first notice.
pub fn encode(node: NodeId, notices: &[Notice]) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    // Room -> index of its line in `ranges`.
    let mut rooms: HashMap<RoomId, usize> = HashMap::new();
    let mut ranges: Vec<(RoomId, i64, i64, bool)> = Vec::new();
    for notice in notices {
        match notice {
            Notice::Appended {
                room,
                first,
                last,
                membership,
            } => match rooms.get(room) {
                Some(at) => {
                    let r = &mut ranges[*at];
                    r.1 = r.1.min(*first);
                    r.2 = r.2.max(*last);
                    r.3 |= *membership;
                }
                None => {
                    rooms.insert(*room, ranges.len());
                    ranges.push((*room, *first, *last, *membership));
                }
            },
            Notice::Presence { online, offline } => {
                let marked: Vec<String> = online
                    .iter()
                    .map(|u| format!("+{}", u.0))
                    .chain(offline.iter().map(|u| format!("-{}", u.0)))
                    .collect();
                for chunk in marked.chunks(USERS_PER_LINE) {
                    lines.push(format!("P {}", chunk.join(" ")));
                }
            }
            Notice::PresenceSnapshot { online } => {
                let chunks: Vec<&[UserId]> = online.chunks(USERS_PER_LINE).collect();
                if chunks.is_empty() {
                    lines.push("S 0".to_owned());
                }
                for (at, chunk) in chunks.iter().enumerate() {
                    let more = usize::from(at + 1 < chunks.len());
                    let mut line = format!("S {more}");
                    for user in *chunk {
                        let _ = write!(line, " {}", user.0);
                    }
                    lines.push(line);
                }
            }
            Notice::PresenceQuery => lines.push("Q".to_owned()),
            Notice::Heartbeat => lines.push("H".to_owned()),
            Notice::Sessions { users } => {
                for chunk in users.chunks(USERS_PER_LINE) {
                    let mut line = "K".to_owned();
                    for user in chunk {
                        let _ = write!(line, " {}", user.0);
                    }
                    lines.push(line);
                }
            }
            Notice::Signal {
                room,
                sender,
                username,
                receipt,
                body,
            } => {
                let kind = if *receipt { 'r' } else { 't' };
                lines.push(format!(
                    "G {} {} {username} {kind} {body}",
                    room.0, sender.0
                ));
            }
        }
    }
    let mut all: Vec<String> = ranges
        .into_iter()
        .map(|(room, first, last, membership)| {
            let tag = if membership { 'M' } else { 'L' };
            format!("{tag} {} {first} {last}", room.0)
        })
        .collect();
    all.extend(lines);
    pack(node, all)
}

fn pack(node: NodeId, lines: Vec<String>) -> Vec<String> {
    let header = format!("{HEADER} {node}");
    let mut payloads = Vec::new();
    let mut current = header.clone();
    for line in lines {
        if current.len() + 1 + line.len() > MAX_PAYLOAD && current.len() > header.len() {
            payloads.push(std::mem::replace(&mut current, header.clone()));
        }
        current.push('\n');
        current.push_str(&line);
    }
    if current.len() > header.len() {
        payloads.push(current);
    }
    payloads
}

/// A presence snapshot line: `more` is false on its last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPart {
    pub more: bool,
    pub users: Vec<UserId>,
}

/// One decoded line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Notice(Notice),
    Snapshot(SnapshotPart),
}

/// Decodes a payload: its node and its lines. `None` for a payload that is
/// not ours (another program NOTIFYing on the channel); unknown or broken
/// lines are skipped.
pub fn decode(payload: &str) -> Option<(NodeId, Vec<Line>)> {
    let mut lines = payload.split('\n');
    let header = lines.next()?;
    let node = header.strip_prefix(HEADER)?.trim();
    let node = NodeId(u64::from_str_radix(node, 16).ok()?);
    let decoded = lines.filter_map(decode_line).collect();
    Some((node, decoded))
}

fn decode_line(line: &str) -> Option<Line> {
    let mut words = line.split(' ');
    let tag = words.next()?;
    let ids = |words: std::str::Split<'_, char>| -> Option<Vec<UserId>> {
        words.map(|w| w.parse().ok().map(UserId)).collect()
    };
    Some(match tag {
        "L" | "M" => {
            let room = RoomId(words.next()?.parse().ok()?);
            let first = words.next()?.parse().ok()?;
            let last = words.next()?.parse().ok()?;
            Line::Notice(Notice::Appended {
                room,
                first,
                last,
                membership: tag == "M",
            })
        }
        "P" => {
            let (mut online, mut offline) = (Vec::new(), Vec::new());
            for word in words {
                let (sign, id) = word.split_at_checked(1)?;
                let id = UserId(id.parse().ok()?);
                match sign {
                    "+" => online.push(id),
                    "-" => offline.push(id),
                    _ => return None,
                }
            }
            Line::Notice(Notice::Presence { online, offline })
        }
        "S" => {
            let more = words.next()? == "1";
            Line::Snapshot(SnapshotPart {
                more,
                users: ids(words)?,
            })
        }
        "Q" => Line::Notice(Notice::PresenceQuery),
        "H" => Line::Notice(Notice::Heartbeat),
        "K" => Line::Notice(Notice::Sessions { users: ids(words)? }),
        "G" => {
            let room = RoomId(words.next()?.parse().ok()?);
            let sender = UserId(words.next()?.parse().ok()?);
            let username = words.next()?.to_owned();
            let receipt = match words.next()? {
                "r" => true,
                "t" => false,
                _ => return None,
            };
            let body = words.next()?.to_owned();
            if words.next().is_some() || username.is_empty() || body.is_empty() {
                return None;
            }
            Line::Notice(Notice::Signal {
                room,
                sender,
                username,
                receipt,
                body,
            })
        }
        _ => return None,
    })
}

/// Puts snapshot parts back together, per sending node.
#[derive(Default)]
pub struct Assembler {
    partial: HashMap<NodeId, Vec<UserId>>,
}

impl Assembler {
    /// The notices of one decoded payload, snapshots whole.
    pub fn heard(&mut self, from: NodeId, lines: Vec<Line>) -> Vec<Heard> {
        let mut out = Vec::with_capacity(lines.len());
        for line in lines {
            match line {
                Line::Notice(notice) => out.push(Heard { from, notice }),
                Line::Snapshot(part) => {
                    let users = self.partial.entry(from).or_default();
                    users.extend(part.users);
                    if !part.more {
                        let online = self.partial.remove(&from).unwrap_or_default();
                        out.push(Heard {
                            from,
                            notice: Notice::PresenceSnapshot { online },
                        });
                    }
                }
            }
        }
        out
    }

    /// Drops half-received snapshots (the link dropped mid-snapshot).
    pub fn reset(&mut self) {
        self.partial.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(notices: &[Notice]) -> Vec<Notice> {
        let node = NodeId(0xabc);
        let mut assembler = Assembler::default();
        let mut out = Vec::new();
        for payload in encode(node, notices) {
            assert!(payload.len() <= MAX_PAYLOAD, "{} bytes", payload.len());
            let (from, lines) = decode(&payload).expect("our own payload decodes");
            assert_eq!(from, node);
            out.extend(assembler.heard(from, lines).into_iter().map(|h| h.notice));
        }
        out
    }

    #[test]
    fn appended_ranges_coalesce_per_room() {
        let notices = [
            Notice::Appended {
                room: RoomId(7),
                first: 3,
                last: 3,
                membership: false,
            },
            Notice::Appended {
                room: RoomId(9),
                first: 1,
                last: 1,
                membership: true,
            },
            Notice::Appended {
                room: RoomId(7),
                first: 4,
                last: 6,
                membership: false,
            },
            Notice::Heartbeat,
        ];
        assert_eq!(
            round_trip(&notices),
            vec![
                Notice::Appended {
                    room: RoomId(7),
                    first: 3,
                    last: 6,
                    membership: false
                },
                Notice::Appended {
                    room: RoomId(9),
                    first: 1,
                    last: 1,
                    membership: true
                },
                Notice::Heartbeat,
            ]
        );
    }

    #[test]
    fn signals_of_the_largest_size_round_trip_one_per_payload() {
        let largest = "A".repeat(4096usize.div_ceil(3) * 4);
        let notices = vec![
            Notice::Signal {
                room: RoomId(5),
                sender: UserId(11),
                username: "alice".to_owned(),
                receipt: true,
                body: largest.clone(),
            },
            Notice::Signal {
                room: RoomId(5),
                sender: UserId(12),
                username: "bob.b-2".to_owned(),
                receipt: false,
                body: largest,
            },
        ];
        assert_eq!(encode(NodeId(1), &notices).len(), 2);
        assert_eq!(round_trip(&notices), notices);
        assert!(
            decode("hush1 1\nG 5 11 alice x Ym9keQ==")
                .unwrap()
                .1
                .is_empty()
        );
        assert!(decode("hush1 1\nG 5 11 alice r").unwrap().1.is_empty());
    }

    #[test]
    fn many_rooms_split_into_payloads_under_the_limit() {
        let notices: Vec<Notice> = (0..5000)
            .map(|room| Notice::Appended {
                room: RoomId(1_000_000 + room),
                first: 123_456,
                last: 123_999,
                membership: false,
            })
            .collect();
        let payloads = encode(NodeId(1), &notices);
        assert!(payloads.len() > 1);
        assert_eq!(round_trip(&notices), notices);
    }

    #[test]
    fn a_large_snapshot_spans_lines_and_payloads_and_comes_back_whole() {
        let online: Vec<UserId> = (0..20_000).map(|u| UserId(10_000_000 + u)).collect();
        let notices = vec![
            Notice::PresenceSnapshot {
                online: online.clone(),
            },
            Notice::PresenceSnapshot { online: vec![] },
            Notice::Presence {
                online: vec![UserId(1)],
                offline: vec![UserId(2), UserId(3)],
            },
            Notice::Sessions {
                users: vec![UserId(4)],
            },
            Notice::PresenceQuery,
        ];
        assert_eq!(round_trip(&notices), notices);
    }

    #[test]
    fn foreign_payloads_are_ignored() {
        assert!(decode("hello").is_none());
        let (_, lines) = decode("hush1 00ff\nL 1 2\nX\nL 1 2 3").expect("header is fine");
        assert_eq!(lines.len(), 1, "broken lines are skipped");
    }
}

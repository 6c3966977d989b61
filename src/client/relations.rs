//! Replies, edits, deletes and reactions as a reader applies them
//! (`docs/PROTOCOL.md` §21, Relations), and what disappearing messages
//! do to what is shown.
//!
//! `Conversation` judges each relation when it reads it (position, the
//! sender rule against the *signed* sender of both envelopes, whether the
//! reader has the target) and produces a `Shown::Relation` only for one
//! that applies. This module holds the pieces both the local store and
//! the in-memory views of `hush chat` use to apply one to its target, so
//! both end in the same state: the latest text and "edited", one reaction
//! per user, and on a delete nothing of the target but who sent it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::conversation::Shown;
use crate::crypto::envelope::Payload;

/// A message's state beyond its payload: whether its text was edited and
/// each user's reaction (username → emoji). The edited text itself
/// replaces the payload's text.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_edited: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: BTreeMap<String, String>,
}

impl MessageState {
    /// Reactions grouped: emoji → the users who chose it, sorted (by
    /// emoji, then username).
    pub fn grouped(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut grouped: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (user, emoji) in &self.reactions {
            grouped.entry(emoji).or_default().push(user);
        }
        grouped
    }
}

/// A relation that applies to a message the reader has.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Relation {
    Edit { of: i64, text: String },
    Delete { of: i64 },
    React { of: i64, emoji: String },
}

impl Relation {
    /// The relation a payload carries, if it is one.
    pub fn from_payload(payload: &Payload) -> Option<Self> {
        Some(match payload {
            Payload::Edit { of, text } => Relation::Edit {
                of: *of,
                text: text.clone(),
            },
            Payload::Delete { of } => Relation::Delete { of: *of },
            Payload::React { of, emoji } => Relation::React {
                of: *of,
                emoji: emoji.clone(),
            },
            Payload::Text { .. } | Payload::File { .. } => return None,
        })
    }

    pub fn of(&self) -> i64 {
        match self {
            Relation::Edit { of, .. } | Relation::Delete { of } | Relation::React { of, .. } => *of,
        }
    }

    /// The kind of its row and of its `hush read --json` line.
    pub fn kind(&self) -> &'static str {
        match self {
            Relation::Edit { .. } => "edit",
            Relation::Delete { .. } => "delete",
            Relation::React { .. } => "react",
        }
    }
}

/// Why a message is no longer there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Removal {
    /// Its sender deleted it (a valid `delete` was read).
    Deleted,
    /// Its disappearing-messages timer ran out.
    Expired,
    /// The server erased it and the reader holds no valid `delete` for it
    /// (yet: the delete may come later in the log).
    Removed,
}

impl Removal {
    /// What is shown in its place.
    pub fn sentence(self) -> &'static str {
        match self {
            Removal::Deleted => "message deleted",
            Removal::Expired => "message expired",
            Removal::Removed => "message removed by the server",
        }
    }
}

/// What applying a relation to its target changed.
pub enum Applied {
    /// The target was changed (it is now this).
    Changed,
    /// Nothing to do (the target is gone or is not a message).
    Nothing,
}

/// Applies `relation`, sent by `by`, to `target` (the entry at its `of`).
/// The relation was judged valid by `Conversation`; this only changes the
/// target's state: an edit replaces a text's text, a reaction sets or
/// clears `by`'s reaction, a delete turns the target into
/// `Shown::Removed` (its plaintext and attachment dropped).
pub fn apply(target: &mut Shown, relation: &Relation, by: &str) -> Applied {
    match (relation, &mut *target) {
        (
            Relation::Edit { text, .. },
            Shown::Message {
                payload: Payload::Text { text: current, .. },
                state,
                ..
            },
        ) => {
            *current = text.clone();
            state.is_edited = true;
            Applied::Changed
        }
        (Relation::React { emoji, .. }, Shown::Message { state, .. }) => {
            if emoji.is_empty() {
                state.reactions.remove(by);
            } else {
                state.reactions.insert(by.to_owned(), emoji.clone());
            }
            Applied::Changed
        }
        (
            Relation::Delete { .. },
            Shown::Message {
                seq, ts, sender, ..
            },
        ) => {
            *target = Shown::Removed {
                seq: *seq,
                ts: *ts,
                sender: sender.clone(),
                why: Removal::Deleted,
            };
            Applied::Changed
        }
        (Relation::Delete { .. }, Shown::Removed { why, .. }) => {
            *why = Removal::Deleted;
            Applied::Changed
        }
        _ => Applied::Nothing,
    }
}

/// Replaces every entry of `items` whose time ran out (`expires_at` says
/// when each entry expires, if it does) with `Shown::Removed` (expired).
/// Returns the seqs that expired now.
pub fn expire(
    items: &mut [Shown],
    expires_at: impl Fn(i64, i64) -> Option<i64>,
    now_ms: i64,
) -> Vec<i64> {
    let mut expired = Vec::new();
    for item in items.iter_mut() {
        let (seq, ts, sender) = match item {
            Shown::Message {
                seq, ts, sender, ..
            }
            | Shown::Relation {
                seq, ts, sender, ..
            }
            | Shown::Unsupported {
                seq, ts, sender, ..
            } => (*seq, *ts, sender.clone()),
            Shown::Removed {
                seq,
                ts,
                sender,
                why: Removal::Deleted | Removal::Removed,
            } => (*seq, *ts, sender.clone()),
            _ => continue,
        };
        if expires_at(seq, ts).is_some_and(|at| at <= now_ms) {
            *item = Shown::Removed {
                seq,
                ts,
                sender,
                why: Removal::Expired,
            };
            expired.push(seq);
        }
    }
    expired
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A short quote of a message for a reply: "alice: first words…", or
/// `None` if it cannot be shown (gone, or not a message).
pub fn quote(target: &Shown) -> Option<String> {
    const WORDS: usize = 40;
    let Shown::Message {
        sender, payload, ..
    } = target
    else {
        return None;
    };
    let content = match payload {
        Payload::Text { text, .. } => text.split_whitespace().collect::<Vec<_>>().join(" "),
        Payload::File { name, .. } => format!("[file {name}]"),
        _ => return None,
    };
    let mut short: String = content.chars().take(WORDS).collect();
    if content.chars().count() > WORDS {
        short.push('…');
    }
    Some(format!("{sender}: {short}"))
}

/// The sentence for a timer change (PROTOCOL §21).
pub fn timer_sentence(sender: &str, ttl_secs: u32) -> String {
    if ttl_secs == 0 {
        return format!("{sender} turned off disappearing messages");
    }
    format!(
        "{sender} set messages to disappear after {}",
        duration_words(ttl_secs)
    )
}

/// `1 day`, `5 minutes`, `4 weeks`, `90 seconds`: the largest unit that
/// divides the duration exactly.
pub fn duration_words(secs: u32) -> String {
    let units = [
        (604_800, "week"),
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    for (size, name) in units {
        if secs >= size && secs.is_multiple_of(size) {
            let n = secs / size;
            return format!("{n} {name}{}", if n == 1 { "" } else { "s" });
        }
    }
    "0 seconds".into()
}

/// Reads a timer duration as `hush timer` takes it: `off`, `5m`, `1h`,
/// `8h`, `1d`, `1w`, `4w`, or any `<N>s`/`<N>m`/`<N>h`/`<N>d`/`<N>w`.
/// The server enforces its own minimum and the 4-week maximum.
pub fn parse_duration(text: &str) -> Option<u32> {
    let text = text.trim();
    if text == "off" || text == "0" {
        return Some(0);
    }
    let split = text.len().checked_sub(1)?;
    let (number, unit) = text.split_at(split);
    let number: u32 = number.parse().ok()?;
    let size = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    number.checked_mul(size).filter(|secs| *secs > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: i64, sender: &str, text: &str) -> Shown {
        Shown::Message {
            seq,
            ts: 1_000 * seq,
            sender: sender.into(),
            device: None,
            payload: Payload::text(text),
            is_sender_verified: false,
            is_late: false,
            state: MessageState::default(),
        }
    }

    #[test]
    fn an_edit_replaces_the_text_and_marks_it_edited() {
        let mut target = message(1, "alice", "frist");
        let edit = Relation::Edit {
            of: 1,
            text: "first".into(),
        };
        assert!(matches!(
            apply(&mut target, &edit, "alice"),
            Applied::Changed
        ));
        let Shown::Message { payload, state, .. } = &target else {
            panic!("still a message")
        };
        assert!(*payload == Payload::text("first"));
        assert!(state.is_edited);
    }

    #[test]
    fn reactions_keep_one_per_user_and_empty_takes_it_back() {
        let mut target = message(1, "alice", "hi");
        let react = |emoji: &str| Relation::React {
            of: 1,
            emoji: emoji.into(),
        };
        apply(&mut target, &react("👍"), "bob");
        apply(&mut target, &react("👍"), "carol");
        apply(&mut target, &react("❤️"), "bob");
        let Shown::Message { state, .. } = &target else {
            panic!()
        };
        let grouped = state.grouped();
        assert_eq!(grouped["👍"], vec!["carol"]);
        assert_eq!(grouped["❤️"], vec!["bob"]);
        apply(&mut target, &react(""), "bob");
        let Shown::Message { state, .. } = &target else {
            panic!()
        };
        assert_eq!(state.reactions.len(), 1);
    }

    #[test]
    fn a_delete_drops_the_plaintext() {
        let mut target = message(3, "alice", "secret");
        apply(&mut target, &Relation::Delete { of: 3 }, "alice");
        assert!(matches!(
            &target,
            Shown::Removed { seq: 3, sender, why: Removal::Deleted, .. } if sender == "alice"
        ));
        // Nothing applies to a deleted message any more.
        let edit = Relation::Edit {
            of: 3,
            text: "x".into(),
        };
        assert!(matches!(
            apply(&mut target, &edit, "alice"),
            Applied::Nothing
        ));
    }

    #[test]
    fn expired_entries_become_expired_and_others_stay() {
        let mut items = vec![message(1, "alice", "a"), message(2, "bob", "b")];
        let expired = expire(&mut items, |seq, ts| (seq == 1).then_some(ts + 10), 5_000);
        assert_eq!(expired, vec![1]);
        assert!(matches!(
            items[0],
            Shown::Removed {
                why: Removal::Expired,
                ..
            }
        ));
        assert!(matches!(items[1], Shown::Message { .. }));
    }

    #[test]
    fn durations_read_and_print_in_plain_words() {
        assert_eq!(parse_duration("off"), Some(0));
        assert_eq!(parse_duration("5m"), Some(300));
        assert_eq!(parse_duration("1d"), Some(86_400));
        assert_eq!(parse_duration("4w"), Some(2_419_200));
        assert_eq!(parse_duration("2s"), Some(2));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(
            timer_sentence("alice", 86_400),
            "alice set messages to disappear after 1 day"
        );
        assert_eq!(
            timer_sentence("alice", 0),
            "alice turned off disappearing messages"
        );
        assert_eq!(duration_words(90), "90 seconds");
        assert_eq!(duration_words(3_600 * 8), "8 hours");
    }

    #[test]
    fn quotes_are_short() {
        let long = message(1, "alice", &"word ".repeat(30));
        let quoted = quote(&long).unwrap();
        assert!(quoted.starts_with("alice: word word"));
        assert!(quoted.ends_with('…'));
    }
}

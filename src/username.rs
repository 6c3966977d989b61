//! Username rules.
//!
//! A username is 3 to 32 characters of `a-z 0-9 _ . -`, starting with a
//! letter or a digit. Keeping names to this small ASCII set is deliberate:
//! every such name is already in Unicode NFKC form and case-folded, so no
//! two accounts can differ only by width (`ａｌｉｃｅ`), case (`Alice`),
//! compatibility characters (`ﬁ`), combining marks or invisible characters,
//! and usernames are safe in every terminal, log line and signed statement
//! without escaping. Registration refuses anything else.
//!
//! What people type at login is folded the same way (NFKC, then lowercase)
//! before the lookup, so `ＡＬＩＣＥ` finds `alice`: look-alike spellings
//! reach the one account with that name and can never create a second.
//!
//! Within that ASCII set some names still look alike on screen: `alice`,
//! `a1ice` and `aiice`; `bob0` and `bobo`; `mallory` and `rnallory`;
//! `bob_smith` and `bob.smith`. Registration therefore compares each new
//! name's `skeleton` with those of existing accounts and refuses a match
//! (`username_confusable`). The mapping is deliberately short: only pairs
//! that are hard to tell apart in common UI and terminal fonts, since every
//! extra pair takes names away from honest users.

use unicode_normalization::UnicodeNormalization;

pub const MIN_CHARS: usize = 3;
pub const MAX_CHARS: usize = 32;

pub const RULE: &str =
    "a username is 3 to 32 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit";

/// True if `name` may be registered as it is.
pub fn is_valid(name: &str) -> bool {
    let ok_len = (MIN_CHARS..=MAX_CHARS).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    ok_len && ok_chars && ok_start
}

/// The form a typed name is looked up by: NFKC, then lowercase. Inputs are
/// cut to a few times the longest name first, so a huge field costs nothing.
pub fn fold(typed: &str) -> String {
    let head: String = typed.chars().take(MAX_CHARS * 4).collect();
    head.nfkc().collect::<String>().to_lowercase()
}

/// A name with look-alike characters made equal: `0`→`o`; `1`, `i`→`l`;
/// `m`→`rn`; `w`→`vv`; `_`, `-`→`.`. Multi-letter look-alikes are expanded
/// (`m` to `rn`) rather than contracted, so overlaps like `vvv`, `vw` and
/// `wv` all meet at `vvv`. Every output character maps to itself, so the
/// result is a fixed point, and migrations/0004 can compute the same with
/// one `replace()` per rule.
pub fn skeleton(name: &str) -> String {
    let mut out = String::with_capacity(name.len() * 2);
    for c in name.chars() {
        match c {
            '0' => out.push('o'),
            '1' | 'i' => out.push('l'),
            'm' => out.push_str("rn"),
            'w' => out.push_str("vv"),
            '_' | '-' => out.push('.'),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ascii_set_registers() {
        for good in [
            "alice",
            "bob.smith",
            "x_1-2",
            "007",
            "a".repeat(32).as_str(),
        ] {
            assert!(is_valid(good), "{good}");
        }
        for bad in [
            "al",
            "Alice",
            "ａｌｉｃｅ",
            "alicé",
            "alice\u{200b}",
            "ﬁsh",
            "_alice",
            ".bob",
            "a b",
            "",
            &"a".repeat(33),
            "аlice", // Cyrillic а
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn look_alike_spellings_fold_to_the_one_registrable_name() {
        for typed in ["alice", "Alice", "ALICE", "ａｌｉｃｅ", "ＡＬＩＣＥ"] {
            assert_eq!(fold(typed), "alice", "{typed}");
        }
        assert_eq!(fold("ﬁsh"), "fish");
        // Every registrable name is a fixed point of the folding, so two
        // accounts can never fold to the same name.
        for name in ["alice", "bob.smith", "x_1-2"] {
            assert_eq!(fold(name), name);
        }
        // A different script stays different, and cannot be registered.
        assert_ne!(fold("аlice"), "alice");
    }

    #[test]
    fn folding_a_huge_input_is_cut_short() {
        let huge = "Ａ".repeat(100_000);
        assert_eq!(fold(&huge).chars().count(), MAX_CHARS * 4);
    }

    #[test]
    fn look_alike_ascii_names_share_a_skeleton() {
        for (a, b) in [
            ("alice", "a1ice"),
            ("alice", "aiice"),
            ("alice", "a1lce"),
            ("bob0", "bobo"),
            ("mallory", "rnallory"),
            ("william", "vvilliarn"),
            ("vvv", "vw"),
            ("vw", "wv"),
            ("bob_smith", "bob.smith"),
            ("bob-smith", "bob_smith"),
            ("l00l", "1oo1"),
        ] {
            assert_eq!(skeleton(a), skeleton(b), "{a} vs {b}");
        }
    }

    #[test]
    fn different_looking_names_keep_different_skeletons() {
        for (a, b) in [
            ("alice", "alicia"),
            ("bob", "rob"),
            ("bob.smith", "bobsmith"),
            ("carol", "caro1x"),
            ("dave", "dove"),
            ("rn", "n"),
            ("eve2", "eve"),
        ] {
            assert_ne!(skeleton(a), skeleton(b), "{a} vs {b}");
        }
    }

    #[test]
    fn a_skeleton_is_its_own_skeleton() {
        for name in ["alice", "a1ice", "mw_0-i.x", "william"] {
            let once = skeleton(name);
            assert_eq!(skeleton(&once), once, "{name}");
        }
    }
}

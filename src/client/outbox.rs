//! The durable outbox: every message the user sends is written here, sealed,
//! before it is handed to the link, and stays until the server acknowledges
//! it (or refuses it for good). A run that ends with messages unsent (a
//! second `/quit`, Ctrl-C, a crash, a power cut) leaves them for the next
//! `hush chat` or `hush send`, which sends them first, in order, with the
//! same client ids, so the server stores each exactly once (PROTOCOL §11).
//!
//! What is kept is the plaintext payload, not a sealed body: bodies are
//! sealed when sent, for the room's members and sender key of that moment.
//!
//! The file is an append-only journal, so queueing 2,000 lines costs 2,000
//! small appends rather than 2,000 rewrites of a growing file. It starts
//! with `MAGIC`, then records `length (u32, big-endian) | sealed record`,
//! each sealed on its own with `LocalKeys` (purpose `outbox`): an *add*
//! (client id, room, payload) or a *done* (client id). An add is fsync'ed
//! before `add` returns; a done is not (losing one only means a resend that
//! the server answers with a duplicate ack). Opening compacts the journal
//! to its pending adds, and it is cut back to `MAGIC` whenever nothing is
//! pending. A torn last record (a crash mid-write) is dropped; records that
//! do not open (damaged, or another identity's) are counted and the file is
//! copied aside before compaction, never silently thrown away.
//!
//! One process owns an outbox at a time: it holds an exclusive `flock` on
//! `PATH.lock` for its lifetime. The lock is on a sibling file rather than
//! the journal so that compaction can replace the journal atomically
//! (rename) without the lock going with the old inode. A process that
//! cannot get the lock keeps its queue in memory only (`is_durable` false).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use zeroize::Zeroizing;

use super::account::Account;
use super::local_seal::LocalKeys;
use super::transcript::new_client_id;
use crate::crypto::envelope::{Content, Payload};
use crate::crypto::private_file::{create_private_dir, try_lock_private_file, write_private_file};
use crate::store::RoomId;

/// The first bytes of an outbox journal (format version 1).
const MAGIC: &[u8] = b"hush-outbox-1\n";
/// The purpose the records are sealed under (`LocalKeys`).
pub const PURPOSE: &str = "outbox";
/// Record kinds, the first byte of a record's plaintext.
const ADD: u8 = 1;
const DONE: u8 = 2;
/// Longest record accepted when reading (a 1 MiB file, base64 in JSON,
/// and the seal's overhead fit well within it).
const MAX_RECORD: usize = 16 << 20;

/// Where `user`'s outbox lives in the key store at `keys_dir`.
pub fn outbox_path(keys_dir: &Path, user: &str) -> PathBuf {
    keys_dir.join(format!("{user}.outbox"))
}

/// Opens the outbox of the account's user in its key store, sealed under
/// keys derived from its identity.
pub fn open_for(account: &Account) -> anyhow::Result<Outbox> {
    let path = outbox_path(account.keys.dir(), account.username());
    Outbox::open(&path, LocalKeys::new(&account.identity, PURPOSE)?)
}

/// A message waiting to be sent. No `Debug`: it holds plaintext.
pub struct Queued {
    /// Chosen once, when the message was written; every send of it uses it.
    pub client_id: String,
    pub room: RoomId,
    pub payload: Payload,
    /// When this run queued it (or opened the outbox holding it).
    pub added: Instant,
}

/// The queue of messages not yet acknowledged, in the order they were
/// written, mirrored in the journal when this process owns it.
pub struct Outbox {
    path: PathBuf,
    keys: LocalKeys,
    journal: Option<Journal>,
    pending: VecDeque<Queued>,
    unreadable: usize,
    kept_aside: Option<PathBuf>,
}

struct Journal {
    file: File,
    /// Holds the `flock`; closing it releases the outbox.
    _lock: File,
    /// Whether anything follows `MAGIC` in the file.
    has_records: bool,
}

impl Outbox {
    /// Opens (creating if need be) the outbox journal at `path`, locks it
    /// for this process and loads what an earlier run left. If another
    /// process holds it, the outbox is kept in memory only.
    pub fn open(path: &Path, keys: LocalKeys) -> anyhow::Result<Self> {
        let mut outbox = Self {
            path: path.to_owned(),
            keys,
            journal: None,
            pending: VecDeque::new(),
            unreadable: 0,
            kept_aside: None,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let Some(lock) = lock(&lock_path(path))? else {
            return Ok(outbox);
        };
        let loaded = outbox.load()?;
        if loaded.needs_rewrite {
            if outbox.unreadable > 0 {
                let aside = aside_path(path);
                std::fs::copy(path, &aside)
                    .with_context(|| format!("keeping {} aside", path.display()))?;
                outbox.kept_aside = Some(aside);
            }
            let mut contents = MAGIC.to_vec();
            for record in &loaded.records {
                contents.extend_from_slice(&frame_len(record)?);
                contents.extend_from_slice(record);
            }
            write_private_file(path, &contents)
                .with_context(|| format!("writing {}", path.display()))?;
            sync_dir(path);
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        outbox.journal = Some(Journal {
            file,
            _lock: lock,
            has_records: !loaded.records.is_empty(),
        });
        Ok(outbox)
    }

    /// Whether this process owns the journal; if not, what it queues is
    /// lost when it exits.
    pub fn is_durable(&self) -> bool {
        self.journal.is_some()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records of an earlier run that no key of this identity opens, and
    /// where a copy of the file was kept.
    pub fn unreadable(&self) -> Option<(usize, &Path)> {
        Some((self.unreadable, self.kept_aside.as_deref()?)).filter(|(n, _)| *n > 0)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The messages waiting, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Queued> {
        self.pending.iter()
    }

    pub fn get(&self, client_id: &str) -> Option<&Queued> {
        self.pending.iter().find(|q| q.client_id == client_id)
    }

    /// When the longest-waiting message was queued.
    pub fn oldest(&self) -> Option<Instant> {
        self.pending.iter().map(|q| q.added).min()
    }

    /// Queues a message under a new client id, written durably (when this
    /// process owns the journal) before this returns. On an error nothing
    /// is queued.
    pub fn add(&mut self, room: RoomId, payload: Payload) -> anyhow::Result<String> {
        let client_id = new_client_id();
        if let Some(journal) = &mut self.journal {
            let bytes = payload.to_bytes();
            let mut plain = Zeroizing::new(Vec::with_capacity(bytes.len() + 80));
            plain.push(ADD);
            push_client_id(&mut plain, &client_id)?;
            plain.extend_from_slice(&room.0.to_be_bytes());
            plain.extend_from_slice(&bytes);
            let record = self.keys.seal(&plain)?;
            journal
                .append(&record, true)
                .with_context(|| format!("writing to {}", self.path.display()))?;
        }
        self.pending.push_back(Queued {
            client_id: client_id.clone(),
            room,
            payload,
            added: Instant::now(),
        });
        Ok(client_id)
    }

    /// Removes an acknowledged (or refused for good) message. Returns
    /// whether it was queued. It leaves the queue even if the journal
    /// cannot be written; the error says so (the next run would send it
    /// again, and the server would recognise it).
    pub fn done(&mut self, client_id: &str) -> anyhow::Result<bool> {
        let Some(at) = self.pending.iter().position(|q| q.client_id == client_id) else {
            return Ok(false);
        };
        self.pending.remove(at);
        let Some(journal) = &mut self.journal else {
            return Ok(true);
        };
        let written = if self.pending.is_empty() {
            journal.clear()
        } else {
            let mut plain = Zeroizing::new(Vec::with_capacity(66));
            plain.push(DONE);
            push_client_id(&mut plain, client_id)?;
            let record = self.keys.seal(&plain)?;
            journal.append(&record, false)
        };
        written.with_context(|| format!("writing to {}", self.path.display()))?;
        Ok(true)
    }

    /// Reads the journal into `pending`; says what a compacted file holds.
    fn load(&mut self) -> anyhow::Result<Loaded> {
        let mut bytes = Vec::new();
        match File::open(&self.path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes)
                    .with_context(|| format!("reading {}", self.path.display()))?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Loaded {
                    records: Vec::new(),
                    needs_rewrite: true,
                });
            }
            Err(err) => {
                return Err(err).with_context(|| format!("reading {}", self.path.display()));
            }
        }
        let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
            // Not a journal this version wrote: keep it aside, start afresh.
            self.unreadable = usize::from(!bytes.is_empty());
            return Ok(Loaded {
                records: Vec::new(),
                needs_rewrite: true,
            });
        };
        let mut adds: Vec<(String, Vec<u8>)> = Vec::new();
        let mut needs_rewrite = false;
        let now = Instant::now();
        while !rest.is_empty() {
            let Some((len, after)) = rest.split_first_chunk::<4>() else {
                needs_rewrite = true; // torn length
                break;
            };
            let len = u32::from_be_bytes(*len) as usize;
            if len > MAX_RECORD || after.len() < len {
                needs_rewrite = true; // torn or damaged record
                if len > MAX_RECORD {
                    self.unreadable += 1;
                }
                break;
            }
            let (sealed, after) = after.split_at(len);
            rest = after;
            match self
                .keys
                .open(sealed)
                .and_then(|plain| Record::parse(&plain))
            {
                Some(Record::Add {
                    client_id,
                    room,
                    payload,
                }) => {
                    adds.push((client_id.clone(), sealed.to_vec()));
                    self.pending.push_back(Queued {
                        client_id,
                        room,
                        payload,
                        added: now,
                    });
                }
                Some(Record::Done { client_id }) => {
                    needs_rewrite = true;
                    adds.retain(|(id, _)| *id != client_id);
                    self.pending.retain(|q| q.client_id != client_id);
                }
                None => {
                    needs_rewrite = true;
                    self.unreadable += 1;
                }
            }
        }
        Ok(Loaded {
            records: adds.into_iter().map(|(_, sealed)| sealed).collect(),
            needs_rewrite,
        })
    }
}

/// What opening found: the sealed add records still pending, and whether
/// the file holds anything else (and so is rewritten with just those).
struct Loaded {
    records: Vec<Vec<u8>>,
    needs_rewrite: bool,
}

impl Journal {
    fn append(&mut self, record: &[u8], is_synced: bool) -> std::io::Result<()> {
        let mut framed = frame_len(record).map_err(std::io::Error::other)?.to_vec();
        framed.extend_from_slice(record);
        self.file.write_all(&framed)?;
        self.has_records = true;
        if is_synced {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Nothing is pending: cut the file back to its header.
    fn clear(&mut self) -> std::io::Result<()> {
        if self.has_records {
            self.file.set_len(MAGIC.len() as u64)?;
            self.file.sync_data()?;
            self.has_records = false;
        }
        Ok(())
    }
}

/// One record's plaintext.
enum Record {
    Add {
        client_id: String,
        room: RoomId,
        payload: Payload,
    },
    Done {
        client_id: String,
    },
}

impl Record {
    fn parse(plain: &[u8]) -> Option<Self> {
        let (&kind, rest) = plain.split_first()?;
        let (&id_len, rest) = rest.split_first()?;
        let (id, rest) = rest.split_at_checked(usize::from(id_len))?;
        let client_id = std::str::from_utf8(id).ok()?.to_owned();
        match kind {
            ADD => {
                let (room, payload) = rest.split_first_chunk::<8>()?;
                let Ok(Content::Payload(payload)) = Payload::from_bytes(payload) else {
                    return None;
                };
                Some(Record::Add {
                    client_id,
                    room: RoomId(i64::from_be_bytes(*room)),
                    payload,
                })
            }
            DONE if rest.is_empty() => Some(Record::Done { client_id }),
            _ => None,
        }
    }
}

fn push_client_id(plain: &mut Vec<u8>, client_id: &str) -> anyhow::Result<()> {
    let len = u8::try_from(client_id.len()).context("client id too long")?;
    plain.push(len);
    plain.extend_from_slice(client_id.as_bytes());
    Ok(())
}

fn frame_len(record: &[u8]) -> anyhow::Result<[u8; 4]> {
    let len = u32::try_from(record.len())
        .ok()
        .filter(|len| *len as usize <= MAX_RECORD)
        .context("outbox record too large")?;
    Ok(len.to_be_bytes())
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// A free name next to `path` for a copy of a journal that did not open.
fn aside_path(path: &Path) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".unreadable-{stamp}"));
    PathBuf::from(name)
}

/// Makes a rename in `path`'s directory durable; best effort.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

/// `try_lock_private_file` with the path in the error.
fn lock(path: &Path) -> anyhow::Result<Option<File>> {
    try_lock_private_file(path).with_context(|| format!("locking {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::keystore::Identity;
    use crate::crypto::test_support::fixture_key;

    fn keys(name: &str) -> LocalKeys {
        let identity = Identity {
            username: name.to_owned(),
            current: fixture_key(name),
            previous: Vec::new(),
        };
        LocalKeys::new(&identity, PURPOSE).unwrap()
    }

    fn texts(outbox: &Outbox) -> Vec<String> {
        outbox
            .pending()
            .map(|q| match &q.payload {
                Payload::Text { text, .. } => text.clone(),
                Payload::File { name, .. } => format!("file {name}"),
                _ => "relation".to_owned(),
            })
            .collect()
    }

    #[test]
    fn what_is_not_done_survives_a_restart_in_order_with_its_client_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = outbox_path(dir.path(), "alice");
        let mut outbox = Outbox::open(&path, keys("alice")).unwrap();
        assert!(outbox.is_durable());
        let ids: Vec<String> = (0..5)
            .map(|i| {
                outbox
                    .add(RoomId(7), Payload::text(format!("queued line {i}")))
                    .unwrap()
            })
            .collect();
        outbox
            .add(
                RoomId(8),
                Payload::file("a.txt", "text/plain", b"attached".to_vec()),
            )
            .unwrap();
        assert!(outbox.done(&ids[0]).unwrap());
        assert!(outbox.done(&ids[3]).unwrap());
        assert!(!outbox.done("never queued").unwrap());
        drop(outbox);

        let again = Outbox::open(&path, keys("alice")).unwrap();
        assert_eq!(
            texts(&again),
            [
                "queued line 1",
                "queued line 2",
                "queued line 4",
                "file a.txt"
            ]
        );
        let kept: Vec<&str> = again.pending().map(|q| q.client_id.as_str()).collect();
        assert_eq!(kept[..3], [&*ids[1], &*ids[2], &*ids[4]]);
        assert_eq!(again.pending().last().unwrap().room, RoomId(8));
        assert!(again.unreadable().is_none());
    }

    #[test]
    fn the_file_holds_no_plaintext_is_private_and_empties_when_all_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = outbox_path(dir.path(), "alice");
        let mut outbox = Outbox::open(&path, keys("alice")).unwrap();
        let first = outbox
            .add(RoomId(1), Payload::text("secret words"))
            .unwrap();
        let second = outbox
            .add(RoomId(1), Payload::text("more secret words"))
            .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
        assert!(!bytes.windows(first.len()).any(|w| w == first.as_bytes()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        outbox.done(&first).unwrap();
        outbox.done(&second).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), MAGIC);
    }

    #[test]
    fn a_second_owner_gets_a_memory_only_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = outbox_path(dir.path(), "alice");
        let mut first = Outbox::open(&path, keys("alice")).unwrap();
        first.add(RoomId(1), Payload::text("one")).unwrap();
        let mut second = Outbox::open(&path, keys("alice")).unwrap();
        assert!(!second.is_durable());
        assert!(second.is_empty(), "it does not see the owner's queue");
        second.add(RoomId(1), Payload::text("two")).unwrap();
        drop(second);
        drop(first);
        let third = Outbox::open(&path, keys("alice")).unwrap();
        assert_eq!(texts(&third), ["one"]);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_foreign_records_are_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = outbox_path(dir.path(), "alice");
        let mut outbox = Outbox::open(&path, keys("alice")).unwrap();
        outbox.add(RoomId(1), Payload::text("kept")).unwrap();
        drop(outbox);
        // A record sealed by someone else, then half a record.
        let foreign = keys("bob").seal(b"\x02\x01x").unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&(foreign.len() as u32).to_be_bytes())
            .unwrap();
        file.write_all(&foreign).unwrap();
        file.write_all(&[0, 0, 1]).unwrap();
        drop(file);

        let mut again = Outbox::open(&path, keys("alice")).unwrap();
        assert_eq!(texts(&again), ["kept"]);
        let (count, aside) = again.unreadable().unwrap();
        assert_eq!(count, 1);
        assert!(aside.exists());
        // The compacted journal takes new records after the good one.
        again.add(RoomId(1), Payload::text("after")).unwrap();
        drop(again);
        let third = Outbox::open(&path, keys("alice")).unwrap();
        assert_eq!(texts(&third), ["kept", "after"]);
        assert!(third.unreadable().is_none());
    }
}

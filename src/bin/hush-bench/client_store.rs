//! `client`: the CLI's local store on a long room (issue 15). Seeds a room
//! with M real sealed messages from bob (a sender-key distribution per
//! device, then messages sealed and signed for real by several threads,
//! posted over the library's link with many in flight), then times the
//! real `hush` binary as alice, a member with an empty store: the first
//! `hush read --last 50` (reads, checks and saves the whole room: a rate
//! in messages/s), then `hush send` and `hush read --last 50` again (each
//! a wall time: they read only what is new). Each timed command is a
//! fresh process, so it includes opening the key store and the session.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hush::client::api::Api;
use hush::client::keystore::KeyStore;
use hush::client::link::{Event, Link};
use hush::client::transcript::new_client_id;
use hush::crypto::device::DeviceId;
use hush::crypto::envelope::Payload;
use hush::crypto::keys::IdentityPrivateKey;
use hush::crypto::sender_keys::{Recipient, SenderKeyState};
use hush::protocol::b64;
use hush::store::RoomId;
use tokio::sync::mpsc;

const PASSWORD: &str = "bench-client-password";
const PASSPHRASE: &str = "bench-client-passphrase";
/// Sends in flight (posted, not acknowledged) while seeding, at most.
const SEED_IN_FLIGHT: usize = 2000;

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Messages in the room before the first read.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Threads sealing (and signing) the seeded messages, each as its own
    /// device of the sender.
    #[arg(long, default_value_t = 2)]
    pub sealers: usize,
    /// Times `hush send` and the following `hush read --last 50` are run.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// The `hush` binary to time (default: the one next to hush-bench).
    #[arg(long)]
    pub hush: Option<PathBuf>,
}

impl ClientArgs {
    pub fn quick() -> Self {
        Self {
            messages: 200,
            sealers: 2,
            repeats: 1,
            hush: None,
        }
    }
}

pub struct ClientResult {
    pub seeded: usize,
    pub seed_secs: f64,
    pub first_read_secs: f64,
    pub first_read_lines: usize,
    pub sends: Vec<f64>,
    pub reads: Vec<f64>,
}

impl ClientResult {
    pub fn first_read_per_sec(&self) -> f64 {
        self.seeded as f64 / self.first_read_secs.max(1e-9)
    }
}

/// The median of `values` (0 if empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// One bench user: a key store holding its identity, and a logged-in API.
struct Person {
    name: String,
    key: Arc<IdentityPrivateKey>,
    api: Api,
    token: String,
}

async fn person(
    base: &str,
    keys: &Path,
    name: String,
    key: Arc<IdentityPrivateKey>,
) -> Result<Person> {
    KeyStore::new(keys).create(&name, &key, PASSPHRASE)?;
    let api = Api::new(base);
    api.register(
        &name,
        PASSWORD,
        key.public().spki_der(),
        None,
        |statement| key.sign(statement).expect("signing with a bench key works"),
    )
    .await
    .with_context(|| format!("registering {name}"))?;
    let (api, login) = api.login(&name, PASSWORD).await?;
    Ok(Person {
        name,
        key,
        api,
        token: login.token,
    })
}

pub async fn run(
    base: &str,
    reader_key: Arc<IdentityPrivateKey>,
    args: &ClientArgs,
) -> Result<ClientResult> {
    let hush = match &args.hush {
        Some(path) => path.clone(),
        None => crate::target::sibling_hush()
            .context("no `hush` binary next to hush-bench: build it, or pass --hush PATH")?,
    };
    let mut tag = [0u8; 3];
    getrandom::fill(&mut tag).expect("the OS random source works");
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let dir = TempDir(std::env::temp_dir().join(format!("hush-bench-client-{tag}")));
    std::fs::create_dir_all(&dir.0)?;
    let keys = dir.0.join("keys");
    eprintln!("client: generating the sender's RSA-2048 key…");
    let sender_key = Arc::new(
        tokio::task::spawn_blocking(|| IdentityPrivateKey::generate(2048, |_| {})).await??,
    );
    let alice = person(base, &keys, format!("cs{tag}-alice"), reader_key).await?;
    let bob = person(base, &keys, format!("cs{tag}-bob"), sender_key).await?;
    let room = alice.api.create_room(&format!("long{tag}")).await?.id;
    alice.api.invite(room, &bob.name).await?;
    bob.api.join(room).await?;

    eprintln!("client: seeding {} sealed messages…", args.messages);
    let started = Instant::now();
    seed(base, &bob, &alice, room, args).await?;
    let seed_secs = started.elapsed().as_secs_f64();

    let hush_cmd = |cmd: &[&str]| -> Result<(f64, String)> {
        let started = Instant::now();
        let output = Command::new(&hush)
            .args(cmd)
            .env("HUSH_SERVER", base)
            .env("HUSH_KEYS", &keys)
            .env("HUSH_USER", &alice.name)
            .env("HUSH_PASSPHRASE", PASSPHRASE)
            .env("HUSH_PASSWORD", PASSWORD)
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", hush.display()))?;
        let secs = started.elapsed().as_secs_f64();
        if !output.status.success() {
            bail!(
                "hush {} failed: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok((secs, String::from_utf8_lossy(&output.stdout).into_owned()))
    };
    let room_arg = room.0.to_string();
    // Log in once (and save the session), so the timed commands do not
    // include the server's password hashing.
    hush_cmd(&["room", "list"])?;
    let read = ["read", "--room", room_arg.as_str(), "--last", "50"];
    let (first_read_secs, out) = hush_cmd(&read)?;
    let first_read_lines = out.lines().count();
    ensure!(
        first_read_lines == 50.min(args.messages + 3),
        "the first read printed {first_read_lines} lines"
    );
    let mut sends = Vec::new();
    let mut reads = Vec::new();
    for i in 0..args.repeats.max(1) {
        let text = format!("bench line {i}");
        sends.push(hush_cmd(&["send", "--room", &room_arg, &text])?.0);
        let (secs, out) = hush_cmd(&read)?;
        ensure!(out.contains(&text), "the read after a send shows it");
        reads.push(secs);
    }
    Ok(ClientResult {
        seeded: args.messages,
        seed_secs,
        first_read_secs,
        first_read_lines,
        sends,
        reads,
    })
}

/// Posts `args.messages` messages from `sender` into `room`: each sealing
/// thread is a device with its own chain (distribution first, then its
/// messages, in order); one link posts them all and counts the acks.
async fn seed(
    base: &str,
    sender: &Person,
    reader: &Person,
    room: RoomId,
    args: &ClientArgs,
) -> Result<()> {
    let (body_tx, mut body_rx) = mpsc::channel::<Vec<u8>>(4096);
    let sealers = args.sealers.max(1);
    let mut threads = Vec::new();
    for s in 0..sealers {
        let count = args.messages / sealers + usize::from(s < args.messages % sealers);
        let (body_tx, key) = (body_tx.clone(), sender.key.clone());
        let members = [
            (sender.name.clone(), sender.key.public().clone()),
            (reader.name.clone(), reader.key.public().clone()),
        ];
        let name = sender.name.clone();
        threads.push(tokio::task::spawn_blocking(move || -> Result<()> {
            let recipients: Vec<Recipient<'_>> = members
                .iter()
                .map(|(username, identity)| Recipient { username, identity })
                .collect();
            let mut state = SenderKeyState::new(room.0, &name, DeviceId::generate()?);
            let send = |body: Vec<u8>| {
                body_tx
                    .blocking_send(body)
                    .map_err(|_| anyhow::anyhow!("the poster stopped"))
            };
            send(state.rotate(&recipients, &key)?)?;
            for i in 0..count {
                let text =
                    format!("bench message {s}-{i}: the quick brown fox jumps over the lazy dog");
                send(state.seal(&Payload::text(text), &key)?)?;
            }
            Ok(())
        }));
    }
    drop(body_tx);
    let mut link = Link::start(base, sender.token.clone());
    let (mut sent, mut acked, mut is_open) = (0usize, 0usize, true);
    while is_open || acked < sent {
        tokio::select! {
            body = body_rx.recv(), if is_open && sent - acked < SEED_IN_FLIGHT => match body {
                Some(body) => {
                    link.send(room, new_client_id(), b64::encode(&body)).await;
                    sent += 1;
                }
                None => is_open = false,
            },
            event = tokio::time::timeout(Duration::from_secs(60), link.events.recv()) => match event {
                Ok(Some(Event::Acked { .. })) => acked += 1,
                Ok(Some(Event::SendFailed { message, .. })) => bail!("a seeded message was refused: {message}"),
                Ok(Some(Event::Unauthorized)) => bail!("the server refused the sender's session"),
                Ok(Some(_)) => {}
                Ok(None) => bail!("the link ended"),
                Err(_) => bail!("no ack for 60 s while seeding ({acked} of {sent})"),
            },
        }
    }
    for thread in threads {
        thread.await??;
    }
    Ok(())
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

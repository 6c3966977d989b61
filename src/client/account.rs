//! What every client command starts from: who I am (identity keys opened
//! with the passphrase), a logged-in API client (the saved session, or a
//! fresh login: see `session`), and the peer directory. Secrets come from
//! the environment (`HUSH_PASSWORD`, `HUSH_PASSPHRASE`) for scripts, or from
//! a prompt that does not echo; the password only when a login is needed.

use anyhow::{Context, bail};

use super::api::{Api, Room};
use super::device::DeviceClaim;
use super::directory::Directory;
use super::keystore::{Identity, KeyStore};
use super::session;
use crate::cli::{ClientOpts, Target};
use crate::store::RoomId;

pub struct Account {
    pub api: Api,
    pub identity: Identity,
    pub directory: Directory,
    pub keys: KeyStore,
    /// The device this run sends as, held until the command ends.
    pub device: DeviceClaim,
    /// Users this account blocks (PROTOCOL §21), loaded by the commands
    /// that show messages (`social::load_blocked`); their messages are
    /// passed over unread.
    pub blocked: std::collections::HashSet<String>,
}

impl Account {
    pub fn username(&self) -> &str {
        &self.identity.username
    }

    /// Opens the identity and logs in (or resumes the saved session), with
    /// secrets from the environment or prompts.
    pub async fn open(opts: &ClientOpts) -> anyhow::Result<Self> {
        let user = require_user(opts)?;
        let passphrase = passphrase(&format!("Passphrase for {user}'s key: "))?;
        Self::open_asking(
            &opts.server,
            KeyStore::new(&opts.keys_dir),
            &user,
            passphrase,
            || password(&user),
        )
        .await
    }

    /// Opens `user`'s identity from `keys` and logs in to `server` with
    /// `password`, unless the saved session is still good.
    pub async fn open_with(
        server: &str,
        keys: KeyStore,
        user: &str,
        passphrase: String,
        password: &str,
    ) -> anyhow::Result<Self> {
        Self::open_asking(server, keys, user, passphrase, || Ok(password.to_owned())).await
    }

    /// Like `open_with`, calling `password` only if a login is needed.
    pub async fn open_asking(
        server: &str,
        keys: KeyStore,
        user: &str,
        passphrase: String,
        password: impl FnOnce() -> anyhow::Result<String>,
    ) -> anyhow::Result<Self> {
        let identity = open_identity(&keys, user, passphrase).await?;
        let api = session::resume_or_login(server, &keys, &identity, password).await?;
        let directory = Directory::new(api.clone(), keys.load_trust(user)?);
        let device = DeviceClaim::claim(keys.dir(), user)?;
        Ok(Self {
            api,
            identity,
            directory,
            keys,
            device,
            blocked: Default::default(),
        })
    }

    /// Saves pins learnt during the command and prints key notices.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.print_notices();
        if self.directory.is_dirty() {
            self.keys
                .save_trust(&self.identity.username, self.directory.trust_store())?;
        }
        Ok(())
    }

    pub fn print_notices(&mut self) {
        for notice in self.directory.take_notices() {
            eprintln!("hush: {notice}");
        }
    }

    /// The room or DM a `--room`/`--to` pair names.
    pub async fn resolve(&self, target: &Target) -> anyhow::Result<Room> {
        match (&target.room, &target.to) {
            (Some(room), _) => find_room(&self.api, room).await,
            (None, Some(peer)) => self
                .api
                .open_dm(peer)
                .await
                .with_context(|| format!("opening the DM with {peer}")),
            (None, None) => bail!("say which conversation: --room ROOM or --to USER"),
        }
    }
}

/// A group room among the caller's rooms, by id or by name.
pub async fn find_room(api: &Api, name_or_id: &str) -> anyhow::Result<Room> {
    let rooms = api.rooms().await?;
    let name = name_or_id.trim_start_matches('#');
    if let Ok(id) = name.parse::<i64>()
        && let Some(room) = rooms.iter().find(|r| r.id == RoomId(id))
    {
        return Ok(room.clone());
    }
    let matches: Vec<&Room> = rooms
        .iter()
        .filter(|r| r.name.as_deref() == Some(name))
        .collect();
    match matches.as_slice() {
        [room] => Ok((*room).clone()),
        [] => bail!("you are not in a room called {name_or_id:?} (see `hush room list`)"),
        _ => bail!(
            "several of your rooms are called {name_or_id:?}; use its id (see `hush room list`)"
        ),
    }
}

/// Opens `user`'s current and old identity keys (slow: off the runtime).
pub async fn open_identity(
    keys: &KeyStore,
    user: &str,
    passphrase: String,
) -> anyhow::Result<Identity> {
    tokio::task::spawn_blocking({
        let keys = keys.clone();
        let user = user.to_owned();
        move || keys.open(&user, &passphrase)
    })
    .await?
}

pub fn require_user(opts: &ClientOpts) -> anyhow::Result<String> {
    opts.user
        .clone()
        .context("say who you are: --user NAME or HUSH_USER")
}

/// The key passphrase: `HUSH_PASSPHRASE`, else a prompt.
pub fn passphrase(prompt: &str) -> anyhow::Result<String> {
    secret("HUSH_PASSPHRASE", prompt)
}

/// The account password: `HUSH_PASSWORD`, else a prompt.
pub fn password(user: &str) -> anyhow::Result<String> {
    secret("HUSH_PASSWORD", &format!("Password for {user}: "))
}

fn secret(var: &str, prompt: &str) -> anyhow::Result<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => rpassword::prompt_password(prompt)
            .with_context(|| format!("reading a secret (or set {var})")),
    }
}

/// A new passphrase, asked twice when prompting.
pub fn new_passphrase(user: &str) -> anyhow::Result<String> {
    if let Ok(value) = std::env::var("HUSH_PASSPHRASE")
        && !value.is_empty()
    {
        return Ok(value);
    }
    let first = rpassword::prompt_password(format!("New passphrase for {user}'s key: "))?;
    let second = rpassword::prompt_password("Again: ")?;
    if first != second {
        bail!("the passphrases differ");
    }
    if first.is_empty() {
        bail!("the passphrase must not be empty");
    }
    Ok(first)
}

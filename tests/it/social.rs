//! PROTOCOL §21's social parts with the real `hush` binary against a real
//! server: receipts and typing between two `hush chat` processes (live,
//! kept across a restart of the chat, never in the log), the read-receipt
//! setting, message requests, blocking, declined invitations and room
//! admins.

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::cli_support::{Lines, fixture_key_store, hush, hush_command, ok};
use crate::support::{TestApp, spawn_app};

/// A running `hush chat` with its input and output.
struct Chat {
    child: Child,
    input: ChildStdin,
    out: Lines,
}

impl Chat {
    /// Starts `hush chat` as `user` and waits until its room has caught up.
    fn start(url: &str, keys: &Path, user: &str, caught_up: &str) -> Result<Self> {
        let mut child = hush_command(url, keys, user)
            .arg("chat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let input = child.stdin.take().context("chat stdin")?;
        let mut out = Lines::from(child.stdout.take().context("chat stdout")?);
        out.wait_for(&format!("hush chat as {user}"))?;
        out.wait_for(caught_up)?;
        Ok(Self { child, input, out })
    }

    /// Types `text` without Enter.
    fn type_part(&mut self, text: &str) -> Result<()> {
        self.input.write_all(text.as_bytes())?;
        self.input.flush()?;
        Ok(())
    }

    fn line(&mut self, text: &str) -> Result<()> {
        writeln!(self.input, "{text}")?;
        Ok(())
    }

    fn quit(mut self) -> Result<Lines> {
        self.line("/quit")?;
        let status = self.child.wait()?;
        ensure!(status.success(), "hush chat exits cleanly: {status}");
        Ok(self.out)
    }
}

/// `hush ARGS` as `user`; its stdout if it succeeded.
fn run(app: &TestApp, keys: &Path, user: &str, args: &[&str]) -> Result<String> {
    ok(hush(&app.base_url, keys, user, args)?)
}

/// A group room `name` made by `creator` with `members` invited and joined.
fn team(app: &TestApp, keys: &Path, creator: &str, name: &str, members: &[&str]) -> Result<()> {
    run(app, keys, creator, &["room", "create", name])?;
    for member in members {
        run(app, keys, creator, &["room", "invite", name, member])?;
        run(app, keys, member, &["room", "join", name])?;
    }
    Ok(())
}

/// The bodies of every `message` entry in the server's database.
async fn message_bodies(app: &TestApp) -> Result<Vec<Vec<u8>>> {
    let db = app.sql().await?;
    let bodies: Vec<Vec<u8>> =
        hush::store::db::query("SELECT body FROM entries WHERE kind = 'message' ORDER BY seq")
            .fetch_all_scalars(&db)
            .await?;
    db.close().await;
    Ok(bodies)
}

fn json_lines(text: &str) -> Result<Vec<Value>> {
    text.lines()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typing_and_read_receipts_reach_the_other_chat_live_and_never_touch_the_log() -> Result<()>
{
    let app = spawn_app().await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&app.base_url, home.path(), &["alice", "bob"])?;
    team(&app, &keys, "alice", "team", &["bob"])?;
    let url = app.base_url.clone();

    let mut bob = Chat::start(&url, &keys, "bob", "--- #team ---")?;
    let mut alice = Chat::start(&url, &keys, "alice", "--- #team ---")?;

    // Bob types part of a line: alice sees it at once.
    bob.type_part("hel")?;
    alice.out.wait_for("* bob is typing…")?;
    bob.type_part("lo from bob\n")?;
    alice.out.wait_for("bob: hello from bob")?;
    // Alice had it on screen: bob learns she has seen it.
    bob.out.wait_for("* seen by alice")?;

    alice.line("hi back")?;
    bob.out.wait_for("alice: hi back")?;
    alice.out.wait_for("* seen by bob")?;

    // A new chat of alice's learns bob's receipt from the server's memory.
    alice.quit()?;
    let mut alice = Chat::start(&url, &keys, "alice", "--- #team ---")?;
    alice.out.wait_for("* seen by bob")?;
    alice.quit()?;
    bob.quit()?;

    // The log holds the two messages and one sender-key distribution per
    // user, and no signal at all.
    let bodies = message_bodies(&app).await?;
    let kinds: Vec<u8> = bodies.iter().map(|body| body[5]).collect();
    assert_eq!(kinds.iter().filter(|k| **k == 0x03).count(), 0, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == 0x01).count(), 2, "{kinds:?}");
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_with_read_receipts_off_sends_no_read_receipt() -> Result<()> {
    let app = spawn_app().await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&app.base_url, home.path(), &["alice", "bob"])?;
    team(&app, &keys, "alice", "team", &["bob"])?;
    let url = app.base_url.clone();
    let said = run(&app, &keys, "bob", &["settings", "receipts", "off"])?;
    assert!(said.contains("receipts off"), "{said}");
    assert!(run(&app, &keys, "bob", &["settings"])?.contains("receipts off"));

    let mut bob = Chat::start(&url, &keys, "bob", "--- #team ---")?;
    let mut alice = Chat::start(&url, &keys, "alice", "--- #team ---")?;
    alice.line("did you read this?")?;
    bob.out.wait_for("alice: did you read this?")?;
    // Bob's receipt (delivered only) goes before his typing signal; by the
    // time alice sees him typing, a read receipt would have arrived.
    bob.type_part("n")?;
    alice.out.wait_for("* bob is typing…")?;
    bob.type_part("o\n")?;
    alice.out.wait_for("bob: no")?;
    let alice_out = alice.quit()?;
    bob.quit()?;
    assert!(
        !alice_out.saw("seen by"),
        "bob's receipts say nothing about reading: {:?}",
        alice_out.seen
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dm_request_is_shown_only_as_a_request_until_accepted() -> Result<()> {
    let app = spawn_app().await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&app.base_url, home.path(), &["alice", "carol", "dave"])?;
    // A running chat announces the request when it is made, and nothing of it.
    run(&app, &keys, "alice", &["room", "create", "solo"])?;
    let mut chat = Chat::start(&app.base_url, &keys, "alice", "--- #solo ---")?;
    run(
        &app,
        &keys,
        "carol",
        &["send", "--to", "alice", "hi from a stranger"],
    )?;
    let announced = chat
        .out
        .wait_for("* carol wants to message you — hush accept")?;
    // "… hush accept ROOM / …": the request's room id.
    let room = announced
        .split("hush accept ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .context("the announcement names the room")?
        .to_owned();
    let chat_out = chat.quit()?;
    assert!(!chat_out.saw("stranger"), "{:?}", chat_out.seen);
    // A chat started later says it too, among its rooms.
    let started = Chat::start(&app.base_url, &keys, "alice", "--- #solo ---")?;
    let started_out = started.quit()?;
    assert!(
        started_out.saw("* carol wants to message you — hush accept"),
        "{:?}",
        started_out.seen
    );
    assert!(!started_out.saw("stranger"), "{:?}", started_out.seen);
    run(
        &app,
        &keys,
        "carol",
        &["send", "--to", "alice", "hi from a stranger, again"],
    )?;
    run(
        &app,
        &keys,
        "dave",
        &["send", "--to", "alice", "buy my stuff"],
    )?;

    let read = run(&app, &keys, "alice", &["read", "--room", &room])?;
    assert!(read.contains("carol wants to message you"), "{read}");
    assert!(read.contains("hush accept"), "{read}");
    assert!(!read.contains("stranger"), "{read}");
    let json = json_lines(&run(
        &app,
        &keys,
        "alice",
        &["read", "--room", &room, "--json"],
    )?)?;
    assert_eq!(json.len(), 1, "{json:?}");
    assert_eq!(json[0]["kind"], "request");
    assert_eq!(json[0]["by"], "carol");

    let requests = run(&app, &keys, "alice", &["requests"])?;
    assert!(
        requests.contains("carol wants to message you"),
        "{requests}"
    );
    assert!(requests.contains("dave wants to message you"), "{requests}");

    run(&app, &keys, "alice", &["accept", "@carol"])?;
    let read = run(&app, &keys, "alice", &["read", "--room", &room])?;
    assert!(read.contains("carol: hi from a stranger"), "{read}");

    run(&app, &keys, "alice", &["decline", "@dave"])?;
    let requests = run(&app, &keys, "alice", &["requests"])?;
    assert!(!requests.contains("dave"), "{requests}");
    assert!(!run(&app, &keys, "alice", &["room", "list"])?.contains("@dave"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocking_refuses_the_dm_and_hides_group_messages_until_unblocked() -> Result<()> {
    let app = spawn_app().await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&app.base_url, home.path(), &["alice", "bob", "carol"])?;
    team(&app, &keys, "alice", "team", &["bob", "carol"])?;
    run(
        &app,
        &keys,
        "bob",
        &["send", "--room", "team", "before the block"],
    )?;
    let read = run(&app, &keys, "alice", &["read", "--room", "team"])?;
    assert!(read.contains("bob: before the block"), "{read}");

    run(&app, &keys, "alice", &["block", "bob"])?;
    assert_eq!(run(&app, &keys, "alice", &["blocked"])?.trim(), "bob");
    let refused = hush(
        &app.base_url,
        &keys,
        "bob",
        &["send", "--to", "alice", "let me in"],
    )?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("blocked"), "{stderr}");

    run(
        &app,
        &keys,
        "bob",
        &["send", "--room", "team", "while blocked"],
    )?;
    run(
        &app,
        &keys,
        "carol",
        &["send", "--room", "team", "carol here"],
    )?;
    let read = run(&app, &keys, "alice", &["read", "--room", "team"])?;
    assert!(!read.contains("while blocked"), "{read}");
    assert!(
        !read.contains("before the block"),
        "read before, hidden now: {read}"
    );
    assert!(read.contains("carol: carol here"), "{read}");
    assert!(
        read.contains("bob joined"),
        "membership events stay: {read}"
    );
    let carol = run(&app, &keys, "carol", &["read", "--room", "team"])?;
    assert!(carol.contains("bob: while blocked"), "{carol}");

    run(&app, &keys, "alice", &["unblock", "bob"])?;
    run(
        &app,
        &keys,
        "bob",
        &["send", "--room", "team", "after the unblock"],
    )?;
    let read = run(&app, &keys, "alice", &["read", "--room", "team"])?;
    assert!(read.contains("bob: before the block"), "{read}");
    assert!(read.contains("bob: after the unblock"), "{read}");
    // What came during the block was never decrypted here.
    assert!(!read.contains("while blocked"), "{read}");
    run(&app, &keys, "bob", &["send", "--to", "alice", "let me in"])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declined_invitation_leaves_a_decline_event_for_members() -> Result<()> {
    let app = spawn_app().await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&app.base_url, home.path(), &["alice", "carol"])?;
    run(&app, &keys, "alice", &["room", "create", "team"])?;
    run(&app, &keys, "alice", &["room", "invite", "team", "carol"])?;
    let requests = run(&app, &keys, "carol", &["requests"])?;
    assert!(
        requests.contains("alice invited you to #team"),
        "{requests}"
    );
    run(&app, &keys, "carol", &["decline", "team"])?;
    assert!(!run(&app, &keys, "carol", &["requests"])?.contains("team"));

    let read = run(&app, &keys, "alice", &["read", "--room", "team"])?;
    assert!(read.contains("carol declined the invitation"), "{read}");
    let json = json_lines(&run(
        &app,
        &keys,
        "alice",
        &["read", "--room", "team", "--json"],
    )?)?;
    assert!(
        json.iter()
            .any(|l| l["kind"] == "event" && l["text"] == "carol declined the invitation"),
        "{json:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_made_with_room_promote_can_remove_a_member() -> Result<()> {
    let app = spawn_app().await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&app.base_url, home.path(), &["alice", "bob", "carol"])?;
    team(&app, &keys, "alice", "team", &["bob", "carol"])?;
    let refused = hush(
        &app.base_url,
        &keys,
        "bob",
        &["room", "remove", "team", "carol"],
    )?;
    assert!(!refused.status.success(), "not an admin yet");

    run(&app, &keys, "alice", &["room", "promote", "team", "bob"])?;
    let admins = run(&app, &keys, "bob", &["room", "admins", "team"])?;
    assert!(admins.contains("admins: bob"), "{admins}");
    run(&app, &keys, "bob", &["room", "remove", "team", "carol"])?;
    run(&app, &keys, "alice", &["room", "demote", "team", "bob"])?;

    let read = run(&app, &keys, "alice", &["read", "--room", "team"])?;
    for event in [
        "alice made bob an admin",
        "bob removed carol",
        "alice removed bob as an admin",
    ] {
        assert!(read.contains(event), "{event}: {read}");
    }
    Ok(())
}

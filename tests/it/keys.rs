//! Identity key rotation: signed by the old key, visible in the key
//! history, announced to everyone sharing a room.

use anyhow::{Context, Result};
use hush::crypto::statements;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

fn rotation(username: &str, old: &str, new: &str, signer: &str) -> Result<(Value, Vec<u8>)> {
    let old_fp: [u8; 32] = sha2_of(&spki_der(old)?);
    let new_spki = spki_der(new)?;
    let signature = sign(
        signer,
        &statements::key_rotation(username, &old_fp, &new_spki),
    )?;
    Ok((
        json!({ "public_key": b64(&new_spki), "signature": b64(&signature) }),
        signature,
    ))
}

fn sha2_of(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_signed_by_the_old_key_is_accepted_published_and_announced() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let (_, dm) = app.open_dm(&t[0], "carol").await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let mut carol = app.connect_ws(&t[2]).await?;

    let (body, signature) = rotation("alice", "alice", "mallory", "alice")?;
    let (status, reply) = app
        .post("/api/v1/keys/rotate", Some(&t[0]), Some(body))
        .await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let new_fp = fingerprint_hex(&spki_der("mallory")?);
    let old_fp = fingerprint_hex(&spki_der("alice")?);
    assert_eq!(reply["fingerprint"], new_fp);

    let (status, keys) = app.get("/api/v1/users/alice/keys", Some(&t[1])).await?;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(keys["username"], "alice");
    assert_eq!(keys["current"]["fingerprint"], new_fp);
    assert_eq!(keys["current"]["public_key"], b64(&spki_der("mallory")?));
    let history = keys["history"].as_array().context("history")?;
    assert_eq!(history.len(), 2, "{keys}");
    let (old, new) = (&history[0], &history[1]);
    assert_eq!(old["fingerprint"], old_fp);
    assert_eq!(old["public_key"], b64(&spki_der("alice")?));
    assert!(old["rotation_signature"].is_null());
    let created = old["created_at"].as_i64().context("created_at")?;
    let replaced = old["replaced_at"]
        .as_i64()
        .context("old key has replaced_at")?;
    assert!(replaced >= created);
    assert_eq!(new["fingerprint"], new_fp);
    assert_eq!(new["created_at"].as_i64(), Some(replaced));
    assert!(new["replaced_at"].is_null());
    assert_eq!(new["rotation_signature"], b64(&signature));
    assert_eq!(&keys["current"], new);

    for (who, ws, room) in [("bob", &mut bob, room), ("carol", &mut carol, dm)] {
        let entry = ws.next_entry(room).await?;
        assert_eq!(entry["kind"], "key", "{who}: {entry}");
        assert_eq!(entry["sender"], "alice");
        assert_eq!(entry["fingerprint"], new_fp, "{who}");
        ws.assert_no_entries().await?;
    }

    // The next rotation must be signed by the new key, over the new fingerprint.
    let (body, _) = rotation("alice", "mallory", "dave", "alice")?;
    let (status, reply) = app
        .post("/api/v1/keys/rotate", Some(&t[0]), Some(body))
        .await?;
    assert_eq!(
        (status, error_code(&reply)),
        (StatusCode::FORBIDDEN, "invalid_proof")
    );
    let (body, _) = rotation("alice", "mallory", "dave", "mallory")?;
    let (status, reply) = app
        .post("/api/v1/keys/rotate", Some(&t[0]), Some(body))
        .await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    Ok(())
}

#[tokio::test]
async fn a_rotation_signed_by_another_key_is_refused_and_changes_nothing() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let (_, before) = app.get("/api/v1/users/alice/keys", Some(&t[0])).await?;

    // Signed by the new key itself (what an attacker holding a token could do).
    for signer in ["mallory", "bob"] {
        let (body, _) = rotation("alice", "alice", "mallory", signer)?;
        let (status, reply) = app
            .post("/api/v1/keys/rotate", Some(&t[0]), Some(body))
            .await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
        assert_eq!(error_code(&reply), "invalid_proof");
    }
    // A signature by the right key over another user's statement is refused too.
    let (body, _) = rotation("bob", "alice", "mallory", "alice")?;
    let (status, reply) = app
        .post("/api/v1/keys/rotate", Some(&t[0]), Some(body))
        .await?;
    assert_eq!(
        (status, error_code(&reply)),
        (StatusCode::FORBIDDEN, "invalid_proof")
    );
    // A weak new key is refused whoever signs.
    let (body, _) = rotation("alice", "alice", "weak-1024", "alice")?;
    let (status, reply) = app
        .post("/api/v1/keys/rotate", Some(&t[0]), Some(body))
        .await?;
    assert_eq!(
        (status, error_code(&reply)),
        (StatusCode::BAD_REQUEST, "invalid_key")
    );

    let (_, after) = app.get("/api/v1/users/alice/keys", Some(&t[0])).await?;
    assert_eq!(before, after);
    assert_eq!(after["history"].as_array().map(Vec::len), Some(1));
    bob.assert_no_entries().await?;
    let (entries, _) = bob.sync(room, 0).await?;
    assert!(entries.iter().all(|e| e["kind"] != "key"), "{entries:?}");
    Ok(())
}

#[tokio::test]
async fn keys_of_an_unknown_user_are_not_found() -> Result<()> {
    let app = spawn_app().await?;
    let token = app.user("alice").await?;
    let (status, body) = app.get("/api/v1/users/nobody/keys", Some(&token)).await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    Ok(())
}

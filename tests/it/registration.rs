//! POST /api/v1/register: proof of key possession, key policy, input checks.

use anyhow::Result;
use hush::config::{Limits, Rate, ServerConfig};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn registration_with_a_valid_proof_is_accepted_and_returns_the_key_fingerprint() -> Result<()>
{
    let app = spawn_app().await?;
    let (status, body) = app
        .register_with("alice", &password("alice"), "alice", "alice")
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["username"], "alice");
    assert_eq!(body["fingerprint"], fingerprint_hex(&spki_der("alice")?));
    Ok(())
}

#[tokio::test]
async fn registration_signed_by_a_different_key_is_rejected() -> Result<()> {
    let app = spawn_app().await?;
    let (status, body) = app
        .register_with("alice", &password("alice"), "alice", "mallory")
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_proof");
    // Nothing was created: the name is still free.
    app.register("alice").await?;
    Ok(())
}

#[tokio::test]
async fn a_registration_challenge_can_be_used_only_once() -> Result<()> {
    let app = spawn_app().await?;
    let challenge = app.challenge().await?;
    let signed = |name: &str| -> Result<serde_json::Value> {
        let signature = sign(
            name,
            &hush::crypto::statements::registration_proof(name, &challenge),
        )?;
        Ok(json!({
            "username": name,
            "password": password(name),
            "public_key": b64(&spki_der(name)?),
            "challenge": b64(&challenge),
            "signature": b64(&signature),
        }))
    };
    let (status, body) = app.register_raw(signed("alice")?).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app.register_raw(signed("bob")?).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "invalid_proof");
    // A challenge the server never issued is refused the same way.
    let mut forged = signed("carol")?;
    forged["challenge"] = json!(b64(&[7u8; 32]));
    let (status, body) = app.register_raw(forged).await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_proof")
    );
    Ok(())
}

#[tokio::test]
async fn a_1024_bit_rsa_key_is_rejected() -> Result<()> {
    let app = spawn_app().await?;
    let (status, body) = app
        .register_with("alice", &password("alice"), "weak-1024", "weak-1024")
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "invalid_key");
    Ok(())
}

#[tokio::test]
async fn an_ec_key_is_rejected() -> Result<()> {
    let app = spawn_app().await?;
    // The signature is irrelevant: the key is refused before it is checked.
    let (status, body) = app
        .register_with("alice", &password("alice"), "not-rsa-p256", "alice")
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "invalid_key");
    Ok(())
}

#[tokio::test]
async fn malformed_base64_in_registration_is_rejected() -> Result<()> {
    let app = spawn_app().await?;
    let challenge = app.challenge().await?;
    let signature = sign(
        "alice",
        &hush::crypto::statements::registration_proof("alice", &challenge),
    )?;
    let good = json!({
        "username": "alice",
        "password": password("alice"),
        "public_key": b64(&spki_der("alice")?),
        "challenge": b64(&challenge),
        "signature": b64(&signature),
    });
    for (field, code) in [
        ("public_key", "invalid_key"),
        ("signature", "invalid_proof"),
        ("challenge", "invalid_proof"),
    ] {
        let mut body = good.clone();
        body[field] = json!("%%% not base64 %%%");
        let (status, reply) = app.register_raw(body).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {reply}");
        assert_eq!(error_code(&reply), code, "{field}");
    }
    Ok(())
}

#[tokio::test]
async fn a_taken_username_is_rejected_with_409() -> Result<()> {
    let app = spawn_app().await?;
    app.register("alice").await?;
    let (status, body) = app
        .register_with("alice", &password("bob"), "bob", "bob")
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "username_taken");
    Ok(())
}

#[tokio::test]
async fn invalid_usernames_are_rejected() -> Result<()> {
    let app = spawn_app().await?;
    for name in [
        "al",
        "Alice",
        "-alice",
        "al ice",
        "alice!",
        &"a".repeat(33),
        "",
    ] {
        let (status, body) = app
            .register_with(name, &password("alice"), "alice", "alice")
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        assert_eq!(error_code(&body), "invalid_username", "{name:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_short_password_is_rejected() -> Result<()> {
    let app = spawn_app().await?;
    let (status, body) = app
        .register_with("alice", "1234567", "alice", "alice")
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "weak_password");
    let (status, body) = app
        .register_with("alice", "12345678", "alice", "alice")
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    Ok(())
}

#[tokio::test]
async fn ascii_look_alikes_of_existing_names_are_refused_as_confusable() -> Result<()> {
    // More registrations than one address may make by default.
    let app = spawn_app_with(ServerConfig {
        limits: Limits {
            registrations_per_ip: Rate::new(100.0, 100),
            ..Limits::default()
        },
        ..ServerConfig::default()
    })
    .await?;
    app.register("alice").await?;
    app.register("mallory").await?;
    let (status, body) = app
        .register_with("bob0", &password("bob0"), "bob", "bob")
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for look_alike in [
        "a1ice", "aiice", "al1ce", "bobo", "b0b0", "rnallory", "ma1lory",
    ] {
        let (status, body) = app
            .register_with(look_alike, &password(look_alike), "dave", "dave")
            .await?;
        assert_eq!(status, StatusCode::CONFLICT, "{look_alike}: {body}");
        assert_eq!(error_code(&body), "username_confusable", "{look_alike}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("looks too much like"), "{message}");
        // Nothing was created under the look-alike.
        let (status, _) = app.login_raw(look_alike, &password(look_alike)).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{look_alike}");
    }
    // The exact name keeps its own error.
    let (status, body) = app
        .register_with("alice", &password("alice"), "bob", "bob")
        .await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "username_taken")
    );
    // Names that merely resemble each other in spelling still register.
    for name in ["alicia", "bob", "bobby", "carol", "mal.lory2"] {
        let (status, body) = app
            .register_with(name, &password(name), "carol", "carol")
            .await?;
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
    }
    // Existing accounts log in as before.
    for name in ["alice", "bob0", "mallory"] {
        app.login(name).await?;
    }
    Ok(())
}

#[tokio::test]
async fn separators_count_as_the_same_character() -> Result<()> {
    let app = spawn_app().await?;
    let (status, body) = app
        .register_with("bob.smith", &password("bob"), "bob", "bob")
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for look_alike in ["bob_smith", "bob-smith"] {
        let (status, body) = app
            .register_with(look_alike, &password("bob"), "carol", "carol")
            .await?;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::CONFLICT, "username_confusable"),
            "{look_alike}"
        );
    }
    Ok(())
}

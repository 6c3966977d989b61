//! Property tests: every frame, entry and body hush encodes decodes back to
//! the same value, for generated values rather than a handful of examples.

use std::sync::LazyLock;

use hush::crypto::device::DeviceId;
use hush::crypto::envelope::{self, Content, OpenContext, Payload, ReplayTracker};
use hush::crypto::keys::IdentityPrivateKey;
use hush::crypto::sender_keys::SenderKey;
use hush::protocol::{ClientFrame, Cursor, Incoming, Outgoing, ServerFrame, WireEntry, b64};
use hush::store::RoomId;
use proptest::prelude::*;

static ALICE: LazyLock<IdentityPrivateKey> = LazyLock::new(|| {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/keys/alice.pem"
    ))
    .unwrap();
    IdentityPrivateKey::from_pkcs8_pem(&pem).unwrap()
});

fn room() -> impl Strategy<Value = RoomId> {
    any::<i64>().prop_map(RoomId)
}

fn username() -> impl Strategy<Value = String> {
    "[a-z0-9_.-]{3,32}"
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        ".{0,64}".prop_map(|token| ClientFrame::Auth { token }),
        (room(), ".{0,40}", ".{0,200}", any::<Option<i64>>()).prop_map(
            |(room, client_id, body, erase)| ClientFrame::Send {
                room,
                client_id,
                body,
                erase,
            }
        ),
        prop::collection::vec((room(), any::<i64>()), 0..8).prop_map(|rooms| ClientFrame::Sync {
            rooms: rooms
                .into_iter()
                .map(|(room, after)| Cursor { room, after })
                .collect()
        }),
        (room(), any::<Option<i64>>(), any::<Option<u32>>()).prop_map(|(room, before, limit)| {
            ClientFrame::History {
                room,
                before,
                limit,
            }
        }),
        prop::option::of(room()).prop_map(|room| ClientFrame::Who { room }),
        Just(ClientFrame::Ping),
    ]
}

fn wire_entry() -> impl Strategy<Value = WireEntry> {
    (
        room(),
        any::<i64>(),
        any::<i64>(),
        "[a-z]{1,8}",
        username(),
        prop::option::of(username()),
        prop::option::of(".{0,40}"),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
        prop::option::of("[0-9a-f]{64}"),
    )
        .prop_map(
            |(room, seq, ts, kind, sender, subject, client_id, body, fingerprint)| WireEntry {
                room,
                seq,
                ts,
                kind,
                sender,
                subject,
                client_id,
                body: body.as_deref().map(b64::encode),
                fingerprint,
                expires: None,
                ttl: None,
                reason: None,
            },
        )
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (room(), ".{0,40}", any::<i64>(), any::<i64>(), any::<bool>()).prop_map(
            |(room, client_id, seq, ts, duplicate)| ServerFrame::Ack {
                room,
                client_id,
                seq,
                ts,
                duplicate
            }
        ),
        wire_entry().prop_map(|entry| ServerFrame::Entry { entry }),
        (
            room(),
            prop::collection::vec(wire_entry(), 0..5),
            any::<bool>()
        )
            .prop_map(|(room, entries, has_more)| ServerFrame::Page {
                room,
                entries,
                has_more
            }),
        (
            room(),
            prop::collection::vec(username(), 0..4),
            prop::collection::vec(username(), 0..4),
            any::<bool>()
        )
            .prop_map(|(room, online, offline, snapshot)| ServerFrame::Presence {
                room,
                online,
                offline,
                snapshot
            }),
        ("[a-z_]{1,24}", ".{0,80}", any::<Option<u64>>()).prop_map(
            |(code, message, retry_after_ms)| ServerFrame::Error {
                code,
                message,
                retry_after_ms
            }
        ),
        Just(ServerFrame::Pong),
    ]
}

/// What a payload is made of. `Payload` itself has no `Debug` (it is
/// plaintext), which proptest needs to report a failing case.
#[derive(Debug, Clone)]
enum PayloadParts {
    Text(String),
    File(String, String, Vec<u8>),
}

impl PayloadParts {
    fn build(&self) -> Payload {
        match self {
            PayloadParts::Text(text) => Payload::text(text.clone()),
            PayloadParts::File(name, mime, data) => {
                Payload::file(name.clone(), mime.clone(), data.clone())
            }
        }
    }
}

fn payload() -> impl Strategy<Value = PayloadParts> {
    prop_oneof![
        ".{0,200}".prop_map(PayloadParts::Text),
        (
            ".{0,40}",
            "[a-z]{1,10}/[a-z0-9.+-]{1,20}",
            prop::collection::vec(any::<u8>(), 0..2000)
        )
            .prop_map(|(name, mime, data)| PayloadParts::File(name, mime, data)),
    ]
}

proptest! {
    #[test]
    fn client_frames_round_trip(frame in client_frame(), id in prop::option::of(".{0,16}")) {
        let mut json = serde_json::to_value(&frame).unwrap();
        json["v"] = 1.into();
        if let Some(id) = &id {
            json["id"] = id.clone().into();
        }
        let parsed: Incoming = serde_json::from_str(&json.to_string()).unwrap();
        prop_assert_eq!(parsed.v, 1);
        prop_assert_eq!(parsed.id, id);
        prop_assert_eq!(format!("{:?}", parsed.frame), format!("{frame:?}"));
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame(), id in prop::option::of(".{0,16}")) {
        let text = Outgoing::new(id.clone(), frame.clone()).to_json();
        let parsed: Outgoing = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(parsed.v, 1);
        prop_assert_eq!(parsed.id, id);
        prop_assert_eq!(format!("{:?}", parsed.frame), format!("{frame:?}"));
    }

    #[test]
    fn base64_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..1000)) {
        prop_assert_eq!(b64::decode(&b64::encode(&bytes)).unwrap(), bytes);
    }

    #[test]
    fn payloads_round_trip(parts in payload()) {
        let payload = parts.build();
        let parsed = Payload::from_bytes(&payload.to_bytes()).unwrap();
        prop_assert!(parsed == Content::Payload(payload.clone()));
        let parsed = Payload::from_bytes_v1(&payload.to_bytes_v1()).unwrap();
        prop_assert!(parsed == payload);
    }
}

proptest! {
    // Each case signs with RSA: fewer cases keep the suite quick.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn envelopes_round_trip(
        room_id in any::<i64>(),
        epoch in any::<u32>(),
        counter in any::<u64>(),
        key in any::<[u8; 32]>(),
        device in any::<[u8; 16]>().prop_filter("not the legacy device", |d| *d != [0; 16]),
        parts in payload(),
    ) {
        let payload = parts.build();
        let sender_key = SenderKey::from_bytes(epoch, key);
        let device = DeviceId(device);
        let body = envelope::seal(room_id, "alice", &device, &sender_key, counter, &payload, &ALICE).unwrap();
        let header = envelope::peek(&body).unwrap();
        prop_assert_eq!(
            (header.room_id, header.sender.as_str(), header.device, header.epoch, header.counter),
            (room_id, "alice", device, epoch, counter)
        );
        let context = OpenContext {
            room_id,
            sender: "alice",
            sender_identity: ALICE.public(),
        };
        let opened = envelope::open(&body, &context, &sender_key, &mut ReplayTracker::new()).unwrap();
        prop_assert!(opened.content == Content::Payload(payload));
    }
}

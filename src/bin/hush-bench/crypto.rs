//! `crypto`: client-side costs for a room of M members, no server. Every
//! member has the same public key (it is a benchmark: the cost per
//! recipient is the same). Times sender-key rotation (wrap for every
//! member, then sign), sealing a message under an established key, and
//! opening + verifying one.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hush::crypto::envelope::{self, OpenContext, Payload, ReplayTracker};
use hush::crypto::keys::IdentityPrivateKey;
use hush::crypto::sender_keys::{Recipient, SenderKeyState};

#[derive(Debug, Clone, clap::Args)]
pub struct CryptoArgs {
    /// Room members a sender key is wrapped for.
    #[arg(long, default_value_t = 200)]
    pub members: usize,
    /// Sender-key rotations to time.
    #[arg(long, default_value_t = 20)]
    pub rotations: u32,
    /// Messages to seal and then open.
    #[arg(long, default_value_t = 500)]
    pub messages: u32,
    /// Plaintext bytes per message.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
}

impl CryptoArgs {
    pub fn quick() -> Self {
        Self {
            members: 200,
            rotations: 2,
            messages: 20,
            payload: 256,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub ops: u32,
    pub seconds: f64,
}

impl Rate {
    pub fn per_sec(&self) -> f64 {
        f64::from(self.ops) / self.seconds.max(1e-12)
    }

    pub fn ms_per_op(&self) -> f64 {
        self.seconds * 1000.0 / f64::from(self.ops.max(1))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ops": self.ops, "ops_per_sec": (self.per_sec() * 10.0).round() / 10.0,
            "ms_per_op": (self.ms_per_op() * 1000.0).round() / 1000.0,
        })
    }
}

pub struct CryptoResult {
    pub rotate: Rate,
    pub seal: Rate,
    pub open: Rate,
}

pub fn run(key: &IdentityPrivateKey, args: &CryptoArgs) -> Result<CryptoResult> {
    let names: Vec<String> = (0..args.members.max(1))
        .map(|i| format!("m{i:04}"))
        .collect();
    let recipients: Vec<Recipient<'_>> = names
        .iter()
        .map(|name| Recipient {
            username: name,
            identity: key.public(),
        })
        .collect();
    let sender = names[0].as_str();
    let room = 1;
    let mut state = SenderKeyState::new(room, sender, hush::crypto::device::DeviceId::generate()?);

    let rotations = args.rotations.max(1);
    let started = Instant::now();
    for _ in 0..rotations {
        state
            .rotate(&recipients, key)
            .context("rotating the sender key")?;
    }
    let rotate = Rate {
        ops: rotations,
        seconds: started.elapsed().as_secs_f64(),
    };

    let text: String = "x".repeat(args.payload);
    let payload = Payload::text(text);
    let messages = args.messages.max(1);
    let mut bodies = Vec::with_capacity(messages as usize);
    let started = Instant::now();
    for _ in 0..messages {
        bodies.push(state.seal(&payload, key).context("sealing")?);
    }
    let seal = Rate {
        ops: messages,
        seconds: started.elapsed().as_secs_f64(),
    };

    let sender_key = state
        .current_key()
        .context("a key exists after rotating")?
        .clone();
    let context = OpenContext {
        room_id: room,
        sender,
        sender_identity: key.public(),
    };
    let mut replay = ReplayTracker::new();
    let started = Instant::now();
    for body in &bodies {
        envelope::open(body, &context, &sender_key, &mut replay).context("opening")?;
    }
    let open = Rate {
        ops: messages,
        seconds: started
            .elapsed()
            .as_secs_f64()
            .max(Duration::from_nanos(1).as_secs_f64()),
    };
    Ok(CryptoResult { rotate, seal, open })
}

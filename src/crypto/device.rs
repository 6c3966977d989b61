//! Device ids: which running client of an identity sealed a body.
//!
//! One person may use several clients of one identity at once (terminals
//! sharing an imported key, browser tabs). Each sends under its own random
//! 16-byte device id, carried in every version-2 body and bound by the
//! signature, so each device keeps its own sender-key chain and two devices
//! never pick the same epoch or counter. Version-1 bodies have no device
//! id; they all belong to one `LEGACY` device per sender.

use std::fmt;

use super::CryptoError;
use super::wire::random_bytes;

pub const DEVICE_ID_LEN: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub [u8; DEVICE_ID_LEN]);

impl DeviceId {
    /// The device of every version-1 body: all zero bytes, which no
    /// version-2 body may carry.
    pub const LEGACY: DeviceId = DeviceId([0; DEVICE_ID_LEN]);

    pub fn generate() -> Result<Self, CryptoError> {
        loop {
            let id = DeviceId(random_bytes()?);
            if !id.is_legacy() {
                return Ok(id);
            }
        }
    }

    pub fn is_legacy(&self) -> bool {
        *self == Self::LEGACY
    }

    /// 32 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first 8 hex digits, as shown to people.
    pub fn short(&self) -> String {
        self.to_hex()[..8].to_owned()
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != DEVICE_ID_LEN * 2 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; DEVICE_ID_LEN];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(DeviceId(out))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_bad_text() {
        let id = DeviceId::generate().unwrap();
        assert!(!id.is_legacy());
        assert_eq!(DeviceId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(id.short().len(), 8);
        assert_eq!(DeviceId::from_hex("00"), None);
        assert_eq!(DeviceId::from_hex(&"zz".repeat(16)), None);
    }
}

//! The binary framing shared by every body hush puts in a room's log: a
//! 4-byte magic `"HUSH"`, a format version byte and a kind byte, followed by
//! big-endian fixed-width integers and length-prefixed byte strings. Also the
//! small helpers both formats need (username rules, randomness).
//!
//! Kept deliberately plain so that a browser client can parse it with a
//! `DataView` and nothing else.

use super::CryptoError;
use super::device::DeviceId;

/// First four bytes of every hush log body.
pub const MAGIC: [u8; 4] = *b"HUSH";

/// The binary format version this code writes: 2 adds the device id.
pub const FORMAT_VERSION: u8 = 2;

/// The oldest version still read (history written before device ids).
pub const OLDEST_READ_VERSION: u8 = 1;

/// Length of the common prefix: magic, version, kind.
pub const PREFIX_LEN: usize = 6;

/// What a log body holds, told by the byte after the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A message sealed under a sender key (`envelope`).
    Message,
    /// A sender key wrapped for each room member (`sender_keys`).
    SenderKeyDistribution,
    /// An ephemeral signal (receipt, typing) in the message envelope's
    /// layout (`signal`); never stored in a log.
    Signal,
    /// A signed disappearing-messages statement (`room_timer`).
    Timer,
}

impl BodyKind {
    pub const fn to_byte(self) -> u8 {
        match self {
            BodyKind::Message => 0x01,
            BodyKind::SenderKeyDistribution => 0x02,
            BodyKind::Signal => 0x03,
            BodyKind::Timer => 0x04,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0x01 => Some(BodyKind::Message),
            0x02 => Some(BodyKind::SenderKeyDistribution),
            0x03 => Some(BodyKind::Signal),
            0x04 => Some(BodyKind::Timer),
            _ => None,
        }
    }
}

/// Tells a reader what a log body is without authenticating anything.
///
/// A body that is not hush framing at all fails with `NotHush`; a hush body
/// of a version this code does not read with `UnknownVersion`, and of an
/// unknown kind with `UnknownKind`.
pub fn body_kind(body: &[u8]) -> Result<BodyKind, CryptoError> {
    body_version_and_kind(body).map(|(_, kind)| kind)
}

/// The format version (1 or 2) and kind of a log body.
pub fn body_version_and_kind(body: &[u8]) -> Result<(u8, BodyKind), CryptoError> {
    if body.len() < PREFIX_LEN || body[..4] != MAGIC {
        return Err(CryptoError::NotHush);
    }
    let version = body[4];
    if !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(CryptoError::UnknownVersion { version });
    }
    let kind = BodyKind::from_byte(body[5]).ok_or(CryptoError::UnknownKind { kind: body[5] })?;
    Ok((version, kind))
}

/// Usernames are 3 to 32 characters of `[a-z0-9_.-]`, so they always fit a
/// one-byte length prefix and never need Unicode normalisation.
pub fn is_valid_username(username: &str) -> bool {
    (3..=32).contains(&username.len())
        && username
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'))
}

/// Fills `N` bytes from the operating system's random number generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|_| CryptoError::Rng)?;
    Ok(bytes)
}

/// Appends big-endian fields to a growing body.
pub(crate) struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    /// Starts a body with the common prefix: `FORMAT_VERSION` to write,
    /// older versions only for test vectors of the history still read.
    pub fn with_version(version: u8, kind: BodyKind) -> Self {
        let mut bytes = Vec::with_capacity(512);
        bytes.extend_from_slice(&MAGIC);
        bytes.push(version);
        bytes.push(kind.to_byte());
        Self { bytes }
    }

    pub fn device(&mut self, device: &DeviceId) {
        self.raw(&device.0);
    }

    pub fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }

    pub fn u16(&mut self, value: u16) {
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }

    pub fn u32(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }

    pub fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }

    pub fn i64(&mut self, value: i64) {
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }

    pub fn raw(&mut self, value: &[u8]) {
        self.bytes.extend_from_slice(value);
    }

    /// A username with its one-byte length prefix.
    pub fn username(&mut self, username: &str) -> Result<(), CryptoError> {
        if !is_valid_username(username) {
            return Err(CryptoError::InvalidUsername);
        }
        self.u8(username.len() as u8);
        self.raw(username.as_bytes());
        Ok(())
    }

    /// Bytes with a two-byte length prefix (signatures, wrapped keys).
    pub fn bytes_u16(&mut self, value: &[u8]) -> Result<(), CryptoError> {
        let len = u16::try_from(value.len()).map_err(|_| CryptoError::TooLarge)?;
        self.u16(len);
        self.raw(value);
        Ok(())
    }

    /// Bytes with a four-byte length prefix (ciphertexts).
    pub fn bytes_u32(&mut self, value: &[u8]) -> Result<(), CryptoError> {
        let len = u32::try_from(value.len()).map_err(|_| CryptoError::TooLarge)?;
        self.u32(len);
        self.raw(value);
        Ok(())
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads big-endian fields; every short read is `OpenFailed`.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
    version: u8,
}

impl<'a> Reader<'a> {
    /// Checks the common prefix for `kind` and positions after it.
    pub fn new(body: &'a [u8], kind: BodyKind) -> Result<Self, CryptoError> {
        let (version, found) = body_version_and_kind(body)?;
        if found != kind {
            return Err(CryptoError::OpenFailed);
        }
        Ok(Self {
            bytes: body,
            position: PREFIX_LEN,
            version,
        })
    }

    /// The body's format version (1 or 2).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The device id of a version-2 body (never all zero); `LEGACY` for
    /// version 1, which has none.
    pub fn device(&mut self) -> Result<DeviceId, CryptoError> {
        if self.version < 2 {
            return Ok(DeviceId::LEGACY);
        }
        let device = DeviceId(self.array()?);
        if device.is_legacy() {
            return Err(CryptoError::OpenFailed);
        }
        Ok(device)
    }

    pub fn position(&self) -> usize {
        self.position
    }

    pub fn take(&mut self, len: usize) -> Result<&'a [u8], CryptoError> {
        let end = self
            .position
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(CryptoError::OpenFailed)?;
        let out = &self.bytes[self.position..end];
        self.position = end;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], CryptoError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, CryptoError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, CryptoError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, CryptoError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, CryptoError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, CryptoError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A one-byte-length-prefixed username; malformed ones are `OpenFailed`.
    pub fn username(&mut self) -> Result<String, CryptoError> {
        let len = self.u8()? as usize;
        let raw = self.take(len)?;
        let name = std::str::from_utf8(raw).map_err(|_| CryptoError::OpenFailed)?;
        if !is_valid_username(name) {
            return Err(CryptoError::OpenFailed);
        }
        Ok(name.to_owned())
    }

    pub fn bytes_u16(&mut self) -> Result<&'a [u8], CryptoError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    pub fn bytes_u32(&mut self) -> Result<&'a [u8], CryptoError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// Fails unless every byte has been consumed: trailing bytes are never
    /// ignored, so one body has exactly one parse.
    pub fn finish(&self) -> Result<(), CryptoError> {
        if self.position == self.bytes.len() {
            Ok(())
        } else {
            Err(CryptoError::OpenFailed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_server_rules() {
        for ok in ["bob", "alice_1", "a.b-c", &"x".repeat(32)] {
            assert!(is_valid_username(ok), "{ok}");
        }
        for bad in ["", "ab", "Alice", "bob!", "é_bob", &"x".repeat(33)] {
            assert!(!is_valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn body_kind_tells_formats_apart_and_rejects_unknown_versions() {
        assert_eq!(body_kind(b"HUSH\x01\x01rest"), Ok(BodyKind::Message));
        assert_eq!(
            body_kind(b"HUSH\x01\x02"),
            Ok(BodyKind::SenderKeyDistribution)
        );
        assert_eq!(body_kind(b"HUSH\x02\x01"), Ok(BodyKind::Message));
        assert_eq!(
            body_kind(b"HUSH\x03\x01"),
            Err(CryptoError::UnknownVersion { version: 3 })
        );
        assert_eq!(
            body_kind(b"HUSH\x00\x01"),
            Err(CryptoError::UnknownVersion { version: 0 })
        );
        assert_eq!(
            body_kind(b"HUSH\x01\x09"),
            Err(CryptoError::UnknownKind { kind: 9 })
        );
        assert_eq!(body_kind(b"{\"json\":1}"), Err(CryptoError::NotHush));
        assert_eq!(body_kind(b"HUS"), Err(CryptoError::NotHush));
    }

    #[test]
    fn reader_rejects_short_and_trailing_bytes() {
        let mut writer = Writer::with_version(FORMAT_VERSION, BodyKind::Message);
        writer.u32(7);
        let mut body = writer.into_bytes();
        let mut reader = Reader::new(&body, BodyKind::Message).unwrap();
        assert_eq!(reader.u32(), Ok(7));
        assert!(reader.finish().is_ok());
        assert_eq!(reader.u8(), Err(CryptoError::OpenFailed));
        body.push(0);
        let mut reader = Reader::new(&body, BodyKind::Message).unwrap();
        reader.u32().unwrap();
        assert_eq!(reader.finish(), Err(CryptoError::OpenFailed));
    }
}

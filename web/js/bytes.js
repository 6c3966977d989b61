// Byte helpers shared by the crypto module: base64 (standard alphabet,
// padded), hex, UTF-8, and the big-endian reader and writer of hush's
// binary log bodies (docs/PROTOCOL.md §19).

export class CryptoError extends Error {
  // code: NotHush, UnknownVersion, UnknownKind, OpenFailed, BadSignature,
  // WrongRoom, WrongSender, Replay, NotARecipient, or a local failure
  // (InvalidUsername, TooLarge).
  constructor(code, message) {
    super(message || code);
    this.name = "CryptoError";
    this.code = code;
  }
}

export const utf8 = (text) => new TextEncoder().encode(text);
export const fromUtf8 = (bytes) => new TextDecoder("utf-8", { fatal: true }).decode(bytes);

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

export function b64encode(bytes) {
  let binary = "";
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
  }
  return btoa(binary);
}

/** Strict standard base64 with padding; throws on anything else. */
export function b64decode(text) {
  if (typeof text !== "string" || !B64.test(text)) throw new Error("not base64");
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

export const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

export function unhex(text) {
  if (!/^(?:[0-9a-f]{2})*$/.test(text)) throw new Error("not lower-case hex");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export const equalBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/** Usernames are 3 to 32 bytes of [a-z0-9_.-]. */
export const isValidUsername = (name) => typeof name === "string" && /^[a-z0-9_.-]{3,32}$/.test(name);

export const MAGIC = utf8("HUSH");
/** The format version written: 2 carries the device id. */
export const FORMAT_VERSION = 2;
/** The oldest version still read (history from before device ids). */
export const OLDEST_READ_VERSION = 1;
export const KIND_MESSAGE = 1;
export const KIND_DISTRIBUTION = 2;
/** A receipt or typing signal (§21): never in the log. */
export const KIND_SIGNAL = 3;
/** A disappearing-messages timer statement (§21): the body of a `timer` entry. */
export const KIND_TIMER = 4;
export const DEVICE_ID_LEN = 16;
/** The device of every version-1 body; no version-2 body may carry it. */
export const LEGACY_DEVICE = new Uint8Array(DEVICE_ID_LEN);

export const isLegacyDevice = (device) => device.every((b) => b === 0);

/** What a log body is ({version, kind}), without authenticating it. */
export function bodyVersionAndKind(body) {
  if (body.length < 6 || !equalBytes(body.subarray(0, 4), MAGIC)) throw new CryptoError("NotHush");
  const version = body[4];
  if (version < OLDEST_READ_VERSION || version > FORMAT_VERSION) {
    throw new CryptoError("UnknownVersion", `format version ${version}`);
  }
  if (body[5] !== KIND_MESSAGE && body[5] !== KIND_DISTRIBUTION) throw new CryptoError("UnknownKind", `body kind ${body[5]}`);
  return { version, kind: body[5] };
}

export const bodyKind = (body) => bodyVersionAndKind(body).kind;

export class Writer {
  /** `version` other than FORMAT_VERSION only for test vectors of history still read. */
  constructor(kind, version = FORMAT_VERSION) {
    this.version = version;
    this.parts = [MAGIC, Uint8Array.of(version, kind)];
  }
  /** The device id of a version-2 body; version 1 has none. */
  device(device) {
    if (this.version < 2) return;
    if (device.length !== DEVICE_ID_LEN || isLegacyDevice(device)) throw new CryptoError("InvalidDevice");
    this.raw(device);
  }
  raw(bytes) {
    this.parts.push(bytes);
  }
  u8(v) {
    this.raw(Uint8Array.of(v));
  }
  u16(v) {
    if (!(v >= 0 && v <= 0xffff)) throw new CryptoError("TooLarge");
    this.raw(Uint8Array.of(v >> 8, v & 0xff));
  }
  u32(v) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v);
    this.raw(b);
  }
  u64(v) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(v));
    this.raw(b);
  }
  i64(v) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigInt64(0, BigInt(v));
    this.raw(b);
  }
  username(name) {
    if (!isValidUsername(name)) throw new CryptoError("InvalidUsername");
    this.u8(name.length);
    this.raw(utf8(name));
  }
  bytesU16(bytes) {
    this.u16(bytes.length);
    this.raw(bytes);
  }
  bytesU32(bytes) {
    if (bytes.length > 0xffffffff) throw new CryptoError("TooLarge");
    this.u32(bytes.length);
    this.raw(bytes);
  }
  bytes() {
    return concat(...this.parts);
  }
}

/** Reads big-endian fields; every short read is OpenFailed. */
export class Reader {
  constructor(body, kind) {
    // Signals and timer statements are not log message bodies, so they are
    // checked here rather than by bodyVersionAndKind (which rejects them
    // in a `message` entry as an unknown kind); both exist in version 2 only.
    let version;
    if (kind === KIND_SIGNAL || kind === KIND_TIMER) {
      if (body.length < 6 || !equalBytes(body.subarray(0, 4), MAGIC)) throw new CryptoError("NotHush");
      // Newer than this client reads: UnknownVersion; older: there never was one.
      if (body[4] > FORMAT_VERSION) throw new CryptoError("UnknownVersion", `format version ${body[4]}`);
      if (body[4] !== FORMAT_VERSION) throw new CryptoError("OpenFailed");
      if (body[5] !== kind) throw new CryptoError("OpenFailed");
      version = FORMAT_VERSION;
    } else {
      const found = bodyVersionAndKind(body);
      if (found.kind !== kind) throw new CryptoError("OpenFailed");
      version = found.version;
    }
    this.version = version;
    this.body = body;
    this.view = new DataView(body.buffer, body.byteOffset, body.byteLength);
    this.position = 6;
  }
  take(len) {
    const end = this.position + len;
    if (end > this.body.length) throw new CryptoError("OpenFailed");
    const out = this.body.subarray(this.position, end);
    this.position = end;
    return out;
  }
  u8() {
    return this.take(1)[0];
  }
  u16() {
    this.take(2);
    return this.view.getUint16(this.position - 2);
  }
  u32() {
    this.take(4);
    return this.view.getUint32(this.position - 4);
  }
  u64() {
    this.take(8);
    return this.view.getBigUint64(this.position - 8);
  }
  i64() {
    this.take(8);
    return Number(this.view.getBigInt64(this.position - 8));
  }
  username() {
    const raw = this.take(this.u8());
    let name;
    try {
      name = fromUtf8(raw);
    } catch {
      throw new CryptoError("OpenFailed");
    }
    if (!isValidUsername(name)) throw new CryptoError("OpenFailed");
    return name;
  }
  /** A version-2 body's device id (never all zero); LEGACY_DEVICE for version 1. */
  device() {
    if (this.version < 2) return LEGACY_DEVICE;
    const device = this.take(DEVICE_ID_LEN).slice();
    if (isLegacyDevice(device)) throw new CryptoError("OpenFailed");
    return device;
  }
  bytesU16() {
    return this.take(this.u16());
  }
  bytesU32() {
    return this.take(this.u32());
  }
  finish() {
    if (this.position !== this.body.length) throw new CryptoError("OpenFailed");
  }
}

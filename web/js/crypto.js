// hush's end-to-end encryption in the browser, on WebCrypto: identity keys
// (RSA-PSS-SHA256 signatures, RSA-OAEP-SHA256 key wrapping), message
// envelopes (AES-256-GCM) and sender-key distributions in format version 2
// (with the sending device's id; version 1 is still read), the replay rule
// (a set of opened counters per chain), payload rules, the sending state
// that decides when to rotate, fingerprints, safety numbers, signed
// statements, and passphrase-protected key files (Argon2id, vendored).
// Byte for byte the formats of docs/PROTOCOL.md §19, checked against
// tests/vectors/ in Chromium by tests/browser/vectors.test.mjs.
//
// Private keys live only as non-extractable CryptoKeys: an identity is one
// PKCS#8 imported twice, for signing (RSA-PSS) and for unwrapping (RSA-OAEP).

import "../vendor/hash-wasm/argon2.umd.min.js";
import {
  CryptoError, Reader, Writer, b64decode, b64encode, bodyKind, bodyVersionAndKind, concat, equalBytes, fromUtf8, hex,
  isLegacyDevice, isValidUsername, utf8, DEVICE_ID_LEN, FORMAT_VERSION, KIND_DISTRIBUTION, KIND_MESSAGE, KIND_SIGNAL, KIND_TIMER,
  LEGACY_DEVICE,
} from "./bytes.js";

export {
  CryptoError, bodyKind, bodyVersionAndKind, isLegacyDevice, DEVICE_ID_LEN, FORMAT_VERSION, KIND_DISTRIBUTION, KIND_MESSAGE,
  KIND_SIGNAL, KIND_TIMER, LEGACY_DEVICE,
};

const subtle = globalThis.crypto.subtle;
const PSS = { name: "RSA-PSS", saltLength: 32 };
const OAEP = { name: "RSA-OAEP" };
export const NONCE_LEN = 12;
export const TAG_LEN = 16;
export const SENDER_KEY_LEN = 32;
export const MAX_MESSAGES_PER_KEY = 2n ** 24n;
export const KEY_BITS = [2048, 3072, 4096];
export const DEFAULT_KEY_BITS = 3072;

export const randomBytes = (n) => globalThis.crypto.getRandomValues(new Uint8Array(n));

// ---------------------------------------------------------------- identities

export async function fingerprint(spki) {
  return new Uint8Array(await subtle.digest("SHA-256", spki));
}

/** 16 groups of 4 lower-case hex digits. */
export const displayFingerprint = (fpHex) => fpHex.match(/.{4}/g).join(" ");

/** A peer's public identity key: SPKI bytes, fingerprint, and WebCrypto handles. */
export async function publicIdentity(spki) {
  const [fp, verifyKey, wrapKey] = await Promise.all([
    fingerprint(spki),
    subtle.importKey("spki", spki, { name: "RSA-PSS", hash: "SHA-256" }, false, ["verify"]),
    subtle.importKey("spki", spki, { name: "RSA-OAEP", hash: "SHA-256" }, false, ["encrypt"]),
  ]);
  const bits = verifyKey.algorithm.modulusLength;
  const exponent = hex(verifyKey.algorithm.publicExponent);
  if (bits < 2048 || bits > 4096) throw new Error(`RSA key of ${bits} bits is not accepted`);
  if (exponent.replace(/^0+/, "") !== "10001") throw new Error("RSA exponent must be 65537");
  return { spki, fp, fpHex: hex(fp), bits, verifyKey, wrapKey };
}

/** True if `signature` is `identity`'s RSA-PSS-SHA256 (salt 32) over `message`. */
export async function verify(identity, message, signature) {
  try {
    return await subtle.verify(PSS, identity.verifyKey, signature, message);
  } catch {
    return false;
  }
}

/**
 * Imports a PKCS#8 private key twice as non-extractable keys (sign, unwrap)
 * and checks it belongs to `spki` by a sign/verify round trip.
 */
export async function privateIdentity(pkcs8, spki) {
  const pub = await publicIdentity(spki);
  const [signKey, unwrapKey] = await Promise.all([
    subtle.importKey("pkcs8", pkcs8, { name: "RSA-PSS", hash: "SHA-256" }, false, ["sign"]),
    subtle.importKey("pkcs8", pkcs8, { name: "RSA-OAEP", hash: "SHA-256" }, false, ["decrypt"]),
  ]);
  const probe = utf8("hush-key-match-probe");
  const sig = new Uint8Array(await subtle.sign(PSS, signKey, probe));
  if (!(await verify(pub, probe, sig))) throw new Error("the private key does not match its public key");
  return { public: pub, signKey, unwrapKey };
}

/** Rebuilds a private identity from CryptoKeys stored in IndexedDB. */
export async function restoredIdentity(spki, signKey, unwrapKey) {
  return { public: await publicIdentity(spki), signKey, unwrapKey };
}

export async function sign(privateId, message) {
  return new Uint8Array(await subtle.sign(PSS, privateId.signKey, message));
}

/** A fresh RSA key pair (e = 65537), as SPKI and PKCS#8 bytes. */
export async function generateKeyPair(bits = DEFAULT_KEY_BITS) {
  if (!KEY_BITS.includes(bits)) throw new Error("key size must be 2048, 3072 or 4096 bits");
  const pair = await subtle.generateKey(
    { name: "RSA-PSS", modulusLength: bits, publicExponent: Uint8Array.of(1, 0, 1), hash: "SHA-256" },
    true, ["sign", "verify"]);
  const [spki, pkcs8] = await Promise.all([
    subtle.exportKey("spki", pair.publicKey), subtle.exportKey("pkcs8", pair.privateKey)]);
  return { spki: new Uint8Array(spki), pkcs8: new Uint8Array(pkcs8) };
}

// ---------------------------------------------------------------- statements

const SEP = Uint8Array.of(0);

/** "hush-register-v1" 0x00 username 0x00 challenge */
export const registrationProof = (username, challenge) =>
  concat(utf8("hush-register-v1"), SEP, utf8(username), SEP, challenge);

/** "hush-rotate-v1" 0x00 username 0x00 sha256(old SPKI) 0x00 new SPKI */
export const keyRotation = (username, oldFp, newSpki) =>
  concat(utf8("hush-rotate-v1"), SEP, utf8(username), SEP, oldFp, SEP, newSpki);

// ------------------------------------------------------------ safety numbers

/** 12 groups of 5 digits, space separated (docs/PROTOCOL.md §19). */
export async function safetyNumber(nameA, fpA, nameB, fpB) {
  const users = [[nameA, fpA], [nameB, fpB]].sort((x, y) => compareBytes(utf8(x[0]), utf8(y[0])));
  const parts = [utf8("hush-safety-v1"), SEP];
  for (const [name, fp] of users) parts.push(Uint8Array.of(name.length), utf8(name), fp);
  const digest = new Uint8Array(await subtle.digest("SHA-512", concat(...parts)));
  const groups = [];
  for (let i = 0; i < 12; i++) {
    let v = 0;
    for (const byte of digest.subarray(5 * i, 5 * i + 5)) v = v * 256 + byte;
    groups.push(String(v % 100000).padStart(5, "0"));
  }
  return groups.join(" ");
}

function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

// ------------------------------------------------------------------ payloads

/** The payload version written, and the highest one displayed. */
export const PAYLOAD_VERSION = 1;

/**
 * {"t":"text","text":…,"reply_to"?} or {"t":"file","name":…,"mime":…,"data":bytes,"reply_to"?};
 * the relations of §21: {"t":"edit","of","text"}, {"t":"delete","of"},
 * {"t":"react","of","emoji"}; "unsupported" is read only.
 */
export const textPayload = (text, replyTo = null) => (isSeq(replyTo) ? { t: "text", text, reply_to: replyTo } : { t: "text", text });
export const filePayload = (name, mime, data, size = null, replyTo = null) => {
  const p = { t: "file", name, mime, data };
  if (size && isDimension(size.width) && isDimension(size.height)) Object.assign(p, { width: size.width, height: size.height });
  if (isSeq(replyTo)) p.reply_to = replyTo;
  return p;
};
export const editPayload = (of, text) => ({ t: "edit", of, text });
export const deletePayload = (of) => ({ t: "delete", of });
export const reactPayload = (of, emoji) => ({ t: "react", of, emoji });
/** A log position a relation may name: a positive integer. */
const isSeq = (n) => Number.isSafeInteger(n) && n > 0;
/** A reaction (§21): 1 to 64 bytes of UTF-8 without control characters, or "" to take one back. */
export const isValidEmoji = (e) => typeof e === "string" && utf8(e).length <= 64 && !/\p{Cc}/u.test(e);
/** The message types a reader applies to an earlier message. */
export const RELATION_TYPES = new Set(["edit", "delete", "react"]);
/** An image's optional pixel size (§19): an integer 1..65535, else ignored. */
const isDimension = (n) => Number.isInteger(n) && n >= 1 && n <= 65535;
/** A genuine payload of a type or version this client does not know. */
export const UNSUPPORTED = Object.freeze({ t: "unsupported" });

/** Version-2 plaintext: {"v":1,"t":…} (PROTOCOL.md §19, Plaintext payload). */
export function encodePayload(p) {
  const reply = isSeq(p.reply_to) ? { reply_to: p.reply_to } : {};
  if (p.t === "text") return utf8(JSON.stringify({ v: PAYLOAD_VERSION, t: "text", text: p.text, ...reply }));
  if (p.t === "file") {
    const size = p.width !== undefined ? { width: p.width, height: p.height } : {};
    return utf8(JSON.stringify({ v: PAYLOAD_VERSION, t: "file", name: p.name, mime: p.mime, data: b64encode(p.data), ...size, ...reply }));
  }
  if (!isSeq(p.of)) throw new Error("a relation names a positive seq");
  if (p.t === "edit") return utf8(JSON.stringify({ v: PAYLOAD_VERSION, t: "edit", of: p.of, text: p.text }));
  if (p.t === "delete") return utf8(JSON.stringify({ v: PAYLOAD_VERSION, t: "delete", of: p.of }));
  if (p.t === "react") {
    if (!isValidEmoji(p.emoji)) throw new Error("a reaction is 1 to 64 bytes without control characters, or empty");
    return utf8(JSON.stringify({ v: PAYLOAD_VERSION, t: "react", of: p.of, emoji: p.emoji }));
  }
  throw new Error("unknown payload");
}

/** Version-1 plaintext, for test vectors of the history still read: no "v". */
export function encodePayloadV1(p) {
  if (p.t === "text") return utf8(JSON.stringify({ t: "text", text: p.text }));
  if (p.t === "file") return utf8(JSON.stringify({ t: "file", name: p.name, mime: p.mime, data: b64encode(p.data) }));
  throw new Error("unknown payload");
}

function parseJson(bytes) {
  let text;
  let value;
  try {
    text = fromUtf8(bytes);
    value = JSON.parse(text);
  } catch {
    throw new CryptoError("OpenFailed");
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) throw new CryptoError("OpenFailed");
  return { text, value };
}

function fileBytes(data) {
  try {
    return b64decode(data);
  } catch {
    throw new CryptoError("OpenFailed");
  }
}

/**
 * Reads a version-2 envelope's plaintext: duplicate member names fail
 * (JSON.parse would keep the last one silently, so two readers could
 * disagree on what a signed message says); unknown members are ignored; a
 * newer payload version or an unknown type is UNSUPPORTED, not an error.
 */
export function decodePayload(bytes) {
  const { text, value } = parseJson(bytes);
  if (hasDuplicateKeys(text)) throw new CryptoError("OpenFailed");
  const version = value.v === undefined ? 1n : payloadVersion(text);
  if (typeof value.t !== "string") throw new CryptoError("OpenFailed");
  if (version > BigInt(PAYLOAD_VERSION)) return UNSUPPORTED;
  if (value.t === "text") {
    if (typeof value.text !== "string") throw new CryptoError("OpenFailed");
    return textPayload(value.text, optionalSeq(text, value, "reply_to"));
  }
  if (value.t === "file") {
    if (typeof value.name !== "string" || typeof value.mime !== "string") throw new CryptoError("OpenFailed");
    return filePayload(value.name, value.mime, fileBytes(value.data), { width: value.width, height: value.height }, optionalSeq(text, value, "reply_to"));
  }
  if (RELATION_TYPES.has(value.t)) {
    const of = requiredSeq(text, value, "of");
    if (value.t === "delete") return deletePayload(of);
    if (value.t === "edit") {
      if (typeof value.text !== "string") throw new CryptoError("OpenFailed");
      return editPayload(of, value.text);
    }
    if (!isValidEmoji(value.emoji)) throw new CryptoError("OpenFailed");
    return reactPayload(of, value.emoji);
  }
  return UNSUPPORTED;
}

/**
 * A member holding a seq: a JSON number that is an integer from 1 to
 * 2^53 − 1, however it is written (41, 41.0 and 4.1e1 are one number to
 * every JSON reader; the Rust client reads them alike), else null.
 */
function seqMember(text, value, name) {
  const n = value[name];
  return typeof n === "number" && isSeq(n) ? n : null;
}

/** `reply_to`: anything but a positive integer is ignored like an unknown member (§21). */
const optionalSeq = (text, value, name) => seqMember(text, value, name);

/** `of`: a relation without a positive integer target does not open (a mistyped known member, §19). */
function requiredSeq(text, value, name) {
  const n = seqMember(text, value, name);
  if (n === null) throw new CryptoError("OpenFailed");
  return n;
}

/** Reads a version-1 envelope's plaintext: exactly the old members, nothing else. */
export function decodePayloadV1(bytes) {
  const { text, value } = parseJson(bytes);
  if (hasDuplicateKeys(text)) throw new CryptoError("OpenFailed");
  const fields = Object.keys(value).sort().join(",");
  if (value.t === "text" && fields === "t,text" && typeof value.text === "string") return textPayload(value.text);
  if (value.t === "file" && fields === "data,mime,name,t" && typeof value.name === "string" && typeof value.mime === "string") {
    return filePayload(value.name, value.mime, fileBytes(value.data));
  }
  throw new CryptoError("OpenFailed");
}

/**
 * The top-level "v" of `text` (valid JSON, one object holding a "v") as a
 * BigInt, read from its digits as the Rust client reads a u64: a positive
 * integer written without fraction or exponent, below 2^64; anything else
 * (1.0, 1e0, "1", 0, -1) is OpenFailed. JSON.parse alone would take 1.0 as 1.
 */
function payloadVersion(text) {
  const raw = topLevelValue(text, "v");
  if (!/^[0-9]+$/.test(raw)) throw new CryptoError("OpenFailed");
  const version = BigInt(raw);
  if (version < 1n || version > 0xffffffffffffffffn) throw new CryptoError("OpenFailed");
  return version;
}

/** The raw text of member `name`'s value in the outermost object of `text` (valid JSON), trimmed. */
function topLevelValue(text, name) {
  let depth = 0;
  let isKeyNext = false;
  let start = -1;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === '"') {
      let end = i + 1;
      while (text[end] !== '"') end += text[end] === "\\" ? 2 : 1;
      if (depth === 1 && isKeyNext && JSON.parse(text.slice(i, end + 1)) === name) {
        start = text.indexOf(":", end) + 1;
      }
      isKeyNext = false;
      i = end;
    } else if (ch === "{" || ch === "[") {
      depth += 1;
      isKeyNext = ch === "{" && depth === 1;
    } else if (ch === "}" || ch === "]") {
      if (depth === 1 && start >= 0) return text.slice(start, i).trim();
      depth -= 1;
    } else if (ch === "," && depth === 1) {
      if (start >= 0) return text.slice(start, i).trim();
      isKeyNext = true;
    }
  }
  return "";
}

/**
 * Whether any object in `text` (valid JSON, already parsed once) names a
 * member twice, at any depth. Member names are compared after unescaping,
 * so "a" and "\u0061" are the same name.
 */
export function hasDuplicateKeys(text) {
  const open = []; // per open container: a Set of member names (object) or null (array)
  let isKeyNext = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === '"') {
      let end = i + 1;
      while (text[end] !== '"') end += text[end] === "\\" ? 2 : 1;
      const names = open.at(-1);
      if (isKeyNext && names) {
        const name = JSON.parse(text.slice(i, end + 1));
        if (names.has(name)) return true;
        names.add(name);
        isKeyNext = false;
      }
      i = end;
    } else if (ch === "{") {
      open.push(new Set());
      isKeyNext = true;
    } else if (ch === "[") {
      open.push(null);
      isKeyNext = false;
    } else if (ch === "}" || ch === "]") {
      open.pop();
      isKeyNext = false;
    } else if (ch === ",") {
      isKeyNext = open.at(-1) instanceof Set;
    }
  }
  return false;
}

/**
 * A file name from a message, safe to show and to save (§19): the part
 * after the last "/" or "\", control characters replaced by "_", at most
 * 255 bytes of UTF-8, and "attachment" if nothing (or "." or "..") is left.
 */
export function safeFileName(name) {
  const base = String(name).split(/[/\\]/).at(-1);
  let out = "";
  let bytes = 0;
  for (const ch of base.replace(/\p{Cc}/gu, "_")) {
    const size = utf8(ch).length;
    if (bytes + size > 255) break;
    out += ch;
    bytes += size;
  }
  return out === "" || out === "." || out === ".." ? "attachment" : out;
}

/**
 * The largest file that fits one body of `maxBodyBytes` once sealed:
 * ¾ × (max_body_bytes − 600 − the signature length) bytes (§19).
 */
export const maxAttachmentBytes = (maxBodyBytes, signatureLen) =>
  Math.max(0, Math.floor((3 * (maxBodyBytes - 600 - signatureLen)) / 4));

// --------------------------------------------------------------- sender keys

/** An AES-256 sender key for one epoch; `raw` stays in memory only. */
export async function senderKey(epoch, raw) {
  if (raw.length !== SENDER_KEY_LEN) throw new Error("a sender key is 32 bytes");
  const key = await subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
  return { epoch, raw, key };
}

/** 16 random bytes, never all zero (that is the legacy device of version 1). */
export function newDeviceId() {
  for (;;) {
    const id = randomBytes(DEVICE_ID_LEN);
    if (!isLegacyDevice(id)) return id;
  }
}

// ------------------------------------------------------------------ envelope

function parseEnvelope(body, kind = KIND_MESSAGE) {
  const r = new Reader(body, kind);
  const roomId = r.i64();
  const sender = r.username();
  const device = r.device();
  const epoch = r.u32();
  const counter = r.u64();
  const aadLen = r.position;
  const nonce = r.take(NONCE_LEN);
  const ciphertext = r.bytesU32();
  if (ciphertext.length < TAG_LEN) throw new CryptoError("OpenFailed");
  const signedLen = r.position;
  const signature = r.bytesU16();
  r.finish();
  return { header: { version: r.version, roomId, sender, device, epoch, counter }, aadLen, nonce, ciphertext, signedLen, signature };
}

/** Clear header fields (version, room, sender, device, epoch, counter as BigInt), unchecked. */
export const peekEnvelope = (body) => parseEnvelope(body).header;

/** Seals `payload` as message `counter` of `device`'s chain under `key`, format version 2. */
export function sealEnvelope(roomId, sender, device, key, counter, payload, signer) {
  return sealEnvelopeRaw({ roomId, sender, device, key, counter, plaintext: encodePayload(payload), signer });
}

/**
 * Seals `plaintext` exactly as given. For test vectors and tests (another
 * format `version`, a fixed `nonce`, a payload no client writes); a nonce
 * must never repeat under one sender key.
 */
export async function sealEnvelopeRaw({ version = FORMAT_VERSION, roomId, sender, device, key, counter, plaintext, signer, nonce = randomBytes(NONCE_LEN) }) {
  const w = new Writer(KIND_MESSAGE, version);
  w.i64(roomId);
  w.username(sender);
  w.device(device);
  w.u32(key.epoch);
  w.u64(counter);
  const aad = w.bytes();
  const sealed = new Uint8Array(await subtle.encrypt(
    { name: "AES-GCM", iv: nonce, additionalData: aad, tagLength: 128 }, key.key, plaintext));
  w.raw(nonce);
  w.bytesU32(sealed);
  const signature = await sign(signer, w.bytes());
  w.bytesU16(signature);
  return w.bytes();
}

/**
 * A set of u64 counters (BigInt) as sorted, disjoint, non-adjacent
 * inclusive ranges: an ordinary chain (0, 1, 2, …) is one range.
 */
export class CounterSet {
  constructor() {
    this.ranges = [];
  }
  /** Index of the last range starting at or below `n`, or -1. */
  locate(n) {
    let lo = 0;
    let hi = this.ranges.length - 1;
    let at = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.ranges[mid][0] <= n) {
        at = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return at;
  }
  has(n) {
    const i = this.locate(n);
    return i >= 0 && n <= this.ranges[i][1];
  }
  highest() {
    return this.ranges.at(-1)?.[1];
  }
  add(n) {
    if (this.has(n)) return;
    const i = this.locate(n);
    const left = this.ranges[i];
    const right = this.ranges[i + 1];
    const joinsLeft = left !== undefined && left[1] + 1n === n;
    const joinsRight = right !== undefined && right[0] === n + 1n;
    if (joinsLeft && joinsRight) {
      left[1] = right[1];
      this.ranges.splice(i + 1, 1);
    } else if (joinsLeft) {
      left[1] = n;
    } else if (joinsRight) {
      right[0] = n;
    } else {
      this.ranges.splice(i + 1, 0, [n, n]);
    }
  }
}

/**
 * The replay rule (§19): per chain (room, sender, device, epoch), the set
 * of counters opened. A counter already in the set is a replay wherever it
 * sits in the log; any other opens, and one below the chain's highest is
 * reported as late.
 */
export class ReplayTracker {
  constructor() {
    this.opened = new Map();
  }
  static id(h) {
    return `${h.roomId}\u0000${h.sender}\u0000${hex(h.device)}\u0000${h.epoch}`;
  }
  check(h) {
    if (this.opened.get(ReplayTracker.id(h))?.has(h.counter)) throw new CryptoError("Replay");
  }
  /** Records an opened counter; true if a higher one of its chain was opened before. */
  record(h) {
    const id = ReplayTracker.id(h);
    let set = this.opened.get(id);
    if (!set) this.opened.set(id, (set = new CounterSet()));
    const highest = set.highest();
    set.add(h.counter);
    return highest !== undefined && highest > h.counter;
  }
  highestSeen(h) {
    return this.opened.get(ReplayTracker.id(h))?.highest();
  }
}

/**
 * Opens an envelope. `context` is {roomId, sender, senderIdentity} (a key
 * accepted from the sender here). Checks in the order of §19; the first
 * failure wins. Returns {header, payload, isLate}; payload may be UNSUPPORTED.
 */
export async function openEnvelope(body, context, key, replay) {
  const parsed = parseEnvelope(body);
  const h = parsed.header;
  if (h.roomId !== context.roomId) throw new CryptoError("WrongRoom");
  if (h.sender !== context.sender) throw new CryptoError("WrongSender");
  if (!(await verify(context.senderIdentity, body.subarray(0, parsed.signedLen), parsed.signature))) {
    throw new CryptoError("BadSignature");
  }
  replay.check(h);
  if (!key || h.epoch !== key.epoch) throw new CryptoError("OpenFailed");
  let plain;
  try {
    plain = new Uint8Array(await subtle.decrypt(
      { name: "AES-GCM", iv: parsed.nonce, additionalData: body.subarray(0, parsed.aadLen), tagLength: 128 },
      key.key, parsed.ciphertext));
  } catch {
    throw new CryptoError("OpenFailed");
  }
  const payload = h.version >= 2 ? decodePayload(plain) : decodePayloadV1(plain);
  const isLate = replay.record(h);
  return { header: h, payload, isLate };
}

// -------------------------------------------------------------------- signals

/**
 * How far a typing signal's clock may be from the reader's (§21): 10
 * minutes. Receipts have no window: the server keeps the latest one per
 * member and sends it again after a reconnect, and a replayed old receipt
 * only claims a lower seq, which readers merge as a maximum.
 */
export const SIGNAL_FRESHNESS_MS = 10 * 60 * 1000;

/**
 * Seals a receipt or typing payload as a signal envelope (§21): the message
 * envelope with kind 0x03, under the device's current sender key, whose
 * counter is the sender's clock in Unix milliseconds (BigInt or number).
 */
export async function sealSignal(roomId, sender, device, key, counterMs, payload, signer, nonce = randomBytes(NONCE_LEN)) {
  const w = new Writer(KIND_SIGNAL);
  w.i64(roomId);
  w.username(sender);
  w.device(device);
  w.u32(key.epoch);
  w.u64(counterMs);
  const aad = w.bytes();
  const sealed = new Uint8Array(await subtle.encrypt(
    { name: "AES-GCM", iv: nonce, additionalData: aad, tagLength: 128 }, key.key, encodeSignalPayload(payload)));
  w.raw(nonce);
  w.bytesU32(sealed);
  w.bytesU16(await sign(signer, w.bytes()));
  return w.bytes();
}

/** A signal has the message envelope's layout with its own kind byte (§21). */
const parseSignal = (body) => parseEnvelope(body, KIND_SIGNAL);

/** A signal's clear header (room, sender, device, epoch, counter as BigInt), unchecked. */
export const peekSignal = (body) => parseSignal(body).header;

/**
 * Per (room, sender, device): the highest signal counter accepted. A
 * signal at or below it is a replay; a typing signal more than 10 minutes
 * from `now` is stale (checked once the payload is read: receipts have no
 * window). Separate from the message replay set (§21): the two never interact.
 */
export class SignalTracker {
  constructor() {
    this.highest = new Map();
  }
  static id(h) {
    return `${h.roomId}\u0000${h.sender}\u0000${hex(h.device)}`;
  }
  /** Throws Replay (not above the last accepted from the device). */
  check(h) {
    const seen = this.highest.get(SignalTracker.id(h));
    if (seen !== undefined && h.counter <= seen) throw new CryptoError("Replay");
  }
  /** Throws Stale if `h` is more than 10 minutes from `now` (typing only). */
  static checkWindow(h, now) {
    const distance = h.counter > BigInt(now) ? h.counter - BigInt(now) : BigInt(now) - h.counter;
    if (distance > BigInt(SIGNAL_FRESHNESS_MS)) throw new CryptoError("Stale");
  }
  record(h) {
    this.highest.set(SignalTracker.id(h), h.counter);
  }
}

/**
 * Opens a signal: framing, room, sender, signature under
 * `context.senderIdentity`, replay against `tracker`, the sender key of
 * its chain, the payload, then for typing only the 10-minute window at
 * `now` (receipts have none). Returns {header, payload}; throws
 * CryptoError (the caller drops the signal, whatever the reason).
 */
export async function openSignal(body, context, key, tracker, now = Date.now()) {
  const parsed = parseSignal(body);
  const h = parsed.header;
  if (h.roomId !== context.roomId) throw new CryptoError("WrongRoom");
  if (h.sender !== context.sender) throw new CryptoError("WrongSender");
  if (!(await verify(context.senderIdentity, body.subarray(0, parsed.signedLen), parsed.signature))) {
    throw new CryptoError("BadSignature");
  }
  tracker.check(h);
  if (!key || h.epoch !== key.epoch) throw new CryptoError("OpenFailed");
  let plain;
  try {
    plain = new Uint8Array(await subtle.decrypt(
      { name: "AES-GCM", iv: parsed.nonce, additionalData: body.subarray(0, parsed.aadLen), tagLength: 128 },
      key.key, parsed.ciphertext));
  } catch {
    throw new CryptoError("OpenFailed");
  }
  const payload = decodeSignalPayload(plain);
  // The type is known only now: a replayed "is typing" would mislead, a
  // replayed old receipt cannot (readers keep each user's maximum).
  if (payload.t === "typing") SignalTracker.checkWindow(h, now);
  tracker.record(h);
  return { header: h, payload };
}

export const receiptPayload = (delivered, read = null) => (isSeq(read) ? { t: "receipt", delivered, read } : { t: "receipt", delivered });
export const typingPayload = (typing) => ({ t: "typing", typing: Boolean(typing) });

export function encodeSignalPayload(p) {
  if (p.t === "receipt") {
    if (!Number.isSafeInteger(p.delivered) || p.delivered < 0) throw new Error("delivered is a seq");
    return utf8(JSON.stringify({ v: PAYLOAD_VERSION, t: "receipt", delivered: p.delivered, ...(isSeq(p.read) ? { read: p.read } : {}) }));
  }
  if (p.t === "typing") return utf8(JSON.stringify({ v: PAYLOAD_VERSION, t: "typing", typing: p.typing }));
  throw new Error("unknown signal");
}

/**
 * A signal's plaintext: a receipt or a typing state. Anything else (a
 * newer version, another type, a mistyped member) fails: signals are
 * dropped silently, never shown (§21).
 */
export function decodeSignalPayload(bytes) {
  const { text, value } = parseJson(bytes);
  if (hasDuplicateKeys(text)) throw new CryptoError("OpenFailed");
  // Unlike a message payload, "v" is required (as the Rust reader has it).
  if (value.v === undefined || payloadVersion(text) !== 1n) throw new CryptoError("OpenFailed");
  const count = (name) => (typeof value[name] === "number" && /^[0-9]+$/.test(topLevelValue(text, name)) ? Number(topLevelValue(text, name)) : null);
  if (value.t === "receipt") {
    const delivered = count("delivered");
    if (delivered === null || !Number.isSafeInteger(delivered)) throw new CryptoError("OpenFailed");
    if (value.read === undefined || value.read === null) return receiptPayload(delivered);
    const read = count("read");
    if (read === null || !Number.isSafeInteger(read)) throw new CryptoError("OpenFailed");
    return { t: "receipt", delivered, read };
  }
  if (value.t === "typing") {
    if (typeof value.typing !== "boolean") throw new CryptoError("OpenFailed");
    return typingPayload(value.typing);
  }
  throw new CryptoError("OpenFailed");
}

// ------------------------------------------------------------ timer statement

/** The durations clients offer (§21), in seconds; 0 is off. */
export const TIMER_CHOICES = [0, 300, 3600, 28800, 86400, 604800, 2419200];
export const MAX_TIMER_SECS = 2419200;

/** Signs a timer statement (§21, kind 0x04): `room`'s messages disappear after `duration` s (0: off), set after seq `after`. */
export async function sealTimer(roomId, sender, duration, after, signer) {
  if (!Number.isInteger(duration) || duration < 0 || duration > 0xffffffff) throw new Error("a duration is a u32 of seconds");
  const w = new Writer(KIND_TIMER);
  w.i64(roomId);
  w.username(sender);
  w.u32(duration);
  w.u64(after);
  w.bytesU16(await sign(signer, w.bytes()));
  return w.bytes();
}

/** A timer statement's fields {roomId, sender, duration, after (number)} and what is signed; throws CryptoError on bad framing. */
export function parseTimer(body) {
  const r = new Reader(body, KIND_TIMER);
  const roomId = r.i64();
  const sender = r.username();
  const duration = r.u32();
  const after = Number(r.u64());
  const signedLen = r.position;
  const signature = r.bytesU16();
  r.finish();
  return { roomId, sender, duration, after, signedLen, signature };
}

/**
 * Checks a timer statement for `context` {roomId, sender, senderIdentity}:
 * framing, room, sender, signature. Returns {duration, after}.
 */
export async function openTimer(body, context) {
  const t = parseTimer(body);
  if (t.roomId !== context.roomId) throw new CryptoError("WrongRoom");
  if (t.sender !== context.sender) throw new CryptoError("WrongSender");
  if (!(await verify(context.senderIdentity, body.subarray(0, t.signedLen), t.signature))) throw new CryptoError("BadSignature");
  return { duration: t.duration, after: t.after };
}

/** Whether `identity` signed `body` (a message or a distribution), whatever else is wrong with it. */
export async function signedBy(body, identity) {
  // Every body ends with `s u16 | signature`, s being the bytes after it.
  for (let tail = 2; tail <= Math.min(body.length, 2 + 1024); tail++) {
    const at = body.length - tail;
    if (((body[at] << 8) | body[at + 1]) + 2 === tail) {
      return verify(identity, body.subarray(0, at), body.subarray(at + 2));
    }
  }
  return false;
}

// -------------------------------------------------------------- distribution

/** What the wrapped key is bound to: room, epoch, device (version 2), sender. */
function wrapContext(version, roomId, sender, device, epoch) {
  const fixed = new Uint8Array(12);
  const view = new DataView(fixed.buffer);
  view.setBigInt64(0, BigInt(roomId));
  view.setUint32(8, epoch);
  return version >= 2 ? concat(fixed, device, utf8(sender)) : concat(fixed, utf8(sender));
}

/** Wraps `key` for each recipient ({username, identity}) and signs it (version 2 unless told). */
export async function sealDistribution(roomId, sender, device, key, recipients, signer, version = FORMAT_VERSION) {
  const names = new Set(recipients.map((r) => r.username));
  if (names.size !== recipients.length) throw new CryptoError("InvalidUsername");
  const w = new Writer(KIND_DISTRIBUTION, version);
  w.i64(roomId);
  w.username(sender);
  w.device(device);
  w.u32(key.epoch);
  w.u16(recipients.length);
  const plain = concat(key.raw, wrapContext(version, roomId, sender, device, key.epoch));
  for (const r of recipients) {
    w.username(r.username);
    w.raw(r.identity.fp);
    w.bytesU16(new Uint8Array(await subtle.encrypt(OAEP, r.identity.wrapKey, plain)));
  }
  w.bytesU16(await sign(signer, w.bytes()));
  return w.bytes();
}

function parseDistribution(body) {
  const r = new Reader(body, KIND_DISTRIBUTION);
  const roomId = r.i64();
  const sender = r.username();
  const device = r.device();
  const epoch = r.u32();
  const count = r.u16();
  const recipients = [];
  const wrapped = [];
  for (let i = 0; i < count; i++) {
    const name = r.username();
    const fp = r.take(32);
    recipients.push({ username: name, fp, fpHex: hex(fp) });
    wrapped.push(r.bytesU16());
  }
  const signedLen = r.position;
  const signature = r.bytesU16();
  r.finish();
  return { header: { version: r.version, roomId, sender, device, epoch, recipients }, wrapped, signedLen, signature };
}

/** Clear fields (version, room, sender, device, epoch, recipients with fingerprints), unchecked. */
export const peekDistribution = (body) => parseDistribution(body).header;

/**
 * Checks a distribution (room, sender, signature under `context.senderIdentity`),
 * finds the entry for `me` under `mine`'s fingerprint and unwraps it.
 */
export async function openDistribution(body, context, me, mine) {
  const parsed = parseDistribution(body);
  const h = parsed.header;
  if (h.roomId !== context.roomId) throw new CryptoError("WrongRoom");
  if (h.sender !== context.sender) throw new CryptoError("WrongSender");
  if (!(await verify(context.senderIdentity, body.subarray(0, parsed.signedLen), parsed.signature))) {
    throw new CryptoError("BadSignature");
  }
  const index = h.recipients.findIndex((r) => r.username === me && equalBytes(r.fp, mine.public.fp));
  if (index < 0) throw new CryptoError("NotARecipient");
  let plain;
  try {
    plain = new Uint8Array(await subtle.decrypt(OAEP, mine.unwrapKey, parsed.wrapped[index]));
  } catch {
    throw new CryptoError("OpenFailed");
  }
  const expected = wrapContext(h.version, h.roomId, h.sender, h.device, h.epoch);
  if (plain.length !== SENDER_KEY_LEN + expected.length || !equalBytes(plain.subarray(SENDER_KEY_LEN), expected)) {
    throw new CryptoError("OpenFailed");
  }
  return senderKey(h.epoch, plain.slice(0, SENDER_KEY_LEN));
}

// -------------------------------------------------------------- sending side

/**
 * One device's sending state in one room: current sender key, who it was
 * distributed to (name + fingerprint), next counter. Epochs and counters
 * are this device's own, so devices of one user never collide.
 */
export class SenderKeyState {
  constructor(roomId, sender, device, lastEpoch = 0, current = null) {
    this.roomId = roomId;
    this.sender = sender;
    this.device = device;
    this.lastEpoch = lastEpoch;
    this.current = current;
  }

  /** After a restart, with this device's latest key recovered from the log. */
  static resumeWithKey(roomId, sender, device, key, members, nextCounter) {
    const set = new Set(members.map((m) => `${m.username}:${m.fpHex}`));
    return new SenderKeyState(roomId, sender, device, key.epoch, { key, members: set, nextCounter: BigInt(nextCounter) });
  }

  /** Why a new key is needed before sending to `members` ({username, identity}), or null. */
  rotationNeeded(members) {
    if (!this.current) return { reason: "no_key_yet" };
    const wanted = new Set(members.map((m) => `${m.username}:${m.identity.fpHex}`));
    for (const held of this.current.members) {
      if (!wanted.has(held)) {
        const name = held.slice(0, held.indexOf(":"));
        const still = members.some((m) => m.username === name);
        return { reason: still ? "member_key_changed" : "member_left", username: name };
      }
    }
    for (const want of wanted) {
      if (!this.current.members.has(want)) return { reason: "member_joined", username: want.slice(0, want.indexOf(":")) };
    }
    if (this.current.nextCounter >= MAX_MESSAGES_PER_KEY) return { reason: "key_worn_out" };
    return null;
  }

  /** Makes the next epoch's key; returns its signed distribution. */
  async rotate(members, signer) {
    const epoch = this.lastEpoch + 1;
    if (epoch > 0xffffffff) throw new CryptoError("SenderKeyExhausted");
    const key = await senderKey(epoch, randomBytes(SENDER_KEY_LEN));
    const body = await sealDistribution(this.roomId, this.sender, this.device, key, members, signer);
    this.lastEpoch = epoch;
    this.current = { key, members: new Set(members.map((m) => `${m.username}:${m.identity.fpHex}`)), nextCounter: 0n };
    return body;
  }

  async seal(payload, signer) {
    const c = this.current;
    if (!c || c.nextCounter >= MAX_MESSAGES_PER_KEY) throw new CryptoError("SenderKeyExhausted");
    const counter = c.nextCounter;
    c.nextCounter += 1n;
    return sealEnvelope(this.roomId, this.sender, this.device, c.key, counter, payload, signer);
  }
}

// ------------------------------------------------------------------ key file

export const KDF_DEFAULTS = { memory_kib: 19456, iterations: 2, parallelism: 1 };
const KEYFILE_AAD = utf8("hush-keyfile-v1\u0000");
const KEYFILE_FIELDS = "cipher,ciphertext,fingerprint,format,kdf,public_key,version";
const KDF_FIELDS = "iterations,memory_kib,name,parallelism,salt,version";

const acceptableKdf = (k) =>
  Number.isInteger(k.memory_kib) && k.memory_kib >= 19456 && k.memory_kib <= 1024 * 1024 &&
  Number.isInteger(k.iterations) && k.iterations >= 2 && k.iterations <= 64 &&
  Number.isInteger(k.parallelism) && k.parallelism >= 1 && k.parallelism <= 16;

async function wrappingKey(passphrase, salt, kdf) {
  const raw = await globalThis.hashwasm.argon2id({
    password: utf8(passphrase), salt, parallelism: kdf.parallelism, iterations: kdf.iterations,
    memorySize: kdf.memory_kib, hashLength: 32, outputType: "binary",
  });
  return subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
}

/** A key file object ("hush-identity-key" v1) sealing `pkcs8` under `passphrase`. */
export async function sealKeyFile(pkcs8, spki, passphrase, kdf = KDF_DEFAULTS) {
  if (!passphrase) throw new Error("the passphrase must not be empty");
  if (!acceptableKdf(kdf)) throw new Error("unacceptable Argon2id parameters");
  const salt = randomBytes(16);
  const nonce = randomBytes(NONCE_LEN);
  const key = await wrappingKey(passphrase, salt, kdf);
  const ciphertext = new Uint8Array(await subtle.encrypt(
    { name: "AES-GCM", iv: nonce, additionalData: concat(KEYFILE_AAD, spki), tagLength: 128 }, key, pkcs8));
  return {
    format: "hush-identity-key",
    version: 1,
    public_key: b64encode(spki),
    fingerprint: hex(await fingerprint(spki)),
    kdf: { name: "argon2id", version: 19, ...kdf, salt: b64encode(salt) },
    cipher: { name: "aes-256-gcm", nonce: b64encode(nonce) },
    ciphertext: b64encode(ciphertext),
  };
}

/** Validates a key file object as the Rust client does; returns its parts. */
export async function parseKeyFile(file) {
  const bad = (why) => new Error(`not a valid hush key file: ${why}`);
  if (!file || typeof file !== "object" || Object.keys(file).sort().join(",") !== KEYFILE_FIELDS) throw bad("unexpected fields");
  if (file.format !== "hush-identity-key") throw bad("unknown format name");
  if (file.version !== 1) throw bad(`unsupported version ${file.version}`);
  const kdf = file.kdf;
  if (!kdf || Object.keys(kdf).sort().join(",") !== KDF_FIELDS || kdf.name !== "argon2id" || kdf.version !== 19 || !acceptableKdf(kdf)) {
    throw bad("unacceptable key derivation parameters");
  }
  if (!file.cipher || Object.keys(file.cipher).sort().join(",") !== "name,nonce" || file.cipher.name !== "aes-256-gcm") throw bad("unknown cipher");
  let spki, salt, nonce, ciphertext;
  try {
    [spki, salt, nonce, ciphertext] = [file.public_key, kdf.salt, file.cipher.nonce, file.ciphertext].map(b64decode);
  } catch {
    throw bad("invalid base64");
  }
  if (salt.length < 8 || nonce.length !== NONCE_LEN) throw bad("bad salt or nonce");
  const pub = await publicIdentity(spki).catch(() => { throw bad("not an acceptable RSA public key"); });
  if (pub.fpHex !== file.fingerprint) throw bad("fingerprint does not match the public key");
  return { spki, salt, nonce, ciphertext, kdf: { memory_kib: kdf.memory_kib, iterations: kdf.iterations, parallelism: kdf.parallelism }, public: pub };
}

/**
 * Opens a key file with `passphrase` into a non-extractable private
 * identity. The PKCS#8 bytes exist only inside this function.
 */
export async function openKeyFile(file, passphrase) {
  const parts = await parseKeyFile(file);
  const key = await wrappingKey(passphrase, parts.salt, parts.kdf);
  let pkcs8;
  try {
    pkcs8 = new Uint8Array(await subtle.decrypt(
      { name: "AES-GCM", iv: parts.nonce, additionalData: concat(KEYFILE_AAD, parts.spki), tagLength: 128 }, key, parts.ciphertext));
  } catch {
    throw new Error("wrong passphrase (or the key file is damaged)");
  }
  try {
    return await privateIdentity(pkcs8, parts.spki);
  } finally {
    pkcs8.fill(0);
  }
}

/** The `hush keys export` bundle: {"format":"hush-identity-export-v1", username, current, previous}. */
export function exportBundle(username, current, previous = []) {
  return { format: "hush-identity-export-v1", username, current, previous };
}

export function parseBundle(text) {
  let bundle;
  try {
    bundle = JSON.parse(text);
  } catch {
    throw new Error("not a hush identity export (invalid JSON)");
  }
  if (bundle?.format !== "hush-identity-export-v1") throw new Error("not a hush identity export");
  if (!isValidUsername(bundle.username)) throw new Error("the export names an invalid username");
  if (!bundle.current || !Array.isArray(bundle.previous ?? [])) throw new Error("the export has no current key");
  return { username: bundle.username, current: bundle.current, previous: bundle.previous ?? [] };
}

// hush's end-to-end encryption in the browser, on WebCrypto: identity keys
// (RSA-PSS-SHA256 signatures, RSA-OAEP-SHA256 key wrapping), message
// envelopes (AES-256-GCM), sender-key distributions and the sending state
// that decides when to rotate, fingerprints, safety numbers, signed
// statements, and passphrase-protected key files (Argon2id, vendored).
// Byte for byte the formats of docs/PROTOCOL.md §19, checked against
// tests/vectors/ in Chromium by tests/browser/vectors.test.mjs.
//
// Private keys live only as non-extractable CryptoKeys: an identity is one
// PKCS#8 imported twice, for signing (RSA-PSS) and for unwrapping (RSA-OAEP).

import "../vendor/hash-wasm/argon2.umd.min.js";
import {
  CryptoError, Reader, Writer, b64decode, b64encode, bodyKind, concat, equalBytes, fromUtf8, hex,
  isValidUsername, utf8, KIND_DISTRIBUTION, KIND_MESSAGE,
} from "./bytes.js";

export { CryptoError, bodyKind, KIND_DISTRIBUTION, KIND_MESSAGE };

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

/** {"t":"text","text":…} or {"t":"file","name":…,"mime":…,"data":base64} */
export const textPayload = (text) => ({ t: "text", text });
export const filePayload = (name, mime, data) => ({ t: "file", name, mime, data });

export function encodePayload(p) {
  if (p.t === "text") return utf8(JSON.stringify({ t: "text", text: p.text }));
  if (p.t === "file") return utf8(JSON.stringify({ t: "file", name: p.name, mime: p.mime, data: b64encode(p.data) }));
  throw new Error("unknown payload");
}

/** Strict: unknown fields or kinds are OpenFailed, as in the Rust client. */
export function decodePayload(bytes) {
  let value;
  try {
    value = JSON.parse(fromUtf8(bytes));
  } catch {
    throw new CryptoError("OpenFailed");
  }
  const fields = value && typeof value === "object" && !Array.isArray(value) ? Object.keys(value).sort().join(",") : "";
  if (value?.t === "text" && fields === "t,text" && typeof value.text === "string") return textPayload(value.text);
  if (value?.t === "file" && fields === "data,mime,name,t" && typeof value.name === "string" && typeof value.mime === "string") {
    try {
      return filePayload(value.name, value.mime, b64decode(value.data));
    } catch {
      throw new CryptoError("OpenFailed");
    }
  }
  throw new CryptoError("OpenFailed");
}

// --------------------------------------------------------------- sender keys

/** An AES-256 sender key for one epoch; `raw` stays in memory only. */
export async function senderKey(epoch, raw) {
  if (raw.length !== SENDER_KEY_LEN) throw new Error("a sender key is 32 bytes");
  const key = await subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
  return { epoch, raw, key };
}

// ------------------------------------------------------------------ envelope

function parseEnvelope(body) {
  const r = new Reader(body, KIND_MESSAGE);
  const roomId = r.i64();
  const sender = r.username();
  const epoch = r.u32();
  const counter = r.u64();
  const aadLen = r.position;
  const nonce = r.take(NONCE_LEN);
  const ciphertext = r.bytesU32();
  if (ciphertext.length < TAG_LEN) throw new CryptoError("OpenFailed");
  const signedLen = r.position;
  const signature = r.bytesU16();
  r.finish();
  return { header: { roomId, sender, epoch, counter }, aadLen, nonce, ciphertext, signedLen, signature };
}

/** Clear header fields (room, sender, epoch, counter as BigInt), unchecked. */
export const peekEnvelope = (body) => parseEnvelope(body).header;

/** Seals message `counter` under `key`; `nonce` is for test vectors only. */
export async function sealEnvelope(roomId, sender, key, counter, payload, signer, nonce = randomBytes(NONCE_LEN)) {
  const w = new Writer(KIND_MESSAGE);
  w.i64(roomId);
  w.username(sender);
  w.u32(key.epoch);
  w.u64(counter);
  const aad = w.bytes();
  const sealed = new Uint8Array(await subtle.encrypt(
    { name: "AES-GCM", iv: nonce, additionalData: aad, tagLength: 128 }, key.key, encodePayload(payload)));
  w.raw(nonce);
  w.bytesU32(sealed);
  const signature = await sign(signer, w.bytes());
  w.bytesU16(signature);
  return w.bytes();
}

/** Highest counter opened per (room, sender, epoch); rejects anything not above it. */
export class ReplayTracker {
  constructor() {
    this.highest = new Map();
  }
  static id(h) {
    return `${h.roomId}\u0000${h.sender}\u0000${h.epoch}`;
  }
  check(h) {
    const seen = this.highest.get(ReplayTracker.id(h));
    if (seen !== undefined && h.counter <= seen) throw new CryptoError("Replay");
  }
  record(h) {
    const id = ReplayTracker.id(h);
    const seen = this.highest.get(id);
    if (seen === undefined || h.counter > seen) this.highest.set(id, h.counter);
  }
}

/**
 * Opens an envelope. `context` is {roomId, sender, senderIdentity} (the
 * pinned public identity). Checks in the order of §19; first failure wins.
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
  const payload = decodePayload(plain);
  replay.record(h);
  return { header: h, payload };
}

// -------------------------------------------------------------- distribution

function wrapContext(roomId, sender, epoch) {
  const fixed = new Uint8Array(12);
  const view = new DataView(fixed.buffer);
  view.setBigInt64(0, BigInt(roomId));
  view.setUint32(8, epoch);
  return concat(fixed, utf8(sender));
}

/** Wraps `key` for each recipient ({username, identity}) and signs it. */
export async function sealDistribution(roomId, sender, key, recipients, signer) {
  const names = new Set(recipients.map((r) => r.username));
  if (names.size !== recipients.length) throw new CryptoError("InvalidUsername");
  const w = new Writer(KIND_DISTRIBUTION);
  w.i64(roomId);
  w.username(sender);
  w.u32(key.epoch);
  w.u16(recipients.length);
  const plain = concat(key.raw, wrapContext(roomId, sender, key.epoch));
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
  return { header: { roomId, sender, epoch, recipients }, wrapped, signedLen, signature };
}

/** Clear fields (room, sender, epoch, recipients with fingerprints), unchecked. */
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
  const expected = wrapContext(h.roomId, h.sender, h.epoch);
  if (plain.length !== SENDER_KEY_LEN + expected.length || !equalBytes(plain.subarray(SENDER_KEY_LEN), expected)) {
    throw new CryptoError("OpenFailed");
  }
  return senderKey(h.epoch, plain.slice(0, SENDER_KEY_LEN));
}

// -------------------------------------------------------------- sending side

/**
 * One user's sending state in one room: current sender key, who it was
 * distributed to (name + fingerprint), next counter.
 */
export class SenderKeyState {
  constructor(roomId, sender, lastEpoch = 0, current = null) {
    this.roomId = roomId;
    this.sender = sender;
    this.lastEpoch = lastEpoch;
    this.current = current;
  }

  /** After a restart, with this user's latest key recovered from the log. */
  static resumeWithKey(roomId, sender, key, members, nextCounter) {
    const set = new Set(members.map((m) => `${m.username}:${m.fpHex}`));
    return new SenderKeyState(roomId, sender, key.epoch, { key, members: set, nextCounter: BigInt(nextCounter) });
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
    const body = await sealDistribution(this.roomId, this.sender, key, members, signer);
    this.lastEpoch = epoch;
    this.current = { key, members: new Set(members.map((m) => `${m.username}:${m.identity.fpHex}`)), nextCounter: 0n };
    return body;
  }

  async seal(payload, signer) {
    const c = this.current;
    if (!c || c.nextCounter >= MAX_MESSAGES_PER_KEY) throw new CryptoError("SenderKeyExhausted");
    const counter = c.nextCounter;
    c.nextCounter += 1n;
    return sealEnvelope(this.roomId, this.sender, c.key, counter, payload, signer);
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

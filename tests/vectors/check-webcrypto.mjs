// Independent check of the hush vectors with WebCrypto only (the same API
// the browser client uses): `node tests/vectors/check-webcrypto.mjs`.
// Needs Node 20+ (globalThis.crypto.subtle). Exits non-zero on any mismatch.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const fixtures = join(here, "..", "fixtures", "keys");
const subtle = globalThis.crypto.subtle;
const load = (name) => JSON.parse(readFileSync(join(here, name), "utf8"));
const b64 = (s) => new Uint8Array(Buffer.from(s, "base64"));
const unhex = (s) => new Uint8Array(Buffer.from(s, "hex"));
const hex = (u) => Buffer.from(u).toString("hex");
const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
let failures = 0;
const check = (ok, what) => {
  if (!ok) { failures++; console.error("FAIL", what); }
};

const pssKey = (spki) =>
  subtle.importKey("spki", spki, { name: "RSA-PSS", hash: "SHA-256" }, false, ["verify"]);
const oaepPrivate = (fixture) => {
  const pem = readFileSync(join(fixtures, `${fixture}.pem`), "utf8");
  const der = b64(pem.replace(/-----[^-]+-----|\s/g, ""));
  return subtle.importKey("pkcs8", der, { name: "RSA-OAEP", hash: "SHA-256" }, false, ["decrypt"]);
};
const gcmKey = (raw) => subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);

// fingerprint.json
for (const c of load("fingerprint.json").cases) {
  const fp = hex(new Uint8Array(await subtle.digest("SHA-256", b64(c.spki_der_b64))));
  check(fp === c.fingerprint_hex, `fingerprint ${c.fixture}`);
  check(fp.match(/.{4}/g).join(" ") === c.fingerprint_display, `display ${c.fixture}`);
}

// safety_number.json
for (const c of load("safety_number.json").cases) {
  const users = [
    [c.first_username, unhex(c.first_fingerprint_hex)],
    [c.second_username, unhex(c.second_fingerprint_hex)],
  ].sort((a, b) => Buffer.compare(Buffer.from(a[0]), Buffer.from(b[0])));
  const parts = [Buffer.from("hush-safety-v1\0")];
  for (const [name, fp] of users) parts.push(Buffer.from([name.length]), Buffer.from(name), fp);
  const digest = new Uint8Array(await subtle.digest("SHA-512", Buffer.concat(parts)));
  const groups = [];
  for (let i = 0; i < 12; i++) {
    let v = 0;
    for (const byte of digest.slice(5 * i, 5 * i + 5)) v = v * 256 + byte;
    groups.push(String(v % 100000).padStart(5, "0"));
  }
  check(groups.join(" ") === c.safety_number, `safety ${c.first_username}/${c.second_username}`);
}

// The AAD of an envelope, built from its fields as PROTOCOL.md §19 lays it
// out (version 2 adds the 16-byte device id after the sender).
const be = (n, bytes) => {
  const out = new Uint8Array(bytes);
  let v = BigInt(n);
  for (let i = bytes - 1; i >= 0; i--) { out[i] = Number(v & 0xffn); v >>= 8n; }
  return out;
};
const concat = (...parts) => Uint8Array.from(parts.flatMap((p) => [...p]));
const envelopeAad = (v, counter) => concat(
  new TextEncoder().encode("HUSH"), [v.format_version ?? 1, 0x01], be(v.room_id, 8),
  [v.sender.length], new TextEncoder().encode(v.sender),
  v.device_id_hex ? unhex(v.device_id_hex) : [], be(v.epoch, 4), be(counter, 8));

// The chain and counter of an envelope, read from its header.
const chainOf = (v, body) => {
  const n = body[14];
  const deviceLen = body[4] >= 2 ? 16 : 0;
  const at = 15 + n + deviceLen;
  const chain = hex(body.slice(6, at + 4));
  const counter = new DataView(body.buffer, body.byteOffset).getBigUint64(at + 4);
  return [chain, counter];
};

for (const [file, version] of [["envelope.json", 2], ["envelope_v1.json", 1]]) {
  const env = load(file);
  check((env.format_version ?? 1) === version, `${file}: format_version`);
  const key = await gcmKey(unhex(env.sender_key_hex));
  const alicePss = await pssKey(b64(env.sender_spki_der_b64));
  for (const c of env.accept) {
    const name = `${file} ${c.name}`;
    const body = b64(c.envelope_b64);
    const aad = unhex(c.aad_hex);
    const iv = unhex(c.nonce_hex);
    check(equal(aad, envelopeAad(env, c.counter)), `${name}: aad from the documented layout`);
    check(equal(body.slice(0, aad.length), aad), `${name}: aad prefix`);
    check(equal(body.slice(aad.length, aad.length + 12), iv), `${name}: nonce`);
    const sealed = new Uint8Array(await subtle.encrypt(
      { name: "AES-GCM", iv, additionalData: aad, tagLength: 128 }, key,
      new TextEncoder().encode(c.payload_json)));
    check(hex(sealed) === hex(b64(c.ciphertext_and_tag_b64)), `${name}: AES-GCM output`);
    const sigLen = (body[c.signed_len] << 8) | body[c.signed_len + 1];
    const sig = body.slice(c.signed_len + 2);
    check(sig.length === sigLen, `${name}: sig_len`);
    check(await subtle.verify({ name: "RSA-PSS", saltLength: 32 }, alicePss, sig,
      body.slice(0, c.signed_len)), `${name}: signature`);
  }
  // The replay rule: a counter opened before in its chain is a replay; a
  // lower one that was never opened is accepted (late).
  const seenAfter = (bodies) => {
    const seen = new Map();
    for (const b of bodies) {
      const [chain, counter] = chainOf(env, b64(b));
      if (!seen.has(chain)) seen.set(chain, new Set());
      seen.get(chain).add(counter);
    }
    return seen;
  };
  for (const c of env.reorder ?? []) {
    const seen = seenAfter(c.open_first_b64);
    const [chain, counter] = chainOf(env, b64(c.envelope_b64));
    const set = seen.get(chain) ?? new Set();
    check(!set.has(counter), `${file} ${c.name}: not a replay`);
    check([...set].some((x) => x > counter) === c.late, `${file} ${c.name}: late`);
  }
  for (const c of env.reject.filter((c) => c.expect === "Replay")) {
    const [chain, counter] = chainOf(env, b64(c.envelope_b64));
    check(seenAfter(c.open_first_b64).get(chain)?.has(counter) === true, `${file} ${c.name}: replay`);
  }
}

// sender_key.json: every recipient unwraps its key to the documented
// plaintext; the signature verifies.
for (const [file, version] of [["sender_key.json", 2], ["sender_key_v1.json", 1]]) {
  const sk = load(file);
  check((sk.format_version ?? 1) === version, `${file}: format_version`);
  const expected = concat(unhex(sk.sender_key_hex), be(sk.room_id, 8), be(sk.epoch, 4),
    sk.device_id_hex ? unhex(sk.device_id_hex) : [], new TextEncoder().encode(sk.sender));
  check(hex(expected) === sk.wrapped_plaintext_hex, `${file}: wrapped plaintext layout`);
  const dist = b64(sk.distribution_b64);
  check(await subtle.verify({ name: "RSA-PSS", saltLength: 32 }, await pssKey(b64(sk.sender_spki_der_b64)),
    dist.slice(sk.signed_len + 2), dist.slice(0, sk.signed_len)), `${file}: distribution signature`);
  for (const r of sk.recipients) {
    const plain = new Uint8Array(await subtle.decrypt({ name: "RSA-OAEP" },
      await oaepPrivate(r.fixture), b64(r.wrapped_key_b64)));
    check(hex(plain) === sk.wrapped_plaintext_hex, `${file}: unwrap for ${r.username}`);
  }
}

// signal.json: the message envelope layout with kind byte 0x03 and the
// sealer's clock as counter (PROTOCOL §21); freshness per device.
{
  const sig = load("signal.json");
  const key = await gcmKey(unhex(sig.sender_key_hex));
  const alicePss = await pssKey(b64(sig.sender_spki_der_b64));
  const signalAad = (counter) => concat(
    new TextEncoder().encode("HUSH"), [sig.format_version, sig.kind_byte], be(sig.room_id, 8),
    [sig.sender.length], new TextEncoder().encode(sig.sender),
    unhex(sig.device_id_hex), be(sig.epoch, 4), be(counter, 8));
  const counterOf = (body) => {
    const at = 15 + body[14] + 16 + 4;
    return new DataView(body.buffer, body.byteOffset).getBigUint64(at);
  };
  // Freshness: above the last accepted from the device; typing (only)
  // within max_skew_ms. Receipts have no window (§21, kept receipts).
  const typeOf = async (body) => {
    const aadLen = 15 + body[14] + 16 + 4 + 8;
    const iv = body.slice(aadLen, aadLen + 12);
    const ctLen = new DataView(body.buffer, body.byteOffset).getUint32(aadLen + 12);
    const ct = body.slice(aadLen + 16, aadLen + 16 + ctLen);
    const plain = await subtle.decrypt(
      { name: "AES-GCM", iv, additionalData: body.slice(0, aadLen), tagLength: 128 }, key, ct);
    return JSON.parse(new TextDecoder().decode(plain)).t;
  };
  const fresh = async (firsts, body, now) => {
    const last = firsts.map((b) => counterOf(b64(b))).reduce((a, b) => (b > a ? b : a), -1n);
    const c = counterOf(body);
    if (c <= last) return "Replay";
    if ((await typeOf(body)) !== "typing") return "ok";
    const skew = c > BigInt(now) ? c - BigInt(now) : BigInt(now) - c;
    return skew > BigInt(sig.max_skew_ms) ? "Stale" : "ok";
  };
  for (const c of sig.accept) {
    const name = `signal.json ${c.name}`;
    const body = b64(c.signal_b64);
    const aad = unhex(c.aad_hex);
    check(body[5] === 0x03, `${name}: kind byte`);
    check(equal(aad, signalAad(c.counter)), `${name}: aad from the documented layout`);
    check(equal(body.slice(0, aad.length), aad), `${name}: aad prefix`);
    const iv = body.slice(aad.length, aad.length + 12);
    check(hex(iv) === c.nonce_hex, `${name}: nonce`);
    const plain = new TextDecoder().decode(await subtle.decrypt(
      { name: "AES-GCM", iv, additionalData: aad, tagLength: 128 }, key,
      b64(c.ciphertext_and_tag_b64)));
    check(plain === c.payload_json, `${name}: decrypts to the payload`);
    check(JSON.parse(plain).t === c.frame_kind, `${name}: frame kind`);
    const sigBytes = body.slice(c.signed_len + 2);
    check(await subtle.verify({ name: "RSA-PSS", saltLength: 32 }, alicePss, sigBytes,
      body.slice(0, c.signed_len)), `${name}: signature`);
    check((await fresh(c.open_first_b64, body, sig.now_ms)) === "ok", `${name}: fresh`);
  }
  for (const c of sig.reject.filter((c) => c.expect === "Replay" || c.expect === "Stale")) {
    check((await fresh(c.open_first_b64, b64(c.signal_b64), c.now_ms)) === c.expect, `signal.json ${c.name}`);
  }
  // The point of the exemption: at least one accepted receipt is older than the window.
  check(sig.accept.some((c) => c.frame_kind === "receipt" && BigInt(sig.now_ms) - BigInt(c.counter) > BigInt(sig.max_skew_ms)),
    "signal.json: an accepted receipt older than max_skew_ms");
}

if (failures) { console.error(`${failures} check(s) failed`); process.exit(1); }
console.log("all WebCrypto vector checks passed");

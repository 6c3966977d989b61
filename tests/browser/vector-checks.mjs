// Every case of tests/vectors/*.json through the web client's own crypto
// module (web/js/crypto.js). `runVectorChecks` is self-contained so the
// browser test can ship it into the page and run it inside Chromium; it
// returns a list of {name, ok, detail}.

export async function runVectorChecks(moduleUrl, vectors, pems) {
  const c = await import(moduleUrl);
  const results = [];
  const check = (name, ok, detail = "") => results.push({ name, ok: !!ok, detail: String(detail) });
  const b64 = (s) => Uint8Array.from(atob(s), (ch) => ch.charCodeAt(0));
  const unhex = (s) => Uint8Array.from(s.match(/../g) || [], (h) => parseInt(h, 16));
  const hex = (u) => Array.from(u, (b) => b.toString(16).padStart(2, "0")).join("");
  const pkcs8 = (pem) => b64(pem.replace(/-----[^-]+-----|\s/g, ""));
  const spkiOf = Object.fromEntries(vectors.fingerprint.cases.map((x) => [x.fixture, b64(x.spki_der_b64)]));
  const privateOf = (fixture) => c.privateIdentity(pkcs8(pems[fixture]), spkiOf[fixture]);
  const errorOf = async (op) => {
    try {
      await op();
      return "no error";
    } catch (e) {
      return e.code || String(e);
    }
  };

  for (const x of vectors.fingerprint.cases) {
    const id = await c.publicIdentity(b64(x.spki_der_b64));
    check(`fingerprint ${x.fixture}`, id.fpHex === x.fingerprint_hex, id.fpHex);
    check(`fingerprint display ${x.fixture}`, c.displayFingerprint(id.fpHex) === x.fingerprint_display);
  }

  for (const x of vectors.safety_number.cases) {
    const got = await c.safetyNumber(x.first_username, unhex(x.first_fingerprint_hex), x.second_username, unhex(x.second_fingerprint_hex));
    check(`safety number ${x.first_username}/${x.second_username}`, got === x.safety_number, got);
  }

  const env = vectors.envelope;
  const sender = await c.publicIdentity(b64(env.sender_spki_der_b64));
  const signer = await privateOf(env.sender_fixture);
  const key = await c.senderKey(env.epoch, unhex(env.sender_key_hex));
  const context = { roomId: env.room_id, sender: env.sender, senderIdentity: sender };
  for (const x of env.accept) {
    const payload = c.decodePayload(new TextEncoder().encode(x.payload_json));
    check(`${x.name}: payload re-encodes identically`, new TextDecoder().decode(c.encodePayload(payload)) === x.payload_json);
    const sealed = await c.sealEnvelope(env.room_id, env.sender, key, BigInt(x.counter), payload, signer, unhex(x.nonce_hex));
    const expected = b64(x.envelope_b64);
    check(`${x.name}: sealed bytes before the signature`, hex(sealed.subarray(0, x.signed_len)) === hex(expected.subarray(0, x.signed_len)));
    check(`${x.name}: AAD`, hex(expected.subarray(0, x.aad_hex.length / 2)) === x.aad_hex);
    const ct = b64(x.ciphertext_and_tag_b64);
    check(`${x.name}: AES-GCM output`, hex(sealed).includes(hex(ct)));
    const replay = new c.ReplayTracker();
    const opened = await c.openEnvelope(expected, context, key, replay);
    check(`${x.name}: opens`, new TextDecoder().decode(c.encodePayload(opened.payload)) === x.payload_json);
    check(`${x.name}: header`, opened.header.counter === BigInt(x.counter) && opened.header.epoch === env.epoch);
    const reopened = await c.openEnvelope(sealed, context, key, new c.ReplayTracker());
    check(`${x.name}: our own seal opens`, reopened.header.counter === BigInt(x.counter));
  }
  for (const x of env.reject) {
    const replay = new c.ReplayTracker();
    const ctx = { roomId: x.room_id, sender: x.sender, senderIdentity: await c.publicIdentity(b64(x.sender_spki_der_b64)) };
    const k = await c.senderKey(env.epoch, unhex(x.sender_key_hex));
    for (const first of x.open_first_b64) await c.openEnvelope(b64(first), ctx, k, replay);
    const got = await errorOf(() => c.openEnvelope(b64(x.envelope_b64), ctx, k, replay));
    check(`envelope reject: ${x.name}`, got === x.expect, `expected ${x.expect}, got ${got}`);
  }

  const sk = vectors.sender_key;
  const dist = b64(sk.distribution_b64);
  const header = c.peekDistribution(dist);
  check("distribution header", header.roomId === sk.room_id && header.sender === sk.sender && header.epoch === sk.epoch
    && header.recipients.map((r) => `${r.username}:${r.fpHex}`).join() === sk.recipients.map((r) => `${r.username}:${r.fingerprint_hex}`).join());
  const skSender = await c.publicIdentity(b64(sk.sender_spki_der_b64));
  for (const r of sk.recipients) {
    const mine = await privateOf(r.fixture);
    const opened = await c.openDistribution(dist, { roomId: sk.room_id, sender: sk.sender, senderIdentity: skSender }, r.username, mine);
    check(`distribution opens for ${r.username}`, hex(opened.raw) === sk.sender_key_hex && opened.epoch === sk.epoch);
  }
  for (const x of sk.reject) {
    const ctx = { roomId: x.room_id, sender: x.sender, senderIdentity: await c.publicIdentity(b64(x.sender_spki_der_b64)) };
    const got = await errorOf(async () => c.openDistribution(b64(x.distribution_b64), ctx, x.me, await privateOf(x.me_fixture)));
    check(`distribution reject: ${x.name}`, got === x.expect, `expected ${x.expect}, got ${got}`);
  }

  // Round trip of our own distribution: alice wraps for bob and carol.
  const recipients = [];
  for (const name of ["alice", "bob", "carol"]) recipients.push({ username: name, identity: await c.publicIdentity(spkiOf[name]) });
  const state = new c.SenderKeyState(7, "alice");
  check("first send needs a key", state.rotationNeeded(recipients)?.reason === "no_key_yet");
  const ours = await state.rotate(recipients, signer);
  check("no rotation while members are unchanged", state.rotationNeeded(recipients) === null);
  check("a member leaving needs a rotation", state.rotationNeeded(recipients.slice(0, 2))?.reason === "member_left");
  const bobKey = await c.openDistribution(ours, { roomId: 7, sender: "alice", senderIdentity: sender }, "bob", await privateOf("bob"));
  const msg = await state.seal(c.textPayload("round trip"), signer);
  const back = await c.openEnvelope(msg, { roomId: 7, sender: "alice", senderIdentity: sender }, bobKey, new c.ReplayTracker());
  check("own distribution and envelope open for bob", back.payload.text === "round trip" && back.header.counter === 0n);
  return results;
}

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

  // Envelopes, format version 2 and version 1 (history still read).
  for (const env of [vectors.envelope, vectors.envelope_v1]) {
    const v = env.format_version;
    const device = v >= 2 ? unhex(env.device_id_hex) : c.LEGACY_DEVICE;
    const sender = await c.publicIdentity(b64(env.sender_spki_der_b64));
    const signer = await privateOf(env.sender_fixture);
    const key = await c.senderKey(env.epoch, unhex(env.sender_key_hex));
    const context = { roomId: env.room_id, sender: env.sender, senderIdentity: sender };
    for (const x of env.accept) {
      const payload = c.decodePayload(new TextEncoder().encode(x.payload_json));
      const encode = v >= 2 ? c.encodePayload : c.encodePayloadV1;
      check(`v${v} ${x.name}: payload re-encodes identically`, new TextDecoder().decode(encode(payload)) === x.payload_json);
      const sealed = await c.sealEnvelopeRaw({
        version: v, roomId: env.room_id, sender: env.sender, device, key, counter: BigInt(x.counter),
        plaintext: encode(payload), signer, nonce: unhex(x.nonce_hex),
      });
      const expected = b64(x.envelope_b64);
      check(`v${v} ${x.name}: sealed bytes before the signature`, hex(sealed.subarray(0, x.signed_len)) === hex(expected.subarray(0, x.signed_len)));
      check(`v${v} ${x.name}: AAD`, hex(expected.subarray(0, x.aad_hex.length / 2)) === x.aad_hex);
      const ct = b64(x.ciphertext_and_tag_b64);
      check(`v${v} ${x.name}: AES-GCM output`, hex(sealed).includes(hex(ct)));
      const opened = await c.openEnvelope(expected, context, key, new c.ReplayTracker());
      check(`v${v} ${x.name}: opens`, new TextDecoder().decode(encode(opened.payload)) === x.payload_json);
      check(`v${v} ${x.name}: header`, opened.header.counter === BigInt(x.counter) && opened.header.epoch === env.epoch
        && opened.header.version === v && hex(opened.header.device) === hex(device) && !opened.isLate);
      const reopened = await c.openEnvelope(sealed, context, key, new c.ReplayTracker());
      check(`v${v} ${x.name}: our own seal opens`, reopened.header.counter === BigInt(x.counter));
    }
    for (const x of env.reorder) {
      const replay = new c.ReplayTracker();
      for (const first of x.open_first_b64) await c.openEnvelope(b64(first), context, key, replay);
      const opened = await c.openEnvelope(b64(x.envelope_b64), context, key, replay);
      check(`v${v} reorder: ${x.name}`, opened.isLate === x.late, `late ${opened.isLate}`);
      const again = await errorOf(() => c.openEnvelope(b64(x.envelope_b64), context, key, replay));
      check(`v${v} reorder: ${x.name}, then the same again is a replay`, again === "Replay", again);
    }
    for (const x of env.reject) {
      const replay = new c.ReplayTracker();
      const ctx = { roomId: x.room_id, sender: x.sender, senderIdentity: await c.publicIdentity(b64(x.sender_spki_der_b64)) };
      const k = await c.senderKey(env.epoch, unhex(x.sender_key_hex));
      for (const first of x.open_first_b64) await c.openEnvelope(b64(first), ctx, k, replay);
      const got = await errorOf(() => c.openEnvelope(b64(x.envelope_b64), ctx, k, replay));
      check(`v${v} envelope reject: ${x.name}`, got === x.expect, `expected ${x.expect}, got ${got}`);
    }
  }

  // Version-2 payload rules.
  for (const x of vectors.payload.cases) {
    let got;
    try {
      const p = c.decodePayload(new TextEncoder().encode(x.payload_json));
      got = p === c.UNSUPPORTED ? "unsupported" : p.t;
      if (x.text !== undefined && p.text !== x.text) got = `text ${JSON.stringify(p.text)}`;
      // §21: what a reader keeps of reply_to, and a relation's target and emoji.
      if ((x.reply_to ?? null) !== (p.reply_to ?? null)) got = `reply_to ${p.reply_to}`;
      if ((x.of ?? null) !== (p.of ?? null)) got = `of ${p.of}`;
      if ((x.emoji ?? null) !== (p.emoji ?? null)) got = `emoji ${JSON.stringify(p.emoji)}`;
      // What the page writes for it reads back the same.
      if (p !== c.UNSUPPORTED && p.t !== "file") {
        const again = c.decodePayload(c.encodePayload(p));
        if (JSON.stringify(again) !== JSON.stringify(p)) got = `re-encoded ${JSON.stringify(again)}`;
      }
    } catch (e) {
      got = e.code || String(e);
    }
    check(`payload: ${x.name}`, got === x.expect, `expected ${x.expect}, got ${got}`);
  }

  // Distributions, format version 2 and version 1.
  for (const sk of [vectors.sender_key, vectors.sender_key_v1]) {
    const v = sk.format_version;
    const dist = b64(sk.distribution_b64);
    const header = c.peekDistribution(dist);
    check(`v${v} distribution header`, header.roomId === sk.room_id && header.sender === sk.sender && header.epoch === sk.epoch
      && header.version === v && hex(header.device) === (v >= 2 ? sk.device_id_hex : hex(c.LEGACY_DEVICE))
      && header.recipients.map((r) => `${r.username}:${r.fpHex}`).join() === sk.recipients.map((r) => `${r.username}:${r.fingerprint_hex}`).join());
    const skSender = await c.publicIdentity(b64(sk.sender_spki_der_b64));
    for (const r of sk.recipients) {
      const mine = await privateOf(r.fixture);
      const opened = await c.openDistribution(dist, { roomId: sk.room_id, sender: sk.sender, senderIdentity: skSender }, r.username, mine);
      check(`v${v} distribution opens for ${r.username}`, hex(opened.raw) === sk.sender_key_hex && opened.epoch === sk.epoch);
    }
    for (const x of sk.reject) {
      const ctx = { roomId: x.room_id, sender: x.sender, senderIdentity: await c.publicIdentity(b64(x.sender_spki_der_b64)) };
      const got = await errorOf(async () => c.openDistribution(b64(x.distribution_b64), ctx, x.me, await privateOf(x.me_fixture)));
      check(`v${v} distribution reject: ${x.name}`, got === x.expect, `expected ${x.expect}, got ${got}`);
    }
  }

  // Round trip of our own distribution: alice wraps for bob and carol.
  const sender = await c.publicIdentity(spkiOf.alice);
  const signer = await privateOf("alice");
  const recipients = [];
  for (const name of ["alice", "bob", "carol"]) recipients.push({ username: name, identity: await c.publicIdentity(spkiOf[name]) });
  const device = c.newDeviceId();
  const state = new c.SenderKeyState(7, "alice", device);
  check("first send needs a key", state.rotationNeeded(recipients)?.reason === "no_key_yet");
  const ours = await state.rotate(recipients, signer);
  check("no rotation while members are unchanged", state.rotationNeeded(recipients) === null);
  check("a member leaving needs a rotation", state.rotationNeeded(recipients.slice(0, 2))?.reason === "member_left");
  const bobKey = await c.openDistribution(ours, { roomId: 7, sender: "alice", senderIdentity: sender }, "bob", await privateOf("bob"));
  const msg = await state.seal(c.textPayload("round trip"), signer);
  const back = await c.openEnvelope(msg, { roomId: 7, sender: "alice", senderIdentity: sender }, bobKey, new c.ReplayTracker());
  check("own distribution and envelope open for bob", back.payload.text === "round trip" && back.header.counter === 0n
    && back.header.version === 2 && hex(back.header.device) === hex(device));
  check("a new device id is 16 bytes, not the legacy one", device.length === 16 && !c.isLegacyDevice(device));

  // The page's duplicate-member scanner, beyond the vectors: escapes, depth, strings that look like syntax.
  const dup = (json) => c.hasDuplicateKeys(json);
  check("duplicates: none", !dup('{"a":1,"b":{"a":2},"c":[{"a":1},{"a":1}]}'));
  check("duplicates: same name escaped", dup('{"a":1,"\\u0061":2}'));
  check("duplicates: deep in an array", dup('{"x":[1,{"y":{"k":1,"k":2}}]}'));
  check("duplicates: braces and quotes inside strings", !dup('{"k":"}{\\"k\\":","k2":"[,\\"k\\"]"}'));
  check("duplicates: empty names", dup('{"":1,"":2}'));
  check("duplicates: a value equal to a name is fine", !dup('{"a":"a","b":"a"}'));

  // "v" is read as the Rust client reads a u64: digits only, below 2^64.
  const kindOf = (json) => {
    try {
      const p = c.decodePayload(new TextEncoder().encode(json));
      return p === c.UNSUPPORTED ? "unsupported" : p.t;
    } catch (e) {
      return e.code;
    }
  };
  for (const [json, expected] of [
    ['{"v":1.0,"t":"text","text":"x"}', "OpenFailed"], ['{"v":1e0,"t":"text","text":"x"}', "OpenFailed"],
    ['{"t":"text","text":"x","v" : 1 }', "text"], ['{"x":{"v":0},"t":"text","text":"x"}', "text"],
    ['{"v":9007199254740993,"t":"text","text":"x"}', "unsupported"], ['{"v":18446744073709551616,"t":"text","text":"x"}', "OpenFailed"],
  ]) check(`payload version ${json}`, kindOf(json) === expected, kindOf(json));

  // File names from messages are never paths (§19).
  const names = [["cat.png", "cat.png"], ["../../etc/passwd", "passwd"], ["a\\b\\c.txt", "c.txt"], ["x/", "attachment"],
    ["..", "attachment"], ["bad\u0000na\nme", "bad_na_me"], ["", "attachment"]];
  for (const [given, expected] of names) check(`file name ${JSON.stringify(given)}`, c.safeFileName(given) === expected, c.safeFileName(given));
  check("file name cut at 255 bytes", new TextEncoder().encode(c.safeFileName("é".repeat(300))).length <= 255);

  // Signal envelopes (§21, kind 0x03), when tests/vectors/signal.json is there.
  if (vectors.signal) {
    const sv = vectors.signal;
    const device = unhex(sv.device_id_hex);
    const sender = await c.publicIdentity(b64(sv.sender_spki_der_b64));
    const signer = await privateOf(sv.sender_fixture);
    const key = await c.senderKey(sv.epoch, unhex(sv.sender_key_hex));
    const context = { roomId: sv.room_id, sender: sv.sender, senderIdentity: sender };
    check("signal: freshness window", c.SIGNAL_FRESHNESS_MS === sv.max_skew_ms, c.SIGNAL_FRESHNESS_MS);
    for (const x of sv.accept) {
      const payload = c.decodeSignalPayload(new TextEncoder().encode(x.payload_json));
      check(`signal ${x.name}: payload re-encodes identically`, new TextDecoder().decode(c.encodeSignalPayload(payload)) === x.payload_json,
        new TextDecoder().decode(c.encodeSignalPayload(payload)));
      check(`signal ${x.name}: frame kind`, payload.t === x.frame_kind);
      const sealed = await c.sealSignal(sv.room_id, sv.sender, device, key, BigInt(x.counter), payload, signer, unhex(x.nonce_hex));
      const expected = b64(x.signal_b64);
      check(`signal ${x.name}: sealed bytes before the signature`, hex(sealed.subarray(0, x.signed_len)) === hex(expected.subarray(0, x.signed_len)));
      check(`signal ${x.name}: AAD`, hex(expected.subarray(0, x.aad_hex.length / 2)) === x.aad_hex);
      check(`signal ${x.name}: AES-GCM output`, hex(sealed).includes(hex(b64(x.ciphertext_and_tag_b64))));
      const tracker = new c.SignalTracker();
      for (const first of x.open_first_b64) await c.openSignal(b64(first), context, key, tracker, sv.now_ms);
      let opened = null;
      const error = await errorOf(async () => {
        opened = await c.openSignal(expected, context, key, tracker, sv.now_ms);
      });
      check(`signal ${x.name}: opens`, error === "no error" && opened.header.counter === BigInt(x.counter)
        && new TextDecoder().decode(c.encodeSignalPayload(opened.payload)) === x.payload_json, error);
      // The page's own signal with a random nonce opens too.
      check(`signal ${x.name}: own seal opens`, (await errorOf(() => c.openSignal(sealed, context, key, new c.SignalTracker(), sv.now_ms))) === "no error");
    }
    for (const x of sv.reject) {
      const claimed = await c.publicIdentity(b64(x.sender_spki_der_b64));
      const k = await c.senderKey(sv.epoch, unhex(x.sender_key_hex));
      const ctx = { roomId: x.room_id, sender: x.sender, senderIdentity: claimed };
      const tracker = new c.SignalTracker();
      for (const first of x.open_first_b64) await c.openSignal(b64(first), { ...context }, key, tracker, x.now_ms);
      const got = await errorOf(() => c.openSignal(b64(x.signal_b64), ctx, k, tracker, x.now_ms));
      check(`signal reject ${x.name}`, got === x.expect, `expected ${x.expect}, got ${got}`);
    }
  }

  // Timer statements (§21, kind 0x04), when tests/vectors/timer.json is there.
  if (vectors.timer) {
    for (const x of vectors.timer.valid) {
      const body = b64(x.statement_b64);
      const signer = await privateOf(x.fixture);
      const context = { roomId: Number(x.room), sender: x.sender, senderIdentity: signer.public };
      let opened = null;
      const error = await errorOf(async () => {
        opened = await c.openTimer(body, context);
      });
      check(`timer ${x.sender} ${x.duration_secs} after ${x.after}: verifies`,
        error === "no error" && opened.duration === Number(x.duration_secs) && opened.after === Number(x.after), error);
      // A room id above 2^53 (one vector has one) is not exact in a JSON
      // number: the exact one is in the signed bytes. The page's rooms are
      // far below that (the server numbers them from 1).
      const exactRoom = new DataView(unhex(x.signed_hex).buffer).getBigInt64(6);
      const again = await c.sealTimer(exactRoom, x.sender, Number(x.duration_secs), Number(x.after), signer);
      check(`timer ${x.sender} ${x.duration_secs} after ${x.after}: signed bytes`, hex(again.subarray(0, x.signed_hex.length / 2)) === x.signed_hex);
      check(`timer ${x.sender} ${x.duration_secs} after ${x.after}: own statement verifies`, (await errorOf(() => c.openTimer(again, context))) === "no error");
    }
    for (const x of vectors.timer.rejected) {
      const body = b64(x.statement_b64);
      // Framing and signature only: the statement's own room and sender are the claims.
      let claims = { roomId: 0, sender: "nobody" };
      try {
        const t = c.parseTimer(body);
        claims = { roomId: t.roomId, sender: t.sender };
      } catch {
        // framing fails first anyway
      }
      const identity = await c.publicIdentity(spkiOf[x.fixture]);
      const result = await errorOf(() => c.openTimer(body, { ...claims, senderIdentity: identity }));
      check(`timer reject ${x.description}`, result === x.error, `expected ${x.error}, got ${result}`);
    }
  }

  // A signal and a timer statement made in the page open again; neither passes for a message.
  {
    const alice = await privateOf("alice");
    const key = await c.senderKey(1, new Uint8Array(32).fill(7));
    const device = c.newDeviceId();
    const now = 1795683333414;
    const signal = await c.sealSignal(42, "alice", device, key, BigInt(now), c.typingPayload(true), alice);
    const ctx = { roomId: 42, sender: "alice", senderIdentity: alice.public };
    const tracker = new c.SignalTracker();
    check("own signal opens", (await errorOf(() => c.openSignal(signal, ctx, key, tracker, now))) === "no error");
    check("own signal twice is a replay", (await errorOf(() => c.openSignal(signal, ctx, key, tracker, now))) === "Replay");
    check("own typing signal 11 minutes later is stale", (await errorOf(() => c.openSignal(signal, ctx, key, new c.SignalTracker(), now + 660_000))) === "Stale");
    // Receipts have no window (§21, kept receipts), but the per-device rule holds.
    const receipt = await c.sealSignal(42, "alice", device, key, BigInt(now + 1), c.receiptPayload(9, 8), alice);
    const receiptTracker = new c.SignalTracker();
    check("own receipt a day later opens", (await errorOf(() => c.openSignal(receipt, ctx, key, receiptTracker, now + 86_400_000))) === "no error");
    check("own receipt a day later, twice, is a replay", (await errorOf(() => c.openSignal(receipt, ctx, key, receiptTracker, now + 86_400_000))) === "Replay");
    check("a signal is not a message", ["OpenFailed", "UnknownKind"].includes(await errorOf(() => c.openEnvelope(signal, ctx, key, new c.ReplayTracker()))));
    check("a signal is an unknown kind in the log", (await errorOf(() => c.bodyVersionAndKind(signal))) === "UnknownKind");
    const timer = await c.sealTimer(42, "alice", 86400, 41, alice);
    const t = await c.openTimer(timer, ctx);
    check("own timer statement opens", t.duration === 86400 && t.after === 41);
    check("timer statement for another room", (await errorOf(() => c.openTimer(timer, { ...ctx, roomId: 43 }))) === "WrongRoom");
    const flipped = timer.slice();
    flipped[20] ^= 1;
    check("timer statement with a flipped byte", (await errorOf(() => c.openTimer(flipped, ctx))) === "BadSignature");
  }

  // The replay rule's counter set: ranges merge, any repeat is caught, lower counters open late.
  const tracker = new c.ReplayTracker();
  const h = (counter) => ({ roomId: 1, sender: "alice", device, epoch: 1, counter });
  const late = [];
  for (const n of [0n, 1n, 5n, 3n, 2n, 4n]) {
    tracker.check(h(n));
    late.push(tracker.record(h(n)));
  }
  check("counter set: late marks", late.join() === "false,false,false,true,true,true", late.join());
  check("counter set: one range again", tracker.opened.values().next().value.ranges.length === 1);
  check("counter set: a repeat is a replay", (await errorOf(() => tracker.check(h(3n)))) === "Replay");
  check("counter set: another device is another chain", (await errorOf(() => tracker.check({ ...h(3n), device: c.newDeviceId() }))) === "no error");
  return results;
}

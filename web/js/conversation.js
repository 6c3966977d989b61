// One room as this user experiences it, like src/client/conversation.rs:
// reads the room's log in seq order from its first visible entry, opens
// sender-key distributions addressed to this user, checks and decrypts
// messages (rejections are shown, never dropped), applies key history (a
// `key` entry retires the sender's older keys from that position on), and
// keeps this device's sending state so new messages continue its own chain
// with the right epoch and counter.

import { b64decode, b64encode, hex } from "./bytes.js";
import {
  CounterSet, CryptoError, KIND_DISTRIBUTION, KIND_MESSAGE, RELATION_TYPES, ReplayTracker, SenderKeyState, SignalTracker, UNSUPPORTED,
  bodyVersionAndKind, isLegacyDevice, openDistribution, openEnvelope, openSignal, openTimer, peekDistribution, peekEnvelope, peekSignal,
  publicIdentity, sealSignal, senderKey, signedBy, MAX_TIMER_SECS,
} from "./crypto.js";

const REASONS = {
  BadSignature: "the signature does not match the sender's key",
  WrongRoom: "it was made for another room",
  WrongSender: "it names another sender",
  Replay: "it repeats an earlier message (replay)",
  OpenFailed: "it does not decrypt",
  NotHush: "not a hush message",
  UnknownKind: "unknown body kind",
  NotARecipient: "it was not addressed to you",
};
const reasonOf = (e) => (e instanceof CryptoError ? REASONS[e.code] ?? e.code : String(e.message ?? e));

/** Shown for a genuine message whose payload type or version this client does not know. */
export const UNSUPPORTED_TEXT = "a message this version of hush cannot display — update hush";
/** Shown for a body in a format version above what this client reads. */
export const UNKNOWN_VERSION_TEXT = "a message this version of hush cannot read — update hush";
export const NO_KEY_TEXT = "no key for this message: it was sent before you joined, or its key was not shared with you";
/** Tombstones (§21): what a reader shows for an erased entry. */
export const DELETED_TEXT = "message deleted";
export const EXPIRED_TEXT = "message expired";
export const REMOVED_TEXT = "message removed by the server";
export const HIDDEN_TEXT = "hidden: from someone you blocked";

/** "5 minutes", "1 hour", "8 hours", "1 day", "1 week", "4 weeks"; any other count of seconds in the largest whole unit. */
export function durationText(secs) {
  const units = [["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
  for (const [name, size] of units) {
    if (secs % size === 0 && secs >= size) {
      const n = secs / size;
      return `${n} ${name}${n === 1 ? "" : "s"}`;
    }
  }
  return `${secs} seconds`;
}

/** The first 16 hex digits of a fingerprint in groups of 4: enough to compare by eye, short enough for a phone. */
export const shortFingerprint = (fpHex) => (typeof fpHex === "string" && fpHex.length >= 16 ? `${fpHex.slice(0, 16).match(/.{4}/g).join(" ")} …` : "unknown");

/** A failure worth one more look at the sender's keys: no key we accept verifies the body. */
class SignatureFailure extends Error {}

export class Conversation {
  /** `device`: this tab's device id (Uint8Array). */
  constructor(roomId, me, device) {
    this.roomId = roomId;
    this.me = me;
    this.device = device;
    this.deviceHex = hex(device);
    this.keys = new Map(); // `${sender}\0${device hex}\0${epoch}` -> sender key
    this.replay = new ReplayTracker();
    // Per device of mine (hex): its latest distribution {epoch, recipients}
    // and, per epoch, the highest counter it sent (BigInt). Kept for every
    // device, not only this tab's: a stored snapshot is read by whichever
    // tab of this browser loads next, under its own device id.
    this.mine = new Map();
    this.sending = null;
    this.lastSeq = 0;
    this.retired = new Map(); // sender -> [{identity, seq}]: refused from seq on
    this.refetched = new Set(); // senders whose keys were fetched again after a bad signature
    this.ownDevices = new Map(); // device hex ("" for version 1) -> last ts a body of mine from it opened
    // §21: what a relation may name. seq -> {sender, t: "text"|"file"|"erased", isDeleted}:
    // messages that opened (and tombstones), by their signed sender.
    this.targets = new Map();
    this.timer = { ttl: 0, seq: 0 }; // the disappearing-messages timer in force, and its entry's seq
    this.expiring = []; // [seq, expires at (Unix ms)] of items this reader must remove
    this.signals = new SignalTracker(); // not kept across reloads: signals are best effort
    this.lastSignalMs = 0n;
    this.keyMadeAt = 0; // when this device's current sender key was distributed (ms)
  }

  /**
   * Reads one entry (seq order). Returns what it means to the user:
   * {type: "message"|"unsupported"|"event"|"rejected"|"quiet", seq, ts, ...}.
   */
  async process(entry, identity, directory, { blocked = null } = {}) {
    const { seq, ts, sender } = entry;
    if (seq <= this.lastSeq) return { type: "rejected", seq, ts, sender, reason: "it repeats a position already read" };
    this.lastSeq = seq;
    const shown = await this.processEntry(entry, identity, directory, blocked);
    // Messages disappear by the timer in force at their position (§21),
    // never by the server's `expires` alone.
    if (entry.kind === "message" && this.timer.ttl > 0 && shown.type !== "quiet" && shown.type !== "relation") {
      shown.expiresAt = ts + this.timer.ttl * 1000;
      this.expiring.push([seq, shown.expiresAt]);
    }
    return shown;
  }

  async processEntry(entry, identity, directory, blocked) {
    const { seq, ts, sender } = entry;
    const who = entry.subject ?? "someone";
    let text;
    switch (entry.kind) {
      case "message": {
        if (blocked?.has(sender) && isMessageBody(entry.body)) {
          // Not decrypted: the user blocked its sender (§21, Blocking).
          return { type: "hidden", seq, ts, sender, text: HIDDEN_TEXT };
        }
        const shown = await this.processBody(entry, identity, directory);
        return shown.type === "message" ? this.judgeRelation(shown) : shown;
      }
      case "erased": {
        this.targets.set(seq, { sender, t: "erased", isDeleted: false });
        const reason = entry.reason === "expired" ? "expired" : entry.reason === "deleted" ? "deleted" : "removed";
        return { type: "erased", seq, ts, sender, reason, text: reason === "expired" ? EXPIRED_TEXT : REMOVED_TEXT };
      }
      case "timer":
        return this.processTimer(entry, directory);
      case "promote":
        text = `${sender} made ${who} an admin`;
        break;
      case "demote":
        text = `${sender} removed ${who} as an admin`;
        break;
      case "decline":
        text = `${sender} declined the invitation`;
        break;
      case "create":
        text = entry.subject ? `${sender} started a conversation with ${entry.subject}` : `${sender} created the room`;
        break;
      case "invite":
        text = `${sender} invited ${who}`;
        break;
      case "join":
        text = `${sender} joined`;
        break;
      case "leave":
        text = `${sender} left`;
        break;
      case "remove":
        text = `${sender} removed ${who}`;
        break;
      case "key":
        await this.retireKeys(entry, directory);
        text = `${sender} has a new key (fingerprint ${shortFingerprint(entry.fingerprint)}). `
          + `If you compared safety numbers with ${sender} before, compare them again.`;
        break;
      default:
        text = `(${entry.kind} event)`;
    }
    return { type: "event", kind: entry.kind, seq, ts, sender, text };
  }

  /**
   * A message that opened, as §21 reads it: a relation is checked against
   * its target (`of` below its own seq; edit and delete only by the
   * target's signed sender) and comes back as {type: "relation"} for the
   * client to apply, or as a rejection, or as nothing when the target is
   * not here; text and file become possible targets.
   */
  judgeRelation(shown) {
    const { seq, sender, payload } = shown;
    if (!RELATION_TYPES.has(payload.t)) {
      if (payload.reply_to !== undefined && payload.reply_to >= seq) delete payload.reply_to; // ignored (§21)
      if (payload.t === "text" || payload.t === "file") this.targets.set(seq, { sender, t: payload.t, isDeleted: false });
      return shown;
    }
    const of = payload.of;
    const reject = (reason) => ({ type: "rejected", seq, ts: shown.ts, sender, reason });
    if (of >= seq) return reject(`refers to #${of}, which is not an earlier message`);
    // A target that expired counts as gone, even before the sweep took it.
    const known = this.targets.get(of);
    const expires = this.expiring.find(([s]) => s === of)?.[1];
    const target = known && !(expires !== undefined && expires <= Date.now()) ? known : null;
    if (payload.t === "edit" && target && target.sender !== sender) return reject("an edit of someone else's message");
    if (payload.t === "delete" && target && target.sender !== sender) return reject("a delete of someone else's message");
    const quiet = { type: "quiet", seq, ts: shown.ts, sender };
    if (!target) return quiet; // before our membership, expired, or not readable: applied to nothing
    if (payload.t === "delete") {
      if (target.isDeleted) return quiet;
      target.isDeleted = true;
      return { ...shown, type: "relation" };
    }
    if (target.isDeleted || target.t === "erased") return quiet;
    if (payload.t === "edit" && target.t !== "text") return quiet; // as the terminal client does
    return { ...shown, type: "relation" };
  }

  /** Forgets messages that expired (by the timer in force at their position): resolves with their seqs. */
  takeExpired(now) {
    const gone = this.expiring.filter(([, at]) => at <= now).map(([seq]) => seq);
    if (!gone.length) return [];
    this.expiring = this.expiring.filter(([, at]) => at > now);
    for (const seq of gone) this.targets.delete(seq);
    return gone;
  }

  /**
   * A `timer` entry (§21): the statement must be signed by its sender
   * under a key accepted here, for this room and sender, with `after`
   * below its own seq and not below the previous timer entry's seq.
   */
  async processTimer(entry, directory) {
    const { seq, ts, sender } = entry;
    const reject = (why) => ({ type: "rejected", seq, ts, sender, reason: `a timer change was rejected: ${why}` });
    let body;
    try {
      body = b64decode(entry.body ?? "");
    } catch {
      return reject("it has no readable statement");
    }
    let statement;
    try {
      const { accepted } = await this.signers(sender, directory);
      statement = await withAnyKey(accepted, (senderIdentity) => openTimer(body, { roomId: this.roomId, sender, senderIdentity }));
    } catch (e) {
      return reject(e instanceof CryptoError ? reasonOf(e) : e.message);
    }
    if (statement.after >= seq || statement.after < this.timer.seq) return reject("it names a position out of order");
    if (statement.duration > MAX_TIMER_SECS) return reject("a duration above 4 weeks");
    this.timer = { ttl: statement.duration, seq };
    const text = statement.duration
      ? `${sender} set messages to disappear after ${durationText(statement.duration)}`
      : `${sender} turned off disappearing messages`;
    return { type: "event", kind: "timer", seq, ts, sender, text, ttl: statement.duration };
  }

  /**
   * Opens a signal frame's body from `sender` (§21): signed under a key
   * accepted from them now, fresh, under the sender key of its chain.
   * Resolves with the payload, or null (dropped silently, whatever the reason).
   */
  async openSignal(body, sender, directory, now = Date.now()) {
    try {
      const header = peekSignal(body);
      const key = this.keys.get(chainId(sender, header.device, header.epoch));
      if (!key) return null;
      const { accepted } = await this.signers(sender, directory);
      const opened = await withAnyKey(accepted, (senderIdentity) =>
        openSignal(body, { roomId: this.roomId, sender, senderIdentity }, key, this.signals, now));
      return { ...opened.payload, device: hex(header.device) };
    } catch {
      return null;
    }
  }

  /** Who a body sealed now goes to: [{username, identity}] and those left out; a DM with a blocked key refuses. */
  async recipientsOf(members, isDm, identity, directory) {
    const recipients = [];
    const leftOut = [];
    for (const member of members) {
      if (member === this.me) continue;
      const peer = await directory.peer(member);
      if (peer.usable) recipients.push({ username: member, identity: peer.usable });
      else leftOut.push(member);
    }
    if (isDm && leftOut.length) {
      throw new Error(`${leftOut[0]}'s key changed without a valid rotation; nothing was sent. Compare safety numbers, then accept the new key.`);
    }
    recipients.push({ username: this.me, identity: identity.current.public });
    return { recipients, leftOut };
  }

  /**
   * Seals a receipt or typing `payload` as a signal: under this device's
   * current sender key, or a new one if it has none (its distribution in
   * `bodies`: the signal goes once the server has stored it). The counter is the clock in ms, kept
   * strictly increasing.
   */
  async sealSignal(payload, members, isDm, identity, directory) {
    const sending = this.sendingState();
    const bodies = [];
    // Signals never rotate (§21): a current key is used even if members
    // changed since (the next message makes the new one); only a device
    // with no key yet makes and distributes one first.
    if (!sending.current) {
      const { recipients } = await this.recipientsOf(members, isDm, identity, directory);
      bodies.push(await sending.rotate(recipients, identity.current));
      this.keyMadeAt = Date.now();
    }
    let counter = BigInt(Date.now());
    if (counter <= this.lastSignalMs) counter = this.lastSignalMs + 1n;
    this.lastSignalMs = counter;
    const signal = await sealSignal(this.roomId, this.me, this.device, sending.current.key, counter, payload, identity.current);
    return { bodies, signal };
  }

  /**
   * A `key` entry: from here on, keys its sender had before the one it
   * names are refused for that sender in this room (§19, Key history).
   * Known keys come newest first, so every key after the named one is
   * older. This user's own keys come from the local key store only.
   */
  async retireKeys(entry, directory) {
    const user = entry.sender;
    this.refetched.delete(user);
    if (user !== this.me) directory.invalidate(user);
    let known;
    try {
      known = (await directory.peer(user)).verifying;
    } catch {
      return;
    }
    const position = known.findIndex((k) => k.fpHex === entry.fingerprint);
    // A key not linked to what we trust: the directory blocks the peer
    // until the user decides; nothing to retire by position.
    if (position < 0) return;
    const retired = this.retired.get(user) ?? [];
    for (const key of known.slice(position + 1)) {
      if (!retired.some((r) => r.identity.fpHex === key.fpHex)) retired.push({ identity: key, seq: entry.seq });
    }
    this.retired.set(user, retired);
  }

  /** The keys accepted from `sender` at this point of the log, and whether the user verified them. */
  async signers(sender, directory) {
    const peer = await directory.peer(sender);
    const retired = this.retired.get(sender) ?? [];
    return {
      accepted: peer.verifying.filter((k) => !retired.some((r) => r.identity.fpHex === k.fpHex)),
      isVerified: peer.isVerified && sender !== this.me,
    };
  }

  async processBody(entry, identity, directory) {
    const { seq, ts, sender } = entry;
    let body;
    try {
      body = b64decode(entry.body ?? "");
    } catch {
      return { type: "rejected", seq, ts, sender, reason: "the message has no readable body" };
    }
    try {
      return await this.openBody(body, entry, identity, directory);
    } catch (e) {
      if (!(e instanceof SignatureFailure)) return { type: "rejected", seq, ts, sender, reason: e.message };
    }
    // No key we accept verifies it: maybe a rotation we saw no `key` entry
    // for. Ask the server once (never for our own keys), then decide.
    if (sender !== this.me && !this.refetched.has(sender)) {
      this.refetched.add(sender);
      directory.invalidate(sender);
      try {
        return await this.openBody(body, entry, identity, directory);
      } catch (e) {
        if (!(e instanceof SignatureFailure)) return { type: "rejected", seq, ts, sender, reason: e.message };
      }
    }
    const isDistribution = body[5] === KIND_DISTRIBUTION;
    const reason = await this.badSignatureReason(sender, body);
    return { type: "rejected", seq, ts, sender, reason: isDistribution ? `a key distribution was rejected: ${reason}` : reason };
  }

  /** Why no accepted key verifies `body`: a key the sender retired, or no key we know. */
  async badSignatureReason(sender, body) {
    for (const r of this.retired.get(sender) ?? []) {
      if (await signedBy(body, r.identity)) {
        return `signed with a key that ${sender} retired (at #${r.seq}); whoever sent it is not using ${sender}'s current key`;
      }
    }
    return REASONS.BadSignature;
  }

  /** Opens one body; throws SignatureFailure, or an Error whose message is the reason to show. */
  async openBody(body, entry, identity, directory) {
    const { seq, ts, sender } = entry;
    let signers;
    try {
      signers = await this.signers(sender, directory);
    } catch (e) {
      throw new Error(`cannot check the sender's key: ${e.message}`);
    }
    let kind;
    try {
      kind = bodyVersionAndKind(body).kind;
    } catch (e) {
      if (e.code === "UnknownVersion") return { type: "unsupported", seq, ts, sender, device: null, text: UNKNOWN_VERSION_TEXT };
      throw new Error(reasonOf(e));
    }
    try {
      if (kind === KIND_DISTRIBUTION) {
        await this.takeDistribution(body, entry, identity, signers.accepted);
        return { type: "quiet", seq, ts, sender };
      }
      const opened = await this.openMessage(body, entry, signers.accepted);
      const device = isLegacyDevice(opened.header.device) ? null : hex(opened.header.device);
      if (opened.payload === UNSUPPORTED) return { type: "unsupported", seq, ts, sender, device, text: UNSUPPORTED_TEXT };
      return {
        type: "message", seq, ts, sender, device, clientId: entry.client_id, payload: opened.payload,
        verified: signers.isVerified, isLate: opened.isLate,
      };
    } catch (e) {
      if (e instanceof CryptoError && e.code === "NotARecipient") return { type: "quiet", seq, ts, sender };
      if (e instanceof CryptoError && e.code === "BadSignature") throw new SignatureFailure();
      if (e instanceof SignatureFailure) throw e;
      const reason = e instanceof CryptoError ? reasonOf(e) : e.message;
      throw new Error(kind === KIND_DISTRIBUTION ? `a key distribution was rejected: ${reason}` : reason);
    }
  }

  mineOf(deviceHex) {
    let state = this.mine.get(deviceHex);
    if (!state) this.mine.set(deviceHex, (state = { latest: null, counters: new Map() }));
    return state;
  }

  /**
   * Everything a later page needs to judge the entries after `lastSeq`
   * exactly as reading the log from its start would: sender keys (their
   * raw bytes in `secret`, for the store to encrypt), the replay sets,
   * retired keys with their positions, the own devices' chains.
   * `open` is structured-cloneable and holds nothing secret.
   */
  snapshot() {
    const keys = [...this.keys].map(([chain, k]) => [chain, k.epoch, b64encode(k.raw)]);
    const targets = [...this.targets].map(([seq, t]) => [seq, t.sender, t.t, t.isDeleted]);
    const open = {
      lastSeq: this.lastSeq,
      replay: [...this.replay.opened].map(([id, set]) => [id, set.ranges.map((r) => [...r])]),
      mine: [...this.mine].map(([device, m]) => [device, { latest: m.latest, counters: [...m.counters] }]),
      retired: [...this.retired].map(([user, list]) => [user, list.map((r) => ({ spki: r.identity.spki, seq: r.seq }))]),
      refetched: [...this.refetched],
      ownDevices: [...this.ownDevices],
      timer: this.timer,
      expiring: this.expiring,
      keyMadeAt: this.keyMadeAt,
    };
    // Who sent which message (what relations may name) is kept sealed with the keys.
    return { open, secret: JSON.stringify({ keys, targets }) };
  }

  /** Takes back a snapshot() (with `secret` decrypted); the sending state resumes from it when needed. */
  async restore({ open, secret }) {
    this.lastSeq = open.lastSeq;
    this.keys = new Map();
    const sealed = JSON.parse(secret);
    // A snapshot from before §21 holds the keys alone.
    const keys = Array.isArray(sealed) ? sealed : sealed.keys;
    for (const [chain, epoch, raw] of keys) this.keys.set(chain, await senderKey(epoch, b64decode(raw)));
    this.targets = new Map((Array.isArray(sealed) ? [] : sealed.targets).map(([seq, sender, t, isDeleted]) => [seq, { sender, t, isDeleted }]));
    this.timer = open.timer ?? { ttl: 0, seq: 0 };
    this.expiring = open.expiring ?? [];
    this.keyMadeAt = open.keyMadeAt ?? 0;
    this.replay = new ReplayTracker();
    for (const [id, ranges] of open.replay) {
      const set = new CounterSet();
      set.ranges = ranges.map((r) => [...r]);
      this.replay.opened.set(id, set);
    }
    this.mine = new Map(open.mine.map(([device, m]) => [device, { latest: m.latest, counters: new Map(m.counters) }]));
    this.retired = new Map();
    for (const [user, list] of open.retired) {
      this.retired.set(user, await Promise.all(list.map(async (r) => ({ identity: await publicIdentity(r.spki), seq: r.seq }))));
    }
    this.refetched = new Set(open.refetched);
    this.ownDevices = new Map(open.ownDevices);
    this.sending = null;
  }

  noteOwnDevice(sender, device, ts) {
    if (sender !== this.me) return;
    const id = isLegacyDevice(device) ? "" : hex(device);
    this.ownDevices.set(id, Math.max(ts, this.ownDevices.get(id) ?? 0));
  }

  async takeDistribution(body, entry, identity, accepted) {
    const header = peekDistribution(body);
    const mine = header.recipients
      .filter((r) => r.username === identity.username)
      .map((r) => identity.keyWith(r.fpHex))
      .find(Boolean);
    if (!mine) throw new CryptoError("NotARecipient");
    const key = await withAnyKey(accepted, (senderIdentity) =>
      openDistribution(body, { roomId: this.roomId, sender: entry.sender, senderIdentity }, identity.username, mine));
    this.noteOwnDevice(entry.sender, header.device, entry.ts);
    if (entry.sender === this.me) this.mineOf(hex(header.device)).latest = { epoch: header.epoch, recipients: header.recipients };
    if (entry.sender === this.me && hex(header.device) === this.deviceHex) this.keyMadeAt = Math.max(this.keyMadeAt, entry.ts);
    this.keys.set(chainId(entry.sender, header.device, header.epoch), key);
  }

  async openMessage(body, entry, accepted) {
    const header = peekEnvelope(body);
    if (header.roomId !== this.roomId) throw new CryptoError("WrongRoom");
    if (header.sender !== entry.sender) throw new CryptoError("WrongSender");
    if (entry.sender === this.me) {
      // A device's own counters, from the clear header: a restart
      // continues above them even if a body of ours does not open.
      const counters = this.mineOf(hex(header.device)).counters;
      const seen = counters.get(header.epoch);
      if (seen === undefined || header.counter > seen) counters.set(header.epoch, header.counter);
    }
    const key = this.keys.get(chainId(entry.sender, header.device, header.epoch));
    const context = (senderIdentity) => ({ roomId: this.roomId, sender: entry.sender, senderIdentity });
    if (!key) {
      // §19 checks the signature before the key: a forgery says so, not "no key".
      await withAnyKey(accepted, async (k) => {
        if (!(await signedBy(body, k))) throw new CryptoError("BadSignature");
      });
      throw new Error(NO_KEY_TEXT);
    }
    const opened = await withAnyKey(accepted, (k) => openEnvelope(body, context(k), key, this.replay));
    this.noteOwnDevice(entry.sender, header.device, entry.ts);
    return opened;
  }

  /**
   * Seals `payload` for the room's current `members`: a new distribution
   * first when needed, then the message. Blocked members are left out; in
   * a DM that refuses to send.
   */
  async seal(payload, members, isDm, identity, directory) {
    const { recipients, leftOut } = await this.recipientsOf(members, isDm, identity, directory);
    const sending = this.sendingState();
    const bodies = [];
    let rotation = sending.rotationNeeded(recipients);
    // A distribution expires like any message: under a timer, a key whose
    // distribution is older than half the duration is replaced (§21), so
    // a later reader can still read what it seals.
    if (!rotation && this.timer.ttl > 0 && Date.now() - this.keyMadeAt > this.timer.ttl * 500) rotation = { reason: "key_expiring" };
    if (rotation) {
      bodies.push(await sending.rotate(recipients, identity.current));
      this.keyMadeAt = Date.now();
    }
    bodies.push(await sending.seal(payload, identity.current));
    // The counter is this device's as soon as it is used, not only once the
    // message is read back: one erased or expired before that would
    // otherwise be sealed again after a reload, and readers would reject
    // it as a replay.
    const used = sending.current.nextCounter - 1n;
    const counters = this.mineOf(this.deviceHex).counters;
    if (!(counters.get(sending.current.key.epoch) >= used)) counters.set(sending.current.key.epoch, used);
    return { bodies, rotation, leftOut };
  }

  /** This device's sending state, resumed from the log the first time it is needed. */
  sendingState() {
    if (this.sending) return this.sending;
    const { latest, counters } = this.mineOf(this.deviceHex);
    const key = latest && this.keys.get(chainId(this.me, this.device, latest.epoch));
    if (key) {
      const highest = counters.get(latest.epoch);
      this.sending = SenderKeyState.resumeWithKey(this.roomId, this.me, this.device, key, latest.recipients, highest === undefined ? 0n : highest + 1n);
    } else {
      const epochs = [...counters.keys(), ...(latest ? [latest.epoch] : [])];
      this.sending = new SenderKeyState(this.roomId, this.me, this.device, epochs.length ? Math.max(...epochs) : 0);
    }
    return this.sending;
  }
}

/** Whether a log body is a message envelope (not a distribution), without opening it. */
function isMessageBody(b64) {
  try {
    return bodyVersionAndKind(b64decode(b64 ?? "")).kind === KIND_MESSAGE;
  } catch {
    return true;
  }
}

const chainId = (sender, device, epoch) => `${sender}\u0000${hex(device)}\u0000${epoch}`;

/** Tries `op` with each accepted key of the sender until one verifies. */
async function withAnyKey(keys, op) {
  let last = new CryptoError("BadSignature");
  for (const key of keys) {
    try {
      return await op(key);
    } catch (e) {
      if (e instanceof CryptoError && e.code === "BadSignature") last = e;
      else throw e;
    }
  }
  throw last;
}

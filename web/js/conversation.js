// One room as this user experiences it, like src/client/conversation.rs:
// reads the room's log in seq order from its first visible entry, opens
// sender-key distributions addressed to this user, checks and decrypts
// messages (rejections are shown, never dropped), and keeps the sending
// state so new messages continue the log with the right epoch and counter.

import { b64decode } from "./bytes.js";
import {
  CryptoError, KIND_DISTRIBUTION, ReplayTracker, SenderKeyState, bodyKind, openDistribution, openEnvelope,
  peekDistribution, peekEnvelope,
} from "./crypto.js";

const REASONS = {
  BadSignature: "the signature does not match the sender's key",
  WrongRoom: "it was made for another room",
  WrongSender: "it names another sender",
  Replay: "it repeats an earlier message (replay)",
  OpenFailed: "it does not decrypt",
  UnknownVersion: "it needs a newer client",
  NotARecipient: "it was not addressed to you",
};
const reasonOf = (e) => (e instanceof CryptoError ? REASONS[e.code] ?? e.code : String(e.message ?? e));

export class Conversation {
  constructor(roomId, me) {
    this.roomId = roomId;
    this.me = me;
    this.keys = new Map(); // `${sender}\0${epoch}` -> sender key
    this.replay = new ReplayTracker();
    this.myLatest = null; // {epoch, recipients}
    this.myCounters = new Map(); // epoch -> highest counter sent (BigInt)
    this.sending = null;
    this.lastSeq = 0;
  }

  /**
   * Reads one entry (seq order). Returns what it means to the user:
   * {type: "message"|"event"|"rejected"|"quiet", seq, ts, ...}.
   */
  async process(entry, identity, directory) {
    const { seq, ts, sender } = entry;
    if (seq <= this.lastSeq) return { type: "rejected", seq, ts, sender, reason: "it repeats a position already read" };
    this.lastSeq = seq;
    const who = entry.subject ?? "someone";
    let text;
    switch (entry.kind) {
      case "message":
        return this.processBody(entry, identity, directory);
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
        directory.invalidate(sender);
        text = `${sender}'s key is now ${entry.fingerprint ?? "?"}`;
        break;
      default:
        text = `(${entry.kind} event)`;
    }
    return { type: "event", kind: entry.kind, seq, ts, sender, text };
  }

  async processBody(entry, identity, directory) {
    const { seq, ts, sender } = entry;
    const reject = (reason) => ({ type: "rejected", seq, ts, sender, reason });
    let body;
    try {
      body = b64decode(entry.body ?? "");
    } catch {
      return reject("the message has no readable body");
    }
    let peer;
    try {
      peer = await directory.peer(sender);
    } catch (e) {
      return reject(`cannot check the sender's key: ${e.message}`);
    }
    try {
      if (bodyKind(body) === KIND_DISTRIBUTION) {
        await this.takeDistribution(body, entry, identity, peer);
        return { type: "quiet", seq, ts, sender };
      }
      const payload = await this.openMessage(body, entry, peer);
      return { type: "message", seq, ts, sender, clientId: entry.client_id, payload, verified: peer.isVerified };
    } catch (e) {
      if (e instanceof CryptoError && e.code === "NotARecipient") return { type: "quiet", seq, ts, sender };
      return reject(reasonOf(e));
    }
  }

  async takeDistribution(body, entry, identity, peer) {
    const header = peekDistribution(body);
    const mine = header.recipients
      .filter((r) => r.username === identity.username)
      .map((r) => identity.keyWith(r.fpHex))
      .find(Boolean);
    if (!mine) throw new CryptoError("NotARecipient");
    const key = await withAnyKey(peer.verifying, (senderIdentity) =>
      openDistribution(body, { roomId: this.roomId, sender: entry.sender, senderIdentity }, identity.username, mine));
    if (entry.sender === this.me) this.myLatest = { epoch: header.epoch, recipients: header.recipients };
    this.keys.set(`${entry.sender}\u0000${header.epoch}`, key);
  }

  async openMessage(body, entry, peer) {
    const header = peekEnvelope(body);
    if (header.roomId !== this.roomId) throw new CryptoError("WrongRoom");
    if (header.sender !== entry.sender) throw new CryptoError("WrongSender");
    if (entry.sender === this.me) {
      const seen = this.myCounters.get(header.epoch);
      if (seen === undefined || header.counter > seen) this.myCounters.set(header.epoch, header.counter);
    }
    const key = this.keys.get(`${entry.sender}\u0000${header.epoch}`);
    if (!key) throw new Error("no key for this message: it was sent before you joined, or its key was not shared with you");
    const opened = await withAnyKey(peer.verifying, (senderIdentity) =>
      openEnvelope(body, { roomId: this.roomId, sender: entry.sender, senderIdentity }, key, this.replay));
    return opened.payload;
  }

  /**
   * Seals `payload` for the room's current `members`: a new distribution
   * first when needed, then the message. Blocked members are left out; in
   * a DM that refuses to send.
   */
  async seal(payload, members, isDm, identity, directory) {
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
    const sending = this.sendingState();
    const bodies = [];
    const rotation = sending.rotationNeeded(recipients);
    if (rotation) bodies.push(await sending.rotate(recipients, identity.current));
    bodies.push(await sending.seal(payload, identity.current));
    return { bodies, rotation, leftOut };
  }

  sendingState() {
    if (this.sending) return this.sending;
    const latest = this.myLatest;
    const key = latest && this.keys.get(`${this.me}\u0000${latest.epoch}`);
    if (key) {
      const highest = this.myCounters.get(latest.epoch);
      this.sending = SenderKeyState.resumeWithKey(this.roomId, this.me, key, latest.recipients, highest === undefined ? 0n : highest + 1n);
    } else {
      const epochs = [...this.myCounters.keys(), ...(latest ? [latest.epoch] : [])];
      this.sending = new SenderKeyState(this.roomId, this.me, epochs.length ? Math.max(...epochs) : 0);
    }
    return this.sending;
  }
}

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

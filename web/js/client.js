// The chat client behind the page: the rooms this user is in, each read
// from its first visible entry through a Conversation; a serial queue so
// entries are processed strictly in order; sync cursors so a reconnect
// resumes exactly where it stopped (nothing twice); and ordered, durable
// sending (PROTOCOL.md §11). Every message typed goes into the IndexedDB
// outbox first, is sealed only once its room is caught up (so a send never
// reuses a counter), and its bodies go out in order under a small window:
// a send refused for now holds the window at one, the refused bodies go
// again in refusal order once the server's wait is over, head first, and
// the window grows back as acks come. Emits events for the page to render.

import { Conversation } from "./conversation.js";
import { Link } from "./link.js";
import { b64encode } from "./bytes.js";
import { Outbox, newClientId } from "./outbox.js";

const MEMBERSHIP_KINDS = new Set(["create", "invite", "join", "leave", "remove", "key"]);
// A send refused with these was not stored but may be later (PROTOCOL.md §11).
const RETRY_CODES = new Set(["rate_limited", "storage_unavailable", "unavailable"]);
const FINAL_CODES = new Set(["bad_body", "too_large", "not_found", "bad_frame"]);
const DEFAULT_RETRY_MS = 1000; // when the server names no wait
// Sends in flight at once: back to one after a refusal, one more per ack.
const WINDOW_MAX = 16;
const ADOPT_EVERY_MS = 5_000;

export class HushClient extends EventTarget {
  /** `device`: this tab's claimed device id ({id, hex}). */
  constructor({ api, token, identity, directory, device }) {
    super();
    this.api = api;
    this.identity = identity;
    this.me = identity.username;
    this.directory = directory;
    this.device = device;
    this.outbox = new Outbox(this.me, device.hex);
    this.rooms = new Map(); // id -> {info, conv, syncing, shown[], lastRead}
    // Messages of this tab not yet acknowledged, in typing order:
    // {clientId, roomId, payload, key?, state: "new"|"queued"|"sealed"|"acked"|"failed", error?, note?}.
    this.pending = [];
    // Bodies sealed and not yet acknowledged, in send order:
    // {room, client_id, body, item, isMessage, state: "unsent"|"inflight"|"refused"}.
    this.wire = [];
    this.window = WINDOW_MAX;
    this.resumeAt = 0; // no send before this time (a refusal's retry_after_ms)
    this.retryTimer = null;
    this.maxBodyBytes = 1_048_576; // until `ready` says
    this.online = new Set();
    this.invitations = [];
    this.queue = Promise.resolve();
    this.link = new Link(token, {
      onFrame: (frame) => this.enqueue(() => this.handle(frame)),
      onState: (state, retryMs) => {
        // Presence is only known while connected; `who` refreshes it on ready.
        if (state !== "online" && this.online.size) {
          this.online.clear();
          this.emit("presence", {});
        }
        this.emit("connection", { state, retryMs });
      },
      onUnauthorized: () => this.emit("signed-out", {}),
    });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Runs `op` after everything queued before it; errors are reported, not thrown. */
  enqueue(op) {
    this.queue = this.queue.then(op).catch((e) => this.emit("problem", { message: e.message ?? String(e) }));
    return this.queue;
  }

  async start() {
    for (const info of await this.api.rooms()) this.addRoom(info);
    await this.loadOutbox();
    this.refreshInvitations();
    this.emit("rooms", {});
    this.link.start();
    // Another tab of this user that closes with messages unsent leaves them
    // to whichever tab looks first: look now and then.
    this.adoptTimer = setInterval(() => this.enqueue(async () => {
      if (!(await this.outbox.adopt())) return;
      await this.loadOutbox();
      await this.pump();
    }), ADOPT_EVERY_MS);
  }

  /** Takes what an earlier page of this device (or a tab now gone) left in the outbox. */
  async loadOutbox() {
    let loaded;
    try {
      loaded = await this.outbox.load();
    } catch (e) {
      this.emit("problem", { message: `The outbox of this browser cannot be read: ${e.message}` });
      return;
    }
    const known = new Set(this.pending.map((p) => p.key));
    const fresh = loaded.items.filter((i) => !known.has(i.key)).map((i) => ({ ...i, state: "queued" }));
    if (loaded.lost) this.emit("problem", { message: `${loaded.lost} unsent message(s) of this browser could not be read back and are lost.` });
    if (!fresh.length) return;
    this.pending.push(...fresh);
    this.emit("pending", {});
  }

  stop() {
    clearTimeout(this.retryTimer);
    clearInterval(this.adoptTimer);
    this.link.stop();
    this.device.release?.();
  }

  addRoom(info) {
    if (this.rooms.has(info.id)) {
      this.rooms.get(info.id).info = info;
      return this.rooms.get(info.id);
    }
    const room = {
      info,
      conv: new Conversation(info.id, this.me, this.device.id),
      syncing: false,
      synced: false, // read up to the log's end once on some connection
      shown: [],
      lastRead: Number(localStorage.getItem(`hush.read.${this.me}.${info.id}`) ?? 0),
    };
    this.rooms.set(info.id, room);
    return room;
  }

  title(room) {
    const info = room.info;
    return info.kind === "dm" ? info.members.find((m) => m !== this.me) ?? info.creator : info.name;
  }

  unread(room) {
    return room.shown.filter((s) => (s.type === "message" || s.type === "unsupported") && s.sender !== this.me && s.seq > room.lastRead).length;
  }

  markRead(roomId) {
    const room = this.rooms.get(roomId);
    if (!room) return;
    room.lastRead = room.conv.lastSeq;
    localStorage.setItem(`hush.read.${this.me}.${roomId}`, String(room.lastRead));
    this.emit("rooms", {});
  }

  sync(rooms) {
    if (!rooms.length) return;
    for (const room of rooms) room.syncing = true;
    this.link.send({ type: "sync", rooms: rooms.map((r) => ({ room: r.info.id, after: r.conv.lastSeq })) });
  }

  async handle(frame) {
    switch (frame.type) {
      case "ready":
        this.maxBodyBytes = frame.max_body_bytes ?? this.maxBodyBytes;
        // Look peers' keys up again: a key swapped meanwhile is caught at once.
        this.directory.peers.clear();
        this.sync([...this.rooms.values()]);
        // A new connection: every body not acknowledged goes again, in
        // order, under the same client ids; old refusals are moot.
        clearTimeout(this.retryTimer);
        this.resumeAt = 0;
        this.window = WINDOW_MAX;
        for (const frame of this.wire) frame.state = "unsent";
        this.flush();
        this.link.send({ type: "who", id: "who" });
        this.refreshInvitations();
        break;
      case "entry": {
        let room = this.rooms.get(frame.entry.room);
        if (!room) {
          room = this.addRoom(await this.api.room(frame.entry.room));
          this.sync([room]);
          this.emit("rooms", {});
          return;
        }
        if (!room.syncing) await this.apply(room, frame.entry);
        break;
      }
      case "page": {
        const room = this.rooms.get(frame.room);
        if (room) for (const entry of frame.entries) await this.apply(room, entry);
        break;
      }
      case "synced": {
        const room = this.rooms.get(frame.room);
        if (room) {
          room.syncing = false;
          room.synced = true;
          await this.refreshRoom(room);
          this.emit("synced", { roomId: frame.room });
          await this.pump();
        }
        break;
      }
      case "ack":
        await this.onAck(frame);
        break;
      case "error":
        await this.onError(frame);
        break;
      case "online":
        if (frame.room === null) this.online = new Set(frame.users);
        this.emit("presence", {});
        break;
      case "presence":
        // One room's changes (or, with `snapshot`, who in it is online);
        // online is per user, so one set serves every room. The older
        // one-user form is read too (PROTOCOL.md §12).
        if (typeof frame.user === "string") {
          if (frame.online) this.online.add(frame.user);
          else this.online.delete(frame.user);
        } else {
          for (const user of frame.online ?? []) this.online.add(user);
          for (const user of frame.offline ?? []) this.online.delete(user);
        }
        this.emit("presence", {});
        break;
      case "invited":
        this.refreshInvitations();
        break;
      default:
    }
  }

  async onAck(frame) {
    const sent = this.wire.find((w) => w.room === frame.room && w.client_id === frame.client_id);
    if (!sent) return;
    this.wire.splice(this.wire.indexOf(sent), 1);
    if (sent.state === "inflight") this.window = Math.min(WINDOW_MAX, this.window + 1);
    if (sent.isMessage) {
      const item = sent.item;
      item.state = "acked";
      await this.outbox.remove(item).catch(() => {});
      // Shown from the log once its entry is read (or already was).
      const room = this.rooms.get(item.roomId);
      if (!room || room.conv.lastSeq >= frame.seq) this.dropPending(item);
    }
    this.emit("pending", {});
    this.flush();
  }

  async onError(frame) {
    const sent = frame.id && this.wire.find((w) => w.client_id === frame.id);
    if (sent && FINAL_CODES.has(frame.code)) {
      // Resending will not help: the message fails, with the rest of its bodies.
      const item = sent.item;
      this.wire = this.wire.filter((w) => w.item !== item);
      Object.assign(item, { state: "failed", error: frame.message });
      await this.outbox.remove(item).catch(() => {});
      this.emit("pending", {});
      this.flush();
      return;
    }
    if (sent && RETRY_CODES.has(frame.code)) {
      // Not stored, but may be later: it goes again after the server's
      // wait, before anything sent after it. The message shows as pending
      // meanwhile; the server's advice is followed without the user.
      sent.state = "refused";
      this.window = 1;
      this.resumeAt = Math.max(this.resumeAt, Date.now() + (frame.retry_after_ms ?? DEFAULT_RETRY_MS));
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this.enqueue(() => this.flush()), Math.max(0, this.resumeAt - Date.now()));
      // A database in trouble is worth saying; a rate limit or a server
      // going down (a reconnect follows) is not.
      if (frame.code === "storage_unavailable") this.emit("problem", { message: `${frame.message} (the page sends it again by itself)` });
      return;
    }
    if (frame.code === "not_found" && !frame.id) {
      await this.refreshRooms();
    } else if (frame.code !== "unavailable") {
      this.emit("problem", { message: frame.message });
    }
  }

  /**
   * Sends bodies in order while fewer than `window` are in flight: refused
   * ones first (they come first in send order, so in refusal order), then
   * new ones. Nothing goes before a refusal's wait is over.
   */
  flush() {
    if (!this.link.isReady || Date.now() < this.resumeAt) return;
    let inflight = this.wire.filter((w) => w.state === "inflight").length;
    let sent = 0;
    for (const frame of this.wire) {
      if (inflight >= this.window) break;
      if (frame.state === "inflight") continue;
      if (!this.link.send({ type: "send", id: frame.client_id, room: frame.room, client_id: frame.client_id, body: frame.body })) break;
      frame.state = "inflight";
      inflight += 1;
      sent += 1;
    }
    if (sent) this.emit("pending", {});
  }

  dropPending(item) {
    const at = this.pending.indexOf(item);
    if (at >= 0) this.pending.splice(at, 1);
  }

  /** Processes one entry of `room` once, in order. */
  async apply(room, entry) {
    if (entry.seq <= room.conv.lastSeq) return;
    const shown = await room.conv.process(entry, this.identity, this.directory);
    room.shown.push(shown);
    if (entry.kind === "message" && entry.sender === this.me && entry.client_id) this.stored(room, entry.client_id);
    for (const notice of this.directory.takeNotices()) this.emit("key-notice", notice);
    if (MEMBERSHIP_KINDS.has(entry.kind) && !room.syncing) await this.refreshRoom(room);
    if (shown.type !== "quiet") this.emit("entry", { roomId: room.info.id, shown });
  }

  /** Members may have changed: fetch the room again, and who is online. */
  async refreshRoom(room) {
    const info = await this.api.room(room.info.id).catch(() => null);
    if (info) room.info = info;
    this.link.send({ type: "who", id: "who" });
    this.emit("rooms", {});
  }

  async refreshRooms() {
    const infos = await this.api.rooms();
    const ids = new Set(infos.map((i) => i.id));
    for (const id of [...this.rooms.keys()]) if (!ids.has(id)) this.rooms.delete(id);
    const fresh = infos.filter((i) => !this.rooms.has(i.id)).map((i) => this.addRoom(i));
    for (const info of infos) this.rooms.get(info.id).info = info;
    this.sync(fresh);
    this.emit("rooms", {});
  }

  async refreshInvitations() {
    try {
      this.invitations = await this.api.invitations();
      this.emit("invitations", {});
    } catch {
      // offline: the next `ready` asks again
    }
  }

  /**
   * A message of ours with `clientId` is in the log: it needs sending no
   * more (an earlier page may have sent it just before it went away).
   */
  stored(room, clientId) {
    const item = this.pending.find((p) => p.roomId === room.info.id && p.clientId === clientId && p.state !== "failed");
    if (!item) return;
    this.dropPending(item);
    // Bodies in flight stay until their ack, which also grows the window.
    this.wire = this.wire.filter((w) => w.item !== item || w.state === "inflight");
    this.outbox.remove(item).catch(() => {});
    this.emit("pending", {});
  }

  // ------------------------------------------------------------ sending

  /** Queues a message: stored in the outbox first, then sealed and sent in order. */
  sendPayload(roomId, payload) {
    const item = { clientId: newClientId(), roomId, payload, state: "new" };
    this.pending.push(item);
    this.emit("pending", {});
    // Saved at once, not behind the queue (which may be sealing or
    // reading): the sooner it is on disk, the less a closing tab loses.
    // IndexedDB keeps writes to one store in the order they were asked.
    const saved = this.outbox.add(item).then(() => this.emit("pending", {}), (e) => {
      this.emit("problem", { message: `This message is not saved in the browser (${e.message}); it is lost if the page closes before it is sent.` });
    });
    return this.enqueue(async () => {
      await saved;
      item.state = "queued";
      await this.pump();
    });
  }

  /**
   * Seals queued messages of rooms that are caught up, in typing order,
   * and puts their bodies on the wire. A room that cannot go on holds
   * back its later messages, so each room's messages keep their order.
   */
  async pump() {
    const held = new Set();
    const infos = new Map();
    for (const item of this.pending) {
      if (item.state === "new") break; // not in the outbox yet: it and what follows wait
      if (item.state !== "queued" || held.has(item.roomId)) continue;
      const room = this.rooms.get(item.roomId);
      if (!room) {
        Object.assign(item, { state: "failed", error: "you are no longer in this conversation" });
        await this.outbox.remove(item).catch(() => {});
        continue;
      }
      if (room.syncing || !room.synced || !this.link.isReady) {
        held.add(item.roomId);
        continue;
      }
      let outgoing;
      try {
        if (!infos.has(item.roomId)) infos.set(item.roomId, await this.api.room(item.roomId));
        room.info = infos.get(item.roomId);
        outgoing = await room.conv.seal(item.payload, room.info.members, room.info.kind === "dm", this.identity, this.directory);
      } catch (e) {
        if (e.status === 0) {
          held.add(item.roomId); // offline: stays queued
          continue;
        }
        Object.assign(item, { state: "failed", error: e.message });
        await this.outbox.remove(item).catch(() => {});
        this.emit("pending", {});
        continue;
      }
      for (const notice of this.directory.takeNotices()) this.emit("key-notice", notice);
      outgoing.bodies.forEach((body, i) => {
        const isMessage = i === outgoing.bodies.length - 1;
        this.wire.push({
          room: item.roomId, client_id: isMessage ? item.clientId : newClientId(), body: b64encode(body), item, isMessage, state: "unsent",
        });
      });
      item.state = "sealed";
      if (outgoing.leftOut.length) item.note = `not readable by ${outgoing.leftOut.join(", ")} (key changed)`;
      this.emit("pending", {});
    }
    this.flush();
  }

  /** Whether `item`'s message is on its way (sent, no answer yet). */
  isInFlight(item) {
    return this.wire.some((w) => w.item === item && w.isMessage && w.state === "inflight");
  }

  /** Messages of this tab waiting to be sent or acknowledged, for the status line. */
  waitingCount() {
    return this.pending.filter((p) => p.state === "new" || p.state === "queued" || p.state === "sealed").length;
  }

  /** Device ids seen sending under this user's name in these rooms: [{device, lastTs}], newest first. */
  ownDevices() {
    const seen = new Map();
    for (const room of this.rooms.values()) {
      for (const [device, ts] of room.conv.ownDevices) seen.set(device, Math.max(ts, seen.get(device) ?? 0));
    }
    return [...seen].map(([device, lastTs]) => ({ device, lastTs })).sort((a, b) => b.lastTs - a.lastTs);
  }
}

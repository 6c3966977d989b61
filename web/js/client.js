// The chat client behind the page: the rooms this user is in, each read
// from its first visible entry through a Conversation; a serial queue so
// entries are processed strictly in order; sync cursors so a reconnect
// resumes exactly where it stopped (nothing twice); and an outbox of sealed
// bodies resent with the same client ids until acknowledged (on each
// `ready`, and on the same connection once a refusal's wait is over). What
// the user types while offline (or while a room is catching up) is held as
// plaintext in memory and sealed only once the room is caught up, so a send
// never reuses a sender-key epoch. Emits events for the page to render.

import { Conversation } from "./conversation.js";
import { Link } from "./link.js";
import { b64encode } from "./bytes.js";

const MEMBERSHIP_KINDS = new Set(["create", "invite", "join", "leave", "remove", "key"]);
// A send refused with these was not stored but may be later (PROTOCOL.md §11).
const RETRY_CODES = new Set(["rate_limited", "storage_unavailable", "unavailable"]);
const DEFAULT_RETRY_MS = 1000; // when the server names no wait

export class HushClient extends EventTarget {
  constructor({ api, token, identity, directory }) {
    super();
    this.api = api;
    this.identity = identity;
    this.me = identity.username;
    this.directory = directory;
    this.rooms = new Map(); // id -> {info, conv, syncing, shown[], lastRead}
    this.pending = []; // {localId, roomId, payload, state, clientId?, error?}
    this.outbox = []; // {room, client_id, body}
    this.refused = []; // client ids refused for now, in refusal order
    this.retryTimer = null;
    this.online = new Set();
    this.invitations = [];
    this.queue = Promise.resolve();
    this.nextLocalId = 1;
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
    this.refreshInvitations();
    this.emit("rooms", {});
    this.link.start();
  }

  stop() {
    clearTimeout(this.retryTimer);
    this.link.stop();
  }

  addRoom(info) {
    if (this.rooms.has(info.id)) {
      this.rooms.get(info.id).info = info;
      return this.rooms.get(info.id);
    }
    const room = {
      info,
      conv: new Conversation(info.id, this.me),
      syncing: false,
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
    return room.shown.filter((s) => s.type === "message" && s.sender !== this.me && s.seq > room.lastRead).length;
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
        // Look peers' keys up again: a key swapped meanwhile is caught at once.
        this.directory.peers.clear();
        this.sync([...this.rooms.values()]);
        // The whole outbox goes again, so refusals waiting for a retry are moot.
        clearTimeout(this.retryTimer);
        this.refused = [];
        for (const item of this.outbox) this.resend(item);
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
          await this.refreshRoom(room);
          this.emit("synced", { roomId: frame.room });
          await this.pump();
        }
        break;
      }
      case "ack":
        this.outbox = this.outbox.filter((o) => !(o.room === frame.room && o.client_id === frame.client_id));
        this.emit("pending", {});
        break;
      case "error":
        await this.onError(frame);
        break;
      case "online":
        if (frame.room === null) this.online = new Set(frame.users);
        this.emit("presence", {});
        break;
      case "presence":
        if (frame.online) this.online.add(frame.user);
        else this.online.delete(frame.user);
        this.emit("presence", {});
        break;
      case "invited":
        this.refreshInvitations();
        break;
      default:
    }
  }

  async onError(frame) {
    const item = frame.id && this.outbox.find((o) => o.client_id === frame.id);
    if (item && ["bad_body", "too_large", "not_found", "bad_frame"].includes(frame.code)) {
      this.outbox = this.outbox.filter((o) => o !== item);
      for (const p of this.pending) if (p.clientIds?.includes(item.client_id)) Object.assign(p, { state: "failed", error: frame.message });
      this.emit("pending", {});
      return;
    }
    if (item && RETRY_CODES.has(frame.code)) {
      this.retryLater(item.client_id, frame.retry_after_ms ?? DEFAULT_RETRY_MS);
      // The server's advice (wait and resend) is followed without the user;
      // the message shows as pending meanwhile.
      if (frame.code === "rate_limited") return;
    }
    if (frame.code === "not_found" && !frame.id) {
      await this.refreshRooms();
    } else if (frame.code !== "unavailable") {
      this.emit("problem", { message: frame.message });
    }
  }

  /**
   * Not stored, but may be later: sends the refused items again on this
   * connection after `waitMs`, in the order they were refused. One timer
   * serves them all, reset to the latest wait.
   */
  retryLater(clientId, waitMs) {
    if (!this.refused.includes(clientId)) this.refused.push(clientId);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.enqueue(() => {
      const refused = this.refused;
      this.refused = [];
      for (const id of refused) {
        const item = this.outbox.find((o) => o.client_id === id);
        if (item) this.resend(item);
      }
    }), waitMs);
  }

  /** The same `send` frame again: the server stores one entry per client id. */
  resend(item) {
    this.link.send({ type: "send", id: item.client_id, ...item });
  }

  /** Processes one entry of `room` once, in order. */
  async apply(room, entry) {
    if (entry.seq <= room.conv.lastSeq) return;
    const shown = await room.conv.process(entry, this.identity, this.directory);
    room.shown.push(shown);
    if (shown.type === "message" && shown.sender === this.me && shown.clientId) {
      const before = this.pending.length;
      this.pending = this.pending.filter((p) => !p.clientIds?.includes(shown.clientId));
      if (before !== this.pending.length) this.emit("pending", {});
    }
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

  // ------------------------------------------------------------ sending

  sendPayload(roomId, payload) {
    this.pending.push({ localId: this.nextLocalId++, roomId, payload, state: "queued" });
    this.emit("pending", {});
    return this.enqueue(() => this.pump());
  }

  /** Seals and posts queued messages of rooms that are caught up, in order. */
  async pump() {
    for (const item of this.pending) {
      if (item.state !== "queued") continue;
      const room = this.rooms.get(item.roomId);
      if (!room || room.syncing || !this.link.isReady) continue;
      let outgoing;
      try {
        const info = await this.api.room(item.roomId);
        room.info = info;
        outgoing = await room.conv.seal(item.payload, info.members, info.kind === "dm", this.identity, this.directory);
      } catch (e) {
        if (e.status === 0) continue; // offline: stays queued
        Object.assign(item, { state: "failed", error: e.message });
        this.emit("pending", {});
        continue;
      }
      for (const notice of this.directory.takeNotices()) this.emit("key-notice", notice);
      item.clientIds = [];
      for (const body of outgoing.bodies) {
        const out = { type: "send", room: item.roomId, client_id: crypto.randomUUID(), body: b64encode(body) };
        item.clientIds.push(out.client_id);
        this.outbox.push({ room: out.room, client_id: out.client_id, body: out.body });
        this.link.send({ id: out.client_id, ...out });
      }
      item.state = "sent";
      if (outgoing.leftOut.length) item.note = `not readable by ${outgoing.leftOut.join(", ")} (key changed)`;
      this.emit("pending", {});
    }
  }

  /** Messages waiting to be sealed or acknowledged, for the status line. */
  waitingCount() {
    return this.pending.filter((p) => p.state === "queued").length + this.outbox.length;
  }
}

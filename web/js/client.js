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
//
// With a Store (store.js), each room starts from its saved snapshot and
// cursor, so a sync brings only what is new; what each page of entries
// showed is saved with the snapshot in one transaction. Entries are
// handed to the page in batches ("entries"), one per sync page.

import { Conversation, DELETED_TEXT, EXPIRED_TEXT } from "./conversation.js";
import { receiptPayload, sealTimer, typingPayload } from "./crypto.js";
import { Link } from "./link.js";
import { b64decode, b64encode } from "./bytes.js";
import { Outbox, newClientId } from "./outbox.js";
import { yieldToEventLoop } from "./store.js";

const MEMBERSHIP_KINDS = new Set(["create", "invite", "join", "leave", "remove", "key", "promote", "demote", "decline", "timer"]);
// A send refused with these was not stored but may be later (PROTOCOL.md §11).
const RETRY_CODES = new Set(["rate_limited", "storage_unavailable", "unavailable"]);
const FINAL_CODES = new Set(["bad_body", "too_large", "not_found", "bad_frame", "blocked", "forbidden"]);
const DEFAULT_RETRY_MS = 1000; // when the server names no wait
// Sends in flight at once: back to one after a refusal, one more per ack.
const WINDOW_MAX = 16;
const ADOPT_EVERY_MS = 5_000;
const SAVE_AFTER_MS = 250; // live entries are saved in small batches
const YIELD_EVERY = 25; // entries processed between yields to the event loop
// §21 signals: at most one receipt per room per second; typing repeated
// every 3 s while typing, and shown for 6 s unless repeated.
const RECEIPT_EVERY_MS = 1000;
const TYPING_EVERY_MS = 3000;
const TYPING_LASTS_MS = 6000;
const EXPIRY_CHECK_MS = 1000;

export class HushClient extends EventTarget {
  /** `device`: this tab's claimed device id ({id, hex}). */
  constructor({ api, token, identity, directory, device, store = null }) {
    super();
    this.api = api;
    this.store = store;
    this.areRoomsStale = false; // the room list came from the store only
    this.identity = identity;
    this.me = identity.username;
    this.directory = directory;
    this.device = device;
    this.outbox = new Outbox(this.me, device.hex);
    // id -> {info, conv, syncing, synced, unsaved[], unread, lastTs, lastRead}
    this.rooms = new Map();
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
    this.blocked = new Set(); // users this account blocks (§21): their group messages are hidden, not decrypted
    // What this user lets others see; the page keeps them per user (store.js meta).
    this.settings = { readReceipts: true, typing: true };
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

  /** The rooms this browser has stored, before any network: the page can show them at once. */
  async start() {
    await this.loadStored();
    this.emit("rooms", {});
  }

  /** The server's room list, the outbox, then the connection. */
  async connect() {
    await this.refreshBlocks();
    try {
      const infos = await this.api.rooms();
      await this.reconcileRooms(infos);
    } catch (e) {
      // Offline (or the server is down): the stored rooms show; the room
      // list is asked again once connected.
      if (e.status !== 0 || !this.rooms.size) throw e;
      this.areRoomsStale = true;
    }
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
    // Disappearing messages leave the screen and the store on this
    // reader's clock (§21), whatever the server does.
    this.expiryTimer = setInterval(() => this.enqueue(() => this.sweepExpired()), EXPIRY_CHECK_MS);
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
    this.isStopped = true;
    for (const room of this.rooms.values()) clearTimeout(room.saveTimer);
    clearTimeout(this.retryTimer);
    clearInterval(this.adoptTimer);
    clearInterval(this.expiryTimer);
    for (const room of this.rooms.values()) {
      clearTimeout(room.receiptTimer);
      clearTimeout(room.typingTimer);
    }
    this.link.stop();
    this.device.release?.();
  }

  /** Rooms as the store has them: each resumes at its cursor. */
  async loadStored() {
    if (!this.store) return;
    let stored;
    try {
      stored = await this.store.rooms();
    } catch (e) {
      this.emit("problem", { message: `This browser's message store cannot be read (${e.message}); messages are read from the server.` });
      return;
    }
    for (const r of stored) {
      const room = this.addRoom(r.info);
      if (!r.conv) {
        // Its snapshot no longer opens: the room is read again from seq 0.
        await this.store.deleteRoom(r.room).catch(() => {});
        continue;
      }
      try {
        await room.conv.restore(r.conv);
      } catch {
        room.conv = new Conversation(r.info.id, this.me, this.device.id);
        await this.store.deleteRoom(r.room).catch(() => {});
        continue;
      }
      room.unread = room.lastRead >= room.conv.lastSeq ? 0 : r.unread;
      room.lastTs = r.lastTs;
    }
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
      unsaved: [], // shown since the last save
      unread: 0,
      lastTs: 0,
      lastRead: Number(localStorage.getItem(`hush.read.${this.me}.${info.id}`) ?? 0),
      receipts: new Map(), // other user -> {delivered, read}: the highest their receipts said (§21)
      typing: new Map(), // other user -> until (ms)
      readSeq: 0, // the newest seq shown on screen in a visible tab
      sentReceipt: { delivered: 0, read: 0 },
      lastReceiptAt: 0,
      receiptTimer: null,
      typingSentAt: 0,
    };
    this.rooms.set(info.id, room);
    return room;
  }

  /** Brings the room list in line with the server's: rooms left are forgotten, here and in the store. */
  async reconcileRooms(infos) {
    const ids = new Set(infos.map((i) => i.id));
    for (const id of [...this.rooms.keys()]) {
      if (ids.has(id)) continue;
      this.rooms.delete(id);
      await this.store?.deleteRoom(id).catch(() => {});
    }
    const fresh = infos.filter((i) => !this.rooms.has(i.id));
    for (const info of infos) this.addRoom(info);
    this.areRoomsStale = false;
    return fresh.map((i) => this.rooms.get(i.id));
  }

  /**
   * Saves what `room` showed since the last save, with its snapshot. Runs
   * in the queue (or from code already in it), so the snapshot matches the
   * cursor exactly.
   */
  async save(room) {
    clearTimeout(room.saveTimer);
    room.saveTimer = null;
    if (this.isStopped) return;
    if (!this.store) {
      // No store: the newest items stay in memory, for the page to show.
      room.unsaved.splice(0, Math.max(0, room.unsaved.length - 500));
      return;
    }
    if (!this.rooms.has(room.info.id)) return;
    const items = room.unsaved.splice(0);
    const conv = room.conv.snapshot();
    try {
      await this.store.saveRoom({ room: room.info.id, info: room.info, unread: room.unread, lastTs: room.lastTs, conv }, items);
    } catch (e) {
      if (!this.storeFailed) this.emit("problem", { message: `Messages could not be saved in this browser (${e.message}); they are read from the server again next time.` });
      this.storeFailed = true;
    }
  }

  /** Saves `room` soon (live entries come one by one). */
  saveSoon(room) {
    if (!this.store || room.saveTimer) return;
    room.saveTimer = setTimeout(() => this.enqueue(() => this.save(room)), SAVE_AFTER_MS);
  }

  /** Everything shown so far is in the store (before reading it back). */
  flushSaves(room) {
    if (!this.store || !room?.unsaved.length) return Promise.resolve();
    return this.enqueue(() => this.save(room));
  }

  /**
   * Items of `roomId` to show, in seq order: the newest `limit`
   * ("latest"), or `limit` before/after `seq`. From the store, after
   * saving what is not saved yet; without a store, what memory holds.
   */
  async itemsOf(roomId, direction, seq, limit) {
    const room = this.rooms.get(roomId);
    if (!room) return [];
    if (!this.store) {
      if (direction === "latest") return room.unsaved.slice(-limit);
      if (direction === "before") return room.unsaved.filter((i) => i.seq < seq).slice(-limit);
      return room.unsaved.filter((i) => i.seq > seq).slice(0, limit);
    }
    await this.flushSaves(room);
    if (direction === "latest") return this.store.latest(roomId, limit);
    if (direction === "before") return this.store.before(roomId, seq, limit);
    return this.store.after(roomId, seq, limit);
  }

  /** One item of `roomId` (a reply's target): from memory, else the store. */
  async itemOf(roomId, seq) {
    const room = this.rooms.get(roomId);
    if (!room) return null;
    const inMemory = room.unsaved.find((i) => i.seq === seq);
    if (inMemory) return inMemory;
    return this.store ? this.store.item(roomId, seq) : null;
  }

  title(room) {
    const info = room.info;
    return info.kind === "dm" ? info.members.find((m) => m !== this.me) ?? info.creator : info.name;
  }

  unread(room) {
    return room.unread;
  }

  markRead(roomId) {
    const room = this.rooms.get(roomId);
    if (!room) return;
    if (typeof document === "undefined" || !document.hidden) {
      room.readSeq = Math.max(room.readSeq, room.conv.lastSeq);
      this.scheduleReceipt(room);
    }
    const wasUnread = room.unread;
    room.lastRead = room.conv.lastSeq;
    room.unread = 0;
    localStorage.setItem(`hush.read.${this.me}.${roomId}`, String(room.lastRead));
    if (wasUnread) this.store?.updateRoom(roomId, { unread: 0 }).catch(() => {});
    this.emit("rooms", {});
  }

  /** A DM request not accepted yet (§21): nothing of it is synced, decrypted or shown. */
  isRequest(room) {
    return room.info.request === true;
  }

  sync(rooms) {
    rooms = rooms.filter((r) => !this.isRequest(r));
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
        if (this.areRoomsStale) {
          try {
            await this.reconcileRooms(await this.api.rooms());
          } catch {
            // still stale: the next `ready` tries again
          }
          this.emit("rooms", {});
        }
        this.sync([...this.rooms.values()]);
        this.checkPeers();
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
        if (room.syncing || this.isRequest(room)) break;
        const shown = await this.apply(room, frame.entry);
        this.saveSoon(room);
        this.scheduleReceipt(room);
        if (shown) this.emit("entries", { roomId: room.info.id, items: [shown], isLive: true });
        break;
      }
      case "page": {
        const room = this.rooms.get(frame.room);
        if (!room) break;
        const batch = [];
        for (const [i, entry] of frame.entries.entries()) {
          const shown = await this.apply(room, entry);
          if (shown) batch.push(shown);
          if (i % YIELD_EVERY === YIELD_EVERY - 1) await yieldToEventLoop();
        }
        await this.save(room);
        if (batch.length) this.emit("entries", { roomId: room.info.id, items: batch, isLive: false });
        break;
      }
      case "synced": {
        const room = this.rooms.get(frame.room);
        if (room) {
          room.syncing = false;
          room.synced = true;
          await this.refreshRoom(room);
          this.emit("synced", { roomId: frame.room });
          this.scheduleReceipt(room);
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
      case "request":
        // Someone asks to message this user (§21): shown as a request only.
        if (!this.rooms.has(frame.room)) {
          const info = await this.api.room(frame.room).catch(() => null);
          if (info) this.addRoom(info);
        }
        this.emit("rooms", {});
        break;
      case "signal":
        await this.onSignal(frame);
        break;
      default:
    }
  }

  async onAck(frame) {
    const sent = this.wire.find((w) => w.room === frame.room && w.client_id === frame.client_id);
    if (!sent) return;
    this.wire.splice(this.wire.indexOf(sent), 1);
    if (sent.state === "inflight") this.window = Math.min(WINDOW_MAX, this.window + 1);
    if (sent.thenSignals) {
      for (const frame of sent.thenSignals.heldSignals ?? []) this.link.send(frame);
      sent.thenSignals.heldSignals = null;
    }
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
      // Signals held behind a distribution that will never be stored are dropped (best effort).
      if (sent.thenSignals) sent.thenSignals.heldSignals = null;
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
      if (!this.link.send({ type: "send", id: frame.client_id, room: frame.room, client_id: frame.client_id, body: frame.body, erase: frame.erase })) break;
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

  /** Processes one entry of `room` once, in order; resolves with what it shows, or null. */
  async apply(room, entry) {
    if (entry.seq <= room.conv.lastSeq) return null;
    const shown = await room.conv.process(entry, this.identity, this.directory, { blocked: this.blocked });
    if (entry.kind === "message" && entry.sender === this.me && entry.client_id) this.stored(room, entry.client_id);
    for (const notice of this.directory.takeNotices()) this.emit("key-notice", notice);
    if (MEMBERSHIP_KINDS.has(entry.kind) && !room.syncing) await this.refreshRoom(room);
    // Receipts speak only of others' messages that reached this run (§21).
    if (entry.kind === "message" && entry.sender !== this.me && shown.type !== "quiet") room.heardInRun = true;
    if (shown.type === "quiet") return null;
    if (shown.type === "relation") {
      await this.applyRelation(room, shown);
      return null;
    }
    room.unsaved.push(shown);
    room.lastTs = Math.max(room.lastTs, shown.ts);
    if ((shown.type === "message" || shown.type === "unsupported") && shown.sender !== this.me && shown.seq > room.lastRead) room.unread += 1;
    return shown;
  }

  /**
   * Looks every member's key up again (after a reconnect): a key swapped
   * while this page was away is caught now, not at the next entry of that
   * member (a stored room reads no old entries again).
   */
  checkPeers() {
    const members = new Set();
    for (const room of this.rooms.values()) for (const m of room.info.members ?? []) if (m !== this.me) members.add(m);
    this.enqueue(async () => {
      for (const m of members) await this.directory.peer(m).catch(() => {});
      for (const notice of this.directory.takeNotices()) this.emit("key-notice", notice);
    });
  }

  /** Members may have changed: fetch the room again, and who is online. */
  async refreshRoom(room) {
    const info = await this.api.room(room.info.id).catch(() => null);
    if (info) room.info = info;
    this.link.send({ type: "who", id: "who" });
    this.emit("rooms", {});
  }

  async refreshRooms() {
    const fresh = await this.reconcileRooms(await this.api.rooms());
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

  // ------------------------------------------------------------ §21

  /**
   * An edit, delete or reaction that passed the Conversation's checks,
   * applied to its target wherever it is (not saved yet, or in the store),
   * which is then shown again.
   */
  async applyRelation(room, rel) {
    const roomId = room.info.id;
    const of = rel.payload.of;
    let item = room.unsaved.find((i) => i.seq === of);
    const isInMemory = Boolean(item);
    if (!item && this.store) item = await this.store.item(roomId, of).catch(() => null);
    if (!item) return;
    relate(item, rel);
    if (!isInMemory && this.store) {
      await this.store.putItem(roomId, item).catch((e) => this.emit("problem", { message: `A change to a message could not be saved (${e.message}).` }));
    }
    this.emit("updated", { roomId, items: [item] });
  }

  /**
   * Replaces what expired with "message expired" (§21: never a gap, the
   * sender kept), in memory and in the store, so its text and file leave
   * both; tells the page.
   */
  async sweepExpired() {
    const now = Date.now();
    for (const room of this.rooms.values()) {
      const seqs = room.conv.takeExpired(now);
      if (!seqs.length) continue;
      const roomId = room.info.id;
      const changed = [];
      for (const seq of seqs) {
        let item = room.unsaved.find((i) => i.seq === seq);
        const isInMemory = Boolean(item);
        if (!item && this.store) item = await this.store.item(roomId, seq).catch(() => null);
        if (!item) continue;
        expire(item);
        if (!isInMemory) await this.store?.putItem(roomId, item).catch(() => {});
        changed.push(item);
      }
      this.saveSoon(room);
      if (changed.length) this.emit("updated", { roomId, items: changed });
    }
  }

  async refreshBlocks() {
    try {
      this.blocked = new Set(await this.api.blocks());
      this.emit("blocks", {});
    } catch {
      // offline or an older server: nothing hidden beyond what is known
    }
  }

  async block(user) {
    await this.api.block(user);
    this.blocked.add(user);
    this.emit("blocks", {});
    // The server declines this user's pending requests to us.
    await this.enqueue(() => this.refreshRooms());
  }

  async unblock(user) {
    await this.api.unblock(user);
    this.blocked.delete(user);
    this.emit("blocks", {});
  }

  /** Accepts a DM request: from now on it is read like any room. */
  async accept(roomId) {
    const info = await this.api.accept(roomId);
    await this.enqueue(async () => {
      const room = this.addRoom(info);
      room.info = info;
      this.sync([room]);
    });
    this.emit("rooms", {});
  }

  /** Declines a DM request: it leaves the list (and this browser's store). */
  async decline(roomId) {
    await this.api.decline(roomId);
    await this.enqueue(async () => {
      this.rooms.delete(roomId);
      await this.store?.deleteRoom(roomId).catch(() => {});
    });
    this.emit("rooms", {});
  }

  /** Sets the room's disappearing-messages timer with a signed statement (§21). */
  async setTimer(roomId, duration) {
    const room = this.rooms.get(roomId);
    if (!room) return;
    const body = await sealTimer(roomId, this.me, duration, room.conv.lastSeq, this.identity.current);
    const info = await this.api.setTimer(roomId, b64encode(body));
    if (info) room.info = info;
    this.emit("rooms", {});
  }

  /** Sends a receipt for `room` soon: at most one a second. */
  scheduleReceipt(room) {
    if (room.receiptTimer || this.isStopped) return;
    const wait = Math.max(0, room.lastReceiptAt + RECEIPT_EVERY_MS - Date.now());
    room.receiptTimer = setTimeout(() => {
      room.receiptTimer = null;
      this.enqueue(() => this.sendReceipt(room));
    }, wait);
  }

  async sendReceipt(room) {
    if (!this.rooms.has(room.info.id) || this.isRequest(room) || !room.synced || room.syncing || !this.link.isReady || !room.heardInRun) return;
    const delivered = room.conv.lastSeq;
    const read = this.settings.readReceipts ? Math.min(room.readSeq, delivered) : 0;
    if (!delivered || (delivered === room.sentReceipt.delivered && read === room.sentReceipt.read)) return;
    room.lastReceiptAt = Date.now();
    room.sentReceipt = { delivered, read };
    await this.sendSignal(room, "receipt", receiptPayload(delivered, read || null));
  }

  /** The user types (true) or sent or cleared the message (false) in `roomId`. */
  typing(roomId, isTyping) {
    const room = this.rooms.get(roomId);
    if (!room || !this.settings.typing || this.isRequest(room)) return;
    const now = Date.now();
    if (isTyping && now - room.typingSentAt < TYPING_EVERY_MS) return;
    if (!isTyping && !room.typingSentAt) return;
    room.typingSentAt = isTyping ? now : 0;
    this.enqueue(() => {
      if (!room.synced || room.syncing || !this.link.isReady) return;
      return this.sendSignal(room, "typing", typingPayload(isTyping));
    });
  }

  /** Seals and sends one signal; a new sender key goes into the log first if needed. */
  async sendSignal(room, kind, payload) {
    const info = room.info;
    let sealed;
    try {
      sealed = await room.conv.sealSignal(payload, info.members, info.kind === "dm", this.identity, this.directory);
    } catch {
      // Best effort (a DM whose peer's key is blocked, a key lookup offline): no signal, no alarm.
      return;
    }
    const { bodies, signal } = sealed;
    const frame = { type: "signal", room: info.id, kind, body: b64encode(signal) };
    if (room.heldSignals) {
      // Sealed under a key whose distribution is not stored yet: in order, behind it.
      room.heldSignals.push(frame);
      return;
    }
    if (!bodies.length) {
      this.link.send(frame);
      return;
    }
    // A new key: readers cannot open the signal before its distribution
    // is stored, so the signal (and any sealed meanwhile) waits for that ack.
    room.heldSignals = [frame];
    bodies.forEach((body, i) => this.wire.push({
      room: info.id, client_id: newClientId(), body: b64encode(body), item: { state: "sealed" }, isMessage: false, state: "unsent",
      thenSignals: i === bodies.length - 1 ? room : null,
    }));
    this.flush();
  }

  /** A receipt or typing signal from another member (or a receipt the server kept). */
  async onSignal(frame) {
    const room = this.rooms.get(frame.room);
    if (!room || this.isRequest(room) || frame.sender === this.me || this.blocked.has(frame.sender)) return;
    let body;
    try {
      body = b64decode(frame.body ?? "");
    } catch {
      return;
    }
    const payload = await room.conv.openSignal(body, frame.sender, this.directory);
    if (!payload) return;
    if (payload.t === "receipt") {
      // Merged as a maximum: receipts have no freshness window (§21), so an
      // old one (a kept receipt) may come after a newer one; it never lowers.
      const before = room.receipts.get(frame.sender) ?? { delivered: 0, read: 0 };
      room.receipts.set(frame.sender, { delivered: Math.max(before.delivered, payload.delivered), read: Math.max(before.read, payload.read ?? 0) });
      this.emit("receipts", { roomId: frame.room });
    } else if (payload.t === "typing") {
      if (payload.typing) room.typing.set(frame.sender, Date.now() + TYPING_LASTS_MS);
      else room.typing.delete(frame.sender);
      this.emit("typing", { roomId: frame.room });
      clearTimeout(room.typingTimer);
      room.typingTimer = setTimeout(() => this.emit("typing", { roomId: frame.room }), TYPING_LASTS_MS + 50);
    }
  }

  /** Who is typing in `roomId` now. */
  typingIn(roomId) {
    const room = this.rooms.get(roomId);
    if (!room) return [];
    const now = Date.now();
    return [...room.typing].filter(([, until]) => until > now).map(([user]) => user).sort();
  }

  // ------------------------------------------------------------ sending

  /** A message that failed for good goes again, as a new message (new client id). */
  retry(item) {
    this.dismiss(item);
    return this.sendPayload(item.roomId, item.payload);
  }

  /** Forgets a failed message. */
  dismiss(item) {
    if (item.state !== "failed") return;
    this.dropPending(item);
    this.emit("pending", {});
  }

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
        // A delete asks the server to erase its target in the same frame (§21).
        const erase = isMessage && item.payload.t === "delete" ? item.payload.of : undefined;
        this.wire.push({
          room: item.roomId, client_id: isMessage ? item.clientId : newClientId(), body: b64encode(body), item, isMessage, state: "unsent", erase,
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

/** Applies a checked relation to the item it names (mutated in place). */
export function relate(item, rel) {
  const p = rel.payload;
  if (p.t === "delete") {
    // Its text, file, edits and reactions go (§21); the position stays.
    for (const k of ["payload", "edited", "reactions", "isLate", "verified", "clientId", "reason"]) delete item[k];
    item.type = "deleted";
    item.text = DELETED_TEXT;
    return item;
  }
  if (item.type !== "message") return item;
  if (p.t === "edit" && item.payload?.t === "text") {
    item.payload.text = p.text;
    item.edited = true;
  } else if (p.t === "react") {
    const reactions = { ...(item.reactions ?? {}) };
    if (p.emoji === "") delete reactions[rel.sender];
    else reactions[rel.sender] = p.emoji;
    if (Object.keys(reactions).length) item.reactions = reactions;
    else delete item.reactions;
  }
  return item;
}

/** What is left of an item whose disappearing-messages time came: its position and sender. */
export function expire(item) {
  for (const k of Object.keys(item)) if (!["seq", "ts", "sender", "type"].includes(k)) delete item[k];
  item.type = "erased";
  item.reason = "expired";
  item.text = EXPIRED_TEXT;
  return item;
}

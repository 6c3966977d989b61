// The page's local store (issue 15): one IndexedDB database per user of
// this browser, `hush-store-USER`, so a reload shows what was already read
// at once, offline too, and a sync asks the server only for what is new.
//
//   meta      "key": the store's AES-256-GCM key, a CryptoKey made with
//             extractable: false (its bytes never reach JavaScript, so they
//             cannot be read out of the database files or copied by script);
//             "lastRoom": the conversation open last.
//   rooms     per room: its info (name, members), the sync cursor, the
//             unread count, and the Conversation snapshot (replay sets,
//             retired keys, own chains; sender keys sealed under the key).
//   messages  per (room, seq): what the entry showed, sealed under the key
//             (text, file name, sender, reason...), and a file's bytes as a
//             sealed Blob, so attachments are downloaded once.
//
// Readable in the files: room ids, seqs, room info, counters and
// timestamps of the replay state. Whoever can run script in this origin
// can use the key, as they can use the identity key.

import { fromUtf8, utf8 } from "./bytes.js";

const subtle = globalThis.crypto.subtle;
const DB_VERSION = 1;
const PAGE = 500;

const dbName = (user) => `hush-store-${user}`;
const aadOf = (...parts) => utf8(["hush-web-store-v1", ...parts].join("\u0000"));

const done = (request) => new Promise((resolve, reject) => {
  request.onsuccess = () => resolve(request.result);
  request.onerror = () => reject(request.error);
});

function openDb(user) {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(dbName(user), DB_VERSION);
    request.onupgradeneeded = () => {
      const db = request.result;
      db.createObjectStore("meta");
      db.createObjectStore("rooms", { keyPath: "room" });
      db.createObjectStore("messages", { keyPath: ["room", "seq"] });
    };
    request.onsuccess = () => {
      request.result.onversionchange = () => request.result.close();
      resolve(request.result);
    };
    request.onerror = () => reject(request.error);
    request.onblocked = () => reject(new Error("hush was updated: close its other tabs, then reload this one"));
  });
}

/**
 * Yields to the event loop, so long work leaves room for input and
 * painting. A message to itself rather than setTimeout, which a hidden
 * tab throttles to once a second.
 */
export function yieldToEventLoop() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(null);
  });
}

const newestFirst = (a, b) => b.item.ts - a.item.ts || b.item.seq - a.item.seq;

export class Store {
  constructor(db, key) {
    this.db = db;
    this.key = key;
  }

  /** Opens (or creates) `user`'s store and its key. */
  static async open(user) {
    const db = await openDb(user);
    const fresh = await subtle.generateKey({ name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
    // Two tabs may race: readwrite transactions on one store run one at a
    // time, so the first key written is the one both use.
    const key = await new Promise((resolve, reject) => {
      const tx = db.transaction("meta", "readwrite");
      const meta = tx.objectStore("meta");
      let out;
      done(meta.get("key")).then((existing) => {
        out = existing ?? fresh;
        if (!existing) meta.put(fresh, "key");
      }, reject);
      tx.oncomplete = () => resolve(out);
      tx.onerror = () => reject(tx.error);
    });
    return new Store(db, key);
  }

  /** Deletes `user`'s store (sign-out). */
  static destroy(user) {
    return new Promise((resolve) => {
      const request = indexedDB.deleteDatabase(dbName(user));
      request.onsuccess = () => resolve(true);
      request.onerror = () => resolve(false);
      request.onblocked = () => resolve(false);
    });
  }

  close() {
    this.db.close();
  }

  async seal(bytes, aad) {
    const iv = globalThis.crypto.getRandomValues(new Uint8Array(12));
    return { iv, data: await subtle.encrypt({ name: "AES-GCM", iv, additionalData: aad }, this.key, bytes) };
  }

  async unseal(iv, data, aad) {
    return new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv, additionalData: aad }, this.key, data));
  }

  tx(stores, mode, op) {
    return new Promise((resolve, reject) => {
      const tx = this.db.transaction(stores, mode);
      let out;
      Promise.resolve(op(tx)).then((value) => (out = value), reject);
      tx.oncomplete = () => resolve(out);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  getMeta(name) {
    return this.tx("meta", "readonly", (tx) => done(tx.objectStore("meta").get(name)));
  }

  setMeta(name, value) {
    return this.tx("meta", "readwrite", (tx) => void tx.objectStore("meta").put(value, name));
  }

  // ------------------------------------------------------------ rooms

  /** Every stored room: {room, info, cursor, unread, lastTs, conv: {open, secret} | null}. */
  async rooms() {
    const records = await this.tx("rooms", "readonly", (tx) => done(tx.objectStore("rooms").getAll()));
    const out = [];
    for (const r of records) {
      let conv = null;
      try {
        const secret = fromUtf8(await this.unseal(r.conv.iv, r.conv.data, aadOf("conversation", r.room)));
        conv = { open: r.conv.open, secret };
      } catch {
        // A record that no longer opens is read again from the server.
        conv = null;
      }
      out.push({ room: r.room, info: r.info, cursor: conv ? r.cursor : 0, unread: r.unread ?? 0, lastTs: r.lastTs ?? 0, conv });
    }
    return out;
  }

  /**
   * Saves a room at cursor `state.conv.open.lastSeq` with the items shown
   * since the last save, in one transaction: a reload finds the snapshot
   * and the messages it covers together, or neither. Another tab that has
   * saved this room further already wins (it holds the same entries).
   */
  async saveRoom({ room, info, unread, lastTs, conv }, items) {
    const sealedConv = await this.seal(utf8(conv.secret), aadOf("conversation", room));
    const records = await Promise.all(items.map((item) => this.sealItem(room, item)));
    const record = { room, info, cursor: conv.open.lastSeq, unread, lastTs, conv: { open: conv.open, iv: sealedConv.iv, data: sealedConv.data } };
    return this.tx(["rooms", "messages"], "readwrite", async (tx) => {
      const rooms = tx.objectStore("rooms");
      const existing = await done(rooms.get(room));
      if (existing && existing.cursor > record.cursor) return false;
      rooms.put(record);
      const messages = tx.objectStore("messages");
      for (const r of records) messages.put(r);
      return true;
    });
  }

  /** Keeps a room's unread count and info without touching its cursor. */
  updateRoom(room, change) {
    return this.tx("rooms", "readwrite", async (tx) => {
      const rooms = tx.objectStore("rooms");
      const existing = await done(rooms.get(room));
      if (existing) rooms.put({ ...existing, ...change });
    });
  }

  deleteRoom(room) {
    return this.tx(["rooms", "messages"], "readwrite", (tx) => {
      tx.objectStore("rooms").delete(room);
      tx.objectStore("messages").delete(IDBKeyRange.bound([room, 0], [room, Infinity]));
    });
  }

  // ------------------------------------------------------------ messages

  async sealItem(room, item) {
    const { payload, ...rest } = item;
    const record = { room, seq: item.seq };
    let file = null;
    if (payload) {
      if (payload.t === "file") {
        const { data, ...meta } = payload;
        rest.payload = meta;
        file = data;
      } else {
        rest.payload = payload;
      }
    }
    const sealed = await this.seal(utf8(JSON.stringify(rest)), aadOf("message", room, item.seq));
    record.iv = sealed.iv;
    record.data = sealed.data;
    if (file) {
      const f = await this.seal(file, aadOf("file", room, item.seq));
      record.fileIv = f.iv;
      record.file = new Blob([f.data]);
    }
    return record;
  }

  /** Opens a stored record; null if it does not open. `withFile` false leaves a file's bytes out. */
  async openItem(record, withFile = true) {
    try {
      const item = JSON.parse(fromUtf8(await this.unseal(record.iv, record.data, aadOf("message", record.room, record.seq))));
      if (item.payload?.t === "file") {
        item.payload.data = withFile && record.file
          ? await this.unseal(record.fileIv, await record.file.arrayBuffer(), aadOf("file", record.room, record.seq))
          : null;
      }
      return item;
    } catch {
      return null;
    }
  }

  async read(room, range, direction, limit) {
    const records = await this.tx("messages", "readonly", (tx) => new Promise((resolve, reject) => {
      const out = [];
      const request = tx.objectStore("messages").openCursor(range, direction);
      request.onsuccess = () => {
        const cursor = request.result;
        if (!cursor || out.length >= limit) return resolve(out);
        out.push(cursor.value);
        cursor.continue();
      };
      request.onerror = () => reject(request.error);
    }));
    if (direction === "prev") records.reverse();
    return (await Promise.all(records.map((r) => this.openItem(r)))).filter(Boolean);
  }

  /** One stored item of `room`, or null. */
  async item(room, seq) {
    const record = await this.tx("messages", "readonly", (tx) => done(tx.objectStore("messages").get([room, seq])));
    return record ? this.openItem(record) : null;
  }

  /**
   * Writes `item` again in place (an edit, a reaction, a delete applied to
   * it): the record is sealed anew, so a deleted message's text and file
   * leave the store with the old record (§21).
   */
  async putItem(room, item) {
    const record = await this.sealItem(room, item);
    return this.tx("messages", "readwrite", (tx) => void tx.objectStore("messages").put(record));
  }

  /** Removes items of `room` (messages that expired). */
  deleteItems(room, seqs) {
    return this.tx("messages", "readwrite", (tx) => {
      const messages = tx.objectStore("messages");
      for (const seq of seqs) messages.delete([room, seq]);
    });
  }

  /** The newest `limit` items of `room` (seq order). */
  latest(room, limit) {
    return this.read(room, IDBKeyRange.bound([room, 0], [room, Infinity]), "prev", limit);
  }

  /** Up to `limit` items of `room` just below `seq` (seq order). */
  before(room, seq, limit) {
    return this.read(room, IDBKeyRange.bound([room, 0], [room, seq], false, true), "prev", limit);
  }

  /** Up to `limit` items of `room` just above `seq` (seq order). */
  after(room, seq, limit) {
    return this.read(room, IDBKeyRange.bound([room, seq], [room, Infinity], true, false), "next", limit);
  }

  /**
   * Searches every stored message for `query` (case-insensitive, text and
   * file names), in the page: nothing is asked of the server. Reads and
   * decrypts in pages of 500, yielding between pages. Resolves with the
   * newest `limit` matches, newest first: [{room, item}].
   */
  async search(query, limit = 50) {
    const needle = query.toLocaleLowerCase();
    const found = [];
    let lower = undefined;
    for (;;) {
      const range = lower === undefined ? undefined : IDBKeyRange.lowerBound(lower, true);
      const records = await this.tx("messages", "readonly", (tx) => done(tx.objectStore("messages").getAll(range, PAGE)));
      if (!records.length) break;
      lower = [records.at(-1).room, records.at(-1).seq];
      for (const r of records) {
        const item = await this.openItem(r, false);
        const text = item?.payload?.t === "text" ? item.payload.text : item?.payload?.t === "file" ? item.payload.name : null;
        if (text !== null && text !== undefined && text.toLocaleLowerCase().includes(needle)) found.push({ room: r.room, item });
      }
      found.sort(newestFirst);
      found.splice(limit);
      await yieldToEventLoop();
    }
    return found;
  }
}

// The durable outbox (docs/PROTOCOL.md §11): every message typed (or file
// chosen) is written to IndexedDB with its client_id *before* anything is
// sent, and deleted once the server acknowledges it (a duplicate ack too)
// or refuses it for good. A reload, a crash or a closed tab therefore
// loses nothing: the next page of this browser sends what is left, in
// typing order, under the same client ids, so the server stores each
// message once (it keeps the first body it stored for a client id; the
// page seals again at send time).
//
// Records belong to the device id of the tab that wrote them, so two tabs
// of one user never send the same record at once. A tab takes over the
// records of a device id nobody holds (its tab is gone).
//
// What is stored is the payload sealed with AES-256-GCM under a
// non-extractable key kept in IndexedDB beside it: plaintext never sits in
// the profile's database files as is. Whoever can run code in this origin
// can still use that key, as they can use the identity key.

import { b64encode } from "./bytes.js";
import { decodePayload, encodePayload, randomBytes } from "./crypto.js";
import { devicePool, withIdleDevice } from "./devices.js";
import * as idb from "./idb.js";

const subtle = globalThis.crypto.subtle;
const AAD = new TextEncoder().encode("hush-web-outbox-v1");

export class Outbox {
  /** `device`: the hex id this tab claimed. */
  constructor(user, device) {
    this.user = user;
    this.device = device;
    this.key = null;
  }

  async localKey() {
    if (this.key) return this.key;
    const name = `outbox-key:${this.user}`;
    let key = await idb.get(name);
    if (!key) {
      const fresh = await subtle.generateKey({ name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
      // Two tabs may race here: the first key written wins for both.
      key = await idb.update(name, (existing) => existing ?? fresh);
    }
    this.key = key;
    return key;
  }

  /** Stores `item` ({roomId, clientId, payload}); sets `item.key`. */
  async add(item) {
    const nonce = randomBytes(12);
    const sealed = new Uint8Array(await subtle.encrypt(
      { name: "AES-GCM", iv: nonce, additionalData: AAD }, await this.localKey(), encodePayload(item.payload)));
    item.key = await idb.outboxAdd({
      user: this.user, device: this.device, room: item.roomId, clientId: item.clientId, created: Date.now(), nonce, sealed,
    });
  }

  async remove(item) {
    if (item.key !== undefined) await idb.outboxDelete(item.key);
  }

  /**
   * Takes over the records of device ids nobody holds (their tab is gone);
   * resolves with how many were taken. Without Web Locks no tab holds
   * anything, so everything is taken: a record sent twice is stored once
   * (same client id).
   */
  async adopt() {
    const others = [...(await idb.outboxDevices(this.user))].filter((d) => d !== this.device);
    if (!others.length) return 0;
    const pool = new Set((await devicePool(this.user)).map((d) => d.id));
    let taken = 0;
    for (const other of others) {
      const take = () => idb.outboxReassign(this.user, other, this.device);
      if (!globalThis.navigator?.locks || !pool.has(other)) taken += await take();
      else taken += (await withIdleDevice(this.user, other, take)) ?? 0;
    }
    return taken;
  }

  /**
   * This device's records, after taking over those of device ids nobody
   * holds; oldest first, as {key, roomId, clientId, payload}. A record
   * that no longer opens (its key was lost) is dropped and counted.
   */
  async load() {
    await this.adopt();
    const records = (await idb.outboxOf(this.user, this.device)).sort((a, b) => a.key - b.key);
    const items = [];
    let lost = 0;
    for (const r of records) {
      try {
        const plain = new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv: r.nonce, additionalData: AAD }, await this.localKey(), r.sealed));
        items.push({ key: r.key, roomId: r.room, clientId: r.clientId, payload: decodePayload(plain) });
      } catch {
        lost += 1;
        await idb.outboxDelete(r.key);
      }
    }
    return { items, lost };
  }
}

/** A client id for a new message: 128 random bits, base64. */
export const newClientId = () => b64encode(randomBytes(16)).replace(/=+$/, "");

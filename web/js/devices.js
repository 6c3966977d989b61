// This browser's device ids (docs/PROTOCOL.md §19, Devices and chains).
// A browser profile keeps a pool of 16-byte random ids per user in
// IndexedDB. Each tab claims one for its whole life with an exclusive Web
// Lock (`navigator.locks`, released by the browser when the tab goes), so
// two tabs never send under one id, while a reload gets its id back and
// readers do not collect a new sender key for every page load. When every
// id of the pool is held, the tab makes a new one.

import { hex, unhex } from "./bytes.js";
import { newDeviceId } from "./crypto.js";
import * as idb from "./idb.js";

const poolKey = (user) => `devices:${user}`;
const lockName = (user, deviceHex) => `hush-device:${user}:${deviceHex}`;

/**
 * Asks for the lock `name` without waiting. Resolves with a function that
 * releases it, or null if someone holds it.
 */
function tryLock(name) {
  return new Promise((resolve, reject) => {
    navigator.locks.request(name, { ifAvailable: true }, (lock) => {
      if (!lock) {
        resolve(null);
        return undefined;
      }
      // Held until `release` is called (or the tab goes away).
      return new Promise((release) => resolve(release));
    }).catch(reject);
  });
}

/** The device ids this browser has used for `user` ([{id: hex, created}]). */
export async function devicePool(user) {
  return (await idb.get(poolKey(user))) ?? [];
}

/**
 * Claims a free device id of `user` for this tab: the first of the pool
 * whose lock is free, else a new one added to the pool. Returns
 * {id: Uint8Array, hex, hasLock, release}. Where the browser has no Web
 * Locks (a page not in a secure context), every page load makes a new id:
 * never shared, but never reused either.
 */
export async function claimDevice(user) {
  if (!globalThis.navigator?.locks) {
    const id = newDeviceId();
    await idb.update(poolKey(user), (pool) => [...(pool ?? []), { id: hex(id), created: Date.now() }]);
    return { id, hex: hex(id), hasLock: false };
  }
  for (const known of await devicePool(user)) {
    const release = await tryLock(lockName(user, known.id));
    if (release) return { id: unhex(known.id), hex: known.id, hasLock: true, release };
  }
  for (;;) {
    const id = newDeviceId();
    const release = await tryLock(lockName(user, hex(id)));
    if (!release) continue;
    await idb.update(poolKey(user), (pool) => [...(pool ?? []), { id: hex(id), created: Date.now() }]);
    return { id, hex: hex(id), hasLock: true, release };
  }
}

/**
 * Runs `work` while holding `deviceHex`'s lock, if nobody holds it (its
 * tab is gone). Resolves with `work`'s result, or null if the lock is held.
 */
export async function withIdleDevice(user, deviceHex, work) {
  if (!globalThis.navigator?.locks) return null;
  const release = await tryLock(lockName(user, deviceHex));
  if (!release) return null;
  try {
    return await work();
  } finally {
    release();
  }
}

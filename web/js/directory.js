// Peers' identity keys as this browser trusts them (trust on first use),
// the same rules as src/client/directory.rs and src/crypto/trust.rs: the
// first key seen is pinned; a new key reached by rotation statements each
// signed by the previous key replaces the pin (and clears "verified"); any
// other change blocks the peer (its new key is kept as `offered_key`) until
// the user accepts it. The pins are stored in the trust-store JSON format of
// docs/PROTOCOL.md §19, in IndexedDB.

import { b64decode, b64encode } from "./bytes.js";
import { keyRotation, publicIdentity, verify } from "./crypto.js";

export class Directory {
  /**
   * `trust`: {version: 1, peers: {name: record}}; `save(trust)` persists it;
   * `self`: this user's {username, current, previous} private identities.
   */
  constructor(api, trust, save, self) {
    this.api = api;
    this.trust = trust ?? { version: 1, peers: {} };
    this.save = save;
    this.self = self;
    this.peers = new Map();
    this.notices = [];
  }

  invalidate(user) {
    this.peers.delete(user);
  }

  takeNotices() {
    return this.notices.splice(0);
  }

  record(user) {
    return this.trust.peers[user] ?? null;
  }

  /** Names of peers whose key changed without a valid rotation. */
  blocked() {
    return Object.entries(this.trust.peers).filter(([, r]) => r.offered_key).map(([name]) => name);
  }

  /** {usable, verifying[], isVerified, pinned, offered} for `user`. */
  async peer(user) {
    if (user === this.self.username) {
      const keys = [this.self.current, ...this.self.previous].map((k) => k.public);
      return { usable: keys[0], verifying: keys, isVerified: true, pinned: keys[0], offered: null };
    }
    if (!this.peers.has(user)) {
      const lookup = this.check(user);
      this.peers.set(user, lookup);
      lookup.catch(() => this.peers.delete(user));
    }
    return this.peers.get(user);
  }

  async check(user) {
    const published = await this.api.keysOf(user);
    const history = [];
    for (const k of published.history) {
      history.push({
        identity: await publicIdentity(b64decode(k.public_key)),
        signature: k.rotation_signature ? b64decode(k.rotation_signature) : null,
      });
    }
    if (!history.length) throw new Error(`the server sent an empty key history for ${user}`);
    const current = history[history.length - 1].identity;
    await this.observe(user, current, history);
    const r = this.trust.peers[user];
    const pinned = await publicIdentity(b64decode(r.key));
    const offered = r.offered_key ? await publicIdentity(b64decode(r.offered_key)) : null;
    return {
      usable: offered ? null : pinned,
      verifying: await verifyingKeys(user, pinned, history, r.previous_fingerprints ?? []),
      isVerified: !!r.verified,
      pinned,
      offered,
    };
  }

  async observe(user, current, history) {
    const r = this.trust.peers[user];
    const notice = (kind) => this.notices.push({ kind, user, fingerprint: current.fpHex });
    if (!r) {
      this.trust.peers[user] = pinRecord(current);
      notice("first_seen");
    } else if (r.fingerprint === current.fpHex) {
      if (r.offered_key) notice("changed");
      return;
    } else if (await rotationReaches(user, await publicIdentity(b64decode(r.key)), history, current)) {
      this.trust.peers[user] = { ...pinRecord(current), previous_fingerprints: [...(r.previous_fingerprints ?? []), r.fingerprint] };
      notice("rotated");
    } else {
      r.offered_key = b64encode(current.spki);
      notice("changed");
    }
    await this.save(this.trust);
  }

  /** The user accepts the key now offered for `user` (after comparing it). */
  async trustOffered(user) {
    const r = this.trust.peers[user];
    if (!r?.offered_key) return;
    const offered = await publicIdentity(b64decode(r.offered_key));
    this.trust.peers[user] = { ...pinRecord(offered), previous_fingerprints: [...(r.previous_fingerprints ?? []), r.fingerprint] };
    this.peers.delete(user);
    await this.save(this.trust);
  }

  /** Marks the pinned key verified (safety numbers compared). */
  async markVerified(user, verified = true) {
    const r = this.trust.peers[user];
    if (!r || r.offered_key) throw new Error(`${user}'s key is not pinned or is blocked`);
    r.verified = verified;
    this.peers.delete(user);
    await this.save(this.trust);
  }
}

function pinRecord(identity) {
  return { key: b64encode(identity.spki), fingerprint: identity.fpHex, verified: false, previous_fingerprints: [] };
}

/** Follows rotation statements from `pinned` to `target` (earlier links are skipped). */
async function rotationReaches(user, pinned, history, target) {
  let current = pinned;
  let steps = 0;
  for (const link of history) {
    if (!link.signature) continue;
    const ok = await verify(current, keyRotation(user, current.fp, link.identity.spki), link.signature);
    if (!ok) {
      if (steps === 0) continue;
      return false;
    }
    current = link.identity;
    steps += 1;
    if (current.fpHex === target.fpHex) return true;
  }
  return false;
}

/** The pinned key, then earlier keys linked to it by valid rotations, then keys we pinned before. */
async function verifyingKeys(user, pinned, history, pinnedBefore) {
  const keys = [pinned];
  let index = history.findIndex((h) => h.identity.fpHex === pinned.fpHex);
  while (index > 0) {
    const { identity: newer, signature } = history[index];
    const older = history[index - 1].identity;
    if (!signature || !(await verify(older, keyRotation(user, older.fp, newer.spki), signature))) break;
    keys.push(older);
    index -= 1;
  }
  for (const h of history) {
    if (pinnedBefore.includes(h.identity.fpHex) && !keys.some((k) => k.fpHex === h.identity.fpHex)) keys.push(h.identity);
  }
  return keys;
}

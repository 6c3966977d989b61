// IndexedDB, two stores. "kv": a tiny key-value store holding CryptoKeys
// (non-extractable private keys survive structured cloning as such), the
// passphrase-sealed export bundle, the trust pins, the session token and
// the pool of device ids. "outbox": messages typed but not yet
// acknowledged, in the order they were typed (an auto-incremented key),
// indexed by the device id that owns them.

const DB_NAME = "hush";
const DB_VERSION = 2;
let opening = null;

function open() {
  opening ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, DB_VERSION);
    request.onupgradeneeded = (event) => {
      const db = request.result;
      if (event.oldVersion < 1) db.createObjectStore("kv");
      if (event.oldVersion < 2) {
        const outbox = db.createObjectStore("outbox", { keyPath: "key", autoIncrement: true });
        outbox.createIndex("device", ["user", "device"]);
        outbox.createIndex("clientId", ["user", "room", "clientId"], { unique: true });
      }
    };
    // Another tab upgrading the schema: step aside so it can.
    request.onsuccess = () => {
      request.result.onversionchange = () => request.result.close();
      resolve(request.result);
    };
    request.onerror = () => reject(request.error);
    // A tab still running an older page holds the old schema open.
    request.onblocked = () => reject(new Error("hush was updated: close its other tabs, then reload this one"));
  });
  return opening;
}

/** Runs `op(store)` in one transaction; resolves with what `op` returned (a request's result, or a value). */
async function run(storeName, mode, op) {
  const db = await open();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(storeName, mode);
    let out;
    Promise.resolve(op(tx.objectStore(storeName))).then((value) => (out = value), reject);
    tx.oncomplete = () => resolve(out instanceof IDBRequest ? out.result : out);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

const result = (request) => new Promise((resolve, reject) => {
  request.onsuccess = () => resolve(request.result);
  request.onerror = () => reject(request.error);
});

export const get = (key) => run("kv", "readonly", (s) => s.get(key));
export const put = (key, value) => run("kv", "readwrite", (s) => s.put(value, key));
export const del = (key) => run("kv", "readwrite", (s) => s.delete(key));

/** Read-modify-write of one kv entry in a single transaction, so tabs cannot interleave. */
export const update = (key, change) => run("kv", "readwrite", async (s) => {
  const value = change(await result(s.get(key)));
  s.put(value, key);
  return value;
});

// ------------------------------------------------------------ outbox

/** Adds a record; resolves with its key (its place in typing order). */
export const outboxAdd = (record) => run("outbox", "readwrite", (s) => s.add(record));

export const outboxDelete = (key) => run("outbox", "readwrite", (s) => s.delete(key));

/** `user`'s records owned by `device` (hex), oldest first. */
export const outboxOf = (user, device) =>
  run("outbox", "readonly", (s) => s.index("device").getAll(IDBKeyRange.only([user, device])));

/** The device ids (hex) owning records of `user`, read from the index alone. */
export const outboxDevices = (user) => run("outbox", "readonly", (s) => new Promise((resolve, reject) => {
  const devices = new Set();
  const request = s.index("device").openKeyCursor(IDBKeyRange.bound([user, ""], [user, "\uffff"]), "nextunique");
  request.onsuccess = () => {
    const cursor = request.result;
    if (!cursor) return resolve(devices);
    devices.add(cursor.key[1]);
    cursor.continue();
  };
  request.onerror = () => reject(request.error);
}));

/** Moves every record of `user` owned by `from` to `to`, in one transaction. */
export const outboxReassign = (user, from, to) => run("outbox", "readwrite", async (s) => {
  const records = await result(s.index("device").getAll(IDBKeyRange.only([user, from])));
  for (const record of records) s.put({ ...record, device: to });
  return records.length;
});

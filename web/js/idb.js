// A tiny key-value store on IndexedDB. Holds CryptoKeys (non-extractable
// private keys survive structured cloning as such), the passphrase-sealed
// export bundle, the trust pins and the session token.

const DB_NAME = "hush";
let opening = null;

function open() {
  opening ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore("kv");
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return opening;
}

async function run(mode, op) {
  const db = await open();
  return new Promise((resolve, reject) => {
    const tx = db.transaction("kv", mode);
    const request = op(tx.objectStore("kv"));
    tx.oncomplete = () => resolve(request.result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

export const get = (key) => run("readonly", (s) => s.get(key));
export const put = (key, value) => run("readwrite", (s) => s.put(value, key));
export const del = (key) => run("readwrite", (s) => s.delete(key));

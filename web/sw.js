// The page's service worker: keeps a copy of the page's own files (this
// folder, nothing else) so a reload works while the server is down, and
// the conversation shows from the local store. Network first: whenever
// the server answers, its files are used (and the copy refreshed), so an
// updated server is never hidden behind an old copy. The API and the
// WebSocket are never touched.

const CACHE = "hush-shell-v1";
const SHELL = [
  "/", "/app.css", "/icon.svg",
  "/js/api.js", "/js/app.js", "/js/bytes.js", "/js/client.js", "/js/conversation.js", "/js/crypto.js", "/js/devices.js",
  "/js/directory.js", "/js/idb.js", "/js/link.js", "/js/notify.js", "/js/outbox.js", "/js/store.js", "/js/timeline.js",
  "/vendor/hash-wasm/argon2.umd.min.js",
];

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    // One missing file must not leave the rest uncached.
    await Promise.all(SHELL.map((path) => cache.add(path).catch(() => {})));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name !== CACHE) await caches.delete(name);
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  if (url.pathname.startsWith("/api/") || url.pathname === "/ws" || url.pathname === "/healthz") return;
  const key = request.mode === "navigate" ? "/" : url.pathname;
  if (!SHELL.includes(key)) return;
  event.respondWith((async () => {
    try {
      const response = await fetch(request);
      if (response.ok) {
        const copy = response.clone();
        caches.open(CACHE).then((cache) => cache.put(key, copy)).catch(() => {});
      }
      return response;
    } catch (e) {
      const cached = await caches.match(key);
      if (cached) return cached;
      throw e;
    }
  })());
});

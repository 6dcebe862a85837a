// Browser glue for the data panel: IndexedDB (one object store, one string per key),
// downloads and reading a picked file. Nothing here interprets the data: the Rust side
// parses, checks and decides; this file only moves strings in and out of the browser.

const DB_NAME = 'alignlab';
const STORE = 'data';
let opening = null;

function describe(err) {
  return err ? `${err.name || 'Error'}: ${err.message || err}` : 'unknown storage error';
}

function openDb() {
  if (!opening) {
    opening = new Promise((resolve, reject) => {
      const request = indexedDB.open(DB_NAME, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => { opening = null; reject(describe(request.error)); };
      request.onblocked = () => { opening = null; reject('storage is blocked by another tab of alignlab; close it and reload'); };
    });
  }
  return opening;
}

/** The string stored under `key`, or null. Rejects with a readable message. */
export async function storeGet(key) {
  const db = await openDb();
  return new Promise((resolve, reject) => {
    try {
      const request = db.transaction(STORE, 'readonly').objectStore(STORE).get(key);
      request.onsuccess = () => resolve(request.result === undefined ? null : request.result);
      request.onerror = () => reject(describe(request.error));
    } catch (err) { reject(describe(err)); }
  });
}

/** Store `value` under `key`; resolves once the write is committed, rejects (e.g.
 *  "QuotaExceededError: ...") when it is not. */
export async function storePut(key, value) {
  const db = await openDb();
  return new Promise((resolve, reject) => {
    try {
      const tx = db.transaction(STORE, 'readwrite');
      tx.oncomplete = () => resolve();
      tx.onabort = () => reject(describe(tx.error));
      tx.onerror = () => reject(describe(tx.error));
      tx.objectStore(STORE).put(value, key);
    } catch (err) { reject(describe(err)); }
  });
}

/** Offer `text` as a download named `name`. */
export function downloadText(name, text, mime) {
  const url = URL.createObjectURL(new Blob([text], { type: mime || 'text/plain' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** The file picked in `input` as JSON {name, size, text}; `text` is null when the file is
 *  over `limit` bytes (it is not read at all). Resolves to null when nothing is picked. */
export async function readPickedFile(input, limit) {
  const file = input && input.files && input.files[0];
  if (!file) return null;
  const text = file.size > limit ? null : await file.text();
  return JSON.stringify({ name: file.name, size: file.size, text });
}

/** Expose the data panel's state to tests (window.__alabData). */
export function exposeData(json) {
  window.__alabData = JSON.parse(json);
}

// Browser glue for the data panel: IndexedDB (one object store, one string per key),
// a BroadcastChannel that tells the other tabs which keys a commit changed, downloads and
// reading a picked file. Nothing here interprets the data: the Rust side parses, checks,
// merges and decides; this file only moves strings in and out of the browser.

const DB_NAME = 'alignlab';
const STORE = 'data';
const CHANNEL = 'alignlab-data';
let opening = null;
let channel = null;

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

// One channel object for sending and receiving: a channel does not hear its own messages,
// so a tab is not told of its own commits.
function tabs() {
  if (!channel && typeof BroadcastChannel !== 'undefined') channel = new BroadcastChannel(CHANNEL);
  return channel;
}

/** Every entry whose key starts with one of `prefixesJson` (a JSON array of strings), read
 *  in one transaction, as a JSON array of [key, value]. Rejects with a readable message. */
export async function storeRead(prefixesJson) {
  const prefixes = JSON.parse(prefixesJson);
  const db = await openDb();
  return new Promise((resolve, reject) => {
    try {
      const tx = db.transaction(STORE, 'readonly');
      const store = tx.objectStore(STORE);
      const out = [];
      for (const prefix of prefixes) {
        const range = IDBKeyRange.bound(prefix, `${prefix}\uffff`);
        const keys = store.getAllKeys(range);
        const values = store.getAll(range);
        // requests of a transaction complete in order: the keys are in by now
        values.onsuccess = () => keys.result.forEach((key, i) => {
          const value = values.result[i];
          out.push([String(key), typeof value === 'string' ? value : JSON.stringify(value)]);
        });
      }
      tx.oncomplete = () => resolve(JSON.stringify(out));
      tx.onabort = () => reject(describe(tx.error));
    } catch (err) { reject(describe(err)); }
  });
}

/** Commit `batchJson` (a JSON array of [key, value or null]: put, or delete) in one
 *  transaction, durably; resolves once it is committed and the other tabs are told its
 *  keys. Rejects (e.g. "QuotaExceededError: ...") with nothing written. */
export async function storeWrite(batchJson) {
  const batch = JSON.parse(batchJson);
  const db = await openDb();
  await new Promise((resolve, reject) => {
    let tx = null;
    try {
      tx = db.transaction(STORE, 'readwrite', { durability: 'strict' });
      tx.oncomplete = () => resolve();
      tx.onabort = () => reject(describe(tx.error));
      const store = tx.objectStore(STORE);
      for (const [key, value] of batch) {
        if (value === null) store.delete(key); else store.put(value, key);
      }
    } catch (err) {
      // a put that throws (a full quota) must not leave the earlier ones to commit
      try { if (tx) tx.abort(); } catch (_) { /* already finished */ }
      reject(describe(err));
    }
  });
  const ch = tabs();
  if (ch) ch.postMessage({ keys: batch.map(([key]) => key) });
}

/** Call `onKeys` with the keys (a JSON array) of every commit another tab makes. */
export function storeListen(onKeys) {
  const ch = tabs();
  if (ch) ch.onmessage = (event) => onKeys(JSON.stringify((event.data && event.data.keys) || []));
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

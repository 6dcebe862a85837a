// What both browser suites share: where dist/ and Chromium are, a static server for dist/
// on 127.0.0.1 (a secure context, so navigator.gpu exists), and ok/FAIL bookkeeping.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, '..', '..');
export const dist = path.join(root, 'dist');
export const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
// Chromium flags for a headless run on a machine that reaches nothing outside.
export const quietArgs = ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'];

const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json', '.md': 'text/markdown', '.jsonl': 'text/plain', '.safetensors': 'application/octet-stream' };

/// Serve dist/ on a free port of 127.0.0.1; resolves to the http.Server.
export function serve() {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    let file = path.join(dist, decodeURIComponent(url.pathname));
    if (!file.startsWith(dist)) { res.writeHead(403).end(); return; }
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
    if (!fs.existsSync(file)) { res.writeHead(404).end('not found'); return; }
    res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/// `check(ok, what, detail)` prints ok/FAIL and counts; `finish(suite)` prints the tally
/// and exits with 1 if anything failed.
export function checks() {
  let failures = 0;
  let passes = 0;
  const check = (ok, what, detail = '') => {
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${detail ? ` (${detail})` : ''}`);
    if (ok) passes++; else failures++;
  };
  const finish = (suite) => {
    console.log(`browser: ${passes} passed, ${failures} failed${suite ? ` (${suite})` : ''}`);
    process.exit(failures ? 1 : 0);
  };
  return { check, finish };
}

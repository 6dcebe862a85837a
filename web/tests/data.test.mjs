// Browser tests of the data panel (dist/, Debian's Chromium via playwright-core):
//
//   node web/tests/data.test.mjs      (after scripts/build-web.sh)
//
// 1. Annotate 5 pairs with the keyboard; reload: all 5 are there; undo; restart the
//    browser (same profile): still there.
// 2. Export the annotations, import the file, export the dataset: byte-identical.
// 3. A malformed file names its line and field and imports nothing; a file over 20 MB is
//    refused with a message.
// 4. The on-policy loop: sample from the policy, annotate, train on the fresh annotations
//    (the pairs table holds exactly them, the loss falls), sample again from the trained
//    policy; the run history survives a reload and exports as CSV; "Export to TRL" gives
//    a script with the experiment's loss_type, β and learning rate, and the data.
// 5. Ranking 3–5 responses with the keyboard is stored best first.
// 6. A storage error (quota) is reported and the annotations stay on the page; the next
//    change (or "save again") stores everything that was unsaved, as a reload shows.
// 7. Two tabs on the same storage: judgements made in both, at once, are all kept; an undo
//    or a clear in one tab shows in the other and is not undone by it; imports in both kept.
// 8. 1,000 annotations survive a hard reload byte for byte.
// 9. What an earlier version stored (one entry per part) is read, and split into one entry
//    per item.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { chromiumPath, quietArgs, serve, checks } from './harness.mjs';

const args = ['--enable-unsafe-webgpu', ...quietArgs];

const { check, finish } = checks();

const server = await serve();
const base = `http://127.0.0.1:${server.address().port}`;
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'alignlab-data-test-'));
const errors = [];
let acceptDialogs = true;

async function launch(profile, initScript) {
  const context = await chromium.launchPersistentContext(profile, { executablePath: chromiumPath, headless: true, args, acceptDownloads: true, viewport: { width: 1440, height: 1000 } });
  if (initScript) await context.addInitScript(initScript);
  return context;
}

async function open(context, expectErrors = false) {
  const page = context.pages()[0] || await context.newPage();
  if (!page.__watched) {
    page.__watched = true;
    page.on('console', (msg) => { if (msg.type() === 'error' && !expectErrors) errors.push(msg.text()); });
    page.on('pageerror', (err) => errors.push(`page error: ${err.message}`));
    page.on('dialog', (dialog) => (acceptDialogs ? dialog.accept() : dialog.dismiss()));
  }
  await page.goto(`${base}/`);
  await ready(page);
  return page;
}

async function ready(page) {
  await page.waitForFunction(() => window.__alab && window.__alab.ready && window.__alabData && window.__alabData.loaded, null, { timeout: 90000 });
}

const data = (page) => page.evaluate(() => window.__alabData);

/** Press keys with the focus on the page body (not in a text field). */
async function keys(page, ...names) {
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  for (const name of names) await page.keyboard.press(name);
}

/** Wait until every write started so far is committed to IndexedDB. */
async function settled(page) {
  await page.waitForFunction(() => window.__alabData.pendingWrites === 0, null, { timeout: 30000 });
}

async function download(page, selector) {
  const [file] = await Promise.all([page.waitForEvent('download'), page.click(selector)]);
  return { name: file.suggestedFilename(), text: fs.readFileSync(await file.path(), 'utf8') };
}

const annotationLines = (text) => text.split('\n').filter((l) => l).map((l) => JSON.parse(l));

// 1. Annotate 5 pairs with the keyboard, reload, restart.
const profile = path.join(scratch, 'profile');
let context = await launch(profile);
let page = await open(context);
await page.click('button[name=queue-pairs]');
await page.waitForFunction(() => window.__alabData.queue === 12, null, { timeout: 10000 });
const shown = [];
const presses = [['1'], ['2'], ['0'], ['ArrowLeft'], ['ArrowRight']];
for (const [i, press] of presses.entries()) {
  const prompt = await page.textContent('[data-testid=annotate-prompt]');
  const a = await page.textContent('[data-testid=response-a] pre');
  const b = await page.textContent('[data-testid=response-b] pre');
  shown.push({ prompt, a, b, press: press[0] });
  // The second one is surer: the strength slider at 0.9.
  if (i === 1) await page.fill('input[name=strength]', '0.9');
  await keys(page, ...press, 'Enter');
  await page.waitForFunction((n) => window.__alabData.annotations === n, i + 1, { timeout: 10000 });
}
let state = await data(page);
check(state.annotations === 5 && state.queue === 7, 'five pairs annotated with the keyboard (1, 2, 0, ←, →, Enter)', `${state.annotations} annotations, ${state.queue} waiting`);
await settled(page);
await page.reload();
await ready(page);
state = await data(page);
check(state.annotations === 5 && state.queue === 7, 'after a reload all 5 annotations are there', `${state.annotations} annotations, ${state.queue} waiting`);
const exported = await download(page, 'button[name=export-annotations]');
const records = annotationLines(exported.text);
const expectChosen = shown.map((s) => (['2', 'ArrowRight'].includes(s.press) ? s.b : s.a));
const expectAlpha = shown.map((s, i) => (s.press === '0' ? 0.5 : i === 1 ? 0.9 : 0.75));
check(records.length === 5 && records.every((r, i) => r.prompt === shown[i].prompt && r.chosen === expectChosen[i] && r.alpha === expectAlpha[i]),
  'each stored pair has the chosen response and α the keys gave (tie: α 0.5)', records.map((r) => `${JSON.stringify(r.chosen)} α ${r.alpha}`).join(', '));

// Undo takes back the last one and shows it again; a restart keeps the rest.
await page.click('button[name=undo]');
await page.waitForFunction(() => window.__alabData.annotations === 4 && window.__alabData.queue === 8, null, { timeout: 10000 });
const undonePrompt = await page.textContent('[data-testid=annotate-prompt]');
check(undonePrompt === shown[4].prompt, 'undo shows the last annotated pair again', undonePrompt);
await keys(page, '2', 'Enter');
await page.waitForFunction(() => window.__alabData.annotations === 5, null, { timeout: 10000 });
await settled(page);
await context.close();
context = await launch(profile);
page = await open(context);
state = await data(page);
check(state.annotations === 5, 'after a browser restart all 5 annotations are there', `${state.annotations}`);

// 2. Export → import → export: byte-identical.
const first = await download(page, 'button[name=export-annotations]');
const exportPath = path.join(scratch, first.name);
fs.writeFileSync(exportPath, first.text);
await page.setInputFiles('input[name=import]', exportPath);
await page.waitForFunction(() => window.__alabData.datasets.length === 1, null, { timeout: 10000 });
state = await data(page);
check(state.datasets[0].name === 'alignlab-annotations.jsonl' && state.datasets[0].records === 5, 'the exported file imports as a dataset of 5 records', JSON.stringify(state.datasets));
const again = await download(page, 'button[name=export-dataset]');
check(again.text === first.text && again.text.length > 0, 'export → import → export is byte-identical', `${first.text.length} bytes`);

// 3. Bad input: the line and field named, nothing imported, nothing lost.
const good = '{"prompt": "User: Hi Assistant:", "chosen": " Hello.", "rejected": " Go away."}\n';
await page.setInputFiles('input[name=import]', { name: 'bad.jsonl', mimeType: 'application/json', buffer: Buffer.from(`${good}\n${good}{"prompt": "User: Hi Assistant:", "chosen": " Hello."}\n`) });
await page.waitForSelector('[data-testid=data-error]', { timeout: 10000 });
let message = await page.textContent('[data-testid=data-error]');
state = await data(page);
check(/bad\.jsonl/.test(message) && /line 4/.test(message) && /"rejected"/.test(message), 'a malformed file names its file, line and field', message);
check(state.datasets.length === 1 && state.annotations === 5, 'a malformed file imports nothing and keeps the existing data', `${state.datasets.length} dataset(s), ${state.annotations} annotations`);
await page.setInputFiles('input[name=import]', { name: 'huge.jsonl', mimeType: 'application/json', buffer: Buffer.alloc(20_000_001, 0x20) });
await page.waitForFunction(() => /huge/.test(window.__alabData.error || ''), null, { timeout: 20000 });
message = (await data(page)).error;
check(/huge\.jsonl/.test(message) && /import limit of 20 MB/.test(message), 'a file over 20 MB is refused with a message', message);
check((await data(page)).datasets.length === 1, 'the refused file imports nothing');
await context.close();

// 4. The on-policy loop, in a fresh profile.
context = await launch(path.join(scratch, 'loop'));
page = await open(context);
await page.fill('input[name=sample-temperature]', '1.5');
await page.dispatchEvent('input[name=sample-temperature]', 'change');
await page.click('button[name=sample]');
await page.waitForFunction(() => window.__alabData.queue > 0 && window.__alabData.lastSampleSteps !== null, null, { timeout: 60000 });
state = await data(page);
check(state.lastSampleSteps === 0 && state.queue >= 3, 'sampling from the starting policy queues prompts with two different responses', `${state.queue} queued`);
const sampled = [];
while ((await data(page)).queue > 0 && sampled.length < 6) {
  const a = await page.textContent('[data-testid=response-a] pre');
  const b = await page.textContent('[data-testid=response-b] pre');
  // A rule a class might use: the shorter response is better.
  const pickA = a.length <= b.length;
  sampled.push(pickA ? a : b);
  await keys(page, pickA ? '1' : '2', 'Enter');
  await page.waitForFunction((n) => window.__alabData.annotations === n, sampled.length, { timeout: 10000 });
}
await page.click('button[name=train-annotations]');
await page.waitForFunction((n) => window.__alab.ready && window.__alabData.training === `my annotations (${n})`, sampled.length, { timeout: 60000 });
const rows = await page.locator('[data-testid=pairs] tbody tr').count();
const tableText = await page.textContent('[data-testid=pairs] tbody');
check(rows === sampled.length && sampled.every((c) => tableText.includes(c.trim())), 'training data is exactly the fresh annotations', `${rows} rows for ${sampled.length} annotations`);
await page.fill('input[name=lr]', '0.003');
await page.dispatchEvent('input[name=lr]', 'change');
await page.waitForFunction(() => window.__alab.ready && window.__alab.query.includes('lr=0.003'), null, { timeout: 60000 });
check((await data(page)).training === `my annotations (${sampled.length})`, 'changing a setting keeps training on the annotations');
await page.click('button[name=play]');
await page.waitForFunction(() => window.__alab.steps[0] >= 15, null, { timeout: 120000 });
await page.click('button[name=play]');
await page.waitForFunction(() => !window.__alab.playing, null, { timeout: 10000 });
const curves = await page.evaluate(() => ({ loss: window.__alabCharts['chart-loss'].data[1], rewardAcc: window.__alabCharts['chart-accuracy'].data[4] }));
const loss = curves.loss.filter((v) => v !== null);
const mean = (xs) => xs.reduce((x, y) => x + y, 0) / xs.length;
check(mean(loss.slice(-3)) < mean(loss.slice(0, 3)), 'training on the annotated pairs lowers the loss', `${mean(loss.slice(0, 3)).toFixed(4)} -> ${mean(loss.slice(-3)).toFixed(4)}`);
const acc = curves.rewardAcc.filter((v) => v !== null);
check(acc[acc.length - 1] > acc[0], 'reward accuracy on the annotated pairs rises', `${acc[0]} -> ${acc[acc.length - 1]}`);
await page.click('button[name=sample]');
await page.waitForFunction(() => window.__alabData.lastSampleSteps >= 15, null, { timeout: 60000 });
check((await data(page)).lastSampleSteps >= 15, 'sampling again uses the trained policy', `policy at step ${(await data(page)).lastSampleSteps}`);

// The run's history survives a reload and exports as CSV and JSON.
await page.waitForFunction(() => window.__alabData.runs >= 1, null, { timeout: 10000 });
await settled(page);
await page.reload();
await ready(page);
state = await data(page);
check(state.runs >= 1, 'the run history survives a reload', `${state.runs} saved run(s)`);
const csv = await download(page, 'button[name=run-csv]');
const header = csv.text.split('\n')[0].split(',');
check(header[0] === 'step' && header.includes('loss') && header.includes('rewards/margins') && csv.text.trim().split('\n').length >= 17, 'a run exports as CSV (step, TRL metric names, one line per step)', `${csv.text.trim().split('\n').length - 1} rows`);
const json = JSON.parse((await download(page, 'button[name=run-json]')).text);
check(json.metrics.length >= 16 && /lr=0.003/.test(json.experiment), 'and as JSON with the experiment', json.experiment);

// Export to TRL: the script and the data.
const trlFiles = new Promise((resolve) => {
  const got = [];
  page.on('download', async (d) => {
    got.push({ name: d.suggestedFilename(), text: fs.readFileSync(await d.path(), 'utf8') });
    if (got.length === 2) resolve(got);
  });
});
await page.click('button[name=export-trl]');
const trl = await trlFiles;
const script = trl.find((f) => f.name === 'train_dpo.py');
const trlData = trl.find((f) => f.name === 'alignlab-data.jsonl');
check(script && /loss_type=\["sigmoid"\]/.test(script.text) && /beta=0\.1,/.test(script.text) && /learning_rate=0\.003,/.test(script.text) && /DPOTrainer\(/.test(script.text), 'Export to TRL writes a DPOTrainer script with the loss_type, β and learning rate');
check(trlData && annotationLines(trlData.text).length === sampled.length, 'and the annotations it trains on', trlData ? `${annotationLines(trlData.text).length} records` : 'missing');
if (script) {
  const scriptPath = path.join(scratch, 'train_dpo.py');
  fs.writeFileSync(scriptPath, script.text);
  try {
    execFileSync('python3', ['-c', 'import ast,sys; ast.parse(open(sys.argv[1]).read())', scriptPath]);
    check(true, 'the script parses as Python');
  } catch (err) {
    if (err.code === 'ENOENT') console.log('skip the script parses as Python (no python3)');
    else check(false, 'the script parses as Python', String(err.stderr || err));
  }
}
await context.close();

// 5. Ranking 3–5 responses with the keyboard.
context = await launch(path.join(scratch, 'rank'));
page = await open(context);
await page.fill('input[name=sample-prompt]', 'How do you feel about rain?');
await page.dispatchEvent('input[name=sample-prompt]', 'change');
await page.fill('input[name=sample-n]', '5');
await page.dispatchEvent('input[name=sample-n]', 'change');
await page.fill('input[name=sample-temperature]', '1.5');
await page.dispatchEvent('input[name=sample-temperature]', 'change');
await page.click('button[name=sample]');
await page.waitForFunction(() => window.__alabData.queue === 1, null, { timeout: 60000 });
check((await data(page)).rankMode, 'three or more responses are shown as a ranking');
const before = await page.locator('[data-testid=ranking] li .text').allTextContents();
await keys(page, '3', 'ArrowUp', 'ArrowUp', 'Enter');
await page.waitForFunction(() => window.__alabData.annotations === 1, null, { timeout: 10000 });
const ranked = annotationLines((await download(page, 'button[name=export-annotations]')).text)[0];
const expectOrder = [before[2], before[0], before[1], ...before.slice(3)];
check(JSON.stringify(ranked.responses) === JSON.stringify(expectOrder), 'a keyboard ranking (3, ↑, ↑, Enter) is stored best first', JSON.stringify(ranked.responses));

// The synthetic annotator labels the 12 queued training pairs; with ε = 0.5 some flip.
await page.click('button[name=queue-pairs]');
await page.waitForFunction(() => window.__alabData.queue === 12, null, { timeout: 10000 });
await page.fill('input[name=rules]', 'length=-1');
await page.dispatchEvent('input[name=rules]', 'change');
await page.fill('input[name=flip-rate]', '0.5');
await page.dispatchEvent('input[name=flip-rate]', 'change');
await page.click('button[name=label-queue]');
await page.waitForFunction(() => window.__alabData.annotations === 13 && window.__alabData.queue === 0, null, { timeout: 10000 });
const labelled = annotationLines((await download(page, 'button[name=export-annotations]')).text).slice(1);
const words = (s) => s.trim().split(/\s+/).length;
const agree = labelled.filter((r) => !r.flipped && words(r.chosen) <= words(r.rejected)).length;
const flipped = labelled.filter((r) => r.flipped).length;
const report = (await data(page)).message;
check(labelled.length === 12 && agree + flipped === 12 && labelled.every((r) => r.alpha >= 0.5 && r.alpha <= 1), 'the synthetic annotator labels every queued pair by its rule; flipped ones are marked', `${flipped} flipped: ${report}`);
await page.fill('input[name=rules]', 'lenght');
await page.dispatchEvent('input[name=rules]', 'change');
await page.click('button[name=queue-pairs]');
await page.click('button[name=label-queue]');
await page.waitForFunction(() => /lenght/.test(window.__alabData.error || ''), null, { timeout: 10000 });
check((await data(page)).queue === 12, 'a mistyped rule is named and labels nothing', (await data(page)).error);

// "clear…" asks first: answered no, nothing goes; answered yes, everything does, for good.
acceptDialogs = false;
await page.click('button[name=clear]');
check((await data(page)).annotations === 13, '"clear" asks first and a "no" keeps every annotation');
acceptDialogs = true;
await page.click('button[name=clear]');
await page.waitForFunction(() => window.__alabData.annotations === 0, null, { timeout: 10000 });
await settled(page);
await page.reload();
await ready(page);
check((await data(page)).annotations === 0, 'a confirmed "clear" empties the annotations, also after a reload');
await context.close();

// 6. A full quota: reported, kept on the page, stored by the next change or "save again".
// The failure is injected: while window.__failWrites is set, putting an annotation throws
// as a full quota does.
context = await launch(path.join(scratch, 'quota'), () => {
  const put = IDBObjectStore.prototype.put;
  IDBObjectStore.prototype.put = function (value, key) {
    if (window.__failWrites && String(key).startsWith('annotation/')) throw new DOMException('The quota has been exceeded.', 'QuotaExceededError');
    return put.call(this, value, key);
  };
});
page = await open(context);
await page.click('button[name=queue-pairs]');
await page.waitForFunction(() => window.__alabData.queue === 12, null, { timeout: 10000 });
await settled(page);
const quotaPrompts = [];
const judge = async (p, key) => {
  const n = (await data(p)).annotations;
  quotaPrompts.push(await p.textContent('[data-testid=annotate-prompt]'));
  await keys(p, key, 'Enter');
  await p.waitForFunction((k) => window.__alabData.annotations === k, n + 1, { timeout: 10000 });
};
await page.evaluate(() => { window.__failWrites = true; });
await judge(page, '1');
await judge(page, '2');
await page.waitForSelector('[data-testid=storage-error]', { timeout: 10000 });
await settled(page);
message = await page.textContent('[data-testid=storage-error]');
state = await data(page);
// two annotations put, two queued sets deleted: four writes unsaved
check(/QuotaExceededError/.test(message) && /export/.test(message) && state.annotations === 2 && state.unsaved === 4, 'a storage quota error is reported and the annotations are kept on the page', `${state.unsaved} unsaved: ${message}`);
await page.evaluate(() => { window.__failWrites = false; });
await judge(page, '0');
await page.waitForFunction(() => window.__alabData.unsaved === 0 && window.__alabData.pendingWrites === 0, null, { timeout: 10000 });
check(await page.locator('[data-testid=storage-error]').count() === 0, 'the next successful commit clears the error');
await page.reload();
await ready(page);
let stored = annotationLines((await download(page, 'button[name=export-annotations]')).text);
state = await data(page);
check(state.annotations === 3 && state.queue === 9 && stored.map((r) => r.prompt).join('|') === quotaPrompts.join('|'), 'after a reload the two unsaved annotations and the next one are all stored, in order', `${state.annotations} annotations, ${state.queue} waiting`);
await page.evaluate(() => { window.__failWrites = true; });
await judge(page, '1');
await page.waitForSelector('[data-testid=storage-error]', { timeout: 10000 });
await settled(page);
await page.evaluate(() => { window.__failWrites = false; });
await page.click('button[name=save-again]');
await page.waitForFunction(() => window.__alabData.unsaved === 0 && window.__alabData.pendingWrites === 0, null, { timeout: 10000 });
await page.reload();
await ready(page);
check((await data(page)).annotations === 4, '"save again" stores an annotation a full quota left unsaved', `${(await data(page)).annotations}`);
await context.close();

// 7. Two tabs of the lab on the same storage.
context = await launch(path.join(scratch, 'tabs'));
const tabA = await open(context);
const tabB = await context.newPage();
tabB.on('console', (msg) => { if (msg.type() === 'error') errors.push(msg.text()); });
tabB.on('pageerror', (err) => errors.push(`page error: ${err.message}`));
tabB.on('dialog', (dialog) => dialog.accept());
await tabB.goto(`${base}/`);
await ready(tabB);
const both = (fn, arg) => Promise.all([tabA, tabB].map((t) => t.waitForFunction(fn, arg, { timeout: 20000 })));
await tabA.click('button[name=queue-pairs]');
await both(() => window.__alabData.queue === 12);
check(true, 'a queue made in one tab shows in the other');
/** Judge the shown pair as A with a rationale naming it (the rationale field's Enter saves). */
const annotate = async (tab, tag) => {
  await tab.click('button[name=choose-a]');
  await tab.fill('input[name=rationale]', tag);
  await tab.press('input[name=rationale]', 'Enter');
};
const tags = async (tab) => annotationLines((await download(tab, 'button[name=export-annotations]')).text).map((r) => r.rationale).sort();
// Five rounds of a judgement in each tab at the same moment.
const made = [];
for (let i = 0; i < 5; i++) {
  await Promise.all([annotate(tabA, `a${i}`), annotate(tabB, `b${i}`)]);
  made.push(`a${i}`, `b${i}`);
}
await both(() => window.__alabData.annotations === 10 && window.__alabData.pendingWrites === 0 && window.__alabData.unsaved === 0);
let tagsA = await tags(tabA);
let tagsB = await tags(tabB);
check(JSON.stringify(tagsA) === JSON.stringify(made.sort()) && JSON.stringify(tagsB) === JSON.stringify(tagsA), 'judgements made in two tabs at once are all kept, and both tabs show all ten', tagsA.join(' '));
// An undo in B takes back the newest; A shows it gone, and A's next judgement does not bring it back.
const newest = annotationLines((await download(tabB, 'button[name=export-annotations]')).text).pop().rationale;
await tabB.click('button[name=undo]');
await both(() => window.__alabData.annotations === 9);
await annotate(tabA, 'after-undo');
await both(() => window.__alabData.annotations === 10 && window.__alabData.pendingWrites === 0);
await tabB.reload();
await ready(tabB);
tagsB = await tags(tabB);
tagsA = await tags(tabA);
check(!tagsB.includes(newest) && tagsB.includes('after-undo') && tagsB.length === 10 && JSON.stringify(tagsA) === JSON.stringify(tagsB), 'an undo in one tab stays undone after a judgement in the other (and a reload)', `undid ${newest}; ${tagsB.join(' ')}`);
// Imports in both tabs at once: both kept.
const pair = (i) => `{"prompt": "User: Q${i}? Assistant:", "chosen": " Yes.", "rejected": " No."}\n`;
await Promise.all([
  tabA.setInputFiles('input[name=import]', { name: 'from-a.jsonl', mimeType: 'application/json', buffer: Buffer.from(pair(1)) }),
  tabB.setInputFiles('input[name=import]', { name: 'from-b.jsonl', mimeType: 'application/json', buffer: Buffer.from(pair(2) + pair(3)) }),
]);
await both(() => window.__alabData.datasets.length === 2);
const names = (await data(tabB)).datasets.map((d) => `${d.name}:${d.records}`).sort().join(' ');
check(names === 'from-a.jsonl:1 from-b.jsonl:2', 'files imported in two tabs at once are both kept', names);
// A clear in A empties B too, for good.
await tabA.click('button[name=clear]');
await both(() => window.__alabData.annotations === 0 && window.__alabData.pendingWrites === 0);
await tabB.reload();
await ready(tabB);
check((await data(tabB)).annotations === 0 && (await data(tabB)).datasets.length === 2, 'a clear in one tab shows in the other and survives its reload');
await context.close();

// 8. 1,000 annotations (a dataset queued and labelled by the synthetic annotator) survive
// a hard reload.
context = await launch(path.join(scratch, 'thousand'));
page = await open(context);
const thousand = Array.from({ length: 1000 }, (_, i) => `{"prompt": "User: Is ${i} even? Assistant:", "chosen": " I love it.", "rejected": " I hate it, no. ${i}"}`).join('\n');
await page.setInputFiles('input[name=import]', { name: 'thousand.jsonl', mimeType: 'application/json', buffer: Buffer.from(`${thousand}\n`) });
await page.waitForFunction(() => window.__alabData.datasets.length === 1, null, { timeout: 20000 });
await page.click('button[name=annotate-dataset]');
await page.waitForFunction(() => window.__alabData.queue === 1000, null, { timeout: 20000 });
await page.click('button[name=label-queue]');
await page.waitForFunction(() => window.__alabData.annotations === 1000 && window.__alabData.queue === 0, null, { timeout: 20000 });
await page.waitForFunction(() => window.__alabData.unsaved === 0 && window.__alabData.pendingWrites === 0, null, { timeout: 60000 });
const before1000 = (await download(page, 'button[name=export-annotations]')).text;
const cdp = await context.newCDPSession(page);
await Promise.all([page.waitForEvent('load'), cdp.send('Page.reload', { ignoreCache: true })]);
await ready(page);
state = await data(page);
const after1000 = (await download(page, 'button[name=export-annotations]')).text;
check(state.annotations === 1000 && state.queue === 0 && after1000 === before1000 && annotationLines(after1000).length === 1000, '1,000 annotations survive a hard reload, byte for byte and in order', `${state.annotations} annotations, ${after1000.length} bytes`);
await context.close();

// 9. An earlier version's storage: one entry per part.
context = await launch(path.join(scratch, 'legacy'));
page = await open(context);
const legacyLines = [0, 1, 2].map((i) => `{"prompt":"User: Old ${i}? Assistant:","chosen":" Yes.","rejected":" No.","rationale":"old ${i}"}`);
await page.evaluate((lines) => new Promise((resolve, reject) => {
  const request = indexedDB.open('alignlab', 1);
  request.onsuccess = () => {
    const tx = request.result.transaction('data', 'readwrite');
    tx.objectStore('data').put(`${lines.join('\n')}\n`, 'annotations.jsonl');
    tx.objectStore('data').put('[{"prompt":"User: Queued? Assistant:","responses":[" A."," B."],"origins":["policy","policy"]}]', 'queue.json');
    tx.oncomplete = () => { request.result.close(); resolve(); };
    tx.onabort = () => reject(tx.error);
  };
  request.onerror = () => reject(request.error);
}), legacyLines);
await page.reload();
await ready(page);
await settled(page);
const legacyKeys = await page.evaluate(() => new Promise((resolve) => {
  const request = indexedDB.open('alignlab', 1);
  request.onsuccess = () => {
    const keys = request.result.transaction('data').objectStore('data').getAllKeys();
    keys.onsuccess = () => resolve(keys.result.map(String));
  };
}));
const legacyOut = annotationLines((await download(page, 'button[name=export-annotations]')).text).map((r) => r.rationale).join();
state = await data(page);
check(state.annotations === 3 && state.queue === 1 && legacyOut === 'old 0,old 1,old 2', "an earlier version's annotations and queue are read, in order", legacyOut);
check(legacyKeys.filter((k) => k.startsWith('annotation/')).length === 3 && legacyKeys.filter((k) => k.startsWith('queue/')).length === 1 && !legacyKeys.includes('annotations.jsonl') && !legacyKeys.includes('queue.json'), 'and stored again one entry per item, the old entries gone', legacyKeys.join(' '));
await context.close();

check(errors.length === 0, 'no console errors', errors.join(' | '));
server.close();
fs.rmSync(scratch, { recursive: true, force: true });
finish('data panel');

// Browser test of a diverging run (dist/, Debian's Chromium via playwright-core):
//
//   node web/tests/divergence.test.mjs      (after scripts/build-web.sh)
//
// A link with an absurd learning rate (2e8, on the CPU engine: the weights grow by about
// the learning rate a step until the model's numbers overflow a few steps in): training
// pauses by itself, a message names the step and the learning rate, the points before it
// stay (finite) on the charts and in the saved run, and play is refused. Lowering the
// learning rate and pressing "continue" trains on from the last good step with the earlier
// points unchanged; "reset" after a divergence starts over.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import { chromiumPath, quietArgs, serve, checks } from './harness.mjs';

const { check, finish } = checks();
const server = await serve();
const base = `http://127.0.0.1:${server.address().port}`;
const errors = [];

const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: quietArgs });
const context = await browser.newContext({ viewport: { width: 1440, height: 1000 }, acceptDownloads: true });
const page = await context.newPage();
page.on('console', (msg) => { if (msg.type() === 'error') errors.push(msg.text()); });
page.on('pageerror', (err) => errors.push(`page error: ${err.message}`));

const lab = () => page.evaluate(() => window.__alab);
const lossCurve = () => page.evaluate(() => window.__alabCharts['chart-loss'].data[1]);
async function openLink(query) {
  await page.goto(`${base}/?${query}`);
  await page.waitForFunction(() => window.__alab && window.__alab.ready && window.__alabData && window.__alabData.loaded, null, { timeout: 90000 });
}

await openLink('lr=200000000&engine=cpu');
await page.click('button[name=play]');
await page.waitForFunction(() => window.__alab.diverged !== null, null, { timeout: 120000 });
await page.waitForFunction(() => !window.__alab.playing, null, { timeout: 10000 });
let state = await lab();
const { step, kept, message } = state.diverged;
check(step >= 2 && kept === step - 1, 'an lr of 2e8 diverges a few steps in; the run goes back to the step before', `diverged at ${step}, kept ${kept}`);
check(message.includes(`step ${step}`) && /learning rate 2e8 is high/.test(message) && message.includes(`paused at step ${kept}`), 'the message names the step and the learning rate as the likely cause', message);
check(await page.isVisible('[data-testid=divergence]') && (await page.textContent('[data-testid=divergence]')).includes(`step ${step}`), 'the message is on the page');
const kept_loss = await lossCurve();
check(state.steps[0] === kept && kept_loss.length === kept + 1 && kept_loss.slice(1).every((v) => Number.isFinite(v)), 'the points up to the last good step are kept, every loss finite', JSON.stringify(kept_loss));
check(await page.isDisabled('button[name=play]') && await page.isDisabled('button[name=step]'), 'play and single step are off until continue or reset');

// The saved run holds the same points: step 0 to the last good one.
await page.waitForFunction(() => window.__alabData.runs === 1 && window.__alabData.pendingWrites === 0, null, { timeout: 10000 });
const [csvFile] = await Promise.all([page.waitForEvent('download'), page.click('button[name=run-csv]')]);
const csvRows = fs.readFileSync(await csvFile.path(), 'utf8').trim().split('\n').slice(1);
check(csvRows.length === kept + 1 && csvRows.map((r) => Number(r.split(',')[0])).join() === [...Array(kept + 1).keys()].join(), 'the saved run record holds steps 0 to the last good one', `${csvRows.length} rows`);

// Lower the learning rate: nothing restarts until "continue".
const generation = state.generation;
await page.fill('input[name=lr]', '0.001');
await page.dispatchEvent('input[name=lr]', 'change');
await page.waitForFunction(() => window.__alab.query.includes('lr=0.001'), null, { timeout: 10000 });
state = await lab();
check(state.generation === generation && state.steps[0] === kept && state.diverged !== null, 'changing a setting after a divergence keeps the run where it is', `steps ${state.steps[0]}`);
await page.click('button[name=continue]');
await page.waitForFunction((n) => window.__alab.steps[0] >= n, kept + 5, { timeout: 120000 });
await page.click('button[name=play]');
await page.waitForFunction(() => !window.__alab.playing, null, { timeout: 10000 });
state = await lab();
const continued = await lossCurve();
check(state.diverged === null && state.error === null && state.generation === generation, 'continue goes on without a reset', `steps ${state.steps[0]}`);
check(JSON.stringify(continued.slice(0, kept + 1)) === JSON.stringify(kept_loss) && continued.length >= kept + 6 && continued.slice(1).every((v) => Number.isFinite(v)), 'the earlier points are unchanged and the continued steps are finite', `${continued.length - 1} steps`);
const steps = await page.evaluate(() => window.__alabCharts['chart-loss'].data[0]);
check(steps.every((x, i) => x === i), 'the continued steps are numbered on from the last good one', JSON.stringify(steps));

// After another divergence, reset starts over.
await openLink('lr=200000000&engine=cpu');
await page.click('button[name=play]');
await page.waitForFunction(() => window.__alab.diverged !== null, null, { timeout: 120000 });
await page.click('button[name=reset-diverged]');
await page.waitForFunction(() => window.__alab.ready && window.__alab.diverged === null, null, { timeout: 60000 });
state = await lab();
check(state.steps[0] === 0 && !state.playing && !(await page.isDisabled('button[name=play]')), 'reset after a divergence starts over at step 0', `steps ${state.steps[0]}`);

check(errors.length === 0, 'no console errors', errors.join(' | '));
await browser.close();
server.close();
finish('divergence');

// The page against the real collector fed by real agents in the namespace lab (lab/demo with
// the shortened scenario): cell statuses and counts, the drill-down, a policy flip in the lab
// appearing on the open page without reload, a port dropped over IPv4 only shown as partial
// with IPv4 named (and its event naming IPv4), and a hostile label (set on one agent) rendered
// as text. Needs root and the built binaries (`cargo build --workspace --bins`); skipped otherwise.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { LAUNCH } from './chromium.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '../..');
const BIN_DIR = process.env.EGRESSWATCH_BIN_DIR || path.join(process.env.CARGO_TARGET_DIR || path.join(REPO, 'target'), 'debug');
const HOSTILE = '<img src=x onerror=alert(1)>';

function skipReason() {
  if (process.getuid && process.getuid() !== 0) return 'needs root for the namespace lab';
  if (!existsSync(LAUNCH.executablePath)) return `no chromium at ${LAUNCH.executablePath}`;
  if (!existsSync(path.join(BIN_DIR, 'egresswatch-agent'))) return `no agent binary in ${BIN_DIR} (cargo build --workspace --bins)`;
  return false;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, limitMs, check) {
  const started = Date.now();
  for (;;) {
    const v = await check();
    if (v) return Date.now() - started;
    if (Date.now() - started > limitMs) throw new Error(`timed out after ${limitMs} ms waiting for ${what}`);
    await sleep(500);
  }
}

test('the page on the real collector: counts, drill-down, a lab policy flip live, an IPv4-only drop as partial, a hostile label as text', { skip: skipReason(), timeout: 240_000 }, async () => {
  const port = 21000 + (process.pid % 20000);
  const name = `db${process.pid % 100000}`;
  const demo = spawn(path.join(REPO, 'lab/demo'), [
    '--scenario', 'lab/scenarios/demo-short.toml', '--exit-after-timeline', '--name', name,
    '--bin-dir', BIN_DIR, '--http', `127.0.0.1:${port}`,
  ], {
    cwd: REPO,
    env: { ...process.env, EGRESSWATCH_DEMO_TAIL: '5', EGRESSWATCH_DEMO_LABELS: JSON.stringify({ 'aws-acct-b-1': { region: HOSTILE } }) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  demo.stdout.on('data', (d) => { output += d; });
  demo.stderr.on('data', (d) => { output += d; });
  const exited = new Promise((resolve) => demo.on('exit', (code) => resolve(code)));
  const base = `http://127.0.0.1:${port}`;
  const browser = await chromium.launch(LAUNCH);
  try {
    await until('the collector', 120_000, async () => {
      try { return (await fetch(`${base}/healthz`)).ok; } catch { return false; }
    });
    const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const page = await context.newPage();
    const dialogs = [];
    const problems = [];
    page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });
    page.on('pageerror', (e) => problems.push(e.message));
    await page.goto(base + '/');
    const providerRow = (p) => page.locator('#matrix-body tr.lvl-0').filter({ has: page.locator('th .label', { hasText: new RegExp(`^${p}$`) }) });
    const accountRow = (a) => page.locator('#matrix-body tr.lvl-1').filter({ has: page.locator('th .label', { hasText: new RegExp(`^${a}$`) }) });

    // Every agent reporting: AWS (4 agents) open on 587, 25 blocked by its edge; GCP blocked on 25.
    await until('aws 587 open with 4 agents', 90_000, async () =>
      (await providerRow('aws').locator('td[data-port="587"]').getAttribute('data-status').catch(() => null)) === 'open'
      && (await providerRow('aws').locator('td[data-port="587"] .count').textContent().catch(() => '')) === '4/4');
    assert.equal(await providerRow('aws').locator('td[data-port="25"]').getAttribute('data-status'), 'blocked');
    assert.equal(await providerRow('gcp').locator('td[data-port="25"]').getAttribute('data-status'), 'blocked');
    assert.equal(await providerRow('gcp').locator('td[data-port="465"]').getAttribute('data-status'), 'open');

    // Drill down into AWS: both accounts; the hostile region label is text, nothing fires.
    await providerRow('aws').locator('button.expander').click();
    await accountRow('acct-b').waitFor();
    await accountRow('acct-b').locator('button.expander').click();
    await until('the hostile region row', 10_000, async () =>
      (await page.locator('#matrix-body tr.lvl-2 th .label').allTextContents()).includes(HOSTILE));
    assert.equal(await page.locator('img').count(), 0, 'no <img> element was created from a label');

    // The timeline closes acct-a's 587 at 25 s: the open page shows it without a reload.
    await page.evaluate(() => { window.__sameDocument = true; });
    const waited = await until('acct-a 587 blocked on the open page', 120_000, async () =>
      (await accountRow('acct-a').locator('td[data-port="587"]').getAttribute('data-status').catch(() => null)) === 'blocked');
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload happened');
    assert.equal(await accountRow('acct-b').locator('td[data-port="587"]').getAttribute('data-status'), 'open');
    assert.equal(await providerRow('aws').locator('td[data-port="587"]').getAttribute('data-status'), 'partial');
    await until('the event in the timeline', 30_000, async () => (await page.locator('#events').textContent()).includes('acct-a'));

    // GCP's edge starts dropping 2525 over IPv4 only: the both-families cell is partial and
    // names IPv4 (it never stays open because IPv6 still connects), and the event names IPv4.
    // Set after the timeline's first step: `egresslab play` rewrites the rules from the state it
    // read at its start, so a rule set live before a step would be undone by it.
    const gcp2525 = providerRow('gcp').locator('td[data-port="2525"]');
    assert.equal(await gcp2525.getAttribute('data-status'), 'open');
    execFileSync(path.join(REPO, 'lab/egresslab'), ['rule', '--name', name, '--provider', 'gcp', '--port', '2525', '--family', 'ipv4', '--action', 'drop'], { stdio: 'pipe' });
    await until('gcp 2525 partial with IPv4 named', 60_000, async () =>
      (await gcp2525.getAttribute('data-status').catch(() => null)) === 'partial'
      && /partial — IPv4 blocked/.test(await gcp2525.locator('.cell-main').textContent().catch(() => '')));
    await until('the IPv4-only event in the timeline', 60_000, async () =>
      /shop-prod mx\.lab\.test :2525 open → blocked over IPv4 only/.test(await page.locator('#events').textContent()));
    mkdirSync(path.join(HERE, 'screenshots'), { recursive: true });
    await page.screenshot({ path: path.join(HERE, 'screenshots', 'lab.png'), fullPage: true });
    console.log(`# acct-a 587 shown blocked ${(waited / 1000).toFixed(1)} s after the page started waiting`);
    assert.deepEqual(dialogs, [], 'no dialog fired');
    assert.deepEqual(problems, [], 'no page errors');
    await context.close();
  } finally {
    await browser.close();
    const code = await Promise.race([exited, sleep(150_000).then(() => 'timeout')]);
    if (code === 'timeout') demo.kill('SIGTERM');
    assert.equal(code, 0, `lab/demo failed:\n${output}`);
  }
});

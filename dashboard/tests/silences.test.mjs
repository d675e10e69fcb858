// The page's silences panel in Debian's chromium: a silence made from a matrix cell (its
// button, the keyboard only), listed, then ended. The matrix comes from the fixture server; the
// silences are the real collector's (the fixture forwards /api/silences to it), so what the
// page sends is validated and stored as in production. A silenced event is marked in the list.
// Needs the built collector (`cargo build --workspace --bins`); skipped otherwise.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { LAUNCH } from './chromium.mjs';
import { startFixtureServer, smallEvents } from './fixture_server.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '../..');
const BIN_DIR = process.env.EGRESSWATCH_BIN_DIR || path.join(process.env.CARGO_TARGET_DIR || path.join(REPO, 'target'), 'debug');
const COLLECTOR = path.join(BIN_DIR, 'egresswatch-collector');

function skipReason() {
  if (!existsSync(LAUNCH.executablePath)) return `no chromium at ${LAUNCH.executablePath}`;
  if (!existsSync(COLLECTOR)) return `no collector binary in ${BIN_DIR} (cargo build --workspace --bins)`;
  return false;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function healthy(base, limitMs) {
  const started = Date.now();
  while (Date.now() - started < limitMs) {
    try {
      if ((await fetch(`${base}/healthz`)).ok) return;
    } catch { /* not up yet */ }
    await sleep(200);
  }
  throw new Error(`collector not healthy at ${base} within ${limitMs} ms`);
}

test('silences panel: create from a cell with the keyboard, see it listed, end it', { skip: skipReason(), timeout: 60_000 }, async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ew-silences-'));
  // Below the kernel's ephemeral range (32768–60999 by default), where a port some connection
  // happens to hold would make the collector's bind fail.
  const httpPort = 29000 + (process.pid % 1500);
  const quicPort = 30500 + (process.pid % 1500);
  const config = path.join(dir, 'collector.toml');
  writeFileSync(config, [
    `data_dir = "${dir}/data"`,
    '[quic]', `listen = "127.0.0.1:${quicPort}"`,
    '[http]', `listen = "127.0.0.1:${httpPort}"`, '',
  ].join('\n'));
  let log = '';
  const collector = spawn(COLLECTOR, ['run', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  collector.stdout.on('data', (d) => { log += d; });
  collector.stderr.on('data', (d) => { log += d; });
  const upstream = `http://127.0.0.1:${httpPort}`;
  let browser;
  let server;
  try {
    await healthy(upstream, 20_000);
    const events = () => [{ ...smallEvents()[0], id: 9, silenced_by: 's-planned' }, ...smallEvents().slice(1)];
    server = await startFixtureServer({ silencesUpstream: upstream, events });
    browser = await chromium.launch(LAUNCH);
    const page = await browser.newPage();
    const problems = [];
    page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
    page.on('pageerror', (e) => problems.push(e.message));
    await page.addInitScript(() => {
      window.__csp = [];
      document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(e.violatedDirective));
    });
    await page.goto(server.url + '/');
    await page.locator('#silences-empty').waitFor({ state: 'visible', timeout: 10_000 });
    assert.match(await page.locator('#events li').first().textContent(), /silenced \(s-planned\): no alert sent/);

    // The gcp row's 587 cell: its button, reached and pressed from the keyboard.
    const gcp = page.locator('#matrix-body tr.lvl-0').filter({ has: page.locator('th .label', { hasText: /^gcp$/ }) });
    const button = gcp.locator('td[data-port="587"] button.silence-cell');
    await button.waitFor({ timeout: 10_000 });
    assert.equal(await button.getAttribute('aria-label'), 'Silence provider gcp, port 587');
    await button.focus();
    await page.keyboard.press('Enter');
    const form = page.locator('#silence-form');
    await form.waitFor({ state: 'visible' });
    assert.equal(await form.locator('input[name=provider]').inputValue(), 'gcp');
    assert.equal(await form.locator('input[name=port]').inputValue(), '587');
    assert.equal(await form.locator('input[name=account]').inputValue(), '');
    assert.equal(await page.evaluate(() => document.activeElement.name), 'reason', 'the reason has focus');
    await page.keyboard.type('relay migration');
    await page.keyboard.press('Tab');
    await page.keyboard.type('ops on call');
    await page.keyboard.press('Enter');

    const item = page.locator('#silences li.silence');
    await item.waitFor({ timeout: 10_000 });
    assert.match(await item.textContent(), /provider gcp, port 587/);
    assert.match(await item.textContent(), /relay migration — ops on call/);
    assert.match(await page.locator('#silence-status').textContent(), /silenced provider gcp, port 587 \(0 current cells\)/);
    const stored = await (await fetch(`${upstream}/api/silences`)).json();
    assert.equal(stored.length, 1);
    assert.deepEqual(stored[0].matcher, { provider: 'gcp', port: 587 });
    assert.equal(stored[0].created_by, 'ops on call');

    // End it from the keyboard: gone from the list, kept by the collector as expired.
    await item.locator('button.silence-end').focus();
    await page.keyboard.press('Enter');
    await page.locator('#silences-empty').waitFor({ state: 'visible', timeout: 10_000 });
    assert.equal(await page.locator('#silences li').count(), 0);
    const all = await (await fetch(`${upstream}/api/silences?all=1`)).json();
    assert.equal(all.length, 1);
    assert.equal(all[0].state, 'expired');

    // A refusal is shown, not swallowed: an empty matcher.
    await page.locator('#silence-new').focus();
    await page.keyboard.press('Enter');
    await page.fill('#silence-form input[name=reason]', 'everything');
    await page.fill('#silence-form input[name=created_by]', 'ops');
    await page.locator('#silence-form button[type=submit]').click();
    await page.waitForFunction(() => /not silenced: .*silence every alert/.test(document.getElementById('silence-status').textContent));
    assert.deepEqual(await page.evaluate(() => window.__csp), [], 'no CSP violations');
    assert.deepEqual(problems.filter((p) => !/400 \(Bad Request\)/.test(p)), [], 'no console errors but the refused POST');
  } finally {
    if (browser) await browser.close();
    if (server) await server.close();
    collector.kill('SIGTERM');
    await new Promise((r) => { if (collector.exitCode !== null) r(); else collector.on('exit', r); });
    if (collector.exitCode !== 0 && collector.signalCode === null) console.error(log);
    rmSync(dir, { recursive: true, force: true });
  }
});

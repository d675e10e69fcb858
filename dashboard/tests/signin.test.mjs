// The page against the real collector whose API is guarded by a token: it asks for the token,
// says so when it is wrong, trades the right one for an HttpOnly session cookie, then shows the
// matrix live (the EventSource stream rides on the cookie) and stays signed in across a reload.
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

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '../..');
const BIN_DIR = process.env.EGRESSWATCH_BIN_DIR || path.join(process.env.CARGO_TARGET_DIR || path.join(REPO, 'target'), 'debug');
const COLLECTOR = path.join(BIN_DIR, 'egresswatch-collector');
const TOKEN = 'dashboard-test-token-0123456789';

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

test('a token-guarded collector: the page asks, refuses a wrong token, signs in with a cookie', { skip: skipReason(), timeout: 60_000 }, async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ew-signin-'));
  // Below the kernel's ephemeral range (32768–60999 by default), where a port some connection
  // happens to hold would make the collector's bind fail.
  const httpPort = 26000 + (process.pid % 1500);
  const quicPort = 27500 + (process.pid % 1500);
  const config = path.join(dir, 'collector.toml');
  writeFileSync(config, [
    `data_dir = "${dir}/data"`,
    '[quic]', `listen = "127.0.0.1:${quicPort}"`,
    '[http]', `listen = "127.0.0.1:${httpPort}"`, `token = "${TOKEN}"`, '',
  ].join('\n'));
  let log = '';
  const collector = spawn(COLLECTOR, ['run', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  collector.stdout.on('data', (d) => { log += d; });
  collector.stderr.on('data', (d) => { log += d; });
  const base = `http://127.0.0.1:${httpPort}`;
  let browser;
  try {
    await healthy(base, 20_000);
    assert.equal((await fetch(`${base}/api/matrix`)).status, 401, 'the API is guarded');
    browser = await chromium.launch(LAUNCH);
    const page = await browser.newPage();
    await page.goto(base);
    await page.locator('#signin').waitFor({ state: 'visible', timeout: 10_000 });
    assert.equal(await page.locator('#matrix').isVisible(), false, 'no matrix before signing in');
    assert.equal(await page.locator('#live').getAttribute('data-state'), 'signin');

    await page.fill('#signin-token', 'not-the-right-token-at-all');
    await page.click('#signin button[type=submit]');
    await page.locator('#signin-error').waitFor({ state: 'visible', timeout: 10_000 });
    assert.match(await page.locator('#signin-error').textContent(), /wrong token/);

    await page.fill('#signin-token', TOKEN);
    await page.click('#signin button[type=submit]');
    await page.locator('#signin').waitFor({ state: 'hidden', timeout: 10_000 });
    await page.locator('#matrix-empty').waitFor({ state: 'visible', timeout: 10_000 });
    await page.waitForFunction(() => document.getElementById('live').dataset.state === 'live', null, { timeout: 10_000 });
    assert.equal(await page.evaluate(() => document.cookie), '', 'the session cookie is HttpOnly');
    const cookies = await page.context().cookies();
    const session = cookies.find((c) => c.name === 'egresswatch_session');
    assert.ok(session, 'the session cookie is set');
    assert.ok(session.httpOnly && session.sameSite === 'Strict');
    assert.notEqual(session.value, TOKEN, 'the cookie is not the token');

    await page.reload();
    await page.waitForFunction(() => document.getElementById('live').dataset.state === 'live', null, { timeout: 10_000 });
    assert.equal(await page.locator('#signin').isVisible(), false, 'still signed in after a reload');
    assert.ok(!log.includes(TOKEN), 'the token never appears in the collector log');
  } finally {
    if (browser) await browser.close();
    collector.kill('SIGTERM');
    await new Promise((r) => { if (collector.exitCode !== null) r(); else collector.on('exit', r); });
    rmSync(dir, { recursive: true, force: true });
  }
});

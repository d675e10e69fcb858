// Browser test of the page's mail-provider section (Debian's chromium via playwright-core, never
// downloaded), against tests/fixture_server.mjs with the collector's CSP: hidden while no agent
// probes a mail provider's preset, then one row per mail provider × account with its SMTP ports
// and its HTTPS API, everything from the API shown as text.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { LAUNCH } from './chromium.mjs';
import { startFixtureServer, HOSTILE } from './fixture_server.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const skip = () => (!existsSync(CHROMIUM) ? `no chromium at ${CHROMIUM} (apt-get install -y chromium)` : false);

let browser;
let server;

const cell = (status, ok, failed) => ({ status, ok, failed });
const ROWS = [
  {
    mail_provider: 'zeptomail', title: 'ZeptoMail (Zoho)', provider: 'digitalocean', account: 'team', agents: 2,
    smtp: { 465: cell('blocked', 0, 4), 587: cell('blocked', 0, 4) }, smtp_open_ports: [],
    api: cell('open', 4, 0), api_reachable: true,
  },
  {
    mail_provider: 'zeptomail', title: HOSTILE, provider: 'hetzner', account: HOSTILE, agents: 1,
    smtp: { 465: cell('open', 2, 0), 587: cell('open', 2, 0) }, smtp_open_ports: [465, 587],
    api: cell('blocked', 0, 2), api_reachable: false,
  },
];

before(async () => {
  if (skip()) return;
  browser = await chromium.launch(LAUNCH);
  server = await startFixtureServer();
});

after(async () => {
  await browser?.close();
  await server?.close();
});

test('mail providers: hidden without rows, then per account SMTP ports and the API as the way out', { skip: skip() }, async () => {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('dialog', async (d) => {
    problems.push(`dialog: ${d.message()}`);
    await d.dismiss();
  });
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  await page.goto(server.url + '/');
  await page.waitForSelector('#matrix-body tr.lvl-0');
  // No agent probes a mail provider: the section stays hidden.
  await page.waitForFunction(() => performance.now() > 500);
  assert.equal(await page.locator('#mail-section').isHidden(), true);

  // Rows appear with the next matrix update (fetched at most every 5 s).
  server.data.mailProviders = () => ({ generated_at: '2026-11-22T12:00:00Z', rows: ROWS });
  await page.waitForTimeout(5100);
  server.push('matrix', server.data.matrix('all'));
  await page.waitForSelector('#mail-section:not([hidden]) #mail-body tr', { timeout: 10_000 });
  const rows = await page.locator('#mail-body tr').evaluateAll((trs) => trs.map((tr) => [...tr.children].map((c) => c.textContent.trim())));
  assert.deepEqual(rows, [
    ['ZeptoMail (Zoho)', 'digitalocean / team (2 agents)', 'blocked', '465 ✕ blocked 587 ✕ blocked', '✓ answers: the way out'],
    [HOSTILE, `hetzner / ${HOSTILE} (1 agent)`, 'works over 465 and 587', '465 ✓ open 587 ✓ open', '✕ unreachable'],
  ]);
  assert.equal(await page.locator('#mail-body img').count(), 0, 'a hostile label is text, not markup');
  assert.deepEqual(await page.evaluate(() => window.__csp), []);
  assert.deepEqual(problems, []);
  await context.close();
});

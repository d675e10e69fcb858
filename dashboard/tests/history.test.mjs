// Browser tests of the history view (history.js) in Debian's chromium, driven by playwright-core,
// against tests/fixture_server.mjs serving /api/history and /api/intervals in the agreed shapes:
// a cell opens its history, the strip shows the fixture's closed span where it happened and the
// table lists it, the latency chart renders, the keyboard opens and closes it, a narrow window
// does not overflow, an API error shows its message, and no request leaves the fixture server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { LAUNCH } from './chromium.mjs';
import { startFixtureServer, historyEvents, closedSpan } from './fixture_server.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SHOTS = path.join(HERE, 'screenshots');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const skip = !existsSync(CHROMIUM)
  ? `no chromium at ${CHROMIUM} (apt-get install -y chromium)`
  : process.env.EGRESSWATCH_URL ? 'needs fixture control (EGRESSWATCH_URL is set)' : false;
const iso = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

let browser;
let server;

before(async () => {
  if (skip) return;
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch(LAUNCH);
  server = await startFixtureServer({ events: () => historyEvents() });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

/** Opens the page; records console errors, CSP violations and every request's host. */
async function open(viewport = { width: 1400, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  const hosts = new Set();
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('request', (r) => hosts.add(new URL(r.url()).host));
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  await page.goto(server.url + '/');
  await page.waitForSelector('#matrix-body tr.lvl-0');
  return { page, context, problems, hosts };
}

async function assertClean(page, problems, hosts) {
  assert.deepEqual(await page.evaluate(() => window.__csp), [], 'no CSP violations');
  assert.deepEqual(problems, [], 'no console errors');
  assert.deepEqual([...hosts], [new URL(server.url).host], 'no request leaves the fixture server');
}

const providerRow = (page, name) => page.locator('#matrix-body tr.lvl-0').filter({ has: page.locator('th .label', { hasText: new RegExp(`^${name}$`) }) });
const dialog = (page) => page.locator('dialog#history');

async function waitReady(page) {
  await page.waitForFunction(() => ['ready', 'error'].includes(document.getElementById('history').dataset.state));
}

test('a cell opens its history: the closed span in the strip, the table, the chart, the policy', { skip }, async () => {
  const { page, context, problems, hosts } = await open();
  const span = closedSpan();
  // A click on the cell itself (not only its button) opens the view.
  await providerRow(page, 'gcp').locator('td[data-port="587"] .cell-main').click();
  const d = dialog(page);
  await d.waitFor({ state: 'visible' });
  await waitReady(page);
  assert.equal(await d.getAttribute('data-state'), 'ready');
  assert.match(await d.locator('#history-title').textContent(), /gcp, port 587/);
  const asked = server.requests.filter((r) => r.startsWith('/api/history?'));
  const q = new URLSearchParams(asked.at(-1).split('?')[1]);
  assert.equal(q.get('provider'), 'gcp');
  assert.equal(q.get('port'), '587');
  assert.equal(q.get('step'), '1h');

  // The strip: one bucket an hour, the six blocked ones exactly where the span is.
  const buckets = d.locator('.hist-strip .hist-bucket');
  const statuses = await buckets.evaluateAll((bs) => bs.map((b) => [b.dataset.status, b.dataset.start]));
  assert.ok(statuses.length >= 24 && statuses.length <= 25, `${statuses.length} buckets`);
  const blocked = statuses.filter(([s]) => s === 'blocked');
  assert.equal(blocked.length, 6);
  assert.equal(blocked[0][1], new Date(span.start).toISOString());
  assert.equal(blocked[5][1], new Date(span.end - 3600_000).toISOString());
  // ... and drawn there: the first blocked bucket's left edge sits at its share of the strip.
  const geo = await d.locator('.hist-strip').evaluate((strip) => {
    const r = strip.getBoundingClientRect();
    const first = strip.querySelector('[data-status="blocked"]').getBoundingClientRect();
    const all = strip.querySelectorAll('.hist-bucket');
    const index = [...all].findIndex((b) => b.dataset.status === 'blocked');
    return { left: first.left - r.left, expected: (index / all.length) * r.width, width: first.width };
  });
  assert.ok(Math.abs(geo.left - geo.expected) <= 2, `blocked run at ${geo.left}px, expected ${geo.expected}px`);
  assert.ok(geo.width > 3, 'buckets have width');
  assert.match(await d.locator('.hist-summary').textContent(), new RegExp(`Last closed \\(blocked\\) ${iso(span.start).slice(0, 10)} ${iso(span.start).slice(11, 16)}Z .* for 6 h`));

  // The text alternative: the strip is an image described by its runs, and the runs are listed.
  assert.equal(await d.locator('.hist-strip').getAttribute('role'), 'img');
  assert.match(await d.locator('.hist-strip').getAttribute('aria-label'), /blocked/);
  const runs = await d.locator('.hist-runs li').allTextContents();
  assert.ok(runs.some((r) => /✕ blocked/.test(r) && r.includes(`${iso(span.start).slice(11, 16)}Z`) && /\(6 h\)/.test(r)), runs.join(' | '));

  // The intervals table lists the closed interval.
  const row = d.locator('table.hist-intervals tbody tr[data-status="blocked"]');
  assert.equal(await row.count(), 1);
  const cells = await row.locator('td').allTextContents();
  assert.equal(cells[0], `${iso(span.start).slice(0, 10)} ${iso(span.start).slice(11, 16)}Z`);
  assert.match(cells[3], /✕ blocked/);
  assert.equal(cells[4], 'timeout');
  assert.equal(cells[5], 'gcp-a-1');

  // The latency chart: uPlot drew a canvas with both series in its legend.
  assert.equal(await d.locator('.hist-plot canvas').count(), 1);
  const legend = await d.locator('.hist-plot .u-legend').textContent();
  assert.match(legend, /p50 connect/);
  assert.match(legend, /p95 connect/);
  // The events of this cell on the same time axis: the two changes, marked and listed.
  assert.equal(await d.locator('.hist-lane .hist-mark').count(), 2);
  const evs = await d.locator('.hist-events li').allTextContents();
  assert.equal(evs.length, 2);
  assert.match(evs[0], /blocked\s*→\s*open/);
  // The strip lines up with the chart's plot area.
  const align = await page.evaluate(() => {
    const strip = document.querySelector('.hist-strip').getBoundingClientRect();
    const over = document.querySelector('.hist-plot .u-over').getBoundingClientRect();
    return { strip: [strip.left, strip.right], plot: [over.left, over.right] };
  });
  assert.ok(Math.abs(align.strip[0] - align.plot[0]) <= 2 && Math.abs(align.strip[1] - align.plot[1]) <= 2, JSON.stringify(align));

  // gcp documents 587 open: observation disagreed during the span, agrees now.
  assert.match(await d.locator('.hist-policy').textContent(), /Documented: open/);
  assert.match(await d.locator('.hist-verdict').textContent(), /agrees with it now; it last disagreed until/);
  await page.screenshot({ path: path.join(SHOTS, 'history.png'), fullPage: false });

  // 90 days: one bucket a day.
  await d.locator('button.hist-range[data-range="90d"]').click();
  await page.waitForFunction(() => document.querySelectorAll('.hist-strip .hist-bucket').length >= 90);
  await waitReady(page);
  assert.equal(await d.locator('button.hist-range[data-range="90d"]').getAttribute('aria-pressed'), 'true');
  assert.equal(new URLSearchParams(server.requests.filter((r) => r.startsWith('/api/history?')).at(-1).split('?')[1]).get('step'), '1d');
  assert.ok(await d.locator('.hist-strip .hist-bucket[data-status="partial"], .hist-strip .hist-bucket[data-status="blocked"]').count() >= 1);
  await assertClean(page, problems, hosts);
  await context.close();
});

test('documented blocked but observed open: since when observation disagrees', { skip }, async () => {
  const { page, context, problems, hosts } = await open();
  await providerRow(page, 'hetzner').locator('td[data-port="25"] button.hist-open').click();
  await waitReady(page);
  const d = dialog(page);
  assert.match(await d.locator('.hist-policy').textContent(), /Documented: blocked — Blocked on new cloud servers\./);
  const verdict = await d.locator('.hist-verdict').textContent();
  assert.match(verdict, /≠ docs/);
  const since = Date.now() - 3 * 24 * 3600_000;
  assert.match(verdict, new RegExp(`disagreed since ${iso(since).slice(0, 10)}`));
  assert.match(verdict, /1 of 1 series/);
  await assertClean(page, problems, hosts);
  await context.close();
});

test('keyboard: Enter on a cell\'s history button opens, focus moves in, Escape closes and returns focus', { skip }, async () => {
  const { page, context, problems, hosts } = await open();
  const button = providerRow(page, 'gcp').locator('td[data-port="587"] button.hist-open');
  assert.equal(await button.getAttribute('aria-label'), 'history of gcp, port 587');
  await button.focus();
  await page.keyboard.press('Enter');
  await dialog(page).waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'history-title');
  await waitReady(page);
  // Tab stays inside the modal view.
  for (let i = 0; i < 4; i++) {
    await page.keyboard.press('Tab');
    assert.ok(await page.evaluate(() => document.getElementById('history').contains(document.activeElement)), `tab ${i} stays in the view`);
  }
  await page.keyboard.press('Escape');
  await dialog(page).waitFor({ state: 'hidden' });
  assert.equal(await page.evaluate(() => document.activeElement?.classList.contains('hist-open') && document.activeElement.closest('td').dataset.port), '587');
  // The close button, from the keyboard, too; an agent's cell opens the agent's history.
  await page.keyboard.press('Enter');
  await dialog(page).waitFor({ state: 'visible' });
  await page.locator('.hist-close').focus();
  await page.keyboard.press('Enter');
  await dialog(page).waitFor({ state: 'hidden' });
  assert.ok(await page.evaluate(() => document.activeElement?.classList.contains('hist-open')));
  await assertClean(page, problems, hosts);
  await context.close();
});

test('an agent\'s cell opens the agent\'s history', { skip }, async () => {
  const { page, context, problems, hosts } = await open();
  await page.locator('#matrix-body tr.lvl-0 button.expander').first().click();
  await page.locator('#matrix-body tr.lvl-1 button.expander').first().click();
  await page.locator('#matrix-body tr.lvl-2 button.expander').first().click();
  const agentRow = page.locator('#matrix-body tr.lvl-3').first();
  await agentRow.locator('td[data-port="587"] button.hist-open').click();
  await waitReady(page);
  assert.match(await dialog(page).locator('#history-title').textContent(), /agent gcp-a-1, port 587/);
  const q = new URLSearchParams(server.requests.filter((r) => r.startsWith('/api/intervals?')).at(-1).split('?')[1]);
  assert.equal(q.get('agent'), 'gcp-a-1');
  assert.equal(await dialog(page).locator('.hist-strip .hist-bucket[data-status="blocked"]').count(), 6);
  await assertClean(page, problems, hosts);
  await context.close();
});

test('a narrow window (400 px): the view fits without horizontal overflow', { skip }, async () => {
  const { page, context, problems, hosts } = await open({ width: 400, height: 800 });
  await providerRow(page, 'gcp').locator('td[data-port="587"] button.hist-open').click();
  await waitReady(page);
  const m = await page.evaluate(() => {
    const d = document.getElementById('history');
    return {
      page: document.documentElement.scrollWidth, viewport: window.innerWidth,
      dialog: d.scrollWidth, dialogClient: d.clientWidth, right: d.getBoundingClientRect().right,
      canvas: document.querySelector('.hist-plot canvas').getBoundingClientRect().right,
    };
  });
  assert.ok(m.right <= m.viewport, `dialog ends at ${m.right}, viewport ${m.viewport}`);
  assert.ok(m.dialog <= m.dialogClient, `dialog content ${m.dialog} wider than ${m.dialogClient}`);
  assert.ok(m.canvas <= m.viewport, `chart ends at ${m.canvas}`);
  await page.screenshot({ path: path.join(SHOTS, 'history-narrow.png'), fullPage: false });
  await assertClean(page, problems, hosts);
  await context.close();
});

test('API errors: a 400 and a 500 show their message, never a blank view', { skip }, async () => {
  const { page, context, problems, hosts } = await open();
  const saved = { history: server.data.history, intervals: server.data.intervals };
  try {
    server.data.history = () => [400, { error: 'from: not RFC 3339 or Unix milliseconds: x' }];
    server.data.intervals = () => [500, { error: 'could not read intervals' }];
    await providerRow(page, 'gcp').locator('td[data-port="587"] button.hist-open').click();
    await waitReady(page);
    const d = dialog(page);
    assert.equal(await d.getAttribute('data-state'), 'error');
    assert.match(await d.locator('.hist-section.timeline [role="alert"]').textContent(), /HTTP 400: from: not RFC 3339/);
    assert.match(await d.locator('.hist-section.intervals [role="alert"]').textContent(), /HTTP 500: could not read intervals/);
    assert.match(await d.locator('.hist-verdict').textContent(), /did not load/);
    // Fixed on the server: another range loads.
    Object.assign(server.data, saved);
    await d.locator('button.hist-range[data-range="7d"]').click();
    await page.waitForFunction(() => document.getElementById('history').dataset.state === 'ready');
    assert.ok(await d.locator('.hist-strip .hist-bucket').count() >= 168);
  } finally {
    Object.assign(server.data, saved);
  }
  // The browser logs a failed fetch's status as a console error: those two are expected.
  const unexpected = problems.filter((p) => !/status of (400|500)/.test(p));
  assert.deepEqual(await page.evaluate(() => window.__csp), []);
  assert.deepEqual(unexpected, []);
  assert.deepEqual([...hosts], [new URL(server.url).host]);
  await context.close();
});

test('real collector: the assets are served with the CSP, and a cell\'s history shows data or the API\'s message', {
  skip: !existsSync(CHROMIUM) ? 'no chromium' : process.env.EGRESSWATCH_URL ? false : 'set EGRESSWATCH_URL to run against a collector',
}, async () => {
  const base = process.env.EGRESSWATCH_URL.replace(/\/$/, '');
  for (const [file, type] of [['/history.js', 'text/javascript'], ['/vendor/uPlot.iife.min.js', 'text/javascript'], ['/vendor/uPlot.min.css', 'text/css']]) {
    const r = await fetch(base + file);
    assert.equal(r.status, 200, file);
    assert.match(r.headers.get('content-type'), new RegExp(`^${type}`), file);
    assert.match(r.headers.get('content-security-policy'), /script-src 'self'; style-src 'self'/, file);
  }
  const own = await chromium.launch(LAUNCH);
  try {
    const page = await own.newPage();
    const hosts = new Set();
    page.on('request', (r) => hosts.add(new URL(r.url()).host));
    await page.goto(base + '/');
    await page.waitForFunction(() => document.querySelector('#matrix-body button.hist-open') || !document.getElementById('matrix-empty').hidden
      || document.getElementById('live').dataset.state === 'live', null, { timeout: 20_000 });
    await page.waitForTimeout(500);
    if (await page.locator('#matrix-body button.hist-open').count()) {
      await page.locator('#matrix-body button.hist-open').first().click();
      await waitReady(page);
      const timeline = page.locator('dialog#history .hist-section.timeline');
      assert.ok(await timeline.locator('.hist-strip, [role="alert"]').count() >= 1, 'a strip or the API\'s message');
    }
    assert.deepEqual(await page.evaluate(() => [...document.scripts].map((x) => x.src.replace(location.origin, ''))), ['/vendor/uPlot.iife.min.js', '/app.js']);
    assert.equal(await page.evaluate(() => typeof window.uPlot), 'function', 'the vendored uPlot loaded');
    assert.deepEqual([...hosts], [new URL(base).host]);
  } finally {
    await own.close();
  }
});

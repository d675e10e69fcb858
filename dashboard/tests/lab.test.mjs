// The page against the real collector fed by real agents in the namespace lab (lab/demo with
// the shortened scenario): cell statuses and counts, the drill-down, a policy flip in the lab
// appearing on the open page without reload, a port dropped over IPv4 only shown as partial
// with IPv4 named (and its event naming IPv4), a hostile label (set on one agent) rendered
// as text, and the history of the account whose 587 the timeline closed and reopened: its
// intervals table, its status strip and /api/intervals all hold the span the lab printed. Needs root and the built binaries (`cargo build --workspace --bins`); skipped otherwise.
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
// lab/demo_parts.py's agents probe every 3 s with a 3 s timeout: a probe begun just before a
// change may report just after it, so a stored time may sit a round or two past the change.
const PROBE_ROUND_MS = 3_000 + 3_000;
const SLACK_MS = 2 * PROBE_ROUND_MS;
const HOUR_MS = 3600_000;
const FAMILY_WORD = { ipv4: 'IPv4', ipv6: 'IPv6' };

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

test('the page on the real collector: counts, drill-down, a lab policy flip live, an IPv4-only drop as partial, a hostile label as text, the flip in the history view', { skip: skipReason(), timeout: 240_000 }, async () => {
  // Below the kernel's ephemeral range (32768–60999 by default), where a port some connection
  // happens to hold would make the collector's bind fail.
  const port = 20000 + (process.pid % 3000);
  const name = `db${process.pid % 100000}`;
  const demo = spawn(path.join(REPO, 'lab/demo'), [
    '--scenario', 'lab/scenarios/demo-short.toml', '--exit-after-timeline', '--name', name,
    '--bin-dir', BIN_DIR, '--http', `127.0.0.1:${port}`,
  ], {
    cwd: REPO,
    // The tail keeps the collector up after the reopening, while the history view is read.
    env: { ...process.env, EGRESSWATCH_DEMO_TAIL: '20', EGRESSWATCH_DEMO_LABELS: JSON.stringify({ 'aws-acct-b-1': { region: HOSTILE } }) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  // When the lab printed each timeline step (after applying it): the known span of the flip.
  const steps = {};
  let pending = '';
  demo.stdout.on('data', (d) => {
    output += d;
    pending += d;
    const lines = pending.split('\n');
    pending = lines.pop();
    for (const line of lines) {
      if (/^TIMELINE .*acct-a: 587 closes/.test(line)) steps.closed ??= Date.now();
      if (/^TIMELINE .*acct-a: 587 reopens/.test(line)) steps.reopened ??= Date.now();
    }
  });
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

    // The timeline reopens acct-a's 587 at 70 s. Once the page shows it open again and every
    // blocked series has an open interval after it, the closed span is over and stored.
    await until('the timeline reopening acct-a 587', 60_000, async () => steps.reopened !== undefined);
    assert.ok(steps.closed !== undefined && steps.closed < steps.reopened, `both steps printed:\n${output}`);
    await until('acct-a 587 open again on the open page', 25_000, async () =>
      (await accountRow('acct-a').locator('td[data-port="587"]').getAttribute('data-status').catch(() => null)) === 'open');
    const intervalsOverHttp = async () => {
      const to = Date.now();
      const q = new URLSearchParams({ provider: 'aws', account: 'acct-a', port: '587', from: new Date(to - 24 * HOUR_MS).toISOString(), to: new Date(to).toISOString() });
      const resp = await fetch(`${base}/api/intervals?${q}`);
      assert.equal(resp.status, 200, await resp.clone().text());
      return (await resp.json()).intervals;
    };
    const seriesOf = (iv) => `${iv.agent} ${iv.target} ${iv.family}`;
    const closedSpanOver = (ivs) => {
      const blocked = ivs.filter((iv) => iv.status === 'blocked');
      return blocked.length > 0 && blocked.every((b) => ivs.some((o) =>
        seriesOf(o) === seriesOf(b) && o.status === 'open' && Date.parse(o.first_seen) >= Date.parse(b.last_seen)));
    };
    let seen = [];
    await until('every blocked acct-a 587 series followed by an open interval', 15_000, async () => closedSpanOver(seen = await intervalsOverHttp()))
      .catch((e) => { throw new Error(`${e.message}: ${JSON.stringify(seen)}`); });

    // The cell's history, opened from the page at its default 24 h range.
    const hist = page.locator('dialog#history');
    await accountRow('acct-a').locator('td[data-port="587"] button.hist-open').click();
    await until('the history view loaded', 15_000, async () => ['ready', 'error'].includes(await hist.getAttribute('data-state').catch(() => null)));
    assert.equal(await hist.getAttribute('data-state'), 'ready', await hist.textContent());
    assert.equal(await page.locator('#history-title').textContent(), 'History: aws / acct-a, port 587');
    assert.equal(await hist.locator('button.hist-range[data-range="24h"]').getAttribute('aria-pressed'), 'true');

    // (a) The intervals table lists the closed span: blocked intervals of both acct-a agents,
    // each within the span the lab printed, and together running from its start to its end.
    const span = { from: steps.closed, to: steps.reopened };
    const spanText = `span ${new Date(span.from).toISOString()} – ${new Date(span.to).toISOString()}`;
    const shown = await hist.locator('table.hist-intervals tbody tr[data-status="blocked"]').evaluateAll((trs) => trs.map((tr) => {
      const td = tr.querySelectorAll('td');
      return { first: td[0].querySelector('time')?.dateTime, last: td[1].querySelector('time')?.dateTime, agent: td[5].textContent, target: td[6].textContent, family: td[7].textContent };
    }));
    const shownText = JSON.stringify(shown);
    assert.equal(new Set(shown.map((r) => r.agent)).size, 2, `blocked intervals of both acct-a agents: ${shownText}`);
    for (const r of shown) {
      assert.ok(Date.parse(r.first) >= span.from - SLACK_MS && Date.parse(r.last) <= span.to + SLACK_MS && Date.parse(r.first) <= Date.parse(r.last),
        `blocked interval within the ${spanText}: ${JSON.stringify(r)}`);
    }
    assert.ok(Math.min(...shown.map((r) => Date.parse(r.first))) <= span.from + SLACK_MS, `blocked from the span's start (${spanText}): ${shownText}`);
    assert.ok(Math.max(...shown.map((r) => Date.parse(r.last))) >= span.to - SLACK_MS, `blocked until the span's end (${spanText}): ${shownText}`);

    // (b) The strip's bucket holding the span is blocked or partial (the hour also had open
    // probes); it is the current bucket unless the hour turned since the reopening.
    const buckets = await hist.locator('.hist-strip .hist-bucket').evaluateAll((ds) => ds.map((d) => ({ start: Date.parse(d.dataset.start), status: d.dataset.status })));
    assert.ok(buckets.length >= 24, `a 24 h strip of hourly buckets: ${buckets.length}`);
    for (const t of [span.from, span.to]) {
      const b = buckets.find((x) => x.start <= t && t < x.start + HOUR_MS);
      assert.ok(b && ['blocked', 'partial'].includes(b.status), `the bucket at ${new Date(t).toISOString()} closed: ${JSON.stringify(b)}`);
    }
    if (Math.floor(Date.now() / HOUR_MS) === Math.floor(span.to / HOUR_MS)) {
      assert.ok(['blocked', 'partial'].includes(buckets[buckets.length - 1].status), `the current bucket closed: ${JSON.stringify(buckets.at(-1))}`);
    }
    assert.match(await hist.locator('.hist-strip').getAttribute('aria-label'), /blocked|partial/);

    // (c) /api/intervals over HTTP names the same blocked intervals as the table.
    const overHttp = (await intervalsOverHttp()).filter((iv) => iv.status === 'blocked').map((iv) => ({
      first: new Date(Date.parse(iv.first_seen)).toISOString(), last: new Date(Date.parse(iv.last_seen)).toISOString(),
      agent: iv.agent, target: iv.target, family: FAMILY_WORD[iv.family] ?? iv.family,
    }));
    const key = (r) => `${r.agent} ${r.target} ${r.family} ${r.first} ${r.last}`;
    assert.deepEqual(overHttp.map(key).sort(), shown.map(key).sort());
    await page.screenshot({ path: path.join(HERE, 'screenshots', 'lab-history.png'), fullPage: true });
    await page.keyboard.press('Escape');
    await until('the history view closed', 5_000, async () => !(await hist.evaluate((d) => d.open)));
    console.log(`# acct-a 587 ${spanText}: ${shown.length} blocked intervals shown, ${shown.map((r) => `${r.first.slice(11, 19)}–${r.last.slice(11, 19)}`).join(', ')}`);
    console.log(`# acct-a 587 shown blocked ${(waited / 1000).toFixed(1)} s after the page started waiting`);
    assert.deepEqual(dialogs, [], 'no dialog fired');
    assert.deepEqual(problems, [], 'no page errors');
    await context.close();
  } finally {
    await browser.close();
    // A cleared timer: a pending one would keep the test's process alive to its end.
    let bound;
    const code = await Promise.race([exited, new Promise((resolve) => { bound = setTimeout(() => resolve('timeout'), 150_000); })]);
    clearTimeout(bound);
    if (code === 'timeout') demo.kill('SIGTERM');
    assert.equal(code, 0, `lab/demo failed:\n${output}`);
  }
});

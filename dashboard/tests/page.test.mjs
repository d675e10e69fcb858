// Browser tests of the matrix page in Debian's chromium (driven by playwright-core; the browser
// is never downloaded). By default they run against tests/fixture_server.mjs, which sends the
// collector's CSP; with EGRESSWATCH_URL=http://host:port they run against a real collector and
// skip what needs fixture control (exact counts, pushed changes, the hostile label).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { LAUNCH } from './chromium.mjs';
import { startFixtureServer, smallFixture, HOSTILE, cell } from './fixture_server.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SHOTS = path.join(HERE, 'screenshots');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const REAL = process.env.EGRESSWATCH_URL || '';


let browser;
let server;
let base;

before(async () => {
  if (!existsSync(CHROMIUM)) return;
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch(LAUNCH);
  if (REAL) {
    base = REAL.replace(/\/$/, '');
  } else {
    server = await startFixtureServer();
    base = server.url;
  }
});

after(async () => {
  await browser?.close();
  await server?.close();
});

const skipNoBrowser = () => (!existsSync(CHROMIUM) ? `no chromium at ${CHROMIUM} (apt-get install -y chromium)` : false);
const needsFixture = () => skipNoBrowser() || (REAL ? 'needs fixture control (EGRESSWATCH_URL is set)' : false);

/** Opens the page and records every console error, page error, dialog and CSP violation. */
async function open(url = base + '/', viewport = { width: 1400, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  const dialogs = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('dialog', async (d) => {
    dialogs.push(d.message());
    await d.dismiss();
  });
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  await page.goto(url);
  await page.waitForSelector('#matrix-body tr.lvl-0');
  return { page, context, problems, dialogs };
}

async function assertClean(page, problems, dialogs) {
  const csp = await page.evaluate(() => window.__csp);
  assert.deepEqual(csp, [], 'no CSP violations');
  assert.deepEqual(problems, [], 'no console errors');
  assert.deepEqual(dialogs, [], 'no dialog fired');
}

const providerRow = (page, name) => page.locator('#matrix-body tr.lvl-0').filter({ has: page.locator('th .label', { hasText: new RegExp(`^${name}$`) }) });
const cellOf = (row, port) => row.locator(`td[data-port="${port}"]`);

test('matrix: statuses, words and symbols, counts, docs marker, control column', { skip: needsFixture() }, async () => {
  const { page, context, problems, dialogs } = await open();
  const head = await page.locator('#matrix-head th.port').allTextContents();
  assert.deepEqual(head, ['25', '465', '587', '2525', '443control']);
  assert.equal(await page.locator('#matrix-head th.port.control').getAttribute('data-port'), '443');

  const gcp = providerRow(page, 'gcp');
  assert.equal(await cellOf(gcp, 25).getAttribute('data-status'), 'blocked');
  assert.match(await cellOf(gcp, 25).locator('.cell-main').textContent(), /✕\s*blocked/);
  assert.equal(await cellOf(gcp, 25).locator('.count').textContent(), '0/12');
  assert.match(await cellOf(gcp, 465).locator('.cell-main').textContent(), /✓\s*open/);
  assert.equal(await cellOf(gcp, 587).getAttribute('data-status'), 'partial');
  assert.match(await cellOf(gcp, 587).locator('.cell-main').textContent(), /◐\s*partial/);
  assert.equal(await cellOf(gcp, 587).locator('.count').textContent(), '11/12');
  assert.equal(await cellOf(gcp, 587).locator('.p50').textContent(), '13 ms');
  assert.match(await cellOf(gcp, 587).locator('.held').textContent(), /\d/);
  assert.equal(await cellOf(gcp, 25).locator('.mismatch').count(), 0);

  const hz = providerRow(page, 'hetzner');
  assert.match(await cellOf(hz, 2525).locator('.cell-main').textContent(), /\?\s*unknown/);
  assert.equal(await cellOf(hz, 25).locator('.mismatch').textContent(), '≠ docs');
  // The documented policy, its summary and its source sit in the cell's details.
  const details = cellOf(hz, 25).locator('details.doc');
  await details.locator('summary').click();
  assert.match(await details.textContent(), /Blocked on new cloud servers\./);
  assert.equal(await details.locator('a').getAttribute('href'), 'https://example.test/docs/smtp');
  await page.screenshot({ path: path.join(SHOTS, 'matrix.png'), fullPage: true });

  // IPv4 only: the page asks the collector for that family.
  await page.locator('input[name="family"][value="ipv4"]').check();
  await page.waitForFunction(() => document.querySelector('#matrix-body tr.lvl-0 td[data-port="587"] .count')?.textContent === '5/6');
  assert.match(page.url(), /family=ipv4/);
  await assertClean(page, problems, dialogs);
  await context.close();
});

test('drill-down: provider → account → region → agent → recent probes (keyboard)', { skip: skipNoBrowser() }, async () => {
  const { page, context, problems, dialogs } = await open();
  const first = page.locator('#matrix-body tr.lvl-0 button.expander').first();
  assert.equal(await first.getAttribute('aria-expanded'), 'false');
  await first.focus();
  await page.keyboard.press('Enter');
  assert.equal(await first.getAttribute('aria-expanded'), 'true');
  await page.locator('#matrix-body tr.lvl-1').first().waitFor();
  await page.locator('#matrix-body tr.lvl-1 button.expander').first().click();
  await page.locator('#matrix-body tr.lvl-2').first().waitFor();
  await page.locator('#matrix-body tr.lvl-2 button.expander').first().click();
  await page.locator('#matrix-body tr.lvl-3').first().waitFor();
  await page.locator('#matrix-body tr.lvl-3 button.expander').first().press('Space');
  await page.locator('#matrix-body tr.probes-row table.probe-table, #matrix-body tr.probes-row .probes-note:not(:has-text("loading"))').first().waitFor();
  if (!REAL) {
    const rows = page.locator('tr.probes-row table.probe-table tbody tr');
    assert.equal(await rows.count(), 10);
    const cells = await rows.first().locator('td').allTextContents();
    assert.equal(cells[2], '25');
    assert.match(cells[6], /✕ timeout/);
    assert.equal(cells[7], '0.4 ms'); // dns
    assert.equal(cells[8], '—'); // connect never reached
    const second = await rows.nth(1).locator('td').allTextContents();
    assert.match(second[6], /✓ ok/);
    assert.equal(second[8], '11 ms'); // connect
    assert.equal(second[9], '30 ms'); // banner
    assert.equal(await page.locator('#matrix-body tr.lvl-3.silent').count(), 1, 'the silent agent is marked');
  }
  await page.screenshot({ path: path.join(SHOTS, 'drilldown.png'), fullPage: true });
  // Collapsing the provider removes its subtree from the DOM.
  await first.click();
  assert.equal(await page.locator('#matrix-body tr.lvl-1, #matrix-body tr.probes-row').count(), 0);
  await assertClean(page, problems, dialogs);
  await context.close();
});

test('a hostile label renders as text and fires nothing', { skip: needsFixture() }, async () => {
  const { page, context, problems, dialogs } = await open();
  await providerRow(page, 'hetzner').locator('button.expander').click();
  const acct = page.locator('#matrix-body tr.lvl-1 th .label');
  assert.equal(await acct.textContent(), HOSTILE);
  await page.locator('#matrix-body tr.lvl-1 button.expander').click();
  await page.locator('#matrix-body tr.lvl-2 button.expander').click();
  await page.locator('#matrix-body tr.lvl-3 button.expander').click();
  await page.locator('tr.probes-row table.probe-table').waitFor();
  assert.match(await page.locator('tr.probes-row td.detail').first().textContent(), /<img src=x onerror=alert\(1\)>/);
  assert.match(await page.locator('#events').textContent(), /<img src=x onerror=alert\(1\)>/);
  assert.equal(await page.locator('img').count(), 0, 'no <img> element was created from data');
  await page.waitForTimeout(300);
  await page.screenshot({ path: path.join(SHOTS, 'hostile.png'), fullPage: true });
  await assertClean(page, problems, dialogs);
  await context.close();
});

test('live: a pushed matrix change and event appear without reload and highlight their cells', { skip: needsFixture() }, async () => {
  const { page, context, problems, dialogs } = await open();
  await page.waitForFunction(() => document.getElementById('live').dataset.state === 'live');
  await page.evaluate(() => { window.__sameDocument = true; });
  const gcp = providerRow(page, 'gcp');
  assert.equal(await cellOf(gcp, 465).getAttribute('data-status'), 'open');
  const before465 = await cellOf(gcp, 25).elementHandle();

  const changed = smallFixture('all');
  changed.providers[0].cells['465'] = { ...cell('blocked', 0, 12), doc: null, doc_mismatch: false };
  server.push('matrix', changed);
  await page.waitForFunction(() => document.querySelector('#matrix-body tr.lvl-0 td[data-port="465"]')?.dataset.status === 'blocked');
  assert.equal(await cellOf(gcp, 465).locator('.count').textContent(), '0/12');
  // Unchanged cells are the same elements: updated in place, not rebuilt.
  assert.equal(await before465.evaluate((n) => n.isConnected), true);

  server.push('event', {
    kind: 'policy_changed', scope: 'provider', provider: 'gcp', account: null, agent: null,
    target: 'mx.lab.test', port: 465, from: 'open', to: 'blocked', at: '2026-11-22T13:30:00Z', id: 3, outcome: 'timeout',
  });
  await page.waitForFunction(() => document.querySelector('#events li')?.textContent.includes(':465'));
  assert.match(await cellOf(gcp, 465).getAttribute('class'), /\bhl\b/);
  assert.equal(await page.locator('#events li').count(), 3, 'newest first, prepended');
  await page.screenshot({ path: path.join(SHOTS, 'live.png'), fullPage: true });

  // An event in the timeline links to its cells.
  await page.locator('#events li').nth(1).locator('button.goto').click();
  assert.match(await cellOf(gcp, 587).getAttribute('class'), /\bhl\b/);

  // With one family selected, a matrix event makes the page refetch that family.
  await page.locator('input[name="family"][value="ipv6"]').check();
  await page.waitForFunction(() => document.querySelector('#matrix-body tr.lvl-0 td[data-port="587"] .count')?.textContent === '5/6');
  const orig = server.data.matrix;
  server.data.matrix = (fam) => {
    const m = orig(fam);
    m.providers[0].cells['2525'] = { ...cell('blocked', 0, 6), doc: null, doc_mismatch: false };
    return m;
  };
  server.push('matrix', changed);
  await page.waitForFunction(() => document.querySelector('#matrix-body tr.lvl-0 td[data-port="2525"]')?.dataset.status === 'blocked');
  server.data.matrix = orig;

  // A collector restart: the stream ends, the page says so and reconnects by itself.
  server.dropStreams();
  await page.waitForFunction(() => document.getElementById('live').dataset.state === 'reconnecting', null, { timeout: 5000 });
  await page.waitForFunction(() => document.getElementById('live').dataset.state === 'live', null, { timeout: 10000 });
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload happened');
  await assertClean(page, problems, dialogs);
  await context.close();
});

test('a collector whose database is unreachable: the page says it is not live, and live again once it answers', { skip: needsFixture() }, async () => {
  const { page, context, problems, dialogs } = await open();
  await page.waitForFunction(() => document.getElementById('live').dataset.state === 'live');
  const down = { ...smallFixture('all'), store: { since: '2026-12-01T10:00:00Z', reason: 'store: connecting: timed out' } };
  server.push('matrix', down);
  await page.waitForFunction(() => document.getElementById('live').dataset.state === 'stale');
  assert.match(await page.locator('#live').textContent(), /not live: the database is unavailable since/);
  // A new event or message while it is down does not turn it back to "live".
  server.push('event', {
    kind: 'agent_silent', scope: 'agent', provider: 'gcp', account: 'proj', agent: 'g1',
    target: null, port: null, from: 'reporting', to: 'silent', at: '2026-12-01T10:00:05Z', id: 9,
  });
  await page.waitForTimeout(300);
  assert.equal(await page.locator('#live').getAttribute('data-state'), 'stale');
  server.push('matrix', smallFixture('all'));
  await page.waitForFunction(() => document.getElementById('live').dataset.state === 'live');
  await assertClean(page, problems, dialogs);
  await context.close();
});

test('a port blocked over one family only is partial and names the family, at every level', { skip: needsFixture() }, async () => {
  const { page, context, problems, dialogs } = await open();
  const vultr = providerRow(page, 'vultr');
  const c25 = cellOf(vultr, 25);
  assert.equal(await c25.getAttribute('data-status'), 'partial');
  assert.match(await c25.locator('.cell-main').textContent(), /◐\s*partial — IPv4 blocked/);
  assert.equal(await c25.locator('.cell-main').getAttribute('title'), 'IPv4: blocked · IPv6: open');
  assert.equal(await c25.locator('.count').textContent(), '0/2');
  // Where the families agree there is nothing to name.
  assert.equal(await cellOf(vultr, 587).locator('.fam-note').count(), 0);
  assert.equal(await cellOf(providerRow(page, 'gcp'), 587).locator('.fam-note').count(), 0);
  // Account, region and agent rows say it too.
  await vultr.locator('button.expander').click();
  await page.locator('#matrix-body tr.lvl-1 button.expander').click();
  await page.locator('#matrix-body tr.lvl-2 button.expander').click();
  for (const level of [1, 2, 3]) {
    const cells = page.locator(`#matrix-body tr.lvl-${level} td[data-port="25"]`);
    assert.ok((await cells.count()) >= 1, `level ${level}`);
    for (const text of await cells.locator('.cell-main').allTextContents()) {
      assert.match(text, /partial — IPv4 blocked/, `level ${level}`);
    }
  }
  await page.screenshot({ path: path.join(SHOTS, 'partial-family.png'), fullPage: true });
  // Partial within IPv4 while IPv6 has no results: nothing to say about a family.
  const changed = smallFixture('all');
  changed.providers[1].cells['2525'] = { ...cell('partial', 2, 1), families: { ipv4: 'partial', ipv6: 'unknown' }, doc: null, doc_mismatch: false };
  await page.waitForFunction(() => document.getElementById('live').dataset.state === 'live');
  server.push('matrix', changed);
  const hz2525 = cellOf(providerRow(page, 'hetzner'), 2525);
  await page.waitForFunction(() => [...document.querySelectorAll('#matrix-body tr.lvl-0')].some((r) => r.querySelector('.label')?.textContent === 'hetzner' && r.querySelector('td[data-port="2525"]')?.dataset.status === 'partial'));
  assert.equal(await hz2525.locator('.fam-note').count(), 0);
  assert.equal(await hz2525.locator('.cell-main').getAttribute('title'), 'IPv4: partial · IPv6: unknown');
  // A one-family view shows that family's own status, and no family note.
  await page.locator('input[name="family"][value="ipv4"]').check();
  await page.waitForFunction(() => [...document.querySelectorAll('#matrix-body tr.lvl-0')].some((r) => r.querySelector('.label')?.textContent === 'vultr' && r.querySelector('td[data-port="25"]')?.dataset.status === 'blocked'));
  assert.equal(await cellOf(providerRow(page, 'vultr'), 25).locator('.fam-note').count(), 0);
  await page.locator('input[name="family"][value="ipv6"]').check();
  await page.waitForFunction(() => [...document.querySelectorAll('#matrix-body tr.lvl-0')].some((r) => r.querySelector('.label')?.textContent === 'vultr' && r.querySelector('td[data-port="25"]')?.dataset.status === 'open'));
  // An event about one family says which; one about both says none.
  server.push('event', {
    kind: 'policy_changed', scope: 'provider', provider: 'vultr', account: null, agent: null,
    target: 'mx.lab.test', port: 25, from: 'open', to: 'blocked', at: '2026-11-22T13:40:00Z', family: 'ipv4', outcome: 'timeout',
  });
  await page.waitForFunction(() => document.querySelector('#events li')?.textContent.includes('vultr'));
  assert.match(await page.locator('#events li').first().textContent(), /open → blocked over IPv4 only \(timeout\)/);
  server.push('event', {
    kind: 'policy_changed', scope: 'provider', provider: 'vultr', account: null, agent: null,
    target: 'mx.lab.test', port: 587, from: 'open', to: 'blocked', at: '2026-11-22T13:41:00Z', family: null, outcome: 'timeout',
  });
  await page.waitForFunction(() => document.querySelector('#events li')?.textContent.includes(':587'));
  assert.equal(await page.locator('#events li').first().locator('.fam').count(), 0);
  await assertClean(page, problems, dialogs);
  await context.close();
});

test('the columns and the control column come from /api/matrix', { skip: needsFixture() }, async () => {
  const m = smallFixture('all');
  m.ports = [25, 587, 8443, 2526];
  m.control_port = 8443;
  const own = await startFixtureServer({ matrix: () => m });
  try {
    const { page, context, problems, dialogs } = await open(own.url + '/');
    const head = await page.locator('#matrix-head th.port').allTextContents();
    assert.deepEqual(head, ['25', '587', '2526', '8443control'], 'the control column last');
    assert.equal(await page.locator('#matrix-head th.port.control').getAttribute('data-port'), '8443');
    assert.deepEqual(await page.locator('#matrix-body tr.lvl-0').first().locator('td').evaluateAll((tds) => tds.map((t) => t.dataset.port)), ['25', '587', '2526', '8443']);
    assert.equal(await page.locator('#matrix-body tr.lvl-0 td.control').count(), 3, 'one control cell per provider');
    // A matrix without a control port sets no column apart.
    delete m.control_port;
    own.push('matrix', m);
    await page.waitForFunction(() => document.querySelectorAll('#matrix-head th.port.control').length === 0);
    assert.deepEqual(await page.locator('#matrix-head th.port').allTextContents(), ['25', '587', '8443', '2526']);
    // The shipped page keeps no measuring hooks of its own.
    assert.equal(await page.evaluate(() => typeof window.__ew), 'undefined');
    assert.equal(await page.evaluate(() => performance.getEntriesByType('mark').length), 0);
    await assertClean(page, problems, dialogs);
    await context.close();
  } finally {
    await own.close();
  }
});

test('real collector: the page loads, every cell has a status, the stream is live', { skip: skipNoBrowser() || (REAL ? false : 'set EGRESSWATCH_URL to run against a collector') }, async () => {
  const { page, context, problems, dialogs } = await open();
  await page.waitForFunction(() => document.getElementById('live').dataset.state === 'live', null, { timeout: 10000 });
  const statuses = await page.locator('#matrix-body tr.lvl-0 td.cell').evaluateAll((tds) => tds.map((t) => t.dataset.status));
  assert.ok(statuses.length > 0);
  for (const s of statuses) assert.ok(['open', 'blocked', 'partial', 'unknown'].includes(s), s);
  // Open every provider and account: whatever labels the agents sent, they stay text.
  for (const level of [0, 1, 2]) {
    const buttons = page.locator(`#matrix-body tr.lvl-${level} button.expander[aria-expanded="false"]`);
    for (let n = await buttons.count(); n > 0; n--) await buttons.first().click();
  }
  const labels = await page.locator('#matrix-body th .label').allTextContents();
  if (labels.includes(HOSTILE)) console.log('# the hostile label is in the fleet and renders as text');
  assert.equal(await page.locator('img').count(), 0, 'no <img> element was created from data');
  await page.screenshot({ path: path.join(SHOTS, 'real.png'), fullPage: true });
  await assertClean(page, problems, dialogs);
  await context.close();
});

test('imported feeds: what other fleets observed beside the docs and this fleet, the disagreement marked, refusals named', { skip: needsFixture() }, async () => {
  const orig = server.data.matrix;
  server.data.matrix = (fam) => {
    const m = orig(fam);
    // hetzner's 25: documented blocked, open here, and a feed observed it blocked.
    const hz = m.providers.find((p) => p.provider === 'hetzner');
    hz.cells['25'] = {
      ...hz.cells['25'],
      elsewhere: [{
        feed: 'peer-ops', key_id: '6AF9D3C0B2A11E44', snapshot_at: '2026-11-22T12:00:00Z', status: 'blocked',
        ok: 0, failed: 480, accounts: 12, agents: 30, regions: 2, since: '2026-11-01T00:00:00Z', last_seen: '2026-11-22T11:59:00Z',
      }, {
        feed: HOSTILE, key_id: HOSTILE, snapshot_at: HOSTILE, status: 'open', ok: 9, failed: 0, accounts: 3, agents: 3, regions: 1, since: null, last_seen: null,
      }],
      elsewhere_disagrees: true,
      elsewhere_note: 'this fleet sees open, feed peer-ops observed blocked by 12 accounts',
    };
    m.imported_providers = [{
      provider: 'ovh',
      cells: {
        25: {
          doc: null,
          elsewhere: [{ feed: 'peer-ops', key_id: '6AF9D3C0B2A11E44', snapshot_at: '2026-11-22T12:00:00Z', status: 'open', ok: 40, failed: 0, accounts: 5, agents: 7, regions: 1, since: null, last_seen: null }],
          elsewhere_disagrees: false,
        },
      },
    }];
    m.feeds = [
      { feed: 'peer-ops', source: 'https://watch.peer.example/feed/snapshot.json', publisher: 'peer', key_id: '6AF9D3C0B2A11E44', snapshot_at: '2026-11-22T12:00:00Z', accepted_at: '2026-11-22T12:01:00Z', refused: null, unreachable: null },
      { feed: 'tampered', source: '/srv/t.json', accepted_at: null, refused: { kind: 'bad_signature', reason: 'bad signature: Signature verification failed', at: '2026-11-22T12:01:00Z' }, unreachable: null },
    ];
    return m;
  };
  try {
    const { page, context, problems, dialogs } = await open();
    await page.waitForSelector('#matrix-body tr.lvl-0 td[data-port="25"] .elsewhere-line');
    const hz = providerRow(page, 'hetzner');
    const c25 = cellOf(hz, 25);
    // This fleet's own status stays what it was; the feed's is beside it.
    assert.equal(await c25.getAttribute('data-status'), 'open');
    const peer = c25.locator('.elsewhere-line[data-feed="peer-ops"]');
    assert.equal(await peer.getAttribute('data-status'), 'blocked');
    assert.match(await peer.textContent(), /blocked.*12 accounts · peer-ops/);
    assert.match(await peer.getAttribute('title'), /snapshot of 2026-11-22T12:00:00Z, key 6AF9D3C0B2A11E44, blocked since 2026-11-01/);
    const mark = c25.locator('.elsewhere-mismatch');
    assert.equal(await mark.textContent(), '≠ elsewhere');
    assert.equal(await mark.getAttribute('title'), 'this fleet sees open, feed peer-ops observed blocked by 12 accounts');
    assert.equal(await c25.locator('.mismatch').first().textContent(), '≠ docs', 'the docs marker stays');
    // A cell without imports has no elsewhere lines.
    assert.equal(await cellOf(hz, 465).locator('.elsewhere-line').count(), 0);
    // The feeds line: provenance, and a refusal with its reason.
    const feeds = page.locator('#feeds-line');
    assert.equal(await feeds.isVisible(), true);
    assert.match(await feeds.locator('[data-feed="peer-ops"]').textContent(), /snapshot of 2026-11-22T12:00:00Z by peer, key 6AF9D3C0B2A11E44/);
    assert.match(await feeds.locator('[data-feed="tampered"]').textContent(), /no snapshot accepted — last one refused: bad signature/);
    // A provider only the feed observed has a row of its own, with no status of this fleet.
    const ovh = page.locator('#matrix-body tr.imported').filter({ has: page.locator('th .label', { hasText: /^ovh$/ }) });
    assert.match(await ovh.locator('th .sub').textContent(), /observed elsewhere only/);
    assert.equal(await cellOf(ovh, 25).locator('.not-here').textContent(), 'not observed here');
    assert.equal(await cellOf(ovh, 25).locator('.elsewhere-line').getAttribute('data-status'), 'open');
    assert.match(await cellOf(ovh, 465).textContent(), /no data/);
    // A feed's name is text, never markup.
    assert.equal(await page.locator('#matrix img').count(), 0);
    await page.screenshot({ path: path.join(SHOTS, 'feeds.png'), fullPage: true });
    await assertClean(page, problems, dialogs);
    await context.close();
  } finally {
    server.data.matrix = orig;
  }
});

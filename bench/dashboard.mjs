// Benchmark of the matrix page at fleet scale: 50 providers, 500 accounts, 5,000 agents,
// served by dashboard/tests/fixture_server.mjs (collector CSP, SSE) to Debian's headless
// chromium. The page ships no measuring code: the benchmark injects its own before the page's
// scripts run (MEASURE, with playwright's addInitScript), which times the page's `matrix`
// stream handler with performance.now() and records each render in window.__bench.renders:
//   render  — JavaScript time of the handler after its JSON parse (build or in-place update of
//             the rows)
//   total   — from the SSE message arriving (the first render comes from the stream's opening
//             snapshot), JSON parse included, to the end of the render
//   since navigation — (first render only) from navigation start to the painted frame
//   painted — the same start to the first task after the next animation frame (style, layout
//             and paint included, but also whatever wait headless chromium puts before a frame)
//   frame   — Chrome's long-animation-frame entry (LoAF, frames over 50 ms only) holding the
//             render: its duration and its style+layout part; "-" when the frame took < 50 ms
// Then the history view of one cell, opened over that matrix and switched to 7 d and 90 d:
//   render  — from the last of its three API answers parsed (Response.json, wrapped from outside)
//             to the view saying it is ready (strip, chart, events, policy, intervals built)
//   total   — from the click to ready, the three requests to the local fixture server included
//   painted — from the click to the first task after the next animation frame
// Usage: node bench/dashboard.mjs            (env: RUNS=5 CHROMIUM=/usr/bin/chromium)
// Needs: `cd dashboard && npm ci` (playwright-core) and `apt-get install -y chromium`.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startFixtureServer, bigFixture, smallEvents, smallIntervals } from '../dashboard/tests/fixture_server.mjs';
import { LAUNCH } from '../dashboard/tests/chromium.mjs';

/**
 * Runs in the page before its own scripts: wraps the `matrix` listener the page adds to its
 * EventSource, and JSON.parse while that listener runs, to time each render from outside.
 */
function MEASURE() {
  window.__bench = { renders: [] };
  const parse = JSON.parse;
  let parsedAt = null;
  JSON.parse = function (...args) {
    try {
      return parse.apply(this, args);
    } finally {
      parsedAt = performance.now();
    }
  };
  const add = EventSource.prototype.addEventListener;
  EventSource.prototype.addEventListener = function (type, listener, options) {
    if (type !== 'matrix' || typeof listener !== 'function') return add.call(this, type, listener, options);
    const timed = function (msg) {
      const receivedAt = performance.now();
      parsedAt = null;
      const source = window.__bench.renders.length ? 'sse' : 'initial';
      try {
        return listener.call(this, msg);
      } finally {
        const endAt = performance.now();
        const rec = {
          source,
          render_ms: endAt - (parsedAt ?? receivedAt),
          total_ms: endAt - receivedAt,
          painted_ms: null,
          end_at: endAt,
        };
        window.__bench.renders.push(rec);
        requestAnimationFrame(() => setTimeout(() => {
          rec.painted_ms = performance.now() - receivedAt;
          rec.painted_since_nav_ms = performance.now();
        }, 0));
      }
    };
    return add.call(this, type, timed, options);
  };
}

const HERE = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(HERE, '../dashboard/package.json'));
const { chromium } = require('playwright-core');

const RUNS = Number(process.env.RUNS || 5);
const SHAPE = { providers: 50, accountsPer: 10, agentsPer: 10 };

const base = bigFixture(SHAPE);
const flipped = bigFixture({ ...SHAPE, flip: 7 });
const bytes = JSON.stringify(base).length;
let current = base;

// The history view's intervals: the API's default limit (200) of them.
const INTERVALS = 200;
function manyIntervals(q) {
  const [status, body] = smallIntervals(q);
  if (status !== 200) return [status, body];
  const to = Date.now();
  const intervals = [];
  for (let i = 0; i < INTERVALS; i++) {
    const last = to - i * 3600_000;
    intervals.push({ ...body.intervals[0], agent: `agent-0-0-${i % 10}`, status: i % 3 ? 'open' : 'blocked',
      outcome: i % 3 ? 'ok' : 'timeout', first_seen: new Date(last - 3000_000).toISOString(), last_seen: new Date(last).toISOString() });
  }
  return [200, { intervals }];
}

const server = await startFixtureServer({
  matrix: () => current,
  events: smallEvents,
  results: () => [],
  intervals: manyIntervals,
});

/** Opens the history of provider-00's 587 (or switches its range) and times it from outside. */
function historyTimed(page, range) {
  return page.evaluate(async (rangeId) => {
    const d = document.getElementById('history');
    let lastParsed = null;
    const json = Response.prototype.json;
    Response.prototype.json = function (...args) {
      return json.apply(this, args).finally(() => { lastParsed = performance.now(); });
    };
    try {
      const ready = new Promise((resolve) => {
        const ob = new MutationObserver(() => {
          if (d.dataset.state === 'ready' || d.dataset.state === 'error') {
            ob.disconnect();
            resolve(performance.now());
          }
        });
        ob.observe(d, { attributes: true, attributeFilter: ['data-state'] });
      });
      const t0 = performance.now();
      if (!d.open) document.querySelector('#matrix-body tr.lvl-0 td[data-port="587"] button.hist-open').click();
      else d.querySelector(`button.hist-range[data-range="${rangeId}"]`).click();
      const readyAt = await ready;
      await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
      const painted = performance.now() - t0;
      await new Promise((r) => setTimeout(r, 200)); // let the LoAF observer report the frame
      const f = window.__loaf.find((e) => e.start <= readyAt && readyAt <= e.end);
      return {
        render_ms: readyAt - lastParsed, total_ms: readyAt - t0, painted_ms: painted,
        frame_ms: f ? f.end - f.start : null, style_layout_ms: f && f.style ? f.end - f.style : null, state: d.dataset.state,
        buckets: d.querySelectorAll('.hist-bucket').length, rows: d.querySelectorAll('.hist-intervals tbody tr').length,
      };
    } finally {
      Response.prototype.json = json;
    }
  }, range);
}
const browser = await chromium.launch(LAUNCH);

async function lastRender(page, source, count) {
  await page.waitForFunction(
    ([s, n]) => {
      const r = (window.__bench?.renders || []).filter((x) => x.source === s);
      return r.length >= n && r[n - 1].painted_ms !== null;
    },
    [source, count],
    { timeout: 30000 },
  );
  await page.waitForTimeout(200); // let the LoAF observer report the frame
  return page.evaluate(([s, n]) => {
    const r = { ...window.__bench.renders.filter((x) => x.source === s)[n - 1] };
    const f = window.__loaf.find((e) => e.start <= r.end_at && r.end_at <= e.end);
    r.frame_ms = f ? f.end - f.start : null;
    r.style_layout_ms = f && f.style ? f.end - f.style : null;
    return r;
  }, [source, count]);
}

const rows = { first: [], update: [], expandedUpdate: [], history24h: [], history7d: [], history90d: [] };
try {
  for (let run = 0; run < RUNS; run++) {
    current = base;
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const page = await context.newPage();
    await page.addInitScript(MEASURE);
    await page.addInitScript(() => {
      window.__loaf = [];
      new PerformanceObserver((list) => {
        for (const e of list.getEntries()) {
          window.__loaf.push({ start: e.startTime, end: e.startTime + e.duration, style: e.styleAndLayoutStart });
        }
      }).observe({ type: 'long-animation-frame', buffered: true });
    });
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(server.url + '/');
    rows.first.push(await lastRender(page, 'initial', 1));
    await page.waitForFunction(() => document.getElementById('live').dataset.state === 'live');
    const sseBefore = await page.evaluate(() => window.__bench.renders.filter((x) => x.source === 'sse').length);

    // One provider's cells change: the update the collector pushes after a policy flip.
    current = flipped;
    server.push('matrix', flipped);
    rows.update.push(await lastRender(page, 'sse', sseBefore + 1));

    // The same, with one provider opened down to its 30 regions (10 accounts).
    await page.locator('#matrix-body tr.lvl-0 button.expander').first().click();
    const accounts = page.locator('#matrix-body tr.lvl-1 button.expander');
    for (let i = 0; i < (await accounts.count()); i++) await accounts.nth(i).click();
    const visible = await page.locator('#matrix-body tr').count();
    current = base;
    server.push('matrix', base);
    const r = await lastRender(page, 'sse', sseBefore + 2);
    rows.expandedUpdate.push({ ...r, visible });

    for (const [range, list] of [['24h', rows.history24h], ['7d', rows.history7d], ['90d', rows.history90d]]) {
      const h = await historyTimed(page, range);
      if (h.state !== 'ready') throw new Error(`history view ${range}: ${h.state}`);
      list.push(h);
    }
    if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
    await context.close();
  }
} finally {
  await browser.close();
  await server.close();
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const f = (x) => x.toFixed(1).padStart(8);
const agents = SHAPE.providers * SHAPE.accountsPer * SHAPE.agentsPer;
console.log(`matrix page, ${SHAPE.providers} providers / ${SHAPE.providers * SHAPE.accountsPer} accounts / ${agents} agents; matrix JSON ${(bytes / 1e6).toFixed(1)} MB; ${RUNS} runs, median (max) ms`);
console.log('what                               render ms            total ms          painted ms       long frame ms   its style+layout ms   goal');
for (const [name, list, goal] of [
  ['first render (stream → rows)', rows.first, '< 300 (painted)'],
  ['SSE update, collapsed', rows.update, '< 50 (painted)'],
  [`SSE update, 1 provider open (${rows.expandedUpdate[0]?.visible} rows)`, rows.expandedUpdate, ''],
  ...[['24h', rows.history24h], ['7d', rows.history7d], ['90d', rows.history90d]].map(([range, list]) => [
    `history ${range} (${list[0]?.buckets} buckets, ${list[0]?.rows} intervals)`, list, '']),
]) {
  const stat = (xs) => {
    const known = xs.filter((x) => x !== null);
    const short = xs.length - known.length;
    if (!known.length) return `${'-'.padStart(8)} (all < 50)`.padEnd(19);
    return `${f(median(known))} (${f(Math.max(...known))})${short ? ` ${short}×<50` : ''}`;
  };
  const cols = ['render_ms', 'total_ms', 'painted_ms', 'frame_ms', 'style_layout_ms'].map((k) => stat(list.map((x) => x[k])));
  console.log(`${name.padEnd(34)} ${cols.join(' ')}   ${goal}`);
}
const nav = rows.first.map((x) => x.painted_since_nav_ms);
console.log(`first render painted, since navigation start: median ${median(nav).toFixed(1)} ms (max ${Math.max(...nav).toFixed(1)}) — page, CSS, JS, stream, ${(bytes / 1e6).toFixed(1)} MB parse, rows, frame`);

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
// Usage: node bench/dashboard.mjs            (env: RUNS=5 CHROMIUM=/usr/bin/chromium)
// Needs: `cd dashboard && npm ci` (playwright-core) and `apt-get install -y chromium`.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startFixtureServer, bigFixture, smallEvents } from '../dashboard/tests/fixture_server.mjs';
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

const server = await startFixtureServer({
  matrix: () => current,
  events: smallEvents,
  results: () => [],
});
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

const rows = { first: [], update: [], expandedUpdate: [] };
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
